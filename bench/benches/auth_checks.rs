//! CPU per message of the `auth-results` checks with DNS answers cached: SPF for MAIL
//! FROM, DKIM (one rsa-sha256 signature with a 2048-bit key, by dkimpy, over a 10 KB
//! message) and DMARC, through the host side of the capability (`SessionAuth`, what
//! plugins call), against NSD on loopback serving the zone (the first run fills the
//! resolver's cache; the measured ones answer from it).
//!
//! ```sh
//! cargo bench -p mailgate-bench --bench auth_checks
//! # needs nsd, openssl and python3 with dkimpy (.ci/setup installs them)
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mailgate::dns::{Resolver, Settings};
use mailgate::plugin::auth::{Authenticator, SessionAuth};
use mailgate::smtp::MessageText;
use mailgate_bench::Nsd;

fn peer() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/dkimsign.py")
}

fn checks(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem").display().to_string();
    let out = Command::new("python3")
        .arg(peer())
        .args(["keygen", "rsa", &key, "2048"])
        .output()
        .expect("python3 dkimsign.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dkim = format!("v=DKIM1; k=rsa; p={p}");
    let txt: String = dkim
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\" ", String::from_utf8_lossy(c)))
        .collect();
    let zone = format!(
        "$ORIGIN bench.test.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\n\
         ns A 127.0.0.1\n@ TXT \"v=spf1 ip4:127.0.0.1 -all\"\nsel._domainkey TXT {txt}\n\
         _dmarc TXT \"v=DMARC1; p=reject\"\n"
    );
    let tld = "$ORIGIN test.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.0.1\n";
    let nsd = Nsd::start(&[("test", tld), ("bench.test", &zone)]);
    let mut body = String::from(
        "From: <a@bench.test>\r\nTo: <u@example.test>\r\nSubject: bench\r\n\
         Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@bench.test>\r\n\r\n",
    );
    while body.len() < 10 * 1024 {
        body.push_str("A line of a ten kilobyte message body, signed once with rsa-sha256.\r\n");
    }
    let mut child = Command::new("python3")
        .arg(peer())
        .args(["sign", &key, "bench.test", "sel", "rsa", "relaxed/relaxed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let signed = child.wait_with_output().unwrap().stdout;
    let text = MessageText::new(signed);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dns = Resolver::new(Settings {
        servers: vec![nsd.addr],
        timeout: Duration::from_secs(2),
        ..Settings::default()
    });
    let auth = Arc::new(Authenticator::new(&dns));
    let run = || async {
        let s = SessionAuth::new(
            Arc::clone(&auth),
            "mx.bench.test".into(),
            "127.0.0.1".parse().unwrap(),
            Some("localhost"),
        );
        s.helo("client.bench.test");
        s.mail_from("a@bench.test");
        s.message(&text);
        let spf = s.spf().await.unwrap();
        let checks = s.message_checks().await.unwrap();
        (spf, checks)
    };
    // Fill the cache, and check the results are what the benchmark claims to measure.
    let (spf, checks) = rt.block_on(run());
    assert_eq!(spf.result, mail_auth::SpfResult::Pass, "{spf:?}");
    assert!(
        checks.header_value.contains("dkim=pass"),
        "{}",
        checks.header_value
    );
    assert!(
        checks.header_value.contains("dmarc=pass"),
        "{}",
        checks.header_value
    );
    c.bench_function("spf + dkim (rsa-2048, 10 KB) + dmarc, cached DNS", |b| {
        b.iter(|| rt.block_on(run()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = checks
}
criterion_main!(benches);
