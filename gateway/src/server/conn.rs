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
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::Shared;
use super::limits::ConnGuard;
use super::outbound::Outbound;
use super::spill::Spill;
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
    /// Octets of message content this session has taken from the shared budget.
    held: usize,
    memory: Arc<crate::memory_budget::MemoryBudget>,
    /// The spill file of the message being received, once it went past the threshold.
    spill: Option<Spill>,
}

/// Once a message is spilled, what it holds in memory goes to its file in pieces of
/// about this size.
const SPILL_PIECE: usize = 32 * 1024;

impl Ctx {
    /// Keeps the message being received within memory: past `limits.spill_threshold_kb`,
    /// or when the shared budget (`limits.max_message_memory_mb`) has no room for it, its
    /// content moves to a spill file; only if that fails is the message refused
    /// (`452 4.3.1` at its end). Then brings this session's share of the budget up to
    /// date with what it holds.
    async fn keep_memory(&mut self, s: &mut Session) {
        if s.spilled() == 0 {
            // A spill file of a message that ended (refused, reset) is dropped.
            self.spill = None;
        }
        let piece = match s.spilled() {
            0 => self.cur.runtime.live.spill_threshold,
            _ => SPILL_PIECE,
        };
        let now = s.held_bytes();
        let over_budget = now > self.held && !self.memory.grow(now - self.held);
        if now > self.held && !over_budget {
            self.held = now;
        }
        let content = s.content_len();
        if content > 0 && (content >= piece || over_budget) {
            if over_budget && s.spilled() == 0 {
                debug!(
                    in_use = self.memory.used(),
                    "message memory budget reached; spilling this message"
                );
            }
            self.spill(s).await;
        }
        // What is left after spilling is bounded (a spilled message's first lines, at
        // most `text::FRONT`), so it is taken even past the budget.
        let now = s.held_bytes();
        if now > self.held {
            self.memory.force(now - self.held);
        } else {
            self.memory.release(self.held - now);
        }
        self.held = now;
    }

    /// Moves what the session holds of the message being received to its spill file;
    /// on failure the message is refused at its end.
    async fn spill(&mut self, s: &mut Session) {
        let dir = &self.cur.runtime.live.spill_dir;
        if self.spill.is_none() {
            match Spill::create(dir).await {
                Ok(f) => {
                    debug!(dir = %dir.display(), "message spilled to a file");
                    self.spill = Some(f);
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot create a spill file; refusing this message");
                    return s.out_of_memory();
                }
            }
        }
        let Some(f) = self.spill.as_mut() else {
            return;
        };
        if let Err(e) = f.append(s.take_content()).await {
            warn!(dir = %dir.display(), error = %e, "cannot write the spill file; refusing this message");
            self.spill = None;
            s.out_of_memory();
        }
    }

    /// The end of a spilled message: its last octets go to the file, which the session
    /// then reads the message from.
    async fn seal(&mut self, s: &mut Session, tail: Vec<u8>) {
        let Some(mut f) = self.spill.take() else {
            warn!("message end without its spill file; refusing this message");
            return s.seal_failed();
        };
        match f.append(tail).await {
            Ok(()) if f.written() == s.spilled() as u64 => s.sealed(f.finish()),
            Ok(()) => {
                warn!(
                    written = f.written(),
                    expected = s.spilled(),
                    "spill file length mismatch; refusing this message"
                );
                s.seal_failed();
            }
            Err(e) => {
                warn!(error = %e, "cannot write the spill file; refusing this message");
                s.seal_failed();
            }
        }
    }
}

/// What a session needs besides its stream: the settings and plugins it starts with,
/// the delivery mode, the resolver (the client's reverse name), the message memory
/// budget and the shutdown signal.
struct Opening<'a> {
    cur: Arc<Current>,
    backend: &'a super::outbound::Backend,
    dns: &'a crate::dns::Resolver,
    memory: Arc<crate::memory_budget::MemoryBudget>,
    shutdown: watch::Receiver<bool>,
}

