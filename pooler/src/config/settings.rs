//! The `[pgbouncer]` section: every global setting weir reads, with PgBouncer's names and
//! defaults, plus the few Weir extensions.
//!
//! One table ([`Settings::KEYS`], built by `settings_table!`) ties each key to its field and
//! value codec; parsing, rendering, `get`/`set` and the round-trip check all go through
//! it, so a setting cannot be readable but not writable or the other way round.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ValueError;
use super::values;

/// When a server connection goes back to the pool for other clients to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// After the client disconnects: the client keeps one server session throughout.
    #[default]
    Session,
    /// After each transaction: many clients share few server connections.
    Transaction,
    /// After each statement: multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    /// The configuration spelling (`session`, `transaction`, `statement`).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolMode {
    type Err = ValueError;

    /// Case-insensitive, as in PgBouncer.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            "statement" => Ok(PoolMode::Statement),
            _ => Err(ValueError::expected(
                "a pool mode (session, transaction or statement)",
                s,
            )),
        }
    }
}

/// How clients prove who they are. These are the `auth_type` values weir implements;
/// PgBouncer's `ldap` and `pam` are rejected with an error that says so,
/// because silently authenticating differently would be a security hole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthType {
    /// No password check; the user name must still be known (auth file or `auth_query`).
    #[serde(rename = "trust")]
    Trust,
    /// Clear-text password over the wire (deprecated, as in PgBouncer).
    #[serde(rename = "plain")]
    Plain,
    /// MD5 password check; users with a SCRAM secret are asked for SCRAM instead.
    /// PgBouncer's default.
    #[default]
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256 password check.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Like `trust`, and the user name is not checked at all; every database must then set
    /// a fixed `user=` to log in as.
    #[serde(rename = "any")]
    Any,
    /// The client's TLS certificate, verified against `client_tls_ca_file`, names the user
    /// in its common name (CN).
    #[serde(rename = "cert")]
    Cert,
    /// The first matching rule of `auth_hba_file` (pg_hba.conf syntax) picks the method.
    #[serde(rename = "hba")]
    Hba,
}

impl AuthType {
    /// The configuration spelling (`trust`, `plain`, `md5`, `scram-sha-256`, `any`, `cert`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::Plain => "plain",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Any => "any",
            AuthType::Cert => "cert",
            AuthType::Hba => "hba",
        }
    }

    /// Whether this method looks users up (in `auth_file` or through `auth_query`); only
    /// `any` does not.
    pub fn needs_users(self) -> bool {
        !matches!(self, AuthType::Any)
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthType {
    type Err = ValueError;

    /// Case-insensitive. PgBouncer methods weir lacks get an error naming them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const SUPPORTED: &str = "trust, plain, md5, scram-sha-256, cert, hba or any";
        match s.to_ascii_lowercase().as_str() {
            "trust" => Ok(AuthType::Trust),
            "plain" => Ok(AuthType::Plain),
            "md5" => Ok(AuthType::Md5),
            "scram-sha-256" => Ok(AuthType::ScramSha256),
            "any" => Ok(AuthType::Any),
            "cert" => Ok(AuthType::Cert),
            "hba" => Ok(AuthType::Hba),
            "ldap" | "pam" => Err(ValueError(format!(
                "auth_type {s:?} is not supported by weir; use {SUPPORTED}"
            ))),
            _ => Err(ValueError::expected(
                &format!("an authentication type ({SUPPORTED})"),
                s,
            )),
        }
    }
}

/// What transaction and statement pooling do when a client changes session state that
/// weir cannot carry over to another server connection (a Weir extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// Keep the client on its server connection until it disconnects, trading pool
    /// efficiency for correctness.
    #[default]
    Pin,
    /// Refuse the statement with an error, keeping the pool shared.
    Refuse,
}

impl Pinning {
    /// The configuration spelling (`pin`, `refuse`).
    pub fn as_str(self) -> &'static str {
        match self {
            Pinning::Pin => "pin",
            Pinning::Refuse => "refuse",
        }
    }
}

impl fmt::Display for Pinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pinning {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pin" => Ok(Pinning::Pin),
            "refuse" => Ok(Pinning::Refuse),
            _ => Err(ValueError::expected("pin or refuse", s)),
        }
    }
}

/// How much TLS a connection needs, in libpq's `sslmode` words, as PgBouncer's
/// `client_tls_sslmode` and `server_tls_sslmode` use them. Ordered from least to most strict.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never TLS.
    #[default]
    Disable,
    /// Plain first; TLS when the other side insists.
    Allow,
    /// TLS when the other side offers it.
    Prefer,
    /// TLS or nothing; the certificate is checked only against a configured CA.
    Require,
    /// TLS with a certificate signed by the configured CA.
    VerifyCa,
    /// As `verify-ca`; toward servers the host name must match the certificate too.
    VerifyFull,
}

