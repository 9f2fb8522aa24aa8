//! One delivery attempt of one queued entry: the plugins' `on-deliver` routes, the
//! pending recipients grouped by destination, one delivery per destination (or the local
//! Maildir), each recipient's outcome recorded, then what [`schedule`](super::schedule)
//! decides: remove (notifying the sender of failures), or retry later (with the delay
//! notice once).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::deliver::{self, Attempt, Outcome};
use super::dsn;
use super::entry::{Entry, RcptStatus, from_secs, now_ms};
use super::route::{Destination, NoRoute};
use super::schedule::{self, Next};
use super::{Queue, QueueError, on_spool};
use crate::current::Current;
use crate::delivery::Timeouts;
use crate::plugin::{QueuedMessage, Route};
use crate::smtp::{MailParams, MessageText, Reply};

impl Queue {
    /// The limiter of `d` (`queue.per_destination` attempts at once). Limiters nobody
    /// holds are dropped whenever one is added, so the map holds only destinations with
    /// an attempt under way, not every destination ever seen.
    fn dest_limit(&self, d: &Destination) -> Arc<Semaphore> {
        let mut m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(d) {
            return Arc::clone(s);
        }
        m.retain(|_, s| Arc::strong_count(s) > 1);
        let s = Arc::new(Semaphore::new(self.settings.per_destination.max(1)));
        m.insert(d.clone(), Arc::clone(&s));
        s
    }

