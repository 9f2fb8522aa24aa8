//! Test support: the real `mailgate` binary on 127.0.0.1:0, a real upstream (aiosmtpd),
//! and real clients (Python smtplib, swaks). Readiness is read from the processes' own
//! output, never guessed with sleeps; every wait has a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single readiness wait may take.
pub const READY: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The workspace's target dir (`CARGO_TARGET_DIR`, else `target/`): everything a test
/// run builds or caches goes under it, never into the source tree.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"))
}

/// One target dir for every wasm32-wasip2 build of a test run (fixtures, the quick-start
/// plugin): the SDK and its dependencies are compiled once.
pub fn wasm_target_dir() -> PathBuf {
    target_dir().join("wasm")
}

/// One compile cache shared by every test gateway (`chain.compile_cache`), so no plugin
/// is compiled by cranelift twice in a run (entries are keyed by the file's SHA-256 and
/// written atomically, so concurrent gateways share it safely).
pub fn compile_cache() -> PathBuf {
    target_dir().join("test-compile-cache")
}

/// A soak-test size: `MAILGATE_SOAK_<NAME>` if set, else `full` when `MAILGATE_SOAK=full`
/// (the documented full run, docs/testing.md), else the smaller default every test run
/// uses.
pub fn soak(name: &str, default: usize, full: usize) -> usize {
    if let Some(n) = std::env::var(format!("MAILGATE_SOAK_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    match std::env::var("MAILGATE_SOAK").as_deref() {
        Ok("full") => full,
        _ => default,
    }
}

/// The mailgate binary: `MAILGATE_BIN`, else the workspace target dir (built once if absent).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MAILGATE_BIN") {
            return PathBuf::from(p);
        }
        let bin = target_dir().join("debug").join("mailgate");
        if !bin.exists() {
            let st = Command::new(env!("CARGO"))
                .args(["build", "-p", "mailgate", "--bin", "mailgate"])
                .current_dir(workspace())
                .status()
                .expect("cargo build");
            assert!(st.success(), "building mailgate failed");
        }
        bin
    })
    .clone()
}

pub fn peer(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script)
}

/// Reads lines from a child's pipe on a thread, so waits can have deadlines.
fn line_reader(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Parses one JSON value (a peer's or the CLI's output), naming the text if it is not JSON.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// Its config file.
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub smtps: Option<SocketAddr>,
    /// The first `[server.proxy_protocol] listen` address, if any.
    pub proxy: Option<SocketAddr>,
    /// The first `[server.proxy_protocol] listen_tls` address, if any.
    pub proxy_tls: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub maildir: PathBuf,
    stderr: PathBuf,
}

/// Builds a gateway config: `server` lines go into `[server]`, `rest` is appended as
/// further sections (a `[delivery]` there replaces the default maildir section).
#[derive(Default)]
pub struct Setup {
    pub server: String,
    pub rest: String,
    pub env: Vec<(String, String)>,
    pub tls_listener: bool,
    /// Run in this directory (config, spool, logs) instead of a new temp dir.
    pub dir: Option<PathBuf>,
    /// Listen on this port instead of an ephemeral one.
    pub port: Option<u16>,
    /// Extra arguments after `run --config FILE` (e.g. `--log-format json`).
    pub args: Vec<String>,
}

impl Setup {
    pub fn server(mut self, s: &str) -> Self {
        self.server.push_str(s);
        self.server.push('\n');
        self
    }
    pub fn section(mut self, s: &str) -> Self {
        self.rest.push_str(s);
        self.rest.push('\n');
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn tls_listener(mut self) -> Self {
        self.tls_listener = true;
        self
    }
    pub fn in_dir(mut self, dir: &Path, port: u16) -> Self {
        self.dir = Some(dir.to_path_buf());
        self.port = Some(port);
        self
    }
    pub fn start(self) -> Gateway {
        Gateway::start(self)
    }
}

impl Gateway {
    pub fn default_setup() -> Gateway {
        Setup::default().start()
    }

