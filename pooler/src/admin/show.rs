//! The result sets of the `SHOW` commands, built from snapshots of the pools and the
//! configuration so that the layout can be tested without a running pooler.
//!
//! Column names and their order follow PgBouncer's admin console, so exporters and scripts
//! written for PgBouncer read them unchanged. A statistic weir does not measure is 0, as
//! PgBouncer prints an unused counter, so exporters that parse numbers keep working.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;

use crate::config::{self, Config, Settings};
use crate::pool::hosts::HostStatus;
use crate::pool::{failover, Pool, PoolKey};
use crate::protocol::{backend, PgError, Severity};
use crate::registry::{ClientRecord, ServerRecord};

use super::parse::FakeParam;
use super::stats::{Averages, Totals};
use crate::server::ServerAddr;
use crate::tls::Tls;

/// A result set of text columns, ready to be sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names, in order.
    pub columns: Vec<&'static str>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub(super) fn new(columns: &[&'static str]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(
            row.len(),
            self.columns.len(),
            "row width of {:?}",
            self.columns
        );
        self.rows.push(row);
    }

    /// Appends RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        backend::row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&[u8]>> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            backend::data_row(out, &values);
        }
        backend::command_complete(out, "SHOW");
    }
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn flag(b: bool) -> Option<String> {
    text(u8::from(b))
}

/// What the console shows of one pool, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    /// Database name as clients see it.
    pub database: String,
    /// The user its server connections log in as.
    pub user: String,
    /// Pooling mode name.
    pub mode: &'static str,
    /// Server host (or socket directory) and port.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// `load_balance_hosts`, shown for a host list only.
    pub load_balance: Option<String>,
    /// Logged-in clients.
    pub clients: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Connections lent out.
    pub active: usize,
    /// Idle connections.
    pub idle: usize,
    /// All connections: lent, idle and being opened.
    pub total: usize,
    /// Checkouts served since start.
    pub checkouts: u64,
    /// Requests completed since start.
    pub queries: u64,
    /// Transactions completed since start.
    pub transactions: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Microseconds connections were lent to clients.
    pub lent_us: u64,
    /// Microseconds clients waited for connections.
    pub wait_us: u64,
    /// The auth file credential generation its server logins use (0: none from the file).
    pub credential_generation: u64,
}

impl PoolView {
    /// Reads a pool's counters.
    pub fn of(pool: &Pool) -> PoolView {
        let s = pool.stats();
        let (idle, total) = pool.counts();
        // A host list shows its first host, as the pool's usual home.
        let target = pool.target();
        let (host, port) = target.hosts.first().map(host_port).unwrap_or_default();
        let load_balance = (target.hosts.len() > 1).then(|| target.load_balance.to_string());
        PoolView {
            database: pool.key().database.clone(),
            user: pool.key().user.clone(),
            mode: pool.settings().mode.as_str(),
            host,
            port,
            load_balance,
            clients: s.clients.load(Ordering::Relaxed),
            waiting: s.waiting.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
            idle,
            total,
            checkouts: s.checkouts.load(Ordering::Relaxed),
            queries: s.queries.load(Ordering::Relaxed),
            transactions: s.transactions.load(Ordering::Relaxed),
            received: s.bytes_received.load(Ordering::Relaxed),
            sent: s.bytes_sent.load(Ordering::Relaxed),
            lent_us: s.server_us.load(Ordering::Relaxed),
            wait_us: s.wait_us.load(Ordering::Relaxed),
            credential_generation: pool.credential_generation(),
        }
    }

    /// Connections being opened (PgBouncer's `sv_login`).
    fn logging_in(&self) -> usize {
        self.total.saturating_sub(self.idle + self.active)
    }

    /// Clients that are not waiting (PgBouncer's `cl_active`: linked or idle).
    fn settled_clients(&self) -> usize {
        self.clients.saturating_sub(self.waiting)
    }
}

/// `SHOW POOLS`. The cancel-related counts are zero because weir forwards cancel requests
/// at once instead of queueing them in a pool; `sv_used` and `sv_tested` are zero because
/// idle connections are checked only as they are lent, which `sv_active` covers.
/// SHOW POOLS; `waits` is [`Registry::longest_waits`](crate::registry::Registry::longest_waits).
pub fn pools(views: &[PoolView], waits: &HashMap<PoolKey, Duration>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "load_balance_hosts",
    ]);
    for v in views {
        let max_wait = waits
            .get(&PoolKey {
                database: v.database.clone(),
                user: v.user.clone(),
            })
            .copied()
            .unwrap_or_default();
        rs.push(vec![
            text(&v.database),
            text(&v.user),
            text(v.settled_clients()),
            text(v.waiting),
            text(0),
            text(0),
            text(v.active),
            text(0),
            text(0),
            text(v.idle),
            text(0),
            text(0),
            text(v.logging_in()),
            text(max_wait.as_secs()),
            text(max_wait.subsec_micros()),
            text(v.mode),
            v.load_balance.clone(),
        ]);
    }
    rs
}

