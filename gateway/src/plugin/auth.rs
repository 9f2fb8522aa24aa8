//! The host side of the `auth-results` capability: SPF (MAIL FROM and HELO), DKIM, DMARC,
//! ARC and iprev for the current session and message, computed through the gateway's own
//! resolver (hickory, with its cache and `[dns]` settings), on first use only, once per
//! session (HELO, iprev) or transaction (SPF, and the message checks), and shared by every
//! plugin that asks: no plugin pays twice, none pays if none asks.
//!
//! SPF is our own evaluation ([`crate::spf`]); DKIM, DMARC and ARC are mail-auth's, with
//! bounds and fixes of our own around it: every check is cut at [`CHECK_TIMEOUT`]
//! (`temperror`, never a failure), at most [`MAX_SIGNATURES`] DKIM signatures of a message
//! are verified (a message with 500 must not cost 500 key lookups), and the message text
//! is read whole only when a DKIM/DMARC/ARC result is asked for. RFC 8301, which mail-auth
//! 0.13 does not enforce: an `rsa-sha1` signature or one whose RSA key is under 1024 bits
//! is taken out before verification (so it never counts for DMARC) and reported as
//! `policy` / `fail` with the reason.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevOutput, IprevResult,
    MessageAuthenticator, SpfOutput, SpfResult,
};
use tokio::sync::OnceCell;

use super::body_hash;
use crate::smtp::MessageText;
use crate::spf;

/// Longest time one check may take (all its DNS lookups included).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// DKIM signatures verified per message (the first ones, top down).
pub const MAX_SIGNATURES: usize = 10;

/// The gateway's authenticator: mail-auth over the gateway's resolver.
pub struct Authenticator {
    inner: MessageAuthenticator,
    dns: crate::dns::Resolver,
    /// The time DKIM expiry (`x=`) is judged at; the system's without one.
    clock: Option<Arc<super::clock::PluginClock>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

impl Authenticator {
    /// Checks through `dns` (its servers, timeouts and cache).
    pub fn new(dns: &crate::dns::Resolver) -> Authenticator {
        Authenticator {
            inner: MessageAuthenticator(dns.hickory().clone()),
            dns: dns.clone(),
            clock: None,
        }
    }

    /// As [`Authenticator::new`], judging DKIM signatures' expiry (`x=`) at the time of
    /// `clock` (`mailgate plugin test --time`).
    pub fn with_clock(
        dns: &crate::dns::Resolver,
        clock: Arc<super::clock::PluginClock>,
    ) -> Authenticator {
        Authenticator {
            clock: Some(clock),
            ..Authenticator::new(dns)
        }
    }

    /// Now, unix seconds, as DKIM expiry is judged.
    fn now_secs(&self) -> u64 {
        match &self.clock {
            Some(c) => c.now_ms() / 1000,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// An SPF result for one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spf {
    /// The RFC 7208 result.
    pub result: SpfResult,
    /// The domain checked.
    pub domain: String,
    /// The `exp=` explanation of a fail.
    pub explanation: Option<String>,
}

/// The outcome class of a DKIM signature (RFC 8601 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkimOutcome {
    /// No signature.
    None,
    /// Verified.
    Pass,
    /// Did not verify.
    Fail,
    /// Verified, but not acceptable (e.g. `rsa-sha1`).
    Policy,
    /// Could not be judged (a syntax problem).
    Neutral,
    /// A temporary DNS failure.
    TempError,
    /// A permanent error (no key, bad key).
    PermError,
}

/// One DKIM signature's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dkim {
    /// What it came to.
    pub outcome: DkimOutcome,
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Why it failed.
    pub detail: Option<String>,
}

/// The outcome class of DMARC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarcOutcome {
    /// No policy published.
    None,
    /// Aligned SPF or DKIM pass.
    Pass,
    /// Neither aligned.
    Fail,
    /// A temporary DNS failure.
    TempError,
    /// A broken record.
    PermError,
}

/// DMARC for the From domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmarc {
    /// What it came to.
    pub outcome: DmarcOutcome,
    /// The RFC 5322 From domain.
    pub from_domain: String,
    /// The policy that applies (`sp=` for a subdomain), if a record was found.
    pub policy: Option<Policy>,
    /// SPF passed for an aligned domain.
    pub spf_aligned: bool,
    /// DKIM passed for an aligned domain.
    pub dkim_aligned: bool,
}

