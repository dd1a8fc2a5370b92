//! Server connections: opening one to PostgreSQL, logging in, and the few things the pooler
//! says to a server itself (parameter sync, reset, health check).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{md5, AuthError, ChannelBinding, ScramClient, ScramCredential};
use crate::cloud_token::{TokenError, TokenSource};
use crate::config::{
    hosts, ChannelBindingMode, CleartextPassword, LoadBalanceHosts, ServerAuth, ServerRole,
    TargetSessionAttrs, TlsMode,
};
use crate::params::ParamSet;
use crate::prepared::PreparedSet;
use crate::protocol::backend::{self, Authentication};
use crate::protocol::{frontend, PgError, ProtocolError};
use crate::session_state::Setting;
use crate::sql::Effect;
use crate::stream::{Keepalive, Stream};
use crate::tls::{self, ServerTls};
use crate::wire::{self, ReadError};

/// Where a server lives: a TCP host and port, or a Unix socket directory and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// `host:port` over TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `<dir>/.s.PGSQL.<port>`.
    Unix {
        /// The socket directory.
        dir: PathBuf,
        /// The port that names the socket file.
        port: u16,
    },
}

impl ServerAddr {
    /// PostgreSQL's convention: a host that starts with `/` is a socket directory.
    pub fn new(host: &str, port: u16) -> ServerAddr {
        if host.starts_with('/') {
            ServerAddr::Unix {
                dir: PathBuf::from(host),
                port,
            }
        } else {
            ServerAddr::Tcp {
                host: host.to_owned(),
                port,
            }
        }
    }

    /// Opens a socket to this address within `timeout`.
    pub async fn connect(&self, timeout: Duration, keepalive: &Keepalive) -> io::Result<Stream> {
        let connect = async {
            match self {
                ServerAddr::Tcp { host, port } => {
                    Stream::tcp(TcpStream::connect((host.as_str(), *port)).await?, keepalive)
                }
                ServerAddr::Unix { dir, port } => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    Ok(Stream::Unix(UnixStream::connect(path).await?))
                }
            }
        };
        if timeout.is_zero() {
            return connect.await;
        }
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "server_connect_timeout"))?
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddr::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// What the pooler proves its identity to PostgreSQL with.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerCredential {
    /// No secret known: only `trust` servers accept the login.
    None,
    /// A clear-text password (from the connection string or a plain userlist entry).
    Password(String),
    /// An md5 hash from userlist.txt, which answers an md5 challenge just as well.
    Md5Hash(String),
    /// SCRAM keys recovered from the client's own SCRAM proof.
    ScramKeys {
        /// The client key.
        client_key: [u8; 32],
        /// The server key, to verify the server's signature.
        server_key: [u8; 32],
    },
    /// A short-lived cloud token (`server_auth`), sent as the password; each login asks the
    /// source for the current one.
    CloudToken(Arc<TokenSource>),
}

impl fmt::Debug for ServerCredential {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerCredential::None => "None",
            ServerCredential::Password(_) => "Password(..)",
            ServerCredential::Md5Hash(_) => "Md5Hash(..)",
            ServerCredential::ScramKeys { .. } => "ScramKeys(..)",
            ServerCredential::CloudToken(source) => {
                return write!(f, "CloudToken({})", source.auth())
            }
        })
    }
}

/// Which host of a host list the next new connection starts at: shared by the pool's
/// connections, and runtime state rather than configuration (targets compare equal whatever
/// it holds).
#[derive(Debug, Clone, Default)]
pub struct HostCursor(Arc<AtomicUsize>);

impl PartialEq for HostCursor {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HostCursor {}

impl HostCursor {
    /// The host a new connection starts at: the next one under `round-robin`, the one last
    /// used under `disable`.
    fn start(&self, mode: LoadBalanceHosts) -> usize {
        match mode {
            LoadBalanceHosts::RoundRobin => self.0.fetch_add(1, Ordering::Relaxed),
            LoadBalanceHosts::Disable => self.0.load(Ordering::Relaxed),
        }
    }

    /// Host `index` served a connection: under `disable` later ones start there.
    fn used(&self, mode: LoadBalanceHosts, index: usize) {
        if mode == LoadBalanceHosts::Disable {
            self.0.store(index, Ordering::Relaxed);
        }
    }
}

/// Everything needed to open and log in one server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// Where to connect: one server, or a host list tried in turn.
    pub hosts: Vec<ServerAddr>,
    /// `load_balance_hosts`: where in the list a new connection starts.
    pub load_balance: LoadBalanceHosts,
    /// Where the next new connection starts.
    pub cursor: HostCursor,
    /// `target_session_attrs`: which servers are accepted.
    pub session_attrs: TargetSessionAttrs,
    /// The database to log in to.
    pub dbname: String,
    /// The role to log in as.
    pub user: String,
    /// The secret for that role.
    pub credential: ServerCredential,
    /// `server_connect_timeout`: socket connect, TLS, login, role check and `connect_query`,
    /// for each host tried.
    pub connect_timeout: Duration,
    /// Keepalive on the server socket.
    pub keepalive: Keepalive,
    /// `connect_query`: run once on every new connection.
    pub connect_query: Option<String>,
    /// Extra startup parameters (`client_encoding`, `datestyle`, `timezone`,
    /// `application_name` from the `[databases]` entry).
    pub startup_params: Vec<(String, String)>,
    /// `server_tls_*`: whether and how to encrypt, and what may go over a plain connection.
    pub tls: Arc<ServerTls>,
}

