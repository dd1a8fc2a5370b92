//! Cloud tokens the pooler logs in to servers with (`server_auth`), fetched from the cloud's
//! endpoints the pod's workload identity points at and kept until 2/3 of their life: the next
//! server login after that gets a new one, so no restart is ever needed. Tokens are never
//! logged; the pure parts (signing, answers, renewal) are in [`crate::auth`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::auth::cloud::{self, Expiring};
use crate::auth::sigv4::{self, AwsCredentials};
use crate::config::ServerAuth;

/// The scope of an Entra access token for Azure Database for PostgreSQL.
const AZURE_POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

/// Where Entra ID issues tokens unless `AZURE_AUTHORITY_HOST` says otherwise.
const AZURE_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// The GCP metadata server unless `GCE_METADATA_HOST` says otherwise.
const GCP_METADATA_HOST: &str = "metadata.google.internal";

/// The path of the default service account's access token on the metadata server.
const GCP_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Bound on one call to a token endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on the size of an endpoint's answer.
const MAX_ANSWER: usize = 1 << 20;

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot get a server_auth={auth} token: {why}")]
pub struct TokenError {
    /// Which kind of token.
    pub auth: ServerAuth,
    /// What went wrong (never containing a credential).
    pub why: String,
}

/// The token sources of a pooler, one per `server_auth` kind and region, kept across
/// reloads so that the tokens they hold are too.
#[derive(Debug, Default)]
pub struct TokenSources(Mutex<HashMap<SourceKey, Arc<TokenSource>>>);

/// A `server_auth` kind and its `server_auth_region`.
type SourceKey = (ServerAuth, Option<String>);

impl TokenSources {
    /// The source of `auth` tokens for `region` (`server_auth_region`).
    pub fn source(&self, auth: ServerAuth, region: &Option<String>) -> Arc<TokenSource> {
        let mut sources = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .entry((auth, region.clone()))
            .or_insert_with(|| TokenSource::new(auth, region.clone()))
            .clone()
    }
}

/// The tokens of one `server_auth` kind (and, for RDS, region): one per server and user for
/// RDS (each is signed for its host, port and user), one for the whole identity otherwise.
pub struct TokenSource {
    auth: ServerAuth,
    region: Option<String>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The AWS credentials RDS tokens are signed with.
    aws: Option<Expiring<AwsCredentials>>,
    /// Tokens by what they are for (`host:port/user` for RDS, empty otherwise).
    tokens: HashMap<String, Expiring<String>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSource({})", self.auth)
    }
}

// Two sources are the same configuration when kind and region are; the tokens they hold are
// runtime state.
impl PartialEq for TokenSource {
    fn eq(&self, other: &Self) -> bool {
        self.auth == other.auth && self.region == other.region
    }
}

impl Eq for TokenSource {}

impl TokenSource {
    /// A source of `auth` tokens; `region` is `server_auth_region` (RDS only).
    pub fn new(auth: ServerAuth, region: Option<String>) -> Arc<TokenSource> {
        Arc::new(TokenSource {
            auth,
            region,
            state: tokio::sync::Mutex::default(),
        })
    }

    /// Which kind of token it gives.
    pub fn auth(&self) -> ServerAuth {
        self.auth
    }

