//! The gateway run as an attacker or an unlucky admin would run it: each test here is one
//! defence of docs/security.md, over the real binary and real clients, and each fails
//! without its fix.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use support::{Gateway, Raw, Setup, Upstream, json, mailgate, smtplib};

const HOST: &str = "127.0.0.1";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory below `root`, with its mode.
fn modes(root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    // Bounded by the tree the test wrote.
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push((p.display().to_string(), mode(&p)));
        }
    }
    out
}

/// Item 7: the same mailbox given twice (in any case or quoting) is delivered once.
#[test]
fn a_repeated_recipient_is_delivered_once() {
    let gw = Gateway::default_setup();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO c.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    for rcpt in [
        "alice@example.test",
        "alice@example.test",
        "Alice@EXAMPLE.test",
        "\"alice\"@example.test",
    ] {
        let r = raw.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250 2.1.5"), "{rcpt}: {r}");
    }
    assert!(raw.cmd("DATA").starts_with("354"));
    let r = raw.cmd("Subject: once\r\n\r\nhello\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(gw.mailbox("example.test", "alice").len(), 1);
    // One Maildir for all spellings: none for the other cases.
    let dirs: Vec<String> = std::fs::read_dir(gw.maildir.join("example.test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ["alice"]);
}

/// Item 13: local parts that differ only in case or quoting share one Maildir (by
/// default), across messages too.
#[test]
fn case_and_quoting_of_a_local_part_name_one_maildir() {
    let gw = Gateway::default_setup();
    for rcpt in [
        "bob@example.test",
        "BOB@Example.TEST",
        "\"bob\"@example.test",
    ] {
        let out = json(&smtplib(&["send", HOST, &gw.port(), "--to", rcpt]));
        assert_eq!(out["data"]["code"], 250, "{rcpt}: {out}");
    }
    assert_eq!(gw.mailbox("example.test", "bob").len(), 3);
    let dirs = std::fs::read_dir(gw.maildir.join("example.test"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1);
}

/// Item 6: a client that pipelines far more recipients than allowed gets `452` for the
/// extra ones and keeps its transaction (and the connection) for the ones accepted.
#[test]
fn recipients_past_the_limit_do_not_end_the_session() {
    let gw = Gateway::default_setup();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO c.test").starts_with("250"));
    let mut batch = String::from("MAIL FROM:<a@client.test>\r\n");
    for i in 0..1200 {
        batch.push_str(&format!("RCPT TO:<r{i}@example.test>\r\n"));
    }
    raw.send(batch.as_bytes());
    assert!(raw.reply().starts_with("250"), "MAIL");
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..1200 {
        let r = raw.reply();
        *codes
            .entry(r.get(..3).unwrap_or("EOF").to_string())
            .or_insert(0) += 1;
    }
    // 100 accepted (limits.max_recipients), 1000 refused in order, and only those past
    // the overshoot limit count as errors (20 of them end the session).
    assert_eq!(codes.get("250"), Some(&100), "{codes:?}");
    assert!(codes.get("452").copied().unwrap_or(0) >= 1000, "{codes:?}");
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO c.test").starts_with("250"));
    let mut batch = String::from("MAIL FROM:<a@client.test>\r\n");
    for i in 0..300 {
        batch.push_str(&format!("RCPT TO:<s{i}@example.test>\r\n"));
    }
    raw.send(batch.as_bytes());
    for _ in 0..301 {
        assert!(!raw.reply().starts_with("421"), "no error for 200 extra");
    }
    assert!(raw.cmd("DATA").starts_with("354"));
    let r = raw.cmd("Subject: many\r\n\r\nhello\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(gw.mailbox("example.test", "s99").len(), 1);
    assert_eq!(gw.mailbox("example.test", "s100").len(), 0);
}

/// Item 10: in proxy mode an upstream reply that makes no sense for the command (a `354`
/// to RCPT) is not passed on as an acceptance: the client gets `451 4.4.0`.
#[test]
fn a_nonsense_upstream_reply_is_a_temporary_failure() {
    let up = Upstream::start(&["--odd-reply", "odd@example.test=354 go ahead"]);
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nupstream = \"{}\"\nupstream_tls = \"none\"",
            up.addr()
        ))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "odd@example.test",
    ]));
    assert_eq!(out["rcpt"]["odd@example.test"]["code"], 451, "{out}");
    assert!(
        out["rcpt"]["odd@example.test"]["text"]
            .as_str()
            .unwrap()
            .starts_with("4.4.0"),
        "{out}"
    );
    assert!(out.get("data").is_none(), "no recipient accepted: {out}");
    assert!(up.received().is_empty());
    assert!(
        gw.log().contains("upstream reply makes no sense here"),
        "{}",
        gw.log()
    );
}

