//! Where a group of recipients goes next: one delivery per destination. The queue's
//! routing picks one for each recipient, and so can a plugin's `on-deliver`.

use super::TlsPolicy;

/// The destination a group of recipients shares: one delivery per destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A fixed next hop (`host:port`) with its TLS policy.
    Relay(String, TlsPolicy),
    /// The MX hosts of this domain.
    Mx(String),
    /// The local Maildir (a plugin's `local` route).
    Local,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Relay(a, _) => write!(f, "{a}"),
            Destination::Mx(d) => write!(f, "mx:{d}"),
            Destination::Local => write!(f, "local"),
        }
    }
}

/// The domain of an address, lowercased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}
