//! One queued message's envelope and per-recipient delivery state, as stored in the
//! spool's state file (JSON).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::smtp::{BodyType, MailParams};

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

/// One recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address.
    pub address: String,
    /// Where it stands.
    pub status: RcptStatus,
    /// The last answer about it (SMTP reply or local reason).
    #[serde(default)]
    pub last_reply: Option<String>,
    /// The host that gave `last_reply`.
    #[serde(default)]
    pub remote: Option<String>,
    /// A plugin's route for it (`host:port`), overriding the configured routing.
    #[serde(default)]
    pub route: Option<String>,
}

/// The session a message was accepted in, as `on-deliver` sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// HELO/EHLO name.
    #[serde(default)]
    pub helo: String,
    /// Whether it was EHLO.
    #[serde(default)]
    pub ehlo: bool,
    /// Forward-confirmed reverse name of the client.
    #[serde(default)]
    pub ptr_name: Option<String>,
    /// TLS version and cipher, if TLS was used.
    #[serde(default)]
    pub tls: Option<(String, String)>,
    /// The client was in trusted networks.
    #[serde(default)]
    pub trusted: bool,
    /// Our address the client connected to.
    #[serde(default)]
    pub local: Option<std::net::SocketAddr>,
    /// Listener kind (`smtp`, `smtps`).
    #[serde(default)]
    pub listener: String,
    /// Final plugin score of the transaction.
    #[serde(default)]
    pub score: f64,
    /// Plugin tags.
    #[serde(default)]
    pub tags: Vec<String>,
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
    /// The client that sent it, for logs and notices.
    #[serde(default)]
    pub client: String,
    /// The session it was accepted in (for `on-deliver`).
    #[serde(default)]
    pub origin: Origin,
    /// The recipients, in envelope order.
    pub recipients: Vec<Recipient>,
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
    /// A new entry, due at once.
    pub fn new(
        id: String,
        sender: &str,
        params: &MailParams,
        recipients: &[String],
        size: u64,
        client: String,
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
            client,
            origin: Origin::default(),
            recipients: recipients
                .iter()
                .map(|r| Recipient {
                    address: r.clone(),
                    status: RcptStatus::Pending,
                    last_reply: None,
                    remote: None,
                    route: None,
                })
                .collect(),
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
            "192.0.2.1".into(),
        )
    }

    #[test]
    fn round_trips_through_json() {
        let e = sample("Q1");
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"status\":\"pending\""), "{j}");
        assert_eq!(serde_json::from_str::<Entry>(&j).unwrap(), e);
        assert_eq!(e.pending().count(), 2);
        assert!(!e.done());
    }
}
