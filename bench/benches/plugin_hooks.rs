//! Per-hook plugin overhead, measured against the same session without plugins, through
//! the same [`SessionPlugins`] adapter the server drives (session facts converted, hook
//! called, verdict validated).
//!
//! - `rcpt/no-plugins`: one RCPT stage through an empty chain (the baseline);
//! - `rcpt/live-instance`: one RCPT hook call into a live instance of the `reject-rcpt`
//!   fixture (answers continue) — the cost every hook pays per plugin;
//! - `rcpt/fresh-instance`: a new session's first hook with the default instance reuse:
//!   an idle instance from the plugin's pool, `init`, then the call;
//! - `rcpt/new-instance`: the same with `instances = "per-session"`: instantiate (pooling
//!   allocator), `init`, then the call — the cost a plugin adds once per session then;
//! - `data/live-instance`: the DATA hook of the `header-adder` fixture on a 10 KiB
//!   message handed over as a resource.
//!
//! Needs the fixtures: `cargo build --release --target wasm32-wasip2 --manifest-path
//! tests/fixtures/Cargo.toml --target-dir target/wasm` (the tests build them there too).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use mailgate::config::{OnError, PluginSpec};
use mailgate::dns::Resolver;
use mailgate::plugin::registry::{Services, load_all};
use mailgate::plugin::{Generation, SessionPlugins};
use mailgate::smtp::{Envelope, Helo, Hook, Listener, SessionFacts};

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: build the fixtures first (see the module docs)",
        p.display()
    );
    p
}

fn spec(name: &str, file: &str, config: Vec<(String, String)>) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: fixture(file),
        sha256: None,
        on_error: OnError::Tempfail,
        capabilities: vec![],
        deadline: Duration::from_secs(1),
        memory: 32 << 20,
        config,
        literal_recipients: false,
        log_rate: (100, 65536),
        kv_quota: Default::default(),
        reuse_instances: true,
    }
}

fn facts() -> SessionFacts {
    SessionFacts {
        helo: Some(Helo {
            name: "client.test".into(),
            extended: true,
        }),
        ..SessionFacts::new(
            "BENCH".into(),
            "192.0.2.1:40000".parse().unwrap(),
            "192.0.2.2:25".parse().unwrap(),
            Listener::Smtp,
        )
    }
}

fn generation(rt: &tokio::runtime::Runtime, specs: Vec<PluginSpec>) -> Arc<Generation> {
    let services = Services::new(Arc::new(Resolver::new(Default::default())));
    rt.block_on(load_all(&specs, &services))
        .expect("load")
        .expect("plugins configured")
}

fn empty_generation(g: &Arc<Generation>) -> Arc<Generation> {
    Arc::new(Generation {
        engine: g.engine.clone(),
        plugins: vec![],
        services: Arc::clone(&g.services),
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let reject = generation(&rt, vec![spec("reject", "reject_rcpt", vec![])]);
    let per_session = generation(
        &rt,
        vec![PluginSpec {
            reuse_instances: false,
            ..spec("reject", "reject_rcpt", vec![])
        }],
    );
    let empty = empty_generation(&reject);
    let session = facts();
    let env = Envelope {
        mail_from: "a@client.test".into(),
        ..Envelope::default()
    };
    let rcpt = Hook::RcptTo {
        address: "ok@example.test".into(),
    };
    let plugins = |g: &Arc<Generation>| {
        SessionPlugins::new(Arc::clone(g), "BENCH".into(), "mx.bench.test".into())
    };

    let mut g = c.benchmark_group("rcpt");
    g.bench_function("no-plugins", |b| {
        let mut chain = plugins(&empty);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(chain.hook(&rcpt, &session, &env, "BENCH.1", None).await);
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("live-instance", |b| {
        let mut chain = plugins(&reject);
        b.iter_custom(|iters| {
            rt.block_on(async {
                chain.hook(&rcpt, &session, &env, "BENCH.1", None).await;
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(chain.hook(&rcpt, &session, &env, "BENCH.1", None).await);
                }
                t.elapsed()
            })
        })
    });
    // A new session's first hook, each iteration: with reused instances, then with one
    // instance per session.
    for (name, gen_) in [("fresh-instance", &reject), ("new-instance", &per_session)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let mut chain = plugins(gen_);
                        std::hint::black_box(
                            chain.hook(&rcpt, &session, &env, "BENCH.1", None).await,
                        );
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();

    let adder = generation(
        &rt,
        vec![spec(
            "adder",
            "header_adder",
            vec![("stamp".into(), "bench".into())],
        )],
    );
    let mut body = b"From: a@client.test\r\nTo: ok@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < 10 * 1024 {
        body.extend_from_slice(b"a line of body text that is about sixty four octets long....\r\n");
    }
    let raw = mailgate::smtp::MessageText::new(Bytes::from(body));
    let mut g = c.benchmark_group("data");
    g.bench_function("live-instance", |b| {
        let mut chain = plugins(&adder);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(
                        chain
                            .hook(&Hook::Data, &session, &env, "BENCH.1", Some(&raw))
                            .await,
                    );
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
