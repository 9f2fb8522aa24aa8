//! One client connection: the thin tokio driver around the sans-I/O [`Session`].
//!
//! It reads bytes into the session, writes what the session hands out, answers hooks
//! (the seam the plugin chain plugs into), hands accepted messages to delivery, and
//! upgrades the stream when the session asks for STARTTLS. All protocol decisions are the
//! session's.

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
use crate::smtp::{ConnInfo, Hook, ReadTimeout, Reply, Resolution, Session, Step};

/// How a drive over one stream ended.
enum Flow {
    Closed,
    StartTls,
}

/// Per-connection state the driver keeps beside the session.
struct Ctx {
    shared: Arc<Shared>,
    outbound: Outbound,
    shutdown: watch::Receiver<bool>,
    shutdown_seen: bool,
    greeted: bool,
    txn_started: Option<Instant>,
    messages: usize,
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
        let rt = Arc::clone(&shared.runtime);
        let shutdown = shared.shutdown.clone();
        let shutdown_seen = *shutdown.borrow();
        let outbound = Outbound::new(&shared);
        let mut ctx = Ctx {
            shared: Arc::clone(&shared),
            outbound,
            shutdown_seen,
            shutdown,
            greeted: false,
            txn_started: None,
            messages: 0,
        };
        let conn = ConnInfo {
            session_id: session_id.clone(),
            client,
            local,
            tls: None,
            relay_allowed: rt.relay_allowed(client.ip()),
        };
        let handshake_limit = rt.command_timeout;
        let result = if implicit_tls {
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            match timeout(handshake_limit, acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    let info = super::tls::info(tls.get_ref().1);
                    debug!(version = %info.version, cipher = %info.cipher, "implicit TLS established");
                    let mut session = Session::new(
                        Arc::clone(&shared.session),
                        ConnInfo {
                            tls: Some(info),
                            ..conn
                        },
                    );
                    drive(&mut tls, &mut session, &mut ctx).await.map(|_| ())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timeout",
                )),
            }
        } else {
            let mut session = Session::new(Arc::clone(&shared.session), conn);
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
    let rt = Arc::clone(&ctx.shared.runtime);
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
                    ReadTimeout::Command => rt.command_timeout,
                    ReadTimeout::Data => rt.data_timeout,
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
                    pre_greeting(io, s, rt.greeting_delay, &mut buf).await;
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

/// The plugin seam. Without plugins every stage continues; in proxy mode MAIL and RCPT
/// are answered by the upstream.
async fn on_hook(ctx: &mut Ctx, _s: &Session, hook: Hook) -> Resolution {
    match hook {
        Hook::Connect | Hook::Helo { .. } | Hook::Data => Resolution::Continue,
        Hook::MailFrom { address, params } => {
            ctx.txn_started = Some(Instant::now());
            ctx.outbound.mail_from(&address, &params).await
        }
        Hook::RcptTo { address } => ctx.outbound.rcpt_to(&address).await,
    }
}

async fn deliver(ctx: &mut Ctx, message: crate::smtp::Message) -> Reply {
    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
    let reply = ctx.outbound.deliver(&message).await;
    ctx.messages += 1;
    let m = &message;
    info!(
        msg = %m.id,
        client = %m.trace.client,
        helo = %m.trace.helo,
        from = %format_args!("<{}>", m.envelope.mail_from),
        rcpts = %m.envelope.rcpt_to.join(","),
        nrcpt = m.envelope.rcpt_to.len(),
        size = m.data.len(),
        protocol = m.trace.protocol,
        mode = ctx.outbound.mode(),
        outcome = outcome(&reply),
        reply = %reply,
        duration_ms = started.elapsed().as_millis() as u64,
        "message"
    );
    reply
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
        client = %s.conn().client,
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
