//! What is known about one SMTP session: who connected to which of our addresses, over
//! which listener and TLS, what its confirmed reverse name is, and what it said in
//! HELO/EHLO. One type for all of it: the connection driver builds it once, the session
//! keeps it current (HELO, STARTTLS), every accepted message carries a copy, the queue
//! stores that copy as it is, and the plugin layer converts it to WIT's `session-info`.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// TLS in use on a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Which kind of listener a session came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// Plain SMTP (STARTTLS offered when TLS is available).
    #[default]
    Smtp,
    /// Implicit TLS (RFC 8314).
    Smtps,
    /// Not a client session: mail the gateway wrote itself (delivery status notices).
    Local,
}

impl Listener {
    /// `smtp`, `smtps` or `local`: the name in logs and in `session-info`.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Smtp => "smtp",
            Listener::Smtps => "smtps",
            Listener::Local => "local",
        }
    }
}

/// The client's HELO or EHLO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Helo {
    /// The name the client gave.
    pub name: String,
    /// EHLO rather than HELO.
    pub extended: bool,
}

/// The facts of one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    /// Session id, on every log line of the session.
    pub id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// The listener it came in on.
    pub listener: Listener,
    /// The client's forward-confirmed reverse DNS name, if it has one.
    #[serde(default)]
    pub ptr_name: Option<String>,
    /// The reverse lookup of the client failed for now (timeout, server failure), so
    /// `ptr_name` is `None` without that being final (XCLIENT's `NAME=[TEMPUNAVAIL]`).
    #[serde(default)]
    pub ptr_tempfail: bool,
    /// The client is in `relay.trusted_networks` (may relay to any domain).
    #[serde(default)]
    pub trusted: bool,
    /// TLS in use (implicit TLS from the start, or after STARTTLS).
    #[serde(default)]
    pub tls: Option<TlsInfo>,
    /// The HELO/EHLO the session accepted (cleared again by STARTTLS).
    #[serde(default)]
    pub helo: Option<Helo>,
}

impl SessionFacts {
    /// Facts for a session from `client` to `local`; TLS, reverse name and HELO unknown.
    pub fn new(id: String, client: SocketAddr, local: SocketAddr, listener: Listener) -> Self {
        SessionFacts {
            id,
            client,
            local,
            listener,
            ptr_name: None,
            ptr_tempfail: false,
            trusted: false,
            tls: None,
            helo: None,
        }
    }

    /// Facts for mail the gateway writes itself (notices): no client, trusted.
    pub fn local(id: String) -> Self {
        let unspecified = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
        SessionFacts {
            trusted: true,
            ..SessionFacts::new(id, unspecified, unspecified, Listener::Local)
        }
    }

    /// Whether the client said EHLO (and so may use ESMTP extensions).
    pub fn esmtp(&self) -> bool {
        self.helo.as_ref().is_some_and(|h| h.extended)
    }

    /// The HELO/EHLO name, once accepted.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The `with` protocol of `Received:` (RFC 3848, RFC 6531) for a transaction in this
    /// session, `smtputf8` when the transaction declared SMTPUTF8.
    pub fn protocol(&self, smtputf8: bool) -> &'static str {
        match (smtputf8, self.esmtp(), self.tls.is_some()) {
            (true, _, false) => "UTF8SMTP",
            (true, _, true) => "UTF8SMTPS",
            (false, true, false) => "ESMTP",
            (false, true, true) => "ESMTPS",
            (false, false, false) => "SMTP",
            (false, false, true) => "SMTPS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SessionFacts {
        SessionFacts::new(
            "S1".into(),
            "192.0.2.1:4000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
            Listener::Smtps,
        )
    }

    #[test]
    fn protocol_follows_helo_tls_and_smtputf8() {
        let mut f = facts();
        assert_eq!(f.protocol(false), "SMTP");
        f.helo = Some(Helo {
            name: "c.test".into(),
            extended: false,
        });
        f.tls = Some(TlsInfo {
            version: "TLSv1_3".into(),
            cipher: "X".into(),
        });
        assert_eq!(f.protocol(false), "SMTPS", "HELO over TLS is not ESMTP");
        assert!(!f.esmtp());
        f.helo.as_mut().unwrap().extended = true;
        assert_eq!(f.protocol(false), "ESMTPS");
        assert_eq!(f.protocol(true), "UTF8SMTPS");
    }

    #[test]
    fn round_trips_through_json_with_every_fact() {
        let mut f = facts();
        f.ptr_name = Some("mx.client.test".into());
        f.helo = Some(Helo {
            name: "c.test".into(),
            extended: false,
        });
        let j = serde_json::to_string(&f).unwrap();
        assert!(j.contains("\"listener\":\"smtps\""), "{j}");
        assert!(j.contains(":4000"), "the client port is kept: {j}");
        assert_eq!(serde_json::from_str::<SessionFacts>(&j).unwrap(), f);
        let l = SessionFacts::local("Q.bounce".into());
        assert_eq!(l.listener.name(), "local");
        assert!(l.trusted);
    }
}
