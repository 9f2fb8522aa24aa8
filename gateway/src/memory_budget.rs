//! A shared budget of octets: the memory all sessions together may hold for message
//! content (`limits.max_message_memory_mb`), and the linear memory all plugin instances
//! together may hold (`chain.max_total_memory_mb`). Taking past the cap is refused (and
//! takes nothing); what was taken is given back when its holder ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Octets taken out of a cap.
#[derive(Debug)]
pub struct MemoryBudget {
    cap: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `cap` octets.
    pub fn new(cap: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            cap,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `n` more octets; `false` (and nothing taken) if that would pass the cap.
    pub fn grow(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.cap)
            })
            .is_ok()
    }

    /// Takes `n` more octets even past the cap (for small amounts bounded elsewhere).
    pub fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` octets.
    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Octets held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_capped_and_given_back() {
        let m = MemoryBudget::new(100);
        assert!(m.grow(60));
        assert!(!m.grow(41), "past the cap");
        assert_eq!(m.used(), 60, "a refused growth takes nothing");
        assert!(m.grow(40));
        m.release(100);
        assert_eq!(m.used(), 0);
        m.release(5);
        assert_eq!(m.used(), 0, "never below zero");
        m.force(150);
        assert_eq!(m.used(), 150);
    }
}
