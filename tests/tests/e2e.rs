//! End-to-end tests: the real `mailgate` binary on loopback, driven by clients nobody here
//! wrote (Python smtplib, swaks) and relaying to a real SMTP server (aiosmtpd). Raw sockets
//! only for attack payloads that no ordinary client sends.

mod support;

use std::time::Duration;

use support::{Gateway, Raw, Setup, Upstream, json, smtplib, swaks, write_file};

const HOST: &str = "127.0.0.1";

/// The message as delivered, after the headers the gateway adds in front.
fn strip_trace_headers(mut bytes: &[u8]) -> &[u8] {
    // Return-Path, Delivered-To (maildir only) and the folded Received header.
    for prefix in [&b"Return-Path: "[..], b"Delivered-To: "] {
        if bytes.starts_with(prefix) {
            let end = bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            bytes = &bytes[end..];
        }
    }
    assert!(
        bytes.starts_with(b"Received: from "),
        "{}",
        String::from_utf8_lossy(bytes)
    );
    let mut i = bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    while bytes[i] == b'\t' || bytes[i] == b' ' {
        i += bytes[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    }
    &bytes[i..]
}

fn tricky_body() -> Vec<u8> {
    let mut b = b"From: a@client.test\r\nTo: u@example.test\r\nSubject: dots\r\n\r\n".to_vec();
    b.extend_from_slice(b".\r\n..\r\n.leading\r\n...three\r\nmiddle . dot\r\n");
    for i in 0..2000 {
        b.extend_from_slice(
            format!("line {i:05} of a long message, padded to a decent length\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(b".\r\nlast\r\n");
    b
}

// ---------------------------------------------------------------- maildir delivery

#[test]
fn smtplib_delivers_to_maildir_with_trace_headers() {
    let gw = Gateway::default_setup();
    let data = write_file(gw.dir.path(), "m.eml", &tricky_body());
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "alice@example.test",
        "--data",
        &data,
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    let files = gw.mailbox("example.test", "alice");
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert!(f.starts_with(b"Return-Path: <sender@client.test>\r\nDelivered-To: <alice@example.test>\r\nReceived: from client.test"));
    assert_eq!(
        strip_trace_headers(f),
        &tricky_body()[..],
        "body byte-identical"
    );
    assert!(gw.log().contains("outcome=\"accepted\""), "{}", gw.log());
}

#[test]
fn swaks_over_starttls_to_maildir() {
    let gw = Gateway::default_setup();
    let (ok, t) = swaks(&[
        "--server",
        &format!("{HOST}:{}", gw.port()),
        "--tls",
        "--to",
        "bob@example.test",
        "--from",
        "x@client.test",
    ]);
    assert!(ok, "{t}");
    assert!(t.contains("<-  220 2.0.0 Ready to start TLS"), "{t}");
    assert!(t.contains("<~  250 2.0.0 Ok: queued as"), "{t}");
    let files = gw.mailbox("example.test", "bob");
    assert_eq!(files.len(), 1, "{t}");
    let text = String::from_utf8_lossy(&files[0]);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("version=TLSv1_3"), "{text}");
}

#[test]
fn smtplib_starttls_and_implicit_tls() {
    let gw = Setup::default().tls_listener().start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--starttls",
        "--to",
        "c@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(out["tls"], true);
    let tls_port = gw.smtps.expect("smtps listener").port().to_string();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &tls_port,
        "--ssl",
        "--to",
        "d@example.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(out["tls"], true);
    assert_eq!(gw.mailbox("example.test", "c").len(), 1);
    assert_eq!(gw.mailbox("example.test", "d").len(), 1);
}

#[test]
fn ehlo_advertises_extensions() {
    let gw = Setup::default()
        .section("[limits]\nmax_message_size = 123456")
        .start();
    let out = json(&smtplib(&["ehlo", HOST, &gw.port()]));
    let feats: Vec<&str> = out["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(feats.contains(&f), "{f} missing in {feats:?}");
    }
    assert_eq!(out["size"], "123456");
    // After STARTTLS it is no longer offered.
    let out = json(&smtplib(&["ehlo", HOST, &gw.port(), "--starttls"]));
    assert_eq!(out["tls"], true);
    assert!(
        !out["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "STARTTLS"),
        "{out}"
    );
}

#[test]
fn swaks_pipelining() {
    let gw = Gateway::default_setup();
    let (ok, t) = swaks(&[
        "--server",
        &format!("{HOST}:{}", gw.port()),
        "--pipeline",
        "--to",
        "p1@example.test,p2@example.test",
        "--from",
        "x@client.test",
    ]);
    assert!(ok, "{t}");
    assert_eq!(gw.mailbox("example.test", "p1").len(), 1, "{t}");
    assert_eq!(gw.mailbox("example.test", "p2").len(), 1, "{t}");
}

#[test]
fn bdat_chunking_delivers_exact_bytes() {
    let gw = Gateway::default_setup();
    let body = tricky_body();
    let data = write_file(gw.dir.path(), "m.eml", &body);
    let out = json(&smtplib(&[
        "bdat",
        HOST,
        &gw.port(),
        "--to",
        "e@example.test",
        "--data",
        &data,
        "--chunk",
        "7000",
    ]));
    let replies = out["replies"].as_array().unwrap();
    assert!(replies.len() > 2, "{out}");
    for r in &replies[..replies.len() - 1] {
        assert!(r.as_str().unwrap().starts_with("250 2.0.0"), "{out}");
    }
    assert!(
        replies
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("250 2.0.0 Ok: queued"),
        "{out}"
    );
    let files = gw.mailbox("example.test", "e");
    assert_eq!(strip_trace_headers(&files[0]), &body[..]);
}

#[test]
fn smtputf8_and_8bitmime() {
    let gw = Gateway::default_setup();
    let body = "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, naïve café ☕\r\n".as_bytes();
    let data = write_file(gw.dir.path(), "m.eml", body);
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--utf8",
        "--8bit",
        "--from",
        "jürgen@client.test",
        "--to",
        "müller@example.test",
        "--data",
        &data,
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    // The local part is percent-encoded for the file system.
    let files = gw.mailbox("example.test", "m%C3%BCller");
    assert_eq!(files.len(), 1);
    assert_eq!(strip_trace_headers(&files[0]), body);
    assert!(String::from_utf8_lossy(&files[0]).contains("with UTF8SMTP id"));
    // Without SMTPUTF8 the same address is refused (smtplib will not even send it).
    let mut raw = Raw::connect(gw.smtp);
    raw.reply();
    raw.cmd("EHLO raw.test");
    let r = raw.cmd("MAIL FROM:<jürgen@client.test>");
    assert!(r.starts_with("553 5.6.7"), "{r}");
}

// ---------------------------------------------------------------- limits

#[test]
fn size_limit_then_connection_still_usable() {
    let gw = Setup::default()
        .section("[limits]\nmax_message_size = 2000")
        .start();
    let big = write_file(gw.dir.path(), "big.eml", &tricky_body());
    let small = write_file(gw.dir.path(), "small.eml", b"Subject: small\r\n\r\nok\r\n");
    let out = json(&smtplib(&[
        "two",
        HOST,
        &gw.port(),
        "--to",
        "f@example.test",
        "--big",
        &big,
        "--data",
        &small,
    ]));
    assert_eq!(out["first"]["data"]["code"], 552, "{out}");
    assert!(
        out["first"]["data"]["text"]
            .as_str()
            .unwrap()
            .starts_with("5.3.4"),
        "{out}"
    );
    assert_eq!(out["second"]["data"]["code"], 250, "{out}");
    assert_eq!(gw.mailbox("example.test", "f").len(), 1);
    // With SIZE declared, the refusal comes at MAIL.
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "f@example.test",
        "--data",
        &big,
    ]));
    assert_eq!(out["mail"]["code"], 552, "{out}");
    assert!(gw.log().contains("refused_by=\"session\""), "{}", gw.log());
}

#[test]
fn recipient_limit() {
    let gw = Setup::default()
        .section("[limits]\nmax_recipients = 2")
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "r1@example.test",
        "--to",
        "r2@example.test",
        "--to",
        "r3@example.test",
    ]));
    assert_eq!(out["rcpt"]["r3@example.test"]["code"], 452, "{out}");
    assert!(
        out["rcpt"]["r3@example.test"]["text"]
            .as_str()
            .unwrap()
            .starts_with("4.5.3")
    );
    assert_eq!(out["data"]["code"], 250, "{out}");
}

