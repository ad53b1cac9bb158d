//! TLS for the TCP API: the agent's own self-signed certificate, pinned by the CLI.
//!
//! With `--api-listen`, the agent keeps a certificate and key in its data dir (`api.crt`,
//! `api.key` 0600; made on first start with `rcgen`) and serves HTTPS with rustls. There is
//! no CA: the client pins the certificate's SHA-256 fingerprint, which the agent writes as the
//! second line of its token file (`api.token`: the bearer token, then `sha256:<hex>`), so
//! copying that one file to an operator's machine gives it both what proves the agent (the
//! fingerprint) and what proves the operator (the token). A certificate that is not the pinned
//! one ends the handshake before any request is sent.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The name in the agent's certificate (the client checks the fingerprint, not the name).
pub const AGENT_NAME: &str = "shoal-agent";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate's pin: `sha256:` and the hex SHA-256 of its DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The agent's TLS identity.
pub struct AgentTls {
    /// The server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate's pin.
    pub fingerprint: String,
}

/// Loads `api.crt`/`api.key` from `dir`, making them on first use.
pub fn load_or_create(dir: &Path) -> std::io::Result<AgentTls> {
    let (crt, key) = (dir.join("api.crt"), dir.join("api.key"));
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    if !crt.exists() || !key.exists() {
        let made = rcgen::generate_simple_self_signed(vec![AGENT_NAME.to_string()]).map_err(|e| invalid(&e))?;
        write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&crt, made.cert.pem())?;
    }
    let cert = CertificateDer::from_pem_file(&crt)
        .map_err(|e| invalid(&format!("{}: {e}; move it and api.key away to make new ones", crt.display())))?;
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| invalid(&format!("{}: {e}; move it and api.crt away to make new ones", key.display())))?;
    let fingerprint = fingerprint(&cert);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key_der)
        .map_err(|e| invalid(&e))?;
    Ok(AgentTls { config: Arc::new(config), fingerprint })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A client configuration that accepts exactly the certificate with pin `fingerprint`.
pub fn pinned_client(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let hex = fingerprint.trim().strip_prefix("sha256:").unwrap_or(fingerprint.trim());
    let pin: [u8; 32] = hex::decode(hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{fingerprint}` is not a certificate fingerprint (sha256:<64 hex digits>)"))?;
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts the one certificate whose SHA-256 is `pin`; handshake signatures are checked as
/// usual, so only the holder of its key passes.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the agent's certificate is not the pinned one (another agent, or a new certificate: copy its api.token again)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP listener whose connections are TLS-accepted before axum sees them. Handshakes run
/// on their own tasks (at most [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_LIMIT`]),
/// so a client that connects and stalls holds up nobody else.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

/// Most TLS handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a client may take to finish its handshake.
pub const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, from) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(err = %e, "API listener error");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%from, "API handshakes at their limit; connection closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            drop(slot);
                            let _ = tx.send((tls, from)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%from, err = %e, "API TLS handshake failed"),
                        Err(_) => tracing::debug!(%from, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