impl TlsMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsMode {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Ok(TlsMode::Disable),
            "allow" => Ok(TlsMode::Allow),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(ValueError::expected(
                "an sslmode (disable, allow, prefer, require, verify-ca or verify-full)",
                s,
            )),
        }
    }
}

/// Whether a password may be sent in clear text to a server over a connection without TLS
/// (a Weir extension: PostgreSQL's `password` method asks for exactly that).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleartextPassword {
    /// Refuse: the login fails with an error that says why.
    #[default]
    Refuse,
    /// Send it.
    Allow,
}

impl fmt::Display for CleartextPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CleartextPassword::Refuse => "refuse",
            CleartextPassword::Allow => "allow",
        })
    }
}

impl FromStr for CleartextPassword {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "refuse" => Ok(CleartextPassword::Refuse),
            "allow" => Ok(CleartextPassword::Allow),
            _ => Err(ValueError::expected("allow or refuse", s)),
        }
    }
}

/// Whether the pooler binds its SCRAM logins to the TLS connection toward servers
/// (SCRAM-SHA-256-PLUS), with the meanings of libpq's `channel_binding` (a Weir extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBindingMode {
    /// Never bind, even when the server offers it.
    Disable,
    /// Bind when the connection is encrypted and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Log in only with SCRAM-SHA-256-PLUS; any other method fails the login.
    Require,
}

impl fmt::Display for ChannelBindingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        })
    }
}

impl FromStr for ChannelBindingMode {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Ok(ChannelBindingMode::Disable),
            "prefer" => Ok(ChannelBindingMode::Prefer),
            "require" => Ok(ChannelBindingMode::Require),
            _ => Err(ValueError::expected("disable, prefer or require", s)),
        }
    }
}

/// The query PgBouncer runs by default to look up a user's password (`auth_query`).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL \
                                      ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND \
                                      rolcanlogin";

