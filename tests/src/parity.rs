//! Side-by-side runs of PgBouncer 1.25.2 and weir on the same configuration text, for the
//! parity suites: the poolers by name, the PostgreSQL behind them, and the console's rows.

use anyhow::bail;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::fixture::{DATABASE, PASSWORD, USER};
use crate::postgres::{PasswordMethod, PgCluster};
use crate::weir::WeirProcess;

/// The poolers a parity case runs on, PgBouncer first: its behaviour is the expected one.
pub const POOLERS: [&str; 2] = ["PgBouncer", "weir"];

/// Starts the pooler named `who` (one of [`POOLERS`]) on `ini` and `userlist`.
pub async fn start_named(who: &str, ini: &str, userlist: &str) -> anyhow::Result<WeirProcess> {
    match who {
        "PgBouncer" => WeirProcess::start_pgbouncer(ini, userlist).await,
        "weir" => WeirProcess::start(ini, userlist).await,
        other => bail!("no pooler named {other:?}"),
    }
}

/// Starts `who` on `ini` with the application user in its auth file; panics when it does
/// not start.
pub async fn start(who: &str, ini: &str) -> WeirProcess {
    start_named(who, ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .unwrap_or_else(|e| panic!("{who} does not start: {e:#}"))
}

/// A PostgreSQL whose application role (SCRAM) owns the application database.
pub async fn cluster() -> PgCluster {
    let pg = PgCluster::start().await.expect("PostgreSQL starts");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    pg
}

/// Every row of console command `command`, as (column, value) pairs.
pub async fn rows(console: &Client, command: &str) -> Vec<Vec<(String, Option<String>)>> {
    let messages = console
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The value of column `name` in `row` (`None` for a missing column or a NULL).
pub fn column(row: &[(String, Option<String>)], name: &str) -> Option<String> {
    row.iter()
        .find(|(c, _)| c == name)
        .and_then(|(_, v)| v.clone())
}
