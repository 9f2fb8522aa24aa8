//! The SMTP protocol core, sans-I/O: bytes in, [`Step`]s out. No sockets, no tokio, no
//! clock. The tokio driver in `server/` feeds bytes and carries out the steps.
//!
//! ```text
//! loop {
//!     match session.step() {
//!         Step::Send(bytes)   => write bytes to the client
//!         Step::NeedInput     => read; session.feed(&buf) or session.feed_eof()
//!         Step::Hook(hook)    => ask the plugin chain; session.resolve(resolution)
//!         Step::Seal(tail)    => append tail to the spill file; session.sealed(file)
//!         Step::Deliver(msg)  => deliver; session.resolve(Resolution::Reply(final reply))
//!         Step::StartTls      => handshake; session.tls_established(info)
//!         Step::Close         => close the connection
//!     }
//! }
//! ```
//!
//! Message content need not stay in memory: while it arrives, the driver may move what
//! the session holds to a file (`session.take_content()`), and the session then asks for
//! the file back when the message is complete (`Step::Seal`).

pub mod address;
pub mod command;
pub mod envelope;
pub mod facts;
pub mod reply;
pub mod session;
pub mod text;

pub use envelope::{BodyType, Envelope, MailParams, Message};
pub use facts::{Helo, Listener, SessionFacts, TlsInfo};
pub use reply::{Enhanced, Reply};
pub use session::{Hook, ReadTimeout, Refused, Resolution, Session, SessionConfig, Step};
pub use text::{Backing, MessageText};

#[cfg(test)]
mod transcript_tests;
