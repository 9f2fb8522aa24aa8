//! Greylisting end to end: the shipped `greylist` plugin (plugins/greylist) in the real
//! gateway with `kv` and `clock` granted, real SMTP sessions, mail delivered into the
//! gateway's Maildir. Time passes by `mailgate clock advance` on the gateway's adjustable
//! plugin clock (`chain.adjustable_clock`), which moves what `clock` answers and when kv
//! entries expire: no test sleeps. Every client is on loopback; 127.0.0.0/8 is all
//! loopback on Linux, so a client can also come from 127.0.0.2 or 127.0.1.1 (another /24).

mod support;

use std::sync::{Arc, Barrier};

use support::{Gateway, Nsd, Raw, Setup, json, mailgate, shipped, smtplib};

/// Every capability the plugin uses, except `auth-results`.
const CAPS: &str = r#"["kv", "clock", "log"]"#;

/// A gateway with the greylist plugin granted `caps` and configured with `config` (the
/// inside of its `config = { … }`), an adjustable clock, plugin decisions (with their
/// reasons) in the log, and `sections` appended to its config.
fn gateway_with(config: &str, caps: &str, sections: &str) -> Gateway {
    Setup::default()
        .section("[chain]\nadjustable_clock = true")
        .section(sections)
        .section(&format!(
            "[[plugin]]\nname = \"greylist\"\npath = {:?}\ncapabilities = {caps}\n\
             config = {{ {config} }}",
            shipped("greylist").display().to_string()
        ))
        .env("MAILGATE_LOG", "info,mailgate::plugin::chain=debug")
        .start()
}

fn gateway(config: &str) -> Gateway {
    gateway_with(config, CAPS, "")
}

/// Moves the gateway's plugin clock forward by `secs`.
fn advance(gw: &Gateway, secs: u64) {
    let cfg = gw.config.display().to_string();
    let (ok, out, err) = mailgate(&["clock", "advance", &secs.to_string(), "--config", &cfg]);
    assert!(ok, "mailgate clock advance {secs}: {out}{err}");
}

/// An SMTP client connected from a chosen loopback address.
struct Client(Raw);

impl Client {
    /// Connects from `src` (a 127.x.y.z address), reads the greeting, says EHLO.
    fn from(src: [u8; 4], gw: &Gateway) -> Client {
        let mut c = Client(Raw::connect_from(src.into(), gw.smtp));
        let greeting = c.0.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        let ehlo = c.cmd("EHLO client.test");
        assert!(ehlo.starts_with("250"), "{ehlo}");
        c
    }

    fn cmd(&mut self, line: &str) -> String {
        self.0.cmd(line)
    }

    /// MAIL FROM (`""` is `<>`), which must be accepted.
    fn mail(&mut self, sender: &str) {
        let r = self.cmd(&format!("MAIL FROM:<{sender}>"));
        assert!(r.starts_with("250"), "MAIL FROM:<{sender}>: {r}");
    }

    fn rcpt(&mut self, rcpt: &str) -> String {
        self.cmd(&format!("RCPT TO:<{rcpt}>"))
    }

    /// DATA with a small message; the end-of-data reply.
    fn data(&mut self) -> String {
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "{r}");
        self.0.send(
            b"From: <s@client.test>\r\nTo: <u@example.test>\r\nSubject: greylist test\r\n\
              Message-ID: <g@client.test>\r\n\r\nHello.\r\n.\r\n",
        );
        self.0.reply()
    }
}

