//! CPU per message of the shipped filtering plugins, each through the same
//! [`SessionPlugins`] adapter the server drives, against the `header-adder` fixture's
//! DATA hook as the floor (the cost of any DATA hook on the same message):
//!
//! - `spam-score/no-rules` and `spam-score/shipped-rules`: the same without rules (reading
//!   the message, the headers it writes) and with the shipped default rules only;
//! - `spam-score/100-rules`: the DATA hook with 100 rules (the shipped defaults plus
//!   configured header and body rules to make 100) and a URIBL, on a 10 KB message with
//!   URLs; DNS answers come from NSD on loopback and are cached (warmed before measuring);
//! - `greylist/passed-triplet`: the RCPT hook of a triplet that passed (kv reads and the
//!   last-seen update; the plugin clock moved past the delay once);
//! - `rate-limit/mail-from`: the MAIL FROM hook counting one message per client (kv
//!   increments under a limit never reached);
//! - `session-start/*`: a new session's first spam-score hook (HELO): instantiating the
//!   plugin and its `init`, which compiles the rules — once per session, since instances
//!   live one session.
//!
//! Needs the shipped plugins and fixtures built (`plugins/build`, and the fixtures as in
//! plugin_hooks.rs) and NSD.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use mailgate::config::{Capability, PluginSpec};
use mailgate::dns::{Resolver, Settings};
use mailgate::plugin::registry::{Services, load_all};
use mailgate::plugin::{Generation, SessionPlugins};
use mailgate::smtp::{Envelope, Helo, Hook, Listener, MailParams, SessionFacts};
use mailgate_bench::{Nsd, plugin_spec, zone};

/// The plugins here are granted DNS, kv, clock and log.
fn spec(name: &str, file: &str, config: &[(&str, &str)]) -> PluginSpec {
    let caps = [
        Capability::Dns,
        Capability::Kv,
        Capability::Clock,
        Capability::Log,
    ];
    plugin_spec(name, file, &caps, config)
}

fn generation(
    rt: &tokio::runtime::Runtime,
    services: &Arc<Services>,
    spec: PluginSpec,
) -> Arc<Generation> {
    rt.block_on(load_all(&[spec], services))
        .expect("load")
        .expect("plugins configured")
}

/// Starts `iters` sessions, each with a chain of its own whose first hook (HELO) creates
/// the plugin's instance and runs its `init`: the cost a plugin adds once per session.
fn sessions(rt: &tokio::runtime::Runtime, g: &Arc<Generation>, iters: u64) -> Duration {
    let session = SessionFacts::new(
        "BENCH".into(),
        "192.0.2.1:40000".parse().unwrap(),
        "192.0.2.2:25".parse().unwrap(),
        Listener::Smtp,
    );
    let helo = Hook::Helo {
        name: "mail.bench.test".into(),
        extended: true,
    };
    let env = Envelope::default();
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..iters {
            let mut chain =
                SessionPlugins::new(Arc::clone(g), "BENCH".into(), "mx.bench.test".into());
            std::hint::black_box(chain.hook(&helo, &session, &env, "BENCH.1", None).await);
        }
        t.elapsed()
    })
}

