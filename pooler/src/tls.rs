//! TLS material built from the `client_tls_*` and `server_tls_*` settings: the rustls
//! configurations for accepting clients and for connecting to servers, checked when the
//! configuration is loaded so that a bad file is an error naming the file and the setting.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

use crate::config::{ChannelBindingMode, CleartextPassword, ConfigError, Settings, TlsMode};

/// The ALPN protocol name of PostgreSQL's direct TLS negotiation (PostgreSQL 17).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Plaintext bytes per TLS record sent to clients, as PostgreSQL's own 8 kB send buffer makes them.
const MAX_RECORD_PLAINTEXT: usize = 8192;

/// TLS toward clients and toward servers, as one configuration asks for it.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Accepting clients.
    pub client: ClientTls,
    /// Connecting to servers.
    pub server: Arc<ServerTls>,
}

/// What the pooler does when a client asks for TLS, or does not.
#[derive(Clone)]
pub struct ClientTls {
    /// `client_tls_sslmode`.
    pub mode: TlsMode,
    /// The rustls configuration; `None` under `disable`.
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// When the certificate shown to clients expires (Unix seconds).
    pub not_after: Option<i64>,
    /// `tls-server-end-point` channel-binding data of that certificate (RFC 5929), for
    /// SCRAM-SHA-256-PLUS; `None` when its signature algorithm names no usable hash.
    pub end_point: Option<Vec<u8>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// How the pooler connects to servers.
#[derive(Clone)]
pub struct ServerTls {
    /// `server_tls_sslmode`.
    pub mode: TlsMode,
    /// The rustls configuration; `None` under `disable`.
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// `server_cleartext_password`.
    pub cleartext_password: CleartextPassword,
    /// `server_channel_binding`.
    pub channel_binding: ChannelBindingMode,
    /// When the client certificate shown to servers expires (Unix seconds).
    pub not_after: Option<i64>,
    /// A digest of the settings and the files' contents: equal digests, same behaviour.
    digest: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

// Compared by what they were built from, so a reload with the same files keeps the pools.
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for ServerTls {}

impl Tls {
    /// Builds both sides from `settings`, reading the certificate, key and CA files.
    pub fn load(settings: &Settings) -> Result<Tls, ConfigError> {
        Ok(Tls {
            client: client_side(settings)?,
            server: Arc::new(server_side(settings)?),
        })
    }

