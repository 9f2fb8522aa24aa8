//! The on-disk spool: one message file per queued message, its initial state inside,
//! and a state file once that state changes.
//!
//! ```text
//! <spool>/tmp/          files being written under a name (emptied at start)
//! <spool>/msg/<id>      header line, initial state (JSON), then the message as it goes
//!                       out (our Received: header included)
//! <spool>/env/<id>.json the entry's state (see [`Entry`]) once it changed: it overrides
//!                       the initial state
//! <spool>/free/         emptied files of removed messages, rewritten by new ones
//! ```
//!
//! The message file starts with `mailgate-queue-entry 1 <n>\n` and `n` octets of JSON.
//! Files of the earlier layout (the message alone, its state always in `env/`) are read
//! as they are.
//!
//! Commit protocol, so that a crash at any point leaves either nothing or a complete entry:
//!
//! 1. write the message file: an emptied one from `free/`, else one without a name
//!    (`O_TMPFILE`; where that is not supported, `tmp/<id>.msg.<random>`); fsync it;
//! 2. rename or link it to `msg/<id>` (the commit point; never over an existing name);
//! 3. fsync `msg/`, and only then answer 250.
//!
//! State updates write a new `tmp/` file, fsync it and rename it over `env/<id>.json`
//! (atomic replace), then fsync `env/`. Removal moves the message to `free/` (or deletes
//! it; the un-commit), fsyncs `msg/`, deletes the state file, then empties the moved
//! file. The fsyncs and names of concurrent changes are committed together, one
//! directory fsync per batch ([`commit`](super::commit)); the files are written by each
//! caller. Recovery at start ([`Spool::recover`]) loads every
//! message with its state (the state file if there is one), deletes state files without
//! a message (a removal cut short), deletes messages of the earlier layout that have no
//! state (a crash before their commit point), moves unreadable entries to `corrupt/`
//! with a warning, empties `tmp/` and empties the files in `free/`.

use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::commit::{CommitCounters, Committer, Op, Origin, Staged};
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

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SpoolError + 'a {
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
    /// Whether new message files are made without a name (`O_TMPFILE`): turned off for
    /// good by the first file system that refuses it.
    unnamed: Arc<std::sync::atomic::AtomicBool>,
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
    /// State files without a message (a removal cut short), deleted.
    pub removed: usize,
}

/// The first octets of a message file that holds its initial state.
const MAGIC: &[u8] = b"mailgate-queue-entry 1 ";

/// The most a header line may take (magic, length, newline).
const MAX_HEADER_LINE: usize = 64;

/// The header of a message file holding `state`.
fn header(state: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(MAGIC.len() + 12 + state.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(format!("{}\n", state.len()).as_bytes());
    h.extend_from_slice(state);
    h
}

/// Where the initial state lies in a message file, from its first octets (its header
/// line at least): its offset and length; `None` for a message of the earlier layout (no
/// header), `Err` for a broken header line.
fn header_of(prefix: &[u8]) -> Result<Option<(usize, usize)>, &'static str> {
    let Some(rest) = prefix.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let nl = rest
        .iter()
        .take(MAX_HEADER_LINE)
        .position(|&b| b == b'\n')
        .ok_or("no end to the header line")?;
    let n: usize = std::str::from_utf8(&rest[..nl])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or("bad state length")?;
    Ok(Some((MAGIC.len() + nl + 1, n)))
}

/// Where the initial state and the message lie in a whole message file's octets.
fn split(bytes: &[u8]) -> Result<Option<(std::ops::Range<usize>, usize)>, &'static str> {
    let Some((start, n)) = header_of(bytes)? else {
        return Ok(None);
    };
    let end = start
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or("state cut short")?;
    Ok(Some((start..end, end)))
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

pub(super) fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
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

/// Opens a file without a name in `dir` (`O_TMPFILE`, mode 0600); `None` where the
/// system or file system does not support it.
#[cfg(target_os = "linux")]
fn create_unnamed(dir: &Path) -> Option<io::Result<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir);
    match opened {
        // EOPNOTSUPP: a file system without it; EISDIR or EINVAL: a kernel without it.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            None
        }
        other => Some(other),
    }
}

#[cfg(not(target_os = "linux"))]
fn create_unnamed(_dir: &Path) -> Option<io::Result<File>> {
    None
}

