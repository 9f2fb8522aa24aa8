//! The plugin platform end to end: fixture plugins built to wasm32-wasip2 by this test
//! run, loaded by the real gateway, exercised over real SMTP (smtplib and raw sockets for
//! the abusive cases). Each abusive plugin must be contained: the configured policy reply
//! within its deadline, the process alive, other sessions unaffected, and the next
//! session served by a fresh instance.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use support::{
    Gateway, Nsd, Raw, Setup, fixture, json, mailgate, plugin_toml, smtplib, write_file,
};

const HOST: &str = "127.0.0.1";

fn with_plugin(name: &str, fixture_name: &str, extra: &str) -> Gateway {
    Setup::default()
        .section(&plugin_toml(name, fixture_name, extra))
        .start()
}

/// EHLO, MAIL, then RCPT for `rcpt`: returns the RCPT reply and how long it took.
fn rcpt_reply(gw: &Gateway, rcpt: &str) -> (String, Duration) {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    raw.cmd("EHLO c.test");
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let t = Instant::now();
    let r = raw.cmd(&format!("RCPT TO:<{rcpt}>"));
    (r, t.elapsed())
}

fn gateway_alive(gw: &Gateway) {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"), "gateway still serving");
    assert!(raw.cmd("NOOP").starts_with("250"));
}

/// Plugins see the session as the client opened it: HELO is reported as HELO (not
/// EHLO), before and after STARTTLS, on every hook after it.
#[test]
fn helo_sessions_reach_plugins_as_helo() {
    let gw = with_plugin("adder", "header-adder", "config = { session = \"show\" }");
    let cases = [
        (
            &["--helo"][..],
            "helo=client.test ehlo=false listener=smtp tls=false",
        ),
        (
            &["--starttls", "--helo"][..],
            "helo=client.test ehlo=false listener=smtp tls=true",
        ),
        (
            &[][..],
            "helo=client.test ehlo=true listener=smtp tls=false",
        ),
    ];
    for (i, (flags, want)) in cases.into_iter().enumerate() {
        let port = gw.port();
        // One mailbox per case: Maildir file names do not sort by arrival.
        let local = format!("facts{i}");
        let rcpt = format!("{local}@example.test");
        let mut args = vec!["send", HOST, &port, "--to", &rcpt];
        args.extend_from_slice(flags);
        let out = json(&smtplib(&args));
        assert_eq!(out["data"]["code"], 250, "{flags:?}: {out}");
        let mail = gw.mailbox("example.test", &local);
        assert_eq!(mail.len(), 1, "{flags:?}");
        let text = String::from_utf8_lossy(&mail[0]).into_owned();
        assert!(
            text.contains(&format!("X-Session: {want}\r\n")),
            "{flags:?}: {text}"
        );
        let with = if flags.contains(&"--starttls") {
            "SMTPS"
        } else {
            "SMTP"
        };
        let with = if flags.is_empty() { "ESMTP" } else { with };
        assert!(
            text.contains(&format!(" with {with} id ")),
            "{flags:?}: {text}"
        );
    }
}

#[test]
fn reject_at_rcpt_over_smtp() {
    let gw = with_plugin("reject", "reject-rcpt", "");
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "blocked@example.test",
        "--to",
        "ok@example.test",
    ]));
    assert_eq!(out["rcpt"]["blocked@example.test"]["code"], 550, "{out}");
    assert_eq!(
        out["rcpt"]["blocked@example.test"]["text"], "5.7.1 blocked by fixture",
        "{out}"
    );
    assert_eq!(out["rcpt"]["ok@example.test"]["code"], 250, "{out}");
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(gw.mailbox("example.test", "ok").len(), 1);
    assert!(gw.mailbox("example.test", "blocked").is_empty());
}

#[test]
fn header_adder_edits_the_delivered_message() {
    let gw = with_plugin(
        "adder",
        "header-adder",
        "config = { stamp = \"from-config\" }",
    );
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "h@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let files = gw.mailbox("example.test", "h");
    let text = String::from_utf8_lossy(&files[0]);
    assert!(text.contains("X-Fixture: header-adder\r\n"), "{text}");
    assert!(text.contains("from-config"), "{text}");
}

