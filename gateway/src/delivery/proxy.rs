//! Before-queue relaying ("proxy" delivery mode).
//!
//! A [`ProxyTransaction`] belongs to one client session and mirrors that session's
//! transactions on one upstream connection: upstream `MAIL` when our client's `MAIL` has
//! passed our own checks, `RCPT` per recipient, and the message (with our `Received:`
//! header prepended) at the end of `DATA`. Every method returns the [`Reply`] to give our
//! client: the upstream's own reply, sanitized (code, enhanced code and text preserved),
//! or one of ours when the upstream could not be asked:
//!
//! | situation | reply |
//! | --- | --- |
//! | upstream cannot be reached or refuses the session | `451 4.4.1 Upstream unavailable: <reason>` |
//! | `tls = required` and no `STARTTLS` (or it is refused) | `451 4.7.4 Upstream unavailable: ...` |
//! | `tls = required` and the TLS handshake fails | `451 4.7.5 Upstream unavailable: ...` |
//! | I/O error, timeout or garbage from upstream mid-transaction | `451 4.4.2 Upstream connection lost` |
//! | upstream `421` (it is closing the connection) | the same reply as `451` |
//! | message needs SMTPUTF8, upstream lacks it | `553 5.6.7` |
//! | `DATA` with no recipient accepted upstream | `554 5.5.1` |
//!
//! The upstream connection is opened lazily at the first `MAIL`, kept for the following
//! transactions of the session (a transaction left open is closed with `RSET` first), and
//! dropped after any error; the next `MAIL` then reconnects. A kept connection that turns
//! out to be dead at `MAIL` (idle timeout upstream) is replaced once, transparently.
//!
//! Told to (`delivery.xclient`, see [`ProxyTransaction::forward_to`]), the proxy tells
//! the upstream who the client is before each `MAIL` ([`ProxyTransaction::set_client`]):
//! XCLIENT once per connection, or XFORWARD per transaction where only that is offered
//! (see [`super::client::forward`]). The connection is the client session's own, so its
//! XCLIENT holds for every transaction; should the client's identity change (a new
//! HELO), or a transaction move to a next hop that a plugin routed it to, the new
//! identity or hop gets a connection of its own, told again.
//!
//! Note: if the connection breaks after the message was sent but before the final reply
//! arrived, our client gets a 451 although the upstream may have accepted the message; a
//! retry can then deliver it twice. That is inherent to before-queue relaying.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::client::{ClientError, ClientIdentity, Forwarding, SmtpClient, Timeouts, TlsPolicy};
use crate::smtp::{Enhanced, MailParams, Message, Reply, TlsInfo};

/// Where and how to relay in proxy mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    /// The upstream server, `host:port`.
    pub addr: String,
    /// When to use `STARTTLS` towards it.
    pub tls: TlsPolicy,
    /// The name we give in `EHLO` (our hostname).
    pub helo_name: String,
    /// Per-command timeouts.
    pub timeouts: Timeouts,
}

