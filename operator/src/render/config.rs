//! The pooler's configuration, built from the pooler's own types so that what the operator
//! renders is exactly what the pooler parses.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use weir_pooler::config::{AuthType, Config, DatabaseEntry, Settings, UserEntry};

use super::secrets::Credential;
use super::server_auth;
use super::RenderError;
use crate::api::{Backend, ConnectionPoolSpec, UserSource};
use crate::sizing::Sizing;

/// Where the ConfigMap is mounted in the pooler container.
pub const CONFIG_DIR: &str = "/etc/weir/config";
/// The ConfigMap key and file name of the configuration.
pub const CONFIG_FILE: &str = "pgbouncer.ini";
/// Where the auth Secret is mounted.
pub const AUTH_DIR: &str = "/etc/weir/auth";
/// The Secret key and file name of the auth file.
pub const AUTH_FILE: &str = "userlist.txt";
/// The pooler's HTTP port (health, readiness, metrics): `http_port`, a Weir extension.
pub const HTTP_PORT: u16 = 8080;

/// `auth_rotation_grace` unless `spec.parameters` sets it: application pods read the password
/// from the `<name>-app` Secret when they start, so after a rotation of a credentials Secret
/// they keep the old one until they restart; five minutes covers a rolling restart.
pub const ROTATION_GRACE: Duration = Duration::from_secs(300);

/// Settings that take effect only at pooler start: a change rolls the pods.
pub use weir_pooler::config::RESTART_KEYS;

/// Builds the pooler configuration: for PostgreSQL one database and one `[users]` entry per
/// user with its share of each pod's connections, for Redis the `[pgbouncer]` settings
/// alone (the `[redis]` section is rendered by `redis`), and the settings the spec asks for.
pub(crate) fn build(
    spec: &ConnectionPoolSpec,
    backend: Backend<'_>,
    namespace: &str,
    sizing: &Sizing,
    credentials: &[Credential],
    tls: &[(&str, String)],
) -> Result<Config, RenderError> {
    let mut s = Settings {
        auth_rotation_grace: ROTATION_GRACE,
        ..Settings::default()
    };
    for (key, value) in spec.parameters.iter().flatten() {
        s.set(key, value).map_err(|e| RenderError::Parameter {
            key: key.clone(),
            message: e.0,
        })?;
    }
    for (key, value) in tls {
        s.set(key, value).map_err(|e| RenderError::Tls {
            key: (*key).to_owned(),
            message: e.0,
        })?;
    }
    if s.shutdown_timeout.is_zero() {
        return Err(RenderError::UnboundedDrain);
    }
    // Every address, IPv4 and IPv6; no Unix socket, since the root filesystem is read-only.
    s.listen_addr = "*".to_owned();
    s.unix_socket_dir = String::new();
    s.http_port = HTTP_PORT;
    s.auth_type = AuthType::ScramSha256;
    s.auth_file = Some(PathBuf::from(AUTH_DIR).join(AUTH_FILE));
    s.pool_mode = spec.pool_mode.into();
    s.max_client_conn = u32::try_from(spec.limits.max_client_connections).unwrap_or(1);
    let limits = &spec.limits;
    let timeouts: [(&mut Duration, _); 5] = [
        (&mut s.query_wait_timeout, &limits.query_wait_timeout),
        (&mut s.server_idle_timeout, &limits.server_idle_timeout),
        (&mut s.server_lifetime, &limits.server_lifetime),
        (&mut s.client_idle_timeout, &limits.client_idle_timeout),
        (
            &mut s.idle_transaction_timeout,
            &limits.idle_transaction_timeout,
        ),
    ];
    for (setting, value) in timeouts {
        if let Some(value) = value {
            *setting = value.to_duration()?;
        }
    }

    let db = match backend {
        Backend::Postgres(db) => db,
        Backend::Redis(_) => {
            let config = Config {
                pgbouncer: s,
                databases: Default::default(),
                users: Default::default(),
                peers: Default::default(),
                // The [redis] section is written as text after this one (render/redis.rs).
                redis: None,
            };
            config.validate().map_err(RenderError::Config)?;
            return Ok(config);
        }
    };
    s.default_pool_size = sizing.default_pool_size();
    let (server_auth, server_auth_region) = server_auth::entry_keys(spec);
    let database = DatabaseEntry {
        host: Some(db.host.clone()),
        port: u16::try_from(db.port).into_iter().collect(),
        dbname: Some(db.dbname.clone()),
        // The hard cap over all the database's pools in one pod: the per-pod budget.
        max_db_connections: Some(sizing.max_db_connections()),
        server_auth,
        server_auth_region,
        ..DatabaseEntry::default()
    };
    let users = credentials
        .iter()
        .zip(&sizing.users)
        .zip(spec.user_sources())
        .map(|((credential, pool), source)| {
            let entry = UserEntry {
                pool_size: Some(pool.pool_size),
                reserve_pool_size: Some(pool.reserve_pool_size),
                // Caps the user at its share even if its pool and reserve were miscounted.
                max_user_connections: Some(pool.share()),
                // Each user's own warm minimum (a Weir extension under [users]).
                min_pool_size: Some(pool.min_pool_size).filter(|m| *m > 0),
                pool_mode: None,
                service_accounts: service_accounts(&source, namespace),
                max_user_client_connections: None,
                query_timeout: None,
                idle_transaction_timeout: None,
                client_idle_timeout: None,
            };
            (credential.user.clone(), entry)
        })
        .collect();
    let config = Config {
        pgbouncer: s,
        databases: [(db.dbname.clone(), database)].into(),
        users,
        // Filled in from the pods by `peers`.
        peers: Default::default(),
        redis: None,
    };
    config.validate().map_err(RenderError::Config)?;
    Ok(config)
}

/// The `namespace/name` list of a user's `serviceAccounts`, in the pool's `namespace` unless
/// they name another.
pub(crate) fn service_accounts(source: &UserSource<'_>, namespace: &str) -> Vec<String> {
    match source {
        UserSource::Listed(u) => u
            .service_accounts
            .iter()
            .flatten()
            .map(|sa| {
                format!(
                    "{}/{}",
                    sa.namespace.as_deref().unwrap_or(namespace),
                    sa.name
                )
            })
            .collect(),
        UserSource::Database(_) => Vec::new(),
    }
}

/// The hash of the settings in [`RESTART_KEYS`] and of the TLS settings, as put on the
/// pod template. The TLS settings are fixed paths and modes, never file contents, so a
/// rotated certificate leaves the hash alone while turning TLS on or off, or changing a
/// mode, rolls the pods: a stricter mode then holds for every pod at once, whatever the
/// pooler's reload does with it. Without TLS the hash is what it was before TLS existed.
pub(crate) fn restart_hash(config: &Config, tls: &[(&str, String)]) -> String {
    let mut hasher = Sha256::new();
    for key in RESTART_KEYS {
        let value = config.pgbouncer.get(key).unwrap_or_default();
        hasher.update(format!("{key}={value}\n"));
    }
    for (key, value) in tls {
        hasher.update(format!("{key}={value}\n"));
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
