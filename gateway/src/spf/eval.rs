//! `check_host()` (RFC 7208 4): one evaluation, with its counters of DNS-querying terms and
//! void lookups shared by every record it reads (included and redirected ones too).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use mail_auth::SpfResult;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Macro, Mechanism, Qualifier, Variables};

use super::lookup::{Answer, Lookup};
use super::record::{self, Record, Selected};
use super::{MAX_ADDRESS_LOOKUPS, MAX_DNS_TERMS, MAX_VOID_LOOKUPS, Request};

/// A result and, for a `fail`, the explanation of the domain's `exp=`.
pub(super) struct Found {
    pub result: SpfResult,
    pub explanation: Option<String>,
}

impl Found {
    fn of(result: SpfResult) -> Found {
        Found {
            result,
            explanation: None,
        }
    }
}

/// What one directive came to.
enum Step {
    Match,
    NoMatch,
    /// The evaluation ends with this result (an error).
    Stop(SpfResult),
}

/// One evaluation of `check_host()`.
pub(super) struct Eval<'a, L> {
    dns: &'a L,
    ip: IpAddr,
    sender: String,
    helo: String,
    receiver: String,
    terms: u32,
    voids: u32,
    /// `%{p}` once computed (RFC 7208 7.3).
    validated: Option<String>,
}

/// `domain` checked as RFC 7208 4.3 wants it: at most 253 octets, labels of 1 to 63,
/// at least two labels, not a literal; without a trailing dot.
pub(super) fn valid_domain(domain: &str) -> Option<String> {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && !d.starts_with('[')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    ok.then(|| d.to_string())
}

/// A name from a macro expansion: truncated from the left to 253 octets (RFC 7208 7.3),
/// then checked.
fn target_name(expanded: &str) -> Option<String> {
    let mut name = expanded.strip_suffix('.').unwrap_or(expanded);
    while name.len() > 253 {
        name = name.split_once('.')?.1;
    }
    let ok = !name.is_empty() && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    ok.then(|| name.to_string())
}

fn qualified(q: &Qualifier) -> SpfResult {
    match q {
        Qualifier::Pass => SpfResult::Pass,
        Qualifier::Fail => SpfResult::Fail,
        Qualifier::SoftFail => SpfResult::SoftFail,
        Qualifier::Neutral => SpfResult::Neutral,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, v4_mask: u32, v6_mask: u128) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) & v4_mask == u32::from(b) & v4_mask,
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) & v6_mask == u128::from(b) & v6_mask,
        _ => false,
    }
}

fn needs_ptr(spf: &Record) -> bool {
    spf.directives.iter().any(|d| match &d.mechanism {
        Mechanism::Include { macro_string }
        | Mechanism::A { macro_string, .. }
        | Mechanism::Mx { macro_string, .. }
        | Mechanism::Ptr { macro_string }
        | Mechanism::Exists { macro_string } => macro_string.needs_ptr(),
        _ => false,
    }) || spf.redirect.as_ref().is_some_and(Macro::needs_ptr)
        || spf.exp.as_ref().is_some_and(Macro::needs_ptr)
}

type Boxed<'s> = Pin<Box<dyn Future<Output = Found> + Send + 's>>;

