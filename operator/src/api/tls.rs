//! `spec.tls`: TLS toward clients and toward the database, in PgBouncer's vocabulary
//! (`client_tls_*` and `server_tls_*`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;

/// TLS on both sides of the pooler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// TLS between clients and the poolers (client_tls_*). Default: none, clients connect
    /// in plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientTls>,

    /// TLS between the poolers and the database (server_tls_*), also used by the operator
    /// when it reads max_connections for `maxConnections: auto`. Default: the pooler's own,
    /// `prefer` (TLS when the database offers it, certificate not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerTls>,
}

/// The certificate the poolers present to clients, and how clients must use TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::client_tls_schema)]
pub struct ClientTls {
    /// A Secret of type kubernetes.io/tls (keys tls.crt and tls.key, what cert-manager
    /// writes) with the poolers' certificate and private key. Mounted as a whole, so a
    /// renewed certificate reaches running pods without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,

    /// client_tls_sslmode: disable, allow, prefer (TLS offered, plain text accepted),
    /// require (plain-text clients refused), verify-ca or verify-full (clients must also
    /// present a certificate signed by the CA below). Default: prefer when secretName is
    /// set, which secures every client that asks for TLS without breaking those that do
    /// not; refusing plain text or demanding client certificates is left to an explicit
    /// choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SslMode>,

    /// The CA that client certificates must be signed by (client_tls_ca_file), for
    /// verify-ca and verify-full: a key of a Secret or of a ConfigMap (such as a
    /// trust-manager bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSource>,
}

/// How the poolers, and the operator's `maxConnections: auto` probe, connect to the
/// database over TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::server_tls_schema)]
pub struct ServerTls {
    /// server_tls_sslmode, with libpq's meanings: disable, allow, prefer, require (TLS, the
    /// certificate not checked), verify-ca (signed by the CA below) or verify-full (also
    /// issued for spec.database.host). Default: verify-full when a CA is given, since a CA
    /// that is not checked against would protect nothing; prefer otherwise, like PgBouncer
    /// and libpq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SslMode>,

    /// The CA the database's certificate must be signed by (server_tls_ca_file): a key of a
    /// Secret or of a ConfigMap (for CloudNativePG, the `<cluster>-ca` Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSource>,

    /// A Secret of type kubernetes.io/tls (tls.crt, tls.key) with the client certificate
    /// the poolers present to the database (server_tls_cert_file and server_tls_key_file),
    /// for databases that authenticate by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub client_certificate_secret_name: Option<String>,
}

/// Where a CA certificate (PEM) is: a Secret or a ConfigMap, not both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::ca_source_schema)]
pub struct CaSource {
    /// A Secret holding the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeySelector>,

    /// A ConfigMap holding the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeySelector>,
}

/// A key of a Secret or ConfigMap in the ConnectionPool's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::key_selector_schema)]
pub struct KeySelector {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(max = 253))]
    pub name: String,

    /// The key holding the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(max = 253))]
    pub key: String,
}

// A TLS mode, as libpq's sslmode and PgBouncer's *_tls_sslmode spell it. Not a doc comment:
// the CRD would show it in place of each mode field's own description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plain text first, TLS if the other side insists.
    Allow,
    /// TLS when the other side supports it, plain text otherwise.
    Prefer,
    /// TLS always; the peer's certificate is not checked.
    Require,
    /// TLS always, with a peer certificate signed by the CA.
    VerifyCa,
    /// TLS always, with a peer certificate signed by the CA and issued for the peer's name.
    VerifyFull,
}

impl SslMode {
    /// The spelling in pgbouncer.ini and connection strings.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the peer's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl CaSource {
    /// The selector in use: the Secret's, else the ConfigMap's.
    pub fn selector(&self) -> Option<&KeySelector> {
        self.secret.as_ref().or(self.config_map.as_ref())
    }
}

impl ClientTls {
    /// The mode in force: the given one, else prefer with a certificate and disable
    /// without.
    pub fn effective_mode(&self) -> SslMode {
        self.mode.unwrap_or(if self.secret_name.is_some() {
            SslMode::Prefer
        } else {
            SslMode::Disable
        })
    }
}

impl ServerTls {
    /// The mode in force: the given one, else verify-full with a CA and prefer without.
    pub fn effective_mode(&self) -> SslMode {
        self.mode.unwrap_or(if self.ca.is_some() {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        })
    }
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}
