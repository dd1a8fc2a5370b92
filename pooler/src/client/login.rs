//! The client's startup phase: TLS negotiation (SSLRequest or PostgreSQL 17's direct TLS),
//! cancel requests, startup parameters and authentication against `auth_file` (or the secret
//! `auth_query` finds), as `auth_type` asks, or with a ServiceAccount token for users that
//! list `service_accounts`.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::replication::Replication;
use super::SessionContext;
use crate::auth::hba::{Method, Origin};
use crate::auth::{self, md5, ScramSecret, ScramServer, Secret};
use crate::config::{AuthType, Config, TlsMode};
use crate::params::{self, ParamSet};
use crate::protocol::{self, backend, frontend, PgError, Startup};
use crate::stream::{Endpoint, Host, Stream};
use crate::tls::{self, ClientTls};
use crate::token_review::{ReviewError, STATS};
use crate::wire::{self, ReadError};

/// The first byte of a TLS handshake record: a client starting TLS at once (PostgreSQL 17's
/// `sslnegotiation=direct`).
const TLS_HANDSHAKE: u8 = 0x16;

/// What the startup phase produced.
#[derive(Debug)]
pub enum Hello {
    /// A client that wants a session.
    Session(Login),
    /// A cancel request for another client's query.
    Cancel {
        /// The key the other client was given.
        process_id: i32,
        /// Its secret.
        secret_key: i32,
    },
    /// The client wants TLS (the SSLRequest was answered `S`, or it started a TLS handshake
    /// directly): hand the socket to rustls, then read the startup packet again.
    StartTls {
        /// Direct TLS, without an SSLRequest: ALPN `postgresql` is then required.
        direct: bool,
    },
}

/// A client that presented a startup packet.
#[derive(Debug)]
pub struct Login {
    /// The user name it gave.
    pub user: String,
    /// The database it asked for.
    pub database: String,
    /// The tracked parameters it set.
    pub params: ParamSet,
    /// The replication connection it asked for, if any.
    pub replication: Option<Replication>,
    /// A replication client's `options` startup parameter, passed to its server as sent.
    pub options: Option<String>,
}

/// Why a client's startup failed; `Fatal` is told to the client before closing.
#[derive(Debug)]
pub enum LoginError {
    /// Tell the client, then close.
    Fatal(Box<PgError>),
    /// The socket failed or closed; nothing to tell.
    Gone,
}

impl LoginError {
    /// A refusal to tell the client.
    pub fn fatal(e: PgError) -> LoginError {
        LoginError::Fatal(Box::new(e))
    }
}

impl From<ReadError> for LoginError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Protocol(p) => LoginError::fatal(p.to_pg_error()),
            ReadError::Io(_) | ReadError::Closed => LoginError::Gone,
        }
    }
}

impl From<std::io::Error> for LoginError {
    fn from(_: std::io::Error) -> Self {
        LoginError::Gone
    }
}

