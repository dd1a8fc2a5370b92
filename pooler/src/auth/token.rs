//! ServiceAccount-token logins, free of I/O: what a TokenReview answer means for a login,
//! which ServiceAccounts may log in as which user, and the bounded cache of verdicts, keyed
//! by a hash of the token so that no token is kept in memory after its login.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// How long a refused token stays refused without asking the API server again: long enough
/// to absorb a client retrying in a loop, short enough not to matter for a fixed clock skew.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// The user name prefix the API server gives ServiceAccount tokens.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The part of a TokenReview's status a login looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    /// Whether the API server authenticated the token.
    pub authenticated: bool,
    /// Who the token belongs to.
    pub username: String,
    /// The audiences of the request the token is valid for.
    pub audiences: Vec<String>,
    /// Why the token was not authenticated, as the API server says it.
    pub error: Option<String>,
}

/// Why a token does not log in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// The API server did not authenticate it (expired, bad signature, wrong audience, or its
    /// ServiceAccount or bound object is gone).
    #[error("the Kubernetes API server did not accept the token: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for the configured audience.
    #[error("the token is not valid for audience {0:?}")]
    WrongAudience(String),
    /// Authenticated, but not a ServiceAccount's token.
    #[error("{0:?} is not a ServiceAccount")]
    NotServiceAccount(String),
}

/// A ServiceAccount, as a token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccount {
    /// Reads `system:serviceaccount:<namespace>:<name>`.
    pub fn from_username(username: &str) -> Option<ServiceAccount> {
        let (namespace, name) = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Whether `accounts` (a `[users]` entry's `service_accounts`, `namespace/name`) lists it.
    pub fn is_listed_in(&self, accounts: &[String]) -> bool {
        accounts.iter().any(|a| {
            a.split_once('/')
                .is_some_and(|(ns, name)| ns == self.namespace && name == self.name)
        })
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SERVICE_ACCOUNT_PREFIX}{}:{}",
            self.namespace, self.name
        )
    }
}

/// What a review means for a login: the ServiceAccount, when the token is authenticated for
/// `audience` and belongs to one.
pub fn judge(review: &Review, audience: &str) -> Result<ServiceAccount, TokenRefusal> {
    if !review.authenticated {
        let why = review
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".into());
        return Err(TokenRefusal::NotAuthenticated(why));
    }
    // The API server answers with the requested audiences the token is valid for.
    if !review.audiences.iter().any(|a| a == audience) {
        return Err(TokenRefusal::WrongAudience(audience.to_owned()));
    }
    ServiceAccount::from_username(&review.username)
        .ok_or_else(|| TokenRefusal::NotServiceAccount(review.username.clone()))
}

/// The cache key of a token: its SHA-256, so the cache never holds a usable credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The key of `token`.
    pub fn of(token: &str) -> TokenKey {
        TokenKey(Sha256::digest(token.as_bytes()).into())
    }
}

/// The `exp` claim of a JWT (Unix seconds), read without checking the signature: it only
/// shortens how long the API server's verdict is trusted, never lengthens it.
pub fn expiry(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Claims>(&json).ok()?.exp
}

/// How long a verdict may be cached: an accepted token for `ttl` but not past its `exp`
/// (`now_unix` is the wall clock), a refused one for [`NEGATIVE_TTL`] but not past `ttl`.
pub fn cache_for(
    verdict: &Result<ServiceAccount, TokenRefusal>,
    ttl: Duration,
    exp: Option<u64>,
    now_unix: u64,
) -> Duration {
    match verdict {
        Ok(_) => match exp {
            Some(exp) => ttl.min(Duration::from_secs(exp.saturating_sub(now_unix))),
            None => ttl,
        },
        Err(_) => ttl.min(NEGATIVE_TTL),
    }
}

/// Verdicts by token hash, each until a deadline, at most `capacity` of them.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: HashMap<TokenKey, (Result<ServiceAccount, TokenRefusal>, Instant)>,
}

impl TokenCache {
    /// The verdict on `key` if it is still fresh at `now`; a stale one is dropped.
    pub fn get(
        &mut self,
        key: &TokenKey,
        now: Instant,
    ) -> Option<Result<ServiceAccount, TokenRefusal>> {
        match self.entries.get(key) {
            Some((verdict, until)) if now < *until => Some(verdict.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `verdict` on `key` until `until`. When `capacity` is reached, stale entries go
    /// first, then the one that would expire soonest; a capacity of 0 keeps nothing.
    pub fn insert(
        &mut self,
        key: TokenKey,
        verdict: Result<ServiceAccount, TokenRefusal>,
        until: Instant,
        capacity: usize,
        now: Instant,
    ) {
        if capacity == 0 || until <= now {
            return;
        }
        if self.entries.len() >= capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, u)| now < *u);
            while self.entries.len() >= capacity {
                let soonest = self.entries.iter().min_by_key(|(_, (_, u))| *u);
                let Some((&k, _)) = soonest else { break };
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (verdict, until));
    }

    /// How many verdicts are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn review(authenticated: bool, username: &str, audiences: &[&str]) -> Review {
        Review {
            authenticated,
            username: username.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            error: (!authenticated).then(|| "token has been invalidated".into()),
        }
    }