#[test]
fn connections_per_ip_limit() {
    let gw = Setup::default()
        .server("max_connections_per_ip = 2")
        .start();
    let mut a = Raw::connect(gw.smtp);
    let mut b = Raw::connect(gw.smtp);
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    let mut c = Raw::connect(gw.smtp);
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.closed());
    drop(a);
    // A slot frees up once a connection ends (bounded retry: the close is asynchronous).
    let mut ok = false;
    for _ in 0..100 {
        let mut d = Raw::connect(gw.smtp);
        if d.reply().starts_with("220") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "slot released");
    assert!(b.cmd("QUIT").starts_with("221"));
}

// ---------------------------------------------------------------- relay

#[test]
fn relay_refused_and_routing_tricks() {
    let gw = Gateway::default_setup();
    for rcpt in [
        "x@other.test",
        "u%other.test@example.test",
        "other.test!u@example.test",
        "\"u@other.test\"@example.test",
    ] {
        let out = json(&smtplib(&["send", HOST, &gw.port(), "--to", rcpt]));
        assert_eq!(out["rcpt"][rcpt]["code"], 550, "{rcpt}: {out}");
        assert!(
            out["rcpt"][rcpt]["text"]
                .as_str()
                .unwrap()
                .starts_with("5.7.1"),
            "{out}"
        );
    }
    let mut raw = Raw::connect(gw.smtp);
    raw.reply();
    raw.cmd("EHLO raw.test");
    raw.cmd("MAIL FROM:<a@client.test>");
    assert!(
        raw.cmd("RCPT TO:<@example.test:u@other.test>")
            .starts_with("550 5.7.1")
    );
}