impl ProxyTarget {
    /// A target with opportunistic TLS and the default [`Timeouts`].
    pub fn new(addr: impl Into<String>, helo_name: impl Into<String>) -> ProxyTarget {
        ProxyTarget {
            addr: addr.into(),
            tls: TlsPolicy::Opportunistic,
            helo_name: helo_name.into(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Where the upstream conversation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No transaction open upstream.
    Idle,
    /// `MAIL` accepted upstream; `RCPT`/`DATA` may follow.
    InTransaction,
    /// The connection broke during the transaction; everything up to the next `MAIL` or
    /// reset fails with `451 4.4.2`.
    Lost,
}

/// The upstream side of one client session; see the module docs.
#[derive(Debug)]
pub struct ProxyTransaction {
    /// `delivery.upstream`: where recipients no plugin routed go.
    default: Arc<ProxyTarget>,
    /// The upstream the connection (if any) is to.
    target: Arc<ProxyTarget>,
    client: Option<SmtpClient<TcpStream>>,
    state: State,
    /// Recipients the upstream accepted in the current transaction.
    accepted: usize,
    /// The current transaction's `MAIL FROM`, to say again to another upstream.
    mail: Option<(String, MailParams)>,
    /// Next hops (`host:port` as configured) told who the client is.
    forward_to: Vec<String>,
    /// The client of the next transaction, and our id of that transaction.
    client_id: Option<(ClientIdentity, String)>,
}

/// A next hop a plugin routed a recipient to (`host:port` and its TLS policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// `host:port`.
    pub addr: String,
    /// When to use `STARTTLS` towards it.
    pub tls: TlsPolicy,
}

/// A reply of our own; `text` is sanitized like a peer's, since it may quote errors.
fn local(code: u16, enhanced: &str, text: &str) -> Reply {
    Reply::sanitized(code, Enhanced::parse(enhanced), &[text])
        .unwrap_or_else(|| Reply::new(451, "4.3.0", "Internal error"))
}

/// Whether `reply` can answer MAIL, RCPT or the end of DATA: 2xx, 4xx or 5xx. A 1xx or 3xx
/// (a `354` to RCPT, a `221` to MAIL) means the upstream is confused.
fn completes(reply: &Reply) -> bool {
    matches!(reply.code() / 100, 2 | 4 | 5)
}

/// `451 4.4.2 Upstream connection lost`.
fn lost() -> Reply {
    Reply::new(451, "4.4.2", "Upstream connection lost")
}

/// A `421` from upstream becomes `451` for our client: the upstream connection closes,
/// our client's does not.
fn demote_421(reply: &Reply) -> Reply {
    let lines: Vec<&str> = reply.lines().iter().map(String::as_str).collect();
    Reply::sanitized(451, reply.enhanced(), &lines).unwrap_or_else(lost)
}

impl ProxyTransaction {
    /// A proxy for one session; nothing is connected until the first
    /// [`ProxyTransaction::mail_from`].
    /// Takes a `ProxyTarget` or an `Arc<ProxyTarget>` shared by all sessions.
    pub fn new(target: impl Into<Arc<ProxyTarget>>) -> ProxyTransaction {
        let target = target.into();
        ProxyTransaction {
            default: Arc::clone(&target),
            target,
            client: None,
            state: State::Idle,
            accepted: 0,
            mail: None,
            forward_to: Vec::new(),
            client_id: None,
        }
    }

    /// The next hops (`host:port`, as configured) that are told who the client is
    /// (`delivery.xclient`): XCLIENT or XFORWARD, whichever they offer. Others never are.
    pub fn forward_to(&mut self, hosts: Vec<String>) {
        self.forward_to = hosts;
    }

    /// The client the next transaction is for (`None`: nobody to tell), and our id of
    /// the transaction (XFORWARD's `IDENT`). Takes effect at the next
    /// [`ProxyTransaction::mail_from`].
    pub fn set_client(&mut self, id: Option<ClientIdentity>, ident: String) {
        self.client_id = id.map(|id| (id, ident));
    }

    /// The identity to tell the current target, if it is one to tell.
    fn forwarding(&self) -> Option<(ClientIdentity, String)> {
        self.client_id
            .clone()
            .filter(|_| self.forward_to.contains(&self.target.addr))
    }

    /// Tells the upstream who the client is, on `client` (between transactions).
    /// `Ok(false)`: this connection speaks for another client; use a new one.
    async fn tell(
        &self,
        client: &mut SmtpClient<TcpStream>,
        fresh: bool,
    ) -> Result<bool, ClientError> {
        let Some((id, ident)) = self.forwarding() else {
            return Ok(true);
        };
        let upstream = &self.target.addr;
        match client
            .forward_client(&id, Some(&ident), &self.target.helo_name)
            .await?
        {
            Forwarding::NeedsNewConnection => return Ok(false),
            Forwarding::Xclient => tracing::debug!(upstream, "upstream told the client (XCLIENT)"),
            Forwarding::Xforward => {
                tracing::debug!(upstream, "upstream told the client (XFORWARD)")
            }
            Forwarding::NotOffered if fresh => {
                tracing::warn!(
                    upstream,
                    "delivery.xclient: the upstream offers neither XCLIENT nor XFORWARD to us (its smtpd_authorized_xclient_hosts?); it sees the gateway as the client"
                )
            }
            Forwarding::NotOffered => {}
            Forwarding::Refused(reply) => {
                tracing::warn!(upstream, %reply, "upstream refused XCLIENT/XFORWARD; it sees the gateway as the client")
            }
        }
        Ok(true)
    }

    /// The upstream the current transaction goes to (`host:port`).
    pub fn upstream(&self) -> &str {
        &self.target.addr
    }

    /// Recipients the upstream accepted in the current transaction.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Sends `RCPT TO` to `hop` (`None`: the default upstream). One transaction goes to
    /// one upstream: before the upstream accepted any recipient of it the transaction
    /// moves (the connection is closed, one to `hop` opened, `MAIL FROM` said again);
    /// after that, a recipient for another hop gets `451 4.3.0` and is not sent.
    pub async fn rcpt_to_via(&mut self, rcpt: &str, hop: Option<&Hop>) -> Reply {
        let (addr, tls) = match hop {
            Some(h) => (h.addr.clone(), h.tls),
            None => (self.default.addr.clone(), self.default.tls),
        };
        let addr = addr.as_str();
        if self.state == State::InTransaction
            && (addr != self.target.addr || tls != self.target.tls)
        {
            if self.accepted > 0 {
                tracing::info!(rcpt, upstream = %self.target.addr, next_hop = addr, "recipient for another next hop deferred to a transaction of its own");
                return local(
                    451,
                    "4.3.0",
                    &format!(
                        "<{rcpt}>: this recipient goes to another next hop than this \
                         transaction's; send it again in a new transaction"
                    ),
                );
            }
            let Some((sender, params)) = self.mail.clone() else {
                return lost();
            };
            self.close().await;
            self.target = Arc::new(ProxyTarget {
                addr: addr.to_string(),
                tls,
                ..(*self.default).clone()
            });
            tracing::debug!(
                rcpt,
                upstream = addr,
                "transaction moved to the recipient's next hop"
            );
            let reply = self.mail_from(&sender, &params).await;
            if !reply.is_positive() {
                return reply;
            }
        }
        self.rcpt_to(rcpt).await
    }

    /// `true` while an upstream connection is open.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// TLS parameters of the upstream connection, if it uses TLS.
    pub fn upstream_tls(&self) -> Option<&TlsInfo> {
        self.client.as_ref().and_then(SmtpClient::tls_info)
    }

    /// Starts a transaction upstream: connects if needed (`451 4.4.1`/`4.7.x` on failure),
    /// closes an open transaction with `RSET`, sends `MAIL FROM` and returns the
    /// upstream's reply.
    pub async fn mail_from(&mut self, envelope_sender: &str, params: &MailParams) -> Reply {
        if self.state == State::InTransaction {
            self.rset_or_drop().await;
        }
        self.state = State::Idle;
        self.accepted = 0;
        self.mail = Some((envelope_sender.to_string(), params.clone()));

        // A connection kept from an earlier transaction may have died meanwhile; if it
        // has, try once more on a fresh one.
        let mut reused = self.client.is_some();
        loop {
            if self.client.is_none() {
                match SmtpClient::connect(
                    &self.target.addr,
                    &self.target.helo_name,
                    self.target.tls,
                    self.target.timeouts,
                )
                .await
                {
                    Ok(c) => self.client = Some(c),
                    Err(e) => {
                        tracing::warn!(upstream = %self.target.addr, error = %e, "upstream unavailable");
                        return self.unavailable(&e);
                    }
                }
            }
            let Some(mut client) = self.client.take() else {
                return lost();
            };
            match self.tell(&mut client, !reused).await {
                Ok(true) => {}
                Ok(false) if reused => {
                    // Speaks for another client: a new connection for this one.
                    let _ = client.quit().await;
                    reused = false;
                    continue;
                }
                // A new connection speaks for nobody yet; never here.
                Ok(false) => return lost(),
                Err(e) => {
                    if reused {
                        tracing::debug!(upstream = %self.target.addr, error = %e, "kept upstream connection failed, reconnecting");
                        reused = false;
                        continue;
                    }
                    tracing::warn!(upstream = %self.target.addr, error = %e, "upstream unavailable");
                    return self.unavailable(&e);
                }
            }
            let client = self.client.insert(client);
            match client.mail_from(envelope_sender, params).await {
                Ok(reply) if reply.code() == 421 => {
                    self.client = None;
                    if reused {
                        reused = false;
                        continue;
                    }
                    return demote_421(&reply);
                }
                Ok(reply) if !completes(&reply) => return self.nonsense("MAIL", &reply),
                Ok(reply) => {
                    if reply.is_positive() {
                        self.state = State::InTransaction;
                    }
                    return reply;
                }
                Err(ClientError::Smtputf8NotSupported) => {
                    return Reply::new(553, "5.6.7", "Upstream does not support SMTPUTF8");
                }
                Err(ClientError::InvalidArgument(_)) => {
                    return Reply::new(501, "5.1.7", "Bad sender address syntax");
                }
                Err(e) => {
                    self.client = None;
                    if reused {
                        tracing::debug!(upstream = %self.target.addr, error = %e, "kept upstream connection failed, reconnecting");
                        reused = false;
                        continue;
                    }
                    tracing::warn!(upstream = %self.target.addr, error = %e, "upstream connection lost at MAIL");
                    return lost();
                }
            }
        }
    }

    /// Sends `RCPT TO` upstream and returns the upstream's reply for this recipient.
    pub async fn rcpt_to(&mut self, rcpt: &str) -> Reply {
        match self.state {
            State::Idle => return Reply::new(503, "5.5.1", "Bad sequence of commands"),
            State::Lost => return lost(),
            State::InTransaction => {}
        }
        let Some(client) = self.client.as_mut() else {
            return self.mark_lost();
        };
        match client.rcpt_to(rcpt).await {
            Ok(reply) if reply.code() == 421 => {
                self.mark_lost();
                demote_421(&reply)
            }
            Ok(reply) if !completes(&reply) => self.nonsense("RCPT", &reply),
            Ok(reply) => {
                if reply.is_positive() {
                    self.accepted += 1;
                }
                reply
            }
            Err(ClientError::InvalidArgument(_)) => {
                Reply::new(501, "5.1.3", "Bad recipient address syntax")
            }
            Err(e) => {
                tracing::warn!(upstream = %self.target.addr, error = %e, "upstream connection lost at RCPT");
                self.mark_lost()
            }
        }
    }

    /// Sends the message upstream: `DATA`, then `received_header` and the message text,
    /// dot-stuffed, and returns the upstream's final reply (or its refusal of `DATA`).
    /// Without any recipient accepted upstream the answer is `554 5.5.1` and nothing is
    /// sent. After the final reply the transaction is over, whatever the reply.
    pub async fn data(&mut self, message: &Message, received_header: &str) -> Reply {
        match self.state {
            State::Idle => return Reply::new(503, "5.5.1", "Bad sequence of commands"),
            State::Lost => return lost(),
            State::InTransaction => {}
        }
        if self.accepted == 0 {
            return Reply::new(554, "5.5.1", "No valid recipients");
        }
        let Some(client) = self.client.as_mut() else {
            return self.mark_lost();
        };
        let reply = match client.data_start().await {
            Ok(reply) if reply.code() == 354 => reply,
            Ok(reply) if reply.code() == 421 => {
                self.mark_lost();
                return demote_421(&reply);
            }
            Ok(refusal) if !completes(&refusal) => return self.nonsense("DATA", &refusal),
            Ok(refusal) => return refusal,
            Err(e) => {
                tracing::warn!(upstream = %self.target.addr, error = %e, "upstream connection lost at DATA");
                return self.mark_lost();
            }
        };
        debug_assert_eq!(reply.code(), 354);
        // The header must end its own line, or it would run into the message's first.
        let mut header = received_header.as_bytes().to_vec();
        if !header.is_empty() && !header.ends_with(b"\n") {
            header.extend_from_slice(b"\r\n");
        }
        let pieces = std::iter::once(Ok(bytes::Bytes::from(header))).chain(message.text.chunks());
        match client.data_send_pieces(pieces).await {
            Ok(reply) if !completes(&reply) => self.nonsense("end of DATA", &reply),
            Ok(reply) => {
                self.state = State::Idle;
                self.accepted = 0;
                if reply.code() == 421 {
                    self.client = None;
                    return demote_421(&reply);
                }
                reply
            }
            Err(e) => {
                tracing::warn!(upstream = %self.target.addr, id = %message.id, error = %e, "upstream connection lost during message transfer");
                self.mark_lost()
            }
        }
    }

    /// Abandons the current transaction (our client sent `RSET`, or the session decided
    /// to reject the message): `RSET` upstream if a transaction is open there. A failing
    /// `RSET` drops the connection.
    pub async fn reset(&mut self) {
        if self.state == State::InTransaction {
            self.rset_or_drop().await;
        }
        self.state = State::Idle;
        self.accepted = 0;
    }

    /// Ends the upstream session politely (`QUIT`), if there is one.
    pub async fn quit(mut self) {
        self.close().await;
    }

    /// Like [`ProxyTransaction::quit`] for callers that only hold `&mut self`: sends
    /// `QUIT` and drops the connection (an open transaction is abandoned by that). A later
    /// [`ProxyTransaction::mail_from`] would connect again.
    pub async fn close(&mut self) {
        self.state = State::Idle;
        self.accepted = 0;
        if let Some(client) = self.client.take()
            && client.is_usable()
        {
            let _ = client.quit().await;
        }
    }

    async fn rset_or_drop(&mut self) {
        if let Some(client) = self.client.as_mut() {
            match client.rset().await {
                Ok(reply) if reply.code() == 250 => {}
                Ok(reply) => {
                    tracing::warn!(upstream = %self.target.addr, %reply, "RSET refused, dropping upstream connection");
                    self.client = None;
                }
                Err(e) => {
                    tracing::debug!(upstream = %self.target.addr, error = %e, "RSET failed, dropping upstream connection");
                    self.client = None;
                }
            }
        }
    }

    /// Drops the connection mid-transaction and returns `451 4.4.2`.
    /// The upstream answered `stage` with a code that makes no sense there: it is not
    /// trusted further (the connection is dropped) and our client gets `451 4.4.0`.
    fn nonsense(&mut self, stage: &str, reply: &Reply) -> Reply {
        tracing::warn!(upstream = %self.target.addr, stage, %reply, "upstream reply makes no sense here; connection dropped");
        self.mark_lost();
        Reply::new(451, "4.4.0", "Upstream sent an unexpected reply")
    }

    fn mark_lost(&mut self) -> Reply {
        self.client = None;
        self.state = State::Lost;
        self.accepted = 0;
        lost()
    }

    /// The reply for a failed connection setup.
    fn unavailable(&self, e: &ClientError) -> Reply {
        let enhanced = match e {
            ClientError::TlsNotOffered | ClientError::StartTlsRefused(_) => "4.7.4",
            ClientError::Tls(_) => "4.7.5",
            _ => "4.4.1",
        };
        local(
            451,
            enhanced,
            &format!("Upstream unavailable: {}", e.reason()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivery::testutil::{FakeServer, Step};
    use crate::smtp::BodyType;

    const GREET: [Step; 3] = [
        Step::Send("220 up.test ESMTP\r\n"),
        Step::Line,
        Step::Send(
            "250-up.test\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
        ),
    ];

    fn script(rest: Vec<Step>) -> Vec<Step> {
        let mut s = GREET.to_vec();
        s.extend(rest);
        s
    }

    fn target(addr: &str) -> ProxyTarget {
        let mut t = ProxyTarget::new(addr, "mx.example.test");
        assert_eq!(t.tls, TlsPolicy::Opportunistic);
        assert_eq!(t.timeouts, Timeouts::default());
        t.timeouts = crate::delivery::testutil::fast_timeouts();
        t
    }

    fn message(data: &[u8]) -> Message {
        Message::sample("s@example.org", &["a@up.test"], data)
    }

    const RECEIVED: &str =
        "Received: from client ([192.0.2.1])\r\n\tby mx; Thu, 01 Jan 1970 00:00:00 +0000\r\n";

    #[tokio::test]
    async fn relays_transactions_with_passthrough_replies() {
        let server = FakeServer::start(vec![script(vec![
            // Transaction 1: abandoned by a new MAIL -> RSET first.
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.0.0 Ok\r\n"),
            // Transaction 2.
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("550 5.1.1 <b@up.test>: Recipient address rejected: User unknown\r\n"),
            Step::Line,
            Step::Send("354 End data with <CR><LF>.<CR><LF>\r\n"),
            Step::Data,
            Step::Send("250 2.0.0 Ok: queued as 9A2F\r\n"),
            // Transaction 3: right after a completed one, no RSET needed.
            Step::Line,
            Step::Send("452 4.3.1 Insufficient system storage\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ])])
        .await;

        let mut p = ProxyTransaction::new(target(&server.addr));
        assert!(!p.is_connected());
        let params = MailParams {
            size: Some(42),
            body: BodyType::EightBitMime,
            smtputf8: false,
        };
        assert_eq!(
            p.mail_from("s@example.org", &params).await.to_bytes(),
            b"250 2.1.0 Ok\r\n"
        );
        assert!(p.is_connected());
        assert_eq!(p.rcpt_to("x@up.test").await.code(), 250);

        assert_eq!(p.mail_from("s@example.org", &params).await.code(), 250);
        assert_eq!(p.rcpt_to("a@up.test").await.to_bytes(), b"250 2.1.5 Ok\r\n");
        let r = p.rcpt_to("b@up.test").await;
        assert_eq!(
            r.to_bytes(),
            b"550 5.1.1 <b@up.test>: Recipient address rejected: User unknown\r\n"
        );
        let r = p
            .data(&message(b"Subject: x\r\n\r\n.dot\r\nend\r\n"), RECEIVED)
            .await;
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok: queued as 9A2F\r\n");

        let r = p.mail_from("t@example.org", &MailParams::default()).await;
        assert_eq!(r.to_bytes(), b"452 4.3.1 Insufficient system storage\r\n");
        // MAIL was refused: no transaction, so RCPT is out of sequence.
        assert_eq!(
            p.rcpt_to("a@up.test").await.to_bytes(),
            b"503 5.5.1 Bad sequence of commands\r\n"
        );
        p.quit().await;

        let got = server.received().await;
        assert_eq!(
            got[0],
            format!(
                "EHLO mx.example.test\r\n\
                 MAIL FROM:<s@example.org> SIZE=42 BODY=8BITMIME\r\n\
                 RCPT TO:<x@up.test>\r\n\
                 RSET\r\n\
                 MAIL FROM:<s@example.org> SIZE=42 BODY=8BITMIME\r\n\
                 RCPT TO:<a@up.test>\r\n\
                 RCPT TO:<b@up.test>\r\n\
                 DATA\r\n\
                 {RECEIVED}Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n\
                 MAIL FROM:<t@example.org>\r\n\
                 QUIT\r\n"
            )
        );
    }

    /// The identity of a client at `addr` that said `EHLO helo`.
    fn client_id(addr: &str, helo: &str) -> ClientIdentity {
        let mut f = crate::smtp::SessionFacts::new(
            "S1".into(),
            addr.parse().unwrap(),
            "192.0.2.25:25".parse().unwrap(),
            crate::smtp::Listener::Smtp,
        );
        f.helo = Some(crate::smtp::Helo {
            name: helo.into(),
            extended: true,
        });
        ClientIdentity::of(&f).unwrap()
    }

    const XCLIENT_EHLO: &str =
        "250-up.test\r\n250-XCLIENT NAME ADDR PROTO HELO PORT\r\n250 8BITMIME\r\n";

    /// A connection offering XCLIENT: greeting, EHLO, XCLIENT, 220, EHLO again.
    fn xclient_script(rest: Vec<Step>) -> Vec<Step> {
        let mut s = vec![
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            Step::Send(XCLIENT_EHLO),
            Step::Line,
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            // After XCLIENT names an outside client the server no longer offers it.
            Step::Send("250-up.test\r\n250 8BITMIME\r\n"),
        ];
        s.extend(rest);
        s
    }

    #[tokio::test]
    async fn xclient_once_per_connection_and_another_client_gets_a_new_one() {
        let server = FakeServer::start(vec![
            xclient_script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                // Same client again: RSET, MAIL, no second XCLIENT.
                Step::Line,
                Step::Send("250 2.0.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                // Another client: RSET, then QUIT for a new connection.
                Step::Line,
                Step::Send("250 2.0.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 2.0.0 Bye\r\n"),
            ]),
            xclient_script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 2.0.0 Bye\r\n"),
            ]),
        ])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        p.forward_to(vec![server.addr.clone()]);
        p.set_client(
            Some(client_id("203.0.113.7:40001", "mail.client.test")),
            "S1.1".into(),
        );
        let none = MailParams::default();
        assert_eq!(p.mail_from("a@client.test", &none).await.code(), 250);
        p.set_client(
            Some(client_id("203.0.113.7:40001", "mail.client.test")),
            "S1.2".into(),
        );
        assert_eq!(p.mail_from("b@client.test", &none).await.code(), 250);
        p.set_client(
            Some(client_id("198.51.100.9:5000", "other.test")),
            "S2.1".into(),
        );
        assert_eq!(p.mail_from("c@other.test", &none).await.code(), 250);
        p.quit().await;
        let got = server.received().await;
        assert_eq!(
            got[0],
            "EHLO mx.example.test\r\n\
             XCLIENT HELO=mail.client.test PROTO=ESMTP PORT=40001 NAME=[UNAVAILABLE] ADDR=203.0.113.7\r\n\
             EHLO mail.client.test\r\n\
             MAIL FROM:<a@client.test>\r\n\
             RSET\r\n\
             MAIL FROM:<b@client.test>\r\n\
             RSET\r\n\
             QUIT\r\n"
        );
        assert_eq!(
            got[1],
            "EHLO mx.example.test\r\n\
             XCLIENT HELO=other.test PROTO=ESMTP PORT=5000 NAME=[UNAVAILABLE] ADDR=198.51.100.9\r\n\
             EHLO other.test\r\n\
             MAIL FROM:<c@other.test>\r\n\
             QUIT\r\n"
        );
    }

    #[tokio::test]
    async fn xforward_before_each_transaction_and_nothing_for_hosts_not_enabled() {
        let server = FakeServer::start(vec![
            vec![
                Step::Send("220 up.test ESMTP\r\n"),
                Step::Line,
                Step::Send("250-up.test\r\n250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n250 8BITMIME\r\n"),
                Step::Line,
                Step::Send("250 2.0.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.0.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.0.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 2.0.0 Bye\r\n"),
            ],
            vec![
                Step::Send("220 up.test ESMTP\r\n"),
                Step::Line,
                Step::Send(XCLIENT_EHLO),
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 2.0.0 Bye\r\n"),
            ],
        ])
        .await;
        let id = client_id("203.0.113.7:40001", "mail.client.test");
        let none = MailParams::default();
        let mut p = ProxyTransaction::new(target(&server.addr));
        p.forward_to(vec![server.addr.clone()]);
        p.set_client(Some(id.clone()), "S1.1".into());
        assert_eq!(p.mail_from("a@client.test", &none).await.code(), 250);
        p.set_client(Some(id.clone()), "S1.2".into());
        assert_eq!(p.mail_from("b@client.test", &none).await.code(), 250);
        p.quit().await;
        // Not a host the admin enabled: nothing is said even though it offers XCLIENT.
        let mut p = ProxyTransaction::new(target(&server.addr));
        p.forward_to(vec!["127.0.0.1:1".into()]);
        p.set_client(Some(id), "S2.1".into());
        assert_eq!(p.mail_from("c@client.test", &none).await.code(), 250);
        p.quit().await;
        let got = server.received().await;
        let xf = |ident: &str| {
            format!(
                "XFORWARD NAME=[UNAVAILABLE] ADDR=203.0.113.7 PORT=40001 PROTO=ESMTP \
                 HELO=mail.client.test IDENT={ident} SOURCE=REMOTE\r\n"
            )
        };
        assert_eq!(
            got[0],
            format!(
                "EHLO mx.example.test\r\n{}MAIL FROM:<a@client.test>\r\nRSET\r\n{}\
                 MAIL FROM:<b@client.test>\r\nQUIT\r\n",
                xf("S1.1"),
                xf("S1.2")
            )
        );
        assert_eq!(
            got[1],
            "EHLO mx.example.test\r\nMAIL FROM:<c@client.test>\r\nQUIT\r\n"
        );
    }

    /// A default upstream whose transaction moves away at the first RCPT: MAIL, then QUIT.
    async fn moving_default() -> FakeServer {
        FakeServer::start(vec![xclient_script(vec![
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ])])
        .await
    }

    #[tokio::test]
    async fn a_transaction_moved_to_a_routed_hop_tells_it_only_if_enabled_for_it() {
        let id = client_id("203.0.113.7:40001", "mail.client.test");
        let none = MailParams::default();
        let hop = |addr: &str| Hop {
            addr: addr.to_string(),
            tls: TlsPolicy::None,
        };
        let tail = vec![
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ];
        // A hop the admin enabled: the new connection is told again.
        let default = moving_default().await;
        let told = FakeServer::start(vec![xclient_script(tail.clone())]).await;
        let mut t = target(&default.addr);
        t.tls = TlsPolicy::None;
        let mut p = ProxyTransaction::new(t);
        p.forward_to(vec![default.addr.clone(), told.addr.clone()]);
        p.set_client(Some(id.clone()), "S1.1".into());
        assert_eq!(p.mail_from("s@client.test", &none).await.code(), 250);
        let r = p.rcpt_to_via("a@told.test", Some(&hop(&told.addr))).await;
        assert_eq!((r.code(), p.upstream()), (250, told.addr.as_str()), "{r}");
        p.quit().await;
        assert!(default.received().await[0].contains("XCLIENT "));
        assert_eq!(
            told.received().await[0],
            "EHLO mx.example.test\r\n\
             XCLIENT HELO=mail.client.test PROTO=ESMTP PORT=40001 NAME=[UNAVAILABLE] ADDR=203.0.113.7\r\n\
             EHLO mail.client.test\r\n\
             MAIL FROM:<s@client.test>\r\n\
             RCPT TO:<a@told.test>\r\n\
             QUIT\r\n"
        );
        // A hop a plugin chose that the admin did not enable: told nothing, though it
        // offers XCLIENT.
        let default = moving_default().await;
        let mut untold_script = vec![
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            Step::Send(XCLIENT_EHLO),
        ];
        untold_script.extend(tail);
        let untold = FakeServer::start(vec![untold_script]).await;
        let mut t = target(&default.addr);
        t.tls = TlsPolicy::None;
        let mut p = ProxyTransaction::new(t);
        p.forward_to(vec![default.addr.clone()]);
        p.set_client(Some(id), "S1.2".into());
        assert_eq!(p.mail_from("s@client.test", &none).await.code(), 250);
        let r = p
            .rcpt_to_via("b@untold.test", Some(&hop(&untold.addr)))
            .await;
        assert_eq!((r.code(), p.upstream()), (250, untold.addr.as_str()), "{r}");
        p.quit().await;
        let _ = default.received().await;
        assert_eq!(
            untold.received().await[0],
            "EHLO mx.example.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<b@untold.test>\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn a_refused_xclient_is_logged_and_the_mail_goes_on() {
        let server = FakeServer::start(vec![vec![
            Step::Send("220 up.test ESMTP\r\n"),
            Step::Line,
            Step::Send(XCLIENT_EHLO),
            Step::Line,
            Step::Send("550 5.7.0 Error: insufficient authorization\r\n"),
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        p.forward_to(vec![server.addr.clone()]);
        p.set_client(Some(client_id("203.0.113.7:1", "h.test")), "S1.1".into());
        assert_eq!(
            p.mail_from("a@client.test", &MailParams::default())
                .await
                .code(),
            250
        );
        p.quit().await;
        let got = server.received().await;
        assert!(got[0].contains("XCLIENT "), "{}", got[0]);
        assert!(
            got[0].ends_with("\r\nMAIL FROM:<a@client.test>\r\nQUIT\r\n"),
            "no EHLO after a refused XCLIENT: {}",
            got[0]
        );
    }

    #[tokio::test]
    async fn no_accepted_recipient_gives_554_without_data() {
        let server = FakeServer::start(vec![script(vec![
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("550 5.1.1 unknown\r\n"),
            Step::Line,
            Step::Send("250 2.0.0 Ok\r\n"),
            Step::Line,
            Step::Send("221 Bye\r\n"),
        ])])
        .await;
        // Sessions share one Arc'd target.
        let mut p = ProxyTransaction::new(Arc::new(target(&server.addr)));
        assert_eq!(p.mail_from("s@x", &MailParams::default()).await.code(), 250);
        assert_eq!(p.rcpt_to("n@up.test").await.code(), 550);
        let r = p.data(&message(b"x\r\n"), RECEIVED).await;
        assert_eq!(r.to_bytes(), b"554 5.5.1 No valid recipients\r\n");
        p.reset().await;
        p.close().await;
        assert!(!p.is_connected());
        assert_eq!(
            server.received().await[0],
            "EHLO mx.example.test\r\nMAIL FROM:<s@x>\r\nRCPT TO:<n@up.test>\r\nRSET\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn data_refusal_and_final_rejection_pass_through() {
        let server = FakeServer::start(vec![script(vec![
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("451 4.3.0 Not now\r\n"),
            Step::Line,
            Step::Send("354 go\r\n"),
            Step::Data,
            Step::Send("554-5.7.1 Message rejected as spam\r\n554 5.7.1 see policy\r\n"),
            Step::Line,
            Step::Send("221 Bye\r\n"),
        ])])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        p.mail_from("s@x", &MailParams::default()).await;
        p.rcpt_to("a@up.test").await;
        let r = p.data(&message(b"x\r\n"), RECEIVED).await;
        assert_eq!(r.to_bytes(), b"451 4.3.0 Not now\r\n");
        // The transaction is still open after a refused DATA; try again.
        let r = p.data(&message(b"x"), "Received: x").await;
        assert_eq!(
            r.to_bytes(),
            b"554-5.7.1 Message rejected as spam\r\n554 5.7.1 see policy\r\n"
        );
        p.quit().await;
        assert_eq!(
            server.received().await[0],
            "EHLO mx.example.test\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@up.test>\r\nDATA\r\nDATA\r\n\
             Received: x\r\nx\r\n.\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_451_4_4_1() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let mut p = ProxyTransaction::new(target(&addr));
        let r = p.mail_from("s@x", &MailParams::default()).await;
        assert_eq!(r.code(), 451);
        assert_eq!(r.enhanced(), Some(Enhanced(4, 4, 1)));
        assert!(
            r.lines()[0].starts_with("Upstream unavailable: cannot connect"),
            "{r}"
        );
        assert!(!r.lines()[0].contains(&addr));
        assert!(!p.is_connected());
    }

    #[tokio::test]
    async fn greeting_refused_is_451_4_4_1() {
        let server = FakeServer::start(vec![vec![
            Step::Send("554 5.3.2 No service\r\n"),
            Step::Close,
        ]])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        let r = p.mail_from("s@x", &MailParams::default()).await;
        assert_eq!(
            r.to_bytes(),
            b"451 4.4.1 Upstream unavailable: greeting rejected: 554 5.3.2 No service\r\n"
        );
    }

    #[tokio::test]
    async fn tls_required_but_not_offered_is_451_4_7_4() {
        let server = FakeServer::start(vec![GREET.to_vec()]).await;
        let mut t = target(&server.addr);
        t.tls = TlsPolicy::Required;
        let mut p = ProxyTransaction::new(t);
        let r = p.mail_from("s@x", &MailParams::default()).await;
        assert_eq!(r.code(), 451);
        assert_eq!(r.enhanced(), Some(Enhanced(4, 7, 4)));
        assert!(!p.is_connected());
    }

    #[tokio::test]
    async fn smtputf8_missing_upstream_is_553_5_6_7() {
        let server =
            FakeServer::start(vec![script(vec![Step::Line, Step::Send("221 Bye\r\n")])]).await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        let params = MailParams {
            smtputf8: true,
            ..MailParams::default()
        };
        let r = p.mail_from("ü@example.org", &params).await;
        assert_eq!(r.code(), 553);
        assert_eq!(r.enhanced(), Some(Enhanced(5, 6, 7)));
        assert!(p.is_connected());
        p.quit().await;
        assert_eq!(
            server.received().await[0],
            "EHLO mx.example.test\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn lost_connection_mid_transaction_then_reconnect() {
        let server = FakeServer::start(vec![
            script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Close,
            ]),
            script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 Bye\r\n"),
            ]),
        ])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        assert_eq!(p.mail_from("s@x", &MailParams::default()).await.code(), 250);
        let r = p.rcpt_to("a@up.test").await;
        assert_eq!(r.to_bytes(), b"451 4.4.2 Upstream connection lost\r\n");
        assert!(!p.is_connected());
        // The rest of the transaction fails the same way, without reconnecting.
        assert_eq!(
            p.rcpt_to("b@up.test").await.to_bytes(),
            b"451 4.4.2 Upstream connection lost\r\n"
        );
        assert_eq!(p.data(&message(b"x\r\n"), RECEIVED).await.code(), 451);
        // The next transaction reconnects.
        assert_eq!(
            p.mail_from("s2@x", &MailParams::default()).await.code(),
            250
        );
        p.quit().await;
        let got = server.received().await;
        assert_eq!(
            got[0],
            "EHLO mx.example.test\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@up.test>\r\n"
        );
        assert_eq!(
            got[1],
            "EHLO mx.example.test\r\nMAIL FROM:<s2@x>\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn timeout_mid_transaction_is_451_4_4_2() {
        let server = FakeServer::start(vec![script(vec![
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("354 go\r\n"),
            Step::Data,
            Step::Sleep(Duration::from_millis(600)),
            Step::Send("250 too late\r\n"),
        ])])
        .await;
        let mut t = target(&server.addr);
        t.timeouts.data_final = Duration::from_millis(200);
        let mut p = ProxyTransaction::new(t);
        p.mail_from("s@x", &MailParams::default()).await;
        p.rcpt_to("a@up.test").await;
        let r = p.data(&message(b"x\r\n"), RECEIVED).await;
        assert_eq!(r.to_bytes(), b"451 4.4.2 Upstream connection lost\r\n");
        assert!(!p.is_connected());
        drop(p);
        let got = server.received().await;
        assert!(
            got[0].ends_with(&format!("DATA\r\n{RECEIVED}x\r\n.\r\n")),
            "{}",
            got[0]
        );
    }

    #[tokio::test]
    async fn upstream_421_is_demoted_and_stale_connection_replaced() {
        let server = FakeServer::start(vec![
            script(vec![
                Step::Line,
                Step::Send("421 4.3.2 Service shutting down\r\n"),
                Step::Close,
            ]),
            script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("250 2.1.5 Ok\r\n"),
                Step::Line,
                Step::Send("354 go\r\n"),
                Step::Data,
                Step::Send("250 2.0.0 queued\r\n"),
                // Idle upstream closes the kept connection.
                Step::Send("421 4.4.2 idle timeout\r\n"),
                Step::Close,
            ]),
            script(vec![
                Step::Line,
                Step::Send("250 2.1.0 Ok\r\n"),
                Step::Line,
                Step::Send("221 Bye\r\n"),
            ]),
        ])
        .await;
        let mut p = ProxyTransaction::new(target(&server.addr));
        // Fresh connection answering 421: no retry, reply demoted to 451.
        let r = p.mail_from("s@x", &MailParams::default()).await;
        assert_eq!(r.to_bytes(), b"451 4.3.2 Service shutting down\r\n");
        assert!(!p.is_connected());
        // Next MAIL reconnects; one full transaction.
        assert_eq!(p.mail_from("s@x", &MailParams::default()).await.code(), 250);
        assert_eq!(p.rcpt_to("a@up.test").await.code(), 250);
        assert_eq!(p.data(&message(b"x\r\n"), RECEIVED).await.code(), 250);
        // The kept connection died meanwhile: replaced transparently.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            p.mail_from("s3@x", &MailParams::default()).await.code(),
            250
        );
        p.quit().await;
        let got = server.received().await;
        assert_eq!(got[0], "EHLO mx.example.test\r\nMAIL FROM:<s@x>\r\n");
        assert!(got[1].ends_with("x\r\n.\r\n"), "{}", got[1]);
        assert_eq!(
            got[2],
            "EHLO mx.example.test\r\nMAIL FROM:<s3@x>\r\nQUIT\r\n"
        );
    }
}
