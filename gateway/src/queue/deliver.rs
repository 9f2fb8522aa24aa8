//! One delivery attempt of one message to one destination: pick the next hop's
//! addresses, reuse an idle connection or open one, then MAIL, RCPT per recipient and
//! DATA. Every recipient gets an [`Outcome`]: the reply that decided it (2xx delivered,
//! 5xx failed: bounce, 4xx or connection trouble: retry later) and the host that gave it.
//!
//! A next hop the admin enabled it for (`delivery.xclient`, `xclient` on a route) is told
//! who the message's original client was, from the session kept with it in the spool:
//! XCLIENT once per connection, or XFORWARD before each transaction. A connection that
//! sent XCLIENT speaks for that client until it closes, so it is pooled under that
//! client and only reused for its messages; connections that did not are pooled as the
//! gateway's own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::route::Target;
use crate::delivery::{ClientError, ClientIdentity, Forwarding, SmtpClient, Timeouts};
use crate::smtp::{MailParams, Reply};

/// What happened to one recipient: the reply that decided it, a next hop's or ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// 2xx delivered, 5xx failed, anything else: retried later.
    pub reply: Reply,
    /// The host that gave the reply; `None` when the gateway itself decided.
    pub remote: Option<String>,
}

impl Outcome {
    /// The gateway's own verdict.
    pub fn ours(reply: Reply) -> Outcome {
        Outcome {
            reply,
            remote: None,
        }
    }
}

/// Our reply `code enhanced text`, the text made one line without control characters.
pub fn reply(code: u16, enhanced: &str, text: &str) -> Reply {
    Reply::new(code, enhanced, one_line(text))
}

/// Text on one line (lines joined with spaces), without control chars.
pub fn one_line(s: &str) -> String {
    let s: String = s
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// A pooled connection and when it went idle.
type Idle = (SmtpClient<TcpStream>, Instant);

/// Idle connections, by `addr` and TLS policy, for reuse.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

/// The pool key of connections to `t` that speak for `client` (`None`: the gateway's
/// own, no XCLIENT sent).
fn pool_key(t: &Target, client: Option<&ClientIdentity>) -> String {
    match client {
        None => format!("{}|{:?}", t.addr, t.tls),
        Some(c) => format!("{}|{:?}|xclient {c:?}", t.addr, t.tls),
    }
}

impl Pool {
    /// An idle connection to `t`: one that already speaks for `client` (XCLIENT), else
    /// one of the gateway's own.
    fn take(
        &self,
        t: &Target,
        client: Option<&ClientIdentity>,
        max_idle: Duration,
    ) -> Option<SmtpClient<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let keys = [
            client.map(|c| pool_key(t, Some(c))),
            Some(pool_key(t, None)),
        ];
        for key in keys.into_iter().flatten() {
            let Some(list) = idle.get_mut(&key) else {
                continue;
            };
            while let Some((c, since)) = list.pop() {
                if since.elapsed() < max_idle && c.is_usable() {
                    return Some(c);
                }
            }
        }
        None
    }

    fn put(&self, t: &Target, c: SmtpClient<TcpStream>, max_idle: Duration) {
        if max_idle.is_zero() || !c.is_usable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(pool_key(t, c.forwarded())).or_default();
        if list.len() < 8 {
            list.push((c, Instant::now()));
        }
    }

    /// Drops connections idle longer than `max_idle` (they are closed, without QUIT).
    pub fn expire(&self, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.values_mut() {
            list.retain(|(_, since)| since.elapsed() < max_idle);
        }
        idle.retain(|_, l| !l.is_empty());
    }
}

/// What the attempt needs to know.
pub struct Attempt<'a> {
    /// Our EHLO name.
    pub helo: &'a str,
    /// Client timeouts.
    pub timeouts: Timeouts,
    /// How long a connection may sit idle in the pool.
    pub max_idle: Duration,
    /// Envelope sender.
    pub sender: &'a str,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// The message.
    pub message: &'a [u8],
    /// The message's original client (`None`: a notice the gateway wrote).
    pub client: Option<&'a ClientIdentity>,
    /// Next hops (`host:port` as configured) told who the client was.
    pub forward_to: &'a [String],
    /// Our id of the message (XFORWARD's `IDENT`).
    pub ident: &'a str,
}

