//! TLS for the listeners (rustls): certificate and key from PEM files, or a self-signed
//! certificate generated at start for the configured host name.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Runtime;
use crate::smtp::TlsInfo;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("tls.cert {path}: {reason}")]
    Cert {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no key.
    #[error("tls.key {path}: {reason}")]
    Key {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate/key pair.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor from the runtime config: `None` when TLS is disabled
/// (no files and `tls.self_signed = false`).
pub fn acceptor(rt: &Runtime) -> Result<Option<TlsAcceptor>, TlsError> {
    let (certs, key) = match &rt.fixed.tls_files {
        Some((cert, key)) => (load_certs(cert)?, load_key(key)?),
        None if rt.fixed.tls_self_signed => self_signed(&rt.live.hostname)?,
        None => return Ok(None),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A fresh self-signed certificate for `hostname`.
pub fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    let key =
        PrivateKeyDer::try_from(ck.signing_key.serialize_der()).map_err(|e| TlsError::Key {
            path: "(generated)".into(),
            reason: e.to_string(),
        })?;
    Ok((vec![ck.cert.der().clone()], key))
}

/// What the session and the logs learn about an established TLS connection.
pub fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
    }
}