/// Item 8: queued, delivered and quarantined mail and compiled plugins are readable by
/// the gateway's user only: files 0600, directories 0700.
#[test]
fn mail_and_caches_are_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cache = dir.path().join("cache");
    let dead = support::DeadPort::new();
    let up_port = dead.port;
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\nupstream = \"127.0.0.1:{up_port}\"\n\
             [queue]\nspool = {:?}\nretry_initial_secs = 3600\n\
             [chain]\ncompile_cache = {:?}\n{}",
            spool.display().to_string(),
            cache.display().to_string(),
            support::plugin_toml("adder", "header-adder", "")
        ))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "q@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let files = [modes(&spool), modes(&cache)].concat();
    assert!(files.iter().any(|(p, _)| p.contains("/msg/")), "{files:?}");
    assert!(
        files.iter().any(|(p, _)| p.ends_with(".cwasm")),
        "{files:?}"
    );
    for (p, m) in &files {
        let want = if Path::new(p).is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{p} is {m:o}");
    }
    assert_eq!(mode(&spool), 0o700);
    let socket = gw.dir.path().join("admin.sock");
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&socket), 0o600);
}

/// Item 11: a regular file where the admin socket goes is not deleted: the gateway
/// refuses to start and says why.
#[test]
fn a_file_at_the_admin_socket_path_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    std::fs::write(&path, b"precious").unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nsocket = {:?}\nhttp = \"127.0.0.1:0\"\n\
             [delivery]\nmaildir = {:?}\n[dns]\nreverse_lookup = false\n",
            path.display().to_string(),
            dir.path().join("mail").display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let (ok, _, _) = mailgate(&["status", "--config", &cfg.display().to_string()]);
    assert!(!ok, "nothing answers");
}

/// Item 12: what a client sends reaches the log escaped: no control or bidi character
/// of a HELO name or an address is written as it is, in text or JSON logs.
#[test]
fn client_text_reaches_the_logs_escaped() {
    for json_logs in [false, true] {
        let mut setup = Setup::default();
        if json_logs {
            setup = setup.arg("--log-format").arg("json");
        }
        let gw = setup.start();
        let mut raw = Raw::connect(gw.smtp);
        assert!(raw.reply().starts_with("220"));
        let r = raw.cmd("EHLO \u{202e}lmth.evil\u{9b}31m.test");
        assert!(r.starts_with("250"), "{r}");
        assert!(
            raw.cmd("MAIL FROM:<a\u{2066}b@client.test> SMTPUTF8")
                .starts_with("250")
        );
        assert!(raw.cmd("RCPT TO:<u@example.test>").starts_with("250"));
        assert!(raw.cmd("DATA").starts_with("354"));
        assert!(raw.cmd("Subject: x\r\n\r\nx\r\n.").starts_with("250"));
        assert!(raw.cmd("QUIT").starts_with("221"));
        let log = gw.log();
        let summary = log
            .lines()
            .find(|l| l.contains("lmth.evil"))
            .unwrap_or_else(|| panic!("{log}"));
        for c in ['\u{202e}', '\u{9b}', '\u{2066}'] {
            assert!(!log.contains(c), "{c:?} written raw: {summary}");
        }
        if json_logs {
            assert!(summary.contains("\\u202elmth.evil\\u009b31m"), "{summary}");
            support::json(summary);
        } else {
            assert!(
                summary.contains("\\u{202e}lmth.evil\\u{9b}31m"),
                "{summary}"
            );
        }
    }
}

