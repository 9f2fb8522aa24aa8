//! Delivery: what happens to a message after the session accepted it.
//!
//! Two modes (see the `[delivery]` configuration):
//! - **maildir** ([`Maildir`]): each recipient gets a copy in
//!   `<root>/<domain>/<local>/new/`, written via `tmp/` and fsynced before the `250`.
//! - **proxy** ([`ProxyTransaction`]): a before-queue relay. The upstream SMTP conversation
//!   follows the client's command by command, and the client receives the upstream's
//!   (sanitized) replies, so the gateway never accepts a message the next hop refused.
//!
//! Building blocks: [`received_header`] writes our `Received:` trace header,
//! [`dot_stuff`]/[`DotStuffer`] produce the DATA wire form, and [`SmtpClient`] is the
//! SMTP client used towards the upstream.

pub mod client;
pub mod dotstuff;
pub mod maildir;
pub mod proxy;
pub mod received;

#[cfg(test)]
mod testutil;

pub use client::{
    AcceptAnyServerCert, ClientError, Extensions, SmtpClient, Timeouts, TlsPolicy,
    client_tls_config, connect_tcp,
};
pub use dotstuff::{DotStuffer, dot_stuff};
pub use maildir::{Maildir, MaildirError};
pub use proxy::{ProxyTarget, ProxyTransaction};
pub use received::received_header;
