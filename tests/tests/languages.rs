//! Plugins in JavaScript and Python next to Rust: the example policy of
//! `examples/policy/{rust,js,python}` (deny-listed recipients refused `550 5.1.1` at RCPT,
//! a subject pattern tagged and scored at DATA, a header on every message), each built
//! from source with its language's one documented command (`cargo build`, `./build`) and
//! run through the real gateway over SMTP (Python smtplib), then offline through
//! `mailgate plugin test` (same verdicts; the tag and score it reports). Also: a config the
//! plugin refuses stops the gateway's config check with the plugin's message, and a catastrophic
//! backtracking pattern in a JS or Python plugin is cut by the deadline like a looping
//! Rust plugin (Rust's `regex` matches the same pattern in linear time), and one that runs
//! out of memory is stopped at its cap like a Rust one.
//!
//! The JS and Python components are built once per source state: the key is a hash of the
//! example, its SDK (`plugin-sdk/js`, `plugin-sdk/python`, their pinned toolchains
//! included) and `wit/`; the file is kept under `target/lang-plugins/`. A missing toolchain
//! (node, the SDK's `npm ci`, componentize-py) fails the build with its message: nothing
//! is skipped (`.ci/setup` installs them).

mod support;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const HOST: &str = "127.0.0.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Hashes the relative path and contents of every source file under `dir`, in a fixed
/// order, leaving out build output and installed dependencies.
fn hash_tree(h: &mut DefaultHasher, root: &Path, dir: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.')
            || name.ends_with(".wasm")
            || ["node_modules", "target", "__pycache__", "types"].contains(&name.as_str())
        {
            continue;
        }
        if p.is_dir() {
            hash_tree(h, root, &p);
        } else {
            p.strip_prefix(root).unwrap().hash(h);
            std::fs::read(&p).unwrap().hash(h);
        }
    }
}

/// Runs the build command `script OUT` once per state of `sources`: the component is kept
/// as `target/lang-plugins/<name>-<key>.wasm`. Concurrent test processes wait on a file
/// lock, so each state is built once per run.
pub fn built_once(name: &str, script: &Path, sources: &[PathBuf]) -> PathBuf {
    let mut h = DefaultHasher::new();
    for s in sources {
        hash_tree(&mut h, &repo(), s);
    }
    let dir = target_dir().join("lang-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}-{:016x}.wasm", h.finish()));
    let lock = std::fs::File::create(dir.join(format!("{name}.lock"))).unwrap();
    lock.lock().expect("lock the build");
    if !out.exists() {
        let started = Instant::now();
        let tmp = dir.join(format!("{name}.partial-{}.wasm", std::process::id()));
        let o = Command::new("sh")
            .arg(script)
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            o.status.success() && tmp.exists(),
            "{} failed ({}):\n{}{}",
            script.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap();
        eprintln!("built {} in {:?}", out.display(), started.elapsed());
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    /// What the example writes into its header.
    fn word(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Python => "python",
        }
    }
}

/// The example policy of `lang`, built from source.
fn policy(lang: Lang) -> PathBuf {
    let examples = repo().join("examples/policy");
    match lang {
        Lang::Rust => build_wasm(&examples.join("rust/Cargo.toml")).join("policy_rust.wasm"),
        Lang::Js => built_once(
            "policy-js",
            &examples.join("js/build"),
            &[
                examples.join("js"),
                repo().join("plugin-sdk/js"),
                repo().join("wit"),
            ],
        ),
        Lang::Python => built_once(
            "policy-python",
            &examples.join("python/build"),
            &[
                examples.join("python"),
                repo().join("plugin-sdk/python"),
                repo().join("wit"),
            ],
        ),
    }
}

const DENY: &str = r#"deny = ["blocked@example.test", "@denied.test"]"#;

/// A gateway with the example policy of `lang` and `config` (a TOML inline table's body).
fn gateway(wasm: &Path, config: &str, extra: &str) -> Gateway {
    Setup::default()
        .env("MAILGATE_LOG", "info,mailgate::plugin::chain=debug")
        .section("[relay]\nlocal_domains = [\"example.test\", \"denied.test\"]")
        .section(&format!(
            "[[plugin]]\nname = \"policy\"\npath = {:?}\n{extra}\nconfig = {{ {config} }}\n",
            wasm.display().to_string()
        ))
        .start()
}

fn message(dir: &Path, name: &str, subject: &str) -> String {
    write_file(
        dir,
        name,
        format!(
            "From: <s@client.test>\r\nTo: <ok@example.test>\r\nSubject: {subject}\r\n\
             Message-ID: <{name}@client.test>\r\n\r\nbody\r\n"
        )
        .as_bytes(),
    )
}

/// One message from the file `data` to `to` through the gateway on `port` (smtplib); the
/// JSON of its replies.
fn send_one(port: &str, to: &str, data: &str) -> serde_json::Value {
    json(&smtplib(&["send", HOST, port, "--to", to, "--data", data]))
}

