//! The plugin sandbox under abuse, over the real binary: each test here is one gap a hostile
//! plugin or client found (the sandbox issue), and each fails without its fix.

mod support;

use support::{Gateway, Raw, Setup, plugin_toml};

/// One session: EHLO, then each `(rcpt, body)` as its own transaction; returns every
/// end-of-data reply.
fn transactions(gw: &Gateway, messages: &[(&str, &str)]) -> Vec<String> {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    let mut replies = Vec::new();
    for (rcpt, body) in messages {
        assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(raw.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
        assert!(raw.cmd("DATA").starts_with("354"));
        raw.send(body.as_bytes());
        replies.push(raw.cmd("."));
    }
    assert!(raw.cmd("QUIT").starts_with("221"));
    replies
}

/// A header field's value in a delivered message.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n")
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// Item 9: points given at connect and HELO belong to the session: every transaction of
/// the session starts with them (they were lost at the first MAIL).
#[test]
fn connect_and_helo_scores_last_the_whole_session() {
    let gw = Setup::default()
        .section(&plugin_toml(
            "scorer",
            "header-adder",
            "config = { connect_points = \"1.5\", helo_points = \"2\" }",
        ))
        .start();
    let replies = transactions(
        &gw,
        &[
            ("one@example.test", "Subject: 1\r\n\r\nfirst\r\n"),
            ("two@example.test", "Subject: 2\r\n\r\nsecond\r\n"),
        ],
    );
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    for who in ["one", "two"] {
        let mail = gw.mailbox("example.test", who);
        let text = String::from_utf8_lossy(&mail[0]).into_owned();
        assert_eq!(field(&text, "X-Score"), Some("3.5"), "{who}: {text}");
    }
}

/// Item 12: a plugin's words reach a header only as one field: an `init` error message
/// with CR/LF in it, written into `X-Mailgate-Trace`, cannot add `Bcc:` or any field.
#[test]
fn a_plugin_cannot_inject_fields_through_the_trace_header() {
    let gw = Setup::default()
        .section("[chain]\ntrace_header = true")
        .section(&plugin_toml(
            "liar",
            "init-fails",
            "on_error = \"continue\"\ncapabilities = [\"kv\"]\n\
             config = { after_load = true, message = \"boom\\r\\nBcc: victim@example.test\\r\\nX-Injected: 1\" }",
        ))
        .start();
    let replies = transactions(&gw, &[("u@example.test", "Subject: t\r\n\r\nbody\r\n")]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let mail = gw.mailbox("example.test", "u");
    let text = String::from_utf8_lossy(&mail[0]).into_owned();
    let trace = field(&text, "X-Mailgate-Trace").expect("trace header");
    assert!(trace.contains("init failed: boom"), "{text}");
    for injected in ["\r\nBcc:", "\r\nX-Injected:"] {
        assert!(!text.contains(injected), "{injected:?} injected: {text}");
    }
}

/// Item 7: a header value is folded at its spaces; one with a word that no line of 998
/// octets can hold is refused (the plugin fails under its policy) instead of being
/// written as a line the next hop refuses. No line the gateway writes is longer.
#[test]
fn header_values_are_folded_or_refused_never_over_998_octets() {
    for (long, code) in [("spaced", "250"), ("word", "451")] {
        let gw = Setup::default()
            .section(&plugin_toml(
                "long",
                "header-injection",
                &format!("config = {{ long = \"{long}\" }}"),
            ))
            .start();
        let replies = transactions(&gw, &[("u@example.test", "Subject: t\r\n\r\nbody\r\n")]);
        assert!(replies[0].starts_with(code), "{long}: {replies:?}");
        for copy in gw.mailbox("example.test", "u") {
            let text = String::from_utf8_lossy(&copy).into_owned();
            assert!(text.contains("X-Long: abcdefghi"), "{long}: {text}");
            let longest = text.split("\r\n").map(str::len).max().unwrap();
            assert!(longest <= 998, "{long}: a {longest}-octet line");
        }
        if long == "word" {
            assert!(gw.mailbox("example.test", "u").is_empty());
            assert!(gw.log().contains("cannot be folded"), "{}", gw.log());
        }
    }
}

/// Item 13: reply text is ASCII: a plugin's non-ASCII reply reaches a client that did
/// not ask for SMTPUTF8 with `?` in place of each such character.
#[test]
fn replies_to_clients_are_ascii() {
    let gw = Setup::default()
        .section(&plugin_toml(
            "utf8",
            "header-injection",
            "config = { reply = \"utf8\" }",
        ))
        .start();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = raw.cmd("RCPT TO:<u@example.test>");
    assert!(r.starts_with("550"), "{r}");
    assert!(r.is_ascii(), "{r:?}");
    assert!(r.contains("no?way f?r you"), "{r:?}");
}

/// Item 8: recipients a plugin adds count against `limits.max_recipients` (past it the
/// message is refused `452 4.5.3`, never delivered to more), and an address literal
/// from a plugin is invalid output unless the plugin has `literal_recipients = true`.
#[test]
fn recipients_from_plugins_count_and_literals_need_permission() {
    let send = |gw: &Gateway| {
        let mut raw = Raw::connect(gw.smtp);
        assert!(raw.reply().starts_with("220"));
        assert!(raw.cmd("EHLO client.test").starts_with("250"));
        assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        for r in ["r1", "r2", "r3"] {
            assert!(
                raw.cmd(&format!("RCPT TO:<{r}@example.test>"))
                    .starts_with("250")
            );
        }
        assert!(raw.cmd("DATA").starts_with("354"));
        raw.send(b"Subject: t\r\n\r\nbody\r\n");
        raw.cmd(".")
    };
    for (adds, code) in [(2, "250"), (5, "452 4.5.3")] {
        let gw = Setup::default()
            .section("[limits]\nmax_recipients = 5")
            .section(&plugin_toml(
                "copier",
                "header-injection",
                &format!("config = {{ add_recipients = \"{adds}\" }}"),
            ))
            .start();
        let r = send(&gw);
        assert!(r.starts_with(code), "{adds} added: {r}");
        let delivered = (0..adds)
            .map(|i| gw.mailbox("example.test", &format!("copy{i}")).len())
            .sum::<usize>()
            + gw.mailbox("example.test", "r1").len();
        assert_eq!(delivered, if adds == 2 { 3 } else { 0 }, "{adds} added");
    }
    for (allowed, code) in [(false, "451"), (true, "250")] {
        let gw = Setup::default()
            .section(&plugin_toml(
                "literal",
                "header-injection",
                &format!("literal_recipients = {allowed}\nconfig = {{ add_literal = true }}"),
            ))
            .start();
        let r = send(&gw);
        assert!(r.starts_with(code), "literal_recipients = {allowed}: {r}");
        if !allowed {
            assert!(gw.log().contains("address literal"), "{}", gw.log());
        }
    }
}

/// Item 3: `dns.plugin_queries_per_session` is the plugin's budget for the whole
/// session: a plugin that spends it at RCPT and traps (so the next hook runs on a new
/// instance) does not get it back.
#[test]
fn the_dns_budget_is_per_session_not_per_instance() {
    let nsd = support::Nsd::start(&[(
        "mailgate.test",
        "$ORIGIN mailgate.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n\
         @ NS ns\nns A 127.0.0.1\nclient A 127.0.0.1\n",
    )]);
    let gw = Setup::default()
        .section(&format!(
            "[dns]\nservers = [\"{}\"]\nplugin_queries_per_session = 12\n",
            nsd.addr
        ))
        .section(&plugin_toml(
            "probe",
            "dns-probe",
            "on_error = \"continue\"\ncapabilities = [\"dns\"]\n\
             config = { domain = \"mailgate.test\", rcpt_lookups = \"10\" }",
        ))
        .start();
    let replies = transactions(&gw, &[("u@example.test", "Subject: t\r\n\r\nbody\r\n")]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let mail = gw.mailbox("example.test", "u");
    let text = String::from_utf8_lossy(&mail[0]).into_owned();
    // 10 of 12 went at RCPT: the DATA hook's first two lookups (TXT, A) are answered,
    // everything after them is over the budget.
    assert_eq!(field(&text, "X-A"), Some("127.0.0.1"), "{text}");
    assert_eq!(field(&text, "X-Mx"), Some("budget-exceeded"), "{text}");
    assert_eq!(
        field(&text, "X-Budget"),
        Some("0 then budget-exceeded"),
        "{text}"
    );
}

/// Item 4: a plugin's log lines are rate-limited over all its sessions
/// (`limits.log_lines_per_sec`): sessions that each log hundreds of lines write about a
/// second's worth in all, and the gateway says once that it is dropping them.
#[test]
fn plugin_logging_is_rate_limited_across_sessions() {
    let gw = Setup::default()
        .env("MAILGATE_LOG", "debug")
        .section(&plugin_toml(
            "chatty",
            "slow-host",
            "capabilities = [\"log\"]\nlimits = { log_lines_per_sec = 50 }\n\
             config = { capability = \"log\", iterations = \"300\" }",
        ))
        .start();
    let started = std::time::Instant::now();
    for i in 0..4 {
        let replies = transactions(
            &gw,
            &[(&format!("u{i}@example.test")[..], "Subject: t\r\n\r\nx\r\n")],
        );
        assert!(replies[0].starts_with("250"), "{replies:?}");
    }
    let secs = started.elapsed().as_secs_f64();
    let log = gw.log();
    let written = log
        .lines()
        .filter(|l| l.contains(" slow-host plugin=\"chatty\""))
        .count();
    // 4 x 300 lines were offered; the bucket holds 50 and refills 50 a second.
    let allowed = 50 + (50.0 * (secs + 1.0)) as usize;
    assert!(
        written >= 50 && written <= allowed,
        "{written} lines written in {secs:.1} s"
    );
    assert!(log.contains("dropping its lines"), "{log}");
    let status = gw.status();
    let dropped = status["generation"]["plugins"][0]["log_lines_dropped"]
        .as_u64()
        .unwrap();
    assert_eq!(dropped as usize, 4 * 300 - written, "{status}");
}

/// Item 11: a flood of EHLO/RSET/NOOP counts as errors past `limits.max_junk_commands`,
/// so it ends at `limits.max_errors` with `421 4.7.0` (the decision trace it would have
/// grown is bounded as well: `chain.rs` unit test).
#[test]
fn junk_commands_end_a_session() {
    let gw = Setup::default().start();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    let mut answered = 0;
    let mut last = String::new();
    for cmd in ["EHLO client.test", "NOOP", "RSET"]
        .iter()
        .cycle()
        .take(300)
    {
        last = raw.cmd(cmd);
        if !last.starts_with("250") {
            break;
        }
        answered += 1;
    }
    assert!(last.contains("421 4.7.0"), "{answered}: {last}");
    // 100 free, then 19 more counted as errors; the 20th error closes.
    assert_eq!(answered, 119, "{last}");
    assert!(raw.closed());
}

/// Item 14: a compile cache entry is bound to the plugin file it was compiled from: one
/// swapped in from another plugin (or altered) is detected and recompiled, never run;
/// and a cache directory writable by others is made private before it is used.
#[test]
fn a_swapped_compile_cache_entry_is_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    let start = |fixture: &str| {
        Setup::default()
            .section(&format!(
                "[chain]\ncompile_cache = {:?}\n",
                dir.display().to_string()
            ))
            .section(&plugin_toml("p", fixture, ""))
            .start()
    };
    let entries = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        v.sort();
        v
    };
    let mut gw = start("reject-rcpt");
    gw.terminate();
    let rejecter = entries()[0].clone();
    let mut gw = start("header-adder");
    gw.terminate();
    let adder = entries()
        .into_iter()
        .find(|p| *p != rejecter)
        .expect("second entry");
    // Swap: the reject-rcpt entry now holds header-adder's compiled code. And open the
    // directory to everyone.
    std::fs::copy(&adder, &rejecter).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let gw = start("reject-rcpt");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache directory was made private");
    assert!(
        gw.log().contains("compiled from another plugin file"),
        "{}",
        gw.log()
    );
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = raw.cmd("RCPT TO:<blocked@example.test>");
    assert!(
        r.starts_with("550 5.7.1"),
        "the configured plugin runs: {r}"
    );
}

/// EHLO, MAIL and RCPT on a new connection; the connection (kept open) and the RCPT reply.
fn held_rcpt(gw: &Gateway, rcpt: &str) -> (Raw, String) {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = raw.cmd(&format!("RCPT TO:<{rcpt}>"));
    (raw, r)
}

/// Item 2: the linear memory of all plugin instances together is capped
/// (`chain.max_total_memory_mb`): with two sessions each holding 16 MiB in their
/// instance, a third cannot grow past the cap (its plugin fails: `451 4.7.0`), and once
/// a session ends its memory is given back.
#[test]
fn plugin_memory_is_capped_across_instances() {
    let gw = Setup::default()
        .section("[chain]\nmax_total_memory_mb = 40")
        .section(&plugin_toml(
            "hog",
            "memory-bomb",
            "limits = { memory_mb = 32 }\nconfig = { mb = \"16\" }",
        ))
        .start();
    let (mut a, r) = held_rcpt(&gw, "a@example.test");
    assert!(r.starts_with("250"), "{r}");
    let (_b, r) = held_rcpt(&gw, "b@example.test");
    assert!(r.starts_with("250"), "{r}");
    let (_c, r) = held_rcpt(&gw, "c@example.test");
    assert!(r.starts_with("451 4.7.0"), "past the total: {r}");
    assert!(
        gw.log().contains("chain.max_total_memory_mb"),
        "{}",
        gw.log()
    );
    assert!(a.cmd("QUIT").starts_with("221"));
    assert!(a.closed());
    // A's instance is gone with its session (bounded wait: the server drops it after
    // the QUIT reply).
    let mut r = String::new();
    for _ in 0..50 {
        r = held_rcpt(&gw, "d@example.test").1;
        if r.starts_with("250") {
            break;
        }
    }
    assert!(r.starts_with("250"), "memory given back: {r}");
}

/// Item 1: the instance pool is sized from the connection limits and the chain: 530
/// idle sessions that each hold an instance (past the old fixed 512 slots) do not keep
/// another client from being served.
#[test]
fn idle_sessions_cannot_exhaust_the_instance_pool() {
    let gw = Setup::default()
        .server("max_connections = 600\nmax_connections_per_ip = 600")
        .section(&plugin_toml("reject", "reject-rcpt", ""))
        .start();
    let mut idle = Vec::new();
    for i in 0..530 {
        let (raw, r) = held_rcpt(&gw, &format!("idle{i}@example.test"));
        assert!(r.starts_with("250"), "session {i}: {r}");
        idle.push(raw);
    }
    let (_, r) = held_rcpt(&gw, "late@example.test");
    assert!(
        r.starts_with("250"),
        "a client past 512 idle sessions is served: {r}"
    );
    let (_, r) = held_rcpt(&gw, "blocked@example.test");
    assert!(r.starts_with("550 5.7.1"), "and its plugin runs: {r}");
}

/// The reason plugin `name` gave with its last decision, from the debug log.
fn last_reason(log: &str, name: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("plugin decision") && l.contains(&format!("plugin={name} ")))
        .and_then(|l| l.split("reason=").nth(1))
        .map(|r| {
            r.split(" micros=")
                .next()
                .unwrap_or(r)
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default()
}

/// Item 5: each plugin's `kv` namespace has its own quota in entries and octets: a
/// plugin filling its own (100,000 small keys) does not make another's first write
/// fail, and one writing 64 KiB values is stopped at its byte quota.
#[test]
fn kv_quotas_are_per_plugin_in_entries_and_octets() {
    let gw = Setup::default()
        .env("MAILGATE_LOG", "debug")
        .section(&plugin_toml(
            "filler",
            "slow-host",
            "capabilities = [\"kv\"]\nlimits = { deadline_ms = 30000 }\n\
             config = { capability = \"kv-set\", iterations = \"100001\" }",
        ))
        .section(&plugin_toml(
            "hog",
            "slow-host",
            "capabilities = [\"kv\"]\nlimits = { kv_mb = 1 }\n\
             config = { capability = \"kv-set\", iterations = \"200\", value_bytes = \"65536\" }",
        ))
        .section(&plugin_toml(
            "neighbour",
            "slow-host",
            "capabilities = [\"kv\"]\nconfig = { capability = \"kv-set\", iterations = \"1\" }",
        ))
        .start();
    let replies = transactions(&gw, &[("u@example.test", "Subject: t\r\n\r\nx\r\n")]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let log = gw.log();
    assert_eq!(
        last_reason(&log, "filler"),
        "100001 host calls, 1 failed",
        "{log}"
    );
    // 1 MiB holds 15 values of 64 KiB with their keys and bookkeeping.
    assert_eq!(last_reason(&log, "hog"), "200 host calls, 185 failed");
    assert_eq!(last_reason(&log, "neighbour"), "1 host calls, 0 failed");
    // `mailgate status` shows what each namespace holds.
    let status = gw.status();
    let plugins = status["generation"]["plugins"].as_array().unwrap();
    let entries = |name: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["kv_entries"].as_u64().unwrap())
    };
    assert_eq!(entries("filler"), Some(100_000), "{status}");
    assert_eq!(entries("hog"), Some(15), "{status}");
    assert_eq!(entries("neighbour"), Some(1), "{status}");
}

/// Item 10: MIME parsing is capped: a message of 3,000 parts lists the first 1,000 to
/// plugins (it is parsed once per message, off the runtime's workers).
#[test]
fn mime_parts_are_capped() {
    let gw = Setup::default()
        .section(&plugin_toml(
            "counter",
            "header-adder",
            "config = { parts = \"count\" }",
        ))
        .start();
    let mut body = String::from(
        "Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n",
    );
    for i in 0..3000 {
        body.push_str(&format!(
            "--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    body.push_str("--b--\r\n");
    let replies = transactions(&gw, &[("u@example.test", &body)]);
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let mail = gw.mailbox("example.test", "u");
    let text = String::from_utf8_lossy(&mail[0]).into_owned();
    assert_eq!(field(&text, "X-Parts"), Some("1000"), "{}", &text[..300]);
}
