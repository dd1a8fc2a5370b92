//! Running admin console commands against the pooler's shared state.

use std::sync::Arc;
use std::time::Duration;

use super::Console;
use crate::pool::Pool;
use crate::protocol::PgError;

use super::parse::{self, Command, Subject};
use super::peers;
use super::show::{self, DbFlags, HostView, PoolView, ResultSet};

/// How often PAUSE looks whether the paused pools' connections have all come back.
const PAUSE_POLL: Duration = Duration::from_millis(50);

/// What a command produced.
#[derive(Debug)]
pub enum Reply {
    /// A result set (SHOW).
    Rows(ResultSet),
    /// The command took effect; only the command tag is sent.
    Done,
    /// The command took effect (or was ignored, as PgBouncer does): this command tag, after
    /// an optional notice.
    Tagged {
        /// The CommandComplete tag, e.g. PgBouncer's `SET key=value`.
        tag: String,
        /// A NoticeResponse to send first.
        notice: Option<PgError>,
    },
}

/// Runs one command. Errors are plain (non-fatal) errors to report to the console user.
pub async fn execute(pooler: &impl Console, command: Command) -> Result<Reply, Box<PgError>> {
    match command {
        Command::Show(subject) => Ok(show(pooler, subject)),
        Command::Pause(db) => {
            check_database(pooler, db.as_deref())?;
            let pools = pooler.set_paused(db.as_deref(), true);
            empty_pools(&pools).await;
            Ok(Reply::Done)
        }
        Command::Resume(db) => {
            check_database(pooler, db.as_deref())?;
            pooler.set_paused(db.as_deref(), false);
            Ok(Reply::Done)
        }
        Command::Reload => match pooler.reload() {
            Ok((_, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                Ok(Reply::Done)
            }
            Err(e) => Err(Box::new(PgError::error(
                "F0000",
                format!("reload failed, keeping the old configuration: {e}"),
            ))),
        },
        Command::Reconnect(db) => {
            check_database(pooler, db.as_deref())?;
            for pool in pools_of(pooler, db.as_deref()) {
                pool.retire_all();
            }
            Ok(Reply::Done)
        }
        Command::WaitClose(db) => {
            check_database(pooler, db.as_deref())?;
            let pools = pools_of(pooler, db.as_deref());
            while pools.iter().any(|p| p.close_needed() > 0) {
                tokio::time::sleep(PAUSE_POLL).await;
            }
            Ok(Reply::Done)
        }
        Command::Kill(db) => {
            check_database(pooler, db.as_deref())?;
            pooler.kill(db.as_deref());
            Ok(Reply::Done)
        }
        Command::KillClient(id) => match pooler.registry().client(id) {
            Some(client) => {
                tracing::info!(client = id, user = %client.info.user, database = %client.info.database, "client killed from the admin console");
                client.kill();
                Ok(Reply::Done)
            }
            None => Err(Box::new(PgError::error(
                "42704",
                format!("KILL_CLIENT {id}: no such client (see SHOW CLIENTS)"),
            ))),
        },
        Command::Disable(db) => {
            check_database(pooler, Some(&db))?;
            pooler.set_disabled(&db, true);
            Ok(Reply::Done)
        }
        Command::Enable(db) => {
            check_database(pooler, Some(&db))?;
            pooler.set_disabled(&db, false);
            Ok(Reply::Done)
        }
        Command::Shutdown(mode) => {
            tracing::info!(?mode, "SHUTDOWN from the admin console");
            pooler.shut_down(mode);
            Ok(Reply::Done)
        }
        Command::Set { key, value } => Ok(set(pooler, &key, &value)?),
        Command::Unsupported { command, why } => Err(Box::new(PgError::error(
            "0A000",
            format!("{command} is not supported by weir: {why}"),
        ))),
    }
}

/// A console notice (SQLSTATE 00000).
fn notice(message: String) -> PgError {
    PgError::new(crate::protocol::Severity::Notice, "00000", message)
}

/// SET as PgBouncer answers it: a fake session parameter is ignored with a notice, a setting
/// read only at start is left as it is (PgBouncer says nothing; weir adds a notice), any
/// other is changed and acknowledged as `SET key=value`.
fn set(pooler: &impl Console, key: &str, value: &str) -> Result<Reply, Box<PgError>> {
    if parse::fake_param(key).is_some() {
        return Ok(Reply::Tagged {
            tag: "SET".to_owned(),
            notice: Some(notice("SET ignored".to_owned())),
        });
    }
    let tag = format!("SET {key}={value}");
    if crate::config::RESTART_KEYS.contains(&key) {
        return Ok(Reply::Tagged {
            tag,
            notice: Some(notice(format!(
                "{key} takes effect only after a restart; SET ignored"
            ))),
        });
    }
    match pooler.set_setting(key, value) {
        Ok(()) => Ok(Reply::Tagged { tag, notice: None }),
        Err(e) => Err(Box::new(PgError::error(
            "22023",
            format!("SET failed: {key}: {e}"),
        ))),
    }
}

fn show(pooler: &impl Console, subject: Subject) -> Reply {
    let views: Vec<PoolView> = pooler.pools().iter().map(|p| PoolView::of(p)).collect();
    let config = pooler.config();
    Reply::Rows(match subject {
        Subject::Pools => show::pools(&views, &pooler.registry().longest_waits()),
        Subject::Stats => show::stats(&views, &pooler.stats_averages()),
        Subject::StatsTotals => show::stats_totals(&show::stats(&views, &pooler.stats_averages())),
        Subject::StatsAverages => {
            show::stats_averages(&show::stats(&views, &pooler.stats_averages()))
        }
        Subject::Totals => show::totals(&show::stats(&views, &pooler.stats_averages())),
        Subject::Param(p) => show::param(p),
        Subject::Clients => show::clients(&pooler.registry().clients()),
        Subject::Servers => show::servers(&pooler.registry().servers()),
        Subject::Databases => show::databases(&config, &views, &|db| DbFlags {
            paused: pooler.is_paused(db),
            disabled: pooler.is_disabled(db),
        }),
        Subject::Users => show::users(&config, &views),
        Subject::Config => show::config(&config),
        Subject::Lists => show::lists(
            &config,
            &views,
            pooler.client_count(),
            pooler.peers().pools().len(),
        ),
        Subject::Version => show::version(),
        Subject::State => show::state(pooler.is_paused_all(), pooler.is_draining()),
        // PgBouncer answers with a notice and no rows.
        Subject::Help => {
            return Reply::Tagged {
                tag: "SHOW".to_owned(),
                notice: Some(show::help()),
            }
        }
        Subject::Certificates => {
            show::certificates(&pooler.tls(), jiff::Timestamp::now().as_second())
        }
        Subject::Peers => peers::peers(&config),
        Subject::PeerPools => peers::peer_pools(&pooler.peers().pools()),
        Subject::Hosts => show::hosts(
            &pooler
                .pools()
                .iter()
                .map(|p| HostView::of(p))
                .collect::<Vec<_>>(),
        ),
        Subject::Redis => show::redis(&pooler.redis().map(|r| r.stats()).unwrap_or_default()),
    })
}

/// The pools of `database`, or all of them.
fn pools_of(pooler: &impl Console, database: Option<&str>) -> Vec<Arc<Pool>> {
    pooler
        .pools()
        .into_iter()
        .filter(|p| database.is_none_or(|db| p.key().database == db))
        .collect()
}

/// Refuses a database name that is neither configured nor served by a pool.
fn check_database(pooler: &impl Console, database: Option<&str>) -> Result<(), Box<PgError>> {
    let Some(db) = database else {
        return Ok(());
    };
    let known = pooler.config().databases.contains_key(db)
        || pooler.pools().iter().any(|p| p.key().database == db);
    if known {
        Ok(())
    } else {
        Err(Box::new(PgError::error(
            "3D000",
            format!("no such database: {db}"),
        )))
    }
}

/// Waits until every lent connection of `pools` has come back (as the pool mode lets it),
/// closing idle ones as they do, as PgBouncer's PAUSE does before it returns.
async fn empty_pools(pools: &[Arc<Pool>]) {
    loop {
        for pool in pools {
            pool.close_idle();
        }
        if pools.iter().all(|p| p.in_use() == 0) {
            return;
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}
