//! The plugin chain of one SMTP session.
//!
//! Plugins run in config order at each stage they implement. An instance is taken from
//! the plugin's pool (or created) lazily, the first time one of its hooks fires in the
//! session, `init` runs on it, and it serves the rest of the session (state across one
//! session's hooks); it goes back to the pool when the session ends or idles
//! ([`super::pool`]). Every call
//! has a wall-clock deadline (epoch interruption inside wasm, a timeout around host
//! calls), runs under the memory cap and the wasm stack cap, and its output is
//! validated. A trap, panic, deadline, memory cap or invalid output runs the plugin's
//! `on_error` policy and drops the instance (the next hook gets a fresh one).
//!
//! The first `reject`/`tempfail`/`disconnect` ends the stage; `accept` skips the rest of
//! the stage; edits accumulate in chain order; scores sum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout;
use wasmtime::component::Resource;

use super::bindings::exports::mailgate::plugin::hooks::{
    DataOutcome, DeliverOutcome, DeliveryInfo, HookSet, Outcome, RcptOutcome,
};
use super::bindings::mailgate::plugin::types as wit;
use super::convert::{self, Decision, Invalid, Route};
use super::edits::{HeaderEdit, RecipientEdit};
use super::message::{MessageHandle, ParsedMessage};
use super::pool::Live;
use super::registry::{Generation, LoadedPlugin, store};
use super::state::State;
use crate::config::OnError;
use crate::smtp::Reply;

/// Extra time around a call for the timeout that bounds host calls.
const GRACE: Duration = Duration::from_millis(50);

/// A stage of the SMTP session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before the greeting.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// End of DATA/BDAT.
    Data,
    /// Before a queue delivery attempt.
    Deliver,
}

impl Stage {
    /// The hook-set flag of this stage.
    pub fn flag(self) -> HookSet {
        match self {
            Stage::Connect => HookSet::CONNECT,
            Stage::Helo => HookSet::HELO,
            Stage::MailFrom => HookSet::MAIL_FROM,
            Stage::RcptTo => HookSet::RCPT_TO,
            Stage::Data => HookSet::DATA,
            Stage::Deliver => HookSet::DELIVER,
        }
    }

    /// Name in logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::MailFrom => "mail",
            Stage::RcptTo => "rcpt",
            Stage::Data => "data",
            Stage::Deliver => "deliver",
        }
    }
}

/// Why a plugin call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The call ran past its deadline.
    Deadline,
    /// The memory cap refused a growth.
    Memory,
    /// The wasm stack overflowed.
    Stack,
    /// A trap (a Rust panic is an `unreachable` trap) or a host error.
    Trap(String),
    /// `init` refused the session's instance.
    Init(String),
    /// The output broke a rule.
    Invalid(String),
    /// No instance slot free: gateway capacity, not the plugin's fault.
    Capacity,
}

impl Failure {
    /// The cause as the `plugin_failures` metric labels it.
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::Stack => "stack",
            Failure::Trap(_) => "trap",
            Failure::Init(_) => "init",
            Failure::Invalid(_) => "invalid",
            Failure::Capacity => "capacity",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Deadline => write!(f, "deadline exceeded"),
            Failure::Memory => write!(f, "memory cap reached"),
            Failure::Stack => write!(f, "stack overflow"),
            Failure::Trap(t) => write!(f, "trap: {t}"),
            Failure::Init(m) => write!(f, "init failed: {m}"),
            Failure::Invalid(m) => write!(f, "invalid plugin output: {m}"),
            Failure::Capacity => write!(f, "no free instance slot"),
        }
    }
}

/// One line of the decision trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEntry {
    /// Plugin name.
    pub plugin: String,
    /// Stage.
    pub stage: Stage,
    /// `continue`, `accept`, `reject 550`, `failed: deadline exceeded`, ...
    pub outcome: String,
    /// The plugin's reason, if it gave one.
    pub reason: Option<String>,
    /// Time taken.
    pub micros: u64,
}

/// One plugin call in full, as a [`DecisionLog`] keeps it: the trace entry's facts plus
/// the marks, edits, routes and memory behind them.
#[derive(Clone, Debug)]
pub struct Decided {
    /// Plugin name.
    pub plugin: String,
    /// Stage.
    pub stage: Stage,
    /// The trace's summary: `continue`, `reject 550`, `failed (...) -> tempfail 451`, ...
    pub outcome: String,
    /// What the stage takes from the call (the failure policy's, when it failed).
    pub decision: Decision,
    /// Why the call failed, if it did.
    pub failure: Option<Failure>,
    /// What the plugin wrote to stdout/stderr before it failed (empty otherwise).
    pub output: String,
    /// Score entries: rule and points.
    pub score: Vec<(String, f64)>,
    /// Tags it added.
    pub tags: Vec<String>,
    /// The plugin's reason, if it gave one.
    pub reason: Option<String>,
    /// Header edits it asked for.
    pub header_edits: Vec<HeaderEdit>,
    /// Recipient edits it asked for.
    pub recipient_edits: Vec<RecipientEdit>,
    /// Routes it gave (`on-deliver`), by recipient.
    pub routes: Vec<(String, Route)>,
    /// Time taken.
    pub micros: u64,
    /// Linear memory its instance held after the call, octets (0 without an instance).
    pub memory: usize,
}

/// Every plugin decision in full, in call order, for offline tools that show them
/// (`mailgate plugin test`): chains record into it when their generation's services
/// have one ([`Services::decisions`](super::registry::Services::decisions)); the server's
/// never do. It is not bounded: it serves runs of one session.
#[derive(Debug, Default)]
pub struct DecisionLog(std::sync::Mutex<Vec<Decided>>);

