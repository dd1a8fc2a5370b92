//! ServiceAccount tokens checked with the Kubernetes API server's TokenReview, behind the
//! bounded cache of [`auth::token`]: one review per new token per
//! `service_account_cache_ttl`, so a deleted ServiceAccount can still log in until then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use tokio::sync::OnceCell;

use crate::auth::token::{self, Review, ServiceAccount, TokenCache, TokenKey, TokenRefusal};
use crate::config::Settings;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The token is no good.
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    /// The API server could not be asked; nothing is cached, the next login asks again.
    #[error("cannot validate the token with the Kubernetes API: {0}")]
    Unavailable(String),
}

/// A validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// Whose token it is.
    pub account: ServiceAccount,
    /// Whether the verdict came from the cache rather than a TokenReview.
    pub cached: bool,
}

/// Counts of token logins since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct TokenStats {
    /// Logins accepted.
    pub accepted: AtomicU64,
    /// Logins refused: bad token, account not listed, or no TLS.
    pub refused: AtomicU64,
    /// Logins that failed because the API server could not be asked.
    pub unavailable: AtomicU64,
    /// TokenReviews sent to the API server.
    pub reviews: AtomicU64,
    /// Verdicts taken from the cache.
    pub cache_hits: AtomicU64,
}

/// Token-login counters of this process.
pub static STATS: TokenStats = TokenStats {
    accepted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    unavailable: AtomicU64::new(0),
    reviews: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
};

/// Checks tokens with the API server the process finds in its environment (in-cluster
/// ServiceAccount, else `KUBECONFIG`), connecting on the first token login.
#[derive(Default)]
pub struct TokenReviewer {
    client: OnceCell<kube::Client>,
    cache: Mutex<TokenCache>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("connected", &self.client.initialized())
            .field("cached", &self.cache().len())
            .finish()
    }
}

impl TokenReviewer {
    /// Whose `token` is, if the API server authenticates it for `service_account_audience`
    /// (or did so within `service_account_cache_ttl`).
    pub async fn review(&self, token: &str, s: &Settings) -> Result<Reviewed, ReviewError> {
        let key = TokenKey::of(token);
        if let Some(verdict) = self.cache().get(&key, Instant::now()) {
            STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Reviewed {
                account: verdict?,
                cached: true,
            });
        }
        let review = self.ask(token, &s.service_account_audience).await?;
        let verdict = token::judge(&review, &s.service_account_audience);
        let now_unix = jiff::Timestamp::now().as_second().try_into().unwrap_or(0);
        let keep = token::cache_for(
            &verdict,
            s.service_account_cache_ttl,
            token::expiry(token),
            now_unix,
        );
        let now = Instant::now();
        let capacity = s.service_account_cache_size as usize;
        self.cache()
            .insert(key, verdict.clone(), now + keep, capacity, now);
        Ok(Reviewed {
            account: verdict?,
            cached: false,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(&self, token: &str, audience: &str) -> Result<Review, ReviewError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
                kube::Client::try_from(config).map_err(|e| e.to_string())
            })
            .await
            .map_err(ReviewError::Unavailable)?;
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..TokenReview::default()
        };
        STATS.reviews.fetch_add(1, Ordering::Relaxed);
        let api = kube::Api::<TokenReview>::all(client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &request)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        Ok(Review {
            authenticated: status.authenticated.unwrap_or(false),
            username: status.user.and_then(|u| u.username).unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            error: status.error,
        })
    }
}
