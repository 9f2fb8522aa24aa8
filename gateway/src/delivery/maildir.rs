//! Local delivery into Maildirs ("maildir" delivery mode).
//!
//! Every recipient `local@domain` has its own Maildir at `<root>/<domain>/<local>/` with
//! the usual `tmp/`, `new/` and `cur/`, created on first delivery. The domain is
//! lowercased; the local part is kept as is but percent-encoded for the file system:
//! every byte outside `[A-Za-z0-9._+=-]` becomes `%XX`, and so does a leading `.` (no
//! hidden directories, no `.`/`..`). So a recipient can never name a path outside its
//! own directory: `../../etc@example.test` ends up in `example.test/%2E.%2F..%2Fetc/`.
//!
//! Delivery follows the Maildir protocol: the copy is written to `tmp/<unique>`, fsynced,
//! renamed into `new/<unique>`, and then `new/` and `tmp/` are fsynced, so once
//! [`Maildir::deliver`] returns the message survives a crash. Each copy starts with
//! `Return-Path: <sender>`, `Delivered-To: <rcpt>` and the given `Received:` header.
//!
//! Unique names follow the Maildir specification:
//! `<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>`, with a process-wide counter.
//!
//! Delivery is synchronous (run it with `spawn_blocking`). Recipients are handled in order;
//! the first failure stops delivery and is returned, and the copies already delivered to
//! earlier recipients stay where they are (the client will retry the whole message after
//! our 4xx, so those recipients may get it twice; that is the usual trade-off of
//! at-least-once delivery).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::smtp::address::mailbox_key;
use crate::smtp::{Message, MessageText};

/// Process-wide delivery counter for unique file names (the `Q` part).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a Maildir delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// The recipient cannot be mapped to a Maildir.
    #[error("invalid recipient {rcpt:?}: {reason}")]
    InvalidRecipient {
        /// The recipient as given.
        rcpt: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing (`create`, `write`, `rename`, ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A tree of Maildirs, one per recipient, under one root directory.
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    /// Host part of unique names, already escaped.
    hostname: String,
    /// Local parts that differ only in case or quoting share one Maildir.
    fold_local_part: bool,
}

impl Maildir {
    /// Maildirs under `root` (created on first delivery). The host part of unique file
    /// names is this machine's hostname (from `/proc/sys/kernel/hostname` or
    /// `/etc/hostname`, else `localhost`); see [`Maildir::with_hostname`].
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| fs::read_to_string(p).ok().filter(|h| !h.trim().is_empty()))
            .unwrap_or_default();
        Maildir {
            root: root.into(),
            hostname: escape_hostname(host.trim()),
            fold_local_part: true,
        }
    }

    /// Whether local parts that differ only in case share one Maildir (the default;
    /// quoting is always folded: `"alice"` is `alice`).
    pub fn fold_local_part(mut self, fold: bool) -> Maildir {
        self.fold_local_part = fold;
        self
    }

    /// Uses `hostname` in unique file names instead (`/` and `:` escaped as the Maildir
    /// specification says, other unusual characters replaced with `_`).
    pub fn with_hostname(mut self, hostname: &str) -> Maildir {
        self.hostname = escape_hostname(hostname);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Maildir of `rcpt` (`local@domain`), without touching the file system: the
    /// domain lowercased, the local part unquoted (and lowercased unless folding is off),
    /// then escaped for the file system.
    pub fn mailbox_path(&self, rcpt: &str) -> Result<PathBuf, MaildirError> {
        let invalid = |reason| MaildirError::InvalidRecipient {
            rcpt: rcpt.to_string(),
            reason,
        };
        if !rcpt.contains('@') {
            return Err(invalid("no domain"));
        }
        let key = mailbox_key(rcpt, self.fold_local_part);
        let (local, domain) = key.rsplit_once('@').ok_or_else(|| invalid("no domain"))?;
        if local.is_empty() || local == "." || local == ".." {
            return Err(invalid("empty or dot-only local part"));
        }
        let domain_ok = !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
        if !domain_ok {
            return Err(invalid("bad domain"));
        }
        Ok(self.root.join(domain).join(encode_local(local)))
    }

    /// Delivers `message` to every recipient of its envelope; see the module docs.
    /// `received_header` must end in CRLF.
    pub fn deliver(&self, message: &Message, received_header: &str) -> Result<(), MaildirError> {
        self.deliver_text(
            &message.envelope.mail_from,
            &message.envelope.rcpt_to,
            received_header,
            &message.text,
        )
    }

    /// Delivers `text` from `sender` to each of `rcpts`, with
    /// `received_header` (empty, or ending in CRLF) in front.
    pub fn deliver_text(
        &self,
        sender: &str,
        rcpts: &[String],
        received_header: &str,
        text: &MessageText,
    ) -> Result<(), MaildirError> {
        let sender = header_safe(sender);
        for rcpt in rcpts {
            let dir = self.mailbox_path(rcpt)?;
            let mut head = format!(
                "Return-Path: <{sender}>\r\nDelivered-To: <{}>\r\n",
                header_safe(rcpt)
            );
            head.push_str(received_header);
            if !received_header.is_empty() && !received_header.ends_with('\n') {
                head.push_str("\r\n");
            }
            self.deliver_one(&dir, head.as_bytes(), text)?;
        }
        Ok(())
    }

    /// Writes one copy into the Maildir at `dir`.
    fn deliver_one(&self, dir: &Path, head: &[u8], text: &MessageText) -> Result<(), MaildirError> {
        let tmp = dir.join("tmp");
        let new = dir.join("new");
        ensure_dir(&tmp)?;
        ensure_dir(&new)?;
        ensure_dir(&dir.join("cur"))?;

        let name = self.unique_name();
        let tmp_path = tmp.join(&name);
        let new_path = new.join(&name);
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| MaildirError::Io { op, path, source }
        };

        let mut file =
            crate::private_fs::create_new(&tmp_path).map_err(io_err("create", &tmp_path))?;
        let written = file
            .write_all(head)
            .and_then(|()| text.write_to(&mut file))
            .map_err(io_err("write", &tmp_path))
            .and_then(|()| file.sync_all().map_err(io_err("fsync", &tmp_path)));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp_path, &new_path) {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_err("rename", &new_path)(e));
        }
        sync_dir(&new)?;
        sync_dir(&tmp)?;
        Ok(())
    }

    /// `<secs>.M<micros>P<pid>Q<counter>.<hostname>`.
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let q = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            q,
            self.hostname
        )
    }
}