/// `SHOW STATS`, one row per database: totals since start and `averages` over the latest
/// `stats_period` (per second, or microseconds per transaction / assignment for times).
/// PgBouncer 1.25's columns in its order; what weir does not measure (query time apart from
/// transaction time, parse and bind counts) is 0. `total_xact_time` is the time server connections were
/// lent to clients, which in transaction mode is the transaction time.
pub fn stats(views: &[PoolView], averages: &BTreeMap<String, Averages>) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_client_parse_count",
        "total_server_parse_count",
        "total_bind_count",
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ]);
    for (db, t) in Totals::by_database(views) {
        let a = averages.get(&db).copied().unwrap_or_default();
        rs.push(vec![
            text(&db),
            text(t.assignments),
            text(t.xacts),
            text(t.queries),
            text(t.received),
            text(t.sent),
            text(t.xact_us),
            text(0),
            text(t.wait_us),
            text(0),
            text(0),
            text(0),
            text(a.assignments),
            text(a.xacts),
            text(a.queries),
            text(a.received),
            text(a.sent),
            text(a.xact_us),
            text(0),
            text(a.wait_us),
            text(0),
            text(0),
            text(0),
        ]);
    }
    rs
}

/// `SHOW STATS_TOTALS`: the database and the `total_` columns of SHOW STATS, under
/// PgBouncer's names for them.
pub fn stats_totals(stats: &ResultSet) -> ResultSet {
    project(
        stats,
        &[
            ("database", "database"),
            ("total_server_assignment_count", "server_assignment_count"),
            ("total_xact_count", "xact_count"),
            ("total_query_count", "query_count"),
            ("total_received", "bytes_received"),
            ("total_sent", "bytes_sent"),
            ("total_xact_time", "xact_time"),
            ("total_query_time", "query_time"),
            ("total_wait_time", "wait_time"),
            ("total_client_parse_count", "client_parse_count"),
            ("total_server_parse_count", "server_parse_count"),
            ("total_bind_count", "bind_count"),
        ],
    )
}

/// `SHOW STATS_AVERAGES`: the database and the `avg_` columns of SHOW STATS, under
/// PgBouncer's names for them.
pub fn stats_averages(stats: &ResultSet) -> ResultSet {
    project(
        stats,
        &[
            ("database", "database"),
            ("avg_server_assignment_count", "server_assignment_count"),
            ("avg_xact_count", "xact_count"),
            ("avg_query_count", "query_count"),
            ("avg_recv", "bytes_received"),
            ("avg_sent", "bytes_sent"),
            ("avg_xact_time", "xact_time"),
            ("avg_query_time", "query_time"),
            ("avg_wait_time", "wait_time"),
            ("avg_client_parse_count", "avg_client_parse_count"),
            ("avg_server_parse_count", "avg_server_parse_count"),
            ("avg_bind_count", "avg_bind_count"),
        ],
    )
}

/// `SHOW TOTALS`: every SHOW STATS number summed over the databases, one `name`/`value` row
/// each under PgBouncer's names; 0 where weir does not measure it.
pub fn totals(stats: &ResultSet) -> ResultSet {
    let mut rs = ResultSet::new(&["name", "value"]);
    for (column, name) in [
        (
            "total_server_assignment_count",
            "total_server_assignment_count",
        ),
        ("total_xact_count", "total_xact_count"),
        ("total_query_count", "total_query_count"),
        ("total_received", "total_client_bytes"),
        ("total_sent", "total_server_bytes"),
        ("total_xact_time", "total_xact_time"),
        ("total_query_time", "total_query_time"),
        ("total_wait_time", "total_wait_time"),
        ("total_client_parse_count", "total_ps_client_parse_count"),
        ("total_server_parse_count", "total_ps_server_parse_count"),
        ("total_bind_count", "total_ps_bind_count"),
        ("avg_server_assignment_count", "avg_server_assignment_count"),
        ("avg_xact_count", "avg_xact_count"),
        ("avg_query_count", "avg_query_count"),
        ("avg_recv", "avg_client_bytes"),
        ("avg_sent", "avg_server_bytes"),
        ("avg_xact_time", "avg_xact_time"),
        ("avg_query_time", "avg_query_time"),
        ("avg_wait_time", "avg_wait_time"),
        ("avg_client_parse_count", "avg_ps_client_parse_count"),
        ("avg_server_parse_count", "avg_ps_server_parse_count"),
        ("avg_bind_count", "avg_ps_bind_count"),
    ] {
        let i = stats.columns.iter().position(|c| *c == column);
        let values: Option<Vec<u64>> = stats
            .rows
            .iter()
            .map(|row| i.and_then(|i| row[i].as_deref()?.parse().ok()))
            .collect();
        let sum = values.map(|v| v.iter().sum::<u64>());
        rs.push(vec![text(name), sum.map(|s| s.to_string())]);
    }
    rs
}