/// Reads startup packets until one asks for a session, a cancel or TLS. An SSLRequest is
/// answered `S` when `client_tls_sslmode` allows TLS on this connection (TCP), otherwise `N`;
/// a GSSENCRequest is always declined with `N`. The client then goes on in the clear or gives
/// up, as it chooses; `require` and stronger refuse a plain TCP client at its startup packet.
pub async fn hello(
    stream: &mut Stream,
    buf: &mut BytesMut,
    config: &Config,
    tls: &ClientTls,
) -> Result<Hello, LoginError> {
    let offers_tls = tls.config.is_some() && matches!(stream, Stream::Tcp(_));
    if offers_tls && buf.is_empty() && stream.peek_tcp_byte().await? == Some(TLS_HANDSHAKE) {
        return Ok(Hello::StartTls { direct: true });
    }
    // One SSLRequest and one GSSENCRequest at most, then a real startup packet.
    for _ in 0..3 {
        let packet = loop {
            match protocol::decode_startup(buf).map_err(|e| LoginError::fatal(e.to_pg_error()))? {
                Some(p) => break p,
                None => {
                    buf.reserve(512);
                    if stream.read_buf(buf).await? == 0 {
                        return Err(LoginError::Gone);
                    }
                }
            }
        };
        match packet {
            Startup::SslRequest | Startup::GssEncRequest => {
                // Bytes sent before our answer would be trusted plaintext: refuse them.
                if !buf.is_empty() {
                    return Err(LoginError::fatal(PgError::fatal(
                        "08P01",
                        "received unencrypted data after an encryption request",
                    )));
                }
                if stream.is_tls() {
                    return Err(LoginError::fatal(PgError::fatal(
                        "08P01",
                        "encryption request over an encrypted connection",
                    )));
                }
                if offers_tls && packet == Startup::SslRequest {
                    stream.write_all(b"S").await?;
                    return Ok(Hello::StartTls { direct: false });
                }
                stream.write_all(b"N").await?;
            }
            Startup::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(Hello::Cancel {
                    process_id,
                    secret_key,
                })
            }
            Startup::Startup { minor, params, .. } => {
                // PgBouncer's rule: Unix-socket clients are local and need no TLS.
                if tls.mode >= TlsMode::Require && matches!(stream, Stream::Tcp(_)) {
                    return Err(LoginError::fatal(
                        PgError::fatal("28000", "SSL required").with_hint(format!(
                            "client_tls_sslmode is {}: connect with sslmode=require or stronger",
                            tls.mode
                        )),
                    ));
                }
                return startup(stream, minor, &params, config)
                    .await
                    .map(Hello::Session);
            }
        }
    }
    Err(LoginError::fatal(PgError::fatal(
        "08P01",
        "too many encryption requests before the startup packet",
    )))
}

/// Performs the TLS handshake on a client's TCP socket; `None` when it fails (there is no
/// way to tell the client in the middle of a handshake, as in PostgreSQL). A direct TLS
/// connection must have agreed on ALPN `postgresql`.
pub async fn accept_tls(
    stream: Stream,
    tls: &ClientTls,
    direct: bool,
) -> Result<Stream, (Option<Stream>, String)> {
    let (Stream::Tcp(tcp), Some(config)) = (stream, &tls.config) else {
        return Err((None, "TLS is not configured".into()));
    };
    let accepted = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(tcp)
        .await
        .map_err(|e| (None, format!("TLS handshake failed: {e}")))?;
    let stream = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(accepted)));
    if direct && stream.alpn_protocol() != Some(tls::ALPN_POSTGRESQL) {
        return Err((
            Some(stream),
            "received direct SSL connection request without ALPN protocol negotiation \
             extension"
                .into(),
        ));
    }
    Ok(stream)
}

/// Checks the startup parameters and answers protocol-version negotiation.
async fn startup(
    stream: &mut Stream,
    minor: u16,
    startup: &protocol::StartupParams,
    config: &Config,
) -> Result<Login, LoginError> {
    let s = &config.pgbouncer;
    let mut params = ParamSet::new();
    let mut replication = None;
    for (_, value) in startup.iter().filter(|(name, _)| *name == "replication") {
        replication = Replication::parse(value).map_err(LoginError::Fatal)?;
    }
    let mut options = None;
    for (name, value) in startup.iter() {
        if name == "user" || name == "database" || name == "replication" {
            continue;
        }
        // A replication client has a server connection of its own, so any options can go
        // to it as sent (PgBouncer does the same: CREATE SUBSCRIPTION sends some).
        if name == "options" && replication.is_some() {
            options = Some(value.to_owned());
            continue;
        }
        if name == "options" {
            options_into(&mut params, value, config)?;
            continue;
        }
        if let Some(canonical) = params::canonical(name, &s.track_extra_parameters) {
            params.set(canonical, value);
        } else if !s
            .ignore_startup_parameters
            .iter()
            .any(|i| i.eq_ignore_ascii_case(name))
        {
            return Err(LoginError::fatal(
                PgError::fatal("08P01", format!("unsupported startup parameter: {name}"))
                    .with_hint("add it to ignore_startup_parameters to let clients send it"),
            ));
        }
    }
    let unrecognized: Vec<&str> = startup
        .protocol_options()
        .iter()
        .map(String::as_str)
        .collect();
    if minor > protocol::NEWEST_MINOR_VERSION || !unrecognized.is_empty() {
        let mut out = BytesMut::new();
        backend::negotiate_protocol_version(
            &mut out,
            protocol::NEWEST_MINOR_VERSION,
            &unrecognized,
        );
        wire::flush(stream, &mut out).await?;
    }
    Ok(Login {
        user: startup.user().to_owned(),
        database: startup.database().to_owned(),
        params,
        replication,
        options,
    })
}

