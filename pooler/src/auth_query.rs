//! `auth_query`: the secrets of users missing from `auth_file`, fetched from the database as
//! `auth_user` and kept for `auth_query_cache_ttl` behind the cache of [`auth::lookup`].
//!
//! Each lookup opens its own connection, so no client's session state (a `search_path`
//! above all, PgBouncer's CVE-2025-12819) can reach the query, and pins `search_path` to
//! `pg_catalog, pg_temp` so that the query's unqualified names and operators are the
//! system's. The user name is a bound parameter of the extended protocol, never SQL text.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::lookup::{self, LookupCache};
use crate::auth::Secret;
use crate::protocol::PgError;
use crate::server::{ServerConn, ServerError, ServerTarget};

/// The `search_path` the query runs with: the system catalog first, temporary objects last.
const SAFE_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Runs `auth_query` and caches its answers.
#[derive(Debug, Default)]
pub struct AuthQuery {
    cache: Mutex<LookupCache>,
}

impl AuthQuery {
    /// The secret of `user` for clients of `database`: from the cache, else by running
    /// `query` on `target` (the `auth_dbname` database, logged in as `auth_user`). `None`:
    /// no such user, or one that may not log in (no row, or a NULL password).
    pub async fn secret(
        &self,
        target: &ServerTarget,
        query: &str,
        database: &str,
        user: &str,
        ttl: Duration,
    ) -> Result<Option<Secret>, ServerError> {
        if let Some(answer) = self.cache().get(database, user, Instant::now()) {
            return Ok(answer);
        }
        let mut target = target.clone();
        target
            .startup_params
            .push(("search_path".into(), SAFE_SEARCH_PATH.into()));
        let mut conn = ServerConn::connect(&target).await?;
        let row = conn.query_row(query, &[user]).await;
        conn.close();
        let secret = lookup::secret_of_row(row?.as_deref())
            .map_err(|e| ServerError::Query(Box::new(PgError::error("XX000", e))))?;
        let now = Instant::now();
        self.cache()
            .insert(database, user, secret.clone(), now + ttl, now);
        Ok(secret)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LookupCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