/// The `columns` of `rs` (by name), renamed.
fn project(rs: &ResultSet, columns: &[(&str, &'static str)]) -> ResultSet {
    let names: Vec<&'static str> = columns.iter().map(|(_, to)| *to).collect();
    let mut out = ResultSet::new(&names);
    let at: Vec<Option<usize>> = columns
        .iter()
        .map(|(from, _)| rs.columns.iter().position(|c| c == from))
        .collect();
    for row in &rs.rows {
        out.push(at.iter().map(|i| i.and_then(|i| row[i].clone())).collect());
    }
    out
}

/// `SHOW` of a fake session parameter: PgBouncer's fixed value, so drivers that ask get an
/// answer.
pub fn param(p: FakeParam) -> ResultSet {
    let mut rs = ResultSet::new(&[p.name]);
    rs.push(vec![text(p.value)]);
    rs
}

/// The columns PgBouncer shows for each client or server connection.
const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// A time as PgBouncer prints it: `2026-01-31 12:00:00 UTC`.
fn timestamp(t: SystemTime) -> Option<String> {
    let t = jiff::Timestamp::try_from(t).ok()?;
    Some(t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// A connection's `ptr` or `link`: its pooler-wide id in hex, as PgBouncer shows addresses.
fn pointer(id: u64) -> Option<String> {
    Some(format!("{id:#x}"))
}

/// `SHOW CLIENTS`: every logged-in client, admin console sessions included. `state` is
/// `waiting` while the client waits for a server connection and `active` otherwise, as in
/// PgBouncer; `link` names the server connection it holds. `pinned` (1 or 0, Weir's own,
/// after PgBouncer's columns) says whether it keeps its server connection for good.
pub fn clients(records: &[Arc<ClientRecord>]) -> ResultSet {
    let mut rs = ResultSet::new(&[CONNECTION_COLUMNS, &["pinned"]].concat());
    for c in records {
        let wait = c.waiting_for().unwrap_or_default();
        let i = &c.info;
        rs.push(vec![
            text("C"),
            text(&i.user),
            text(&i.database),
            text(i.replication),
            text(if c.waiting_for().is_some() {
                "waiting"
            } else {
                "active"
            }),
            text(i.peer.addr),
            text(i.peer.port),
            text(i.local.addr),
            text(i.local.port),
            timestamp(c.connected_at),
            timestamp(c.request_time().unwrap_or(c.connected_at)),
            text(wait.as_secs()),
            text(wait.subsec_micros()),
            text(0),
            pointer(c.id),
            c.link().and_then(pointer),
            text(0),
            text(""),
            text(&i.application_name),
            text(c.prepared()),
            text(c.id),
            text(u8::from(c.pinned())),
        ]);
    }
    rs
}

/// `SHOW SERVERS`: every open server connection, `active` while lent to the client its
/// `link` names and `idle` in the pool; `remote_pid` is the backend's process id.
pub fn servers(records: &[Arc<ServerRecord>]) -> ResultSet {
    let mut rs = ResultSet::new(CONNECTION_COLUMNS);
    for s in records {
        let (host, port) = host_port(&s.addr);
        rs.push(vec![
            text("S"),
            text(&s.pool.user),
            text(&s.pool.database),
            text("none"),
            text(if s.link().is_some() { "active" } else { "idle" }),
            text(host),
            text(port),
            text(s.local.addr),
            text(s.local.port),
            timestamp(s.connected_at),
            timestamp(s.request_time().unwrap_or(s.connected_at)),
            text(0),
            text(0),
            text(0),
            pointer(s.id),
            s.link().and_then(pointer),
            text(s.key.process_id),
            text(""),
            text(&s.application_name),
            text(s.prepared()),
            text(s.id),
        ]);
    }
    rs
}

/// A server address as SHOW shows it: the host (or socket directory) and the port.
fn host_port(addr: &ServerAddr) -> (String, u16) {
    match addr {
        ServerAddr::Tcp { host, port } => (host.clone(), *port),
        ServerAddr::Unix { dir, port } => (dir.display().to_string(), *port),
    }
}

/// What `SHOW HOSTS` shows of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Database name as clients see it.
    pub database: String,
    /// The user its server connections log in as.
    pub user: String,
    /// The host list, `host:port` comma-separated.
    pub hosts: String,
    /// `target_session_attrs`.
    pub target_session_attrs: String,
    /// Failover handling.
    pub failover: failover::Status,
    /// Each host's health and connections.
    pub health: Vec<HostStatus>,
}

impl HostView {
    /// Reads a pool's hosts and failover state.
    pub fn of(pool: &Pool) -> HostView {
        let target = pool.target();
        let hosts: Vec<String> = target.hosts.iter().map(ToString::to_string).collect();
        HostView {
            database: pool.key().database.clone(),
            user: pool.key().user.clone(),
            hosts: hosts.join(","),
            target_session_attrs: target.session_attrs.to_string(),
            failover: pool.failover_status(),
            health: pool.host_status(),
        }
    }
}

/// `SHOW HOSTS` (a Weir extension): one row per host of each pool, with the pool's host list,
/// the host it connects to now (the primary when `target_session_attrs` asks for one), its
/// failover handling (`off`, `serving`, or `holding` while a new primary is looked for), and
/// the host's own state (`up`, `out` or `lagging`), server connections (all, and lent) and
/// replay lag in seconds (measured with `replica_max_lag`).
pub fn hosts(views: &[HostView]) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "user",
        "hosts",
        "target_session_attrs",
        "current_host",
        "failover",
        "failovers",
        "recovered",
        "held_clients",
        "host",
        "state",
        "server_connections",
        "active",
        "lag",
        "reason",
    ]);
    for v in views {
        let f = &v.failover;
        let state = match (f.enabled, f.holding) {
            (_, true) => "holding",
            (true, false) => "serving",
            (false, false) => "off",
        };
        for h in &v.health {
            rs.push(vec![
                text(&v.database),
                text(&v.user),
                text(&v.hosts),
                text(&v.target_session_attrs),
                f.current.clone(),
                text(state),
                text(f.failovers),
                text(f.recovered),
                text(f.held),
                text(&h.host),
                text(h.state),
                text(h.server_connections),
                text(h.active),
                h.lag.map(|lag| format!("{:.3}", lag.as_secs_f64())),
                h.why.clone(),
            ]);
        }
    }
    rs
}

