//! The admin console: the virtual databases `pgbouncer` and `weir`, where members of
//! `admin_users` (and, for SHOW commands only, `stats_users`) inspect and steer the pooler
//! with PgBouncer's command language over the simple query protocol.

pub mod commands;
pub mod parse;
pub mod peers;
pub mod show;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::config;
use crate::config::{AuthType, Config};
use crate::lifecycle::ShutdownMode;
use crate::peers::Peers;
use crate::pool::Pool;
use crate::protocol::{backend, frontend, PgError};
use crate::registry::ClientHandle;
use crate::registry::Registry;
use crate::stream::Stream;
use crate::tls::Tls;
use crate::wire::{self, ReadError};
use stats::Averages;

use commands::Reply;

/// The database names that reach the console instead of a pool.
pub const CONSOLE_DATABASES: &[&str] = &["pgbouncer", "weir"];

/// Whether a client asking for `database` wants the admin console.
pub fn is_console(database: &str) -> bool {
    CONSOLE_DATABASES.contains(&database)
}

/// The PgBouncer release whose console Weir's imitates: SHOW VERSION and `server_version`
/// start with it, so exporters that parse PgBouncer's version read Weir's the same way.
pub const PGBOUNCER_VERSION: &str = "1.25.2";

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A member of `admin_users`: every command.
    Admin,
    /// A member of `stats_users` (or anyone under `auth_type = any`): SHOW commands only.
    Stats,
}

/// The console role of `user`, or `None` when the user may not use the console.
pub fn role_of(config: &Config, user: &str) -> Option<Role> {
    let s = &config.pgbouncer;
    if s.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if s.stats_users.iter().any(|u| u == user) || s.auth_type == AuthType::Any {
        // PgBouncer lets anyone in as a stats user when nobody is authenticated.
        Some(Role::Stats)
    } else {
        None
    }
}

/// The refusal for a user who is in neither `admin_users` nor `stats_users`.
pub fn not_allowed(user: &str) -> PgError {
    PgError::fatal(
        "42501",
        format!("user {user:?} may not use the admin console (not in admin_users or stats_users)"),
    )
}

/// What the console reads and steers: implemented by the pooler's composition root, so the
/// console depends on this and not on the root.
pub trait Console: Send + Sync + 'static {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;
    /// RELOAD: reads the configuration again; whether it changed, and its warnings.
    fn reload(&self) -> Result<(bool, Vec<config::ConfigWarning>), config::ConfigError>;
    /// SHUTDOWN.
    fn shut_down(&self, mode: ShutdownMode);
    /// Resolves once a shutdown has begun.
    fn drained(&self) -> impl std::future::Future<Output = ()> + Send;
    /// Whether a shutdown is under way.
    fn is_draining(&self) -> bool;
    /// Whether `database` is paused.
    fn is_paused(&self, database: &str) -> bool;
    /// Whether PAUSE without a database is in force.
    fn is_paused_all(&self) -> bool;
    /// PAUSE / RESUME of one database or all; the pools it touched.
    fn set_paused(&self, database: Option<&str>, paused: bool) -> Vec<Arc<Pool>>;
    /// Whether `database` is disabled.
    fn is_disabled(&self, database: &str) -> bool;
    /// DISABLE / ENABLE.
    fn set_disabled(&self, database: &str, disabled: bool);
    /// KILL: drops the clients and server connections of one database or all.
    fn kill(&self, database: Option<&str>) -> usize;
    /// SET of a runtime setting.
    fn set_setting(&self, key: &str, value: &str) -> Result<(), String>;
    /// The latest SHOW STATS averages.
    fn stats_averages(&self) -> Arc<BTreeMap<String, Averages>>;
    /// Publishes new SHOW STATS averages.
    fn set_stats_averages(&self, averages: BTreeMap<String, Averages>);
    /// Who is connected.
    fn registry(&self) -> &Arc<Registry>;
    /// Client connections open right now.
    fn client_count(&self) -> usize;
    /// Every pool that exists right now.
    fn pools(&self) -> Vec<Arc<Pool>>;
    /// The TLS material in force.
    fn tls(&self) -> Arc<Tls>;
    /// This process's peer id and its peer pools.
    fn peers(&self) -> &Peers;
    /// The Redis data path, if it is on.
    fn redis(&self) -> Option<Arc<crate::redis::Proxy>>;
}