/// The `[pgbouncer]` section. Field names are the setting names; `Default` gives
/// PgBouncer's documented defaults. Time settings hold a [`Duration`], where zero means
/// "disabled" wherever PgBouncer says 0 disables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    // --- generic ---
    /// Log file to append to. Unset: log to stderr only.
    pub logfile: Option<PathBuf>,
    /// File to write the process id to. Unset: none.
    pub pidfile: Option<PathBuf>,
    /// Comma-separated TCP addresses to listen on; `*` means every address. Empty (the
    /// default): no TCP listener, only the Unix socket. See [`Settings::listen_addrs`].
    pub listen_addr: String,
    /// Port for TCP, also used in the Unix socket's name (`.s.PGSQL.<port>`). Default 6432.
    pub listen_port: u16,
    /// Directory for the Unix socket, and where `host=/...` server sockets are looked up.
    /// Empty disables the Unix socket. Default `/tmp`.
    pub unix_socket_dir: String,
    /// Permission bits of the Unix socket (octal in the file). Default `0777`.
    pub unix_socket_mode: u32,
    /// Group (name or number) the Unix socket is given to. Unset: the process's group.
    pub unix_socket_group: Option<String>,
    /// OS user to switch to after reading the configuration, before listening, as
    /// PgBouncer does. Unset: stay the user weir was started as.
    pub user: Option<String>,
    /// Default pooling mode for every database and user. Default `session`.
    pub pool_mode: PoolMode,
    /// Most client connections accepted at once. Default 100.
    pub max_client_conn: u32,
    /// Server connections per (database, user) pool unless `pool_size` overrides it.
    /// Default 20.
    pub default_pool_size: u32,
    /// Server connections each pool keeps open even when idle. 0 (default) disables.
    pub min_pool_size: u32,
    /// Extra server connections a pool may open when clients wait longer than
    /// `reserve_pool_timeout`. 0 (default) disables.
    pub reserve_pool_size: u32,
    /// How long a client waits before the reserve pool is used. Default 5 s; 0 disables.
    pub reserve_pool_timeout: Duration,
    /// Most server connections per database, over all its pools. 0 (default): unlimited.
    pub max_db_connections: u32,
    /// Most server connections per user, over all its pools. 0 (default): unlimited.
    pub max_user_connections: u32,
    /// Most client connections per database, admin console excepted. 0 (default):
    /// unlimited.
    pub max_db_client_connections: u32,
    /// Most client connections per user, admin console excepted. 0 (default): unlimited.
    pub max_user_client_connections: u32,
    /// Hand out idle server connections round-robin instead of most-recently-used first,
    /// for databases behind a load balancer. Default off.
    pub server_round_robin: bool,
    /// Startup parameters, beyond the built-in ones, that are tracked per client and
    /// restored on whatever server connection it gets. Default `IntervalStyle`.
    pub track_extra_parameters: Vec<String>,
    /// Startup parameters that are accepted from clients and then ignored, instead of
    /// being refused. Default empty.
    pub ignore_startup_parameters: Vec<String>,
    /// Refuse the simple query protocol (several statements in one message), as a defence
    /// against SQL injection: a Query message closes the connection with `08P01`
    /// "PQexec disallowed". Default off.
    pub disable_pqexec: bool,
    /// Append the client's address and port to `application_name` at connect. Default off.
    pub application_name_add_host: bool,
    /// How often averaged statistics are computed and logged. Default 60 s.
    pub stats_period: Duration,
    /// Log the averaged statistics every `stats_period` (PgBouncer's "stats: ..." line).
    /// Default on.
    pub log_stats: bool,
    /// How long a cancel request may wait to be forwarded to the server before it is
    /// dropped; 0 waits as long as it takes. Default 10 s.
    pub cancel_wait_timeout: Duration,
    /// PBKDF2 rounds of the SCRAM verifiers weir derives from plain passwords. Default 4096.
    pub scram_iterations: u32,
    /// Protocol-level prepared statements tracked per server connection in transaction and
    /// statement pooling; 0 disables the tracking. Default 200.
    pub max_prepared_statements: u32,

    // --- authentication ---
    /// How clients authenticate. Default `md5`.
    pub auth_type: AuthType,
    /// File with user names and passwords or secrets (userlist.txt). A relative path is
    /// taken relative to the directory of the configuration file by [`Config::load`].
    ///
    /// [`Config::load`]: crate::config::Config::load
    pub auth_file: Option<PathBuf>,
    /// The pg_hba.conf-style rules of `auth_type = hba`. Unset or unreadable: no rule
    /// matches, so every client is refused (as in PgBouncer).
    pub auth_hba_file: Option<PathBuf>,
    /// User name maps (`map=`) for the `peer` and `cert` rules of `auth_hba_file`.
    pub auth_ident_file: Option<PathBuf>,
    /// User that runs `auth_query` for users missing from `auth_file` (its own password
    /// comes from `auth_file`).
    pub auth_user: Option<String>,
    /// Query returning (user name, password or secret) for `$1`; run as `auth_user` with
    /// the user name bound as a parameter. Default: a lookup in `pg_authid`.
    pub auth_query: String,
    /// The `[databases]` entry `auth_query` runs in. Unset: the database the client asked for.
    pub auth_dbname: Option<String>,
    /// Weir extension: how long a secret `auth_query` returned (or its finding that the user
    /// does not exist) is reused before the query runs again; 0 runs it on every login.
    /// Default 60 s.
    pub auth_query_cache_ttl: Duration,
    /// Weir extension: how long a user's previous `auth_file` secret still logs clients in
    /// after a reload changed it, so that a password can be rotated without refusing anyone.
    /// 0 (default) accepts only the new secret, as PgBouncer does.
    pub auth_rotation_grace: Duration,

    // --- logging ---
    /// Log successful logins. Default on.
    pub log_connections: bool,
    /// Log disconnections with their reason. Default on.
    pub log_disconnections: bool,
    /// Log the error messages the pooler sends to clients ("pooler error: ..."). Default on.
    pub log_pooler_errors: bool,
    /// Extra log verbosity, 0 to 3. Default 0.
    pub verbose: u32,

    // --- admin console ---
    /// Users allowed to run every admin console command. Default empty.
    pub admin_users: Vec<String>,
    /// Users allowed the read-only (`SHOW`) admin console commands. Default empty.
    pub stats_users: Vec<String>,

    // --- connection sanity checks and timeouts ---
    /// Query run on a server connection before another client may use it, in session
    /// pooling (in every mode with `server_reset_query_always`). Empty: none. Default
    /// `DISCARD ALL`.
    pub server_reset_query: String,
    /// Run `server_reset_query` in every pooling mode, not only session. Default off.
    pub server_reset_query_always: bool,
    /// How long a released server connection may be reused without running
    /// `server_check_query`; 0 checks every time. Default 30 s.
    pub server_check_delay: Duration,
    /// Query that checks a server connection is alive. Empty disables the check; the
    /// literal `<empty>` (the default) sends an empty query.
    pub server_check_query: String,
    /// Unused server connections older than this are closed; 0 closes each after one use.
    /// Default 3600 s.
    pub server_lifetime: Duration,
    /// Server connections idle longer than this are closed; 0 disables. Default 600 s.
    pub server_idle_timeout: Duration,
    /// Longest a server connection and login may take. Default 15 s.
    pub server_connect_timeout: Duration,
    /// After a failed server login, how long to wait before trying again, failing new
    /// clients at once meanwhile. Default 15 s.
    pub server_login_retry: Duration,
    /// Clients that have not logged in within this are disconnected. Default 60 s.
    pub client_login_timeout: Duration,
    /// Queries running longer than this are cancelled; 0 (default) disables.
    pub query_timeout: Duration,
    /// Clients waiting longer than this for a server connection are disconnected;
    /// 0 disables. Default 120 s.
    pub query_wait_timeout: Duration,
    /// Clients idle longer than this are disconnected; 0 (default) disables.
    pub client_idle_timeout: Duration,
    /// Clients idle inside a transaction longer than this are disconnected; 0 (default)
    /// disables.
    pub idle_transaction_timeout: Duration,

    // --- low-level network ---
    /// The most of a client's input read ahead while the client waits for a server
    /// connection, in bytes; the rest stays in the socket (backpressure). Default 4096.
    pub pkt_buf: u32,
    /// Largest protocol message allowed through, in bytes. Default 2147483647.
    pub max_packet_size: u32,
    /// Set `SO_REUSEPORT` on TCP listeners so several processes can share a port.
    /// Default off.
    pub so_reuseport: bool,
    /// Enable TCP keepalive on client and server sockets. Default on.
    pub tcp_keepalive: bool,
    /// Keepalive probes before the connection is dropped; 0: the OS default (9 on Linux).
    /// Default 6. Weir's keepalive defaults (PgBouncer's leave all three to the OS, which
    /// notices a dead peer only after 2 h 11 min) find a dead peer within about 2 minutes.
    pub tcp_keepcnt: u32,
    /// Idle time before the first keepalive probe; 0: the OS default (7200 s on Linux).
    /// Default 60 s.
    pub tcp_keepidle: Duration,
    /// Time between keepalive probes; 0: the OS default (75 s on Linux). Default 10 s.
    pub tcp_keepintvl: Duration,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged. A bare number
    /// counts milliseconds, as in PgBouncer; 0: the OS default (Linux retransmits for about
    /// 15 minutes). Default 120 s, the keepalive defaults' time: a peer that vanishes with data
    /// in flight, where keepalive does not probe, is given up as soon as an idle one.
    pub tcp_user_timeout: Duration,
    /// `SO_SNDBUF` and `SO_RCVBUF` of client and server sockets; 0 leaves the kernel's.
    pub tcp_socket_buffer: u32,
    /// `TCP_DEFER_ACCEPT` (45 s, as PgBouncer sets it) on the TCP listeners: a client is
    /// accepted once it has sent data. Default on.
    pub tcp_defer_accept: bool,

    // --- TLS ---
    /// TLS toward clients: `disable` (default) answers SSLRequest with `N`; `allow` and
    /// `prefer` accept TLS; `require` refuses TCP clients without it; `verify-ca` and
    /// `verify-full` also require a client certificate signed by `client_tls_ca_file`.
    pub client_tls_sslmode: TlsMode,
    /// Private key (PEM) of the certificate shown to clients.
    pub client_tls_key_file: Option<PathBuf>,
    /// Certificate chain (PEM) shown to clients.
    pub client_tls_cert_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are checked against.
    pub client_tls_ca_file: Option<PathBuf>,
    /// TLS versions offered to clients: `secure` (default: TLS 1.2 and 1.3), `all`, or a
    /// comma list of `tlsv1.2`, `tlsv1.3`.
    pub client_tls_protocols: String,
    /// PgBouncer's OpenSSL cipher list; rustls always uses its own safe suites, and an
    /// explicit list is warned about. Default `fast`.
    pub client_tls_ciphers: String,
    /// TLS toward servers, as libpq's `sslmode`. Default `prefer`.
    pub server_tls_sslmode: TlsMode,
    /// CA certificates (PEM) server certificates are checked against; when set, every mode
    /// that uses TLS checks the chain, as libpq does with a root certificate.
    pub server_tls_ca_file: Option<PathBuf>,
    /// Private key (PEM) of the client certificate presented to servers.
    pub server_tls_key_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to servers.
    pub server_tls_cert_file: Option<PathBuf>,
    /// TLS versions used toward servers, as `client_tls_protocols`. Default `secure`.
    pub server_tls_protocols: String,
    /// As `client_tls_ciphers`, toward servers. Default `fast`.
    pub server_tls_ciphers: String,
    /// Weir extension: whether a clear-text password may be sent to a server over a
    /// connection without TLS (`allow`), or the login fails (`refuse`, the default).
    pub server_cleartext_password: CleartextPassword,
    /// Weir extension: SCRAM channel binding toward servers, as libpq's `channel_binding`
    /// (`disable`, `prefer`, the default, or `require`).
    pub server_channel_binding: ChannelBindingMode,

    // --- Weir extensions ---
    /// Weir extension: address of the HTTP endpoint (metrics, health, readiness).
    /// Default `0.0.0.0`.
    pub http_listen_addr: String,
    /// Weir extension: port of the HTTP endpoint; 0 (default) turns it off.
    pub http_port: u16,
    /// Weir extension: how long a SIGTERM drain may wait for running transactions before
    /// the remaining connections are closed; 0 waits without a limit. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Weir extension: what transaction and statement pooling do with session state that
    /// cannot be replayed on another server connection. Default `pin`.
    pub pinning: Pinning,
    /// Weir extension: whether a pool that needs a primary (`target_session_attrs` =
    /// `read-write` or `primary`, or any host list) holds its transaction-mode clients, up to
    /// `query_wait_timeout`, while it looks for a new primary after the old one went away or
    /// turned read-only. Default on.
    pub failover_hold: bool,
    /// Weir extension: the most replay lag a standby may have and still get new server
    /// connections, in pools that accept standbys; one that lags more is taken out until it
    /// catches up. 0 (default) turns the bound off.
    pub replica_max_lag: Duration,
    /// Weir extension: the audience a ServiceAccount token must be issued for (TokenReview
    /// checks it). Default `weir`.
    pub service_account_audience: String,
    /// Weir extension: how long a token the API server accepted is trusted without asking
    /// again (never past the token's own expiry); 0 asks on every login. Default 60 s.
    pub service_account_cache_ttl: Duration,
    /// Weir extension: how many token verdicts are cached at most. Default 1000.
    pub service_account_cache_size: u32,
    /// This process's id in a group of peered poolers (`[peers]`); 0: peering off. Cancel
    /// keys carry it, and a CancelRequest for another peer's key is forwarded there.
    pub peer_id: u16,
    /// Weir extension: the threads that run clients and server connections; 0 (default):
    /// one per CPU the process may use (its cgroup's quota and CPU affinity), or
    /// `TOKIO_WORKER_THREADS` when that is set. One runs everything on a single thread
    /// without a work-stealing scheduler. Needs a restart.
    pub worker_threads: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            logfile: None,
            pidfile: None,
            listen_addr: String::new(),
            listen_port: 6432,
            unix_socket_dir: "/tmp".to_owned(),
            unix_socket_mode: 0o777,
            unix_socket_group: None,
            user: None,
            pool_mode: PoolMode::Session,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            server_round_robin: false,
            track_extra_parameters: vec!["IntervalStyle".to_owned()],
            ignore_startup_parameters: Vec::new(),
            disable_pqexec: false,
            application_name_add_host: false,
            stats_period: Duration::from_secs(60),
            log_stats: true,
            cancel_wait_timeout: Duration::from_secs(10),
            scram_iterations: 4096,
            max_prepared_statements: 200,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_ident_file: None,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.to_owned(),
            auth_dbname: None,
            auth_query_cache_ttl: Duration::from_secs(60),
            auth_rotation_grace: Duration::ZERO,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            verbose: 0,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            server_reset_query: "DISCARD ALL".to_owned(),
            server_reset_query_always: false,
            server_check_delay: Duration::from_secs(30),
            server_check_query: "<empty>".to_owned(),
            server_lifetime: Duration::from_secs(3600),
            server_idle_timeout: Duration::from_secs(600),
            server_connect_timeout: Duration::from_secs(15),
            server_login_retry: Duration::from_secs(15),
            client_login_timeout: Duration::from_secs(60),
            query_timeout: Duration::ZERO,
            query_wait_timeout: Duration::from_secs(120),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            pkt_buf: 4096,
            max_packet_size: 2_147_483_647,
            so_reuseport: false,
            tcp_keepalive: true,
            tcp_keepcnt: 6,
            tcp_keepidle: Duration::from_secs(60),
            tcp_keepintvl: Duration::from_secs(10),
            tcp_user_timeout: Duration::from_secs(120),
            tcp_socket_buffer: 0,
            tcp_defer_accept: true,
            http_listen_addr: "0.0.0.0".to_owned(),
            http_port: 0,
            shutdown_timeout: Duration::from_secs(30),
            pinning: Pinning::Pin,
            failover_hold: true,
            replica_max_lag: Duration::ZERO,
            service_account_audience: "weir".to_owned(),
            service_account_cache_ttl: Duration::from_secs(60),
            service_account_cache_size: 1000,
            peer_id: 0,
            worker_threads: 0,
            client_tls_sslmode: TlsMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".to_owned(),
            client_tls_ciphers: "fast".to_owned(),
            server_tls_sslmode: TlsMode::Prefer,
            server_tls_ca_file: None,
            server_tls_key_file: None,
            server_tls_cert_file: None,
            server_tls_protocols: "secure".to_owned(),
            server_tls_ciphers: "fast".to_owned(),
            server_cleartext_password: CleartextPassword::Refuse,
            server_channel_binding: ChannelBindingMode::Prefer,
        }
    }
}

