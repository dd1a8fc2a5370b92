//! The pooler's shared state: the loaded configuration, the auth file's secrets, the pools,
//! the limits they share, and the registry of connected clients and servers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::sync::watch;

use crate::admin::stats::Averages;
use crate::auth::hba::{Hba, IdentMaps};
use crate::auth::rotation::Rotations;
use crate::auth::{ScramSecret, Secret};
use crate::auth_query::AuthQuery;
use crate::client;
use crate::cloud_token::TokenSources;
use crate::config::{self, AuthType, Config};
pub use crate::lifecycle::ShutdownMode;
use crate::peers::Peers;
use crate::pool::{Limit, Pool, PoolKey, PoolSettings};
use crate::prepared::StatementRegistry;
use crate::protocol::PgError;
use crate::registry::{ClientCount, ClientHandle, Registry};
use crate::server::{HostCursor, ServerAddr, ServerCredential, ServerTarget};
use crate::stream::{Keepalive, Stream};
use crate::tls::Tls;
use crate::token_review::TokenReviewer;

/// Where PostgreSQL's Unix socket lives on Debian-like systems, used when no host is named.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Everything the accept loops and client tasks share.
#[derive(Debug)]
pub struct Pooler {
    config_path: PathBuf,
    config: ArcSwap<Config>,
    /// TLS material built from the configuration's `*_tls_*` files.
    tls: ArcSwap<Tls>,
    secrets: ArcSwap<HashMap<String, Secret>>,
    /// Credential generations and the replaced secrets still in `auth_rotation_grace`.
    rotations: Mutex<Rotations>,
    /// The rules of `auth_hba_file` (`auth_type = hba`), read at start and on every reload.
    hba: ArcSwap<Hba>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    limits: Mutex<HashMap<String, Arc<Limit>>>,
    clients: Arc<AtomicUsize>,
    /// Every logged-in client and open server connection.
    registry: Arc<Registry>,
    /// SCRAM secrets derived from plain passwords, so a login costs no key derivation.
    derived: Mutex<HashMap<String, (String, ScramSecret)>>,
    /// Pooler-wide server-side names of prepared statements.
    statements: StatementRegistry,
    /// Clients pinned to their server connection in transaction mode right now.
    pinned_clients: AtomicUsize,
    /// How many configurations have been loaded (1 at start), and a digest of the current one.
    generation: AtomicU64,
    digest: Mutex<String>,
    /// [`config::file_digest`] of the configuration file last loaded.
    file_digest: Mutex<String>,
    /// Set once a shutdown has begun: no new clients, readiness fails.
    shutdown: watch::Sender<Option<ShutdownMode>>,
    /// Whether `shutdown` is set (it is never unset), for the clients that ask at every
    /// transaction: a load instead of the channel's lock.
    draining: AtomicBool,
    /// Databases paused or disabled from the admin console.
    control: Mutex<Control>,
    /// Per-database averages over the latest `stats_period`, for SHOW STATS.
    stats_averages: ArcSwap<BTreeMap<String, Averages>>,
    /// ServiceAccount-token checks and their cache.
    tokens: TokenReviewer,
    /// `auth_query` lookups and their cache.
    auth_query: AuthQuery,
    /// Cloud token sources for `server_auth`, kept across reloads so their tokens are too.
    cloud_tokens: TokenSources,
    /// This process's peer id and the cancels forwarded to its peers.
    peers: Peers,
    /// The Redis data path, when `[redis]` names a server or cluster nodes.
    redis: Option<Arc<crate::redis::Proxy>>,
}

/// What the admin console has paused or disabled.
#[derive(Debug, Default)]
struct Control {
    /// PAUSE without a database: every pool, present and future.
    paused_all: bool,
    paused: HashSet<String>,
    disabled: HashSet<String>,
}

/// Reads `auth_hba_file` and `auth_ident_file` when `auth_type = hba`, logging every line
/// skipped; a file that cannot be read gives no rules, so every client is refused.
pub fn load_hba(config: &Config) -> Hba {
    let s = &config.pgbouncer;
    let (Some(path), AuthType::Hba) = (&s.auth_hba_file, s.auth_type) else {
        return Hba::default();
    };
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "cannot read an auth_type = hba file");
            None
        }
    };
    let idents = match s.auth_ident_file.as_deref().and_then(read) {
        Some(text) => {
            let (maps, warnings) = IdentMaps::parse(&text);
            for w in warnings {
                tracing::warn!("auth_ident_file: {w}");
            }
            maps
        }
        None => IdentMaps::default(),
    };
    let Some(text) = read(path) else {
        return Hba::default();
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let (hba, warnings) = Hba::parse(&text, &|name| read(&dir.join(name)), &idents);
    for w in warnings {
        tracing::warn!("auth_hba_file: {w}");
    }
    hba
}

