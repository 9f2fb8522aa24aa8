#!/usr/bin/env python3
"""End-to-end relay benchmark (issue 26), driven by bench/e2e/run.

smtp-source -> relay -> smtp-sink on loopback, for seven targets: the ceiling (no relay),
Postfix, Haraka, and mailgate in proxy and queue mode with and without the shipped auth,
spam-score and routing plugins. Per message size and client concurrency: messages/s
counted at the sink, CPU per message of the relay's whole process tree, peak memory;
then end-of-DATA -> 250 latency at a fixed offered load; then an idle-connections run.
Writes bench/var/e2e-results-<date>.{md,json}. Python 3 standard library only.

Every process it starts is in its own session and is stopped at exit (also on SIGINT /
SIGTERM); every wait is bounded. Settings come from the environment (see README.md).
"""

import asyncio
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "bench" / "var"


def env_str(name, default):
    v = os.environ.get(name, "")
    return v if v != "" else default


def env_int(name, default):
    return int(env_str(name, str(default)))


def env_float(name, default):
    return float(env_str(name, str(default)))


def env_list(name, default):
    return [x.strip() for x in env_str(name, default).split(",") if x.strip()]


QUICK = env_str("BENCH_QUICK", "0") == "1"
MESSAGES = env_int("BENCH_MESSAGES", 100 if QUICK else 3000)
SIZES_KB = [int(x) for x in env_list("BENCH_SIZES", "1,10,100")]
SESSIONS = [int(x) for x in env_list("BENCH_SESSIONS", "10,50")]
WARMUP = env_int("BENCH_WARMUP", 20 if QUICK else 200)
LAT_SECS = env_float("BENCH_LATENCY_SECS", 2 if QUICK else 10)
LAT_CONNS = env_int("BENCH_LATENCY_CONNECTIONS", 10)
LAT_SIZE_KB = env_int("BENCH_LATENCY_SIZE", 10)
LAT_RATE = env_float("BENCH_LATENCY_RATE", 0)  # 0: half of Postfix's maximum at 10 KB
IDLE = env_int("BENCH_IDLE", 300 if QUICK else 10000)
IDLE_MAX_CONNS = env_int("BENCH_IDLE_MAX_CONNECTIONS", 0)  # 0: BENCH_IDLE + 50
# sessions being opened at once in the idle run (a storm of new sessions is not its point)
IDLE_OPENING = env_int("BENCH_IDLE_OPENING", 20)
IDLE_POSTFIX = env_int("BENCH_IDLE_POSTFIX", 100 if QUICK else 1000)
RUN_TIMEOUT = env_float("BENCH_RUN_TIMEOUT", 120 if QUICK else 600)
QUIET_LOGS = env_str("BENCH_QUIET_LOGS", "0") == "1"
KEEP = env_str("BENCH_KEEP", "0") == "1"
SAMPLE_SECS = env_float("BENCH_SAMPLE_SECS", 0.2)
ALL_TARGETS = [
    "ceiling",
    "postfix",
    "haraka",
    "mailgate-proxy",
    "mailgate-proxy-plugins",
    "mailgate-queue",
    "mailgate-queue-plugins",
]
TARGETS = [t for t in env_list("BENCH_TARGETS", ",".join(ALL_TARGETS)) if t != "none"]
IDLE_TARGETS = env_list("BENCH_IDLE_TARGETS", "mailgate-queue-plugins,postfix")
MAILGATE = Path(env_str("MAILGATE_BIN", str(ROOT / "target/release/mailgate")))
PLUGINS = ROOT / "target/wasm/wasm32-wasip2/release"
HARAKA = VAR / "haraka/node_modules/Haraka/bin/haraka"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
NSD = shutil.which("nsd") or "/usr/sbin/nsd"
POSTFIX = "/usr/sbin/postfix"

SENDER = "sender@bench.test"
RECIPIENT = "user@rcpt.bench.test"
HELO = "client.bench.test"

LABELS = {
    "ceiling": "ceiling (smtp-source → smtp-sink)",
    "postfix": "Postfix relay",
    "haraka": "Haraka smtp_forward",
    "mailgate-proxy": "mailgate proxy",
    "mailgate-proxy-plugins": "mailgate proxy + 3 plugins",
    "mailgate-queue": "mailgate queue",
    "mailgate-queue-plugins": "mailgate queue + 3 plugins",
}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_STREAM):
    """A port the OS had free a moment ago (bound and released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline(Exception):
    """A bounded wait ran out."""


# ------------------------------------------------------------------ processes and cleanup


class Procs:
    """Every process the driver starts (each in its own session) and cleanup actions."""

    def __init__(self):
        self.procs = []
        self.cleanups = []
        self.done = False

    def spawn(self, cmd, cgroup=None, **kw):
        """Starts cmd in a new session; in `cgroup` (entered before exec) if given."""
        if cgroup is not None:
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup.procs_file] + [
                str(c) for c in cmd
            ]
        p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=10):
        """SIGTERM to p's process group, SIGKILL after `timeout`."""
        if p.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self):
        if self.done:
            return
        self.done = True
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: {e}")
        for p in reversed(list(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: {e}")


PROCS = Procs()
atexit.register(PROCS.cleanup)


def on_signal(signum, _frame):
    log(f"signal {signum}: cleaning up")
    PROCS.cleanup()
    os._exit(128 + signum)


for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, on_signal)


def run_cmd(cmd, timeout=120, **kw):
    """Runs a short command to completion, bounded."""
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )


# ------------------------------------------------------------------ CPU and memory meters


