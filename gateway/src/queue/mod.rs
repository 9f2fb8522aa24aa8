//! Store-and-forward queue (`delivery.mode = "queue"`): a message is written durably to
//! the spool before the client gets its 250, then delivered in the background to each
//! recipient's next hop, retried with exponential backoff while next hops are down or
//! answer 4xx, and reported to the sender (RFC 3464 DSN) when a recipient fails for good
//! or the message expires.
//!
//! - [`spool`]: the crash-safe on-disk format and recovery;
//! - [`entry`]: envelope and per-recipient state;
//! - [`route`]: static routes, default upstream, MX lookup;
//! - [`deliver`]: one attempt to one destination, connection reuse;
//! - [`dsn`]: delivery status notifications;
//! - this module: the scheduler ([`Queue::run`]) and the operations the admin socket and
//!   the `mailgate queue` commands use.

pub mod deliver;
pub mod dsn;
pub mod entry;
pub mod route;
pub mod spool;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};

use self::deliver::{Attempt, Outcome, Pool};
use self::entry::{Entry, RcptStatus, from_secs, now_ms};
use self::route::{Destination, NoRoute, Routing};
use self::spool::{Spool, SpoolError};
use crate::delivery::Timeouts;
use crate::dns::Resolver;
use crate::smtp::Message;

/// Queue settings, checked (`[queue]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Spool directory.
    pub spool: PathBuf,
    /// Delivery attempts at once, over all destinations.
    pub concurrency: usize,
    /// Delivery attempts at once to one destination.
    pub per_destination: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Give up (bounce) after this long in the queue.
    pub max_lifetime: Duration,
    /// Send a "delayed" notice once after this long; zero = never.
    pub delay_warning: Duration,
    /// Keep idle connections to next hops this long for reuse; zero = no reuse.
    pub connection_idle: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Routing.
    pub routing: Routing,
    /// Maildir root for recipients a plugin routes `local`.
    pub maildir: PathBuf,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// No such entry.
    #[error("no queue entry {0}")]
    NotFound(String),
    /// A background task failed.
    #[error("queue task failed: {0}")]
    Task(String),
}

/// Scheduler bookkeeping of one entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    next_ms: u64,
    held: bool,
    busy: bool,
    arrival: u64,
}

impl Meta {
    /// An entry as stored, not being attempted.
    fn of(e: &Entry) -> Meta {
        Meta {
            next_ms: e.next_attempt_ms,
            held: e.held,
            busy: false,
            arrival: e.arrival,
        }
    }
}

/// Runs a spool operation on a blocking thread (the spool does file I/O and fsyncs).
pub(crate) async fn on_spool<T: Send + 'static>(
    spool: &Spool,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, QueueError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || f(&spool))
        .await
        .map_err(|e| QueueError::Task(e.to_string()))?
        .map_err(QueueError::from)
}

/// Delivery counters since start.
#[derive(Debug, Default)]
pub struct Counters {
    /// Recipients accepted by their next hop.
    pub delivered: AtomicU64,
    /// Recipient attempts that will be retried.
    pub deferred: AtomicU64,
    /// Recipients refused for good.
    pub failed: AtomicU64,
    /// Recipients given up on after the maximum lifetime.
    pub expired: AtomicU64,
    /// Notifications queued to senders.
    pub dsn_sent: AtomicU64,
}

/// Queue figures for `status` and metrics.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Messages in the queue.
    pub depth: usize,
    /// Of which held.
    pub held: usize,
    /// Age of the oldest message, seconds.
    pub oldest_age_secs: u64,
    /// Recipients delivered since start.
    pub delivered: u64,
    /// Recipient attempts deferred since start.
    pub deferred: u64,
    /// Recipients failed since start.
    pub failed: u64,
    /// Recipients expired since start.
    pub expired: u64,
    /// Notifications queued since start.
    pub dsn_sent: u64,
}