#[test]
fn trace_header_when_enabled() {
    let gw = Setup::default()
        .section("[chain]\ntrace_header = true")
        .section(&plugin_toml(
            "adder",
            "header-adder",
            "config = { stamp = \"s\" }",
        ))
        .start();
    smtplib(&["send", HOST, &gw.port(), "--to", "t@example.test"]);
    let text = String::from_utf8_lossy(&gw.mailbox("example.test", "t")[0]).into_owned();
    assert!(
        text.contains("X-Mailgate-Trace: adder/data=continue"),
        "{text}"
    );
}

/// Each abusive plugin, at RCPT, with the default policy: 451 4.7.0 within the deadline,
/// a log line naming the cause, the gateway alive.
#[test]
fn abusive_plugins_are_contained_at_rcpt() {
    for (fixture_name, cause) in [
        ("infinite-loop", "deadline exceeded"),
        ("memory-bomb", "memory cap reached"),
        ("deep-recursion", "stack overflow"),
        ("panic", "trap"),
        ("slow-host", "deadline exceeded"),
    ] {
        let gw = with_plugin(
            "abuser",
            fixture_name,
            "limits = { deadline_ms = 300, memory_mb = 16 }",
        );
        let (r, took) = rcpt_reply(&gw, "victim@example.test");
        assert!(r.starts_with("451 4.7.0"), "{fixture_name}: {r}");
        assert!(
            took < Duration::from_secs(10),
            "{fixture_name}: took {took:?}"
        );
        gateway_alive(&gw);
        let log = gw.log();
        assert!(
            log.contains(&format!("cause={cause}")) || log.contains(&format!("cause=\"{cause}")),
            "{fixture_name}: {log}"
        );
        assert!(log.contains("instance dropped"), "{log}");
    }
}

#[test]
fn abusive_output_at_data_is_refused() {
    for fixture_name in ["huge-output", "header-injection"] {
        let gw = with_plugin("abuser", fixture_name, "");
        let out = json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--to",
            "u@example.test",
        ]));
        let code = out["data"]["code"]
            .as_i64()
            .or(out["rcpt"]["u@example.test"]["code"].as_i64());
        assert_eq!(code, Some(451), "{fixture_name}: {out}");
        assert!(
            gw.mailbox("example.test", "u").is_empty(),
            "{fixture_name}: nothing delivered"
        );
        assert!(
            gw.log().contains("invalid plugin output"),
            "{fixture_name}: {}",
            gw.log()
        );
        gateway_alive(&gw);
    }
}

#[test]
fn failure_policies_continue_and_reject() {
    let gw = with_plugin("p", "panic", "on_error = \"continue\"");
    let (r, _) = rcpt_reply(&gw, "u@example.test");
    assert!(r.starts_with("250"), "{r}");
    let gw = with_plugin("p", "panic", "on_error = \"reject\"");
    let (r, _) = rcpt_reply(&gw, "u@example.test");
    assert!(r.starts_with("550 5.7.0"), "{r}");
}

#[test]
fn looping_plugin_does_not_stall_other_sessions() {
    let gw = with_plugin("loop", "infinite-loop", "limits = { deadline_ms = 3000 }");
    let mut a = Raw::connect(gw.smtp);
    a.reply();
    a.cmd("EHLO a.test");
    a.cmd("MAIL FROM:<a@client.test>");
    a.send(b"RCPT TO:<x@example.test>\r\n");
    // While A's plugin call spins, B is served at once.
    let mut b = Raw::connect(gw.smtp);
    assert!(b.reply().starts_with("220"));
    assert!(b.cmd("EHLO b.test").starts_with("250"));
    assert!(b.cmd("NOOP").starts_with("250"));
    // A has not been answered yet (its deadline has not passed) ...
    a.s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(a.s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B was served while A's plugin ran"
    );
    a.s.set_nonblocking(false).unwrap();
    // ... and then gets the policy reply.
    assert!(a.reply().starts_with("451 4.7.0"));
}