    fn start(setup: Setup) -> Gateway {
        let dir = match &setup.dir {
            Some(d) => tempfile::TempDir::with_prefix_in("gw-", d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let workdir = setup
            .dir
            .clone()
            .unwrap_or_else(|| dir.path().to_path_buf());
        let maildir = workdir.join("mail");
        let tls = if setup.tls_listener {
            "listen_tls = [\"127.0.0.1:0\"]\n"
        } else {
            ""
        };
        let mut cfg = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n{tls}{}\n",
            setup.port.unwrap_or(0),
            setup.server
        );
        if !setup.rest.contains("[delivery]") {
            cfg.push_str(&format!(
                "[delivery]\nmaildir = {:?}\n",
                maildir.display().to_string()
            ));
        }
        if !setup.rest.contains("[admin]") {
            cfg.push_str(&format!(
                "[admin]\nsocket = {:?}\nhttp = \"127.0.0.1:0\"\n",
                workdir.join("admin.sock").display().to_string()
            ));
        }
        if !setup.rest.contains("[dns]") {
            // Hermetic: no lookups against the machine's resolver unless a test asks.
            cfg.push_str("[dns]\nreverse_lookup = false\n");
        }
        cfg.push_str(&setup.rest);
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, cfg).unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(binary());
        cmd.args(["run", "--config"])
            .arg(&path)
            .args(&setup.args)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        // The soak sizes are the tests' knobs, not the gateway's: its `MAILGATE_` overrides
        // would take them for config keys and refuse to start.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MAILGATE_SOAK") {
                cmd.env_remove(k);
            }
        }
        if !setup.rest.contains("compile_cache") {
            cmd.env("MAILGATE_CHAIN__COMPILE_CACHE", compile_cache());
        }
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mailgate");
        let lines = line_reader(child.stdout.take().unwrap());
        let (mut smtp, mut smtps, mut proxy, mut proxy_tls) = (None, None, None, None);
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l == "ready" => break,
                Ok(l) => {
                    let parts: Vec<&str> = l.split_whitespace().collect();
                    if let ["listening", kind, addr] = parts[..] {
                        let a: SocketAddr = addr.parse().unwrap();
                        let slot = match kind {
                            "smtp" => &mut smtp,
                            "smtp-proxy" => &mut proxy,
                            "smtps-proxy" => &mut proxy_tls,
                            _ => &mut smtps,
                        };
                        slot.get_or_insert(a);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "mailgate not ready: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            }
        }
        Gateway {
            child,
            config: path,
            smtp: smtp.expect("smtp listener"),
            smtps,
            proxy,
            proxy_tls,
            dir,
            maildir,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> String {
        self.smtp.port().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Files delivered to `<maildir>/<domain>/<local>/new`.
    pub fn mailbox(&self, domain: &str, local: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir.join(domain).join(local).join("new");
        let mut files: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => return vec![],
        };
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// SIGTERM, then wait (bounded) for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        self.wait(Duration::from_secs(60))
            .expect("gateway exits after SIGTERM")
    }

    /// SIGKILL (`kill -9`): no shutdown, no flush, nothing.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// `mailgate queue --json --config <this gateway's config> ARGS…` as JSON.
    pub fn queue(&self, args: &[&str]) -> serde_json::Value {
        let cfg = self.config.display().to_string();
        let mut all = vec!["queue", "--json", "--config", cfg.as_str()];
        all.extend_from_slice(args);
        let (_, out, err) = mailgate(&all);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("mailgate queue {args:?}: {e}: {out} {err}"))
    }

    /// `mailgate status` of this gateway, polled (bounded: 200 × 50 ms) until `done` holds;
    /// the last answer either way. Counters move a moment after the effect a test can see
    /// from outside (a peer's 250 comes before the queue forgets the entry).
    pub fn status_when(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let cfg = self.config.display().to_string();
        let mut status = serde_json::Value::Null;
        for _ in 0..200 {
            let (ok, text, err) = mailgate(&["status", "--config", &cfg]);
            assert!(ok, "mailgate status: {err}");
            status = json(&text);
            if done(&status) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        status
    }

    /// `mailgate status` of this gateway, once.
    pub fn status(&self) -> serde_json::Value {
        self.status_when(|_| true)
    }

    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server (aiosmtpd, `peers/upstream.py`) for proxy mode.
pub struct Upstream {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
    stored: usize,
}

impl Upstream {
    pub fn start(args: &[&str]) -> Upstream {
        Self::start_in(tempfile::tempdir().unwrap(), args)
    }

    /// Starts on a given port (e.g. the one a stopped upstream had).
    pub fn start_on(port: u16, args: &[&str]) -> Upstream {
        let port = port.to_string();
        let mut all = vec!["--port", port.as_str()];
        all.extend_from_slice(args);
        Self::start_in(tempfile::tempdir().unwrap(), &all)
    }

    /// Waits (bounded) until it has stored at least `n` messages in all; true if so.
    pub fn wait_stored(&mut self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.stored < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(k) = l.strip_prefix("stored ") {
                        self.stored = k.trim().parse().unwrap_or(self.stored);
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Upstream {
        let mut child = Command::new("python3")
            .arg(peer("upstream.py"))
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 upstream.py");
        let lines = line_reader(child.stdout.take().unwrap());
        let line = lines.recv_timeout(READY).expect("upstream ready");
        let port = line
            .strip_prefix("port ")
            .expect("port line")
            .parse()
            .unwrap();
        Upstream {
            child,
            port,
            dir,
            lines,
            stored: 0,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Messages received so far: (raw bytes, envelope JSON).
    pub fn received(&self) -> Vec<(Vec<u8>, String)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.dir.path().join(format!("{n}.eml"));
            if !eml.exists() {
                break;
            }
            let meta = std::fs::read_to_string(self.dir.path().join(format!("{n}.json"))).unwrap();
            out.push((std::fs::read(eml).unwrap(), meta));
        }
        out
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `peers/client.py` (smtplib) and returns its JSON output as text.
pub fn smtplib(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(peer("client.py"))
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs swaks; returns (success, transcript).
pub fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(args)
        .output()
        .expect("swaks is installed (.ci/setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// A raw SMTP connection for protocol cases no ordinary client will send.
pub struct Raw {
    pub s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).unwrap())
    }

    /// Connects from `source` (another loopback address, 127.x.y.z), as a client of
    /// another network would.
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> Raw {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind a loopback source address");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(10))
            .expect("connect");
        Raw::over(socket.into())
    }

    fn over(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Raw { s, r }
    }

    /// Reads one complete (possibly multi-line) reply; "" on EOF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        for _ in 0..100 {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                break;
            }
        }
        all
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True once the server has closed the connection (bounded by the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.r.read(&mut buf), Ok(0))
    }

    /// True once the server has closed the connection without sending anything, in
    /// either way a close arrives: end of stream, or a reset (a server that closes with
    /// our octets still unread in its socket resets the connection). Bounded by the read
    /// timeout.
    pub fn gone(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.r.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        }
    }
}

/// A PROXY protocol v2 header (proxy-protocol.txt 2.2) written out from the
/// specification: signature, version 2 with `command` (0 LOCAL, 1 PROXY), address family
/// and transport, length, then `body`.
pub fn proxy_v2_raw(command: u8, family_proto: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family_proto);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// A PROXY protocol v2 header for a TCP connection from `client` to `server` (`ip:port`,
/// one address family), as a load balancer sends it.
pub fn proxy_v2(client: &str, server: &str) -> Vec<u8> {
    let (c, s): (SocketAddr, SocketAddr) = (client.parse().unwrap(), server.parse().unwrap());
    let mut body = Vec::new();
    let family = match (c.ip(), s.ip()) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            body.extend_from_slice(&a.octets());
            body.extend_from_slice(&b.octets());
            0x11
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
            body.extend_from_slice(&a.octets());
            body.extend_from_slice(&b.octets());
            0x21
        }
        _ => panic!("client and server of one address family"),
    };
    body.extend_from_slice(&c.port().to_be_bytes());
    body.extend_from_slice(&s.port().to_be_bytes());
    proxy_v2_raw(0x1, family, &body)
}