/// The host part of a unique name: `/` → `\057`, `:` → `\072`, anything unusual → `_`.
fn escape_hostname(hostname: &str) -> String {
    let mut host = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') => host.push(c),
            _ => host.push('_'),
        }
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    host
}

/// Percent-encodes a local part for use as one path component.
fn encode_local(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    for (i, b) in local.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'=' | b'-');
        if plain && !(i == 0 && b == b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Strips control characters so an address cannot break a header line.
fn header_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Creates `dir` (and missing parents) and fsyncs the parent of every directory created,
/// so the new entries are durable too.
fn ensure_dir(dir: &Path) -> Result<(), MaildirError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent)?;
    }
    match crate::private_fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(MaildirError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// fsyncs a directory so renames and creations in it are durable.
fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| MaildirError::Io {
            op: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: &str, rcpts: &[&str], data: &[u8]) -> Message {
        Message::sample(from, rcpts, data)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    const RECEIVED: &str =
        "Received: from client ([192.0.2.1])\r\n\tby mx; Thu, 01 Jan 1970 00:00:00 +0000\r\n";

    #[test]
    fn delivers_to_each_recipient() {
        let root = tempfile::tempdir().unwrap();
        let md = Maildir::new(root.path()).with_hostname("mx.example.test");
        let msg = message(
            "s@x.test",
            &["a@Example.TEST", "b.c+tag@example.test"],
            b"Subject: hi\r\n\r\nbody\r\n",
        );
        md.deliver(&msg, RECEIVED).unwrap();

        for (local, rcpt) in [("a", "a@Example.TEST"), ("b.c+tag", "b.c+tag@example.test")] {
            let dir = root.path().join("example.test").join(local);
            for sub in ["tmp", "new", "cur"] {
                assert!(dir.join(sub).is_dir(), "{sub} missing");
            }
            assert!(files(&dir.join("tmp")).is_empty(), "tmp not cleaned");
            let new = files(&dir.join("new"));
            assert_eq!(new.len(), 1);
            let content = fs::read(&new[0]).unwrap();
            let expected = format!(
                "Return-Path: <s@x.test>\r\nDelivered-To: <{rcpt}>\r\n{RECEIVED}Subject: hi\r\n\r\nbody\r\n"
            );
            assert_eq!(String::from_utf8(content).unwrap(), expected);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&new[0]).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn null_sender_and_unique_names() {
        let root = tempfile::tempdir().unwrap();
        let md = Maildir::new(root.path()).with_hostname("mx/odd:name");
        let msg = message("", &["u@example.test"], b"x\r\n");
        md.deliver(&msg, RECEIVED).unwrap();
        md.deliver(&msg, RECEIVED).unwrap();
        let new = files(&root.path().join("example.test/u/new"));
        assert_eq!(new.len(), 2, "two deliveries, two distinct files");
        let content = fs::read_to_string(&new[0]).unwrap();
        assert!(content.starts_with("Return-Path: <>\r\nDelivered-To: <u@example.test>\r\n"));
        let name = new[0].file_name().unwrap().to_str().unwrap().to_string();
        // <secs>.M<micros>P<pid>Q<n>.<host>
        let (secs, rest) = name.split_once('.').unwrap();
        assert!(secs.parse::<u64>().is_ok());
        assert!(rest.starts_with('M'));
        assert!(rest.contains(&format!("P{}Q", std::process::id())));
        assert!(name.ends_with(".mx\\057odd\\072name"), "{name}");
        // The default host part is the machine's name, escaped.
        let host = Maildir::new(root.path()).hostname;
        assert!(
            !host.is_empty() && !host.contains(['/', ':', '\n']),
            "{host}"
        );
    }

    #[test]
    fn local_part_encoding() {
        assert_eq!(encode_local("john.doe+x=y_z-1"), "john.doe+x=y_z-1");
        assert_eq!(encode_local(".hidden"), "%2Ehidden");
        assert_eq!(encode_local("a/b"), "a%2Fb");
        assert_eq!(encode_local("\"a b\"%"), "%22a%20b%22%25");
        assert_eq!(encode_local("ü"), "%C3%BC");
        assert_eq!(encode_local("../../etc"), "%2E.%2F..%2Fetc");
    }

    #[test]
    fn no_path_traversal() {
        let root = tempfile::tempdir().unwrap();
        let md = Maildir::new(root.path().join("mail")).with_hostname("mx");
        for rcpt in [
            "../../etc@example.test",
            "a/b@example.test",
            ".x@example.test",
        ] {
            let p = md.mailbox_path(rcpt).unwrap();
            assert_eq!(
                p.parent().unwrap(),
                root.path().join("mail/example.test"),
                "{rcpt}"
            );
            let comp = p.file_name().unwrap().to_str().unwrap();
            assert!(!comp.contains('/') && !comp.starts_with('.'), "{comp}");
            md.deliver(&message("s@x", &[rcpt], b"x\r\n"), RECEIVED)
                .unwrap();
        }
        // Everything stayed inside the root.
        assert_eq!(files(root.path()), vec![root.path().join("mail")]);
        assert_eq!(
            files(&root.path().join("mail")),
            vec![root.path().join("mail/example.test")]
        );
        assert!(root.path().join("mail/example.test/a%2Fb/new").is_dir());

        for rcpt in [
            ".@example.test",
            "..@example.test",
            "@example.test",
            "noat",
            "a@",
            "a@..",
            "a@../x",
            "a@x/y",
            "a@.x",
        ] {
            let err = md.mailbox_path(rcpt).unwrap_err();
            assert!(
                matches!(err, MaildirError::InvalidRecipient { .. }),
                "{rcpt}: {err}"
            );
        }
        let err = md
            .deliver(&message("s@x", &[".."], b"x\r\n"), RECEIVED)
            .unwrap_err();
        assert!(matches!(err, MaildirError::InvalidRecipient { .. }));
    }

    #[test]
    fn failure_reports_error_and_keeps_earlier_copies() {
        let root = tempfile::tempdir().unwrap();
        let md = Maildir::new(root.path()).with_hostname("mx");
        // A regular file where the second recipient's domain directory would go.
        fs::write(root.path().join("blocked.test"), b"").unwrap();
        let msg = message("s@x", &["ok@example.test", "x@blocked.test"], b"x\r\n");
        let err = md.deliver(&msg, RECEIVED).unwrap_err();
        assert!(matches!(err, MaildirError::Io { .. }), "{err}");
        assert_eq!(files(&root.path().join("example.test/ok/new")).len(), 1);
    }

    #[test]
    fn header_injection_in_addresses_is_stripped() {
        let root = tempfile::tempdir().unwrap();
        let md = Maildir::new(root.path()).with_hostname("mx");
        let msg = message("s@x\r\nBcc: evil", &["u@example.test"], b"x\r\n");
        md.deliver(&msg, RECEIVED).unwrap();
        let new = files(&root.path().join("example.test/u/new"));
        let content = fs::read_to_string(&new[0]).unwrap();
        assert!(content.starts_with("Return-Path: <s@xBcc: evil>\r\nDelivered-To"));
    }
}
