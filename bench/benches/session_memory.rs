//! Peak memory of the gateway while many clients each send a large message at once and
//! none finishes: the real binary, real sockets, its resident set read from
//! `/proc/<pid>/status` (`VmHWM`). Run twice in one go, with the default settings
//! (message content past `limits.spill_threshold_kb` or past `limits.max_message_memory_mb`
//! moves to spill files) and with every message held in memory (threshold and cap
//! lifted, as before spilling existed), so the figures are a ratio measured in the same
//! run. With `FINISH=1` the clients then end their messages, every one must be accepted
//! (`250`), and the peak is read again once they are delivered.
//!
//! ```sh
//! cargo build -p mailgate && cargo bench -p mailgate-bench --bench session_memory
//! # sizes: SESSIONS (default 200), MESSAGE_MB (default 10); binary: MAILGATE_BIN
//! # DEFAULT_ONLY=1 skips the all-in-memory run (1000 x 25 MiB in memory needs ~25 GiB);
//! # the spill files need SESSIONS x MESSAGE_MB of disk (twice that with FINISH=1)
//! SESSIONS=1000 MESSAGE_MB=25 DEFAULT_ONLY=1 cargo bench -p mailgate-bench --bench session_memory
//! SESSIONS=200 MESSAGE_MB=10 FINISH=1 cargo bench -p mailgate-bench --bench session_memory
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mailgate_bench::{env, peak_rss_mib, start};

/// What one run measured.
struct Figures {
    /// Peak RSS (MiB) while every client has sent its data and none has finished.
    unfinished: f64,
    /// How long the sending took.
    took: Duration,
    /// With `FINISH=1`: peak RSS once the messages were ended and delivered, and how
    /// many of them were accepted with 250.
    finished: Option<(f64, usize)>,
}

/// `sessions` clients each send `mb` MiB of message data and do not finish (then, with
/// `finish`, they end their messages). `limits`: lines for `[limits]`.
fn run(limits: &str, sessions: usize, mb: usize, finish: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    // The messages are a little over `mb` MiB: the size limit leaves room for that.
    let extra = format!("[limits]\nmax_message_size = {}\n{limits}", (mb + 1) << 20);
    let (mut gw, addr) = start(dir.path(), &extra);
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789abc\r\n";
    let chunk: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 1024)
        .collect();
    let t = Instant::now();
    // Connected one after another (each greeted before the next), so a burst of a
    // thousand connects cannot overflow the listen queue; then all send at once.
    let greeted: Vec<(TcpStream, BufReader<TcpStream>)> = (0..sessions)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            // A stuck session fails the run instead of hanging it.
            s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(l.starts_with("220"), "greeting: {l}");
            (s, r)
        })
        .collect();
    let clients: Vec<_> = greeted
        .into_iter()
        .enumerate()
        .map(|(i, (mut s, mut r))| {
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                let mut reply = |s: &mut TcpStream, cmd: &str| {
                    if !cmd.is_empty() {
                        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
                    }
                    let mut l = String::new();
                    // Multi-line EHLO reply: read to the last line.
                    while r.read_line(&mut l).unwrap() > 0 && l.as_bytes().get(3) == Some(&b'-') {
                        l.clear();
                    }
                };
                reply(&mut s, "EHLO bench.test");
                reply(&mut s, "MAIL FROM:<b@bench.test>");
                reply(&mut s, &format!("RCPT TO:<u{i}@example.test>"));
                reply(&mut s, "DATA");
                let mut sent = 0;
                while sent < mb << 20 {
                    s.write_all(&chunk).unwrap();
                    sent += chunk.len();
                }
                // Unfinished: the connection stays open until the main thread is done.
                s
            })
        })
        .collect();
    let open: Vec<TcpStream> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = t.elapsed();
    // Let the gateway take in what is still in its socket buffers.
    std::thread::sleep(Duration::from_secs(2));
    let unfinished = peak_rss_mib(gw.id());
    let finished = finish.then(|| {
        let enders: Vec<_> = open
            .into_iter()
            .map(|mut s| {
                std::thread::spawn(move || {
                    s.write_all(b"\r\n.\r\n").unwrap();
                    let mut l = String::new();
                    BufReader::new(s).read_line(&mut l).unwrap();
                    l.starts_with("250")
                })
            })
            .collect();
        let accepted = enders
            .into_iter()
            .filter_map(|e| e.join().ok())
            .filter(|ok| *ok)
            .count();
        (peak_rss_mib(gw.id()), accepted)
    });
    let _ = gw.kill();
    let _ = gw.wait();
    Figures {
        unfinished,
        took,
        finished,
    }
}

fn report(name: &str, f: &Figures, sessions: usize) {
    println!(
        "{name}: peak RSS {:.0} MiB with every message unfinished ({:.1?})",
        f.unfinished, f.took
    );
    if let Some((peak, accepted)) = f.finished {
        println!("{name}: peak RSS {peak:.0} MiB once ended; {accepted}/{sessions} accepted (250)");
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sessions = env("SESSIONS", 200);
    let mb = env("MESSAGE_MB", 10);
    let finish = std::env::var("FINISH").is_ok();
    println!("{sessions} sessions x {mb} MiB of DATA each");
    let spilled = run("", sessions, mb, finish);
    report(
        "defaults (spill past 1 MiB, 128 MiB cap)",
        &spilled,
        sessions,
    );
    if std::env::var("DEFAULT_ONLY").is_ok() {
        return;
    }
    let held = run(
        "max_message_memory_mb = 1000000\nspill_threshold_kb = 1000000000\n",
        sessions,
        mb,
        finish,
    );
    report("all in memory", &held, sessions);
    println!(
        "ratio defaults / all in memory: {:.3}",
        spilled.unfinished / held.unfinished
    );
}
