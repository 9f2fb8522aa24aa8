//! The `mailgate` binary's command line: version, config checking. (Building this test
//! also makes cargo build the binary that the integration test crate runs.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mailgate");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gateway.toml");

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("mailgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", EXAMPLE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("delivery: maildir ./var/mail"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_recipents = 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_recipents"), "{err}");
}

#[test]
fn check_config_applies_environment_overrides() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", EXAMPLE])
        .env("MAILGATE_DELIVERY__UPSTREAM", "127.0.0.1:10025")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("delivery: proxy 127.0.0.1:10025"), "{text}");
}
