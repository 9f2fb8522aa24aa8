//! The plugin chain as an SMTP session drives it. The connection driver hands over each
//! hook with the session's facts and gets back the session's answer; what plugins decided
//! for the transaction beyond that (header and recipient edits, discard, quarantine) is
//! kept here and applied to the message when it is delivered. Nothing of WIT leaves this
//! module: the driver sees [`Resolution`], [`Message`] and [`Disposition`].

use std::sync::Arc;

use super::chain::{Call, Chain};
use super::convert::{self, Decision, Route};
use super::edits::{self, HeaderEdit, RecipientEdit};
use super::message::ParsedMessage;
use super::registry::Generation;
use super::wit;
use crate::smtp::{Envelope, Helo, Hook, Message, MessageText, Resolution, SessionFacts};

/// What becomes of an accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Deliver it.
    Deliver,
    /// Answer 250 and drop it (a plugin's `discard`).
    Discard,
    /// Answer 250 and keep it in quarantine, for this reason.
    Quarantine(String),
    /// Refuse it with this reply (plugin edits left it undeliverable as it is).
    Refuse(crate::smtp::Reply),
}

/// What the plugins made of one `RCPT TO` the chain let through, for proxy mode: the
/// addresses it becomes (the recipient after this stage's edits: rewritten, expanded to
/// several, or none when removed) and the route a plugin set for each (`routing.set-route`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptPlan {
    /// Each address and its route, `None` when no plugin routed it.
    pub recipients: Vec<(String, Option<Route>)>,
}

/// The plugins of one SMTP session.
#[derive(Debug)]
pub struct SessionPlugins {
    chain: Chain,
    /// Our name in `Authentication-Results` (the host name).
    authserv_id: String,
    /// Edits for the current transaction, applied at delivery.
    header_edits: Vec<HeaderEdit>,
    recipient_edits: Vec<RecipientEdit>,
    /// How many of `recipient_edits` came from `RCPT TO` (they come first).
    rcpt_stage_edits: usize,
    /// The last `RCPT TO`'s plan, until taken.
    rcpt_plan: Option<RcptPlan>,
    disposition: Disposition,
}

/// What a stage decision means for the session.
fn resolution(d: &Decision) -> Resolution {
    match d {
        Decision::Reply(r) => Resolution::Reply(r.clone()),
        Decision::Disconnect(r) => Resolution::Disconnect(r.clone()),
        Decision::Continue | Decision::Accept | Decision::Discard(_) | Decision::Quarantine(_) => {
            Resolution::Continue
        }
    }
}

