//! The admin socket: a Unix socket (mode 0600, `admin.socket`) on which the running
//! gateway answers one command per connection with one line of JSON. `mailgate queue …`
//! and `mailgate status` talk to it; with no gateway running, the queue commands that do
//! not need the scheduler work on the spool directly ([`offline`]).
//!
//! Commands: `status`, `reload`, `queue list`, `queue show ID`, `queue flush`, `queue retry ID`,
//! `queue delete ID`, `queue hold ID`, `queue release ID`. Answers are
//! `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
//!
//! The socket serves any [`Gateway`]; the server implements it, so this module needs
//! nothing of the server's.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::queue::spool::Spool;
use crate::queue::{Queue, QueueError, on_spool};

/// Longest command line accepted.
const MAX_LINE: u64 = 1024;
/// How long a client may take to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the admin socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding or connecting failed.
    #[error("admin socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gateway answered something that is not JSON.
    #[error("admin socket: bad answer: {0}")]
    BadAnswer(String),
}

/// What the running gateway exposes to the admin socket.
pub trait Gateway: Send + Sync + std::fmt::Debug {
    /// The `status` answer: version, start time, delivery mode, queue figures, the
    /// generation in force and reload counters.
    fn status(&self) -> Value;
    /// Reloads configuration and plugins; the report.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Value> + Send + '_>>;
    /// The queue, in queue mode.
    fn queue(&self) -> Option<&Arc<Queue>>;
    /// Moves the plugins' clock `secs` forward (`chain.adjustable_clock`); the answer.
    fn advance_clock(&self, secs: u64) -> Value;
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

fn not_queue() -> Value {
    err("the gateway does not run in queue mode (delivery.mode = \"queue\")")
}

/// Answers one command.
pub async fn handle(gateway: &dyn Gateway, line: &str) -> Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => gateway.status(),
        ["reload"] => gateway.reload().await,
        ["clock", "advance", secs] => match secs.parse::<u64>() {
            Ok(secs) => gateway.advance_clock(secs),
            Err(_) => err(format!("{secs:?} is not a number of seconds")),
        },
        ["queue", rest @ ..] => match gateway.queue() {
            Some(q) => queue_command(q, rest).await,
            None => not_queue(),
        },
        _ => err(format!("unknown command {line:?}")),
    }
}

async fn queue_command(q: &Queue, words: &[&str]) -> Value {
    let done = |r: Result<(), QueueError>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => err(e),
    };
    match words {
        ["list"] => match q.list().await {
            Ok(entries) => json!({"ok": true, "entries": entries, "stats": q.stats()}),
            Err(e) => err(e),
        },
        ["show", id] => match q.show(id).await {
            Ok((entry, msg)) => show(entry, &msg),
            Err(e) => err(e),
        },
        ["flush"] => json!({"ok": true, "scheduled": q.flush()}),
        ["retry", id] => done(q.retry(id)),
        ["delete", id] => done(q.delete(id).await),
        ["hold", id] => done(q.set_held(id, true).await),
        ["release", id] => done(q.set_held(id, false).await),
        _ => err(format!("unknown queue command {:?}", words.join(" "))),
    }
}

fn show(entry: crate::queue::entry::Entry, msg: &[u8]) -> Value {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len())
        .min(64 * 1024);
    json!({
        "ok": true,
        "entry": entry,
        "headers": String::from_utf8_lossy(&msg[..end]),
    })
}

/// The queue commands without a running gateway, on the spool itself: `list`, `show`,
/// `delete`, `hold`, `release` (`flush` and `retry` need the scheduler).
pub async fn offline(spool_dir: &Path, line: &str) -> Value {
    let spool = match Spool::open(spool_dir) {
        Ok(s) => s,
        Err(e) => return err(e),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let set_held = |id: String, held: bool| {
        on_spool(&spool, move |s| {
            let mut e = s.load(&id)?;
            e.held = held;
            s.update(&e)
        })
    };
    let text = |r: Result<(), QueueError>| r.map_err(|e| e.to_string());
    let result = match words.as_slice() {
        ["queue", "list"] => {
            return match crate::queue::list_spool(spool).await {
                Ok(entries) => json!({"ok": true, "entries": entries}),
                Err(e) => err(e),
            };
        }
        ["queue", "show", id] => {
            let id = id.to_string();
            return match on_spool(&spool, move |s| s.load_with_message(&id)).await {
                Ok((e, m)) => show(e, &m),
                Err(e) => err(e),
            };
        }
        ["queue", "delete", id] => {
            let id = id.to_string();
            if !spool.ids().unwrap_or_default().contains(&id) {
                return err(QueueError::NotFound(id));
            }
            text(on_spool(&spool, move |s| s.remove(&id)).await)
        }
        ["queue", "hold", id] => text(set_held(id.to_string(), true).await),
        ["queue", "release", id] => text(set_held(id.to_string(), false).await),
        ["queue", "flush"] | ["queue", "retry", _] => {
            Err("the gateway is not running; queued mail is attempted when it starts".to_string())
        }
        _ => Err(format!(
            "unknown command {line:?} (or the gateway is not running)"
        )),
    };
    match result {
        Ok(()) => json!({"ok": true, "offline": true}),
        Err(e) => err(e),
    }
}

/// Binds the admin socket, mode 0600 from the start: it is bound inside a new private
/// (0700) directory beside `path`, made 0600 there, and renamed into place, so nobody can
/// connect before it is private. A socket file left by a gateway that died (nobody
/// answers on it) is replaced; anything else at `path` (a regular file, a directory, a
/// live socket) is an error and left alone. Must run inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let io = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            )));
        }
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on this socket",
            )));
        }
        Ok(_) => std::fs::remove_file(path).map_err(io)?,
    }
    let private = dir.join(format!(".admin-{:016x}", rand::random::<u64>()));
    crate::private_fs::create_dir(&private).map_err(io)?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|l| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound.map_err(io)
}