/// Reads up to the end of a message file's header: the initial state's JSON, or `None`
/// for a file of the earlier layout.
fn read_embedded_state(path: &Path) -> Result<Option<Vec<u8>>, SpoolError> {
    let f = File::open(path).map_err(io_err("read", path))?;
    let mut r = io::BufReader::with_capacity(4096, f);
    let mut line = Vec::new();
    (&mut r)
        .take((MAGIC.len() + MAX_HEADER_LINE) as u64)
        .read_until(b'\n', &mut line)
        .map_err(io_err("read", path))?;
    let bad = |reason: &str| SpoolError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let Some((_, n)) = header_of(&line).map_err(bad)? else {
        return Ok(None);
    };
    let mut state = vec![0; n];
    r.read_exact(&mut state)
        .map_err(|_| bad("state cut short"))?;
    Ok(Some(state))
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let root = root.into();
        let subdirs = ["tmp", "msg", "env", "corrupt", "free"].map(|sub| root.join(sub));
        for d in &subdirs {
            crate::private_fs::create_dir_all(d).map_err(io_err("create directory", d))?;
        }
        // Queued mail is readable by the gateway's user only, however the spool was made.
        for d in std::iter::once(&root).chain(&subdirs) {
            crate::private_fs::restrict_dir(d).map_err(io_err("chmod 0700", d))?;
        }
        let committer = Arc::new(Committer::new(&root));
        // An unnamed file is linked through /proc/self/fd.
        let unnamed = Path::new("/proc/self/fd").is_dir();
        Ok(Spool {
            root,
            committer,
            unnamed: Arc::new(unnamed.into()),
        })
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

    /// A new message file, header and message written: without a name if the file
    /// system allows, else under `tmp/`.
    fn write_message(
        &self,
        id: &str,
        head: &[u8],
        write: Contents<'_>,
    ) -> Result<Staged, SpoolError> {
        use std::sync::atomic::Ordering::Relaxed;
        let contents = |f: &mut File| {
            f.write_all(head)?;
            write(f)
        };
        // A freed file (one that cannot be opened, gone meanwhile, is passed over).
        let freed = self.committer.free().take().and_then(|path| {
            let opened = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path);
            opened.ok().map(|file| (path, file))
        });
        if let Some((path, mut file)) = freed {
            return match contents(&mut file) {
                Ok(()) => Ok(Staged {
                    file,
                    from: Origin::Recycled(path),
                    to: self.msg_path(id),
                }),
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    Err(io_err("write", &path)(e))
                }
            };
        }
        if self.unnamed.load(Relaxed) {
            let dir = self.root.join("msg");
            match create_unnamed(&dir) {
                Some(Ok(mut file)) => {
                    contents(&mut file).map_err(io_err("write", &dir))?;
                    return Ok(Staged {
                        file,
                        from: Origin::Unnamed,
                        to: self.msg_path(id),
                    });
                }
                Some(Err(e)) => return Err(io_err("create", &dir)(e)),
                None => self.unnamed.store(false, Relaxed),
            }
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{id}.msg.{:x}", rand::random::<u64>()));
        let file = write_new(&tmp, &contents)?;
        Ok(Staged {
            file,
            from: Origin::Tmp(tmp),
            to: self.msg_path(id),
        })
    }

    /// Durably stores a new entry and its message (what `write` writes). When this
    /// returns `Ok`, the entry survives a crash or power loss. An entry never replaces
    /// another: the file is linked into place, which fails if the name is taken
    /// ([`SpoolError::Exists`]), where a rename would overwrite.
    pub fn store(&self, entry: &Entry, write: Contents<'_>) -> Result<(), SpoolError> {
        check_id(&entry.id)?;
        let state = serde_json::to_vec(entry).map_err(|e| SpoolError::Format {
            path: self.msg_path(&entry.id),
            reason: e.to_string(),
        })?;
        let msg = self.write_message(&entry.id, &header(&state), write)?;
        self.committer.commit(Op::Store {
            id: entry.id.clone(),
            msg,
            env: self.env_path(&entry.id),
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

    fn decode(path: &Path, json: &[u8]) -> Result<Entry, SpoolError> {
        serde_json::from_slice(json).map_err(|e| SpoolError::Format {
            path: path.to_path_buf(),
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
        self.committer.commit(Op::Update {
            file,
            tmp,
            to: self.env_path(&entry.id),
        })
    }

    /// Removes an entry (message first, then state).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        check_id(id)?;
        self.committer.commit(Op::Remove {
            msg: self.msg_path(id),
            env: self.env_path(id),
        })
    }

    /// Reads an entry's message.
    pub fn message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        Ok(self.load_with_message(id)?.1)
    }

    /// The state file's entry, `None` when there is none.
    fn state_file(&self, id: &str) -> Result<Option<Entry>, SpoolError> {
        let p = self.env_path(id);
        match fs::read(&p) {
            Ok(bytes) => Self::decode(&p, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &p)(e)),
        }
    }

    /// An entry's state: its state file, else the one inside its message file; `None`
    /// when there is neither (a message of the earlier layout without its state).
    fn read_state(&self, id: &str) -> Result<Option<Entry>, SpoolError> {
        if let Some(e) = self.state_file(id)? {
            return Ok(Some(e));
        }
        let p = self.msg_path(id);
        read_embedded_state(&p)?
            .map(|json| Self::decode(&p, &json))
            .transpose()
    }

    /// `entry`, read under `id`, if it is that entry's: a file reused for another
    /// message (since removed) was read otherwise.
    fn owned(&self, id: &str, entry: Entry) -> Result<Entry, SpoolError> {
        if entry.id == id {
            Ok(entry)
        } else {
            Err(io_err("read", &self.msg_path(id))(
                io::ErrorKind::NotFound.into(),
            ))
        }
    }

    /// The error for an id with no state at all.
    fn no_state(&self, id: &str) -> SpoolError {
        io_err("read", &self.env_path(id))(io::ErrorKind::NotFound.into())
    }

    /// Reads an entry's state.
    pub fn load(&self, id: &str) -> Result<Entry, SpoolError> {
        check_id(id)?;
        let entry = self.read_state(id)?.ok_or_else(|| self.no_state(id))?;
        self.owned(id, entry)
    }

    /// Reads an entry's state and message with one read of the message file.
    pub fn load_with_message(&self, id: &str) -> Result<(Entry, Vec<u8>), SpoolError> {
        check_id(id)?;
        let p = self.msg_path(id);
        let mut bytes = fs::read(&p).map_err(io_err("read", &p))?;
        let layout = split(&bytes).map_err(|reason| SpoolError::Format {
            path: p.clone(),
            reason: reason.to_string(),
        })?;
        let entry = match (self.state_file(id)?, &layout) {
            (Some(e), _) => e,
            (None, Some((state, _))) => Self::decode(&p, &bytes[state.clone()])?,
            (None, None) => return Err(self.no_state(id)),
        };
        let entry = self.owned(id, entry)?;
        if let Some((_, body)) = layout {
            bytes.drain(..body);
        }
        Ok((entry, bytes))
    }

    /// Every queued entry id, sorted.
    pub fn ids(&self) -> Result<Vec<String>, SpoolError> {
        let dir = self.root.join("msg");
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_id(&name) {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Moves an entry's files to `corrupt/`.
    fn to_corrupt(&self, id: &str) -> Result<(), SpoolError> {
        for (from, name) in [
            (self.env_path(id), format!("{id}.json")),
            (self.msg_path(id), id.to_string()),
        ] {
            if from.exists() {
                let to = self.root.join("corrupt").join(name);
                fs::rename(&from, &to).map_err(io_err("rename", &from))?;
            }
        }
        Ok(())
    }

    /// Recovers the spool after a start or crash (see the module docs).
    pub fn recover(&self) -> Result<Recovered, SpoolError> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let p = e.map_err(io_err("list", &tmp))?.path();
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
        }
        let mut out = Recovered::default();
        let mut queued = std::collections::HashSet::new();
        for id in self.ids()? {
            match self.read_state(&id) {
                Ok(Some(entry)) if entry.id == id => {
                    queued.insert(id);
                    out.entries.push(entry);
                }
                Ok(None) => {
                    // The earlier layout's message without its state: never committed.
                    let p = self.msg_path(&id);
                    fs::remove_file(&p).map_err(io_err("remove", &p))?;
                    out.incomplete += 1;
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "id does not match the file name".into(),
                    };
                    tracing::warn!(queue_id = %id, reason = %why, "corrupt queue entry moved to corrupt/");
                    self.to_corrupt(&id)?;
                    out.corrupt += 1;
                }
            }
        }
        let envdir = self.root.join("env");
        for e in fs::read_dir(&envdir).map_err(io_err("list", &envdir))? {
            let e = e.map_err(io_err("list", &envdir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json")
                && !queued.contains(id)
            {
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
                out.removed += 1;
            }
        }
        fsync_dir(&self.root.join("msg"))?;
        fsync_dir(&envdir)?;
        // Files a removal moved to free/ before a crash could empty them: emptied now.
        let freedir = self.root.join("free");
        for e in fs::read_dir(&freedir).map_err(io_err("list", &freedir))? {
            let p = e.map_err(io_err("list", &freedir))?.path();
            self.committer
                .free()
                .keep(p.clone())
                .map_err(io_err("remove", &p))?;
        }
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
        let path = |p: &str| dir.path().join(p);
        let s = Spool::open(dir.path()).unwrap();
        s.store(&sample("OK1"), &parts(&[b"m\r\n"])).unwrap();
        // Updated: the state file overrides the initial state.
        let mut upd = sample("UPD");
        s.store(&upd, &parts(&[b"u\r\n"])).unwrap();
        upd.attempts = 2;
        s.update(&upd).unwrap();
        // The earlier layout: the message alone, its state in env/.
        fs::write(path("msg/OLD"), b"o\r\n").unwrap();
        fs::write(
            path("env/OLD.json"),
            serde_json::to_vec(&sample("OLD")).unwrap(),
        )
        .unwrap();
        // The earlier layout cut before its commit point: message without state.
        fs::write(path("msg/HALF"), b"m\r\n").unwrap();
        // Crash while writing: leftovers in tmp.
        fs::write(path("tmp/X.json"), b"{").unwrap();
        // A state file that is not JSON; an initial state that is not; one cut short.
        fs::write(path("env/BAD.json"), b"{not json").unwrap();
        fs::write(path("msg/BAD"), b"m\r\n").unwrap();
        fs::write(
            path("msg/BADHDR"),
            [header(b"{nope"), b"m\r\n".to_vec()].concat(),
        )
        .unwrap();
        fs::write(path("msg/CUT"), b"mailgate-queue-entry 1 999\n{}").unwrap();
        // A removal cut short: the state is left, its message gone.
        let orphan = serde_json::to_vec(&sample("NOMSG")).unwrap();
        fs::write(path("env/NOMSG.json"), orphan).unwrap();
        // A removed message's file moved to free/ but not yet emptied.
        fs::write(path("free/0123"), b"delivered mail").unwrap();

        let r = s.recover().unwrap();
        let kept: Vec<_> = r
            .entries
            .iter()
            .map(|e| (e.id.as_str(), e.attempts))
            .collect();
        assert_eq!(kept, [("OK1", 0), ("OLD", 0), ("UPD", 2)]);
        assert_eq!((r.incomplete, r.corrupt, r.removed), (1, 3, 1));
        assert!(!path("msg/HALF").exists() && !path("env/NOMSG.json").exists());
        for moved in ["BAD.json", "BAD", "BADHDR", "CUT"] {
            assert!(path("corrupt").join(moved).exists(), "{moved}");
        }
        assert_eq!(fs::read_dir(path("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read(path("free/0123")).unwrap(), b"");
        assert_eq!(s.ids().unwrap(), ["OK1", "OLD", "UPD"]);
        assert_eq!(s.message("OLD").unwrap(), b"o\r\n");
        assert_eq!(
            s.load_with_message("UPD").unwrap(),
            (upd, b"u\r\n".to_vec())
        );
    }

    /// Both ways of making a new file (without a name, and under `tmp/` where that is
    /// refused) commit the same entry, leave nothing behind, and never replace a
    /// queued entry or take an id whose state file is still there.
    #[test]
    fn unnamed_and_named_new_files_commit_alike() {
        for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let s = Spool::open(dir.path()).unwrap();
            s.unnamed
                .store(unnamed, std::sync::atomic::Ordering::Relaxed);
            let n1 = sample("N1");
            s.store(&n1, &parts(&[b"a\r\n", b"b\r\n"])).unwrap();
            assert_eq!(
                s.load_with_message("N1").unwrap(),
                (n1, b"a\r\nb\r\n".to_vec())
            );
            assert!(matches!(
                s.store(&sample("N1"), &parts(&[b"x"])),
                Err(SpoolError::Exists(_))
            ));
            fs::write(dir.path().join("env/N2.json"), b"{}").unwrap();
            assert!(matches!(
                s.store(&sample("N2"), &parts(&[b"x"])),
                Err(SpoolError::Exists(_))
            ));
            assert_eq!(s.ids().unwrap(), ["N1"]);
            assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
            s.remove("N1").unwrap();
            assert!(s.ids().unwrap().is_empty() && s.load("N1").is_err());
            // N1's file was kept, emptied, and the next message rewrites it.
            let free = || fs::read_dir(dir.path().join("free")).unwrap().count();
            assert_eq!(free(), 1);
            let n3 = sample("N3");
            s.store(&n3, &parts(&[b"c\r\n"])).unwrap();
            assert_eq!(free(), 0);
            assert_eq!(s.load_with_message("N3").unwrap(), (n3, b"c\r\n".to_vec()));
        }
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

    /// A freed file that is gone is passed over (the message goes to a new file), and a
    /// file read under an id that is not the one inside it is not that entry.
    #[test]
    fn a_vanished_freed_file_and_a_foreign_entry_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.committer.free().give(dir.path().join("free/gone"));
        let v1 = sample("V1");
        s.store(&v1, &parts(&[b"v\r\n"])).unwrap();
        assert_eq!(s.load_with_message("V1").unwrap(), (v1, b"v\r\n".to_vec()));
        let json = serde_json::to_vec(&sample("OTHER")).unwrap();
        fs::write(
            dir.path().join("msg/V2"),
            [header(&json), b"o\r\n".to_vec()].concat(),
        )
        .unwrap();
        assert!(s.load("V2").is_err());
        assert!(s.load_with_message("V2").is_err());
    }
}