/// A server's cancel key, as its BackendKeyData reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerKey {
    /// The backend process id.
    pub process_id: i32,
    /// The secret that authorises a cancel.
    pub secret_key: i32,
}

/// Why a server connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be opened.
    #[error("could not connect to server at {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: ServerAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// The server refused the login.
    #[error("server login failed: {}", .0.message)]
    Login(Box<PgError>),
    /// The server wants an authentication method the pooler cannot answer with what it knows.
    #[error("server login failed: {0}")]
    Auth(String),
    /// The connection broke.
    #[error("server connection lost: {0}")]
    Lost(#[from] ReadError),
    /// A query the pooler itself sent failed.
    #[error("{}", .0.message)]
    Query(Box<PgError>),
    /// Login took longer than `server_connect_timeout`.
    #[error("server login timed out (server_connect_timeout)")]
    Timeout,
    /// A query the pooler sent itself got no answer within `server_connect_timeout`.
    #[error("server did not answer the pooler's query {0:?} in time (server_connect_timeout)")]
    QueryTimeout(String),
    /// No host of the list was acceptable; each host with why it was not.
    #[error("no server matches target_session_attrs={attrs}: {reasons}")]
    NoMatchingHost {
        /// The `target_session_attrs` asked for.
        attrs: TargetSessionAttrs,
        /// `host: reason` for each host tried.
        reasons: String,
    },
    /// TLS could not be set up as `server_tls_sslmode` requires.
    #[error("{0}")]
    Tls(String),
    /// No cloud token could be had for the login.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The server refused the cloud token the pooler logged in with.
    #[error("server login with a server_auth={auth} token failed: {}", .error.message)]
    TokenRefused {
        /// Which kind of token.
        auth: ServerAuth,
        /// What the server said.
        error: Box<PgError>,
    },
    /// The server asked for a clear-text password over a connection without TLS.
    #[error(
        "server at {0} asks for a clear-text password over an unencrypted connection; refused \
         (use server_tls_sslmode = require or stronger, or set server_cleartext_password = allow)"
    )]
    CleartextRefused(ServerAddr),
}

impl From<io::Error> for ServerError {
    fn from(e: io::Error) -> Self {
        ServerError::Lost(ReadError::Io(e))
    }
}

impl From<AuthError> for ServerError {
    fn from(e: AuthError) -> Self {
        ServerError::Auth(e.to_string())
    }
}

impl From<ProtocolError> for ServerError {
    fn from(e: ProtocolError) -> Self {
        ServerError::Lost(ReadError::Protocol(e))
    }
}

impl ServerError {
    /// Whether a failed connect says the host itself is unavailable: it did not answer, the
    /// connection broke or timed out, or it refused the login while shutting down, starting
    /// or recovering (57P01, 57P02, 57P03) or with a connection exception (class 08). A
    /// refused password or a TLS misconfiguration is not the host's fault.
    pub fn host_down(&self) -> bool {
        match self {
            ServerError::Connect { .. }
            | ServerError::Lost(_)
            | ServerError::Timeout
            | ServerError::QueryTimeout(_) => true,
            ServerError::Login(e) => {
                matches!(e.code.as_str(), "57P01" | "57P02" | "57P03") || e.code.starts_with("08")
            }
            _ => false,
        }
    }

    /// The error a client is told when this failure stops its work.
    pub fn to_client_error(&self) -> PgError {
        match self {
            ServerError::Login(e) => {
                let mut e = PgError::fatal(&e.code, format!("server login failed: {}", e.message));
                e.hint = Some("the pooler could not log in to the database server".into());
                e
            }
            ServerError::TokenRefused { error, .. } => {
                let mut e = PgError::fatal(&error.code, self.to_string());
                e.hint = Some(
                    "the database server refused the pooler's cloud token: check that the \
                     role may log in with it (its IAM/Entra grant) and the pod's identity"
                        .into(),
                );
                e
            }
            ServerError::Query(e) => (**e).clone(),
            // connection_exception: no server of the kind asked for is there.
            ServerError::NoMatchingHost { .. } => PgError::fatal("08000", self.to_string()),
            // connection_failure: the client may retry on a new connection.
            other => PgError::fatal("08006", other.to_string()),
        }
    }
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// One logged-in connection to PostgreSQL.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket.
    stream: Stream,
    /// Bytes read from the server and not yet consumed; reused across checkouts.
    buf: BytesMut,
    /// Current values of the parameters the server reports.
    params: ParamSet,
    /// The key that cancels this backend's query.
    key: ServerKey,
    /// Where the server lives (cancels go there too).
    addr: Arc<ServerAddr>,
    /// Pooler-wide id, for logs.
    id: u64,
    /// When the connection was opened (`server_lifetime`).
    created: Instant,
    /// When it was last returned to the pool (`server_idle_timeout`, `server_check_delay`).
    last_used: Instant,
    /// What it carries for its clients: prepared statements and session settings.
    carried: Carried,
    /// The pool's target generation this connection was opened for.
    generation: u64,
    /// The client parameters this connection was last brought in line with, and its own
    /// change count then: while both still hold, it needs no parameter sync.
    synced_to: Option<(ParamSet, u64)>,
    /// `server_connect_timeout`, which also bounds each query the pooler sends itself.
    query_limit: Duration,
    /// Its host's index in the target's host list.
    host: usize,
}

