//! Recipient verification (the `verify` capability) over the real gateway binary in queue
//! mode: the fixture plugin `verify-probe` asks, at each RCPT, the next hop of the
//! recipient's domain (a `[queue.routes]` entry) or the host in its `via` config whether it
//! accepts the recipient, and refuses with `550 5.1.1` and the next hop's reply text, or
//! answers `451 4.4.3` when it could not ask. Next hops: a real Postfix (Debian's package)
//! that knows one mailbox, aiosmtpd, a port where nothing listens and one that never greets.
//! The probe and cache counters come from `mailgate status`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{DeadPort, Gateway, Postfix, Setup, Upstream, json, mailgate, plugin_toml, smtplib};

const WAIT: Duration = Duration::from_secs(60);

/// Queue mode with `example.test` routed to `route` (`host:port`, opportunistic TLS), the
/// `verify-probe` fixture granted `caps` with `config` (TOML inline-table body), and
/// `extra` sections.
fn gateway(dir: &std::path::Path, route: &str, caps: &str, config: &str, extra: &str) -> Gateway {
    let plugin = plugin_toml(
        "verify",
        "verify-probe",
        &format!(
            "capabilities = {caps}\nlimits = {{ deadline_ms = 20000 }}\nconfig = {{ {config} }}"
        ),
    );
    Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n\
             [queue.routes]\n\"example.test\" = {{ host = {route:?} }}\n{extra}\n{plugin}",
            dir.join("spool").display().to_string()
        ))
        .start()
}

/// One transaction from `sender@client.test` to `rcpt`; the reply to its RCPT TO
/// (`code`, `text`).
fn rcpt(gw: &Gateway, rcpt: &str) -> (i64, String) {
    let port = gw.port();
    let out = json(&smtplib(&[
        "send",
        "127.0.0.1",
        &port,
        "--from",
        "sender@client.test",
        "--to",
        rcpt,
    ]));
    let r = &out["rcpt"][rcpt];
    assert!(r.is_object(), "no RCPT reply: {out}\n{}", gw.log());
    if r["code"] == 250 {
        assert_eq!(out["data"]["code"], 250, "{out}");
    }
    (
        r["code"].as_i64().unwrap(),
        r["text"].as_str().unwrap().to_string(),
    )
}

/// The `verify` counters of `mailgate status`.
fn counters(gw: &Gateway) -> Value {
    gw.status()["verify"].clone()
}

/// `mailgate clock advance SECS` for this gateway.
fn advance(gw: &Gateway, secs: u64) {
    let cfg = gw.config.display().to_string();
    let (ok, out, err) = mailgate(&["clock", "advance", &secs.to_string(), "--config", &cfg]);
    assert!(ok, "mailgate clock advance {secs}: {out}{err}");
}

