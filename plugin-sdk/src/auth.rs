//! The gateway's SPF, DKIM, DMARC, ARC and iprev results for the current session and
//! message (capability `auth-results`).
//!
//! The host computes each on first use and shares it between plugins. Each function
//! answers [`AuthError::Unavailable`] before its stage (SPF from `on_mail_from`, DKIM,
//! DMARC and ARC from `on_data`, iprev from `on_connect`) or when the check is disabled,
//! and [`AuthError::Denied`] without the grant.

use crate::bindings::mailgate::plugin::auth_results as raw;

pub use raw::{
    ArcResult, ArcSealer, AuthError, DkimCheck, DkimResult, DmarcCheck, DmarcPolicy, DmarcResult,
    IprevResult, SpfCheck, SpfResult, SpfScope,
};

impl SpfResult {
    /// The result's name in `Authentication-Results` (RFC 8601): `pass`, `softfail`, …
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::Softfail => "softfail",
            SpfResult::Temperror => "temperror",
            SpfResult::Permerror => "permerror",
        }
    }
}

impl DkimResult {
    /// The result's name in `Authentication-Results` (RFC 8601): `pass`, `fail`, …
    pub fn name(self) -> &'static str {
        match self {
            DkimResult::None => "none",
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::Policy => "policy",
            DkimResult::Neutral => "neutral",
            DkimResult::Temperror => "temperror",
            DkimResult::Permerror => "permerror",
        }
    }
}

impl DmarcResult {
    /// The result's name in `Authentication-Results` (RFC 8601): `pass`, `fail`, …
    pub fn name(self) -> &'static str {
        match self {
            DmarcResult::None => "none",
            DmarcResult::Pass => "pass",
            DmarcResult::Fail => "fail",
            DmarcResult::Temperror => "temperror",
            DmarcResult::Permerror => "permerror",
        }
    }
}

impl ArcResult {
    /// The result's name in `Authentication-Results` (RFC 8617): `none`, `pass`, `fail`.
    pub fn name(self) -> &'static str {
        match self {
            ArcResult::None => "none",
            ArcResult::Pass => "pass",
            ArcResult::Fail => "fail",
        }
    }
}

/// SPF for the MAIL FROM identity (the HELO identity for `<>`).
pub fn spf() -> Result<SpfCheck, AuthError> {
    raw::spf()
}

/// SPF for the HELO identity.
pub fn spf_helo() -> Result<SpfCheck, AuthError> {
    raw::spf_helo()
}

/// One entry per DKIM signature (a single `none` entry if there is none).
pub fn dkim() -> Result<Vec<DkimCheck>, AuthError> {
    raw::dkim()
}

/// `true` if at least one DKIM signature passed.
pub fn dkim_pass() -> Result<bool, AuthError> {
    Ok(raw::dkim()?.iter().any(|c| c.outcome == DkimResult::Pass))
}

/// DMARC for the RFC5322.From domain.
pub fn dmarc() -> Result<DmarcCheck, AuthError> {
    raw::dmarc()
}

/// ARC chain validation.
pub fn arc() -> Result<ArcResult, AuthError> {
    raw::arc()
}

/// The ARC sets of the message, oldest first (the last one is the intermediary that
/// handed the message to us); empty unless the chain validates. Since WIT 0.1.1: a plugin
/// that calls it does not load on an older host.
pub fn arc_sealers() -> Result<Vec<ArcSealer>, AuthError> {
    raw::arc_sealers()
}

/// iprev (forward-confirmed reverse DNS) for the client.
pub fn iprev() -> Result<IprevResult, AuthError> {
    raw::iprev()
}

/// The `Authentication-Results:` value the gateway will add for these results.
pub fn header_value() -> Result<String, AuthError> {
    raw::header_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_names_are_the_rfc_8601_ones() {
        assert_eq!(SpfResult::Softfail.name(), "softfail");
        assert_eq!(SpfResult::Temperror.name(), "temperror");
        assert_eq!(DkimResult::Policy.name(), "policy");
        assert_eq!(DmarcResult::Fail.name(), "fail");
        assert_eq!(ArcResult::Pass.name(), "pass");
    }
}
