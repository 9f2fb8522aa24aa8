//! Peak memory of the gateway while many sessions each run a plugin that holds as much
//! linear memory as it may: the real binary, real sockets, the `memory-bomb` fixture
//! keeping `PLUGIN_MB` MiB per session (its instance cap is 32 MiB), every session held
//! open after its RCPT. Run twice in one go: with `chain.max_total_memory_mb = CAP_MB`
//! and with the cap lifted, so the figures are a ratio measured in the same run; each run
//! also counts the sessions whose plugin was refused (`451 4.7.0`).
//!
//! ```sh
//! cargo build -p mailgate
//! cargo build --release --target wasm32-wasip2 --manifest-path tests/fixtures/Cargo.toml --target-dir target/wasm
//! cargo bench -p mailgate-bench --bench hostile_plugins
//! # sizes: SESSIONS (default 200), PLUGIN_MB (default 16), CAP_MB (default 256)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use mailgate_bench::{env, fixture, peak_rss_mib, start};

/// Sessions, each holding its plugin's memory after RCPT; returns the peak RSS in MiB
/// and how many RCPTs were answered 250 and 451.
fn run(cap_mb: usize, sessions: usize, plugin_mb: usize) -> (f64, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[chain]\nmax_total_memory_mb = {cap_mb}\n[[plugin]]\nname = \"hog\"\npath = {:?}\n\
         limits = {{ memory_mb = 32 }}\nconfig = {{ mb = \"{plugin_mb}\" }}\n",
        fixture("memory-bomb").display().to_string()
    );
    let (mut gw, addr) = start(dir.path(), &extra);
    let mut open = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    // One after another: each session's plugin has grown before the next one starts.
    for i in 0..sessions {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut reply = |s: &mut TcpStream, cmd: &str| -> String {
            if !cmd.is_empty() {
                s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
            }
            let mut l = String::new();
            // Multi-line replies: read to the last line.
            while r.read_line(&mut l).unwrap() > 0 && l.as_bytes().get(3) == Some(&b'-') {
                l.clear();
            }
            l
        };
        reply(&mut s, "");
        reply(&mut s, "EHLO bench.test");
        reply(&mut s, "MAIL FROM:<b@bench.test>");
        let r = reply(&mut s, &format!("RCPT TO:<u{i}@example.test>"));
        if r.starts_with("250") {
            accepted += 1;
        } else if r.starts_with("451") {
            refused += 1;
        }
        open.push(s);
    }
    let peak = peak_rss_mib(gw.id());
    drop(open);
    let _ = gw.kill();
    let _ = gw.wait();
    (peak, accepted, refused)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sessions = env("SESSIONS", 200);
    let plugin_mb = env("PLUGIN_MB", 16);
    let cap = env("CAP_MB", 256);
    println!("{sessions} sessions, each plugin instance holding {plugin_mb} MiB");
    let (capped, a1, r1) = run(cap, sessions, plugin_mb);
    println!(
        "chain.max_total_memory_mb = {cap}: peak RSS {capped:.0} MiB; {a1} accepted, {r1} refused 451"
    );
    let (lifted, a2, r2) = run(1 << 20, sessions, plugin_mb);
    println!("cap lifted: peak RSS {lifted:.0} MiB; {a2} accepted, {r2} refused 451");
    println!("ratio capped / lifted: {:.3}", capped / lifted);
}
