//! The core paths without plugins or sockets:
//!
//! - `session/*`: the sans-I/O SMTP session (gateway/src/smtp/session) parsing a whole
//!   transaction (EHLO, MAIL, RCPT, DATA with a message of 10 KB, 100 KB or 1 MB in lines
//!   of 78 octets, the end of data, QUIT), fed in 16 KiB reads as the driver feeds it,
//!   hooks and the delivery resolved at once: throughput in bytes of client input per
//!   second (replies are produced and dropped);
//! - `spool/store`: the queue's durable write of one message (message file and envelope
//!   written, fsynced and linked into place, both directories fsynced) in a temporary
//!   directory, per message size: the disk's fsync latency dominates, so the figure is
//!   this machine's storage as much as our code.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mailgate::queue::entry::Entry;
use mailgate::queue::spool::{Spool, parts};
use mailgate::smtp::{
    Listener, MailParams, Resolution, Session, SessionConfig, SessionFacts, Step,
};

/// A whole transaction as a client sends it, with a message of about `size` octets: what
/// it sends before waiting for a reply, in order (EHLO; MAIL, RCPT and DATA pipelined;
/// the message; QUIT).
fn transcript(size: usize) -> Vec<Vec<u8>> {
    let mut message =
        b"From: <a@bench.test>\r\nTo: <u@example.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, and the dog did not mind at all.\r\n";
    while message.len() < size {
        message.extend_from_slice(line);
    }
    message.extend_from_slice(b".\r\n");
    vec![
        b"EHLO client.bench.test\r\n".to_vec(),
        b"MAIL FROM:<a@bench.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n".to_vec(),
        message,
        b"QUIT\r\n".to_vec(),
    ]
}

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.bench.test".into(),
        local_domains: vec!["example.test".into()],
        max_message_size: 64 << 20,
        ..SessionConfig::default()
    })
}

/// Runs one session over `input` (what the client sends between waits for a reply); the
/// number of messages it delivered.
fn session(cfg: &Arc<SessionConfig>, input: &[Vec<u8>]) -> usize {
    let facts = SessionFacts::new(
        "BENCH".into(),
        "192.0.2.9:4321".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
        Listener::Smtp,
    );
    let mut s = Session::new(Arc::clone(cfg), facts);
    let mut chunks = input.iter().flat_map(|part| part.chunks(16 * 1024));
    let mut delivered = 0;
    // Bounded: each step consumes input or resolves what the session asked for.
    for _ in 0..1_000_000 {
        match s.step() {
            Step::Send(b) => {
                if std::env::var_os("BENCH_SHOW").is_some() {
                    eprint!("{}", String::from_utf8_lossy(&b));
                }
                std::hint::black_box(b);
            }
            Step::NeedInput => match chunks.next() {
                Some(c) => s.feed(c),
                None => s.feed_eof(),
            },
            Step::Hook(_) => s.resolve(Resolution::Continue),
            Step::Deliver(m) => {
                std::hint::black_box(m);
                delivered += 1;
                s.resolve(Resolution::Continue);
            }
            Step::Seal(_) => s.seal_failed(),
            Step::StartTls | Step::Close => return delivered,
        }
    }
    panic!("session did not end");
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group("session");
    for size in [10 * 1024, 100 * 1024, 1024 * 1024] {
        let input = transcript(size);
        assert_eq!(session(&cfg, &input), 1, "the transaction is accepted");
        let octets: usize = input.iter().map(Vec::len).sum();
        g.throughput(Throughput::Bytes(octets as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size / 1024), &input, |b, i| {
            b.iter(|| session(&cfg, i))
        });
    }
    g.finish();

    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("spool/store");
    g.sample_size(20);
    let mut n = 0u64;
    for size in [10 * 1024, 100 * 1024] {
        let message = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size / 1024), |b| {
            b.iter(|| {
                n += 1;
                let entry = Entry::new(
                    format!("BENCH{n:012}"),
                    "a@bench.test",
                    &MailParams::default(),
                    &["u@example.test".to_string()],
                    size as u64,
                );
                let pieces: [&[u8]; 1] = [&message];
                spool.store(&entry, &parts(&pieces)).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
