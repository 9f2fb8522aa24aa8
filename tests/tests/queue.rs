//! Queue mode end to end: the real gateway stores each message durably before its 250,
//! then delivers to real upstream servers (aiosmtpd, started and stopped by the tests)
//! chosen per recipient by static route or by MX lookup through NSD, retries 4xx and
//! outages, bounces 5xx to the sender (RFC 3464), and loses nothing to `kill -9`.

mod support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Gateway, Nsd, Setup, Upstream, free_port, json, peer, smtplib};

const HOST: &str = "127.0.0.1";
const WAIT: Duration = Duration::from_secs(60);

/// Queue mode with fast retries; `routes` are `(domain, host:port)`.
fn queue_setup(dir: &std::path::Path, routes: &[(&str, String)], extra: &str) -> Setup {
    let mut cfg = format!(
        "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\nretry_initial_secs = 1\nretry_max_secs = 2\n{extra}\n",
        dir.join("spool").display().to_string()
    );
    if !routes.is_empty() {
        cfg.push_str("[queue.routes]\n");
        for (d, h) in routes {
            cfg.push_str(&format!("{d:?} = {{ host = {h:?}, tls = \"none\" }}\n"));
        }
    }
    Setup::default().section(&cfg)
}

fn send(gw: &Gateway, from: &str, to: &[&str]) -> Value {
    let mut args = vec!["send", HOST];
    let port = gw.port();
    args.push(&port);
    args.extend(["--from", from]);
    for t in to {
        args.extend(["--to", t]);
    }
    let out = json(&smtplib(&args));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(
        out["data"]["text"].as_str().unwrap().contains("queued as"),
        "{out}"
    );
    out
}

