//! Where each recipient goes next: a plugin's route, a static route for its domain, the
//! configured upstream, or the domain's MX hosts (RFC 5321 5.1: MX in preference order,
//! the domain's own address records when it has no MX, RFC 7505 null MX refused).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::delivery::TlsPolicy;
pub use crate::delivery::{Destination, domain_of};
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

    async fn mx_targets(&self, domain: &str, dns: &Resolver) -> Result<Vec<Target>, NoRoute> {
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
                targets.push(Target {
                    addr: SocketAddr::new(ip, self.mx_port).to_string(),
                    host: host.clone(),
                    tls: TlsPolicy::Opportunistic,
                });
            }
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
}
