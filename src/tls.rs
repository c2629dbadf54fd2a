//! TLS for the second listener (`server.tls_listen`): rustls on aws-lc-rs (the crypto
//! the TUF code already uses), HTTP/2 and HTTP/1.1 offered by ALPN. The certificate
//! chain and key are PEM files, reloaded on SIGHUP and when either file changes: new
//! handshakes get the new pair, established connections keep theirs. A pair that does
//! not load is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are looked at for a change.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {0}: {1}")]
    Cert(PathBuf, String),
    #[error("TLS key {0}: {1}")]
    Key(PathBuf, String),
    #[error("TLS: {0}")]
    Config(String),
}

/// The node's certificate, swapped in place on reload.
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM chain and its key into what rustls serves.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert(cert.into(), e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(cert.into(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Cert(
            cert.into(),
            "no certificate in the file".into(),
        ));
    }
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.into(), e.to_string()))?;
    CertifiedKey::from_der(chain, der, &provider())
        .map_err(|e| TlsError::Key(key.into(), e.to_string()))
}

impl Certificates {
    /// Loads the pair; an error names the file.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let pair = load(cert, key)?;
        Ok(Arc::new(Certificates {
            current: RwLock::new(Arc::new(pair)),
            cert: cert.into(),
            key: key.into(),
        }))
    }

    /// Loads the files again; on failure the served pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    fn stamps(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&self.cert), m(&self.key))
    }

    /// Reloads on SIGHUP and whenever either file's modification time changes; runs
    /// until aborted.
    pub async fn watch(self: Arc<Self>) {
        let mut seen = self.stamps();
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                _ = tokio::time::sleep(POLL) => "file change",
            };
            let now = self.stamps();
            if why == "file change" && now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, why, "TLS certificate not reloaded; the previous one is kept")
                }
            }
        }
    }
}

/// A TLS acceptor serving `certs`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor(certs: Arc<Certificates>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
