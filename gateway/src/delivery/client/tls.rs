//! TLS towards the next hop: the STARTTLS policy, the opportunistic certificate
//! verifier, the shared rustls client configuration and the SNI name.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// When to use `STARTTLS` towards the next hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TlsPolicy {
    /// Never; plain SMTP even if `STARTTLS` is offered.
    None,
    /// Use `STARTTLS` when offered; continue in plaintext if it is not offered or refused,
    /// and reconnect without TLS if the handshake fails. No certificate verification.
    #[default]
    Opportunistic,
    /// Use `STARTTLS`; fail if it is not offered, refused, or the handshake fails.
    /// (Certificates are not verified yet either.)
    Required,
}

/// The host part of `host:port` / `[v6]:port` as a TLS server name (for SNI), falling back
/// to the connected peer's address when the host is not a valid name.
pub(super) fn server_name_for(addr: &str, peer: Option<std::net::IpAddr>) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(_) => ServerName::IpAddress(
            peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
                .into(),
        ),
    }
}

/// A rustls certificate verifier for opportunistic TLS: accepts any server certificate
/// (chain, name and validity are not checked) but verifies the handshake signatures with
/// the crypto provider's algorithms, so the peer must hold the certificate's private key.
#[derive(Debug)]
pub struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyServerCert {
    /// A verifier using `provider`'s signature verification algorithms.
    pub fn new(provider: &CryptoProvider) -> AcceptAnyServerCert {
        AcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls client configuration for relaying: ring provider, TLS 1.2 and 1.3,
/// [`AcceptAnyServerCert`], no client certificate. Built once per process and shared (so
/// sessions can be resumed).
pub fn client_tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyServerCert::new(&provider));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}