/// Polls `mailgate queue list` (bounded: 200 × 50 ms) until the queue is empty.
fn queue_empties(gw: &Gateway) -> bool {
    for _ in 0..200 {
        if gw.queue(&["list"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn envelope(meta: &str) -> Value {
    json(meta)
}

#[test]
fn upstream_down_then_up_mail_waits_and_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let gw = queue_setup(
        dir.path(),
        &[("example.test", format!("127.0.0.1:{port}"))],
        "",
    )
    .start();
    for i in 0..3 {
        send(&gw, &format!("s{i}@client.test"), &["u@example.test"]);
    }
    // Nothing listens on the route: every message waits, with the reason.
    let list = gw.queue(&["list"]);
    assert_eq!(list["entries"].as_array().unwrap().len(), 3, "{list}");
    // The first attempts have been made (or are being made); wait until one is recorded.
    let mut tried = false;
    for _ in 0..200 {
        let l = gw.queue(&["list"]);
        if l["entries"][0]["attempts"].as_u64().unwrap_or(0) >= 1 {
            assert!(
                l["entries"][0]["recipients"][0]["last_reply"]
                    .as_str()
                    .unwrap()
                    .starts_with("451 4.4.1"),
                "{l}"
            );
            tried = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tried, "no attempt recorded");
    let mut up = Upstream::start_on(port, &[]);
    assert!(
        up.wait_stored(3, WAIT),
        "messages arrive once the upstream is up"
    );
    let got = up.received();
    assert_eq!(got.len(), 3);
    for (_, meta) in &got {
        assert_eq!(
            envelope(meta)["rcpt_tos"],
            serde_json::json!(["u@example.test"])
        );
    }
    let mut senders: Vec<String> = got
        .iter()
        .map(|(_, m)| envelope(m)["mail_from"].as_str().unwrap().to_string())
        .collect();
    senders.sort();
    assert_eq!(
        senders,
        ["s0@client.test", "s1@client.test", "s2@client.test"]
    );
    // And the queue empties (each entry removed after its delivery).
    let empty = queue_empties(&gw);
    assert!(empty, "queue empties");
    assert!(gw.log().contains("deferred"), "{}", gw.log());
}

#[test]
fn tempfail_then_success_and_permanent_failure_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(&["--tempfail-first", "1", "--reject", "gone@example.test"]);
    let gw = queue_setup(
        dir.path(),
        &[("example.test", up.addr()), ("client.test", up.addr())],
        "",
    )
    .start();
    send(
        &gw,
        "sender@client.test",
        &["ok@example.test", "gone@example.test"],
    );
    // Attempt 1: gone@ refused (550) at RCPT, ok@ gets 451 at DATA. Attempt 2: ok@
    // delivered. Then the bounce for gone@ goes to sender@client.test.
    assert!(up.wait_stored(2, WAIT), "delivery and bounce");
    let got = up.received();
    let metas: Vec<Value> = got.iter().map(|(_, m)| envelope(m)).collect();
    let delivered = metas
        .iter()
        .position(|m| m["rcpt_tos"] == serde_json::json!(["ok@example.test"]))
        .expect("ok@ delivered after the 451");
    assert_eq!(metas[delivered]["mail_from"], "sender@client.test");
    let bounce = metas
        .iter()
        .position(|m| m["rcpt_tos"] == serde_json::json!(["sender@client.test"]))
        .expect("bounce to the sender");
    assert_eq!(
        metas[bounce]["mail_from"], "<>",
        "bounces use the null sender (aiosmtpd shows it as <>)"
    );
    let text = String::from_utf8_lossy(&got[bounce].0).into_owned();
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; gone@example.test"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
    assert!(
        !text.contains("ok@example.test\r\nAction"),
        "only the failed recipient"
    );
    assert!(gw.log().contains("451 4.3.0"), "{}", gw.log());
}

#[test]
fn no_bounce_to_the_null_sender() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(&["--reject", "gone@example.test"]);
    let gw = queue_setup(dir.path(), &[("example.test", up.addr())], "").start();
    send(&gw, "", &["gone@example.test"]);
    let removed = queue_empties(&gw);
    assert!(removed, "failed message leaves the queue");
    assert!(up.received().is_empty());
    assert!(gw.log().contains("no notice sent"), "{}", gw.log());
}

#[test]
fn two_domains_to_two_upstreams_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = Upstream::start(&[]);
    let mut two = Upstream::start(&[]);
    let gw = queue_setup(
        dir.path(),
        &[("one.test", one.addr()), ("two.test", two.addr())],
        "",
    )
    .section("[relay]\nlocal_domains = [\"one.test\", \"two.test\"]\n")
    .start();
    send(
        &gw,
        "s@client.test",
        &["a@one.test", "b@two.test", "c@one.test"],
    );
    assert!(one.wait_stored(1, WAIT));
    assert!(two.wait_stored(1, WAIT));
    let m1 = envelope(&one.received()[0].1);
    let m2 = envelope(&two.received()[0].1);
    assert_eq!(
        m1["rcpt_tos"],
        serde_json::json!(["a@one.test", "c@one.test"])
    );
    assert_eq!(m2["rcpt_tos"], serde_json::json!(["b@two.test"]));
    assert_eq!(
        one.received()[0].0,
        two.received()[0].0,
        "same message to both"
    );
}

#[test]
fn mx_lookup_through_a_real_dns_server() {
    let mut up = Upstream::start(&[]);
    let zone = "$ORIGIN mx.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   127.0.0.1
@       MX  20 backup
@       MX  10 primary
primary A   127.0.0.1
backup  A   127.0.0.2
nomx    A   127.0.0.1
";
    let nsd = Nsd::start(&[("mx.test", zone)]);
    let dir = tempfile::tempdir().unwrap();
    let gw = queue_setup(
        dir.path(),
        &[("client.test", up.addr())],
        &format!("mx_port = {}\nmx_allow_private = true\n", up.port),
    )
    .section(&format!(
        "[dns]\nservers = [\"{}\"]\nreverse_lookup = false\n[relay]\nlocal_domains = [\"mx.test\", \"nomx.mx.test\", \"missing.mx.test\"]\n",
        nsd.addr
    ))
    .start();
    // MX 10 primary → 127.0.0.1:<mx_port>, the upstream.
    send(&gw, "s@client.test", &["u@mx.test"]);
    // No MX: the domain's own A record (implicit MX).
    send(&gw, "s@client.test", &["v@nomx.mx.test"]);
    // NXDOMAIN: permanent failure, bounced to the sender (routed to the upstream).
    send(&gw, "s@client.test", &["w@missing.mx.test"]);
    assert!(up.wait_stored(3, WAIT), "{}", gw.log());
    let got = up.received();
    let mut by_rcpt = BTreeMap::new();
    for (raw, meta) in &got {
        let m = envelope(meta);
        by_rcpt.insert(m["rcpt_tos"][0].as_str().unwrap().to_string(), raw.clone());
    }
    assert!(by_rcpt.contains_key("u@mx.test"), "{by_rcpt:?}");
    assert!(by_rcpt.contains_key("v@nomx.mx.test"), "{by_rcpt:?}");
    let bounce = String::from_utf8_lossy(&by_rcpt["s@client.test"]).into_owned();
    assert!(bounce.contains("w@missing.mx.test"), "{bounce}");
    assert!(bounce.contains("Status: 5.1.2"), "{bounce}");
}

#[test]
fn queue_commands_hold_release_delete_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut gw = queue_setup(
        dir.path(),
        &[("example.test", format!("127.0.0.1:{port}"))],
        "",
    )
    .start();
    send(&gw, "a@client.test", &["u@example.test"]);
    send(&gw, "b@client.test", &["u@example.test"]);
    let list = gw.queue(&["list"]);
    // By sender: a's id first (both arrived in the same second, in random-id order).
    let mut entries: Vec<(String, String)> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sender"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    entries.sort();
    let ids: Vec<String> = entries.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 2, "{list}");
    let shown = gw.queue(&["show", &ids[0]]);
    assert!(
        shown["headers"].as_str().unwrap().starts_with("Received: "),
        "{shown}"
    );
    assert_eq!(gw.queue(&["hold", &ids[0]])["ok"], true);
    assert_eq!(gw.queue(&["delete", &ids[1]])["ok"], true);
    assert_eq!(gw.queue(&["delete", "NOPE"])["ok"], false);
    let list = gw.queue(&["list"]);
    assert_eq!(list["entries"].as_array().unwrap().len(), 1);
    assert_eq!(list["entries"][0]["held"], true);
    assert_eq!(gw.queue(&["flush"])["ok"], true);
    // Stopped gateway: the commands work on the spool itself.
    gw.terminate();
    let offline = gw.queue(&["list"]);
    assert_eq!(offline["entries"][0]["id"], ids[0].as_str());
    assert_eq!(gw.queue(&["release", &ids[0]])["ok"], true);
    assert_eq!(gw.queue(&["flush"])["ok"], false, "flush needs the gateway");
    // Restarted with the upstream up: the released message is delivered.
    let mut up = Upstream::start_on(port, &[]);
    let _gw2 = queue_setup(
        dir.path(),
        &[("example.test", format!("127.0.0.1:{port}"))],
        "",
    )
    .start();
    assert!(up.wait_stored(1, WAIT));
    assert_eq!(envelope(&up.received()[0].1)["mail_from"], "a@client.test");
}

