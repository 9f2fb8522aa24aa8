//! The gateway in front of a real Postfix (Debian's package, its own instance on
//! loopback delivering to Maildirs) tells it who the original client was: XCLIENT in
//! proxy mode and in queue mode (`delivery.xclient = true` and Postfix's
//! `smtpd_authorized_xclient_hosts`), so Postfix logs and evaluates that client; XFORWARD
//! where Postfix offers only that (`smtpd_authorized_xforward_hosts`), which Postfix logs
//! as `orig_client=`; nothing at all when the setting is off, whatever Postfix offers.
//!
//! The original clients come in through a PROXY protocol listener (the test is the load
//! balancer, at 127.0.0.2), so they have addresses no loopback connection could have:
//! 203.0.113.7 and 198.51.100.9 in Postfix's log can only have come from the gateway.

mod support;

use std::time::Duration;

use support::{Gateway, Nsd, Postfix, Setup, hex, json, proxy_v2, smtplib};

const HOST: &str = "127.0.0.1";
const BALANCER: &str = "127.0.0.2";
/// How long Postfix may take to log a delivery (queue manager, virtual agent).
const POSTFIX_WAIT: Duration = Duration::from_secs(60);

/// Postfix taking XCLIENT from loopback (and with the client port in its log lines).
fn postfix_xclient() -> Postfix {
    Postfix::start_with(
        &["pat@example.test", "sam@example.test"],
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8\nsmtpd_client_port_logging = yes",
    )
}

/// A gateway relaying to `pf` in `mode` (`proxy` or `queue`), with `delivery.xclient`
/// as given, and a PROXY listener for the test's balancer.
fn gateway(pf: &Postfix, mode: &str, xclient: bool) -> Gateway {
    gateway_with(pf, mode, xclient, "")
}

/// [`gateway`] with more sections (`rest`).
fn gateway_with(pf: &Postfix, mode: &str, xclient: bool, rest: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool").display().to_string();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"{mode}\"\nupstream = \"{}\"\nupstream_tls = \"none\"\n\
             xclient = {xclient}\n\
             [queue]\nspool = {spool:?}\nretry_initial_secs = 1\nretry_max_secs = 2\n\
             [server.proxy_protocol]\nlisten = [\"127.0.0.1:0\"]\n\
             trusted_networks = [\"{BALANCER}\"]\n{rest}",
            pf.addr
        ))
        .start();
    // The spool's temp dir lives as long as the test process needs it.
    std::mem::forget(dir);
    gw
}

/// One message from `client` (as the balancer announces it) to `to`, through the
/// gateway's PROXY listener; asserts the gateway's 250.
fn send_as(gw: &Gateway, client: &str, to: &str, subject: &str) -> serde_json::Value {
    let out = try_send_as(gw, client, to, subject);
    assert_eq!(out["data"]["code"], 250, "{out}\n{}", gw.log());
    out
}

/// [`send_as`] without the assertion: client.py's JSON.
fn try_send_as(gw: &Gateway, client: &str, to: &str, subject: &str) -> serde_json::Value {
    let proxy = gw.proxy.expect("PROXY listener");
    let port = proxy.port().to_string();
    let header = hex(&proxy_v2(client, "192.0.2.1:25"));
    let data = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        data.path(),
        format!("Subject: {subject}\r\n\r\nfrom {client}\r\n"),
    )
    .unwrap();
    let path = data.path().display().to_string();
    json(&smtplib(&[
        "send", HOST, &port, "--proxy", &header, "--source", BALANCER, "--to", to, "--data", &path,
    ]))
}

/// The messages in `local@example.test`'s Maildir at Postfix, as text.
fn mailbox(pf: &Postfix, local: &str) -> Vec<String> {
    pf.mailbox("example.test", local)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// The one message in `mails` with `subject`.
fn with_subject<'a>(mails: &'a [String], subject: &str) -> &'a str {
    let found: Vec<&String> = mails
        .iter()
        .filter(|m| m.contains(&format!("Subject: {subject}\n")))
        .collect();
    assert_eq!(found.len(), 1, "one message {subject:?} in {mails:#?}");
    found[0]
}

/// Postfix's own `Received:` line (the first one: it put it on top), unfolded.
fn postfix_received(mail: &str) -> String {
    let start = mail.find("Received: ").expect("a Received: header");
    let mut out = String::new();
    for (i, l) in mail[start..].lines().enumerate() {
        if i > 0 && !l.starts_with([' ', '\t']) {
            break;
        }
        out.push_str(l.trim());
        out.push(' ');
    }
    out
}