#[test]
fn trusted_networks_may_relay() {
    let gw = Setup::default()
        .section("[relay]\ntrusted_networks = [\"127.0.0.0/8\"]")
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "x@other.test",
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert_eq!(gw.mailbox("other.test", "x").len(), 1);
}

// ---------------------------------------------------------------- attacks

#[test]
fn smtp_smuggling_is_refused_and_nothing_smuggled_is_delivered() {
    let gw = Gateway::default_setup();
    for fake_end in [
        &b"\n.\r\n"[..],
        b"\r\n.\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        let mut raw = Raw::connect(gw.smtp);
        raw.reply();
        raw.cmd("EHLO raw.test");
        assert!(raw.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(raw.cmd("RCPT TO:<victim@example.test>").starts_with("250"));
        assert!(raw.cmd("DATA").starts_with("354"));
        let mut payload = b"Subject: innocent\r\n\r\nhello".to_vec();
        payload.extend_from_slice(fake_end);
        payload.extend_from_slice(b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<smuggled@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n");
        raw.send(&payload);
        let r = raw.reply();
        assert!(r.starts_with("554 5.6.0"), "{fake_end:?}: {r}");
        assert!(raw.cmd("NOOP").starts_with("250"), "session in sync");
    }
    assert!(gw.mailbox("example.test", "victim").is_empty());
    assert!(gw.mailbox("example.test", "smuggled").is_empty());
}

#[test]
fn starttls_injection_is_discarded() {
    let gw = Gateway::default_setup();
    // Python's ssl module does the handshake on a socket that pipelined a command behind
    // STARTTLS; the injected command must never be answered.
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l.strip())
        if len(l) < 4 or l[3] == " ":
            return lines
reply()
s.sendall(b"EHLO inj.test\r\n"); reply()
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
print(reply()[-1])
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
t = c.wrap_socket(s)
tf = t.makefile("rb")
t.sendall(b"MAIL FROM:<a@client.test>\r\n")
print(tf.readline().decode().strip())
t.sendall(b"EHLO inj.test\r\n")
while True:
    l = tf.readline().decode()
    if l[3] == " ":
        break
t.sendall(b"MAIL FROM:<a@client.test>\r\n")
print(tf.readline().decode().strip())
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &gw.port()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines[0].starts_with("220 2.0.0"), "{text}");
    // The first reply over TLS answers our MAIL (503: EHLO needed again), not the injected one.
    assert!(lines[1].starts_with("503 5.5.1"), "{text}");
    assert!(lines[2].starts_with("250 2.1.0"), "{text}");
}

#[test]
fn client_talking_before_greeting_is_refused() {
    let gw = Setup::default().server("greeting_delay_ms = 500").start();
    let mut raw = Raw::connect(gw.smtp);
    raw.send(b"EHLO eager.test\r\n");
    let r = raw.reply();
    assert!(r.starts_with("554 5.5.0"), "{r}");
    assert!(raw.closed());
    // A patient client is served.
    let mut ok = Raw::connect(gw.smtp);
    assert!(ok.reply().starts_with("220 "));
}

#[test]
fn bare_lf_and_long_command_lines() {
    let gw = Gateway::default_setup();
    let mut raw = Raw::connect(gw.smtp);
    raw.reply();
    raw.send(b"EHLO lf.test\n");
    assert!(raw.reply().starts_with("500 5.5.2"));
    let long = format!("NOOP {}", "x".repeat(600));
    assert!(raw.cmd(&long).starts_with("500 5.5.6"));
    assert!(raw.cmd("NOOP").starts_with("250"));
}