/// Serves the bound admin socket at `path` until `shutdown`, then removes the file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    gateway: Arc<dyn Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let gateway = Arc::clone(&gateway);
                tokio::spawn(async move { answer(stream, &*gateway).await });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, gateway: &dyn Gateway) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_LINE));
    let reply = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => handle(gateway, line.trim()).await,
        _ => err("no command"),
    };
    let mut out = reply.to_string();
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
    let _ = w.shutdown().await;
}

/// Sends one command to a running gateway; `Ok(None)` when nothing listens there.
pub async fn request(path: &Path, line: &str) -> Result<Option<Value>, AdminError> {
    let io = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    s.write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut text))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|_| AdminError::BadAnswer(text.chars().take(200).collect()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::queue::entry::Entry;

    /// Bound on waiting for a served request or the server's end.
    const LIMIT: Duration = Duration::from_secs(10);

    /// A gateway without a queue that counts its reloads.
    #[derive(Debug, Default)]
    struct Fake {
        reloads: AtomicUsize,
    }

    impl Gateway for Fake {
        fn status(&self) -> Value {
            json!({"ok": true, "version": "test-1", "generation": 7})
        }

        fn reload(&self) -> Pin<Box<dyn Future<Output = Value> + Send + '_>> {
            Box::pin(async move {
                let n = self.reloads.fetch_add(1, Ordering::SeqCst) + 1;
                json!({"ok": true, "reloads": n})
            })
        }

        fn queue(&self) -> Option<&Arc<Queue>> {
            None
        }

        fn advance_clock(&self, secs: u64) -> Value {
            json!({"ok": true, "offset_secs": secs})
        }
    }

    fn error_of(v: &Value) -> String {
        assert_eq!(v["ok"], json!(false), "{v}");
        v["error"].as_str().expect("an error text").to_string()
    }

    /// A spool in a temp dir holding one entry, `Q1.1`, with a header and a body.
    fn spool_with_entry() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let text: &[u8] = b"Subject: queued\r\n\r\nthe body\r\n";
        let entry = Entry::new(
            "Q1.1".into(),
            "a@b.test",
            &Default::default(),
            &["x@example.test".into()],
            text.len() as u64,
        );
        spool
            .store(&entry, &crate::queue::spool::parts(&[text]))
            .unwrap();
        (dir, spool)
    }

    #[tokio::test]
    async fn an_unknown_command_is_an_error_naming_it() {
        let g = Fake::default();
        for line in ["frobnicate", "", "status now", "queue"] {
            let v = handle(&g, line).await;
            let e = error_of(&v);
            if line == "queue" {
                assert!(e.contains("queue mode"), "{line:?}: {e}");
            } else {
                assert!(e.contains("unknown command"), "{line:?}: {e}");
                assert!(e.contains(&format!("{line:?}")), "{line:?}: {e}");
            }
        }
        assert_eq!(g.reloads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn queue_commands_without_a_queue_say_the_gateway_is_not_in_queue_mode() {
        let g = Fake::default();
        for line in [
            "queue list",
            "queue flush",
            "queue delete Q1.1",
            "queue bogus",
        ] {
            let e = error_of(&handle(&g, line).await);
            assert!(e.contains("does not run in queue mode"), "{line:?}: {e}");
        }
    }

    #[tokio::test]
    async fn status_and_reload_answer_what_the_gateway_returns() {
        let g = Fake::default();
        assert_eq!(handle(&g, "status").await, g.status());
        assert_eq!(
            handle(&g, "  status\t").await,
            g.status(),
            "whitespace ignored"
        );
        assert_eq!(
            handle(&g, "reload").await,
            json!({"ok": true, "reloads": 1})
        );
        assert_eq!(
            handle(&g, "reload").await,
            json!({"ok": true, "reloads": 2})
        );
        assert_eq!(g.reloads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn offline_list_and_show_read_the_spool() {
        let (_dir, spool) = spool_with_entry();
        let v = offline(spool.root(), "queue list").await;
        assert_eq!(v["ok"], json!(true), "{v}");
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{v}");
        assert_eq!(entries[0]["id"], json!("Q1.1"));
        assert_eq!(entries[0]["sender"], json!("a@b.test"));

        let v = offline(spool.root(), "queue show Q1.1").await;
        assert_eq!(v["ok"], json!(true), "{v}");
        assert_eq!(v["entry"]["id"], json!("Q1.1"));
        assert_eq!(
            v["headers"],
            json!("Subject: queued\r\n"),
            "the header block only"
        );
        let e = error_of(&offline(spool.root(), "queue show Q9.9").await);
        assert!(!e.is_empty());
    }

    #[tokio::test]
    async fn offline_hold_and_release_set_and_clear_held() {
        let (_dir, spool) = spool_with_entry();
        assert!(!spool.load("Q1.1").unwrap().held);
        let v = offline(spool.root(), "queue hold Q1.1").await;
        assert_eq!(v, json!({"ok": true, "offline": true}));
        assert!(spool.load("Q1.1").unwrap().held);
        let v = offline(spool.root(), "queue release Q1.1").await;
        assert_eq!(v, json!({"ok": true, "offline": true}));
        assert!(!spool.load("Q1.1").unwrap().held);
        error_of(&offline(spool.root(), "queue hold Q9.9").await);
        error_of(&offline(spool.root(), "queue hold ../escape").await);
    }

    #[tokio::test]
    async fn offline_delete_removes_the_entry_and_a_second_delete_is_not_found() {
        let (_dir, spool) = spool_with_entry();
        let v = offline(spool.root(), "queue delete Q1.1").await;
        assert_eq!(v, json!({"ok": true, "offline": true}));
        assert!(spool.ids().unwrap().is_empty());
        assert!(spool.load("Q1.1").is_err());
        assert!(spool.message("Q1.1").is_err());
        let e = error_of(&offline(spool.root(), "queue delete Q1.1").await);
        assert!(e.contains("no queue entry Q1.1"), "{e}");
    }

    #[tokio::test]
    async fn offline_flush_retry_and_other_commands_say_the_gateway_is_not_running() {
        let (_dir, spool) = spool_with_entry();
        for line in ["queue flush", "queue retry Q1.1", "status", "reload"] {
            let e = error_of(&offline(spool.root(), line).await);
            assert!(e.contains("not running"), "{line:?}: {e}");
        }
        assert!(
            !spool.load("Q1.1").unwrap().held,
            "nothing changed the entry"
        );
        assert_eq!(spool.ids().unwrap(), vec!["Q1.1".to_string()]);
    }

    #[tokio::test]
    async fn offline_on_a_path_that_cannot_be_a_spool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        error_of(&offline(&file, "queue list").await);
    }

    #[tokio::test]
    async fn bind_creates_the_socket_with_mode_0600_in_a_new_directory() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("admin.sock");
        let _listener = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "the stale file is left behind");
        let listener = bind(&path).unwrap();
        let (accepted, connected) = tokio::join!(
            timeout_ok(listener.accept()),
            timeout_ok(UnixStream::connect(&path))
        );
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn bind_does_not_steal_a_socket_someone_answers_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let _live = bind(&path).unwrap();
        let second = bind(&path);
        assert!(
            matches!(&second, Err(AdminError::Io { path: p, .. }) if *p == path),
            "{second:?}"
        );
        assert!(path.exists(), "the live socket file stays");
    }

    async fn timeout_ok<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(LIMIT, f).await.expect("in time")
    }

    #[tokio::test]
    async fn request_answers_none_when_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sock");
        assert!(request(&missing, "status").await.unwrap().is_none());
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(request(&stale, "status").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn request_reports_an_answer_that_is_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = bind(&path).unwrap();
        let server = async {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).await.unwrap();
            s.write_all(b"not json\n").await.unwrap();
            line
        };
        let (asked, answer) =
            tokio::join!(timeout_ok(server), timeout_ok(request(&path, "status")));
        assert_eq!(asked, "status\n");
        assert!(
            matches!(&answer, Err(AdminError::BadAnswer(t)) if t.contains("not json")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn serve_answers_requests_and_removes_the_socket_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let fake = Arc::new(Fake::default());
        let gateway: Arc<dyn Gateway> = Arc::clone(&fake) as _;
        let (stop, stopped) = watch::channel(false);
        let listener = bind(&path).unwrap();
        let server = tokio::spawn(serve(listener, path.clone(), gateway, stopped));

        let status = timeout_ok(request(&path, "status")).await.unwrap();
        assert_eq!(status, Some(fake.status()));
        let reload = timeout_ok(request(&path, "reload")).await.unwrap();
        assert_eq!(reload, Some(json!({"ok": true, "reloads": 1})));
        assert_eq!(fake.reloads.load(Ordering::SeqCst), 1);
        let unknown = timeout_ok(request(&path, "bogus")).await.unwrap().unwrap();
        assert!(error_of(&unknown).contains("unknown command"));

        stop.send(true).unwrap();
        timeout_ok(server).await.unwrap();
        assert!(!path.exists(), "socket file removed");
        assert!(request(&path, "status").await.unwrap().is_none());
    }
}
