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

/// The domain of an address as DNS knows it ([`domain_key`](crate::smtp::address::domain_key)):
/// `u@Bücher.test.` is `xn--bcher-kva.test`.
pub fn domain_of(address: &str) -> String {
    crate::smtp::address::domain_key(address.rsplit_once('@').map(|(_, d)| d).unwrap_or(""))
}

/// The address of an address-literal domain: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
pub fn literal_ip(domain: &str) -> Option<std::net::IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse().ok(),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_as_dns_knows_them() {
        assert_eq!(domain_of("u@Example.TEST."), "example.test");
        assert_eq!(domain_of("u@Bücher.test"), "xn--bcher-kva.test");
        assert_eq!(domain_of("u@[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(
            literal_ip("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            literal_ip("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(literal_ip("[2001:db8::1]"), None, "IPv6 needs its tag");
        assert_eq!(literal_ip("example.test"), None);
    }
}