/// Sets the tracked parameters an `options` startup parameter carries (`-c TimeZone=UTC`),
/// as PgBouncer does: another setting is refused unless `ignore_startup_parameters` names it
/// or `options`, and anything but `-c name=value` / `--name=value` is refused.
fn options_into(params: &mut ParamSet, options: &str, config: &Config) -> Result<(), LoginError> {
    let s = &config.pgbouncer;
    let ignored = |name: &str| {
        s.ignore_startup_parameters
            .iter()
            .any(|i| i.eq_ignore_ascii_case(name) || i.eq_ignore_ascii_case("options"))
    };
    let settings = params::startup_options(options).ok_or_else(|| {
        LoginError::fatal(PgError::fatal(
            "08P01",
            "unsupported options startup parameter: only '-c config=val' and '--config=val' \
             are allowed",
        ))
    })?;
    for (name, value) in settings {
        if let Some(canonical) = params::canonical(&name, &s.track_extra_parameters) {
            params.set(canonical, &value);
        } else if !ignored(&name) {
            return Err(LoginError::fatal(
                PgError::fatal(
                    "08P01",
                    format!("unsupported startup parameter in options: {name}"),
                )
                .with_hint("add it to ignore_startup_parameters to let clients send it"),
            ));
        }
    }
    Ok(())
}

/// `application_name` as `application_name_add_host` makes it, in PgBouncer's format:
/// `<name> - <address>:<port>` (`[address]` for IPv6), `app` when the client sent no name.
pub fn name_with_host(name: Option<&str>, peer: &Endpoint) -> String {
    let name = name.unwrap_or("app");
    if matches!(peer.addr, Host::Ip(std::net::IpAddr::V6(_))) {
        format!("{name} - [{}]:{}", peer.addr, peer.port)
    } else {
        format!("{name} - {}:{}", peer.addr, peer.port)
    }
}

/// The result of a successful authentication.
#[derive(Debug, Default)]
pub struct Authenticated {
    /// SCRAM keys recovered from the client's proof, when SCRAM was used.
    pub scram_keys: Option<([u8; 32], [u8; 32])>,
    /// The secret `auth_query` found for a user missing from the auth file.
    pub looked_up: Option<Secret>,
}

/// Authenticates `login.user` as `auth_type` says. A user missing from the auth file is looked
/// up with `auth_query` when `auth_user` applies. A user found nowhere gets the same exchange
/// and the same error as a wrong password, so user names cannot be probed; so does a user
/// whose stored secret is the empty password, which PostgreSQL never accepts.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    pooler: &dyn SessionContext,
    login: &Login,
    channel_binding: Option<&[u8]>,
) -> Result<Authenticated, LoginError> {
    let user = &login.user;
    let stored = pooler.secret(user);
    let lookup = stored.is_none()
        && pooler.config().pgbouncer.auth_type != AuthType::Any
        && !pooler.is_console(&login.database);
    let (secret, looked_up) = if lookup {
        let found = pooler
            .auth_query_secret(&login.database, user)
            .await
            .map_err(LoginError::Fatal)?;
        (found.clone(), found)
    } else {
        (stored, None)
    };
    let authenticated = check(stream, buf, pooler, login, channel_binding, secret).await?;
    Ok(Authenticated {
        looked_up,
        ..authenticated
    })
}

