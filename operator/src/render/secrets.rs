//! The ConfigMap and the two Secrets: the pooler's configuration, its auth file, and the
//! connection details applications mount.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use weir_pooler::config::{render_userlist, Config};

use super::config::{self, AUTH_FILE, CONFIG_FILE};
use super::meta::{names, service_host, Context};
use super::peers;
use super::redis;
use super::server_auth;
use super::workload::SERVICE_PORT;
use super::{tls, Observed, RenderError};
use crate::api::{Backend, ConnectionPoolSpec, UserSource};

/// The keys of a PostgreSQL pool's app Secret.
pub const APP_SECRET_KEYS: &[&str] = &[
    "host", "port", "dbname", "user", "password", "uri", "jdbc-uri",
];

/// One user's name and password, read from its Secret; the password is empty for a user
/// that logs in with ServiceAccount tokens to a pool with `serverAuth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    pub user: String,
    pub password: String,
}

/// The users' credentials, in spec order.
pub(crate) fn credentials(
    spec: &ConnectionPoolSpec,
    observed: &Observed,
) -> Result<Vec<Credential>, RenderError> {
    // With serverAuth the pooler logs in to the database with tokens: a user that logs in to
    // the pooler with ServiceAccount tokens then needs no password at all.
    let passwordless = server_auth::of(spec).is_some();
    spec.user_sources()
        .into_iter()
        .map(|source| match source {
            UserSource::Listed(u)
                if passwordless && u.service_accounts.iter().flatten().next().is_some() =>
            {
                Ok(Credential {
                    user: u.user.clone(),
                    password: String::new(),
                })
            }
            UserSource::Listed(u) => Ok(Credential {
                user: u.user.clone(),
                password: secret_value(
                    observed,
                    &u.credentials_secret.name,
                    &u.credentials_secret.password_key,
                )?,
            }),
            UserSource::Database(c) => Ok(Credential {
                user: secret_value(observed, &c.name, &c.username_key)?,
                password: secret_value(observed, &c.name, &c.password_key)?,
            }),
        })
        .collect()
}

/// A value from a referenced Secret, as text fit for userlist.txt and pgbouncer.ini.
fn secret_value(observed: &Observed, secret: &str, key: &str) -> Result<String, RenderError> {
    let data = observed
        .secrets
        .get(secret)
        .ok_or_else(|| RenderError::MissingSecret(secret.to_owned()))?;
    let bytes = data.get(key).ok_or_else(|| RenderError::MissingSecretKey {
        secret: secret.to_owned(),
        key: key.to_owned(),
    })?;
    let bad = |problem| RenderError::BadSecretValue {
        secret: secret.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let text = String::from_utf8(bytes.clone()).map_err(|_| bad("not UTF-8 text"))?;
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.contains(['\n', '\r', '\0']) {
        return Err(bad("contains a line break or NUL"));
    }
    Ok(text)
}

/// The ConfigMap holding pgbouncer.ini, with the `[redis]` section of a Redis pool.
pub(crate) fn config_map(
    ctx: &Context<'_>,
    config: &Config,
    redis_settings: Option<&[(&str, String)]>,
) -> ConfigMap {
    let mut ini = config.to_ini();
    if let Some(settings) = redis_settings {
        ini.push_str(&redis::section(settings));
    }
    let mut metadata = ctx.meta(names::config_map(ctx.name));
    // The operator's record of the peer ids, kept apart from the data an edit may clobber.
    metadata.annotations = Some(BTreeMap::from([(
        peers::PEER_IDS_ANNOTATION.to_owned(),
        peers::annotation(&config.peers),
    )]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), ini)])),
        ..ConfigMap::default()
    }
}

/// The Secret holding userlist.txt. It holds the passwords themselves (not SCRAM
/// verifiers): the pooler needs them to log in to the database as each user.
pub(crate) fn auth_secret(ctx: &Context<'_>, credentials: &[Credential]) -> Secret {
    // A user without a password logs in with tokens only and has no auth file line.
    let users: BTreeMap<String, String> = credentials
        .iter()
        .filter(|c| !c.password.is_empty())
        .map(|c| (c.user.clone(), c.password.clone()))
        .collect();
    Secret {
        metadata: ctx.meta(names::auth_secret(ctx.name)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            AUTH_FILE.to_owned(),
            ByteString(render_userlist(&users).into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The Secret applications mount: how to reach the pool as its first user.
pub(crate) fn app_secret(
    ctx: &Context<'_>,
    backend: Backend<'_>,
    spec: &ConnectionPoolSpec,
    credentials: &[Credential],
) -> Secret {
    let host = service_host(ctx.name, ctx.namespace);
    let db = match backend {
        Backend::Postgres(db) => db,
        Backend::Redis(_) => {
            let values = redis::app_values(&host, credentials.first());
            return app_secret_of(ctx, redis::APP_SECRET_KEYS, &values);
        }
    };
    let port = SERVICE_PORT.to_string();
    let dbname = &db.dbname;
    let (user, password) = credentials
        .first()
        .map(|c| (c.user.as_str(), c.password.as_str()))
        .unwrap_or_default();
    // A user that logs in with ServiceAccount tokens has no password to hand out: the
    // application sends its projected token instead.
    let token_login = spec
        .user_sources()
        .first()
        .is_some_and(|s| !config::service_accounts(s, ctx.namespace).is_empty());
    let password = if token_login { "" } else { password };
    let sslmode = tls::app_sslmode(spec).as_str();
    let (userinfo, jdbc_password) = if token_login {
        (encode(user), String::new())
    } else {
        (
            format!("{}:{}", encode(user), encode(password)),
            format!("&password={}", encode(password)),
        )
    };
    let uri = format!(
        "postgresql://{userinfo}@{host}:{port}/{}?sslmode={sslmode}",
        encode(dbname)
    );
    let jdbc = format!(
        "jdbc:postgresql://{host}:{port}/{}?user={}{jdbc_password}&sslmode={sslmode}",
        encode(dbname),
        encode(user),
    );
    let values = [
        host.as_str(),
        port.as_str(),
        dbname,
        user,
        password,
        uri.as_str(),
        jdbc.as_str(),
    ];
    app_secret_of(ctx, APP_SECRET_KEYS, &values)
}

/// The app Secret holding `values` under `keys`.
fn app_secret_of(ctx: &Context<'_>, keys: &[&str], values: &[impl AsRef<str>]) -> Secret {
    Secret {
        metadata: ctx.meta(names::app_secret(ctx.name)),
        type_: Some("Opaque".to_owned()),
        data: Some(
            keys.iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_ref().as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, which is safe in the
/// user-info, path and query parts of a URI alike.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("plain-user_1.x~"), "plain-user_1.x~");
        assert_eq!(
            encode("p@ss:w/rd?#&= é"),
            "p%40ss%3Aw%2Frd%3F%23%26%3D%20%C3%A9"
        );
    }
}
