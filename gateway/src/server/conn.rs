//! One client connection: the thin tokio driver around the sans-I/O [`Session`].
//!
//! It builds the session's facts once (addresses, listener, trust, reverse name), reads
//! bytes into the session, writes what the session hands out, answers hooks through the
//! plugins ([`SessionPlugins`]) and the delivery mode, hands accepted messages to
//! delivery, and upgrades the stream when the session asks for STARTTLS. All protocol
//! decisions are the session's; all plugin decisions are the plugin layer's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::Shared;
use super::limits::ConnGuard;
use super::outbound::Outbound;
use crate::current::Current;
use crate::plugin::session::refuses;
use crate::plugin::{Disposition, SessionPlugins};
use crate::smtp::{Hook, Listener, ReadTimeout, Reply, Resolution, Session, SessionFacts, Step};

/// How a drive over one stream ended.
enum Flow {
    Closed,
    StartTls,
}

/// Per-connection state the driver keeps beside the session.
struct Ctx {
    /// Settings and plugins this session started with (kept to its end).
    cur: Arc<Current>,
    outbound: Outbound,
    shutdown: watch::Receiver<bool>,
    shutdown_seen: bool,
    greeted: bool,
    txn_started: Option<Instant>,
    messages: usize,
    plugins: Option<SessionPlugins>,
}

/// Serves one accepted TCP connection until it closes. `implicit_tls` for `listen_tls`.
pub async fn serve(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    implicit_tls: bool,
    _guard: ConnGuard,
) {
    let session_id = new_session_id();
    let span = tracing::info_span!("session", id = %session_id);
    let fut = async move {
        info!(%client, %local, tls = implicit_tls, "connect");
        let started = Instant::now();
        let cur = shared.current();
        let rt = Arc::clone(&cur.runtime);
        let shutdown = shared.shutdown.clone();
        let shutdown_seen = *shutdown.borrow();
        let outbound = Outbound::new(&shared.backend, cur.hostname());
        let mut ctx = Ctx {
            cur: Arc::clone(&cur),
            outbound,
            shutdown_seen,
            shutdown,
            greeted: false,
            txn_started: None,
            messages: 0,
            plugins: cur
                .plugins
                .as_ref()
                .map(|g| SessionPlugins::new(Arc::clone(g), session_id.clone())),
        };
        let listener = if implicit_tls {
            Listener::Smtps
        } else {
            Listener::Smtp
        };
        let mut facts = SessionFacts::new(session_id.clone(), client, local, listener);
        facts.trusted = rt.live.relay_allowed(client.ip());
        if rt.fixed.dns.reverse_lookup {
            facts.ptr_name = shared.dns.confirmed_name(client.ip()).await;
            debug!(
                ptr = facts.ptr_name.as_deref().unwrap_or("unknown"),
                "client reverse name"
            );
        }
        let handshake_limit = rt.live.command_timeout;
        let result = if implicit_tls {
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            match timeout(handshake_limit, acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    let info = super::tls::info(tls.get_ref().1);
                    debug!(version = %info.version, cipher = %info.cipher, "implicit TLS established");
                    facts.tls = Some(info);
                    let mut session = Session::new(Arc::clone(&cur.session), facts);
                    drive(&mut tls, &mut session, &mut ctx).await.map(|_| ())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timeout",
                )),
            }
        } else {
            let mut session = Session::new(Arc::clone(&cur.session), facts);
            match drive(&mut tcp, &mut session, &mut ctx).await {
                Ok(Flow::StartTls) => match shared.tls.clone() {
                    Some(acceptor) => match timeout(handshake_limit, acceptor.accept(tcp)).await {
                        Ok(Ok(mut tls)) => {
                            let info = super::tls::info(tls.get_ref().1);
                            debug!(version = %info.version, cipher = %info.cipher, "STARTTLS established");
                            session.tls_established(info);
                            drive(&mut tls, &mut session, &mut ctx).await.map(|_| ())
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timeout",
                        )),
                    },
                    None => Ok(()),
                },
                Ok(Flow::Closed) => Ok(()),
                Err(e) => Err(e),
            }
        };
        ctx.outbound.close().await;
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => info!(messages = ctx.messages, duration_ms = ms, "disconnect"),
            Err(e) => {
                info!(messages = ctx.messages, duration_ms = ms, error = %e, "disconnect after error")
            }
        }
    };
    tracing::Instrument::instrument(fut, span).await;
}