fn header_of(mail: &[u8], name: &str) -> Vec<String> {
    String::from_utf8_lossy(mail)
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        .collect()
}

/// The policy over SMTP: refusals at RCPT with the deny list's reply, the tag, score and
/// header at DATA, the manifest's hooks in the load line; then a config it refuses.
fn policy_over_smtp(lang: Lang) {
    let wasm = policy(lang);
    let gw = gateway(
        &wasm,
        &format!(r#"{DENY}, subject_pattern = "win(ning)? a prize", score = 4.5"#),
        "",
    );
    // The manifest reports exactly the hooks the plugin implements.
    assert!(
        gw.log().contains("hooks=(RCPT_TO|DATA)"),
        "{lang:?}: {}",
        gw.log()
    );
    let port = gw.port();
    let data = message(gw.dir.path(), "prize.eml", "You could WIN a prize today");
    let out = json(&smtplib(&[
        "send",
        HOST,
        &port,
        "--to",
        "blocked@example.test",
        "--to",
        "Anyone@denied.test",
        "--to",
        "ok@example.test",
        "--data",
        &data,
    ]));
    for r in ["blocked@example.test", "Anyone@denied.test"] {
        assert_eq!(out["rcpt"][r]["code"], 550, "{lang:?}: {out}");
        assert_eq!(
            out["rcpt"][r]["text"], "5.1.1 No such user here",
            "{lang:?}: {out}"
        );
    }
    assert_eq!(
        out["rcpt"]["ok@example.test"]["code"], 250,
        "{lang:?}: {out}"
    );
    assert_eq!(out["data"]["code"], 250, "{lang:?}: {out}");
    let mail = gw.mailbox("example.test", "ok");
    assert_eq!(mail.len(), 1, "{lang:?}");
    assert_eq!(
        header_of(&mail[0], "X-Policy"),
        vec![format!("{}; subject=match", lang.word())],
        "{lang:?}"
    );
    assert!(gw.mailbox("example.test", "blocked").is_empty());
    let log = gw.log();
    for reason in [
        "reason=\"blocked@example.test is on the deny list\"",
        "reason=\"anyone@denied.test is on the deny list\"",
        "reason=\"subject matches win(ning)? a prize\"",
    ] {
        assert!(log.contains(reason), "{lang:?}: {reason} in {log}");
    }

    // A clean subject: the header says so, no reason is given.
    let data = message(gw.dir.path(), "clean.eml", "Quarterly figures");
    let out = send_one(&port, "clean@example.test", &data);
    assert_eq!(out["data"]["code"], 250, "{lang:?}: {out}");
    let mail = gw.mailbox("example.test", "clean");
    assert_eq!(
        header_of(&mail[0], "X-Policy"),
        vec![format!("{}; subject=clean", lang.word())],
        "{lang:?}"
    );
    drop(gw);

    // The same plugin offline (`mailgate plugin test`): the same verdicts, and the tag and
    // score entry the DATA hook gave.
    let dir = tempfile::tempdir().unwrap();
    let prize = message(dir.path(), "prize.eml", "You could WIN a prize today");
    let offline = |rcpt: &str| {
        let o = Command::new(binary())
            .args(["plugin", "test"])
            .arg(&wasm)
            .args([
                "--plugin-config",
                r#"deny=["blocked@example.net"]"#,
                "--plugin-config",
                "subject_pattern=win(ning)? a prize",
                "--plugin-config",
                "score=4.5",
                "--message",
                &prize,
                "--rcpt",
                rcpt,
                "--json",
            ])
            .env("MAILGATE_CHAIN__COMPILE_CACHE", compile_cache())
            .output()
            .expect("mailgate plugin test");
        (o.status.code(), json(&String::from_utf8_lossy(&o.stdout)))
    };
    let (code, report) = offline("ok@example.net");
    assert_eq!(code, Some(0), "{lang:?}: {report}");
    assert_eq!(report["score"], 4.5, "{lang:?}: {report}");
    assert_eq!(
        report["tags"],
        serde_json::json!(["subject-match"]),
        "{lang:?}"
    );
    let (code, report) = offline("blocked@example.net");
    assert_eq!(code, Some(1), "{lang:?}: rejected: {report}");

    // A config the plugin refuses: the check names the plugin's own message, the same in
    // the three languages (the SDKs word config errors alike).
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "gw.toml",
        format!(
            "[delivery]\nmaildir = {:?}\n[[plugin]]\nname = \"policy\"\npath = {:?}\n\
             config = {{ deny = \"x@example.test\", colour = \"blue\" }}\n",
            dir.path().join("mail").display().to_string(),
            wasm.display().to_string()
        )
        .as_bytes(),
    );
    let (ok, stdout, stderr) = mailgate(&["check-config", "--config", &cfg]);
    assert!(!ok, "{lang:?}: {stdout}");
    assert!(
        stderr.contains(
            "init failed: config key `colour`: unknown key \
             (expected one of: deny, subject_pattern, tag, score, header)"
        ),
        "{lang:?}: {stderr}"
    );
}

