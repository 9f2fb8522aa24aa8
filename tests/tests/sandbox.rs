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