/// Loads the secrets of `auth_file`, if one is configured.
pub fn load_secrets(config: &Config) -> Result<HashMap<String, Secret>, config::ConfigError> {
    let Some(path) = &config.pgbouncer.auth_file else {
        return Ok(HashMap::new());
    };
    let users: BTreeMap<String, String> = config::load_userlist(path)?;
    Ok(users
        .into_iter()
        .map(|(user, stored)| {
            let secret = Secret::parse(&stored);
            (user, secret)
        })
        .collect())
}

impl Pooler {
    /// Builds the shared state from a loaded configuration (with the digest of its file's
    /// text), its auth file and its TLS files; `peer_address` is this process's host in
    /// `[peers]`, if it was told one.
    pub fn new(
        config_path: &Path,
        config: Config,
        file_digest: String,
        secrets: HashMap<String, Secret>,
        tls: Tls,
        peer_address: Option<String>,
    ) -> Arc<Pooler> {
        let digest = config_digest(&config, &secrets);
        let hba = load_hba(&config);
        let peers = Peers::new(peer_address);
        peers.configure(&config);
        let redis = config.redis.as_ref().and_then(crate::redis::Proxy::new);
        Arc::new(Pooler {
            redis,
            hba: ArcSwap::from_pointee(hba),
            config_path: config_path.to_owned(),
            config: ArcSwap::from_pointee(config),
            tls: ArcSwap::from_pointee(tls),
            rotations: Mutex::new(Rotations::new(&secrets)),
            secrets: ArcSwap::from_pointee(secrets),
            pools: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            clients: Arc::default(),
            registry: Arc::new(Registry::default()),
            derived: Mutex::new(HashMap::new()),
            statements: StatementRegistry::default(),
            pinned_clients: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            digest: Mutex::new(digest),
            file_digest: Mutex::new(file_digest),
            shutdown: watch::Sender::new(None),
            draining: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
            stats_averages: ArcSwap::from_pointee(BTreeMap::new()),
            tokens: TokenReviewer::default(),
            auth_query: AuthQuery::default(),
            cloud_tokens: TokenSources::default(),
            peers,
        })
    }

    /// The configuration file the pooler was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The TLS material in force.
    pub fn tls(&self) -> Arc<Tls> {
        self.tls.load_full()
    }

    /// The configuration in force, for a quick look on the hot path: cheaper than
    /// [`Pooler::config`], but not to be held across an await.
    pub fn config_now(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Re-reads the configuration file and the auth file; on success new clients and new
    /// pools use them, on failure nothing changes.
    ///
    /// Pools are resized and re-targeted in place; settings that only take effect at start
    /// (`config::RESTART_KEYS`) are reported as needing a restart. Returns whether anything
    /// changed, with the configuration's warnings.
    pub fn reload(&self) -> Result<(bool, Vec<config::ConfigWarning>), config::ConfigError> {
        let loaded = Config::load(&self.config_path)?;
        let secrets = load_secrets(&loaded.config)?;
        let tls = Tls::load(&loaded.config.pgbouncer)?;
        let digest = config_digest(&loaded.config, &secrets);
        // The HBA files are not in the digest: re-read them on every reload, as PgBouncer does.
        self.hba.store(Arc::new(load_hba(&loaded.config)));
        // A rewritten file with an equivalent configuration is still the file in force.
        *self.file_digest.lock().unwrap_or_else(|p| p.into_inner()) = loaded.file_digest.clone();
        {
            let mut current = self.digest.lock().unwrap_or_else(|p| p.into_inner());
            if *current == digest {
                return Ok((false, loaded.warnings));
            }
            *current = digest;
        }
        let old = self.config();
        for key in config::RESTART_KEYS {
            if old.pgbouncer.get(key) != loaded.config.pgbouncer.get(key) {
                tracing::warn!(
                    setting = key,
                    "changed, but takes effect only after a restart"
                );
            }
        }
        self.peers.configure(&loaded.config);
        match (&self.redis, &loaded.config.redis) {
            (Some(proxy), Some(settings)) => proxy.reconfigure(settings),
            (None, None) => {}
            _ => tracing::warn!("[redis] turned on or off; takes effect only after a restart"),
        }
        let grace = loaded.config.pgbouncer.auth_rotation_grace;
        self.config.store(Arc::new(loaded.config));
        self.tls.store(Arc::new(tls));
        {
            let mut rotations = self.rotations.lock().unwrap_or_else(|p| p.into_inner());
            let old = self.secrets.load();
            let now = std::time::Instant::now();
            for user in rotations.update(&old, &secrets, now, grace) {
                let generation = rotations.generation(&user);
                tracing::info!(%user, generation, grace_seconds = grace.as_secs(), "password rotated");
            }
            self.secrets.store(Arc::new(secrets));
        }
        self.reconfigure_pools();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(generation, "configuration reloaded");
        Ok((true, loaded.warnings))
    }

    /// How many configurations have been loaded, and the digest of the one in force.
    pub fn config_generation(&self) -> (u64, String) {
        let digest = self
            .digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.generation.load(Ordering::Acquire), digest)
    }

