//! Group commit of the spool's writes: one thread makes the changes of every session
//! that is waiting durable together.
//!
//! A caller writes its new file itself (in parallel with other callers), then hands
//! the commit to this thread and waits for its answer. The thread takes every job that
//! is waiting as one batch and, for the whole batch:
//!
//! 1. starts the write-back of every new file, then waits for each (`fdatasync`): the
//!    data is on disk before any name points at it;
//! 2. links or renames new messages into place (the commit point of a new entry),
//!    renames new states over old ones, takes the messages of removed entries out of
//!    `msg/` (moved to `free/`, or unlinked once it is full: their un-commit);
//! 3. fsyncs `msg/` and `env/` once for the batch, instead of once per message;
//! 4. unlinks the states of removed entries (a state without its message is what a
//!    crash between steps 3 and 4 leaves; recovery deletes it);
//! 5. empties the files of removed messages, which step 2 moved to `free/` (up to
//!    [`MAX_FREE`]), and keeps them for new messages to rewrite: no inode is freed and
//!    allocated again per message;
//! 6. answers each caller: `Ok` means durable, as [`Spool::store`](super::spool::Spool::store)
//!    promises.
//!
//! So the number of journal commits follows the number of batches, not of messages:
//! with many concurrent sessions one directory fsync serves all of them.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use super::spool::{SpoolError, fsync_dir, io_err};

/// At most this many jobs per batch, so that one batch's latency stays bounded.
const MAX_BATCH: usize = 256;

/// A new file, written, to be made durable and given its name.
#[derive(Debug)]
pub(super) struct Staged {
    /// The open file (written, not yet synced).
    pub file: File,
    /// Where it was made.
    pub from: Origin,
    /// Its name once committed.
    pub to: PathBuf,
}

/// Where a staged file was made, which says how it gets its name.
#[derive(Debug)]
pub(super) enum Origin {
    /// Without a name (`O_TMPFILE`): linked through `/proc/self/fd`.
    Unnamed,
    /// Under `tmp/` (where `O_TMPFILE` is refused): linked, never left behind.
    Tmp(PathBuf),
    /// A removed message's file taken from `free/` and rewritten: renamed into place
    /// without replacing (no inode is freed and allocated again per message).
    Recycled(PathBuf),
}

/// One change to commit.
#[derive(Debug)]
pub(super) enum Op {
    /// A new entry: its message file (initial state inside) linked into place. A taken
    /// name, or a state file left under the id, fails with [`SpoolError::Exists`]:
    /// an entry never replaces another.
    Store {
        /// The entry's id (for `Exists`).
        id: String,
        /// The message file.
        msg: Staged,
        /// The id's state file, which must not exist.
        env: PathBuf,
    },
    /// A new state, written under `tmp/`, renamed over an entry's state.
    Update {
        /// The open file (written, not yet synced).
        file: File,
        /// Its name under `tmp/`.
        tmp: PathBuf,
        /// The state file it replaces.
        to: PathBuf,
    },
    /// An entry removed: its message, then (once that is durable) its state.
    Remove {
        /// The message file.
        msg: PathBuf,
        /// The state file, if any.
        env: PathBuf,
    },
}

struct Job {
    op: Op,
    done: SyncSender<Result<(), SpoolError>>,
}

/// Batches committed and changes committed, since start.
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Batches (each: one fsync of each directory it changed).
    pub batches: AtomicU64,
    /// Changes (stores, updates, removals) in those batches.
    pub changes: AtomicU64,
}

/// The commit thread of one spool, started by its first job; it ends when the spool
/// (every clone of it) is dropped.
#[derive(Debug)]
pub(super) struct Committer {
    msg_dir: PathBuf,
    env_dir: PathBuf,
    tx: OnceLock<Sender<Job>>,
    counters: std::sync::Arc<CommitCounters>,
    free: std::sync::Arc<FreeFiles>,
}

