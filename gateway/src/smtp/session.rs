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

use std::sync::Arc;

use super::address::Path;
use super::command::{self, Command, CommandError};
use super::envelope::{Envelope, MailParams, Message, TlsInfo, Trace};
use super::reply::Reply;

/// Protocol settings shared by all sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our host name (greeting, EHLO, replies).
    pub hostname: String,
    /// Largest message, announced with SIZE and enforced.
    pub max_message_size: usize,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Longest command line including CRLF.
    pub max_command_line: usize,
    /// Longest message text line including CRLF.
    pub max_text_line: usize,
    /// Error replies before the session is closed.
    pub max_errors: usize,
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
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            starttls: false,
            local_domains: Vec::new(),
        }
    }
}

/// Facts about the connection, from the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Id on every log line of this session.
    pub session_id: String,
    /// The client's address.
    pub client: std::net::SocketAddr,
    /// Our address.
    pub local: std::net::SocketAddr,
    /// Set for implicit-TLS listeners.
    pub tls: Option<TlsInfo>,
    /// The client may relay to any domain.
    pub relay_allowed: bool,
    /// The client's forward-confirmed reverse DNS name, if it has one.
    pub ptr_name: Option<String>,
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    Connect,
    Helo { name: String, extended: bool },
    Mail { address: String, params: MailParams },
    Rcpt { address: String },
    Data,
    Deliver,
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
    Awaiting(Pending),
    StartTls,
    Closed,
}

/// Checks on message content shared by DATA and BDAT.
#[derive(Debug, Default)]
struct Content {
    bare: bool,
    too_big: bool,
    long_line: bool,
    /// DATA: the previous line ended in CRLF (so `.CRLF` now ends the data).
    prev_crlf: bool,
    /// DATA: discarding the rest of an over-long line.
    skipping: bool,
    /// BDAT: last byte was CR.
    prev_cr: bool,
    /// BDAT: length of the current line so far.
    line_len: usize,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    conn: ConnInfo,
    input: Vec<u8>,
    out: Vec<u8>,
    next: Option<Step>,
    phase: Phase,
    eof: bool,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    in_txn: bool,
    envelope: Envelope,
    data: Vec<u8>,
    content: Content,
    bdat_used: bool,
    errors: usize,
    closing: bool,
    discard_line: bool,
    timed_out: bool,
    shutting_down: bool,
    messages: usize,
    received: usize,
    refused: Option<Refused>,
}