/// One transaction from `src`: MAIL, a RCPT for each of `rcpts`, DATA if any was accepted
/// (else RSET). The RCPT replies and the end-of-data reply.
fn send(gw: &Gateway, src: [u8; 4], sender: &str, rcpts: &[&str]) -> (Vec<String>, Option<String>) {
    let mut c = Client::from(src, gw);
    c.mail(sender);
    let replies: Vec<String> = rcpts.iter().map(|r| c.rcpt(r)).collect();
    let data = if replies.iter().any(|r| r.starts_with("250")) {
        Some(c.data())
    } else {
        assert!(c.cmd("RSET").starts_with("250"));
        None
    };
    c.cmd("QUIT");
    (replies, data)
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// One recipient from 127.0.0.1: its RCPT reply; when accepted, the message was
/// delivered (`250` after DATA).
fn attempt(gw: &Gateway, sender: &str, rcpt: &str) -> String {
    attempt_from(gw, LOCAL, sender, rcpt)
}

fn attempt_from(gw: &Gateway, src: [u8; 4], sender: &str, rcpt: &str) -> String {
    let (replies, data) = send(gw, src, sender, &[rcpt]);
    if let Some(d) = data {
        assert!(d.starts_with("250"), "DATA for {rcpt}: {d}");
    }
    replies.into_iter().next().unwrap()
}

/// The seconds a greylisting reply asks the client to wait; panics on any other reply.
fn greylisted(reply: &str) -> u64 {
    let rest = reply
        .strip_prefix("451 4.7.1 Greylisted, please try again in ")
        .unwrap_or_else(|| panic!("not greylisted: {reply}"));
    rest.trim_end()
        .strip_suffix(" seconds")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delay in: {reply}"))
}

fn accepted(reply: &str) {
    assert!(reply.starts_with("250"), "not accepted: {reply}");
}

fn delivered(gw: &Gateway, local: &str) -> usize {
    gw.mailbox("example.test", local).len()
}

#[test]
fn a_new_triplet_is_greylisted_and_its_retry_after_the_delay_delivered() {
    let gw = gateway("");
    let smtp = |to: &str| {
        json(&smtplib(&[
            "send",
            "127.0.0.1",
            &gw.port(),
            "--from",
            "alice@sender.test",
            "--to",
            to,
        ]))
    };
    let first = smtp("u@example.test");
    let r = &first["rcpt"]["u@example.test"];
    assert_eq!(r["code"], 451, "{first}");
    let text = r["text"].as_str().unwrap();
    assert_eq!(
        text, "4.7.1 Greylisted, please try again in 300 seconds",
        "{first}"
    );
    // An immediate retry: still greylisted, the hint counting down from 300.
    let left = greylisted(&attempt(&gw, "alice@sender.test", "u@example.test"));
    assert!((250..=300).contains(&left), "{left}");
    assert_eq!(delivered(&gw, "u"), 0);
    // Past the delay, the retry is accepted and delivered, with the delay in X-Greylist.
    advance(&gw, 301);
    let retry = smtp("u@example.test");
    assert_eq!(retry["rcpt"]["u@example.test"]["code"], 250, "{retry}");
    assert_eq!(retry["data"]["code"], 250, "{retry}");
    let mail = gw.mailbox("example.test", "u");
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8_lossy(&mail[0]);
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Greylist: delayed "))
        .unwrap_or_else(|| panic!("no X-Greylist header:\n{text}"));
    let (secs, rest) = header.split_once(' ').unwrap();
    let secs: u64 = secs.parse().unwrap();
    assert!((301..=360).contains(&secs), "{header}");
    assert!(
        rest.starts_with("seconds by mailgate-greylist; "),
        "{header}"
    );
    assert!(
        gw.log().contains("greylisted triplet passed"),
        "{}",
        gw.log()
    );
    // The triplet is remembered: the next message passes at once, without X-Greylist.
    let again = smtp("u@example.test");
    assert_eq!(again["rcpt"]["u@example.test"]["code"], 250, "{again}");
    let mail = gw.mailbox("example.test", "u");
    assert_eq!(mail.len(), 2);
    let with_header = mail
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("X-Greylist:"))
        .count();
    assert_eq!(with_header, 1, "only the delayed message has the header");
}