/// Three sessions one after the other, two recipients each, through the `state-leak`
/// fixture; the headers it added to each delivered copy, in delivery order.
fn three_sessions(gw: &Gateway) -> Vec<String> {
    for round in 0..3 {
        let out = json(&smtplib(&[
            "send",
            HOST,
            &gw.port(),
            "--to",
            "s1@example.test",
            "--to",
            "s2@example.test",
        ]));
        assert_eq!(out["data"]["code"], 250, "round {round}: {out}");
    }
    let files = gw.mailbox("example.test", "s1");
    assert_eq!(files.len(), 3);
    let header = |text: &str, name: &str| -> u64 {
        let at = text
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        let rest = &text[at + name.len() + 2..];
        rest[..rest.find('\r').unwrap()].parse().unwrap()
    };
    let mut seen: Vec<(u64, u64, u64)> = files
        .iter()
        .map(|f| {
            let text = String::from_utf8_lossy(f);
            (
                header(&text, "X-Count"),
                header(&text, "X-Global-Count"),
                header(&text, "X-Init-Count"),
            )
        })
        .collect();
    seen.sort_by_key(|s| s.2);
    seen.iter()
        .map(|(c, g, i)| format!("{c}/{g}/{i}"))
        .collect()
}

#[test]
fn state_never_leaks_across_sessions() {
    // Reused instances (the default): the one instance serves the three sessions in
    // turn (its statics count 2, 4, 6 recipients and 1, 2, 3 inits) and `init` gives
    // each session a fresh plugin value (2 recipients each).
    let gw = with_plugin("counter", "state-leak", "");
    assert_eq!(three_sessions(&gw), ["2/2/1", "2/4/2", "2/6/3"]);
    // `instances = "per-session"`: nothing is shared, statics included.
    let gw = with_plugin("counter", "state-leak", "instances = \"per-session\"");
    assert_eq!(three_sessions(&gw), ["2/2/1", "2/2/1", "2/2/1"]);
}

#[test]
fn next_session_gets_a_fresh_instance_after_a_failure() {
    // A panicking plugin fails in every session: each failure drops that session's
    // instance and the next session instantiates afresh (and fails again, contained).
    let gw = with_plugin("p", "panic", "");
    for _ in 0..3 {
        let (r, _) = rcpt_reply(&gw, "u@example.test");
        assert!(r.starts_with("451 4.7.0"), "{r}");
    }
    assert_eq!(
        gw.log().matches("instance dropped").count(),
        3,
        "{}",
        gw.log()
    );
}

#[test]
fn broken_plugins_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |extra: &str| {
        let p = dir.path().join("g.toml");
        std::fs::write(&p, extra).unwrap();
        p.display().to_string()
    };
    // init fails
    let (ok, _, err) = mailgate(&[
        "check-config",
        "--config",
        &cfg(&plugin_toml("bad", "init-fails", "")),
    ]);
    assert!(!ok);
    assert!(err.contains("init failed: bad config"), "{err}");
    // not a component
    let junk = write_file(dir.path(), "junk.wasm", b"\0asm this is not a component");
    let (ok, _, err) = mailgate(&[
        "check-config",
        "--config",
        &cfg(&format!("[[plugin]]\nname = \"junk\"\npath = {junk:?}\n")),
    ]);
    assert!(!ok);
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
    // sha256 pin mismatch
    let pinned = plugin_toml(
        "pinned",
        "reject-rcpt",
        &format!("sha256 = \"{}\"", "0".repeat(64)),
    );
    let (ok, _, err) = mailgate(&["check-config", "--config", &cfg(&pinned)]);
    assert!(!ok);
    assert!(err.contains("sha256 mismatch"), "{err}");
    // a good one loads and is described
    let (ok, out, err) = mailgate(&[
        "check-config",
        "--config",
        &cfg(&plugin_toml("good", "reject-rcpt", "")),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("plugin good:") && out.contains("world 0.1."),
        "{out}"
    );
}

#[test]
fn plugin_inspect_describes_a_component() {
    let (ok, out, err) = mailgate(&[
        "plugin",
        "inspect",
        &fixture("reject-rcpt").display().to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("world: mailgate:plugin@0.1."), "{out}");
    assert!(out.contains("RCPT_TO"), "{out}");
    assert!(out.contains("mailgate:plugin/hooks@0.1."), "{out}");
}

/// The quick start, as a plugin author follows it: build `examples/hello-plugin` with one
/// cargo command, point the config at it, see it reject a recipient over real SMTP. The
/// build goes into the test run's shared wasm target dir (the SDK is compiled once for it
/// and the fixtures, with the same release profile).
#[test]
fn hello_plugin_quick_start() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-plugin");
    let wasm = support::build_wasm(&dir.join("Cargo.toml")).join("hello_plugin.wasm");
    let gw = Setup::default()
        .section(&format!(
            "[[plugin]]\nname = \"hello\"\npath = {:?}\nconfig = {{ reject = \"nobody\" }}\n",
            wasm.display().to_string()
        ))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "nobody@example.test",
        "--to",
        "alice@example.test",
    ]));
    assert_eq!(out["rcpt"]["nobody@example.test"]["code"], 550, "{out}");
    assert_eq!(
        out["rcpt"]["nobody@example.test"]["text"], "5.1.1 No such user here",
        "{out}"
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    let text = String::from_utf8_lossy(&gw.mailbox("example.test", "alice")[0]).into_owned();
    assert!(text.contains("X-Hello: mailgate\r\n"), "{text}");
}