/// Checks the client against `secret`, its stored or looked-up secret.
async fn check(
    stream: &mut Stream,
    buf: &mut BytesMut,
    pooler: &dyn SessionContext,
    login: &Login,
    channel_binding: Option<&[u8]>,
    secret: Option<Secret>,
) -> Result<Authenticated, LoginError> {
    let config = pooler.config();
    let user = &login.user;
    if let Some(accounts) = config
        .users
        .get(user)
        .map(|u| u.service_accounts.as_slice())
        .filter(|a| !a.is_empty())
    {
        return service_account_login(stream, buf, pooler, user, accounts).await;
    }
    let (method, map) = match config.pgbouncer.auth_type {
        // `any` ignores the user name: every database logs in as its own configured user.
        AuthType::Any => return Ok(Authenticated::default()),
        AuthType::Trust => (Method::Trust, None),
        AuthType::Plain => (Method::Password, None),
        AuthType::Md5 => (Method::Md5, None),
        AuthType::ScramSha256 => (Method::ScramSha256, None),
        AuthType::Cert => (Method::Cert, None),
        AuthType::Hba => {
            let origin = match stream.peer_ip() {
                Some(addr) => Origin::Tcp {
                    addr,
                    tls: stream.is_tls(),
                },
                None => Origin::Unix,
            };
            let hba = pooler.hba();
            let Some(rule) = hba.find(origin, &login.database, user) else {
                return Err(LoginError::fatal(PgError::fatal(
                    "28000",
                    format!(
                        "no authentication method is found: no auth_hba_file rule for user \"{user}\", database \"{}\"",
                        login.database
                    ),
                )));
            };
            tracing::debug!(line = rule.line, method = ?rule.method, "auth_hba_file rule matched");
            (rule.method, rule.map.clone())
        }
    };
    match method {
        Method::Reject => Err(LoginError::fatal(PgError::fatal(
            "28000",
            format!("auth_hba_file rejects the connection for user \"{user}\""),
        ))),
        Method::Ldap => Err(LoginError::fatal(PgError::fatal(
            "28000",
            "ldap authentication is not supported by weir",
        ))),
        Method::Peer => {
            let known = secret.is_some();
            let allowed = match (stream.peer_os_user(), &map) {
                (Some(os_user), Some(map)) => map.allows(&os_user, user),
                (Some(os_user), None) => os_user == *user,
                (None, _) => false,
            };
            if known && allowed {
                Ok(Authenticated::default())
            } else {
                Err(LoginError::fatal(PgError::fatal(
                    "28000",
                    format!("peer authentication failed for user \"{user}\""),
                )))
            }
        }
        // rustls verified the certificate against client_tls_ca_file in the handshake.
        Method::Cert => match stream.peer_certificate().map(tls::common_name) {
            Some(Some(cn)) if map.as_ref().map_or(cn == *user, |m| m.allows(&cn, user)) => {
                Ok(Authenticated::default())
            }
            Some(cn) => Err(LoginError::fatal(
                PgError::fatal(
                    "28000",
                    format!("certificate authentication failed for user \"{user}\""),
                )
                .with_hint(format!(
                    "the client certificate's common name is {:?}",
                    cn.unwrap_or_default()
                )),
            )),
            None => Err(LoginError::fatal(PgError::fatal(
                "28000",
                format!(
                    "connection requires a valid client certificate (auth_type cert) for user \"{user}\""
                ),
            ))),
        },
        // The user must be known even here, as in PgBouncer; without auth_file nobody is.
        Method::Trust => {
            if secret.is_none() {
                return Err(auth_failed(user));
            }
            Ok(Authenticated::default())
        }
        Method::Password => {
            let mut out = BytesMut::new();
            backend::authentication_cleartext_password(&mut out);
            wire::flush(stream, &mut out).await?;
            let password = read_password(stream, buf).await?;
            let ok = match std::str::from_utf8(&password) {
                Ok(pw) if !pw.is_empty() => accepted(secret, pooler, user)
                    .iter()
                    .any(|s| auth::verify_plain(s, user, pw)),
                _ => false,
            };
            if ok {
                Ok(Authenticated::default())
            } else {
                Err(auth_failed(user))
            }
        }
        Method::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
            let salt: [u8; 4] = rand::thread_rng().gen();
            let mut out = BytesMut::new();
            backend::authentication_md5_password(&mut out, salt);
            wire::flush(stream, &mut out).await?;
            let response = read_password(stream, buf).await?;
            let ok = match std::str::from_utf8(&response) {
                Ok(r) => accepted(secret, pooler, user)
                    .iter()
                    .any(|s| md5::verify(s, user, salt, r)),
                _ => false,
            };
            if ok {
                Ok(Authenticated::default())
            } else {
                Err(auth_failed(user))
            }
        }
        // md5 with a SCRAM secret falls through to SCRAM, as PostgreSQL does.
        Method::Md5 | Method::ScramSha256 => {
            let secret = with_password(secret, user).map(|s| pooler.scram_secret(user, s));
            let previous = match &secret {
                Some(Secret::Scram(current)) => previous_verifiers(current, pooler, user),
                _ => Vec::new(),
            };
            let rounds = config.pgbouncer.scram_iterations;
            scram(stream, buf, user, secret, previous, rounds, channel_binding).await
        }
    }
}