/// The state a server connection carries on behalf of the clients it serves: the statements
/// prepared on it and the session settings in force. Owned by the connection and changed only
/// through these methods, which the client layer calls as it relays.
#[derive(Debug, Default)]
pub struct Carried {
    /// Statements prepared on this connection under their pooler-wide names.
    prepared: PreparedSet,
    /// Session settings this connection carries (replayed for, or made by, a client).
    session: Vec<Setting>,
}

impl Carried {
    /// Whether statement `name` is prepared here (and marks it recently used).
    pub fn has_statement(&mut self, name: &Arc<str>) -> bool {
        self.prepared.touch(name)
    }

    /// Records statement `name` as prepared, keeping at most `capacity`; returns the least
    /// recently used ones to close, if any must go.
    pub fn add_statement(&mut self, name: Arc<str>, capacity: usize) -> Vec<Arc<str>> {
        self.prepared.insert(name, capacity)
    }

    /// Records that statement `name`, whose evicting Close the server skipped, is still
    /// prepared here; it is the first to go next time.
    pub fn restore_statement(&mut self, name: Arc<str>) {
        self.prepared.restore(name);
    }

    /// Forgets statement `name` (closed, or its Parse failed).
    pub fn forget_statement(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// Statements prepared here.
    pub fn statement_count(&self) -> usize {
        self.prepared.len()
    }

    /// Follows a statement that ran on this connection: `DISCARD ALL`, `DEALLOCATE ALL` and
    /// `RESET ALL` clear what they clear on the server.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::DiscardAll => {
                self.prepared.clear();
                self.session.clear();
            }
            Effect::DeallocateAll => self.prepared.clear(),
            Effect::ResetAll => self.session.clear(),
            _ => {}
        }
    }

    /// Takes `applied` as the settings in force here, once a client's transaction ended.
    pub fn adopt_session(&mut self, applied: &[Setting]) {
        if self.session.as_slice() != applied {
            self.session = applied.to_vec();
        }
    }

    /// Marks the settings in force here as unknown: the next client gets a reset first.
    pub fn session_unknown(&mut self) {
        self.session = vec![Setting::unknown()];
    }
}

/// The parts of a lent connection the relay moves bytes through, and what it carries.
pub struct RelayParts<'a> {
    /// The socket.
    pub stream: &'a mut Stream,
    /// Bytes read from the server and not yet forwarded.
    pub buf: &'a mut BytesMut,
    /// The parameters the server reports, kept current from ParameterStatus.
    pub params: &'a mut ParamSet,
    /// Prepared statements and session settings.
    pub carried: &'a mut Carried,
}

/// Why a connection could not be made ready for a client.
#[derive(Debug)]
pub enum PrepareError {
    /// Replaying the client's session settings failed.
    Session(ServerError),
    /// Bringing the client's parameters over failed.
    Params(ServerError),
}

/// Asks a server where it stands in the WAL: in recovery, and the positions received and
/// replayed (both the current position on a primary).
const WAL_POSITION_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END::text, \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text";

/// What a server said of its WAL position, as PostgreSQL prints positions (`16/B374D848`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalReport {
    /// In recovery (a standby).
    pub standby: bool,
    /// The last position received by streaming replication (none when it never streamed).
    pub received: Option<String>,
    /// The last position replayed.
    pub replayed: Option<String>,
}

/// What became of one host a connect tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// The connection or login failed; `down` when the host did not answer or refused for
    /// a reason of its own state (see [`ServerError::host_down`]).
    Failed {
        /// The error.
        why: String,
        /// Whether it says the host is down.
        down: bool,
    },
    /// `target_session_attrs` refused the server.
    Refused(&'static str),
}

/// A connect over a host list: its result, and each host tried before it (or all of them,
/// when it failed) with what became of it.
#[derive(Debug)]
pub struct ConnectAttempt {
    /// The connection, logged in to the first acceptable host.
    pub result: Result<ServerConn, ServerError>,
    /// `(index into the host list, outcome)` of every host that did not serve it.
    pub tried: Vec<(usize, HostOutcome)>,
}

/// The queries that make a connection ready for a client ([`ServerConn::prepare_for`]).
pub type Preparing<'a> = Pin<Box<dyn Future<Output = Result<(), PrepareError>> + Send + 'a>>;