/// A Postfix that knows `pat@example.test`: the known recipient is accepted at RCPT, the
/// unknown one refused there with Postfix's own `550 5.1.1` text, and the second try of the
/// unknown one is answered from the cache: Postfix saw one probe for it, and the counters
/// say two probes in all and one cache hit. Each probe is EHLO, MAIL FROM:<>, RCPT, QUIT.
#[test]
fn postfix_knows_one_mailbox_refuses_the_other_and_the_retry_is_answered_from_the_cache() {
    let pf = Postfix::start(&["pat@example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &pf.addr.to_string(), "[\"verify\"]", "", "");

    let (code, text) = rcpt(&gw, "pat@example.test");
    assert_eq!(code, 250, "{text}\n{}", gw.log());
    let c = counters(&gw);
    assert_eq!(
        (c["probes"].as_u64(), c["cache_hits"].as_u64()),
        (Some(1), Some(0)),
        "{c}"
    );

    let (code, text) = rcpt(&gw, "nobody@example.test");
    assert_eq!(code, 550, "{text}\n{}", gw.log());
    assert!(
        text.starts_with("5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"),
        "{text}"
    );
    assert!(!text.contains("[cached]"), "{text}");

    let (code, text) = rcpt(&gw, "Nobody@Example.TEST");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("User unknown in virtual mailbox table"),
        "{text}"
    );
    assert!(
        text.ends_with("[cached]"),
        "the second try comes from the cache: {text}"
    );
    let c = counters(&gw);
    assert_eq!(c["probes"], 2, "{c}");
    assert_eq!(c["cache_hits"], 1, "{c}");
    assert_eq!(c["cached"], 2, "{c}");
    assert_eq!(c["in_flight"], 0, "{c}");

    // What Postfix saw: the probes' sessions (no DATA), from <> with our EHLO name, and one
    // refusal of nobody@, not two.
    assert!(
        pf.wait_log_count("ehlo=1 mail=1 rcpt=1 quit=1 commands=4", 1, WAIT),
        "the accepted probe's session:\n{}",
        pf.maillog()
    );
    assert!(
        pf.wait_log_count("ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4", 1, WAIT),
        "the refused probe's session:\n{}",
        pf.maillog()
    );
    let log = pf.maillog();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains("nobody@example.test"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("from=<>"), "{}", refusals[0]);
    assert!(
        refusals[0].contains("helo=<mx.example.test>"),
        "{}",
        refusals[0]
    );
    // One log line per probe, not per cache hit.
    let glog = gw.log();
    let probes: Vec<&str> = glog
        .lines()
        .filter(|l| l.contains("recipient verification probe"))
        .collect();
    assert_eq!(probes.len(), 2, "{glog}");
    assert!(probes[1].contains("refused"), "{}", probes[1]);
    assert!(probes[1].contains("nobody@example.test"), "{}", probes[1]);
    // The accepted recipient's message still goes through the queue to Postfix.
    assert!(
        pf.wait_log_count("status=sent", 1, WAIT),
        "{}\n{}",
        pf.maillog(),
        gw.log()
    );
    assert_eq!(pf.mailbox("example.test", "pat").len(), 1);
}

/// A next hop where nothing listens: `451 4.4.3` (never a 5xx), and nothing is cached, so
/// the retry probes again.
#[test]
fn a_next_hop_that_is_down_gets_451_and_is_asked_again_next_time() {
    let dead = DeadPort::new();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        dir.path(),
        &format!("127.0.0.1:{}", dead.port),
        "[\"verify\"]",
        "",
        "",
    );
    for n in 1..=2 {
        let (code, text) = rcpt(&gw, "u@example.test");
        assert_eq!(code, 451, "{text}\n{}", gw.log());
        assert!(
            text.starts_with("4.4.3 Recipient verification unavailable:"),
            "{text}"
        );
        assert!(text.contains("cannot connect"), "{text}");
        let c = counters(&gw);
        assert_eq!(c["probes"], n, "{c}");
        assert_eq!(c["cache_hits"], 0, "{c}");
        assert_eq!(c["cached"], 0, "{c}");
    }
}

/// A next hop that takes the connection and never greets: the call ends before the
/// plugin's deadline (1 s) with the plugin's own `451 4.4.3`, not the `451 4.7.0` of a
/// plugin failure; the probe runs on to `timeout_secs` and its failure is not cached.
#[test]
fn a_silent_next_hop_gets_451_before_the_plugin_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_toml(
        "verify",
        "verify-probe",
        "capabilities = [\"verify\"]\nlimits = { deadline_ms = 1000 }",
    );
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n\
             [queue.routes]\n\"example.test\" = {{ host = {addr:?}, tls = \"none\" }}\n\
             [verify]\ntimeout_secs = 3\n{plugin}",
            dir.path().join("spool").display().to_string()
        ))
        .start();
    let (code, text) = rcpt(&gw, "u@example.test");
    assert_eq!(code, 451, "{text}\n{}", gw.log());
    assert!(text.starts_with("4.4.3 "), "{text}\n{}", gw.log());
    assert!(text.contains("the probe goes on"), "{text}");
    let c = gw.status_when(|s| s["verify"]["in_flight"] == 0);
    assert_eq!(
        c["verify"]["in_flight"], 0,
        "the probe ends at timeout_secs: {c}"
    );
    assert_eq!(c["verify"]["probes"], 1, "{c}");
    assert_eq!(c["verify"]["cached"], 0, "{c}");
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("recipient verification probe") && l.contains("unavailable")),
        "{log}"
    );
    drop(silent);
}

