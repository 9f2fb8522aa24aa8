//! What a transaction carries from the SMTP session to delivery: the envelope, the
//! message text in one shared buffer, and the facts of the session it came in.

use super::facts::SessionFacts;
use super::text::MessageText;

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

/// A message accepted by the session and its hooks, ready for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id of this transaction (`<session-id>.<n>`), used in logs and the 250 reply.
    pub id: String,
    /// Envelope sender, parameters and recipients.
    pub envelope: Envelope,
    /// The message exactly as received: dot-unstuffed, without the terminating `.CRLF`,
    /// every line ending in CRLF (no bare CR or LF anywhere). Empty, or ends in CRLF.
    pub text: MessageText,
    /// The session it was received in (for `Received:`, plugins and the queue).
    pub session: SessionFacts,
}

impl Message {
    /// The `with` protocol of the `Received:` header for this transaction.
    pub fn protocol(&self) -> &'static str {
        self.session.protocol(self.envelope.params.smtputf8)
    }

    /// A message from `from` to `rcpts` with text `data`, received in session `s1` from
    /// 192.0.2.1 after `EHLO client` (for unit tests).
    #[cfg(test)]
    pub fn sample(from: &str, rcpts: &[&str], data: &[u8]) -> Message {
        use super::facts::{Helo, Listener};
        Message {
            id: "s1.1".into(),
            envelope: Envelope {
                mail_from: from.into(),
                params: MailParams::default(),
                rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
            },
            text: MessageText::new(data.to_vec()),
            session: SessionFacts {
                helo: Some(Helo {
                    name: "client".into(),
                    extended: true,
                }),
                ..SessionFacts::new(
                    "s1".into(),
                    "192.0.2.1:1234".parse().unwrap(),
                    "192.0.2.250:25".parse().unwrap(),
                    Listener::Smtp,
                )
            },
        }
    }
}
