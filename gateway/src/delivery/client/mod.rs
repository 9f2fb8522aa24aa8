//! A small async SMTP client for relaying to the next hop (RFC 5321, with ESMTP
//! extensions SIZE, 8BITMIME, SMTPUTF8, STARTTLS, and Postfix's XCLIENT and XFORWARD to
//! tell the next hop who the original client was, see [`forward`]).
//!
//! [`SmtpClient`] speaks to one server over any byte stream (`TcpStream` in production,
//! anything `AsyncRead + AsyncWrite` in tests) and can upgrade that stream to TLS with
//! `STARTTLS`. Commands go out one at a time, each with a single write, except the
//! envelope: when the server offers PIPELINING, [`SmtpClient::envelope`] sends MAIL and
//! every RCPT in one write (RFC 2920) and then reads their replies in order. Every reply
//! is read within the per-command timeouts of RFC 5321 4.5.3.2 ([`Timeouts`]).
//!
//! Robustness against the server:
//! - reply lines are bounded ([`MAX_REPLY_LINE`]) and so is the number of lines in one
//!   reply ([`MAX_REPLY_LINES`]); replies are turned into [`Reply`] values with
//!   [`Reply::sanitized`], so their text can be passed on to our own client safely;
//! - after the `220` to `STARTTLS` nothing may have been received beyond that reply:
//!   plaintext the server (or a man in the middle) sent ahead would otherwise be read as
//!   if it came over TLS (response injection), so it is a protocol error;
//! - after any I/O error, timeout or protocol error the connection is unusable
//!   ([`ClientError::is_fatal`]) and every later call fails fast.
//!
//! Robustness towards the server: nothing we send contains a bare CR or LF. Addresses and
//! the HELO name with control characters are refused, and message bodies go through
//! [`DotStuffer`], which normalises every line ending to CRLF.
//!
//! TLS to the next hop is opportunistic: [`AcceptAnyServerCert`] accepts any certificate
//! (there is no trust anchor configuration yet) but still checks the handshake signatures,
//! so the session is encrypted and bound to the key in the presented certificate.

mod ehlo;
mod error;
pub mod forward;
mod tls;
mod wire;

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use self::ehlo::Extensions;
pub use self::error::ClientError;
pub use self::forward::ClientIdentity;
use self::tls::server_name_for;
pub use self::tls::{AcceptAnyServerCert, TlsPolicy, client_tls_config};
use self::wire::{Conn, Response, parse_reply_line, timed};
use super::dotstuff::DotStuffer;
use crate::smtp::{BodyType, MailParams, Reply, TlsInfo};
use rustls_pki_types::ServerName;

/// Longest reply line accepted from a server, CRLF included (RFC 5321 4.5.3.1.5 allows
/// 512; we are lenient but bounded).
pub const MAX_REPLY_LINE: usize = 2048;

/// Most lines accepted in one (multi-line) reply.
pub const MAX_REPLY_LINES: usize = 100;

/// Size of the pieces the message body is written in; each piece has its own
/// [`Timeouts::data_block`].
const DATA_CHUNK: usize = 64 * 1024;

/// Timeouts for each step of a client conversation, after RFC 5321 4.5.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving the name and establishing the TCP connection.
    pub connect: Duration,
    /// Waiting for the `220` greeting (RFC: 5 minutes).
    pub greeting: Duration,
    /// `EHLO`/`HELO`, `STARTTLS` and the TLS handshake, `RSET`, `QUIT` (5 minutes).
    pub command: Duration,
    /// `MAIL FROM` (RFC: 5 minutes).
    pub mail: Duration,
    /// `RCPT TO`, per recipient (RFC: 5 minutes).
    pub rcpt: Duration,
    /// `DATA` until the `354` (RFC: 2 minutes).
    pub data_init: Duration,
    /// Each write of a block of message data (RFC: 3 minutes).
    pub data_block: Duration,
    /// From the end of data `.` to the final reply (RFC: 10 minutes).
    pub data_final: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_final: Duration::from_secs(600),
        }
    }
}

/// An SMTP client connection; see the module docs.
pub struct SmtpClient<S = TcpStream> {
    conn: Conn<S>,
    /// Bytes received but not yet consumed as reply lines.
    buf: Vec<u8>,
    timeouts: Timeouts,
    ext: Extensions,
    tls: Option<TlsInfo>,
    /// The client identity the last XCLIENT on this connection announced.
    forwarded: Option<ClientIdentity>,
}

impl<S> fmt::Debug for SmtpClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.conn {
            Conn::Plain(_) => "plain",
            Conn::Tls(_) => "tls",
            Conn::Broken => "broken",
        };
        f.debug_struct("SmtpClient")
            .field("state", &state)
            .field("extensions", &self.ext)
            .field("tls", &self.tls)
            .field("forwarded", &self.forwarded)
            .finish_non_exhaustive()
    }
}