/// Item 14: queue ids are unique by construction (session ids count up from the start
/// time) and an entry never replaces another: a file already at the next message's name
/// is left alone and the message is queued beside it.
#[test]
fn a_queued_message_never_replaces_another() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let dead = support::DeadPort::new();
    let closed = dead.port;
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\nupstream = \"127.0.0.1:{closed}\"\n\
             [queue]\nspool = {:?}\nretry_initial_secs = 3600\n",
            spool.display().to_string()
        ))
        .start();
    let queued_as = |out: &serde_json::Value| -> String {
        let text = out["data"]["text"].as_str().unwrap();
        text.rsplit(' ').next().unwrap().to_string()
    };
    let first = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "a@example.test",
    ]));
    let first = queued_as(&first);
    let session = first.strip_suffix(".1").unwrap();
    let next = format!("{:016X}.1", u64::from_str_radix(session, 16).unwrap() + 1);
    std::fs::write(spool.join("msg").join(&next), b"precious").unwrap();
    let second = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "b@example.test",
    ]));
    assert_eq!(second["data"]["code"], 250, "{second}");
    assert_eq!(queued_as(&second), format!("{next}-2"), "{second}");
    assert_eq!(
        std::fs::read(spool.join("msg").join(&next)).unwrap(),
        b"precious"
    );
    let list = gw.queue(&["list"]);
    let ids: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&format!("{next}-2").as_str()),
        "{list}"
    );
}

/// Connects to `to` from the local address `from` (any 127.x.y.z works on Linux).
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    })
}

fn greeting(s: std::net::TcpStream) -> String {
    use std::io::BufRead;
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// Item 5: the per-client connection limit counts a client's network, not its exact
/// address (IPv6 /64 by default; here IPv4 /24 so that loopback addresses can show it).
#[test]
fn the_connection_limit_counts_client_networks() {
    let gw = Setup::default()
        .server("max_connections_per_ip = 2\nclient_ipv4_prefix = 24")
        .start();
    let a = connect_from("127.0.0.1", gw.smtp);
    let b = connect_from("127.0.0.2", gw.smtp);
    let a2 = a.try_clone().unwrap();
    let b2 = b.try_clone().unwrap();
    assert!(greeting(a2).starts_with("220"));
    assert!(greeting(b2).starts_with("220"));
    let third = greeting(connect_from("127.0.0.3", gw.smtp));
    assert!(third.starts_with("421 4.7.0"), "{third}");
    let other_net = greeting(connect_from("127.0.1.1", gw.smtp));
    assert!(other_net.starts_with("220"), "{other_net}");
    drop((a, b));
}

/// Item 16: the queue keeps a delivery limiter per destination only while it is used:
/// after attempts to many next hops, none is left behind.
#[test]
fn destination_limiters_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut routes = String::from("[queue.routes]\n");
    let dead: Vec<support::DeadPort> = (0..20).map(|_| support::DeadPort::new()).collect();
    for (i, d) in dead.iter().enumerate() {
        let port = d.port;
        routes.push_str(&format!(
            "\"d{i}.test\" = {{ host = \"127.0.0.1:{port}\", tls = \"none\" }}\n"
        ));
    }
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[relay]\nlocal_domains = [{}]\n\
             [queue]\nspool = {:?}\nretry_initial_secs = 3600\n{routes}",
            (0..20)
                .map(|i| format!("\"d{i}.test\""))
                .collect::<Vec<_>>()
                .join(","),
            dir.path().join("spool").display().to_string()
        ))
        .start();
    let mut args = vec!["send".to_string(), HOST.into(), gw.port()];
    for i in 0..20 {
        args.extend(["--to".into(), format!("u@d{i}.test")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = json(&smtplib(&args));
    assert_eq!(out["data"]["code"], 250, "{out}");
    // Bounded wait: every destination attempted (nothing listens there: deferred).
    let status = gw.status_when(|s| s["queue"]["deferred"].as_u64() == Some(20));
    assert_eq!(status["queue"]["deferred"], 20, "{status}");
    assert_eq!(status["queue"]["destinations"], 0, "{status}");
}

/// Item 1: a message that already carries more `Received:` headers than
/// `limits.max_hops` is refused at the end of DATA: a mail loop ends.
#[test]
fn too_many_hops_are_refused() {
    let gw = Gateway::default_setup();
    let dir = tempfile::tempdir().unwrap();
    for (hops, code) in [(50, 250), (51, 554)] {
        let mut msg = String::new();
        for i in 0..hops {
            msg.push_str(&format!(
                "Received: from hop{i}.test by hop{}.test; Mon, 1 Jan 2026 00:00:00 +0000\r\n",
                i + 1
            ));
        }
        msg.push_str("Subject: loop\r\n\r\nbody\r\n");
        let file = dir.path().join(format!("{hops}.eml"));
        std::fs::write(&file, msg).unwrap();
        let data = file.display().to_string();
        let out = json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--to",
            "l@example.test",
            "--data",
            &data,
        ]));
        assert_eq!(out["data"]["code"], code, "{hops}: {out}");
        if code == 554 {
            assert!(
                out["data"]["text"].as_str().unwrap().starts_with("5.4.6"),
                "{out}"
            );
        }
    }
    assert_eq!(gw.mailbox("example.test", "l").len(), 1);
}