/// A real HAProxy (Debian's package) in TCP mode in front of a gateway: each frontend on
/// its own loopback port forwards to `backend` with the given `server` line options
/// (e.g. `send-proxy-v2 check check-send-proxy`) and backend lines. Ready when every
/// frontend accepts connections; stopped on drop.
pub struct Haproxy {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The frontends' addresses, in the order given.
    pub frontends: Vec<SocketAddr>,
}

impl Haproxy {
    /// `backends`: per frontend, `(extra backend lines, server options)` towards
    /// `target`.
    pub fn start(target: SocketAddr, backends: &[(&str, &str)]) -> Haproxy {
        assert!(
            Path::new("/usr/sbin/haproxy").exists(),
            "haproxy is not installed (.ci/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailgate-haproxy-")
            .tempdir()
            .unwrap();
        let mut cfg = String::from(
            "global\n    maxconn 100\n    log stderr format raw local0 info\n\
             defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n    timeout check 5s\n",
        );
        let mut frontends = Vec::new();
        for (i, (lines, server)) in backends.iter().enumerate() {
            let port = free_port();
            frontends.push(SocketAddr::from(([127, 0, 0, 1], port)));
            cfg.push_str(&format!(
                "frontend f{i}\n    bind 127.0.0.1:{port}\n    default_backend b{i}\n\
                 backend b{i}\n{lines}\n    server gw {target} {server}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let mut child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        // HAProxy says nothing when it is ready: its frontends accepting is the signal
        // (bounded: 200 x 50 ms).
        for addr in &frontends {
            let mut up = false;
            for _ in 0..200 {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!(
                        "haproxy exited ({st}):\n{}",
                        std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
                    );
                }
                if TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(up, "haproxy frontend {addr} not accepting");
        }
        Haproxy {
            child,
            dir,
            frontends,
        }
    }

    /// What HAProxy wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Octets as lower-case hex (for `client.py --proxy`).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `cargo build --release --target wasm32-wasip2` of the crate or workspace at
/// `manifest`, into [`wasm_target_dir`]; returns the directory holding the `.wasm` files.
/// Cargo's lock on the target dir serialises concurrent test processes, and a build that
/// is up to date costs well under a second.
pub fn build_wasm(manifest: &Path) -> PathBuf {
    let target = wasm_target_dir();
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("cargo build (wasm32-wasip2)");
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("wasm32-wasip2").join("release")
}

/// Builds the fixture plugins (tests/fixtures) once per test process and returns the
/// directory holding the `.wasm` files.
pub fn fixtures() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_wasm(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join("Cargo.toml"),
        )
    })
    .clone()
}

/// The `.wasm` of one fixture crate (`reject-rcpt` → `reject_rcpt.wasm`).
pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "fixture {name} not built at {}", p.display());
    p
}

