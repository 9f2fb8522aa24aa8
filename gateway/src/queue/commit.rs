//! Group commit of the spool's writes: one thread makes the changes of every session
//! that is waiting durable together.
//!
//! A caller writes its new files under `tmp/` itself (in parallel with other callers),
//! then hands the commit to this thread and waits for its answer. The thread takes
//! every job that is waiting as one batch and, for the whole batch:
//!
//! 1. starts the write-back of every new file, then waits for each (`fdatasync`): the
//!    data is on disk before any name points at it;
//! 2. links new entries into place (message, then state: the commit point), renames
//!    replaced states over the old ones, unlinks the states of removed entries;
//! 3. fsyncs `msg/` and `env/` once for the batch, instead of once per message;
//! 4. unlinks the messages of removed entries (their states are gone for good);
//! 5. answers each caller: `Ok` means durable, as [`Spool::store`](super::spool::Spool::store)
//!    promises.
//!
//! So the number of journal commits follows the number of batches, not of messages:
//! with many concurrent sessions one directory fsync serves all of them (what Postfix
//! does with one fsync per queue file costs a journal commit per message). The order of
//! the steps is the order of the one-at-a-time protocol the module docs of `spool`
//! describe; a crash at any point leaves what that protocol's recovery handles.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use super::spool::SpoolError;

/// At most this many jobs per batch, so that one batch's latency stays bounded.
const MAX_BATCH: usize = 256;

/// A new file written under `tmp/`, to be made durable and given its name.
#[derive(Debug)]
pub(super) struct Staged {
    /// The open file (written, not yet synced).
    pub file: File,
    /// Its name under `tmp/`.
    pub tmp: PathBuf,
    /// Its name once committed.
    pub to: PathBuf,
}

/// One change to commit.
#[derive(Debug)]
pub(super) enum Op {
    /// A new entry: its message, then its state, linked into place (a taken name fails
    /// with [`SpoolError::Exists`], never replacing an entry).
    Store {
        /// The entry's id (for `Exists`).
        id: String,
        /// The message file.
        msg: Staged,
        /// The state file.
        env: Staged,
    },
    /// A new state renamed over an entry's state.
    Update(Staged),
    /// An entry removed: its state, then (once that is durable) its message.
    Remove {
        /// The state file.
        env: PathBuf,
        /// The message file.
        msg: PathBuf,
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
}

impl Committer {
    pub fn new(root: &Path) -> Committer {
        Committer {
            msg_dir: root.join("msg"),
            env_dir: root.join("env"),
            tx: OnceLock::new(),
            counters: Default::default(),
        }
    }

    pub fn counters(&self) -> &CommitCounters {
        &self.counters
    }

    /// Commits `op` with whatever else is waiting; returns when it is durable (or failed).
    pub fn commit(&self, op: Op) -> Result<(), SpoolError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let (msg_dir, env_dir) = (self.msg_dir.clone(), self.env_dir.clone());
            let counters = self.counters.clone();
            let spawned = std::thread::Builder::new()
                .name("mailgate-spool-commit".into())
                .spawn(move || run(rx, &msg_dir, &env_dir, &counters));
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

fn run(rx: Receiver<Job>, msg_dir: &Path, env_dir: &Path, counters: &CommitCounters) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .changes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (ops, dones): (Vec<Op>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.done)).unzip();
        for (result, done) in commit_batch(ops, msg_dir, env_dir).into_iter().zip(dones) {
            // A caller that went away (its task was cancelled) needs no answer.
            let _ = done.send(result);
        }
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> SpoolError {
    SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source,
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

fn sync(s: &Staged) -> Result<(), SpoolError> {
    s.file.sync_data().map_err(|e| io_err("fsync", &s.tmp, e))
}

fn link_new(s: &Staged, id: &str) -> Result<(), SpoolError> {
    fs::hard_link(&s.tmp, &s.to).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SpoolError::Exists(id.to_string())
        } else {
            io_err("link", &s.to, e)
        }
    })
}

fn remove_if_there(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path, e)),
        _ => Ok(()),
    }
}

