//! Delivery: what happens to a message after the session accepted it.
//!
//! Three modes (see the `[delivery]` configuration):
//! - **maildir** ([`Maildir`]): each recipient gets a copy in
//!   `<root>/<domain>/<local>/new/`, written via `tmp/` and fsynced before the `250`.
//! - **proxy** ([`ProxyTransaction`]): a before-queue relay. The upstream SMTP conversation
//!   follows the client's command by command, and the client receives the upstream's
//!   (sanitized) replies, so the gateway never accepts a message the next hop refused.
//! - **queue**: store-and-forward, in [`crate::queue`], which delivers each recipient to
//!   its [`Destination`] with the SMTP client here.
//!
//! Building blocks: [`received_header`] writes our `Received:` trace header,
//! [`dot_stuff`]/[`DotStuffer`] produce the DATA wire form, and [`SmtpClient`] is the
//! SMTP client (EHLO, STARTTLS, pipelined envelopes) used towards next hops.

pub mod client;
pub mod destination;
pub mod dotstuff;
pub mod maildir;
pub mod proxy;
pub mod received;

#[cfg(test)]
pub(crate) mod testutil;

pub use client::{
    AcceptAnyServerCert, ClientError, ClientIdentity, Extensions, Forwarding, SmtpClient, Timeouts,
    TlsPolicy, client_tls_config, connect_tcp,
};
pub use destination::{Destination, domain_of, literal_ip};
pub use dotstuff::{DotStuffer, dot_stuff};
pub use maildir::{Maildir, MaildirError};
pub use proxy::{Hop, ProxyTarget, ProxyTransaction};
pub use received::received_header;
