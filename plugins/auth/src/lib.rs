//! mailgate's authentication policy: SPF, DKIM, DMARC and ARC results from the host's
//! `auth-results` capability turned into verdicts, and one RFC 8601
//! `Authentication-Results` header on every message. Needs the `auth-results`
//! capability. See docs/auth.md for every option and a safe DMARC roll-out.
//!
//! Config (all optional):
//!
//! | key | values | default |
//! |---|---|---|
//! | `spf_fail` | `reject-mail` (550 5.7.23 at MAIL FROM), `reject-data` (at the end of DATA), `tag`, `ignore` | `tag` |
//! | `dmarc_reject` | what `p=reject` does: `reject` (550 5.7.1), `quarantine`, `tag` | `reject` |
//! | `dmarc_quarantine` | what `p=quarantine` does: `quarantine`, `tag` | `quarantine` |
//! | `temperror` | DNS trouble where a policy would decide: `tempfail` (451 4.7.x), `ignore` | `tempfail` |
//! | `trusted_networks` | clients (CIDR) never refused or quarantined | `[]` |
//! | `trusted_domains` | From / MAIL FROM domains never refused or quarantined | `[]` |
//! | `trusted_forwarders` | forwarders, as networks (CIDR) or host names (the client's confirmed reverse name, or a parent of it): their SPF results are not scored or acted on, DMARC failures are only tagged | `[]` |
//! | `trusted_arc_sealers` | ARC sealing domains whose recorded `dmarc=pass` overrides a DMARC failure here, when the chain validates and the newest set is theirs (RFC 8617 7.2) | `[]` |
//! | `authserv_id` | our name in `Authentication-Results` (forged ones claiming it are removed) | the gateway's host name |
//! | `add_header` | add `Authentication-Results` | `true` |
//! | `score_spf_fail`, `score_spf_softfail`, `score_dkim_fail`, `score_dmarc_fail` | points added (for a spam scorer) | `0` |
//!
//! "tag" means the result is only recorded: the header, a tag (`spf:fail`, `dmarc:fail`,
//! …) and the configured score.

use mailgate_plugin_sdk::auth::{
    self, ArcResult, DkimResult, DmarcPolicy, DmarcResult, SpfCheck, SpfResult,
};
use mailgate_plugin_sdk::net::{Net, within};
use mailgate_plugin_sdk::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpfAction {
    RejectMail,
    RejectData,
    Tag,
    Ignore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyAction {
    Reject,
    Quarantine,
    Tag,
}

struct Auth {
    spf_fail: SpfAction,
    dmarc_reject: PolicyAction,
    dmarc_quarantine: PolicyAction,
    tempfail: bool,
    trusted_networks: Vec<Net>,
    trusted_domains: Vec<String>,
    trusted_forwarders: Vec<String>,
    forwarder_networks: Vec<Net>,
    trusted_arc_sealers: Vec<String>,
    authserv_id: Option<String>,
    add_header: bool,
    score_spf_fail: f64,
    score_spf_softfail: f64,
    score_dkim_fail: f64,
    score_dmarc_fail: f64,
    /// The MAIL FROM SPF result of this transaction, if it was asked for.
    spf: Option<SpfCheck>,
}

/// `out` with the verdict `v` (its marks and edits kept).
fn verdict(mut out: DataOutcome, v: DataVerdict) -> DataOutcome {
    out.verdict = v;
    out
}

/// A list of domain names from the config, lowercase, without trailing dots.
fn domains(config: &Config, key: &str) -> Result<Vec<String>, String> {
    Ok(config
        .list(key)?
        .unwrap_or_default()
        .iter()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

impl Auth {
    /// The client is a trusted forwarder (by its confirmed reverse name).
    fn forwarder(&self, s: &SessionInfo) -> bool {
        let ip = s.client_ip();
        self.forwarder_networks.iter().any(|n| n.contains(ip))
            || s.client
                .ptr_name
                .as_deref()
                .is_some_and(|n| self.trusted_forwarders.iter().any(|f| within(n, f)))
    }

    /// The sealer that handed us the message is trusted and recorded `dmarc=pass`; its
    /// domain if so. Only asked when the chain validated.
    fn arc_override(&self) -> Option<String> {
        if self.trusted_arc_sealers.is_empty() || auth::arc().ok()? != ArcResult::Pass {
            return None;
        }
        let newest = auth::arc_sealers().ok()?.pop()?;
        let trusted = self
            .trusted_arc_sealers
            .iter()
            .any(|t| within(&newest.domain, t));
        let passed = newest
            .results
            .split(';')
            .any(|r| r.trim().to_ascii_lowercase().starts_with("dmarc=pass"));
        (trusted && passed).then_some(newest.domain)
    }

    fn trusted(&self, s: &SessionInfo, domains: &[&str]) -> bool {
        let ip = s.client_ip();
        self.trusted_networks.iter().any(|n| n.contains(ip))
            || domains.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                self.trusted_domains.iter().any(|t| within(&d, t))
            })
    }
}

fn spf_name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::None => "none",
        SpfResult::Neutral => "neutral",
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::Softfail => "softfail",
        SpfResult::Temperror => "temperror",
        SpfResult::Permerror => "permerror",
    }
}

