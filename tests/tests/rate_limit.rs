//! The shipped `rate-limit` plugin (plugins/rate-limit) in the real gateway: real SMTP
//! sessions (Python smtplib, or raw for exact replies), counters in the gateway's `kv`,
//! windows moved by `mailgate clock advance` (`chain.adjustable_clock`), never by sleeping.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::SystemTime;

use support::{Gateway, Raw, Setup, json, mailgate, shipped, smtplib};

/// The `[[plugin]]` table of the rate-limit plugin with `capabilities` and the lines of
/// its `[plugin.config]`.
fn plugin(capabilities: &str, config: &str) -> String {
    format!(
        "[[plugin]]\nname = \"rate-limit\"\npath = {:?}\ncapabilities = {capabilities}\n\
         [plugin.config]\n{config}\n",
        shipped("rate-limit").display().to_string()
    )
}

/// A gateway with an adjustable plugin clock and the plugin granted kv, clock and log.
fn gateway(config: &str) -> Gateway {
    Setup::default()
        .section("[chain]\nadjustable_clock = true")
        .section(&plugin(r#"["kv", "clock", "log"]"#, config))
        .start()
}

/// `limits = [ one limit ]`.
fn limit(what: &str, per: &str, max: u32, window: u32) -> String {
    format!(
        "limits = [{{ what = \"{what}\", per = \"{per}\", max = {max}, window_secs = {window} }}]"
    )
}

/// `mailgate clock advance SECS`; the clock's total offset in seconds.
fn advance(gw: &Gateway, secs: u64) -> u64 {
    let cfg = gw.config.display().to_string();
    let (ok, out, err) = mailgate(&["clock", "advance", &secs.to_string(), "--config", &cfg]);
    assert!(ok, "clock advance: {err}");
    json(&out)["offset_secs"].as_u64().expect("offset_secs")
}

/// The time plugins see (the system's, plus the offset), milliseconds.
fn plugin_now_ms(offset_secs: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    now.as_millis() as u64 + offset_secs * 1000
}

/// Moves the plugin clock forward to `into` seconds (up to one more) after the start of a
/// `window`-second window; the new offset.
fn align(gw: &Gateway, offset: u64, window: u64, into: u64) -> u64 {
    let w = window * 1000;
    let phase = plugin_now_ms(offset) % w;
    let ms = (into * 1000 + w - phase) % w;
    let offset = if ms == 0 {
        offset
    } else {
        advance(gw, ms.div_ceil(1000))
    };
    let phase = plugin_now_ms(offset) % w;
    assert!(
        (into * 1000..into * 1000 + 2000).contains(&phase),
        "aligned at {phase} ms"
    );
    offset
}

/// A session greeted and past EHLO.
fn session(gw: &Gateway) -> Raw {
    let mut r = Raw::connect(gw.smtp);
    let greeting = r.reply();
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = r.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    r
}

/// One transaction: MAIL (its reply returned if it is not 250), each RCPT, DATA if a
/// recipient was accepted. The replies, in order.
fn transaction(r: &mut Raw, from: &str, to: &[&str]) -> Vec<String> {
    let mut replies = vec![r.cmd(&format!("MAIL FROM:<{from}>"))];
    if !replies[0].starts_with("250") {
        return replies;
    }
    let mut accepted = false;
    for t in to {
        let reply = r.cmd(&format!("RCPT TO:<{t}>"));
        accepted |= reply.starts_with("250");
        replies.push(reply);
    }
    if accepted {
        let go = r.cmd("DATA");
        assert!(go.starts_with("354"), "{go}");
        replies.push(r.cmd("Subject: rate\r\n\r\nhello\r\n."));
    } else {
        replies.push(r.cmd("RSET"));
    }
    replies
}

/// MAIL FROM then RSET: one message counted (or refused); the MAIL reply.
fn mail(r: &mut Raw, from: &str) -> String {
    let reply = r.cmd(&format!("MAIL FROM:<{from}>"));
    let rset = r.cmd("RSET");
    assert!(rset.starts_with("250"), "{rset}");
    reply
}

/// smtplib: one message in its own connection; the JSON of what happened.
fn send(gw: &Gateway, from: &str, to: &str) -> serde_json::Value {
    let port = gw.port();
    json(&smtplib(&[
        "send",
        "127.0.0.1",
        &port,
        "--from",
        from,
        "--to",
        to,
    ]))
}

/// A connection from `source` (a loopback address); the greeting and the connection.
fn connect_from(source: &str, to: SocketAddr) -> (String, Raw) {
    let mut raw = Raw::connect_from(source.parse().unwrap(), to);
    (raw.reply(), raw)
}

#[test]
fn the_message_past_the_limit_gets_451_at_mail_and_the_first_n_are_delivered() {
    let gw = gateway(&limit("messages", "client", 3, 3600));
    for i in 0..3 {
        let out = send(&gw, &format!("s{i}@client.test"), "u@example.test");
        assert_eq!(out["data"]["code"], 250, "message {i}: {out}");
    }
    let out = send(&gw, "s3@client.test", "u@example.test");
    assert_eq!(out["mail"]["code"], 451, "{out}");
    assert_eq!(
        out["mail"]["text"],
        "4.7.1 Too many messages from 127.0.0.1: 3 per 3600 s, try again later",
        "{out}"
    );
    assert!(out.get("data").is_none(), "{out}");
    assert_eq!(gw.mailbox("example.test", "u").len(), 3);
    // Refused attempts are not counted, but the window is still full.
    let mut r = session(&gw);
    assert!(mail(&mut r, "again@client.test").starts_with("451 4.7.1 "));
    assert_eq!(gw.mailbox("example.test", "u").len(), 3);
    // The gateway logs the decision with the plugin's reason.
    let log = gw.log();
    assert!(
        log.contains("messages per client 127.0.0.1: 4.00 in the sliding 3600 s window, limit 3"),
        "{log}"
    );
}

#[test]
fn the_recipient_past_the_limit_gets_451_at_rcpt() {
    let gw = gateway(&limit("recipients", "client", 3, 3600));
    let mut r = session(&gw);
    let replies = transaction(
        &mut r,
        "s@client.test",
        &[
            // Refused by the gateway's relay check before the plugin runs: not counted.
            "x@elsewhere.test",
            "a@example.test",
            "b@example.test",
            "c@example.test",
            "d@example.test",
        ],
    );
    assert!(replies[1].starts_with("550 5.7.1 "), "{replies:?}");
    for (i, reply) in replies[2..5].iter().enumerate() {
        assert!(reply.starts_with("250 "), "recipient {i}: {reply}");
    }
    assert_eq!(
        replies[5],
        "451 4.7.1 Too many recipients from 127.0.0.1: 3 per 3600 s, try again later\r\n"
    );
    assert!(replies[6].starts_with("250 "), "DATA: {replies:?}");
    for (local, n) in [("a", 1), ("b", 1), ("c", 1), ("d", 0)] {
        assert_eq!(gw.mailbox("example.test", local).len(), n, "{local}");
    }
    // Another session of the same client: still over.
    let mut r = session(&gw);
    let replies = transaction(&mut r, "s@client.test", &["e@example.test"]);
    assert!(replies[1].starts_with("451 4.7.1 "), "{replies:?}");
}

#[test]
fn the_connection_past_the_limit_gets_421_and_is_closed() {
    let gw = gateway(&limit("connections", "client", 3, 3600));
    let open: Vec<Raw> = (0..3)
        .map(|i| {
            let mut r = Raw::connect(gw.smtp);
            let greeting = r.reply();
            assert!(greeting.starts_with("220 "), "connection {i}: {greeting}");
            r
        })
        .collect();
    let mut r = Raw::connect(gw.smtp);
    assert_eq!(
        r.reply(),
        "421 4.7.0 Too many connections from 127.0.0.1: 3 per 3600 s, try again later\r\n"
    );
    assert!(r.closed(), "the connection closes after the 421");
    drop(open);
    // Closing connections frees nothing: this is a rate, not a concurrency limit.
    let mut r = Raw::connect(gw.smtp);
    assert!(r.reply().starts_with("421 4.7.0 "));
}

/// 10 messages per 600 s. After a full window, the previous window's 10 count in
/// proportion to how much of it the sliding window still covers: one more message fits
/// once a tenth of the new window has passed (60 s), two once a fifth has (120 s).
#[test]
fn a_client_recovers_as_the_sliding_window_moves_on() {
    let gw = gateway(&limit("messages", "client", 10, 600));
    let phase = |offset: u64| plugin_now_ms(offset) % 600_000 / 1000;
    align(&gw, 0, 600, 5);
    let mut r = session(&gw);
    for i in 0..10 {
        assert!(mail(&mut r, "s@client.test").starts_with("250 "), "{i}");
    }
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));

    // The next window, 35 s in: 10 × (1 − 35/600) + 1 = 10.4 > 10.
    let mut offset = advance(&gw, 630);
    assert!((35..55).contains(&phase(offset)), "{}", phase(offset));
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));
    // 75 s in: 10 × (1 − 75/600) + 1 = 9.75: one passes, a second does not (10.75).
    offset = advance(&gw, 40);
    assert!((75..95).contains(&phase(offset)), "{}", phase(offset));
    assert!(mail(&mut r, "s@client.test").starts_with("250 "));
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));
    // 105 s in: 10 × (1 − 105/600) + 2 = 10.25; 135 s in: 9.75.
    offset = advance(&gw, 30);
    assert!((105..115).contains(&phase(offset)), "{}", phase(offset));
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));
    offset = advance(&gw, 30);
    assert!((135..145).contains(&phase(offset)), "{}", phase(offset));
    assert!(mail(&mut r, "s@client.test").starts_with("250 "));
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));

    // One window later the previous window holds 2: 2 × (1 − 135/600) ≈ 1.55, so 8 fit.
    offset = advance(&gw, 600);
    assert!((135..145).contains(&phase(offset)), "{}", phase(offset));
    for i in 0..8 {
        assert!(mail(&mut r, "s@client.test").starts_with("250 "), "{i}");
    }
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));

    // Two windows later nothing is left: 10 again, and the 11th is refused.
    advance(&gw, 1200);
    for i in 0..10 {
        assert!(mail(&mut r, "s@client.test").starts_with("250 "), "{i}");
    }
    assert!(mail(&mut r, "s@client.test").starts_with("451 4.7.1 "));
}

