//! The tokio server: binds listeners, enforces connection limits, runs one task per
//! connection (see [`conn`]), and shuts down gracefully.
//!
//! Entry point for the binary and for tests: [`Listeners::bind`] then [`run`] with a
//! shutdown future. Tests bind `127.0.0.1:0` and read the bound addresses back.
//!
//! Listeners of `[server.proxy_protocol]` take connections from trusted load balancers
//! only and read their PROXY header ([`proxy_protocol`]) before anything else; the
//! session, its connection limit and its log lines are then the real client's.

pub mod conn;
pub mod limits;
pub mod outbound;
pub mod proxy_protocol;
pub mod reload;
pub mod spill;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Runtime;
use crate::current::{Current, CurrentCell};
use crate::smtp::{Reply, SessionConfig};
use limits::{ConnGuard, ConnTracker, LimitHit};

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The queue's spool could not be opened or recovered.
    #[error("queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    /// The admin socket could not be set up.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// Bound listening sockets, plain and implicit TLS, direct and behind a PROXY protocol
/// balancer.
#[derive(Debug)]
pub struct Listeners {
    /// Plain SMTP (STARTTLS offered when TLS is available).
    pub smtp: Vec<TcpListener>,
    /// Implicit TLS.
    pub smtps: Vec<TcpListener>,
    /// Plain SMTP after a PROXY header (`server.proxy_protocol.listen`).
    pub smtp_proxy: Vec<TcpListener>,
    /// Implicit TLS after a PROXY header (`server.proxy_protocol.listen_tls`).
    pub smtps_proxy: Vec<TcpListener>,
}

/// How a listener's connections begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind {
    /// Implicit TLS (`smtps`).
    implicit_tls: bool,
    /// A PROXY protocol header first.
    proxy: bool,
}

impl Listeners {
    /// Binds every configured address.
    pub async fn bind(rt: &Runtime) -> Result<Listeners, ServerError> {
        async fn all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServerError> {
            let mut out = Vec::new();
            for &addr in addrs {
                out.push(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind { addr, source })?,
                );
            }
            Ok(out)
        }
        Ok(Listeners {
            smtp: all(&rt.fixed.listen).await?,
            smtps: all(&rt.fixed.listen_tls).await?,
            smtp_proxy: all(&rt.fixed.proxy_listen).await?,
            smtps_proxy: all(&rt.fixed.proxy_listen_tls).await?,
        })
    }

    /// `(kind, bound address)` for each listener; kind is `smtp`, `smtps`, `smtp-proxy`
    /// or `smtps-proxy`.
    pub fn addresses(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        for (kind, list) in [
            ("smtp", &self.smtp),
            ("smtps", &self.smtps),
            ("smtp-proxy", &self.smtp_proxy),
            ("smtps-proxy", &self.smtps_proxy),
        ] {
            for l in list {
                if let Ok(a) = l.local_addr() {
                    out.push((kind, a));
                }
            }
        }
        out
    }
}

/// What every connection shares.
pub struct Shared {
    /// Settings and plugins for new sessions and the queue (replaced by a reload).
    pub current: Arc<CurrentCell>,
    /// Reload bookkeeping.
    pub reloader: reload::Reloader,
    /// The queue, in queue mode.
    pub queue: Option<Arc<crate::queue::Queue>>,
    /// TLS acceptor, if TLS is available.
    pub tls: Option<TlsAcceptor>,
    /// Flips to `true` when shutdown begins.
    pub shutdown: watch::Receiver<bool>,
    /// Open-connection accounting.
    pub conns: Arc<ConnTracker>,
    /// Memory for message content, shared by all sessions.
    pub memory: Arc<crate::memory_budget::MemoryBudget>,
    /// The delivery mode.
    pub backend: outbound::Backend,
    /// When the gateway started (unix seconds).
    pub started: u64,
    /// The resolver (client reverse names).
    pub dns: Arc<crate::dns::Resolver>,
    /// Where the admin HTTP listener listens, once it does.
    pub admin_http: std::sync::Mutex<Option<String>>,
}

/// A connection a PROXY listener closed, counted in `connections_refused`.
fn proxy_refused(reason: &str) {
    crate::metrics::get()
        .connections_refused
        .get_or_create(&crate::metrics::Reason {
            reason: reason.to_string(),
        })
        .inc();
}

/// The state figures the metrics report, as `mailgate status` has them.
fn snapshot(shared: &Shared) -> crate::metrics::Snapshot {
    let cur = shared.current();
    let q = shared.queue.as_ref().map(|q| q.stats());
    let kv = shared.reloader.services.kv.stats();
    crate::metrics::Snapshot {
        kv_calls: kv.calls,
        kv_unavailable: kv.unavailable,
        kv_timeouts: kv.timeouts,
        kv_failing: kv.failing,
        queue_messages: q.as_ref().map_or(0, |q| q.depth as u64),
        queue_oldest_seconds: q.as_ref().map_or(0.0, |q| q.oldest_age_secs as f64),
        queue_spool_commits: q.as_ref().map_or(0, |q| q.spool_commits),
        queue_spool_changes: q.as_ref().map_or(0, |q| q.spool_changes),
        generation: cur.generation,
        verify_cached: shared.reloader.services.verify.stats().cached as u64,
    }
}