/// Whether weir acts on a `[pgbouncer]` key it parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The setting takes effect.
    Implemented,
    /// The setting is parsed and checked but has no effect: weir behaves as with the default
    /// value, and warns when the file sets another. The text says what is missing.
    Ignored(&'static str),
}

/// Generates the key table and the per-key parse/render dispatch from one list of
/// `field: codec => implemented` or `field: codec => ignored("why")` rows, so that every key
/// says whether it has an effect.
macro_rules! settings_table {
    (@support implemented) => { Support::Implemented };
    (@support ignored $why:literal) => { Support::Ignored($why) };
    ($($field:ident: $codec:ident => $support:ident $(($why:literal))?),* $(,)?) => {
        impl Settings {
            /// Every `[pgbouncer]` key weir reads, in the order [`Config::to_ini`] writes
            /// them.
            ///
            /// [`Config::to_ini`]: crate::config::Config::to_ini
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Whether weir acts on setting `key` (lower-case); `None` when weir has no
            /// such setting.
            pub fn support(key: &str) -> Option<Support> {
                match key {
                    $(stringify!($field) => Some(settings_table!(@support $support $($why)?)),)*
                    _ => None,
                }
            }

            /// Parses `value` into the field named `key` (lower-case); `None` when weir has
            /// no such setting.
            pub(crate) fn apply(&mut self, key: &str, value: &str)
                -> Option<Result<(), ValueError>>
            {
                match key {
                    $(stringify!($field) => Some(
                        values::$codec::parse(value).map(|v| self.$field = v)
                    ),)*
                    _ => None,
                }
            }

            /// The field named `key` as file text: `None` when weir has no such setting,
            /// `Some(None)` when it is an unset optional value.
            pub(crate) fn render_value(&self, key: &str) -> Option<Option<String>> {
                match key {
                    $(stringify!($field) => Some(values::$codec::render(&self.$field)),)*
                    _ => None,
                }
            }
        }
    };
}