/// The `.wasm` of a shipped plugin (`plugins/<name>` → `mailgate_<name>.wasm`), built
/// once per test process as `plugins/build` builds them.
pub fn shipped(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        build_wasm(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../plugins")
                .join("Cargo.toml"),
        )
    });
    let p = dir.join(format!("mailgate_{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "plugin {name} not built at {}", p.display());
    p
}

/// A `[[plugin]]` table for a fixture.
pub fn plugin_toml(name: &str, fixture_name: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\npath = {:?}\n{extra}\n",
        fixture(fixture_name).display().to_string()
    )
}

/// Runs the mailgate binary with arguments; returns (success, stdout, stderr). Plugins it
/// loads are compiled into the shared test compile cache, not under the working directory.
pub fn mailgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("MAILGATE_CHAIN__COMPILE_CACHE", compile_cache())
        .output()
        .expect("run mailgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ------------------------------------------------------------------ Postfix as upstream

/// A private Postfix instance (Debian's package) as a real next hop: its own config
/// directory, queue and log in a temp dir, `smtpd` on 127.0.0.1 only, delivering with the
/// `virtual` agent into `<dir>/mail/<domain>/<local>/` maildirs for the listed addresses
/// (any other recipient is refused at RCPT with Postfix's own 550 5.1.1). Nothing is ever
/// sent on: `default_transport` is `error`.
#[derive(Debug)]
pub struct Postfix {
    /// The temp dir holding `conf/`, `queue/`, `data/`, `mail/` and `maillog`.
    pub dir: tempfile::TempDir,
    /// Where its smtpd listens.
    pub addr: SocketAddr,
    running: bool,
}

impl Postfix {
    /// Writes the instance's main.cf/master.cf and runs `postfix -c DIR start`, which
    /// returns once the master process has bound its listener.
    ///
    /// master.cf needs a fixed port: one is taken from the OS (bound and released) just
    /// before, so another process could in principle grab it in between.
    pub fn start(mailboxes: &[&str]) -> Postfix {
        Postfix::start_with(mailboxes, "")
    }

    /// [`Postfix::start`] with more `main.cf` lines (`name = value`, one per line) after
    /// the instance's own, e.g. `smtpd_authorized_xclient_hosts = 127.0.0.0/8`.
    pub fn start_with(mailboxes: &[&str], main_cf_extra: &str) -> Postfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "postfix is not installed (.ci/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailgate-postfix-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        // Postfix daemons run as `postfix`/`nobody` and must reach paths below the dir.
        let chmod = Command::new("chmod").arg("755").arg(d).status().unwrap();
        assert!(chmod.success());
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let chown = Command::new("chown")
            .arg("nobody")
            .arg(d.join("mail"))
            .status()
            .unwrap();
        assert!(chown.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maps: Vec<String> = mailboxes
            .iter()
            .map(|a| {
                let (local, domain) = a.rsplit_once('@').expect("address");
                format!("{a}={domain}/{local}/")
            })
            .collect();
        let domains: Vec<&str> = mailboxes
            .iter()
            .map(|a| a.rsplit_once('@').unwrap().1)
            .collect();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = upstream.postfix.test\n\
             mydomain = postfix.test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             local_header_rewrite_clients =\n\
             alias_maps =\n\
             alias_database =\n\
             default_transport = error:this test instance sends nothing on\n\
             relay_transport = error:this test instance sends nothing on\n\
             smtp_dns_support_level = disabled\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             virtual_mailbox_domains = {domains}\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = inline:{{ {maps} }}\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534\n\
             smtpd_banner = $myhostname ESMTP Postfix\n\
             biff = no\n\
             {main_cf_extra}\n",
            d = d.display(),
            domains = domains.join(", "),
            maps = maps.join(", "),
        );
        std::fs::write(d.join("conf/main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             tlsmgr unix - - n 1000? 1 tlsmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             local unix - n n - - local\n\
             virtual unix - n n - - virtual\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(d.join("conf/master.cf"), master_cf).unwrap();
        let mut pf = Postfix {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            running: false,
        };
        for action in ["check", "start"] {
            let (st, out, err) = pf.postfix(action);
            assert!(
                st.success(),
                "postfix {action} failed:\n{out}{err}\nmaillog:\n{}",
                pf.maillog()
            );
            pf.running = action == "start";
        }
        pf
    }

    fn postfix(&self, action: &str) -> (std::process::ExitStatus, String, String) {
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg(action)
            .output()
            .expect("run postfix");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Waits until the log has `count` lines containing `needle` (delivery by the queue
    /// manager happens after smtpd's 250). Postfix gives no other signal, so this re-reads
    /// the log file every 50 ms, bounded by `timeout`.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.maillog().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Files delivered to `<domain>/<local>/new`.
    pub fn mailbox(&self, domain: &str, local: &str) -> Vec<Vec<u8>> {
        let dir = self
            .dir
            .path()
            .join("mail")
            .join(domain)
            .join(local)
            .join("new");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => return vec![],
        };
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).expect("read"))
            .collect()
    }

    /// `postfix stop` (bounded).
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let (st, _, _) = self.postfix("stop");
            if !st.success() {
                let _ = self.postfix("abort");
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let mut cmd = Command::new("/usr/sbin/postfix");
            cmd.arg("-c").arg(self.dir.path().join("conf")).arg("abort");
            let _ = cmd.status();
        }
    }
}

