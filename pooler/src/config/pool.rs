//! The effective settings of one pool, resolved from the configuration in one place.
//!
//! A pool serves one (database, user) pair. Its settings come from three levels — the
//! `[users]` entry, the `[databases]` entry (or the `*` fallback), then `[pgbouncer]` — and
//! [`Config::pool_settings`] is the only code that walks them: the pooler builds its pools
//! from it, the admin console and `/status` show what it returned, and the operator's tests
//! check what it renders through it.

use std::time::Duration;

use super::{Config, PoolMode};

/// The text of `server_check_query` that stands for an empty query (PgBouncer's default).
pub const EMPTY_CHECK_QUERY: &str = "<empty>";

/// What `server_check_query` asks for before an idle connection is lent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCheck {
    /// An empty setting: connections are lent without a check.
    Off,
    /// `<empty>`: an empty Query message, answered by EmptyQueryResponse.
    EmptyQuery,
    /// Any other text, sent as it is.
    Query(String),
}

impl ServerCheck {
    /// Reads a `server_check_query` value.
    pub fn from_setting(text: &str) -> ServerCheck {
        match text.trim() {
            "" => ServerCheck::Off,
            EMPTY_CHECK_QUERY => ServerCheck::EmptyQuery,
            _ => ServerCheck::Query(text.to_owned()),
        }
    }

    /// The query text to send, `None` when the check is off.
    pub fn sql(&self) -> Option<&str> {
        match self {
            ServerCheck::Off => None,
            ServerCheck::EmptyQuery => Some(""),
            ServerCheck::Query(q) => Some(q),
        }
    }
}

/// How long a server connection may serve clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLifetime {
    /// `server_lifetime = 0`: each connection serves one client, then closes (PgBouncer's
    /// meaning). A connection opened for `min_pool_size` waits idle for its one use.
    SingleUse,
    /// Connections older than this close once they are no longer lent.
    Max(Duration),
}

impl ServerLifetime {
    /// Reads a `server_lifetime` value.
    pub fn from_setting(lifetime: Duration) -> ServerLifetime {
        if lifetime.is_zero() {
            ServerLifetime::SingleUse
        } else {
            ServerLifetime::Max(lifetime)
        }
    }

    /// Whether a connection of age `age` that has just served a client must close.
    pub fn expired_after_use(self, age: Duration) -> bool {
        match self {
            ServerLifetime::SingleUse => true,
            ServerLifetime::Max(max) => age >= max,
        }
    }

    /// Whether an idle connection of age `age` must close (a single-use connection that has
    /// not been used yet has not expired).
    pub fn expired_idle(self, age: Duration) -> bool {
        match self {
            ServerLifetime::SingleUse => false,
            ServerLifetime::Max(max) => age >= max,
        }
    }
}

/// The effective settings of the pool of one (database, user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// How long a client keeps a server connection.
    pub mode: PoolMode,
    /// `pool_size`: connections lent at once without the reserve.
    pub size: usize,
    /// `min_pool_size`: connections kept open even when idle.
    pub min_size: usize,
    /// `reserve_pool_size`: extra connections for clients that waited too long.
    pub reserve_size: usize,
    /// `reserve_pool_timeout`: the wait after which the reserve may be used.
    pub reserve_timeout: Duration,
    /// `server_lifetime`.
    pub lifetime: ServerLifetime,
    /// `server_idle_timeout`: idle connections beyond `min_pool_size` close after this
    /// (zero: never).
    pub idle_timeout: Duration,
    /// `server_check_delay`: an idle connection older than this is checked before reuse.
    pub check_delay: Duration,
    /// `server_check_query`.
    pub check: ServerCheck,
    /// `server_login_retry`: after a failed login, new clients fail fast for this long.
    pub login_retry: Duration,
    /// `max_db_connections` of the database over all its pools (0: unlimited).
    pub max_db_connections: u32,
    /// `max_user_connections` of the pool's user over all its pools (0: unlimited).
    pub max_user_connections: u32,
    /// `server_round_robin`: lend the idle connection used longest ago instead of the most
    /// recently used one.
    pub round_robin: bool,
    /// `failover_hold` (Weir extension): hold clients while a new primary is looked for.
    pub failover_hold: bool,
    /// `query_wait_timeout`: how long clients are held at most (zero: without a limit).
    pub query_wait_timeout: Duration,
    /// `replica_max_lag` (Weir extension): the most replay lag a standby may have and still
    /// serve (zero: no bound).
    pub replica_max_lag: Duration,
}

