//! Connection limits: total open connections and open connections per client network.
//! A [`ConnGuard`] holds one slot and gives it back when dropped.
//!
//! A client is counted by its network, not its exact address: an IPv6 client usually
//! holds a whole /64, so counting addresses would give it 2^64 allowances. By default an
//! IPv4 client is its address (/32) and an IPv6 client its /64
//! (`server.client_ipv4_prefix`, `server.client_ipv6_prefix`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

/// The network a client address counts as: `v4_prefix` bits of an IPv4 address (an
/// IPv4-mapped IPv6 address is IPv4), `v6_prefix` bits of an IPv6 one.
pub fn client_network(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => v4_prefix.min(32),
        IpAddr::V6(_) => v6_prefix.min(128),
    };
    IpNet::new(ip, prefix).map_or(IpNet::from(ip), |n| n.trunc())
}

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
    per_net: HashMap<IpNet, usize>,
}

/// Counts open connections against the configured limits.
#[derive(Debug)]
pub struct ConnTracker {
    max_total: usize,
    max_per_ip: usize,
    prefixes: (u8, u8),
    counts: Mutex<Counts>,
}

/// One open connection's slot; released on drop.
#[derive(Debug)]
pub struct ConnGuard {
    tracker: Arc<ConnTracker>,
    net: IpNet,
}

impl ConnTracker {
    /// A tracker with the given limits; clients count by their IPv4 and IPv6 networks
    /// of `prefixes` bits (see [`client_network`]).
    pub fn new(max_total: usize, max_per_ip: usize, prefixes: (u8, u8)) -> Arc<ConnTracker> {
        Arc::new(ConnTracker {
            max_total,
            max_per_ip,
            prefixes,
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a client at `ip`, or says which limit is reached.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, LimitHit> {
        let net = client_network(ip, self.prefixes.0, self.prefixes.1);
        let m = crate::metrics::get();
        let refused = |reason: &str| {
            m.connections_refused
                .get_or_create(&crate::metrics::Reason {
                    reason: reason.to_string(),
                })
                .inc();
        };
        let mut c = self.lock();
        if c.total >= self.max_total {
            refused("max_connections");
            return Err(LimitHit::Total);
        }
        let n = c.per_net.entry(net).or_insert(0);
        if *n >= self.max_per_ip {
            refused("max_connections_per_ip");
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        c.total += 1;
        m.connections.inc();
        m.connections_open.inc();
        Ok(ConnGuard {
            tracker: Arc::clone(self),
            net,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        crate::metrics::get().connections_open.dec();
        let mut c = self.tracker.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_net.get_mut(&self.net) {
            *n -= 1;
            if *n == 0 {
                c.per_net.remove(&self.net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_release_on_drop() {
        let t = ConnTracker::new(3, 2, (32, 64));
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

    #[test]
    fn ipv6_clients_count_by_their_64_and_ipv4_by_address() {
        let t = ConnTracker::new(100, 2, (32, 64));
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _a = t.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = t.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            t.acquire(ip("2001:db8:1:2::abcd")).unwrap_err(),
            LimitHit::PerIp
        );
        assert!(t.acquire(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _c = t.acquire(ip("192.0.2.1")).unwrap();
        let _d = t.acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(
            t.acquire(ip("192.0.2.1")).unwrap_err(),
            LimitHit::PerIp,
            "mapped is v4"
        );
        assert!(t.acquire(ip("192.0.2.2")).is_ok());
        assert_eq!(
            client_network(ip("198.51.100.77"), 24, 64).to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            client_network(ip("2001:db8::1"), 32, 200).to_string(),
            "2001:db8::1/128"
        );
    }
}