/// A database's console flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbFlags {
    /// Paused (PAUSE or KILL until RESUME).
    pub paused: bool,
    /// Disabled (DISABLE until ENABLE).
    pub disabled: bool,
}

/// `SHOW DATABASES`: every configured database, any database served through the `*`
/// fallback that has a pool, and the console's own `pgbouncer` database.
pub fn databases(
    config: &Config,
    views: &[PoolView],
    flags: &dyn Fn(&str) -> DbFlags,
) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool_size",
        "server_lifetime",
        "pool_mode",
        "load_balance_hosts",
        "max_connections",
        "current_connections",
        "max_client_connections",
        "current_client_connections",
        "paused",
        "disabled",
    ]);
    let s = &config.pgbouncer;
    let mut names: BTreeSet<&str> = config
        .databases
        .keys()
        .map(String::as_str)
        .filter(|n| *n != config::FALLBACK_DATABASE)
        .collect();
    names.extend(views.iter().map(|v| v.database.as_str()));
    for name in names {
        let Some((_, entry)) = config.database(name) else {
            continue;
        };
        let mine = views.iter().filter(|v| v.database == name);
        let (servers, clients) = mine.fold((0, 0), |(s, c), v| (s + v.total, c + v.clients));
        let f = flags(name);
        rs.push(vec![
            text(name),
            entry.host.clone(),
            text(entry.port_or_default()),
            text(entry.dbname_or(name)),
            entry.user.clone(),
            text(entry.pool_size.unwrap_or(s.default_pool_size)),
            text(config.min_pool_size_for(name)),
            text(config.reserve_pool_size_for(name)),
            text(config.server_lifetime_for(name).as_secs()),
            entry.pool_mode.map(|m| m.as_str().to_owned()),
            entry.load_balance_shown().map(|l| l.to_string()),
            text(config.max_db_connections_for(name)),
            text(servers),
            text(config.max_db_client_connections_for(name)),
            text(clients),
            flag(f.paused),
            flag(f.disabled),
        ]);
    }
    rs.push(vec![
        text("pgbouncer"),
        None,
        text(s.listen_port),
        text("pgbouncer"),
        text("pgbouncer"),
        text(2),
        text(0),
        text(0),
        text(0),
        text("statement"),
        None,
        text(0),
        text(0),
        text(0),
        text(0),
        flag(false),
        flag(false),
    ]);
    rs
}

/// `SHOW USERS`: users with a `[users]` entry or a pool. Connection counts are of the pools
/// logging in as that user (a forced `user=` counts for the forced user). The Weir column
/// `credential_generation` is the oldest auth file credential generation those pools log in
/// with (NULL without a pool), so a finished password rotation shows as every pool moving on.
pub fn users(config: &Config, views: &[PoolView]) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "name",
        "pool_size",
        "reserve_pool_size",
        "pool_mode",
        "max_user_connections",
        "current_connections",
        "max_user_client_connections",
        "current_client_connections",
        "credential_generation",
    ]);
    let mut names: BTreeSet<&str> = config.users.keys().map(String::as_str).collect();
    names.extend(views.iter().map(|v| v.user.as_str()));
    for name in names {
        let entry = config.users.get(name);
        let mine = views.iter().filter(|v| v.user == name);
        let (servers, clients) = mine
            .clone()
            .fold((0, 0), |(s, c), v| (s + v.total, c + v.clients));
        let generation = mine.map(|v| v.credential_generation).min();
        rs.push(vec![
            text(name),
            entry.and_then(|e| e.pool_size).map(|n| n.to_string()),
            entry
                .and_then(|e| e.reserve_pool_size)
                .map(|n| n.to_string()),
            entry
                .and_then(|e| e.pool_mode)
                .map(|m| m.as_str().to_owned()),
            text(config.max_user_connections_for(name)),
            text(servers),
            text(0),
            text(clients),
            generation.map(|g| g.to_string()),
        ]);
    }
    rs
}

/// `SHOW CONFIG`: every setting, its value, its default and whether `SET` may change it.
pub fn config(config: &Config) -> ResultSet {
    let mut rs = ResultSet::new(&["key", "value", "default", "changeable"]);
    let defaults = Settings::default();
    for key in Settings::KEYS {
        let changeable = !config::RESTART_KEYS.contains(key);
        rs.push(vec![
            text(key),
            config.pgbouncer.get(key),
            defaults.get(key),
            text(if changeable { "yes" } else { "no" }),
        ]);
    }
    rs
}