settings_table! {
    logfile: opt_path => implemented,
    pidfile: opt_path => implemented,
    listen_addr: text => implemented,
    listen_port: number_port => implemented,
    unix_socket_dir: text => implemented,
    unix_socket_mode: mode => implemented,
    unix_socket_group: opt_text => implemented,
    user: opt_text => implemented,
    pool_mode: choice => implemented,
    max_client_conn: number => implemented,
    default_pool_size: number => implemented,
    min_pool_size: number => implemented,
    reserve_pool_size: number => implemented,
    reserve_pool_timeout: seconds => implemented,
    max_db_connections: number => implemented,
    max_user_connections: number => implemented,
    max_db_client_connections: number => implemented,
    max_user_client_connections: number => implemented,
    server_round_robin: flag => implemented,
    track_extra_parameters: list => implemented,
    ignore_startup_parameters: list => implemented,
    disable_pqexec: flag => implemented,
    application_name_add_host: flag => implemented,
    stats_period: seconds => implemented,
    log_stats: flag => implemented,
    cancel_wait_timeout: seconds => implemented,
    scram_iterations: number => implemented,
    max_prepared_statements: number => implemented,
    auth_type: choice => implemented,
    auth_file: opt_path => implemented,
    auth_hba_file: opt_path => implemented,
    auth_ident_file: opt_path => implemented,
    auth_user: opt_text => implemented,
    auth_query: text => implemented,
    auth_dbname: opt_text => implemented,
    auth_query_cache_ttl: seconds => implemented,
    auth_rotation_grace: seconds => implemented,
    log_connections: flag => implemented,
    log_disconnections: flag => implemented,
    log_pooler_errors: flag => implemented,
    verbose: number => implemented,
    admin_users: list => implemented,
    stats_users: list => implemented,
    server_reset_query: text => implemented,
    server_reset_query_always: flag => implemented,
    server_check_delay: seconds => implemented,
    server_check_query: text => implemented,
    server_lifetime: seconds => implemented,
    server_idle_timeout: seconds => implemented,
    server_connect_timeout: seconds => implemented,
    server_login_retry: seconds => implemented,
    client_login_timeout: seconds => implemented,
    query_timeout: seconds => implemented,
    query_wait_timeout: seconds => implemented,
    client_idle_timeout: seconds => implemented,
    idle_transaction_timeout: seconds => implemented,
    pkt_buf: number => implemented,
    max_packet_size: number => implemented,
    so_reuseport: flag => implemented,
    tcp_keepalive: flag => implemented,
    tcp_keepcnt: number => implemented,
    tcp_keepidle: seconds => implemented,
    tcp_keepintvl: seconds => implemented,
    tcp_user_timeout: millis => implemented,
    tcp_socket_buffer: number => implemented,
    tcp_defer_accept: flag => implemented,
    client_tls_sslmode: choice => implemented,
    client_tls_key_file: opt_path => implemented,
    client_tls_cert_file: opt_path => implemented,
    client_tls_ca_file: opt_path => implemented,
    client_tls_protocols: text => implemented,
    client_tls_ciphers: text => implemented,
    server_tls_sslmode: choice => implemented,
    server_tls_ca_file: opt_path => implemented,
    server_tls_key_file: opt_path => implemented,
    server_tls_cert_file: opt_path => implemented,
    server_tls_protocols: text => implemented,
    server_tls_ciphers: text => implemented,
    server_cleartext_password: choice => implemented,
    server_channel_binding: choice => implemented,
    http_listen_addr: text => implemented,
    http_port: number_port => implemented,
    shutdown_timeout: seconds => implemented,
    pinning: choice => implemented,
    failover_hold: flag => implemented,
    replica_max_lag: seconds => implemented,
    service_account_audience: text => implemented,
    service_account_cache_ttl: seconds => implemented,
    service_account_cache_size: number => implemented,
    peer_id: peer_id => implemented,
    worker_threads: number => implemented,
}

