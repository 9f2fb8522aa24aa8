//! The SMTP session state machine (sans-I/O): the driver feeds bytes and carries out the
//! [`Step`]s this returns. Every protocol rule lives here, so each is a plain synchronous
//! transcript test.
//!
//! Reply choices where the RFCs leave room:
//! - bare CR or LF in message data (SMTP smuggling): the data is read to the real
//!   `CRLF.CRLF`, nothing is delivered, `554 5.6.0`; in a command line: `500 5.5.2`;
//! - message text line longer than `max_text_line`: `554 5.6.0` after the end of data;
//! - message larger than `max_message_size`: read to the end, `552 5.3.4`;
//! - command line longer than `max_command_line`: `500 5.5.6`;
//! - BDAT with an unreadable size: `501 5.5.4`, then the connection is closed, because
//!   the chunk boundary is lost;
//! - a client that talks before the greeting: `554 5.5.0`, then close;
//! - commands pipelined without EHLO: `554 5.5.0`, the buffered input is discarded;
//! - after `max_errors` error replies: `421 4.7.0`, then close.

mod commands;
mod data;

use std::sync::Arc;

use super::command::{self, Command};
use super::envelope::{Envelope, MailParams, Message};
use super::facts::{Helo, SessionFacts, TlsInfo};
use super::reply::Reply;
use super::text::{Backing, MessageText};
use data::Content;

/// Protocol settings shared by all sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our host name (greeting, EHLO, replies).
    pub hostname: String,
    /// Largest message, announced with SIZE and enforced.
    pub max_message_size: usize,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Recipients past `max_recipients` refused with `452` before each further one counts
    /// as an error (RFC 5321 4.5.3.1.10: refuse the extra ones, keep the transaction).
    pub max_recipient_overshoot: usize,
    /// Local parts that differ only in case name one mailbox (duplicates at RCPT).
    pub fold_local_part: bool,
    /// Longest command line including CRLF.
    pub max_command_line: usize,
    /// Longest message text line including CRLF.
    pub max_text_line: usize,
    /// Error replies before the session is closed.
    pub max_errors: usize,
    /// `Received:` headers a message may carry; more is a mail loop (`554 5.4.6`).
    pub max_hops: usize,
    /// EHLO/HELO/RSET/NOOP/VRFY/HELP since the last accepted message before each
    /// further one counts as an error.
    pub max_junk_commands: usize,
    /// STARTTLS can be offered.
    pub starttls: bool,
    /// Lowercase domains we accept mail for.
    pub local_domains: Vec<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_recipient_overshoot: 1000,
            fold_local_part: true,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            max_hops: 50,
            max_junk_commands: 100,
            starttls: false,
            local_domains: Vec::new(),
        }
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Step {
    /// Write these bytes to the client, then call `step()` again.
    Send(Vec<u8>),
    /// Read more; then `feed()` or `feed_eof()`, then `step()`.
    NeedInput,
    /// Ask the plugin chain; `resolve()` before the next `step()`.
    Hook(Hook),
    /// The message is complete and part of it was taken with
    /// [`Session::take_content`]: append these last octets to the same file, then
    /// [`Session::sealed`] with the file (or [`Session::seal_failed`]) before `step()`.
    Seal(Vec<u8>),
    /// Deliver, then `resolve(Resolution::Reply(final reply))`.
    Deliver(Box<Message>),
    /// The 220 was sent: do the TLS handshake, then `tls_established()`.
    StartTls,
    /// Close the connection.
    Close,
}

/// A hook point: the plugin seam.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Before the greeting.
    Connect,
    /// HELO or EHLO.
    Helo {
        /// The name the client gave.
        name: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// MAIL FROM passed our checks.
    MailFrom {
        /// Reverse-path without brackets; empty for `<>`.
        address: String,
        /// MAIL parameters.
        params: MailParams,
    },
    /// RCPT TO passed our checks (syntax, relay, limits).
    RcptTo {
        /// Forward-path without brackets.
        address: String,
    },
    /// The message is complete and valid; see [`Session::message`].
    Data,
}

/// The answer to a [`Step::Hook`] or [`Step::Deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Go on with the default reply.
    Continue,
    /// Use this reply (2xx accepts, 4xx/5xx refuses, 421 closes).
    Reply(Reply),
    /// Refuse with this reply, then close the connection.
    Disconnect(Reply),
}

