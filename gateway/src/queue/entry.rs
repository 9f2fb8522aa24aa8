//! One queued message's envelope and per-recipient delivery state, as stored in the
//! spool's state file (JSON). Replies are kept as [`Reply`] (stored as their one-line
//! text) with the host that gave them; the session the message came in is kept as the
//! [`SessionFacts`] it was accepted with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::smtp::{BodyType, Envelope, MailParams, Message, Reply, SessionFacts};

/// Where one recipient stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not delivered yet; retried at the entry's next attempt.
    Pending,
    /// Accepted by its next hop.
    Delivered,
    /// Refused permanently (or expired): reported to the sender.
    Failed,
}

impl RcptStatus {
    /// Where a recipient stands after `reply`: 2xx delivered, 5xx failed, else pending.
    pub fn after(reply: &Reply) -> RcptStatus {
        match reply.code() {
            200..=299 => RcptStatus::Delivered,
            500..=599 => RcptStatus::Failed,
            _ => RcptStatus::Pending,
        }
    }
}

/// One recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address.
    pub address: String,
    /// Where it stands.
    pub status: RcptStatus,
    /// The last answer about it: a next hop's reply, or ours (`451 4.4.1 …`).
    #[serde(default)]
    pub last_reply: Option<Reply>,
    /// The host that gave `last_reply` (`None`: the gateway itself).
    #[serde(default)]
    pub remote: Option<String>,
}

/// A queued message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Queue id (also the file names).
    pub id: String,
    /// Envelope sender; empty for the null sender (bounces).
    pub sender: String,
    /// `BODY=8BITMIME` was declared.
    #[serde(default)]
    pub eight_bit: bool,
    /// `SMTPUTF8` was declared.
    #[serde(default)]
    pub smtputf8: bool,
    /// Size of the stored message, octets.
    pub size: u64,
    /// When it was accepted (unix seconds).
    pub arrival: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not before (unix milliseconds).
    pub next_attempt_ms: u64,
    /// Held by an admin: never attempted until released.
    #[serde(default)]
    pub held: bool,
    /// A delayed-delivery notice was sent.
    #[serde(default)]
    pub warned: bool,
    /// The session it was accepted in; `None` for mail the gateway wrote itself
    /// (notices). Plugins see it at `on-deliver`.
    #[serde(default)]
    pub session: Option<SessionFacts>,
    /// The plugin score it was accepted with.
    #[serde(default)]
    pub score: f64,
    /// The plugin tags it was accepted with.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The recipients, in envelope order.
    pub recipients: Vec<Recipient>,
    /// Written by the gateway itself (a delivery status notice): a failing `on-deliver`
    /// chain does not stop it (it goes by the default route).
    #[serde(default)]
    pub notice: bool,
}

/// Now as unix milliseconds.
pub fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// `t` as unix milliseconds.
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Unix seconds back to a time.
pub fn from_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl Entry {
    /// A new entry for mail the gateway writes itself, due at once.
    pub fn new(
        id: String,
        sender: &str,
        params: &MailParams,
        recipients: &[String],
        size: u64,
    ) -> Entry {
        let now = now_ms();
        Entry {
            id,
            sender: sender.to_string(),
            eight_bit: params.body == BodyType::EightBitMime,
            smtputf8: params.smtputf8,
            size,
            arrival: now / 1000,
            attempts: 0,
            next_attempt_ms: now,
            held: false,
            warned: false,
            session: None,
            score: 0.0,
            tags: Vec::new(),
            notice: true,
            recipients: recipients
                .iter()
                .map(|r| Recipient {
                    address: r.clone(),
                    status: RcptStatus::Pending,
                    last_reply: None,
                    remote: None,
                })
                .collect(),
        }
    }

    /// A new entry for a message accepted from a client (stored as `size` octets), with
    /// the plugin score and tags it was accepted with.
    pub fn accepted(message: &Message, size: u64, score: f64, tags: Vec<String>) -> Entry {
        let env = &message.envelope;
        Entry {
            session: Some(message.session.clone()),
            score,
            tags,
            notice: false,
            ..Entry::new(
                message.id.clone(),
                &env.mail_from,
                &env.params,
                &env.rcpt_to,
                size,
            )
        }
    }

    /// The session facts plugins see: those of the client session, or for mail the
    /// gateway wrote itself a local session named after the entry.
    pub fn session_facts(&self) -> SessionFacts {
        self.session
            .clone()
            .unwrap_or_else(|| SessionFacts::local(self.id.clone()))
    }

    /// The envelope of what is still to deliver: sender, parameters, pending recipients.
    pub fn pending_envelope(&self) -> Envelope {
        Envelope {
            mail_from: self.sender.clone(),
            params: self.params(),
            rcpt_to: self.pending().map(|r| r.address.clone()).collect(),
        }
    }

    /// The MAIL FROM parameters to send.
    pub fn params(&self) -> MailParams {
        MailParams {
            size: Some(self.size),
            body: if self.eight_bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8: self.smtputf8,
        }
    }

    /// Recipients still to deliver.
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    /// Whether nothing is left to deliver.
    pub fn done(&self) -> bool {
        self.pending().next().is_none()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(id: &str) -> Entry {
        Entry::new(
            id.into(),
            "a@client.test",
            &MailParams::default(),
            &["x@example.test".into(), "y@other.test".into()],
            42,
        )
    }

    #[test]
    fn round_trips_through_json() {
        let mut e = sample("Q1");
        e.recipients[0].last_reply = Some(Reply::new(451, "4.4.1", "mx.test: refused"));
        e.recipients[0].remote = Some("mx.test".into());
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"status\":\"pending\""), "{j}");
        assert!(j.contains("\"451 4.4.1 mx.test: refused\""), "{j}");
        assert_eq!(serde_json::from_str::<Entry>(&j).unwrap(), e);
        assert_eq!(e.pending().count(), 2);
        assert!(!e.done());
        assert_eq!(e.session_facts().listener.name(), "local");
    }

    #[test]
    fn keeps_the_session_it_was_accepted_in() {
        let m = Message::sample("a@client.test", &["x@example.test"], b"x\r\n");
        let e = Entry::accepted(&m, 99, 2.5, vec!["t".into()]);
        let back: Entry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.session.as_ref(), Some(&m.session));
        assert_eq!(back.session_facts().client.port(), 1234, "client port kept");
        assert_eq!(
            (back.score, back.tags.as_slice()),
            (2.5, &["t".to_string()][..])
        );
    }

    #[test]
    fn reads_state_written_before_session_facts() {
        let old = r#"{"id":"Q","sender":"a@b.test","size":1,"arrival":1,"attempts":1,
            "next_attempt_ms":1,"client":"192.0.2.1","origin":{"helo":"h","ehlo":true},
            "recipients":[{"address":"x@y.test","status":"pending",
            "last_reply":"4.4.1 mx: connection refused","remote":null,"route":null}]}"#;
        let e: Entry = serde_json::from_str(old).unwrap();
        assert_eq!(e.session, None);
        let r = e.recipients[0].last_reply.as_ref().unwrap();
        assert_eq!(
            (r.code(), r.to_string().as_str()),
            (451, "451 4.4.1 mx: connection refused")
        );
    }
}