/// Whether a resolution refuses what the client asked for.
pub fn refuses(r: &Resolution) -> bool {
    !matches!(r, Resolution::Continue)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SessionPlugins {
    /// The plugins of `generation` for session `session_id`; nothing is instantiated yet.
    /// `authserv_id` names us in `Authentication-Results`.
    pub fn new(
        generation: Arc<Generation>,
        session_id: String,
        authserv_id: String,
    ) -> SessionPlugins {
        SessionPlugins {
            chain: Chain::new(generation, session_id),
            authserv_id,
            header_edits: Vec::new(),
            recipient_edits: Vec::new(),
            rcpt_stage_edits: 0,
            rcpt_plan: None,
            disposition: Disposition::Deliver,
        }
    }

    /// Keeps the plugins' decision trace (for the `X-Mailgate-Trace` header) or not.
    pub fn with_trace(mut self, keep: bool) -> SessionPlugins {
        self.chain.keep_trace(keep);
        self
    }

    /// The session has ended: its plugin instances are released now (see
    /// [`Chain::release_instances`]); score and tags stay readable.
    pub fn release_instances(&mut self) {
        self.chain.release_instances();
    }

    /// Instances this session holds.
    pub fn live_instances(&self) -> usize {
        self.chain.live_instances()
    }

    /// What the last `RCPT TO` the chain let through became (proxy mode relays that).
    pub fn take_rcpt_plan(&mut self) -> Option<RcptPlan> {
        self.rcpt_plan.take()
    }

    /// Keeps the session's authentication checks up to date with what the hook brings:
    /// the client at connect, the HELO name, the transaction's sender, its message.
    fn follow_auth(&mut self, hook: &Hook, session: &SessionFacts, message: Option<&MessageText>) {
        if matches!(hook, Hook::Connect) || self.chain.auth.is_none() {
            let auth = Arc::clone(&self.chain.generation().services.auth);
            self.chain.auth = Some(Arc::new(super::auth::SessionAuth::new(
                auth,
                self.authserv_id.clone(),
                session.client.ip(),
                session.ptr_name.as_deref(),
            )));
        }
        let Some(auth) = &self.chain.auth else {
            return;
        };
        match hook {
            Hook::Helo { name, .. } => auth.helo(name),
            Hook::MailFrom { address, .. } => auth.mail_from(address),
            Hook::Data => {
                if let Some(text) = message {
                    auth.message(text);
                }
            }
            Hook::Connect | Hook::RcptTo { .. } => {}
        }
    }

    /// The session's score so far (its connection and the current transaction).
    pub fn score(&self) -> f64 {
        self.chain.score()
    }

    /// Tags so far.
    pub fn tags(&self) -> &[String] {
        self.chain.tags()
    }

    /// Asks the chain about `hook`. `session` is what is known of the session now,
    /// `envelope` the transaction so far and `txn_id` its id; `message` is the message
    /// at `Hook::Data`.
    pub async fn hook(
        &mut self,
        hook: &Hook,
        session: &SessionFacts,
        envelope: &Envelope,
        txn_id: &str,
        message: Option<&MessageText>,
    ) -> Resolution {
        if matches!(hook, Hook::MailFrom { .. }) {
            // A new transaction: its score, trace and edits start afresh.
            self.chain.new_transaction();
            self.header_edits.clear();
            self.recipient_edits.clear();
            self.rcpt_stage_edits = 0;
            self.disposition = Disposition::Deliver;
        }
        let info = |facts: &SessionFacts, chain: &Chain| {
            convert::session_info(facts, chain.score(), chain.tags())
        };
        self.follow_auth(hook, session, message);
        match hook {
            Hook::Connect => {
                let s = info(session, &self.chain);
                resolution(&self.chain.run(Call::Connect(&s)).await.decision)
            }
            Hook::Helo { name, extended } => {
                // Plugins see the HELO being given as the session's.
                let mut facts = session.clone();
                facts.helo = Some(Helo {
                    name: name.clone(),
                    extended: *extended,
                });
                let s = info(&facts, &self.chain);
                let helo = wit::HeloInfo {
                    name: name.clone(),
                    extended: *extended,
                };
                resolution(&self.chain.run(Call::Helo(&s, &helo)).await.decision)
            }
            Hook::MailFrom { address, params } => {
                let s = info(session, &self.chain);
                let sender = convert::reverse_path(address);
                let p = convert::mail_params(params);
                resolution(
                    &self
                        .chain
                        .run(Call::MailFrom(&s, &sender, &p))
                        .await
                        .decision,
                )
            }
            Hook::RcptTo { address } => {
                let s = info(session, &self.chain);
                let txn = convert::transaction(txn_id, envelope);
                let rcpt = wit::Recipient {
                    address: convert::address(address),
                    params: vec![],
                };
                let out = self.chain.run(Call::RcptTo(&s, &txn, &rcpt)).await;
                let r = resolution(&out.decision);
                self.rcpt_plan = None;
                if !refuses(&r) {
                    let mut becomes = vec![address.clone()];
                    edits::apply_recipients(&mut becomes, &out.recipient_edits);
                    let route = |a: &str| {
                        out.routes
                            .iter()
                            .find(|(r, _)| r.eq_ignore_ascii_case(a))
                            .map(|(_, route)| route.clone())
                    };
                    self.rcpt_plan = Some(RcptPlan {
                        recipients: becomes
                            .into_iter()
                            .map(|a| {
                                let r = route(&a);
                                (a, r)
                            })
                            .collect(),
                    });
                    self.rcpt_stage_edits += out.recipient_edits.len();
                    self.recipient_edits.extend(out.recipient_edits);
                }
                r
            }
            Hook::Data => {
                let Some(text) = message else {
                    return Resolution::Continue;
                };
                let s = info(session, &self.chain);
                let msg = Arc::new(ParsedMessage::new(
                    txn_id.to_string(),
                    now_ms(),
                    text.clone(),
                ));
                let txn = convert::transaction(txn_id, envelope);
                let out = self.chain.run(Call::Data(&s, &txn, msg)).await;
                let r = resolution(&out.decision);
                if !refuses(&r) {
                    self.header_edits.extend(out.header_edits);
                    self.recipient_edits.extend(out.recipient_edits);
                    self.disposition = match out.decision {
                        Decision::Discard(_) => Disposition::Discard,
                        Decision::Quarantine(why) => Disposition::Quarantine(why),
                        _ => Disposition::Deliver,
                    };
                }
                r
            }
        }
    }

    /// Applies the transaction's edits to `message` and says what becomes of it. Header
    /// edits (and the decision trace, with `trace_header`) make a new header block; the
    /// body is not copied. Recipient edits apply to the envelope; with `recipients_fixed`
    /// (proxy mode: the envelope holds what the upstream took, RCPT's edits included) only
    /// DATA's additions do (the driver relays them before the message; DATA's removals and
    /// rewrites are logged as not applied). If they leave more than `max_recipients`, the
    /// message is refused `452 4.5.3`.
    pub fn finish(
        &mut self,
        message: &mut Message,
        trace_header: bool,
        recipients_fixed: bool,
        max_recipients: usize,
    ) -> Disposition {
        let mut headers = std::mem::take(&mut self.header_edits);
        if trace_header {
            headers.push(HeaderEdit::Prepend(
                "X-Mailgate-Trace".into(),
                self.chain.trace_text(),
            ));
        }
        if !headers.is_empty() {
            let (head, body_at) = edits::apply_headers(
                message.text.front(),
                message.text.front_is_whole(),
                &headers,
            );
            message.text.replace_head(head, body_at);
        }
        let mut rcpt_edits = std::mem::take(&mut self.recipient_edits);
        if recipients_fixed {
            // Proxy mode: the edits made at RCPT were relayed as they came (the envelope
            // holds what the upstream took); of DATA's, additions are relayed before the
            // message, the rest cannot be.
            let data_edits = rcpt_edits.split_off(self.rcpt_stage_edits.min(rcpt_edits.len()));
            let (adds, other): (Vec<_>, Vec<_>) = data_edits
                .into_iter()
                .partition(|e| matches!(e, RecipientEdit::Add(_)));
            if !other.is_empty() {
                tracing::warn!(msg = %message.id, edits = other.len(), "recipient removals and rewrites at DATA are not applied in proxy mode");
            }
            rcpt_edits = adds;
        }
        if !rcpt_edits.is_empty() {
            edits::apply_recipients(&mut message.envelope.rcpt_to, &rcpt_edits);
            let n = message.envelope.rcpt_to.len();
            if n > max_recipients {
                tracing::warn!(msg = %message.id, recipients = n, max_recipients, "plugin recipient edits exceed max_recipients; message refused");
                self.disposition = Disposition::Deliver;
                return Disposition::Refuse(crate::smtp::Reply::new(
                    452,
                    "4.5.3",
                    format!(
                        "Too many recipients after plugin edits ({n}, at most {max_recipients})"
                    ),
                ));
            }
        }
        std::mem::replace(&mut self.disposition, Disposition::Deliver)
    }
}