/// ARC chain validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArcChain {
    /// No chain.
    None,
    /// A valid chain.
    Pass,
    /// A broken chain.
    Fail,
}

/// One ARC set: who sealed it, and what its checks found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcSealer {
    /// `i=`.
    pub instance: u32,
    /// `d=` of the ARC-Seal, lowercase.
    pub domain: String,
    /// The ARC-Authentication-Results value after `i=N;`.
    pub results: String,
}

/// iprev for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iprev {
    /// Forward-confirmed reverse name.
    Pass,
    /// None, or not confirmed.
    Fail,
}

/// The message checks of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageChecks {
    /// One per verified signature (a single `None` entry without any).
    pub dkim: Vec<Dkim>,
    /// DMARC for the From domain.
    pub dmarc: Dmarc,
    /// ARC.
    pub arc: ArcChain,
    /// The ARC sets, oldest first, when the chain validates (empty otherwise).
    pub arc_sealers: Vec<ArcSealer>,
    /// The `Authentication-Results` value (without the field name) for all of it.
    pub header_value: String,
}

/// Why a result is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Not at this stage (no HELO yet, no MAIL FROM yet, no message yet).
    NotYet,
}

#[derive(Debug, Default)]
struct Txn {
    sender: Option<String>,
    spf: OnceCell<SpfOutput>,
    message: Mutex<Option<MessageText>>,
    checks: OnceCell<MessageChecks>,
}

/// One session's checks, shared by the session's plugin instances.
#[derive(Debug)]
pub struct SessionAuth {
    auth: Arc<Authenticator>,
    /// The `authserv-id` of `Authentication-Results` (our host name).
    authserv_id: String,
    client: IpAddr,
    iprev: Mutex<Iprev>,
    helo: Mutex<Option<(String, Arc<OnceCell<SpfOutput>>)>>,
    txn: Mutex<Arc<Txn>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spf_of(o: &SpfOutput) -> Spf {
    Spf {
        result: o.result(),
        domain: o.domain().to_string(),
        explanation: o.explanation().map(str::to_string),
    }
}

fn timed_out_spf(domain: &str) -> SpfOutput {
    SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError)
}

/// `check` bounded by [`CHECK_TIMEOUT`] (then `temperror` for `domain`).
async fn bounded_spf(check: impl Future<Output = SpfOutput>, domain: &str) -> SpfOutput {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| timed_out_spf(domain))
}

impl SessionAuth {
    /// Checks for a session from `client`, whose confirmed reverse name is `ptr`;
    /// `authserv_id` names us in `Authentication-Results`.
    pub fn new(
        auth: Arc<Authenticator>,
        authserv_id: String,
        client: IpAddr,
        ptr: Option<&str>,
    ) -> SessionAuth {
        SessionAuth {
            auth,
            authserv_id,
            client,
            iprev: Mutex::new(if ptr.is_some() {
                Iprev::Pass
            } else {
                Iprev::Fail
            }),
            helo: Mutex::new(None),
            txn: Mutex::new(Arc::default()),
        }
    }

    /// The client said HELO/EHLO `name`.
    pub fn helo(&self, name: &str) {
        let mut h = lock(&self.helo);
        if h.as_ref().is_none_or(|(n, _)| n != name) {
            *h = Some((name.to_string(), Arc::default()));
        }
    }

    /// A transaction starts with MAIL FROM `sender` (empty for `<>`).
    pub fn mail_from(&self, sender: &str) {
        *lock(&self.txn) = Arc::new(Txn {
            sender: Some(sender.to_string()),
            ..Txn::default()
        });
    }

    /// The message of the transaction arrived.
    pub fn message(&self, text: &MessageText) {
        let txn = Arc::clone(&lock(&self.txn));
        *lock(&txn.message) = Some(text.clone());
    }

