//! Throw-away PostgreSQL 15 clusters for integration tests.
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temporary directory, configures the cluster
//! for tests (loopback only, no fsync, connection logging) and runs the postmaster in the
//! foreground as the `postgres` OS user, because PostgreSQL refuses to run as root. Running it
//! in the foreground rather than through `pg_ctl start` keeps it a direct child of the harness,
//! which is what lets the parent-death safety net described in the crate docs reach it.

mod conf;
mod tools;

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio_postgres::Client;

pub use tools::{
    parse_pgbench, pg_bin, pg_tool, pgbench, psql, psql_conninfo, CommandOutput, PgbenchSummary,
    PG_BIN_DIR,
};

use crate::child::{self, Supervised};
use crate::net;
use crate::netns::InNetns;

/// OS user that owns the cluster's files and runs its processes (when the tests run as root).
pub(crate) const OS_USER: &str = "postgres";

/// Database superuser created by initdb; it connects without a password from loopback.
const SUPERUSER: &str = "postgres";

/// Name of the server log file inside the data directory.
const LOG_FILE: &str = "postgres.log";

/// Upper bound for initdb, which takes about a second on an idle machine.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for the postmaster to accept connections after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound for a fast shutdown, which waits for open transactions to be rolled back.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an immediate shutdown may take before the postmaster is killed outright.
const IMMEDIATE_GRACE: Duration = Duration::from_secs(10);

/// Attempts at a fresh port when another process grabbed the chosen one first.
const PORT_ATTEMPTS: usize = 3;

/// How a test cluster is configured beyond the harness's fixed settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// `max_connections`, for tests about the connection budget.
    pub max_connections: u32,
    /// `password_encryption`: the verifier kind stored for roles created without an explicit
    /// [`PasswordMethod`], `"scram-sha-256"` or `"md5"`.
    pub password_encryption: &'static str,
    /// Lines appended verbatim to `postgresql.conf` after the harness's own, so they win.
    pub extra_conf: Vec<String>,
    /// `ssl = on` with this server certificate and key, and `ssl_ca_file` for client
    /// certificates when a CA is given.
    pub tls: Option<PgTls>,
    /// A `pg_hba.conf` replacing the harness's own; it must still let `postgres` in over
    /// plain TCP from 127.0.0.1 without a password, as the harness administers through it.
    pub hba: Option<String>,
    /// Runs the server inside this network namespace, listening on its address only and
    /// letting in its subnet as the harness's rules let in loopback (the harness then reaches
    /// it there too).
    pub netns: Option<InNetns>,
}

/// The TLS material of a test cluster, PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// The server certificate (chain).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// CA certificates that client certificates are checked against.
    pub ca_pem: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 100,
            password_encryption: "scram-sha-256",
            extra_conf: Vec::new(),
            tls: None,
            hba: None,
            netns: None,
        }
    }
}

/// The kind of password verifier stored for a role, which decides how the server challenges
/// it: md5 or SCRAM-SHA-256. The pooler must handle both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordMethod {
    /// An md5 hash of password and role name.
    Md5,
    /// A SCRAM-SHA-256 verifier.
    Scram,
}

impl PasswordMethod {
    /// The `password_encryption` value that makes the server store this kind of verifier.
    fn password_encryption(self) -> &'static str {
        match self {
            PasswordMethod::Md5 => "md5",
            PasswordMethod::Scram => "scram-sha-256",
        }
    }
}

/// A running (or deliberately stopped) PostgreSQL cluster owned by one test.
///
/// Dropping it stops the server immediately (like `pg_ctl stop -m immediate`), waits for it to
/// exit and removes its directory.
pub struct PgCluster {
    port: u16,
    /// Where the server listens: loopback, or its network namespace's address.
    host: String,
    /// The network namespace the postmaster runs in, if any.
    netns: Option<String>,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// `None` while the cluster is stopped.
    postmaster: Mutex<Option<Supervised>>,
    /// Holds the data and socket directories; removed when the cluster is dropped.
    root: TempDir,
}

/// A temporary directory owned by the PostgreSQL OS user, with its data and socket paths (the
/// socket directory created).
fn cluster_dirs(prefix: &str) -> anyhow::Result<(TempDir, PathBuf, PathBuf)> {
    let root = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating the cluster directory")?;
    child::give_to(root.path(), OS_USER)?;
    let data_dir = root.path().join("data");
    let socket_dir = root.path().join("socket");
    std::fs::create_dir(&socket_dir).context("creating the socket directory")?;
    child::give_to(&socket_dir, OS_USER)?;
    Ok((root, data_dir, socket_dir))
}

