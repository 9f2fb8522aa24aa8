//! What a transaction carries from the SMTP session to delivery: the envelope, the
//! message text in one shared buffer, and the facts of the session it came in.

use bytes::Bytes;

use super::facts::SessionFacts;

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

/// The text of a message from the end of DATA on: the bytes as received, held in one
/// shared immutable buffer (cloning shares it), and the header block plugins rewrote, if
/// they did. Writers take [`MessageText::parts`]; nothing copies the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageText {
    received: Bytes,
    /// New header fields standing for `received[..rest]`.
    head: Bytes,
    /// Where the part of `received` that is still used starts.
    rest: usize,
}

impl MessageText {
    /// The text as received.
    pub fn new(received: impl Into<Bytes>) -> MessageText {
        MessageText {
            received: received.into(),
            head: Bytes::new(),
            rest: 0,
        }
    }

    /// The bytes as the client sent them (dot-unstuffed), before any header edit.
    pub fn received(&self) -> &Bytes {
        &self.received
    }

    /// Replaces the first `upto` octets of the received text (its header block) by
    /// `head`; the rest (the body) stays where it is.
    pub fn replace_head(&mut self, head: impl Into<Bytes>, upto: usize) {
        self.head = head.into();
        self.rest = upto.min(self.received.len());
    }

    /// The text as it goes out: the header block, then the rest of the received bytes.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, &self.received[self.rest..]]
    }

    /// Octets of the text as it goes out.
    pub fn len(&self) -> usize {
        self.head.len() + self.received.len() - self.rest
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole text in one new buffer (a copy: for tests and small messages only).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_head_shares_the_body() {
        let received = Bytes::from_static(b"Subject: a\r\nX-Old: 1\r\n\r\nbody\r\n");
        let mut t = MessageText::new(received.clone());
        assert_eq!(t.to_vec(), received.to_vec());
        // The fields before the blank line are replaced; the blank line and body stay.
        t.replace_head(&b"X-New: 2\r\nSubject: a\r\n"[..], 22);
        assert_eq!(t.to_vec(), b"X-New: 2\r\nSubject: a\r\n\r\nbody\r\n");
        assert_eq!(t.len(), t.to_vec().len());
        assert_eq!(
            t.parts()[1].as_ptr(),
            received[22..].as_ptr(),
            "body not copied"
        );
        assert_eq!(t.received(), &received);
    }
}