def read_stat(pid):
    """(utime+stime, cutime+cstime) of pid in seconds, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2 :].split()
    tck = os.sysconf("SC_CLK_TCK")
    # fields[0] is state (field 3); utime is field 14 -> index 11.
    return (int(fields[11]) + int(fields[12])) / tck, (int(fields[13]) + int(fields[14])) / tck


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root):
    """root and its descendants (none if root is gone)."""
    if not os.path.exists(f"/proc/{root}"):
        return []
    kids = children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def read_mem(pid):
    """(Rss, Pss) of pid in KiB from smaps_rollup (0, 0 if it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Cgroup:
    """A cgroup of our own (v2 `cpu.stat`, or v1 `cpuacct`) holding a relay's processes:
    its CPU counter covers every process ever in it, reaped or daemonized ones too."""

    @staticmethod
    def create(name):
        if env_str("BENCH_NO_CGROUP", "0") == "1":
            return None
        cands = []
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            cands.append(("v2", "/sys/fs/cgroup"))
        if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs"):
            cands.append(("v2", "/sys/fs/cgroup/unified"))
        if os.path.exists("/sys/fs/cgroup/cpuacct/cpuacct.usage"):
            cands.append(("v1", "/sys/fs/cgroup/cpuacct"))
        for kind, base in cands:
            d = Path(base) / f"mailgate-e2e-{os.getpid()}-{name}"
            try:
                d.mkdir()
            except OSError:
                continue
            cg = Cgroup(kind, d)
            try:
                cg.cpu_seconds()
                with open(cg.procs_file, "a"):
                    pass
            except OSError:
                cg.remove()
                continue
            return cg
        return None

    def __init__(self, kind, path):
        self.kind = kind
        self.path = path
        self.procs_file = str(path / "cgroup.procs")
        PROCS.cleanups.append(self.remove)

    def method(self):
        return f"cgroup {self.kind} ({'cpu.stat' if self.kind == 'v2' else 'cpuacct.usage'})"

    def cpu_seconds(self):
        if self.kind == "v2":
            with open(self.path / "cpu.stat") as f:
                for line in f:
                    if line.startswith("usage_usec"):
                        return int(line.split()[1]) / 1e6
            raise OSError("no usage_usec")
        with open(self.path / "cpuacct.usage") as f:
            return int(f.read()) / 1e9

    def pids(self):
        try:
            with open(self.procs_file) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def kill_all(self):
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self):
        if not self.path.exists():
            return
        self.kill_all()
        for _ in range(100):  # bounded: 5 s
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)


class TreeMeter:
    """Without a cgroup: the process tree under a root pid, utime+stime of the live
    processes plus cutime+cstime (their reaped children)."""

    def __init__(self, root_fn):
        self.root_fn = root_fn

    def method(self):
        return "/proc tree (utime+stime+cutime+cstime)"

    def pids(self):
        root = self.root_fn()
        return tree(root) if root else []

    def cpu_seconds(self):
        total = 0.0
        for pid in self.pids():
            st = read_stat(pid)
            if st:
                total += st[0] + st[1]
        return total


class Sampler(threading.Thread):
    """Samples the summed Rss and Pss of a meter's processes every SAMPLE_SECS."""

    def __init__(self, meter):
        super().__init__(daemon=True)
        self.meter = meter
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.peak_rss = self.peak_pss = 0

    def sample(self):
        rss = pss = 0
        for pid in self.meter.pids():
            r, p = read_mem(pid)
            rss += r
            pss += p
        return rss, pss

    def reset(self):
        with self.lock:
            self.peak_rss = self.peak_pss = 0

    def peaks(self):
        with self.lock:
            return self.peak_rss, self.peak_pss

    def sample_now(self):
        rss, pss = self.sample()
        with self.lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)

    def run(self):
        while not self.stop_ev.is_set():
            self.sample_now()
            self.stop_ev.wait(SAMPLE_SECS)

    def stop(self):
        self.stop_ev.set()
        self.join(timeout=5)


# ------------------------------------------------------------------ SMTP helpers


def wait_banner(port, timeout=60, host="127.0.0.1"):
    """Waits until host:port answers with a 220 greeting (then QUITs)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                data = b""
                while b"\n" not in data:
                    b = s.recv(512)
                    if not b:
                        break
                    data += b
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = data
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise Deadline(f"no SMTP greeting on {host}:{port} within {timeout}s ({last!r})")


class Sink:
    """smtp-sink on a loopback port, counting the messages it received (its -c output)."""

    def __init__(self, max_conns=1024):
        self.port = free_port()
        self.count = 0
        self.cond = threading.Condition()
        self.proc = PROCS.spawn(
            [SMTP_SINK, "-c", "-u", "nobody", "-m", max_conns, f"127.0.0.1:{self.port}", 4096],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_banner(self.port, timeout=30)

    def _read(self):
        buf = b""
        pat = re.compile(rb"mesg=(\d+)")
        while True:
            b = self.proc.stdout.read1(65536)
            if not b:
                break
            buf += b
            cut = max(buf.rfind(b"\r"), buf.rfind(b"\n"))
            if cut < 0:
                continue
            found = pat.findall(buf[:cut])
            buf = buf[cut + 1 :]
            if found:
                with self.cond:
                    self.count = int(found[-1])
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def get(self):
        with self.cond:
            return self.count

    def wait_for(self, n, timeout):
        """Waits (bounded) until the sink has counted n messages; True if it has."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self.cond.wait(min(left, 1.0))
            return True

    def cpu_seconds(self):
        st = read_stat(self.proc.pid)
        return st[0] if st else 0.0

    def stop(self):
        PROCS.stop(self.proc)


def smtp_source(port, size, sessions, count):
    """Runs smtp-source (bounded); returns (exit status, its CPU seconds, output)."""
    cmd = [
        SMTP_SOURCE,
        "-s", sessions, "-l", size, "-m", count,
        "-M", HELO, "-f", SENDER, "-t", RECIPIENT, "-S", "e2e bench",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    p = PROCS.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True).start()
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            PROCS.stop(p)
            return -1, 0.0, f"smtp-source timed out after {RUN_TIMEOUT}s"
        time.sleep(0.005)
    PROCS.procs.remove(p)
    time.sleep(0.01)
    text = (out[0] if out else b"").decode(errors="replace")
    return p.returncode, ru.ru_utime + ru.ru_stime, text


