//! `mailgate plugin test` over the real binary: one plugin with `--plugin-config` and
//! `--grant`, a gateway config's chain (the shipped `auth` and `spam-score` plugins) with
//! every DNS answer from zone files (`--dns-zone`, tests/fixtures/plugin-test/zones), the
//! plugins' clock and DKIM expiry moved by `--time`, the JSON report, usage errors, a
//! trapping plugin, `on-deliver` routes, and the spam corpus (tests/fixtures/corpus/)
//! with its expected verdicts. Every run is hermetic: it is given zone files, so no
//! lookup leaves the process.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{fixture, json, shipped};

/// One run: exit status and output.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON report (runs with `--json`).
    fn report(&self) -> serde_json::Value {
        json(&self.stdout)
    }

    /// Says what the run printed, for assertion messages.
    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `mailgate plugin test ARGS…`; plugins compiled into the shared test compile cache.
fn plugin_test(args: &[&str]) -> Run {
    let out = Command::new(support::binary())
        .args(["plugin", "test"])
        .args(args)
        .env("MAILGATE_CHAIN__COMPILE_CACHE", support::compile_cache())
        .env_remove("MAILGATE_LOG")
        .output()
        .expect("run mailgate");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plugin-test")
}

/// A zone file of tests/fixtures/plugin-test/zones.
fn zone(name: &str) -> String {
    fixtures()
        .join("zones")
        .join(format!("{name}.zone"))
        .display()
        .to_string()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `--dns-zone` for each zone named.
fn zones(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| ["--dns-zone".to_string(), zone(n)])
        .collect()
}

