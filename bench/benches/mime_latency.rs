//! How long other clients wait for their greeting while plugins parse huge MIME messages:
//! the real binary, real sockets. `LOADERS` clients each send a message of `PARTS` tiny
//! MIME parts (about 4 MB) to a gateway whose plugin (`header-adder` with
//! `parts = "count"`) lists the parts; meanwhile a prober connects `PROBES` times and
//! times each greeting. The same probes against the idle gateway, in the same run, are
//! the baseline.
//!
//! ```sh
//! cargo build -p mailgate
//! cargo build --release --target wasm32-wasip2 --manifest-path tests/fixtures/Cargo.toml --target-dir target/wasm
//! cargo bench -p mailgate-bench --bench mime_latency
//! # LOADERS (default 4), PARTS (default 150000), PROBES (default 200: idle, and at least under load)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mailgate_bench::{env, fixture, start};

/// The greeting latency of one new connection.
fn greeting(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut l = String::new();
    BufReader::new(s).read_line(&mut l).unwrap();
    assert!(l.starts_with("220"), "{l}");
    t.elapsed()
}

/// Greeting latencies of connections one after another while `go` holds (at least
/// `min`, at most 20 000), sorted.
fn probe(addr: SocketAddr, min: usize, go: impl Fn() -> bool) -> Vec<Duration> {
    let mut out = Vec::new();
    while out.len() < 20_000 && (out.len() < min || go()) {
        out.push(greeting(addr));
    }
    out.sort();
    out
}

fn summary(d: &[Duration]) -> String {
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(d[d.len() / 2]),
        ms(d[d.len() * 99 / 100]),
        ms(d[d.len() - 1])
    )
}

/// A client sending one message of `parts` MIME parts; returns its final reply.
fn load(addr: SocketAddr, parts: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut reply = |s: &mut TcpStream, cmd: &[u8]| -> String {
        s.write_all(cmd).unwrap();
        let mut l = String::new();
        while r.read_line(&mut l).unwrap() > 0 && l.as_bytes().get(3) == Some(&b'-') {
            l.clear();
        }
        l
    };
    reply(&mut s, b"");
    reply(&mut s, b"EHLO load.test\r\n");
    reply(&mut s, b"MAIL FROM:<l@load.test>\r\n");
    reply(&mut s, b"RCPT TO:<u@example.test>\r\n");
    reply(&mut s, b"DATA\r\n");
    let mut m =
        b"Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            .to_vec();
    for _ in 0..parts {
        m.extend_from_slice(b"--b\r\n\r\nx\r\n");
    }
    m.extend_from_slice(b"--b--\r\n.\r\n");
    reply(&mut s, &m)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let loaders = env("LOADERS", 4);
    let parts = env("PARTS", 150_000);
    let probes = env("PROBES", 200);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[plugin]]\nname = \"counter\"\npath = {:?}\nlimits = {{ deadline_ms = 60000 }}\n\
         config = {{ parts = \"count\" }}\n",
        fixture("header-adder").display().to_string()
    );
    let (mut gw, addr) = start(dir.path(), &extra);
    let idle = probe(addr, probes, || false);
    println!("idle gateway: greeting {}", summary(&idle));
    let t = Instant::now();
    let loads: Vec<_> = (0..loaders)
        .map(|_| std::thread::spawn(move || load(addr, parts)))
        .collect();
    // Probe until every loader has its reply: through the sending and the parsing.
    let busy = probe(addr, probes, || loads.iter().any(|l| !l.is_finished()));
    let replies: Vec<String> = loads.into_iter().map(|l| l.join().unwrap()).collect();
    println!(
        "{loaders} clients sending {parts}-part messages ({:.1?}; replies {:?})",
        t.elapsed(),
        replies
            .iter()
            .map(|r| r.get(..3).unwrap_or(""))
            .collect::<Vec<_>>()
    );
    println!(
        "meanwhile ({} probes): greeting {}",
        busy.len(),
        summary(&busy)
    );
    let _ = gw.kill();
    let _ = gw.wait();
}