    /// One delivery attempt of entry `id`; reschedules, bounces or removes it.
    pub(super) async fn attempt(self: Arc<Self>, id: String) {
        let Ok(_permit) = Arc::clone(&self.global).acquire_owned().await else {
            return;
        };
        let (mut entry, message) = match self.load(&id).await {
            Ok((e, m)) => (e, Bytes::from(m)),
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
            self.index().update(&id, |m| m.busy = false);
            return;
        }
        entry.attempts += 1;
        // What is in force for this attempt: host name, routes, plugins.
        let cur = self.current.get();
        let pending: Vec<usize> = (0..entry.recipients.len())
            .filter(|i| entry.recipients[*i].status == RcptStatus::Pending)
            .collect();
        let plugin_routes = match self.plugin_routes(&cur, &entry, &message).await {
            Ok(r) => r,
            Err(reply) if entry.notice => {
                // A notice must reach its recipient even when the plugins fail on it
                // (it may be the news of their failing): the default route.
                tracing::warn!(queue_id = %id, reply = %reply, "on-deliver failed for a delivery status notice; using the default route");
                HashMap::new()
            }
            Err(reply) => {
                // The chain failed (its failure policy): the whole attempt ends so.
                let all = vec![Outcome::ours(reply); pending.len()];
                self.record(&mut entry, &Destination::Local, &pending, all);
                self.settle(entry).await;
                return;
            }
        };
        // Group pending recipients by destination; a plugin's route wins.
        let routing = &cur.runtime.live.routing;
        let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
        for i in pending {
            let r = &entry.recipients[i];
            let decided = match plugin_routes.get(&r.address.to_ascii_lowercase()) {
                None => Err(routing.destination(&r.address)),
                Some(Route::To(d)) => Err(d.clone()),
                Some(Route::Discard) => Ok(Reply::new(250, "2.0.0", "discarded by plugin")),
                Some(Route::Bounce(reply) | Route::Defer(reply)) => Ok(reply.clone()),
            };
            match decided {
                Ok(reply) => self.record(
                    &mut entry,
                    &Destination::Local,
                    &[i],
                    vec![Outcome::ours(reply)],
                ),
                Err(dest) => groups.entry(dest).or_default().push(i),
            }
        }
        let n_groups = groups.len();
        for (gi, (dest, idx)) in groups.into_iter().enumerate() {
            let results = if dest == Destination::Local {
                self.deliver_local(&cur, &entry, &idx, &message).await
            } else {
                self.deliver_group(&cur, &dest, &entry, &idx, &message)
                    .await
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
        self.settle(entry).await;
    }

    /// The plugins' `on-deliver` routes by lowercased recipient (none without plugins);
    /// `Err` with the reply for every recipient when the chain failed.
    async fn plugin_routes(
        &self,
        cur: &Current,
        entry: &Entry,
        message: &Bytes,
    ) -> Result<HashMap<String, Route>, Reply> {
        let Some(g) = &cur.plugins else {
            return Ok(HashMap::new());
        };
        let session = entry.session_facts();
        let envelope = entry.pending_envelope();
        let m = QueuedMessage {
            id: &entry.id,
            session: &session,
            score: entry.score,
            tags: &entry.tags,
            attempt: entry.attempts,
            envelope: &envelope,
            text: MessageText::new(message.clone()),
            received_at_ms: entry.arrival * 1000,
        };
        crate::plugin::delivery::routes(g, &m).await
    }

    /// Applies outcomes to recipients `idx` of `entry`.
    fn record(&self, entry: &mut Entry, dest: &Destination, idx: &[usize], results: Vec<Outcome>) {
        let id = entry.id.clone();
        let kind = match dest {
            Destination::Relay(..) => "relay",
            Destination::Mx(_) => "mx",
            Destination::Local => "local",
        };
        for (i, outcome) in idx.iter().zip(results) {
            let r = &mut entry.recipients[*i];
            let status = RcptStatus::after(&outcome.reply);
            let (counter, what) = match status {
                RcptStatus::Delivered => (&self.counters.delivered, "delivered"),
                RcptStatus::Failed => (&self.counters.failed, "failed"),
                RcptStatus::Pending => (&self.counters.deferred, "deferred"),
            };
            crate::metrics::get()
                .deliveries
                .get_or_create(&crate::metrics::DeliveryLabels {
                    outcome: what.to_string(),
                    destination: kind.to_string(),
                })
                .inc();
            tracing::info!(queue_id = %id, rcpt = %r.address, next_hop = %dest, reply = %outcome.reply, "{what}");
            counter.fetch_add(1, Ordering::Relaxed);
            r.status = status;
            r.last_reply = Some(outcome.reply);
            r.remote = outcome.remote;
        }
    }

    /// Recipients a plugin routed `local`: into the Maildir under `queue`'s maildir root.
    async fn deliver_local(
        &self,
        cur: &Current,
        entry: &Entry,
        idx: &[usize],
        message: &Bytes,
    ) -> Vec<Outcome> {
        let maildir = Arc::new(
            crate::delivery::Maildir::new(self.settings.maildir.clone())
                .with_hostname(cur.hostname())
                .fold_local_part(self.settings.fold_local_part),
        );
        let mut out = Vec::new();
        for i in idx {
            let rcpt = vec![entry.recipients[*i].address.clone()];
            let (m, sender, text) = (Arc::clone(&maildir), entry.sender.clone(), message.clone());
            let r = tokio::task::spawn_blocking(move || {
                m.deliver_text(&sender, &rcpt, "", &MessageText::new(text))
            })
            .await;
            out.push(Outcome::ours(match r {
                Ok(Ok(())) => Reply::new(250, "2.0.0", "delivered to the local Maildir"),
                Ok(Err(e)) => deliver::reply(451, "4.3.0", &format!("local delivery failed: {e}")),
                Err(e) => deliver::reply(451, "4.3.0", &format!("local delivery failed: {e}")),
            }));
        }
        out
    }

    async fn deliver_group(
        &self,
        cur: &Current,
        dest: &Destination,
        entry: &Entry,
        idx: &[usize],
        message: &[u8],
    ) -> Vec<Outcome> {
        let all = |reply: Reply| -> Vec<Outcome> {
            idx.iter().map(|_| Outcome::ours(reply.clone())).collect()
        };
        let limit = self.dest_limit(dest);
        let Ok(_permit) = limit.acquire().await else {
            return all(Reply::new(451, "4.3.0", "shutting down"));
        };
        // Never connect to ourselves: that is a mail loop, not a delivery.
        let domain = crate::delivery::domain_of(&entry.recipients[idx[0]].address);
        let routing = &cur.runtime.live.routing;
        let targets = match routing.next_hops(dest, &self.dns, &self.own, &domain).await {
            Ok(t) => t,
            Err(NoRoute::Permanent(why, code)) => return all(deliver::reply(550, code, &why)),
            Err(NoRoute::Temporary(why, code)) => return all(deliver::reply(451, code, &why)),
        };
        let rcpts: Vec<String> = idx
            .iter()
            .map(|i| entry.recipients[*i].address.clone())
            .collect();
        // Who the message's client was, for next hops told so (XCLIENT/XFORWARD).
        let client = crate::delivery::ClientIdentity::of(&entry.session_facts());
        let attempt = Attempt {
            helo: cur.hostname(),
            timeouts: Timeouts {
                connect: self.settings.connect_timeout,
                ..Timeouts::default()
            },
            max_idle: self.settings.connection_idle,
            sender: &entry.sender,
            params: entry.params(),
            message,
            client: client.as_ref(),
            forward_to: &cur.runtime.live.xclient_hosts,
            ident: &entry.id,
        };
        deliver::deliver(&self.pool, &targets, &rcpts, &attempt).await
    }

    /// After an attempt: remove a finished entry (bouncing failures), expire an old one,
    /// or schedule the next attempt. A failure to write is logged and retried later.
    async fn settle(&self, entry: Entry) {
        let id = entry.id.clone();
        if let Err(e) = self.settle_entry(entry).await {
            tracing::error!(queue_id = %id, error = %e, "cannot update queue entry; retried later");
            let retry = now_ms() + self.settings.retry_initial.as_millis() as u64;
            self.finish(&id, retry);
        }
        self.wake.notify_one();
    }

    async fn settle_entry(&self, mut entry: Entry) -> Result<(), QueueError> {
        if !self.still_queued(&mut entry) {
            tracing::info!(queue_id = %entry.id, "deleted during its delivery attempt");
            return self.remove_files(&entry.id).await;
        }
        let (next, expired) =
            schedule::after_attempt(&mut entry, &self.settings, now_ms(), rand::random());
        if expired > 0 {
            self.counters
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
            tracing::warn!(queue_id = %entry.id, recipients = expired, "message expired in the queue");
        }
        match next {
            Next::Done => {
                self.notify_sender(&entry, dsn::Action::Failed).await?;
                self.remove_files(&entry.id).await?;
                self.index().remove(&entry.id);
                tracing::info!(queue_id = %entry.id, attempts = entry.attempts, "removed from queue");
            }
            Next::Retry { at_ms, warn } => {
                if warn {
                    self.notify_sender(&entry, dsn::Action::Delayed).await?;
                    entry.warned = true;
                }
                entry.next_attempt_ms = at_ms;
                self.save(&entry).await?;
                if !self.finish(&entry.id, at_ms) {
                    // Deleted by an admin while this attempt was saving: finish the deletion.
                    self.remove_files(&entry.id).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether a notice to `sender` could reach anyone: its domain is routed by
    /// configuration, or has an MX or address record. An unanswered lookup counts as
    /// yes (the notice then waits in the queue like other mail).
    async fn sender_can_exist(&self, sender: &str) -> bool {
        let cur = self.current.get();
        let Destination::Mx(domain) = cur.runtime.live.routing.destination(sender) else {
            return true;
        };
        if domain.starts_with('[') {
            return true;
        }
        match self.dns.mx(&domain).await {
            Ok(mx) if !mx.is_empty() => true,
            Err(crate::dns::DnsError::NxDomain) => false,
            Err(_) => true,
            Ok(_) => match (self.dns.a(&domain).await, self.dns.aaaa(&domain).await) {
                (Ok(a), _) if !a.is_empty() => true,
                (_, Ok(a)) if !a.is_empty() => true,
                (Err(crate::dns::DnsError::NxDomain), _) | (Ok(_), Ok(_)) => false,
                _ => true,
            },
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
                status: schedule::dsn_status(r.last_reply.as_ref(), kind),
                remote_mta: r.remote.clone(),
                diagnostic: r.last_reply.as_ref().map(Reply::to_string),
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
        if !self.sender_can_exist(&entry.sender).await {
            // Backscatter: a forged sender in a domain without mail hosts gets nothing.
            tracing::warn!(queue_id = %entry.id, sender = %entry.sender, "the sender's domain has no mail host: no notice sent");
            return Ok(());
        }
        let id = entry.id.clone();
        let original = on_spool(&self.spool, move |s| s.message(&id)).await?;
        let cur = self.current.get();
        let bytes = dsn::build(&dsn::DsnRequest {
            reporting_mta: cur.hostname(),
            sender: &entry.sender,
            queue_id: &entry.id,
            arrival: from_secs(entry.arrival),
            recipients: &rcpts,
            original: &original,
            now: SystemTime::now(),
            boundary_seed: rand::random(),
        });
        let suffix = match kind {
            dsn::Action::Failed => "bounce",
            dsn::Action::Delayed => "delay",
        };
        let e = Entry::new(
            format!("{}.{suffix}", entry.id),
            "",
            &MailParams {
                smtputf8: !entry.sender.is_ascii(),
                ..Default::default()
            },
            std::slice::from_ref(&entry.sender),
            bytes.len() as u64,
        );
        let e = on_spool(&self.spool, move |s| {
            s.store_unique(e, &super::spool::parts(&[&bytes]))
        })
        .await?;
        self.counters.dsn_sent.fetch_add(1, Ordering::Relaxed);
        tracing::info!(queue_id = %entry.id, dsn = %e.id, to = %entry.sender, kind = ?kind, "delivery status notification queued");
        self.add(&e);
        Ok(())
    }
}