/// Starts the postmaster of `data_dir` on a free port, trying another when one is taken
/// between choosing it and binding it.
async fn launch(
    root: TempDir,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    netns: Option<&InNetns>,
) -> anyhow::Result<PgCluster> {
    let host = netns.map_or_else(|| net::HOST.to_owned(), |n| n.address.to_string());
    let netns = netns.map(|n| n.name.clone());
    let mut attempt = 1;
    let (port, postmaster) = loop {
        let port = net::free_port();
        match start_postmaster(&data_dir, &host, netns.as_deref(), port).await {
            Ok(postmaster) => break (port, postmaster),
            Err(err)
                if attempt < PORT_ATTEMPTS
                    && format!("{err:#}").contains("Address already in use") =>
            {
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    };
    Ok(PgCluster {
        port,
        host,
        netns,
        data_dir,
        socket_dir,
        postmaster: Mutex::new(Some(postmaster)),
        root,
    })
}

impl PgCluster {
    /// Starts a cluster with [`PgOptions::default`].
    pub async fn start() -> anyhow::Result<PgCluster> {
        Self::start_with(PgOptions::default()).await
    }

    /// Initialises and starts a cluster configured with `opts`, returning once it accepts
    /// connections.
    pub async fn start_with(opts: PgOptions) -> anyhow::Result<PgCluster> {
        let (root, data_dir, socket_dir) = cluster_dirs("weir-pg-")?;

        initdb(&data_dir, root.path()).await?;
        configure(&data_dir, &socket_dir, &opts)?;

        launch(root, data_dir, socket_dir, opts.netns.as_ref()).await
    }

    /// Starts a hot standby of `primary`, copied with `pg_basebackup -R` and streaming from
    /// it. The primary's `pg_hba.conf` must let `postgres` replicate from 127.0.0.1.
    pub async fn start_standby_of(primary: &PgCluster) -> anyhow::Result<PgCluster> {
        Self::start_standby_with(primary, &[]).await
    }

    /// [`PgCluster::start_standby_of`] with `extra_conf` lines appended to the copied
    /// configuration before the first start (a standby's own `max_connections`, say).
    pub async fn start_standby_with(
        primary: &PgCluster,
        extra_conf: &[String],
    ) -> anyhow::Result<PgCluster> {
        let (root, data_dir, socket_dir) = cluster_dirs("weir-pg-standby-")?;

        let mut cmd =
            tokio::process::Command::from(child::command(pg_bin("pg_basebackup"), Some(OS_USER)));
        cmd.arg("-D")
            .arg(&data_dir)
            .args([
                "-h",
                net::HOST,
                "-p",
                &primary.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            // A fast checkpoint: the default spreads it over most of checkpoint_timeout, which
            // after a CREATE DATABASE kept a copy waiting for over a minute.
            .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
            .current_dir(root.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(INITDB_TIMEOUT, cmd.output())
            .await
            .context("pg_basebackup timed out")?
            .context("running pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Its own socket directory: the copied configuration names the primary's.
        let conf_path = data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut file| {
                writeln!(file, "unix_socket_directories = '{}'", socket_dir.display())?;
                extra_conf
                    .iter()
                    .try_for_each(|line| writeln!(file, "{line}"))
            })
            .with_context(|| format!("writing {}", conf_path.display()))?;

        launch(root, data_dir, socket_dir, None).await
    }

    /// TCP port the server listens on (on [`PgCluster::host`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Address the server listens on: loopback, or its network namespace's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Directory holding the server's Unix-domain socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory everything of this cluster lives in (data, socket); gone after drop.
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }

    /// Path of the server log, which collects output across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// The server log so far, for assertions and for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Process id of the running postmaster, or `None` while the cluster is stopped.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.lock_postmaster().as_ref().map(Supervised::pid)
    }

    /// A new connection as the superuser `postgres` to database `postgres`.
    pub async fn superuser(&self) -> anyhow::Result<Client> {
        self.connect(SUPERUSER, "", "postgres").await
    }

    /// A new connection straight to the server (bypassing any pooler) as `user`.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> anyhow::Result<Client> {
        net::connect_with(&net::client_config_at(
            &self.host, self.port, user, password, db,
        ))
        .await
    }

    /// Runs `sql` (one or more statements) as the superuser.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.superuser().await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing {sql:?} as superuser"))
    }

    /// Creates login role `name` whose password is stored as a `method` verifier, allowed to
    /// create objects in database `postgres` and its `public` schema (e.g. pgbench tables).
    pub async fn create_role(
        &self,
        name: &str,
        password: &str,
        method: PasswordMethod,
    ) -> anyhow::Result<()> {
        let role = conf::quote_ident(name);
        // password_encryption applies when the password is set, so it must come first.
        self.execute(&format!(
            "SET password_encryption = {encryption};\n\
             CREATE ROLE {role} LOGIN PASSWORD {password};\n\
             GRANT CREATE ON DATABASE postgres TO {role};\n\
             GRANT CREATE ON SCHEMA public TO {role};",
            encryption = conf::quote_literal(method.password_encryption()),
            password = conf::quote_literal(password),
        ))
        .await
        .with_context(|| format!("creating role {name}"))
    }

    /// Creates database `name` owned by role `owner`.
    pub async fn create_database(&self, name: &str, owner: &str) -> anyhow::Result<()> {
        self.execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            conf::quote_ident(name),
            conf::quote_ident(owner)
        ))
        .await
    }

    /// Number of client backends connected as `user` to `database`: how many server
    /// connections a pooler holds for that pool.
    pub async fn backends(&self, user: &str, database: &str) -> anyhow::Result<i64> {
        let client = self.superuser().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND datname = $2 AND backend_type = 'client backend'",
                &[&user, &database],
            )
            .await
            .context("counting backends")?;
        Ok(row.get(0))
    }

    /// Stops the server with a fast shutdown (what `pg_ctl stop -m fast` does: roll back open
    /// transactions, disconnect clients) and waits for it to exit.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let postmaster = self
            .lock_postmaster()
            .take()
            .context("the cluster is not running")?;
        if let Err(err) = postmaster.signal(Signal::SIGINT) {
            bail!("{err:#}; log:\n{}", self.log());
        }
        match postmaster.wait(STOP_TIMEOUT).await {
            Some(exit) if exit.code() == Some(0) => Ok(()),
            Some(exit) => bail!(
                "postgres exited with {exit} on shutdown; log:\n{}",
                self.log()
            ),
            None => {
                stop_immediately(&postmaster);
                bail!(
                    "postgres did not shut down within {STOP_TIMEOUT:?}; log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// Stops the server as `pg_ctl stop -m immediate` does (SIGQUIT: every backend is told
    /// 57P01 and cut off, no checkpoint), as a crashed primary, and waits for it to exit.
    pub async fn stop_immediate(&self) -> anyhow::Result<()> {
        let postmaster = self
            .lock_postmaster()
            .take()
            .context("the cluster is not running")?;
        tokio::task::spawn_blocking(move || stop_immediately(&postmaster))
            .await
            .context("stopping the postmaster")
    }

    /// Promotes a standby to primary (`pg_promote`), waiting until it accepts writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let client = self.superuser().await?;
        let row = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .context("pg_promote")?;
        if !row.get::<_, bool>(0) {
            bail!(
                "pg_promote did not finish; log:
{}",
                self.log()
            );
        }
        Ok(())
    }

    /// Starts a stopped cluster again as a hot standby of `primary` (the old primary of a
    /// switchover coming back): `standby.signal` and a `primary_conninfo` naming `primary`.
    pub async fn start_again_as_standby_of(&self, primary: &PgCluster) -> anyhow::Result<()> {
        let signal = self.data_dir.join("standby.signal");
        std::fs::write(&signal, "").context("writing standby.signal")?;
        child::give_to(&signal, OS_USER)?;
        let conf_path = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut file| {
                writeln!(
                    file,
                    "primary_conninfo = 'host={} port={} user={SUPERUSER}'",
                    net::HOST,
                    primary.port
                )
            })
            .with_context(|| format!("writing {}", conf_path.display()))?;
        self.start_again().await
    }

    /// Starts a stopped cluster again on the same port and waits until it accepts connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        if self.lock_postmaster().is_some() {
            bail!("the cluster is already running");
        }
        let postmaster =
            start_postmaster(&self.data_dir, &self.host, self.netns.as_deref(), self.port).await?;
        *self.lock_postmaster() = Some(postmaster);
        Ok(())
    }

    /// [`PgCluster::stop`] followed by [`PgCluster::start_again`]: every server connection
    /// is closed, as in a database failover or maintenance restart.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// Runs [`psql`] against this cluster directly.
    pub async fn psql(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> anyhow::Result<CommandOutput> {
        psql(self.host(), self.port, user, password, db, sql).await
    }

    /// Runs [`pgbench`] against this cluster directly.
    pub async fn pgbench(
        &self,
        user: &str,
        password: &str,
        db: &str,
        args: &[&str],
    ) -> anyhow::Result<CommandOutput> {
        pgbench(self.host(), self.port, user, password, db, args).await
    }

    fn lock_postmaster(&self) -> MutexGuard<'_, Option<Supervised>> {
        // The slot only ever holds a complete value, so a poisoned lock is still consistent.
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let slot = self
            .postmaster
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(postmaster) = slot.take() {
            stop_immediately(&postmaster);
        }
    }
}