    /// The password for logging in as `user` to `host:port`: the current token, or a new one
    /// when it is due for renewal. A failed renewal keeps using a token not yet expired.
    pub async fn password(&self, host: &str, port: u16, user: &str) -> Result<String, TokenError> {
        let key = self.key(host, port, user);
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        if let Some(token) = state.tokens.get(&key).filter(|t| !t.due(now)) {
            return Ok(token.value.clone());
        }
        let fresh = match self.auth {
            ServerAuth::RdsIam => self.rds_token(&mut state, host, port, user, now).await,
            ServerAuth::GcpIam => gcp_token(now).await,
            ServerAuth::AzureAd => azure_token(now).await,
        }
        .map_err(|why| TokenError {
            auth: self.auth,
            why,
        });
        match fresh {
            Ok(token) => {
                let life = token.expires.and_then(|e| e.duration_since(now).ok());
                tracing::info!(server_auth = %self.auth, %host, user, valid_for = ?life, "server login token obtained");
                let value = token.value.clone();
                state.tokens.insert(key, token);
                Ok(value)
            }
            Err(e) => match state.tokens.get(&key).filter(|t| t.valid(now)) {
                Some(old) => {
                    tracing::warn!(error = %e, "server login token not renewed; the current one is used until it expires");
                    Ok(old.value.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Drops the token the server just refused, so that the next login gets a new one rather
    /// than failing with it until it expires.
    pub async fn refused(&self, host: &str, port: u16, user: &str) {
        let key = self.key(host, port, user);
        self.state.lock().await.tokens.remove(&key);
    }

    /// What a token is for: RDS signs one per server and user, the others serve everything.
    fn key(&self, host: &str, port: u16, user: &str) -> String {
        match self.auth {
            ServerAuth::RdsIam => format!("{host}:{port}/{user}"),
            ServerAuth::GcpIam | ServerAuth::AzureAd => String::new(),
        }
    }

    /// A new RDS token signed with the pod's AWS credentials (renewed first when due),
    /// valid for 15 minutes or until the credentials expire, whichever is sooner.
    async fn rds_token(
        &self,
        state: &mut State,
        host: &str,
        port: u16,
        user: &str,
        now: SystemTime,
    ) -> Result<Expiring<String>, String> {
        if host.starts_with('/') {
            return Err("RDS IAM tokens need a TCP host, not a Unix socket".into());
        }
        let region = match &self.region {
            Some(r) => r.clone(),
            None => env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .ok_or("no region: set server_auth_region or AWS_REGION")?,
        };
        if state.aws.as_ref().is_none_or(|c| c.due(now)) {
            match aws_credentials(&region, now).await {
                Ok(c) => state.aws = Some(c),
                Err(e) if state.aws.as_ref().is_some_and(|c| c.valid(now)) => {
                    tracing::warn!(error = %e, "AWS credentials not renewed; the current ones are used until they expire");
                }
                Err(e) => return Err(e),
            }
        }
        let creds = state.aws.as_ref().ok_or("no AWS credentials")?;
        let end = now + sigv4::RDS_TOKEN_LIFETIME;
        Ok(Expiring {
            value: sigv4::rds_auth_token(host, port, user, &region, &creds.value, now),
            issued: now,
            expires: Some(creds.expires.map_or(end, |e| e.min(end))),
        })
    }
}

/// An environment variable, if set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A file's contents without surrounding blanks: a projected token.
fn read_token_file(var: &str, path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("cannot read {var} {path}: {e}"))
}

/// The pod's AWS credentials, found as the AWS SDKs look for them: static keys in the
/// environment, else IRSA's web identity (STS AssumeRoleWithWebIdentity), else EKS Pod
/// Identity (the container credentials endpoint).
async fn aws_credentials(
    region: &str,
    now: SystemTime,
) -> Result<Expiring<AwsCredentials>, String> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Expiring {
            value: AwsCredentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            },
            issued: now,
            expires: None,
        });
    }
    if let (Some(role), Some(file)) = (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE")) {
        let identity = read_token_file("AWS_WEB_IDENTITY_TOKEN_FILE", &file)?;
        let endpoint = env("AWS_ENDPOINT_URL_STS")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com/"));
        let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "weir".into());
        let form = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &role),
            ("RoleSessionName", &session),
            ("WebIdentityToken", &identity),
        ]);
        let body = call(Method::POST, &endpoint, None, Some(form), "STS").await?;
        return cloud::sts_credentials(&body, now).map_err(|e| e.0);
    }
    if let Some(uri) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        let authorization = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(file) => Some(read_token_file(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                &file,
            )?),
            None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        };
        let header = authorization.map(|a| ("authorization", a));
        let body = call(Method::GET, &uri, header, None, "EKS Pod Identity").await?;
        return cloud::container_credentials(&body, now).map_err(|e| e.0);
    }
    Err(
        "no AWS credentials: set AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), \
         AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity), or AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY"
            .into(),
    )
}