/// The test zones NSD serves: forward names under `mailgate.test`, and the PTR of
/// 192.0.2.25. (Reverse names of 127/8 and ::1 never reach a server: the resolver answers
/// `localhost` itself, as RFC 6761 asks, so loopback clients are `localhost`.)
const FORWARD_ZONE: &str = "$ORIGIN mailgate.test.
$TTL 300
@       SOA ns hostmaster 1 3600 600 86400 300
@       NS  ns
ns      A   127.0.0.1
@       MX  20 mx2
@       MX  10 mx1
@       TXT \"v=spf1 ip4:127.0.0.1 -all\"
@       TXT \"split \" \"string\"
mx1     A   127.0.0.1
mx2     A   127.0.0.1
client  A   127.0.0.1
v6      AAAA 2001:db8::25
1.0.0.127.bl A 127.0.0.2
";
const REVERSE_ZONE: &str = "$ORIGIN 2.0.192.in-addr.arpa.
$TTL 300
@       SOA ns.mailgate.test. hostmaster.mailgate.test. 1 3600 600 86400 300
@       NS  ns.mailgate.test.
25      PTR relay.mailgate.test.
";

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("\r\n{name}: ");
    let at = text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    let rest = &text[at + prefix.len()..];
    &rest[..rest.find("\r\n").unwrap()]
}

fn probe_message(gw: &Gateway, rcpt: &str) -> String {
    let out = json(&smtplib(&["send", HOST, &gw.port(), "--to", rcpt]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let (local, domain) = rcpt.split_once('@').unwrap();
    let files = gw.mailbox(domain, local);
    assert_eq!(files.len(), 1);
    String::from_utf8_lossy(&files[0]).into_owned()
}

#[test]
fn dns_capability_answers_from_a_real_server() {
    let nsd = Nsd::start(&[
        ("mailgate.test", FORWARD_ZONE),
        ("2.0.192.in-addr.arpa", REVERSE_ZONE),
    ]);
    let gw = Setup::default()
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\nplugin_queries_per_session = 12\n",
            nsd.addr
        ))
        .section(&plugin_toml(
            "probe",
            "dns-probe",
            "capabilities = [\"dns\"]\nconfig = { domain = \"mailgate.test\" }",
        ))
        .start();
    let text = probe_message(&gw, "d@example.test");
    // The reverse name found at connect, forward-confirmed, in Received: and for plugins.
    assert!(text.contains("(localhost [127.0.0.1])"), "{text}");
    assert_eq!(header(&text, "X-Ptr-Name"), "localhost");
    assert_eq!(
        header(&text, "X-Txt"),
        "split string,v=spf1 ip4:127.0.0.1 -all",
        "TXT strings concatenated per record"
    );
    assert_eq!(header(&text, "X-A"), "127.0.0.1");
    assert_eq!(header(&text, "X-Aaaa"), "2001:db8::25");
    assert_eq!(
        header(&text, "X-Mx"),
        "10 mx1.mailgate.test,20 mx2.mailgate.test",
        "sorted by preference"
    );
    assert_eq!(header(&text, "X-Ptr"), "relay.mailgate.test");
    assert_eq!(header(&text, "X-Nx"), "nxdomain");
    assert_eq!(header(&text, "X-Dnsbl"), "127.0.0.2");
    // 7 lookups above (the DNSBL one included), 12 allowed: 5 more, then the budget.
    assert_eq!(header(&text, "X-Budget"), "5 then budget-exceeded");
    // A new session has a fresh budget.
    let text = probe_message(&gw, "e@example.test");
    assert_eq!(header(&text, "X-Budget"), "5 then budget-exceeded");
}