impl ServerConn {
    /// Opens and logs in a connection to the first acceptable host of the target's list,
    /// starting where `load_balance_hosts` says and skipping hosts that fail or that
    /// `target_session_attrs` refuses (as libpq does). Each host's attempt is bounded by
    /// `server_connect_timeout`.
    pub async fn connect(target: &ServerTarget) -> Result<ServerConn, ServerError> {
        let start = target.cursor.start(target.load_balance);
        let order: Vec<usize> = hosts::try_order(start, target.hosts.len()).collect();
        let attempt = Self::connect_order(target, &order).await;
        if let Ok(conn) = &attempt.result {
            target.cursor.used(target.load_balance, conn.host);
        }
        attempt.result
    }

    /// As [`Self::connect`], trying the hosts (indexes into `target.hosts`) in `order`, and
    /// telling what became of each host tried.
    pub async fn connect_order(target: &ServerTarget, order: &[usize]) -> ConnectAttempt {
        let mut tried = Vec::new();
        let mut reasons = Vec::new();
        let mut last_error = None;
        let mut refused_any = false;
        // prefer-standby: a second pass takes any server when no standby was found.
        let passes = if target.session_attrs == TargetSessionAttrs::PreferStandby {
            2
        } else {
            1
        };
        for pass in 0..passes {
            if pass == 1 && !refused_any {
                break;
            }
            for &index in order {
                let Some(addr) = target.hosts.get(index) else {
                    continue;
                };
                match Self::connect_host(target, addr, pass == 1).await {
                    Ok(Ok(mut conn)) => {
                        conn.host = index;
                        return ConnectAttempt {
                            result: Ok(conn),
                            tried,
                        };
                    }
                    Ok(Err(why)) => {
                        refused_any = true;
                        tracing::info!(server = %addr, target_session_attrs = %target.session_attrs, why, "server skipped");
                        reasons.push(format!("{addr}: {why}"));
                        tried.push((index, HostOutcome::Refused(why)));
                    }
                    Err(e) => {
                        if order.len() > 1 {
                            tracing::warn!(server = %addr, error = %e, "server connection failed; trying the next host");
                        }
                        reasons.push(format!("{addr}: {e}"));
                        tried.push((
                            index,
                            HostOutcome::Failed {
                                why: e.to_string(),
                                down: e.host_down(),
                            },
                        ));
                        last_error = Some(e);
                    }
                }
            }
        }
        let result = match last_error {
            Some(e) if !refused_any => Err(e),
            _ => Err(ServerError::NoMatchingHost {
                attrs: target.session_attrs,
                reasons: reasons.join("; "),
            }),
        };
        ConnectAttempt { result, tried }
    }

    /// Where this server stands in the WAL, bounded by `server_connect_timeout` as every
    /// query the pooler sends itself.
    pub async fn wal_position(&mut self) -> Result<WalReport, ServerError> {
        let limit = self.query_limit;
        let query = self.query_row(WAL_POSITION_QUERY, &[]);
        let row = if limit.is_zero() {
            query.await?
        } else {
            tokio::time::timeout(limit, query).await.map_err(|_| {
                ServerError::QueryTimeout(WAL_POSITION_QUERY.chars().take(64).collect())
            })??
        };
        let mut fields = row.unwrap_or_default().into_iter();
        Ok(WalReport {
            standby: fields.next().flatten().as_deref() == Some("t"),
            received: fields.next().flatten(),
            replayed: fields.next().flatten(),
        })
    }