#[test]
fn rust_policy_over_smtp() {
    policy_over_smtp(Lang::Rust);
}

#[test]
fn js_policy_over_smtp() {
    policy_over_smtp(Lang::Js);
}

#[test]
fn python_policy_over_smtp() {
    policy_over_smtp(Lang::Python);
}

/// A pattern with catastrophic backtracking (`^(a+)+$` against 40 `a`s and a `!`) spins
/// the JS and Python regex engines, like a loop: the deadline ends the DATA hook, the
/// plugin's `on_error` answers 451, the gateway serves the next session with a fresh
/// instance. Rust's `regex` matches the same in linear time: accepted.
fn backtracking_is_cut_by_the_deadline(lang: Lang) {
    let wasm = policy(lang);
    let gw = gateway(
        &wasm,
        r#"subject_pattern = "^(a+)+$""#,
        "limits = { deadline_ms = 500 }",
    );
    let port = gw.port();
    let data = message(gw.dir.path(), "redos.eml", &format!("{}!", "a".repeat(40)));
    let t = Instant::now();
    let out = send_one(&port, "u@example.test", &data);
    let took = t.elapsed();
    if lang == Lang::Rust {
        assert_eq!(out["data"]["code"], 250, "{out}");
        return;
    }
    assert_eq!(out["data"]["code"], 451, "{lang:?}: {out}");
    assert!(took < Duration::from_secs(10), "{lang:?}: took {took:?}");
    assert!(gw.mailbox("example.test", "u").is_empty());
    let log = gw.log();
    assert!(log.contains("deadline exceeded"), "{lang:?}: {log}");
    // The next session gets a fresh instance, which works.
    let data = message(gw.dir.path(), "fine.eml", "aaaa");
    let out = send_one(&port, "v@example.test", &data);
    assert_eq!(out["data"]["code"], 250, "{lang:?}: {out}");
    assert_eq!(
        header_of(&gw.mailbox("example.test", "v")[0], "X-Policy"),
        vec![format!("{}; subject=match", lang.word())]
    );
}

#[test]
fn backtracking_js_plugin_is_cut_by_the_deadline() {
    backtracking_is_cut_by_the_deadline(Lang::Js);
}

#[test]
fn backtracking_python_plugin_is_cut_by_the_deadline() {
    backtracking_is_cut_by_the_deadline(Lang::Python);
}

#[test]
fn backtracking_pattern_is_linear_in_rust() {
    backtracking_is_cut_by_the_deadline(Lang::Rust);
}

/// A JS or Python plugin that runs out of memory is contained like a Rust one: with a cap
/// a little above what its runtime needs at rest, a message whose 4 MB subject the plugin
/// reads makes it grow past the cap; the plugin's `on_error` (tempfail) answers `451`,
/// the log says "memory cap reached", and the next session, with a small subject, gets
/// a fresh instance that works.
fn memory_cap_contains(lang: Lang, memory_mb: u32) {
    let wasm = policy(lang);
    let gw = gateway(
        &wasm,
        r#"subject_pattern = "never""#,
        &format!("limits = {{ memory_mb = {memory_mb} }}"),
    );
    let port = gw.port();
    let folded: Vec<String> = (0..4500).map(|_| "x".repeat(900)).collect();
    let data = message(gw.dir.path(), "huge-subject.eml", &folded.join("\r\n "));
    let out = send_one(&port, "u@example.test", &data);
    assert_eq!(out["data"]["code"], 451, "{lang:?}: {out}");
    assert!(gw.mailbox("example.test", "u").is_empty());
    let log = gw.log();
    assert!(log.contains("memory cap reached"), "{lang:?}: {log}");
    let data = message(gw.dir.path(), "fine.eml", "small");
    let out = send_one(&port, "v@example.test", &data);
    assert_eq!(out["data"]["code"], 250, "{lang:?}: {out}");
}

#[test]
fn js_plugin_over_its_memory_cap_is_contained() {
    memory_cap_contains(Lang::Js, 14);
}

#[test]
fn python_plugin_over_its_memory_cap_is_contained() {
    memory_cap_contains(Lang::Python, 16);
}

/// The JS SDK's typed bindings: the example type-checks against the SDK's declarations and
/// the types generated from `wit/` (`mailgate-plugin-js check`, TypeScript's checkJs), and
/// the same with a misspelt field of a WIT record does not.
#[test]
fn js_example_type_checks_against_the_wit_types() {
    let check = |file: &Path| {
        Command::new("node")
            .arg(repo().join("plugin-sdk/js/bin/mailgate-plugin-js.mjs"))
            .arg("check")
            .arg(file)
            .output()
            .expect("node")
    };
    let example = repo().join("examples/policy/js/policy.js");
    let o = check(&example);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let typo = std::fs::read_to_string(&example)
        .unwrap()
        .replace("rcpt.address.domain", "rcpt.address.domian");
    let bad = dir.path().join("policy.js");
    std::fs::write(&bad, typo).unwrap();
    let o = check(&bad);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("Property 'domian' does not exist on type 'Address'"),
        "{out}"
    );
}