impl DecisionLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Decided>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one decision.
    pub fn push(&self, d: Decided) {
        self.lock().push(d);
    }

    /// Decisions recorded so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The decisions from the `from`th on (all of them for 0).
    pub fn since(&self, from: usize) -> Vec<Decided> {
        self.lock()
            .get(from..)
            .map(<[Decided]>::to_vec)
            .unwrap_or_default()
    }
}

/// What a stage came to.
#[derive(Clone, Debug)]
pub struct StageOutcome {
    /// The decision for the stage.
    pub decision: Decision,
    /// Header edits (DATA), in chain order.
    pub header_edits: Vec<HeaderEdit>,
    /// Recipient edits, in chain order.
    pub recipient_edits: Vec<RecipientEdit>,
    /// Routes (`on-deliver`) by recipient (`local@domain`): the first plugin to route a
    /// recipient wins.
    pub routes: Vec<(String, Route)>,
}

/// The arguments of one hook call.
#[derive(Debug)]
pub enum Call<'a> {
    /// `on-connect`
    Connect(&'a wit::SessionInfo),
    /// `on-helo`
    Helo(&'a wit::SessionInfo, &'a wit::HeloInfo),
    /// `on-mail-from`
    MailFrom(
        &'a wit::SessionInfo,
        &'a Option<wit::Address>,
        &'a wit::MailParams,
    ),
    /// `on-rcpt-to`
    RcptTo(
        &'a wit::SessionInfo,
        &'a wit::Transaction,
        &'a wit::Recipient,
    ),
    /// `on-data`
    Data(
        &'a wit::SessionInfo,
        &'a wit::Transaction,
        Arc<ParsedMessage>,
    ),
    /// `on-deliver`
    Deliver(&'a DeliveryInfo, &'a wit::Transaction, Arc<ParsedMessage>),
}

impl<'a> Call<'a> {
    /// The session facts the call hands over (not `on-deliver`'s, which are final).
    fn session(&self) -> Option<&'a wit::SessionInfo> {
        match *self {
            Call::Connect(s)
            | Call::Helo(s, _)
            | Call::MailFrom(s, ..)
            | Call::RcptTo(s, ..)
            | Call::Data(s, ..) => Some(s),
            Call::Deliver(..) => None,
        }
    }

    /// The same call with other session facts.
    fn with_session<'b>(&self, s: &'b wit::SessionInfo) -> Call<'b>
    where
        'a: 'b,
    {
        match self {
            Call::Connect(_) => Call::Connect(s),
            Call::Helo(_, h) => Call::Helo(s, h),
            Call::MailFrom(_, a, p) => Call::MailFrom(s, a, p),
            Call::RcptTo(_, t, r) => Call::RcptTo(s, t, r),
            Call::Data(_, t, m) => Call::Data(s, t, Arc::clone(m)),
            Call::Deliver(d, t, m) => Call::Deliver(d, t, Arc::clone(m)),
        }
    }

    fn stage(&self) -> Stage {
        match self {
            Call::Connect(..) => Stage::Connect,
            Call::Helo(..) => Stage::Helo,
            Call::MailFrom(..) => Stage::MailFrom,
            Call::RcptTo(..) => Stage::RcptTo,
            Call::Data(..) => Stage::Data,
            Call::Deliver(..) => Stage::Deliver,
        }
    }
}

enum Returned {
    Outcome(Outcome),
    /// With the routes the plugin set during the call (`routing.set-route`).
    Rcpt(RcptOutcome, Vec<wit::RecipientRoute>),
    Data(DataOutcome),
    Deliver(DeliverOutcome),
}

struct Slot {
    plugin: Arc<LoadedPlugin>,
    live: Option<Live>,
    /// The plugin's budget in this session, kept across its instances.
    budget: Arc<super::budget::SessionBudget>,
}

impl Slot {
    /// The session is over for this plugin: its instance, if it did not fail, goes back
    /// to the plugin's pool.
    fn release(&mut self) {
        if let Some(live) = self.live.take()
            && self.plugin.spec.reuse_instances
        {
            self.plugin.pool.put(live);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The chain for one session.
pub struct Chain {
    generation: Arc<Generation>,
    slots: Vec<Slot>,
    session_id: String,
    session_score: f64,
    txn_score: f64,
    tags: Vec<String>,
    /// The decisions of the current transaction (and the session before it): the
    /// latest [`MAX_TRACE`].
    pub trace: Vec<TraceEntry>,
    /// Older decisions dropped from `trace`.
    trace_dropped: usize,
    /// Whether decisions are traced (for the `X-Mailgate-Trace` header); a session
    /// without that header keeps no trace (a held idle session should hold little).
    keep_trace: bool,
    /// The session's authentication checks, shared with its instances.
    pub auth: Option<Arc<super::auth::SessionAuth>>,
}

/// Decisions a chain's trace keeps.
pub const MAX_TRACE: usize = 64;

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("session", &self.session_id)
            .field("plugins", &self.slots.len())
            .finish()
    }
}

impl Chain {
    /// A chain over `generation` for one session; nothing is instantiated yet.
    pub fn new(generation: Arc<Generation>, session_id: String) -> Chain {
        let slots = generation
            .plugins
            .iter()
            .map(|p| Slot {
                plugin: Arc::clone(p),
                live: None,
                budget: Default::default(),
            })
            .collect();
        Chain {
            generation,
            slots,
            session_id,
            session_score: 0.0,
            txn_score: 0.0,
            tags: Vec::new(),
            trace: Vec::new(),
            trace_dropped: 0,
            keep_trace: true,
            auth: None,
        }
    }

    /// The plugin generation this chain runs.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// Score so far (session and current transaction).
    pub fn score(&self) -> f64 {
        self.session_score + self.txn_score
    }