#[test]
fn messages_are_limited_per_sender_domain() {
    let gw = gateway(&limit("messages", "sender_domain", 2, 3600));
    let mut r = session(&gw);
    assert!(mail(&mut r, "a@one.test").starts_with("250 "));
    assert!(mail(&mut r, "b@ONE.test").starts_with("250 "));
    assert_eq!(
        mail(&mut r, "c@one.test"),
        "451 4.7.1 Too many messages from sender domain one.test: 2 per 3600 s, try again later\r\n"
    );
    // Other domains have counters of their own, subdomains included; `<>` has no domain.
    assert!(mail(&mut r, "a@two.test").starts_with("250 "));
    assert!(mail(&mut r, "a@sub.one.test").starts_with("250 "));
    for _ in 0..3 {
        assert!(mail(&mut r, "").starts_with("250 "));
    }
    // Refused at MAIL, nothing is delivered; the others are.
    let replies = transaction(&mut r, "d@one.test", &["u@example.test"]);
    assert!(replies[0].starts_with("451 "), "{replies:?}");
    let replies = transaction(&mut r, "d@two.test", &["u@example.test"]);
    assert!(replies[2].starts_with("250 "), "{replies:?}");
    assert_eq!(gw.mailbox("example.test", "u").len(), 1);
}