#[test]
fn proxy_mode_postfix_logs_and_evaluates_the_real_client_through_xclient() {
    let pf = postfix_xclient();
    let gw = gateway(&pf, "proxy", true);
    send_as(&gw, "203.0.113.7:40001", "pat@example.test", "proxied one");
    send_as(&gw, "198.51.100.9:40002", "sam@example.test", "proxied two");
    assert!(
        pf.wait_log_count("status=sent", 2, POSTFIX_WAIT),
        "postfix did not deliver both:\n{}\n{}",
        pf.maillog(),
        gw.log()
    );
    let log = pf.maillog();
    // smtpd's line for each message names the original client (no reverse name:
    // `unknown`), with its port.
    assert!(log.contains("client=unknown[203.0.113.7]:40001"), "{log}");
    assert!(log.contains("client=unknown[198.51.100.9]:40002"), "{log}");
    assert!(!log.contains("client=localhost[127.0.0.1]"), "{log}");
    // Postfix's Received: names the client and its HELO, as if it had connected.
    let pat = mailbox(&pf, "pat");
    let r = postfix_received(with_subject(&pat, "proxied one"));
    assert!(
        r.starts_with("Received: from client.test (unknown [203.0.113.7])"),
        "{r}"
    );
    let sam = mailbox(&pf, "sam");
    let r = postfix_received(with_subject(&sam, "proxied two"));
    assert!(
        r.starts_with("Received: from client.test (unknown [198.51.100.9])"),
        "{r}"
    );
    // Our own Received: is below Postfix's, naming the same client.
    assert!(
        with_subject(&pat, "proxied one").contains("Received: from client.test ([203.0.113.7])"),
        "{pat:?}"
    );
}

#[test]
fn queue_mode_each_message_is_delivered_as_its_own_client() {
    let pf = postfix_xclient();
    let gw = gateway(&pf, "queue", true);
    // Two clients, one after the other: the second message must not ride on the
    // connection the first one's XCLIENT made speak for 203.0.113.7 (kept for reuse).
    send_as(&gw, "203.0.113.7:40011", "pat@example.test", "queued one");
    assert!(
        pf.wait_log_count("status=sent", 1, POSTFIX_WAIT),
        "{}\n{}",
        pf.maillog(),
        gw.log()
    );
    send_as(&gw, "198.51.100.9:40012", "sam@example.test", "queued two");
    send_as(&gw, "203.0.113.7:40013", "pat@example.test", "queued three");
    assert!(
        pf.wait_log_count("status=sent", 3, POSTFIX_WAIT),
        "{}\n{}",
        pf.maillog(),
        gw.log()
    );
    let log = pf.maillog();
    for client in [
        "203.0.113.7]:40011",
        "198.51.100.9]:40012",
        "203.0.113.7]:40013",
    ] {
        assert!(log.contains(&format!("client=unknown[{client}")), "{log}");
    }
    let pat = mailbox(&pf, "pat");
    let sam = mailbox(&pf, "sam");
    for (mails, subject, ip) in [
        (&pat, "queued one", "203.0.113.7"),
        (&sam, "queued two", "198.51.100.9"),
        (&pat, "queued three", "203.0.113.7"),
    ] {
        let r = postfix_received(with_subject(mails, subject));
        assert!(
            r.starts_with(&format!("Received: from client.test (unknown [{ip}])")),
            "{subject}: {r}"
        );
    }
}

#[test]
fn xforward_where_only_that_is_offered() {
    let pf = Postfix::start_with(
        &["pat@example.test", "sam@example.test"],
        "smtpd_authorized_xforward_hosts = 127.0.0.0/8",
    );
    for (mode, local) in [("proxy", "pat"), ("queue", "sam")] {
        let gw = gateway(&pf, mode, true);
        let out = send_as(
            &gw,
            "203.0.113.7:40021",
            &format!("{local}@example.test"),
            &format!("forwarded {mode}"),
        );
        let n = if mode == "proxy" { 1 } else { 2 };
        assert!(
            pf.wait_log_count("status=sent", n, POSTFIX_WAIT),
            "{}\n{}",
            pf.maillog(),
            gw.log()
        );
        let log = pf.maillog();
        // smtpd's line for this message: the n-th with an original client.
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("orig_client=")).collect();
        assert_eq!(lines.len(), n, "{mode}: {log}");
        let line = lines[n - 1];
        // IDENT is our id of the message: in queue mode the one our 250 gave.
        if mode == "queue" {
            let text = out["data"]["text"].as_str().unwrap();
            let ours = text.rsplit(' ').next().unwrap();
            assert!(line.contains(&format!("orig_queue_id={ours}")), "{line}");
        } else {
            assert!(line.contains("orig_queue_id="), "{line}");
        }
        // The session is still the gateway's own; the original is logged beside it.
        assert!(line.contains("client=localhost[127.0.0.1]"), "{line}");
        assert!(line.contains("orig_client=unknown[203.0.113.7]"), "{line}");
        // Received: stays the gateway's (XFORWARD is for logging only).
        let mails = mailbox(&pf, local);
        let r = postfix_received(with_subject(&mails, &format!("forwarded {mode}")));
        assert!(r.contains("[127.0.0.1]"), "{r}");
    }
}

