//! PostgreSQL's own command-line clients (`psql`, `pgbench`) run against any server, so tests
//! can drive the pooler with the same tools people use, and parse what they report.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

/// Directory holding the PostgreSQL 15 server and client binaries the harness runs.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Upper bound for one `psql` invocation, so a hung server fails the test instead of hanging it.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for one `pgbench` invocation; generous because `-T` runs are long on purpose.
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Path of PostgreSQL program `name` in [`PG_BIN_DIR`].
pub fn pg_bin(name: &str) -> PathBuf {
    PathBuf::from(PG_BIN_DIR).join(name)
}

/// What a finished command-line client reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code, or -1 when the process was ended by a signal.
    pub status: i32,
    /// Everything written to standard output.
    pub stdout: String,
    /// Everything written to standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// The figures of a `pgbench` run's closing report that tests assert on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgbenchSummary {
    /// Transactions per second, excluding initial connection time when pgbench reports both.
    pub tps: f64,
    /// Transactions actually processed.
    pub transactions: u64,
    /// Failed transactions (0 when pgbench does not report failures, as before version 15).
    pub failed: u64,
}

/// Runs one SQL string through `psql -X -v ON_ERROR_STOP=1 -Atc` as `user` against
/// `host:port`, giving the password through `PGPASSWORD`; unaligned tuples-only output makes
/// `stdout` easy to compare.
pub async fn psql(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> anyhow::Result<CommandOutput> {
    let mut cmd = client_command("psql", host, port, user, password);
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", db, "-Atc", sql]);
    run(cmd, PSQL_TIMEOUT).await
}

/// Runs `psql` like [`psql`], with `conninfo` (e.g. `dbname=app sslmode=require`) as the
/// connection string, for the settings `-h`/`-p`/`-U` cannot carry.
pub async fn psql_conninfo(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    conninfo: &str,
    sql: &str,
) -> anyhow::Result<CommandOutput> {
    let mut cmd = client_command("psql", host, port, user, password);
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-Atc", sql]);
    run(cmd, PSQL_TIMEOUT).await
}

/// Runs `pgbench` with `args` (e.g. `["-i", "-s", "1"]` or `["-c", "4", "-T", "5"]`) as `user`
/// against database `db` on `host:port`; see [`parse_pgbench`] for reading the result.
pub async fn pgbench(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> anyhow::Result<CommandOutput> {
    let mut cmd = client_command("pgbench", host, port, user, password);
    cmd.args(args).arg(db);
    run(cmd, PGBENCH_TIMEOUT).await
}

/// Runs another PostgreSQL client program (e.g. `pg_recvlogical`, `pg_receivewal`) with
/// `args` after the connection options, as `user` on `host:port`, bounded by `limit`.
pub async fn pg_tool(
    program: &str,
    (host, port): (&str, u16),
    (user, password): (&str, &str),
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<CommandOutput> {
    let mut cmd = client_command(program, host, port, user, password);
    cmd.args(args);
    run(cmd, limit).await
}

/// A client command with connection settings on the command line and none inherited: `PG*`
/// variables from the developer's shell would otherwise silently change what is tested.
fn client_command(program: &str, host: &str, port: u16, user: &str, password: &str) -> Command {
    let mut cmd = Command::new(pg_bin(program));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-h", host, "-p", &port.to_string(), "-U", user]);
    cmd
}

/// Runs `cmd` to completion with a time limit, killing it if the limit passes.
async fn run(mut cmd: Command, limit: Duration) -> anyhow::Result<CommandOutput> {
    let what = format!("{:?}", cmd.as_std().get_program());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    Ok(CommandOutput {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Reads the closing report of a `pgbench` run from its standard output; `None` when the
/// report is missing (e.g. the run aborted), so callers can show the whole output.
///
/// Understands the formats of pgbench 14 and later: `tps = N (without initial connection
/// time)` from 15, the `including`/`excluding connections establishing` pair from 14, and
/// `processed: N` as well as `processed: N/M` for `-t` runs.
pub fn parse_pgbench(stdout: &str) -> Option<PgbenchSummary> {
    let mut tps = None;
    let mut transactions = None;
    let mut failed = 0;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            let done = rest.trim().split('/').next()?;
            transactions = Some(done.trim().parse().ok()?);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("tps =") {
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            // pgbench 14 prints the figure including connection set-up first; the one
            // without it is what a throughput comparison wants.
            if tps.is_none() || !rest.contains("including") {
                tps = Some(value);
            }
        }
    }
    Some(PgbenchSummary {
        tps: tps?,
        transactions: transactions?,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "\
pgbench (15.10 (Debian 15.10-0+deb12u1))
starting vacuum...end.
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 1
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 1234
number of failed transactions: 3 (0.243%)
latency average = 3.221 ms
initial connection time = 5.120 ms
tps = 617.012345 (without initial connection time)
";

    const PG14: &str = "\
transaction type: <builtin: select only>
number of transactions actually processed: 500/500
latency average = 0.400 ms
tps = 2400.5 (including connections establishing)
tps = 2500.25 (excluding connections establishing)
";

    #[test]
    fn parses_pgbench_15() {
        let summary = parse_pgbench(PG15).unwrap();
        assert_eq!(summary.transactions, 1234);
        assert_eq!(summary.failed, 3);
        assert!((summary.tps - 617.012345).abs() < 1e-9);
    }

    #[test]
    fn parses_pgbench_14_and_prefers_excluding_connections() {
        let summary = parse_pgbench(PG14).unwrap();
        assert_eq!(summary.transactions, 500);
        assert_eq!(summary.failed, 0);
        assert!((summary.tps - 2500.25).abs() < 1e-9);
    }

    #[test]
    fn excluding_line_first_still_wins() {
        let out = "number of transactions actually processed: 10\n\
                   tps = 5.0 (excluding connections establishing)\n\
                   tps = 4.0 (including connections establishing)\n";
        assert_eq!(parse_pgbench(out).unwrap().tps, 5.0);
    }

    #[test]
    fn missing_or_garbled_report_is_none() {
        assert_eq!(parse_pgbench(""), None);
        assert_eq!(
            parse_pgbench("pgbench: error: connection to server failed"),
            None
        );
        assert_eq!(
            parse_pgbench("tps = 12.0 (without initial connection time)"),
            None
        );
        assert_eq!(
            parse_pgbench("number of transactions actually processed: many\ntps = 1.0"),
            None
        );
        assert_eq!(
            parse_pgbench("number of transactions actually processed: 3\ntps = x"),
            None
        );
    }

    #[test]
    fn command_output_success() {
        let ok = CommandOutput {
            status: 0,
            stdout: String::new(),
            stderr: String::new(),
        };
        assert!(ok.success());
        assert!(!CommandOutput { status: 2, ..ok }.success());
    }
}