impl Shared {
    /// What a session starting now uses.
    pub fn current(&self) -> Arc<Current> {
        self.current.get()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.current().generation)
            .field("tls", &self.tls.is_some())
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Protocol settings derived from the runtime config.
pub fn session_config(rt: &Runtime, tls_available: bool) -> SessionConfig {
    SessionConfig {
        hostname: rt.live.hostname.clone(),
        max_message_size: rt.live.limits.max_message_size,
        max_recipients: rt.live.limits.max_recipients,
        max_recipient_overshoot: rt.live.limits.max_recipient_overshoot,
        fold_local_part: rt.fixed.fold_local_part,
        max_command_line: rt.live.limits.max_command_line,
        max_text_line: rt.live.limits.max_text_line,
        max_errors: rt.live.limits.max_errors,
        max_hops: rt.live.limits.max_hops,
        max_junk_commands: rt.live.limits.max_junk_commands,
        starttls: tls_available,
        local_domains: rt.live.local_domains.clone(),
    }
}

/// Serves on `listeners` until `shutdown` completes, then stops accepting and gives open
/// sessions `server.shutdown_grace_secs` to finish.
pub async fn run(
    rt: Arc<Runtime>,
    listeners: Listeners,
    plugins: Option<Arc<crate::plugin::Generation>>,
    services: Arc<crate::plugin::registry::Services>,
    config_path: Option<std::path::PathBuf>,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let dns = Arc::clone(&services.dns);
    let acceptor = tls::acceptor(&rt)?;
    if acceptor.is_none() && !(listeners.smtps.is_empty() && listeners.smtps_proxy.is_empty()) {
        warn!("implicit-TLS listeners configured without TLS; they will close connections");
    }
    let started = crate::queue::entry::now_ms() / 1000;
    let current = CurrentCell::new(Current {
        session: Arc::new(session_config(&rt, acceptor.is_some())),
        runtime: Arc::clone(&rt),
        plugins,
        generation: 1,
        since: started,
    });
    let own: Vec<SocketAddr> = listeners.addresses().into_iter().map(|(_, a)| a).collect();
    // Recipient verification asks the next hops the queue would use, never ourselves.
    services.verify.attach(Arc::clone(&current), own.clone());
    let queue = match &rt.fixed.delivery {
        crate::config::DeliveryMode::Queue(s) => Some(crate::queue::Queue::open(
            (**s).clone(),
            Arc::clone(&current),
            Arc::clone(&dns),
            own,
        )?),
        _ => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        current,
        reloader: reload::Reloader::new(config_path, services),
        queue: queue.clone(),
        tls: acceptor,
        shutdown: stop_rx,
        conns: ConnTracker::new(
            rt.fixed.max_connections,
            rt.fixed.max_connections_per_ip,
            rt.fixed.client_prefixes,
        ),
        memory: crate::memory_budget::MemoryBudget::new(rt.fixed.max_message_memory),
        backend: outbound::Backend::new(&rt.fixed, queue.clone()),
        dns,
        started,
        admin_http: std::sync::Mutex::new(None),
    });
    tokio::spawn(reload::on_sighup(
        Arc::clone(&shared),
        shared.shutdown.clone(),
    ));
    if !rt.fixed.watch_interval.is_zero() {
        tokio::spawn(reload::watch_files(
            Arc::clone(&shared),
            rt.fixed.watch_interval,
            reload::baseline(&shared),
            shared.shutdown.clone(),
        ));
    }
    let tracker = TaskTracker::new();
    // Without its admin socket the gateway cannot be managed: refuse to start.
    let admin = crate::admin::bind(&rt.fixed.admin_socket)?;
    let gateway: Arc<dyn crate::admin::Gateway> = Arc::clone(&shared) as _;
    tokio::spawn(crate::admin::serve(
        admin,
        rt.fixed.admin_socket.clone(),
        gateway,
        shared.shutdown.clone(),
    ));
    // Metrics and health on the admin HTTP listener. Unlike the admin socket it is not
    // needed to run: a taken port is logged and the gateway serves mail without it.
    let probe = Arc::new(crate::admin_http::Probe {
        ready: std::sync::atomic::AtomicBool::new(false),
        refresh: {
            let shared = Arc::downgrade(&shared);
            Box::new(move || {
                if let Some(s) = shared.upgrade() {
                    crate::metrics::get().observe_status(snapshot(&s));
                }
            })
        },
    });
    if let Some(addr) = rt.fixed.admin_http {
        match crate::admin_http::bind(&addr.to_string()).await {
            Ok(l) => {
                let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                info!(address = %bound, "admin HTTP listener (metrics, health)");
                *shared.admin_http.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
                tokio::spawn(crate::admin_http::serve(
                    l,
                    Arc::clone(&probe),
                    shared.shutdown.clone(),
                ));
            }
            Err(e) => warn!(error = %e, "admin HTTP listener not started"),
        }
    }
    // The queue's scheduler stops with the listeners; its attempts in progress finish.
    let scheduler = queue.map(|q| tokio::spawn(q.run(shared.shutdown.clone())));
    let mut accept_loops = Vec::new();
    for (list, implicit_tls, proxy) in [
        (listeners.smtp, false, false),
        (listeners.smtps, true, false),
        (listeners.smtp_proxy, false, true),
        (listeners.smtps_proxy, true, true),
    ] {
        for l in list {
            accept_loops.push(tokio::spawn(accept_loop(
                l,
                Kind {
                    implicit_tls,
                    proxy,
                },
                Arc::clone(&shared),
                tracker.clone(),
            )));
        }
    }
    ready();
    probe
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.await;
    probe
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    info!(
        open = shared.conns.open(),
        "shutting down: no new connections"
    );
    for a in &accept_loops {
        a.abort();
    }
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(rt.fixed.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = shared.conns.open(),
            "grace period over; closing remaining sessions"
        );
    }
    if let Some(s) = scheduler
        && tokio::time::timeout(rt.fixed.shutdown_grace, s)
            .await
            .is_err()
    {
        warn!("grace period over; queue deliveries in progress are retried at next start");
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and similar: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| listener.local_addr().expect("bound"));
        let _ = tcp.set_nodelay(true);
        if kind.proxy {
            let cur = shared.current();
            let live = &cur.runtime.live;
            if !proxy_protocol::trusted(peer.ip(), &live.proxy_trusted) {
                // Closed at once: nothing is read from, or said to, a peer that may not
                // speak for others.
                info!(%peer, %local, reason = %proxy_protocol::ProxyError::Untrusted(peer.ip()), "PROXY listener: connection closed");
                proxy_refused("proxy_untrusted");
                continue;
            }
            tracker.spawn(proxied(
                Arc::clone(&shared),
                tcp,
                peer,
                local,
                kind.implicit_tls,
                live.proxy_timeout,
            ));
            continue;
        }
        match admit(&shared, peer, kind.implicit_tls) {
            Ok(guard) => {
                let ctx = conn::Accepted {
                    client: peer,
                    local,
                    implicit_tls: kind.implicit_tls,
                    proxied_by: None,
                };
                tracker.spawn(conn::serve(Arc::clone(&shared), tcp, ctx, guard));
            }
            Err(Some(reply)) => {
                tracker.spawn(refuse(tcp, reply));
            }
            Err(None) => {}
        }
    }
}