#[test]
fn allowlisted_sender_domains_and_networks_are_neither_limited_nor_counted() {
    let gw = gateway(&format!(
        "{}\nallow_sender_domains = [\"friends.test\"]",
        limit("messages", "client", 1, 3600)
    ));
    let mut r = session(&gw);
    for from in ["a@friends.test", "b@mail.friends.test", "c@friends.test"] {
        let replies = transaction(&mut r, from, &["u@example.test"]);
        assert!(replies[2].starts_with("250 "), "{from}: {replies:?}");
    }
    // None of those counted: the client's one message still fits, the next does not.
    assert!(mail(&mut r, "a@stranger.test").starts_with("250 "));
    assert!(mail(&mut r, "b@stranger.test").starts_with("451 4.7.1 "));
    assert!(mail(&mut r, "b@notfriends.test").starts_with("451 4.7.1 "));
    assert_eq!(gw.mailbox("example.test", "u").len(), 3);

    let gw = gateway(
        "limits = [{ what = \"connections\", per = \"client\", max = 1, window_secs = 3600 }, \
         { what = \"messages\", per = \"client\", max = 1, window_secs = 3600 }]\n\
         allow_networks = [\"10.0.0.0/8\", \"127.0.0.0/8\"]",
    );
    for i in 0..3 {
        let mut r = session(&gw);
        for j in 0..3 {
            assert!(
                mail(&mut r, "a@stranger.test").starts_with("250 "),
                "{i}.{j}"
            );
        }
    }
}