#[test]
fn nothing_is_forwarded_unless_the_admin_enabled_it() {
    let pf = postfix_xclient();
    let gw = gateway(&pf, "proxy", false);
    send_as(&gw, "203.0.113.7:40031", "pat@example.test", "not told");
    assert!(
        pf.wait_log_count("status=sent", 1, POSTFIX_WAIT),
        "{}\n{}",
        pf.maillog(),
        gw.log()
    );
    let log = pf.maillog();
    assert!(log.contains("client=localhost[127.0.0.1]"), "{log}");
    assert!(!log.contains("203.0.113.7"), "{log}");
}

const CLIENT_ZONE: &str = "$ORIGIN client.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   192.0.2.53
mail    A   203.0.113.7
";
const REVERSE_113: &str = "$ORIGIN 113.0.203.in-addr.arpa.
$TTL 300
@       SOA ns.client.test. hostmaster.client.test. 1 3600 600 86400 300
@       NS  ns.client.test.
7       PTR mail.client.test.
";
/// 198.51.100.9 has no PTR (NXDOMAIN); 198.51.100.10's PTR names a host in a zone the
/// server does not serve, so its forward lookup is refused: a temporary failure.
const REVERSE_100: &str = "$ORIGIN 100.51.198.in-addr.arpa.
$TTL 300
@       SOA ns.client.test. hostmaster.client.test. 1 3600 600 86400 300
@       NS  ns.client.test.
10      PTR host.unserved.test.
";

/// Postfix evaluates the client XCLIENT names: with `reject_unknown_client_hostname`, a
/// client whose reverse name the gateway confirmed is accepted (and logged by name), one
/// without a name (`NAME=[UNAVAILABLE]`) gets Postfix's permanent refusal (its
/// `unknown_client_reject_code`, 550 here, 450 by default) and one whose lookup failed
/// for now (`NAME=[TEMPUNAVAIL]`) its temporary one, passed on to the client in proxy
/// mode.
#[test]
fn postfix_evaluates_the_client_name_xclient_gives_it() {
    let nsd = Nsd::start(&[
        ("client.test", CLIENT_ZONE),
        ("113.0.203.in-addr.arpa", REVERSE_113),
        ("100.51.198.in-addr.arpa", REVERSE_100),
    ]);
    let pf = Postfix::start_with(
        &["pat@example.test"],
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8\n\
         smtpd_client_port_logging = yes\n\
         smtpd_client_restrictions = reject_unknown_client_hostname\n\
         unknown_client_reject_code = 550",
    );
    let gw = gateway_with(
        &pf,
        "proxy",
        true,
        &format!(
            "[dns]\nservers = [\"{}\"]\nreverse_lookup = true\n",
            nsd.addr
        ),
    );
    let rcpt = "pat@example.test";
    let named = send_as(&gw, "203.0.113.7:40041", rcpt, "named");
    assert_eq!(named["rcpt"][rcpt]["code"], 250, "{named}");
    let nameless = try_send_as(&gw, "198.51.100.9:40042", rcpt, "nameless");
    let tempfail = try_send_as(&gw, "198.51.100.10:40043", rcpt, "tempfail");
    for (out, code) in [(&nameless, 550), (&tempfail, 450)] {
        let r = &out["rcpt"][rcpt];
        assert_eq!(r["code"], code, "{out}\n{}\n{}", pf.maillog(), gw.log());
        assert!(
            r["text"]
                .as_str()
                .unwrap()
                .contains("Client host rejected: cannot find your hostname"),
            "{out}"
        );
    }
    assert!(
        pf.wait_log_count("status=sent", 1, POSTFIX_WAIT),
        "{}\n{}",
        pf.maillog(),
        gw.log()
    );
    let log = pf.maillog();
    assert!(
        log.contains("client=mail.client.test[203.0.113.7]:40041"),
        "{log}"
    );
    assert!(
        log.contains("reject: RCPT from unknown[198.51.100.9]:40042: 550"),
        "{log}"
    );
    assert!(
        log.contains("reject: RCPT from unknown[198.51.100.10]:40043: 450"),
        "{log}"
    );
    let r = postfix_received(with_subject(&mailbox(&pf, "pat"), "named"));
    assert!(
        r.starts_with("Received: from client.test (mail.client.test [203.0.113.7])"),
        "{r}"
    );
}