/// `SHOW LISTS`, PgBouncer's rows in its order. Weir has no free lists or DNS cache, so
/// those counts are truly zero; clients still logging in are not counted apart (0).
pub fn lists(
    config: &Config,
    views: &[PoolView],
    connected: usize,
    peer_pools: usize,
) -> ResultSet {
    let mut rs = ResultSet::new(&["list", "items"]);
    let databases = config
        .databases
        .keys()
        .filter(|n| *n != config::FALLBACK_DATABASE)
        .count();
    let users: BTreeSet<&str> = config
        .users
        .keys()
        .map(String::as_str)
        .chain(views.iter().map(|v| v.user.as_str()))
        .collect();
    let servers: usize = views.iter().map(|v| v.total).sum();
    for (name, items) in [
        ("databases", text(databases)),
        ("users", text(users.len())),
        ("peers", text(config.peers.len())),
        ("pools", text(views.len())),
        ("peer_pools", text(peer_pools)),
        ("free_clients", text(0)),
        ("used_clients", text(connected)),
        ("login_clients", text(0)),
        ("free_servers", text(0)),
        ("used_servers", text(servers)),
        ("dns_names", text(0)),
        ("dns_zones", text(0)),
        ("dns_queries", text(0)),
        ("dns_pending", text(0)),
    ] {
        rs.push(vec![text(name), items]);
    }
    rs
}

/// `SHOW VERSION`.
pub fn version() -> ResultSet {
    let mut rs = ResultSet::new(&["version"]);
    rs.push(vec![text(format!(
        "PgBouncer {} (Weir {})",
        super::PGBOUNCER_VERSION,
        env!("CARGO_PKG_VERSION")
    ))]);
    rs
}

/// `SHOW STATE`: whether the pooler is active or paused as a whole (weir never suspends).
pub fn state(paused_all: bool, draining: bool) -> ResultSet {
    let mut rs = ResultSet::new(&["key", "value"]);
    let yes_no = |b: bool| text(if b { "yes" } else { "no" });
    rs.push(vec![text("active"), yes_no(!paused_all && !draining)]);
    rs.push(vec![text("paused"), yes_no(paused_all)]);
    rs.push(vec![text("suspended"), yes_no(false)]);
    rs
}

/// `SHOW CERTIFICATES` (a Weir extension): each certificate the pooler shows, the mode it
/// serves, when it expires and the seconds left at `now` (Unix seconds; negative once
/// expired). A side without a certificate has no row.
pub fn certificates(tls: &Tls, now: i64) -> ResultSet {
    let mut rs = ResultSet::new(&["certificate", "mode", "not_after", "expires_in"]);
    let sides = [
        (
            "client_tls_cert_file",
            tls.client.mode,
            tls.client.not_after,
        ),
        (
            "server_tls_cert_file",
            tls.server.mode,
            tls.server.not_after,
        ),
    ];
    for (setting, mode, not_after) in sides {
        let Some(t) = not_after else { continue };
        let when = jiff::Timestamp::from_second(t)
            .ok()
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string());
        rs.push(vec![text(setting), text(mode), when, text(t - now)]);
    }
    rs
}

/// `SHOW REDIS`: one row per Redis backend, its connections by kind and its pool counters.
pub fn redis(backends: &[crate::redis::BackendStats]) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "backend",
        "shared",
        "exclusive_in_use",
        "exclusive_idle",
        "pubsub",
        "pool_hits",
        "pool_misses",
        "short_lived_closes",
        "idle_closes",
        "select_switches",
        "waits",
    ]);
    for b in backends {
        rs.push(vec![
            text(&b.backend),
            text(b.shared),
            text(b.exclusive_in_use),
            text(b.exclusive_idle),
            text(b.pubsub),
            text(b.pool_hits),
            text(b.pool_misses),
            text(b.short_lived_closes),
            text(b.idle_closes),
            text(b.select_switches),
            text(b.waits),
        ]);
    }
    rs
}

