//! SPF (RFC 7208): `check_host()` of our own, over the gateway's resolver (its cache and
//! `[dns]` settings), with mail-auth's record parser and macro expander.
//!
//! Our own evaluation, because mail-auth 0.13's misses what RFC 7208 requires: the
//! void-lookup limit (4.6.4: more than two lookups that find nothing → `permerror`),
//! `exists:` matching A records only (5.7; mail-auth also takes AAAA), the grammar checks
//! of [`record`] in every record read (mail-auth checks none), `none` from an included
//! domain being `permerror` (5.2), and more than 10 MX records being `permerror` (4.6.4).
//!
//! Limits (4.6.4): at most 10 terms that query DNS (`include`, `a`, `mx`, `ptr`, `exists`,
//! `redirect`) per check, recursion included; at most 2 void lookups; at most 10 address
//! lookups per `mx` or `ptr`. The overall time bound is the caller's (a timeout around the
//! whole check).

mod eval;
mod lookup;
pub mod record;

use std::net::IpAddr;

use mail_auth::{SpfOutput, SpfResult};

pub use lookup::{Answer, Lookup};

/// Terms that query DNS, per check (RFC 7208 4.6.4).
pub const MAX_DNS_TERMS: u32 = 10;
/// Lookups that find nothing, per check (RFC 7208 4.6.4).
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// Address lookups per `mx` (more MX records is an error) or `ptr` (the rest is ignored).
pub const MAX_ADDRESS_LOOKUPS: usize = 10;

/// What one SPF check is about.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The SMTP client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The MAIL FROM address (`""` for `<>`: then `postmaster@HELO` is checked).
    pub sender: &'a str,
    /// Our own host name (`%{r}` in explanations).
    pub receiver: &'a str,
}

/// SPF for the MAIL FROM identity (RFC 7208 2.4; the HELO identity for `<>`).
pub async fn check_mail_from(dns: &impl Lookup, req: &Request<'_>) -> SpfOutput {
    if req.sender.is_empty() {
        return check_helo(dns, req).await;
    }
    let (local, domain) = match req.sender.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => ("", req.sender),
    };
    // RFC 7208 4.3: a sender without a local part is postmaster@domain.
    let local = if local.is_empty() {
        "postmaster"
    } else {
        local
    };
    let sender = format!("{local}@{domain}");
    check(dns, req, domain, sender).await
}

/// SPF for the HELO identity (RFC 7208 2.3), as `postmaster@HELO`.
pub async fn check_helo(dns: &impl Lookup, req: &Request<'_>) -> SpfOutput {
    check(dns, req, req.helo, format!("postmaster@{}", req.helo)).await
}

async fn check(dns: &impl Lookup, req: &Request<'_>, domain: &str, sender: String) -> SpfOutput {
    let out = SpfOutput::new(domain.to_string());
    // RFC 7208 4.3: a malformed or single-label domain is `none`, not an error.
    let Some(domain) = eval::valid_domain(domain) else {
        return out.with_result(SpfResult::None);
    };
    let found = eval::Eval::new(dns, req, sender).run(domain).await;
    match found.explanation {
        Some(e) => out.with_result(found.result).with_explanation(e),
        None => out.with_result(found.result),
    }
}

#[cfg(test)]
mod tests;