/// The driver's context and the facts of a new session from `client` to `local`: trust
/// and, when `dns.reverse_lookup` is on, the client's confirmed reverse name.
async fn open(
    o: Opening<'_>,
    session_id: &str,
    client: SocketAddr,
    local: SocketAddr,
    listener: Listener,
) -> (Ctx, SessionFacts) {
    let cur = o.cur;
    let rt = Arc::clone(&cur.runtime);
    let shutdown_seen = *o.shutdown.borrow();
    let mut ctx = Ctx {
        outbound: Outbound::new(o.backend, cur.hostname()),
        shutdown_seen,
        shutdown: o.shutdown,
        greeted: false,
        txn_started: None,
        messages: 0,
        plugins: cur.plugins.as_ref().map(|g| {
            SessionPlugins::new(
                Arc::clone(g),
                session_id.to_string(),
                cur.hostname().to_string(),
            )
            .with_trace(rt.live.trace_header)
        }),
        held: 0,
        memory: o.memory,
        spill: None,
        cur: Arc::clone(&cur),
    };
    ctx.outbound.forward_to(&rt.live.xclient_hosts);
    let mut facts = SessionFacts::new(session_id.to_string(), client, local, listener);
    facts.trusted = rt.live.relay_allowed(client.ip());
    if rt.fixed.dns.reverse_lookup {
        match o.dns.reverse_name(client.ip()).await {
            crate::dns::ReverseName::Confirmed(name) => facts.ptr_name = Some(name),
            crate::dns::ReverseName::None => {}
            crate::dns::ReverseName::TempFail => facts.ptr_tempfail = true,
        }
        debug!(
            ptr = facts.ptr_name.as_deref().unwrap_or("unknown"),
            tempfail = facts.ptr_tempfail,
            "client reverse name"
        );
    }
    (ctx, facts)
}

/// Ends a session: QUIT upstream, its message memory given back, the `disconnect` line.
async fn close(ctx: &mut Ctx, started: Instant, result: std::io::Result<()>) {
    ctx.outbound.close().await;
    ctx.memory.release(ctx.held);
    ctx.held = 0;
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => info!(messages = ctx.messages, duration_ms = ms, "disconnect"),
        Err(e) => {
            info!(messages = ctx.messages, duration_ms = ms, error = %e, "disconnect after error")
        }
    }
}

/// How an accepted connection came in: the endpoints its session is for, and the load
/// balancer that named them (PROXY listeners).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The client: the peer, or the one a trusted balancer's PROXY header named.
    pub client: SocketAddr,
    /// Our address the client connected to (the balancer's front end behind one).
    pub local: SocketAddr,
    /// An implicit-TLS listener (`listen_tls`): the handshake comes first.
    pub implicit_tls: bool,
    /// The balancer the connection came from, on a PROXY listener.
    pub proxied_by: Option<SocketAddr>,
}

/// Serves one accepted connection until it closes: `io` is the TCP stream, or on a
/// PROXY listener the stream after its header (with what followed the header still to
/// be read). Plugins, relay trust, the reverse lookup and `Received:` see `acc.client`.
pub async fn serve<S>(shared: Arc<Shared>, io: S, acc: Accepted, _guard: ConnGuard)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut tcp = io;
    let Accepted {
        client,
        local,
        implicit_tls,
        proxied_by,
    } = acc;
    let session_id = new_session_id();
    let span = tracing::info_span!("session", id = %session_id);
    let fut = async move {
        match proxied_by {
            Some(by) => info!(%client, %local, tls = implicit_tls, proxied_by = %by, "connect"),
            None => info!(%client, %local, tls = implicit_tls, "connect"),
        }
        let started = Instant::now();
        let cur = shared.current();
        let listener = if implicit_tls {
            Listener::Smtps
        } else {
            Listener::Smtp
        };
        let opening = Opening {
            cur: Arc::clone(&cur),
            backend: &shared.backend,
            dns: &shared.dns,
            memory: Arc::clone(&shared.memory),
            shutdown: shared.shutdown.clone(),
        };
        let (mut ctx, mut facts) = open(opening, &session_id, client, local, listener).await;
        let handshake_limit = cur.runtime.live.command_timeout;
        let result = if implicit_tls {
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            match counted(timeout(handshake_limit, acceptor.accept(tcp)).await) {
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
                    Some(acceptor) => {
                        match counted(timeout(handshake_limit, acceptor.accept(tcp)).await) {
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
                        }
                    }
                    None => Ok(()),
                },
                Ok(Flow::Closed) => Ok(()),
                Err(e) => Err(e),
            }
        };
        close(&mut ctx, started, result).await;
    };
    tracing::Instrument::instrument(fut, span).await;
}

