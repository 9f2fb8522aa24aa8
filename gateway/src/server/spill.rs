//! Message content moved out of memory while it arrives: one unnamed temporary file per
//! message (created `0600` with `O_TMPFILE` where the file system has it, else created
//! and unlinked at once), in `limits.spill_dir` (by default the spool's `tmp/` in queue
//! mode, the Maildir root in maildir mode, the system's temporary directory in proxy
//! mode). Nothing is left behind: the file has no name, and its space is freed when the
//! last reader of the message lets it go, or when the process dies. Writes and reads run
//! on the blocking pool or read the page cache in bounded pieces.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::smtp::Backing;

/// The file of one spilled message.
#[derive(Debug)]
pub struct SpillFile(File);

impl Backing for SpillFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
}

/// A spill file being written, in order.
#[derive(Debug)]
pub struct Spill {
    file: Arc<SpillFile>,
    written: u64,
}

/// Runs `f` on the blocking pool; a lost task is an I/O error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

impl Spill {
    /// A new, empty spill file in `dir` (created `0700` if missing).
    pub async fn create(dir: &Path) -> io::Result<Spill> {
        let dir: PathBuf = dir.to_path_buf();
        let file = blocking(move || {
            crate::private_fs::create_dir_all(&dir)?;
            let file = tempfile::tempfile_in(&dir)?;
            // O_TMPFILE files get 0666 less the umask; keep them the gateway user's.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            Ok(file)
        })
        .await?;
        Ok(Spill {
            file: Arc::new(SpillFile(file)),
            written: 0,
        })
    }

    /// Appends `bytes`.
    pub async fn append(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (file, at) = (Arc::clone(&self.file), self.written);
        let n = bytes.len() as u64;
        blocking(move || file.0.write_all_at(&bytes, at)).await?;
        self.written += n;
        Ok(())
    }

    /// Octets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The finished file, to read the message from.
    pub fn finish(self) -> Arc<SpillFile> {
        self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spill_file_has_no_name_and_reads_back_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("spill");
        let mut s = Spill::create(&sub).await.unwrap();
        s.append(b"Subject: x\r\n\r\n".to_vec()).await.unwrap();
        s.append(vec![b'y'; 100_000]).await.unwrap();
        assert_eq!(s.written(), 100_014);
        assert_eq!(
            std::fs::read_dir(&sub).unwrap().count(),
            0,
            "the file has no name"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let f = s.finish();
        let mut buf = [0u8; 14];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 14);
        assert_eq!(&buf, b"Subject: x\r\n\r\n");
        let mut end = [0u8; 10];
        assert_eq!(f.read_at(&mut end, 100_010).unwrap(), 4);
        let mode = f.0.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn a_directory_that_cannot_exist_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(Spill::create(&file.join("sub")).await.is_err());
    }
}