/// `kill -9` the gateway again and again while a client sends messages; every message
/// that got a 250 must reach the upstream at least once. Size: 600 messages and 3 kills
/// by default, 2000 and 6 with `MAILGATE_SOAK=full` (or `MAILGATE_SOAK_MESSAGES`,
/// `MAILGATE_SOAK_KILLS`).
#[test]
fn kill_dash_nine_loses_nothing() {
    let count = support::soak("MESSAGES", 600, 2000);
    let kills_wanted = support::soak("KILLS", 3, 6);
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(&[]);
    let port = free_port();
    let setup =
        || queue_setup(dir.path(), &[("example.test", up.addr())], "").in_dir(dir.path(), port);
    let mut gw = setup().start();
    let mut client = Command::new("python3")
        .arg(peer("flood.py"))
        .args([
            HOST,
            &port.to_string(),
            &count.to_string(),
            "--to",
            "flood@example.test",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut accepted = Vec::new();
    let mut kills = 0;
    let mut finished = false;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("accepted ") {
            accepted.push(n.parse::<usize>().unwrap());
            // Kill at spread-out points of the run, mid-stream.
            if kills < kills_wanted && accepted.len() == (kills + 1) * count / (kills_wanted + 1) {
                gw.kill9();
                kills += 1;
                gw = setup().start();
            }
        } else if line == "done" {
            finished = true;
            break;
        } else if line.starts_with("gave-up") {
            break;
        }
    }
    assert!(
        client.wait().unwrap().success() && finished,
        "client finished"
    );
    assert_eq!(kills, kills_wanted);
    assert_eq!(accepted.len(), count);
    // Duplicates are among the messages the upstream stored, so `count` stored does not
    // mean every accepted one arrived: wait (bounded) until each sequence number has.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    loop {
        seen.clear();
        for (raw, _) in up.received() {
            let text = String::from_utf8_lossy(&raw);
            let seq = text
                .split("\r\n")
                .find_map(|l| l.strip_prefix("X-Flood-Seq: "))
                .expect("sequence header")
                .parse::<usize>()
                .unwrap();
            *seen.entry(seq).or_default() += 1;
        }
        if accepted.iter().all(|n| seen.contains_key(n)) || std::time::Instant::now() >= deadline {
            break;
        }
        let stored: usize = seen.values().sum();
        up.wait_stored(stored + 1, Duration::from_secs(1));
    }
    let missing: Vec<usize> = accepted
        .iter()
        .copied()
        .filter(|n| !seen.contains_key(n))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}"
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    // A duplicate is a message the upstream accepted just before a kill, whose queue
    // entry was not removed yet: delivered again after the restart (at-least-once). At
    // most the messages in flight at each kill can be duplicated.
    eprintln!(
        "kill -9 x{kills}: {count} accepted, {} distinct delivered, {duplicates} duplicate(s)",
        seen.len()
    );
    assert!(
        duplicates <= kills * 20,
        "{duplicates} duplicates for {kills} kills"
    );
    drop(gw);
}

