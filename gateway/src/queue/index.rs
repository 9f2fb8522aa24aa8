//! The scheduler's in-memory index of queued entries, ordered by next attempt time, so
//! finding what is due costs O(log n) per entry taken and nothing for the entries that
//! are not due: a queue of 100,000 entries costs an enqueue no more than a queue of 10.
//!
//! Each entry is either *waiting* (in the time order, due at `next_ms`), *held* (by an
//! admin: never due) or *busy* (an attempt or an admin rewrite is on it). Only waiting
//! entries are in the time order.

use std::collections::{BTreeSet, HashMap};

use super::entry::Entry;

/// Bookkeeping of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Not before (unix milliseconds).
    pub next_ms: u64,
    /// Held by an admin.
    pub held: bool,
    /// An attempt (or an admin rewrite) is on it.
    pub busy: bool,
    /// When it was accepted (unix seconds).
    pub arrival: u64,
}

impl Meta {
    /// An entry as stored, not being attempted.
    pub fn of(e: &Entry) -> Meta {
        Meta {
            next_ms: e.next_attempt_ms,
            held: e.held,
            busy: false,
            arrival: e.arrival,
        }
    }

    fn waiting(&self) -> bool {
        !self.held && !self.busy
    }
}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<String, Meta>,
    /// `(next_ms, id)` of every waiting entry.
    order: BTreeSet<(u64, String)>,
}

impl Index {
    /// Adds (or replaces) an entry.
    pub fn insert(&mut self, id: &str, meta: Meta) {
        self.remove(id);
        if meta.waiting() {
            self.order.insert((meta.next_ms, id.to_string()));
        }
        self.entries.insert(id.to_string(), meta);
    }

    /// Forgets an entry; its bookkeeping as it was.
    pub fn remove(&mut self, id: &str) -> Option<Meta> {
        let meta = self.entries.remove(id)?;
        if meta.waiting() {
            self.order.remove(&(meta.next_ms, id.to_string()));
        }
        Some(meta)
    }

    /// An entry's bookkeeping.
    pub fn get(&self, id: &str) -> Option<Meta> {
        self.entries.get(id).copied()
    }

    /// Changes an entry with `f`, keeping the time order right; `None` if it is unknown.
    pub fn update<T>(&mut self, id: &str, f: impl FnOnce(&mut Meta) -> T) -> Option<T> {
        let mut meta = self.remove(id)?;
        let out = f(&mut meta);
        self.insert(id, meta);
        Some(out)
    }

    /// Marks every waiting entry due at `now_ms` or earlier busy and returns their ids,
    /// earliest first, with the time the next waiting entry is due.
    pub fn take_due(&mut self, now_ms: u64) -> (Vec<String>, Option<u64>) {
        let mut due = Vec::new();
        while let Some((at, _)) = self.order.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            if let Some(m) = self.entries.get_mut(&id) {
                m.busy = true;
            }
            due.push(id);
        }
        (due, self.order.first().map(|(at, _)| *at))
    }

    /// Makes every entry that is not held due by `now_ms`; how many.
    pub fn flush(&mut self, now_ms: u64) -> usize {
        let ids: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, m)| !m.held)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.update(id, |m| m.next_ms = m.next_ms.min(now_ms));
        }
        ids.len()
    }

    /// Entries in the queue.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries held.
    pub fn held(&self) -> usize {
        self.entries.values().filter(|m| m.held).count()
    }

    /// Arrival time of the oldest entry (unix seconds).
    pub fn oldest_arrival(&self) -> Option<u64> {
        self.entries.values().map(|m| m.arrival).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(next_ms: u64) -> Meta {
        Meta {
            next_ms,
            held: false,
            busy: false,
            arrival: next_ms / 1000,
        }
    }

    #[test]
    fn due_entries_come_out_in_time_order_once() {
        let mut ix = Index::default();
        ix.insert("c", meta(300));
        ix.insert("a", meta(100));
        ix.insert("b", meta(200));
        ix.insert(
            "h",
            Meta {
                held: true,
                ..meta(50)
            },
        );
        assert_eq!(ix.take_due(250), (vec!["a".into(), "b".into()], Some(300)));
        assert_eq!(
            ix.take_due(250),
            (vec![], Some(300)),
            "busy entries are not due again"
        );
        assert!(ix.get("a").unwrap().busy);
        // The attempt ends: due again later.
        ix.update("a", |m| {
            m.busy = false;
            m.next_ms = 1000;
        });
        assert_eq!(ix.take_due(999), (vec!["c".into()], Some(1000)));
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.held(), 1);
        assert_eq!(ix.oldest_arrival(), Some(0));
    }

    #[test]
    fn hold_release_remove_and_flush_keep_the_order_right() {
        let mut ix = Index::default();
        ix.insert("a", meta(100));
        ix.insert("b", meta(5000));
        ix.update("a", |m| m.held = true);
        assert_eq!(ix.take_due(200), (vec![], Some(5000)), "held is never due");
        assert_eq!(ix.flush(10), 1, "held entries are not flushed");
        assert_eq!(ix.take_due(10), (vec!["b".into()], None));
        ix.update("a", |m| m.held = false);
        assert_eq!(ix.remove("a").map(|m| m.next_ms), Some(100));
        assert_eq!(ix.take_due(u64::MAX), (vec![], None));
        assert!(ix.update("a", |_| ()).is_none());
    }

    #[test]
    fn many_entries_cost_only_what_is_due() {
        let mut ix = Index::default();
        for i in 0..100_000u64 {
            ix.insert(&format!("q{i}"), meta(1_000_000 + i));
        }
        let (due, next) = ix.take_due(1_000_004);
        assert_eq!(due.len(), 5);
        assert_eq!(next, Some(1_000_005));
    }
}