/// Commits one batch (the steps of the module docs); one result per op, in order.
fn commit_batch(ops: Vec<Op>, msg_dir: &Path, env_dir: &Path) -> Vec<Result<(), SpoolError>> {
    // 1. Data first.
    for op in &ops {
        match op {
            Op::Store { msg, env, .. } => {
                start_writeback(&msg.file);
                start_writeback(&env.file);
            }
            Op::Update(env) => start_writeback(&env.file),
            Op::Remove { .. } => {}
        }
    }
    let mut results: Vec<Result<(), SpoolError>> = ops
        .iter()
        .map(|op| match op {
            Op::Store { msg, env, .. } => sync(msg).and_then(|()| sync(env)),
            Op::Update(env) => sync(env),
            Op::Remove { .. } => Ok(()),
        })
        .collect();
    // 2. Names.
    let (mut msg_changed, mut env_changed) = (false, false);
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        match op {
            Op::Store { id, msg, env } => {
                if result.is_ok() {
                    *result = link_new(msg, id).and_then(|()| {
                        msg_changed = true;
                        link_new(env, id).inspect_err(|_| {
                            // Not committed: the message file is ours, and nobody was told 250.
                            let _ = fs::remove_file(&msg.to);
                        })
                    });
                    env_changed |= result.is_ok();
                }
                let _ = fs::remove_file(&msg.tmp);
                let _ = fs::remove_file(&env.tmp);
            }
            Op::Update(env) => {
                if result.is_ok() {
                    *result =
                        fs::rename(&env.tmp, &env.to).map_err(|e| io_err("rename", &env.to, e));
                    env_changed |= result.is_ok();
                }
                if result.is_err() {
                    let _ = fs::remove_file(&env.tmp);
                }
            }
            Op::Remove { env, .. } => {
                *result = remove_if_there(env);
                env_changed |= result.is_ok();
            }
        }
    }
    // 3. One fsync per directory for the whole batch.
    let fsync_dir = |dir: &Path| {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", dir, e))
    };
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
            Op::Store { .. } => msg_synced.as_ref().and(env_synced.as_ref()),
            Op::Update(_) | Op::Remove { .. } => env_synced.as_ref(),
        };
        if let Err(e) = synced {
            *result = Err(again(e));
        }
    }
    // 4. Messages whose states are durably gone.
    for (op, result) in ops.iter().zip(results.iter_mut()) {
        if let Op::Remove { msg, .. } = op
            && result.is_ok()
        {
            *result = remove_if_there(msg);
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn staged(root: &Path, name: &str, to: &Path, text: &[u8]) -> Staged {
        let tmp = root.join("tmp").join(name);
        let mut file = File::create_new(&tmp).unwrap();
        file.write_all(text).unwrap();
        Staged {
            file,
            tmp,
            to: to.to_path_buf(),
        }
    }

    /// One batch with every kind of change; a failing job fails alone.
    #[test]
    fn one_batch_commits_each_change_and_fails_only_the_failing_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["tmp", "msg", "env"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        let (msg, env) = (root.join("msg"), root.join("env"));
        fs::write(env.join("U.json"), b"old").unwrap();
        fs::write(env.join("R.json"), b"r").unwrap();
        fs::write(msg.join("R"), b"r").unwrap();
        fs::write(msg.join("TAKEN"), b"first").unwrap();
        let store = |id: &str, text: &[u8]| Op::Store {
            id: id.into(),
            msg: staged(root, &format!("{id}.msg"), &msg.join(id), text),
            env: staged(
                root,
                &format!("{id}.json"),
                &env.join(format!("{id}.json")),
                b"{}",
            ),
        };
        let ops = vec![
            store("A", b"a"),
            store("TAKEN", b"second"),
            Op::Update(staged(root, "U.new", &env.join("U.json"), b"new")),
            Op::Remove {
                env: env.join("R.json"),
                msg: msg.join("R"),
            },
            Op::Remove {
                env: env.join("GONE.json"),
                msg: msg.join("GONE"),
            },
        ];
        let results = commit_batch(ops, &msg, &env);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(matches!(&results[1], Err(SpoolError::Exists(id)) if id == "TAKEN"));
        assert!(results[2..].iter().all(Result::is_ok), "{results:?}");
        assert_eq!(fs::read(msg.join("A")).unwrap(), b"a");
        assert_eq!(fs::read(env.join("A.json")).unwrap(), b"{}");
        assert_eq!(fs::read(msg.join("TAKEN")).unwrap(), b"first");
        assert!(!env.join("TAKEN.json").exists());
        assert_eq!(fs::read(env.join("U.json")).unwrap(), b"new");
        assert!(!env.join("R.json").exists() && !msg.join("R").exists());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    /// Concurrent callers are served in shared batches and each gets its own answer.
    #[test]
    fn concurrent_commits_share_batches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for sub in ["tmp", "msg", "env"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        let committer = std::sync::Arc::new(Committer::new(&root));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (committer, root) = (committer.clone(), root.clone());
                std::thread::spawn(move || {
                    for i in 0..8 {
                        let id = format!("T{t}-{i}");
                        let op = Op::Store {
                            id: id.clone(),
                            msg: staged(
                                &root,
                                &format!("{id}.msg"),
                                &root.join("msg").join(&id),
                                id.as_bytes(),
                            ),
                            env: staged(
                                &root,
                                &format!("{id}.json"),
                                &root.join("env").join(format!("{id}.json")),
                                b"{}",
                            ),
                        };
                        committer.commit(op).unwrap();
                        assert_eq!(fs::read(root.join("msg").join(&id)).unwrap(), id.as_bytes());
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
        assert_eq!(fs::read_dir(root.join("env")).unwrap().count(), 128);
    }
}