// ---------------------------------------------------------------- proxy mode

fn proxy_gateway(up: &Upstream) -> Gateway {
    // One environment variable switches the default config to proxy mode.
    Setup::default()
        .env("MAILGATE_DELIVERY__UPSTREAM", &up.addr())
        .start()
}

#[test]
fn proxy_relays_byte_identical_with_starttls_upstream() {
    let up = Upstream::start(&["--starttls"]);
    let gw = proxy_gateway(&up);
    let body = tricky_body();
    let data = write_file(gw.dir.path(), "m.eml", &body);
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "u@example.test",
        "--data",
        &data,
    ]));
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(
        out["data"]["text"]
            .as_str()
            .unwrap()
            .contains("queued upstream"),
        "upstream's own reply: {out}"
    );
    let got = up.received();
    assert_eq!(got.len(), 1);
    let meta = json(&got[0].1);
    assert_eq!(meta["tls"], true, "gateway used STARTTLS upstream");
    assert_eq!(meta["rcpt_tos"][0], "u@example.test");
    assert_eq!(meta["mail_from"], "sender@client.test");
    assert!(got[0].0.starts_with(b"Received: from client.test"));
    assert_eq!(strip_trace_headers(&got[0].0), &body[..]);
    assert!(
        gw.mailbox("example.test", "u").is_empty(),
        "nothing kept locally"
    );
    assert!(gw.log().contains("mode=\"proxy\""));
}

#[test]
fn proxy_passes_upstream_per_recipient_refusal() {
    let up = Upstream::start(&["--reject", "gone@example.test"]);
    let gw = proxy_gateway(&up);
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "gone@example.test",
        "--to",
        "here@example.test",
    ]));
    assert_eq!(out["rcpt"]["gone@example.test"]["code"], 550, "{out}");
    assert!(
        out["rcpt"]["gone@example.test"]["text"]
            .as_str()
            .unwrap()
            .starts_with("5.1.1"),
        "{out}"
    );
    assert_eq!(out["rcpt"]["here@example.test"]["code"], 250, "{out}");
    assert_eq!(out["data"]["code"], 250, "{out}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        json(&got[0].1)["rcpt_tos"],
        serde_json::json!(["here@example.test"])
    );
}

#[test]
fn proxy_passes_upstream_tempfail() {
    let up = Upstream::start(&["--tempfail"]);
    let gw = proxy_gateway(&up);
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "u@example.test",
    ]));
    assert_eq!(out["data"]["code"], 451, "{out}");
    assert!(
        out["data"]["text"].as_str().unwrap().starts_with("4.3.0"),
        "{out}"
    );
    assert!(up.received().is_empty());
}

#[test]
fn proxy_upstream_unreachable_is_451() {
    // A port that was just free: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Setup::default()
        .env("MAILGATE_DELIVERY__UPSTREAM", &format!("127.0.0.1:{port}"))
        .start();
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "u@example.test",
    ]));
    assert_eq!(out["mail"]["code"], 451, "{out}");
    assert!(
        out["mail"]["text"].as_str().unwrap().starts_with("4.4.1"),
        "{out}"
    );
}

// ---------------------------------------------------------------- config and lifecycle

#[test]
fn env_override_reaches_the_greeting() {
    let gw = Setup::default()
        .env("MAILGATE_SERVER__HOSTNAME", "mx.env.test")
        .start();
    let mut raw = Raw::connect(gw.smtp);
    assert_eq!(raw.reply(), "220 mx.env.test ESMTP mailgate\r\n");
}

#[test]
fn sigterm_lets_a_transaction_finish_then_exits() {
    let mut gw = Gateway::default_setup();
    let mut raw = Raw::connect(gw.smtp);
    raw.reply();
    raw.cmd("EHLO term.test");
    raw.cmd("MAIL FROM:<a@client.test>");
    raw.cmd("RCPT TO:<t@example.test>");
    assert!(raw.cmd("DATA").starts_with("354"));
    let pid = gw_pid(&gw);
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The log line proves the signal was handled before we finish the message.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !gw.log().contains("shutting down") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    raw.send(b"Subject: finishing\r\n\r\nbody\r\n.\r\n");
    let r = raw.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(
        raw.reply().starts_with("421 4.3.2"),
        "told to go after the message"
    );
    assert_eq!(gw.mailbox("example.test", "t").len(), 1);
    let st = gw.wait(Duration::from_secs(30)).expect("exits");
    assert!(st.success(), "{st:?}");
    // New connections are refused once shut down.
    assert!(std::net::TcpStream::connect(gw.smtp).is_err());
}

