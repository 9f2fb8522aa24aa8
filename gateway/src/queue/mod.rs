//! Store-and-forward queue (`delivery.mode = "queue"`): a message is written durably to
//! the spool before the client gets its 250, then delivered in the background to each
//! recipient's next hop, retried with exponential backoff while next hops are down or
//! answer 4xx, and reported to the sender (RFC 3464 DSN) when a recipient fails for good
//! or the message expires.
//!
//! - [`spool`]: the crash-safe on-disk format and recovery;
//! - [`commit`]: group commit of the spool's changes (one fsync per batch);
//! - [`entry`]: envelope and per-recipient state;
//! - [`index`]: the scheduler's index, ordered by next attempt;
//! - [`schedule`]: what follows an attempt (backoff, expiry, delay notice), pure;
//! - [`route`]: static routes, default upstream, MX lookup;
//! - [`attempt`]: one attempt of one entry (plugins' routes, destinations, outcomes);
//! - [`deliver`]: one attempt to one destination, connection reuse;
//! - [`dsn`]: delivery status notifications;
//! - [`commands`]: what the admin socket and `mailgate queue` do (list, hold, ...);
//! - this module: the queue, `enqueue` and the scheduler ([`Queue::run`]).

mod attempt;
pub mod commands;
pub mod commit;
pub mod deliver;
pub mod dsn;
pub mod entry;
pub mod index;
pub mod route;
pub mod schedule;
pub mod spool;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};

use self::deliver::Pool;
use self::entry::{Entry, now_ms};
use self::index::{Index, Meta};
use self::route::Destination;
use self::spool::{Spool, SpoolError};
use crate::current::CurrentCell;
use crate::dns::Resolver;
use crate::smtp::Message;

pub use commands::list_spool;

/// Queue settings, checked (`[queue]`). Routing is a live setting of its own
/// ([`crate::config::validate::Live::routing`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
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
    /// Maildir root for recipients a plugin routes `local`.
    pub maildir: PathBuf,
    /// Local parts that differ only in case share one Maildir.
    pub fold_local_part: bool,
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
    /// Destinations with a delivery limiter held (an attempt under way or just ended).
    pub destinations: usize,
    /// Spool commits since start: each made the changes waiting then durable together
    /// (one fsync per directory they changed).
    pub spool_commits: u64,
    /// Spool changes (new messages, state updates, removals) those commits made durable.
    pub spool_changes: u64,
}

/// The queue.
pub struct Queue {
    spool: Spool,
    settings: Settings,
    /// Host name, routes and plugins in force (a reload changes them for the next attempt).
    current: Arc<CurrentCell>,
    dns: Arc<Resolver>,
    /// Our listening addresses: a next hop among them would be a loop.
    own: Vec<std::net::SocketAddr>,
    index: Mutex<Index>,
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
    /// `own` are the addresses the gateway listens on (as bound).
    pub fn open(
        settings: Settings,
        current: Arc<CurrentCell>,
        dns: Arc<Resolver>,
        own: Vec<std::net::SocketAddr>,
    ) -> Result<Arc<Queue>, QueueError> {
        let spool = Spool::open(&settings.spool)?;
        let rec = spool.recover()?;
        tracing::info!(
            spool = %settings.spool.display(),
            entries = rec.entries.len(),
            incomplete_removed = rec.incomplete,
            removed_states = rec.removed,
            corrupt = rec.corrupt,
            "queue recovered"
        );
        let mut index = Index::default();
        for e in &rec.entries {
            index.insert(&e.id, Meta::of(e));
        }
        Ok(Arc::new(Queue {
            spool,
            global: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            current,
            dns,
            own,
            index: Mutex::new(index),
            wake: Notify::new(),
            pool: Pool::default(),
            per_dest: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an accepted message durably (the `Received:` header in front) with the
    /// plugin score and tags it was accepted with, and returns its queue id. Only after
    /// `Ok` may the client be told 250.
    pub async fn enqueue(
        &self,
        message: &Message,
        received: &str,
        score: f64,
        tags: Vec<String>,
    ) -> Result<String, QueueError> {
        let size = (received.len() + message.text.len()) as u64;
        let entry = Entry::accepted(message, size, score, tags);
        let header = received.to_string();
        let text = message.text.clone();
        let entry = on_spool(&self.spool, move |s| {
            s.store_unique(entry, &|f| {
                f.write_all(header.as_bytes())?;
                text.write_to(f)
            })
        })
        .await?;
        self.add(&entry);
        Ok(entry.id)
    }

    fn add(&self, e: &Entry) {
        self.index().insert(&e.id, Meta::of(e));
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
            let (due, next) = self.index().take_due(now);
            for id in due {
                let q = Arc::clone(&self);
                tasks.spawn(async move { q.attempt(id).await });
            }
            self.pool.expire(self.settings.connection_idle);
            let next = next.unwrap_or(now + 60_000).min(now + 60_000);
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
        on_spool(&self.spool, move |s| s.load_with_message(&id)).await
    }

    async fn save(&self, e: &Entry) -> Result<(), QueueError> {
        let e = e.clone();
        on_spool(&self.spool, move |s| s.update(&e)).await
    }

    async fn remove_files(&self, id: &str) -> Result<(), QueueError> {
        let id = id.to_string();
        on_spool(&self.spool, move |s| s.remove(&id)).await
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

    /// Ends an attempt in the index: the next attempt time, not busy. `false` if the
    /// entry was deleted meanwhile (it is not brought back).
    fn finish(&self, id: &str, next_ms: u64) -> bool {
        self.index()
            .update(id, |m| {
                m.next_ms = next_ms;
                m.busy = false;
            })
            .is_some()
    }
}
