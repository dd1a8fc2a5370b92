//! What `auth_query` returns, read as a secret, and the bounded cache that keeps those answers
//! (found or not) for `auth_query_cache_ttl`, so that a connection storm runs the query once.

use std::collections::HashMap;
use std::time::Instant;

use super::Secret;

/// At most this many users' answers are kept; beyond it the soonest to expire go first.
pub const CACHE_CAPACITY: usize = 10_000;

/// The secret in an `auth_query` result row (user name, password): none for no row or a
/// NULL password (an expired or password-less role), which then logs in like an unknown user.
pub fn secret_of_row(row: Option<&[Option<String>]>) -> Result<Option<Secret>, String> {
    let Some(row) = row else { return Ok(None) };
    match row {
        [Some(_), password] => Ok(password.as_deref().map(Secret::parse)),
        [None, _] => Err("auth_query returned a NULL user name".into()),
        _ => Err(format!(
            "auth_query must return 2 columns (user name, password), not {}",
            row.len()
        )),
    }
}

/// Answers of `auth_query` per (database the query ran for, user).
#[derive(Debug, Default)]
pub struct LookupCache {
    entries: HashMap<(String, String), (Option<Secret>, Instant)>,
}

impl LookupCache {
    /// The cached answer for `user` in `database` if still fresh at `now`: `Some(None)` says
    /// the user is known not to exist. A stale answer is dropped.
    pub fn get(&mut self, database: &str, user: &str, now: Instant) -> Option<Option<Secret>> {
        let key = (database.to_owned(), user.to_owned());
        match self.entries.get(&key) {
            Some((secret, until)) if now < *until => Some(secret.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `secret` for `user` in `database` until `until`, within [`CACHE_CAPACITY`].
    pub fn insert(
        &mut self,
        database: &str,
        user: &str,
        secret: Option<Secret>,
        until: Instant,
        now: Instant,
    ) {
        self.insert_within(database, user, secret, until, now, CACHE_CAPACITY);
    }

    fn insert_within(
        &mut self,
        database: &str,
        user: &str,
        secret: Option<Secret>,
        until: Instant,
        now: Instant,
        capacity: usize,
    ) {
        if until <= now || capacity == 0 {
            return;
        }
        let key = (database.to_owned(), user.to_owned());
        if self.entries.len() >= capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, u)| now < *u);
            while self.entries.len() >= capacity {
                let soonest = self.entries.iter().min_by_key(|(_, (_, u))| *u);
                let Some((k, _)) = soonest.map(|(k, v)| (k.clone(), v)) else {
                    break;
                };
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (secret, until));
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn rows_become_secrets_and_missing_ones_unknown_users() {
        let md5 = "md54a0a68b43b6cd5cf266fa02f196e2371";
        let found = secret_of_row(Some(&row(&[Some("alice"), Some(md5)])));
        assert_eq!(found, Ok(Some(Secret::parse(md5))));
        assert!(matches!(found, Ok(Some(Secret::Md5(_)))));
        assert_eq!(secret_of_row(None), Ok(None));
        // Expired (the default query's NULL) or password-less roles log in like unknown ones.
        assert_eq!(secret_of_row(Some(&row(&[Some("alice"), None]))), Ok(None));
        assert!(secret_of_row(Some(&row(&[None, Some(md5)]))).is_err());
        assert!(secret_of_row(Some(&row(&[Some("alice")]))).is_err());
        assert!(secret_of_row(Some(&row(&[Some("a"), Some("b"), Some("c")]))).is_err());
    }

    #[test]
    fn answers_expire_and_unknown_users_are_cached_too() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut cache = LookupCache::default();
        cache.insert("db", "ghost", None, now + s(5), now);
        cache.insert(
            "db",
            "alice",
            Some(Secret::Plain("pw".into())),
            now + s(5),
            now,
        );
        assert_eq!(cache.get("db", "ghost", now), Some(None));
        assert_eq!(
            cache.get("db", "alice", now),
            Some(Some(Secret::Plain("pw".into())))
        );
        assert_eq!(cache.get("other", "alice", now), None);
        assert_eq!(cache.get("db", "alice", now + s(5)), None);
        assert_eq!(cache.len(), 1);
        // A zero TTL keeps nothing.
        cache.insert("db", "bob", None, now, now);
        assert_eq!(cache.get("db", "bob", now), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut cache = LookupCache::default();
        cache.insert_within("db", "long", None, now + s(50), now, 2);
        cache.insert_within("db", "short", None, now + s(10), now, 2);
        cache.insert_within("db", "new", None, now + s(30), now, 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("db", "short", now), None);
        assert!(cache.get("db", "long", now).is_some());
        assert!(cache.get("db", "new", now).is_some());
    }
}
