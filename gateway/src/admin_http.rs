//! The admin HTTP listener (`admin.http`, loopback by default): `GET /metrics`
//! (Prometheus, OpenMetrics text), `GET /healthz` (the process answers) and
//! `GET /readyz` (listeners bound, queue recovered, plugins loaded, not shutting down).
//! HTTP/1.1 by hyper; nothing else is served, and only `GET`/`HEAD`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminHttpError {
    /// Binding the address failed.
    #[error("admin.http {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the listener reports on.
pub struct Probe {
    /// Set once the gateway serves (listeners bound, queue recovered, plugins loaded),
    /// cleared when it starts shutting down.
    pub ready: AtomicBool,
    /// Refreshes the state figures before a scrape (queue depth, instances, …).
    pub refresh: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

/// Binds `addr` (`host:port`; port 0 picks one).
pub async fn bind(addr: &str) -> Result<TcpListener, AdminHttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminHttpError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn reply(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

/// The answer to one request.
pub fn answer(probe: &Probe, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n");
    }
    match path {
        "/metrics" => {
            (probe.refresh)();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                crate::metrics::encode(),
            )
        }
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if probe.ready.load(Ordering::Relaxed) => reply(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// Serves `listener` until `shutdown` turns true. Each connection is served on its own
/// task; a request line or headers slower than 10 s end the connection.
pub async fn serve(listener: TcpListener, probe: Arc<Probe>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "admin http accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = answer(&probe, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin http connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_answer_as_documented() {
        let probe = Probe {
            ready: AtomicBool::new(false),
            refresh: Box::new(|| {}),
        };
        assert_eq!(
            answer(&probe, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&probe, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        probe.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            answer(&probe, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        let m = answer(&probe, &Method::GET, "/metrics");
        assert_eq!(m.status(), StatusCode::OK);
        assert!(
            m.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert_eq!(
            answer(&probe, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&probe, &Method::GET, "/other").status(),
            StatusCode::NOT_FOUND
        );
    }
}