/// Immediate shutdown (SIGQUIT makes the postmaster kill its backends and exit at once),
/// falling back to SIGKILL if it hangs.
fn stop_immediately(postmaster: &Supervised) {
    postmaster.shutdown_blocking(Signal::SIGQUIT, IMMEDIATE_GRACE);
}

/// Runs initdb for `data_dir` as the cluster's OS user.
async fn initdb(data_dir: &Path, cwd: &Path) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::from(child::command(pg_bin("initdb"), Some(OS_USER)));
    // Authentication is replaced by conf::HBA before the first start; trust here only avoids
    // initdb's demand for a superuser password.
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
        .args(["--no-sync", "--no-instructions"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(INITDB_TIMEOUT, cmd.output())
        .await
        .context("initdb timed out")?
        .context("running initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Writes the test settings and authentication rules into a fresh data directory.
fn configure(data_dir: &Path, socket_dir: &Path, opts: &PgOptions) -> anyhow::Result<()> {
    let conf_path = data_dir.join("postgresql.conf");
    OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .and_then(|mut file| file.write_all(conf::settings(opts, socket_dir).as_bytes()))
        .with_context(|| format!("writing {}", conf_path.display()))?;
    if let Some(tls) = &opts.tls {
        let files = [
            (conf::SSL_CERT_FILE, Some(&tls.cert_pem)),
            (conf::SSL_KEY_FILE, Some(&tls.key_pem)),
            (conf::SSL_CA_FILE, tls.ca_pem.as_ref()),
        ];
        for (name, pem) in files {
            let Some(pem) = pem else { continue };
            let path = data_dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            // PostgreSQL refuses a key file others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod {}", path.display()))?;
            child::give_to(&path, OS_USER)?;
        }
    }
    let hba_path = data_dir.join("pg_hba.conf");
    let hba = conf::hba(opts);
    std::fs::write(&hba_path, hba).with_context(|| format!("writing {}", hba_path.display()))
}

/// Spawns the postmaster for `data_dir` on `host`:`port` (inside network namespace `netns`
/// when given), appending its output to the log, and waits until it accepts connections; on
/// failure the error carries what it logged.
async fn start_postmaster(
    data_dir: &Path,
    host: &str,
    netns: Option<&str>,
    port: u16,
) -> anyhow::Result<Supervised> {
    let log_path = data_dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = child::command_in(netns, pg_bin("postgres"), Some(OS_USER));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-p", &port.to_string()])
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    let postmaster = Supervised::spawn(cmd)?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(exit) = postmaster.exit() {
            bail!(
                "postgres exited during start-up ({exit}); log:\n{}",
                read_from(&log_path, log_start)
            );
        }
        let mut config = net::client_config_at(host, port, SUPERUSER, "", "postgres");
        config.connect_timeout(Duration::from_secs(2));
        let err = match net::connect_with(&config).await {
            Ok(_client) => return Ok(postmaster),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            stop_immediately(&postmaster);
            bail!(
                "postgres did not accept connections on port {port} within {START_TIMEOUT:?} \
                 (last error: {err:#}); log:\n{}",
                read_from(&log_path, log_start)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The part of the log written since byte `offset`: what one start attempt logged.
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}
