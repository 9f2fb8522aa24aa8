//! SPF (RFC 7208): `check_host()` of our own, over the gateway's resolver, with mail-auth's
//! record parser and macro expander. (Stub: being written.)

use std::net::IpAddr;

use mail_auth::{MessageAuthenticator, SpfOutput};

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
pub async fn check_mail_from(dns: &crate::dns::Resolver, req: &Request<'_>) -> SpfOutput {
    let auth = MessageAuthenticator(dns.hickory().clone());
    let sender = if req.sender.is_empty() {
        format!("postmaster@{}", req.helo)
    } else {
        req.sender.to_string()
    };
    auth.verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(
        req.ip,
        req.helo,
        req.receiver,
        &sender,
    ))
    .await
}

/// SPF for the HELO identity (RFC 7208 2.3).
pub async fn check_helo(dns: &crate::dns::Resolver, req: &Request<'_>) -> SpfOutput {
    let auth = MessageAuthenticator(dns.hickory().clone());
    auth.verify_spf(mail_auth::spf::verify::SpfParameters::verify_ehlo(
        req.ip,
        req.helo,
        req.receiver,
    ))
    .await
}
