//! Where each recipient goes next: a plugin's route, a static route for its domain, the
//! configured upstream, or the domain's MX hosts (RFC 5321 5.1: MX in preference order,
//! the domain's own address records when it has no MX, RFC 7505 null MX refused).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::delivery::TlsPolicy;
pub use crate::delivery::{Destination, domain_of, literal_ip};
use crate::dns::{DnsError, Resolver};

/// A configured next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// `host:port` (a name is resolved when connecting).
    pub addr: String,
    /// STARTTLS policy towards it.
    pub tls: TlsPolicy,
}

/// Routing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// Recipient domain (lowercase) → next hop.
    pub routes: BTreeMap<String, Hop>,
    /// Next hop for recipients without a route (`delivery.upstream` in queue mode);
    /// `None` means MX lookup.
    pub default: Option<Hop>,
    /// Port of MX hosts (25 on the Internet).
    pub mx_port: u16,
    /// Use MX hosts whose addresses are loopback, private, link-local or unspecified
    /// (off: a domain pointing its MX at such an address cannot reach internal
    /// services through us).
    pub mx_allow_private: bool,
}

/// One address to try, with the name it came from (for logs and notices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `ip:port` or `host:port` to connect to.
    pub addr: String,
    /// The host name (MX exchange or configured host).
    pub host: String,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
}