/// Runs the session over one stream until it closes or asks for STARTTLS.
async fn drive<S>(io: &mut S, s: &mut Session, ctx: &mut Ctx) -> std::io::Result<Flow>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let rt = Arc::clone(&ctx.cur.runtime);
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: every iteration either consumes input, writes output, or resolves a pause
    // the session asked for; the session closes on EOF, timeout and error limits.
    loop {
        match s.step() {
            Step::Send(bytes) => {
                io.write_all(&bytes).await?;
                io.flush().await?;
                if let Some(r) = s.take_refused() {
                    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
                    ctx.messages += 1;
                    log_message(s, "-", &r.envelope, r.size, "session", &r.reply, started);
                }
            }
            Step::NeedInput => {
                let limit = match s.read_timeout() {
                    ReadTimeout::Command => rt.live.command_timeout,
                    ReadTimeout::Data => rt.live.data_timeout,
                };
                tokio::select! {
                    r = timeout(limit, io.read(&mut buf)) => match r {
                        Err(_) => {
                            info!(timeout_secs = limit.as_secs(), "client timed out");
                            s.timed_out();
                        }
                        Ok(Ok(0)) => s.feed_eof(),
                        Ok(Ok(n)) => s.feed(&buf[..n]),
                        Ok(Err(e)) => return Err(e),
                    },
                    _ = ctx.shutdown.changed(), if !ctx.shutdown_seen => {
                        ctx.shutdown_seen = true;
                        s.shutting_down();
                    }
                }
            }
            Step::Hook(hook) => {
                let r = on_hook(ctx, s, hook).await;
                if !ctx.greeted {
                    ctx.greeted = true;
                    pre_greeting(io, s, rt.live.greeting_delay, &mut buf).await;
                }
                s.resolve(r);
            }
            Step::Deliver(message) => {
                let reply = deliver(ctx, *message).await;
                s.resolve(Resolution::Reply(reply));
            }
            Step::StartTls => return Ok(Flow::StartTls),
            Step::Close => return Ok(Flow::Closed),
        }
    }
}

/// Waits `delay` before the greeting; anything the client sends meanwhile goes to the
/// session, which refuses clients that talk first.
async fn pre_greeting<S>(io: &mut S, s: &mut Session, delay: Duration, buf: &mut [u8])
where
    S: AsyncRead + Unpin,
{
    if delay.is_zero() {
        return;
    }
    match timeout(delay, io.read(buf)).await {
        Ok(Ok(0)) => s.feed_eof(),
        Ok(Ok(n)) => {
            warn!(bytes = n, "client spoke before the greeting");
            s.feed(&buf[..n]);
        }
        Ok(Err(_)) | Err(_) => {}
    }
}

/// The plugin seam: the plugins decide first; in proxy mode MAIL and RCPT then go to the
/// upstream, whose answer the client gets.
async fn on_hook(ctx: &mut Ctx, s: &Session, hook: Hook) -> Resolution {
    if matches!(hook, Hook::MailFrom { .. }) {
        ctx.txn_started = Some(Instant::now());
    }
    if let Some(p) = ctx.plugins.as_mut() {
        let r = p
            .hook(
                &hook,
                s.facts(),
                s.envelope(),
                &s.transaction_id(),
                s.message(),
            )
            .await;
        if refuses(&r) {
            return r;
        }
    }
    match hook {
        Hook::MailFrom { address, params } => ctx.outbound.mail_from(&address, &params).await,
        Hook::RcptTo { address } => ctx.outbound.rcpt_to(&address).await,
        Hook::Connect | Hook::Helo { .. } | Hook::Data => Resolution::Continue,
    }
}

