//! Where an accepted transaction goes: the glue between a connection and the delivery
//! mode. `maildir` answers MAIL/RCPT itself and writes the message durably before the
//! 250; `proxy` mirrors MAIL, RCPT and the message to the upstream in-line, so the client
//! receives the upstream's own answers and the gateway never owns mail it cannot deliver.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::Shared;
use crate::config::{DeliveryMode, Runtime};
use crate::delivery::{Maildir, ProxyTarget, ProxyTransaction, received_header};
use crate::smtp::{MailParams, Message, Reply, Resolution};

/// The configured delivery mode, built once at start.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Local Maildirs.
    Maildir(Arc<Maildir>),
    /// In-line relay to the upstream.
    Proxy(Arc<ProxyTarget>),
    /// Durable queue, delivered in the background.
    Queue(Arc<crate::queue::Queue>),
}

impl Backend {
    /// Builds the backend for the runtime config.
    pub fn new(rt: &Runtime, queue: Option<Arc<crate::queue::Queue>>) -> Backend {
        if let Some(q) = queue {
            return Backend::Queue(q);
        }
        match &rt.delivery {
            DeliveryMode::Maildir(root) => Backend::Maildir(Arc::new(Maildir::new(root.clone()))),
            DeliveryMode::Proxy { upstream, tls } => {
                let mut target = ProxyTarget::new(upstream.clone(), rt.hostname.clone());
                target.tls = *tls;
                target.timeouts.connect = rt.connect_timeout;
                Backend::Proxy(Arc::new(target))
            }
            // The server opens the queue and passes it in; without one, mail is kept
            // in Maildirs under the spool rather than lost.
            DeliveryMode::Queue(s) => {
                Backend::Maildir(Arc::new(Maildir::new(s.spool.join("unqueued"))))
            }
        }
    }
}

/// One connection's outbound side.
#[derive(Debug)]
pub struct Outbound {
    hostname: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Maildir(Arc<Maildir>),
    Proxy(Box<ProxyTransaction>),
    Queue(Arc<crate::queue::Queue>),
}

impl Outbound {
    /// The outbound side for a new connection.
    pub fn new(shared: &Shared, hostname: &str) -> Outbound {
        let kind = match &shared.backend {
            Backend::Maildir(m) => Kind::Maildir(Arc::clone(m)),
            Backend::Proxy(t) => Kind::Proxy(Box::new(ProxyTransaction::new(Arc::clone(t)))),
            Backend::Queue(q) => Kind::Queue(Arc::clone(q)),
        };
        Outbound {
            hostname: hostname.to_string(),
            kind,
        }
    }

    /// `maildir` or `proxy`, for logs.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            Kind::Maildir(_) => "maildir",
            Kind::Proxy(_) => "proxy",
            Kind::Queue(_) => "queue",
        }
    }

    /// MAIL FROM passed our checks and the hooks.
    pub async fn mail_from(&mut self, sender: &str, params: &MailParams) -> Resolution {
        match &mut self.kind {
            Kind::Maildir(_) | Kind::Queue(_) => Resolution::Continue,
            Kind::Proxy(p) => Resolution::Reply(p.mail_from(sender, params).await),
        }
    }

    /// RCPT TO passed our checks and the hooks.
    pub async fn rcpt_to(&mut self, rcpt: &str) -> Resolution {
        match &mut self.kind {
            Kind::Maildir(_) | Kind::Queue(_) => Resolution::Continue,
            Kind::Proxy(p) => Resolution::Reply(p.rcpt_to(rcpt).await),
        }
    }

    /// Delivers the message; the reply is what the client gets for its DATA/BDAT LAST.
    pub async fn deliver(
        &mut self,
        message: &Message,
        origin: crate::queue::entry::Origin,
    ) -> Reply {
        let rcpt = match message.envelope.rcpt_to.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let received = received_header(
            &message.trace,
            &self.hostname,
            &message.id,
            rcpt,
            SystemTime::now(),
        );
        match &mut self.kind {
            Kind::Maildir(m) => {
                let m = Arc::clone(m);
                let msg = message.clone();
                let id = message.id.clone();
                match tokio::task::spawn_blocking(move || m.deliver(&msg, &received)).await {
                    Ok(Ok(())) => Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
                    Ok(Err(e)) => {
                        warn!(msg = %id, error = %e, "maildir delivery failed");
                        Reply::new(451, "4.3.0", "Local delivery failed, try again later")
                    }
                    Err(e) => {
                        warn!(msg = %id, error = %e, "maildir task failed");
                        Reply::new(451, "4.3.0", "Local delivery failed, try again later")
                    }
                }
            }
            Kind::Proxy(p) => p.data(message, &received).await,
            Kind::Queue(q) => match q.enqueue(message, &received, origin).await {
                Ok(id) => Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
                Err(e) => {
                    warn!(msg = %message.id, error = %e, "cannot queue message");
                    Reply::new(451, "4.3.0", "Queue write failed, try again later")
                }
            },
        }
    }

    /// The connection is ending: say QUIT upstream.
    pub async fn close(&mut self) {
        if let Kind::Proxy(p) = &mut self.kind {
            p.close().await;
        }
    }
}