/// Item 1: in queue mode a next hop that is the gateway itself (here a static route to
/// its own listener) is never connected to: the recipient waits with "loops back to
/// myself" instead of the message going round and round.
#[test]
fn a_next_hop_that_is_ourselves_is_not_connected_to() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\nretry_initial_secs = 3600\n\
             [queue.routes]\n\"example.test\" = {{ host = \"localhost:{port}\", tls = \"none\" }}\n",
            dir.path().join("spool").display().to_string()
        ))
        .in_dir(dir.path(), port)
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "me@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let mut last = String::new();
    for _ in 0..200 {
        let list = gw.queue(&["list"]);
        last = list["entries"][0]["recipients"][0]["last_reply"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !last.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(last, "451 4.4.6 mail for example.test loops back to myself");
    let log = gw.log();
    let sessions = log
        .lines()
        .filter(|l| l.contains(": connect client="))
        .count();
    assert_eq!(sessions, 1, "only the client's session: {log}");
    assert!(log.contains("next hop is this gateway"), "{log}");
}

/// Item 2: an MX that resolves to a loopback or private address is not used for
/// MX-routed mail (a forged domain cannot make us deliver to internal services): the
/// recipient fails with 5.4.4, and the sender's notice says why.
#[test]
fn mx_hosts_on_private_addresses_are_refused() {
    let mut up = Upstream::start(&[]);
    let zone = "$ORIGIN evil.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   127.0.0.1
@       MX  10 inside
inside  A   127.0.0.1
";
    let nsd = support::Nsd::start(&[("evil.test", zone)]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\nmx_port = {}\n\
             [queue.routes]\n\"client.test\" = {{ host = \"{}\", tls = \"none\" }}\n\
             [dns]\nservers = [\"{}\"]\nreverse_lookup = false\n\
             [relay]\nlocal_domains = [\"evil.test\"]\n",
            dir.path().join("spool").display().to_string(),
            up.port,
            up.addr(),
            nsd.addr
        ))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--from",
        "s@client.test",
        "--to",
        "u@evil.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(
        up.wait_stored(1, std::time::Duration::from_secs(60)),
        "{}",
        gw.log()
    );
    let got = up.received();
    assert_eq!(got.len(), 1, "only the notice");
    let meta = json(&got[0].1);
    assert_eq!(meta["rcpt_tos"], serde_json::json!(["s@client.test"]));
    let notice = String::from_utf8_lossy(&got[0].0).replace("\r\n ", " ");
    assert!(notice.contains("Status: 5.4.4"), "{notice}");
    assert!(
        notice.contains("resolve only to private or local addresses"),
        "{notice}"
    );
}

/// Item 4: a client that trickles a command a byte at a time is timed out after the
/// command timeout for the whole command, not kept alive by each byte.
#[test]
fn a_trickling_client_is_timed_out_per_request() {
    use std::io::{BufRead, Write};
    let gw = Setup::default().server("command_timeout_secs = 2").start();
    let mut s = std::net::TcpStream::connect(gw.smtp).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    // One byte, then up to 500 ms for an answer (the attack's pace, well within a
    // per-read timeout of 2 s), for at most 24 bytes (12 s).
    r.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    for b in b"EHLO a.slow.client.example.test".iter().take(24) {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        match r.read_line(&mut answer) {
            Ok(_) if !answer.is_empty() => break,
            _ => {}
        }
    }
    let took = started.elapsed();
    assert!(answer.starts_with("421 4.4.2"), "{answer:?} after {took:?}");
    assert!(took < std::time::Duration::from_secs(6), "{took:?}");
}