/// The good.example, spoofed.example and reverse zones, as arguments.
fn auth_zones() -> Vec<String> {
    zones(&["good.example", "spoofed.example", "2.0.192.in-addr.arpa"])
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The unfolded values of header field `name` in a JSON report.
fn header(report: &serde_json::Value, name: &str) -> Vec<String> {
    report["header_fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| {
                    f["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .map(|f| f["value"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every plugin decision of a JSON report, in order (deliver stage included).
fn decisions(report: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["decisions"].as_array().unwrap().clone())
        .collect();
    if let Some(d) = report["deliver"]["decisions"].as_array() {
        out.extend(d.iter().cloned());
    }
    out
}

/// A gateway config in `dir` whose chain is `plugins` (`[[plugin]]` tables) after
/// `settings`.
fn config(dir: &Path, settings: &str, plugins: &str) -> String {
    let p = dir.join("gateway.toml");
    std::fs::write(&p, format!("{settings}\n{plugins}")).unwrap();
    path(&p)
}

#[test]
fn one_plugin_with_its_config_accepts_and_rejects() {
    let adder = path(&fixture("header-adder"));
    let mut args = vec![adder.as_str(), "--plugin-config", "stamp=v1.2"];
    let z = zones(&["good.example"]);
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    let out = &r.stdout;
    assert!(out.contains("[header_adder] data continue"), "{out}");
    assert!(out.contains("edit: append header X-Stamp: v1.2"), "{out}");
    assert!(
        out.contains("result: accepted, delivered (exit 0)"),
        "{out}"
    );
    // The header block as delivered: Received on top, the edits at the end.
    let block = out.split("header block").nth(1).expect("a header block");
    assert!(
        block.contains("Received: from client.example ([192.0.2.1])"),
        "{block}"
    );
    assert!(
        block.contains("X-Fixture: header-adder\n  X-Stamp: v1.2\n"),
        "{block}"
    );
    assert!(
        out.contains("RCPT TO:<recipient@example.net>"),
        "default recipient: {out}"
    );

    let reject = path(&fixture("reject-rcpt"));
    let mut args = vec![reject.as_str(), "--rcpt", "blocked@example.net"];
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 1, "{}", r.show());
    assert!(
        r.stdout.contains("[reject_rcpt] rcpt reject 550"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("S: 550 5.7.1 blocked by fixture"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("result: rejected (exit 1)"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("header block"),
        "nothing delivered: {}",
        r.stdout
    );

    // One refused recipient of two: the message goes to the other.
    let mut args = vec![
        reject.as_str(),
        "--rcpt",
        "blocked@example.net",
        "--rcpt",
        "alice@example.org",
        "--json",
    ];
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    let j = r.report();
    assert_eq!(
        j["envelope"]["rcpt_to"],
        serde_json::json!(["alice@example.org"])
    );
    assert_eq!(
        j["refused_recipients"][0]["recipient"],
        "blocked@example.net"
    );
    assert_eq!(j["refused_recipients"][0]["reply"]["code"], 550);
}

#[test]
fn grants_decide_what_a_plugin_may_ask() {
    // dns-probe reports its lookups as headers; probe.test is served from a zone file
    // without $ORIGIN (the origin is the file's name).
    let probe = path(&fixture("dns-probe"));
    let z = zones(&["probe.test", "good.example", "2.0.192.in-addr.arpa"]);
    let run = |grant: bool| {
        let mut args = vec![
            probe.as_str(),
            "--plugin-config",
            "domain=probe.test",
            "--json",
        ];
        if grant {
            args.extend(["--grant", "dns"]);
        }
        args.extend(strs(&z));
        let r = plugin_test(&args);
        assert_eq!(r.code, 0, "{}", r.show());
        r.report()
    };
    let granted = run(true);
    assert_eq!(header(&granted, "X-Txt"), ["probe=ok"], "{granted:#}");
    assert_eq!(header(&granted, "X-A"), ["192.0.2.1"]);
    assert_eq!(header(&granted, "X-Aaaa"), ["2001:db8::1"]);
    assert_eq!(header(&granted, "X-Mx"), ["10 mx.probe.test"]);
    assert_eq!(header(&granted, "X-Nx"), ["nxdomain"]);
    // The session's reverse name, forward-confirmed through good.example.
    assert_eq!(header(&granted, "X-Ptr-Name"), ["mail.good.example"]);
    assert_eq!(granted["session"]["reverse_name"], "mail.good.example");
    assert_eq!(
        granted["run"]["plugins"][0]["capabilities"],
        serde_json::json!(["dns"])
    );
    let denied = run(false);
    assert_eq!(header(&denied, "X-Txt"), ["denied"], "{denied:#}");
    assert_eq!(header(&denied, "X-A"), ["denied"]);
}

/// The auth plugin (DMARC failures only tagged, so a spoofed message is delivered with
/// its results; 2.5 points for an SPF failure) and spam-score, over zones where
/// good.example allows the client and spoofed.example does not.
fn auth_chain(dir: &Path) -> String {
    config(
        dir,
        "[server]\nhostname = \"mx.gateway.test\"\n[relay]\nlocal_domains = [\"example.net\"]",
        &format!(
            "[[plugin]]\nname = \"auth\"\npath = {:?}\ncapabilities = [\"auth-results\"]\n\
             config = {{ dmarc_reject = \"tag\", score_spf_fail = 2.5 }}\n\
             [[plugin]]\nname = \"spam\"\npath = {:?}\n\
             capabilities = [\"dns\", \"log\", \"kv\", \"auth-results\"]\n",
            path(&shipped("auth")),
            path(&shipped("spam-score"))
        ),
    )
}

#[test]
fn a_config_chain_shows_spf_from_the_zones_in_authentication_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = auth_chain(dir.path());
    let z = auth_zones();
    let run = |from: &str, client: &str| {
        let mut args = vec![
            "--config",
            cfg.as_str(),
            "--from",
            from,
            "--client-ip",
            client,
            "--json",
        ];
        args.extend(strs(&z));
        let r = plugin_test(&args);
        assert_eq!(r.code, 0, "{from} from {client}: {}", r.show());
        r.report()
    };
    let good = run("alice@good.example", "192.0.2.1");
    let ar = header(&good, "Authentication-Results").join(" ");
    assert!(ar.starts_with("mx.gateway.test;"), "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(ar.contains("smtp.mailfrom=alice@good.example"), "{ar}");
    assert!(ar.contains("iprev=pass"), "reverse zone served: {ar}");
    let status = header(&good, "X-Spam-Status").join(" ");
    assert!(
        status.starts_with("No, "),
        "spam-score ran after auth: {status}"
    );
    assert!(
        (good["score"].as_f64().unwrap() - 0.3).abs() < 1e-9,
        "HELO_NOT_PTR only: {good:#}"
    );
    let received = &header(&good, "Received")[0];
    assert!(
        received.starts_with(
            "from client.example (mail.good.example [192.0.2.1]) by mx.gateway.test (mailgate) with ESMTP id "
        ),
        "{received}"
    );

    let spoofed = run("bob@spoofed.example", "192.0.2.1");
    let ar = header(&spoofed, "Authentication-Results").join(" ");
    assert!(ar.contains("spf=fail"), "{ar}");
    assert!(ar.contains("dmarc=fail"), "{ar}");
    let auth = decisions(&spoofed)
        .into_iter()
        .find(|d| d["plugin"] == "auth" && d["stage"] == "data")
        .expect("auth at DATA");
    assert_eq!(
        auth["score"],
        serde_json::json!([{"rule": "SPF_FAIL", "points": 2.5}]),
        "{auth}"
    );
    // auth's 2.5 for the SPF failure reaches spam-score (it runs after auth at DATA),
    // whose own auth rules add SPF_FAIL 2.0 and DMARC_FAIL 3.0; HELO_NOT_PTR 0.3.
    assert!(
        (spoofed["score"].as_f64().unwrap() - 7.8).abs() < 1e-9,
        "auth's SPF_FAIL, spam-score's SPF_FAIL, DMARC_FAIL and HELO_NOT_PTR: {spoofed:#}"
    );
    let status = header(&spoofed, "X-Spam-Status").join(" ");
    for rule in ["SPF_FAIL(2.0)", "DMARC_FAIL(3.0)", "OTHER_PLUGINS(2.5)"] {
        assert!(status.contains(rule), "{rule}: {status}");
    }
    let tags = spoofed["tags"].as_array().unwrap();
    assert!(tags.contains(&"spf:fail".into()), "{tags:?}");
    assert!(tags.contains(&"dmarc:fail".into()), "{tags:?}");
    // The same sender from the address its SPF record names passes.
    let from_its_host = run("bob@spoofed.example", "198.51.100.7");
    let ar = header(&from_its_host, "Authentication-Results").join(" ");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(
        ar.contains("iprev=fail"),
        "no reverse name for 198.51.100.7: {ar}"
    );
    // A domain outside every zone does not exist: no SPF record.
    let nowhere = run("carol@nowhere.example", "192.0.2.1");
    let ar = header(&nowhere, "Authentication-Results").join(" ");
    assert!(ar.contains("spf=none"), "{ar}");
}

#[test]
fn time_moves_dkim_expiry_and_the_plugins_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = auth_chain(dir.path());
    let message = path(&fixtures().join("messages/dkim-signed.eml"));
    let z = auth_zones();
    // The signature: t=2026-01-01T00:00:00Z, x=2026-01-08T00:00:00Z.
    let run = |time: &str| {
        let mut args = vec![
            "--config",
            cfg.as_str(),
            "--from",
            "alice@good.example",
            "--message",
            message.as_str(),
            "--time",
            time,
            "--json",
        ];
        args.extend(strs(&z));
        let r = plugin_test(&args);
        assert_eq!(r.code, 0, "{time}: {}", r.show());
        r.report()
    };
    let before = run("2026-01-02T12:00:00+02:00");
    assert_eq!(before["run"]["time"], "2026-01-02T12:00:00+02:00");
    let ar = header(&before, "Authentication-Results").join(" ");
    assert!(ar.contains("dkim=pass header.d=good.example"), "{ar}");
    assert!(ar.contains("dmarc=pass"), "{ar}");
    assert!(
        before["tags"]
            .as_array()
            .unwrap()
            .contains(&"dkim:pass".into())
    );
    let after = run("2026-02-01T00:00:00Z");
    let ar = header(&after, "Authentication-Results").join(" ");
    assert!(
        ar.contains("dkim=fail (signature expired (x=1767830400)) header.d=good.example"),
        "{ar}"
    );
    assert!(
        after["tags"]
            .as_array()
            .unwrap()
            .contains(&"dkim:fail".into())
    );

    // The built-in message is dated by the clock.
    let adder = path(&fixture("header-adder"));
    let gz = zones(&["good.example"]);
    let mut args = vec![adder.as_str(), "--time", "2030-06-15T08:30:00Z", "--json"];
    args.extend(strs(&gz));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    assert_eq!(
        header(&r.report(), "Date"),
        ["Sat, 15 Jun 2030 08:30:00 +0000"]
    );
}

#[test]
fn greylisting_tempfails_a_first_try_when_it_has_a_clock() {
    // kv lives as long as the process: every run is a first try, answered 451 with the
    // retry hint. Without the clock granted the plugin fails open.
    let grey = path(&shipped("greylist"));
    let z = zones(&["good.example"]);
    let run = |grants: &str, extra: &[&str]| {
        let mut args = vec![
            grey.as_str(),
            "--grant",
            grants,
            "--time",
            "2026-03-01T10:00:00Z",
        ];
        args.extend(extra);
        args.extend(strs(&z));
        plugin_test(&args)
    };
    let r = run("kv,clock,log", &["--plugin-config", "delay_secs=120"]);
    assert_eq!(r.code, 2, "{}", r.show());
    assert!(
        r.stdout
            .contains("S: 451 4.7.1 Greylisted, please try again in 120 seconds"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("tags: greylist:new"), "{}", r.stdout);
    assert!(
        r.stdout.contains("result: tempfailed (exit 2)"),
        "{}",
        r.stdout
    );
    let r = run("kv,log", &["--json"]);
    assert_eq!(r.code, 0, "{}", r.show());
    let j = r.report();
    assert!(
        j["tags"]
            .as_array()
            .unwrap()
            .contains(&"greylist:unavailable".into()),
        "{j:#}"
    );
    let logs: Vec<&serde_json::Value> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["logs"].as_array().unwrap())
        .collect();
    assert!(
        logs.iter().any(|l| l["level"] == "warn"
            && l["message"] == "greylisting skipped, mail let through"
            && l["fields"].as_str().unwrap_or("").contains("clock")),
        "{logs:?}"
    );
}

#[test]
fn the_json_report_has_the_trace_envelope_and_header_block() {
    let adder = path(&fixture("header-adder"));
    let z = zones(&["good.example"]);
    let mut args = vec![
        adder.as_str(),
        "--plugin-config",
        "stamp=json",
        "--helo",
        "relay.good.example",
        "--from",
        "",
        "--rcpt",
        "a@example.net",
        "--rcpt",
        "b@example.org",
        "--client-ip",
        "2001:db8::25",
        "--tls",
        "--json",
    ];
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    let j = r.report();
    assert_eq!(j["result"], "accepted");
    assert_eq!(j["disposition"], "delivered");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["plugin_failed"], false);
    let stages: Vec<&str> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "connect", "helo", "mail", "rcpt", "rcpt", "data", "message", "quit"
        ]
    );
    assert_eq!(j["steps"][2]["command"], "MAIL FROM:<>");
    let data = &j["steps"][6]["decisions"][0];
    assert_eq!(data["plugin"], "header_adder");
    assert_eq!(data["stage"], "data");
    assert_eq!(data["verdict"], "continue");
    assert!(data["memory_bytes"].as_u64().unwrap() > 0, "{data}");
    assert!(data["micros"].as_u64().is_some(), "{data}");
    assert_eq!(
        data["edits"],
        serde_json::json!([
            {"edit": "append-header", "name": "X-Fixture", "value": "header-adder"},
            {"edit": "append-header", "name": "X-Stamp", "value": "json"}
        ])
    );
    assert_eq!(j["envelope"]["mail_from"], "");
    assert_eq!(
        j["envelope"]["rcpt_to"],
        serde_json::json!(["a@example.net", "b@example.org"])
    );
    assert_eq!(j["run"]["client"], "2001:db8::25");
    assert_eq!(j["run"]["tls"], true);
    let received = header(&j, "Received")[0].clone();
    assert!(
        received.starts_with("from relay.good.example ([IPv6:2001:db8::25])"),
        "{received}"
    );
    assert!(received.contains("with ESMTPS"), "{received}");
    assert_eq!(header(&j, "X-Stamp"), ["json"]);
    let headers = j["headers"].as_str().unwrap();
    assert!(headers.starts_with("Received: "), "{headers}");
    assert!(headers.ends_with("X-Stamp: json\r\n"), "{headers}");
    assert!(j["size"].as_u64().unwrap() > headers.len() as u64);
}

#[test]
fn usage_errors_exit_64_and_input_errors_above() {
    let adder = path(&fixture("header-adder"));
    let a = adder.as_str();
    let gz = zone("good.example");
    for (args, what) in [
        (vec![], "neither a plugin nor --config"),
        (vec![a, "--config", "g.toml"], "both"),
        (vec![a, "--plugin-config", "novalue"], "KEY=VALUE"),
        (vec![a, "--grant", "network"], "unknown capability"),
        (vec![a, "--time", "yesterday"], "not RFC 3339"),
        (vec![a, "--rcpt", "nobody"], "not an address"),
        (vec![a, "--rcpt", "a@b.test>"], "an angle bracket"),
        (vec![a, "--client-ip", "mail.example"], "not an address"),
        (vec![a, "--no-such-option"], "unknown option"),
        (
            vec!["--config", "g.toml", "--grant", "dns"],
            "--grant needs a plugin",
        ),
    ] {
        let r = plugin_test(&args);
        assert_eq!(r.code, 64, "{what}: {}", r.show());
        assert!(r.stdout.is_empty(), "{what}: {}", r.show());
        assert!(!r.stderr.is_empty(), "{what}: says why");
    }
    let r = plugin_test(&["--help"]);
    assert_eq!(r.code, 0, "{}", r.show());
    assert!(r.stdout.contains("--dns-zone"), "{}", r.stdout);

    let dir = tempfile::tempdir().unwrap();
    let missing = path(&dir.path().join("missing.wasm"));
    let r = plugin_test(&[missing.as_str(), "--dns-zone", &gz]);
    assert_eq!(r.code, 66, "{}", r.show());
    assert!(r.stderr.contains("no plugin file"), "{}", r.stderr);
    let bad_zone = dir.path().join("bad.test.zone");
    std::fs::write(&bad_zone, "@ 300 IN NOTATYPE something\n").unwrap();
    let r = plugin_test(&[a, "--dns-zone", &path(&bad_zone)]);
    assert_eq!(r.code, 65, "{}", r.show());
    assert!(r.stderr.contains("bad.test.zone"), "{}", r.stderr);
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[server]\nno_such_key = 1\n").unwrap();
    let r = plugin_test(&["--config", &path(&bad_config), "--dns-zone", &gz]);
    assert_eq!(r.code, 78, "{}", r.show());
    assert!(r.stderr.contains("no_such_key"), "{}", r.stderr);
}

#[test]
fn a_trapping_plugin_exits_3_after_its_failure_policy() {
    let panic = path(&fixture("panic"));
    let gz = zone("good.example");
    let r = plugin_test(&[panic.as_str(), "--dns-zone", &gz, "--json"]);
    assert_eq!(r.code, 3, "{}", r.show());
    let j = r.report();
    assert_eq!(j["plugin_failed"], true);
    assert_eq!(j["result"], "tempfailed", "on_error = tempfail: {j:#}");
    let d = &decisions(&j)[0];
    assert_eq!(d["stage"], "rcpt");
    assert!(
        d["verdict"].as_str().unwrap().starts_with(
            "failed (trap: wasm trap: wasm `unreachable` instruction executed) -> tempfail 451"
        ),
        "{d}"
    );
    assert!(d["failure"].as_str().unwrap().starts_with("trap:"), "{d}");
    assert!(
        d["output"]
            .as_str()
            .unwrap()
            .contains("fixture panic in on-rcpt-to for recipient@example.net"),
        "the plugin's stderr: {d}"
    );
    assert_eq!(d["reply"]["code"], 451);

    // With on_error = "continue" the message goes through, and the run still says a
    // plugin failed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[relay]\nlocal_domains = [\"example.net\"]",
        &format!(
            "[[plugin]]\nname = \"panicky\"\npath = {:?}\non_error = \"continue\"\n",
            panic
        ),
    );
    let r = plugin_test(&["--config", &cfg, "--dns-zone", &gz]);
    assert_eq!(r.code, 3, "{}", r.show());
    assert!(
        r.stdout.contains("[panicky] rcpt failed (trap: wasm trap: wasm `unreachable` instruction executed) -> continue"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("result: accepted, delivered; a plugin failed (exit 3)"),
        "{}",
        r.stdout
    );
}

#[test]
fn on_deliver_routes_each_recipient_as_the_queue_would() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[relay]\nlocal_domains = [\"good.example\"]\n[delivery]\nmode = \"queue\"\n\
         [queue]\nspool = \"/nonexistent/never-written\"",
        &format!(
            "[[plugin]]\nname = \"router\"\npath = {:?}\nconfig = {{ relay = \"192.0.2.99:2525\" }}\n",
            path(&fixture("router"))
        ),
    );
    let mut args = vec!["--config", cfg.as_str(), "--json"];
    for r in [
        "relay-a@good.example",
        "bounce-b@good.example",
        "drop-c@good.example",
        "other@good.example",
    ] {
        args.extend(["--rcpt", r]);
    }
    let z = zones(&["good.example"]);
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    let j = r.report();
    let d = &j["deliver"];
    assert_eq!(d["runs_in_server"], true);
    assert_eq!(d["decisions"][0]["plugin"], "router");
    assert_eq!(d["decisions"][0]["stage"], "deliver");
    let routes: Vec<(String, String, String)> = d["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap().to_string(),
                r["route"].as_str().unwrap().to_string(),
                r["by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(routes[0].0, "relay-a@good.example");
    assert_eq!(routes[0].1, "relay 192.0.2.99:2525 (tls None)");
    assert_eq!(routes[0].2, "router");
    assert!(routes[1].1.starts_with("bounce 550 5.1.1"), "{routes:?}");
    assert_eq!(routes[2].1, "discard");
    // Left to the queue's routing: MX lookup, through the zone.
    assert_eq!(
        (routes[3].1.as_str(), routes[3].2.as_str()),
        ("mx good.example", "config")
    );
    assert_eq!(
        d["routes"][3]["next_hops"],
        serde_json::json!(["192.0.2.25:25 (mx.good.example)"])
    );
}

/// Every message of tests/fixtures/corpus/ through `mailgate plugin test` with the
/// shipped spam-score plugin, configured as tests/tests/spam.rs configures it for the
/// same corpus, and the corpus zones from files: the verdict in its `X-Corpus-Expect`
/// header, by exit status (`reject`: 1) and `X-Spam-Status` (`ham`: No, `spam`: Yes).
#[test]
fn the_spam_corpus_gets_its_verdicts_through_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[relay]\nlocal_domains = [\"example.test\"]\n[dns]\nreverse_lookup = false",
        &format!(
            "[[plugin]]\nname = \"spam\"\npath = {:?}\ncapabilities = [\"dns\", \"log\", \"kv\"]\n\
             [plugin.config]\nrules.NO_FCRDNS.check = \"no_fcrdns\"\nrules.NO_FCRDNS.score = 0\n\
             uribl.uri.zone = \"uri.test\"\nuribl.uri.score = 3\n\
             uribl.uri.returns = [\"127.0.0.4=6.5\"]\n",
            path(&shipped("spam-score"))
        ),
    );
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus has {} messages", files.len());
    let z = zones(&["ham.test", "nomx.test", "uri.test"]);
    let mut wrong = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let header_of = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("{}: no {name}", file.display()))
                .to_string()
        };
        let (expect, sender) = (header_of("X-Corpus-Expect"), header_of("X-Corpus-Sender"));
        let message = path(file);
        let mut args = vec![
            "--config",
            cfg.as_str(),
            "--helo",
            "mail.ham.test",
            "--from",
            sender.as_str(),
            "--rcpt",
            "corpus@example.test",
            "--message",
            message.as_str(),
            "--json",
        ];
        args.extend(strs(&z));
        let r = plugin_test(&args);
        let got = match r.code {
            1 => {
                let j = r.report();
                let reply = j["final_reply"]["lines"][0]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if reply.starts_with("550 5.7.1 Message rejected as spam") {
                    "reject".to_string()
                } else {
                    format!("rejected otherwise: {reply}")
                }
            }
            0 => {
                let j = r.report();
                let status = header(&j, "X-Spam-Status").join(" ");
                let flag = header(&j, "X-Spam-Flag").join(" ");
                match (status.split(',').next(), flag.as_str()) {
                    (Some("Yes"), "YES") => format!("spam ({status})"),
                    (Some("No"), "") => format!("ham ({status})"),
                    _ => format!("inconsistent ({status}; flag {flag:?})"),
                }
            }
            _ => format!("exit {}: {}", r.code, r.stderr),
        };
        *seen.entry(expect.clone()).or_insert(0) += 1;
        if got.split(' ').next() != Some(expect.as_str()) {
            let name = file.file_name().unwrap().to_string_lossy();
            wrong.push(format!("{name}: expected {expect}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every verdict is represented, so the check can fail each way.
    for v in ["ham", "spam", "reject"] {
        assert!(
            seen.get(v).copied().unwrap_or(0) > 0,
            "no {v} message: {seen:?}"
        );
    }
}

#[test]
fn a_quarantined_message_is_accepted_and_says_why() {
    let spam = path(&shipped("spam-score"));
    let message =
        path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus/spam-01-lottery.eml"));
    let z = zones(&["ham.test"]);
    let mut args = vec![
        spam.as_str(),
        "--grant",
        "dns,log",
        "--plugin-config",
        "quarantine_at=3",
        "--from",
        "a@ham.test",
        "--message",
        message.as_str(),
        "--json",
    ];
    args.extend(strs(&z));
    let r = plugin_test(&args);
    assert_eq!(r.code, 0, "{}", r.show());
    let j = r.report();
    assert_eq!(j["result"], "accepted");
    assert_eq!(j["disposition"], "quarantined", "{j:#}");
    let why = j["quarantine_reason"].as_str().unwrap();
    assert!(why.starts_with("spam score "), "{why}");
    assert!(why.contains("BODY_LOTTERY"), "{why}");
    // The copy kept is the quarantine's: its reason on top, no Received.
    assert_eq!(j["header_fields"][0]["name"], "X-Mailgate-Quarantine");
    assert!(header(&j, "Received").is_empty(), "{j:#}");
    assert_eq!(header(&j, "X-Spam-Flag"), ["YES"]);
    assert!(j["deliver"].is_null(), "nothing to route");
}