/// `[pgbouncer]` keys that PgBouncer knows and weir does not implement. They produce a
/// warning instead of the "unknown setting" one, so that an existing pgbouncer.ini loads
/// and the operator learns precisely what is ignored.
pub const UNSUPPORTED_KEYS: &[&str] = &[
    "auth_ldap_options",
    "autodb_idle_timeout",
    "client_tls13_ciphers",
    "client_tls_dheparams",
    "client_tls_ecdhcurve",
    "conffile",
    "dns_max_ttl",
    "dns_nxdomain_ttl",
    "dns_zone_check_period",
    "job_name",
    "listen_backlog",
    "login_notify_message",
    "pool_idle_timeout",
    "query_wait_notify",
    "resolv_conf",
    "sbuf_loopcnt",
    "server_fast_close",
    "server_tls13_ciphers",
    "service_name",
    "suspend_timeout",
    "syslog",
    "syslog_facility",
    "syslog_ident",
    "transaction_timeout",
];

impl Settings {
    /// The current value of setting `key` (any letter case) as it would be written to
    /// pgbouncer.ini, an unset optional value as `""`; `None` for a key weir does not have.
    /// Meant for the admin console's `SHOW CONFIG`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.render_value(&key.to_ascii_lowercase())
            .map(Option::unwrap_or_default)
    }

    /// Sets `key` (any letter case) from its file text, as if it had been read from
    /// pgbouncer.ini. Meant for the admin console's `SET`; cross-field checks are left to
    /// [`Config::validate`](crate::config::Config::validate).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ValueError> {
        self.apply(&key.to_ascii_lowercase(), value.trim())
            .unwrap_or_else(|| Err(ValueError(format!("unknown setting {key:?}"))))
    }

    /// `(key, value)` for every setting that has a value, in [`Settings::KEYS`] order.
    pub(crate) fn ini_entries(&self) -> Vec<(&'static str, String)> {
        Settings::KEYS
            .iter()
            .filter_map(|key| Some((*key, self.render_value(key)??)))
            .collect()
    }

    /// The TCP addresses in `listen_addr`, blanks removed; empty when TCP is off.
    pub fn listen_addrs(&self) -> Vec<&str> {
        self.listen_addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// Whether clients can connect over TCP (`listen_addr` is set).
    pub fn listens_on_tcp(&self) -> bool {
        !self.listen_addrs().is_empty()
    }

    /// Whether clients can connect over the Unix socket (`unix_socket_dir` is set).
    pub fn listens_on_unix_socket(&self) -> bool {
        !self.unix_socket_dir.is_empty()
    }
}