    /// One host's attempt, bounded by `server_connect_timeout`: Ok(Err(why)) when the server
    /// logged in but `target_session_attrs` refuses it (the connection is then closed).
    async fn connect_host(
        target: &ServerTarget,
        addr: &ServerAddr,
        second_pass: bool,
    ) -> Result<Result<ServerConn, &'static str>, ServerError> {
        let attempt = async {
            let mut conn = Self::connect_unbounded(target, addr).await?;
            if target.session_attrs.needs_role() {
                let role = conn.role().await?;
                if let Some(why) = target.session_attrs.refuses(role, second_pass) {
                    conn.close();
                    return Ok(Err(why));
                }
            }
            if let Some(q) = &target.connect_query {
                conn.simple_query(q).await?;
            }
            Ok(Ok(conn))
        };
        if target.connect_timeout.is_zero() {
            return attempt.await;
        }
        tokio::time::timeout(target.connect_timeout, attempt)
            .await
            .map_err(|_| ServerError::Timeout)?
    }

    async fn connect_unbounded(
        target: &ServerTarget,
        addr: &ServerAddr,
    ) -> Result<ServerConn, ServerError> {
        match Self::open(target, addr, target.tls.mode >= TlsMode::Prefer).await {
            // libpq's `allow`: plain first, TLS when the server refuses the plain login.
            Err(e) if target.tls.mode == TlsMode::Allow && e.refuses_plain() => {
                Self::open(target, addr, true).await
            }
            // libpq's `prefer`: TLS first, plain when the handshake fails or the server turns
            // the encrypted login away (e.g. a `hostnossl` pg_hba line).
            Err(e) if target.tls.mode == TlsMode::Prefer && e.refuses_tls() => {
                tracing::info!(server = %addr, error = %e, "TLS refused; trying without (server_tls_sslmode = prefer)");
                Self::open(target, addr, false).await
            }
            other => other,
        }
    }

    /// Whether the server is a standby and whether its sessions start read-only: from the
    /// ParameterStatus PostgreSQL 14+ sends at login, else asked with a query.
    async fn role(&mut self) -> Result<ServerRole, ServerError> {
        let standby = match self.params.get("in_hot_standby") {
            Some(v) => v == "on",
            None => {
                self.query_value("SELECT pg_is_in_recovery()")
                    .await?
                    .as_deref()
                    == Some("t")
            }
        };
        let read_only = standby
            || match self.params.get("default_transaction_read_only") {
                Some(v) => v == "on",
                None => {
                    self.query_value("SHOW transaction_read_only")
                        .await?
                        .as_deref()
                        == Some("on")
                }
            };
        Ok(ServerRole { standby, read_only })
    }

    /// Connects, encrypting when `encrypt` (TCP only: a Unix socket never uses TLS, as in
    /// libpq), and logs in.
    async fn open(
        target: &ServerTarget,
        addr: &ServerAddr,
        encrypt: bool,
    ) -> Result<ServerConn, ServerError> {
        let mut stream = addr
            .connect(Duration::ZERO, &target.keepalive)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.clone(),
                source,
            })?;
        if encrypt {
            if let (Stream::Tcp(_), Some(config)) = (&stream, &target.tls.config) {
                stream = start_tls(stream, addr, target.tls.mode, config.clone()).await?;
            }
        }
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(8192),
            params: ParamSet::new(),
            key: ServerKey {
                process_id: 0,
                secret_key: 0,
            },
            addr: Arc::new(addr.clone()),
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            created: Instant::now(),
            last_used: Instant::now(),
            carried: Carried::default(),
            generation: 0,
            synced_to: None,
            query_limit: target.connect_timeout,
            host: 0,
        };
        match &target.credential {
            ServerCredential::CloudToken(source) => {
                let (host, port) = match addr {
                    ServerAddr::Tcp { host, port } => (host.as_str(), *port),
                    ServerAddr::Unix { dir, port } => (dir.to_str().unwrap_or("/"), *port),
                };
                let token = source.password(host, port, &target.user).await?;
                let credential = ServerCredential::Password(token);
                match conn.login(target, &credential).await {
                    Ok(()) => {}
                    Err(ServerError::Login(error)) if error.code.starts_with("28") => {
                        source.refused(host, port, &target.user).await;
                        return Err(ServerError::TokenRefused {
                            auth: source.auth(),
                            error,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            credential => conn.login(target, credential).await?,
        }
        Ok(conn)
    }

    async fn login(
        &mut self,
        target: &ServerTarget,
        credential: &ServerCredential,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut params: Vec<(&str, &str)> =
            vec![("user", &target.user), ("database", &target.dbname)];
        params.extend(
            target
                .startup_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        frontend::startup_message(&mut out, &params);
        wire::flush(&mut self.stream, &mut out).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let msg = wire::read_message(&mut self.stream, &mut self.buf).await?;
            match msg.tag {
                b'R' => {
                    let auth = backend::parse_authentication(&msg.body)?;
                    self.answer(auth, target, credential, &mut scram, &mut out)?;
                    if !out.is_empty() {
                        wire::flush(&mut self.stream, &mut out).await?;
                    }
                }
                b'S' => {
                    let (name, value) = backend::parse_parameter_status(&msg.body)?;
                    self.params.set(&name, &value);
                }
                b'K' => {
                    let (process_id, secret_key) = backend::parse_backend_key_data(&msg.body)?;
                    self.key = ServerKey {
                        process_id,
                        secret_key,
                    };
                }
                b'E' => {
                    return Err(ServerError::Login(Box::new(backend::parse_error_response(
                        &msg.body,
                    )?)))
                }
                b'Z' => return Ok(()),
                // NoticeResponse and NegotiateProtocolVersion need no answer.
                _ => {}
            }
        }
    }

    fn answer(
        &self,
        auth: Authentication,
        target: &ServerTarget,
        credential: &ServerCredential,
        scram: &mut Option<ScramClient>,
        out: &mut BytesMut,
    ) -> Result<(), ServerError> {
        let require_binding = target.tls.channel_binding == ChannelBindingMode::Require;
        match auth {
            Authentication::Ok
                if require_binding && !scram.as_ref().is_some_and(ScramClient::verified_bound) =>
            {
                return Err(binding_required(
                    &self.addr,
                    "logged the pooler in without it",
                ))
            }
            Authentication::Ok => {}
            Authentication::CleartextPassword | Authentication::Md5Password { .. }
                if require_binding =>
            {
                return Err(binding_required(&self.addr, "asks for a password instead"))
            }
            Authentication::CleartextPassword
                if !self.stream.is_tls()
                    && matches!(self.addr.as_ref(), ServerAddr::Tcp { .. })
                    && target.tls.cleartext_password == CleartextPassword::Refuse =>
            {
                return Err(ServerError::CleartextRefused((*self.addr).clone()))
            }
            Authentication::CleartextPassword => match credential {
                ServerCredential::Password(p) => frontend::password_message(out, p.as_bytes()),
                _ => return Err(no_secret("a clear-text password", target)),
            },
            Authentication::Md5Password { salt } => {
                let hash = match credential {
                    ServerCredential::Password(p) => md5::password_hash(&target.user, p),
                    ServerCredential::Md5Hash(h) => h.clone(),
                    _ => return Err(no_secret("an md5 password", target)),
                };
                frontend::password_message(out, md5::salted_response(&hash, salt).as_bytes());
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(ServerError::Auth(format!(
                        "server offers SASL mechanisms {mechanisms:?}, none of which the pooler speaks"
                    )));
                }
                let credential = match credential {
                    ServerCredential::Password(p) => ScramCredential::Password(p.clone()),
                    ServerCredential::ScramKeys {
                        client_key,
                        server_key,
                    } => ScramCredential::Keys {
                        client_key: *client_key,
                        server_key: *server_key,
                    },
                    _ => return Err(no_secret("SCRAM-SHA-256", target)),
                };
                let offers_plus = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                let end_point = self
                    .stream
                    .peer_certificate()
                    .and_then(tls::server_end_point);
                // libpq's choice: "p" when both sides can bind, "y" over TLS when the server
                // did not offer it (so a server that did knows the offer was stripped), else "n".
                let binding = match (target.tls.channel_binding, end_point) {
                    (ChannelBindingMode::Disable, _) => ChannelBinding::Unsupported,
                    (_, Some(end_point)) if offers_plus => ChannelBinding::EndPoint(end_point),
                    (ChannelBindingMode::Require, _) => {
                        return Err(binding_required(
                            &self.addr,
                            "does not offer SCRAM-SHA-256-PLUS",
                        ))
                    }
                    _ if self.stream.is_tls() && !offers_plus => ChannelBinding::NotOffered,
                    _ => ChannelBinding::Unsupported,
                };
                let mut client = ScramClient::new(credential).with_channel_binding(binding);
                let first = client.client_first();
                frontend::sasl_initial_response(out, client.mechanism(), &first);
                *scram = Some(client);
            }
            Authentication::SaslContinue(data) => {
                let client = scram.as_mut().ok_or_else(unexpected_sasl)?;
                frontend::sasl_response(out, &client.server_first(&data)?);
            }
            Authentication::SaslFinal(data) => {
                scram
                    .as_mut()
                    .ok_or_else(unexpected_sasl)?
                    .server_final(&data)?;
            }
            Authentication::Unsupported(code) => {
                return Err(ServerError::Auth(format!(
                "server asks for authentication method {code}, which the pooler does not support"
            )))
            }
        }
        Ok(())
    }

    /// Runs `sql` with the simple protocol and waits for ReadyForQuery, discarding rows.
    /// Parameter changes the query causes are tracked; the first error is returned.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_value(sql).await.map(drop)
    }

    /// As [`Self::simple_query`], returning the first column of the first row, if any.
    /// Bounded by `server_connect_timeout`: a server that does not answer the pooler's own
    /// query in that time is given up (the caller closes it), so no client waits forever.
    async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        let limit = self.query_limit;
        let query = self.query_value_unbounded(sql);
        if limit.is_zero() {
            return query.await;
        }
        tokio::time::timeout(limit, query)
            .await
            .map_err(|_| ServerError::QueryTimeout(sql.chars().take(64).collect()))?
    }

    async fn query_value_unbounded(&mut self, sql: &str) -> Result<Option<String>, ServerError> {
        let mut value = None;
        let mut out = BytesMut::new();
        frontend::query(&mut out, sql);
        wire::flush(&mut self.stream, &mut out).await?;
        let mut failed = None;
        loop {
            let msg = wire::read_message(&mut self.stream, &mut self.buf).await?;
            match msg.tag {
                b'E' => {
                    failed.get_or_insert(backend::parse_error_response(&msg.body)?);
                }
                b'S' => self.track_parameter(&msg.body)?,
                b'D' if value.is_none() => {
                    let row = backend::parse_data_row(&msg.body)?;
                    value = Some(
                        row.first()
                            .copied()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v).into_owned()),
                    );
                }
                b'Z' => {
                    let status = backend::parse_ready_for_query(&msg.body)?;
                    return match failed {
                        Some(e) => Err(ServerError::Query(Box::new(e))),
                        // The pooler's own queries must leave the session idle.
                        None if status != b'I' => {
                            Err(ServerError::Query(Box::new(PgError::error(
                                "25000",
                                format!("pooler query {sql:?} left a transaction open"),
                            ))))
                        }
                        None => Ok(value.flatten()),
                    };
                }
                // A COPY the pooler never asked for cannot be answered sensibly.
                b'G' | b'H' | b'W' => {
                    return Err(ServerError::Query(Box::new(PgError::error(
                        "0A000",
                        "unexpected COPY in a pooler query",
                    ))))
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` with the extended protocol, `params` bound as text values (never spliced
    /// into the SQL), and returns its first row as text; `None` when it returns no row.
    pub async fn query_row(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::parse(&mut out, "", sql, &[]);
        let values: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
        frontend::bind(&mut out, "", "", &[], &values, &[]);
        frontend::execute(&mut out, "", 0);
        frontend::sync(&mut out);
        wire::flush(&mut self.stream, &mut out).await?;
        let (mut failed, mut row) = (None, None);
        loop {
            let msg = wire::read_message(&mut self.stream, &mut self.buf).await?;
            match msg.tag {
                b'E' => {
                    failed.get_or_insert(backend::parse_error_response(&msg.body)?);
                }
                b'D' if row.is_none() => {
                    let values = backend::parse_data_row(&msg.body)?;
                    row = Some(
                        values
                            .into_iter()
                            .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                            .collect(),
                    );
                }
                b'S' => self.track_parameter(&msg.body)?,
                b'Z' => {
                    return match failed {
                        Some(e) => Err(ServerError::Query(Box::new(e))),
                        None => Ok(row),
                    }
                }
                b'G' | b'H' | b'W' => {
                    return Err(ServerError::Query(Box::new(PgError::error(
                        "0A000",
                        "unexpected COPY in a pooler query",
                    ))))
                }
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus body the server sent.
    pub fn track_parameter(&mut self, body: &Bytes) -> Result<(), ProtocolError> {
        let (name, value) = backend::parse_parameter_status(body)?;
        self.params.set(&name, &value);
        Ok(())
    }

    /// Says goodbye (Terminate) if the socket takes it at once, then closes it. Used for
    /// connections in a clean state; a dirty one is simply dropped, which makes PostgreSQL roll
    /// back whatever it was doing.
    pub fn close(mut self) {
        let _ = self.stream.try_write(&[b'X', 0, 0, 0, 4]);
    }

    /// Makes the connection ready for a client: its session settings replayed (after a
    /// `RESET ALL` when the connection carries another client's), then its parameters
    /// brought over. A connection last synced to an equal set, and unchanged since, is
    /// compared no further (clients of one application usually want the same values).
    /// `None` when that needs no query, as it usually does: then nothing is left to await,
    /// and the work that queries, boxed, stays out of every transaction's future.
    pub fn prepare_for<'a>(
        &'a mut self,
        session: &'a [Setting],
        params: &'a ParamSet,
    ) -> Option<Preparing<'a>> {
        let replay = crate::session_state::replay_query(&self.carried.session, session);
        if replay.is_none() {
            if self.params_in_step(params) {
                return None;
            }
            if crate::params::sync_query(params, &self.params).is_none() {
                self.synced_to = Some((params.clone(), self.params.changes()));
                return None;
            }
        }
        Some(Box::pin(async move {
            if let Some(sql) = replay {
                self.simple_query(&sql)
                    .await
                    .map_err(PrepareError::Session)?;
                self.carried.session = session.to_vec();
            }
            // Compared after the replay, whose answers may have moved the parameters.
            if !self.params_in_step(params) {
                if let Some(sql) = crate::params::sync_query(params, &self.params) {
                    self.simple_query(&sql)
                        .await
                        .map_err(PrepareError::Params)?;
                }
                self.synced_to = Some((params.clone(), self.params.changes()));
            }
            Ok(())
        }))
    }

    /// Whether the connection was last synced to `params` and its own have not changed since.
    fn params_in_step(&self, params: &ParamSet) -> bool {
        self.synced_to
            .as_ref()
            .is_some_and(|(wanted, changes)| *changes == self.params.changes() && wanted == params)
    }

    /// Runs `server_reset_query` (or any pooler query) and forgets what it cleared.
    pub async fn reset(&mut self, query: &str) -> Result<(), ServerError> {
        self.simple_query(query).await?;
        for stmt in crate::sql::statements(query) {
            self.carried.apply(&crate::sql::classify(stmt));
        }
        Ok(())
    }

    /// The socket, its read buffer, the server's parameters and what it carries, borrowed
    /// apart for the relay.
    pub fn relay_parts(&mut self) -> RelayParts<'_> {
        RelayParts {
            stream: &mut self.stream,
            buf: &mut self.buf,
            params: &mut self.params,
            carried: &mut self.carried,
        }
    }

    /// What it carries for its clients.
    pub fn carried(&self) -> &Carried {
        &self.carried
    }

    /// Pooler-wide id, for logs and the console.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When it was last given back to its pool.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Records that it was given back to its pool at `now`.
    pub fn returned_at(&mut self, now: Instant) {
        self.last_used = now;
    }

    /// The pool generation it was opened in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks it as opened in pool generation `generation`.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The socket and the bytes read from it not yet consumed, for a connection that leaves
    /// the pooler's hands (replication: relayed as bytes until it closes).
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }

    /// The parameters the server reports.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// Where it goes and the key that cancels its query: what a CancelRequest needs.
    pub fn cancel_target(&self) -> (Arc<ServerAddr>, ServerKey) {
        (self.addr.clone(), self.key)
    }

    /// The local end of its socket, as the console shows it.
    pub fn local_endpoint(&self) -> crate::stream::Endpoint {
        self.stream.endpoints(0).1
    }

    /// Drops `n` bytes already read from the server (a message the pooler consumed itself).
    pub fn skip_buffered(&mut self, n: usize) {
        use bytes::Buf as _;
        let n = n.min(self.buf.len());
        self.buf.advance(n);
    }

    /// Its host's index in the target's host list.
    pub fn host_index(&self) -> usize {
        self.host
    }

    /// Whether this idle connection can be lent out: nothing unread is waiting on it (an
    /// unexpected message, or PostgreSQL's FATAL before it closed the socket).
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty() && !self.stream.has_unread_input()
    }
}

impl ServerError {
    /// Whether an encrypted connection failed in a way going without TLS may fix (`prefer`
    /// retries): the handshake failed, or the server turned the login away.
    fn refuses_tls(&self) -> bool {
        match self {
            ServerError::Tls(_) => true,
            ServerError::Login(e) | ServerError::TokenRefused { error: e, .. } => {
                e.code.starts_with("28")
            }
            _ => false,
        }
    }

    /// Whether a plain connection was turned away in a way TLS may fix (`allow` retries).
    fn refuses_plain(&self) -> bool {
        match self {
            ServerError::Login(e) | ServerError::TokenRefused { error: e, .. } => e.code == "28000",
            ServerError::CleartextRefused(_) => true,
            _ => false,
        }
    }
}

/// Sends an SSLRequest and, if the server agrees, performs the TLS handshake; a server that
/// declines is used in the clear only under `prefer`.
async fn start_tls(
    stream: Stream,
    addr: &ServerAddr,
    mode: TlsMode,
    config: Arc<rustls::ClientConfig>,
) -> Result<Stream, ServerError> {
    let (Stream::Tcp(mut tcp), ServerAddr::Tcp { host, .. }) = (stream, addr) else {
        return Err(ServerError::Tls(format!("TLS to {addr} needs TCP")));
    };
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    // Exactly one byte: anything after it must be the TLS handshake, never trusted plaintext.
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                ServerError::Tls(format!("server host {host:?} is not a valid TLS name: {e}"))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    ServerError::Tls(format!("TLS handshake with server at {addr} failed: {e}"))
                })?;
            Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
        }
        b'N' if mode <= TlsMode::Prefer => Ok(Stream::Tcp(tcp)),
        b'N' => Err(ServerError::Tls(format!(
            "server at {addr} does not support SSL, but server_tls_sslmode {mode} requires it"
        ))),
        other => Err(ServerError::Tls(format!(
            "server at {addr} answered the SSLRequest with unexpected byte {other:#04x}"
        ))),
    }
}

fn no_secret(what: &str, target: &ServerTarget) -> ServerError {
    ServerError::Auth(format!(
        "server asks for {what} for user {:?}, and no usable secret is configured \
         (set password= in [databases] or a plain/md5/SCRAM entry in auth_file)",
        target.user
    ))
}

/// `server_channel_binding = require` turned a login away: the server `why`.
fn binding_required(addr: &ServerAddr, why: &str) -> ServerError {
    ServerError::Auth(format!(
        "server_channel_binding is require, but the server at {addr} {why}: channel binding \
         needs SCRAM-SHA-256-PLUS over TLS"
    ))
}

fn unexpected_sasl() -> ServerError {
    ServerError::Auth("server sent a SASL message before SASL authentication started".into())
}

/// Sends a CancelRequest for `key` to the server at `addr` on a fresh connection, as the
/// protocol requires; the server answers nothing. The connect is bounded by `connect_timeout`
/// (`server_connect_timeout`, 0: unbounded), as every connection to a server is.
pub async fn send_cancel(
    addr: &ServerAddr,
    key: ServerKey,
    keepalive: &Keepalive,
    connect_timeout: Duration,
) -> io::Result<()> {
    let stream = addr.connect(connect_timeout, keepalive).await?;
    cancel_over(stream, key.process_id, key.secret_key).await
}

/// Sends a CancelRequest with this process id and secret over a fresh `stream` and waits (at
/// most 5 s) for the other end to close it, so the cancel is processed before we report
/// success. Also how a cancel is forwarded to a peer pooler.
pub async fn cancel_over(mut stream: Stream, process_id: i32, secret_key: i32) -> io::Result<()> {
    let mut out = BytesMut::new();
    frontend::cancel_request(&mut out, process_id, secret_key);
    wire::flush(&mut stream, &mut out).await?;
    let mut sink = BytesMut::with_capacity(16);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_buf(&mut stream, &mut sink),
    )
    .await;
    Ok(())
}