    /// Tags so far.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The session has ended: its instances go back to their plugins' pools now rather
    /// than when the chain is dropped (a hook after this creates or takes one again).
    pub fn release_instances(&mut self) {
        self.slots.iter_mut().for_each(Slot::release);
    }

    /// Live instances (for tests and status).
    pub fn live_instances(&self) -> usize {
        self.slots.iter().filter(|s| s.live.is_some()).count()
    }

    /// Keep the decision trace or not (kept unless turned off).
    pub fn keep_trace(&mut self, keep: bool) {
        self.keep_trace = keep;
        if !keep {
            self.trace = Vec::new();
        }
    }

    /// A new transaction starts: its score and trace start afresh.
    pub fn new_transaction(&mut self) {
        self.txn_score = 0.0;
        self.trace.clear();
        self.trace_dropped = 0;
    }

    /// The trace as one header value: `plugin/stage=outcome(ms)` entries.
    pub fn trace_text(&self) -> String {
        let dropped = (self.trace_dropped > 0)
            .then(|| format!("({} earlier decisions omitted)", self.trace_dropped));
        dropped
            .into_iter()
            .chain(self.trace.iter().map(|t| {
                format!(
                    "{}/{}={} ({}us)",
                    t.plugin,
                    t.stage.name(),
                    t.outcome,
                    t.micros
                )
            }))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Adds a decision to the trace, which keeps the latest [`MAX_TRACE`] (a flood of
    /// EHLOs before any MAIL must not grow it) and counts the ones it dropped.
    fn record(&mut self, entry: TraceEntry) {
        if !self.keep_trace {
            return;
        }
        if self.trace.len() >= MAX_TRACE {
            self.trace.remove(0);
            self.trace_dropped += 1;
        }
        self.trace.push(entry);
    }

    /// Runs one stage through the chain.
    pub async fn run(&mut self, call: Call<'_>) -> StageOutcome {
        let stage = call.stage();
        let mut out = StageOutcome {
            decision: Decision::Continue,
            header_edits: vec![],
            recipient_edits: vec![],
            routes: vec![],
        };
        for i in 0..self.slots.len() {
            if !self.slots[i].plugin.hooks.contains(stage.flag()) {
                continue;
            }
            let started = Instant::now();
            let literals = self.slots[i].plugin.spec.literal_recipients;
            // Each plugin sees the score and tags as the plugins before it in this stage
            // left them, not only as the stage began.
            let running = call.session().and_then(|s| {
                let (score, tags) = (self.score(), &self.tags);
                (s.score != score || s.tags != *tags).then(|| wit::SessionInfo {
                    score,
                    tags: tags.clone(),
                    ..s.clone()
                })
            });
            let updated;
            let this = match &running {
                Some(s) => {
                    updated = call.with_session(s);
                    &updated
                }
                None => &call,
            };
            let result = self
                .invoke(i, this)
                .await
                .and_then(|r| validate(r).map_err(|e| Failure::Invalid(e.0)))
                .and_then(
                    |v| match v.recipient_edits.iter().find_map(literal_target) {
                        Some(a) if !literals => Err(Failure::Invalid(format!(
                            "recipient {a:?} is an address literal (literal_recipients is off)"
                        ))),
                        _ => Ok(v),
                    },
                );
            let elapsed = started.elapsed();
            let micros = elapsed.as_micros() as u64;
            let name = self.slots[i].plugin.spec.name.clone();
            let m = crate::metrics::get();
            let hook = crate::metrics::PluginHook {
                plugin: name.clone(),
                hook: stage.name().to_string(),
            };
            m.plugin_call_seconds
                .get_or_create(&hook)
                .observe(elapsed.as_secs_f64());
            match &result {
                Ok(v) => m
                    .plugin_verdicts
                    .get_or_create(&crate::metrics::PluginVerdict {
                        plugin: hook.plugin.clone(),
                        hook: hook.hook.clone(),
                        verdict: verdict_name(&v.decision).to_string(),
                    })
                    .inc(),
                Err(f) => m
                    .plugin_failures
                    .get_or_create(&crate::metrics::PluginFailure {
                        plugin: hook.plugin.clone(),
                        hook: hook.hook.clone(),
                        cause: f.cause().to_string(),
                    })
                    .inc(),
            };
            // The whole decision, for a decision log; read before a failure drops the
            // instance (its memory and output go with it).
            let log = self.generation.services.decisions.clone();
            let mut detail = log.as_ref().map(|_| {
                let live = self.slots[i].live.as_ref().map(|l| l.store.data());
                let memory = live.map_or(0, |st| st.limiter.held());
                let output = match (&result, live) {
                    (Err(_), Some(st)) => st.output_text(),
                    _ => String::new(),
                };
                (memory, output, result.as_ref().err().cloned())
            });
            let (decision, reason, outcome, marks) = match result {
                Ok(v) => {
                    let marks = detail.as_ref().map(|_| {
                        (
                            v.score
                                .iter()
                                .map(|s| (s.rule.clone(), s.points))
                                .collect::<Vec<_>>(),
                            v.tags.clone(),
                            v.header_edits.clone(),
                            v.recipient_edits.clone(),
                            v.routes.clone(),
                        )
                    });
                    // Points given before MAIL belong to the session and persist across
                    // its transactions; the rest to the transaction.
                    match stage {
                        Stage::Connect | Stage::Helo => self.session_score += v.points,
                        _ => self.txn_score += v.points,
                    }
                    for t in v.tags {
                        if !self.tags.contains(&t) {
                            self.tags.push(t);
                        }
                    }
                    out.header_edits.extend(v.header_edits);
                    out.recipient_edits.extend(v.recipient_edits);
                    for (rcpt, route) in v.routes {
                        if !out
                            .routes
                            .iter()
                            .any(|(o, _)| o.eq_ignore_ascii_case(&rcpt))
                        {
                            out.routes.push((rcpt, route));
                        }
                    }
                    let label = describe(&v.decision);
                    (v.decision, v.reason, label, marks)
                }
                Err(failure) => {
                    let d = self.on_failure(i, stage, &failure);
                    let label = format!("failed ({failure}) -> {}", describe(&d));
                    (d, None, label, None)
                }
            };
            if let (Some(log), Some((memory, output, failure))) = (log, detail.take()) {
                let (score, tags, header_edits, recipient_edits, routes) =
                    marks.unwrap_or_default();
                log.push(Decided {
                    plugin: name.clone(),
                    stage,
                    outcome: outcome.clone(),
                    decision: decision.clone(),
                    failure,
                    output,
                    score,
                    tags,
                    reason: reason.clone(),
                    header_edits,
                    recipient_edits,
                    routes,
                    micros,
                    memory,
                });
            }
            tracing::debug!(plugin = %name, stage = stage.name(), outcome = %outcome, reason = reason.as_deref().unwrap_or(""), micros, "plugin decision");
            if !matches!(decision, Decision::Continue) {
                tracing::info!(plugin = %name, stage = stage.name(), outcome = %outcome, reason = reason.as_deref().unwrap_or(""), "plugin decision");
            }
            self.record(TraceEntry {
                plugin: name,
                stage,
                outcome,
                reason,
                micros,
            });
            match decision {
                Decision::Continue => continue,
                Decision::Reply(ref r) if !r.is_positive() => {
                    out.header_edits.clear();
                    out.recipient_edits.clear();
                    out.decision = decision;
                    return out;
                }
                Decision::Disconnect(_) => {
                    out.header_edits.clear();
                    out.recipient_edits.clear();
                    out.decision = decision;
                    return out;
                }
                other => {
                    out.decision = other;
                    return out;
                }
            }
        }
        out
    }

    fn on_failure(&mut self, i: usize, stage: Stage, failure: &Failure) -> Decision {
        let slot = &mut self.slots[i];
        let output = slot
            .live
            .as_ref()
            .map(|l| l.store.data().output_text())
            .unwrap_or_default();
        slot.live = None;
        let spec = &slot.plugin.spec;
        tracing::warn!(
            plugin = %spec.name,
            stage = stage.name(),
            cause = %failure,
            policy = ?spec.on_error,
            plugin_output = %output,
            "plugin failed; instance dropped"
        );
        if *failure == Failure::Capacity {
            return Decision::Reply(Reply::new(451, "4.3.2", "System busy, try again later"));
        }
        match spec.on_error {
            OnError::Tempfail => Decision::Reply(Reply::new(
                451,
                "4.7.0",
                "Temporary policy failure, try again later",
            )),
            OnError::Continue => Decision::Continue,
            OnError::Reject => Decision::Reply(Reply::new(550, "5.7.0", "Refused by policy")),
        }
    }

    async fn invoke(&mut self, i: usize, call: &Call<'_>) -> Result<Returned, Failure> {
        let generation = Arc::clone(&self.generation);
        let auth = self.auth.clone();
        let session_id = self.session_id.clone();
        let slot = &mut self.slots[i];
        let spec = Arc::clone(&slot.plugin.spec);
        let limit = spec.deadline + GRACE;
        if slot.live.is_none() {
            let budgets = super::budget::Budgets {
                session: Arc::clone(&slot.budget),
                log_rate: Arc::clone(&slot.plugin.log_rate),
                auth: auth.clone(),
            };
            let plugin = Arc::clone(&slot.plugin);
            let reused = spec.reuse_instances.then(|| plugin.pool.take()).flatten();
            let fut = async {
                let mut live = match reused {
                    Some(mut live) => {
                        let st = live.store.data_mut();
                        st.session_id = session_id;
                        st.budgets = budgets;
                        st.deadline = Instant::now() + spec.deadline;
                        live.store.set_epoch_deadline(1);
                        live
                    }
                    None => {
                        let mut st = store(
                            &generation.engine,
                            Arc::clone(&spec),
                            Arc::clone(&generation.services),
                            session_id,
                            budgets,
                        );
                        st.data_mut().deadline = Instant::now() + spec.deadline;
                        let inst = plugin.pre.instance_pre().instantiate_async(&mut st).await;
                        let inst = inst.map_err(|e| classify(&e, st.data()))?;
                        let hooks = plugin
                            .exports
                            .load(&mut st, &inst)
                            .map_err(|e| classify(&e, st.data()))?;
                        Live::new(st, hooks)
                    }
                };
                // Every session starts with `init`: the plugin value is always fresh.
                let hooks = live.hooks;
                match hooks.call_init(&mut live.store, &spec.config).await {
                    Ok(Ok(())) => Ok(live),
                    Ok(Err(msg)) => Err(Failure::Init(msg.chars().take(400).collect())),
                    Err(e) => Err(classify(&e, live.store.data())),
                }
            };
            match timeout(limit, fut).await {
                Ok(Ok(live)) => slot.live = Some(live),
                Ok(Err(failure)) => return Err(failure),
                Err(_) => return Err(Failure::Deadline),
            }
        }
        let Some(Live {
            store: st, hooks, ..
        }) = slot.live.as_mut()
        else {
            return Err(Failure::Trap("instance missing".into()));
        };
        st.data_mut().deadline = Instant::now() + spec.deadline;
        st.set_epoch_deadline(1);
        // DATA and delivery hand the message over as a resource, borrowed for the call.
        let handle = match call {
            Call::Data(.., m) | Call::Deliver(.., m) => Some(
                st.data_mut()
                    .table()
                    .push(MessageHandle(Arc::clone(m)))
                    .map_err(|e| Failure::Trap(e.to_string()))?,
            ),
            _ => None,
        };
        let borrow = || {
            // Only the DATA and delivery arms call this, and they have a handle.
            let rep = handle.as_ref().map(Resource::rep).unwrap_or_default();
            Resource::<MessageHandle>::new_borrow(rep)
        };
        let result = match call {
            Call::Connect(s) => timeout(limit, hooks.call_on_connect(&mut *st, s))
                .await
                .map(|r| r.map(Returned::Outcome)),
            Call::Helo(s, h) => timeout(limit, hooks.call_on_helo(&mut *st, s, h))
                .await
                .map(|r| r.map(Returned::Outcome)),
            Call::MailFrom(s, a, p) => timeout(limit, hooks.call_on_mail_from(&mut *st, s, a, p))
                .await
                .map(|r| r.map(Returned::Outcome)),
            Call::RcptTo(s, t, r) => {
                st.data_mut().rcpt_routes = Some(Vec::new());
                let r = timeout(limit, hooks.call_on_rcpt_to(&mut *st, s, t, r)).await;
                let routes = st.data_mut().rcpt_routes.take().unwrap_or_default();
                r.map(|r| r.map(|o| Returned::Rcpt(o, routes)))
            }
            Call::Data(s, t, _) => timeout(limit, hooks.call_on_data(&mut *st, s, t, borrow()))
                .await
                .map(|r| r.map(Returned::Data)),
            Call::Deliver(d, t, _) => {
                timeout(limit, hooks.call_on_deliver(&mut *st, d, t, borrow()))
                    .await
                    .map(|r| r.map(Returned::Deliver))
            }
        };
        if let Some(h) = handle {
            let _ = st.data_mut().table().delete(h);
        }
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(classify(&e, st.data())),
            Err(_) => Err(Failure::Deadline),
        }
    }
}

/// A validated call result.
struct Valid {
    decision: Decision,
    points: f64,
    /// The score entries behind `points`.
    score: Vec<wit::ScoreEntry>,
    tags: Vec<String>,
    reason: Option<String>,
    header_edits: Vec<HeaderEdit>,
    recipient_edits: Vec<RecipientEdit>,
    routes: Vec<(String, Route)>,
}

/// The address an edit adds (or rewrites to) when it is an address literal
/// (`user@[192.0.2.1]`).
fn literal_target(e: &RecipientEdit) -> Option<&str> {
    match e {
        RecipientEdit::Add(a) | RecipientEdit::Rewrite(_, a) => a
            .rsplit_once('@')
            .filter(|(_, d)| d.starts_with('['))
            .map(|_| a.as_str()),
        RecipientEdit::Remove(_) => None,
    }
}

fn validate(r: Returned) -> Result<Valid, Invalid> {
    let (decision, marks, header_edits, recipient_edits, routes) = match r {
        Returned::Outcome(o) => (
            convert::verdict(&o.verdict)?,
            o.marks,
            vec![],
            vec![],
            vec![],
        ),
        Returned::Rcpt(o, routes) => (
            convert::verdict(&o.verdict)?,
            o.marks,
            vec![],
            convert::recipient_edits(&o.recipient_edits)?,
            convert::routes(&routes)?,
        ),
        Returned::Data(o) => (
            convert::data_verdict(&o.verdict)?,
            o.marks,
            convert::header_edits(&o.header_edits)?,
            convert::recipient_edits(&o.recipient_edits)?,
            vec![],
        ),
        Returned::Deliver(o) => {
            if let Some(r) = &o.reason {
                convert::clean_text("reason", r, convert::MAX_REASON)?;
            }
            return Ok(Valid {
                decision: Decision::Continue,
                points: 0.0,
                score: vec![],
                tags: vec![],
                routes: convert::routes(&o.routes)?,
                reason: o.reason,
                header_edits: vec![],
                recipient_edits: vec![],
            });
        }
    };
    convert::marks(&marks)?;
    Ok(Valid {
        decision,
        points: marks.score.iter().map(|s| s.points).sum(),
        score: marks.score,
        tags: marks.tags,
        reason: marks.reason,
        header_edits,
        recipient_edits,
        routes,
    })
}

/// A decision as the `plugin_verdicts` metric labels it.
fn verdict_name(d: &Decision) -> &'static str {
    match d {
        Decision::Continue => "continue",
        Decision::Accept => "accept",
        Decision::Reply(r) if r.is_transient() => "tempfail",
        Decision::Reply(_) => "reject",
        Decision::Disconnect(_) => "disconnect",
        Decision::Discard(_) => "discard",
        Decision::Quarantine(_) => "quarantine",
    }
}

/// A decision for the trace: its verdict name, with the reply code when it has one.
fn describe(d: &Decision) -> String {
    match d {
        Decision::Reply(r) | Decision::Disconnect(r) => {
            format!("{} {}", verdict_name(d), r.code())
        }
        _ => verdict_name(d).to_string(),
    }
}

fn classify(e: &wasmtime::Error, st: &State) -> Failure {
    if st.limiter.hit {
        return Failure::Memory;
    }
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return match t {
            wasmtime::Trap::Interrupt => Failure::Deadline,
            wasmtime::Trap::StackOverflow => Failure::Stack,
            other => Failure::Trap(other.to_string()),
        };
    }
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return Failure::Capacity;
    }
    // The root cause first (a host error such as "kv backend unavailable"): the chain
    // around it starts with the wasm backtrace, which would push it past the cut.
    let all = format!("{e:#}");
    let root = e.root_cause().to_string();
    let text = if all.starts_with(&root) {
        all
    } else {
        format!("{root}; {all}")
    };
    Failure::Trap(text.chars().take(400).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginSpec;
    use crate::plugin::registry::Services;
    use crate::smtp::{Listener, SessionFacts};

    /// Services whose resolver never sends a query anywhere reachable.
    fn services() -> Arc<Services> {
        Services::new(Arc::new(crate::dns::Resolver::new(crate::dns::Settings {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            ..Default::default()
        })))
    }

    fn state() -> State {
        let spec = PluginSpec {
            name: "p".into(),
            path: "/nonexistent/p.wasm".into(),
            sha256: None,
            on_error: OnError::Tempfail,
            capabilities: vec![],
            deadline: Duration::from_millis(100),
            memory: 16 << 20,
            config: vec![],
            literal_recipients: false,
            log_rate: (100, 65536),
            kv_quota: Default::default(),
            reuse_instances: true,
        };
        State::new(Arc::new(spec), services(), "S".into(), Default::default())
    }

    fn no_marks() -> wit::Marks {
        wit::Marks {
            score: vec![],
            tags: vec![],
            reason: None,
        }
    }

    fn wit_reply(code: u16, text: &str) -> wit::Reply {
        wit::Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    fn addr(local: &str, domain: &str) -> wit::Address {
        wit::Address {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    /// The rule a returned value broke; panics if it was valid.
    fn invalid(r: Returned) -> String {
        match validate(r) {
            Ok(v) => panic!("accepted: {}", describe(&v.decision)),
            Err(e) => e.0,
        }
    }

    fn valid(r: Returned) -> Valid {
        match validate(r) {
            Ok(v) => v,
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn session_info() -> wit::SessionInfo {
        convert::session_info(
            &SessionFacts::new(
                "S".into(),
                "192.0.2.1:4000".parse().unwrap(),
                "127.0.0.1:25".parse().unwrap(),
                Listener::Smtp,
            ),
            0.0,
            &[],
        )
    }

    #[test]
    fn a_data_header_edit_with_cr_lf_is_invalid() {
        let e = invalid(Returned::Data(DataOutcome {
            verdict: wit::DataVerdict::Continue,
            marks: no_marks(),
            header_edits: vec![wit::HeaderEdit::Append(wit::Header {
                name: "X-Spam".into(),
                value: "yes\r\nBcc: victim@example.test".into(),
            })],
            recipient_edits: vec![],
        }));
        assert!(e.contains("control characters"), "{e}");
    }

    #[test]
    fn a_valid_data_outcome_comes_back_typed() {
        let v = valid(Returned::Data(DataOutcome {
            verdict: wit::DataVerdict::Quarantine("looks odd".into()),
            marks: no_marks(),
            header_edits: vec![
                wit::HeaderEdit::Prepend(wit::Header {
                    name: "X-Spam-Flag".into(),
                    value: "YES".into(),
                }),
                wit::HeaderEdit::Remove(wit::HeaderRef {
                    name: "X-Old".into(),
                    occurrence: Some(1),
                }),
            ],
            recipient_edits: vec![wit::RecipientEdit::Remove(addr("u", "example.test"))],
        }));
        assert_eq!(v.decision, Decision::Quarantine("looks odd".into()));
        assert_eq!(
            v.header_edits,
            vec![
                HeaderEdit::Prepend("X-Spam-Flag".into(), "YES".into()),
                HeaderEdit::Remove(crate::plugin::edits::HeaderRef {
                    name: "X-Old".into(),
                    occurrence: Some(1),
                }),
            ]
        );
        assert_eq!(
            v.recipient_edits,
            vec![RecipientEdit::Remove("u@example.test".into())]
        );
        assert!(v.routes.is_empty());
    }

    #[test]
    fn a_valid_rcpt_outcome_returns_typed_recipient_edits() {
        let v = valid(Returned::Rcpt(
            RcptOutcome {
                verdict: wit::Verdict::Accept,
                marks: no_marks(),
                recipient_edits: vec![
                    wit::RecipientEdit::Add(addr("archive", "example.test")),
                    wit::RecipientEdit::Rewrite(wit::AddressRewrite {
                        original: addr("old", "example.test"),
                        replacement: addr("new", "example.test"),
                    }),
                ],
            },
            vec![wit::RecipientRoute {
                recipient: addr("new", "example.test"),
                route: wit::Route::Discard,
            }],
        ));
        assert_eq!(v.decision, Decision::Accept);
        assert_eq!(
            v.recipient_edits,
            vec![
                RecipientEdit::Add("archive@example.test".into()),
                RecipientEdit::Rewrite("old@example.test".into(), "new@example.test".into()),
            ]
        );
        assert!(v.header_edits.is_empty(), "RCPT carries no header edits");
        assert_eq!(
            v.routes,
            vec![("new@example.test".to_string(), Route::Discard)],
            "routes set during the call"
        );
    }

    #[test]
    fn a_bad_recipient_edit_at_rcpt_is_invalid() {
        let e = invalid(Returned::Rcpt(
            RcptOutcome {
                verdict: wit::Verdict::Continue,
                marks: no_marks(),
                recipient_edits: vec![wit::RecipientEdit::Add(addr("a%b", "example.test"))],
            },
            vec![],
        ));
        assert!(e.contains("bad recipient address"), "{e}");
        let twice = wit::RecipientRoute {
            recipient: addr("a", "example.test"),
            route: wit::Route::Mx,
        };
        let e = invalid(Returned::Rcpt(
            RcptOutcome {
                verdict: wit::Verdict::Continue,
                marks: no_marks(),
                recipient_edits: vec![],
            },
            vec![twice.clone(), twice],
        ));
        assert!(e.contains("routed twice"), "{e}");
    }

    #[test]
    fn marks_points_are_summed_and_tags_and_reason_kept() {
        let v = valid(Returned::Outcome(Outcome {
            verdict: wit::Verdict::Continue,
            marks: wit::Marks {
                score: vec![
                    wit::ScoreEntry {
                        rule: "DNSBL_A".into(),
                        points: 1.5,
                    },
                    wit::ScoreEntry {
                        rule: "SPF_FAIL".into(),
                        points: 2.25,
                    },
                    wit::ScoreEntry {
                        rule: "WHITELIST".into(),
                        points: -0.75,
                    },
                ],
                tags: vec!["listed".into(), "spf:fail".into()],
                reason: Some("two hits".into()),
            },
        }));
        assert_eq!(v.points, 3.0);
        assert_eq!(v.tags, vec!["listed".to_string(), "spf:fail".to_string()]);
        assert_eq!(v.reason.as_deref(), Some("two hits"));
        assert_eq!(v.decision, Decision::Continue);
    }

    #[test]
    fn invalid_marks_make_a_valid_verdict_invalid() {
        let e = invalid(Returned::Outcome(Outcome {
            verdict: wit::Verdict::Accept,
            marks: wit::Marks {
                score: vec![wit::ScoreEntry {
                    rule: "R".into(),
                    points: f64::INFINITY,
                }],
                tags: vec![],
                reason: None,
            },
        }));
        assert!(e.contains("finite"), "{e}");
        let e = invalid(Returned::Outcome(Outcome {
            verdict: wit::Verdict::Continue,
            marks: wit::Marks {
                score: vec![],
                tags: vec![],
                reason: Some("line\nbreak".into()),
            },
        }));
        assert!(e.contains("control characters"), "{e}");
    }

    #[test]
    fn a_reject_or_tempfail_with_the_wrong_code_class_is_invalid() {
        for verdict in [
            wit::Verdict::Reject(wit_reply(250, "fine")),
            wit::Verdict::Reject(wit_reply(451, "later")),
            wit::Verdict::Tempfail(wit_reply(550, "never")),
            wit::Verdict::Disconnect(wit_reply(451, "bye")),
        ] {
            let e = invalid(Returned::Outcome(Outcome {
                verdict,
                marks: no_marks(),
            }));
            assert!(e.contains("not allowed"), "{e}");
        }
        let e = invalid(Returned::Data(DataOutcome {
            verdict: wit::DataVerdict::Reject(wit_reply(250, "fine")),
            marks: no_marks(),
            header_edits: vec![],
            recipient_edits: vec![],
        }));
        assert!(e.contains("reject reply code 250"), "{e}");
    }

    #[test]
    fn a_reject_with_a_5xx_code_is_a_reply_decision() {
        let v = valid(Returned::Outcome(Outcome {
            verdict: wit::Verdict::Reject(wit_reply(554, "go away")),
            marks: no_marks(),
        }));
        match v.decision {
            Decision::Reply(r) => assert_eq!(r.to_bytes(), b"554 5.0.0 go away\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deliver_outcome_returns_routes_and_no_score() {
        let v = valid(Returned::Deliver(DeliverOutcome {
            routes: vec![
                wit::RecipientRoute {
                    recipient: addr("a", "example.test"),
                    route: wit::Route::Local,
                },
                wit::RecipientRoute {
                    recipient: addr("b", "example.test"),
                    route: wit::Route::Discard,
                },
            ],
            reason: Some("split".into()),
        }));
        assert_eq!(v.decision, Decision::Continue);
        assert_eq!(v.points, 0.0);
        assert_eq!(
            v.routes,
            vec![
                (
                    "a@example.test".to_string(),
                    Route::To(crate::delivery::Destination::Local)
                ),
                ("b@example.test".to_string(), Route::Discard),
            ]
        );
        assert_eq!(v.reason.as_deref(), Some("split"));
        let e = invalid(Returned::Deliver(DeliverOutcome {
            routes: vec![
                wit::RecipientRoute {
                    recipient: addr("a", "example.test"),
                    route: wit::Route::Local,
                },
                wit::RecipientRoute {
                    recipient: addr("A", "example.test"),
                    route: wit::Route::Mx,
                },
            ],
            reason: None,
        }));
        assert!(e.contains("routed twice"), "{e}");
        let e = invalid(Returned::Deliver(DeliverOutcome {
            routes: vec![],
            reason: Some("line\r\nX-Injected: 1".into()),
        }));
        assert!(
            e.contains("reason"),
            "a reason with control characters: {e}"
        );
    }

    #[test]
    fn describe_names_each_decision_with_its_code() {
        let r = |code, enh| Reply::new(code, enh, "x");
        assert_eq!(describe(&Decision::Continue), "continue");
        assert_eq!(describe(&Decision::Accept), "accept");
        assert_eq!(describe(&Decision::Reply(r(451, "4.7.1"))), "tempfail 451");
        assert_eq!(describe(&Decision::Reply(r(550, "5.7.1"))), "reject 550");
        assert_eq!(
            describe(&Decision::Disconnect(r(421, "4.3.2"))),
            "disconnect 421"
        );
        assert_eq!(describe(&Decision::Discard(Some("x".into()))), "discard");
        assert_eq!(describe(&Decision::Quarantine("x".into())), "quarantine");
    }

    #[test]
    fn classify_maps_interrupt_to_deadline_and_stack_overflow_to_stack() {
        let st = state();
        let interrupt = wasmtime::Error::from(wasmtime::Trap::Interrupt);
        assert_eq!(classify(&interrupt, &st), Failure::Deadline);
        let overflow = wasmtime::Error::from(wasmtime::Trap::StackOverflow);
        assert_eq!(classify(&overflow, &st), Failure::Stack);
    }

    #[test]
    fn classify_finds_the_trap_under_added_context() {
        // wasmtime attaches the wasm backtrace as context on the trap it returns.
        let st = state();
        let e = wasmtime::Error::from(wasmtime::Trap::Interrupt).context("wasm backtrace: ...");
        assert_eq!(classify(&e, &st), Failure::Deadline);
        let e = wasmtime::Error::from(wasmtime::Trap::StackOverflow).context("in on-data");
        assert_eq!(classify(&e, &st), Failure::Stack);
    }

    #[test]
    fn classify_reports_memory_when_the_limiter_refused_whatever_the_trap() {
        let mut st = state();
        st.limiter.hit = true;
        for e in [
            wasmtime::Error::from(wasmtime::Trap::Interrupt),
            wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached),
            wasmtime::Error::msg("allocation failed"),
        ] {
            assert_eq!(classify(&e, &st), Failure::Memory, "{e}");
        }
    }

    #[test]
    fn classify_reports_other_errors_as_traps_with_a_bounded_message() {
        let st = state();
        assert_eq!(
            classify(&wasmtime::Error::msg("x"), &st),
            Failure::Trap("x".into())
        );
        let unreachable = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            classify(&unreachable, &st),
            Failure::Trap(wasmtime::Trap::UnreachableCodeReached.to_string())
        );
        // The root cause comes first even when context wraps it.
        let wrapped = wasmtime::Error::msg("kv backend unavailable")
            .context("y".repeat(1000))
            .context("wasm backtrace");
        match classify(&wrapped, &st) {
            Failure::Trap(m) => assert!(m.starts_with("kv backend unavailable; wasm backtrace")),
            other => panic!("{other:?}"),
        }
        match classify(&wasmtime::Error::msg("y".repeat(1000)), &st) {
            Failure::Trap(m) => assert_eq!(m.chars().count(), 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_display_their_cause() {
        assert_eq!(Failure::Deadline.to_string(), "deadline exceeded");
        assert_eq!(Failure::Memory.to_string(), "memory cap reached");
        assert_eq!(Failure::Stack.to_string(), "stack overflow");
        assert_eq!(Failure::Trap("boom".into()).to_string(), "trap: boom");
        assert_eq!(Failure::Init("bad".into()).to_string(), "init failed: bad");
        assert_eq!(
            Failure::Invalid("x".into()).to_string(),
            "invalid plugin output: x"
        );
        assert_eq!(Failure::Capacity.to_string(), "no free instance slot");
    }

    #[test]
    fn every_stage_has_its_own_flag_and_name() {
        let all = [
            Stage::Connect,
            Stage::Helo,
            Stage::MailFrom,
            Stage::RcptTo,
            Stage::Data,
            Stage::Deliver,
        ];
        let mut union = HookSet::empty();
        for (i, a) in all.iter().enumerate() {
            assert!(!union.contains(a.flag()), "{a:?} shares a flag");
            union |= a.flag();
            for b in &all[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(union, HookSet::all());
        assert_eq!(Stage::MailFrom.name(), "mail");
        assert_eq!(Stage::RcptTo.flag(), HookSet::RCPT_TO);
    }

    fn empty_chain() -> Chain {
        let generation = Arc::new(Generation {
            engine: crate::plugin::engine::build(32 << 20, 16, 16).unwrap(),
            plugins: vec![],
            services: services(),
        });
        Chain::new(generation, "S".into())
    }

    #[tokio::test]
    async fn an_empty_chain_continues_with_no_edits_score_or_trace() {
        let mut chain = empty_chain();
        let info = session_info();
        let out = chain.run(Call::Connect(&info)).await;
        assert_eq!(out.decision, Decision::Continue);
        assert!(out.header_edits.is_empty());
        assert!(out.recipient_edits.is_empty());
        assert!(out.routes.is_empty());
        assert_eq!(chain.score(), 0.0);
        assert!(chain.tags().is_empty());
        assert_eq!(chain.trace_text(), "");
        assert_eq!(chain.live_instances(), 0);
    }

    #[test]
    fn the_trace_keeps_the_latest_decisions_and_counts_the_rest() {
        let mut chain = empty_chain();
        for i in 0..MAX_TRACE + 10 {
            chain.record(TraceEntry {
                plugin: format!("p{i}"),
                stage: Stage::Helo,
                outcome: "continue".into(),
                reason: None,
                micros: 1,
            });
        }
        assert_eq!(chain.trace.len(), MAX_TRACE);
        assert_eq!(chain.trace[0].plugin, "p10");
        assert!(
            chain
                .trace_text()
                .starts_with("(10 earlier decisions omitted); p10/helo=")
        );
        chain.new_transaction();
        assert_eq!(chain.trace_text(), "");
    }

    /// Without the trace header a chain records nothing (an idle session holds no trace).
    #[test]
    fn a_chain_without_trace_records_nothing() {
        let mut chain = empty_chain();
        chain.keep_trace(false);
        chain.record(TraceEntry {
            plugin: "p".into(),
            stage: Stage::Helo,
            outcome: "continue".into(),
            reason: None,
            micros: 1,
        });
        assert!(chain.trace.is_empty() && chain.trace.capacity() == 0);
        assert_eq!(chain.trace_text(), "");
    }

    #[test]
    fn a_new_transaction_keeps_the_session_score_and_clears_the_trace() {
        let mut chain = empty_chain();
        chain.session_score = 1.5;
        chain.txn_score = 2.0;
        let entry = |plugin: &str, stage, outcome: &str, micros| TraceEntry {
            plugin: plugin.into(),
            stage,
            outcome: outcome.into(),
            reason: None,
            micros,
        };
        chain
            .trace
            .push(entry("dnsbl", Stage::Connect, "continue", 12));
        chain
            .trace
            .push(entry("spam", Stage::Data, "reject 550", 3400));
        assert_eq!(chain.score(), 3.5);
        assert_eq!(
            chain.trace_text(),
            "dnsbl/connect=continue (12us); spam/data=reject 550 (3400us)"
        );
        chain.new_transaction();
        assert_eq!(chain.score(), 1.5);
        assert!(chain.trace.is_empty());
        assert_eq!(chain.trace_text(), "");
    }
}