/// Whether `key` (lower-case) is a PgBouncer `[pgbouncer]` setting weir ignores.
pub(crate) fn is_unsupported_key(key: &str) -> bool {
    UNSUPPORTED_KEYS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_pgbouncer() {
        let s = Settings::default();
        assert_eq!(s.listen_addr, "");
        assert_eq!(s.listen_port, 6432);
        assert_eq!(s.unix_socket_dir, "/tmp");
        assert_eq!(s.unix_socket_mode, 0o777);
        assert_eq!(s.pool_mode, PoolMode::Session);
        assert_eq!(s.auth_type, AuthType::Md5);
        assert_eq!(s.max_client_conn, 100);
        assert_eq!(s.default_pool_size, 20);
        assert_eq!(s.reserve_pool_timeout, Duration::from_secs(5));
        assert_eq!(s.server_lifetime, Duration::from_secs(3600));
        assert_eq!(s.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(s.server_connect_timeout, Duration::from_secs(15));
        assert_eq!(s.server_login_retry, Duration::from_secs(15));
        assert_eq!(s.client_login_timeout, Duration::from_secs(60));
        assert_eq!(s.query_wait_timeout, Duration::from_secs(120));
        assert_eq!(s.server_check_delay, Duration::from_secs(30));
        assert_eq!(s.server_check_query, "<empty>");
        assert_eq!(s.server_reset_query, "DISCARD ALL");
        assert_eq!(s.track_extra_parameters, vec!["IntervalStyle".to_owned()]);
        assert_eq!(s.max_prepared_statements, 200);
        assert_eq!(s.pkt_buf, 4096);
        assert_eq!(s.max_packet_size, 2_147_483_647);
        assert!(s.tcp_keepalive && s.log_connections && s.log_disconnections);
        assert_eq!(
            (s.tcp_keepidle, s.tcp_keepintvl, s.tcp_keepcnt),
            (Duration::from_secs(60), Duration::from_secs(10), 6)
        );
        // Data in flight to a vanished peer is given up in the time keepalive takes for an
        // idle one, not after the OS's 15 minutes of retransmissions.
        assert_eq!(
            s.tcp_user_timeout,
            s.tcp_keepidle + s.tcp_keepintvl * s.tcp_keepcnt
        );
        assert!(s.log_pooler_errors);
        assert!(!s.server_round_robin && !s.so_reuseport && !s.disable_pqexec);
        assert_eq!(s.stats_period, Duration::from_secs(60));
        assert_eq!(s.http_listen_addr, "0.0.0.0");
        assert_eq!(s.http_port, 0);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(s.pinning, Pinning::Pin);
        assert!(s.failover_hold);
        assert!(s.auth_query.starts_with("SELECT rolname"));
    }

    #[test]
    fn enums_parse_case_insensitively_and_print_lower_case() {
        for mode in [
            PoolMode::Session,
            PoolMode::Transaction,
            PoolMode::Statement,
        ] {
            assert_eq!(mode.to_string().parse::<PoolMode>(), Ok(mode));
            assert_eq!(
                mode.to_string().to_uppercase().parse::<PoolMode>(),
                Ok(mode)
            );
        }
        for auth in [
            AuthType::Trust,
            AuthType::Plain,
            AuthType::Md5,
            AuthType::ScramSha256,
            AuthType::Any,
            AuthType::Cert,
        ] {
            assert_eq!(auth.to_string().parse::<AuthType>(), Ok(auth));
        }
        assert_eq!(
            "SCRAM-SHA-256".parse::<AuthType>(),
            Ok(AuthType::ScramSha256)
        );
        assert_eq!("Refuse".parse::<Pinning>(), Ok(Pinning::Refuse));
        assert!("sometimes".parse::<Pinning>().is_err());
        assert!("batch".parse::<PoolMode>().is_err());
    }

    #[test]
    fn unsupported_auth_types_say_so() {
        for name in ["ldap", "pam", "PAM"] {
            let err = name.parse::<AuthType>().expect_err(name);
            assert!(err.0.contains("not supported by weir"), "{err}");
        }
        assert_eq!("HBA".parse::<AuthType>(), Ok(AuthType::Hba));
        let err = "kerberos".parse::<AuthType>().expect_err("unknown");
        assert!(
            err.0.starts_with("expected an authentication type"),
            "{err}"
        );
    }

    #[test]
    fn every_key_renders_and_parses_back() {
        let defaults = Settings::default();
        for key in Settings::KEYS {
            let text = defaults.get(key).expect("known key");
            let mut copy = defaults.clone();
            copy.set(key, &text).expect(key);
            assert_eq!(copy, defaults, "{key} = {text}");
        }
    }

    #[test]
    fn get_and_set_ignore_key_case() {
        let mut s = Settings::default();
        s.set("Max_Client_Conn", "500").expect("valid");
        assert_eq!(s.max_client_conn, 500);
        assert_eq!(s.get("MAX_CLIENT_CONN").as_deref(), Some("500"));
        assert_eq!(s.get("logfile").as_deref(), Some(""));
        assert_eq!(s.get("nonsense"), None);
        let err = s.set("nonsense", "1").expect_err("unknown");
        assert!(err.0.contains("unknown setting"), "{err}");
    }

    #[test]
    fn keys_are_unique_and_disjoint_from_unsupported_ones() {
        let mut keys: Vec<&str> = Settings::KEYS.to_vec();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Settings::KEYS.len());
        for key in UNSUPPORTED_KEYS {
            assert!(!Settings::KEYS.contains(key), "{key}");
        }
    }

    #[test]
    fn listen_addrs_split_the_list() {
        let mut s = Settings::default();
        assert!(!s.listens_on_tcp());
        assert!(s.listens_on_unix_socket());
        s.listen_addr = " 127.0.0.1 , ::1,".to_owned();
        assert_eq!(s.listen_addrs(), vec!["127.0.0.1", "::1"]);
        assert!(s.listens_on_tcp());
    }
}
