//! What a plugin's language costs: the example policy of `examples/policy/{rust,js,python}`
//! (the same code in the three languages), built from source at the start of the run with
//! each language's build command, loaded and driven through the same [`SessionPlugins`]
//! adapter the server uses:
//!
//! - the component's size (printed before the measurements);
//! - `load/compile/<lang>`: loading the plugin with no compile cache (Cranelift compiles the
//!   component, then link, `manifest` and `init` on a first instance): what a gateway start
//!   or reload pays for a plugin it has not compiled before;
//! - `load/cached/<lang>`: the same with the compiled form in the compile cache
//!   (`chain.compile_cache`, the default): every later start;
//! - `session/<lang>`: a new session's first hook (RCPT TO of an accepted recipient): a new
//!   instance from the pool, `init` with the config, the call — paid once per session that
//!   reaches a hook the plugin implements;
//! - `hook/rcpt/<lang>` and `hook/data/<lang>`: one more call on the session's live instance
//!   (RCPT TO of an accepted recipient; DATA on a 1 KB message whose subject matches, so
//!   the tag, the score entry and the header come back).
//!
//! Needs node, the JS SDK's `npm ci` and componentize-py (`.ci/setup`); run with
//! `cargo bench -p mailgate-bench --bench languages`. Figures: docs/languages.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use mailgate::config::{OnError, PluginSpec};
use mailgate::dns::Resolver;
use mailgate::plugin::registry::{Services, load_all};
use mailgate::plugin::{Generation, SessionPlugins};
use mailgate::smtp::{Envelope, Helo, Hook, Listener, SessionFacts};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run the build command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the three examples: `(language, component file)`.
fn build() -> Vec<(&'static str, PathBuf)> {
    let out = repo().join("target/bench-plugins");
    std::fs::create_dir_all(&out).expect("target/bench-plugins");
    let examples = repo().join("examples/policy");
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(examples.join("rust/Cargo.toml"))
        .arg("--target-dir")
        .arg(repo().join("target/wasm")));
    let mut built = vec![(
        "rust",
        repo().join("target/wasm/wasm32-wasip2/release/policy_rust.wasm"),
    )];
    for lang in ["js", "python"] {
        let file = out.join(format!("policy-{lang}.wasm"));
        run(Command::new("sh")
            .arg(examples.join(lang).join("build"))
            .arg(&file));
        built.push((lang, file));
    }
    built
}

fn spec(path: &Path) -> PluginSpec {
    PluginSpec {
        name: "policy".into(),
        path: path.to_path_buf(),
        sha256: None,
        on_error: OnError::Tempfail,
        capabilities: vec![],
        deadline: Duration::from_secs(5),
        memory: 32 << 20,
        config: vec![
            (
                "deny".into(),
                r#"["blocked@example.test","@denied.test"]"#.into(),
            ),
            ("subject_pattern".into(), "win(ning)? a prize".into()),
        ],
        literal_recipients: false,
        log_rate: (100, 65536),
        kv_quota: Default::default(),
        reuse_instances: true,
    }
}

fn load(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    cache: Option<&Path>,
) -> (Arc<Generation>, Duration) {
    let services = Services::with_cache(
        Arc::new(Resolver::new(Default::default())),
        cache.map(Path::to_path_buf),
    );
    let t = Instant::now();
    let g = rt
        .block_on(load_all(&[spec(path)], &services))
        .expect("load")
        .expect("plugins configured");
    (g, t.elapsed())
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let plugins = build();
    for (lang, path) in &plugins {
        let size = std::fs::metadata(path).expect("component").len();
        println!(
            "component size {lang}: {size} bytes ({:.1} MB)",
            size as f64 / 1e6
        );
    }

    let mut g = c.benchmark_group("load");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    for (lang, path) in &plugins {
        g.bench_function(format!("compile/{lang}"), |b| {
            b.iter_custom(|n| (0..n).map(|_| load(&rt, path, None).1).sum())
        });
    }
    let cache = tempfile::tempdir().expect("cache dir");
    for (lang, path) in &plugins {
        load(&rt, path, Some(cache.path()));
        g.bench_function(format!("cached/{lang}"), |b| {
            b.iter_custom(|n| (0..n).map(|_| load(&rt, path, Some(cache.path())).1).sum())
        });
    }
    g.finish();

    let session = facts();
    let env = Envelope {
        mail_from: "a@client.test".into(),
        rcpt_to: vec!["ok@example.test".into()],
        ..Envelope::default()
    };
    let rcpt = Hook::RcptTo {
        address: "ok@example.test".into(),
    };
    let mut body = b"From: a@client.test\r\nTo: ok@example.test\r\n\
        Subject: You could win a prize today\r\nMessage-ID: <b@client.test>\r\n\r\n"
        .to_vec();
    while body.len() < 1024 {
        body.extend_from_slice(b"a line of body text that is about sixty four octets long....\r\n");
    }
    let text = mailgate::smtp::MessageText::new(Bytes::from(body));
    let generations: Vec<_> = plugins
        .iter()
        .map(|(lang, path)| (*lang, load(&rt, path, Some(cache.path())).0))
        .collect();
    let chain = |g: &Arc<Generation>| {
        SessionPlugins::new(Arc::clone(g), "BENCH".into(), "mx.bench.test".into())
    };

    let mut g = c.benchmark_group("session");
    for (lang, generation) in &generations {
        g.bench_function(*lang, |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..n {
                        let mut c = chain(generation);
                        std::hint::black_box(c.hook(&rcpt, &session, &env, "BENCH.1", None).await);
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("hook");
    for (lang, generation) in &generations {
        for (stage, hook, msg) in [("rcpt", &rcpt, None), ("data", &Hook::Data, Some(&text))] {
            g.bench_function(format!("{stage}/{lang}"), |b| {
                let mut c = chain(generation);
                b.iter_custom(|n| {
                    rt.block_on(async {
                        c.hook(hook, &session, &env, "BENCH.1", msg).await;
                        let t = Instant::now();
                        for _ in 0..n {
                            std::hint::black_box(
                                c.hook(hook, &session, &env, "BENCH.1", msg).await,
                            );
                        }
                        t.elapsed()
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