/// Emptied files of removed messages in `free/`, for new messages to reuse: allocating
/// and freeing an inode per message is the file system's dearest part of the spool
/// (ext4 scans past recently freed inodes on every allocation).
#[derive(Debug)]
pub(super) struct FreeFiles {
    dir: PathBuf,
    names: std::sync::Mutex<Vec<PathBuf>>,
}

/// At most this many emptied files are kept for reuse.
const MAX_FREE: usize = 256;

impl FreeFiles {
    fn names(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An emptied file to rewrite, if one is kept.
    pub fn take(&self) -> Option<PathBuf> {
        self.names().pop()
    }

    /// Keeps `path` (in `free/`, emptied) for reuse.
    pub fn give(&self, path: PathBuf) {
        self.names().push(path);
    }

    /// Empties `path` (a file in `free/`) and keeps it for reuse while there is room;
    /// deletes it otherwise, or when it cannot be emptied (the error is the deletion's).
    pub fn keep(&self, path: PathBuf) -> io::Result<()> {
        let emptied = self.room() > 0
            && fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .is_ok();
        if emptied {
            self.give(path);
            Ok(())
        } else {
            fs::remove_file(&path)
        }
    }

    /// How many are kept.
    fn len(&self) -> usize {
        self.names().len()
    }

    fn room(&self) -> usize {
        MAX_FREE.saturating_sub(self.len())
    }

    /// A new name in `free/`.
    fn new_name(&self) -> PathBuf {
        self.dir.join(format!("{:016x}", rand::random::<u64>()))
    }
}

impl Committer {
    pub fn new(root: &Path) -> Committer {
        Committer {
            msg_dir: root.join("msg"),
            env_dir: root.join("env"),
            tx: OnceLock::new(),
            counters: Default::default(),
            free: std::sync::Arc::new(FreeFiles {
                dir: root.join("free"),
                names: Default::default(),
            }),
        }
    }

    pub fn free(&self) -> &FreeFiles {
        &self.free
    }

    pub fn counters(&self) -> &CommitCounters {
        &self.counters
    }

    /// Commits `op` with whatever else is waiting; returns when it is durable (or failed).
    pub fn commit(&self, op: Op) -> Result<(), SpoolError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let (msg_dir, env_dir) = (self.msg_dir.clone(), self.env_dir.clone());
            let (counters, free) = (self.counters.clone(), self.free.clone());
            let spawned = std::thread::Builder::new()
                .name("mailgate-spool-commit".into())
                .spawn(move || run(rx, &msg_dir, &env_dir, &counters, &free));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the spool's commit thread");
            }
            tx
        });
        let (done, answer) = mpsc::sync_channel(1);
        let gone = || SpoolError::Io {
            action: "commit",
            path: self.env_dir.clone(),
            source: io::Error::other("the spool's commit thread is not running"),
        };
        tx.send(Job { op, done }).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

fn run(
    rx: Receiver<Job>,
    msg_dir: &Path,
    env_dir: &Path,
    counters: &CommitCounters,
    free: &FreeFiles,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .changes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (ops, dones): (Vec<Op>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.done)).unzip();
        for (result, done) in commit_batch(ops, msg_dir, env_dir, free)
            .into_iter()
            .zip(dones)
        {
            // A caller that went away (its task was cancelled) needs no answer.
            let _ = done.send(result);
        }
    }
}

/// The same failure again, for another job of the batch it failed.
fn again(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Io {
            action,
            path,
            source,
        } => SpoolError::Io {
            action,
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => SpoolError::Io {
            action: "commit",
            path: PathBuf::new(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Asks the kernel to start writing `file` back, so that the `fdatasync`s that follow
/// wait for writes already under way (the batch's files go to disk together).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned
    // by `file`, open for the whole call. A failure only loses the hint: fdatasync follows.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

fn sync(file: &File, to: &Path) -> Result<(), SpoolError> {
    file.sync_data().map_err(io_err("fsync", to))
}

/// Gives a staged file its name; `Exists` when the name is taken (never replaces).
fn link_new(s: &Staged, id: &str) -> Result<(), SpoolError> {
    let linked = match &s.from {
        Origin::Unnamed => link_unnamed(&s.file, &s.to),
        Origin::Tmp(tmp) => fs::hard_link(tmp, &s.to),
        Origin::Recycled(path) => rename_new(path, &s.to),
    };
    linked.map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SpoolError::Exists(id.to_string())
        } else {
            io_err("link", &s.to)(e)
        }
    })
}

/// Renames `from` to `to`, failing if `to` exists.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
            other => return other.map_err(io::Error::from),
        }
    }
    // Where renameat2 is missing: link (fails if `to` exists), then unlink.
    fs::hard_link(from, to)?;
    let _ = fs::remove_file(from);
    Ok(())
}