#[test]
fn dns_without_the_grant_or_with_a_dead_server() {
    // Not granted: denied, without a query.
    let gw = Setup::default()
        .section(&plugin_toml("probe", "dns-probe", ""))
        .start();
    let text = probe_message(&gw, "d@example.test");
    assert_eq!(header(&text, "X-Txt"), "denied");
    assert_eq!(header(&text, "X-Budget"), "0 then denied");
    drop(gw);

    // A server that never answers: each lookup ends at dns.timeout_ms with `timeout` and
    // the message is still accepted.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gw = Setup::default()
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\ntimeout_ms = 200\nattempts = 1\nplugin_queries_per_session = 8\n",
            silent.local_addr().unwrap()
        ))
        .section(&plugin_toml(
            "probe",
            "dns-probe",
            "capabilities = [\"dns\"]\nlimits = { deadline_ms = 10000 }",
        ))
        .start();
    let text = probe_message(&gw, "t@example.test");
    for h in ["X-Txt", "X-A", "X-Mx", "X-Ptr", "X-Nx", "X-Dnsbl"] {
        assert_eq!(header(&text, h), "timeout", "{h}");
    }
    assert_eq!(header(&text, "X-Budget"), "0 then timeout");
}

/// Compiled plugins are cached on disk: a restart loads the cached form instead of
/// compiling; an unusable cache file is replaced by a fresh compilation.
#[test]
fn compiled_plugins_are_cached_across_restarts() {
    let cache = tempfile::tempdir().unwrap();
    let setup = || {
        Setup::default()
            .section(&format!(
                "[chain]\ncompile_cache = {:?}\n",
                cache.path().display().to_string()
            ))
            .section(&plugin_toml("reject", "reject-rcpt", ""))
            .start()
    };
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    let mut gw = setup();
    let files = cached();
    assert_eq!(files.len(), 1, "one compiled component");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let out = std::process::Command::new("sha256sum")
        .arg(fixture("reject-rcpt"))
        .output()
        .unwrap();
    let sha = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    assert!(name.starts_with(&sha), "{name} keyed by the file's SHA-256");
    assert!(!gw.log().contains("loaded from the cache"));
    gw.terminate();
    // Age the entry: loading it from the cache marks it used again (kept by pruning).
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .append(true)
        .open(&files[0])
        .unwrap()
        .set_modified(old)
        .unwrap();

    let mut gw = setup();
    assert!(
        gw.log().contains("compiled plugin loaded from the cache"),
        "{}",
        gw.log()
    );
    let used = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    assert!(used > old, "marked used");
    assert!(rcpt_reply(&gw, "blocked@example.test").0.starts_with("550"));
    gw.terminate();

    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let gw = setup();
    assert!(
        gw.log().contains("unusable compile cache entry"),
        "{}",
        gw.log()
    );
    assert!(rcpt_reply(&gw, "blocked@example.test").0.starts_with("550"));
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        b"not a compiled component",
        "rewritten"
    );
}

/// The plugins' clock (the `clock` capability and kv expiry) moves forward on
/// `mailgate clock advance` only when the config sets `chain.adjustable_clock`.
#[test]
fn the_plugin_clock_moves_only_when_adjustable() {
    let advance = |gw: &support::Gateway, secs: &str| {
        let cfg = gw.config.display().to_string();
        support::mailgate(&["clock", "advance", secs, "--config", &cfg])
    };
    let gw = Setup::default()
        .env("MAILGATE_CHAIN__ADJUSTABLE_CLOCK", "true")
        .start();
    let (ok, out, err) = advance(&gw, "300");
    assert!(ok, "{err}");
    assert_eq!(support::json(&out)["offset_secs"], 300, "{out}");
    let (ok, out, _) = advance(&gw, "61");
    assert!(ok);
    assert_eq!(support::json(&out)["offset_secs"], 361, "{out}");
    let (ok, _, err) = advance(&gw, "soon");
    assert!(!ok, "a non-number must be refused");
    assert!(err.contains("invalid value"), "{err}");

    let fixed = Setup::default().start();
    let (ok, _, err) = advance(&fixed, "300");
    assert!(!ok);
    assert!(err.contains("not adjustable"), "{err}");
}