/// A session over a stream the caller already has, for drivers other than the
/// listeners: `mailgate plugin test` runs one over an in-memory pipe, with a scripted
/// client at the other end.
#[derive(Debug)]
pub struct StreamSession {
    /// Settings and plugins the session starts with.
    pub current: Arc<Current>,
    /// Where accepted messages go.
    pub backend: super::outbound::Backend,
    /// The resolver (the client's reverse name).
    pub dns: Arc<crate::dns::Resolver>,
    /// Memory for message content.
    pub memory: Arc<crate::memory_budget::MemoryBudget>,
    /// Flips to `true` to end the session (as a server shutdown would).
    pub shutdown: watch::Receiver<bool>,
    /// The client's address.
    pub client: SocketAddr,
    /// Our address it connected to.
    pub local: SocketAddr,
    /// TLS in force from the start, as after an implicit-TLS handshake (the session is on
    /// the `smtps` listener); no handshake happens on the stream.
    pub tls: Option<crate::smtp::TlsInfo>,
}

/// How a [`StreamSession`] ended.
#[derive(Clone, Debug)]
pub struct StreamEnd {
    /// The session's facts at its end (reverse name, TLS, HELO).
    pub facts: SessionFacts,
    /// The plugins' score of the last transaction (its session's included).
    pub score: f64,
    /// The plugins' tags so far.
    pub tags: Vec<String>,
    /// Messages the session ended (accepted or refused at their end).
    pub messages: usize,
    /// A read or write on the stream failed.
    pub error: Option<String>,
}

/// Serves one session over `io` until it closes, exactly as [`serve`] serves a TCP
/// connection (same setup, driver, plugins and delivery), but without a listener or a
/// TLS handshake. A STARTTLS the client asks for ends the session.
pub async fn serve_stream<S>(mut io: S, conn: StreamSession) -> StreamEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session_id = new_session_id();
    let span = tracing::info_span!("session", id = %session_id);
    let fut = async move {
        let StreamSession {
            current,
            backend,
            dns,
            memory,
            shutdown,
            client,
            local,
            tls,
        } = conn;
        info!(%client, %local, tls = tls.is_some(), "connect");
        let started = Instant::now();
        let listener = if tls.is_some() {
            Listener::Smtps
        } else {
            Listener::Smtp
        };
        let opening = Opening {
            cur: Arc::clone(&current),
            backend: &backend,
            dns: &dns,
            memory,
            shutdown,
        };
        let (mut ctx, mut facts) = open(opening, &session_id, client, local, listener).await;
        facts.tls = tls;
        let mut session = Session::new(Arc::clone(&current.session), facts);
        let result = drive(&mut io, &mut session, &mut ctx).await.map(|_| ());
        let error = result.as_ref().err().map(|e| e.to_string());
        close(&mut ctx, started, result).await;
        let (score, tags) = match &ctx.plugins {
            Some(p) => (p.score(), p.tags().to_vec()),
            None => (0.0, Vec::new()),
        };
        StreamEnd {
            facts: session.facts().clone(),
            score,
            tags,
            messages: ctx.messages,
            error,
        }
    };
    tracing::Instrument::instrument(fut, span).await
}

/// A TLS handshake's result (within its time limit), counted in the `tls_handshakes`
/// metric.
fn counted<T, E, F>(r: Result<Result<T, E>, F>) -> Result<Result<T, E>, F> {
    let kind = if matches!(r, Ok(Ok(_))) {
        "ok"
    } else {
        "failed"
    };
    crate::metrics::get()
        .tls_handshakes
        .get_or_create(&crate::metrics::Kind {
            kind: kind.to_string(),
        })
        .inc();
    r
}

/// The read buffer while the session waits for a command (lines are at most 512 octets;
/// pipelined ones simply take more reads).
const COMMAND_BUF: usize = 2 * 1024;
/// The read buffer while message data arrives.
const DATA_BUF: usize = 16 * 1024;