/// `SHOW HELP`: the commands the console knows, as PgBouncer 1.25 tells them: a notice
/// "Console usage" whose detail lists them (no rows), plus weir's SHOW CERTIFICATES,
/// SHOW HOSTS and SHOW REDIS.
pub fn help() -> PgError {
    let mut notice = PgError::new(Severity::Notice, "00000", "Console usage");
    notice.detail = Some(
        "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
         \tSHOW PEERS|PEER_POOLS\n\
         \tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n\
         \tSHOW DNS_HOSTS|DNS_ZONES\n\
         \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
         \tSHOW CERTIFICATES\n\
         \tSHOW HOSTS\n\
         \tSHOW REDIS\n\
         \tSET key = arg\n\
         \tRELOAD\n\
         \tPAUSE [<db>]\n\
         \tRESUME [<db>]\n\
         \tDISABLE <db>\n\
         \tENABLE <db>\n\
         \tRECONNECT [<db>]\n\
         \tKILL [<db>]\n\
         \tKILL_CLIENT <client_id>\n\
         \tSUSPEND\n\
         \tSHUTDOWN\n\
         \tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
         \tWAIT_CLOSE [<db>]"
            .to_owned(),
    );
    notice
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_rows_one_per_backend() {
        let b = crate::redis::BackendStats {
            backend: "10.0.0.1:6379".into(),
            shared: 2,
            exclusive_in_use: 3,
            exclusive_idle: 4,
            pubsub: 1,
            pool_hits: 10,
            pool_misses: 5,
            short_lived_closes: 6,
            idle_closes: 7,
            select_switches: 8,
            waits: 9,
        };
        let rs = redis(&[b]);
        assert_eq!(rs.columns.len(), rs.rows[0].len());
        assert_eq!(rs.rows[0][0], text("10.0.0.1:6379"));
        assert_eq!(rs.rows[0][3], text(4));
        assert_eq!(rs.rows[0][9], text(8));
        assert!(redis(&[]).rows.is_empty());
    }

    use super::*;

    #[test]
    fn hosts_show_the_host_in_use_and_the_failover_state() {
        let host = |name: &str, state, lag| HostStatus {
            host: name.into(),
            state,
            server_connections: 3,
            active: 1,
            lag,
            why: (state == "out").then(|| "connection refused".into()),
        };
        let view = |enabled, holding, current: Option<&str>| HostView {
            database: "app".into(),
            user: "app".into(),
            hosts: "a:5432,b:5432".into(),
            target_session_attrs: "read-write".into(),
            failover: failover::Status {
                enabled,
                holding,
                current: current.map(Into::into),
                failovers: 2,
                recovered: 1,
                held: 3,
            },
            health: vec![
                host("a:5432", "up", Some(Duration::from_millis(1500))),
                host("b:5432", "out", None),
            ],
        };
        let rs = hosts(&[
            view(true, false, Some("b:5432")),
            view(true, true, None),
            view(false, false, None),
        ]);
        check_widths(&rs);
        assert_eq!(rs.rows.len(), 6, "one row per host of each pool");
        assert_eq!(col(&rs, 0, "current_host"), Some("b:5432"));
        assert_eq!(col(&rs, 0, "failover"), Some("serving"));
        assert_eq!(col(&rs, 2, "failover"), Some("holding"));
        assert_eq!(col(&rs, 2, "current_host"), None);
        assert_eq!(col(&rs, 4, "failover"), Some("off"));
        assert_eq!(col(&rs, 0, "failovers"), Some("2"));
        assert_eq!(col(&rs, 0, "held_clients"), Some("3"));
        assert_eq!(col(&rs, 0, "host"), Some("a:5432"));
        assert_eq!(col(&rs, 0, "state"), Some("up"));
        assert_eq!(col(&rs, 0, "server_connections"), Some("3"));
        assert_eq!(col(&rs, 0, "active"), Some("1"));
        assert_eq!(col(&rs, 0, "lag"), Some("1.500"));
        assert_eq!(col(&rs, 0, "reason"), None);
        assert_eq!(col(&rs, 1, "state"), Some("out"));
        assert_eq!(col(&rs, 1, "lag"), None);
        assert_eq!(col(&rs, 1, "reason"), Some("connection refused"));
    }

    #[test]
    fn certificates_show_each_side_with_a_certificate() {
        let mut tls = Tls::load(&Settings::default()).expect("defaults load");
        assert!(certificates(&tls, 0).rows.is_empty());
        tls.client.not_after = Some(1_800_000_000);
        let rs = certificates(&tls, 1_799_999_000);
        assert_eq!(rs.rows.len(), 1);
        assert_eq!(
            rs.rows[0],
            vec![
                text("client_tls_cert_file"),
                text("disable"),
                text("2027-01-15 08:00:00 UTC"),
                text(1000),
            ]
        );
        Arc::make_mut(&mut tls.server).not_after = Some(100);
        let rs = certificates(&tls, 200);
        assert_eq!(rs.rows[1][0], text("server_tls_cert_file"));
        assert_eq!(rs.rows[1][3], text(-100), "negative once expired");
    }

    fn view() -> PoolView {
        PoolView {
            database: "app".into(),
            user: "app".into(),
            mode: "transaction",
            host: "127.0.0.1".into(),
            port: 5432,
            load_balance: None,
            clients: 5,
            waiting: 1,
            active: 2,
            idle: 3,
            total: 6,
            checkouts: 10,
            queries: 20,
            transactions: 15,
            received: 100,
            sent: 200,
            lent_us: 300,
            wait_us: 400,
            credential_generation: 2,
        }
    }

    fn col<'a>(rs: &'a ResultSet, row: usize, name: &str) -> Option<&'a str> {
        let i = rs.columns.iter().position(|c| *c == name).expect(name);
        rs.rows[row][i].as_deref()
    }

    fn check_widths(rs: &ResultSet) {
        for row in &rs.rows {
            assert_eq!(row.len(), rs.columns.len(), "{:?}", rs.columns);
        }
    }

    #[test]
    fn pools_counts() {
        let app = PoolKey {
            database: "app".into(),
            user: "app".into(),
        };
        let rs = pools(
            &[view()],
            &HashMap::from([(app, Duration::from_micros(2_500_000))]),
        );
        check_widths(&rs);
        assert_eq!(col(&rs, 0, "cl_active"), Some("4"));
        assert_eq!(col(&rs, 0, "cl_waiting"), Some("1"));
        assert_eq!(col(&rs, 0, "sv_active"), Some("2"));
        assert_eq!(col(&rs, 0, "sv_idle"), Some("3"));
        assert_eq!(col(&rs, 0, "sv_login"), Some("1"));
        assert_eq!(col(&rs, 0, "maxwait"), Some("2"));
        assert_eq!(col(&rs, 0, "maxwait_us"), Some("500000"));
        assert_eq!(col(&rs, 0, "pool_mode"), Some("transaction"));
        assert_eq!(col(&rs, 0, "load_balance_hosts"), None);
        let listed = PoolView {
            load_balance: Some("disable".into()),
            ..view()
        };
        let rs = pools(&[listed], &HashMap::new());
        assert_eq!(col(&rs, 0, "load_balance_hosts"), Some("disable"));
    }

    #[test]
    fn stats_sum_per_database() {
        let mut other = view();
        other.user = "other".into();
        let mut second_db = view();
        second_db.database = "zz".into();
        let mut averages = BTreeMap::new();
        averages.insert(
            "app".to_owned(),
            Averages {
                xacts: 12,
                wait_us: 34,
                ..Averages::default()
            },
        );
        let rs = stats(&[view(), other, second_db], &averages);
        check_widths(&rs);
        assert_eq!(rs.rows.len(), 2);
        assert_eq!(col(&rs, 0, "database"), Some("app"));
        assert_eq!(col(&rs, 0, "total_xact_count"), Some("30"));
        assert_eq!(col(&rs, 0, "total_query_count"), Some("40"));
        assert_eq!(col(&rs, 0, "total_server_assignment_count"), Some("20"));
        assert_eq!(col(&rs, 0, "total_received"), Some("200"));
        assert_eq!(col(&rs, 0, "total_sent"), Some("400"));
        assert_eq!(col(&rs, 0, "total_xact_time"), Some("600"));
        assert_eq!(col(&rs, 0, "total_wait_time"), Some("800"));
        assert_eq!(col(&rs, 0, "total_query_time"), Some("0"));
        assert_eq!(col(&rs, 0, "avg_xact_count"), Some("12"));
        assert_eq!(col(&rs, 0, "avg_wait_time"), Some("34"));
        assert_eq!(col(&rs, 0, "avg_query_time"), Some("0"));
        assert_eq!(col(&rs, 1, "avg_xact_count"), Some("0"));
        assert_eq!(col(&rs, 1, "database"), Some("zz"));
    }

    #[test]
    fn clients_and_servers_from_the_registry() {
        use crate::registry::{ClientInfo, Endpoint, NewServer, Registry};
        use crate::server::ServerKey;

        let registry = Arc::new(Registry::default());
        let client = |app: &str| ClientInfo {
            user: "alice".into(),
            database: "app".into(),
            application_name: app.into(),
            peer: Endpoint::tcp("10.1.2.3:40001".parse().unwrap()),
            local: Endpoint::tcp("10.9.9.9:6432".parse().unwrap()),
            pool: None,
            replication: if app == "worker" { "logical" } else { "none" },
        };
        let linked = registry.add_client(client("api"), 0);
        let waiting = registry.add_client(client("worker"), 0);
        let server = registry.add_server(NewServer {
            pool: crate::pool::PoolKey {
                database: "app".into(),
                user: "alice".into(),
            },
            addr: Arc::new(ServerAddr::new("db.internal", 5433)),
            key: ServerKey {
                process_id: 31337,
                secret_key: 1,
            },
            local: Endpoint::tcp("10.9.9.9:51000".parse().unwrap()),
            application_name: "weir".into(),
        });
        linked.start_waiting(std::time::Instant::now());
        linked.link_to(&server);
        waiting.start_waiting(std::time::Instant::now());

        let rs = clients(&registry.clients());
        check_widths(&rs);
        assert_eq!(rs.rows.len(), 2);
        assert_eq!(col(&rs, 0, "type"), Some("C"));
        assert_eq!(col(&rs, 0, "state"), Some("active"));
        assert_eq!(col(&rs, 0, "addr"), Some("10.1.2.3"));
        assert_eq!(col(&rs, 0, "port"), Some("40001"));
        assert_eq!(col(&rs, 0, "local_port"), Some("6432"));
        assert_eq!(col(&rs, 0, "application_name"), Some("api"));
        assert_eq!(col(&rs, 0, "link"), pointer(server.id).as_deref());
        assert_eq!(col(&rs, 0, "id"), Some(linked.id.to_string().as_str()));
        assert!(col(&rs, 0, "connect_time").unwrap().ends_with(" UTC"));
        assert_eq!(col(&rs, 1, "state"), Some("waiting"));
        assert_eq!(col(&rs, 1, "link"), None);
        assert_eq!(col(&rs, 0, "replication"), Some("none"));
        assert_eq!(col(&rs, 1, "replication"), Some("logical"));

        let rs = servers(&registry.servers());
        check_widths(&rs);
        assert_eq!(rs.rows.len(), 1);
        assert_eq!(col(&rs, 0, "type"), Some("S"));
        assert_eq!(col(&rs, 0, "state"), Some("active"));
        assert_eq!(col(&rs, 0, "addr"), Some("db.internal"));
        assert_eq!(col(&rs, 0, "port"), Some("5433"));
        assert_eq!(col(&rs, 0, "remote_pid"), Some("31337"));
        assert_eq!(col(&rs, 0, "link"), pointer(linked.id).as_deref());
        linked.unlink(&server);
        let rs = servers(&registry.servers());
        assert_eq!(col(&rs, 0, "state"), Some("idle"));
        assert_eq!(col(&rs, 0, "link"), None);
    }

    #[test]
    fn timestamps_look_like_pgbouncer_ones() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamp(t).as_deref(), Some("2023-11-14 22:13:20 UTC"));
    }

    fn sample_config() -> Config {
        config_with("")
    }

    /// The sample configuration with `databases` lines added.
    fn config_with(databases: &str) -> Config {
        let ini = format!(
            "[databases]\napp = host=127.0.0.1 port=5433 dbname=real pool_size=7 user=app\n\
             * = host=127.0.0.1 user=app\n{databases}[users]\nbob = pool_mode=session\n\
             [pgbouncer]\nauth_type = any\nlisten_addr = 127.0.0.1\n"
        );
        match Config::parse(&ini, std::path::Path::new("t.ini")) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn databases_rows() {
        let config = config_with("list = host=a,b user=app\n");
        let mut fallback = view();
        fallback.database = "other".into();
        let flags = |db: &str| DbFlags {
            paused: db == "app",
            disabled: db == "other",
        };
        let rs = databases(&config, &[view(), fallback], &flags);
        check_widths(&rs);
        assert_eq!(rs.rows.len(), 4);
        assert_eq!(col(&rs, 0, "name"), Some("app"));
        assert_eq!(col(&rs, 0, "port"), Some("5433"));
        assert_eq!(col(&rs, 0, "database"), Some("real"));
        assert_eq!(col(&rs, 0, "pool_size"), Some("7"));
        assert_eq!(col(&rs, 0, "current_connections"), Some("6"));
        assert_eq!(col(&rs, 0, "current_client_connections"), Some("5"));
        assert_eq!(col(&rs, 0, "paused"), Some("1"));
        assert_eq!(col(&rs, 0, "disabled"), Some("0"));
        assert_eq!(col(&rs, 0, "load_balance_hosts"), None);
        assert_eq!(col(&rs, 1, "name"), Some("list"));
        assert_eq!(col(&rs, 1, "host"), Some("a,b"));
        assert_eq!(col(&rs, 1, "load_balance_hosts"), Some("round-robin"));
        assert_eq!(col(&rs, 2, "name"), Some("other"));
        assert_eq!(col(&rs, 2, "disabled"), Some("1"));
        assert_eq!(col(&rs, 3, "name"), Some("pgbouncer"));
    }

    #[test]
    fn users_config_lists_state() {
        let config = sample_config();
        let rs = users(&config, &[view()]);
        check_widths(&rs);
        assert_eq!(col(&rs, 0, "name"), Some("app"));
        assert_eq!(col(&rs, 1, "name"), Some("bob"));
        assert_eq!(col(&rs, 1, "pool_mode"), Some("session"));
        assert_eq!(col(&rs, 0, "current_connections"), Some("6"));
        assert_eq!(col(&rs, 1, "credential_generation"), None, "no pool");
        let lagging = PoolView {
            database: "other".into(),
            credential_generation: 1,
            ..view()
        };
        let rs = users(&config, &[view(), lagging]);
        assert_eq!(col(&rs, 0, "credential_generation"), Some("1"), "oldest");

        let rs = self::config(&config);
        check_widths(&rs);
        let row = rs
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some("auth_type"))
            .expect("auth_type");
        assert_eq!(row[1].as_deref(), Some("any"));
        assert_eq!(rs.rows.len(), Settings::KEYS.len());

        let rs = lists(&config, &[view()], 9, 2);
        check_widths(&rs);
        let names: Vec<_> = rs
            .rows
            .iter()
            .map(|r| r[0].as_deref().unwrap_or(""))
            .collect();
        assert_eq!(
            names[..8],
            [
                "databases",
                "users",
                "peers",
                "pools",
                "peer_pools",
                "free_clients",
                "used_clients",
                "login_clients"
            ]
        );
        assert_eq!(rs.rows[0], vec![text("databases"), text(1)]);
        assert_eq!(rs.rows[4], vec![text("peer_pools"), text(2)]);
        assert_eq!(rs.rows[6], vec![text("used_clients"), text(9)]);
        assert!(rs.rows.iter().all(|r| r[1].is_some()), "no NULL counts");

        let rs = state(true, false);
        assert_eq!(rs.rows[0], vec![text("active"), text("no")]);
        assert_eq!(rs.rows[1], vec![text("paused"), text("yes")]);
        check_widths(&version());
    }

    #[test]
    fn encode_sends_description_rows_and_tag() {
        let mut out = BytesMut::new();
        version().encode(&mut out);
        assert_eq!(out[0], b'T');
        assert!(out.windows(4).any(|w| w == b"Weir"));
        assert!(out.ends_with(b"SHOW\0"));
    }
}
