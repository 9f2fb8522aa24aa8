//! The on-disk spool: one immutable message file and one state file per queued message.
//!
//! ```text
//! <spool>/tmp/          files being written (emptied at start)
//! <spool>/msg/<id>      the message as it goes out (our Received: header included)
//! <spool>/env/<id>.json envelope and per-recipient state (see [`Entry`])
//! ```
//!
//! Commit protocol, so that a crash at any point leaves either nothing or a complete entry:
//!
//! 1. write `tmp/<id>.msg`, fsync it, rename it to `msg/<id>`;
//! 2. write `tmp/<id>.json`, fsync it, rename it to `env/<id>.json` (the commit point);
//! 3. fsync `msg/` and `env/`, so both names are durable, and only then answer 250.
//!
//! State updates write a new `tmp/` file, fsync it and rename it over the old one (atomic
//! replace), then fsync `env/`. Removal deletes the state file first (un-commit), fsyncs
//! `env/`, then deletes the message. The fsyncs and names of concurrent changes are
//! committed together, one directory fsync per batch ([`commit`](super::commit)); the
//! files are written by each caller. Recovery at start ([`Spool::recover`]) loads every state file whose message
//! exists, deletes messages without a state file (a crash between steps 1 and 2: the
//! client never got its 250), moves unreadable state files to `corrupt/` with a warning,
//! and empties `tmp/`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::commit::{CommitCounters, Committer, Op, Staged};
use super::entry::Entry;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("spool {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A state file could not be encoded or decoded.
    #[error("spool state {path}: {reason}")]
    Format {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// An id with characters that cannot name a file.
    #[error("invalid queue id {0:?}")]
    BadId(String),
    /// An entry with this id is already queued (it is never replaced).
    #[error("queue id {0} is taken")]
    Exists(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    committer: Arc<Committer>,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Complete entries, to be scheduled.
    pub entries: Vec<Entry>,
    /// Messages without a state file that were deleted (never acknowledged).
    pub incomplete: usize,
    /// State files that could not be read, moved to `corrupt/`.
    pub corrupt: usize,
}

/// Queue ids name files: letters, digits, `.`, `-`, `_` only, not starting with `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn check_id(id: &str) -> Result<(), SpoolError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(SpoolError::BadId(id.to_string()))
    }
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Writes a message file's contents (the caller's `write`, reading a spilled message
/// from its file if need be).
pub type Contents<'a> = &'a dyn Fn(&mut File) -> io::Result<()>;

/// `Contents` made of `parts` in order.
pub fn parts<'a>(parts: &'a [&'a [u8]]) -> impl Fn(&mut File) -> io::Result<()> + 'a {
    move |f| parts.iter().try_for_each(|p| f.write_all(p))
}

/// Creates `path` under `tmp/` and writes it (not synced: the commit does that).
fn write_new(path: &Path, write: Contents<'_>) -> Result<File, SpoolError> {
    let mut f = crate::private_fs::create_new(path).map_err(io_err("create", path))?;
    match write(&mut f) {
        Ok(()) => Ok(f),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(io_err("write", path)(e))
        }
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let root = root.into();
        for sub in ["tmp", "msg", "env", "corrupt"] {
            let d = root.join(sub);
            crate::private_fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        // Queued mail is readable by the gateway's user only, however the spool was made.
        for d in [
            &root,
            &root.join("tmp"),
            &root.join("msg"),
            &root.join("env"),
            &root.join("corrupt"),
        ] {
            crate::private_fs::restrict_dir(d).map_err(io_err("chmod 0700", d))?;
        }
        let committer = Arc::new(Committer::new(&root));
        Ok(Spool { root, committer })
    }

    /// Batches and changes committed since this spool was opened.
    pub fn commit_counters(&self) -> &CommitCounters {
        self.committer.counters()
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn msg_path(&self, id: &str) -> PathBuf {
        self.root.join("msg").join(id)
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.root.join("env").join(format!("{id}.json"))
    }

    /// Durably stores a new entry and its message (what `write` writes). When this
    /// returns `Ok`, the entry survives a crash or power loss. An entry never replaces
    /// another: the files are linked into place, which fails if the name is taken
    /// ([`SpoolError::Exists`]), where a rename would overwrite.
    pub fn store(&self, entry: &Entry, write: Contents<'_>) -> Result<(), SpoolError> {
        check_id(&entry.id)?;
        let id = &entry.id;
        let json = self.encode(entry)?;
        let unique = rand::random::<u64>();
        let tmp_msg = self.root.join("tmp").join(format!("{id}.msg.{unique:x}"));
        let tmp_env = self.root.join("tmp").join(format!("{id}.json.{unique:x}"));
        let msg = write_new(&tmp_msg, write)?;
        let env = match write_new(&tmp_env, &|f| f.write_all(&json)) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&tmp_msg);
                return Err(e);
            }
        };
        self.committer.commit(Op::Store {
            id: id.clone(),
            msg: Staged {
                file: msg,
                tmp: tmp_msg,
                to: self.msg_path(id),
            },
            env: Staged {
                file: env,
                tmp: tmp_env,
                to: self.env_path(id),
            },
        })
    }

    /// Stores a new entry under its id, or, if that is taken, under the first free
    /// `<id>-<n>` (n = 2, 3, …; a few tries); returns the entry as stored.
    pub fn store_unique(&self, mut entry: Entry, write: Contents<'_>) -> Result<Entry, SpoolError> {
        let base = entry.id.clone();
        for n in 1..=16 {
            if n > 1 {
                entry.id = format!("{base}-{n}");
            }
            match self.store(&entry, write) {
                Ok(()) => return Ok(entry),
                Err(SpoolError::Exists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SpoolError::Exists(base))
    }

    fn encode(&self, entry: &Entry) -> Result<Vec<u8>, SpoolError> {
        serde_json::to_vec_pretty(entry).map_err(|e| SpoolError::Format {
            path: self.env_path(&entry.id),
            reason: e.to_string(),
        })
    }

    /// Atomically replaces an entry's state.
    pub fn update(&self, entry: &Entry) -> Result<(), SpoolError> {
        check_id(&entry.id)?;
        let json = self.encode(entry)?;
        let tmp =
            self.root
                .join("tmp")
                .join(format!("{}.json.{:x}", entry.id, rand::random::<u32>()));
        let file = write_new(&tmp, &|f| f.write_all(&json))?;
        self.committer.commit(Op::Update(Staged {
            file,
            tmp,
            to: self.env_path(&entry.id),
        }))
    }

    /// Removes an entry (state first, then message).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        check_id(id)?;
        self.committer.commit(Op::Remove {
            env: self.env_path(id),
            msg: self.msg_path(id),
        })
    }

    /// Reads an entry's message.
    pub fn message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        check_id(id)?;
        let p = self.msg_path(id);
        fs::read(&p).map_err(io_err("read", &p))
    }

    /// Reads an entry's state.
    pub fn load(&self, id: &str) -> Result<Entry, SpoolError> {
        check_id(id)?;
        let p = self.env_path(id);
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Format {
            path: p,
            reason: e.to_string(),
        })
    }

    /// Every committed entry id, sorted.
    pub fn ids(&self) -> Result<Vec<String>, SpoolError> {
        let dir = self.root.join("env");
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && valid_id(id)
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Recovers the spool after a start or crash (see the module docs).
    pub fn recover(&self) -> Result<Recovered, SpoolError> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let p = e.map_err(io_err("list", &tmp))?.path();
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
        let mut out = Recovered::default();
        let mut committed = std::collections::HashSet::new();
        for id in self.ids()? {
            let has_msg = self.msg_path(&id).exists();
            match self.load(&id) {
                Ok(entry) if has_msg && entry.id == id => {
                    committed.insert(id);
                    out.entries.push(entry);
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) if !has_msg => "message file missing".into(),
                        Ok(_) => "id does not match the file name".into(),
                    };
                    tracing::warn!(queue_id = %id, reason = %why, "corrupt queue entry moved to corrupt/");
                    let from = self.env_path(&id);
                    let to = self.root.join("corrupt").join(format!("{id}.json"));
                    fs::rename(&from, &to).map_err(io_err("rename", &from))?;
                    let msg = self.msg_path(&id);
                    if msg.exists() {
                        let to = self.root.join("corrupt").join(&id);
                        fs::rename(&msg, &to).map_err(io_err("rename", &msg))?;
                    }
                    out.corrupt += 1;
                }
            }
        }
        let msgdir = self.root.join("msg");
        for e in fs::read_dir(&msgdir).map_err(io_err("list", &msgdir))? {
            let e = e.map_err(io_err("list", &msgdir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !committed.contains(&name) {
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
                out.incomplete += 1;
            }
        }
        fsync_dir(&msgdir)?;
        fsync_dir(&self.root.join("env"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::entry::tests::sample;

    #[test]
    fn store_load_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let mut e = sample("A1");
        s.store(
            &e,
            &parts(&[b"Received: x\r\n", b"Subject: t\r\n\r\nbody\r\n"]),
        )
        .unwrap();
        assert_eq!(
            s.message("A1").unwrap(),
            b"Received: x\r\nSubject: t\r\n\r\nbody\r\n"
        );
        assert_eq!(s.load("A1").unwrap(), e);
        e.attempts = 3;
        s.update(&e).unwrap();
        assert_eq!(s.load("A1").unwrap().attempts, 3);
        assert_eq!(s.ids().unwrap(), vec!["A1".to_string()]);
        s.remove("A1").unwrap();
        assert!(s.ids().unwrap().is_empty());
        assert!(s.message("A1").is_err());
    }

    #[test]
    fn recovery_keeps_complete_and_drops_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.store(&sample("OK1"), &parts(&[b"m\r\n"])).unwrap();
        // Crash after step 1: message without state.
        fs::write(dir.path().join("msg/HALF"), b"m\r\n").unwrap();
        // Crash while writing: leftovers in tmp.
        fs::write(dir.path().join("tmp/X.json"), b"{").unwrap();
        // A state file that is not JSON, and one whose message is gone.
        fs::write(dir.path().join("env/BAD.json"), b"{not json").unwrap();
        fs::write(dir.path().join("msg/BAD"), b"m\r\n").unwrap();
        let orphan = serde_json::to_vec(&sample("NOMSG")).unwrap();
        fs::write(dir.path().join("env/NOMSG.json"), orphan).unwrap();

        let r = s.recover().unwrap();
        assert_eq!(
            r.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["OK1"]
        );
        assert_eq!(r.incomplete, 1);
        assert_eq!(r.corrupt, 2);
        assert!(!dir.path().join("msg/HALF").exists());
        assert!(dir.path().join("corrupt/BAD.json").exists());
        assert!(dir.path().join("corrupt/BAD").exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(s.ids().unwrap(), vec!["OK1".to_string()]);
    }

    #[test]
    fn ids_that_could_escape_the_spool_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a\0b"] {
            assert!(!valid_id(bad), "{bad:?}");
            assert!(matches!(s.message(bad), Err(SpoolError::BadId(_))));
        }
    }

    #[test]
    fn an_entry_never_replaces_another() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.store(&sample("Q1"), &parts(&[b"first\r\n"])).unwrap();
        assert!(matches!(
            s.store(&sample("Q1"), &parts(&[b"second\r\n"])),
            Err(SpoolError::Exists(_))
        ));
        assert_eq!(s.message("Q1").unwrap(), b"first\r\n");
        let again = s
            .store_unique(sample("Q1"), &parts(&[b"second\r\n"]))
            .unwrap();
        assert_eq!(again.id, "Q1-2");
        assert_eq!(s.message("Q1-2").unwrap(), b"second\r\n");
        assert_eq!(s.ids().unwrap(), ["Q1", "Q1-2"]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