impl Session {
    /// A new session; its first step is `Hook(Connect)`.
    pub fn new(cfg: Arc<SessionConfig>, conn: ConnInfo) -> Session {
        Session {
            cfg,
            tls: conn.tls.clone(),
            conn,
            input: Vec::new(),
            out: Vec::new(),
            next: None,
            phase: Phase::Start,
            eof: false,
            helo: None,
            esmtp: false,
            in_txn: false,
            envelope: Envelope::default(),
            data: Vec::new(),
            content: Content::default(),
            bdat_used: false,
            errors: 0,
            closing: false,
            discard_line: false,
            timed_out: false,
            shutting_down: false,
            messages: 0,
            received: 0,
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

    /// The read timeout that applies now.
    pub fn read_timeout(&self) -> ReadTimeout {
        match self.phase {
            Phase::Data | Phase::Bdat { .. } => ReadTimeout::Data,
            _ => ReadTimeout::Command,
        }
    }

    /// The message under evaluation during `Hook::Data`.
    pub fn message(&self) -> Option<&[u8]> {
        match self.phase {
            Phase::Awaiting(Pending::Data) => Some(&self.data),
            _ => None,
        }
    }

    /// The current transaction.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The HELO/EHLO name, once accepted.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// TLS in use, if any.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The id the current (or next) transaction's message gets: `<session-id>.<n>`.
    pub fn transaction_id(&self) -> String {
        format!("{}.{}", self.conn.session_id, self.messages + 1)
    }

    /// The connection facts.
    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    /// The TLS handshake after `Step::StartTls` succeeded: start afresh (RFC 3207 4.2).
    pub fn tls_established(&mut self, info: TlsInfo) {
        debug_assert!(matches!(self.phase, Phase::StartTls));
        self.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.reset_txn();
        self.input.clear();
        self.phase = Phase::Command;
    }

    fn take_out(&mut self) -> Step {
        Step::Send(std::mem::take(&mut self.out))
    }

    fn send(&mut self, r: Reply) {
        r.write_to(&mut self.out);
        if r.code() == 421 {
            self.closing = true;
        } else if r.code() >= 400 {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                let host = self.cfg.hostname.clone();
                Reply::new(421, "4.7.0", format!("{host} Error: too many errors"))
                    .write_to(&mut self.out);
                self.closing = true;
            }
        }
    }

    fn reset_txn(&mut self) {
        self.received = 0;
        self.in_txn = false;
        self.envelope = Envelope::default();
        self.data = Vec::new();
        self.content = Content::default();
        self.bdat_used = false;
    }

    fn pause(&mut self, p: Pending, hook: Hook) {
        self.phase = Phase::Awaiting(p);
        self.next = Some(Step::Hook(hook));
    }

    /// Answers the last `Hook` or `Deliver`.
    pub fn resolve(&mut self, resolution: Resolution) {
        let Phase::Awaiting(pending) = std::mem::replace(&mut self.phase, Phase::Command) else {
            debug_assert!(false, "resolve() without a pending hook");
            return;
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
            Pending::Connect => match refused {
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
            Pending::Helo { name, extended } => match refused {
                Some(r) => self.send(r),
                None => {
                    self.helo = Some(name.clone());
                    self.esmtp = extended;
                    let reply = if extended {
                        let mut lines = vec![format!("{host} Hello {name}")];
                        lines.push("PIPELINING".into());
                        lines.push(format!("SIZE {}", self.cfg.max_message_size));
                        lines.push("8BITMIME".into());
                        lines.push("SMTPUTF8".into());
                        lines.push("ENHANCEDSTATUSCODES".into());
                        lines.push("CHUNKING".into());
                        if self.cfg.starttls && self.tls.is_none() {
                            lines.push("STARTTLS".into());
                        }
                        Reply::multiline(250, None, lines)
                    } else {
                        Reply::plain(250, format!("{host} Hello {name}"))
                    };
                    self.send(reply);
                }
            },
            Pending::Mail { address, params } => match refused {
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
            Pending::Rcpt { address } => match refused {
                Some(r) => self.send(r),
                None => {
                    self.envelope.rcpt_to.push(address.clone());
                    self.send(given.unwrap_or_else(|| {
                        Reply::new(250, "2.1.5", format!("Recipient <{address}> ok"))
                    }));
                }
            },
            Pending::Data => match refused {
                Some(r) => self.refuse_message(r),
                None => {
                    self.messages += 1;
                    let helo = self.helo.clone().unwrap_or_default();
                    let protocol = match (
                        self.envelope.params.smtputf8,
                        self.esmtp,
                        self.tls.is_some(),
                    ) {
                        (true, _, false) => "UTF8SMTP",
                        (true, _, true) => "UTF8SMTPS",
                        (false, true, false) => "ESMTP",
                        (false, true, true) => "ESMTPS",
                        (false, false, false) => "SMTP",
                        (false, false, true) => "SMTPS",
                    };
                    let message = Message {
                        id: format!("{}.{}", self.conn.session_id, self.messages),
                        envelope: self.envelope.clone(),
                        data: std::mem::take(&mut self.data),
                        trace: Trace {
                            client: self.conn.client,
                            ptr_name: self.conn.ptr_name.clone(),
                            helo,
                            protocol,
                            tls: self.tls.clone(),
                            session_id: self.conn.session_id.clone(),
                        },
                    };
                    self.phase = Phase::Awaiting(Pending::Deliver);
                    self.next = Some(Step::Deliver(Box::new(message)));
                }
            },
            Pending::Deliver => {
                let id = format!("{}.{}", self.conn.session_id, self.messages);
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
                    self.pause(Pending::Connect, Hook::Connect);
                }
                Phase::Awaiting(_) => {
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
        if !self.esmtp && !self.input.is_empty() && !matches!(parsed, Ok(Command::Bdat(..))) {
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

    fn run(&mut self, parsed: Result<Command, CommandError>) {
        let cmd = match parsed {
            Ok(c) => c,
            Err(CommandError::Unknown) => {
                return self.send(Reply::new(500, "5.5.2", "Command unrecognized"));
            }
            Err(CommandError::Syntax(enh, text)) => return self.send(Reply::new(501, enh, text)),
            Err(CommandError::Param) => {
                return self.send(Reply::new(555, "5.5.4", "Unsupported parameter"));
            }
            Err(CommandError::BadChunkSize) => {
                // The chunk boundary is lost: nothing after this can be read as a command.
                self.send(Reply::new(501, "5.5.4", "Syntax: BDAT <size> [LAST]"));
                let host = self.cfg.hostname.clone();
                self.send(Reply::new(
                    421,
                    "4.5.0",
                    format!("{host} Error: BDAT chunk boundary lost, closing"),
                ));
                return;
            }
        };
        match cmd {
            Command::Ehlo(name) => {
                self.reset_txn();
                self.pause(
                    Pending::Helo {
                        name: name.clone(),
                        extended: true,
                    },
                    Hook::Helo {
                        name,
                        extended: true,
                    },
                );
            }
            Command::Helo(name) => {
                self.reset_txn();
                self.pause(
                    Pending::Helo {
                        name: name.clone(),
                        extended: false,
                    },
                    Hook::Helo {
                        name,
                        extended: false,
                    },
                );
            }
            Command::Mail(path, params) => self.mail(path, params),
            Command::Rcpt(path) => self.rcpt(path),
            Command::Data => {
                if self.bdat_used {
                    return self.send(Reply::new(
                        503,
                        "5.5.1",
                        "DATA after BDAT in one transaction",
                    ));
                }
                if let Some(r) = self.data_precheck() {
                    return self.send(r);
                }
                self.content = Content {
                    prev_crlf: true,
                    ..Content::default()
                };
                self.data.clear();
                self.send(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                self.phase = Phase::Data;
            }
            Command::Bdat(size, last) => {
                let error = if !self.esmtp {
                    Some(Reply::new(503, "5.5.1", "Send EHLO first"))
                } else {
                    self.data_precheck()
                };
                if error.is_none() && !self.bdat_used {
                    self.bdat_used = true;
                    self.data.clear();
                    self.content = Content::default();
                }
                self.phase = Phase::Bdat {
                    size,
                    remaining: size,
                    last,
                    error,
                };
            }
            Command::Rset => {
                self.reset_txn();
                self.send(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.send(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                let host = self.cfg.hostname.clone();
                self.send(Reply::new(221, "2.0.0", format!("{host} Bye")));
                self.closing = true;
            }
            Command::Vrfy => self.send(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.send(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
            )),
            Command::StartTls => {
                if self.tls.is_some() {
                    return self.send(Reply::new(503, "5.5.1", "TLS already active"));
                }
                if !self.cfg.starttls {
                    return self.send(Reply::new(502, "5.5.1", "STARTTLS not available"));
                }
                if !self.esmtp {
                    return self.send(Reply::new(503, "5.5.1", "Send EHLO first"));
                }
                self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
                // CVE-2011-0411: nothing pipelined behind STARTTLS survives the handshake.
                self.input.clear();
                self.phase = Phase::StartTls;
                self.next = Some(Step::StartTls);
            }
            Command::NotImplemented(_) => {
                self.send(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    fn data_precheck(&self) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(Reply::new(503, "5.5.1", "Send HELO/EHLO first"));
        }
        if !self.in_txn {
            return Some(Reply::new(503, "5.5.1", "Need MAIL command"));
        }
        if self.envelope.rcpt_to.is_empty() {
            return Some(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        None
    }

    fn mail(&mut self, path: Path, params: MailParams) {
        if self.helo.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Send HELO/EHLO first"));
        }
        if self.in_txn {
            return self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.bdat_used {
            return self.send(Reply::new(503, "5.5.1", "BDAT transfer in progress"));
        }
        if !self.esmtp && params != MailParams::default() {
            return self.send(Reply::new(555, "5.5.4", "MAIL parameters need EHLO"));
        }
        if params
            .size
            .is_some_and(|s| s > self.cfg.max_message_size as u64)
        {
            return self.send(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let address = match path {
            Path::Null => String::new(),
            Path::Postmaster => {
                return self.send(Reply::new(501, "5.1.7", "Bad sender address syntax"));
            }
            Path::Mailbox(m) => {
                if !m.is_ascii() && !params.smtputf8 {
                    return self.send(Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"));
                }
                m.address()
            }
        };
        self.pause(
            Pending::Mail {
                address: address.clone(),
                params: params.clone(),
            },
            Hook::MailFrom { address, params },
        );
    }

    fn rcpt(&mut self, path: Path) {
        if !self.in_txn {
            return self.send(Reply::new(503, "5.5.1", "Need MAIL command"));
        }
        if self.bdat_used {
            return self.send(Reply::new(503, "5.5.1", "BDAT transfer in progress"));
        }
        let address = match path {
            Path::Null => {
                return self.send(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
            }
            Path::Postmaster => {
                let domain = self
                    .cfg
                    .local_domains
                    .first()
                    .cloned()
                    .unwrap_or_else(|| self.cfg.hostname.clone());
                format!("postmaster@{domain}")
            }
            Path::Mailbox(m) => {
                if !m.is_ascii() && !self.envelope.params.smtputf8 {
                    return self.send(Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"));
                }
                if m.has_routing() {
                    return self.send(Reply::new(
                        550,
                        "5.7.1",
                        "Relaying denied: routing in addresses is not accepted",
                    ));
                }
                let local =
                    !m.is_literal() && self.cfg.local_domains.iter().any(|d| *d == m.domain_key());
                if !local && !self.conn.relay_allowed {
                    return self.send(Reply::new(550, "5.7.1", "Relaying denied"));
                }
                m.address()
            }
        };
        if self.envelope.rcpt_to.len() >= self.cfg.max_recipients {
            return self.send(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        self.pause(
            Pending::Rcpt {
                address: address.clone(),
            },
            Hook::RcptTo { address },
        );
    }

    /// Appends message content within the size limit.
    fn store(&mut self, bytes: &[u8]) {
        self.received += bytes.len();
        if self.content.too_big {
            return;
        }
        if self.data.len() + bytes.len() > self.cfg.max_message_size {
            self.content.too_big = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(bytes);
        }
    }

    /// Content that is read but not kept (the rest of an over-long line) still counts
    /// toward the size limit, so the size verdict does not depend on line lengths.
    fn count_unstored(&mut self, n: usize) {
        self.received += n;
        if self.received > self.cfg.max_message_size {
            self.content.too_big = true;
            self.data = Vec::new();
        }
    }

    /// The reply refusing the content just received, if any.
    fn content_verdict(&self) -> Option<Reply> {
        let c = &self.content;
        if c.bare {
            Some(Reply::new(
                554,
                "5.6.0",
                "Message refused: bare CR or LF in message (SMTP smuggling protection)",
            ))
        } else if c.too_big {
            Some(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ))
        } else if c.long_line {
            Some(Reply::new(
                554,
                "5.6.0",
                format!(
                    "Message refused: line longer than {} octets",
                    self.cfg.max_text_line
                ),
            ))
        } else {
            None
        }
    }

    fn data_step(&mut self) -> Option<Step> {
        let max_line = self.cfg.max_text_line;
        let mut consumed = 0;
        let mut done = false;
        // Bounded by the input length: each pass consumes one line.
        while let Some(off) = self.input[consumed..].iter().position(|&b| b == b'\n') {
            let end = consumed + off + 1;
            let line = &self.input[consumed..end];
            consumed = end;
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let body_len = line.len() - if crlf { 2 } else { 1 };
            let skipping = std::mem::take(&mut self.content.skipping);
            if !crlf || line[..body_len].contains(&b'\r') {
                self.content.bare = true;
            }
            if skipping || line.len() > max_line {
                self.content.long_line = true;
            }
            if !skipping && crlf && self.content.prev_crlf && &line[..body_len] == b"." {
                done = true;
                break;
            }
            let was = self.content.prev_crlf;
            self.content.prev_crlf = crlf;
            if skipping {
                self.count_unstored(line.len());
            } else {
                let line = line.to_vec();
                let start = usize::from(was && line.first() == Some(&b'.'));
                let body = &line[start..body_len];
                self.store(body);
                self.store(b"\r\n");
            }
        }
        self.input.drain(..consumed);
        if !done {
            if self.input.len() > max_line {
                // A line without an end yet, already too long: keep nothing of it.
                if self.input[..self.input.len() - 1].contains(&b'\r') {
                    self.content.bare = true;
                }
                let keep_cr = self.input.last() == Some(&b'\r');
                self.count_unstored(self.input.len() - usize::from(keep_cr));
                self.input.clear();
                if keep_cr {
                    self.input.push(b'\r');
                }
                self.content.skipping = true;
                self.content.long_line = true;
            }
            return Some(self.need_input());
        }
        self.phase = Phase::Command;
        match self.content_verdict() {
            Some(r) => self.refuse_message(r),
            None => self.pause(Pending::Data, Hook::Data),
        }
        None
    }

    fn scan_chunk(&mut self, bytes: &[u8]) {
        let max_line = self.cfg.max_text_line;
        for &b in bytes {
            let c = &mut self.content;
            if b == b'\n' {
                if !c.prev_cr {
                    c.bare = true;
                }
                c.line_len = 0;
            } else {
                if c.prev_cr {
                    c.bare = true;
                }
                // The line's text, without its CRLF: at most max_line - 2 octets.
                if b != b'\r' {
                    c.line_len += 1;
                    if c.line_len + 2 > max_line {
                        c.long_line = true;
                    }
                }
            }
            c.prev_cr = b == b'\r';
        }
        self.store(bytes);
    }

    fn bdat_step(&mut self) -> Option<Step> {
        let Phase::Bdat {
            size,
            remaining,
            last,
            ref error,
        } = self.phase
        else {
            return None;
        };
        let take = remaining.min(self.input.len() as u64) as usize;
        if take > 0 {
            let chunk: Vec<u8> = self.input.drain(..take).collect();
            if error.is_none() {
                self.scan_chunk(&chunk);
            }
        }
        let remaining = remaining - take as u64;
        if remaining > 0 {
            if let Phase::Bdat { remaining: r, .. } = &mut self.phase {
                *r = remaining;
            }
            return Some(self.need_input());
        }
        let Phase::Bdat { error, .. } = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        if let Some(r) = error {
            self.reset_txn();
            self.send(r);
            return None;
        }
        if last && self.content.prev_cr {
            self.content.bare = true;
        }
        if let Some(r) = self.content_verdict() {
            self.refuse_message(r);
            return None;
        }
        if !last {
            self.send(Reply::new(250, "2.0.0", format!("{size} octets received")));
            return None;
        }
        if !self.data.is_empty() && !self.data.ends_with(b"\r\n") {
            self.store(b"\r\n");
            if let Some(r) = self.content_verdict() {
                self.refuse_message(r);
                return None;
            }
        }
        self.pause(Pending::Data, Hook::Data);
        None
    }
}
