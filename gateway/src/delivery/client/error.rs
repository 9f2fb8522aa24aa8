//! What can go wrong talking to a next hop, and which failures leave the connection
//! unusable.

use std::io;

use crate::smtp::Reply;

/// What went wrong talking to the next hop.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The name could not be resolved or no address accepted the connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The `host:port` we tried.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A step took longer than its timeout; the string says which.
    #[error("timeout {0}")]
    Timeout(&'static str),
    /// Reading or writing failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("connection closed by server")]
    Closed,
    /// The server sent something that is not valid SMTP.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The server refused a step of connection setup (greeting, `EHLO`/`HELO`).
    #[error("{stage} rejected: {reply}")]
    Rejected {
        /// `greeting`, `EHLO` or `HELO`.
        stage: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// TLS is required but the server does not offer `STARTTLS`.
    #[error("TLS required but STARTTLS not offered")]
    TlsNotOffered,
    /// The server answered `STARTTLS` with something other than `220`.
    #[error("STARTTLS refused: {0}")]
    StartTlsRefused(Reply),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The message needs `SMTPUTF8` and the server does not offer it.
    #[error("server does not support SMTPUTF8")]
    Smtputf8NotSupported,
    /// An argument (address, HELO name) contains characters that cannot be sent.
    #[error("invalid {0}: contains control characters")]
    InvalidArgument(&'static str),
    /// The connection broke earlier (or was closed) and cannot be used any more.
    #[error("connection no longer usable")]
    Broken,
}

impl ClientError {
    /// `true` if the connection cannot be used after this error (I/O, timeout, protocol,
    /// TLS failure). Errors that were detected before anything was sent
    /// ([`ClientError::InvalidArgument`], [`ClientError::Smtputf8NotSupported`],
    /// [`ClientError::TlsNotOffered`]) and refusals that leave the session intact
    /// ([`ClientError::StartTlsRefused`]) are not fatal.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ClientError::InvalidArgument(_)
                | ClientError::Smtputf8NotSupported
                | ClientError::TlsNotOffered
                | ClientError::StartTlsRefused(_)
        )
    }

    /// A short reason for a reply to our own client: like the `Display` form but without
    /// the next hop's address.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Connect { source, .. } => format!("cannot connect: {source}"),
            other => other.to_string(),
        }
    }
}