/// `recipient-via` asks the host the plugin names (an aiosmtpd that accepts everything but
/// one address), not the route of the domain (a dead port here).
#[test]
fn recipient_via_asks_the_named_host_instead_of_the_route() {
    let up = Upstream::start(&["--reject", "gone@example.test"]);
    let dead = DeadPort::new();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        dir.path(),
        &format!("127.0.0.1:{}", dead.port),
        "[\"verify\"]",
        &format!("via = {:?}, via_tls = \"disabled\"", up.addr()),
        "",
    );
    let (code, text) = rcpt(&gw, "anyone@example.test");
    assert_eq!(code, 250, "{text}\n{}", gw.log());
    let (code, text) = rcpt(&gw, "gone@example.test");
    assert_eq!(code, 550, "{text}\n{}", gw.log());
    assert_eq!(
        text,
        "5.1.1 <gone@example.test>: Recipient address rejected: User unknown"
    );
    let c = counters(&gw);
    assert_eq!(c["probes"], 2, "{c}");
    let log = gw.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("recipient verification probe") && l.contains(&up.addr()))
            .count(),
        2,
        "{log}"
    );
    // Probes carry no message (and the accepted one waits for the dead route).
    assert!(up.received().is_empty());
}

/// Without the grant the call answers `denied` and no probe is made, although the named
/// host would accept the recipient.
#[test]
fn verify_is_denied_without_the_grant() {
    let up = Upstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        dir.path(),
        &up.addr(),
        "[\"log\"]",
        &format!("via = {:?}, via_tls = \"disabled\"", up.addr()),
        "",
    );
    let (code, text) = rcpt(&gw, "anyone@example.test");
    assert_eq!(code, 451, "{text}\n{}", gw.log());
    assert_eq!(text, "4.3.5 verify capability not granted");
    let c = counters(&gw);
    assert_eq!(c["probes"], 0, "{c}");
    assert_eq!(c["cache_hits"], 0, "{c}");
}

/// A refused answer is kept for `negative_ttl_secs` on the plugins' clock: within it the
/// cache answers, past it (`mailgate clock advance`) the next hop is asked again.
#[test]
fn a_refused_answer_is_asked_again_after_negative_ttl_secs() {
    let up = Upstream::start(&["--reject", "gone@example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        dir.path(),
        &up.addr(),
        "[\"verify\"]",
        "",
        "[verify]\nnegative_ttl_secs = 60\n[chain]\nadjustable_clock = true\n",
    );
    let (code, text) = rcpt(&gw, "gone@example.test");
    assert_eq!((code, text.contains("[cached]")), (550, false), "{text}");
    advance(&gw, 50);
    let (code, text) = rcpt(&gw, "gone@example.test");
    assert_eq!((code, text.contains("[cached]")), (550, true), "{text}");
    advance(&gw, 11);
    let (code, text) = rcpt(&gw, "gone@example.test");
    assert_eq!((code, text.contains("[cached]")), (550, false), "{text}");
    let c = counters(&gw);
    assert_eq!(c["probes"], 2, "{c}");
    assert_eq!(c["cache_hits"], 1, "{c}");
}

/// An accepted answer older than `positive_refresh_secs` still answers at once, and a probe
/// in the background replaces it (Postfix's `address_verify_positive_refresh_time`); the
/// refreshed answer then serves as a fresh one.
#[test]
fn an_old_accepted_answer_serves_and_is_refreshed_in_the_background() {
    let up = Upstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        dir.path(),
        &up.addr(),
        "[\"verify\"]",
        "",
        "[verify]\npositive_refresh_secs = 30\n[chain]\nadjustable_clock = true\n",
    );
    let accepted = |gw: &Gateway| {
        let (code, text) = rcpt(gw, "pat@example.test");
        assert_eq!(code, 250, "{text}");
    };
    let figures =
        |c: &Value| [&c["probes"], &c["cache_hits"], &c["refreshes"]].map(|v| v.as_u64().unwrap());
    accepted(&gw);
    advance(&gw, 20);
    accepted(&gw);
    assert_eq!(figures(&counters(&gw)), [1, 1, 0], "within the refresh age");
    advance(&gw, 11);
    accepted(&gw);
    let c = gw.status_when(|s| s["verify"]["probes"] == 2 && s["verify"]["in_flight"] == 0);
    assert_eq!(figures(&c["verify"]), [2, 2, 1], "{c}");
    // Refreshed: fresh again for another 30 s, so no further probe.
    advance(&gw, 20);
    accepted(&gw);
    assert_eq!(figures(&counters(&gw)), [2, 3, 1]);
}