    #[test]
    fn an_authenticated_service_account_token_for_the_audience_is_accepted() {
        let r = review(true, "system:serviceaccount:shop:api", &["weir"]);
        assert_eq!(judge(&r, "weir"), Ok(sa("shop", "api")));
    }

    #[test]
    fn refusals_say_why() {
        let r = review(false, "", &[]);
        assert_eq!(
            judge(&r, "weir"),
            Err(TokenRefusal::NotAuthenticated(
                "token has been invalidated".into()
            ))
        );
        let r = review(true, "system:serviceaccount:shop:api", &["other"]);
        assert_eq!(
            judge(&r, "weir"),
            Err(TokenRefusal::WrongAudience("weir".into()))
        );
        let r = review(true, "system:serviceaccount:shop:api", &[]);
        assert_eq!(
            judge(&r, "weir"),
            Err(TokenRefusal::WrongAudience("weir".into()))
        );
        let r = review(true, "alice", &["weir"]);
        assert_eq!(
            judge(&r, "weir"),
            Err(TokenRefusal::NotServiceAccount("alice".into()))
        );
    }

    #[test]
    fn service_account_user_names() {
        assert_eq!(
            ServiceAccount::from_username("system:serviceaccount:a:b"),
            Some(sa("a", "b"))
        );
        for bad in [
            "system:serviceaccount:a",
            "system:serviceaccount::b",
            "system:serviceaccount:a:",
            "system:serviceaccount:a:b:c",
            "system:serviceaccounts:a",
            "a:b",
        ] {
            assert_eq!(ServiceAccount::from_username(bad), None, "{bad}");
        }
        assert_eq!(sa("a", "b").to_string(), "system:serviceaccount:a:b");
    }

    #[test]
    fn only_listed_accounts_may_log_in() {
        let listed = vec!["shop/api".to_owned(), "shop/worker".to_owned()];
        assert!(sa("shop", "worker").is_listed_in(&listed));
        assert!(!sa("shop", "admin").is_listed_in(&listed));
        assert!(!sa("other", "api").is_listed_in(&listed));
        assert!(!sa("shop", "api").is_listed_in(&[]));
    }

    fn jwt(claims: &str) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", enc(r#"{"alg":"RS256"}"#), enc(claims))
    }

    #[test]
    fn the_expiry_is_read_from_the_payload() {
        assert_eq!(
            expiry(&jwt(r#"{"exp":1700000000,"sub":"x"}"#)),
            Some(1700000000)
        );
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry("not a jwt"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry(&jwt("\"text\"")), None);
    }

    #[test]
    fn accepted_tokens_are_cached_for_the_ttl_but_not_past_their_expiry() {
        let ok = Ok(sa("a", "b"));
        let ttl = Duration::from_secs(60);
        assert_eq!(cache_for(&ok, ttl, None, 1000), ttl);
        assert_eq!(
            cache_for(&ok, ttl, Some(1030), 1000),
            Duration::from_secs(30)
        );
        assert_eq!(cache_for(&ok, ttl, Some(900), 1000), Duration::ZERO);
        assert_eq!(cache_for(&ok, ttl, Some(5000), 1000), ttl);
        let refused = Err(TokenRefusal::WrongAudience("weir".into()));
        assert_eq!(cache_for(&refused, ttl, None, 0), NEGATIVE_TTL);
        assert_eq!(
            cache_for(&refused, Duration::from_secs(2), None, 0),
            Duration::from_secs(2)
        );
        assert_eq!(cache_for(&ok, Duration::ZERO, None, 0), Duration::ZERO);
    }

    #[test]
    fn the_cache_keys_by_hash_and_forgets_stale_verdicts() {
        let now = Instant::now();
        let mut cache = TokenCache::default();
        let key = TokenKey::of("token-1");
        assert_ne!(key, TokenKey::of("token-2"));
        cache.insert(key, Ok(sa("a", "b")), now + Duration::from_secs(5), 10, now);
        assert_eq!(cache.get(&key, now), Some(Ok(sa("a", "b"))));
        assert_eq!(cache.get(&TokenKey::of("token-2"), now), None);
        assert_eq!(cache.get(&key, now + Duration::from_secs(5)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut cache = TokenCache::default();
        cache.insert(TokenKey::of("zero"), Ok(sa("a", "b")), now + s(5), 0, now);
        assert!(cache.is_empty());
        cache.insert(TokenKey::of("past"), Ok(sa("a", "b")), now, 2, now);
        assert!(cache.is_empty());
        cache.insert(TokenKey::of("long"), Ok(sa("a", "b")), now + s(50), 2, now);
        cache.insert(TokenKey::of("short"), Ok(sa("a", "b")), now + s(10), 2, now);
        cache.insert(TokenKey::of("new"), Ok(sa("a", "b")), now + s(30), 2, now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&TokenKey::of("short"), now).is_none());
        assert!(cache.get(&TokenKey::of("long"), now).is_some());
        assert!(cache.get(&TokenKey::of("new"), now).is_some());
        // Stale entries make room before live ones.
        let later = now + s(40);
        cache.insert(
            TokenKey::of("late"),
            Ok(sa("a", "b")),
            later + s(5),
            2,
            later,
        );
        assert!(cache.get(&TokenKey::of("long"), later).is_some());
        assert!(cache.get(&TokenKey::of("late"), later).is_some());
    }
}
