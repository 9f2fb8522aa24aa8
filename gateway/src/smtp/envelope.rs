//! What a transaction carries from the SMTP session to delivery: the envelope, the
//! message bytes, and the trace facts that go into the `Received:` header.

use std::net::SocketAddr;

/// The body type declared with `MAIL FROM:<..> BODY=` (RFC 6152).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyType {
    /// No `BODY=` parameter, or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters accepted on `MAIL FROM`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` as declared by the client (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: BodyType,
    /// `SMTPUTF8` was given (RFC 6531).
    pub smtputf8: bool,
}

/// The envelope of one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse-path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// Parameters given with `MAIL FROM`.
    pub params: MailParams,
    /// Accepted forward-paths without angle brackets, in the order they were accepted.
    pub rcpt_to: Vec<String>,
}

/// TLS facts of a session, for logs and the `Received:` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the `Received:` header says about where a message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The client's address.
    pub client: SocketAddr,
    /// The client's forward-confirmed reverse DNS name.
    pub ptr_name: Option<String>,
    /// The HELO/EHLO name the client gave.
    pub helo: String,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `UTF8SMTP` or `UTF8SMTPS` (RFC 3848, RFC 6531).
    pub protocol: &'static str,
    /// TLS in use when the message was received.
    pub tls: Option<TlsInfo>,
    /// The session id (also on every log line of the session).
    pub session_id: String,
}

/// A message accepted by the session and its hooks, ready for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id of this transaction (`<session-id>.<n>`), used in logs and the 250 reply.
    pub id: String,
    /// Envelope sender, parameters and recipients.
    pub envelope: Envelope,
    /// The message exactly as received: dot-unstuffed, without the terminating `.CRLF`,
    /// every line ending in CRLF (no bare CR or LF anywhere). Empty, or ends in CRLF.
    pub data: Vec<u8>,
    /// Trace facts for the `Received:` header.
    pub trace: Trace,
}