impl Attempt<'_> {
    /// The client to tell `t` about, if `t` is to be told.
    fn client_for(&self, t: &Target) -> Option<&ClientIdentity> {
        self.client.filter(|_| self.forward_to.contains(&t.addr))
    }
}

impl std::fmt::Debug for Attempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("sender", &self.sender)
            .field("size", &self.message.len())
            .finish()
    }
}

/// Delivers to the first target that takes a session; every recipient of `rcpts` gets an
/// outcome.
pub async fn deliver(
    pool: &Pool,
    targets: &[Target],
    rcpts: &[String],
    a: &Attempt<'_>,
) -> Vec<Outcome> {
    let mut last = reply(451, "4.4.1", "no address to try");
    let mut last_host = None;
    for t in targets {
        // A pooled connection may have been closed by the server meanwhile: if it
        // fails before anything was accepted, retry on a new connection.
        let who = a.client_for(t);
        if let Some(client) = pool.take(t, who, a.max_idle) {
            match on_connection(client, t, who, false, rcpts, a).await {
                Ok((res, client)) => {
                    if let Some(c) = client {
                        pool.put(t, c, a.max_idle);
                    }
                    return answered(res, &t.host);
                }
                Err(e) => {
                    tracing::debug!(next_hop = %t.addr, error = %e, "pooled connection failed, reconnecting")
                }
            }
        }
        let client = match open(t, a.helo, a.timeouts).await {
            Ok(c) => c,
            Err(r) => {
                tracing::info!(next_hop = %t.addr, error = %r, "next hop unavailable");
                last = r;
                last_host = Some(t.host.clone());
                continue;
            }
        };
        match on_connection(client, t, who, true, rcpts, a).await {
            Ok((res, client)) => {
                if let Some(c) = client {
                    pool.put(t, c, a.max_idle);
                }
                return answered(res, &t.host);
            }
            Err(e) => {
                last = reply(451, "4.4.2", &format!("{}: {e}", t.addr));
                last_host = Some(t.host.clone());
            }
        }
    }
    rcpts
        .iter()
        .map(|_| Outcome {
            reply: last.clone(),
            remote: last_host.clone(),
        })
        .collect()
}

/// Opens a session with `t`: connect, greeting, `EHLO helo`, and `STARTTLS` as its TLS
/// policy asks. A failure is the `451` that says why: a refused session is the next hop's
/// trouble, not the recipients' (the queue retries later, the next address first). The
/// queue's deliveries and recipient verification probes both connect here.
pub async fn open(
    t: &Target,
    helo: &str,
    timeouts: Timeouts,
) -> Result<SmtpClient<TcpStream>, Reply> {
    SmtpClient::connect(&t.addr, helo, t.tls, timeouts)
        .await
        .map_err(|e| match e {
            ClientError::Rejected { reply: r, .. } => reply(
                451,
                "4.4.1",
                &format!("{} refused the session: {r}", t.addr),
            ),
            ClientError::TlsNotOffered => {
                reply(451, "4.7.10", "TLS required but STARTTLS not offered")
            }
            other => reply(451, "4.4.1", &format!("{}: {other}", t.addr)),
        })
}

/// One transaction on a connection to `t` (`fresh`: opened for it), after telling the
/// next hop who the message's client was when it is to be told (`who`). `Err` as for
/// [`transaction`]; also when the connection speaks for another client (XCLIENT), which
/// the pool's keys keep from happening.
async fn on_connection(
    mut c: SmtpClient<TcpStream>,
    t: &Target,
    who: Option<&ClientIdentity>,
    fresh: bool,
    rcpts: &[String],
    a: &Attempt<'_>,
) -> Result<Transacted, ClientError> {
    if let Some(id) = who {
        match c.forward_client(id, Some(a.ident), a.helo).await? {
            Forwarding::NeedsNewConnection => {
                return Err(ClientError::Protocol(
                    "connection speaks for another client (XCLIENT)",
                ));
            }
            Forwarding::Xclient | Forwarding::Xforward => {
                tracing::debug!(next_hop = %t.addr, queue_id = a.ident, "next hop told the original client")
            }
            Forwarding::NotOffered if fresh => {
                tracing::warn!(next_hop = %t.addr, "xclient: the next hop offers neither XCLIENT nor XFORWARD to us (its smtpd_authorized_xclient_hosts?); it sees the gateway as the client")
            }
            Forwarding::NotOffered => {}
            Forwarding::Refused(r) => {
                tracing::warn!(next_hop = %t.addr, reply = %r, "next hop refused XCLIENT/XFORWARD; it sees the gateway as the client")
            }
        }
    }
    transaction(c, rcpts, a).await
}