/// An `Authentication-Results` field value claims `id` as its authserv-id.
fn claims(value: &str, id: &str) -> bool {
    let first = value.split(';').next().unwrap_or("").trim();
    // `authserv-id [version]`
    first
        .split_whitespace()
        .next()
        .is_some_and(|a| a.eq_ignore_ascii_case(id))
}

#[plugin]
impl Plugin for Auth {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&[
            "spf_fail",
            "dmarc_reject",
            "dmarc_quarantine",
            "temperror",
            "trusted_networks",
            "trusted_domains",
            "trusted_forwarders",
            "trusted_arc_sealers",
            "authserv_id",
            "add_header",
            "score_spf_fail",
            "score_spf_softfail",
            "score_dkim_fail",
            "score_dmarc_fail",
        ])?;
        let spf_fail = match config.str_or("spf_fail", "tag") {
            "reject-mail" => SpfAction::RejectMail,
            "reject-data" => SpfAction::RejectData,
            "tag" => SpfAction::Tag,
            "ignore" => SpfAction::Ignore,
            other => {
                return Err(format!(
                    "spf_fail: {other:?} is not reject-mail, reject-data, tag or ignore"
                ));
            }
        };
        let policy =
            |key: &str, default: &str, allow_reject: bool| -> Result<PolicyAction, String> {
                match config.str_or(key, default) {
                    "reject" if allow_reject => Ok(PolicyAction::Reject),
                    "quarantine" => Ok(PolicyAction::Quarantine),
                    "tag" => Ok(PolicyAction::Tag),
                    other => Err(format!("{key}: {other:?} is not an action")),
                }
            };
        let tempfail = match config.str_or("temperror", "tempfail") {
            "tempfail" => true,
            "ignore" => false,
            other => return Err(format!("temperror: {other:?} is not tempfail or ignore")),
        };
        let trusted_networks = config
            .list("trusted_networks")?
            .unwrap_or_default()
            .iter()
            .map(|n| Net::parse(n).ok_or(format!("trusted_networks: {n:?} is not a network")))
            .collect::<Result<Vec<_>, _>>()?;
        // Forwarders: what parses as a network is one, the rest are host names.
        let (forwarder_networks, forwarder_names): (Vec<_>, Vec<_>) =
            domains(config, "trusted_forwarders")?
                .into_iter()
                .map(|f| Net::parse(&f).ok_or(f))
                .partition(Result::is_ok);
        let forwarder_networks: Vec<Net> = forwarder_networks.into_iter().flatten().collect();
        let forwarder_names: Vec<String> = forwarder_names
            .into_iter()
            .filter_map(Result::err)
            .collect();
        let score = |key: &str| -> Result<f64, String> {
            let v: f64 = config.parse_or(key, 0.0)?;
            if v.is_finite() && v.abs() <= 1000.0 {
                Ok(v)
            } else {
                Err(format!("{key}: must be within ±1000"))
            }
        };
        Ok(Auth {
            spf_fail,
            dmarc_reject: policy("dmarc_reject", "reject", true)?,
            dmarc_quarantine: policy("dmarc_quarantine", "quarantine", false)?,
            tempfail,
            trusted_networks,
            trusted_domains: domains(config, "trusted_domains")?,
            trusted_forwarders: forwarder_names,
            forwarder_networks,
            trusted_arc_sealers: domains(config, "trusted_arc_sealers")?,
            authserv_id: config.get("authserv_id").map(str::to_string),
            add_header: config.bool_or("add_header", true)?,
            score_spf_fail: score("score_spf_fail")?,
            score_spf_softfail: score("score_spf_softfail")?,
            score_dkim_fail: score("score_dkim_fail")?,
            score_dmarc_fail: score("score_dmarc_fail")?,
            spf: None,
        })
    }

    fn on_mail_from(
        &mut self,
        s: &SessionInfo,
        sender: Option<&Address>,
        _: &MailParams,
    ) -> Outcome {
        self.spf = None;
        if self.spf_fail == SpfAction::Ignore {
            return Outcome::continue_();
        }
        let Ok(spf) = auth::spf() else {
            return Outcome::continue_();
        };
        self.spf = Some(spf.clone());
        let domain = sender.map(|a| a.domain.clone()).unwrap_or_default();
        if self.spf_fail == SpfAction::RejectMail
            && spf.outcome == SpfResult::Fail
            && !self.trusted(s, &[&domain])
            && !self.forwarder(s)
        {
            let why = spf.explanation.clone().unwrap_or_else(|| {
                format!("{} does not designate this host as a sender", spf.domain)
            });
            return Outcome::reject(550, "5.7.23", format!("SPF validation failed: {why}"));
        }
        Outcome::continue_()
    }

    fn on_data(&mut self, s: &SessionInfo, txn: &Transaction, m: &Message) -> DataOutcome {
        let mut out = DataOutcome::continue_();
        // The authserv-id: configured, or the one the host puts in its value.
        let header = auth::header_value().ok();
        let id = self.authserv_id.clone().or_else(|| {
            header
                .as_deref()
                .and_then(|h| h.split(';').next())
                .map(|a| a.trim().to_string())
        });
        // Forged results claiming to be ours go; others' stay.
        if let Some(id) = &id {
            for (i, v) in m.header("Authentication-Results").iter().enumerate().rev() {
                if claims(v, id) {
                    out = out.with_header_edit(HeaderEdit::remove_nth(
                        "Authentication-Results",
                        i as u32,
                    ));
                }
            }
        }
        if self.add_header
            && let Some(value) = &header
        {
            let value = value.replace("\r\n\t", " ").replace("\r\n", " ");
            let value = match (&self.authserv_id, value.split_once(';')) {
                (Some(own), Some((_, rest))) => format!("{own};{rest}"),
                _ => value,
            };
            out = out.with_header_edit(HeaderEdit::prepend("Authentication-Results", value));
        }

        let spf = self.spf.clone().or_else(|| auth::spf().ok());
        let dmarc = auth::dmarc().ok();
        let dkim = auth::dkim().unwrap_or_default();
        let from_domain = dmarc
            .as_ref()
            .map(|d| d.from_domain.clone())
            .unwrap_or_default();
        let sender = txn
            .sender
            .as_ref()
            .map(|a| a.domain.clone())
            .unwrap_or_default();
        let trusted = self.trusted(s, &[&from_domain, &sender]);

        let forwarder = self.forwarder(s);
        if forwarder {
            out = out.with_tag("auth:forwarder");
        }
        if let Some(spf) = &spf {
            out = out.with_tag(format!("spf:{}", spf_name(spf.outcome)));
            match spf.outcome {
                // Forwarding breaks SPF: a forwarder's SPF results count for nothing.
                _ if forwarder => {}
                SpfResult::Fail if self.score_spf_fail != 0.0 => {
                    out = out.with_score("SPF_FAIL", self.score_spf_fail);
                }
                SpfResult::Softfail if self.score_spf_softfail != 0.0 => {
                    out = out.with_score("SPF_SOFTFAIL", self.score_spf_softfail);
                }
                _ => {}
            }
        }
        if dkim.iter().any(|d| d.outcome == DkimResult::Pass) {
            out = out.with_tag("dkim:pass");
        } else if dkim.iter().any(|d| d.outcome == DkimResult::Fail) {
            out = out.with_tag("dkim:fail");
            if self.score_dkim_fail != 0.0 {
                out = out.with_score("DKIM_FAIL", self.score_dkim_fail);
            }
        }
        if let Ok(ArcResult::Pass) = auth::arc() {
            out = out.with_tag("arc:pass");
        }

        if let Some(spf) = &spf
            && self.spf_fail == SpfAction::RejectData
            && spf.outcome == SpfResult::Fail
            && !trusted
            && !forwarder
        {
            let why = spf.explanation.clone().unwrap_or_else(|| {
                format!("{} does not designate this host as a sender", spf.domain)
            });
            return verdict(
                out,
                DataVerdict::reject(550, "5.7.23", format!("SPF validation failed: {why}")),
            );
        }

        let Some(d) = dmarc else {
            return out;
        };
        match d.outcome {
            DmarcResult::Pass => out.with_tag("dmarc:pass"),
            DmarcResult::None => out,
            DmarcResult::Temperror if self.tempfail && !trusted => verdict(
                out,
                DataVerdict::tempfail(
                    451,
                    "4.7.5",
                    format!(
                        "Temporary DMARC error for {}, try again later",
                        d.from_domain
                    ),
                ),
            ),
            DmarcResult::Temperror | DmarcResult::Permerror => out,
            DmarcResult::Fail => {
                out = out.with_tag("dmarc:fail");
                if self.score_dmarc_fail != 0.0 {
                    out = out.with_score("DMARC_FAIL", self.score_dmarc_fail);
                }
                if trusted {
                    return out.with_reason("dmarc fail from a trusted source");
                }
                if forwarder {
                    return out.with_reason("dmarc fail from a trusted forwarder");
                }
                if let Some(sealer) = self.arc_override() {
                    return out.with_tag("dmarc:arc-override").with_reason(format!(
                        "dmarc fail overridden: {sealer} (a trusted ARC sealer) recorded dmarc=pass"
                    ));
                }
                let action = match d.policy {
                    Some(DmarcPolicy::Reject) => self.dmarc_reject,
                    Some(DmarcPolicy::Quarantine) => self.dmarc_quarantine,
                    _ => PolicyAction::Tag,
                };
                match action {
                    PolicyAction::Reject => verdict(
                        out,
                        DataVerdict::reject(
                            550,
                            "5.7.1",
                            format!(
                                "Email from {} rejected by its DMARC policy (p=reject): neither SPF nor DKIM aligned",
                                d.from_domain
                            ),
                        ),
                    ),
                    PolicyAction::Quarantine => verdict(
                        out,
                        DataVerdict::quarantine(format!(
                            "DMARC policy of {} (p={})",
                            d.from_domain,
                            if d.policy == Some(DmarcPolicy::Reject) {
                                "reject"
                            } else {
                                "quarantine"
                            }
                        )),
                    ),
                    PolicyAction::Tag => out,
                }
            }
        }
    }
}

export_plugin!(Auth);