/// The queue.
pub struct Queue {
    spool: Spool,
    settings: Settings,
    hostname: String,
    dns: Arc<Resolver>,
    plugins: std::sync::RwLock<Option<Arc<crate::plugin::Generation>>>,
    routing: std::sync::RwLock<Arc<Routing>>,
    index: Mutex<HashMap<String, Meta>>,
    wake: Notify,
    pool: Pool,
    global: Arc<Semaphore>,
    per_dest: Mutex<HashMap<Destination, Arc<Semaphore>>>,
    /// Counters since start.
    pub counters: Counters,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("spool", &self.spool.root())
            .finish()
    }
}

impl Queue {
    /// Opens the spool, recovers it and indexes what is there. Nothing is delivered
    /// until [`Queue::run`].
    pub fn open(
        settings: Settings,
        hostname: String,
        dns: Arc<Resolver>,
        plugins: Option<Arc<crate::plugin::Generation>>,
    ) -> Result<Arc<Queue>, QueueError> {
        let spool = Spool::open(&settings.spool)?;
        let rec = spool.recover()?;
        tracing::info!(
            spool = %settings.spool.display(),
            entries = rec.entries.len(),
            incomplete_removed = rec.incomplete,
            corrupt = rec.corrupt,
            "queue recovered"
        );
        let index = rec
            .entries
            .iter()
            .map(|e| (e.id.clone(), Meta::of(e)))
            .collect();
        Ok(Arc::new(Queue {
            spool,
            global: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            routing: std::sync::RwLock::new(Arc::new(settings.routing.clone())),
            settings,
            hostname,
            dns,
            plugins: std::sync::RwLock::new(plugins),
            index: Mutex::new(index),
            wake: Notify::new(),
            pool: Pool::default(),
            per_dest: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, Meta>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The routing used from the next attempt on (after a reload).
    pub fn set_routing(&self, routing: Routing) {
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The plugin generation `on-deliver` runs in from now on (after a reload).
    pub fn set_plugins(&self, plugins: Option<Arc<crate::plugin::Generation>>) {
        *self.plugins.write().unwrap_or_else(|e| e.into_inner()) = plugins;
    }

    /// Stores an accepted message durably (the `Received:` header in front) and returns
    /// its queue id. Only after `Ok` may the client be told 250.
    pub async fn enqueue(
        &self,
        message: &Message,
        received: &str,
        origin: entry::Origin,
    ) -> Result<String, QueueError> {
        let id = message.id.clone();
        let mut entry = Entry::new(
            id.clone(),
            &message.envelope.mail_from,
            &message.envelope.params,
            &message.envelope.rcpt_to,
            (received.len() + message.data.len()) as u64,
            message.trace.client.ip().to_string(),
        );
        entry.origin = origin;
        let header = received.as_bytes().to_vec();
        let data = message.data.clone();
        let e = entry.clone();
        on_spool(&self.spool, move |s| s.store(&e, &[&header, &data])).await?;
        self.add(&entry);
        Ok(id)
    }

    fn add(&self, e: &Entry) {
        self.index().insert(e.id.clone(), Meta::of(e));
        self.wake.notify_one();
    }

    /// Runs the scheduler until `shutdown` turns true; attempts in progress finish.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = now_ms();
            let mut due = Vec::new();
            let mut next = now + 60_000;
            {
                let mut index = self.index();
                for (id, m) in index.iter_mut() {
                    if m.held || m.busy {
                        continue;
                    }
                    if m.next_ms <= now {
                        m.busy = true;
                        due.push(id.clone());
                    } else {
                        next = next.min(m.next_ms);
                    }
                }
            }
            for id in due {
                let q = Arc::clone(&self);
                tasks.spawn(async move { q.attempt(id).await });
            }
            self.pool.expire(self.settings.connection_idle);
            let sleep = Duration::from_millis(next.saturating_sub(now).max(10));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Looks up one entry from disk.
    async fn load(&self, id: &str) -> Result<(Entry, Vec<u8>), QueueError> {
        let id = id.to_string();
        on_spool(&self.spool, move |s| Ok((s.load(&id)?, s.message(&id)?))).await
    }

    async fn save(&self, e: &Entry) -> Result<(), QueueError> {
        let e = e.clone();
        on_spool(&self.spool, move |s| s.update(&e)).await
    }

    async fn remove_files(&self, id: &str) -> Result<(), QueueError> {
        let id = id.to_string();
        on_spool(&self.spool, move |s| s.remove(&id)).await
    }

    fn dest_limit(&self, d: &Destination) -> Arc<Semaphore> {
        let mut m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            m.entry(d.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_destination.max(1)))),
        )
    }

    /// One delivery attempt of entry `id`; reschedules, bounces or removes it.
    async fn attempt(self: Arc<Self>, id: String) {
        let Ok(_permit) = Arc::clone(&self.global).acquire_owned().await else {
            return;
        };
        let (mut entry, message) = match self.load(&id).await {
            Ok(x) => x,
            Err(e) => {
                // Deleted meanwhile (admin) or unreadable: forget it.
                tracing::warn!(queue_id = %id, error = %e, "queue entry unavailable");
                self.index().remove(&id);
                return;
            }
        };
        if !self.still_queued(&mut entry) {
            let _ = self.remove_files(&id).await;
            return;
        }
        if entry.held {
            if let Some(m) = self.index().get_mut(&id) {
                m.busy = false;
            }
            return;
        }
        entry.attempts += 1;
        let plugin_routes = match self.on_deliver(&entry, &message).await {
            Ok(r) => r,
            Err(outcome) => {
                // The chain failed (its failure policy): the whole attempt ends so.
                let n = entry.pending().count();
                let pending: Vec<usize> = (0..entry.recipients.len())
                    .filter(|i| entry.recipients[*i].status == RcptStatus::Pending)
                    .collect();
                self.record(
                    &mut entry,
                    &Destination::Local,
                    &pending,
                    vec![(outcome, String::new()); n],
                );
                if let Err(e) = self.settle(entry).await {
                    tracing::error!(queue_id = %id, error = %e, "cannot update queue entry");
                }
                self.wake.notify_one();
                return;
            }
        };
        // Group pending recipients by destination; a plugin's route wins.
        let routing = self.routing();
        let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
        let mut decided: Vec<(usize, Outcome)> = Vec::new();
        for (i, r) in entry.recipients.iter().enumerate() {
            if r.status != RcptStatus::Pending {
                continue;
            }
            let d = match plugin_routes.get(&r.address.to_ascii_lowercase()) {
                None => routing.destination(&r.address, r.route.as_deref()),
                Some(route) => match plugin_destination(&r.address, route) {
                    Ok(d) => d,
                    Err(o) => {
                        decided.push((i, o));
                        continue;
                    }
                },
            };
            groups.entry(d).or_default().push(i);
        }
        for (i, o) in decided {
            self.record(
                &mut entry,
                &Destination::Local,
                &[i],
                vec![(o, String::new())],
            );
        }
        let n_groups = groups.len();
        for (gi, (dest, idx)) in groups.into_iter().enumerate() {
            let results = if dest == Destination::Local {
                self.deliver_local(&entry, &idx, &message).await
            } else {
                self.deliver_group(&dest, &entry, &idx, &message).await
            };
            self.record(&mut entry, &dest, &idx, results);
            // Persist progress between destinations, so a crash re-sends less.
            if gi + 1 < n_groups
                && self.still_queued(&mut entry)
                && let Err(e) = self.save(&entry).await
            {
                tracing::error!(queue_id = %id, error = %e, "cannot save queue state");
            }
        }
        if let Err(e) = self.settle(entry).await {
            tracing::error!(queue_id = %id, error = %e, "cannot update queue entry; retried later");
            let mut index = self.index();
            if let Some(m) = index.get_mut(&id) {
                m.busy = false;
                m.next_ms = now_ms() + self.settings.retry_initial.as_millis() as u64;
            }
        }
        self.wake.notify_one();
    }

    /// Applies outcomes to recipients `idx` of `entry`.
    fn record(
        &self,
        entry: &mut Entry,
        dest: &Destination,
        idx: &[usize],
        results: Vec<(Outcome, String)>,
    ) {
        let id = entry.id.clone();
        for (i, (outcome, host)) in idx.iter().zip(results) {
            let r = &mut entry.recipients[*i];
            r.remote = (!host.is_empty()).then_some(host);
            match outcome {
                Outcome::Delivered(reply) => {
                    tracing::info!(queue_id = %id, rcpt = %r.address, next_hop = %dest, %reply, "delivered");
                    r.status = RcptStatus::Delivered;
                    r.last_reply = Some(reply);
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Failed(reply) => {
                    tracing::info!(queue_id = %id, rcpt = %r.address, next_hop = %dest, %reply, "failed");
                    r.status = RcptStatus::Failed;
                    r.last_reply = Some(reply);
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Deferred(reply) => {
                    tracing::info!(queue_id = %id, rcpt = %r.address, next_hop = %dest, %reply, "deferred");
                    r.last_reply = Some(reply);
                    self.counters.deferred.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Runs the plugins' `on-deliver` hooks (if any plugin has one): routes by
    /// lowercased recipient, or the outcome for every recipient when the chain failed.
    async fn on_deliver(
        &self,
        entry: &Entry,
        message: &[u8],
    ) -> Result<HashMap<String, crate::plugin::wit::Route>, Outcome> {
        use crate::plugin::convert::{self, SessionView};
        use crate::plugin::{Call, Chain, Decision, DeliveryInfo};
        let plugins = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(g) = &plugins else {
            return Ok(HashMap::new());
        };
        if !g
            .plugins
            .iter()
            .any(|p| p.hooks.contains(crate::plugin::Stage::Deliver.flag()))
        {
            return Ok(HashMap::new());
        }
        let client = entry
            .client
            .parse::<std::net::IpAddr>()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let o = &entry.origin;
        let view = SessionView {
            id: entry.id.clone(),
            client: std::net::SocketAddr::new(client, 0),
            local: o
                .local
                .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            listener: if o.listener == "smtps" {
                "smtps"
            } else {
                "smtp"
            },
            ptr_name: o.ptr_name.clone(),
            trusted: o.trusted,
            tls: o.tls.as_ref().map(|(v, c)| crate::smtp::TlsInfo {
                version: v.clone(),
                cipher: c.clone(),
            }),
            helo: (!o.helo.is_empty()).then(|| (o.helo.clone(), o.ehlo)),
            score: o.score,
            tags: o.tags.clone(),
        };
        let info = DeliveryInfo {
            session: convert::session_info(&view),
            attempt: entry.attempts,
        };
        let env = crate::smtp::Envelope {
            mail_from: entry.sender.clone(),
            params: entry.params(),
            rcpt_to: entry.pending().map(|r| r.address.clone()).collect(),
        };
        let txn = convert::transaction(&entry.id, &env);
        let msg = Arc::new(crate::plugin::message::ParsedMessage::new(
            entry.id.clone(),
            entry.arrival * 1000,
            Arc::from(message),
        ));
        let mut chain = Chain::new(Arc::clone(g), format!("{}.deliver", entry.id));
        let out = chain.run(Call::Deliver(&info, &txn, msg)).await;
        match out.decision {
            Decision::Reply(r) | Decision::Disconnect(r) if r.is_transient() => {
                Err(Outcome::Deferred(deliver::one_line(&r.to_string())))
            }
            Decision::Reply(r) | Decision::Disconnect(r) => {
                Err(Outcome::Failed(deliver::one_line(&r.to_string())))
            }
            _ => Ok(out
                .routes
                .into_iter()
                .map(|r| {
                    (
                        convert::address_text(&r.recipient).to_ascii_lowercase(),
                        r.route,
                    )
                })
                .collect()),
        }
    }

    /// Recipients a plugin routed `local`: into the Maildir under `maildir`.
    async fn deliver_local(
        &self,
        entry: &Entry,
        idx: &[usize],
        message: &[u8],
    ) -> Vec<(Outcome, String)> {
        let maildir = crate::delivery::Maildir::new(self.settings.maildir.clone())
            .with_hostname(&self.hostname);
        let mut out = Vec::new();
        for i in idx {
            let rcpt = entry.recipients[*i].address.clone();
            let msg = crate::smtp::Message {
                id: entry.id.clone(),
                envelope: crate::smtp::Envelope {
                    mail_from: entry.sender.clone(),
                    params: entry.params(),
                    rcpt_to: vec![rcpt],
                },
                data: message.to_vec(),
                trace: crate::smtp::Trace {
                    client: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    ptr_name: None,
                    helo: String::new(),
                    protocol: "ESMTP",
                    tls: None,
                    session_id: entry.id.clone(),
                },
            };
            let m = maildir.clone();
            let r = tokio::task::spawn_blocking(move || m.deliver(&msg, "")).await;
            out.push(match r {
                Ok(Ok(())) => (
                    Outcome::Delivered("250 2.0.0 delivered to the local Maildir".into()),
                    "local".into(),
                ),
                Ok(Err(e)) => (
                    Outcome::Deferred(format!("4.3.0 local delivery failed: {e}")),
                    "local".into(),
                ),
                Err(e) => (
                    Outcome::Deferred(format!("4.3.0 local delivery failed: {e}")),
                    "local".into(),
                ),
            });
        }
        out
    }

    async fn deliver_group(
        &self,
        dest: &Destination,
        entry: &Entry,
        idx: &[usize],
        message: &[u8],
    ) -> Vec<(Outcome, String)> {
        let limit = self.dest_limit(dest);
        let Ok(_permit) = limit.acquire().await else {
            return idx
                .iter()
                .map(|_| {
                    (
                        Outcome::Deferred("4.3.0 shutting down".into()),
                        String::new(),
                    )
                })
                .collect();
        };
        let targets = match self.routing().targets(dest, &self.dns).await {
            Ok(t) => t,
            Err(NoRoute::Permanent(why, code)) => {
                return idx
                    .iter()
                    .map(|_| (Outcome::Failed(format!("550 {code} {why}")), String::new()))
                    .collect();
            }
            Err(NoRoute::Temporary(why, code)) => {
                return idx
                    .iter()
                    .map(|_| {
                        (
                            Outcome::Deferred(format!("451 {code} {why}")),
                            String::new(),
                        )
                    })
                    .collect();
            }
        };
        let rcpts: Vec<String> = idx
            .iter()
            .map(|i| entry.recipients[*i].address.clone())
            .collect();
        let timeouts = Timeouts {
            connect: self.settings.connect_timeout,
            ..Timeouts::default()
        };
        let attempt = Attempt {
            helo: &self.hostname,
            timeouts,
            max_idle: self.settings.connection_idle,
            sender: &entry.sender,
            params: entry.params(),
            message,
        };
        deliver::deliver(&self.pool, &targets, &rcpts, &attempt).await
    }

    /// After an attempt: remove a finished entry (bouncing failures), expire an old one,
    /// or schedule the next attempt.
    async fn settle(&self, mut entry: Entry) -> Result<(), QueueError> {
        if !self.still_queued(&mut entry) {
            tracing::info!(queue_id = %entry.id, "deleted during its delivery attempt");
            return self.remove_files(&entry.id).await;
        }
        let now = now_ms();
        let age = Duration::from_millis(now.saturating_sub(entry.arrival * 1000));
        if !entry.done() && age >= self.settings.max_lifetime {
            for r in entry.recipients.iter_mut() {
                if r.status == RcptStatus::Pending {
                    let last = r.last_reply.take().unwrap_or_default();
                    r.last_reply = Some(format!(
                        "4.4.7 delivery time expired after {} attempts; last answer: {last}",
                        entry.attempts
                    ));
                    r.status = RcptStatus::Failed;
                    self.counters.expired.fetch_add(1, Ordering::Relaxed);
                }
            }
            tracing::warn!(queue_id = %entry.id, "message expired in the queue");
        }
        if entry.done() {
            self.notify_sender(&entry, dsn::Action::Failed).await?;
            self.remove_files(&entry.id).await?;
            self.index().remove(&entry.id);
            tracing::info!(queue_id = %entry.id, attempts = entry.attempts, "removed from queue");
            return Ok(());
        }
        if !self.settings.delay_warning.is_zero()
            && !entry.warned
            && age >= self.settings.delay_warning
        {
            self.notify_sender(&entry, dsn::Action::Delayed).await?;
            entry.warned = true;
        }
        entry.next_attempt_ms = now + backoff(&self.settings, entry.attempts).as_millis() as u64;
        self.save(&entry).await?;
        if !self.set_meta(&entry) {
            // Deleted by an admin while this attempt was saving: finish the deletion.
            self.remove_files(&entry.id).await?;
        }
        Ok(())
    }

    /// Ends an attempt in the index: the next attempt time, not busy. `false` if the
    /// entry was deleted meanwhile (it is not brought back).
    fn set_meta(&self, e: &Entry) -> bool {
        match self.index().get_mut(&e.id) {
            Some(m) => {
                m.next_ms = e.next_attempt_ms;
                m.busy = false;
                true
            }
            None => false,
        }
    }

    /// Queues a DSN to the sender for the recipients in `kind`'s state (failed ones, or
    /// pending ones for a delay notice). Never to the null sender.
    async fn notify_sender(&self, entry: &Entry, kind: dsn::Action) -> Result<(), QueueError> {
        let want = match kind {
            dsn::Action::Failed => RcptStatus::Failed,
            dsn::Action::Delayed => RcptStatus::Pending,
        };
        let rcpts: Vec<dsn::DsnRecipient> = entry
            .recipients
            .iter()
            .filter(|r| r.status == want)
            .map(|r| dsn::DsnRecipient {
                address: r.address.clone(),
                action: kind,
                status: status_of(r.last_reply.as_deref(), kind),
                remote_mta: r.remote.clone(),
                diagnostic: r.last_reply.clone(),
                last_attempt: Some(SystemTime::now()),
                will_retry_until: (kind == dsn::Action::Delayed)
                    .then(|| from_secs(entry.arrival) + self.settings.max_lifetime),
            })
            .collect();
        if rcpts.is_empty() {
            return Ok(());
        }
        if entry.sender.is_empty() {
            tracing::warn!(queue_id = %entry.id, "undeliverable notification or null-sender message: no notice sent");
            return Ok(());
        }
        let id = entry.id.clone();
        let original = on_spool(&self.spool, move |s| s.message(&id)).await?;
        let bytes = dsn::build(&dsn::DsnRequest {
            reporting_mta: &self.hostname,
            sender: &entry.sender,
            queue_id: &entry.id,
            arrival: from_secs(entry.arrival),
            recipients: &rcpts,
            original: &original,
            now: SystemTime::now(),
            boundary_seed: rand::random(),
        });
        let dsn_id = format!(
            "{}.{}",
            entry.id,
            if kind == dsn::Action::Failed {
                "bounce"
            } else {
                "delay"
            }
        );
        let e = Entry::new(
            dsn_id.clone(),
            "",
            &crate::smtp::MailParams {
                smtputf8: !entry.sender.is_ascii(),
                ..Default::default()
            },
            std::slice::from_ref(&entry.sender),
            bytes.len() as u64,
            "local".into(),
        );
        let stored = e.clone();
        on_spool(&self.spool, move |s| s.store(&stored, &[&bytes])).await?;
        self.counters.dsn_sent.fetch_add(1, Ordering::Relaxed);
        tracing::info!(queue_id = %entry.id, dsn = %dsn_id, to = %entry.sender, kind = ?kind, "delivery status notification queued");
        self.add(&e);
        Ok(())
    }

    // ------------------------------------------------------------------ operations

    /// Every entry, oldest first.
    pub async fn list(&self) -> Result<Vec<Entry>, QueueError> {
        list_spool(self.spool.clone()).await
    }

    /// One entry and its message.
    pub async fn show(&self, id: &str) -> Result<(Entry, Vec<u8>), QueueError> {
        self.load(id)
            .await
            .map_err(|_| QueueError::NotFound(id.to_string()))
    }

    /// Makes every entry due now (held ones stay held).
    pub fn flush(&self) -> usize {
        let now = now_ms();
        let mut n = 0;
        for m in self.index().values_mut() {
            if !m.held {
                m.next_ms = m.next_ms.min(now);
                n += 1;
            }
        }
        self.wake.notify_one();
        n
    }

    /// Makes one entry due now.
    pub fn retry(&self, id: &str) -> Result<(), QueueError> {
        let mut index = self.index();
        let m = index
            .get_mut(id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        m.next_ms = now_ms();
        drop(index);
        self.wake.notify_one();
        Ok(())
    }

    /// Holds (`true`) or releases an entry. During an attempt in progress only the
    /// in-memory flag changes; the attempt writes it with its own result.
    pub async fn set_held(&self, id: &str, held: bool) -> Result<(), QueueError> {
        {
            let mut index = self.index();
            let m = index
                .get_mut(id)
                .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
            m.held = held;
            if !held {
                m.next_ms = now_ms();
            }
            if m.busy {
                return Ok(());
            }
            // Keep the scheduler off the entry while its file is rewritten.
            m.busy = true;
        }
        let result = async {
            let (mut e, _) = self.load(id).await?;
            e.held = held;
            if !held {
                e.next_attempt_ms = now_ms();
            }
            self.save(&e).await
        }
        .await;
        if let Some(m) = self.index().get_mut(id) {
            m.busy = false;
        }
        self.wake.notify_one();
        result
    }

    /// Deletes an entry without notifying anyone. During an attempt in progress the
    /// attempt removes the files when it ends.
    pub async fn delete(&self, id: &str) -> Result<(), QueueError> {
        let busy = match self.index().remove(id) {
            None => return Err(QueueError::NotFound(id.to_string())),
            Some(m) => m.busy,
        };
        if busy {
            return Ok(());
        }
        self.remove_files(id).await
    }

    /// Whether `id` is still queued (not deleted meanwhile); brings in the held flag an
    /// admin may have set during the attempt.
    fn still_queued(&self, entry: &mut Entry) -> bool {
        match self.index().get(&entry.id) {
            Some(m) => {
                entry.held = m.held;
                true
            }
            None => false,
        }
    }

    /// Queue figures.
    pub fn stats(&self) -> Stats {
        let now = now_ms() / 1000;
        let index = self.index();
        let c = &self.counters;
        Stats {
            depth: index.len(),
            held: index.values().filter(|m| m.held).count(),
            oldest_age_secs: index
                .values()
                .map(|m| now.saturating_sub(m.arrival))
                .max()
                .unwrap_or(0),
            delivered: c.delivered.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            dsn_sent: c.dsn_sent.load(Ordering::Relaxed),
        }
    }
}

/// What a plugin's route means for one recipient: a destination, or an outcome at once.
fn plugin_destination(
    rcpt: &str,
    route: &crate::plugin::wit::Route,
) -> Result<Destination, Outcome> {
    use crate::plugin::wit::{Route, TlsPolicy as WitTls};
    match route {
        Route::Mx => Ok(Destination::Mx(route::domain_of(rcpt))),
        Route::Relay(h) => {
            let host = if h.host.contains(':') {
                format!("[{}]:{}", h.host, h.port)
            } else {
                format!("{}:{}", h.host, h.port)
            };
            let tls = match h.tls {
                WitTls::Opportunistic => crate::delivery::TlsPolicy::Opportunistic,
                WitTls::Required => crate::delivery::TlsPolicy::Required,
                WitTls::Disabled => crate::delivery::TlsPolicy::None,
            };
            Ok(Destination::Relay(host, tls))
        }
        Route::Local => Ok(Destination::Local),
        Route::Discard => Err(Outcome::Delivered("250 2.0.0 discarded by plugin".into())),
        Route::Bounce(r) => Err(Outcome::Failed(reply_text(r))),
        Route::Defer(r) => Err(Outcome::Deferred(reply_text(r))),
    }
}

fn reply_text(r: &crate::plugin::wit::Reply) -> String {
    let code = match r.enhanced {
        Some(e) => format!("{} {}.{}.{}", r.code, r.code / 100, e.subject, e.detail),
        None => r.code.to_string(),
    };
    deliver::one_line(&format!("{code} {}", r.lines.join(" ")))
}

/// Lists a spool's entries (also with no gateway running), oldest first.
pub async fn list_spool(spool: Spool) -> Result<Vec<Entry>, QueueError> {
    on_spool(&spool, |s| {
        let mut out = Vec::new();
        for id in s.ids()? {
            if let Ok(e) = s.load(&id) {
                out.push(e);
            }
        }
        out.sort_by(|a, b| (a.arrival, &a.id).cmp(&(b.arrival, &b.id)));
        Ok(out)
    })
    .await
}

/// The delay before attempt `attempts + 1`: `retry_initial` doubled per attempt, capped
/// at `retry_max`, with ±20 % jitter so a burst does not retry in lockstep.
pub fn backoff(s: &Settings, attempts: u32) -> Duration {
    let base = s
        .retry_initial
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(s.retry_max);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(jitter).max(Duration::from_millis(10))
}

/// The enhanced status code for a DSN from a reply like `550 5.1.1 text`.
fn status_of(reply: Option<&str>, kind: dsn::Action) -> String {
    let fallback = match kind {
        dsn::Action::Failed => "5.0.0",
        dsn::Action::Delayed => "4.0.0",
    };
    reply
        .and_then(|r| {
            r.split_whitespace()
                .take(2)
                .find(|w| w.matches('.').count() == 2 && w.starts_with(['2', '4', '5']))
        })
        .map(|s| match kind {
            // An expired or failed recipient whose last answer was 4xx is reported as 4.x.x
            // in Status only for delays; a final failure is permanent.
            dsn::Action::Failed if s.starts_with('4') => format!("5{}", &s[1..]),
            _ => s.to_string(),
        })
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            spool: PathBuf::from("/nonexistent"),
            concurrency: 4,
            per_destination: 2,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::ZERO,
            connection_idle: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            routing: Routing {
                routes: Default::default(),
                default: None,
                mx_port: 25,
            },
            maildir: PathBuf::from("/nonexistent"),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let s = settings();
        for (attempt, base) in [
            (1u32, 60.0),
            (2, 120.0),
            (3, 240.0),
            (7, 3600.0),
            (40, 3600.0),
        ] {
            let d = backoff(&s, attempt).as_secs_f64();
            assert!(
                d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                "{attempt}: {d}"
            );
        }
    }

    #[test]
    fn dsn_status_codes() {
        assert_eq!(
            status_of(Some("550 5.1.1 unknown"), dsn::Action::Failed),
            "5.1.1"
        );
        assert_eq!(
            status_of(Some("4.4.7 delivery time expired"), dsn::Action::Failed),
            "5.4.7"
        );
        assert_eq!(
            status_of(Some("451 4.3.0 later"), dsn::Action::Delayed),
            "4.3.0"
        );
        assert_eq!(status_of(None, dsn::Action::Failed), "5.0.0");
        assert_eq!(status_of(Some("garbage"), dsn::Action::Delayed), "4.0.0");
    }
}
