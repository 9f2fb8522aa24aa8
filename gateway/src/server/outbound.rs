//! Where an accepted transaction goes: the glue between a connection and the delivery
//! mode. `maildir` answers MAIL/RCPT itself and writes the message durably before the
//! 250; `proxy` mirrors MAIL, RCPT and the message to the upstream in-line, so the client
//! receives the upstream's own answers and the gateway never owns mail it cannot deliver;
//! `queue` stores the message durably before the 250 and delivers it in the background.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use crate::config::{DeliveryMode, Fixed};
use crate::delivery::{Maildir, ProxyTarget, ProxyTransaction, received_header};
use crate::queue::Queue;
use crate::smtp::{MailParams, Message, Reply, Resolution};

/// The delivery mode in force, built once at start and shared by every connection.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Local Maildirs.
    Maildir(Arc<Maildir>),
    /// In-line relay to the upstream (each connection has its own transaction).
    Proxy(Arc<ProxyTarget>),
    /// Durable queue, delivered in the background.
    Queue(Arc<Queue>),
}

impl Backend {
    /// Builds the backend for the settings (`queue`: the queue the server opened).
    pub fn new(fixed: &Fixed, queue: Option<Arc<Queue>>) -> Backend {
        if let Some(q) = queue {
            return Backend::Queue(q);
        }
        match &fixed.delivery {
            DeliveryMode::Maildir(root) => Backend::Maildir(Arc::new(
                Maildir::new(root.clone()).fold_local_part(fixed.fold_local_part),
            )),
            DeliveryMode::Proxy { upstream, tls } => {
                // The HELO name is set per connection, from the settings it started with.
                let mut target = ProxyTarget::new(upstream.clone(), "");
                target.tls = *tls;
                target.timeouts.connect = fixed.connect_timeout;
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
    backend: Backend,
    /// The upstream transaction, in proxy mode.
    proxy: Option<Box<ProxyTransaction>>,
    hostname: String,
}

impl Outbound {
    /// The outbound side of a new connection; `hostname` is ours in the settings the
    /// connection started with (`Received:`, the proxy's EHLO).
    pub fn new(backend: &Backend, hostname: &str) -> Outbound {
        let proxy = match backend {
            Backend::Proxy(t) => Some(Box::new(ProxyTransaction::new(ProxyTarget {
                helo_name: hostname.to_string(),
                ..(**t).clone()
            }))),
            _ => None,
        };
        Outbound {
            backend: backend.clone(),
            proxy,
            hostname: hostname.to_string(),
        }
    }

    /// Whether each transaction is relayed as it happens (proxy mode): the upstream has
    /// the recipients before the message arrives.
    pub fn before_queue(&self) -> bool {
        self.proxy.is_some()
    }

    /// MAIL FROM passed our checks and the hooks.
    pub async fn mail_from(&mut self, sender: &str, params: &MailParams) -> Resolution {
        match &mut self.proxy {
            Some(p) => Resolution::Reply(p.mail_from(sender, params).await),
            None => Resolution::Continue,
        }
    }

    /// RCPT TO passed our checks and the hooks.
    pub async fn rcpt_to(&mut self, rcpt: &str) -> Resolution {
        match &mut self.proxy {
            Some(p) => Resolution::Reply(p.rcpt_to(rcpt).await),
            None => Resolution::Continue,
        }
    }

    /// Delivers the message; the reply is what the client gets for its DATA/BDAT LAST.
    /// `score` and `tags` are the plugins' verdict on it, kept with queued mail.
    pub async fn deliver(&mut self, message: &Message, score: f64, tags: Vec<String>) -> Reply {
        let rcpt = match message.envelope.rcpt_to.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let received = received_header(
            &message.session,
            message.envelope.params.smtputf8,
            &self.hostname,
            &message.id,
            rcpt,
            SystemTime::now(),
        );
        if let Some(p) = &mut self.proxy {
            return p.data(message, &received).await;
        }
        match &self.backend {
            Backend::Maildir(m) => {
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
            Backend::Queue(q) => match q.enqueue(message, &received, score, tags).await {
                Ok(id) => Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
                Err(e) => {
                    warn!(msg = %message.id, error = %e, "cannot queue message");
                    Reply::new(451, "4.3.0", "Queue write failed, try again later")
                }
            },
            Backend::Proxy(_) => Reply::new(451, "4.3.0", "Upstream transaction missing"),
        }
    }

    /// The connection is ending: say QUIT upstream.
    pub async fn close(&mut self) {
        if let Some(p) = &mut self.proxy {
            p.close().await;
        }
    }
}