    fn spf_request<'a>(&'a self, helo: &'a str, sender: &'a str) -> spf::Request<'a> {
        spf::Request {
            ip: self.client,
            helo,
            sender,
            receiver: &self.authserv_id,
        }
    }

    fn helo_name(&self) -> Option<(String, Arc<OnceCell<SpfOutput>>)> {
        lock(&self.helo).clone()
    }

    /// iprev for the client.
    pub fn iprev(&self) -> Iprev {
        *lock(&self.iprev)
    }

    /// SPF for the HELO identity.
    pub async fn spf_helo(&self) -> Result<Spf, Unavailable> {
        let (name, cell) = self.helo_name().ok_or(Unavailable::NotYet)?;
        let out = cell
            .get_or_init(|| async {
                let req = self.spf_request(&name, "");
                bounded_spf(spf::check_helo(&self.auth.dns, &req), &name).await
            })
            .await;
        Ok(spf_of(out))
    }

    /// SPF for the MAIL FROM identity (the HELO identity for `<>`).
    pub async fn spf(&self) -> Result<Spf, Unavailable> {
        let txn = Arc::clone(&lock(&self.txn));
        Ok(spf_of(self.spf_output(&txn).await?))
    }

    async fn spf_output<'a>(&self, txn: &'a Txn) -> Result<&'a SpfOutput, Unavailable> {
        let sender = txn.sender.as_deref().ok_or(Unavailable::NotYet)?;
        let helo = self.helo_name().map(|(n, _)| n).unwrap_or_default();
        Ok(txn
            .spf
            .get_or_init(|| async {
                // RFC 7208 2.4: the null sender is checked as postmaster@HELO.
                let req = self.spf_request(&helo, sender);
                let domain = match sender.rsplit_once('@') {
                    Some((_, d)) => d,
                    None if sender.is_empty() => helo.as_str(),
                    None => sender,
                };
                bounded_spf(spf::check_mail_from(&self.auth.dns, &req), domain).await
            })
            .await)
    }

    /// DKIM, DMARC and ARC for the transaction's message.
    pub async fn message_checks(&self) -> Result<MessageChecks, Unavailable> {
        let txn = Arc::clone(&lock(&self.txn));
        let text = lock(&txn.message).clone().ok_or(Unavailable::NotYet)?;
        let spf = self.spf_output(&txn).await?.clone();
        let sender = txn.sender.clone().unwrap_or_default();
        let checks = txn
            .checks
            .get_or_init(|| async {
                match tokio::time::timeout(CHECK_TIMEOUT, self.check_message(&text, &spf, &sender))
                    .await
                {
                    Ok(c) => c,
                    Err(_) => MessageChecks::timed_out(&self.authserv_id),
                }
            })
            .await;
        Ok(checks.clone())
    }

    async fn check_message(
        &self,
        text: &MessageText,
        spf: &SpfOutput,
        sender: &str,
    ) -> MessageChecks {
        let raw = match text.read_received(0, text.received_len()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the message for authentication");
                return MessageChecks::timed_out(&self.authserv_id);
            }
        };
        let helo = self.helo_name().map(|(n, _)| n).unwrap_or_default();
        // Not strict: signatures with `l=` are parsed, and judged in refuse_signatures.
        let Some(mut msg) = AuthenticatedMessage::parse_with_opts(&raw, None, false) else {
            return MessageChecks {
                dkim: vec![Dkim::none()],
                dmarc: Dmarc::none(""),
                arc: ArcChain::None,
                arc_sealers: vec![],
                header_value: format!("{}; none", self.authserv_id),
            };
        };
        if msg.dkim_headers.len() > MAX_SIGNATURES {
            tracing::info!(
                signatures = msg.dkim_headers.len(),
                verified = MAX_SIGNATURES,
                "message has more DKIM signatures than are verified"
            );
            msg.dkim_headers.truncate(MAX_SIGNATURES);
        }
        body_hash::fix_body_hashes(&mut msg);
        let refused = self.refuse_signatures(&mut msg).await;
        let dkim = self.auth.inner.verify_dkim(&msg).await;
        let arc = self.auth.inner.verify_arc(&msg).await;
        let mail_from_domain = if sender.is_empty() {
            helo.as_str()
        } else {
            sender.rsplit_once('@').map_or(sender, |(_, d)| d)
        };
        let dmarc = self
            .auth
            .inner
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, mail_from_domain, spf))
            .await;
        // RFC 7489 6.6.1: a message with several From header fields is a DMARC failure,
        // under the strictest policy among the From domains (the first 5).
        let several_from = msg
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"From"))
            .count()
            > 1;
        let mut dmarc = dmarc;
        if several_from {
            let mut one = msg.clone();
            let rank = |p: Policy| match p {
                Policy::Reject => 3,
                Policy::Quarantine => 2,
                Policy::None => 1,
                Policy::Unspecified => 0,
            };
            let mut strictest: Option<mail_auth::DmarcOutput> = None;
            for addr in msg.from.iter().take(5) {
                one.from = vec![addr.clone()];
                let out = self
                    .auth
                    .inner
                    .verify_dmarc(DmarcParameters::new(&one, &dkim, mail_from_domain, spf))
                    .await;
                if out.dmarc_record().is_some()
                    && strictest
                        .as_ref()
                        .is_none_or(|s| rank(out.policy()) > rank(s.policy()))
                {
                    strictest = Some(out);
                }
            }
            if let Some(s) = strictest {
                dmarc = s;
            }
        }
        let from_domain = msg
            .from
            .first()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let iprev = IprevOutput {
            result: match self.iprev() {
                Iprev::Pass => IprevResult::Pass,
                Iprev::Fail => IprevResult::Fail(mail_auth::Error::NotAligned),
            },
            ptr: None,
        };
        let mut results =
            AuthenticationResults::new(&self.authserv_id).with_dkim_results(&dkim, &from_domain);
        results = if sender.is_empty() {
            results.with_spf_ehlo_result(spf, self.client, &helo)
        } else {
            results.with_spf_mailfrom_result(spf, self.client, sender, &helo)
        };
        let mut results = results
            .with_dmarc_result(&dmarc)
            .with_arc_result(&arc, self.client);
        // iprev only when the gateway looks the client's name up (`dns.reverse_lookup`).
        if self.auth.dns.settings().reverse_lookup {
            results = results.with_iprev_result(&iprev, self.client);
        }
        // RFC 6376 6.3: a body hash that does not match makes the signature fail
        // (mail-auth 0.13 says "neutral").
        // So does an ARC set whose message signature's body hash fails (RFC 8617 5.2).
        let mut header_value = results
            .to_string()
            .replace(
                "dkim=neutral (body hash did not verify)",
                "dkim=fail (body hash did not verify)",
            )
            .replace(
                "arc=neutral (body hash did not verify)",
                "arc=fail (body hash did not verify)",
            )
            .replace(
                "iprev=fail (policy not aligned)",
                "iprev=fail (no forward-confirmed reverse name)",
            );
        if several_from && let Some(at) = header_value.find("dmarc=") {
            let end = header_value[at..]
                .find([' ', ';'])
                .map_or(header_value.len(), |e| at + e);
            header_value.replace_range(at..end, "dmarc=fail (several From header fields)");
        }
        for r in &refused {
            let outcome = if r.outcome == DkimOutcome::Policy {
                "policy"
            } else {
                "fail"
            };
            header_value.push_str(&format!(
                ";\r\n\tdkim={outcome} ({}) header.d={} header.s={}",
                r.detail.as_deref().unwrap_or(""),
                r.domain,
                r.selector
            ));
        }
        let dkim: Vec<Dkim> = if dkim.is_empty() && refused.is_empty() {
            vec![Dkim::none()]
        } else {
            dkim.iter()
                .map(|d| {
                    let (outcome, detail) = match d.result() {
                        DkimResult::Pass => (DkimOutcome::Pass, None),
                        DkimResult::Fail(e) => (DkimOutcome::Fail, Some(e.to_string())),
                        DkimResult::Neutral(
                            e @ mail_auth::Error::Dkim(
                                mail_auth::dkim::DkimError::FailedBodyHashMatch,
                            ),
                        ) => (DkimOutcome::Fail, Some(e.to_string())),
                        DkimResult::Neutral(e) => (DkimOutcome::Neutral, Some(e.to_string())),
                        DkimResult::PermError(e) => (DkimOutcome::PermError, Some(e.to_string())),
                        DkimResult::TempError(e) => (DkimOutcome::TempError, Some(e.to_string())),
                        DkimResult::None => (DkimOutcome::None, None),
                    };
                    Dkim {
                        outcome,
                        domain: d.signature().map(|s| s.d.clone()).unwrap_or_default(),
                        selector: d.signature().map(|s| s.s.clone()).unwrap_or_default(),
                        detail,
                    }
                })
                .chain(refused)
                .collect()
        };
        let outcome = match dmarc.result() {
            _ if several_from => DmarcOutcome::Fail,
            DmarcResult::Pass => DmarcOutcome::Pass,
            DmarcResult::Fail(_) => DmarcOutcome::Fail,
            DmarcResult::TempError(_) => DmarcOutcome::TempError,
            DmarcResult::PermError(_) => DmarcOutcome::PermError,
            DmarcResult::None => DmarcOutcome::None,
        };
        let mut policy = dmarc
            .dmarc_record()
            .is_some()
            .then(|| dmarc.policy())
            .filter(|p| *p != Policy::Unspecified);
        // RFC 7489 6.6.4 `pct` (mail-auth 0.13 follows DMARCbis and ignores it): a
        // message outside the sample gets the next lower policy.
        if let Some(p) = policy
            && p != Policy::None
            && let Some(pct) = self.dmarc_pct(dmarc.domain()).await
            && pct < 100
            && rand::random_range(0..100u8) >= pct
        {
            policy = Some(match p {
                Policy::Reject => Policy::Quarantine,
                _ => Policy::None,
            });
        }
        MessageChecks {
            dkim,
            dmarc: Dmarc {
                outcome,
                from_domain: if dmarc.domain().is_empty() {
                    from_domain
                } else {
                    dmarc.domain().to_string()
                },
                policy,
                spf_aligned: *dmarc.spf_result() == DmarcResult::Pass,
                dkim_aligned: *dmarc.dkim_result() == DmarcResult::Pass,
            },
            arc: match arc.result() {
                DkimResult::Pass => ArcChain::Pass,
                DkimResult::None => ArcChain::None,
                _ => ArcChain::Fail,
            },
            arc_sealers: if *arc.result() == DkimResult::Pass {
                arc_sealers(&msg)
            } else {
                vec![]
            },
            header_value,
        }
    }

    /// Takes out of `msg`, before verification, expired signatures, the ones RFC 8301 forbids
    /// (`rsa-sha1`, and RSA keys under 1024 bits: the key is looked up here, through the
    /// resolver's cache, which mail-auth would have done anyway), and those whose `l=`
    /// leaves part of the body unsigned (RFC 6376 8.2: content can be appended to them).
    /// Returns their results.
    async fn refuse_signatures(&self, msg: &mut AuthenticatedMessage<'_>) -> Vec<Dkim> {
        use mail_auth::common::crypto::Algorithm;
        use mail_auth::dkim::Canonicalization;
        let body = body_hash::body(msg);
        let now = self.auth.now_secs();
        let mut refused = Vec::new();
        let mut kept = Vec::new();
        for h in std::mem::take(&mut msg.dkim_headers) {
            let sig = &h.header;
            let unsigned = (sig.l > 0)
                .then(|| {
                    body_hash::canonical_len(body, sig.cb == Canonicalization::Relaxed)
                        .saturating_sub(sig.l)
                })
                .filter(|n| *n > 0);
            // RFC 6376 3.5: x= must be after t=, and not past (mail-auth says "neutral"
            // with a generic text; a verifier treats it as a failure).
            let expired = sig.x != 0 && (sig.x <= sig.t || sig.x < now);
            let weak = match sig.a {
                _ if expired => Some((
                    DkimOutcome::Fail,
                    format!("signature expired (x={})", sig.x),
                )),
                _ if unsigned.is_some() => Some((
                    DkimOutcome::Policy,
                    format!(
                        "l={} leaves {} body octets unsigned",
                        sig.l,
                        unsigned.unwrap_or_default()
                    ),
                )),
                Algorithm::RsaSha1 => Some((
                    DkimOutcome::Policy,
                    "rsa-sha1 is not accepted (RFC 8301)".to_string(),
                )),
                Algorithm::RsaSha256 => match self.rsa_key_bits(&sig.s, &sig.d).await {
                    Some(bits) if bits < 1024 => Some((
                        DkimOutcome::Fail,
                        format!("RSA key of {bits} bits is under 1024 (RFC 8301)"),
                    )),
                    _ => None,
                },
                Algorithm::Ed25519Sha256 => None,
            };
            match weak {
                Some((outcome, detail)) => refused.push(Dkim {
                    outcome,
                    domain: sig.d.clone(),
                    selector: sig.s.clone(),
                    detail: Some(detail),
                }),
                None => {
                    // Expiry is judged here, at our clock's time: mail-auth, which would
                    // judge it again at the system's, is told the signature has none (the
                    // signed header bytes, not this parsed copy, are what is verified).
                    let mut h = h;
                    h.header.x = 0;
                    kept.push(h);
                }
            }
        }
        msg.dkim_headers = kept;
        refused
    }

    /// The `pct=` of the DMARC record that applies to `domain` (its own, or the first one
    /// up the tree), if it has one.
    async fn dmarc_pct(&self, domain: &str) -> Option<u8> {
        let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
        // Bounded: at most the labels of the domain, and no more than 8 lookups.
        for i in 0..labels.len().saturating_sub(1).min(8) {
            let name = format!("_dmarc.{}.", labels[i..].join("."));
            let Ok(record) = self.auth.inner.txt_raw_lookup(name).await else {
                continue;
            };
            let record = String::from_utf8_lossy(&record).into_owned();
            if !record
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("v=dmarc1")
            {
                continue;
            }
            return record
                .split(';')
                .filter_map(|t| t.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
                .and_then(|(_, v)| v.trim().parse::<u8>().ok())
                .map(|p| p.min(100));
        }
        None
    }

    /// The size of the RSA key published at `selector._domainkey.domain`, if there is one
    /// that parses.
    async fn rsa_key_bits(&self, selector: &str, domain: &str) -> Option<usize> {
        use base64::Engine;
        use rsa::pkcs1::DecodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let name = format!("{selector}._domainkey.{domain}.");
        let record = self.auth.inner.txt_raw_lookup(name).await.ok()?;
        let record = String::from_utf8_lossy(&record);
        let p = record
            .split(';')
            .filter_map(|t| t.split_once('='))
            .find(|(k, _)| k.trim() == "p")?
            .1;
        let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(p).ok()?;
        let key = rsa::RsaPublicKey::from_public_key_der(&der)
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(&der))
            .ok()?;
        Some(key.n().bits())
    }
}