/// Takes a connection slot for `client`, or says why not: `Err` with the `421` to send
/// on a plain listener (nothing is read from the client), `Err(None)` on an
/// implicit-TLS one, where the connection is just closed.
fn admit(
    shared: &Shared,
    client: SocketAddr,
    implicit_tls: bool,
) -> Result<ConnGuard, Option<Reply>> {
    shared.conns.acquire(client.ip()).map_err(|hit| {
        let (what, reply) = match hit {
            LimitHit::Total => ("total", "Too many connections, try again later"),
            LimitHit::PerIp => ("per-ip", "Too many connections from your address"),
        };
        info!(%client, limit = what, "connection refused by limit");
        (!implicit_tls).then(|| {
            Reply::new(
                421,
                "4.7.0",
                format!("{} {reply}", shared.current().runtime.live.hostname),
            )
        })
    })
}

/// A connection on a PROXY listener from a trusted peer: its header within `limit`,
/// then the session of the client it names (its connection slot, its log lines), with
/// the octets that followed the header. A missing, incomplete or malformed header closes
/// the connection with a log line saying why.
async fn proxied(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    implicit_tls: bool,
    limit: std::time::Duration,
) {
    let (header, rest) = match proxy_protocol::read_header(&mut tcp, limit).await {
        Ok(x) => x,
        Err(e) => {
            warn!(%peer, %local, reason = %e, "PROXY listener: connection closed");
            proxy_refused("proxy_header");
            return;
        }
    };
    let ends = header.endpoints(peer, local);
    debug!(%peer, client = %ends.client, header = header.describe(), "PROXY header");
    let io = proxy_protocol::Rewind::new(tcp, rest);
    match admit(&shared, ends.client, implicit_tls) {
        Ok(guard) => {
            let ctx = conn::Accepted {
                client: ends.client,
                local: ends.local,
                implicit_tls,
                proxied_by: Some(peer),
            };
            conn::serve(shared, io, ctx, guard).await;
        }
        Err(Some(reply)) => refuse(io, reply).await,
        Err(None) => {}
    }
}

/// Tells a refused client why, without reading anything from it.
async fn refuse<S: AsyncWrite + Unpin>(mut tcp: S, reply: Reply) {
    let write = async {
        tcp.write_all(&reply.to_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
}
