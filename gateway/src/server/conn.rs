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
use crate::plugin::convert::{self, SessionView};
use crate::plugin::message::ParsedMessage;
use crate::plugin::{Call, Chain, Decision, edits, wit};
use crate::smtp::{ConnInfo, Hook, ReadTimeout, Reply, Resolution, Session, Step};

/// How a drive over one stream ended.
enum Flow {
    Closed,
    StartTls,
}

/// Per-connection state the driver keeps beside the session.
struct Ctx {
    /// Settings and plugins this session started with (kept to its end).
    cur: Arc<super::reload::Current>,
    /// Our address the client connected to.
    local: Option<SocketAddr>,
    outbound: Outbound,
    shutdown: watch::Receiver<bool>,
    shutdown_seen: bool,
    greeted: bool,
    txn_started: Option<Instant>,
    messages: usize,
    listener: &'static str,
    chain: Option<Chain>,
    /// Edits the chain returned for the current transaction, applied at delivery.
    header_edits: Vec<wit::HeaderEdit>,
    recipient_edits: Vec<wit::RecipientEdit>,
    /// Discard or quarantine decided at DATA.
    data_decision: Option<Decision>,
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
        let outbound = Outbound::new(&shared, &rt.hostname);
        let mut ctx = Ctx {
            cur: Arc::clone(&cur),
            local: Some(local),
            outbound,
            shutdown_seen,
            shutdown,
            greeted: false,
            txn_started: None,
            messages: 0,
            listener: if implicit_tls { "smtps" } else { "smtp" },
            chain: cur
                .plugins
                .as_ref()
                .map(|g| Chain::new(Arc::clone(g), session_id.clone())),
            header_edits: Vec::new(),
            recipient_edits: Vec::new(),
            data_decision: None,
        };
        let ptr_name = if rt.dns.reverse_lookup {
            let name = shared.dns.confirmed_name(client.ip()).await;
            debug!(
                ptr = name.as_deref().unwrap_or("unknown"),
                "client reverse name"
            );
            name
        } else {
            None
        };
        let conn = ConnInfo {
            session_id: session_id.clone(),
            client,
            local,
            tls: None,
            relay_allowed: rt.relay_allowed(client.ip()),
            ptr_name,
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
                        Arc::clone(&cur.session),
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
            let mut session = Session::new(Arc::clone(&cur.session), conn);
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

/// What a stage decision means for the session.
fn resolution(d: &Decision) -> Resolution {
    match d {
        Decision::Reply(r) => Resolution::Reply(r.clone()),
        Decision::Disconnect(r) => Resolution::Disconnect(r.clone()),
        Decision::Continue | Decision::Accept | Decision::Discard(_) | Decision::Quarantine(_) => {
            Resolution::Continue
        }
    }
}

fn refuses(r: &Resolution) -> bool {
    !matches!(r, Resolution::Continue)
}

fn session_view(ctx: &Ctx, s: &Session, helo: Option<(String, bool)>) -> SessionView {
    let chain = ctx.chain.as_ref();
    SessionView {
        id: s.conn().session_id.clone(),
        client: s.conn().client,
        local: s.conn().local,
        listener: ctx.listener,
        ptr_name: s.conn().ptr_name.clone(),
        trusted: s.conn().relay_allowed,
        tls: s.tls().cloned(),
        helo: helo.or_else(|| s.helo().map(|h| (h.to_string(), true))),
        score: chain.map(Chain::score).unwrap_or(0.0),
        tags: chain.map(|c| c.tags().to_vec()).unwrap_or_default(),
    }
}

/// The plugin seam: the chain decides first; in proxy mode MAIL and RCPT then go to the
/// upstream, whose answer the client gets.
async fn on_hook(ctx: &mut Ctx, s: &Session, hook: Hook) -> Resolution {
    match hook {
        Hook::Connect => {
            let view = session_view(ctx, s, None);
            match ctx.chain.as_mut() {
                Some(chain) => resolution(
                    &chain
                        .run(Call::Connect(&convert::session_info(&view)))
                        .await
                        .decision,
                ),
                None => Resolution::Continue,
            }
        }
        Hook::Helo { name, extended } => {
            let view = session_view(ctx, s, Some((name.clone(), extended)));
            match ctx.chain.as_mut() {
                Some(chain) => {
                    let helo = wit::HeloInfo { name, extended };
                    resolution(
                        &chain
                            .run(Call::Helo(&convert::session_info(&view), &helo))
                            .await
                            .decision,
                    )
                }
                None => Resolution::Continue,
            }
        }
        Hook::MailFrom { address, params } => {
            ctx.txn_started = Some(Instant::now());
            ctx.header_edits.clear();
            ctx.recipient_edits.clear();
            ctx.data_decision = None;
            if let Some(chain) = ctx.chain.as_mut() {
                chain.new_transaction();
            }
            let view = session_view(ctx, s, None);
            if let Some(chain) = ctx.chain.as_mut() {
                let sender = convert::reverse_path(&address);
                let p = convert::mail_params(&params);
                let r = resolution(
                    &chain
                        .run(Call::MailFrom(&convert::session_info(&view), &sender, &p))
                        .await
                        .decision,
                );
                if refuses(&r) {
                    return r;
                }
            }
            ctx.outbound.mail_from(&address, &params).await
        }
        Hook::RcptTo { address } => {
            let view = session_view(ctx, s, None);
            if let Some(chain) = ctx.chain.as_mut() {
                let txn = convert::transaction(&s.transaction_id(), s.envelope());
                let rcpt = wit::Recipient {
                    address: convert::address(&address),
                    params: vec![],
                };
                let out = chain
                    .run(Call::RcptTo(&convert::session_info(&view), &txn, &rcpt))
                    .await;
                let r = resolution(&out.decision);
                if refuses(&r) {
                    return r;
                }
                ctx.recipient_edits.extend(out.recipient_edits);
            }
            ctx.outbound.rcpt_to(&address).await
        }
        Hook::Data => {
            let view = session_view(ctx, s, None);
            let Some(chain) = ctx.chain.as_mut() else {
                return Resolution::Continue;
            };
            let id = s.transaction_id();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let raw: Arc<[u8]> = Arc::from(s.message().unwrap_or_default());
            let msg = Arc::new(ParsedMessage::new(id.clone(), now_ms, raw));
            let txn = convert::transaction(&id, s.envelope());
            let out = chain
                .run(Call::Data(&convert::session_info(&view), &txn, msg))
                .await;
            let r = resolution(&out.decision);
            if !refuses(&r) {
                ctx.header_edits.extend(out.header_edits);
                ctx.recipient_edits.extend(out.recipient_edits);
                if matches!(out.decision, Decision::Discard(_) | Decision::Quarantine(_)) {
                    ctx.data_decision = Some(out.decision);
                }
            }
            r
        }
    }
}

/// Applies the chain's edits to the message before delivery.
fn apply_edits(ctx: &mut Ctx, message: &mut crate::smtp::Message) {
    let mut headers = std::mem::take(&mut ctx.header_edits);
    if let Some(chain) = ctx.chain.as_ref().filter(|_| ctx.cur.runtime.trace_header) {
        headers.push(wit::HeaderEdit::Prepend(wit::Header {
            name: "X-Mailgate-Trace".into(),
            value: chain.trace_text(),
        }));
    }
    if !headers.is_empty() {
        message.data = edits::apply_headers(&message.data, &headers);
    }
    let rcpt_edits = std::mem::take(&mut ctx.recipient_edits);
    if !rcpt_edits.is_empty() {
        if ctx.outbound.mode() == "proxy" {
            // The upstream already has the recipients (before-queue): edits cannot apply.
            warn!(msg = %message.id, "recipient edits are not applied in proxy mode");
        } else {
            edits::apply_recipients(&mut message.envelope.rcpt_to, &rcpt_edits);
        }
    }
}

/// The session facts a queued message keeps for `on-deliver`.
fn origin(ctx: &Ctx, m: &crate::smtp::Message) -> crate::queue::entry::Origin {
    let t = &m.trace;
    crate::queue::entry::Origin {
        helo: t.helo.clone(),
        ehlo: t.protocol != "SMTP",
        ptr_name: t.ptr_name.clone(),
        tls: t
            .tls
            .as_ref()
            .map(|i| (i.version.clone(), i.cipher.clone())),
        trusted: ctx.cur.runtime.relay_allowed(t.client.ip()),
        local: ctx.local,
        listener: ctx.listener.to_string(),
        score: ctx.chain.as_ref().map(Chain::score).unwrap_or(0.0),
        tags: ctx
            .chain
            .as_ref()
            .map(|c| c.tags().to_vec())
            .unwrap_or_default(),
    }
}

async fn deliver(ctx: &mut Ctx, mut message: crate::smtp::Message) -> Reply {
    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
    apply_edits(ctx, &mut message);
    let reply = match ctx.data_decision.take() {
        Some(Decision::Discard(_)) => {
            info!(msg = %message.id, "message discarded by plugin");
            Reply::new(250, "2.0.0", format!("Ok: queued as {}", message.id))
        }
        Some(Decision::Quarantine(why)) => quarantine(ctx, &mut message, &why).await,
        _ if message.envelope.rcpt_to.is_empty() => {
            info!(msg = %message.id, "no recipients left after plugin edits; nothing delivered");
            Reply::new(250, "2.0.0", format!("Ok: queued as {}", message.id))
        }
        _ => {
            let origin = origin(ctx, &message);
            ctx.outbound.deliver(&message, origin).await
        }
    };
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

/// Keeps the message in the quarantine Maildir (`chain.quarantine`), with the reason.
async fn quarantine(ctx: &mut Ctx, message: &mut crate::smtp::Message, why: &str) -> Reply {
    let root = ctx.cur.runtime.quarantine.clone();
    let header = edits::fold("X-Mailgate-Quarantine", why);
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
