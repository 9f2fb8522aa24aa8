//! Benchmarks live in `benches/`; run them with `cargo bench -p mailgate-bench`. This
//! library holds what the whole-process benchmarks share: starting the real gateway
//! binary and reading its peak resident set.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The gateway binary: `MAILGATE_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    std::env::var("MAILGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mailgate")
        })
}

/// A size from the environment (`SESSIONS=1000`), or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fixture plugins built for wasm32-wasip2 (as the tests build them).
pub fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        p.exists(),
        "{} missing: cargo build --release --target wasm32-wasip2 --manifest-path \
         tests/fixtures/Cargo.toml --target-dir target/wasm",
        p.display()
    );
    p
}

/// Reads a line-oriented number from `/proc/<pid>/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The peak resident set of process `pid` so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Starts the gateway in `dir` (Maildir, admin socket and config there) with `extra`
/// config appended; returns it and its SMTP address once it is ready.
pub fn start(dir: &Path, extra: &str) -> (Child, SocketAddr) {
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 5000\n\
             max_connections_per_ip = 5000\nwatch_interval_ms = 0\n\
             [delivery]\nmaildir = {:?}\n[admin]\nsocket = {:?}\nhttp = \"127.0.0.1:0\"\n\
             [dns]\nreverse_lookup = false\n{extra}",
            dir.join("mail").display().to_string(),
            dir.join("admin.sock").display().to_string()
        ),
    )
    .expect("write the config");
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("MAILGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the mailgate binary (cargo build -p mailgate, or MAILGATE_BIN)");
    let mut addr = None;
    let out = child.stdout.take().expect("stdout");
    for line in BufReader::new(out).lines() {
        let line = line.expect("gateway output");
        if let Some(a) = line.strip_prefix("listening smtp ") {
            addr = Some(a.parse().expect("address"));
        }
        if line == "ready" {
            break;
        }
    }
    (child, addr.expect("the gateway did not start"))
}

/// NSD serving `zones` (`(origin, zone text)`) on a loopback port, for benchmarks that
/// need real DNS answers; killed on drop.
pub struct Nsd {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it answers.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Nsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nsd").field("addr", &self.addr).finish()
    }
}

impl Nsd {
    /// Starts NSD and waits until it says it started.
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  server-count: 1\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  verbosity: 1\n\
             remote-control:\n  control-enable: no\n"
        );
        for (origin, text) in zones {
            std::fs::write(dir.path().join(format!("{origin}.zone")), text).expect("zone");
            conf.push_str(&format!(
                "zone:\n  name: {origin}\n  zonefile: {origin}.zone\n"
            ));
        }
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf).expect("nsd.conf");
        let mut child = Command::new("/usr/sbin/nsd")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsd (apt-get install nsd)");
        let err = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(err).lines();
        // Bounded by NSD's output: it says "nsd started" or exits.
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("nsd started") => break,
                Some(Ok(_)) => {}
                _ => panic!("nsd did not start"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Nsd {
            child,
            _dir: dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plugin spec for the benches: the component `file` (see [`fixture`]) granted
/// `capabilities`, with `config`, a 5 s deadline, a 64 MiB memory cap and the defaults
/// otherwise (instances reused).
pub fn plugin_spec(
    name: &str,
    file: &str,
    capabilities: &[mailgate::config::Capability],
    config: &[(&str, &str)],
) -> mailgate::config::PluginSpec {
    mailgate::config::PluginSpec {
        name: name.into(),
        path: fixture(file),
        sha256: None,
        on_error: mailgate::config::OnError::Tempfail,
        capabilities: capabilities.to_vec(),
        deadline: std::time::Duration::from_secs(5),
        memory: 64 << 20,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        literal_recipients: false,
        log_rate: (100, 65536),
        kv_quota: Default::default(),
        reuse_instances: true,
    }
}

/// A zone file for [`Nsd`]: `origin` with its SOA, NS and the name server's address,
/// then `records`.
pub fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 3600\n@ SOA ns hostmaster 1 3600 600 86400 3600\n@ NS ns\n\
         ns A 127.0.0.1\n{records}"
    )
}