/// The default service account's access token from the GCP metadata server.
async fn gcp_token(now: SystemTime) -> Result<Expiring<String>, String> {
    let host = env("GCE_METADATA_HOST").unwrap_or_else(|| GCP_METADATA_HOST.into());
    let url = format!("http://{host}{GCP_TOKEN_PATH}");
    let header = Some(("metadata-flavor", "Google".to_owned()));
    let body = call(Method::GET, &url, header, None, "the GCP metadata server").await?;
    cloud::oauth_token(&body, now).map_err(|e| e.0)
}

/// An Entra ID access token for Azure Database for PostgreSQL, in exchange for the workload
/// identity's projected federated token.
async fn azure_token(now: SystemTime) -> Result<Expiring<String>, String> {
    let need = |name: &str| {
        env(name).ok_or_else(|| format!("{name} is not set (Azure workload identity)"))
    };
    let (client, tenant) = (need("AZURE_CLIENT_ID")?, need("AZURE_TENANT_ID")?);
    let file = need("AZURE_FEDERATED_TOKEN_FILE")?;
    let assertion = read_token_file("AZURE_FEDERATED_TOKEN_FILE", &file)?;
    let authority = env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| AZURE_AUTHORITY.into());
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let form = form(&[
        ("client_id", &client),
        ("scope", AZURE_POSTGRES_SCOPE),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", &assertion),
        ("grant_type", "client_credentials"),
    ]);
    let body = call(Method::POST, &url, None, Some(form), "Microsoft Entra ID").await?;
    cloud::oauth_token(&body, now).map_err(|e| e.0)
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One HTTP/1.1 request to a token endpoint (`https` checked against the system's roots),
/// bounded in time and size; the body of a 2xx answer. Errors name `what` and the status,
/// never the request (it carries credentials).
async fn call(
    method: Method,
    url: &str,
    header: Option<(&str, String)>,
    form: Option<String>,
    what: &str,
) -> Result<Bytes, String> {
    let exchange = async {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad {what} endpoint URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{what} endpoint must be an http(s) URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{what} endpoint URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority)
            .header("accept", "application/json");
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| format!("cannot build the {what} request: {e}"))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {what} at {host}:{port}: {e}"))?;
        let answer = if tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{what} host {host:?} is not a TLS name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {what} at {host}:{port} failed: {e}"))?;
            send(TokioIo::new(stream), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
        .map_err(|e| format!("{what} at {host}:{port}: {e}"))?;
        let (status, body) = answer;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(300).collect();
            return Err(format!("{what} answered {status}: {excerpt}"));
        }
        Ok(body)
    };
    tokio::time::timeout(ENDPOINT_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{what} did not answer within {ENDPOINT_TIMEOUT:?}"))?
}

/// Sends `req` over a new HTTP/1.1 connection and reads the whole answer.
async fn send<S>(
    io: TokioIo<S>,
    req: Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// rustls with the system's root certificates, built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no usable root certificates in the system store".into());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS setup failed: {e}"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_per_kind_and_region_outlives_reloads() {
        let sources = TokenSources::default();
        let rds = sources.source(ServerAuth::RdsIam, &Some("eu-west-1".into()));
        let again = sources.source(ServerAuth::RdsIam, &Some("eu-west-1".into()));
        assert!(Arc::ptr_eq(&rds, &again));
        let other = sources.source(ServerAuth::RdsIam, &Some("us-east-1".into()));
        assert!(!Arc::ptr_eq(&rds, &other) && *rds != *other);
        assert_eq!(format!("{rds:?}"), "TokenSource(rds-iam)");
    }

    #[test]
    fn rds_tokens_are_per_server_and_user_the_others_per_identity() {
        let rds = TokenSource::new(ServerAuth::RdsIam, None);
        assert_ne!(rds.key("db", 5432, "a"), rds.key("db", 5432, "b"));
        assert_ne!(rds.key("db", 5432, "a"), rds.key("db", 5433, "a"));
        let gcp = TokenSource::new(ServerAuth::GcpIam, None);
        assert_eq!(gcp.key("db", 5432, "a"), gcp.key("other", 1, "b"));
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form(&[("scope", "https://x/.default"), ("a b", "c&d=e")]),
            "scope=https%3A%2F%2Fx%2F.default&a%20b=c%26d%3De"
        );
    }
}