    /// The files the material was read from, to watch for rotation.
    pub fn files(settings: &Settings) -> Vec<&Path> {
        [
            &settings.client_tls_key_file,
            &settings.client_tls_cert_file,
            &settings.client_tls_ca_file,
            &settings.server_tls_ca_file,
            &settings.server_tls_key_file,
            &settings.server_tls_cert_file,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect()
    }

    /// A digest of the files' contents, to tell a rotated certificate from an unchanged one.
    pub fn files_digest(settings: &Settings) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for path in Tls::files(settings) {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update(std::fs::read(path).unwrap_or_default());
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_side(s: &Settings) -> Result<ClientTls, ConfigError> {
    let mode = s.client_tls_sslmode;
    if s.auth_type == crate::config::AuthType::Cert
        && (mode == TlsMode::Disable || s.client_tls_ca_file.is_none())
    {
        return Err(setting_error(
            "auth_type",
            "auth_type cert needs client_tls_sslmode other than disable and client_tls_ca_file \
             to verify client certificates with",
        ));
    }
    if mode == TlsMode::Disable {
        return Ok(ClientTls {
            mode,
            config: None,
            not_after: None,
            end_point: None,
        });
    }
    let (Some(cert_file), Some(key_file)) = (&s.client_tls_cert_file, &s.client_tls_key_file)
    else {
        return Err(setting_error(
            "client_tls_sslmode",
            format!("client_tls_sslmode {mode} needs client_tls_cert_file and client_tls_key_file"),
        ));
    };
    let versions = protocols("client_tls_protocols", &s.client_tls_protocols)?;
    ciphers("client_tls_ciphers", &s.client_tls_ciphers);
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| setting_error("client_tls_protocols", e.to_string()))?;
    let verifier = match &s.client_tls_ca_file {
        Some(ca) => {
            let roots = roots("client_tls_ca_file", ca)?;
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            // Below verify-ca a certificate is checked when given (auth_type cert) but optional.
            let b = if mode >= TlsMode::VerifyCa {
                b
            } else {
                b.allow_unauthenticated()
            };
            b.build()
                .map_err(|e| file_error("client_tls_ca_file", ca, e))?
        }
        None if mode >= TlsMode::VerifyCa => {
            return Err(setting_error(
                "client_tls_ca_file",
                format!("client_tls_sslmode {mode} needs client_tls_ca_file"),
            ))
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let (chain, key) = certified_key(
        ("client_tls_cert_file", cert_file),
        ("client_tls_key_file", key_file),
        &provider,
    )?;
    let not_after = chain.first().and_then(not_after);
    let end_point = chain.first().and_then(server_end_point);
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| file_error("client_tls_key_file", key_file, e))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // PostgreSQL's records are at most 8 kB, and libpq before 18 reads 8 kB at a time: a
    // non-blocking client (pgbench) can stall waiting for the rest of a bigger record that
    // OpenSSL already holds.
    config.max_fragment_size = Some(MAX_RECORD_PLAINTEXT);
    Ok(ClientTls {
        mode,
        config: Some(Arc::new(config)),
        not_after,
        end_point,
    })
}

fn server_side(s: &Settings) -> Result<ServerTls, ConfigError> {
    let mode = s.server_tls_sslmode;
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for key in [
            "server_tls_sslmode",
            "server_tls_protocols",
            "server_tls_ciphers",
            "server_cleartext_password",
            "server_channel_binding",
        ] {
            h.update(s.get(key).unwrap_or_default());
            h.update([0]);
        }
        for path in [
            &s.server_tls_ca_file,
            &s.server_tls_key_file,
            &s.server_tls_cert_file,
        ]
        .into_iter()
        .flatten()
        {
            h.update(std::fs::read(path).unwrap_or_default());
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let cleartext_password = s.server_cleartext_password;
    let channel_binding = s.server_channel_binding;
    if mode == TlsMode::Disable && channel_binding == ChannelBindingMode::Require {
        // As libpq: binding needs TLS, so this pair could never log in.
        return Err(setting_error(
            "server_channel_binding",
            "server_channel_binding require needs server_tls_sslmode other than disable",
        ));
    }
    if mode == TlsMode::Disable {
        return Ok(ServerTls {
            mode,
            config: None,
            cleartext_password,
            channel_binding,
            not_after: None,
            digest,
        });
    }
    let versions = protocols("server_tls_protocols", &s.server_tls_protocols)?;
    ciphers("server_tls_ciphers", &s.server_tls_ciphers);
    let provider = provider();
    let roots = match &s.server_tls_ca_file {
        Some(ca) => Some(Arc::new(roots("server_tls_ca_file", ca)?)),
        None if mode >= TlsMode::VerifyCa => {
            return Err(setting_error(
                "server_tls_ca_file",
                format!("server_tls_sslmode {mode} needs server_tls_ca_file"),
            ))
        }
        None => None,
    };
    let verifier = server_verifier(mode, roots, &provider)
        .map_err(|e| setting_error("server_tls_ca_file", e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| setting_error("server_tls_protocols", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut not_after = None;
    let config = match (&s.server_tls_cert_file, &s.server_tls_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let (chain, key) = certified_key(
                ("server_tls_cert_file", cert_file),
                ("server_tls_key_file", key_file),
                &provider,
            )?;
            not_after = chain.first().and_then(self::not_after);
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_error("server_tls_key_file", key_file, e))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) | (None, Some(_)) => {
            return Err(setting_error(
                "server_tls_cert_file",
                "server_tls_cert_file and server_tls_key_file go together: set both or neither",
            ))
        }
    };
    Ok(ServerTls {
        mode,
        config: Some(Arc::new(config)),
        cleartext_password,
        channel_binding,
        not_after,
        digest,
    })
}

/// How a server's certificate is checked under `mode`, as libpq does: with CA `roots` every
/// TLS mode checks the chain and only verify-full checks the host name too; without roots
/// the connection is encrypted and only the handshake signatures are checked. The operator's
/// probe uses this too, so it judges a database exactly as the poolers do.
pub fn server_verifier(
    mode: TlsMode,
    roots: Option<Arc<RootCertStore>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::client::VerifierBuilderError> {
    Ok(match roots {
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        None => Arc::new(EncryptOnly(provider.clone())),
    })
}

/// The TLS versions a `*_tls_protocols` value names. rustls speaks TLS 1.2 and 1.3 only:
/// older versions in a list are warned about and left out; a list of only those is an error.
fn protocols(
    key: &str,
    value: &str,
) -> Result<Vec<&'static SupportedProtocolVersion>, ConfigError> {
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    let mut add = |v: &'static SupportedProtocolVersion| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    for item in value.split([',', ' ', ':']).filter(|i| !i.is_empty()) {
        match item.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" | "default" => {
                add(&rustls::version::TLS12);
                add(&rustls::version::TLS13);
            }
            "tlsv1.2" => add(&rustls::version::TLS12),
            "tlsv1.3" => add(&rustls::version::TLS13),
            old @ ("tlsv1" | "tlsv1.0" | "tlsv1.1") => {
                tracing::warn!(
                    setting = key,
                    "{old} is not supported (rustls speaks TLS 1.2 and 1.3 only); left out"
                );
            }
            other => {
                return Err(setting_error(
                    key,
                    format!(
                        "unknown TLS protocol {other:?}: expected secure, all, legacy, \
                         tlsv1.2 or tlsv1.3"
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(setting_error(
            key,
            format!("{value:?} leaves no TLS version weir supports (tlsv1.2, tlsv1.3)"),
        ));
    }
    Ok(out)
}

/// PgBouncer's cipher-list keywords map to rustls' own suites, which are all modern; an
/// explicit OpenSSL list cannot be honoured and is warned about.
fn ciphers(key: &str, value: &str) {
    let known = ["default", "secure", "fast", "normal", "all", ""];
    if !known.contains(&value.trim().to_ascii_lowercase().as_str()) {
        tracing::warn!(
            setting = key,
            value,
            "OpenSSL cipher lists are not supported; rustls' default cipher suites are used"
        );
    }
}

fn roots(key: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let certs = read_certs(key, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| file_error(key, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let data = std::fs::read(path).map_err(|e| file_error(key, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn certified_key(
    (cert_key, cert_path): (&str, &Path),
    (key_key, key_path): (&str, &Path),
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let chain = read_certs(cert_key, cert_path)?;
    let data = std::fs::read(key_path).map_err(|e| file_error(key_key, key_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| file_error(key_key, key_path, format!("not a PEM private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| file_error(key_key, key_path, e))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| {
            file_error(
                key_key,
                key_path,
                format!(
                    "the key does not match the certificate in {}",
                    cert_path.display()
                ),
            )
        })?;
    Ok((chain, key))
}

fn file_error(key: &str, path: &Path, e: impl fmt::Display) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: Some(key.to_owned()),
        message: e.to_string(),
    }
}

fn setting_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: Default::default(),
        line: None,
        key: Some(key.to_owned()),
        message: message.into(),
    }
}

/// libpq's `require` without a root certificate: encrypt, accept any certificate, but
/// still check that the server holds the key of the certificate it showed.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to the CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last: a name error means the chain itself was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// When a DER certificate stops being valid, in Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// RFC 5929's `tls-server-end-point`: the certificate hashed with its signature's hash,
/// SHA-256 standing in for MD5 and SHA-1. `None` for algorithms without one (Ed25519,
/// RSA-PSS), as PostgreSQL then offers no channel binding either.
pub fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let der = cert.as_ref();
    match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
        // md5, sha1 and sha256 with RSA; ecdsa with sha1 and sha256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => Some(sha2::Sha256::digest(der).to_vec()),
        // sha224 with RSA and ecdsa: the signature's own hash, as PostgreSQL computes it.
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" => Some(sha2::Sha224::digest(der).to_vec()),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(sha2::Sha384::digest(der).to_vec()),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(sha2::Sha512::digest(der).to_vec()),
        _ => None,
    }
}

/// The common name (CN) of a DER certificate's subject, for `auth_type = cert`.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_map_pgbouncer_words_to_rustls_versions() {
        let v =
            |s: &str| protocols("k", s).map(|v| v.iter().map(|p| p.version).collect::<Vec<_>>());
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v("secure").unwrap(), vec![TLSv1_2, TLSv1_3]);
        assert_eq!(v("all").unwrap(), vec![TLSv1_2, TLSv1_3]);
        assert_eq!(v("tlsv1.3").unwrap(), vec![TLSv1_3]);
        assert_eq!(v("tlsv1.1, tlsv1.2").unwrap(), vec![TLSv1_2]);
        let e = v("tlsv1.0,tlsv1.1").unwrap_err();
        assert!(e.message.contains("no TLS version"), "{e}");
        let e = v("sslv3").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("k"));
        assert!(e.message.contains("unknown TLS protocol"), "{e}");
    }

    #[test]
    fn disabled_sides_need_no_files() {
        let s = Settings {
            server_tls_sslmode: TlsMode::Disable,
            ..Settings::default()
        };
        let tls = Tls::load(&s).unwrap();
        assert!(tls.client.config.is_none() && tls.server.config.is_none());
        // The default (prefer) needs no files either.
        let tls = Tls::load(&Settings::default()).unwrap();
        assert!(tls.server.config.is_some());
    }

    #[test]
    fn server_end_point_hashes_with_the_signature_hash_and_sha256_for_sha1() {
        // Certificates made with `openssl req -x509 -<hash>`; digests by `openssl dgst`.
        let end_point = |pem: &str| {
            let cert = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let hex: String = server_end_point(&cert)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            hex
        };
        assert_eq!(
            end_point(include_str!("../testdata/ecdsa-with-sha1.crt")),
            "6b40c84d6554fa7abeabe795f6c4b68bf588b9d76c49ecd1f210636fdab36689"
        );
        assert_eq!(
            end_point(include_str!("../testdata/ecdsa-with-sha224.crt")),
            "750a25dfbf41b80f92d94b33d139512a38effa420971ac799faaa43a"
        );
        assert_eq!(
            end_point(include_str!("../testdata/ecdsa-with-sha384.crt")),
            "03d17c042e92e247379e0050048b7019458371f9d5dea1ff864ff76d76b1d41d\
             24006033e9cc8fd5f1c94bdcb3110e17"
        );
    }

    #[test]
    fn required_channel_binding_needs_tls_toward_servers() {
        let s = Settings {
            server_tls_sslmode: TlsMode::Disable,
            server_channel_binding: ChannelBindingMode::Require,
            ..Settings::default()
        };
        let e = Tls::load(&s).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server_channel_binding"));
        let s = Settings {
            server_channel_binding: ChannelBindingMode::Require,
            ..Settings::default()
        };
        let tls = Tls::load(&s).unwrap();
        assert_eq!(tls.server.channel_binding, ChannelBindingMode::Require);
        // A changed policy is a changed server side: pools reconnect under the new one.
        assert_ne!(
            *tls.server,
            *Tls::load(&Settings::default()).unwrap().server
        );
    }

    #[test]
    fn missing_files_name_the_setting_and_the_file() {
        let s = Settings {
            client_tls_sslmode: TlsMode::Require,
            client_tls_cert_file: Some("/nonexistent/server.crt".into()),
            client_tls_key_file: Some("/nonexistent/server.key".into()),
            ..Settings::default()
        };
        let e = Tls::load(&s).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("client_tls_cert_file"));
        assert_eq!(e.file, Path::new("/nonexistent/server.crt"));
        let s = Settings {
            client_tls_sslmode: TlsMode::Require,
            ..Settings::default()
        };
        let e = Tls::load(&s).unwrap_err();
        assert!(e.message.contains("needs client_tls_cert_file"), "{e}");
        let s = Settings {
            server_tls_sslmode: TlsMode::VerifyFull,
            ..Settings::default()
        };
        let e = Tls::load(&s).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server_tls_ca_file"));
    }
}