/// A message the session refused after receiving it (content checks or the DATA hook),
/// for the driver's per-message log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The transaction's envelope.
    pub envelope: Envelope,
    /// Octets received (after dot-unstuffing; capped counting stops at the size limit).
    pub size: usize,
    /// The reply the client got.
    pub reply: Reply,
}

/// Which read timeout applies now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTimeout {
    /// Waiting for a command.
    Command,
    /// Waiting for message data.
    Data,
}

#[derive(Debug)]
enum Phase {
    Start,
    Greeting,
    Command,
    Data,
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
        error: Option<Reply>,
    },
    /// Paused at a hook until `resolve()`.
    Awaiting(Hook),
    /// The spilled message's end went out in `Step::Seal`; waiting for `sealed()`.
    Sealing,
    /// The message went out in `Step::Deliver`; waiting for the final reply.
    Delivering,
    StartTls,
    Closed,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    facts: SessionFacts,
    input: Vec<u8>,
    out: Vec<u8>,
    next: Option<Step>,
    phase: Phase,
    eof: bool,
    in_txn: bool,
    envelope: Envelope,
    /// Message content while it arrives (what the driver has not taken yet).
    data: Vec<u8>,
    /// Octets of this message's content the driver took with `take_content`.
    spilled: usize,
    /// A copy of a spilled message's first octets (up to `text::FRONT`), for the hop
    /// count and header parsing.
    front: Vec<u8>,
    /// The complete message, once DATA/BDAT ended, while the DATA hook runs.
    text: MessageText,
    content: Content,
    bdat_used: bool,
    errors: usize,
    closing: bool,
    discard_line: bool,
    timed_out: bool,
    shutting_down: bool,
    messages: usize,
    received: usize,
    /// Recipients refused past `max_recipients` in this transaction.
    overshoot: usize,
    /// Junk commands since the last accepted message.
    junk: usize,
    refused: Option<Refused>,
}

