//! PROXY protocol listeners (`[server.proxy_protocol]`) over the real binary: v1 and v2
//! headers from a trusted balancer give the session the real client (plugins, relay
//! trust, per-client connection limits, the reverse lookup and `Received:` all see it);
//! an untrusted peer, a malformed, unsupported or missing header closes the connection
//! with a log line saying why; v2 LOCAL (health checks) is served as the balancer's own
//! connection; octets pipelined behind the header reach the session; implicit TLS and
//! STARTTLS work behind the header.
//!
//! The balancer is the test itself: it connects from 127.0.0.2 (the only trusted
//! network) and writes the header octets, built here from the specification, on a raw
//! socket or through `peers/client.py --proxy` (Python's smtplib speaks SMTP after it).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use support::proxy_v2 as v2;
use support::proxy_v2_raw as v2_raw;
use support::{Gateway, Haproxy, Nsd, Raw, Setup, hex, json, plugin_toml, smtplib};

const HOST: &str = "127.0.0.1";
/// The balancer's address (trusted); 127.0.0.1 is an untrusted peer.
const BALANCER: &str = "127.0.0.2";

/// A v1 header for a TCP connection from `client` to `server` (same family).
fn v1(client: &str, server: &str) -> Vec<u8> {
    let (c, s): (SocketAddr, SocketAddr) = (client.parse().unwrap(), server.parse().unwrap());
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        c.ip(),
        s.ip(),
        c.port(),
        s.port()
    )
    .into_bytes()
}

/// v2 LOCAL, as HAProxy's health checks (`check-send-proxy`) send it.
fn v2_local() -> Vec<u8> {
    v2_raw(0x0, 0x00, &[])
}

fn balancer() -> IpAddr {
    BALANCER.parse().unwrap()
}

/// A gateway with a plain and an implicit-TLS PROXY listener trusting 127.0.0.2 only,
/// relaying for 203.0.113.0/24, and the fixture plugin that shows the client it was
/// given (`X-Client`, `X-Session`).
fn gateway(server: &str, rest: &str) -> Gateway {
    Setup::default()
        .server(server)
        .section(&format!(
            "[server.proxy_protocol]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n\
             trusted_networks = [\"{BALANCER}\"]\ntimeout_ms = 500\n\
             [relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\"203.0.113.0/24\"]\n\
             {}{rest}",
            plugin_toml("adder", "header-adder", "config = { session = \"show\" }")
        ))
        .start()
}

/// Sends one message through the PROXY listener at `addr` after `header`; the JSON of
/// client.py's replies.
fn send(addr: SocketAddr, header: &[u8], extra: &[&str], to: &[&str]) -> serde_json::Value {
    let port = addr.port().to_string();
    let h = hex(header);
    let mut args = vec!["send", HOST, &port, "--proxy", &h, "--source", BALANCER];
    for t in to {
        args.extend_from_slice(&["--to", t]);
    }
    args.extend_from_slice(extra);
    json(&smtplib(&args))
}

/// The one message in `local@example.test`'s mailbox, as text.
fn only_message(gw: &Gateway, local: &str) -> String {
    let mail = gw.mailbox("example.test", local);
    assert_eq!(mail.len(), 1, "{local}: {} messages", mail.len());
    String::from_utf8_lossy(&mail[0]).into_owned()
}

/// The value of header `name` in `text`, unfolded (a long one is folded when added).
fn header(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    let mut lines = text[start + name.len() + 2..].split("\r\n");
    let mut v = lines.next().unwrap_or_default().to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        v.push(' ');
        v.push_str(l.trim_start());
    }
    v
}