/// Queue mode in front of Postfix (Debian's package) as the default next hop: Postfix
/// offers PIPELINING, so MAIL and both RCPTs go out together; its own 550 5.1.1 for the
/// unknown user comes back to the sender as a bounce, which Postfix then delivers too.
#[test]
fn queue_into_postfix_delivers_and_bounces_its_refusals() {
    let pf = support::Postfix::start(&["pat@example.test", "sender@client.test"]);
    let dir = tempfile::tempdir().unwrap();
    let gw = queue_setup(dir.path(), &[], "")
        .env("MAILGATE_DELIVERY__UPSTREAM", &pf.addr.to_string())
        .env("MAILGATE_DELIVERY__UPSTREAM_TLS", "none")
        .start();
    send(
        &gw,
        "sender@client.test",
        &["pat@example.test", "nobody@example.test"],
    );
    assert!(
        pf.wait_log_count("status=sent", 2, Duration::from_secs(60)),
        "postfix did not deliver both:\n{}\n{}",
        pf.maillog(),
        gw.log()
    );
    let pat = pf.mailbox("example.test", "pat");
    assert_eq!(pat.len(), 1);
    assert!(String::from_utf8_lossy(&pat[0]).contains("Received: from client.test"));
    let bounce = pf.mailbox("client.test", "sender");
    assert_eq!(bounce.len(), 1, "{}", pf.maillog());
    let text = String::from_utf8_lossy(&bounce[0]).into_owned();
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; pat@"), "{text}");
    // The bounce went out on the connection the delivery used (kept idle for reuse).
    let log = pf.maillog();
    assert_eq!(log.matches("]: connect from ").count(), 1, "{log}");
}

