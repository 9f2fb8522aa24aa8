//! What an admin can do to the queue (the admin socket and `mailgate queue` call these):
//! list, show, flush, retry, hold, release, delete, and the figures for `status`. An
//! entry an attempt is working on is never rewritten under it: hold and delete during an
//! attempt change the index, and the attempt honours that when it ends.

use std::sync::atomic::Ordering;

use super::entry::{Entry, now_ms};
use super::spool::Spool;
use super::{Queue, QueueError, Stats, on_spool};

impl Queue {
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

    /// Makes every entry due now (held ones stay held); how many.
    pub fn flush(&self) -> usize {
        let n = self.index().flush(now_ms());
        self.wake.notify_one();
        n
    }

    /// Makes one entry due now.
    pub fn retry(&self, id: &str) -> Result<(), QueueError> {
        let now = now_ms();
        self.index()
            .update(id, |m| m.next_ms = now)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Holds (`true`) or releases an entry. During an attempt in progress only the
    /// in-memory flag changes; the attempt writes it with its own result.
    pub async fn set_held(&self, id: &str, held: bool) -> Result<(), QueueError> {
        let now = now_ms();
        let was_busy = self
            .index()
            .update(id, |m| {
                m.held = held;
                if !held {
                    m.next_ms = now;
                }
                // Keep the scheduler off the entry while its file is rewritten.
                std::mem::replace(&mut m.busy, true)
            })
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        if was_busy {
            return Ok(());
        }
        let result = async {
            let (mut e, _) = self.load(id).await?;
            e.held = held;
            if !held {
                e.next_attempt_ms = now;
            }
            self.save(&e).await
        }
        .await;
        self.index().update(id, |m| m.busy = false);
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

    /// Queue figures.
    pub fn stats(&self) -> Stats {
        let now = now_ms() / 1000;
        let index = self.index();
        let c = &self.counters;
        Stats {
            depth: index.len(),
            held: index.held(),
            oldest_age_secs: index.oldest_arrival().map_or(0, |a| now.saturating_sub(a)),
            delivered: c.delivered.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            dsn_sent: c.dsn_sent.load(Ordering::Relaxed),
            spool_commits: self.spool.commit_counters().batches.load(Ordering::Relaxed),
            spool_changes: self.spool.commit_counters().changes.load(Ordering::Relaxed),
            destinations: {
                let mut m = self.per_dest.lock().unwrap_or_else(|e| e.into_inner());
                m.retain(|_, s| std::sync::Arc::strong_count(s) > 1);
                m.len()
            },
        }
    }
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