async fn deliver(ctx: &mut Ctx, mut message: crate::smtp::Message) -> Reply {
    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
    let cur = Arc::clone(&ctx.cur);
    let live = &cur.runtime.live;
    let disposition = match ctx.plugins.as_mut() {
        Some(p) => p.finish(&mut message, live.trace_header, ctx.outbound.before_queue()),
        None => Disposition::Deliver,
    };
    let queued = || Reply::new(250, "2.0.0", format!("Ok: queued as {}", message.id));
    let reply = match disposition {
        Disposition::Discard => {
            info!(msg = %message.id, "message discarded by plugin");
            queued()
        }
        Disposition::Quarantine(why) => quarantine(live.quarantine.clone(), &message, &why).await,
        Disposition::Deliver if message.envelope.rcpt_to.is_empty() => {
            info!(msg = %message.id, "no recipients left after plugin edits; nothing delivered");
            queued()
        }
        Disposition::Deliver => {
            let (score, tags) = match &ctx.plugins {
                Some(p) => (p.score(), p.tags().to_vec()),
                None => (0.0, Vec::new()),
            };
            ctx.outbound.deliver(&message, score, tags).await
        }
    };
    ctx.messages += 1;
    let m = &message;
    info!(
        msg = %m.id,
        client = %m.session.client,
        helo = %m.session.helo_name().unwrap_or_default(),
        from = %format_args!("<{}>", m.envelope.mail_from),
        rcpts = %m.envelope.rcpt_to.join(","),
        nrcpt = m.envelope.rcpt_to.len(),
        size = m.text.len(),
        protocol = m.protocol(),
        mode = ctx.cur.runtime.fixed.delivery.name(),
        outcome = outcome(&reply),
        reply = %reply,
        duration_ms = started.elapsed().as_millis() as u64,
        "message"
    );
    reply
}

/// Keeps the message in the quarantine Maildir (`chain.quarantine`), with the reason.
async fn quarantine(root: std::path::PathBuf, message: &crate::smtp::Message, why: &str) -> Reply {
    let header = crate::plugin::edits::fold("X-Mailgate-Quarantine", why);
    let received = header.clone();
    let msg = message.clone();
    let id = message.id.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::delivery::Maildir::new(root).deliver(&msg, &received)
    })
    .await;
    match result {
        Ok(Ok(())) => {
            info!(msg = %id, reason = why, "message quarantined by plugin");
            Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
        }
        _ => {
            warn!(msg = %id, "quarantine write failed");
            Reply::new(451, "4.3.0", "Local delivery failed, try again later")
        }
    }
}

fn outcome(reply: &Reply) -> &'static str {
    if reply.is_positive() {
        "accepted"
    } else if reply.is_transient() {
        "tempfail"
    } else {
        "rejected"
    }
}

/// The summary line for a message the session refused itself (size, bare CR/LF, ...).
fn log_message(
    s: &Session,
    id: &str,
    envelope: &crate::smtp::Envelope,
    size: usize,
    by: &str,
    reply: &Reply,
    started: Instant,
) {
    info!(
        msg = id,
        client = %s.facts().client,
        helo = s.helo().unwrap_or(""),
        from = %format_args!("<{}>", envelope.mail_from),
        rcpts = %envelope.rcpt_to.join(","),
        nrcpt = envelope.rcpt_to.len(),
        size,
        refused_by = by,
        outcome = outcome(reply),
        reply = %reply,
        duration_ms = started.elapsed().as_millis() as u64,
        "message"
    );
}

/// A short random id for the session: 12 upper-case hex digits.
fn new_session_id() -> String {
    format!("{:012X}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF)
}