# ------------------------------------------------------------------ DNS (NSD on loopback)

ZONE = """$ORIGIN test.
$TTL 3600
@                IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600
@                IN NS  ns.bench.test.
ns.bench         IN A   127.0.0.1
bench            IN A   127.0.0.1
bench            IN MX  10 mx.bench.test.
mx.bench         IN A   127.0.0.1
bench            IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.bench     IN TXT "v=DMARC1; p=none"
client.bench     IN A   127.0.0.1
client.bench     IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
rcpt.bench       IN MX  10 mx.bench.test.
"""
# NSD is authoritative for all of test. (a DMARC tree walk asks _dmarc.test, which must be
# an NXDOMAIN, not a refusal). The DNSBL (bl.bench.test) and URIBL (ubl.bench.test) list
# nothing: every query is a cached NXDOMAIN (negative TTL from the SOA).
REVERSE_ZONE = """$ORIGIN 127.in-addr.arpa.
$TTL 3600
@   IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600
@   IN NS  ns.bench.test.
*   IN PTR client.bench.test.
"""


class Nsd:
    """NSD serving test. (bench.test) and 127.in-addr.arpa on a loopback port (as bench/src/lib.rs)."""

    def __init__(self, workdir):
        d = Path(workdir) / "nsd"
        d.mkdir()
        self.port = free_port(socket.SOCK_DGRAM)
        conf = (
            f"server:\n  ip-address: 127.0.0.1\n  port: {self.port}\n  server-count: 1\n"
            f'  username: ""\n  chroot: ""\n  zonesdir: "{d}"\n  database: ""\n'
            f'  zonelistfile: "{d}/zone.list"\n  xfrdfile: "{d}/xfrd.state"\n'
            f'  xfrdir: "{d}"\n  pidfile: "{d}/nsd.pid"\n  verbosity: 1\n'
            # no response rate limiting: the idle run asks thousands of NXDOMAINs a second
            "  rrl-ratelimit: 0\n"
            "remote-control:\n  control-enable: no\n"
        )
        for origin, text in (("test", ZONE), ("127.in-addr.arpa", REVERSE_ZONE)):
            (d / f"{origin}.zone").write_text(text)
            conf += f"zone:\n  name: {origin}\n  zonefile: {origin}.zone\n"
        (d / "nsd.conf").write_text(conf)
        self.proc = PROCS.spawn(
            [NSD, "-d", "-c", d / "nsd.conf"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = threading.Event()

        def read():
            for line in self.proc.stderr:
                if b"nsd started" in line:
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(30):
            raise Deadline("nsd did not start within 30 s")


# ------------------------------------------------------------------ targets


class Target:
    """A relay under test: start(sink_port) returns its SMTP port."""

    name = ""
    meter = None  # Cgroup or TreeMeter; None for the ceiling

    def __init__(self, workdir):
        self.dir = Path(workdir) / self.name
        self.dir.mkdir()

    def start(self, sink_port):
        raise NotImplementedError

    def stop(self):
        pass

    def version(self):
        return ""

    def make_meter(self, root_fn):
        cg = Cgroup.create(self.name)
        return cg if cg else TreeMeter(root_fn)


class Ceiling(Target):
    name = "ceiling"

    def start(self, sink_port):
        return sink_port


class PostfixTarget(Target):
    name = "postfix"

    def __init__(self, workdir, smtpd_limit=100):
        super().__init__(workdir)
        self.smtpd_limit = smtpd_limit
        self.running = False

    def version(self):
        r = run_cmd(["postconf", "-d", "-h", "mail_version"])
        return "Postfix " + r.stdout.strip()

    def master_pid(self):
        try:
            return int((self.dir / "queue/pid/master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def postfix(self, action):
        return run_cmd([POSTFIX, "-c", self.dir / "conf", action], timeout=60)

    def start(self, sink_port):
        d = self.dir
        os.chmod(d, 0o755)
        for sub in ("conf", "queue", "data"):
            (d / sub).mkdir()
        shutil.chown(d / "data", "postfix")
        port = free_port()
        limit = self.smtpd_limit
        # smtpd resolves each client's name with the system resolver: 127.0.0.1 is in
        # /etc/hosts, but the idle run's 127.10.x.y would be asked of resolv.conf's servers.
        peername = "smtpd_peername_lookup = no\n" if limit > 100 else ""
        (d / "conf/main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:no local delivery in the bench
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
alias_maps =
alias_database =
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
default_process_limit = {max(100, limit)}
biff = no
smtpd_banner = $myhostname ESMTP Postfix
{peername}"""
        )
        (d / "conf/master.cf").write_text(
            f"""127.0.0.1:{port} inet n - n - {limit} smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""
        )
        r = self.postfix("check")
        if r.returncode != 0:
            raise RuntimeError(f"postfix check: {r.stdout}{r.stderr}")
        self.meter = self.make_meter(self.master_pid)
        cmd = [POSTFIX, "-c", d / "conf", "start"]
        if isinstance(self.meter, Cgroup):
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.meter.procs_file] + [
                str(c) for c in cmd
            ]
        r = run_cmd(cmd, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start: {r.stdout}{r.stderr}\n{self.maillog()}")
        self.running = True
        PROCS.cleanups.append(self.stop)
        wait_banner(port)
        return port

    def maillog(self):
        try:
            return (self.dir / "maillog").read_text()[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.running:
            self.running = False
            r = self.postfix("stop")
            if r.returncode != 0:
                self.postfix("abort")
            # `postfix stop` returns before every daemon has exited.
            deadline = time.monotonic() + 10
            while self.meter.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            if isinstance(self.meter, Cgroup):
                self.meter.remove()
        elif isinstance(self.meter, Cgroup):
            self.meter.remove()


class HarakaTarget(Target):
    name = "haraka"

    def __init__(self, workdir, nsd_port):
        super().__init__(workdir)
        self.nsd_port = nsd_port

    def version(self):
        try:
            pkg = json.loads((HARAKA.parent.parent / "package.json").read_text())
            node = run_cmd(["node", "--version"]).stdout.strip()
            return f"Haraka {pkg['version']} (node {node})"
        except (OSError, ValueError):
            return "Haraka ?"

    def start(self, sink_port):
        d = self.dir
        cfg = d / "config"
        # Haraka's shipped defaults (connection.ini etc.), then ours over them.
        shutil.copytree(HARAKA.parent.parent / "config", cfg)
        port = free_port()
        nodes = env_str("BENCH_HARAKA_NODES", "")
        (cfg / "smtp.ini").write_text(
            f"[main]\nlisten=127.0.0.1:{port}\n" + (f"nodes={nodes}\n" if nodes else "")
        )
        (cfg / "plugins").write_text("rcpt_to.in_host_list\nqueue/smtp_forward\n")
        (cfg / "host_list").write_text("rcpt.bench.test\n")
        (cfg / "smtp_forward.ini").write_text(f"host=127.0.0.1\nport={sink_port}\n")
        (cfg / "me").write_text("haraka.bench.test\n")
        if QUIET_LOGS:
            (cfg / "log.ini").write_text("[main]\nlevel=warn\n")
        # Haraka looks up every client's PTR with node's resolver (c-ares, which asks the
        # name servers of resolv.conf, not /etc/hosts): point it at our NSD, as mailgate's.
        (d / "dns.js").write_text(
            f"require('dns').setServers(['127.0.0.1:{self.nsd_port}']);\n"
        )
        self.meter = self.make_meter(lambda: self.proc.pid)
        self.logf = open(d / "haraka.log", "wb")
        self.proc = PROCS.spawn(
            ["node", "--require", d / "dns.js", HARAKA, "-c", d],
            cgroup=self.meter if isinstance(self.meter, Cgroup) else None,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_banner(port, timeout=60)
        except Deadline:
            raise RuntimeError("haraka did not start:\n" + (d / "haraka.log").read_text()[-3000:])
        return port

    def stop(self):
        if getattr(self, "proc", None):
            PROCS.stop(self.proc)
        if isinstance(self.meter, Cgroup):
            self.meter.remove()


class MailgateTarget(Target):
    def __init__(self, workdir, name, mode, plugins, nsd_port, max_conns=1000):
        self.name = name
        super().__init__(workdir)
        self.max_conns = max_conns
        self.mode = mode
        self.plugins = plugins
        self.nsd_port = nsd_port

    def version(self):
        r = run_cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(MAILGATE.stat().st_mtime))
        return f"mailgate at {r.stdout.strip()} ({MAILGATE}, built {built})"

    def config(self, sink_port):
        d = self.dir
        text = f"""[server]
hostname = "mx.bench.test"
listen = ["127.0.0.1:0"]
max_connections = {self.max_conns}
max_connections_per_ip = {self.max_conns}
watch_interval_ms = 0

[tls]
self_signed = false

[limits]
max_message_size = 52428800
max_message_memory_mb = 1024

[relay]
local_domains = ["rcpt.bench.test"]

[delivery]
mode = "{self.mode}"
upstream = "127.0.0.1:{sink_port}"
upstream_tls = "none"

[queue]
spool = "{d}/spool"
concurrency = 20
per_destination = 20

[admin]
socket = "{d}/admin.sock"
http = ""

[dns]
servers = ["127.0.0.1:{self.nsd_port}"]

[chain]
quarantine = "{d}/quarantine"
compile_cache = "{VAR}/e2e-cache/plugins"
# plugin linear memory of every session at once: about 4 MiB per session with the three
max_total_memory_mb = {max(1024, self.max_conns * 5)}
"""
        if self.plugins:
            text += f"""
[[plugin]]
name = "auth"
path = "{PLUGINS}/mailgate_auth.wasm"
capabilities = ["auth-results"]
config = {{ spf_fail = "tag", dmarc_reject = "reject", dmarc_quarantine = "quarantine" }}

[[plugin]]
name = "spam"
path = "{PLUGINS}/mailgate_spam_score.wasm"
capabilities = ["dns", "log", "kv", "auth-results"]
[plugin.config]
add_header_at = 6
reject_at = 15
dnsbl.bench.zone = "bl.bench.test"
dnsbl.bench.returns = ["127.0.0.2=6"]
uribl.bench.zone = "ubl.bench.test"
uribl.bench.score = 5

[[plugin]]
name = "routing"
path = "{PLUGINS}/mailgate_routing.wasm"
capabilities = ["log"]
[plugin.config]
rules = [
  {{ domain = "rcpt.bench.test", action = "relay", host = "127.0.0.1:{sink_port}", tls = "disabled" }},
]
"""
        return text

    def start(self, sink_port):
        cfgfile = self.dir / "gateway.toml"
        cfgfile.write_text(self.config(sink_port))
        (VAR / "e2e-cache/plugins").mkdir(parents=True, exist_ok=True)
        # MAILGATE_* settings reach the gateway (its config overrides, MAILGATE_LOG,
        # MAILGATE_PERFMAP); MAILGATE_BIN is this script's and would be an unknown key.
        envv = {k: v for k, v in os.environ.items() if k != "MAILGATE_BIN"}
        r = run_cmd([MAILGATE, "check-config", "--config", cfgfile], timeout=300, env=envv)
        if r.returncode != 0:
            raise RuntimeError(f"mailgate check-config {cfgfile}:\n{r.stdout}{r.stderr}")
        self.meter = self.make_meter(lambda: self.proc.pid)
        if QUIET_LOGS:
            envv["MAILGATE_LOG"] = "warn"
        self.logf = open(self.dir / "mailgate.log", "wb")
        self.proc = PROCS.spawn(
            [MAILGATE, "run", "--config", cfgfile],
            cgroup=self.meter if isinstance(self.meter, Cgroup) else None,
            stdout=subprocess.PIPE,
            stderr=self.logf,
            stdin=subprocess.DEVNULL,
            env=envv,
        )
        lines = []
        ready = threading.Event()

        def read():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                if line == "ready":
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or "ready" not in lines:
            raise RuntimeError(
                f"mailgate did not get ready: {lines}\n"
                + (self.dir / "mailgate.log").read_text()[-3000:]
            )
        port = None
        for line in lines:
            if line.startswith("listening smtp "):
                port = int(line.rsplit(":", 1)[1])
        return port

    def stop(self):
        if getattr(self, "proc", None):
            PROCS.stop(self.proc, timeout=40)
        if isinstance(self.meter, Cgroup):
            self.meter.remove()


def make_target(name, workdir, nsd_port, conns=100):
    """conns: the connections the target must hold at once (Postfix's smtpd process
    limit, mailgate's max_connections)."""
    if name == "ceiling":
        return Ceiling(workdir)
    if name == "postfix":
        return PostfixTarget(workdir, max(100, conns))
    if name == "haraka":
        return HarakaTarget(workdir, nsd_port)
    mode = "queue" if "queue" in name else "proxy"
    return MailgateTarget(
        workdir, name, mode, name.endswith("-plugins"), nsd_port, max(1000, conns)
    )


# ------------------------------------------------------------------ measurements


def throughput(target, sink, port, size_kb, sessions, count, sampler):
    """One smtp-source run; messages/s counted at the sink, relay CPU, peak memory."""
    base = sink.get()
    cpu0 = target.meter.cpu_seconds() if target.meter else 0.0
    sink0 = sink.cpu_seconds()
    if sampler:
        sampler.reset()
        sampler.sample_now()
    t0 = time.monotonic()
    rc, client_cpu, out = smtp_source(port, size_kb * 1024, sessions, count)
    # smtp-source stops at the first refusal: then only what was queued can still come.
    got = sink.wait_for(base + count, RUN_TIMEOUT if rc == 0 else min(10, RUN_TIMEOUT))
    t1 = time.monotonic()
    cpu1 = target.meter.cpu_seconds() if target.meter else 0.0
    received = sink.get() - base
    row = {
        "target": target.name,
        "size_kb": size_kb,
        "sessions": sessions,
        "messages": count,
        "received": received,
        "seconds": round(t1 - t0, 4),
        "msg_per_s": round(received / (t1 - t0), 1) if received else 0.0,
        "relay_cpu_ms_per_msg": round((cpu1 - cpu0) * 1000 / received, 3)
        if target.meter and received
        else None,
        "client_cpu_ms_per_msg": round(client_cpu * 1000 / max(received, 1), 3),
        "sink_cpu_ms_per_msg": round(
            (sink.cpu_seconds() - sink0) * 1000 / max(received, 1), 3
        ),
        "ok": rc == 0 and got,
    }
    if sampler:
        sampler.sample_now()
        rss, pss = sampler.peaks()
        row["peak_rss_mib"] = round(rss / 1024, 1)
        row["peak_pss_mib"] = round(pss / 1024, 1)
    if not row["ok"]:
        row["error"] = f"smtp-source exit {rc}, sink got {received}/{count}: {out[-500:]}"
        log(f"  FAILED: {row['error']}")
    return row


def message_bytes(size_kb):
    """A message like smtp-source's: a few headers and size_kb KiB of 80-column lines."""
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: e2e bench latency\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "Message-Id: <{id}@client.bench.test>\r\n\r\n"
    )
    body = bytearray()
    line = 0
    while len(body) < size_kb * 1024:
        line += 1
        body += (str(line) + "X" * 78)[:78].encode() + b"\r\n"
    return head, bytes(body)


class SmtpConn:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @staticmethod
    async def open(port, local_ip=None, timeout=30):
        kw = {"local_addr": (local_ip, 0)} if local_ip else {}
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **kw), timeout)
        c = SmtpConn(r, w)
        await c.expect(220, timeout)
        await c.cmd(f"EHLO {HELO}", 250, timeout)
        return c

    async def reply(self, timeout=60):
        lines = []
        while True:
            line = await asyncio.wait_for(self.r.readline(), timeout)
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def expect(self, code, timeout=60):
        got, text = await self.reply(timeout)
        if got != code:
            raise ConnectionError(f"expected {code}, got {text!r}")

    async def cmd(self, line, code, timeout=60):
        self.w.write(line.encode() + b"\r\n")
        await self.expect(code, timeout)

    def close(self):
        try:
            self.w.transport.abort()
        except Exception:  # noqa: BLE001
            pass


async def latency_async(port, rate, secs, size_kb, conns):
    """Open-loop pacing: message i is due at t0 + i/rate on a free pooled connection
    (more are opened if all are busy, up to 4 * conns). Measures from writing the final
    ".\\r\\n" to reading the 250."""
    head, body = message_bytes(size_kb)
    n = max(1, int(rate * secs))
    free = asyncio.Queue()
    pool = []
    for _ in range(conns):
        c = await SmtpConn.open(port)
        pool.append(c)
        free.put_nowait(c)
    lat, late, errors = [], [], []

    async def one(c, i):
        try:
            await c.cmd(f"MAIL FROM:<{SENDER}>", 250)
            await c.cmd(f"RCPT TO:<{RECIPIENT}>", 250)
            await c.cmd("DATA", 354)
            c.w.write(head.replace("{id}", f"lat{i}.{time.time_ns()}").encode() + body)
            await c.w.drain()
            t = time.perf_counter()
            c.w.write(b".\r\n")
            code, text = await c.reply()
            dt = time.perf_counter() - t
            if code != 250:
                errors.append(text[:200].decode(errors="replace"))
            else:
                lat.append(dt)
            free.put_nowait(c)
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            errors.append(repr(e))
            c.close()

    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1
    tasks = []
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if free.empty() and len(pool) < 4 * conns:
            try:
                c = await SmtpConn.open(port)
                pool.append(c)
                free.put_nowait(c)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                errors.append(repr(e))
        c = await asyncio.wait_for(free.get(), 120)
        late.append(loop.time() - due)
        tasks.append(asyncio.create_task(one(c, i)))
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    elapsed = loop.time() - t0
    for c in pool:
        c.close()
    return lat, late, errors, n, elapsed


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def latency(target, sink, port, rate):
    base = sink.get()
    lat, late, errors, n, elapsed = asyncio.run(
        latency_async(port, rate, LAT_SECS, LAT_SIZE_KB, LAT_CONNS)
    )
    sink.wait_for(base + len(lat), RUN_TIMEOUT)
    row = {
        "target": target.name,
        "size_kb": LAT_SIZE_KB,
        "offered_per_s": round(rate, 1),
        "achieved_per_s": round(n / elapsed, 1) if elapsed > 0 else 0,
        "messages": n,
        "p50_ms": round(pct(lat, 50) * 1000, 3) if lat else None,
        "p99_ms": round(pct(lat, 99) * 1000, 3) if lat else None,
        "max_ms": round(max(lat) * 1000, 3) if lat else None,
        "send_late_p99_ms": round(pct(late, 99) * 1000, 2) if late else None,
        "errors": len(errors),
    }
    if errors:
        row["first_error"] = errors[0]
        log(f"  latency errors: {len(errors)}, first: {errors[0]}")
    return row


def idle_ip(i):
    return f"127.10.{i // 250}.{1 + i % 250}"


async def idle_hold(port, n, conns_out, errors):
    """Opens n sessions, each from its own 127.10.x.y address, to MAIL+RCPT; keeps them."""
    sem = asyncio.Semaphore(IDLE_OPENING)

    async def one(i):
        async with sem:
            try:
                c = await SmtpConn.open(port, local_ip=idle_ip(i), timeout=120)
                await c.cmd(f"MAIL FROM:<{SENDER}>", 250, 120)
                await c.cmd(f"RCPT TO:<{RECIPIENT}>", 250, 120)
                conns_out.append(c)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                errors.append(repr(e))

    await asyncio.gather(*(one(i) for i in range(n)))


def mem_of(meter):
    rss = pss = 0
    for pid in meter.pids():
        r, p = read_mem(pid)
        rss += r
        pss += p
    return rss, pss


def idle_run(target, sink, port, n, count):
    """Holds n connections after MAIL+RCPT; memory per connection and a throughput run
    (10 KB, 10 sessions) while they are held."""
    rss0, pss0 = mem_of(target.meter)
    loop = asyncio.new_event_loop()
    conns, errors = [], []
    t0 = time.monotonic()
    try:
        loop.run_until_complete(asyncio.wait_for(idle_hold(port, n, conns, errors), RUN_TIMEOUT))
    except asyncio.TimeoutError:
        errors.append("timed out opening connections")
    t_open = time.monotonic() - t0
    # let the relay settle (allocator, lazy work; mailgate gives an idle session's plugin
    # instances back after chain.release_idle_instances_ms, 1 s) before reading its memory
    time.sleep(3.0)
    rss1, pss1 = mem_of(target.meter)
    held = len(conns)
    log(f"  held {held}/{n} in {t_open:.1f}s; RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
    busy = throughput(target, sink, port, 10, 10, count, None)
    rss2, pss2 = mem_of(target.meter)
    # the held sessions must still be there: each answers a NOOP
    alive = 0

    async def check():
        nonlocal alive
        for c in conns[:: max(1, len(conns) // 50)]:
            try:
                await c.cmd("NOOP", 250, 10)
                alive += 1
            except (OSError, ConnectionError, asyncio.TimeoutError):
                pass

    loop.run_until_complete(check())
    for c in conns:
        c.close()
    loop.run_until_complete(asyncio.sleep(0.1))
    loop.close()
    row = {
        "target": target.name,
        "connections": n,
        "held": held,
        "open_seconds": round(t_open, 2),
        "rss_before_mib": round(rss0 / 1024, 1),
        "rss_held_mib": round(rss1 / 1024, 1),
        "rss_after_busy_mib": round(rss2 / 1024, 1),
        "kib_per_conn_rss": round((rss1 - rss0) / max(held, 1), 1),
        "kib_per_conn_pss": round((pss1 - pss0) / max(held, 1), 1),
        "busy_msg_per_s": busy["msg_per_s"],
        "busy_cpu_ms_per_msg": busy["relay_cpu_ms_per_msg"],
        "busy_ok": busy["ok"],
        "sampled_alive_after": alive,
        "errors": len(errors),
    }
    if errors:
        row["first_error"] = errors[0]
        log(f"  idle errors: {len(errors)}, first: {errors[0]}")
    return row


# ------------------------------------------------------------------ the run


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def uptime():
    return run_cmd(["uptime"]).stdout.strip()


def fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def ratio(a, b, nd=2):
    if a is None or b in (None, 0) or a == 0:
        return "—"
    return f"{a / b:.{nd}f}"


def render(res):
    out = []
    out.append(f"# End-to-end relay benchmark, {res['date']}\n")
    out.append(f"- command: `{res['command']}`")
    out.append(f"- commit: {res['commit']}")
    out.append(f"- machine: {res['machine']}")
    out.append(f"- load before: `{res['uptime_before']}`")
    out.append(f"- load after: `{res['uptime_after']}`")
    out.append(f"- settings: {json.dumps(res['settings'])}")
    out.append(f"- versions: {'; '.join(dict.fromkeys(res['versions'].values()))}")
    out.append(f"- relay CPU measured with: {res['cpu_method']}")
    out.append(f"- wall time: {res['wall_seconds']:.0f} s\n")

    rows = res["throughput"]
    by = {(r["target"], r["size_kb"], r["sessions"]): r for r in rows}
    out.append("## Throughput (smtp-source → relay → smtp-sink, one connection per message)\n")
    out.append(
        "| size | sessions | target | msg/s | × ceiling | × Postfix | relay CPU ms/msg "
        "| CPU × Postfix | peak RSS MiB | peak PSS MiB | client+sink CPU ms/msg |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in SIZES_KB:
        for s in SESSIONS:
            ceil = by.get(("ceiling", size, s))
            pf = by.get(("postfix", size, s))
            for t in TARGETS:
                r = by.get((t, size, s))
                if not r:
                    continue
                mps = r["msg_per_s"] if r["ok"] else None
                out.append(
                    "| {} KB | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                        size, s, LABELS[t], "" if r["ok"] else " (FAILED)",
                        fmt(r["msg_per_s"], 0),
                        ratio(mps, ceil and ceil["msg_per_s"]),
                        ratio(mps, pf and pf["msg_per_s"]),
                        fmt(r["relay_cpu_ms_per_msg"], 3),
                        ratio(r["relay_cpu_ms_per_msg"], pf and pf["relay_cpu_ms_per_msg"]),
                        fmt(r.get("peak_rss_mib"), 1), fmt(r.get("peak_pss_mib"), 1),
                        fmt(r["client_cpu_ms_per_msg"] + r["sink_cpu_ms_per_msg"], 3),
                    )
                )  # fmt: skip
    out.append("")
    if res["latency"]:
        lat = {r["target"]: r for r in res["latency"]}
        pf = lat.get("postfix")
        out.append(
            f"## End-of-DATA → 250 latency ({LAT_SIZE_KB} KB, {LAT_CONNS} pooled connections, "
            f"offered {res['latency_rate']:.0f} msg/s{res['latency_rate_note']})\n"
        )
        out.append(
            "| target | offered msg/s | achieved msg/s | p50 ms | p99 ms | max ms "
            "| p99 × Postfix | p99 × ceiling | errors |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for t in TARGETS:
            r = lat.get(t)
            if not r:
                continue
            ceil = lat.get("ceiling")
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    LABELS[t], fmt(r["offered_per_s"], 0), fmt(r["achieved_per_s"], 0),
                    fmt(r["p50_ms"], 3), fmt(r["p99_ms"], 3), fmt(r["max_ms"], 2),
                    ratio(r["p99_ms"], pf and pf["p99_ms"]),
                    ratio(r["p99_ms"], ceil and ceil["p99_ms"]),
                    r["errors"],
                )
            )  # fmt: skip
        out.append("")
    if res["idle"]:
        out.append("## Idle connections held after MAIL+RCPT (each from its own 127.10.x.y)\n")
        out.append(
            "| target | held / opened | KiB per conn (RSS) | KiB per conn (PSS) | RSS before → "
            "held MiB | msg/s while held (10 KB, 10 sessions) | × same target idle-free "
            "| CPU ms/msg while held | errors |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in res["idle"]:
            free_r = by.get((r["target"], 10, 10))
            out.append(
                "| {} | {} / {} | {} | {} | {} → {} | {} | {} | {} | {} |".format(
                    LABELS[r["target"]], r["held"], r["connections"],
                    fmt(r["kib_per_conn_rss"], 1), fmt(r["kib_per_conn_pss"], 1),
                    fmt(r["rss_before_mib"], 1), fmt(r["rss_held_mib"], 1),
                    fmt(r["busy_msg_per_s"], 0) + ("" if r["busy_ok"] else " (FAILED)"),
                    ratio(r["busy_msg_per_s"], free_r and free_r["msg_per_s"]),
                    fmt(r["busy_cpu_ms_per_msg"], 3), r["errors"],
                )
            )  # fmt: skip
        out.append("")
    if res["notes"]:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in res["notes"])
        out.append("")
    return "\n".join(out)


def check_tools():
    missing = [p for p in (SMTP_SOURCE, SMTP_SINK, NSD, POSTFIX) if not os.path.exists(p)]
    if not MAILGATE.exists():
        missing.append(str(MAILGATE))
    for name in ("mailgate_auth", "mailgate_spam_score", "mailgate_routing"):
        if not (PLUGINS / f"{name}.wasm").exists():
            missing.append(str(PLUGINS / f"{name}.wasm"))
    if "haraka" in TARGETS and not HARAKA.exists():
        missing.append(str(HARAKA))
    if missing:
        sys.exit(f"missing (bench/e2e/run installs and builds them): {', '.join(missing)}")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main():
    check_tools()
    for t in TARGETS + IDLE_TARGETS:
        if t not in ALL_TARGETS:
            sys.exit(f"unknown target {t!r}; known: {', '.join(ALL_TARGETS)}")
    if TARGETS and "postfix" not in TARGETS and not LAT_RATE:
        sys.exit("without the postfix target, set BENCH_LATENCY_RATE")
    nofile = raise_nofile(IDLE + 1000)
    started = time.monotonic()
    now = datetime.datetime.now()
    stamp = now.strftime("%Y-%m-%dT%H%M%S") + ("-quick" if QUICK else "")
    commit = run_cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run_cmd(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    res = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(
            [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")]
            + ["bench/e2e/run"]
        ),
        "commit": commit + (" (working tree has changes)" if dirty.stdout.strip() else ""),
        "machine": machine(),
        "uptime_before": uptime(),
        "settings": {
            "quick": QUICK, "messages": MESSAGES, "sizes_kb": SIZES_KB, "sessions": SESSIONS,
            "warmup": WARMUP, "latency_secs": LAT_SECS, "latency_connections": LAT_CONNS,
            "idle": IDLE, "idle_postfix": IDLE_POSTFIX, "quiet_logs": QUIET_LOGS,
            "targets": TARGETS, "idle_targets": IDLE_TARGETS, "nofile": nofile,
        },  # fmt: skip
        "versions": {},
        "cpu_method": "",
        "throughput": [],
        "latency": [],
        "latency_rate": 0.0,
        "latency_rate_note": "",
        "idle": [],
        "notes": [],
    }
    work = Path(tempfile.mkdtemp(prefix="mailgate-e2e-"))
    os.chmod(work, 0o755)  # Postfix's daemons (user postfix) reach paths below it
    if KEEP:
        log(f"BENCH_KEEP=1: the work dir (configs, logs) stays: {work}")
    else:
        PROCS.cleanups.insert(0, lambda: shutil.rmtree(work, ignore_errors=True))
    log(f"work dir {work}; {MESSAGES} messages per run; targets {', '.join(TARGETS)}")
    nsd = Nsd(work)
    order = [t for t in ["postfix"] + TARGETS if t in TARGETS]
    order = list(dict.fromkeys(order))
    targets_dirs = {}
    latency_targets = []

    def with_target(name, fn, conns=100, sink_conns=1024):
        """Starts a sink and the target, runs fn(target, sink, port, sampler), stops both."""
        n = targets_dirs.get(name, 0)
        targets_dirs[name] = n + 1
        wd = work / f"{name}-{n}"
        wd.mkdir()
        sink = Sink(sink_conns)
        target = make_target(name, wd, nsd.port, conns)
        sampler = None
        try:
            port = target.start(sink.port)
            res["versions"].setdefault(name, target.version() or LABELS[name])
            if target.meter:
                res["cpu_method"] = target.meter.method()
                sampler = Sampler(target.meter)
                sampler.start()
            if WARMUP:
                base = sink.get()
                rc, _, out = smtp_source(port, 10 * 1024, 10, WARMUP)
                if rc != 0 or not sink.wait_for(base + WARMUP, RUN_TIMEOUT):
                    raise RuntimeError(f"warm-up failed (exit {rc}): {out[-500:]}")
            return fn(target, sink, port, sampler)
        finally:
            if sampler:
                sampler.stop()
            target.stop()
            sink.stop()

    def tput(target, sink, port, sampler):
        name = target.name
        for size in SIZES_KB:
            for s in SESSIONS:
                log(f"{name}: {size} KB, {s} sessions, {MESSAGES} messages")
                row = throughput(target, sink, port, size, s, MESSAGES, sampler)
                log(
                    f"  {row['msg_per_s']} msg/s, relay CPU {row['relay_cpu_ms_per_msg']} ms/msg,"
                    f" peak RSS {row.get('peak_rss_mib')} MiB"
                )
                res["throughput"].append(row)
        if name == "postfix" or LAT_RATE:
            lat(target, sink, port, sampler)
        else:
            latency_targets.append(name)

    def lat(target, sink, port, _sampler):
        rate = res["latency_rate"] or pick_rate()
        log(f"{target.name}: latency at {rate:.0f} msg/s offered for {LAT_SECS} s")
        row = latency(target, sink, port, rate)
        log(f"  p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, achieved {row['achieved_per_s']}/s")
        res["latency"].append(row)

    def pick_rate():
        if LAT_RATE:
            res["latency_rate"] = LAT_RATE
            res["latency_rate_note"] = ", BENCH_LATENCY_RATE"
            return LAT_RATE
        pf = [
            r["msg_per_s"]
            for r in res["throughput"]
            if r["target"] == "postfix" and r["size_kb"] == LAT_SIZE_KB and r["ok"]
        ]
        if not pf:
            pf = [r["msg_per_s"] for r in res["throughput"] if r["target"] == "postfix" and r["ok"]]
        if not pf:
            raise RuntimeError("no Postfix throughput to derive the latency load from")
        res["latency_rate"] = max(pf) / 2
        res["latency_rate_note"] = ": half of Postfix's best at this size"
        return res["latency_rate"]

    for name in order:
        try:
            with_target(name, tput)
        except Exception as e:  # noqa: BLE001 - one broken target does not stop the rest
            log(f"{name}: {e}")
            res["notes"].append(f"{name} failed: {str(e)[:500]}")
    # Targets measured before Postfix's maximum was known get their latency run now.
    for name in latency_targets:
        try:
            with_target(name, lat)
        except Exception as e:  # noqa: BLE001
            log(f"{name}: {e}")
            res["notes"].append(f"{name} latency failed: {str(e)[:500]}")

    for name in IDLE_TARGETS if IDLE else []:
        n = IDLE_POSTFIX if name == "postfix" else IDLE
        if n <= 0:
            continue
        log(f"{name}: idle run, {n} connections held")
        try:
            row = with_target(
                name,
                lambda t, s, p, _sm: idle_run(t, s, p, n, MESSAGES),
                conns=IDLE_MAX_CONNS if IDLE_MAX_CONNS and name != "postfix" else n + 50,
                sink_conns=max(1024, n + 100),
            )
            log(
                f"  {row['kib_per_conn_rss']} KiB/conn RSS, {row['kib_per_conn_pss']} KiB/conn PSS,"
                f" {row['busy_msg_per_s']} msg/s while held"
            )
            res["idle"].append(row)
        except Exception as e:  # noqa: BLE001
            log(f"{name} idle: {e}")
            res["notes"].append(f"{name} idle run failed: {str(e)[:500]}")

    res["uptime_after"] = uptime()
    res["wall_seconds"] = time.monotonic() - started
    if QUICK:
        res["notes"].append("BENCH_QUICK=1: a smoke run; too few messages for stable figures.")
    VAR.mkdir(parents=True, exist_ok=True)
    md = render(res)
    (VAR / f"e2e-results-{stamp}.md").write_text(md + "\n")
    (VAR / f"e2e-results-{stamp}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(md)
    log(f"written: bench/var/e2e-results-{stamp}.md and .json")
    failed = [r for r in res["throughput"] if not r["ok"]] or any(
        n.endswith("failed") or "failed:" in n for n in res["notes"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
