//! Test-only helpers: a scripted fake SMTP server on 127.0.0.1 and a self-signed TLS
//! server configuration.
//!
//! The server accepts one connection per script, plays the script's steps in order and
//! records every byte it received on that connection, so tests can assert exactly what
//! the client sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One step of a fake server script.
#[derive(Clone)]
pub(crate) enum Step {
    /// Send these bytes.
    Send(&'static str),
    /// Read one line (up to LF).
    Line,
    /// Read message data up to and including the `.CRLF` terminator.
    Data,
    /// Wait this long (to provoke client timeouts).
    Sleep(Duration),
    /// Do the server side of a TLS handshake and continue over TLS.
    StartTls(Arc<ServerConfig>),
    /// Close the connection now (end of script, without waiting for the client).
    Close,
}

/// A running fake server.
pub(crate) struct FakeServer {
    /// `127.0.0.1:port`.
    pub addr: String,
    handle: JoinHandle<Vec<String>>,
}

impl FakeServer {
    /// Listens on a fresh port and serves `scripts`, one per accepted connection.
    pub async fn start(scripts: Vec<Vec<Step>>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let mut out = Vec::new();
            for script in scripts {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut steps: VecDeque<Step> = script.into();
                let mut rec = Vec::new();
                let mut io = BufReader::new(tcp);
                if let Some(config) = run(&mut io, &mut steps, &mut rec).await {
                    let tcp = io.into_inner();
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let mut io = BufReader::new(tls);
                        rec.extend_from_slice(b"<TLS>");
                        run(&mut io, &mut steps, &mut rec).await;
                    } else {
                        rec.extend_from_slice(b"<TLS FAILED>");
                    }
                }
                out.push(String::from_utf8_lossy(&rec).into_owned());
            }
            out
        });
        FakeServer { addr, handle }
    }

    /// Waits until all scripts ran; what the client sent, per connection.
    pub async fn received(self) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .unwrap()
            .unwrap()
    }
}

/// Runs steps until the script ends, the peer goes away, or a `StartTls` step (whose
/// configuration is returned).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    steps: &mut VecDeque<Step>,
    rec: &mut Vec<u8>,
) -> Option<Arc<ServerConfig>> {
    while let Some(step) = steps.pop_front() {
        match step {
            Step::Send(s) => {
                if io.get_mut().write_all(s.as_bytes()).await.is_err() {
                    return None;
                }
                let _ = io.get_mut().flush().await;
            }
            Step::Line => match io.read_until(b'\n', rec).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            Step::Data => {
                let start = rec.len();
                loop {
                    match io.read_until(b'\n', rec).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                    let data = &rec[start..];
                    if data == b".\r\n" || data.ends_with(b"\r\n.\r\n") {
                        break;
                    }
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::StartTls(config) => return Some(config),
            Step::Close => return None,
        }
    }
    // Script over: wait for the client to close, recording anything it still sends.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match io.read_until(b'\n', rec).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    None
}

/// A TLS server configuration with a fresh self-signed certificate for `localhost`.
pub(crate) fn self_signed_server_config() -> Arc<ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
    Arc::new(config)
}

/// Timeouts of 5 s for every step: short enough that a test that goes wrong ends, long
/// enough for a loaded machine.
pub fn fast_timeouts() -> crate::delivery::Timeouts {
    let s = std::time::Duration::from_secs(5);
    crate::delivery::Timeouts {
        connect: s,
        greeting: s,
        command: s,
        mail: s,
        rcpt: s,
        data_init: s,
        data_block: s,
        data_final: s,
    }
}