/// Opens a TCP connection to `addr` (`host:port`, `[v6]:port`) within `timeout`.
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let fut = async {
        TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })
    };
    let stream = timed(timeout, "connecting", fut).await?;
    // Commands are written whole; don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl SmtpClient<TcpStream> {
    /// Connects to `addr` (`host:port`) and sets the session up per `policy`: greeting,
    /// `EHLO` (or `HELO`), `STARTTLS` and a second `EHLO` over TLS. With
    /// [`TlsPolicy::Opportunistic`] a failed TLS handshake leads to one new connection
    /// without TLS.
    pub async fn connect(
        addr: &str,
        helo_name: &str,
        policy: TlsPolicy,
        timeouts: Timeouts,
    ) -> Result<SmtpClient<TcpStream>, ClientError> {
        match Self::connect_once(addr, helo_name, policy, timeouts).await {
            Err(ClientError::Tls(e)) if policy == TlsPolicy::Opportunistic => {
                tracing::warn!(upstream = addr, error = %e, "TLS handshake failed, retrying without TLS");
                Self::connect_once(addr, helo_name, TlsPolicy::None, timeouts).await
            }
            other => other,
        }
    }

    async fn connect_once(
        addr: &str,
        helo_name: &str,
        policy: TlsPolicy,
        timeouts: Timeouts,
    ) -> Result<SmtpClient<TcpStream>, ClientError> {
        let stream = connect_tcp(addr, timeouts.connect).await?;
        let server_name = server_name_for(addr, stream.peer_addr().ok().map(|a| a.ip()));
        let mut client = SmtpClient::new(stream, timeouts);
        client.establish(helo_name, server_name, policy).await?;
        Ok(client)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> SmtpClient<S> {
    /// Wraps an open stream; nothing has been read yet (call [`SmtpClient::greeting`] or
    /// [`SmtpClient::establish`] next).
    pub fn new(stream: S, timeouts: Timeouts) -> SmtpClient<S> {
        SmtpClient {
            conn: Conn::Plain(stream),
            buf: Vec::with_capacity(1024),
            timeouts,
            ext: Extensions::default(),
            tls: None,
            forwarded: None,
        }
    }

    /// The extensions of the last successful `EHLO` (empty after `HELO`).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// The TLS parameters, once `STARTTLS` succeeded.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The client identity this connection speaks for since its XCLIENT (`None`: the
    /// gateway's own, as connected).
    pub fn forwarded(&self) -> Option<&ClientIdentity> {
        self.forwarded.as_ref()
    }

    /// Tells the server who the original client is, the way it offers: XCLIENT once per
    /// connection (then `EHLO` again, with the client's HELO name when it can stand on
    /// the command line, else `our_helo`), or XFORWARD before each transaction (`ident`:
    /// our id of the message). A connection whose XCLIENT named another client cannot be
    /// told again ([`Forwarding::NeedsNewConnection`]): the server no longer takes
    /// XCLIENT from it. A refusal (other than `421`) leaves the connection usable and
    /// is returned as [`Forwarding::Refused`]. Call between transactions only.
    pub async fn forward_client(
        &mut self,
        id: &ClientIdentity,
        ident: Option<&str>,
        our_helo: &str,
    ) -> Result<Forwarding, ClientError> {
        if let Some(current) = &self.forwarded {
            return Ok(if current == id {
                Forwarding::Xclient
            } else {
                Forwarding::NeedsNewConnection
            });
        }
        if let Some(attrs) = self.ext.xclient.clone() {
            let r = self.xclient(id, &attrs, our_helo).await;
            return self.check(r);
        }
        if let Some(attrs) = self.ext.xforward.clone() {
            let r = self.xforward(id, ident, &attrs).await;
            return self.check(r);
        }
        Ok(Forwarding::NotOffered)
    }

    async fn xclient(
        &mut self,
        id: &ClientIdentity,
        attrs: &[String],
        our_helo: &str,
    ) -> Result<Forwarding, ClientError> {
        let t = self.timeouts.command;
        for cmd in id.xclient_commands(attrs) {
            let resp = self
                .command(format!("{cmd}\r\n"), t, "waiting for XCLIENT reply")
                .await?;
            // Whatever the answer, the server may have taken attributes: from here on
            // this connection is not used for any other client.
            self.forwarded = Some(id.clone());
            match resp.code {
                220 => {}
                421 => {
                    return Err(ClientError::Rejected {
                        stage: "XCLIENT",
                        reply: resp.to_reply(),
                    });
                }
                _ => return Ok(Forwarding::Refused(resp.to_reply())),
            }
        }
        // The server is back at its greeting: EHLO again, as the client did.
        let helo = id.helo_for_ehlo().unwrap_or(our_helo).to_string();
        self.ehlo_inner(&helo).await?;
        Ok(Forwarding::Xclient)
    }

    async fn xforward(
        &mut self,
        id: &ClientIdentity,
        ident: Option<&str>,
        attrs: &[String],
    ) -> Result<Forwarding, ClientError> {
        let t = self.timeouts.command;
        let cmds = id.xforward_commands(ident, attrs);
        if cmds.is_empty() {
            return Ok(Forwarding::NotOffered);
        }
        for cmd in cmds {
            let resp = self
                .command(format!("{cmd}\r\n"), t, "waiting for XFORWARD reply")
                .await?;
            match resp.code {
                250 => {}
                421 => {
                    return Err(ClientError::Rejected {
                        stage: "XFORWARD",
                        reply: resp.to_reply(),
                    });
                }
                _ => return Ok(Forwarding::Refused(resp.to_reply())),
            }
        }
        Ok(Forwarding::Xforward)
    }

    /// `false` once an earlier fatal error (or `QUIT`) made the connection unusable.
    pub fn is_usable(&self) -> bool {
        !matches!(self.conn, Conn::Broken)
    }

    /// Greeting, `EHLO`/`HELO`, and `STARTTLS` + `EHLO` as `policy` asks.
    pub async fn establish(
        &mut self,
        helo_name: &str,
        server_name: ServerName<'static>,
        policy: TlsPolicy,
    ) -> Result<(), ClientError> {
        self.greeting().await?;
        self.ehlo(helo_name).await?;
        match policy {
            TlsPolicy::None => Ok(()),
            TlsPolicy::Opportunistic if !self.ext.starttls => Ok(()),
            TlsPolicy::Opportunistic | TlsPolicy::Required => {
                match self.starttls(server_name).await {
                    Ok(()) => self.ehlo(helo_name).await.map(drop),
                    Err(ClientError::StartTlsRefused(reply))
                        if policy == TlsPolicy::Opportunistic =>
                    {
                        tracing::info!(%reply, "STARTTLS refused, continuing without TLS");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Reads the greeting; anything but `220` is [`ClientError::Rejected`].
    pub async fn greeting(&mut self) -> Result<Reply, ClientError> {
        let r = self.greeting_inner().await;
        self.check(r)
    }

    async fn greeting_inner(&mut self) -> Result<Reply, ClientError> {
        let resp = self
            .read_response(self.timeouts.greeting, "waiting for greeting")
            .await?;
        let reply = resp.to_reply();
        if resp.code != 220 {
            return Err(ClientError::Rejected {
                stage: "greeting",
                reply,
            });
        }
        Ok(reply)
    }

    /// Sends `EHLO name`, falling back to `HELO name` when `EHLO` gets a 5xx reply, and
    /// records the announced extensions. A non-`250` final answer is
    /// [`ClientError::Rejected`].
    pub async fn ehlo(&mut self, name: &str) -> Result<Reply, ClientError> {
        let r = self.ehlo_inner(name).await;
        self.check(r)
    }

    async fn ehlo_inner(&mut self, name: &str) -> Result<Reply, ClientError> {
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ClientError::InvalidArgument("HELO name"));
        }
        let t = self.timeouts.command;
        let resp = self
            .command(format!("EHLO {name}\r\n"), t, "waiting for EHLO reply")
            .await?;
        if resp.code == 250 {
            self.ext = Extensions::parse(&resp.lines[1..]);
            return Ok(resp.to_reply());
        }
        if !(500..600).contains(&resp.code) {
            return Err(ClientError::Rejected {
                stage: "EHLO",
                reply: resp.to_reply(),
            });
        }
        let resp = self
            .command(format!("HELO {name}\r\n"), t, "waiting for HELO reply")
            .await?;
        if resp.code != 250 {
            return Err(ClientError::Rejected {
                stage: "HELO",
                reply: resp.to_reply(),
            });
        }
        self.ext = Extensions::default();
        Ok(resp.to_reply())
    }

    /// Sends `STARTTLS` and performs the TLS handshake (no certificate verification, see
    /// [`AcceptAnyServerCert`]). Afterwards the extensions are cleared: send `EHLO` again.
    pub async fn starttls(&mut self, server_name: ServerName<'static>) -> Result<(), ClientError> {
        let r = self.starttls_inner(server_name).await;
        self.check(r)
    }

    async fn starttls_inner(
        &mut self,
        server_name: ServerName<'static>,
    ) -> Result<(), ClientError> {
        if !self.ext.starttls {
            return Err(ClientError::TlsNotOffered);
        }
        if matches!(self.conn, Conn::Tls(_)) {
            return Err(ClientError::Protocol("STARTTLS on a TLS connection"));
        }
        let connector =
            TlsConnector::from(client_tls_config().map_err(|e| {
                ClientError::Tls(io::Error::other(format!("TLS configuration: {e}")))
            })?);
        let t = self.timeouts.command;
        let resp = self
            .command("STARTTLS\r\n".into(), t, "waiting for STARTTLS reply")
            .await?;
        if resp.code != 220 {
            return Err(ClientError::StartTlsRefused(resp.to_reply()));
        }
        if !self.buf.is_empty() {
            // Bytes sent in plaintext after the 220 must not be read as if they had come
            // over TLS (STARTTLS response injection).
            return Err(ClientError::Protocol("data received after STARTTLS reply"));
        }
        let Conn::Plain(stream) = std::mem::replace(&mut self.conn, Conn::Broken) else {
            return Err(ClientError::Broken);
        };
        let handshake = async {
            connector
                .connect(server_name, stream)
                .await
                .map_err(ClientError::Tls)
        };
        let tls = match tokio::time::timeout(t, handshake).await {
            Ok(result) => result?,
            // A handshake that stalls is a TLS failure like any other (so opportunistic
            // TLS falls back to plaintext).
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "handshake timed out");
                return Err(ClientError::Tls(e));
            }
        };
        let (_, session) = tls.get_ref();
        self.tls = Some(TlsInfo {
            version: session
                .protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}")),
            cipher: session
                .negotiated_cipher_suite()
                .map_or_else(String::new, |c| format!("{:?}", c.suite())),
        });
        self.conn = Conn::Tls(Box::new(tls));
        self.ext = Extensions::default();
        Ok(())
    }

    /// Sends `MAIL FROM:<sender>` with the parameters the server supports: `SIZE=` when
    /// the server announced SIZE and a size was declared, `BODY=8BITMIME` when declared
    /// and announced (an 8-bit body goes out without it otherwise, as Postfix does),
    /// `SMTPUTF8` when declared, and [`ClientError::Smtputf8NotSupported`] (nothing sent)
    /// when declared but not announced. Returns the server's reply, whatever its code.
    pub async fn mail_from(
        &mut self,
        sender: &str,
        params: &MailParams,
    ) -> Result<Reply, ClientError> {
        let r = self.mail_from_inner(sender, params).await;
        self.check(r)
    }

    /// `MAIL FROM` and one `RCPT TO` per recipient, and their replies. With `PIPELINING`
    /// (RFC 2920) all commands go out in one write and the replies are read in order;
    /// otherwise one command at a time. Every recipient gets a reply (`503` ones when
    /// `MAIL` was refused), so the caller decides per recipient.
    pub async fn envelope(
        &mut self,
        sender: &str,
        params: &MailParams,
        rcpts: &[&str],
    ) -> Result<(Reply, Vec<Reply>), ClientError> {
        if !self.ext.pipelining {
            let mail = self.mail_from(sender, params).await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for r in rcpts {
                if mail.code() >= 400 {
                    replies.push(Reply::new(503, "5.5.1", "MAIL FROM was not accepted"));
                } else {
                    replies.push(self.rcpt_to(r).await?);
                }
            }
            return Ok((mail, replies));
        }
        let r = self.envelope_pipelined(sender, params, rcpts).await;
        self.check(r)
    }

    async fn envelope_pipelined(
        &mut self,
        sender: &str,
        params: &MailParams,
        rcpts: &[&str],
    ) -> Result<(Reply, Vec<Reply>), ClientError> {
        let mut batch = self.mail_command(sender, params)?;
        for r in rcpts {
            check_address(r, "recipient")?;
            batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        let t = self.timeouts;
        self.write(batch.as_bytes(), t.mail, "sending MAIL and RCPT")
            .await?;
        let mail = self
            .read_response(t.mail, "waiting for MAIL reply")
            .await?
            .to_reply();
        let mut replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            replies.push(
                self.read_response(t.rcpt, "waiting for RCPT reply")
                    .await?
                    .to_reply(),
            );
        }
        Ok((mail, replies))
    }

    fn mail_command(&self, sender: &str, params: &MailParams) -> Result<String, ClientError> {
        check_address(sender, "sender")?;
        if params.smtputf8 && !self.ext.smtputf8 {
            return Err(ClientError::Smtputf8NotSupported);
        }
        let mut cmd = format!("MAIL FROM:<{sender}>");
        if let (Some(_), Some(size)) = (self.ext.size, params.size) {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if params.body == BodyType::EightBitMime && self.ext.eight_bit_mime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if params.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        cmd.push_str("\r\n");
        Ok(cmd)
    }

    async fn mail_from_inner(
        &mut self,
        sender: &str,
        params: &MailParams,
    ) -> Result<Reply, ClientError> {
        let cmd = self.mail_command(sender, params)?;
        let t = self.timeouts.mail;
        Ok(self
            .command(cmd, t, "waiting for MAIL reply")
            .await?
            .to_reply())
    }

    /// Sends `RCPT TO:<rcpt>` and returns the server's reply, whatever its code.
    pub async fn rcpt_to(&mut self, rcpt: &str) -> Result<Reply, ClientError> {
        let r = self.rcpt_to_inner(rcpt).await;
        self.check(r)
    }

    async fn rcpt_to_inner(&mut self, rcpt: &str) -> Result<Reply, ClientError> {
        check_address(rcpt, "recipient")?;
        let t = self.timeouts.rcpt;
        let cmd = format!("RCPT TO:<{rcpt}>\r\n");
        Ok(self
            .command(cmd, t, "waiting for RCPT reply")
            .await?
            .to_reply())
    }

    /// Sends `DATA`; on `354` sends the concatenation of `parts`, dot-stuffed and
    /// CRLF-normalised, and the terminating `.`, and returns the final reply. A 4xx/5xx
    /// answer to `DATA` itself is returned as is. Same as [`SmtpClient::data_start`]
    /// followed by [`SmtpClient::data_send`].
    pub async fn data(&mut self, parts: &[&[u8]]) -> Result<Reply, ClientError> {
        let reply = self.data_start().await?;
        if reply.code() != 354 {
            return Ok(reply);
        }
        self.data_send(parts).await
    }

    /// Sends `DATA` and returns the reply: `354` to go on with [`SmtpClient::data_send`],
    /// or a 4xx/5xx refusal (the transaction stays open). Any other code is a protocol
    /// error.
    pub async fn data_start(&mut self) -> Result<Reply, ClientError> {
        let t = self.timeouts.data_init;
        let r = self
            .command("DATA\r\n".into(), t, "waiting for DATA reply")
            .await;
        let r = r.and_then(|resp| match resp.code {
            354 | 400.. => Ok(resp.to_reply()),
            _ => Err(ClientError::Protocol("unexpected reply to DATA")),
        });
        self.check(r)
    }

    /// After a `354`: sends the concatenation of `parts` dot-stuffed, CRLF-normalised and
    /// terminated with `.CRLF`, each block of at most 64 KiB within
    /// [`Timeouts::data_block`], and returns the final reply.
    pub async fn data_send(&mut self, parts: &[&[u8]]) -> Result<Reply, ClientError> {
        let pieces: Vec<std::io::Result<&[u8]>> = parts.iter().map(|p| Ok(*p)).collect();
        self.data_send_pieces(pieces).await
    }

    /// Like [`SmtpClient::data_send`], for message text read piece by piece (a spilled
    /// message read from its file). A piece that cannot be read ends the connection
    /// without the terminating dot, so the next hop discards the partial message.
    pub async fn data_send_pieces<I, B>(&mut self, pieces: I) -> Result<Reply, ClientError>
    where
        I: IntoIterator<Item = std::io::Result<B>>,
        B: AsRef<[u8]>,
    {
        let r = self.data_send_inner(pieces).await;
        self.check(r)
    }

    async fn data_send_inner<I, B>(&mut self, pieces: I) -> Result<Reply, ClientError>
    where
        I: IntoIterator<Item = std::io::Result<B>>,
        B: AsRef<[u8]>,
    {
        let t = self.timeouts;
        let mut enc = DotStuffer::new();
        let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 8);
        for part in pieces {
            let part = part.map_err(ClientError::Io)?;
            for piece in part.as_ref().chunks(DATA_CHUNK) {
                enc.push(piece, &mut out);
                if out.len() >= DATA_CHUNK {
                    self.write(&out, t.data_block, "sending message data")
                        .await?;
                    out.clear();
                }
            }
        }
        enc.finish(&mut out);
        self.write(&out, t.data_block, "sending message data")
            .await?;
        let resp = self
            .read_response(t.data_final, "waiting for final reply")
            .await?;
        Ok(resp.to_reply())
    }

    /// Sends `RSET` and returns the reply.
    pub async fn rset(&mut self) -> Result<Reply, ClientError> {
        let t = self.timeouts.command;
        let r = self
            .command("RSET\r\n".into(), t, "waiting for RSET reply")
            .await;
        let r = r.map(|resp| resp.to_reply());
        self.check(r)
    }

    /// Sends `QUIT`, reads the reply and closes the connection (with TLS `close_notify`).
    pub async fn quit(mut self) -> Result<Reply, ClientError> {
        let t = self.timeouts.command;
        let r = self
            .command("QUIT\r\n".into(), t, "waiting for QUIT reply")
            .await;
        let _ = tokio::time::timeout(t, self.conn.shutdown()).await;
        self.conn = Conn::Broken;
        r.map(|resp| resp.to_reply())
    }

    /// Marks the connection broken after a fatal error.
    fn check<T>(&mut self, r: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &r
            && e.is_fatal()
        {
            self.conn = Conn::Broken;
            self.buf.clear();
        }
        r
    }

    /// Writes `cmd` (one complete command line) and reads the reply within `t`.
    async fn command(
        &mut self,
        cmd: String,
        t: Duration,
        what: &'static str,
    ) -> Result<Response, ClientError> {
        debug_assert!(cmd.ends_with("\r\n") && !cmd[..cmd.len() - 2].contains(['\r', '\n']));
        self.write(cmd.as_bytes(), t, "sending command").await?;
        self.read_response(t, what).await
    }

    async fn write(
        &mut self,
        data: &[u8],
        t: Duration,
        what: &'static str,
    ) -> Result<(), ClientError> {
        if matches!(self.conn, Conn::Broken) {
            return Err(ClientError::Broken);
        }
        timed(t, what, async {
            self.conn.write_all(data).await.map_err(ClientError::Io)
        })
        .await
    }

    /// Reads one complete (possibly multi-line) reply within `t`.
    async fn read_response(
        &mut self,
        t: Duration,
        what: &'static str,
    ) -> Result<Response, ClientError> {
        if matches!(self.conn, Conn::Broken) {
            return Err(ClientError::Broken);
        }
        timed(t, what, self.read_response_untimed()).await
    }

    async fn read_response_untimed(&mut self) -> Result<Response, ClientError> {
        let mut code = 0u16;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let (c, last, text) = parse_reply_line(&line)?;
            if lines.is_empty() {
                code = c;
            } else if c != code {
                return Err(ClientError::Protocol("reply code changes within a reply"));
            }
            lines.push(text);
            if last {
                return Ok(Response { code, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(ClientError::Protocol("too many reply lines"));
            }
        }
    }

    /// One line without its line ending (CRLF, or a lenient bare LF).
    async fn read_line(&mut self) -> Result<Vec<u8>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                if pos + 1 > MAX_REPLY_LINE {
                    return Err(ClientError::Protocol("reply line too long"));
                }
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() >= MAX_REPLY_LINE {
                return Err(ClientError::Protocol("reply line too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = self.conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What [`SmtpClient::forward_client`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// The connection speaks for the client (XCLIENT, now or earlier).
    Xclient,
    /// The next transaction is logged for the client (XFORWARD).
    Xforward,
    /// The server offers neither.
    NotOffered,
    /// The server refused; nothing changed for the transaction (the connection is
    /// usable, but not for another client).
    Refused(Reply),
    /// The connection already speaks for another client: use a new one.
    NeedsNewConnection,
}

/// Refuses addresses that would break the command line.
fn check_address(addr: &str, what: &'static str) -> Result<(), ClientError> {
    if addr.chars().any(char::is_control) {
        return Err(ClientError::InvalidArgument(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::testutil::{FakeServer, Step, self_signed_server_config};
    use crate::smtp::Enhanced;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn fast() -> Timeouts {
        crate::delivery::testutil::fast_timeouts()
    }

    /// A client on one end of an in-memory pipe whose other end has `server_bytes`
    /// already written to it.
    async fn client_reading(server_bytes: &[u8]) -> SmtpClient<tokio::io::DuplexStream> {
        let (a, mut b) = duplex(64 * 1024);
        b.write_all(server_bytes).await.unwrap();
        // Keep the server end open for the test's duration.
        tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            while let Ok(n) = b.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        SmtpClient::new(a, fast())
    }

    #[tokio::test]
    async fn full_transaction_exact_bytes() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test ESMTP ready\r\n"),
            Step::Line,
            Step::Send(
                "250-up.test greets you\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n\
                 250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
            ),
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("550 5.1.1 <nobody@up.test>: Recipient address rejected\r\n"),
            Step::Line,
            Step::Send("354 End data with <CR><LF>.<CR><LF>\r\n"),
            Step::Data,
            Step::Send("250 2.0.0 Ok: queued as 4F1A\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;

        let mut c = SmtpClient::connect(&server.addr, "mx.example.test", TlsPolicy::None, fast())
            .await
            .unwrap();
        let ext = c.extensions().clone();
        assert_eq!(
            ext,
            Extensions {
                esmtp: true,
                pipelining: true,
                size: Some(1_000_000),
                eight_bit_mime: true,
                smtputf8: true,
                starttls: false,
                chunking: true,
                enhanced_status_codes: true,
                xclient: None,
                xforward: None,
            }
        );
        let params = MailParams {
            size: Some(1234),
            body: BodyType::EightBitMime,
            smtputf8: true,
        };
        let r = c.mail_from("sender@example.org", &params).await.unwrap();
        assert_eq!(r.to_bytes(), b"250 2.1.0 Ok\r\n");
        let r = c.rcpt_to("user@up.test").await.unwrap();
        assert_eq!(r.to_bytes(), b"250 2.1.5 Ok\r\n");
        let r = c.rcpt_to("nobody@up.test").await.unwrap();
        assert_eq!(r.code(), 550);
        assert_eq!(r.enhanced(), Some(Enhanced(5, 1, 1)));
        assert_eq!(
            r.to_bytes(),
            b"550 5.1.1 <nobody@up.test>: Recipient address rejected\r\n"
        );
        let header = b"Received: by mx\r\n";
        let body = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\nbare\nlf\r\n.";
        let r = c.data(&[header, body]).await.unwrap();
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok: queued as 4F1A\r\n");
        let r = c.quit().await.unwrap();
        assert_eq!(r.code(), 221);

        let got = server.received().await;
        assert_eq!(
            got[0],
            "EHLO mx.example.test\r\n\
             MAIL FROM:<sender@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n\
             RCPT TO:<user@up.test>\r\n\
             RCPT TO:<nobody@up.test>\r\n\
             DATA\r\n\
             Received: by mx\r\nSubject: t\r\n\r\n..leading dot\r\n...two\r\nbare\r\nlf\r\n..\r\n.\r\n\
             QUIT\r\n"
        );
    }

    /// With PIPELINING, MAIL and every RCPT leave before any reply is read: the server
    /// here reads all three commands before answering (a client waiting for the MAIL
    /// reply first would time out).
    #[tokio::test]
    async fn envelope_is_pipelined_when_offered() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250 PIPELINING\r\n"),
            Step::Line,
            Step::Line,
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;
        let mut c = SmtpClient::connect(&server.addr, "mx.test", TlsPolicy::None, fast())
            .await
            .unwrap();
        let (mail, rcpts) = c
            .envelope(
                "s@a.test",
                &MailParams::default(),
                &["x@up.test", "y@up.test"],
            )
            .await
            .unwrap();
        assert_eq!(mail.code(), 250);
        assert_eq!(
            rcpts.iter().map(Reply::code).collect::<Vec<_>>(),
            vec![550, 250]
        );
        c.quit().await.unwrap();
        let got = server.received().await;
        assert_eq!(
            got[0],
            "EHLO mx.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<x@up.test>\r\n\
             RCPT TO:<y@up.test>\r\nQUIT\r\n"
        );
    }

    /// Without PIPELINING, one command at a time; a refused MAIL leaves every
    /// recipient with a 503 without sending RCPT.
    #[tokio::test]
    async fn envelope_without_pipelining_is_sequential() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            Step::Send("250 up.test\r\n"),
            Step::Line,
            Step::Send("451 4.3.0 later\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;
        let mut c = SmtpClient::connect(&server.addr, "mx.test", TlsPolicy::None, fast())
            .await
            .unwrap();
        let (mail, rcpts) = c
            .envelope("s@a.test", &MailParams::default(), &["x@up.test"])
            .await
            .unwrap();
        assert_eq!(mail.code(), 451);
        assert_eq!(rcpts[0].code(), 503);
        c.quit().await.unwrap();
        assert_eq!(
            server.received().await[0],
            "EHLO mx.test\r\nMAIL FROM:<s@a.test>\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn ehlo_5xx_falls_back_to_helo_and_params_are_dropped() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 old.test SMTP\r\n"),
            Step::Line,
            Step::Send("502 Command not implemented\r\n"),
            Step::Line,
            Step::Send("250 old.test\r\n"),
            Step::Line,
            Step::Send("250 Ok\r\n"),
            Step::Line,
            Step::Send("221 Bye\r\n"),
        ]])
        .await;
        let mut c = SmtpClient::connect(
            &server.addr,
            "mx.example.test",
            TlsPolicy::Opportunistic,
            fast(),
        )
        .await
        .unwrap();
        assert!(!c.extensions().esmtp);
        assert!(c.tls_info().is_none());
        // An 8-bit body is still sent (without BODY=), SIZE is not announced.
        let params = MailParams {
            size: Some(10),
            body: BodyType::EightBitMime,
            smtputf8: false,
        };
        let r = c.mail_from("", &params).await.unwrap();
        assert_eq!(r.code(), 250);
        // No enhanced code from the server: the class default is filled in.
        assert_eq!(r.enhanced(), Some(Enhanced(2, 0, 0)));
        c.quit().await.unwrap();
        let got = server.received().await;
        assert_eq!(
            got[0],
            "EHLO mx.example.test\r\nHELO mx.example.test\r\nMAIL FROM:<>\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn smtputf8_declared_but_not_offered_sends_nothing() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250 8BITMIME\r\n"),
            Step::Line,
            Step::Send("221 Bye\r\n"),
        ]])
        .await;
        let mut c = SmtpClient::connect(&server.addr, "mx", TlsPolicy::None, fast())
            .await
            .unwrap();
        let params = MailParams {
            smtputf8: true,
            ..MailParams::default()
        };
        let e = c.mail_from("ü@example.org", &params).await.unwrap_err();
        assert!(matches!(e, ClientError::Smtputf8NotSupported), "{e}");
        assert!(!e.is_fatal());
        assert!(c.is_usable());
        c.quit().await.unwrap();
        assert_eq!(server.received().await[0], "EHLO mx\r\nQUIT\r\n");
    }

    #[tokio::test]
    async fn refuses_control_characters_in_arguments() {
        let mut c = client_reading(b"").await;
        let e = c
            .mail_from("a@b>\r\nRCPT TO:<x@y", &MailParams::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument("sender")));
        let e = c.rcpt_to("x@y\n").await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument("recipient")));
        let e = c.ehlo("bad name").await.unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)));
        assert!(c.is_usable());
    }

    #[tokio::test]
    async fn multiline_reply_with_enhanced_codes() {
        let mut c = client_reading(
            b"220-first line\r\n220-second\r\n220 third\r\n\
              550-5.7.1 Message rejected\r\n550-5.7.1 see https://x.test/\r\n550 5.7.1 bye\r\n\
              451 4.7.1\r\n250\r\n",
        )
        .await;
        let g = c.greeting().await.unwrap();
        assert_eq!(g.lines(), ["first line", "second", "third"]);
        let r = c
            .read_response(Duration::from_secs(1), "t")
            .await
            .unwrap()
            .to_reply();
        assert_eq!(r.code(), 550);
        assert_eq!(r.enhanced(), Some(Enhanced(5, 7, 1)));
        assert_eq!(
            r.lines(),
            ["Message rejected", "see https://x.test/", "bye"]
        );
        let r = c
            .read_response(Duration::from_secs(1), "t")
            .await
            .unwrap()
            .to_reply();
        assert_eq!(r.to_bytes(), b"451 4.7.1\r\n");
        let r = c
            .read_response(Duration::from_secs(1), "t")
            .await
            .unwrap()
            .to_reply();
        assert_eq!(r.to_bytes(), b"250 2.0.0\r\n");
    }

    #[tokio::test]
    async fn enhanced_code_of_wrong_class_is_not_taken() {
        let mut c = client_reading(b"550 2.1.0 odd\r\n").await;
        let r = c
            .read_response(Duration::from_secs(1), "t")
            .await
            .unwrap()
            .to_reply();
        assert_eq!(r.to_bytes(), b"550 5.0.0 2.1.0 odd\r\n");
    }

    #[tokio::test]
    async fn malformed_replies_are_fatal() {
        let cases: [(&[u8], &str); 6] = [
            (b"hello\r\n", "malformed reply line"),
            (b"220x\r\n", "malformed reply line"),
            (b"220-a\r\n250 b\r\n", "reply code changes within a reply"),
            (b"199 too low\r\n", "reply code out of range"),
            (b"620 too high\r\n", "reply code out of range"),
            (b"", "closed"),
        ];
        for (input, want) in cases {
            let mut c = client_reading(input).await;
            if input.is_empty() {
                // Server closes without a greeting.
                let (a, b) = duplex(64);
                drop(b);
                c = SmtpClient::new(a, fast());
            }
            let e = c.greeting().await.unwrap_err();
            assert!(e.to_string().contains(want), "{input:?}: {e}");
            assert!(e.is_fatal());
            assert!(!c.is_usable());
            // Later calls fail fast.
            let e = c.rset().await.unwrap_err();
            assert!(matches!(e, ClientError::Broken));
        }
    }

    #[tokio::test]
    async fn reply_size_limits() {
        let long = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        let mut c = client_reading(long.as_bytes()).await;
        let e = c.greeting().await.unwrap_err();
        assert!(
            matches!(e, ClientError::Protocol("reply line too long")),
            "{e}"
        );

        let many = "220-x\r\n".repeat(MAX_REPLY_LINES + 1);
        let mut c = client_reading(many.as_bytes()).await;
        let e = c.greeting().await.unwrap_err();
        assert!(
            matches!(e, ClientError::Protocol("too many reply lines")),
            "{e}"
        );

        // Control characters and injected CRs in reply text are sanitized away.
        let mut c = client_reading(b"220 a\x00b\rc\x1bd\r\n").await;
        assert_eq!(
            c.greeting().await.unwrap().to_bytes(),
            b"220 2.0.0 abcd\r\n"
        );
    }

    #[tokio::test]
    async fn greeting_rejection_and_timeouts() {
        let mut c = client_reading(b"554 5.3.2 go away\r\n").await;
        let e = c.greeting().await.unwrap_err();
        match e {
            ClientError::Rejected {
                stage: "greeting",
                reply,
            } => {
                assert_eq!(reply.to_bytes(), b"554 5.3.2 go away\r\n");
            }
            other => panic!("unexpected {other}"),
        }

        let mut t = fast();
        t.greeting = Duration::from_millis(100);
        let (a, _b) = duplex(64);
        let mut c = SmtpClient::new(a, t);
        let e = c.greeting().await.unwrap_err();
        assert!(
            matches!(e, ClientError::Timeout("waiting for greeting")),
            "{e}"
        );
        assert!(!c.is_usable());
    }

    #[tokio::test]
    async fn connection_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = SmtpClient::connect(&addr, "mx", TlsPolicy::None, fast())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(
            !e.reason().contains(&addr),
            "reason leaks the address: {}",
            e.reason()
        );
    }

    #[tokio::test]
    async fn required_tls_not_offered() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250 SIZE\r\n"),
        ]])
        .await;
        let e = SmtpClient::connect(&server.addr, "mx", TlsPolicy::Required, fast())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::TlsNotOffered), "{e}");
        assert_eq!(server.received().await[0], "EHLO mx\r\n");
    }

    #[tokio::test]
    async fn starttls_upgrade_and_re_ehlo() {
        let config = self_signed_server_config();
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250-STARTTLS\r\n250 SIZE 100\r\n"),
            Step::Line,
            Step::Send("220 2.0.0 Ready to start TLS\r\n"),
            Step::StartTls(config),
            Step::Line,
            Step::Send("250-up.test\r\n250-8BITMIME\r\n250 SIZE 200\r\n"),
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;
        let addr = server.addr.replace("127.0.0.1", "localhost");
        let mut c = SmtpClient::connect(&addr, "mx", TlsPolicy::Required, fast())
            .await
            .unwrap();
        let tls = c.tls_info().cloned().unwrap();
        assert!(tls.version.starts_with("TLSv1_"), "{tls:?}");
        assert!(tls.cipher.starts_with("TLS"), "{tls:?}");
        // Extensions come from the EHLO over TLS.
        assert_eq!(c.extensions().size, Some(200));
        assert!(c.extensions().eight_bit_mime && !c.extensions().starttls);
        let r = c
            .mail_from(
                "a@b",
                &MailParams {
                    size: Some(5),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(r.unwrap().code(), 250);
        assert_eq!(c.quit().await.unwrap().code(), 221);
        assert_eq!(
            server.received().await[0],
            "EHLO mx\r\nSTARTTLS\r\n<TLS>EHLO mx\r\nMAIL FROM:<a@b> SIZE=5\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn starttls_response_injection_is_refused() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250 STARTTLS\r\n"),
            Step::Line,
            Step::Send("220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n"),
        ]])
        .await;
        let e = SmtpClient::connect(&server.addr, "mx", TlsPolicy::Opportunistic, fast())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Protocol("data received after STARTTLS reply")
            ),
            "{e}"
        );
        assert_eq!(server.received().await[0], "EHLO mx\r\nSTARTTLS\r\n");
    }

    #[tokio::test]
    async fn opportunistic_continues_when_starttls_refused() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test\r\n"),
            Step::Line,
            Step::Send("250-up.test\r\n250-STARTTLS\r\n250 SIZE 100\r\n"),
            Step::Line,
            Step::Send("454 4.7.0 TLS not available\r\n"),
            Step::Line,
            Step::Send("221 Bye\r\n"),
        ]])
        .await;
        let c = SmtpClient::connect(&server.addr, "mx", TlsPolicy::Opportunistic, fast())
            .await
            .unwrap();
        assert!(c.tls_info().is_none());
        assert_eq!(c.extensions().size, Some(100));
        c.quit().await.unwrap();
        assert_eq!(
            server.received().await[0],
            "EHLO mx\r\nSTARTTLS\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn opportunistic_handshake_failure_reconnects_in_plaintext() {
        let server = FakeServer::start(vec![
            vec![
                Step::Send("220 up.test\r\n"),
                Step::Line,
                Step::Send("250-up.test\r\n250 STARTTLS\r\n"),
                Step::Line,
                Step::Send("220 go\r\n"),
                Step::Close, // instead of a ServerHello
            ],
            vec![
                Step::Send("220 up.test\r\n"),
                Step::Line,
                Step::Send("250-up.test\r\n250 STARTTLS\r\n"),
                Step::Line,
                Step::Send("221 Bye\r\n"),
            ],
        ])
        .await;
        let c = SmtpClient::connect(&server.addr, "mx", TlsPolicy::Opportunistic, fast())
            .await
            .unwrap();
        assert!(c.tls_info().is_none());
        c.quit().await.unwrap();
        let got = server.received().await;
        assert_eq!(got[0], "EHLO mx\r\nSTARTTLS\r\n");
        assert_eq!(got[1], "EHLO mx\r\nQUIT\r\n");
    }

    #[test]
    fn extension_parsing() {
        let e = Extensions::parse(&["size", "Size 12x", "starttls", "X-FOO bar", ""]);
        assert_eq!(e.size, Some(0));
        assert!(e.starttls && e.esmtp && !e.pipelining);
        let e = Extensions::parse(&["SIZE 52428800", "PIPELINING"]);
        assert_eq!(e.size, Some(52_428_800));
        assert!(e.pipelining);
    }

    #[test]
    fn server_names() {
        assert_eq!(
            server_name_for("mail.example.test:25", None),
            ServerName::try_from("mail.example.test").unwrap()
        );
        assert_eq!(
            server_name_for("[2001:db8::1]:25", None),
            ServerName::try_from("2001:db8::1").unwrap()
        );
        assert_eq!(
            server_name_for("192.0.2.1:25", None),
            ServerName::try_from("192.0.2.1").unwrap()
        );
    }

    #[test]
    fn tls_config_builds_once() {
        let a = client_tls_config().unwrap();
        let b = client_tls_config().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
