//! kv on Redis (`[kv] backend = "redis"`, docs/kv.md): two real gateway processes share
//! the shipped greylist and rate-limit plugins' state through a real `redis-server`
//! (Debian's package, started by each test on loopback, its own port and temp dir, no
//! persistence). Redis's expiry is real time (`mailgate clock advance` does not move it),
//! so these tests use real time: the greylisting delay is a few seconds and a test waits it out
//! (polling, bounded), and rate-limit windows are a year long, so none ends mid-test.
//! Redis is then killed, frozen (SIGSTOP) and brought back mid-test: the plugins'
//! failure handling applies, the gateways keep answering, `mailgate status` counts the
//! failures, and the kv works again once Redis is back.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::{DeadPort, Gateway, Raw, Redis, Setup, shipped};

/// The `[kv]` section for `redis`, plus `extra` lines.
fn kv_section(redis: &Redis, extra: &str) -> String {
    format!(
        "[kv]\nbackend = \"redis\"\nredis_url = \"{}\"\n{extra}",
        redis.url()
    )
}

/// A gateway on `redis` with `plugin` (a `[[plugin]]` table), plugin decisions (with
/// their reasons) in the log.
fn gateway(redis: &Redis, kv_extra: &str, plugin: &str) -> Gateway {
    Setup::default()
        .section(&kv_section(redis, kv_extra))
        .section(plugin)
        .env("MAILGATE_LOG", "info,mailgate::plugin::chain=debug")
        .start()
}

/// The greylist plugin with `config` (inside `config = { … }`) and `extra` lines.
fn greylist(config: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"greylist\"\npath = {:?}\ncapabilities = [\"kv\", \"clock\", \"log\"]\n\
         config = {{ {config} }}\n{extra}",
        shipped("greylist").display().to_string()
    )
}

/// The rate-limit plugin: at most `max` recipients per client per (year-long) window.
fn rate_limit(max: u32) -> String {
    format!(
        "[[plugin]]\nname = \"rate-limit\"\npath = {:?}\ncapabilities = [\"kv\", \"clock\", \"log\"]\n\
         [plugin.config]\nlimits = [{{ what = \"recipients\", per = \"client\", max = {max}, \
         window_secs = 31536000 }}]\n",
        shipped("rate-limit").display().to_string()
    )
}

/// A session greeted and past EHLO.
fn session(gw: &Gateway) -> Raw {
    let mut r = Raw::connect(gw.smtp);
    let greeting = r.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = r.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    r
}

/// One message from `sender` to `rcpt` on `gw`: the RCPT reply (the message is sent and
/// must be accepted when the recipient is). Also how long the RCPT took.
fn attempt(gw: &Gateway, sender: &str, rcpt: &str) -> (String, Duration) {
    let mut r = session(gw);
    let mail = r.cmd(&format!("MAIL FROM:<{sender}>"));
    assert!(mail.starts_with("250"), "{mail}");
    let t = Instant::now();
    let reply = r.cmd(&format!("RCPT TO:<{rcpt}>"));
    let took = t.elapsed();
    if reply.starts_with("250") {
        let go = r.cmd("DATA");
        assert!(go.starts_with("354"), "{go}");
        let done = r.cmd("Subject: kv on Redis\r\n\r\nHello.\r\n.");
        assert!(done.starts_with("250"), "DATA: {done}");
    }
    r.cmd("QUIT");
    (reply, took)
}

fn greylisted(reply: &str) -> bool {
    reply.starts_with("451 4.7.1 Greylisted")
}

/// The `kv` figures of `mailgate status`.
fn kv_stats(gw: &Gateway) -> serde_json::Value {
    gw.status()["kv"].clone()
}