/// A user with `service_accounts` logs in with a ServiceAccount token as its password. The
/// password is asked for only over TLS, so that the bearer token never crosses in clear.
async fn service_account_login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    pooler: &dyn SessionContext,
    user: &str,
    accounts: &[String],
) -> Result<Authenticated, LoginError> {
    let refuse = |reason: &str, e: PgError| {
        STATS.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(user, reason, "ServiceAccount token login refused");
        LoginError::fatal(e)
    };
    if !stream.is_tls() {
        return Err(refuse(
            "no TLS",
            PgError::fatal(
                "28000",
                format!(
                    "user \"{user}\" logs in with a ServiceAccount token, which is only accepted over TLS"
                ),
            )
            .with_hint("connect with sslmode=require or stronger"),
        ));
    }
    let mut out = BytesMut::new();
    backend::authentication_cleartext_password(&mut out);
    wire::flush(stream, &mut out).await?;
    let password = read_password(stream, buf).await?;
    let token = std::str::from_utf8(&password).unwrap_or_default();
    let failed = |detail: String| {
        PgError::fatal(
            "28P01",
            format!("ServiceAccount token authentication failed for user \"{user}\""),
        )
        .with_detail(detail)
    };
    if token.is_empty() {
        return Err(refuse("empty token", failed("no token was sent".into())));
    }
    let config = pooler.config();
    match pooler
        .token_reviewer()
        .review(token, &config.pgbouncer)
        .await
    {
        Ok(r) if r.account.is_listed_in(accounts) => {
            STATS.accepted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user, service_account = %r.account, cached = r.cached, "ServiceAccount token login");
            Ok(Authenticated::default())
        }
        Ok(r) => {
            let why = format!("{} may not log in as user \"{user}\"", r.account);
            Err(refuse(&why, failed(why.clone())))
        }
        Err(ReviewError::Refused(why)) => Err(refuse(&why.to_string(), failed(why.to_string()))),
        Err(ReviewError::Unavailable(why)) => {
            STATS.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(user, reason = %why, "ServiceAccount token could not be validated");
            Err(LoginError::fatal(
                PgError::fatal(
                    "28000",
                    format!("could not validate the ServiceAccount token of user \"{user}\""),
                )
                .with_detail("the Kubernetes API server could not be asked; see the pooler's log"),
            ))
        }
    }
}

/// SCRAM-SHA-256, and SCRAM-SHA-256-PLUS when `channel_binding` (the TLS connection's
/// `tls-server-end-point` data) is given. An unknown user's decoy counts `rounds` iterations,
/// as a verifier derived from a plain password would.
async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    secret: Option<Secret>,
    previous: Vec<ScramSecret>,
    rounds: u32,
    channel_binding: Option<&[u8]>,
) -> Result<Authenticated, LoginError> {
    let known = secret.is_some();
    let secret = match secret {
        Some(Secret::Md5(_)) => {
            return Err(LoginError::fatal(PgError::fatal(
                "28000",
                format!("user \"{user}\" has an md5 secret in auth_file, which cannot be used with SCRAM authentication"),
            )))
        }
        Some(s) => s,
        // A decoy makes an unknown user's exchange look like a real one, salt and work alike.
        None => Secret::Scram(ScramSecret {
            iterations: rounds,
            ..ScramSecret::decoy(user)
        }),
    };
    let mut server = ScramServer::new(&secret, user)
        .map_err(|e| auth_error(user, &e))?
        .with_previous(previous);
    if let Some(data) = channel_binding {
        server = server.with_channel_binding(data.to_vec());
    }
    let mut out = BytesMut::new();
    backend::authentication_sasl(&mut out, server.mechanisms());
    wire::flush(stream, &mut out).await?;

    let msg = expect_password_message(stream, buf).await?;
    let (mechanism, data) = frontend::parse_sasl_initial_response(&msg)
        .map_err(|e| LoginError::fatal(e.to_pg_error()))?;
    let first = server
        .client_first(mechanism, data)
        .map_err(|e| auth_error(user, &e))?;
    backend::authentication_sasl_continue(&mut out, &first);
    wire::flush(stream, &mut out).await?;

    let msg = expect_password_message(stream, buf).await?;
    let last = server
        .client_final(&msg)
        .map_err(|e| auth_error(user, &e))?;
    if !known {
        return Err(auth_failed(user));
    }
    backend::authentication_sasl_final(&mut out, &last);
    wire::flush(stream, &mut out).await?;
    // A previous password's keys would not log in to a server that has the new verifier.
    let keys = match (server.client_key(), &secret) {
        (Some(client_key), Secret::Scram(s)) if server.matched_current() => {
            Some((client_key, s.server_key))
        }
        _ => None,
    };
    Ok(Authenticated {
        scram_keys: keys,
        looked_up: None,
    })
}

