//! Connection limits: total open connections and open connections per client IP.
//! A [`ConnGuard`] holds one slot and gives it back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `server.max_connections` reached.
    Total,
    /// `server.max_connections_per_ip` reached for this client.
    PerIp,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections against the configured limits.
#[derive(Debug)]
pub struct ConnTracker {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

/// One open connection's slot; released on drop.
#[derive(Debug)]
pub struct ConnGuard {
    tracker: Arc<ConnTracker>,
    ip: IpAddr,
}

impl ConnTracker {
    /// A tracker with the given limits.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnTracker> {
        Arc::new(ConnTracker {
            max_total,
            max_per_ip,
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `ip`, or says which limit is reached.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, LimitHit> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(LimitHit::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnGuard {
            tracker: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.tracker.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_release_on_drop() {
        let t = ConnTracker::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = t.acquire(a).unwrap();
        let _g2 = t.acquire(a).unwrap();
        assert_eq!(t.acquire(a).unwrap_err(), LimitHit::PerIp);
        let _g3 = t.acquire(b).unwrap();
        assert_eq!(t.acquire(b).unwrap_err(), LimitHit::Total);
        drop(g1);
        assert_eq!(t.open(), 2);
        assert!(t.acquire(a).is_ok());
    }
}