#[test]
fn a_retry_before_the_delay_is_greylisted_again() {
    let gw = gateway("delay_secs = 600");
    let r = attempt(&gw, "a@sender.test", "u@example.test");
    assert_eq!(greylisted(&r), 600);
    advance(&gw, 400);
    let left = greylisted(&attempt(&gw, "a@sender.test", "u@example.test"));
    assert!((150..=200).contains(&left), "{left}");
    assert!(gw.log().contains("retried early"), "{}", gw.log());
    advance(&gw, 201);
    accepted(&attempt(&gw, "a@sender.test", "u@example.test"));
    assert_eq!(delivered(&gw, "u"), 1);
}

#[test]
fn each_recipient_and_each_sender_is_a_triplet_of_its_own() {
    let gw = gateway("");
    let (r, _) = send(&gw, LOCAL, "a@sender.test", &["u@example.test"]);
    greylisted(&r[0]);
    advance(&gw, 301);
    // One transaction: the known recipient is accepted, the new one greylisted.
    let (r, data) = send(
        &gw,
        LOCAL,
        "a@sender.test",
        &["u@example.test", "v@example.test"],
    );
    accepted(&r[0]);
    assert_eq!(greylisted(&r[1]), 300);
    assert!(data.unwrap().starts_with("250"));
    assert_eq!((delivered(&gw, "u"), delivered(&gw, "v")), (1, 0));
    // Another sender to the known recipient: new too.
    greylisted(&attempt(&gw, "b@sender.test", "u@example.test"));
    // Case does not make a new triplet.
    accepted(&attempt(&gw, "A@Sender.TEST", "U@example.test"));
}

#[test]
fn the_null_sender_is_greylisted_as_an_empty_sender() {
    let gw = gateway("");
    greylisted(&attempt(&gw, "", "u@example.test"));
    advance(&gw, 301);
    accepted(&attempt(&gw, "", "u@example.test"));
    assert_eq!(delivered(&gw, "u"), 1);
    // A real sender to the same recipient is another triplet.
    greylisted(&attempt(&gw, "a@sender.test", "u@example.test"));
}

#[test]
fn the_client_network_is_a_slash_24_by_default_and_configurable() {
    // Default /24: a retry from another address of the /24 passes; another /24 is new.
    let gw = gateway("");
    greylisted(&attempt_from(
        &gw,
        [127, 0, 0, 1],
        "a@s.test",
        "u@example.test",
    ));
    advance(&gw, 301);
    accepted(&attempt_from(
        &gw,
        [127, 0, 0, 2],
        "a@s.test",
        "u@example.test",
    ));
    greylisted(&attempt_from(
        &gw,
        [127, 0, 1, 1],
        "a@s.test",
        "u@example.test",
    ));
    drop(gw);

    // /32: every address is a network of its own.
    let gw = gateway("ipv4_prefix = 32");
    greylisted(&attempt_from(
        &gw,
        [127, 0, 0, 1],
        "a@s.test",
        "u@example.test",
    ));
    advance(&gw, 301);
    assert_eq!(
        greylisted(&attempt_from(
            &gw,
            [127, 0, 0, 2],
            "a@s.test",
            "u@example.test"
        )),
        300
    );
    accepted(&attempt_from(
        &gw,
        [127, 0, 0, 1],
        "a@s.test",
        "u@example.test",
    ));
    drop(gw);

    // /8: 127.1.2.3 is in the network of 127.0.0.1.
    let gw = gateway("ipv4_prefix = 8");
    greylisted(&attempt_from(
        &gw,
        [127, 0, 0, 1],
        "a@s.test",
        "u@example.test",
    ));
    advance(&gw, 301);
    accepted(&attempt_from(
        &gw,
        [127, 1, 2, 3],
        "a@s.test",
        "u@example.test",
    ));
    assert!(gw.log().contains("127.0.0.0/8"), "{}", gw.log());
}

