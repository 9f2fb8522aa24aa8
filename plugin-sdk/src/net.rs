//! Networks and domain names the way plugin configs name them: CIDR networks
//! (`192.0.2.0/24`, `2001:db8::/32`, or one address) and "this domain or one under it".
//! An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) counts as the IPv4 address it is.
//!
//! ```
//! use mailgate_plugin_sdk::net::{Net, within};
//! let n = Net::parse("192.0.2.0/24").unwrap();
//! assert!(n.contains("192.0.2.7".parse().unwrap()));
//! assert!(within("Mail.Example.COM.", "example.com"));
//! assert!(!within("notexample.com", "example.com"));
//! ```

use std::fmt;
use std::net::IpAddr;

/// A network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// `ip`, an IPv4-mapped IPv6 address as its IPv4 address.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(prefix: u8, bits: u32) -> u128 {
    let ones = u32::from(prefix).min(bits);
    if ones == 0 {
        0
    } else {
        (u128::MAX << (128 - ones)) >> (128 - bits)
    }
}

fn value(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

impl Net {
    /// `a.b.c.d/len`, `x::/len`, or one address (a whole-length network). `None` for
    /// anything else, or a length past the family's.
    pub fn parse(s: &str) -> Option<Net> {
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr = unmap(a.trim().parse().ok()?);
        let max = value(addr).1 as u8;
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim().parse().ok()?
        };
        (prefix <= max).then(|| Net::of(addr, prefix))
    }

    /// The network of `ip` with `prefix` bits (at most the family's): `192.0.2.7` and 24
    /// give `192.0.2.0/24`.
    pub fn of(ip: IpAddr, prefix: u8) -> Net {
        let ip = unmap(ip);
        let (v, bits) = value(ip);
        let prefix = prefix.min(bits as u8);
        let masked = v & mask(prefix, bits);
        let addr = if bits == 32 {
            IpAddr::from((masked as u32).to_be_bytes())
        } else {
            IpAddr::from(masked.to_be_bytes())
        };
        Net { addr, prefix }
    }

    /// The network of `ip` with `v4` bits for an IPv4 address and `v6` for an IPv6 one
    /// (a client network: `/24` and `/64`, say).
    pub fn of_client(ip: IpAddr, v4: u8, v6: u8) -> Net {
        let ip = unmap(ip);
        Net::of(ip, if ip.is_ipv4() { v4 } else { v6 })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        let ((a, la), (b, lb)) = (value(self.addr), value(ip));
        la == lb && a & mask(self.prefix, la) == b & mask(self.prefix, la)
    }

    /// The first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Net {
    /// `192.0.2.0/24`; a whole-length network as its address alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if u32::from(self.prefix) == value(self.addr).1 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Whether host or domain `name` is `domain` or under it (ASCII case and trailing dots
/// ignored): `mail.example.com` is within `example.com`, `notexample.com` is not.
pub fn within(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    !domain.is_empty()
        && (name == domain
            || name
                .strip_suffix(&domain)
                .is_some_and(|rest| rest.ends_with('.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains(ip("10.1.2.3")) && !n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.9.9.9")));
        let one = Net::parse("192.0.2.5").unwrap();
        assert!(one.contains(ip("192.0.2.5")) && !one.contains(ip("192.0.2.6")));
        let v6 = Net::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.1")));
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("example.org").is_none());
        assert_eq!(Net::of(ip("192.0.2.77"), 24).to_string(), "192.0.2.0/24");
        assert_eq!(Net::of(ip("192.0.2.77"), 32).to_string(), "192.0.2.77");
        assert_eq!(
            Net::of_client(ip("2001:db8:1:2:3::9"), 24, 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Net::of_client(ip("::ffff:192.0.2.9"), 24, 64).to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn domains() {
        assert!(within("friends.test", "friends.test"));
        assert!(within("Mail.Friends.Test.", "friends.test"));
        assert!(within("a.b.friends.test", "Friends.Test."));
        assert!(!within("notfriends.test", "friends.test"));
        assert!(!within("friends.test.evil", "friends.test"));
        assert!(!within("x.test", ""));
    }
}