impl<'a, L: Lookup> Eval<'a, L> {
    pub(super) fn new(dns: &'a L, req: &Request<'_>, sender: String) -> Self {
        // An IPv4-mapped IPv6 client is an IPv4 client (RFC 7208 5).
        let ip = match req.ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(req.ip, IpAddr::V4),
            v4 => v4,
        };
        Eval {
            dns,
            ip,
            sender,
            helo: req.helo.to_string(),
            receiver: req.receiver.to_string(),
            terms: 0,
            voids: 0,
            validated: None,
        }
    }

    pub(super) async fn run(mut self, domain: String) -> Found {
        self.check_host(domain, false).await
    }

    fn vars(&self, domain: &str) -> Variables<'static> {
        let mut v = Variables::new();
        v.set_ip(&self.ip);
        v.set_sender(self.sender.clone().into_bytes());
        v.set_domain(domain.as_bytes().to_vec());
        v.set_helo_domain(self.helo.clone().into_bytes());
        v.set_host_domain(self.receiver.clone().into_bytes());
        if let Some(p) = &self.validated {
            v.set_validated_domain(p.clone().into_bytes());
        }
        v
    }

    /// One `check_host(ip, domain, sender)`; `nested` inside an `include` (where `exp=`
    /// does not apply).
    fn check_host(&mut self, domain: String, nested: bool) -> Boxed<'_> {
        Box::pin(async move {
            let spf = match self.dns.txt(&domain).await {
                Answer::Failed => return Found::of(SpfResult::TempError),
                Answer::Void => return Found::of(SpfResult::None),
                Answer::Records(txt) => match record::select(&txt) {
                    Selected::One(spf) => spf,
                    Selected::None => return Found::of(SpfResult::None),
                    Selected::Invalid(why) => {
                        tracing::debug!(%domain, %why, "SPF permerror");
                        return Found::of(SpfResult::PermError);
                    }
                },
            };
            if needs_ptr(&spf) {
                self.validate_client(&domain).await;
            }
            let vars = self.vars(&domain);
            for directive in spf.directives.iter() {
                match self.directive(&directive.mechanism, &vars, &domain).await {
                    Step::Match => {
                        let result = qualified(&directive.qualifier);
                        let explanation = if result == SpfResult::Fail && !nested {
                            self.explain(&spf, &domain).await
                        } else {
                            None
                        };
                        return Found {
                            result,
                            explanation,
                        };
                    }
                    Step::NoMatch => {}
                    Step::Stop(result) => return Found::of(result),
                }
            }
            // RFC 7208 6.1: `redirect=` is ignored when the record has `all`.
            let has_all = spf.directives.iter().any(|d| d.mechanism == Mechanism::All);
            if let (Some(target), false) = (&spf.redirect, has_all) {
                if !self.count_term() {
                    return Found::of(SpfResult::PermError);
                }
                let Some(target) = target_name(&target.eval(&vars, &domain, true)) else {
                    return Found::of(SpfResult::PermError);
                };
                let found = self.check_host(target, nested).await;
                // No record at the target is an error, not `none` (6.1).
                return if found.result == SpfResult::None {
                    Found::of(SpfResult::PermError)
                } else {
                    found
                };
            }
            Found::of(SpfResult::Neutral)
        })
    }

    /// Counts a term that queries DNS; false past the limit.
    fn count_term(&mut self) -> bool {
        self.terms += 1;
        self.terms <= MAX_DNS_TERMS
    }

    /// Counts a void lookup: no match, or the end past the limit.
    fn void(&mut self) -> Step {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            Step::Stop(SpfResult::PermError)
        } else {
            Step::NoMatch
        }
    }

    async fn directive(
        &mut self,
        mechanism: &Mechanism,
        vars: &Variables<'static>,
        domain: &str,
    ) -> Step {
        let ip = self.ip;
        let v6 = ip.is_ipv6();
        match mechanism {
            Mechanism::All => return Step::Match,
            Mechanism::Ip4 { addr, mask } => {
                return step(in_net(ip, IpAddr::V4(*addr), *mask, 0));
            }
            Mechanism::Ip6 { addr, mask } => {
                return step(in_net(ip, IpAddr::V6(*addr), 0, *mask));
            }
            _ => {}
        }
        if !self.count_term() {
            return Step::Stop(SpfResult::PermError);
        }
        let (Mechanism::Include { macro_string }
        | Mechanism::A { macro_string, .. }
        | Mechanism::Mx { macro_string, .. }
        | Mechanism::Ptr { macro_string }
        | Mechanism::Exists { macro_string }) = mechanism
        else {
            unreachable!("ip4, ip6 and all are handled above")
        };
        let Some(target) = target_name(&macro_string.eval(vars, domain, true)) else {
            return Step::Stop(SpfResult::PermError);
        };
        match mechanism {
            Mechanism::Include { .. } => match self.check_host(target, true).await.result {
                SpfResult::Pass => Step::Match,
                SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Step::NoMatch,
                SpfResult::TempError => Step::Stop(SpfResult::TempError),
                SpfResult::PermError | SpfResult::None => Step::Stop(SpfResult::PermError),
            },
            Mechanism::A {
                ip4_mask, ip6_mask, ..
            } => match self.dns.addrs(&target, v6).await {
                Answer::Records(addrs) => {
                    step(addrs.iter().any(|a| in_net(ip, *a, *ip4_mask, *ip6_mask)))
                }
                Answer::Void => self.void(),
                Answer::Failed => Step::Stop(SpfResult::TempError),
            },
            Mechanism::Mx {
                ip4_mask, ip6_mask, ..
            } => match self.dns.mx(&target).await {
                Answer::Records(exchanges) if exchanges.len() > MAX_ADDRESS_LOOKUPS => {
                    Step::Stop(SpfResult::PermError)
                }
                Answer::Records(exchanges) => {
                    for exchange in exchanges {
                        if exchange.is_empty() || exchange == "." {
                            continue;
                        }
                        match self.dns.addrs(&exchange, v6).await {
                            Answer::Records(addrs)
                                if addrs.iter().any(|a| in_net(ip, *a, *ip4_mask, *ip6_mask)) =>
                            {
                                return Step::Match;
                            }
                            Answer::Failed => return Step::Stop(SpfResult::TempError),
                            _ => {}
                        }
                    }
                    Step::NoMatch
                }
                Answer::Void => self.void(),
                Answer::Failed => Step::Stop(SpfResult::TempError),
            },
            Mechanism::Ptr { .. } => match self.validated_names().await {
                Answer::Records(names) => step(names.iter().any(|n| within(n, &target))),
                Answer::Void => self.void(),
                // RFC 7208 5.5: a DNS error makes `ptr` not match.
                Answer::Failed => Step::NoMatch,
            },
            Mechanism::Exists { .. } => match self.dns.addrs(&target, false).await {
                // RFC 7208 5.7: A records, whatever the client's address family.
                Answer::Records(_) => Step::Match,
                Answer::Void => self.void(),
                Answer::Failed => Step::Stop(SpfResult::TempError),
            },
            Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {
                unreachable!("handled above")
            }
        }
    }

    /// The client's PTR names (the first 10) whose addresses include it (possibly none);
    /// `Void` when the PTR lookup finds nothing.
    async fn validated_names(&self) -> Answer<String> {
        let names = match self.dns.ptr(self.ip).await {
            Answer::Records(n) => n,
            Answer::Void => return Answer::Void,
            Answer::Failed => return Answer::Failed,
        };
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_ADDRESS_LOOKUPS) {
            if let Answer::Records(addrs) = self.dns.addrs(&name, self.ip.is_ipv6()).await
                && addrs.contains(&self.ip)
            {
                valid.push(name);
            }
        }
        // Names, but none confirmed, is not a void lookup: it is no match.
        Answer::Records(valid)
    }

    /// Computes `%{p}` (RFC 7208 7.3): a validated name that is `domain` or under it if
    /// there is one, else any validated name, else `unknown`. Its lookups are not counted.
    async fn validate_client(&mut self, domain: &str) {
        if self.validated.is_some() {
            return;
        }
        let names = match self.validated_names().await {
            Answer::Records(n) => n,
            _ => vec![],
        };
        let best = names
            .iter()
            .find(|n| within(n, domain))
            .or(names.first())
            .cloned();
        self.validated = Some(best.unwrap_or_else(|| "unknown".into()));
    }

    /// The explanation of a `fail` (RFC 7208 6.2): the TXT record `exp=` names, expanded;
    /// nothing if anything about it is wrong.
    async fn explain(&mut self, spf: &Record, domain: &str) -> Option<String> {
        let exp = spf.exp.as_ref()?;
        let target = target_name(&exp.eval(&self.vars(domain), domain, true))?;
        let Answer::Records(txt) = self.dns.txt(&target).await else {
            return None;
        };
        let [text] = txt.as_slice() else {
            return None;
        };
        if !text.is_ascii() {
            return None;
        }
        let text = <Macro as TxtRecordParser>::parse(text.as_bytes()).ok()?;
        if text.needs_ptr() {
            self.validate_client(domain).await;
        }
        let vars = self.vars(domain);
        let explanation = text.eval(&vars, domain, false).into_owned();
        Some(explanation)
    }
}

fn step(matched: bool) -> Step {
    if matched { Step::Match } else { Step::NoMatch }
}

/// Whether host `name` is `domain` or under it (case-insensitively).
fn within(name: &str, domain: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}