/// The text of the HELO/EHLO reply's first line: `<host> Hello <name>`, the name cut
/// short (`...`) so that the line stays within 512 octets (RFC 5321 4.5.3.1.5).
fn hello(host: &str, name: &str) -> String {
    // "250-" and CRLF around the text.
    const MAX_TEXT: usize = 512 - 6;
    let text = format!("{host} Hello {name}");
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut cut = MAX_TEXT.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

impl Session {
    /// A new session; its first step is `Hook(Connect)`. `facts` come from the driver
    /// (TLS already set for implicit-TLS listeners; no HELO yet).
    pub fn new(cfg: Arc<SessionConfig>, facts: SessionFacts) -> Session {
        Session {
            cfg,
            facts,
            input: Vec::new(),
            out: Vec::new(),
            next: None,
            phase: Phase::Start,
            eof: false,
            in_txn: false,
            envelope: Envelope::default(),
            data: Vec::new(),
            spilled: 0,
            front: Vec::new(),
            text: MessageText::default(),
            content: Content::default(),
            bdat_used: false,
            errors: 0,
            closing: false,
            discard_line: false,
            timed_out: false,
            shutting_down: false,
            messages: 0,
            received: 0,
            overshoot: 0,
            junk: 0,
            refused: None,
        }
    }

    /// The last message refused after it was received, once (see [`Refused`]).
    pub fn take_refused(&mut self) -> Option<Refused> {
        self.refused.take()
    }

    /// Refuses the message just received: records it for the log, resets, replies.
    fn refuse_message(&mut self, reply: Reply) {
        self.refused = Some(Refused {
            envelope: std::mem::take(&mut self.envelope),
            size: self.received,
            reply: reply.clone(),
        });
        self.reset_txn();
        self.send(reply);
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, input: &[u8]) {
        if !matches!(self.phase, Phase::Closed) {
            self.input.extend_from_slice(input);
        }
    }

    /// The client closed its side.
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// The driver's read timeout fired.
    pub fn timed_out(&mut self) {
        self.timed_out = true;
    }

    /// The server is shutting down: close at the next command boundary.
    pub fn shutting_down(&mut self) {
        self.shutting_down = true;
    }

    /// The session has ended (its last reply may still be unsent).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The read timeout that applies now.
    pub fn read_timeout(&self) -> ReadTimeout {
        match self.phase {
            Phase::Data | Phase::Bdat { .. } => ReadTimeout::Data,
            _ => ReadTimeout::Command,
        }
    }

    /// The message under evaluation during `Hook::Data` (cloning it copies nothing).
    pub fn message(&self) -> Option<&MessageText> {
        match self.phase {
            Phase::Awaiting(Hook::Data) => Some(&self.text),
            _ => None,
        }
    }

    /// Octets of message content the session holds in memory now (what it has
    /// allocated for the message being received, or the complete message while the
    /// DATA hook runs, unless that was spilled).
    pub fn held_bytes(&self) -> usize {
        self.data.capacity() + self.front.capacity() + self.text.memory_len()
    }

    /// Octets of the message being received that the driver may take now.
    pub fn content_len(&self) -> usize {
        self.data.len()
    }

    /// Octets of the message being received that the driver has taken; zero when no
    /// transaction holds spilled content (so a spill file the driver still has belongs
    /// to a message that ended: refused, reset or delivered).
    pub fn spilled(&self) -> usize {
        self.spilled
    }

    /// Takes the content of the message being received that the session holds, for
    /// the driver to append to a file (in order: each call continues where the last one
    /// ended). The session keeps a copy of the first octets for header checks, and at
    /// the end of the message asks for the rest to be appended ([`Step::Seal`]).
    pub fn take_content(&mut self) -> Vec<u8> {
        let taken = std::mem::take(&mut self.data);
        self.keep_front(&taken);
        self.spilled += taken.len();
        taken
    }

    /// Copies the start of `more` into the front copy, up to `text::FRONT` in all.
    fn keep_front(&mut self, more: &[u8]) {
        let want = super::text::FRONT.saturating_sub(self.front.len());
        if more.is_empty() || want == 0 {
            return;
        }
        if self.front.capacity() == 0 {
            self.front.reserve_exact(super::text::FRONT);
        }
        self.front.extend_from_slice(&more[..want.min(more.len())]);
    }

    /// The driver appended the octets of [`Step::Seal`]: `back` holds the whole
    /// message. The DATA hook comes next.
    pub fn sealed(&mut self, back: std::sync::Arc<dyn Backing>) {
        if !matches!(self.phase, Phase::Sealing) {
            debug_assert!(false, "sealed() without Step::Seal");
            return;
        }
        let front = std::mem::take(&mut self.front);
        self.text = MessageText::spilled(front, back, self.spilled);
        self.pause(Hook::Data);
    }

    /// The driver could not keep the spilled message (disk full, I/O error): it is
    /// refused with `452 4.3.1`, and the session goes on.
    pub fn seal_failed(&mut self) {
        if !matches!(self.phase, Phase::Sealing) {
            debug_assert!(false, "seal_failed() without Step::Seal");
            return;
        }
        self.phase = Phase::Command;
        self.refuse_message(Reply::new(
            452,
            "4.3.1",
            "Insufficient system storage, try again later",
        ));
    }

    /// The driver has no memory left for message content: the message being received is
    /// dropped and read to its end, and its end answered `452 4.3.1`. Nothing changes
    /// outside message data.
    pub fn out_of_memory(&mut self) {
        if matches!(self.phase, Phase::Data | Phase::Bdat { .. }) {
            self.content.no_memory = true;
            self.data = Vec::new();
        }
    }

    /// The current transaction.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The HELO/EHLO name, once accepted.
    pub fn helo(&self) -> Option<&str> {
        self.facts.helo_name()
    }

    /// TLS in use, if any.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.facts.tls.as_ref()
    }

    /// The id the current (or next) transaction's message gets: `<session-id>.<n>`.
    pub fn transaction_id(&self) -> String {
        format!("{}.{}", self.facts.id, self.messages + 1)
    }

    /// What is known about the session now (HELO, TLS, ...).
    pub fn facts(&self) -> &SessionFacts {
        &self.facts
    }

    /// The TLS handshake after `Step::StartTls` succeeded: start afresh (RFC 3207 4.2).
    pub fn tls_established(&mut self, info: TlsInfo) {
        debug_assert!(matches!(self.phase, Phase::StartTls));
        self.facts.tls = Some(info);
        self.facts.helo = None;
        self.reset_txn();
        self.input.clear();
        self.phase = Phase::Command;
    }

    fn take_out(&mut self) -> Step {
        Step::Send(std::mem::take(&mut self.out))
    }

    /// Sends a reply that is not the client's error (it does not count towards
    /// `max_errors`).
    fn send_uncounted(&mut self, r: Reply) {
        r.write_to(&mut self.out);
    }

    fn send(&mut self, r: Reply) {
        r.write_to(&mut self.out);
        if r.code() == 421 {
            self.closing = true;
        } else if r.code() >= 400 {
            self.count_error();
        }
    }

    /// One more error; at `max_errors` the session says `421 4.7.0` and closes.
    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            let host = self.cfg.hostname.clone();
            Reply::new(421, "4.7.0", format!("{host} Error: too many errors"))
                .write_to(&mut self.out);
            self.closing = true;
        }
    }

    fn reset_txn(&mut self) {
        self.received = 0;
        self.overshoot = 0;
        self.in_txn = false;
        self.envelope = Envelope::default();
        self.data = Vec::new();
        self.spilled = 0;
        self.front = Vec::new();
        self.text = MessageText::default();
        self.content = Content::default();
        self.bdat_used = false;
    }

    fn pause(&mut self, hook: Hook) {
        self.phase = Phase::Awaiting(hook.clone());
        self.next = Some(Step::Hook(hook));
    }

    /// Answers the last `Hook` or `Deliver`.
    pub fn resolve(&mut self, resolution: Resolution) {
        let pending = match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Awaiting(hook) => Some(hook),
            Phase::Delivering => None,
            _ => {
                debug_assert!(false, "resolve() without a pending hook");
                return;
            }
        };
        let disconnect = matches!(resolution, Resolution::Disconnect(_));
        let refused = match &resolution {
            Resolution::Reply(r) if !r.is_positive() => Some(r.clone()),
            Resolution::Disconnect(r) => Some(r.clone()),
            _ => None,
        };
        let given = match resolution {
            Resolution::Reply(r) | Resolution::Disconnect(r) => Some(r),
            Resolution::Continue => None,
        };
        if disconnect {
            self.closing = true;
        }
        let host = self.cfg.hostname.clone();
        match pending {
            Some(Hook::Connect) => match refused {
                Some(r) => {
                    r.write_to(&mut self.out);
                    self.closing = true;
                }
                None => {
                    self.phase = Phase::Greeting;
                    if let Some(r) = given {
                        self.next = Some(Step::Send(r.to_bytes()));
                    }
                }
            },
            Some(Hook::Helo { name, extended }) => match refused {
                Some(r) => self.send(r),
                None => {
                    self.facts.helo = Some(Helo {
                        name: name.clone(),
                        extended,
                    });
                    let reply = if extended {
                        let mut lines = vec![hello(&host, &name)];
                        lines.push("PIPELINING".into());
                        lines.push(format!("SIZE {}", self.cfg.max_message_size));
                        lines.push("8BITMIME".into());
                        lines.push("SMTPUTF8".into());
                        lines.push("ENHANCEDSTATUSCODES".into());
                        lines.push("CHUNKING".into());
                        if self.cfg.starttls && self.facts.tls.is_none() {
                            lines.push("STARTTLS".into());
                        }
                        Reply::multiline(250, None, lines)
                    } else {
                        Reply::plain(250, hello(&host, &name))
                    };
                    self.send(reply);
                }
            },
            Some(Hook::MailFrom { address, params }) => match refused {
                Some(r) => self.send(r),
                None => {
                    self.in_txn = true;
                    self.envelope.mail_from = address.clone();
                    self.envelope.params = params;
                    self.send(given.unwrap_or_else(|| {
                        Reply::new(250, "2.1.0", format!("Sender <{address}> ok"))
                    }));
                }
            },
            Some(Hook::RcptTo { address }) => match refused {
                Some(r) => self.send(r),
                None => {
                    self.envelope.rcpt_to.push(address.clone());
                    self.send(given.unwrap_or_else(|| {
                        Reply::new(250, "2.1.5", format!("Recipient <{address}> ok"))
                    }));
                }
            },
            Some(Hook::Data) => match refused {
                Some(r) => self.refuse_message(r),
                None => {
                    self.messages += 1;
                    self.junk = 0;
                    let message = Message {
                        id: format!("{}.{}", self.facts.id, self.messages),
                        envelope: self.envelope.clone(),
                        text: std::mem::take(&mut self.text),
                        session: self.facts.clone(),
                    };
                    self.phase = Phase::Delivering;
                    self.next = Some(Step::Deliver(Box::new(message)));
                }
            },
            None => {
                let id = format!("{}.{}", self.facts.id, self.messages);
                self.reset_txn();
                self.send(
                    given
                        .unwrap_or_else(|| Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))),
                );
            }
        }
    }

    /// The next thing the driver must do.
    pub fn step(&mut self) -> Step {
        // Bounded: every pass either returns or consumes input / changes phase.
        loop {
            if let Some(next) = self.next.take() {
                if !self.out.is_empty() {
                    self.next = Some(next);
                    return self.take_out();
                }
                return next;
            }
            if self.timed_out && !matches!(self.phase, Phase::Closed) {
                self.timed_out = false;
                self.out.clear();
                let host = self.cfg.hostname.clone();
                Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded"))
                    .write_to(&mut self.out);
                self.closing = true;
            }
            if self.closing {
                self.closing = false;
                self.phase = Phase::Closed;
            }
            match self.phase {
                Phase::Closed => {
                    if !self.out.is_empty() {
                        return self.take_out();
                    }
                    return Step::Close;
                }
                Phase::Start => {
                    self.pause(Hook::Connect);
                }
                Phase::Awaiting(_) | Phase::Delivering | Phase::Sealing => {
                    debug_assert!(false, "step() while a hook is pending");
                    return Step::Close;
                }
                Phase::StartTls => return Step::Close,
                Phase::Greeting => {
                    if !self.input.is_empty() {
                        let host = self.cfg.hostname.clone();
                        Reply::new(
                            554,
                            "5.5.0",
                            format!("{host} Protocol error: client spoke before greeting"),
                        )
                        .write_to(&mut self.out);
                        self.input.clear();
                        self.closing = true;
                        continue;
                    }
                    if self.eof {
                        self.phase = Phase::Closed;
                        continue;
                    }
                    let host = self.cfg.hostname.clone();
                    Reply::plain(220, format!("{host} ESMTP mailgate")).write_to(&mut self.out);
                    self.phase = Phase::Command;
                }
                Phase::Command => {
                    if let Some(step) = self.command_step() {
                        return step;
                    }
                }
                Phase::Data => {
                    if let Some(step) = self.data_step() {
                        return step;
                    }
                }
                Phase::Bdat { .. } => {
                    if let Some(step) = self.bdat_step() {
                        return step;
                    }
                }
            }
        }
    }

    fn need_input(&mut self) -> Step {
        if self.eof {
            self.phase = Phase::Closed;
            self.input.clear();
            return if self.out.is_empty() {
                Step::Close
            } else {
                self.take_out()
            };
        }
        if self.out.is_empty() {
            Step::NeedInput
        } else {
            self.take_out()
        }
    }

    /// Reads and runs one command; `Some` when the driver has to act first.
    fn command_step(&mut self) -> Option<Step> {
        if self.shutting_down {
            let host = self.cfg.hostname.clone();
            self.send(Reply::new(
                421,
                "4.3.2",
                format!("{host} Service shutting down"),
            ));
            return None;
        }
        let max = self.cfg.max_command_line;
        let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
            if self.input.len() >= max {
                // Over-long line without an end yet: drop what we have, remember to
                // discard up to the next LF.
                self.input.clear();
                self.discard_line = true;
            }
            return Some(self.need_input());
        };
        let line: Vec<u8> = self.input.drain(..=lf).collect();
        if std::mem::take(&mut self.discard_line) || line.len() > max {
            self.send(Reply::new(500, "5.5.6", "Line too long"));
            return None;
        }
        let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
        let body = &line[..line.len() - if crlf { 2 } else { 1 }];
        if !crlf || body.contains(&b'\r') {
            self.send(Reply::new(500, "5.5.2", "Bare CR or LF in command refused"));
            return None;
        }
        if body.contains(&0) {
            self.send(Reply::new(500, "5.5.2", "NUL in command refused"));
            return None;
        }
        let Ok(text) = std::str::from_utf8(body) else {
            self.send(Reply::new(500, "5.5.2", "Invalid UTF-8 in command"));
            return None;
        };
        let parsed = command::parse(text);
        // Without EHLO the client must wait for each reply (RFC 2920); BDAT's chunk
        // follows its command by design.
        if !self.facts.esmtp() && !self.input.is_empty() && !matches!(parsed, Ok(Command::Bdat(..)))
        {
            self.input.clear();
            self.send(Reply::new(
                554,
                "5.5.0",
                "Improper command pipelining (send EHLO first)",
            ));
            return None;
        }
        self.run(parsed);
        None
    }
}