/// The ARC sets of a message whose chain validated, oldest first: each seal's `d=` with the
/// ARC-Authentication-Results of the same instance.
fn arc_sealers(msg: &AuthenticatedMessage<'_>) -> Vec<ArcSealer> {
    let mut sealers: Vec<ArcSealer> = msg
        .as_headers
        .iter()
        .map(|seal| {
            let i = seal.header.i;
            let results = msg
                .aar_headers
                .iter()
                .find(|r| r.header.i == i)
                .map(|r| {
                    let v = String::from_utf8_lossy(r.value);
                    let v = v.replace("\r\n", "");
                    v.split_once(';')
                        .map_or(String::new(), |(_, rest)| rest.trim().to_string())
                })
                .unwrap_or_default();
            ArcSealer {
                instance: i,
                domain: seal.header.d.to_ascii_lowercase(),
                results,
            }
        })
        .collect();
    sealers.sort_by_key(|s| s.instance);
    sealers
}

impl Dkim {
    fn none() -> Dkim {
        Dkim {
            outcome: DkimOutcome::None,
            domain: String::new(),
            selector: String::new(),
            detail: None,
        }
    }
}

impl Dmarc {
    fn none(from: &str) -> Dmarc {
        Dmarc {
            outcome: DmarcOutcome::None,
            from_domain: from.to_string(),
            policy: None,
            spf_aligned: false,
            dkim_aligned: false,
        }
    }
}

impl MessageChecks {
    /// The checks could not finish in time: every result a temporary error.
    fn timed_out(authserv_id: &str) -> MessageChecks {
        MessageChecks {
            dkim: vec![Dkim {
                outcome: DkimOutcome::TempError,
                ..Dkim::none()
            }],
            dmarc: Dmarc {
                outcome: DmarcOutcome::TempError,
                ..Dmarc::none("")
            },
            arc: ArcChain::None,
            arc_sealers: vec![],
            header_value: format!("{authserv_id}; dkim=temperror; dmarc=temperror"),
        }
    }
}