// ------------------------------------------------------------------ NSD as the DNS server

/// A private NSD (NLnet Labs' authoritative server, Debian's package) on 127.0.0.1,
/// serving the given zones (`(origin, zone file text)`) over UDP and TCP from a temp dir.
/// Ready when NSD logs "nsd started"; stopped on drop.
pub struct Nsd {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:port`, for `dns.servers`.
    pub addr: SocketAddr,
}

/// A TCP port on 127.0.0.1 where nothing answers: bound (so no other process can take it)
/// but not listening, so a connection is refused. Held as long as the value lives.
pub struct DeadPort {
    _socket: socket2::Socket,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind");
        let port = socket
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("inet address")
            .port();
        DeadPort {
            _socket: socket,
            port,
        }
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 at the time of the call (taken from the
/// OS and released, so another process could in principle grab it before it is used).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

impl Nsd {
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        assert!(
            Path::new("/usr/sbin/nsd").exists(),
            "nsd is not installed (.ci/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailgate-nsd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  server-count: 1\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  verbosity: 1\n\
             remote-control:\n  control-enable: no\n"
        );
        for (origin, text) in zones {
            let file = format!("{origin}.zone");
            std::fs::write(dir.path().join(&file), text).unwrap();
            conf.push_str(&format!("zone:\n  name: {origin}\n  zonefile: {file}\n"));
        }
        let conf_path = dir.path().join("nsd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("/usr/sbin/nsd")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsd");
        let lines = line_reader(child.stderr.take().unwrap());
        let deadline = Instant::now() + READY;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains("nsd started") => break,
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("nsd not ready:\n{seen}");
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Nsd {
            child,
            dir,
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

// ------------------------------------------------------------------ Redis for shared kv

/// A private Redis server (Debian's `redis-server`) on 127.0.0.1, on its own port and in
/// its own temp dir, without persistence (no snapshots, no append-only file): ready when
/// it logs "Ready to accept connections". [`Redis::stop`] kills it (as a crash would),
/// [`Redis::start_again`] brings it back empty on the same port, [`Redis::pause`] and
/// [`Redis::resume`] freeze it (SIGSTOP/SIGCONT: connections are accepted by the kernel
/// but nothing answers). Killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        assert!(
            Path::new("/usr/bin/redis-server").exists(),
            "redis-server is not installed (.ci/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailgate-redis-")
            .tempdir()
            .unwrap();
        let mut redis = Redis {
            child: None,
            dir,
            port: free_port(),
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:PORT/0`, for `[kv] redis_url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (after [`Redis::stop`]), empty, on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let mut child = Command::new("/usr/bin/redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--logfile", "", "--loglevel", "notice"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let lines = line_reader(child.stdout.take().unwrap());
        let deadline = Instant::now() + READY;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains("Ready to accept connections") => break,
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server not ready:\n{seen}");
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Freezes the server (SIGSTOP): it stops answering without closing anything.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// `redis-cli -p PORT ARGS…`: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen server does not die of SIGKILL any later than a running one, but
            // let it run so nothing is left stopped.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}