    /// [`config::file_digest`] of the configuration file last loaded.
    pub fn config_file_digest(&self) -> String {
        self.file_digest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Begins a shutdown: listeners stop accepting, readiness fails, idle clients in
    /// transaction and statement modes are let go at their next transaction boundary. A
    /// shutdown already under way keeps its mode unless `mode` is [`ShutdownMode::Now`].
    pub fn shut_down(&self, mode: ShutdownMode) {
        let begun = self.shutdown.send_if_modified(|current| match current {
            Some(m) if *m == mode || mode != ShutdownMode::Now => false,
            _ => {
                *current = Some(mode);
                self.draining.store(true, Ordering::Release);
                true
            }
        });
        if begun {
            if let Some(redis) = &self.redis {
                redis.drain();
            }
            // Idle clients do not watch the shutdown signal themselves (registering with it
            // on every wait costs a lock per transaction); they are woken to look.
            self.registry.nudge_clients();
        }
    }

    /// The Redis data path, if `[redis]` turned it on.
    pub fn redis(&self) -> Option<&Arc<crate::redis::Proxy>> {
        self.redis.as_ref()
    }

    /// Clients of the Redis listener right now.
    pub fn redis_client_count(&self) -> usize {
        self.redis.as_ref().map_or(0, |r| r.client_count())
    }

    /// Whether a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves when a shutdown begins.
    pub async fn drained(&self) {
        self.shutdown_mode().await;
    }

    /// Resolves when a shutdown begins, with how it waits.
    pub async fn shutdown_mode(&self) -> ShutdownMode {
        let mut rx = self.shutdown.subscribe();
        let mode = rx.wait_for(Option::is_some).await.ok().and_then(|m| *m);
        // The sender lives as long as the pooler, which `self` keeps alive.
        mode.unwrap_or(ShutdownMode::Now)
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether checkouts for `database` wait (admin console PAUSE or KILL until RESUME).
    pub fn is_paused(&self, database: &str) -> bool {
        let c = self.control();
        c.paused_all || c.paused.contains(database)
    }

    /// Whether every database is paused (PAUSE without a database name).
    pub fn is_paused_all(&self) -> bool {
        self.control().paused_all
    }

    /// Pauses or resumes `database`, or everything when `None`, and returns the pools
    /// affected. Resuming everything also resumes databases paused one by one.
    pub fn set_paused(&self, database: Option<&str>, paused: bool) -> Vec<Arc<Pool>> {
        {
            let mut c = self.control();
            match database {
                None => {
                    c.paused_all = paused;
                    if !paused {
                        c.paused.clear();
                    }
                }
                Some(db) if paused => {
                    c.paused.insert(db.to_owned());
                }
                Some(db) => {
                    c.paused.remove(db);
                }
            }
        }
        let pools: Vec<Arc<Pool>> = self
            .pools()
            .into_iter()
            .filter(|p| database.is_none_or(|db| p.key().database == db))
            .collect();
        for pool in &pools {
            pool.set_paused(self.is_paused(&pool.key().database));
        }
        pools
    }

    /// Whether new clients of `database` are refused (admin console DISABLE).
    pub fn is_disabled(&self, database: &str) -> bool {
        self.control().disabled.contains(database)
    }

    /// Refuses (DISABLE) or again admits (ENABLE) new clients of `database`.
    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut c = self.control();
        if disabled {
            c.disabled.insert(database.to_owned());
        } else {
            c.disabled.remove(database);
        }
    }

    /// Closes the pools of `database` (or all): idle connections close now, lent ones when
    /// returned, and their clients' next checkout fails. The database is paused, so new
    /// clients wait until RESUME. Returns how many pools were closed.
    pub fn kill(&self, database: Option<&str>) -> usize {
        let killed: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<PoolKey> = pools
                .keys()
                .filter(|k| database.is_none_or(|db| k.database == db))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| pools.remove(k)).collect()
        };
        {
            let mut c = self.control();
            match database {
                Some(db) => {
                    c.paused.insert(db.to_owned());
                }
                None => c.paused_all = true,
            }
        }
        for pool in &killed {
            tracing::info!(pool = %pool.key(), "pool killed from the admin console");
            pool.close();
        }
        killed.len()
    }

    /// Changes one `[pgbouncer]` setting in the configuration in force (admin console SET)
    /// and applies it to every pool. Settings that only take effect at start are refused,
    /// as is a value the configuration would not accept. A later reload re-reads the file.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        let key = key.to_ascii_lowercase();
        if config::RESTART_KEYS.contains(&key.as_str()) {
            return Err(format!("{key} takes effect only after a restart"));
        }
        let mut next = Config::clone(&self.config());
        next.pgbouncer.set(&key, value).map_err(|e| e.to_string())?;
        for warning in next.validate_with_warnings().map_err(|e| e.to_string())? {
            tracing::warn!("{warning}");
        }
        let digest = config_digest(&next, &self.secrets.load());
        // default_pool_size sizes the peer pools without a pool_size of their own.
        self.peers.configure(&next);
        self.config.store(Arc::new(next));
        *self.digest.lock().unwrap_or_else(|p| p.into_inner()) = digest;
        self.reconfigure_pools();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(setting = %key, %value, generation, "setting changed from the admin console");
        Ok(())
    }

    /// Per-database averages over the latest `stats_period`.
    pub fn stats_averages(&self) -> Arc<BTreeMap<String, Averages>> {
        self.stats_averages.load_full()
    }

    /// Publishes the averages of the period just sampled.
    pub fn set_stats_averages(&self, averages: BTreeMap<String, Averages>) {
        self.stats_averages.store(Arc::new(averages));
    }

    /// The stored secret of `user` from `auth_file`.
    pub fn secret(&self, user: &str) -> Option<Secret> {
        self.secrets.load().get(user).cloned()
    }

    /// The replaced `auth_file` secrets of `user` that still log in (`auth_rotation_grace`).
    pub fn previous_secrets(&self, user: &str) -> Vec<Secret> {
        let grace = self.config_now().pgbouncer.auth_rotation_grace;
        let rotations = self.rotations.lock().unwrap_or_else(|p| p.into_inner());
        rotations.previous(user, std::time::Instant::now(), grace)
    }

    /// The credential generation of `user`'s `auth_file` secret (0: not in the file).
    pub fn credential_generation(&self, user: &str) -> u64 {
        let rotations = self.rotations.lock().unwrap_or_else(|p| p.into_inner());
        rotations.generation(user)
    }

    /// The secret `auth_query` finds for `user`, a client of `database` missing from
    /// `auth_file`; `None` when no `auth_user` applies or the user may not log in. The
    /// failure to tell the client when the query cannot run.
    pub async fn auth_query_secret(
        &self,
        database: &str,
        user: &str,
    ) -> Result<Option<Secret>, Box<PgError>> {
        let config = self.config();
        let Some(lookup) = config.auth_lookup(database) else {
            return Ok(None);
        };
        let failed = || {
            Box::new(PgError::fatal(
                "28000",
                format!("could not look up user \"{user}\" with auth_query"),
            ))
        };
        let Some((mut target, _)) = pool_spec(
            &config,
            self,
            &lookup.dbname,
            &lookup.user,
            &lookup.user,
            None,
            None,
        ) else {
            tracing::warn!(auth_dbname = %lookup.dbname, "auth_dbname is not a configured database");
            return Err(failed());
        };
        // auth_user's own password comes from auth_file, not from another user's `password=`.
        let forced = config
            .database(&lookup.dbname)
            .and_then(|(_, e)| e.user.as_deref());
        if forced != Some(lookup.user.as_str()) {
            target.credential = credential_of(self.secret(&lookup.user));
        }
        let ttl = config.pgbouncer.auth_query_cache_ttl;
        self.auth_query
            .secret(&target, &lookup.query, database, user, ttl)
            .await
            .map_err(|e| {
                tracing::warn!(database, auth_user = %lookup.user, error = %e, "auth_query failed");
                failed()
            })
    }

    /// The secret a SCRAM exchange for `user` checks against: a plain password is turned into
    /// a SCRAM verifier once (`scram_iterations` PBKDF2 rounds) and reused until the password
    /// or the count changes, as connection storms would otherwise spend most of their time
    /// deriving keys.
    pub fn scram_secret(&self, user: &str, secret: Secret) -> Secret {
        let Secret::Plain(password) = secret else {
            return secret;
        };
        let iterations = self.config.load().pgbouncer.scram_iterations;
        let mut derived = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        match derived.get(user) {
            Some((known, scram)) if *known == password && scram.iterations == iterations => {
                Secret::Scram(scram.clone())
            }
            _ => {
                let scram = ScramSecret::generate_with(&password, iterations);
                derived.insert(user.to_owned(), (password, scram.clone()));
                Secret::Scram(scram)
            }
        }
    }

    /// Pooler-wide names of prepared statements.
    pub fn statements(&self) -> &StatementRegistry {
        &self.statements
    }

    /// The number of clients pinned to a server connection in transaction mode (the analogue
    /// of RDS Proxy's pinned-session count).
    pub fn pinned_clients(&self) -> &AtomicUsize {
        &self.pinned_clients
    }

    /// Every logged-in client and open server connection, with the clients' cancel keys.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// This process's peer id and its peer pools.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Counts a new client connection; the guard uncounts it. Returns the count including it.
    pub fn client_connected(&self) -> (ClientCount, usize) {
        ClientCount::new(&self.clients)
    }

    /// Connected clients right now.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Every pool that exists right now.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Arc<Pool>> = pools.values().cloned().collect();
        list.sort_by(|a, b| a.key().cmp(b.key()));
        list
    }

    /// The pool a client of `database` authenticated as `user` uses, created on first use.
    /// `scram_keys` are the keys recovered from the client's SCRAM proof, if any: they let
    /// the pool log in with a SCRAM verifier from the auth file instead of a password.
    /// `looked_up` is the secret `auth_query` found for `user`, if it was looked up.
    pub fn pool_for(
        &self,
        database: &str,
        user: &str,
        scram_keys: Option<([u8; 32], [u8; 32])>,
        looked_up: Option<Secret>,
    ) -> Result<Arc<Pool>, Box<PgError>> {
        let config = self.config();
        let Some((_, entry)) = config.database(database) else {
            return Err(Box::new(client::no_such_database(database)));
        };
        let server_user = entry.user.clone().unwrap_or_else(|| user.to_owned());
        let key = PoolKey {
            database: database.to_owned(),
            user: server_user.clone(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            self.refresh_scram_keys(pool, &server_user, user, scram_keys);
            return Ok(pool.clone());
        }
        let (target, settings) = pool_spec(
            &config, self, database, &key.user, user, scram_keys, looked_up,
        )
        .ok_or_else(|| Box::new(client::no_such_database(database)))?;
        let limits = self.limits_for(&config, database, &server_user);
        let pool = Pool::new(
            key.clone(),
            target,
            settings,
            limits,
            self.registry.clone(),
            crate::metrics::wait_histogram(&key),
            crate::metrics::hold_histogram(&key),
        );
        pool.set_paused(self.is_paused(database));
        if pool.target().credential != ServerCredential::None {
            pool.set_credential_generation(self.credential_generation(&server_user));
        }
        tracing::info!(pool = %key, "pool created");
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    /// Gives a pool that logs in with SCRAM keys those of a client who just proved the
    /// current verifier, when the pool's own keys are missing or belong to a replaced one.
    fn refresh_scram_keys(
        &self,
        pool: &Arc<Pool>,
        server_user: &str,
        client_user: &str,
        scram_keys: Option<([u8; 32], [u8; 32])>,
    ) {
        let (Some((client_key, server_key)), true) = (scram_keys, server_user == client_user)
        else {
            return;
        };
        let Some(Secret::Scram(verifier)) = self.secret(server_user) else {
            return;
        };
        let old = pool.target();
        let stale = match &old.credential {
            ServerCredential::None => true,
            ServerCredential::ScramKeys { client_key, .. } => !verifier.fits_client_key(client_key),
            _ => false,
        };
        if !stale || !verifier.fits_client_key(&client_key) {
            return;
        }
        let mut target = (*old).clone();
        target.credential = ServerCredential::ScramKeys {
            client_key,
            server_key,
        };
        pool.reconfigure((*pool.settings()).clone(), target);
        pool.set_credential_generation(self.credential_generation(server_user));
        tracing::info!(pool = %pool.key(), "server logins use the rotated SCRAM verifier");
    }

    /// Applies the configuration in force to every existing pool: sizes and timeouts change
    /// in place, a changed database entry re-targets its pool, a removed one closes it.
    fn reconfigure_pools(&self) {
        let config = self.config();
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|key, pool| {
            let old = pool.target();
            // Keys of a replaced verifier stay until a client brings fresh ones (see
            // `refresh_scram_keys`): the connections they opened still work meanwhile.
            let keys = match &old.credential {
                ServerCredential::ScramKeys {
                    client_key,
                    server_key,
                } => Some((*client_key, *server_key)),
                _ => None,
            };
            match pool_spec(&config, self, &key.database, &key.user, &key.user, keys, None) {
                Some((mut target, settings)) => {
                    // A user found by auth_query keeps the credential its first client gave.
                    if target.credential == ServerCredential::None
                        && config.auth_lookup(&key.database).is_some()
                    {
                        target.credential = old.credential.clone();
                    }
                    let usable = match (&target.credential, self.secret(&key.user)) {
                        (ServerCredential::None, _) => false,
                        (
                            ServerCredential::ScramKeys { client_key, .. },
                            Some(Secret::Scram(verifier)),
                        ) => verifier.fits_client_key(client_key),
                        _ => true,
                    };
                    pool.reconfigure(settings, target);
                    if usable {
                        pool.set_credential_generation(self.credential_generation(&key.user));
                    }
                    pool.set_limits(self.limits_for(&config, &key.database, &key.user));
                    true
                }
                None => {
                    tracing::info!(pool = %key, "database removed from the configuration; closing its pool");
                    pool.close();
                    false
                }
            }
        });
    }

    /// The shared limits a pool of `database` logging in as `server_user` counts against,
    /// brought up to date with `config`.
    fn limits_for(&self, config: &Config, database: &str, server_user: &str) -> Vec<Arc<Limit>> {
        let mut limits = Vec::new();
        let Some(settings) = config.pool_settings(database, server_user) else {
            return Vec::new();
        };
        let max_db = settings.max_db_connections;
        if max_db > 0 {
            limits.push(self.limit(format!("max_db_connections for {database}"), max_db));
        }
        let max_user = settings.max_user_connections;
        if max_user > 0 {
            limits.push(self.limit(format!("max_user_connections for {server_user}"), max_user));
        }
        limits
    }

    fn limit(&self, name: String, max: u32) -> Arc<Limit> {
        let max = max as usize;
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        match limits.get(&name) {
            Some(limit) => {
                limit.set_max(max);
                limit.clone()
            }
            None => {
                let limit = Limit::new(name.clone(), max);
                limits.insert(name, limit.clone());
                limit
            }
        }
    }
}