/// Runs the session over one stream until it closes or asks for STARTTLS.
async fn drive<S>(io: &mut S, s: &mut Session, ctx: &mut Ctx) -> std::io::Result<Flow>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let rt = Arc::clone(&ctx.cur.runtime);
    let live = &rt.live;
    // Commands are read through a small buffer, message data through a larger one, which
    // is given back when the message ends: a session waiting for its next command holds
    // 2 KiB, not 16 (ten thousand idle connections: 20 MiB, not 160).
    let mut buf = vec![0u8; COMMAND_BUF];
    // Deadlines cover a whole request, not each read: a command must arrive whole within
    // `command_timeout` of the last reply, and message data within `data_timeout` plus
    // one second per `min_data_rate` octets received, so a client trickling a byte at a
    // time cannot hold a session forever. (Postfix: smtpd_per_request_deadline,
    // smtpd_min_data_rate.)
    let mut since = Instant::now();
    let mut data_octets = 0u64;
    if ctx.shutdown_seen {
        // Accepted while the server was already stopping: no change will come.
        s.shutting_down();
    }
    // Bounded: every iteration either consumes input, writes output, or resolves a pause
    // the session asked for; the session closes on EOF, timeouts and error limits.
    loop {
        match s.step() {
            Step::Send(bytes) => {
                if s.is_closed()
                    && let Some(p) = ctx.plugins.as_mut()
                {
                    // The last reply: the instances are free for the next session before
                    // the client, told 221, can start one.
                    p.release_instances();
                }
                // A client that does not read its replies is not waited for forever.
                let write = async {
                    io.write_all(&bytes).await?;
                    io.flush().await
                };
                match timeout(live.write_timeout, write).await {
                    Ok(r) => r?,
                    Err(_) => {
                        info!(
                            timeout_secs = live.write_timeout.as_secs(),
                            "client does not read; write timed out"
                        );
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "write timeout",
                        ));
                    }
                }
                since = Instant::now();
                data_octets = 0;
                if let Some(r) = s.take_refused() {
                    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
                    ctx.messages += 1;
                    log_message(s, "-", &r.envelope, r.size, "session", &r.reply, started);
                }
            }
            Step::NeedInput => {
                ctx.keep_memory(s).await;
                let phase = s.read_timeout();
                let limit = match phase {
                    ReadTimeout::Command => live.command_timeout,
                    ReadTimeout::Data => {
                        let rate = live.min_data_rate.max(1) as f64;
                        live.data_timeout + Duration::from_secs_f64(data_octets as f64 / rate)
                    }
                };
                let deadline = tokio::time::Instant::from_std(since + limit);
                let want = match phase {
                    ReadTimeout::Command => COMMAND_BUF,
                    ReadTimeout::Data => DATA_BUF,
                };
                if buf.len() != want {
                    buf = vec![0u8; want];
                }
                let read = tokio::time::timeout_at(deadline, io.read(&mut buf));
                tokio::pin!(read);
                // A client that keeps us waiting does so without holding plugin memory.
                let mut release = live
                    .release_idle_instances
                    .filter(|_| ctx.plugins.as_ref().is_some_and(|p| p.live_instances() > 0))
                    .map(|after| Box::pin(tokio::time::sleep(after)));
                // Bounded: the release branch runs at most once, the others end the loop.
                loop {
                    tokio::select! {
                        r = &mut read => {
                            match r {
                                Err(_) => {
                                    info!(timeout_secs = limit.as_secs(), phase = ?phase, "client timed out");
                                    s.timed_out();
                                }
                                Ok(Ok(0)) => s.feed_eof(),
                                Ok(Ok(n)) => {
                                    if phase == ReadTimeout::Data {
                                        data_octets += n as u64;
                                    }
                                    s.feed(&buf[..n]);
                                }
                                Ok(Err(e)) => return Err(e),
                            }
                            break;
                        }
                        _ = ctx.shutdown.changed(), if !ctx.shutdown_seen => {
                            ctx.shutdown_seen = true;
                            s.shutting_down();
                            break;
                        }
                        _ = async { release.as_mut().expect("guarded").await }, if release.is_some() => {
                            release = None;
                            if let Some(p) = ctx.plugins.as_mut() {
                                p.release_instances();
                            }
                        }
                    }
                }
            }
            Step::Hook(hook) => {
                let r = on_hook(ctx, s, hook).await;
                if !ctx.greeted {
                    ctx.greeted = true;
                    pre_greeting(io, s, live.greeting_delay, &mut buf).await;
                }
                s.resolve(r);
                // Time spent in plugins and upstreams is not the client's.
                since = Instant::now();
            }
            Step::Seal(tail) => ctx.seal(s, tail).await,
            Step::Deliver(message) => {
                let reply = deliver(ctx, *message).await;
                s.resolve(Resolution::Reply(reply));
                since = Instant::now();
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
        Hook::MailFrom { address, params } => {
            ctx.outbound.set_client(s.facts(), s.transaction_id());
            ctx.outbound.mail_from(&address, &params).await
        }
        Hook::RcptTo { address } => {
            let plan = ctx.plugins.as_mut().and_then(|p| p.take_rcpt_plan());
            ctx.outbound.rcpt_to(&address, plan).await
        }
        Hook::Connect | Hook::Helo { .. } | Hook::Data => Resolution::Continue,
    }
}