/// Item 4: a client that pipelines commands and never reads the replies is
/// disconnected after the write timeout.
#[test]
fn a_client_that_never_reads_is_disconnected() {
    // NOOPs are junk commands: lift that limit, or it would end the session first.
    let gw = Setup::default()
        .server("write_timeout_secs = 1")
        .section("[limits]\nmax_junk_commands = 100000000")
        .start();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO c.test").starts_with("250"));
    // From here on nothing is read.
    let mut s = raw.s.try_clone().unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut batch = String::new();
    for _ in 0..2000 {
        batch.push_str("NOOP\r\n");
    }
    // Keep sending until the gateway gives up on us (the writes fail), bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut gave_up = false;
    while std::time::Instant::now() < deadline {
        if std::io::Write::write_all(&mut s, batch.as_bytes()).is_err() {
            gave_up = true;
            break;
        }
        if gw.log().contains("write timed out") {
            gave_up = true;
            break;
        }
    }
    assert!(gave_up, "still served after 30 s: {}", gw.log());
    // Bounded wait for the log line (the write error may come first).
    for _ in 0..100 {
        if gw.log().contains("write timed out") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gw.log().contains("write timed out"), "{}", gw.log());
}

/// Item 9: a notice returns the header section of the original only: a message
/// without a blank line does not reflect its body to the (possibly forged) sender.
#[test]
fn notices_return_headers_only() {
    let mut up = Upstream::start(&["--reject", "gone@example.test"]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {spool:?}\n\
             [queue.routes]\n\"example.test\" = {{ host = \"{up}\", tls = \"none\" }}\n\
             \"client.test\" = {{ host = \"{up}\", tls = \"none\" }}\n",
            spool = dir.path().join("spool").display().to_string(),
            up = up.addr(),
        ))
        .start();
    let mut body = String::new();
    for i in 0..800 {
        body.push_str(&format!("secret body line {i}\r\n"));
    }
    let file = dir.path().join("m.eml");
    std::fs::write(&file, body).unwrap();
    let data = file.display().to_string();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--from",
        "s@client.test",
        "--to",
        "gone@example.test",
        "--data",
        &data,
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(
        up.wait_stored(1, std::time::Duration::from_secs(60)),
        "{}",
        gw.log()
    );
    let notice = String::from_utf8_lossy(&up.received()[0].0).into_owned();
    assert!(notice.contains("Status: 5.1.1"), "{notice}");
    assert!(notice.contains("text/rfc822-headers"), "{notice}");
    assert!(!notice.contains("secret body line"), "{notice}");
}

/// Item 9: no notice goes to a sender whose domain has no mail host (no MX, no address):
/// such a sender is forged, and the notice would be backscatter.
#[test]
fn no_notice_to_a_sender_domain_without_mail_hosts() {
    let up = Upstream::start(&["--reject", "gone@example.test"]);
    let zone = "$ORIGIN known.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   127.0.0.1
";
    let nsd = support::Nsd::start(&[("known.test", zone)]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n\
             [queue.routes]\n\"example.test\" = {{ host = \"{}\", tls = \"none\" }}\n\
             [dns]\nservers = [\"{}\"]\nreverse_lookup = false\n",
            dir.path().join("spool").display().to_string(),
            up.addr(),
            nsd.addr
        ))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--from",
        "forged@nowhere.known.test",
        "--to",
        "gone@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let status = gw.status_when(|s| s["queue"]["depth"] == 0 && s["queue"]["failed"] == 1);
    assert_eq!(status["queue"]["failed"], 1, "{status}");
    assert_eq!(status["queue"]["dsn_sent"], 0, "{status}");
    assert_eq!(status["queue"]["depth"], 0, "{status}");
    assert!(
        gw.log().contains("has no mail host: no notice sent"),
        "{}",
        gw.log()
    );
}