/// Waits (bounded: 5 s) until the gateway's log holds `needle`; the log either way.
fn log_with(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.log();
        if log.contains(needle) || Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn v1_and_v2_from_a_trusted_balancer_give_the_session_the_real_client() {
    let gw = gateway("", "");
    let proxy = gw.proxy.expect("PROXY listener");

    // v1, a client outside the relay networks: local mail only.
    let out = send(
        proxy,
        &v1("198.51.100.9:40001", "192.0.2.1:25"),
        &[],
        &["v1@example.test", "outside@elsewhere.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(
        out["rcpt"]["outside@elsewhere.test"]["code"]
            .as_u64()
            .unwrap()
            / 100,
        5,
        "relay trust is the real client's: {out}"
    );
    let text = only_message(&gw, "v1");
    assert_eq!(
        header(&text, "X-Client"),
        "address=198.51.100.9:40001 local=192.0.2.1:25 trusted=false ptr=none"
    );
    assert!(
        text.contains("Received: from client.test ([198.51.100.9])"),
        "{text}"
    );
    assert_eq!(
        header(&text, "X-Session"),
        "helo=client.test ehlo=true listener=smtp tls=false"
    );

    // v2, a client inside them: it may relay.
    let out = send(
        proxy,
        &v2("203.0.113.7:40002", "192.0.2.1:25"),
        &[],
        &["v2@example.test", "outside@elsewhere.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(out["rcpt"]["outside@elsewhere.test"]["code"], 250, "{out}");
    let text = only_message(&gw, "v2");
    assert_eq!(
        header(&text, "X-Client"),
        "address=203.0.113.7:40002 local=192.0.2.1:25 trusted=true ptr=none"
    );
    assert!(
        text.contains("Received: from client.test ([203.0.113.7])"),
        "{text}"
    );

    // v2 over IPv6.
    let out = send(
        proxy,
        &v2("[2001:db8::7]:40003", "[2001:db8::1]:25"),
        &[],
        &["v6@example.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    let text = only_message(&gw, "v6");
    assert_eq!(
        header(&text, "X-Client"),
        "address=[2001:db8::7]:40003 local=[2001:db8::1]:25 trusted=false ptr=none"
    );
    assert!(
        text.contains("Received: from client.test ([IPv6:2001:db8::7])"),
        "{text}"
    );

    // The log names the real client and the balancer it came through.
    let log = log_with(&gw, "client=203.0.113.7:40002");
    assert!(
        log.lines().any(|l| l.contains("connect")
            && l.contains("client=203.0.113.7:40002")
            && l.contains("proxied_by=127.0.0.2:")),
        "{log}"
    );
}

#[test]
fn untrusted_malformed_unsupported_and_silent_peers_are_closed_with_the_reason_logged() {
    let gw = gateway("", "");
    let proxy = gw.proxy.expect("PROXY listener");
    let good = v2("203.0.113.7:40002", "192.0.2.1:25");

    // An untrusted peer: closed at once, nothing said, even with a valid header.
    let mut c = Raw::connect(proxy);
    c.send(&good);
    assert!(c.gone(), "untrusted peer closed");
    let log = log_with(&gw, "is not a trusted PROXY protocol sender");
    assert!(
        log.contains("peer 127.0.0.1 is not a trusted PROXY protocol sender"),
        "{log}"
    );

    // A trusted peer that speaks SMTP instead of a header.
    let mut c = Raw::connect_from(balancer(), proxy);
    c.send(b"EHLO client.test\r\n");
    assert!(c.gone(), "no header: closed");
    let log = log_with(&gw, "malformed PROXY header");
    assert!(log.contains("malformed PROXY header"), "{log}");

    // A v1 line with a bad address.
    let mut c = Raw::connect_from(balancer(), proxy);
    c.send(b"PROXY TCP4 300.0.113.7 192.0.2.1 40001 25\r\n");
    assert!(c.gone());

    // A valid v2 header for a UNIX socket: not a TCP client.
    let mut c = Raw::connect_from(balancer(), proxy);
    c.send(&v2_raw(0x1, 0x31, &[0u8; 216]));
    assert!(c.gone());
    let log = log_with(&gw, "unsupported PROXY header");
    assert!(log.contains("unsupported PROXY header: AF_UNIX"), "{log}");

    // Half a header, then silence: closed after `timeout_ms`.
    let mut c = Raw::connect_from(balancer(), proxy);
    let started = Instant::now();
    c.send(&good[..20]);
    assert!(c.gone(), "closed after the header timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let log = log_with(&gw, "no complete PROXY header within 500 ms");
    assert!(
        log.contains("no complete PROXY header within 500 ms"),
        "{log}"
    );

    // None of them got a session.
    assert!(!log.contains("client=203.0.113.7"), "{log}");

    // On a listener without PROXY, a header is not a header but a bad command.
    let mut c = Raw::connect(gw.smtp);
    assert!(c.reply().starts_with("220 "));
    let r = c.cmd("PROXY TCP4 203.0.113.7 192.0.2.1 40001 25");
    assert!(r.starts_with("5"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn v2_local_health_checks_are_served_as_the_balancer() {
    let gw = gateway("", "");
    let proxy = gw.proxy.expect("PROXY listener");
    let out = send(proxy, &v2_local(), &[], &["health@example.test"]);
    assert_eq!(out["data"]["code"], 250, "{out}");
    let text = only_message(&gw, "health");
    let client = header(&text, "X-Client");
    assert!(
        client.starts_with("address=127.0.0.2:")
            && client.ends_with(&format!(" local={proxy} trusted=false ptr=none")),
        "{client}"
    );
    assert!(
        text.contains("Received: from client.test ([127.0.0.2])"),
        "{text}"
    );
    // The health check HAProxy's `option smtpchk` does: greeting, EHLO, QUIT.
    let mut c = Raw::connect_from(balancer(), proxy);
    c.send(&v2_local());
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("EHLO haproxy.test").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn octets_sent_right_behind_the_header_reach_the_session() {
    let gw = gateway("", "");
    let proxy = gw.proxy.expect("PROXY listener");
    for header in [
        v1("198.51.100.9:1", "192.0.2.1:25"),
        v2("198.51.100.9:1", "192.0.2.1:25"),
    ] {
        let mut c = Raw::connect_from(balancer(), proxy);
        let mut all = header.clone();
        all.extend_from_slice(b"EHLO pipelined.test\r\n");
        c.send(&all);
        assert!(c.reply().starts_with("220 "));
        let ehlo = c.reply();
        assert!(
            ehlo.starts_with("250-mx.example.test Hello pipelined.test"),
            "{ehlo}"
        );
        assert!(c.cmd("QUIT").starts_with("221"));
    }
}

#[test]
fn per_client_connection_limits_count_the_real_client() {
    let gw = gateway("max_connections_per_ip = 1", "");
    let proxy = gw.proxy.expect("PROXY listener");
    let open = |client: &str| {
        let mut c = Raw::connect_from(balancer(), proxy);
        c.send(&v2(client, "192.0.2.1:25"));
        let greeting = c.reply();
        (c, greeting)
    };
    let (_first, g) = open("203.0.113.7:1000");
    assert!(g.starts_with("220 "), "{g}");
    // The same client again through the same balancer: over its limit.
    let (mut second, g) = open("203.0.113.7:1001");
    assert!(
        g.starts_with("421 4.7.0 ") && g.contains("Too many connections from your address"),
        "{g}"
    );
    assert!(second.closed());
    // Another client through the same balancer is not.
    let (mut third, g) = open("198.51.100.9:1000");
    assert!(g.starts_with("220 "), "{g}");
    assert!(third.cmd("QUIT").starts_with("221"));
}

#[test]
fn implicit_tls_and_starttls_behind_the_header() {
    let gw = gateway("", "");
    let tls = gw.proxy_tls.expect("PROXY listener with implicit TLS");
    let out = send(
        tls,
        &v2("203.0.113.7:40010", "192.0.2.1:465"),
        &["--ssl"],
        &["implicit@example.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(out["tls"], true, "{out}");
    let text = only_message(&gw, "implicit");
    assert_eq!(
        header(&text, "X-Client"),
        "address=203.0.113.7:40010 local=192.0.2.1:465 trusted=true ptr=none"
    );
    assert_eq!(
        header(&text, "X-Session"),
        "helo=client.test ehlo=true listener=smtps tls=true"
    );

    let proxy = gw.proxy.expect("PROXY listener");
    let out = send(
        proxy,
        &v1("198.51.100.9:40011", "192.0.2.1:25"),
        &["--starttls"],
        &["starttls@example.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(out["tls"], true, "{out}");
    let text = only_message(&gw, "starttls");
    assert!(
        header(&text, "X-Client").starts_with("address=198.51.100.9:40011 "),
        "{text}"
    );
    assert!(
        text.contains("Received: from client.test ([198.51.100.9])"),
        "{text}"
    );
}

const CLIENT_ZONE: &str = "$ORIGIN client.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   192.0.2.53
mail    A   203.0.113.7
";
const REVERSE_ZONE: &str = "$ORIGIN 113.0.203.in-addr.arpa.
$TTL 300
@       SOA ns.client.test. hostmaster.client.test. 1 3600 600 86400 300
@       NS  ns.client.test.
7       PTR mail.client.test.
";

#[test]
fn the_reverse_lookup_is_of_the_real_client() {
    let nsd = Nsd::start(&[
        ("client.test", CLIENT_ZONE),
        ("113.0.203.in-addr.arpa", REVERSE_ZONE),
    ]);
    let gw = gateway(
        "",
        &format!(
            "[dns]\nservers = [\"{}\"]\nreverse_lookup = true\n",
            nsd.addr
        ),
    );
    let proxy = gw.proxy.expect("PROXY listener");
    let out = send(
        proxy,
        &v2("203.0.113.7:40020", "192.0.2.1:25"),
        &[],
        &["ptr@example.test"],
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    let text = only_message(&gw, "ptr");
    assert_eq!(
        header(&text, "X-Client"),
        "address=203.0.113.7:40020 local=192.0.2.1:25 trusted=true ptr=mail.client.test"
    );
    assert!(
        text.contains("Received: from client.test (mail.client.test [203.0.113.7])"),
        "{text}"
    );
}

/// A real HAProxy in front: `send-proxy-v2` with health checks (`option smtpchk` over
/// `check-send-proxy`, i.e. v2 LOCAL) and `send-proxy` (v1); the client connects to
/// HAProxy from 127.0.0.3 and the gateway's plugin sees 127.0.0.3, not HAProxy.
#[test]
fn behind_a_real_haproxy_with_send_proxy_v1_v2_and_health_checks() {
    let gw = Setup::default()
        .section(&format!(
            "[server.proxy_protocol]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"127.0.0.1\"]\n{}",
            plugin_toml("adder", "header-adder", "config = { session = \"show\" }")
        ))
        .start();
    let hap = Haproxy::start(
        gw.proxy.expect("PROXY listener"),
        &[
            (
                "    option smtpchk EHLO haproxy.test\n    option log-health-checks",
                "send-proxy-v2 check check-send-proxy inter 200ms",
            ),
            ("", "send-proxy"),
        ],
    );
    // HAProxy's SMTP health check went through the LOCAL header and got its 250.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hap.log().contains("Layer7 check passed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        hap.log().contains("Layer7 check passed"),
        "{}\n{}",
        hap.log(),
        gw.log()
    );
    for (front, local) in hap.frontends.iter().zip(["v2haproxy", "v1haproxy"]) {
        let port = front.port().to_string();
        let to = format!("{local}@example.test");
        let out = json(&smtplib(&[
            "send",
            HOST,
            &port,
            "--source",
            "127.0.0.3",
            "--to",
            &to,
        ]));
        assert_eq!(out["data"]["code"], 250, "{out}\n{}", hap.log());
        let text = only_message(&gw, local);
        let client = header(&text, "X-Client");
        assert!(
            client.starts_with("address=127.0.0.3:")
                && client.contains(&format!(" local={front} ")),
            "{local}: {client}"
        );
        assert!(
            text.contains("Received: from client.test ([127.0.0.3])"),
            "{text}"
        );
    }
}
