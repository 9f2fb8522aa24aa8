//! Where an accepted transaction goes: the glue between a connection and the delivery
//! mode. `maildir` answers MAIL/RCPT itself and writes the message durably before the
//! 250; `proxy` mirrors MAIL, RCPT and the message to the upstream in-line, so the client
//! receives the upstream's own answers and the gateway never owns mail it cannot deliver;
//! `queue` stores the message durably before the 250 and delivers it in the background.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use crate::config::{DeliveryMode, Fixed};
use crate::delivery::{Destination, Hop, Maildir, ProxyTarget, ProxyTransaction, received_header};
use crate::plugin::Route;
use crate::plugin::session::RcptPlan;
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
    /// Proxy mode: the recipients the upstream accepted in this transaction (after the
    /// plugins' edits at RCPT), and how many the plugins discarded instead.
    relayed: Vec<String>,
    discarded: usize,
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
            relayed: Vec::new(),
            discarded: 0,
            hostname: hostname.to_string(),
        }
    }

    /// Whether each transaction is relayed as it happens (proxy mode): the upstream has
    /// the recipients before the message arrives.
    pub fn before_queue(&self) -> bool {
        self.proxy.is_some()
    }

    /// Proxy mode: the next hops (`host:port`) told who the client is
    /// (`delivery.xclient`); see [`ProxyTransaction::forward_to`].
    pub fn forward_to(&mut self, hosts: &[String]) {
        if let Some(p) = &mut self.proxy {
            p.forward_to(hosts.to_vec());
        }
    }

    /// Proxy mode: the session the next MAIL is from (its client is what XCLIENT or
    /// XFORWARD tell the upstream), and our id of the transaction.
    pub fn set_client(&mut self, facts: &crate::smtp::SessionFacts, transaction_id: String) {
        if let Some(p) = &mut self.proxy {
            p.set_client(crate::delivery::ClientIdentity::of(facts), transaction_id);
        }
    }

    /// MAIL FROM passed our checks and the hooks.
    pub async fn mail_from(&mut self, sender: &str, params: &MailParams) -> Resolution {
        self.relayed.clear();
        self.discarded = 0;
        match &mut self.proxy {
            Some(p) => Resolution::Reply(p.mail_from(sender, params).await),
            None => Resolution::Continue,
        }
    }

    /// RCPT TO passed our checks and the hooks; `plan` is what the plugins made of it
    /// (`None` without plugins). In proxy mode the recipient, as the plugins rewrote or
    /// expanded it, is relayed to the upstream its route names (see
    /// [`ProxyTransaction::rcpt_to_via`]): all the addresses one `RCPT TO` becomes must go
    /// to one next hop, and a route proxy mode cannot serve (`mx`, `local`) is answered
    /// `451 4.3.5`; `discard` routes and removed recipients are accepted without relaying;
    /// `bounce` and `defer` routes answer with their reply.
    pub async fn rcpt_to(&mut self, rcpt: &str, plan: Option<RcptPlan>) -> Resolution {
        let Some(p) = &mut self.proxy else {
            return Resolution::Continue;
        };
        let plan = plan.unwrap_or_else(|| RcptPlan {
            recipients: vec![(rcpt.to_string(), None)],
        });
        let mut send: Vec<(String, Option<Hop>)> = Vec::new();
        for (addr, route) in plan.recipients {
            let hop = match route {
                None => None,
                Some(Route::To(Destination::Relay(addr, tls))) => Some(Hop { addr, tls }),
                Some(Route::Discard) => {
                    self.discarded += 1;
                    continue;
                }
                Some(Route::Bounce(reply) | Route::Defer(reply)) => {
                    return Resolution::Reply(reply);
                }
                Some(Route::To(d @ (Destination::Mx(_) | Destination::Local))) => {
                    warn!(rcpt = %addr, route = %d, "route not available in proxy mode");
                    return Resolution::Reply(Reply::new(
                        451,
                        "4.3.5",
                        format!("<{rcpt}>: its route ({d}) is not available in proxy mode"),
                    ));
                }
            };
            send.push((addr, hop));
        }
        if let Some((_, first)) = send.first()
            && send.iter().any(|(_, h)| h != first)
        {
            return Resolution::Reply(Reply::new(
                451,
                "4.3.0",
                format!(
                    "<{rcpt}>: its recipients go to several next hops, which proxy mode cannot serve in one transaction"
                ),
            ));
        }
        let mut last = None;
        for (addr, hop) in send {
            let reply = p.rcpt_to_via(&addr, hop.as_ref()).await;
            if !reply.is_positive() {
                if !self.relayed.is_empty() && addr != rcpt {
                    warn!(rcpt, refused = %addr, %reply, "upstream refused one of the addresses a recipient became");
                }
                return Resolution::Reply(reply);
            }
            self.relayed.push(addr);
            last = Some(reply);
        }
        match last {
            Some(reply) => Resolution::Reply(reply),
            // Every address it became was discarded or removed: accepted, not relayed.
            None => Resolution::Continue,
        }
    }

    /// Proxy mode: the recipients the upstream accepted in this transaction (what the
    /// message goes to); `None` in the other modes.
    pub fn relayed(&self) -> Option<&[String]> {
        self.proxy.as_ref().map(|_| self.relayed.as_slice())
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
            // Recipients added at DATA (an archive copy) go to this transaction's upstream.
            for extra in &message.envelope.rcpt_to {
                if !self.relayed.iter().any(|r| r.eq_ignore_ascii_case(extra)) {
                    let reply = p.rcpt_to(extra).await;
                    if reply.is_positive() {
                        self.relayed.push(extra.clone());
                    } else {
                        warn!(msg = %message.id, rcpt = %extra, %reply, "upstream refused a recipient added at DATA");
                    }
                }
            }
            if p.accepted() == 0 && self.discarded > 0 {
                p.reset().await;
                return Reply::new(
                    250,
                    "2.0.0",
                    format!("Ok: {} (every recipient discarded)", message.id),
                );
            }
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