/// The target and settings of the pool for `database` logging in as `server_user`, from
/// `config`; `None` when the database is not configured. `client_user` and `scram_keys` say
/// who asked, for SCRAM pass-through; `looked_up` is the client's secret from `auth_query`.
fn pool_spec(
    config: &Config,
    pooler: &Pooler,
    database: &str,
    server_user: &str,
    client_user: &str,
    scram_keys: Option<([u8; 32], [u8; 32])>,
    looked_up: Option<Secret>,
) -> Option<(ServerTarget, PoolSettings)> {
    let (_, entry) = config.database(database)?;
    let own = server_user == client_user;
    let stored = pooler.secret(server_user).or(looked_up.filter(|_| own));
    // A cloud token replaces any stored password (the two are never configured together).
    let cloud = entry
        .server_auth
        .map(|auth| pooler.cloud_tokens.source(auth, &entry.server_auth_region));
    let credential = match (cloud, &entry.password, stored, scram_keys) {
        (Some(source), ..) => ServerCredential::CloudToken(source),
        (None, Some(p), _, _) => ServerCredential::Password(p.clone()),
        (None, None, Some(Secret::Scram(_)), Some((client_key, server_key))) if own => {
            ServerCredential::ScramKeys {
                client_key,
                server_key,
            }
        }
        (None, None, stored, _) => credential_of(stored),
    };
    let s = &config.pgbouncer;
    let servers = match entry.servers(DEFAULT_SOCKET_DIR) {
        Ok(servers) => servers,
        Err(e) => {
            tracing::error!(database, error = %e, "database entry has an unusable host list");
            return None;
        }
    };
    let target = ServerTarget {
        hosts: servers
            .into_iter()
            .map(|(host, port)| ServerAddr::new(host, port))
            .collect(),
        load_balance: entry.load_balance_hosts.unwrap_or_default(),
        cursor: HostCursor::default(),
        session_attrs: entry.target_session_attrs.unwrap_or_default(),
        dbname: entry.dbname.clone().unwrap_or_else(|| database.to_owned()),
        user: server_user.to_owned(),
        credential,
        connect_timeout: s.server_connect_timeout,
        keepalive: Keepalive::of(config),
        connect_query: entry.connect_query.clone(),
        startup_params: [
            ("client_encoding", &entry.client_encoding),
            ("datestyle", &entry.datestyle),
            ("timezone", &entry.timezone),
            ("application_name", &entry.application_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect(),
        tls: pooler.tls().server.clone(),
    };
    let settings = config.pool_settings(database, server_user)?;
    Some((target, settings))
}

/// What a stored secret lets the pooler log in with on its own: a SCRAM verifier needs the
/// client's proof as well.
fn credential_of(secret: Option<Secret>) -> ServerCredential {
    match secret {
        Some(Secret::Plain(p)) => ServerCredential::Password(p),
        Some(Secret::Md5(h)) => ServerCredential::Md5Hash(h),
        Some(Secret::Scram(_)) | None => ServerCredential::None,
    }
}

/// A digest of a configuration and its secrets, to tell a real change from a touched file
/// and to report which configuration is in force.
fn config_digest(config: &Config, secrets: &HashMap<String, Secret>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(config.to_ini());
    let mut users: Vec<(&String, String)> = secrets
        .iter()
        .map(|(u, s)| {
            let stored = match s {
                Secret::Plain(p) => p.clone(),
                Secret::Md5(h) => h.clone(),
                Secret::Scram(v) => v.to_string(),
            };
            (u, stored)
        })
        .collect();
    users.sort();
    for (user, secret) in users {
        h.update(user);
        h.update(secret);
    }
    // A rotated certificate is a change even when the configuration text is not.
    h.update(Tls::files_digest(&config.pgbouncer));
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl crate::metrics::PoolerView for Pooler {
    fn config(&self) -> Arc<Config> {
        Pooler::config(self)
    }
    fn config_generation(&self) -> (u64, String) {
        Pooler::config_generation(self)
    }
    fn config_file_digest(&self) -> String {
        Pooler::config_file_digest(self)
    }
    fn client_count(&self) -> usize {
        Pooler::client_count(self)
    }
    fn longest_waits(&self) -> HashMap<PoolKey, std::time::Duration> {
        self.registry.longest_waits()
    }
    fn pinned_clients(&self) -> usize {
        Pooler::pinned_clients(self).load(Ordering::Relaxed)
    }
    fn is_draining(&self) -> bool {
        Pooler::is_draining(self)
    }
    fn tls(&self) -> Arc<Tls> {
        Pooler::tls(self)
    }
    fn pools(&self) -> Vec<Arc<Pool>> {
        Pooler::pools(self)
    }
    fn peers(&self) -> &Peers {
        Pooler::peers(self)
    }
    fn redis(&self) -> Option<Arc<crate::redis::Proxy>> {
        self.redis.clone()
    }
}

impl crate::admin::Console for Pooler {
    fn config(&self) -> Arc<Config> {
        Pooler::config(self)
    }
    fn reload(&self) -> Result<(bool, Vec<config::ConfigWarning>), config::ConfigError> {
        Pooler::reload(self)
    }
    fn shut_down(&self, mode: ShutdownMode) {
        Pooler::shut_down(self, mode)
    }
    fn drained(&self) -> impl std::future::Future<Output = ()> + Send {
        Pooler::drained(self)
    }
    fn is_draining(&self) -> bool {
        Pooler::is_draining(self)
    }
    fn is_paused(&self, database: &str) -> bool {
        Pooler::is_paused(self, database)
    }
    fn is_paused_all(&self) -> bool {
        Pooler::is_paused_all(self)
    }
    fn set_paused(&self, database: Option<&str>, paused: bool) -> Vec<Arc<Pool>> {
        Pooler::set_paused(self, database, paused)
    }
    fn is_disabled(&self, database: &str) -> bool {
        Pooler::is_disabled(self, database)
    }
    fn set_disabled(&self, database: &str, disabled: bool) {
        Pooler::set_disabled(self, database, disabled)
    }
    fn kill(&self, database: Option<&str>) -> usize {
        Pooler::kill(self, database)
    }
    fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        Pooler::set_setting(self, key, value)
    }
    fn stats_averages(&self) -> Arc<BTreeMap<String, Averages>> {
        Pooler::stats_averages(self)
    }
    fn set_stats_averages(&self, averages: BTreeMap<String, Averages>) {
        Pooler::set_stats_averages(self, averages)
    }
    fn registry(&self) -> &Arc<Registry> {
        Pooler::registry(self)
    }
    fn client_count(&self) -> usize {
        Pooler::client_count(self)
    }
    fn pools(&self) -> Vec<Arc<Pool>> {
        Pooler::pools(self)
    }
    fn tls(&self) -> Arc<Tls> {
        Pooler::tls(self)
    }
    fn peers(&self) -> &Peers {
        Pooler::peers(self)
    }
    fn redis(&self) -> Option<Arc<crate::redis::Proxy>> {
        self.redis.clone()
    }
}

impl client::SessionContext for Pooler {
    fn config(&self) -> Arc<Config> {
        Pooler::config(self)
    }
    fn config_now(&self) -> arc_swap::Guard<Arc<Config>> {
        Pooler::config_now(self)
    }
    fn config_source(&self) -> &ArcSwap<Config> {
        &self.config
    }
    fn tls(&self) -> Arc<Tls> {
        Pooler::tls(self)
    }
    fn is_disabled(&self, database: &str) -> bool {
        Pooler::is_disabled(self, database)
    }
    fn is_draining(&self) -> bool {
        Pooler::is_draining(self)
    }
    fn pool_for(
        &self,
        database: &str,
        user: &str,
        scram_keys: Option<([u8; 32], [u8; 32])>,
        looked_up: Option<Secret>,
    ) -> Result<Arc<Pool>, Box<PgError>> {
        Pooler::pool_for(self, database, user, scram_keys, looked_up)
    }
    fn auth_query_secret<'a>(
        &'a self,
        database: &'a str,
        user: &'a str,
    ) -> client::LookupFuture<'a> {
        Box::pin(Pooler::auth_query_secret(self, database, user))
    }
    fn registry(&self) -> &Arc<Registry> {
        Pooler::registry(self)
    }
    fn peers(&self) -> &Peers {
        Pooler::peers(self)
    }
    fn statements(&self) -> &StatementRegistry {
        Pooler::statements(self)
    }
    fn pinned_clients(&self) -> &AtomicUsize {
        Pooler::pinned_clients(self)
    }
    fn secret(&self, user: &str) -> Option<Secret> {
        Pooler::secret(self, user)
    }
    fn scram_secret(&self, user: &str, secret: Secret) -> Secret {
        Pooler::scram_secret(self, user, secret)
    }
    fn previous_secrets(&self, user: &str) -> Vec<Secret> {
        Pooler::previous_secrets(self, user)
    }
    fn hba(&self) -> Arc<Hba> {
        self.hba.load_full()
    }
    fn token_reviewer(&self) -> &TokenReviewer {
        &self.tokens
    }
    fn is_console(&self, database: &str) -> bool {
        crate::admin::is_console(database)
    }
    fn console_allowed(&self, user: &str) -> Result<(), Box<PgError>> {
        match crate::admin::role_of(&self.config(), user) {
            Some(_) => Ok(()),
            None => Err(Box::new(crate::admin::not_allowed(user))),
        }
    }
    fn serve_console(
        self: Arc<Self>,
        stream: Stream,
        buf: BytesMut,
        user: String,
        own_user: bool,
        record: ClientHandle,
    ) -> Pin<Box<dyn Future<Output = &'static str> + Send>> {
        Box::pin(async move {
            // Checked at login; a reload since may have taken the user off the lists.
            let role = if own_user {
                Some(crate::admin::Role::Admin)
            } else {
                crate::admin::role_of(&self.config(), &user)
            };
            let Some(role) = role else {
                return "no longer allowed on the admin console";
            };
            tracing::info!(%user, ?role, "admin console login");
            crate::admin::serve(self, stream, buf, role, record).await
        })
    }
}