/// Serves an authenticated console session: greets the client, then answers simple queries
/// until it leaves or a shutdown begins (including one it asked for with SHUTDOWN, which is
/// acknowledged first). `buf` holds any bytes read after authentication.
/// Returns why the session ended.
pub async fn serve(
    pooler: Arc<impl Console>,
    mut stream: Stream,
    mut buf: BytesMut,
    role: Role,
    record: ClientHandle,
) -> &'static str {
    let mut out = BytesMut::new();
    greet(&mut out);
    if wire::flush(&mut stream, &mut out).await.is_err() {
        return "client connection failed";
    }
    loop {
        let msg = tokio::select! {
            msg = wire::read_message(&mut stream, &mut buf) => msg,
            () = record.killed() => {
                backend::error_response(
                    &mut out,
                    &PgError::fatal("57P01", "terminated by the administrator (KILL_CLIENT)"),
                );
                wire::farewell(&mut stream, &mut out).await;
                return "killed from the admin console (KILL_CLIENT)";
            }
            () = pooler.drained() => {
                backend::error_response(
                    &mut out,
                    &PgError::fatal("57P01", "the pooler is shutting down"),
                );
                wire::farewell(&mut stream, &mut out).await;
                return "pooler shutting down";
            }
        };
        let msg = match msg {
            Ok(m) => m,
            Err(ReadError::Protocol(e)) => {
                backend::error_response(&mut out, &e.to_pg_error());
                wire::farewell(&mut stream, &mut out).await;
                return "client protocol violation";
            }
            Err(_) => return "client closed the connection",
        };
        match msg.tag {
            b'Q' => {
                match frontend::parse_query(&msg.body) {
                    Ok(sql) => run_query(&pooler, role, sql, &mut out).await,
                    Err(e) => backend::error_response(&mut out, &e.to_pg_error()),
                }
                backend::ready_for_query(&mut out, b'I');
                if wire::flush(&mut stream, &mut out).await.is_err() {
                    return "client connection failed";
                }
            }
            b'X' => return "client said goodbye",
            _ => {
                backend::error_response(
                    &mut out,
                    &PgError::fatal(
                        "08P01",
                        "the admin console supports only the simple query protocol",
                    ),
                );
                wire::farewell(&mut stream, &mut out).await;
                return "client used the extended query protocol";
            }
        }
    }
}

/// AuthenticationOk, the parameters PgBouncer's console reports, ReadyForQuery.
fn greet(out: &mut BytesMut) {
    backend::authentication_ok(out);
    let version = format!("{PGBOUNCER_VERSION}/bouncer");
    for (name, value) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "GMT"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("integer_datetimes", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(out, name, value);
    }
    backend::ready_for_query(out, b'I');
}

/// Runs every statement of one simple query, appending the replies to `out`; stops at the
/// first error.
async fn run_query(pooler: &Arc<impl Console>, role: Role, sql: &str, out: &mut BytesMut) {
    let stmts = parse::statements(sql);
    if stmts.is_empty() {
        backend::empty_query_response(out);
        return;
    }
    for stmt in stmts {
        let command = match parse::parse(stmt) {
            Ok(c) => c,
            Err(e) => {
                backend::error_response(out, &PgError::error("42601", e.to_string()));
                return;
            }
        };
        if role == Role::Stats && !command.is_read_only() {
            let e = PgError::error(
                "42501",
                format!(
                    "{} needs admin rights: stats_users may only run SHOW commands",
                    command.tag()
                ),
            );
            backend::error_response(out, &e);
            return;
        }
        let tag = command.tag();
        match commands::execute(pooler.as_ref(), command).await {
            Ok(Reply::Rows(rs)) => rs.encode(out),
            Ok(Reply::Done) => backend::command_complete(out, tag),
            Ok(Reply::Tagged { tag, notice }) => {
                if let Some(notice) = notice {
                    backend::notice_response(out, &notice);
                }
                backend::command_complete(out, &tag);
            }
            Err(e) => {
                backend::error_response(out, &e);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let ini = format!(
            "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             auth_type = trust\nauth_file = users.txt\n{extra}"
        );
        match Config::parse(&ini, std::path::Path::new("t.ini")) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn roles() {
        let c = config("admin_users = root, ops\nstats_users = watcher, ops\n");
        assert_eq!(role_of(&c, "root"), Some(Role::Admin));
        assert_eq!(role_of(&c, "ops"), Some(Role::Admin));
        assert_eq!(role_of(&c, "watcher"), Some(Role::Stats));
        assert_eq!(role_of(&c, "app"), None);
        assert_eq!(role_of(&c, "Root"), None);
    }

    #[test]
    fn console_names_and_refusal() {
        assert!(is_console("pgbouncer"));
        assert!(is_console("weir"));
        assert!(!is_console("app"));
        let e = not_allowed("app");
        assert_eq!(e.code, "42501");
        assert!(e.message.contains("admin_users"));
    }

    #[test]
    fn greeting_ends_ready() {
        let mut out = BytesMut::new();
        greet(&mut out);
        assert_eq!(out[0], b'R');
        assert!(out.ends_with(&[b'Z', 0, 0, 0, 5, b'I']));
    }
}