/// Links a file opened with `O_TMPFILE` to `to` (as linkat(2) documents, through
/// `/proc/self/fd`, which needs no privilege).
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc.as_str(),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

fn remove_if_there(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Commits one batch (the steps of the module docs); one result per op, in order.
fn commit_batch(
    ops: Vec<Op>,
    msg_dir: &Path,
    env_dir: &Path,
    free: &FreeFiles,
) -> Vec<Result<(), SpoolError>> {
    // 1. Data first.
    for op in &ops {
        match op {
            Op::Store {
                msg: Staged { file, .. },
                ..
            }
            | Op::Update { file, .. } => start_writeback(file),
            Op::Remove { .. } => {}
        }
    }
    let mut results: Vec<Result<(), SpoolError>> = ops
        .iter()
        .map(|op| match op {
            Op::Store {
                msg: Staged { file, to, .. },
                ..
            }
            | Op::Update { file, to, .. } => sync(file, to),
            Op::Remove { .. } => Ok(()),
        })
        .collect();
    // 2. Names.
    let (mut msg_changed, mut env_changed) = (false, false);
    let (mut room, mut freed) = (free.room(), Vec::new());
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        match op {
            Op::Store { id, msg, env } => {
                if result.is_ok() {
                    *result = if env.symlink_metadata().is_ok() {
                        Err(SpoolError::Exists(id.clone()))
                    } else {
                        link_new(msg, id)
                    };
                    msg_changed |= result.is_ok();
                }
                match &msg.from {
                    Origin::Tmp(tmp) => {
                        let _ = fs::remove_file(tmp);
                    }
                    // A file taken from free/ that stays there holds this message: gone.
                    Origin::Recycled(path) if result.is_err() => {
                        let _ = fs::remove_file(path);
                    }
                    _ => {}
                }
            }
            Op::Update { tmp, to, .. } => {
                if result.is_ok() {
                    *result = fs::rename(tmp, to).map_err(io_err("rename", to));
                    env_changed |= result.is_ok();
                }
                if result.is_err() {
                    let _ = fs::remove_file(tmp);
                }
            }
            Op::Remove { msg, .. } => {
                // The message's file goes to free/ while there is room, else away.
                *result = if room > 0 {
                    let to = free.new_name();
                    match fs::rename(msg, &to) {
                        Ok(()) => {
                            room -= 1;
                            freed.push(to);
                            Ok(())
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(io_err("rename", msg)(e)),
                    }
                } else {
                    remove_if_there(msg)
                };
                msg_changed |= result.is_ok();
            }
        }
    }
    // 3. One fsync per directory for the whole batch.
    let msg_synced = if msg_changed {
        fsync_dir(msg_dir)
    } else {
        Ok(())
    };
    let env_synced = if env_changed {
        fsync_dir(env_dir)
    } else {
        Ok(())
    };
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        if result.is_err() {
            continue;
        }
        let synced = match op {
            Op::Store { .. } | Op::Remove { .. } => msg_synced.as_ref(),
            Op::Update { .. } => env_synced.as_ref(),
        };
        if let Err(e) = synced {
            *result = Err(again(e));
        }
    }
    // 4. States whose messages are durably gone.
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        if let Op::Remove { env, .. } = op
            && result.is_ok()
        {
            *result = remove_if_there(env);
        }
    }
    // 5. Freed files emptied (no removed message lingers on disk), then kept for reuse.
    for path in freed {
        let _ = free.keep(path);
    }
    results
}
#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// `text` written to `tmp/<name>`.
    fn written(root: &Path, name: &str, text: &[u8]) -> (File, PathBuf) {
        let tmp = root.join("tmp").join(name);
        let mut file = File::create_new(&tmp).unwrap();
        file.write_all(text).unwrap();
        (file, tmp)
    }

    fn staged(root: &Path, name: &str, to: &Path, text: &[u8]) -> Staged {
        let (file, tmp) = written(root, name, text);
        Staged {
            file,
            from: Origin::Tmp(tmp),
            to: to.to_path_buf(),
        }
    }

    fn spool_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["tmp", "msg", "env", "free"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let (msg, env) = (dir.path().join("msg"), dir.path().join("env"));
        (dir, msg, env)
    }

    fn store(root: &Path, id: &str, text: &[u8]) -> Op {
        Op::Store {
            id: id.into(),
            msg: staged(root, &format!("{id}.msg"), &root.join("msg").join(id), text),
            env: root.join("env").join(format!("{id}.json")),
        }
    }

    /// One batch with every kind of change; a failing job fails alone.
    #[test]
    fn one_batch_commits_each_change_and_fails_only_the_failing_one() {
        let (dir, msg, env) = spool_dirs();
        let root = dir.path();
        fs::write(env.join("U.json"), b"old").unwrap();
        fs::write(env.join("R.json"), b"r").unwrap();
        fs::write(msg.join("R"), b"r").unwrap();
        fs::write(msg.join("TAKEN"), b"first").unwrap();
        fs::write(env.join("LEFT.json"), b"{}").unwrap();
        let ops = vec![
            store(root, "A", b"a"),
            store(root, "TAKEN", b"second"),
            store(root, "LEFT", b"left"),
            {
                let (file, tmp) = written(root, "U.new", b"new");
                Op::Update {
                    file,
                    tmp,
                    to: env.join("U.json"),
                }
            },
            Op::Remove {
                msg: msg.join("R"),
                env: env.join("R.json"),
            },
            Op::Remove {
                msg: msg.join("GONE"),
                env: env.join("GONE.json"),
            },
        ];
        let free = FreeFiles {
            dir: root.join("free"),
            names: Default::default(),
        };
        let results = commit_batch(ops, &msg, &env, &free);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(matches!(&results[1], Err(SpoolError::Exists(id)) if id == "TAKEN"));
        assert!(matches!(&results[2], Err(SpoolError::Exists(id)) if id == "LEFT"));
        assert!(results[3..].iter().all(Result::is_ok), "{results:?}");
        assert_eq!(fs::read(msg.join("A")).unwrap(), b"a");
        assert_eq!(fs::read(msg.join("TAKEN")).unwrap(), b"first");
        assert!(!msg.join("LEFT").exists());
        assert_eq!(fs::read(env.join("U.json")).unwrap(), b"new");
        assert!(!env.join("R.json").exists() && !msg.join("R").exists());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        // R's file was kept for reuse, emptied.
        let kept = free.take().unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"");
        assert!(free.take().is_none());
    }

    /// Concurrent callers are served in shared batches and each gets its own answer.
    #[test]
    fn concurrent_commits_share_batches() {
        let (dir, _, _) = spool_dirs();
        let root = dir.path().to_path_buf();
        let committer = std::sync::Arc::new(Committer::new(&root));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (committer, root) = (committer.clone(), root.clone());
                std::thread::spawn(move || {
                    for i in 0..8 {
                        let id = format!("T{t}-{i}");
                        committer.commit(store(&root, &id, id.as_bytes())).unwrap();
                        let text = fs::read(root.join("msg").join(&id)).unwrap();
                        assert_eq!(text, id.as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = committer.counters();
        assert_eq!(c.changes.load(Ordering::Relaxed), 128);
        let batches = c.batches.load(Ordering::Relaxed);
        assert!((1..=128).contains(&batches), "{batches} batches");
        assert_eq!(fs::read_dir(root.join("msg")).unwrap().count(), 128);
    }
}