/// The stored secret a password method checks against: none for the empty password, so
/// that such a user fails exactly like an unknown one.
fn with_password(secret: Option<Secret>, user: &str) -> Option<Secret> {
    secret.filter(|s| !s.is_empty_password(user))
}

/// Every secret a password or md5 login of `user` is checked against: the current one, then
/// the replaced ones still in their rotation grace.
fn accepted(secret: Option<Secret>, pooler: &dyn SessionContext, user: &str) -> Vec<Secret> {
    let previous = pooler.previous_secrets(user);
    with_password(secret, user)
        .into_iter()
        .chain(previous.into_iter().filter(|s| !s.is_empty_password(user)))
        .collect()
}

/// The replaced secrets of `user` as verifiers a SCRAM exchange against `current` can check:
/// a previous plain password is derived with the current salt; a stored verifier serves only
/// if it has the same salt (see [`ScramServer::with_previous`]).
fn previous_verifiers(
    current: &ScramSecret,
    pooler: &dyn SessionContext,
    user: &str,
) -> Vec<ScramSecret> {
    pooler
        .previous_secrets(user)
        .into_iter()
        .filter(|s| !s.is_empty_password(user))
        .filter_map(|s| match s {
            Secret::Plain(p) => Some(ScramSecret::from_password(
                &p,
                &current.salt,
                current.iterations,
            )),
            Secret::Scram(v) => Some(v),
            Secret::Md5(_) => None,
        })
        .collect()
}

/// Reads a PasswordMessage-family message (`p`) and returns its body.
async fn expect_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, LoginError> {
    let msg = wire::read_message(stream, buf).await?;
    if msg.tag != b'p' {
        return Err(LoginError::fatal(PgError::fatal(
            "08P01",
            format!(
                "expected a password message, got message type {:?}",
                char::from(msg.tag)
            ),
        )));
    }
    Ok(msg.body)
}

async fn read_password(stream: &mut Stream, buf: &mut BytesMut) -> Result<Vec<u8>, LoginError> {
    let body = expect_password_message(stream, buf).await?;
    let pw =
        frontend::parse_password_message(&body).map_err(|e| LoginError::fatal(e.to_pg_error()))?;
    Ok(pw.to_vec())
}

fn auth_failed(user: &str) -> LoginError {
    LoginError::fatal(PgError::fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn auth_error(user: &str, e: &auth::AuthError) -> LoginError {
    match e {
        auth::AuthError::InvalidPassword => auth_failed(user),
        other => LoginError::fatal(PgError::fatal(other.sqlstate(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_get_the_client_address_as_in_pgbouncer() {
        let v4 = Endpoint::tcp("10.0.0.7:51234".parse().unwrap());
        assert_eq!(name_with_host(Some("psql"), &v4), "psql - 10.0.0.7:51234");
        assert_eq!(name_with_host(None, &v4), "app - 10.0.0.7:51234");
        assert_eq!(name_with_host(Some(""), &v4), " - 10.0.0.7:51234");
        let v6 = Endpoint::tcp("[::1]:6000".parse().unwrap());
        assert_eq!(name_with_host(Some("x"), &v6), "x - [::1]:6000");
    }
}
