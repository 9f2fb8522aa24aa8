//! The admin HTTP listener: `/metrics` scraped after traffic and parsed with the
//! `prometheus_client` package's OpenMetrics parser, the counters matching the traffic
//! sent; `/healthz` and `/readyz`.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Gateway, Raw, Setup, Upstream, fixture, json, peer};

/// GET `path` on the gateway's admin HTTP listener, through tests/peers/scrape.py.
fn get(gw: &Gateway, path: &str) -> Value {
    let status = gw.status();
    let addr = status["admin_http"].as_str().expect("admin_http in status");
    let out = Command::new("python3")
        .arg(peer("scrape.py"))
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "scrape.py {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8(out.stdout).unwrap())
}

/// The value of the sample `name` whose labels include `labels` (0 if none).
fn sample(m: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    m["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

fn session(gw: &Gateway, rcpt: &str, body: &str) -> String {
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = raw.cmd(&format!("RCPT TO:<{rcpt}>"));
    if !r.starts_with("250") {
        return r;
    }
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(body.as_bytes());
    let end = raw.cmd(".");
    assert!(raw.cmd("QUIT").starts_with("221"));
    end
}

#[test]
fn metrics_count_the_traffic_and_health_answers() {
    let gw = Setup::default()
        .section(&format!(
            "[limits]\nmax_message_size = 2000\n\
             [[plugin]]\nname = \"adder\"\npath = {:?}\n\
             [[plugin]]\nname = \"rejecter\"\npath = {:?}\n",
            fixture("header-adder").display().to_string(),
            fixture("reject-rcpt").display().to_string(),
        ))
        .start();
    assert_eq!(get(&gw, "/healthz")["status"], 200);
    assert_eq!(get(&gw, "/readyz")["status"], 200);
    let before = get(&gw, "/metrics");
    let ok = "Subject: m\r\n\r\nHi.\r\n";
    for _ in 0..3 {
        let r = session(&gw, "u@example.test", ok);
        assert!(r.starts_with("250"), "{r}");
    }
    // Too big: refused by the session at the end of DATA.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(3000));
    let r = session(&gw, "u@example.test", &big);
    assert!(r.starts_with("552"), "{r}");
    // Refused at RCPT by the plugin: no message, one verdict.
    let r = session(&gw, "blocked@example.test", ok);
    assert!(r.starts_with("550"), "{r}");

    let m = get(&gw, "/metrics");
    assert_eq!(m["status"], 200);
    assert!(
        m["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{m}"
    );
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&m, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(delta("mailgate_connections_total", &[]), 5.0);
    assert_eq!(
        delta(
            "mailgate_messages_total",
            &[("outcome", "accepted"), ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "mailgate_messages_total",
            &[("outcome", "rejected"), ("class", "5xx")]
        ),
        1.0
    );
    // The session refuses the too-big message before the DATA hook: 3 calls.
    assert_eq!(
        delta(
            "mailgate_plugin_call_seconds_count",
            &[("plugin", "adder"), ("hook", "data")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "mailgate_plugin_verdicts_total",
            &[
                ("plugin", "rejecter"),
                ("hook", "rcpt"),
                ("verdict", "reject")
            ]
        ),
        1.0
    );
    assert_eq!(sample(&m, "mailgate_connections_open", &[]), 0.0);
    assert!(sample(&m, "mailgate_message_bytes_total", &[]) >= 3.0 * ok.len() as f64);
    assert_eq!(sample(&m, "mailgate_plugin_generation", &[]), 1.0);
    assert_eq!(get(&gw, "/nothing")["status"], 404);
}

/// A STARTTLS session with Python's smtplib counts one successful handshake.
#[test]
fn tls_handshakes_are_counted() {
    let gw = Setup::default().start();
    let before = get(&gw, "/metrics");
    let out = support::smtplib(&[
        "send",
        "127.0.0.1",
        &gw.smtp.port().to_string(),
        "--from",
        "a@client.test",
        "--to",
        "u@example.test",
        "--starttls",
    ]);
    assert!(out.contains("250"), "{out}");
    let m = get(&gw, "/metrics");
    let ok = [("kind", "ok")];
    assert_eq!(
        sample(&m, "mailgate_tls_handshakes_total", &ok)
            - sample(&before, "mailgate_tls_handshakes_total", &ok),
        1.0
    );
}

/// Connections a PROXY listener closes count as refused, by reason.
#[test]
fn proxy_listener_refusals_are_counted() {
    let gw = Setup::default()
        .section(
            "[server.proxy_protocol]\nlisten = [\"127.0.0.1:0\"]\n\
             trusted_networks = [\"127.0.0.2\"]\ntimeout_ms = 500\n",
        )
        .start();
    let proxy = gw.proxy.expect("PROXY listener");
    let before = get(&gw, "/metrics");
    // From 127.0.0.1, not trusted: closed at once.
    let mut c = Raw::connect(proxy);
    assert!(c.gone());
    // From the trusted address, SMTP instead of a header: closed as malformed.
    let mut c = Raw::connect_from("127.0.0.2".parse().unwrap(), proxy);
    c.send(b"EHLO client.test\r\n");
    assert!(c.gone());
    let m = get(&gw, "/metrics");
    for reason in ["proxy_untrusted", "proxy_header"] {
        let r = [("reason", reason)];
        assert_eq!(
            sample(&m, "mailgate_connections_refused_total", &r)
                - sample(&before, "mailgate_connections_refused_total", &r),
            1.0,
            "{reason}"
        );
    }
}

/// A session that keeps the gateway waiting gives its plugin instances back to their
/// pool (`chain.release_idle_instances_ms`): the gauge of idle instances shows it while
/// the client still holds the session, and the next hook takes the instance again and
/// runs `init` on it, so the plugin value starts afresh (the `state-leak` fixture counts
/// one RCPT, not two, and two inits in the one instance).
#[test]
fn an_idle_session_gives_its_plugin_instances_back() {
    let gw = Setup::default()
        .section(&support::plugin_toml("counter", "state-leak", ""))
        .env("MAILGATE_CHAIN__RELEASE_IDLE_INSTANCES_MS", "1000")
        .start();
    let mut raw = Raw::connect(gw.smtp);
    assert!(raw.reply().starts_with("220"));
    assert!(raw.cmd("EHLO client.test").starts_with("250"));
    assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(raw.cmd("RCPT TO:<s1@example.test>").starts_with("250"));
    // The client now idles; the instance goes back after the release delay. Bounded:
    // 100 scrapes (each a python3 run, well over the delay in all). The delay is long
    // enough that the commands below, sent back to back, are not an idle pause.
    let idle = |gw: &Gateway| sample(&get(gw, "/metrics"), "mailgate_plugin_instances_idle", &[]);
    let mut released = false;
    for _ in 0..100 {
        if idle(&gw) == 1.0 {
            released = true;
            break;
        }
    }
    assert!(released, "the idle session's instance was not given back");
    assert!(raw.cmd("RCPT TO:<s2@example.test>").starts_with("250"));
    assert!(raw.cmd("DATA").starts_with("354"));
    raw.send(b"Subject: idle\r\n\r\nbody\r\n");
    assert!(raw.cmd(".").starts_with("250"));
    assert!(raw.cmd("QUIT").starts_with("221"));
    let text = String::from_utf8_lossy(&gw.mailbox("example.test", "s2")[0]).into_owned();
    assert!(text.contains("X-Count: 1\r\n"), "{text}");
    assert!(text.contains("X-Init-Count: 2\r\n"), "{text}");
}

/// Queue mode: each message is one spool change when it is stored and one when it is
/// removed after delivery; sent one after the other, each change is its own commit.
/// Status and metrics count both.
#[test]
fn spool_commits_and_changes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upstream::start(&[]);
    let gw = Setup::default()
        .section(&format!(
            "[delivery]\nmode = \"queue\"\n[queue]\nspool = {:?}\n\
             [queue.routes]\n\"example.test\" = {{ host = {:?}, tls = \"none\" }}\n",
            dir.path().join("spool").display().to_string(),
            up.addr(),
        ))
        .start();
    for sent in 1..=2 {
        let r = session(&gw, "u@example.test", "Subject: m\r\n\r\nHi.\r\n");
        assert!(r.starts_with("250"), "{r}");
        assert!(up.wait_stored(sent, std::time::Duration::from_secs(20)));
        // The upstream's 250 comes a moment before the queue removes the entry.
        let status = gw.status_when(|s| s["queue"]["depth"] == 0);
        assert_eq!(status["queue"]["depth"], 0, "{status}");
    }
    let status = gw.status();
    assert_eq!(status["queue"]["spool_changes"], 4, "{status}");
    assert_eq!(status["queue"]["spool_commits"], 4, "{status}");
    let m = get(&gw, "/metrics");
    assert_eq!(sample(&m, "mailgate_queue_spool_changes_total", &[]), 4.0);
    assert_eq!(sample(&m, "mailgate_queue_spool_commits_total", &[]), 4.0);
}
