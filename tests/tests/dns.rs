//! The gateway's resolver against a real DNS server (NSD on loopback serving test
//! zones): forward-confirmed reverse names of clients, MX order, NXDOMAIN versus an
//! empty answer, and the timeout bound against a server that never answers.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mailgate::dns::{DnsError, Mx, Resolver, Settings};
use support::Nsd;

const FORWARD: &str = "$ORIGIN dns.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   192.0.2.53
@       MX  10 MX-B
@       MX  10 mx-a
@       MX  5 primary
confirmed A 192.0.2.25
confirmed AAAA 2001:db8::25
liar    A   192.0.2.99
only-txt TXT \"x\"
";
const REVERSE4: &str = "$ORIGIN 2.0.192.in-addr.arpa.
$TTL 300
@       SOA ns.dns.test. hostmaster.dns.test. 1 3600 600 86400 300
@       NS  ns.dns.test.
25      PTR confirmed.dns.test.
26      PTR liar.dns.test.
27      PTR nowhere.dns.test.
";
const REVERSE6: &str = "$ORIGIN 8.b.d.0.1.0.0.2.ip6.arpa.
$TTL 300
@       SOA ns.dns.test. hostmaster.dns.test. 1 3600 600 86400 300
@       NS  ns.dns.test.
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 PTR confirmed.dns.test.
";

fn nsd() -> Nsd {
    Nsd::start(&[
        ("dns.test", FORWARD),
        ("2.0.192.in-addr.arpa", REVERSE4),
        ("8.b.d.0.1.0.0.2.ip6.arpa", REVERSE6),
    ])
}

fn resolver(nsd: &Nsd) -> Resolver {
    Resolver::new(Settings {
        servers: vec![nsd.addr],
        ..Settings::default()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn reverse_names_are_forward_confirmed() {
    let nsd = nsd();
    let r = resolver(&nsd);
    assert_eq!(
        r.confirmed_name(ip("192.0.2.25")).await.as_deref(),
        Some("confirmed.dns.test")
    );
    assert_eq!(
        r.confirmed_name(ip("2001:db8::25")).await.as_deref(),
        Some("confirmed.dns.test"),
        "IPv6 confirmed through AAAA"
    );
    // PTR exists but its name points elsewhere / does not exist / no PTR at all.
    assert_eq!(
        r.ptr(ip("192.0.2.26")).await,
        Ok(vec!["liar.dns.test".into()])
    );
    assert_eq!(r.confirmed_name(ip("192.0.2.26")).await, None);
    assert_eq!(r.confirmed_name(ip("192.0.2.27")).await, None);
    assert_eq!(r.confirmed_name(ip("192.0.2.28")).await, None);
}

#[tokio::test]
async fn answers_and_negative_answers() {
    let nsd = nsd();
    let r = resolver(&nsd);
    assert_eq!(
        r.mx("dns.test").await.unwrap(),
        vec![
            Mx {
                preference: 5,
                exchange: "primary.dns.test".into()
            },
            Mx {
                preference: 10,
                exchange: "mx-a.dns.test".into()
            },
            Mx {
                preference: 10,
                exchange: "mx-b.dns.test".into()
            },
        ],
        "preference order, names lowercased"
    );
    assert_eq!(r.a("missing.dns.test").await, Err(DnsError::NxDomain));
    assert_eq!(
        r.a("only-txt.dns.test").await,
        Ok(vec![]),
        "an existing name without A records is an empty answer"
    );
    assert_eq!(r.mx("confirmed.dns.test").await, Ok(vec![]));
    assert!(
        matches!(
            r.a("outside.example").await,
            Err(DnsError::ServerFailure(_))
        ),
        "a name outside the served zones is REFUSED by the authoritative server"
    );
    // Answers are cached for their TTL: still answered once NSD is gone.
    let before = r.a("confirmed.dns.test").await;
    assert_eq!(before, Ok(vec![ip("192.0.2.25")]));
    drop(nsd);
    assert_eq!(r.a("confirmed.dns.test").await, before);
}

#[tokio::test]
async fn a_silent_server_costs_at_most_the_timeout() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = Resolver::new(Settings {
        servers: vec![silent.local_addr().unwrap()],
        timeout: Duration::from_millis(300),
        attempts: 2,
        ..Settings::default()
    });
    let t = Instant::now();
    assert_eq!(r.txt("dns.test").await, Err(DnsError::Timeout));
    assert_eq!(r.confirmed_name(ip("192.0.2.25")).await, None);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