/// Replies from `host`, as outcomes.
fn answered(replies: Vec<Reply>, host: &str) -> Vec<Outcome> {
    replies
        .into_iter()
        .map(|reply| Outcome {
            reply,
            remote: Some(host.to_string()),
        })
        .collect()
}

/// Replies per recipient, and the connection if it can be reused.
type Transacted = (Vec<Reply>, Option<SmtpClient<TcpStream>>);

/// One transaction on an established connection. `Err` only when the connection failed
/// before any recipient was accepted (safe to retry elsewhere); afterwards connection
/// trouble defers the undecided recipients. Returns the connection if still usable.
async fn transaction(
    mut c: SmtpClient<TcpStream>,
    rcpts: &[String],
    a: &Attempt<'_>,
) -> Result<Transacted, ClientError> {
    let all = |r: Reply| rcpts.iter().map(|_| r.clone()).collect::<Vec<_>>();
    if let Some(limit) = c.extensions().size
        && limit > 0
        && a.message.len() as u64 > limit
    {
        return Ok((
            all(reply(
                552,
                "5.3.4",
                &format!(
                    "message size {} exceeds the next hop's limit {limit}",
                    a.message.len()
                ),
            )),
            Some(c),
        ));
    }
    let mut out: Vec<Option<Reply>> = vec![None; rcpts.len()];
    // Addresses that cannot be sent are refused here; the rest go out together.
    let mut sendable = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        if r.chars().any(char::is_control) {
            out[i] = Some(reply(553, "5.1.3", "invalid recipient address"));
        } else {
            sendable.push(i);
        }
    }
    let addrs: Vec<&str> = sendable.iter().map(|i| rcpts[*i].as_str()).collect();
    let (r, replies) = match c.envelope(a.sender, &a.params, &addrs).await {
        Ok(x) => x,
        Err(ClientError::Smtputf8NotSupported) => {
            return Ok((
                all(reply(
                    553,
                    "5.6.7",
                    "the next hop does not support SMTPUTF8",
                )),
                Some(c),
            ));
        }
        Err(e) => return Err(e),
    };
    if r.code() >= 400 {
        let _ = c.rset().await;
        for i in sendable {
            out[i] = Some(r.clone());
        }
        return Ok((finish(out), c.is_usable().then_some(c)));
    }
    let mut accepted = Vec::new();
    for (i, reply) in sendable.into_iter().zip(replies) {
        if reply.code() < 300 {
            accepted.push(i);
        } else {
            out[i] = Some(reply);
        }
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok((finish(out), c.is_usable().then_some(c)));
    }
    match c.data(&[a.message]).await {
        Ok(r) => {
            for i in accepted {
                out[i] = Some(r.clone());
            }
            if r.code() >= 400 {
                let _ = c.rset().await;
            }
            Ok((finish(out), c.is_usable().then_some(c)))
        }
        Err(e) => Ok((defer_rest(out, &e), None)),
    }
}

fn finish(out: Vec<Option<Reply>>) -> Vec<Reply> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| reply(451, "4.4.2", "no answer")))
        .collect()
}

fn defer_rest(out: Vec<Option<Reply>>, e: &ClientError) -> Vec<Reply> {
    let why = reply(451, "4.4.2", &e.to_string());
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| why.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::entry::RcptStatus;

    #[test]
    fn replies_classify_by_code() {
        let status = |code, e| RcptStatus::after(&Reply::new(code, e, "x"));
        assert_eq!(status(250, "2.0.0"), RcptStatus::Delivered);
        assert_eq!(status(451, "4.3.0"), RcptStatus::Pending);
        assert_eq!(status(550, "5.1.1"), RcptStatus::Failed);
    }

    #[test]
    fn our_replies_are_one_clean_line() {
        assert_eq!(one_line("550-a\r\n550 b\r\n"), "550-a 550 b");
        assert_eq!(one_line("x\0y"), "x y");
        let r = reply(451, "4.4.2", "lost\r\n250 injected");
        assert_eq!(r.to_bytes(), b"451 4.4.2 lost 250 injected\r\n");
    }
}
