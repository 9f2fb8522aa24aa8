//! The wire under the client: the stream (plain, TLS or broken), replies as read and
//! their parsing into sanitized [`Reply`] values, and timed steps.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use super::ClientError;
use crate::smtp::{Enhanced, Reply};

/// A reply as read from the wire, before it becomes a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    pub(super) code: u16,
    /// Text of each line after `NNN-`/`NNN `, as received (lossy UTF-8).
    pub(super) lines: Vec<String>,
}

impl Response {
    /// The sanitized [`Reply`]: enhanced code taken from the first line (when its class
    /// matches the basic code) and stripped from every line that carries it.
    pub(super) fn to_reply(&self) -> Reply {
        let class = (self.code / 100) as u8;
        let enhanced = self
            .lines
            .first()
            .and_then(|l| l.split(' ').next())
            .and_then(Enhanced::parse)
            .filter(|e| e.0 == class);
        let lines: Vec<&str> = self
            .lines
            .iter()
            .map(|l| match enhanced {
                Some(_) => {
                    let (first, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
                    if Enhanced::parse(first).is_some() {
                        rest
                    } else {
                        l.as_str()
                    }
                }
                None => l.as_str(),
            })
            .collect();
        // The code was range-checked when the reply was parsed, so this cannot fail; keep
        // a fallback anyway rather than a panic.
        Reply::sanitized(self.code, enhanced, &lines)
            .unwrap_or_else(|| Reply::new(451, "4.4.0", "invalid reply"))
    }
}

/// The stream under an [`SmtpClient`]: plain, upgraded to TLS, or gone.
pub(super) enum Conn<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    Broken,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Broken => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(super) async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Broken => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Broken => Ok(()),
        }
    }
}

/// Runs `fut` with timeout `t`; an elapsed timeout becomes [`ClientError::Timeout`].
pub(super) async fn timed<T>(
    t: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(t, fut)
        .await
        .unwrap_or(Err(ClientError::Timeout(what)))
}

/// Splits a reply line into code, "is last line" and text.
pub(super) fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), ClientError> {
    let bad = || ClientError::Protocol("malformed reply line");
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return Err(ClientError::Protocol("reply code out of range"));
    }
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(bad()),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}