fn gw_pid(gw: &Gateway) -> String {
    gw.pid().to_string()
}

#[test]
fn tls_certificate_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mx.pem.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let gw = Setup::default()
        .tls_listener()
        .section(&format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nself_signed = false",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .start();
    // The certificate the gateway serves, read by Python's ssl module on both listeners.
    let script = r#"
import smtplib, ssl, sys
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30); s.starttls(context=c)
print(ssl.DER_cert_to_PEM_cert(s.sock.getpeercert(True)).strip())
t = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[2]), context=c, timeout=30)
print(ssl.DER_cert_to_PEM_cert(t.sock.getpeercert(True)).strip())
"#;
    let tls_port = gw.smtps.unwrap().port().to_string();
    let out = std::process::Command::new("python3")
        .args(["-c", script, &gw.port(), &tls_port])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = String::from_utf8(out.stdout).unwrap();
    let ours = std::fs::read_to_string(&cert).unwrap();
    let ours = ours.trim();
    assert_eq!(
        served.matches(ours).count(),
        2,
        "served:\n{served}\nconfigured:\n{ours}"
    );
}

#[test]
fn tls_disabled_means_no_starttls() {
    let gw = Setup::default()
        .section("[tls]\nself_signed = false")
        .start();
    let out = json(&smtplib(&["ehlo", HOST, &gw.port()]));
    assert!(
        !out["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "STARTTLS"),
        "{out}"
    );
}

#[test]
fn total_connection_limit() {
    let gw = Setup::default().server("max_connections = 1").start();
    let mut a = Raw::connect(gw.smtp);
    assert!(a.reply().starts_with("220"));
    let mut b = Raw::connect(gw.smtp);
    let r = b.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(r.contains("Too many connections"), "{r}");
    assert!(a.cmd("NOOP").starts_with("250"));
}

/// Postfix from Debian's packages as the real next hop: its own refusal reaches the client,
/// and what it stores is our Received: header plus the message, unchanged.
#[test]
fn proxy_into_postfix_delivers_and_passes_postfix_refusals() {
    let mut pf = support::Postfix::start(&["pat@example.test"]);
    let gw = Setup::default()
        .env("MAILGATE_DELIVERY__UPSTREAM", &pf.addr.to_string())
        .start();
    let mut body =
        b"Date: Mon, 23 Nov 2026 07:00:00 +0000\r\nMessage-ID: <pf@client.test>\r\n".to_vec();
    body.extend(tricky_body());
    let data = write_file(gw.dir.path(), "m.eml", &body);
    let out = json(&smtplib(&[
        "send",
        HOST,
        &gw.port(),
        "--to",
        "nobody@example.test",
        "--to",
        "pat@example.test",
        "--data",
        &data,
    ]));
    assert_eq!(out["rcpt"]["nobody@example.test"]["code"], 550, "{out}");
    assert!(
        out["rcpt"]["nobody@example.test"]["text"]
            .as_str()
            .unwrap()
            .contains("User unknown"),
        "{out}"
    );
    assert_eq!(out["rcpt"]["pat@example.test"]["code"], 250, "{out}");
    assert_eq!(out["data"]["code"], 250, "{out}");
    assert!(
        out["data"]["text"].as_str().unwrap().contains("queued as"),
        "{out}"
    );
    // Postfix delivers after its 250 and gives no other signal than its log.
    assert!(
        pf.wait_log_count("status=sent", 1, Duration::from_secs(30)),
        "postfix did not deliver:\n{}",
        pf.maillog()
    );
    let files = pf.mailbox("example.test", "pat");
    assert_eq!(files.len(), 1, "{}", pf.maillog());
    // Postfix stores LF line ends and prepends its own trace headers; after them come our
    // Received: header and the message, unstuffed and otherwise unchanged.
    let stored = String::from_utf8(files[0].clone()).unwrap();
    let ours = stored
        .find("Received: from client.test ([127.0.0.1])")
        .unwrap_or_else(|| panic!("no mailgate Received:\n{stored}"));
    assert!(
        stored[..ours].contains("by upstream.postfix.test (Postfix)"),
        "{stored}"
    );
    let want = String::from_utf8(body).unwrap().replace("\r\n", "\n");
    let mut lines = stored[ours..].split_inclusive('\n');
    lines.next();
    let rest: String = lines
        .skip_while(|l| l.starts_with('\t') || l.starts_with(' '))
        .collect();
    assert!(
        rest == want,
        "body altered on the way into Postfix:\n{rest}"
    );
    pf.stop();
}
