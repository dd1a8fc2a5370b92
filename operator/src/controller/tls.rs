//! TLS for the `maxConnections: auto` probe: a rustls (ring) connector for tokio-postgres
//! that checks the database's certificate as `spec.tls.server.mode` says, like the poolers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use weir_pooler::config::TlsMode;
use weir_pooler::tls;

use crate::api::SslMode;

/// The server-side TLS settings of a pool, with the PEM files read from the API.
#[derive(Clone, PartialEq, Eq)]
pub struct ProbeTls {
    /// `spec.tls.server.mode` in force.
    pub mode: SslMode,
    /// The CA's PEM certificates.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and private key (PEM) to present.
    pub client_certificate: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ProbeTls {
    // Leaves the private key out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls")
            .field("mode", &self.mode)
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client_certificate.is_some())
            .finish()
    }
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA is not PEM or holds no certificate.
    #[error("the CA is not a PEM certificate: {0}")]
    Ca(String),
    /// The client certificate or key is not usable.
    #[error("the client certificate is not usable: {0}")]
    ClientCertificate(String),
    /// rustls refused the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

impl ProbeTls {
    /// The rustls client configuration for this mode; `None` for `disable`.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, TlsSetupError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(crypto::ring::default_provider());
        let roots = match &self.ca {
            Some(ca) => Some(Arc::new(roots(ca)?)),
            None => None,
        };
        // The poolers' own rule (libpq's): a CA makes every TLS mode check the chain, and
        // verify-full the name too. Admission requires a CA for the verify modes.
        let verifier = tls::server_verifier(pooler_mode(self.mode), roots, &provider)
            .map_err(|e| TlsSetupError::Ca(e.to_string()))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_certificate {
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsSetupError::ClientCertificate(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| TlsSetupError::ClientCertificate(e.to_string()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }
}

/// The CA certificates in `pem`.
fn roots(pem: &[u8]) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsSetupError::Ca(e.to_string()))?;
        store
            .add(cert)
            .map_err(|e| TlsSetupError::Ca(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsSetupError::Ca("no certificate found".to_owned()));
    }
    Ok(store)
}

/// The pooler's name for a mode.
fn pooler_mode(mode: SslMode) -> TlsMode {
    match mode {
        SslMode::Disable => TlsMode::Disable,
        SslMode::Allow => TlsMode::Allow,
        SslMode::Prefer => TlsMode::Prefer,
        SslMode::Require => TlsMode::Require,
        SslMode::VerifyCa => TlsMode::VerifyCa,
        SslMode::VerifyFull => TlsMode::VerifyFull,
    }
}

/// tokio-postgres' TLS hook over tokio-rustls.
#[derive(Clone)]
pub struct MakeRustls(Arc<ClientConfig>);

impl MakeRustls {
    /// A connector using `config`.
    pub fn new(config: ClientConfig) -> MakeRustls {
        MakeRustls(Arc::new(config))
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One TLS handshake toward `name`.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// An established TLS stream.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    // The probe logs in with SCRAM-SHA-256 without channel binding, as libpq's default
    // channel_binding=prefer does when no binding is offered.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
