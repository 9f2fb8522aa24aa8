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
            return match on_spool(&spool, move |s| Ok((s.load(&id)?, s.message(&id)?))).await {
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

/// Binds the admin socket (mode 0600), replacing a stale socket file nobody answers on.
/// Must run inside a tokio runtime.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let io = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A socket file left by a gateway that died: nobody answers on it.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(listener)
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