/// An unreachable next hop: one "delayed" notice after `delay_warning_secs`, then, at
/// `max_lifetime_secs`, a bounce saying delivery time expired, and the entry is gone.
#[test]
fn delay_notice_then_expiry_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let dead = support::DeadPort::new();
    let mut up = Upstream::start(&[]);
    let gw = queue_setup(
        dir.path(),
        &[
            ("example.test", format!("127.0.0.1:{}", dead.port)),
            ("client.test", up.addr()),
        ],
        "delay_warning_secs = 1\nmax_lifetime_secs = 3\n",
    )
    .start();
    send(&gw, "sender@client.test", &["u@example.test"]);
    assert!(up.wait_stored(2, WAIT), "{}", gw.log());
    let texts: Vec<String> = up
        .received()
        .iter()
        .map(|(raw, _)| String::from_utf8_lossy(raw).into_owned())
        .collect();
    assert!(texts[0].contains("Subject: Delayed Mail"), "{}", texts[0]);
    assert!(texts[0].contains("Action: delayed"), "{}", texts[0]);
    assert!(texts[0].contains("Will-Retry-Until:"), "{}", texts[0]);
    assert!(
        texts[1].contains("Subject: Undelivered Mail"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("Action: failed"), "{}", texts[1]);
    assert!(texts[1].contains("Status: 5.4.7"), "{}", texts[1]);
    assert!(texts[1].contains("expired"), "{}", texts[1]);
    // The peer's 250 comes a moment before the queue forgets the entry.
    let status = gw.status_when(|s| s["queue"]["depth"] == 0);
    assert!(
        gw.queue(&["list"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(status["delivery"], "queue");
    assert_eq!(status["queue"]["expired"], 1, "{status}");
    assert_eq!(status["queue"]["dsn_sent"], 2, "{status}");
    assert_eq!(status["queue"]["depth"], 0, "{status}");
}

/// The session a queued message came in is kept as it was: a HELO over STARTTLS reaches
/// `on-deliver` as HELO with TLS, not as EHLO.
#[test]
fn queued_mail_keeps_a_helo_session_as_helo() {
    let dir = tempfile::tempdir().unwrap();
    let mut main = Upstream::start(&[]);
    let gw = queue_setup(dir.path(), &[("client.test", main.addr())], "")
        .section(&support::plugin_toml("router", "router", ""))
        .start();
    let port = gw.port();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &port,
        "--starttls",
        "--helo",
        "--from",
        "s@client.test",
        "--to",
        "whoami-x@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(main.wait_stored(1, WAIT), "{}", gw.log());
    // The notice's Diagnostic-Code field may be folded: read it unfolded.
    let text = String::from_utf8_lossy(&main.received()[0].0).replace("\r\n ", " ");
    assert!(
        text.contains("helo=client.test ehlo=false attempt=1 listener=smtp tls=true"),
        "{text}"
    );
}

/// A plugin's `on-deliver` routes recipients: to another next hop, bounced, discarded,
/// into the local Maildir; the rest keep the configured route.
#[test]
fn plugin_routes_recipients_at_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mut main = Upstream::start(&[]);
    let mut other = Upstream::start(&[]);
    let gw = queue_setup(
        dir.path(),
        &[("example.test", main.addr()), ("client.test", main.addr())],
        "",
    )
    .section(&support::plugin_toml(
        "router",
        "router",
        &format!("config = {{ relay = \"{}\" }}", other.addr()),
    ))
    .start();
    send(
        &gw,
        "s@client.test",
        &[
            "relay-a@example.test",
            "bounce-b@example.test",
            "drop-c@example.test",
            "local-d@example.test",
            "plain@example.test",
            "whoami-e@example.test",
        ],
    );
    // main: plain@ and the bounce for bounce-b@; other: relay-a@.
    assert!(other.wait_stored(1, WAIT), "{}", gw.log());
    assert!(main.wait_stored(2, WAIT), "{}", gw.log());
    assert_eq!(
        envelope(&other.received()[0].1)["rcpt_tos"],
        serde_json::json!(["relay-a@example.test"])
    );
    let mut main_rcpts: Vec<String> = main
        .received()
        .iter()
        .map(|(_, m)| envelope(m)["rcpt_tos"][0].as_str().unwrap().to_string())
        .collect();
    main_rcpts.sort();
    assert_eq!(main_rcpts, ["plain@example.test", "s@client.test"]);
    let bounce = main
        .received()
        .into_iter()
        .find(|(_, m)| envelope(m)["rcpt_tos"][0] == "s@client.test")
        .unwrap();
    let text = String::from_utf8_lossy(&bounce.0).into_owned();
    assert!(
        text.contains("Final-Recipient: rfc822; bounce-b@example.test"),
        "{text}"
    );
    assert!(text.contains("router fixture"), "{text}");
    // on-deliver saw the session the message was accepted in.
    assert!(
        text.contains("helo=client.test ehlo=true attempt=1"),
        "{text}"
    );
    assert!(text.contains("listener=smtp tls=false"), "{text}");
    assert!(
        !text.contains("drop-c@"),
        "a discarded recipient is not bounced: {text}"
    );
    // The local route goes into delivery.maildir (./var/mail under the gateway's
    // directory); the entry leaves the queue once every recipient is settled.
    let settled = queue_empties(&gw);
    assert!(settled, "{}", gw.log());
    let local = gw.dir.path().join("var/mail/example.test/local-d/new");
    assert_eq!(
        std::fs::read_dir(&local).map(|d| d.count()).unwrap_or(0),
        1,
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("discarded by plugin"), "{}", gw.log());
}

/// A failing `on-deliver` never loses mail: with `on_error = "reject"` the message
/// bounces, and the notice, which would fail in the same plugin, goes to the sender by
/// the default route instead of being dropped.
#[test]
fn a_failing_on_deliver_still_lets_the_notice_reach_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mut main = Upstream::start(&[]);
    let gw = queue_setup(dir.path(), &[("client.test", main.addr())], "")
        .section(&support::plugin_toml(
            "router",
            "router",
            "on_error = \"reject\"\nconfig = { trap = true }",
        ))
        .start();
    send(&gw, "s@client.test", &["u@example.test"]);
    assert!(main.wait_stored(1, WAIT), "{}", gw.log());
    let (text, meta) = &main.received()[0];
    let text = String::from_utf8_lossy(text);
    assert!(
        meta.contains("s@client.test"),
        "the notice goes to the sender: {meta}"
    );
    assert!(text.contains("multipart/report"), "{text}");
    assert!(
        gw.log()
            .contains("on-deliver failed for a delivery status notice"),
        "{}",
        gw.log()
    );
}