async fn deliver(ctx: &mut Ctx, mut message: crate::smtp::Message) -> Reply {
    let started = ctx.txn_started.take().unwrap_or_else(Instant::now);
    let cur = Arc::clone(&ctx.cur);
    let live = &cur.runtime.live;
    if let Some(relayed) = ctx.outbound.relayed() {
        // Proxy mode: the message goes to the recipients the upstream took (the plugins'
        // rewrites at RCPT applied), which is what the log and `Received:` say.
        message.envelope.rcpt_to = relayed.to_vec();
    }
    let disposition = match ctx.plugins.as_mut() {
        Some(p) => p.finish(
            &mut message,
            live.trace_header,
            ctx.outbound.before_queue(),
            live.limits.max_recipients,
        ),
        None => Disposition::Deliver,
    };
    let queued = || Reply::new(250, "2.0.0", format!("Ok: queued as {}", message.id));
    // What the metric calls a message the plugins discarded or quarantined (once answered
    // 250); the reply decides for the rest.
    let taken_by_plugin = match &disposition {
        Disposition::Discard => Some("discarded"),
        Disposition::Quarantine(_) => Some("quarantined"),
        _ => None,
    };
    let reply = match disposition {
        Disposition::Discard => {
            info!(msg = %message.id, "message discarded by plugin");
            queued()
        }
        Disposition::Quarantine(why) => quarantine(live.quarantine.clone(), &message, &why).await,
        Disposition::Refuse(reply) => reply,
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
    let label = match taken_by_plugin {
        Some(label) if reply.is_positive() => label,
        _ => metric_outcome(&reply),
    };
    crate::metrics::get().message(label, reply.code(), m.text.len());
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
    crate::metrics::get().message(metric_outcome(reply), reply.code(), size);
}

/// A message's outcome as the `messages` metric labels it.
fn metric_outcome(reply: &Reply) -> &'static str {
    match outcome(reply) {
        "tempfail" => "tempfailed",
        other => other,
    }
}