/// Clients in `relay.trusted_networks` are exempt unless `exempt_trusted = false`.
#[test]
fn trusted_networks_are_exempt_unless_configured_otherwise() {
    for (exempt, passing) in [("true", 3), ("false", 1)] {
        let gw = Setup::default()
            .section(
                "[relay]\nlocal_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.0/8\"]",
            )
            .section("[chain]\nadjustable_clock = true")
            .section(&plugin(
                r#"["kv", "clock", "log"]"#,
                &format!(
                    "{}\nexempt_trusted = {exempt}",
                    limit("messages", "client", 1, 3600)
                ),
            ))
            .start();
        let mut r = session(&gw);
        let replies: Vec<String> = (0..3).map(|_| mail(&mut r, "s@client.test")).collect();
        let passed = replies.iter().filter(|m| m.starts_with("250 ")).count();
        assert_eq!(passed, passing, "exempt_trusted = {exempt}: {replies:?}");
    }
}

#[test]
fn clients_are_counted_by_network_prefix() {
    // One connection per /24: 127.0.0.1 and 127.0.0.2 share it.
    let gw = gateway(
        "ipv4_prefix = 24\nlimits = [{ what = \"connections\", per = \"client\", max = 1, window_secs = 3600 }]",
    );
    let (greeting, _first) = connect_from("127.0.0.1", gw.smtp);
    assert!(greeting.starts_with("220 "), "{greeting}");
    let (greeting, _) = connect_from("127.0.0.2", gw.smtp);
    assert_eq!(
        greeting,
        "421 4.7.0 Too many connections from 127.0.0.0/24: 1 per 3600 s, try again later\r\n"
    );
    // The default /32 (here set on the limit itself): each address its own.
    let gw = gateway(
        "ipv4_prefix = 24\nlimits = [{ what = \"connections\", per = \"client\", max = 1, window_secs = 3600, ipv4_prefix = 32 }]",
    );
    for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let (greeting, _) = connect_from(source, gw.smtp);
        assert!(greeting.starts_with("220 "), "{source}: {greeting}");
    }
    let (greeting, _) = connect_from("127.0.0.2", gw.smtp);
    assert!(
        greeting.starts_with("421 4.7.0 Too many connections from 127.0.0.2: "),
        "{greeting}"
    );
}

#[test]
fn parallel_sessions_never_let_more_than_max_messages_through() {
    const MAX: usize = 10;
    const THREADS: usize = 4;
    const EACH: usize = 6;
    let gw = gateway(&limit("messages", "client", MAX as u32, 3600));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            let mut r = session(&gw);
            std::thread::spawn(move || {
                start.wait();
                let (mut accepted, mut refused) = (0, 0);
                for i in 0..EACH {
                    let replies = transaction(
                        &mut r,
                        &format!("t{t}.{i}@client.test"),
                        &["u@example.test"],
                    );
                    if replies[0].starts_with("250 ") {
                        assert!(replies[2].starts_with("250 "), "{replies:?}");
                        accepted += 1;
                    } else {
                        assert!(replies[0].starts_with("451 4.7.1 "), "{replies:?}");
                        refused += 1;
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let (accepted, refused) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, r), (a1, r1)| (a + a1, r + r1));
    assert_eq!(accepted, MAX, "accepted");
    assert_eq!(refused, THREADS * EACH - MAX, "refused");
    assert_eq!(gw.mailbox("example.test", "u").len(), MAX);
}

#[test]
fn parallel_connections_never_get_more_than_max_greetings() {
    const MAX: usize = 7;
    const THREADS: usize = 4;
    const EACH: usize = 4;
    let gw = gateway(&limit("connections", "client", MAX as u32, 3600));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let start = Arc::clone(&start);
            let addr = gw.smtp;
            std::thread::spawn(move || {
                start.wait();
                let mut greeted = Vec::new();
                let mut refused = 0;
                for _ in 0..EACH {
                    let mut r = Raw::connect(addr);
                    let greeting = r.reply();
                    if greeting.starts_with("220 ") {
                        greeted.push(r);
                    } else {
                        assert!(greeting.starts_with("421 4.7.0 "), "{greeting}");
                        refused += 1;
                    }
                }
                (greeted.len(), refused)
            })
        })
        .collect();
    let (greeted, refused) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, r), (a1, r1)| (a + a1, r + r1));
    assert_eq!(greeted, MAX, "greeted");
    assert_eq!(refused, THREADS * EACH - MAX, "refused");
}

