//! Plugins at delivery time (queue mode): before each attempt, `on-deliver` may route
//! each pending recipient of a queued message. The queue hands over the message as it
//! stored it and gets back validated [`Route`]s by recipient, or, when the chain failed,
//! the reply its failure policy gives the whole attempt.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::exports::mailgate::plugin::hooks::DeliveryInfo;
use super::chain::{Call, Chain, Stage};
use super::convert::{self, Decision, Route};
use super::message::ParsedMessage;
use super::registry::Generation;
use crate::smtp::{Envelope, MessageText, Reply, SessionFacts};

/// A queued message as `on-deliver` sees it.
#[derive(Debug)]
pub struct QueuedMessage<'a> {
    /// Queue id.
    pub id: &'a str,
    /// The session it was accepted in.
    pub session: &'a SessionFacts,
    /// The plugin score it was accepted with.
    pub score: f64,
    /// The plugin tags it was accepted with.
    pub tags: &'a [String],
    /// Attempts so far, this one included (from 1).
    pub attempt: u32,
    /// Sender, parameters and the recipients still pending.
    pub envelope: &'a Envelope,
    /// The stored message.
    pub text: MessageText,
    /// When it was accepted, unix milliseconds.
    pub received_at_ms: u64,
}

/// Whether any plugin of `generation` implements `on-deliver`.
pub fn has_deliver_hooks(generation: &Generation) -> bool {
    generation
        .plugins
        .iter()
        .any(|p| p.hooks.contains(Stage::Deliver.flag()))
}

/// Runs `on-deliver` over `generation`: each routed recipient (lowercased) with its
/// route; `Err` with the reply for the whole attempt when the chain failed.
pub async fn routes(
    generation: &Arc<Generation>,
    m: &QueuedMessage<'_>,
) -> Result<HashMap<String, Route>, Reply> {
    if !has_deliver_hooks(generation) {
        return Ok(HashMap::new());
    }
    let info = DeliveryInfo {
        session: convert::session_info(m.session, m.score, m.tags),
        attempt: m.attempt,
    };
    let txn = convert::transaction(m.id, m.envelope);
    let msg = Arc::new(ParsedMessage::new(
        m.id.to_string(),
        m.received_at_ms,
        m.text.clone(),
    ));
    let mut chain = Chain::new(Arc::clone(generation), format!("{}.deliver", m.id));
    let out = chain.run(Call::Deliver(&info, &txn, msg)).await;
    match out.decision {
        Decision::Reply(r) | Decision::Disconnect(r) => Err(r),
        _ => Ok(out
            .routes
            .into_iter()
            .map(|(rcpt, route)| (rcpt.to_ascii_lowercase(), route))
            .collect()),
    }
}