#[test]
fn verp_numbers_and_extensions_of_the_sender_share_a_triplet() {
    let gw = gateway("");
    greylisted(&attempt(&gw, "bounce-4711@lists.test", "u@example.test"));
    advance(&gw, 301);
    accepted(&attempt(&gw, "bounce-4711@lists.test", "u@example.test"));
    // postgrey's substitutions: another VERP number, an extension.
    accepted(&attempt(&gw, "bounce-4712@lists.test", "u@example.test"));
    accepted(&attempt(&gw, "bounce-99+x@lists.test", "u@example.test"));
    drop(gw);

    let gw = gateway("normalize_sender = false");
    greylisted(&attempt(&gw, "bounce-4711@lists.test", "u@example.test"));
    advance(&gw, 301);
    accepted(&attempt(&gw, "bounce-4711@lists.test", "u@example.test"));
    greylisted(&attempt(&gw, "bounce-4712@lists.test", "u@example.test"));
}

#[test]
fn a_client_network_is_auto_allowed_after_n_passes_counted_hourly() {
    let gw = gateway("auto_allow_after = 2, max_age_days = 1");
    let pass = |rcpt: &str| {
        greylisted(&attempt(&gw, "a@s.test", rcpt));
        advance(&gw, 301);
        accepted(&attempt(&gw, "a@s.test", rcpt));
    };
    pass("u1@example.test"); // counted: 1
    pass("u2@example.test"); // the same hour: not counted
    // Not auto-allowed yet: a new triplet is greylisted.
    greylisted(&attempt(&gw, "a@s.test", "u3@example.test"));
    assert!(!gw.log().contains("auto-allowed"), "{}", gw.log());
    advance(&gw, 3600);
    accepted(&attempt(&gw, "a@s.test", "u3@example.test")); // counted: 2
    assert!(
        gw.log().contains("client network auto-allowed"),
        "{}",
        gw.log()
    );
    // Now any triplet from the network passes at once, from any address of the /24.
    accepted(&attempt(&gw, "new@other.test", "u4@example.test"));
    accepted(&attempt_from(
        &gw,
        [127, 0, 0, 9],
        "x@third.test",
        "u5@example.test",
    ));
    assert_eq!(delivered(&gw, "u4") + delivered(&gw, "u5"), 2);
    assert!(
        gw.log()
            .contains("client network 127.0.0.0/24 auto-allowed (2 passes)"),
        "{}",
        gw.log()
    );
    // Another /24 is not allowed.
    greylisted(&attempt_from(
        &gw,
        [127, 0, 1, 1],
        "new@other.test",
        "u4@example.test",
    ));
    // max_age_days after it was last seen, the network is forgotten.
    advance(&gw, 86_401);
    greylisted(&attempt(&gw, "later@other.test", "u6@example.test"));
}

#[test]
fn auto_allow_can_be_disabled() {
    let gw = gateway("auto_allow_after = 0");
    // As many passes, an hour apart, as the default (5) needs.
    for i in 0..5 {
        let rcpt = format!("u{i}@example.test");
        greylisted(&attempt(&gw, "a@s.test", &rcpt));
        advance(&gw, 3601);
        accepted(&attempt(&gw, "a@s.test", &rcpt));
    }
    greylisted(&attempt(&gw, "a@s.test", "fresh@example.test"));
}

#[test]
fn a_remembered_triplet_is_forgotten_max_age_after_its_last_pass() {
    let gw = gateway("max_age_days = 1, auto_allow_after = 0");
    greylisted(&attempt(&gw, "a@s.test", "u@example.test"));
    advance(&gw, 301);
    accepted(&attempt(&gw, "a@s.test", "u@example.test"));
    // Each pass keeps it a day longer: two days after the first pass it is still known.
    advance(&gw, 86_000);
    accepted(&attempt(&gw, "a@s.test", "u@example.test"));
    advance(&gw, 86_000);
    accepted(&attempt(&gw, "a@s.test", "u@example.test"));
    // A day without mail: forgotten, greylisted as new.
    advance(&gw, 86_401);
    assert_eq!(greylisted(&attempt(&gw, "a@s.test", "u@example.test")), 300);
    assert_eq!(delivered(&gw, "u"), 3);
}

