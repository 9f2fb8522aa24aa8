//! One delivery attempt of one message to one destination: pick the next hop's
//! addresses, reuse an idle connection or open one, then MAIL, RCPT per recipient and
//! DATA, classifying every recipient as delivered, failed (5xx: bounce) or deferred
//! (4xx, connection trouble: retry later).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::route::Target;
use crate::delivery::{ClientError, SmtpClient, Timeouts};
use crate::smtp::{MailParams, Reply};

/// What happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop.
    Delivered(String),
    /// Refused for good (5xx or a permanent local reason).
    Failed(String),
    /// Not this time (4xx, connection trouble).
    Deferred(String),
}

impl Outcome {
    fn from_reply(r: &Reply) -> Outcome {
        let text = one_line(&r.to_string());
        match r.code() {
            200..=299 => Outcome::Delivered(text),
            500..=599 => Outcome::Failed(text),
            _ => Outcome::Deferred(text),
        }
    }
}

/// A reply on one line (multi-line replies joined with spaces), without control chars.
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

fn pool_key(t: &Target) -> String {
    format!("{}|{:?}", t.addr, t.tls)
}

impl Pool {
    fn take(&self, t: &Target, max_idle: Duration) -> Option<SmtpClient<TcpStream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&pool_key(t))?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() < max_idle && c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, t: &Target, c: SmtpClient<TcpStream>, max_idle: Duration) {
        if max_idle.is_zero() || !c.is_usable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(pool_key(t)).or_default();
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
/// outcome and, with it, the host that gave it.
pub async fn deliver(
    pool: &Pool,
    targets: &[Target],
    rcpts: &[String],
    a: &Attempt<'_>,
) -> Vec<(Outcome, String)> {
    let mut last = String::from("no address to try");
    let mut last_host = String::new();
    for t in targets {
        // A pooled connection may have been closed by the server meanwhile: if it
        // fails before anything was accepted, retry on a new connection.
        if let Some(client) = pool.take(t, a.max_idle) {
            match transaction(client, rcpts, a).await {
                Ok((res, client)) => {
                    if let Some(c) = client {
                        pool.put(t, c, a.max_idle);
                    }
                    return res.into_iter().map(|o| (o, t.host.clone())).collect();
                }
                Err(e) => {
                    tracing::debug!(next_hop = %t.addr, error = %e, "pooled connection failed, reconnecting")
                }
            }
        }
        let client = match SmtpClient::connect(&t.addr, a.helo, t.tls, a.timeouts).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(next_hop = %t.addr, error = %e, "next hop unavailable");
                last = match &e {
                    ClientError::Rejected { reply, .. } => one_line(&reply.to_string()),
                    ClientError::TlsNotOffered => {
                        "4.7.10 TLS required but STARTTLS not offered".into()
                    }
                    other => format!("4.4.1 {}: {}", t.addr, one_line(&other.to_string())),
                };
                last_host = t.host.clone();
                continue;
            }
        };
        match transaction(client, rcpts, a).await {
            Ok((res, client)) => {
                if let Some(c) = client {
                    pool.put(t, c, a.max_idle);
                }
                return res.into_iter().map(|o| (o, t.host.clone())).collect();
            }
            Err(e) => {
                last = format!("4.4.2 {}: {}", t.addr, one_line(&e.to_string()));
                last_host = t.host.clone();
            }
        }
    }
    rcpts
        .iter()
        .map(|_| (Outcome::Deferred(last.clone()), last_host.clone()))
        .collect()
}

/// Outcomes per recipient, and the connection if it can be reused.
type Transacted = (Vec<Outcome>, Option<SmtpClient<TcpStream>>);

/// One transaction on an established connection. `Err` only when the connection failed
/// before any recipient was accepted (safe to retry elsewhere); afterwards connection
/// trouble defers the undecided recipients. Returns the connection if still usable.
async fn transaction(
    mut c: SmtpClient<TcpStream>,
    rcpts: &[String],
    a: &Attempt<'_>,
) -> Result<Transacted, ClientError> {
    let all = |o: Outcome| rcpts.iter().map(|_| o.clone()).collect::<Vec<_>>();
    if let Some(limit) = c.extensions().size
        && limit > 0
        && a.message.len() as u64 > limit
    {
        return Ok((
            all(Outcome::Failed(format!(
                "552 5.3.4 message size {} exceeds the next hop's limit {limit}",
                a.message.len()
            ))),
            Some(c),
        ));
    }
    let mut out: Vec<Option<Outcome>> = vec![None; rcpts.len()];
    // Addresses that cannot be sent are refused here; the rest go out together.
    let mut sendable = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        if r.chars().any(char::is_control) {
            out[i] = Some(Outcome::Failed(
                "553 5.1.3 invalid recipient address".into(),
            ));
        } else {
            sendable.push(i);
        }
    }
    let addrs: Vec<&str> = sendable.iter().map(|i| rcpts[*i].as_str()).collect();
    let (r, replies) = match c.envelope(a.sender, &a.params, &addrs).await {
        Ok(x) => x,
        Err(ClientError::Smtputf8NotSupported) => {
            return Ok((
                all(Outcome::Failed(
                    "553 5.6.7 the next hop does not support SMTPUTF8".into(),
                )),
                Some(c),
            ));
        }
        Err(e) => return Err(e),
    };
    if r.code() >= 400 {
        let o = Outcome::from_reply(&r);
        let _ = c.rset().await;
        for i in sendable {
            out[i] = Some(o.clone());
        }
        return Ok((finish(out), c.is_usable().then_some(c)));
    }
    let mut accepted = Vec::new();
    for (i, reply) in sendable.into_iter().zip(replies) {
        if reply.code() < 300 {
            accepted.push(i);
        } else {
            out[i] = Some(Outcome::from_reply(&reply));
        }
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok((finish(out), c.is_usable().then_some(c)));
    }
    match c.data(&[a.message]).await {
        Ok(r) => {
            let o = Outcome::from_reply(&r);
            for i in accepted {
                out[i] = Some(o.clone());
            }
            if r.code() >= 400 {
                let _ = c.rset().await;
            }
            Ok((finish(out), c.is_usable().then_some(c)))
        }
        Err(e) => Ok((defer_rest(out, &e), None)),
    }
}

fn finish(out: Vec<Option<Outcome>>) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Deferred("4.4.2 no answer".into())))
        .collect()
}

fn defer_rest(out: Vec<Option<Outcome>>, e: &ClientError) -> Vec<Outcome> {
    let why = format!("4.4.2 {}", one_line(&e.to_string()));
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Deferred(why.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_classify_by_code() {
        let r = Reply::new(250, "2.0.0", "ok");
        assert!(matches!(Outcome::from_reply(&r), Outcome::Delivered(_)));
        let r = Reply::new(451, "4.3.0", "later");
        assert!(matches!(Outcome::from_reply(&r), Outcome::Deferred(_)));
        let r = Reply::new(550, "5.1.1", "unknown");
        assert_eq!(
            Outcome::from_reply(&r),
            Outcome::Failed("550 5.1.1 unknown".into())
        );
    }

    #[test]
    fn one_line_joins_and_cleans() {
        assert_eq!(one_line("550-a\r\n550 b\r\n"), "550-a 550 b");
        assert_eq!(one_line("x\0y"), "x y");
    }
}