impl Config {
    /// The settings of the pool serving database `db` (its own entry, else `*`) for server
    /// user `user` (the database's forced `user=` when it has one); `None` when no entry
    /// serves `db`. Each size is the user's value, else the database's, else the global
    /// one; `min_pool_size` per user is a Weir extension, and is capped at the pool's size.
    pub fn pool_settings(&self, db: &str, user: &str) -> Option<PoolSettings> {
        let (_, database) = self.database(db)?;
        let user_entry = self.users.get(user);
        let s = &self.pgbouncer;
        let by_user = |pick: fn(&super::UserEntry) -> Option<u32>| user_entry.and_then(pick);
        let size = by_user(|u| u.pool_size)
            .or(database.pool_size)
            .unwrap_or(s.default_pool_size);
        let min_size = by_user(|u| u.min_pool_size)
            .or(database.min_pool_size)
            .unwrap_or(s.min_pool_size);
        let reserve_size = by_user(|u| u.reserve_pool_size)
            .or(database.reserve_pool_size)
            .unwrap_or(s.reserve_pool_size);
        Some(PoolSettings {
            mode: user_entry
                .and_then(|u| u.pool_mode)
                .or(database.pool_mode)
                .unwrap_or(s.pool_mode),
            size: size as usize,
            // A minimum above the pool's or a connection limit is never reached (as PgBouncer).
            min_size: [
                self.max_db_connections_for(db),
                self.max_user_connections_for(user),
            ]
            .into_iter()
            .filter(|limit| *limit > 0)
            .fold(min_size.min(size), u32::min) as usize,
            reserve_size: reserve_size as usize,
            reserve_timeout: s.reserve_pool_timeout,
            lifetime: ServerLifetime::from_setting(self.server_lifetime_for(db)),
            idle_timeout: s.server_idle_timeout,
            check_delay: s.server_check_delay,
            check: ServerCheck::from_setting(&s.server_check_query),
            login_retry: s.server_login_retry,
            max_db_connections: self.max_db_connections_for(db),
            max_user_connections: self.max_user_connections_for(user),
            round_robin: s.server_round_robin,
            failover_hold: s.failover_hold,
            query_wait_timeout: s.query_wait_timeout,
            replica_max_lag: s.replica_max_lag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_check_query_values() {
        assert_eq!(ServerCheck::from_setting(""), ServerCheck::Off);
        assert_eq!(ServerCheck::from_setting("  "), ServerCheck::Off);
        assert_eq!(
            ServerCheck::from_setting("<empty>"),
            ServerCheck::EmptyQuery
        );
        assert_eq!(ServerCheck::EmptyQuery.sql(), Some(""));
        assert_eq!(ServerCheck::Off.sql(), None);
        let custom = ServerCheck::from_setting("SELECT 1");
        assert_eq!(custom.sql(), Some("SELECT 1"));
        // The default setting is the empty query, never the text `<empty>`.
        let default = Config::default().pgbouncer.server_check_query;
        assert_eq!(ServerCheck::from_setting(&default).sql(), Some(""));
    }

    #[test]
    fn server_lifetime_zero_is_single_use() {
        let once = ServerLifetime::from_setting(Duration::ZERO);
        assert_eq!(once, ServerLifetime::SingleUse);
        assert!(once.expired_after_use(Duration::ZERO));
        assert!(!once.expired_idle(Duration::from_secs(3600)));
        let hour = ServerLifetime::from_setting(Duration::from_secs(3600));
        assert!(!hour.expired_after_use(Duration::from_secs(3599)));
        assert!(hour.expired_after_use(Duration::from_secs(3600)));
        assert!(hour.expired_idle(Duration::from_secs(3600)));
    }

    #[test]
    fn a_users_minimum_is_capped_at_its_pool_size() {
        let mut config = Config::default();
        config.databases.insert("db".into(), Default::default());
        config.users.insert(
            "u".into(),
            super::super::UserEntry {
                pool_size: Some(2),
                min_pool_size: Some(5),
                ..Default::default()
            },
        );
        let settings = config.pool_settings("db", "u").expect("db is served");
        assert_eq!((settings.size, settings.min_size), (2, 2));
        assert!(config.pool_settings("other", "u").is_none());
    }
}