/// The session's id, unique by construction: 16 upper-case hex digits, the process's
/// start time in milliseconds shifted left by 20 bits plus a counter of the sessions it
/// served. Ids never repeat within a process, and a process started later begins above
/// every id an earlier one could have reached unless that one served over 2^20 sessions
/// per millisecond between the two starts. Message and queue ids are `<session>.<n>`.
fn new_session_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| crate::queue::entry::now_ms() << 20);
    format!("{:016X}", base + NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, duplex};

    use super::*;
    use crate::server::outbound::Backend;

    /// Bound on any one read the test client makes (never reached when the code works).
    const READ_LIMIT: Duration = Duration::from_secs(30);
    /// The timeouts and delays under test. tokio's `test-util` (paused time) is not
    /// enabled for this crate, so these run on the real clock; kept short.
    const SHORT: Duration = Duration::from_millis(50);
    /// Most lines one reply may have before the client gives up.
    const MAX_REPLY_LINES: usize = 64;

    /// A driver context, a session and the shutdown switch, over a Maildir in a temp dir.
    struct Rig {
        ctx: Ctx,
        session: Session,
        /// Kept alive: a dropped sender reads as a shutdown.
        stop: watch::Sender<bool>,
        dir: tempfile::TempDir,
    }

    /// The default settings, validated.
    fn runtime() -> crate::config::Runtime {
        crate::config::Config::from_toml("")
            .unwrap()
            .validate()
            .unwrap()
    }

    fn rig(rt: crate::config::Runtime, starttls: bool) -> Rig {
        let rt = Arc::new(rt);
        let cur = Arc::new(Current {
            session: Arc::new(crate::server::session_config(&rt, starttls)),
            runtime: rt,
            plugins: None,
            generation: 1,
            since: 0,
        });
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::Maildir(Arc::new(crate::delivery::Maildir::new(dir.path())));
        let (stop, shutdown) = watch::channel(false);
        let ctx = Ctx {
            cur: Arc::clone(&cur),
            outbound: Outbound::new(&backend, "mx.test"),
            shutdown,
            shutdown_seen: false,
            greeted: false,
            txn_started: None,
            messages: 0,
            plugins: None,
            held: 0,
            memory: crate::memory_budget::MemoryBudget::new(64 << 20),
            spill: None,
        };
        let session = Session::new(
            Arc::clone(&cur.session),
            SessionFacts::new(
                "T1".into(),
                "192.0.2.1:4000".parse().unwrap(),
                "127.0.0.1:25".parse().unwrap(),
                Listener::Smtp,
            ),
        );
        Rig {
            ctx,
            session,
            stop,
            dir,
        }
    }

    /// The server end for `drive` and the client end, buffered for line reads.
    fn pipe() -> (DuplexStream, BufReader<DuplexStream>) {
        let (server, client) = duplex(64 * 1024);
        (server, BufReader::new(client))
    }

    /// Reads one whole reply (all its lines); empty at end of stream.
    async fn reply(c: &mut BufReader<DuplexStream>) -> String {
        let mut out = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            let n = timeout(READ_LIMIT, c.read_line(&mut line))
                .await
                .expect("the server answers in time")
                .expect("read");
            out.push_str(&line);
            if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
        panic!("reply longer than {MAX_REPLY_LINES} lines: {out}");
    }

    async fn send(c: &mut BufReader<DuplexStream>, text: &str) {
        c.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    /// Sends one command line and returns the reply.
    async fn cmd(c: &mut BufReader<DuplexStream>, line: &str) -> String {
        send(c, &format!("{line}\r\n")).await;
        reply(c).await
    }

    /// Everything the server still sends until it closes its end.
    async fn rest(c: &mut BufReader<DuplexStream>) -> String {
        let mut out = String::new();
        timeout(READ_LIMIT, c.read_to_string(&mut out))
            .await
            .expect("the server end is closed")
            .expect("read");
        out
    }

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_whole_transaction_is_delivered_to_the_maildir_and_the_drive_closes() {
        let mut r = rig(runtime(), false);
        let (mut server, mut c) = pipe();
        let client = async {
            let greeting = reply(&mut c).await;
            assert!(greeting.starts_with("220 mx.example.test "), "{greeting}");
            let ehlo = cmd(&mut c, "EHLO client.test").await;
            assert!(
                ehlo.starts_with("250-mx.example.test Hello client.test\r\n"),
                "{ehlo}"
            );
            assert!(!ehlo.contains("STARTTLS"), "no TLS configured: {ehlo}");
            let mail = cmd(&mut c, "MAIL FROM:<alice@sender.test>").await;
            assert!(mail.starts_with("250 2.1.0"), "{mail}");
            let rcpt = cmd(&mut c, "RCPT TO:<bob@example.test>").await;
            assert!(rcpt.starts_with("250 2.1.5"), "{rcpt}");
            let data = cmd(&mut c, "DATA").await;
            assert!(data.starts_with("354 "), "{data}");
            send(&mut c, "Subject: hi\r\n\r\nHello body line\r\n.\r\n").await;
            assert_eq!(reply(&mut c).await, "250 2.0.0 Ok: queued as T1.1\r\n");
            let quit = cmd(&mut c, "QUIT").await;
            assert!(quit.starts_with("221 2.0.0"), "{quit}");
        };
        let (flow, ()) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert_eq!(r.ctx.messages, 1);
        drop(server);
        assert_eq!(rest(&mut c).await, "", "nothing after 221");

        let new = r.dir.path().join("example.test").join("bob").join("new");
        let files = files_in(&new);
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.starts_with("Return-Path: <alice@sender.test>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Delivered-To: <bob@example.test>\r\n"),
            "{text}"
        );
        assert!(text.contains("Received: from client.test"), "{text}");
        assert!(text.contains("by mx.test (mailgate)"), "{text}");
        assert!(
            text.ends_with("Subject: hi\r\n\r\nHello body line\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_silent_client_gets_421_after_the_command_timeout() {
        let mut rt = runtime();
        rt.live.command_timeout = SHORT;
        let mut r = rig(rt, false);
        let (mut server, mut c) = pipe();
        // Before the drive starts, so before the server's timer does.
        let started = Instant::now();
        let client = async {
            assert!(reply(&mut c).await.starts_with("220 "));
            let r = reply(&mut c).await;
            assert!(r.starts_with("421 4.4.2 "), "{r}");
            started.elapsed()
        };
        let (flow, waited) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(waited >= SHORT, "not before the timeout: {waited:?}");
    }

    #[tokio::test]
    async fn a_client_silent_during_data_gets_421_after_the_data_timeout() {
        let mut rt = runtime();
        rt.live.command_timeout = Duration::from_secs(10);
        rt.live.data_timeout = SHORT;
        let mut r = rig(rt, false);
        let (mut server, mut c) = pipe();
        let client = async {
            assert!(reply(&mut c).await.starts_with("220 "));
            assert!(cmd(&mut c, "HELO client.test").await.starts_with("250 "));
            assert!(
                cmd(&mut c, "MAIL FROM:<a@b.test>")
                    .await
                    .starts_with("250 ")
            );
            assert!(
                cmd(&mut c, "RCPT TO:<u@example.test>")
                    .await
                    .starts_with("250 ")
            );
            assert!(cmd(&mut c, "DATA").await.starts_with("354 "));
            // The server restarts its data timer when this line arrives, after `started`.
            let started = Instant::now();
            send(&mut c, "Subject: half a message\r\n").await;
            let r = reply(&mut c).await;
            assert!(r.starts_with("421 4.4.2 "), "{r}");
            started.elapsed()
        };
        let (flow, waited) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(waited >= SHORT, "not before the data timeout: {waited:?}");
        assert!(
            waited < Duration::from_secs(10),
            "the data timeout applies, not the command timeout: {waited:?}"
        );
        assert!(
            files_in(&r.dir.path().join("example.test").join("u").join("new")).is_empty(),
            "nothing delivered"
        );
    }

    #[tokio::test]
    async fn shutdown_while_waiting_for_a_command_answers_421_and_ends_the_drive() {
        let mut r = rig(runtime(), false);
        let (mut server, mut c) = pipe();
        let stop = &r.stop;
        let client = async {
            assert!(reply(&mut c).await.starts_with("220 "));
            stop.send(true).unwrap();
            reply(&mut c).await
        };
        let (flow, answer) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(answer.starts_with("421 4.3.2 "), "{answer}");
        assert!(r.ctx.shutdown_seen);
    }

    #[tokio::test]
    async fn a_session_started_during_shutdown_answers_421_at_its_first_command() {
        let mut r = rig(runtime(), false);
        r.stop.send(true).unwrap();
        r.ctx.shutdown_seen = *r.ctx.shutdown.borrow();
        let (mut server, mut c) = pipe();
        let client = async {
            assert!(reply(&mut c).await.starts_with("220 "));
            send(&mut c, "EHLO c.test\r\n").await;
            reply(&mut c).await
        };
        let (flow, answer) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(answer.starts_with("421 4.3.2 "), "{answer}");
    }

    #[tokio::test]
    async fn starttls_hands_over_after_220_and_answers_nothing_pipelined_behind_it() {
        let mut r = rig(runtime(), true);
        let (mut server, mut c) = pipe();
        let client = async {
            assert!(reply(&mut c).await.starts_with("220 "));
            let ehlo = cmd(&mut c, "EHLO client.test").await;
            assert!(
                ehlo.contains("\r\n250-STARTTLS\r\n") || ehlo.ends_with("250 STARTTLS\r\n"),
                "{ehlo}"
            );
            send(&mut c, "STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n").await;
            reply(&mut c).await
        };
        let (flow, answer) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::StartTls));
        assert_eq!(answer, "220 2.0.0 Ready to start TLS\r\n");
        drop(server);
        assert_eq!(rest(&mut c).await, "", "the pipelined MAIL got no answer");
        assert_eq!(r.session.envelope().mail_from, "", "and was not run");
    }

    #[tokio::test]
    async fn client_eof_after_the_greeting_ends_the_drive_without_error() {
        let mut r = rig(runtime(), false);
        let (mut server, mut c) = pipe();
        let client = async {
            let greeting = reply(&mut c).await;
            // Half-close: the server reads EOF.
            c.get_mut().shutdown().await.unwrap();
            greeting
        };
        let (flow, greeting) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(greeting.starts_with("220 "), "{greeting}");
        assert_eq!(r.ctx.messages, 0);
    }

    #[tokio::test]
    async fn a_client_that_talks_during_the_greeting_delay_is_refused() {
        let mut rt = runtime();
        rt.live.greeting_delay = Duration::from_secs(10);
        let mut r = rig(rt, false);
        let (mut server, mut c) = pipe();
        let started = Instant::now();
        let client = async {
            send(&mut c, "EHLO eager.test\r\n").await;
            reply(&mut c).await
        };
        let (flow, answer) = tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(answer.starts_with("554 5.5.0 "), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused at once, not after the delay"
        );
        drop(server);
        assert_eq!(rest(&mut c).await, "", "no greeting after the refusal");
    }

    #[tokio::test]
    async fn a_patient_client_is_greeted_after_the_greeting_delay() {
        let mut rt = runtime();
        rt.live.greeting_delay = SHORT;
        let mut r = rig(rt, false);
        let (mut server, mut c) = pipe();
        let started = Instant::now();
        let client = async {
            let greeting = reply(&mut c).await;
            let waited = started.elapsed();
            assert!(cmd(&mut c, "QUIT").await.starts_with("221 "));
            (greeting, waited)
        };
        let (flow, (greeting, waited)) =
            tokio::join!(drive(&mut server, &mut r.session, &mut r.ctx), client);
        assert!(matches!(flow.unwrap(), Flow::Closed));
        assert!(greeting.starts_with("220 "), "{greeting}");
        assert!(waited >= SHORT, "{waited:?}");
    }

    #[tokio::test]
    async fn a_message_without_recipients_left_is_answered_queued_and_not_written() {
        let mut r = rig(runtime(), false);
        let message = crate::smtp::Message::sample("a@b.test", &[], b"Subject: x\r\n\r\nx\r\n");
        let reply = deliver(&mut r.ctx, message).await;
        assert_eq!(reply.to_bytes(), b"250 2.0.0 Ok: queued as s1.1\r\n");
        assert_eq!(r.ctx.messages, 1);
        assert!(files_in(r.dir.path()).is_empty(), "nothing delivered");
    }

    #[tokio::test]
    async fn quarantine_keeps_the_message_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("quarantine");
        let message = crate::smtp::Message::sample(
            "a@b.test",
            &["u@example.test"],
            b"Subject: x\r\n\r\nsuspicious body\r\n",
        );
        let reply = quarantine(root.clone(), &message, "looks like spam").await;
        assert_eq!(reply.to_bytes(), b"250 2.0.0 Ok: queued as s1.1\r\n");
        let files = files_in(&root.join("example.test").join("u").join("new"));
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.contains("X-Mailgate-Quarantine: looks like spam\r\n"),
            "{text}"
        );
        assert!(text.ends_with("suspicious body\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_failed_quarantine_write_is_a_temporary_failure() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the quarantine root should be: nothing can be created under it.
        let root = dir.path().join("not-a-dir");
        std::fs::write(&root, b"x").unwrap();
        let message = crate::smtp::Message::sample("a@b.test", &["u@example.test"], b"x\r\n");
        let reply = quarantine(root, &message, "why").await;
        assert_eq!(reply.code(), 451, "{reply}");
        assert!(reply.is_transient());
    }

    #[test]
    fn outcome_names_the_reply_class() {
        assert_eq!(outcome(&Reply::new(250, "2.0.0", "ok")), "accepted");
        assert_eq!(outcome(&Reply::new(451, "4.3.0", "later")), "tempfail");
        assert_eq!(outcome(&Reply::new(550, "5.7.1", "no")), "rejected");
    }

    #[test]
    fn session_ids_are_sixteen_hex_digits_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| new_session_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                "{id}"
            );
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let n = |s: &str| u64::from_str_radix(s, 16).unwrap();
        assert!(ids.windows(2).all(|w| n(&w[1]) > n(&w[0])), "increasing");
    }
}