/// Item 15: an internationalized recipient domain is routed by its A-label (the MX of
/// `xn--bcher-kva.test` for `bücher.test`), and an address literal to the address itself.
#[test]
fn idn_domains_and_address_literals_are_routed() {
    let mut up = Upstream::start(&[]);
    let zone = "$ORIGIN xn--bcher-kva.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   127.0.0.1
@       MX  10 mx
mx      A   127.0.0.1
";
    let nsd = support::Nsd::start(&[("xn--bcher-kva.test", zone)]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\nmx_port = {}\nmx_allow_private = true\n\
             [dns]\nservers = [\"{}\"]\nreverse_lookup = false\n\
             [relay]\nlocal_domains = [\"xn--bcher-kva.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n",
            dir.path().join("spool").display().to_string(),
            up.port,
            nsd.addr
        ))
        .start();
    for rcpt in ["leser@bücher.test", "lit@[127.0.0.1]"] {
        let out = json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--utf8",
            "--from",
            "s@[127.0.0.1]",
            "--to",
            rcpt,
        ]));
        assert_eq!(out["data"]["code"], 250, "{rcpt}: {out}");
    }
    assert!(
        up.wait_stored(2, std::time::Duration::from_secs(60)),
        "{}",
        gw.log()
    );
    let mut rcpts: Vec<String> = up
        .received()
        .iter()
        .map(|(_, m)| json(m)["rcpt_tos"][0].as_str().unwrap().to_string())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["leser@bücher.test", "lit@[127.0.0.1]"]);
}

/// A file of about `size` octets of message text (a header block, then 72-octet lines).
fn message_file(dir: &Path, name: &str, size: usize) -> String {
    let mut m = String::from("Subject: sized\r\nX-Name: ");
    m.push_str(name);
    m.push_str("\r\n\r\n");
    let mut n = 0u64;
    while m.len() < size {
        n += 1;
        m.push_str(&format!(
            "{n:010} 56789012345678901234567890123456789012345678901234567890123\r\n"
        ));
    }
    let file = dir.join(name);
    std::fs::write(&file, m).unwrap();
    file.display().to_string()
}

/// What a Maildir copy holds after the gateway's own header lines (`Return-Path`,
/// `Delivered-To`, `Received`): from the first line the client sent on.
fn sent_part<'a>(copy: &'a [u8], first_line: &[u8]) -> &'a [u8] {
    let at = copy
        .windows(first_line.len())
        .position(|w| w == first_line)
        .expect("the client's first line is in the copy");
    &copy[at..]
}

/// Item 3: the memory all sessions together hold for message content is capped
/// (`limits.max_message_memory_mb`), and a message past `limits.spill_threshold_kb` or
/// past the cap is moved to a spill file instead of being refused: messages far larger
/// than the cap, and several at once, are all accepted and delivered byte for byte, and
/// the spill files leave nothing behind.
#[test]
fn messages_past_the_memory_cap_are_spilled_and_delivered_intact() {
    let spill = tempfile::tempdir().unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[limits]\nmax_message_memory_mb = 3\nspill_dir = {:?}",
            spill.path().display().to_string()
        ))
        .env("MAILGATE_LOG", "debug")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let (big, mid) = (
        message_file(dir.path(), "big", 8 << 20),
        message_file(dir.path(), "mid", 1_500_000),
    );
    let send = |file: &str, to: &str| {
        json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--to",
            to,
            "--data",
            file,
        ]))
    };
    let out = send(&big, "big@example.test");
    assert_eq!(out["data"]["code"], 250, "8 MiB past a 3 MiB cap: {out}");
    // Two sessions hold 1.5 MB each of unfinished messages while a third sends one.
    let mut held = Vec::new();
    for who in ["a", "b"] {
        let mut c = Raw::connect(gw.smtp);
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("EHLO c.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<c@client.test>").starts_with("250"));
        assert!(
            c.cmd(&format!("RCPT TO:<{who}@example.test>"))
                .starts_with("250")
        );
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&std::fs::read(&mid).unwrap());
        held.push(c);
    }
    let out = send(&mid, "c@example.test");
    assert_eq!(out["data"]["code"], 250, "{out}");
    for mut c in held {
        assert!(
            c.cmd(".").starts_with("250 2.0.0"),
            "the held message is delivered"
        );
    }
    for (who, file) in [("big", &big), ("a", &mid), ("b", &mid), ("c", &mid)] {
        let copies = gw.mailbox("example.test", who);
        assert_eq!(copies.len(), 1, "{who}");
        let sent = std::fs::read(file).unwrap();
        assert!(
            sent_part(&copies[0], b"Subject: sized\r\n") == &sent[..],
            "{who}: the delivered text is the sent text"
        );
    }
    assert!(
        gw.log().contains("message spilled to a file"),
        "{}",
        gw.log()
    );
    let left: Vec<_> = std::fs::read_dir(spill.path()).unwrap().collect();
    assert!(left.is_empty(), "spill files have no names: {left:?}");
}