/// The kv entries `mailgate status` shows for `plugin`.
fn kv_entries(status: &serde_json::Value, plugin: &str) -> u64 {
    status["generation"]["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == plugin)
        .and_then(|p| p["kv_entries"].as_u64())
        .unwrap_or_else(|| panic!("no kv_entries for {plugin}: {status}"))
}

/// Retries `attempt` until `done` holds for its reply, every 200 ms, at most `limit`;
/// the last reply. (Waiting on real time passing: a greylisting delay, or Redis coming
/// back; nothing else signals it.)
fn until(
    limit: Duration,
    mut attempt: impl FnMut() -> String,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let reply = attempt();
        if done(&reply) || Instant::now() >= deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_triplet_greylisted_by_one_gateway_passes_on_the_other_after_the_delay() {
    let redis = Redis::start();
    // 4 s: B's first retry, right after A's attempt, must still be early on a busy machine.
    let plugin = greylist("delay_secs = 4", "");
    let a = gateway(&redis, "", &plugin);
    let b = gateway(&redis, "", &plugin);
    let (s, u) = ("sender@client.test", "user@example.test");

    let (first, _) = attempt(&a, s, u);
    assert!(greylisted(&first), "{first}");
    assert!(a.log().contains("new triplet"), "{}", a.log());
    // B knows the triplet A saw: an early retry, not a new triplet.
    let (early, _) = attempt(&b, s, u);
    assert!(greylisted(&early), "{early}");
    assert!(b.log().contains("retried early"), "{}", b.log());
    assert!(!b.log().contains("new triplet"), "{}", b.log());

    let passed = until(
        Duration::from_secs(10),
        || attempt(&b, s, u).0,
        |r| r.starts_with("250"),
    );
    assert!(passed.starts_with("250"), "{passed}");
    assert!(b.log().contains("greylisted triplet passed"), "{}", b.log());
    assert_eq!(b.mailbox("example.test", "user").len(), 1);
    // And A knows it passed.
    let (again, _) = attempt(&a, s, u);
    assert!(again.starts_with("250"), "{again}");
    assert!(a.log().contains("known triplet"), "{}", a.log());

    // The triplet lives in Redis under the plugin's namespace, with Redis's TTL.
    let keys = redis.cli(&["--scan", "--pattern", "mailgate:{greylist}:v:t:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let ttl: i64 = redis.cli(&["TTL", keys.trim()]).parse().unwrap();
    assert!(
        ttl > 86_400,
        "passed triplets are kept for max_age_days: {ttl}"
    );
    // Both gateways show the shared namespace's figures, and no failure.
    for gw in [&a, &b] {
        let status = gw.status_when(|s| kv_entries(s, "greylist") >= 1);
        assert!(kv_entries(&status, "greylist") >= 1, "{status}");
        let kv = &status["kv"];
        assert_eq!(kv["backend"], "redis", "{kv}");
        assert_eq!(kv["unavailable"], 0, "{kv}");
        assert!(kv["calls"].as_u64().unwrap() >= 3, "{kv}");
    }
}

#[test]
fn a_rate_limit_is_exact_over_two_gateways_under_concurrency() {
    const MAX: usize = 10;
    let redis = Redis::start();
    let plugin = rate_limit(MAX as u32);
    let gws = Arc::new([gateway(&redis, "", &plugin), gateway(&redis, "", &plugin)]);
    // 2 gateways × 6 sessions × 2 recipients, all at once: 24 RCPTs for 10 places.
    let start = Arc::new(Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (gws, start) = (Arc::clone(&gws), Arc::clone(&start));
            std::thread::spawn(move || {
                let gw = &gws[i % 2];
                let mut r = session(gw);
                let mail = r.cmd("MAIL FROM:<s@client.test>");
                assert!(mail.starts_with("250"), "{mail}");
                start.wait();
                let replies: Vec<String> = (0..2)
                    .map(|n| r.cmd(&format!("RCPT TO:<u{i}-{n}@example.test>")))
                    .collect();
                r.cmd("RSET");
                r.cmd("QUIT");
                replies
            })
        })
        .collect();
    let replies: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let accepted = replies.iter().filter(|r| r.starts_with("250")).count();
    assert_eq!(accepted, MAX, "{replies:#?}");
    for r in replies.iter().filter(|r| !r.starts_with("250")) {
        assert!(r.starts_with("451 4.7.1 Too many recipients"), "{r}");
    }
    // The next one is refused on either gateway.
    for gw in gws.iter() {
        let (reply, _) = attempt(gw, "s@client.test", "late@example.test");
        assert!(reply.starts_with("451 4.7.1"), "{reply}");
    }
    // Redis holds exactly what passed: refused attempts gave their count back.
    let keys = redis.cli(&["--scan", "--pattern", "mailgate:{rate-limit}:v:*"]);
    let counted: i64 = keys
        .lines()
        .map(|k| redis.cli(&["GET", k]).parse::<i64>().unwrap())
        .sum();
    assert_eq!(counted, MAX as i64, "{keys}");
    for gw in gws.iter() {
        assert_eq!(kv_stats(gw)["unavailable"], 0);
    }
}

#[test]
fn redis_killed_mid_test_lets_mail_through_by_default_and_is_counted_until_it_is_back() {
    let mut redis = Redis::start();
    let plugin = greylist("delay_secs = 2", "");
    let gw = gateway(&redis, "", &plugin);
    let (first, _) = attempt(&gw, "a@client.test", "user@example.test");
    assert!(greylisted(&first), "{first}");

    redis.stop();
    // on_unavailable = "plugin" (the default): greylist is told and fails open.
    for n in 0..3 {
        let (reply, _) = attempt(&gw, &format!("down{n}@client.test"), "user@example.test");
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert_eq!(gw.mailbox("example.test", "user").len(), 3);
    let log = gw.log();
    assert!(
        log.contains("greylisting skipped, mail let through"),
        "{log}"
    );
    assert!(log.contains("kv: Redis is unavailable"), "{log}");
    let kv = kv_stats(&gw);
    assert!(kv["unavailable"].as_u64().unwrap() >= 3, "{kv}");
    assert!(
        kv["unavailable_by_plugin"]["greylist"].as_u64().unwrap() >= 3,
        "{kv}"
    );
    assert_eq!(kv["failing"], true, "{kv}");
    assert!(kv["last_error"].as_str().unwrap().contains("Redis"), "{kv}");

    // Back (empty: no persistence): a new triplet is greylisted again.
    redis.start_again();
    let reply = until(
        Duration::from_secs(15),
        || attempt(&gw, "back@client.test", "user@example.test").0,
        greylisted,
    );
    assert!(greylisted(&reply), "{reply}");
    let kv = kv_stats(&gw);
    assert_eq!(kv["failing"], false, "{kv}");
    assert!(gw.log().contains("kv: Redis answers again"), "{}", gw.log());
}

#[test]
fn a_gateway_starts_without_redis_and_lets_mail_through() {
    // Nothing listens there: every connection is refused.
    let dead = DeadPort::new();
    let gw = Setup::default()
        .section(&format!(
            "[kv]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/0\"",
            dead.port
        ))
        .section(&greylist("", ""))
        .start();
    let (reply, _) = attempt(&gw, "a@client.test", "user@example.test");
    assert!(reply.starts_with("250"), "{reply}");
    let kv = kv_stats(&gw);
    assert!(kv["unavailable"].as_u64().unwrap() >= 1, "{kv}");
    let error = kv["last_error"].as_str().unwrap().to_lowercase();
    assert!(error.contains("refused"), "{kv}");
}

#[test]
fn with_on_unavailable_on_error_each_plugins_on_error_policy_applies() {
    let mut redis = Redis::start();
    let kv = "on_unavailable = \"on_error\"";
    let tempfail = gateway(
        &redis,
        kv,
        &greylist("delay_secs = 2", "on_error = \"tempfail\""),
    );
    let go_on = gateway(
        &redis,
        kv,
        &greylist("delay_secs = 2", "on_error = \"continue\""),
    );
    for (gw, sender) in [(&tempfail, "a1@client.test"), (&go_on, "a2@client.test")] {
        let (first, _) = attempt(gw, sender, "user@example.test");
        assert!(greylisted(&first), "{first}");
    }

    redis.stop();
    let (reply, _) = attempt(&tempfail, "b@client.test", "user@example.test");
    assert!(reply.starts_with("451 4.7.0"), "{reply}");
    let (reply, _) = attempt(&go_on, "b@client.test", "user@example.test");
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(go_on.mailbox("example.test", "user").len(), 1);
    for gw in [&tempfail, &go_on] {
        let log = gw.log();
        assert!(log.contains("kv: Redis is unavailable"), "{log}");
        assert!(log.contains("plugin failed; instance dropped"), "{log}");
        let kv = kv_stats(gw);
        assert!(kv["unavailable"].as_u64().unwrap() >= 1, "{kv}");
    }
    // Both gateways are still there, and greylist again once Redis is back.
    redis.start_again();
    for (gw, sender) in [(&tempfail, "c1@client.test"), (&go_on, "c2@client.test")] {
        let reply = until(
            Duration::from_secs(15),
            || attempt(gw, sender, "user@example.test").0,
            greylisted,
        );
        assert!(greylisted(&reply), "{reply}");
    }
}

#[test]
fn a_frozen_redis_costs_a_call_its_timeout_not_the_hooks_deadline() {
    let redis = Redis::start();
    let plugin = greylist("delay_secs = 2", "[plugin.limits]\ndeadline_ms = 3000");
    let gw = gateway(&redis, "timeout_ms = 300", &plugin);
    let (first, _) = attempt(&gw, "a@client.test", "user@example.test");
    assert!(greylisted(&first), "{first}");

    redis.pause();
    // The plugin's calls time out after 300 ms (then fail at once for a second): it is
    // told in time to let the mail through, well before its 3 s deadline (a deadline
    // failure would answer 451 4.7.0 under the default on_error).
    let (reply, took) = attempt(&gw, "frozen@client.test", "user@example.test");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let kv = kv_stats(&gw);
    assert!(kv["timeouts"].as_u64().unwrap() >= 1, "{kv}");
    assert!(
        kv["last_error"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{kv}"
    );
    assert!(!gw.log().contains("plugin failed"), "{}", gw.log());

    redis.resume();
    let reply = until(
        Duration::from_secs(15),
        || attempt(&gw, "thawed@client.test", "user@example.test").0,
        greylisted,
    );
    assert!(greylisted(&reply), "{reply}");
}

// ------------------------------------------------------------------ the backend itself

use mailgate::plugin::clock::PluginClock;
use mailgate::plugin::kv::{Caller, Kv, KvFault, OnUnavailable, Quota, Settings};
use mailgate::plugin::kv_redis::RedisSettings;

/// A Redis-backed store on `redis`, its entries under `prefix`.
fn redis_kv(redis: &Redis, prefix: &str, clock: Arc<PluginClock>) -> Kv {
    let settings = Settings::Redis(RedisSettings {
        url: redis.url(),
        key_prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        on_unavailable: OnUnavailable::Plugin,
    });
    Kv::from_settings(&settings, clock).unwrap()
}

fn caller(plugin: &str, quota: Quota) -> Caller<'_> {
    Caller {
        plugin,
        quota,
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

/// The same operations on a store, each with its answer, as text.
async fn transcript(kv: &Kv) -> Vec<String> {
    let mut t = Vec::new();
    // `answer!` notes an answer and gives it back; `note!` only notes it.
    macro_rules! answer {
        ($e:expr) => {{
            let answer = $e.await;
            t.push(format!("{} => {answer:?}", stringify!($e)));
            answer
        }};
    }
    macro_rules! note {
        ($e:expr) => {{
            let _ = answer!($e);
        }};
    }
    // Namespaces, TTLs, counters and an entry quota (as plugin::kv's unit test).
    let q3 = Quota {
        entries: 3,
        bytes: 1 << 20,
    };
    let (a, b) = (caller("a", q3), caller("b", q3));
    note!(kv.set(&a, "k", b"1".to_vec(), None));
    assert_eq!(answer!(kv.get(&b, "k")), Ok(None), "namespaced per plugin");
    note!(kv.get(&a, "k"));
    assert_eq!(answer!(kv.increment(&a, "k", 5, None)), Ok(6));
    note!(kv.increment(&a, "n", -2, Some(60)));
    note!(kv.set_if_absent(&a, "k", b"x".to_vec(), None));
    note!(kv.set(&a, "s", b"text".to_vec(), None));
    assert_eq!(
        answer!(kv.increment(&a, "s", 1, None)),
        Err(KvFault::NotACounter)
    );
    assert_eq!(
        answer!(kv.set(&a, "full", vec![], None)),
        Err(KvFault::QuotaExceeded)
    );
    note!(kv.set(&b, "mine", vec![], None));
    note!(kv.delete(&a, "s"));
    note!(kv.delete(&a, "s"));
    note!(kv.set(&a, "gone", vec![], Some(0)));
    assert_eq!(
        answer!(kv.get(&a, "gone")),
        Ok(None),
        "ttl 0 expires at once"
    );
    note!(kv.set_if_absent(&a, "gone", b"again".to_vec(), Some(0)));
    note!(kv.increment(&a, "zero", 4, Some(0)));
    note!(kv.get(&a, "zero"));
    t.push(format!("usage a {:?}", kv.usage("a")));
    // Counters as the host reads integers, and saturation.
    let c = caller("c", Quota::default());
    for (v, d) in [
        ("+5", 1),
        ("007", 1),
        ("-0", 1),
        ("-007", -1),
        (" 5", 1),
        ("", 1),
        ("1e3", 1),
        ("9223372036854775807", 1),
        ("-9223372036854775808", -1),
        ("99999999999999999999", 1),
    ] {
        note!(kv.set(&c, "x", v.as_bytes().to_vec(), Some(600)));
        note!(kv.increment(&c, "x", d, None));
        note!(kv.get(&c, "x"));
    }
    // The byte quota: keys and values count; expired entries make room.
    let q = Quota {
        entries: 1000,
        bytes: 3 * (1000 + 64 + 2),
    };
    let d = caller("d", q);
    for k in ["k1", "k2", "k3"] {
        note!(kv.set(&d, k, vec![0; 1000], Some(0)));
    }
    note!(kv.set(&d, "k4", vec![0; 1000], None));
    t.push(format!("usage d {:?}", kv.usage("d")));
    note!(kv.set(&d, "k5", vec![0; 1000], None));
    note!(kv.set(&d, "k6", vec![0; 1000], None));
    assert_eq!(
        answer!(kv.set(&d, "k7", vec![0; 1000], None)),
        Err(KvFault::QuotaExceeded)
    );
    note!(kv.set(&d, "k6", vec![0; 10], None));
    t.push(format!("usage d {:?}", kv.usage("d")));
    note!(kv.set(&d, "t", vec![1], Some(0)));
    note!(kv.set(&d, "t", vec![2], Some(3600)));
    note!(kv.get(&d, "t"));
    note!(kv.increment(&d, "k7", 1, None));
    note!(kv.delete(&d, "k6"));
    note!(kv.increment(&d, "k7", 1, None));
    t.push(format!("usage d {:?}", kv.usage("d")));
    t
}

#[tokio::test]
async fn redis_keeps_the_rules_of_the_memory_store() {
    let redis = Redis::start();
    let memory = transcript(&Kv::new()).await;
    let shared = transcript(&redis_kv(&redis, "mailgate:", Arc::default())).await;
    for (m, r) in memory.iter().zip(&shared) {
        assert_eq!(m, r, "memory and Redis differ");
    }
    assert_eq!(memory.len(), shared.len());
    // Each entry costs its key, its value and 64 octets: k4 and k5 hold 1000 octets,
    // k6 10; `a` keeps k ("6") and n ("-2").
    for figures in ["usage d (3, 2208)", "usage a (2, 133)"] {
        assert!(
            memory.iter().any(|l| l == figures),
            "{figures}: {memory:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_redis_stay_exact_under_concurrency() {
    let redis = Redis::start();
    let gws = Arc::new([
        redis_kv(&redis, "mailgate:", Arc::default()),
        redis_kv(&redis, "mailgate:", Arc::default()),
    ]);
    let q5 = Quota {
        entries: 5,
        bytes: 1 << 20,
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let gws = Arc::clone(&gws);
        tasks.push(tokio::spawn(async move {
            let kv = &gws[i % 2];
            let c = caller("p", q5);
            let n = kv.increment(&c, "hits", 1, Some(600)).await.unwrap();
            let first = kv
                .set_if_absent(&c, "lock", i.to_string().into_bytes(), Some(600))
                .await
                .unwrap();
            let q = caller("q", q5);
            let slot = kv.set(&q, &format!("key{i}"), vec![1], None).await;
            (n, first, slot)
        }));
    }
    let mut counts = Vec::new();
    let (mut firsts, mut stored, mut full) = (0, 0, 0);
    for t in tasks {
        let (n, first, slot) = t.await.unwrap();
        counts.push(n);
        firsts += usize::from(first);
        match slot {
            Ok(()) => stored += 1,
            Err(KvFault::QuotaExceeded) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=40).collect::<Vec<i64>>(),
        "each increment counted once"
    );
    assert_eq!(firsts, 1, "one set-if-absent wins");
    assert_eq!(
        (stored, full),
        (5, 35),
        "the entry quota holds across stores"
    );
    // Both see the one counter, with the TTL of its creation.
    let c = caller("p", q5);
    assert_eq!(gws[1].get(&c, "hits").await.unwrap(), Some(b"40".to_vec()));
    let ttl: i64 = redis.cli(&["TTL", "mailgate:{p}:v:hits"]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn redis_expiry_is_real_time_not_the_plugin_clock() {
    let redis = Redis::start();
    let clock = Arc::new(PluginClock::new(true));
    let kv = redis_kv(&redis, "t:", Arc::clone(&clock));
    let c = caller("p", Quota::default());
    kv.set(&c, "long", b"v".to_vec(), Some(60)).await.unwrap();
    kv.set(&c, "short", b"v".to_vec(), Some(1)).await.unwrap();
    // `mailgate clock advance` moves the plugins' clock, not Redis's.
    clock.advance(3600).unwrap();
    assert_eq!(kv.get(&c, "long").await.unwrap(), Some(b"v".to_vec()));
    // A 1 s TTL ends about a second later (polled, bounded).
    let t = Instant::now();
    while kv.get(&c, "short").await.unwrap().is_some() {
        assert!(t.elapsed() < Duration::from_secs(5), "short never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kv.get(&c, "long").await.unwrap(), Some(b"v".to_vec()));
    // Its accounting goes with it at the next write.
    kv.set(&c, "other", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.usage("p").0, 2);
}