#[test]
fn without_kv_or_clock_the_plugin_fails_open_and_says_so_once_per_session() {
    for (caps, failed) in [
        (r#"["clock", "log"]"#, "kv failed"),
        (r#"["log"]"#, "clock failed"),
    ] {
        let gw = Setup::default()
            .section(&plugin(caps, &limit("recipients", "client", 1, 3600)))
            .start();
        for i in 0..3 {
            let mut r = session(&gw);
            let replies = transaction(
                &mut r,
                "s@client.test",
                &["a@example.test", "b@example.test"],
            );
            assert!(
                replies.iter().all(|r| r.starts_with("250 ")),
                "{caps} session {i}: {replies:?}"
            );
        }
        assert_eq!(gw.mailbox("example.test", "a").len(), 3, "{caps}");
        let log = gw.log();
        let warnings = log
            .lines()
            .filter(|l| l.contains("rate limits not enforced in this session (failing open)"))
            .collect::<Vec<_>>();
        assert_eq!(warnings.len(), 3, "{caps}: {log}");
        assert!(
            warnings.iter().all(|w| w.contains(failed)),
            "{caps}: {warnings:?}"
        );
    }
}

/// A refused recipient tags the transaction `ratelimit:recipients`; the tags go with the
/// message (kept in the queue entry in queue mode).
#[test]
fn refusals_carry_the_ratelimit_tag() {
    let dir = tempfile::tempdir().unwrap();
    let dead = support::DeadPort::new();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n[queue.routes]\n\
             \"example.test\" = {{ host = \"127.0.0.1:{}\", tls = \"none\" }}",
            dir.path().join("spool").display().to_string(),
            dead.port
        ))
        .section("[chain]\nadjustable_clock = true")
        .section(&plugin(
            r#"["kv", "clock", "log"]"#,
            &limit("recipients", "client", 1, 3600),
        ))
        .start();
    let mut r = session(&gw);
    let replies = transaction(
        &mut r,
        "s@client.test",
        &["a@example.test", "b@example.test"],
    );
    assert!(replies[2].starts_with("451 4.7.1 "), "{replies:?}");
    assert!(replies[3].starts_with("250 "), "{replies:?}");
    let list = gw.queue(&["list"]);
    let tags = &list["entries"][0]["tags"];
    assert!(
        tags.as_array()
            .is_some_and(|t| t.iter().any(|t| t == "ratelimit:recipients")),
        "{list}"
    );
}

#[test]
fn check_config_names_bad_keys_and_loads_the_documented_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[dns]\nreverse_lookup = false\n{}",
                plugin(r#"["kv", "clock", "log"]"#, config)
            ),
        )
        .unwrap();
        let (ok, out, err) = mailgate(&["check-config", "--config", &path.display().to_string()]);
        (ok, format!("{out}{err}"))
    };
    // The syntax of docs/rate-limit.md: a multi-line list of inline tables.
    let (ok, out) = check(
        "limits = [\n  { what = \"connections\", per = \"client\", max = 30, window_secs = 60 },\n  \
         { what = \"messages\", per = \"sender_domain\", max = 100, window_secs = 3600 },\n  \
         { what = \"recipients\", per = \"client\", max = 200, window_secs = 60 },\n]\n\
         allow_networks = [\"192.0.2.0/24\"]\nallow_sender_domains = [\"example.org\"]",
    );
    assert!(ok, "{out}");
    for (config, needle) in [
        (
            format!("{}\nlimit = 3", limit("messages", "client", 1, 60)),
            "config key `limit`: unknown key",
        ),
        (
            limit("connections", "sender_domain", 1, 60),
            "connections can only be limited per client",
        ),
        (
            "limits = [{ what = \"messages\", per = \"client\", max = 1, window = 60 }]"
                .to_string(),
            "unknown key `window`",
        ),
        (String::new(), "config key `limits`: is required"),
    ] {
        let (ok, out) = check(&config);
        assert!(!ok, "{config:?} accepted: {out}");
        assert!(out.contains(needle), "{config:?}: {out}");
    }
}
