//! `mailgate plugin new NAME --lang rust|js|python`: each skeleton, exactly as written,
//! builds with its language's command, passes its own `./test` (which runs
//! `mailgate plugin test` on its sample message: a denied recipient refused, anyone else
//! accepted with the header), and loads in a gateway that applies it over SMTP (smtplib).
//! Also the command's refusals: a bad name, an existing directory, no SDK.
//!
//! The Rust skeleton is built in the shared wasm target dir (the SDK compiled once per run),
//! offline, with the dependency versions of the checkout's Cargo.lock that `plugin new`
//! copies. The JS and Python toolchains come from `.ci/setup`; a missing one fails the
//! build with its message.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const HOST: &str = "127.0.0.1";

/// Runs `./build OUT` (JS, Python) or `cargo build` (Rust) in the skeleton at `dir`;
/// returns the component.
fn build(dir: &Path, lang: &str) -> PathBuf {
    let (out, wasm) = if lang == "rust" {
        let o = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", wasm_target_dir())
            .env("CARGO_NET_OFFLINE", "true")
            .current_dir(dir)
            .output()
            .expect("cargo");
        (
            o,
            wasm_target_dir().join("wasm32-wasip2/release/my_plugin.wasm"),
        )
    } else {
        let wasm = dir.join("my-plugin.wasm");
        let o = Command::new(dir.join("build"))
            .arg(&wasm)
            .output()
            .expect("./build");
        (o, wasm)
    };
    assert!(
        out.status.success(),
        "{lang}: build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wasm
}

fn skeleton(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("my-plugin");
    let (ok, stdout, stderr) =
        mailgate(&["plugin", "new", plugin.to_str().unwrap(), "--lang", lang]);
    assert!(ok, "{lang}: {stdout}{stderr}");
    assert!(stdout.contains("created"), "{lang}: {stdout}");
    let wasm = build(&plugin, lang);

    // Its own test: `mailgate plugin test` over the sample message, offline.
    let out = Command::new(plugin.join("test"))
        .env("MAILGATE", binary())
        .env("MAILGATE_CHAIN__COMPILE_CACHE", compile_cache())
        .env("WASM", &wasm)
        .output()
        .expect("./test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{lang}: ./test failed:\n{text}");
    assert!(text.contains("2 passed, 0 failed"), "{lang}: {text}");

    // Loaded by the gateway, over SMTP.
    let gw = Setup::default()
        .section(&format!(
            "[[plugin]]\nname = \"my-plugin\"\npath = {:?}\n\
             config = {{ deny = [\"nobody@example.test\"] }}\n",
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
        "someone@example.test",
    ]));
    assert_eq!(out["rcpt"]["nobody@example.test"]["code"], 550, "{out}");
    assert_eq!(
        out["rcpt"]["nobody@example.test"]["text"], "5.1.1 No such user here",
        "{out}"
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
    let mail = gw.mailbox("example.test", "someone");
    assert_eq!(mail.len(), 1, "{lang}");
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains("\r\nX-Checked-By: my-plugin\r\n"),
        "{lang}: {text}"
    );
    assert!(gw.log().contains("hooks=(RCPT_TO|DATA)"), "{}", gw.log());
}

#[test]
fn rust_skeleton_builds_tests_and_loads() {
    skeleton("rust");
}

#[test]
fn js_skeleton_builds_tests_and_loads() {
    skeleton("js");
}

#[test]
fn python_skeleton_builds_tests_and_loads() {
    skeleton("python");
}

#[test]
fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Bad.Name");
    let out = Command::new(binary())
        .args(["plugin", "new"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(!bad.exists());

    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let (ok, _, stderr) = mailgate(&["plugin", "new", taken.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("exists already"), "{stderr}");

    let nowhere = dir.path().join("nowhere");
    let (ok, _, stderr) = mailgate(&[
        "plugin",
        "new",
        dir.path().join("fine").to_str().unwrap(),
        "--sdk",
        nowhere.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("no mailgate SDK"), "{stderr}");
    assert!(!dir.path().join("fine").exists());
}
