//! Hot reload end to end: the real gateway under continuous load from a real SMTP client
//! (smtplib, one connection per message) while its plugin and config are swapped between
//! versions many times, including an invalid file, a file caught half-written and a
//! plugin whose init fails; plus the file watcher and SIGHUP.

mod support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Gateway, Setup, fixture, mailgate, peer};

const HOST: &str = "127.0.0.1";

/// Writes `bytes` to `path` atomically (temp file + rename), as an admin's deploy would.
fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn admin(gw: &Gateway, cmd: &str) -> (bool, Value) {
    let cfg = gw.config.display().to_string();
    let (ok, out, err) = mailgate(&[cmd, "--config", &cfg]);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("mailgate {cmd}: {e}: {out} {err}"));
    (ok, v)
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n")
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// The gateway config with the plugin at `plugin` stamping `stamp`.
fn config_with(gw_config: &str, stamp: &str) -> String {
    let mut out = String::new();
    for l in gw_config.lines() {
        if l.starts_with("config = { stamp") {
            out.push_str(&format!("config = {{ stamp = {stamp:?} }}\n"));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn start(dir: &Path, extra_server: &str) -> Gateway {
    let plugin = dir.join("policy.wasm");
    install(&plugin, &std::fs::read(fixture("stamper")).unwrap());
    Setup::default()
        .server(extra_server)
        .section(&format!(
            "[[plugin]]\nname = \"policy\"\npath = {:?}\nconfig = {{ stamp = \"v1\" }}\n",
            plugin.display().to_string()
        ))
        .start()
}

/// Reads the client's output lines on a thread.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reload rounds: 8 by default (every kind of good and bad version at least twice), 12
/// with `MAILGATE_SOAK=full` (or `MAILGATE_SOAK_RELOADS`).
#[test]
fn swapping_versions_under_load_refuses_and_loses_nothing() {
    let rounds = support::soak("RELOADS", 8, 12).max(4);
    // Upper bound; the client stops when told, after the last round.
    const COUNT: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "watch_interval_ms = 0");
    let plugin = dir.path().join("policy.wasm");
    let stamper = std::fs::read(fixture("stamper")).unwrap();
    let adder = std::fs::read(fixture("header-adder")).unwrap();
    let init_fails = std::fs::read(fixture("init-fails")).unwrap();
    let base_config = std::fs::read_to_string(&gw.config).unwrap();

    let mut client = Command::new("python3")
        .arg(peer("flood.py"))
        .args([
            HOST,
            &gw.port(),
            &COUNT.to_string(),
            "--to",
            "load@example.test",
            "--reconnect",
        ])
        .arg("--stop-file")
        .arg(dir.path().join("stop"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines(&mut client);
    let mut accepted = 0usize;
    let mut retries = Vec::new();
    let mut done = false;
    let read_until =
        |target: usize, accepted: &mut usize, retries: &mut Vec<String>, done: &mut bool| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while *accepted < target && !*done {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(l) if l.starts_with("accepted ") => *accepted += 1,
                    Ok(l) if l.starts_with("retry ") => retries.push(l),
                    Ok(l) if l == "done" || l.starts_with("gave-up") => *done = true,
                    Ok(_) => {}
                    Err(_) => panic!("client stalled at {accepted}"),
                }
            }
        };
    // Versions in order; the bad ones must be refused with the previous one serving.
    let mut good = vec!["v1".to_string()];
    let mut refused = 0;
    for round in 2..rounds + 2 {
        read_until(accepted + 10, &mut accepted, &mut retries, &mut done);
        let stamp = format!("v{round}");
        match round % 4 {
            0 => {
                // Caught half-written: the first half of a valid component.
                std::fs::write(&plugin, &stamper[..stamper.len() / 2]).unwrap();
                let (ok, v) = admin(&gw, "reload");
                assert!(!ok && v["ok"] == false, "{v}");
                assert!(v["error"].as_str().unwrap().contains("policy"), "{v}");
                refused += 1;
                install(&plugin, &stamper);
            }
            1 => {
                install(&plugin, &init_fails);
                let (ok, v) = admin(&gw, "reload");
                assert!(!ok, "{v}");
                assert!(v["error"].as_str().unwrap().contains("init"), "{v}");
                refused += 1;
                install(&plugin, &stamper);
                std::fs::write(
                    &gw.config,
                    base_config.replacen("[server]\n", "[server]\nbogus_key = 1\n", 1),
                )
                .unwrap();
                let (ok, v) = admin(&gw, "reload");
                assert!(!ok, "{v}");
                assert!(v["error"].as_str().unwrap().contains("bogus_key"), "{v}");
                refused += 1;
                std::fs::write(&gw.config, config_with(&base_config, good.last().unwrap()))
                    .unwrap();
            }
            2 => {
                // Another file (header-adder also writes X-Stamp) and a new stamp.
                install(&plugin, &adder);
                install(&gw.config, config_with(&base_config, &stamp).as_bytes());
                let (ok, v) = admin(&gw, "reload");
                assert!(ok, "{v}");
                assert_eq!(v["plugins_reloaded"], true, "{v}");
                good.push(stamp);
            }
            _ => {
                install(&plugin, &stamper);
                install(&gw.config, config_with(&base_config, &stamp).as_bytes());
                let (ok, v) = admin(&gw, "reload");
                assert!(ok, "{v}");
                good.push(stamp);
            }
        }
    }
    // Ten more messages on the last version, then stop the client.
    read_until(accepted + 10, &mut accepted, &mut retries, &mut done);
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    read_until(usize::MAX, &mut accepted, &mut retries, &mut done);
    assert!(client.wait().unwrap().success());
    assert!(done);
    assert!(
        retries.is_empty(),
        "messages refused during reloads: {retries:?}"
    );
    // Each round 4k offers one bad file, each round 4k+1 a failing init and a bad config.
    let bad: usize = (2..rounds + 2)
        .map(|r| match r % 4 {
            0 => 1,
            1 => 2,
            _ => 0,
        })
        .sum();
    assert_eq!(refused, bad);
    assert!(refused >= 3);

    let (_, status) = admin(&gw, "status");
    assert_eq!(
        status["generation"]["number"].as_u64().unwrap() as usize,
        good.len(),
        "{status}"
    );
    assert_eq!(
        status["reloads"]["failed"].as_u64().unwrap(),
        refused as u64
    );

    // Every message: one version, a good one, never older than the one before it.
    let files = gw.mailbox("example.test", "load");
    assert_eq!(files.len(), accepted, "every accepted message delivered");
    let order: BTreeMap<&str, usize> = good
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut by_seq = BTreeMap::new();
    for f in &files {
        let text = String::from_utf8_lossy(f).into_owned();
        let seq: usize = header(&text, "X-Flood-Seq").unwrap().parse().unwrap();
        let stamp = header(&text, "X-Stamp").expect("stamped").to_string();
        assert!(
            order.contains_key(stamp.as_str()),
            "unknown version {stamp}"
        );
        if let Some(at_mail) = header(&text, "X-Stamp-Mail") {
            assert_eq!(at_mail, stamp, "message evaluated by two versions");
        }
        assert_eq!(text.matches("\r\nX-Stamp: ").count(), 1, "{text}");
        by_seq.insert(seq, order[stamp.as_str()]);
    }
    let versions: Vec<usize> = by_seq.values().copied().collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    // Ten messages were accepted after each good reload, each on a new connection.
    for (v, name) in good.iter().enumerate() {
        assert!(
            versions.contains(&v),
            "no message evaluated by {name}: {versions:?}"
        );
    }
}

#[test]
fn file_changes_and_sighup_reload() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "watch_interval_ms = 100");
    let base = std::fs::read_to_string(&gw.config).unwrap();
    let wait_generation = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = admin(&gw, "status");
            if v["generation"]["number"].as_u64() >= Some(n) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "generation {n} not reached: {v}\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let send = || {
        let out: Value = serde_json::from_str(
            support::smtplib(&["send", HOST, &gw.port(), "--to", "w@example.test"]).trim(),
        )
        .unwrap();
        assert_eq!(out["data"]["code"], 250, "{out}");
    };
    // The watcher sees the config file change.
    install(&gw.config, config_with(&base, "v2").as_bytes());
    let v = wait_generation(2);
    assert_eq!(v["generation"]["plugins"][0]["name"], "policy", "{v}");
    send();
    // A listener change is reported as needing a restart; the rest applies.
    let moved = config_with(&base, "v3")
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    std::fs::write(dir.path().join("next.toml"), &moved).unwrap();
    install(&gw.config, moved.as_bytes());
    wait_generation(3);
    assert!(gw.log().contains("server.listen"), "{}", gw.log());
    send();
    // SIGHUP.
    install(&gw.config, config_with(&base, "v4").as_bytes());
    let st = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_generation(4);
    send();
    let files = gw.mailbox("example.test", "w");
    let stamps: Vec<String> = files
        .iter()
        .map(|f| {
            header(&String::from_utf8_lossy(f), "X-Stamp")
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(stamps.contains(&"v2".to_string()), "{stamps:?}");
    assert!(stamps.contains(&"v3".to_string()), "{stamps:?}");
    assert!(
        stamps.last().unwrap() == "v4" || stamps.contains(&"v4".to_string()),
        "{stamps:?}"
    );
}

/// In queue mode a route change applies with a reload: the next message goes to the new
/// next hop, and nothing is reported as needing a restart.
#[test]
fn queue_routes_change_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = support::Upstream::start(&[]);
    let mut two = support::Upstream::start(&[]);
    let queue = |up: &support::Upstream| {
        format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n[queue.routes]\n\"example.test\" = {{ host = \"{}\", tls = \"none\" }}\n",
            dir.path().join("spool").display().to_string(),
            up.addr()
        )
    };
    let gw = Setup::default()
        .server("watch_interval_ms = 0")
        .section(&queue(&one))
        .start();
    let send = || {
        let out: Value = serde_json::from_str(
            support::smtplib(&["send", HOST, &gw.port(), "--to", "r@example.test"]).trim(),
        )
        .unwrap();
        assert_eq!(out["data"]["code"], 250, "{out}");
    };
    send();
    assert!(one.wait_stored(1, Duration::from_secs(60)));
    let text = std::fs::read_to_string(&gw.config).unwrap();
    install(
        &gw.config,
        text.replace(&one.addr(), &two.addr()).as_bytes(),
    );
    let (ok, v) = admin(&gw, "reload");
    assert!(ok, "{v}");
    assert_eq!(v["restart_needed"], serde_json::json!([]), "{v}");
    send();
    assert!(two.wait_stored(1, Duration::from_secs(60)), "{}", gw.log());
    assert_eq!(one.received().len(), 1);
}