/// Why a destination has no address to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// Permanent: the domain does not exist or refuses mail (null MX). A bounce.
    Permanent(String, &'static str),
    /// Temporary: DNS failed; retry later.
    Temporary(String, &'static str),
}

impl Default for Routing {
    /// No routes, no default next hop: MX lookup, port 25.
    fn default() -> Self {
        Routing {
            routes: BTreeMap::new(),
            default: None,
            mx_port: 25,
            mx_allow_private: false,
        }
    }
}

impl Routing {
    /// The destination of `rcpt`: its domain's route, the default next hop, or its MX.
    pub fn destination(&self, rcpt: &str) -> Destination {
        let domain = domain_of(rcpt);
        if let Some(hop) = self.routes.get(&domain).or(self.default.as_ref()) {
            return Destination::Relay(hop.addr.clone(), hop.tls);
        }
        Destination::Mx(domain)
    }

    /// The addresses to try for `dest`, in order.
    pub async fn targets(
        &self,
        dest: &Destination,
        dns: &Resolver,
    ) -> Result<Vec<Target>, NoRoute> {
        match dest {
            Destination::Relay(addr, tls) => Ok(vec![Target {
                addr: addr.clone(),
                host: addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
                    .unwrap_or(addr)
                    .to_string(),
                tls: *tls,
            }]),
            Destination::Mx(domain) => self.mx_targets(domain, dns).await,
            Destination::Local => Ok(vec![]),
        }
    }

    /// [`Routing::targets`] without the addresses that are this gateway (`own`: its
    /// listeners, see [`loops_back`]): connecting there is a mail loop, not a delivery.
    /// When every address loops back, a temporary [`NoRoute`] (`4.4.6`) naming `domain`.
    /// The queue's attempts and recipient verification both pick their next hop here.
    pub async fn next_hops(
        &self,
        dest: &Destination,
        dns: &Resolver,
        own: &[SocketAddr],
        domain: &str,
    ) -> Result<Vec<Target>, NoRoute> {
        let found = self.targets(dest, dns).await?;
        let mut targets = Vec::with_capacity(found.len());
        for t in found {
            if loops_back(&t, own).await {
                tracing::warn!(next_hop = %t.addr, domain, "next hop is this gateway; not connecting");
            } else {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Err(NoRoute::Temporary(
                format!("mail for {domain} loops back to myself"),
                "4.4.6",
            ));
        }
        Ok(targets)
    }

    async fn mx_targets(&self, domain: &str, dns: &Resolver) -> Result<Vec<Target>, NoRoute> {
        if domain.starts_with('[') {
            // An address literal is its own mail host (RFC 5321 5.1).
            return match literal_ip(domain) {
                Some(ip) if self.mx_allow_private || is_public(ip) => Ok(vec![Target {
                    addr: SocketAddr::new(ip, self.mx_port).to_string(),
                    host: domain.to_string(),
                    tls: TlsPolicy::Opportunistic,
                }]),
                Some(ip) => Err(NoRoute::Permanent(
                    format!("{domain} is a private or local address ({ip})"),
                    "5.4.4",
                )),
                None => Err(NoRoute::Permanent(
                    format!("{domain} is not an address literal we can reach"),
                    "5.1.2",
                )),
            };
        }
        let hosts: Vec<String> = match dns.mx(domain).await {
            Ok(mx) if mx.is_empty() => vec![domain.to_string()],
            Ok(mx) => {
                // RFC 7505: a single MX of "." (preference 0 by convention) refuses mail.
                if mx
                    .iter()
                    .any(|m| m.exchange.is_empty() || m.exchange == ".")
                {
                    return Err(NoRoute::Permanent(
                        format!("domain {domain} does not accept mail (null MX)"),
                        "5.1.10",
                    ));
                }
                mx.into_iter().map(|m| m.exchange).collect()
            }
            Err(DnsError::NxDomain) => {
                return Err(NoRoute::Permanent(
                    format!("domain {domain} does not exist"),
                    "5.1.2",
                ));
            }
            Err(e) => {
                return Err(NoRoute::Temporary(
                    format!("MX lookup for {domain} failed: {e}"),
                    "4.4.3",
                ));
            }
        };
        let mut targets = Vec::new();
        let mut refused = Vec::new();
        let mut last_err = None;
        for host in hosts.iter().take(10) {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for r in [dns.aaaa(host).await, dns.a(host).await] {
                match r {
                    Ok(a) => addrs.extend(a),
                    Err(e) => last_err = Some(e),
                }
            }
            for ip in addrs {
                if !self.mx_allow_private && !is_public(ip) {
                    refused.push(ip);
                    continue;
                }
                targets.push(Target {
                    addr: SocketAddr::new(ip, self.mx_port).to_string(),
                    host: host.clone(),
                    tls: TlsPolicy::Opportunistic,
                });
            }
        }
        if targets.is_empty() && !refused.is_empty() {
            return Err(NoRoute::Permanent(
                format!(
                    "the mail hosts of {domain} resolve only to private or local addresses ({})",
                    refused
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "5.4.4",
            ));
        }
        if targets.is_empty() {
            let why = match last_err {
                Some(e) => format!("no address for the mail hosts of {domain}: {e}"),
                None => format!("no address for the mail hosts of {domain}"),
            };
            return Err(NoRoute::Temporary(why, "4.4.4"));
        }
        Ok(targets)
    }
}

/// Whether `ip` is an address on the public Internet: not loopback, private (RFC 1918,
/// RFC 4193), shared (RFC 6598), link-local, unspecified, broadcast or "this network".
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether `ip` is one of this host's addresses (binding to it succeeds).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether connecting to `target` would reach one of our own listeners (`own`, as
/// bound; an unspecified address there stands for every local address). Names are
/// resolved as the connection would resolve them.
pub async fn loops_back(target: &Target, own: &[SocketAddr]) -> bool {
    let addrs: Vec<SocketAddr> = match target.addr.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => match tokio::net::lookup_host(target.addr.as_str()).await {
            Ok(it) => it.collect(),
            Err(_) => return false,
        },
    };
    addrs.iter().any(|a| {
        own.iter().any(|l| {
            l.port() == a.port()
                && (l.ip() == a.ip() || (l.ip().is_unspecified() && is_local(a.ip())))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        let mut routes = BTreeMap::new();
        routes.insert(
            "a.test".to_string(),
            Hop {
                addr: "127.0.0.1:2601".into(),
                tls: TlsPolicy::None,
            },
        );
        Routing {
            routes,
            default: None,
            mx_port: 25,
            mx_allow_private: false,
        }
    }

    #[test]
    fn static_routes_then_default_then_mx() {
        let r = routing();
        assert_eq!(
            r.destination("x@A.test"),
            Destination::Relay("127.0.0.1:2601".into(), TlsPolicy::None)
        );
        assert_eq!(r.destination("x@b.test"), Destination::Mx("b.test".into()));
        let mut d = routing();
        d.default = Some(Hop {
            addr: "up:25".into(),
            tls: TlsPolicy::Required,
        });
        assert_eq!(
            d.destination("x@b.test"),
            Destination::Relay("up:25".into(), TlsPolicy::Required)
        );
        assert_eq!(
            d.destination("x@a.test"),
            Destination::Relay("127.0.0.1:2601".into(), TlsPolicy::None),
            "a domain route beats the default"
        );
    }

    #[test]
    fn domains_are_normalised() {
        assert_eq!(domain_of("u@Example.TEST."), "example.test");
        assert_eq!(domain_of("\"a@b\"@c.test"), "c.test");
    }

    #[test]
    fn public_addresses_only() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "2a00:1450::1",
            "::ffff:198.51.100.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_target_that_is_one_of_our_listeners_loops_back() {
        let t = |addr: &str| Target {
            addr: addr.into(),
            host: "h".into(),
            tls: TlsPolicy::None,
        };
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:2525".parse().unwrap(),
            "0.0.0.0:25".parse().unwrap(),
        ];
        assert!(loops_back(&t("127.0.0.1:2525"), &own).await);
        assert!(
            loops_back(&t("localhost:2525"), &own).await,
            "names are resolved"
        );
        assert!(
            loops_back(&t("127.0.0.7:25"), &own).await,
            "0.0.0.0 is every local address"
        );
        assert!(!loops_back(&t("127.0.0.1:2526"), &own).await);
        assert!(!loops_back(&t("192.0.2.1:25"), &own).await);
    }
}