/// Item 3: a message that can be neither held (past the threshold) nor spilled (the spill
/// directory cannot be made) is refused `452 4.3.1` at its end, and the session goes on:
/// a small message is still accepted.
#[test]
fn a_message_that_cannot_be_spilled_is_a_temporary_failure() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[limits]\nspill_threshold_kb = 64\nspill_dir = {:?}",
            blocker.join("spill").display().to_string()
        ))
        .start();
    let big = message_file(dir.path(), "big", 1 << 20);
    let small = message_file(dir.path(), "small", 10_000);
    let mut c = Raw::connect(gw.smtp);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO c.test").starts_with("250"));
    for (file, to, code) in [(&big, "x", "452 4.3.1"), (&small, "y", "250 2.0.0")] {
        assert!(c.cmd("MAIL FROM:<c@client.test>").starts_with("250"));
        assert!(
            c.cmd(&format!("RCPT TO:<{to}@example.test>"))
                .starts_with("250")
        );
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(&std::fs::read(file).unwrap());
        let r = c.cmd(".");
        assert!(r.starts_with(code), "{file}: {r}");
    }
    assert!(gw.mailbox("example.test", "x").is_empty());
    assert_eq!(gw.mailbox("example.test", "y").len(), 1);
    assert!(
        gw.log().contains("cannot create a spill file"),
        "{}",
        gw.log()
    );
}

/// Item 3: a spilled message is read from its file by plugins (the whole body through
/// `read-body`; a header edit applies to it), by the queue (stored and relayed) and in
/// proxy mode (relayed in-line): the next hop gets exactly the sent text behind the added
/// header lines.
#[test]
fn a_spilled_message_goes_through_plugins_queue_and_proxy_intact() {
    let dir = tempfile::tempdir().unwrap();
    let file = message_file(dir.path(), "m", 3 << 20);
    let sent = std::fs::read(&file).unwrap();
    let spill = "[limits]\nspill_threshold_kb = 64\n";
    let plugin = support::plugin_toml("adder", "header-adder", "config = { body = \"sum\" }");
    // What the plugin must have read: the body's octets and their FNV-1a.
    let body = sent_part(&sent, b"0000000001 ");
    let fnv = body.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    let x_body = format!("X-Body: octets={} fnv={fnv:08x}\r\n", body.len());
    for mode in ["queue", "proxy"] {
        let mut up = Upstream::start(&[]);
        let mut setup = Setup::default()
            .section(spill)
            .section(&plugin)
            .env("MAILGATE_DELIVERY__MODE", mode)
            .env("MAILGATE_DELIVERY__UPSTREAM", &up.addr())
            .env("MAILGATE_LOG", "debug");
        if mode == "queue" {
            setup = setup.section("[queue]\nretry_initial_secs = 1");
        }
        let gw = setup.start();
        let out = json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--to",
            "u@example.test",
            "--data",
            &file,
        ]));
        assert_eq!(out["data"]["code"], 250, "{mode}: {out}");
        assert!(
            up.wait_stored(1, std::time::Duration::from_secs(30)),
            "{mode}"
        );
        let (got, _) = &up.received()[0];
        let text = String::from_utf8_lossy(&got[..2000]);
        assert!(
            text.contains("X-Fixture: header-adder\r\n"),
            "{mode}: {text}"
        );
        assert!(
            text.contains(&x_body),
            "{mode}: the plugin read the body: {text}"
        );
        // The plugin's field goes after the sent header block's fields; the rest is
        // the sent text unchanged.
        let tail = sent_part(got, b"\r\n\r\n0000000001 ");
        let sent_tail = sent_part(&sent, b"\r\n\r\n0000000001 ");
        assert!(tail == sent_tail, "{mode}: the body arrives byte for byte");
        assert!(
            gw.log().contains("message spilled to a file"),
            "{mode}: {}",
            gw.log()
        );
    }
}
