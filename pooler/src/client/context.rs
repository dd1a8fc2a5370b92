//! What a client session needs of the running pooler, as a narrow interface the composition
//! root implements: the client layer never sees the root itself.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};
use bytes::BytesMut;

use crate::auth::Secret;
use crate::config::Config;
use crate::peers::Peers;
use crate::pool::Pool;
use crate::prepared::StatementRegistry;
use crate::protocol::PgError;
use crate::registry::{ClientHandle, Registry};
use crate::stream::Stream;
use crate::tls::Tls;
use crate::token_review::TokenReviewer;

/// The answer of an `auth_query` lookup, on its way.
pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Secret>, Box<PgError>>> + Send + 'a>>;

/// A session's configuration: the snapshot it read last, kept while it is still the one in
/// force, which one pointer comparison tells (a load from the shared cell costs tens of
/// instructions, and a session reads the configuration twice per transaction).
pub type ConfigCache = Cache<ConfigSource, Arc<Config>>;

/// The pooler, as the place a [`ConfigCache`] looks for the configuration in force.
pub struct ConfigSource(pub Arc<dyn SessionContext>);

impl Deref for ConfigSource {
    type Target = ArcSwap<Config>;

    fn deref(&self) -> &ArcSwap<Config> {
        self.0.config_source()
    }
}

/// The running pooler as a client session sees it.
pub trait SessionContext: Send + Sync + 'static {
    /// The configuration in force (a shared snapshot).
    fn config(&self) -> Arc<Config>;
    /// The configuration in force, cheaply, for a short look.
    fn config_now(&self) -> arc_swap::Guard<Arc<Config>>;
    /// Where the configuration in force is kept, for a session's [`ConfigCache`].
    fn config_source(&self) -> &ArcSwap<Config>;
    /// The TLS material in force.
    fn tls(&self) -> Arc<Tls>;
    /// Whether `database` is disabled (DISABLE).
    fn is_disabled(&self, database: &str) -> bool;
    /// Whether a shutdown is under way.
    fn is_draining(&self) -> bool;
    /// The pool a client of `database` authenticated as `user` uses, created on first use;
    /// `scram_keys` are the keys its SCRAM proof revealed, if any; `looked_up` the secret
    /// `auth_query` found for it.
    fn pool_for(
        &self,
        database: &str,
        user: &str,
        scram_keys: Option<([u8; 32], [u8; 32])>,
        looked_up: Option<Secret>,
    ) -> Result<Arc<Pool>, Box<PgError>>;
    /// The secret `auth_query` finds for `user`, a client of `database` missing from the
    /// auth file (cached); `None` without `auth_user`, or for a user who may not log in.
    fn auth_query_secret<'a>(&'a self, database: &'a str, user: &'a str) -> LookupFuture<'a>;
    /// Who is connected.
    fn registry(&self) -> &Arc<Registry>;
    /// This process's peer id and its peer pools.
    fn peers(&self) -> &Peers;
    /// The pooler-wide names of prepared statements.
    fn statements(&self) -> &StatementRegistry;
    /// Clients pinned to a server connection right now.
    fn pinned_clients(&self) -> &AtomicUsize;
    /// The stored secret of `user`, if the auth file has one.
    fn secret(&self, user: &str) -> Option<Secret>;
    /// `secret` as a SCRAM verifier, cached per user.
    fn scram_secret(&self, user: &str, secret: Secret) -> Secret;
    /// The replaced auth file secrets of `user` still in their `auth_rotation_grace`.
    fn previous_secrets(&self, user: &str) -> Vec<Secret>;
    /// What checks ServiceAccount tokens, with its cache.
    fn token_reviewer(&self) -> &TokenReviewer;
    /// The rules of `auth_hba_file`, for `auth_type = hba`.
    fn hba(&self) -> Arc<crate::auth::hba::Hba>;
    /// Whether `database` names the admin console.
    fn is_console(&self, database: &str) -> bool;
    /// Whether `user` may use the admin console; the error to send if not.
    fn console_allowed(&self, user: &str) -> Result<(), Box<PgError>>;
    /// Serves an admin console session for an authenticated `user` (`own_user`: logged in
    /// by peer as the pooler's own OS user, an admin); why it ended.
    fn serve_console(
        self: Arc<Self>,
        stream: Stream,
        buf: BytesMut,
        user: String,
        own_user: bool,
        record: ClientHandle,
    ) -> Pin<Box<dyn Future<Output = &'static str> + Send>>;
}
