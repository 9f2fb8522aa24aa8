//! DNS lookups through the gateway's resolver (capability `dns`).
//!
//! Answers are cached by the host; every query counts against a per-session budget
//! shared by all plugins ([`DnsError::BudgetExceeded`] once it is spent). A name that
//! exists without records of the type answers `Ok` with an empty list;
//! [`DnsError::Nxdomain`] means the name does not exist.
//!
//! ```no_run
//! use mailgate_plugin_sdk::dns;
//! # fn f(ip: std::net::IpAddr) -> Result<(), dns::DnsError> {
//! if let Some(codes) = dns::dnsbl_lookup(ip, "zen.spamhaus.org")? {
//!     // listed, with return codes like 127.0.0.2
//! #   let _ = codes;
//! }
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bindings::mailgate::plugin::dns as raw;
use crate::{ClientInfo, IpAddress, SessionInfo, SocketAddress};

pub use raw::{DnsError, MxRecord};

/// TXT records of `name`, each record's character-strings concatenated.
pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
    raw::lookup_txt(name)
}

/// A records of `name`.
pub fn a(name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
    Ok(raw::lookup_a(name)?
        .into_iter()
        .filter_map(|ip| match IpAddr::from(ip) {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// AAAA records of `name`.
pub fn aaaa(name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
    Ok(raw::lookup_aaaa(name)?
        .into_iter()
        .filter_map(|ip| match IpAddr::from(ip) {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
        .collect())
}

/// MX records of `name`, sorted by preference.
pub fn mx(name: &str) -> Result<Vec<MxRecord>, DnsError> {
    raw::lookup_mx(name)
}

/// PTR names of `ip` (not forward-confirmed; `SessionInfo.client.ptr_name` is).
pub fn ptr(ip: IpAddr) -> Result<Vec<String>, DnsError> {
    raw::lookup_ptr(ip.into())
}

/// A records of each of `names`, looked up concurrently by the host: one answer per name,
/// in order (each counts against the session's budget; at most 64 names per call).
/// Since WIT 0.1.1: a plugin that calls it does not load on an older host.
pub fn a_many(names: &[String]) -> Vec<Result<Vec<Ipv4Addr>, DnsError>> {
    raw::lookup_a_many(names)
        .into_iter()
        .map(|r| {
            r.map(|ips| {
                ips.into_iter()
                    .filter_map(|ip| match IpAddr::from(ip) {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect()
            })
        })
        .collect()
}

/// The DNSBL query name for `ip` in `zone`: `4.3.2.1.zone` for `1.2.3.4`, and the 32
/// reversed nibbles for IPv6 (RFC 5782).
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    let mut name = String::new();
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(name, "{}.{}.{}.{}", o[3], o[2], o[1], o[0]);
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            name.pop();
        }
    }
    name.push('.');
    name.push_str(zone);
    name
}

/// Looks `ip` up in the DNS blocklist `zone`: `Some(return codes)` if listed, `None` if
/// not (NXDOMAIN or no A record).
pub fn dnsbl_lookup(ip: IpAddr, zone: &str) -> Result<Option<Vec<Ipv4Addr>>, DnsError> {
    match a(&dnsbl_name(ip, zone)) {
        Ok(codes) if codes.is_empty() => Ok(None),
        Ok(codes) => Ok(Some(codes)),
        Err(DnsError::Nxdomain) => Ok(None),
        Err(e) => Err(e),
    }
}

impl From<IpAddress> for IpAddr {
    fn from(ip: IpAddress) -> IpAddr {
        match ip {
            IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl From<IpAddr> for IpAddress {
    fn from(ip: IpAddr) -> IpAddress {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                IpAddress::Ipv4((a, b, c, d))
            }
            IpAddr::V6(v6) => {
                let [a, b, c, d, e, f, g, h] = v6.segments();
                IpAddress::Ipv6((a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl From<SocketAddress> for SocketAddr {
    fn from(sa: SocketAddress) -> SocketAddr {
        SocketAddr::new(sa.ip.into(), sa.port)
    }
}

impl IpAddress {
    /// As a [`std::net::IpAddr`].
    pub fn to_std(&self) -> IpAddr {
        (*self).into()
    }
}

impl ClientInfo {
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.address.ip.to_std()
    }
}

impl SessionInfo {
    /// The client's IP address.
    pub fn client_ip(&self) -> IpAddr {
        self.client.ip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_round_trip() {
        for ip in ["192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            let wit: IpAddress = ip.into();
            assert_eq!(IpAddr::from(wit), ip);
            assert_eq!(wit.to_std(), ip);
        }
        assert_eq!(
            IpAddress::from("1.2.3.4".parse::<IpAddr>().unwrap()),
            IpAddress::Ipv4((1, 2, 3, 4))
        );
        let sa = SocketAddress {
            ip: IpAddress::Ipv4((127, 0, 0, 1)),
            port: 25,
        };
        assert_eq!(SocketAddr::from(sa), "127.0.0.1:25".parse().unwrap());
    }

    #[test]
    fn dnsbl_names() {
        assert_eq!(
            dnsbl_name("192.0.2.99".parse().unwrap(), "zen.test."),
            "99.2.0.192.zen.test"
        );
        assert_eq!(
            dnsbl_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "bl.test"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }
}
