//! A ready pair for pooler tests: a PostgreSQL cluster with an application role and database,
//! and a `weir` process in front of it configured for the test at hand.

use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::net;
use crate::postgres::{self, CommandOutput, PasswordMethod, PgCluster, PgOptions};
use crate::weir::WeirProcess;

/// The application role every fixture creates.
pub const USER: &str = "app";
/// Its password.
pub const PASSWORD: &str = "app-secret";
/// The application database.
pub const DATABASE: &str = "app";

/// How a fixture's pooler is configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// `pool_mode`.
    pub pool_mode: &'static str,
    /// `default_pool_size`.
    pub pool_size: u32,
    /// `auth_type`.
    pub auth_type: &'static str,
    /// Extra `key = value` lines for `[pgbouncer]`.
    pub settings: Vec<String>,
    /// Extra `key=value` words for the database's connection string.
    pub database_options: String,
    /// The auth file's text; `None` gives the application user its plain password.
    pub userlist: Option<String>,
    /// How PostgreSQL stores the application role's password.
    pub server_password: PasswordMethod,
    /// PostgreSQL settings.
    pub postgres: PgOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_mode: "transaction",
            pool_size: 5,
            auth_type: "scram-sha-256",
            settings: Vec::new(),
            database_options: String::new(),
            userlist: None,
            server_password: PasswordMethod::Scram,
            postgres: PgOptions::default(),
        }
    }
}

impl Options {
    /// Options with `pool_mode` and `default_pool_size` set.
    pub fn mode(pool_mode: &'static str, pool_size: u32) -> Options {
        Options {
            pool_mode,
            pool_size,
            ..Options::default()
        }
    }

    /// Adds a `[pgbouncer]` setting.
    pub fn with(mut self, line: &str) -> Options {
        self.settings.push(line.to_owned());
        self
    }
}

/// PostgreSQL plus weir, torn down on drop.
pub struct Fixture {
    /// The cluster.
    pub pg: PgCluster,
    /// The pooler; `None` only while a test restarts it.
    pub weir: WeirProcess,
}

impl Fixture {
    /// Starts PostgreSQL, creates the application role and database, and starts weir.
    pub async fn start(opts: Options) -> anyhow::Result<Fixture> {
        let pg = PgCluster::start_with(opts.postgres.clone()).await?;
        pg.create_role(USER, PASSWORD, opts.server_password).await?;
        pg.create_database(DATABASE, USER).await?;
        let weir = Self::start_weir(&pg, &opts).await?;
        Ok(Fixture { pg, weir })
    }

    /// Starts a weir for `pg` configured by `opts`.
    pub async fn start_weir(pg: &PgCluster, opts: &Options) -> anyhow::Result<WeirProcess> {
        let userlist = opts
            .userlist
            .clone()
            .unwrap_or_else(|| format!("\"{USER}\" \"{PASSWORD}\"\n"));
        WeirProcess::start(&ini(pg, opts), &userlist).await
    }

    /// A tokio-postgres client connected through weir as the application user.
    pub async fn client(&self) -> anyhow::Result<Client> {
        net::connect(self.weir.port(), USER, PASSWORD, DATABASE)
            .await
            .with_context(|| format!("connecting through weir; its log:\n{}", self.weir.log()))
    }

    /// A client through weir with `application_name` set.
    pub async fn client_named(&self, application_name: &str) -> anyhow::Result<Client> {
        let mut config = net::client_config(self.weir.port(), USER, PASSWORD, DATABASE);
        config.application_name(application_name);
        net::connect_with(&config).await
    }

    /// Server connections weir holds for the application pool right now.
    pub async fn server_connections(&self) -> anyhow::Result<i64> {
        self.pg.backends(USER, DATABASE).await
    }

    /// The pid of the application's backend running a statement that starts with `prefix`,
    /// once PostgreSQL shows it as active (waiting at most `limit`).
    pub async fn active_backend(&self, prefix: &str, limit: Duration) -> i32 {
        let su = self.pg.superuser().await.expect("superuser connection");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let row = su
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE usename = $1 AND state = 'active' AND starts_with(query, $2)",
                    &[&USER, &prefix],
                )
                .await
                .expect("reading pg_stat_activity");
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no backend is running {prefix}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs psql through weir.
    pub async fn psql(&self, sql: &str) -> anyhow::Result<CommandOutput> {
        postgres::psql(net::HOST, self.weir.port(), USER, PASSWORD, DATABASE, sql).await
    }

    /// Runs pgbench through weir.
    pub async fn pgbench(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        postgres::pgbench(net::HOST, self.weir.port(), USER, PASSWORD, DATABASE, args).await
    }

    /// Runs pgbench straight against PostgreSQL (e.g. `-i` to create its tables).
    pub async fn pgbench_direct(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        postgres::pgbench(net::HOST, self.pg.port(), USER, PASSWORD, DATABASE, args).await
    }

    /// Polls `check` every 100 ms until it returns true or `limit` passes.
    pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if check().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The pooler configuration for `pg` and `opts`.
pub fn ini(pg: &PgCluster, opts: &Options) -> String {
    let mut text = format!(
        "[databases]\n\
         {DATABASE} = host={host} port={port} dbname={DATABASE} {extra}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir =\n\
         auth_type = {auth}\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = {mode}\n\
         default_pool_size = {size}\n\
         max_client_conn = 2000\n\
         server_login_retry = 1\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        host = pg.host(),
        port = pg.port(),
        extra = opts.database_options,
        auth = opts.auth_type,
        mode = opts.pool_mode,
        size = opts.pool_size,
    );
    for line in &opts.settings {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The first column of the first row `sql` returns, as text (`NULL` for a null); panics when
/// the query fails or returns no row.
pub async fn scalar(client: &Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.expect(sql);
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

/// The process id of the server backend that answers `client`'s next statement: a simple
/// query, which is one transaction (an extended-protocol query is two, a Parse and then a
/// Bind, which a pooler in transaction mode may send to two connections).
pub async fn backend_pid(client: &Client) -> i32 {
    let pid = scalar(client, "SELECT pg_backend_pid()").await;
    pid.parse().expect("a process id")
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pooler) sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.as_db_error().map(|e| e.code().code())
}