#[test]
fn a_first_retry_after_the_retry_window_starts_over() {
    let gw = gateway("retry_window_secs = 3600");
    greylisted(&attempt(&gw, "a@s.test", "u@example.test"));
    advance(&gw, 3601);
    // Too late: a new first attempt, with the full delay.
    assert_eq!(greylisted(&attempt(&gw, "a@s.test", "u@example.test")), 300);
    advance(&gw, 301);
    accepted(&attempt(&gw, "a@s.test", "u@example.test"));
}

#[test]
fn allowlisted_networks_senders_and_recipients_are_not_greylisted() {
    let gw = gateway(
        r#"allow_networks = ["127.0.0.2/32", "2001:db8::/32"], allow_sender_domains = ["partner.test"]"#,
    );
    accepted(&attempt_from(
        &gw,
        [127, 0, 0, 2],
        "a@x.test",
        "u1@example.test",
    ));
    greylisted(&attempt_from(
        &gw,
        [127, 0, 0, 3],
        "a@x.test",
        "u1@example.test",
    ));
    // A sender domain or a subdomain of it.
    accepted(&attempt(&gw, "a@partner.test", "u2@example.test"));
    accepted(&attempt(&gw, "a@mail.partner.test", "u2@example.test"));
    greylisted(&attempt(&gw, "a@notpartner.test", "u2@example.test"));
    // postgrey's recipients by default: postmaster@ and abuse@.
    accepted(&attempt(&gw, "a@x.test", "postmaster@example.test"));
    accepted(&attempt(&gw, "a@x.test", "Abuse@example.test"));
    let log = gw.log();
    for reason in [
        "in allow_networks (127.0.0.2)",
        "in allow_sender_domains (partner.test)",
        "in allow_recipients (postmaster@)",
    ] {
        assert!(log.contains(reason), "{reason}: {log}");
    }
    drop(gw);

    // A list of recipients replaces the default: an address (with extensions), a domain.
    let gw = gateway(r#"allow_recipients = ["vip@example.test", "sales.example.test"]"#);
    accepted(&attempt(&gw, "a@x.test", "vip@example.test"));
    accepted(&attempt(&gw, "a@x.test", "VIP+news@example.test"));
    greylisted(&attempt(&gw, "a@x.test", "other@example.test"));
    greylisted(&attempt(&gw, "a@x.test", "postmaster@example.test"));
    assert_eq!(delivered(&gw, "vip"), 1);
}

/// Sessions that ask about the same new triplet at the same moment agree: one of them
/// creates it (`set-if-absent`), the others see it waiting.
#[test]
fn concurrent_first_attempts_agree_on_one_first_sight() {
    const N: usize = 8;
    let gw = gateway("");
    let barrier = Arc::new(Barrier::new(N));
    let replies: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let gw = &gw;
                s.spawn(move || {
                    let mut c = Client::from(LOCAL, gw);
                    c.mail("a@s.test");
                    barrier.wait();
                    let r = c.rcpt("u@example.test");
                    c.cmd("QUIT");
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        greylisted(r);
    }
    // The gateway logs each refusal with its reason at INFO (and again at DEBUG).
    let log = gw.log();
    let refusals = |why: &str| {
        log.lines()
            .filter(|l| l.contains(" INFO ") && l.contains(why))
            .count()
    };
    assert_eq!(refusals("new triplet"), 1, "{log}");
    assert_eq!(refusals("retried early"), N - 1, "{log}");
}

/// Without `kv` or `clock` the plugin lets mail through (never a 5xx), and says why once
/// per session.
#[test]
fn without_kv_or_clock_mail_is_let_through_and_the_cause_logged_once() {
    for (caps, cause) in [
        (r#"["log"]"#, "the clock capability is not granted"),
        (r#"["log", "clock"]"#, "the kv capability is not granted"),
    ] {
        let gw = gateway_with("", caps, "");
        for _ in 0..2 {
            let (r, data) = send(
                &gw,
                LOCAL,
                "a@s.test",
                &["u@example.test", "v@example.test"],
            );
            accepted(&r[0]);
            accepted(&r[1]);
            assert!(data.unwrap().starts_with("250"));
        }
        assert_eq!(delivered(&gw, "u"), 2);
        let log = gw.log();
        assert_eq!(
            log.matches("greylisting skipped, mail let through").count(),
            2,
            "once per session: {log}"
        );
        assert!(log.contains(cause), "{cause}: {log}");
    }
}

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\n\
         ns A 127.0.0.1\n{records}"
    )
}

/// `skip_if_authenticated`: a sender whose domain's SPF passes for the client is not
/// greylisted (for `<>`, the HELO name's); one whose SPF fails is. Without the
/// `auth-results` grant everyone is greylisted and the log says why.
#[test]
fn skip_if_authenticated_lets_spf_passes_through() {
    let nsd = Nsd::start(&[
        (
            "good.test",
            &zone("good.test", "@ TXT \"v=spf1 ip4:127.0.0.1 -all\"\n"),
        ),
        (
            "bad.test",
            &zone("bad.test", "@ TXT \"v=spf1 ip4:192.0.2.1 -all\"\n"),
        ),
        // Our clients say EHLO client.test: the SPF identity of `<>`.
        (
            "client.test",
            &zone("client.test", "@ TXT \"v=spf1 ip4:127.0.0.1 -all\"\n"),
        ),
    ]);
    let dns = format!(
        "[dns]\nservers = [\"{}\"]\nreverse_lookup = false",
        nsd.addr
    );
    let gw = gateway_with(
        "skip_if_authenticated = true",
        r#"["kv", "clock", "log", "auth-results"]"#,
        &dns,
    );
    accepted(&attempt(&gw, "a@good.test", "u@example.test"));
    assert_eq!(delivered(&gw, "u"), 1);
    greylisted(&attempt(&gw, "a@bad.test", "u@example.test"));
    accepted(&attempt(&gw, "", "bounces@example.test"));
    let log = gw.log();
    assert!(log.contains("SPF pass for good.test"), "{log}");
    assert!(log.contains("SPF pass for client.test"), "{log}");
    drop(gw);

    let gw = gateway_with("skip_if_authenticated = true", CAPS, &dns);
    greylisted(&attempt(&gw, "a@good.test", "u@example.test"));
    assert!(
        gw.log()
            .contains("skip_if_authenticated needs the auth-results capability"),
        "{}",
        gw.log()
    );
}

/// Typos and bad values in the plugin's config are refused at load, by key.
#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    let check = |config: &str| {
        std::fs::write(
            &path,
            format!(
                "[[plugin]]\nname = \"greylist\"\npath = {:?}\ncapabilities = {CAPS}\n\
                 config = {{ {config} }}\n",
                shipped("greylist").display().to_string()
            ),
        )
        .unwrap();
        mailgate(&["check-config", "--config", &path.display().to_string()])
    };
    let (ok, _, err) = check("delay_secs = 60, retry_window_secs = 3600, max_age_days = 7");
    assert!(ok, "{err}");
    for (config, named) in [
        ("delay = 300", "config key `delay`: unknown key"),
        ("ipv4_prefix = 33", "ipv4_prefix"),
        (
            "delay_secs = 600, retry_window_secs = 600",
            "retry_window_secs",
        ),
        (r#"allow_networks = ["10.0.0.0/8", "nonsense"]"#, "nonsense"),
        ("auto_allow_after = -1", "auto_allow_after"),
        (r#"message = "Greylisted ⏳""#, "message"),
    ] {
        let (ok, _, err) = check(config);
        assert!(!ok, "{config} was accepted");
        assert!(err.contains(named), "{config}: {err}");
    }
}
