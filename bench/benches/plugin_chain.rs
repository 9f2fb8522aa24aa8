//! The plugin chain per message: one whole SMTP session's hooks (connect, HELO, MAIL,
//! RCPT, DATA on a 10 KB message) through a fresh [`SessionPlugins`], the adapter the
//! server drives, so every plugin is instantiated, `init`-ed, called at each hook it
//! implements and dropped, once per message (sessions carry one message, as smtp-source's
//! do):
//!
//! - `no-plugins`: the same session with no plugin configured (the adapter's own cost);
//! - `three-fixtures`: the three small plugins of the issue's first measurement:
//!   `reject-rcpt` (RCPT), `stamper` (MAIL and DATA), `header-adder` (DATA);
//! - `shipped`: the shipped `auth`, `spam-score` (the shipped rules) and `routing` (a
//!   recipient list and a relay rule) plugins; SPF and DMARC answers come from NSD on
//!   loopback and are cached (warmed before measuring), the message is not DKIM-signed
//!   (the signature check's cost is in `auth_checks`).
//!
//! Criterion measures wall time on one thread; after it, each case runs 2000 more
//! messages and prints the CPU time the whole process spent per message (all threads,
//! from `/proc/self/stat`), which is the figure the gateway's CPU budget is about.
//!
//! Needs the fixtures (as in plugin_hooks.rs), the shipped plugins (`plugins/build`) and
//! NSD.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use mailgate::config::{Capability, PluginSpec};
use mailgate::dns::{Resolver, Settings};
use mailgate::plugin::registry::{Services, load_all};
use mailgate::plugin::{Generation, SessionPlugins};
use mailgate::smtp::{Envelope, Hook, Listener, MailParams, MessageText, SessionFacts};
use mailgate_bench::{Nsd, plugin_spec as spec, zone};

/// One message's session through a fresh chain; panics if the chain refuses it (a
/// benchmark of a refused message would measure less than a delivered one).
struct Session {
    facts: SessionFacts,
    hooks: Vec<Hook>,
    env_mail: Envelope,
    env_rcpt: Envelope,
    text: MessageText,
}

impl Session {
    fn new() -> Session {
        let mut body =
            b"From: <a@bench.test>\r\nTo: <u@example.test>\r\nSubject: Quarterly figures\r\n\
            Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@bench.test>\r\n\r\n\
            See https://docs.bench.test/report.\r\n"
                .to_vec();
        while body.len() < 10 * 1024 {
            body.extend_from_slice(
                b"a line of body text that is about sixty four octets long....\r\n",
            );
        }
        let env_mail = Envelope {
            mail_from: "a@bench.test".into(),
            ..Envelope::default()
        };
        let env_rcpt = Envelope {
            rcpt_to: vec!["u@example.test".into()],
            ..env_mail.clone()
        };
        Session {
            facts: SessionFacts::new(
                "BENCH".into(),
                "192.0.2.1:40000".parse().unwrap(),
                "192.0.2.2:25".parse().unwrap(),
                Listener::Smtp,
            ),
            hooks: vec![
                Hook::Connect,
                Hook::Helo {
                    name: "mail.bench.test".into(),
                    extended: true,
                },
                Hook::MailFrom {
                    address: "a@bench.test".into(),
                    params: MailParams::default(),
                },
                Hook::RcptTo {
                    address: "u@example.test".into(),
                },
                Hook::Data,
            ],
            env_mail,
            env_rcpt,
            text: MessageText::new(Bytes::from(body)),
        }
    }

    async fn run(&self, g: &Arc<Generation>) {
        let mut chain = SessionPlugins::new(Arc::clone(g), "BENCH".into(), "mx.bench.test".into());
        let mut facts = self.facts.clone();
        for hook in &self.hooks {
            let (env, text) = match hook {
                Hook::Connect | Hook::Helo { .. } | Hook::MailFrom { .. } => {
                    (&Envelope::default(), None)
                }
                Hook::RcptTo { .. } => (&self.env_mail, None),
                _ => (&self.env_rcpt, Some(&self.text)),
            };
            let r = chain.hook(hook, &facts, env, "BENCH.1", text).await;
            assert!(
                !mailgate::plugin::session::refuses(&r),
                "the chain refused the benchmark's message at {hook:?}: {r:?}"
            );
            if let Hook::Helo { name, extended } = hook {
                facts.helo = Some(mailgate::smtp::Helo {
                    name: name.clone(),
                    extended: *extended,
                });
            }
        }
        std::hint::black_box(chain.score());
    }
}

/// Process CPU time (user + system, all threads) so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses): utime is the 14th field
    // of the line, stime the 15th; in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nsd = Nsd::start(&[
        ("test", &zone("test", "")),
        (
            "bench.test",
            &zone(
                "bench.test",
                "@ MX 10 mx\nmx A 192.0.2.25\n@ TXT \"v=spf1 ip4:192.0.2.1 -all\"\n\
             _dmarc TXT \"v=DMARC1; p=reject\"\nmail A 192.0.2.1\n",
            ),
        ),
    ]);
    let dns = Arc::new(Resolver::new(Settings {
        servers: vec![nsd.addr],
        plugin_budget: 1_000_000,
        ..Default::default()
    }));
    let services = Services::new(dns);
    let load = |specs: Vec<PluginSpec>| -> Arc<Generation> {
        rt.block_on(load_all(&specs, &services))
            .expect("load")
            .expect("plugins configured")
    };
    let fixtures = load(vec![
        spec("reject", "reject_rcpt", &[], &[]),
        spec("stamper", "stamper", &[], &[]),
        spec("adder", "header_adder", &[], &[("stamp", "bench")]),
    ]);
    let shipped = load(vec![
        spec("auth", "mailgate_auth", &[Capability::AuthResults], &[]),
        spec(
            "spam",
            "mailgate_spam_score",
            &[
                Capability::Dns,
                Capability::Log,
                Capability::Kv,
                Capability::AuthResults,
            ],
            &[],
        ),
        spec(
            "routing",
            "mailgate_routing",
            &[Capability::Log],
            &[
                (
                    "rules",
                    r#"[{"domain":"example.test","action":"relay","host":"192.0.2.30:25"}]"#,
                ),
                ("recipients.example.test", r#"["u","v"]"#),
            ],
        ),
    ]);
    let none = Arc::new(Generation {
        engine: fixtures.engine.clone(),
        plugins: vec![],
        services: Arc::clone(&fixtures.services),
    });
    let session = Session::new();
    // Warm the DNS cache (and check that every chain lets the message through).
    for g in [&none, &fixtures, &shipped] {
        rt.block_on(session.run(g));
    }

    let cases = [
        ("no-plugins", &none),
        ("three-fixtures", &fixtures),
        ("shipped", &shipped),
    ];
    let mut group = c.benchmark_group("per-message");
    for (name, g) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..n {
                        session.run(g).await;
                    }
                    t.elapsed()
                })
            })
        });
    }
    group.finish();

    const N: u32 = 2000;
    for (name, g) in cases {
        let (c0, t0) = (cpu(), Instant::now());
        rt.block_on(async {
            for _ in 0..N {
                session.run(g).await;
            }
        });
        let (c1, t1) = (cpu(), Instant::now());
        println!(
            "per-message/{name}: process CPU {:.1} µs per message, wall {:.1} µs ({N} messages)",
            (c1 - c0).as_secs_f64() * 1e6 / f64::from(N),
            (t1 - t0).as_secs_f64() * 1e6 / f64::from(N),
        );
    }
    drop(nsd);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
