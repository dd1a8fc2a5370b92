//! Certificates made on the spot for TLS tests: a CA, and leaves it signs for servers and
//! clients, as PEM text ready to be written where PostgreSQL, weir or psql expect them.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate, to trust.
    pub cert_pem: String,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// A leaf certificate with common name `cn` and subject alternative names `sans` (DNS
    /// names or IP addresses), signed by this CA.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