/// Runs `hook` `iters` times through one session's chain (after one warm-up call).
fn timed(
    rt: &tokio::runtime::Runtime,
    g: &Arc<Generation>,
    hook: &Hook,
    env: &Envelope,
    text: Option<&mailgate::smtp::MessageText>,
    iters: u64,
) -> Duration {
    let session = SessionFacts {
        helo: Some(Helo {
            name: "mail.bench.test".into(),
            extended: true,
        }),
        ..SessionFacts::new(
            "BENCH".into(),
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.2:25".parse().unwrap(),
            Listener::Smtp,
        )
    };
    rt.block_on(async {
        let mut chain = SessionPlugins::new(Arc::clone(g), "BENCH".into(), "mx.bench.test".into());
        chain.hook(hook, &session, env, "BENCH.1", text).await;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(chain.hook(hook, &session, env, "BENCH.1", text).await);
        }
        t.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nsd = Nsd::start(&[
        (
            "uri.test",
            &zone("uri.test", "listed-domain.com A 127.0.0.2\n"),
        ),
        // The sender's domain, for the `sender_domain_no_mx` check.
        (
            "bench.test",
            &zone("bench.test", "@ MX 10 mx\nmx A 192.0.2.25\n"),
        ),
    ]);
    let dns = Arc::new(Resolver::new(Settings {
        servers: vec![nsd.addr],
        plugin_budget: 1_000_000,
        ..Default::default()
    }));
    let services = Services::with_clock(dns, None, 16, 1 << 30, true);

    // 100 rules: the shipped defaults and configured ones up to 100.
    let mut config: Vec<(String, String)> = vec![
        ("uribl.uri.zone".into(), "uri.test".into()),
        ("uribl.uri.score".into(), "3".into()),
    ];
    // plugins/spam-score/src/defaults.rs has 37 rules.
    for i in 0..100 - 37 {
        if i % 2 == 0 {
            config.push((format!("rules.H{i}.header"), "Subject".into()));
            config.push((
                format!("rules.H{i}.regex"),
                format!("(?i)offer number {i}\\b"),
            ));
        } else {
            config.push((
                format!("rules.B{i}.body"),
                format!("(?i)\\bphrase{i} (one|two)\\b"),
            ));
        }
    }
    let config_ref: Vec<(&str, &str)> = config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let spam = generation(
        &rt,
        &services,
        spec("spam", "mailgate_spam_score", &config_ref),
    );
    let bare = generation(
        &rt,
        &services,
        spec("bare", "mailgate_spam_score", &[("default_rules", "false")]),
    );
    let shipped = generation(&rt, &services, spec("shipped", "mailgate_spam_score", &[]));
    let floor = generation(
        &rt,
        &services,
        spec("adder", "header_adder", &[("stamp", "b")]),
    );

    let mut body =
        b"From: <a@bench.test>\r\nTo: <u@example.test>\r\nSubject: Quarterly figures\r\n\
        Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@bench.test>\r\n\r\n\
        See https://www.listed-domain.com/x and https://docs.bench.test/report.\r\n"
            .to_vec();
    while body.len() < 10 * 1024 {
        body.extend_from_slice(b"a line of body text that is about sixty four octets long....\r\n");
    }
    let text = mailgate::smtp::MessageText::new(Bytes::from(body));
    let env = Envelope {
        mail_from: "a@bench.test".into(),
        rcpt_to: vec!["u@example.test".into()],
        ..Envelope::default()
    };

    let mut g = c.benchmark_group("data");
    g.bench_function("header-adder (floor)", |b| {
        b.iter_custom(|n| timed(&rt, &floor, &Hook::Data, &env, Some(&text), n))
    });
    g.bench_function("spam-score/no-rules", |b| {
        b.iter_custom(|n| timed(&rt, &bare, &Hook::Data, &env, Some(&text), n))
    });
    g.bench_function("spam-score/shipped-rules", |b| {
        b.iter_custom(|n| timed(&rt, &shipped, &Hook::Data, &env, Some(&text), n))
    });
    g.bench_function("spam-score/100-rules", |b| {
        b.iter_custom(|n| timed(&rt, &spam, &Hook::Data, &env, Some(&text), n))
    });
    g.finish();

    let mut g = c.benchmark_group("session-start");
    for (name, generation) in [
        ("spam-score/no-rules", &bare),
        ("spam-score/shipped-rules", &shipped),
        ("spam-score/100-rules", &spam),
    ] {
        g.bench_function(name, |b| b.iter_custom(|n| sessions(&rt, generation, n)));
    }
    g.finish();

    let grey = generation(&rt, &services, spec("greylist", "mailgate_greylist", &[]));
    let rcpt = Hook::RcptTo {
        address: "u@example.test".into(),
    };
    // First sight, then past the delay: every measured call is a passed triplet.
    timed(&rt, &grey, &rcpt, &env, None, 1);
    services.clock.advance(301).expect("adjustable clock");
    let limits = generation(
        &rt,
        &services,
        spec(
            "rate",
            "mailgate_rate_limit",
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":1000000000,"window_secs":3600}]"#,
            )],
        ),
    );
    let mail = Hook::MailFrom {
        address: "a@bench.test".into(),
        params: MailParams::default(),
    };
    let mut g = c.benchmark_group("envelope");
    g.bench_function("greylist/passed-triplet", |b| {
        b.iter_custom(|n| timed(&rt, &grey, &rcpt, &env, None, n))
    });
    g.bench_function("rate-limit/mail-from", |b| {
        b.iter_custom(|n| timed(&rt, &limits, &mail, &env, None, n))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
