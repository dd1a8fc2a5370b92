//! One task per client: startup and authentication, then the session loop that borrows a
//! server connection when the client has work and gives it back when the pool mode allows.

mod context;
mod login;
mod pipeline;
mod relay;
mod replication;
mod scan;
mod spare;
mod tracked;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::cancel_key::{CancelKey, Route};
use crate::config::PoolMode;
use crate::params::{self, ParamSet};
use crate::pool::{Checkout, Counts, Pool, SettingsCache};
use crate::protocol::{backend, PgError, ProtocolError};
use crate::registry::{Admission, ClientCount, ClientHandle, ClientInfo};
use crate::server::{self, PrepareError};
use crate::session_state::SessionState;
use crate::stream::{Keepalive, Stream};
use crate::wire;

use context::{ConfigCache, ConfigSource};
pub use context::{LookupFuture, SessionContext};
use login::{Hello, LoginError};
use relay::{Outcome, Relay, TimeoutKind, Timeouts};
use scan::{ReleasePolicy, TxState};
use tracked::{ClientState, Tracker};

/// What a client's read buffer holds after an idle wait: most requests come whole in one read.
const READ_BUFFER: usize = 4096;

/// Serves one client connection from its first byte to its last. Never panics on what the
/// client sends; every refusal reaches the client as an ErrorResponse with a SQLSTATE.
/// `counted` is the connection's place in `max_client_conn`, taken at accept.
/// Not an `async fn`: its arguments would stay in every client's task for its whole life.
pub fn serve(
    pooler: Arc<dyn SessionContext>,
    stream: Stream,
    peer: String,
    counted: (ClientCount, usize),
) -> impl Future<Output = ()> + Send {
    let (count, connected) = counted;
    // Logging in needs far more future state than a session does. It is boxed, and freed once
    // done, so that the task of a logged-in client (sized for its largest state) stays small.
    let login = Box::pin(async move {
        let session = log_in(pooler, stream, &peer, connected).await;
        session.map(|s| (s, peer))
    });
    async move {
        let _count = count;
        let Some((mut session, peer)) = login.await else {
            return;
        };
        let killed = session.record.shared();
        // Biased (polled in this order): a random start would draw from the runtime's RNG
        // at every wake-up of every client, which shows in profiles.
        let reason = tokio::select! {
            biased;
            reason = session.run() => reason,
            () = killed.killed() => {
                // Mid-relay, the server connection was just closed with the relay; the client
                // is told why only when no half-sent response could precede the message.
                if killed.link().is_none() {
                    session.fatal(PgError::fatal(
                        "57P01",
                        "terminated by the administrator (KILL_CLIENT)",
                    ))
                    .await;
                }
                "killed from the admin console (KILL_CLIENT)"
            }
        };
        if session.pooler.config().pgbouncer.log_disconnections {
            let info = &session.record.info;
            tracing::info!(%peer, user = %info.user, database = %info.database, reason, "disconnect");
        }
    }
}

/// Startup, authentication and the welcome. `None`: the connection was a cancel request, was
/// refused, or was an admin console session that has ended.
async fn log_in(
    pooler: Arc<dyn SessionContext>,
    mut stream: Stream,
    peer: &str,
    connected: usize,
) -> Option<Session> {
    let config = pooler.config();
    let mut buf = BytesMut::new();
    // One deadline from accept to the end of authentication, however many steps it takes.
    let login_deadline = login_deadline(config.pgbouncer.client_login_timeout);

    let tls = pooler.tls();
    let mut login = loop {
        let hello = within_login_deadline(
            login_deadline,
            login::hello(&mut stream, &mut buf, &config, &tls.client),
        )
        .await;
        match hello {
            Ok(Hello::Session(login)) => break login,
            Ok(Hello::Cancel {
                process_id,
                secret_key,
            }) => {
                forward_cancel_in_time(&*pooler, process_id, secret_key).await;
                return None;
            }
            Ok(Hello::StartTls { direct }) => {
                let handshake = login::accept_tls(stream, &tls.client, direct);
                let accepted = match login_deadline {
                    Some(d) => tokio::time::timeout_at(d, handshake)
                        .await
                        .unwrap_or_else(|_| Err((None, "client_login_timeout".into()))),
                    None => handshake.await,
                };
                stream = match accepted {
                    Ok(s) => s,
                    Err((encrypted, why)) => {
                        tracing::info!(%peer, reason = %why, "client TLS negotiation failed");
                        let mut encrypted = encrypted?;
                        let e = LoginError::fatal(PgError::fatal("08P01", why));
                        return refused(pooler.as_ref(), &mut encrypted, e).await;
                    }
                };
            }
            Err(e) => return refused(pooler.as_ref(), &mut stream, e).await,
        }
    };
    if config.pgbouncer.application_name_add_host {
        let (peer, _) = stream.endpoints(config.pgbouncer.listen_port);
        let named = login::name_with_host(login.params.get("application_name"), &peer);
        login.params.set("application_name", &named);
    }
    let console = pooler.is_console(&login.database);
    // Every connection counts from accept; as in PgBouncer, the console is never refused, so
    // an operator can still see who fills the limit.
    if !console && connected > config.pgbouncer.max_client_conn as usize {
        let e = PgError::fatal("53300", "no more connections allowed (max_client_conn)");
        return refused(pooler.as_ref(), &mut stream, LoginError::fatal(e)).await;
    }
    if !console && pooler.is_disabled(&login.database) {
        let e = PgError::fatal(
            "08004",
            format!(
                "database {} is disabled (DISABLE); try again after ENABLE",
                login.database
            ),
        );
        return refused(pooler.as_ref(), &mut stream, LoginError::fatal(e)).await;
    }
    if !console && config.database(&login.database).is_none() {
        return refused(
            pooler.as_ref(),
            &mut stream,
            LoginError::fatal(no_such_database(&login.database)),
        )
        .await;
    }
    // SCRAM-SHA-256-PLUS binds to the certificate this connection's handshake showed.
    let channel_binding = tls.client.end_point.as_deref().filter(|_| stream.is_tls());
    // PgBouncer's peer login: `pgbouncer` over the Unix socket, as the pooler's own OS user,
    // is an admin without a password, whatever auth_type says.
    let own_user = console && login.user == "pgbouncer" && stream.peer_is_own_user();
    let authenticated = if own_user {
        Ok(login::Authenticated::default())
    } else {
        within_login_deadline(
            login_deadline,
            login::authenticate(&mut stream, &mut buf, &*pooler, &login, channel_binding),
        )
        .await
    };
    let authenticated = match authenticated {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%peer, user = %login.user, "client login failed");
            return refused(pooler.as_ref(), &mut stream, e).await;
        }
    };
    // As in PgBouncer, console clients count too, and only admin users there are never refused.
    let unlimited = console && config.pgbouncer.admin_users.contains(&login.user);
    let (database_limit, user_limit) = match unlimited {
        true => (0, 0),
        false => (
            config.max_db_client_connections_for(&login.database),
            config.max_user_client_connections_for(&login.user),
        ),
    };
    let admission =
        match pooler
            .registry()
            .admit(&login.database, &login.user, database_limit, user_limit)
        {
            Ok(a) => a,
            Err(limit) => {
                let e = PgError::fatal("08P01", limit.message());
                return refused(pooler.as_ref(), &mut stream, LoginError::fatal(e)).await;
            }
        };
    if console {
        if !own_user {
            if let Err(e) = pooler.console_allowed(&login.user) {
                return refused(pooler.as_ref(), &mut stream, LoginError::Fatal(e)).await;
            }
        }
        let record = register(
            &*pooler,
            &stream,
            &login,
            &admission,
            config.pgbouncer.listen_port,
            None,
        );
        drop(config);
        let reason = pooler
            .serve_console(stream, buf, login.user.clone(), own_user, record)
            .await;
        drop(admission);
        tracing::info!(%peer, user = %login.user, reason, "admin console disconnect");
        return None;
    }
    let pool = match pooler.pool_for(
        &login.database,
        &login.user,
        authenticated.scram_keys,
        authenticated.looked_up,
    ) {
        Ok(p) => p,
        Err(e) => return refused(pooler.as_ref(), &mut stream, LoginError::Fatal(e)).await,
    };
    if let Some(kind) = login.replication {
        let target = replication::target_for(
            &pool.target(),
            kind,
            &login.params,
            login.options.as_deref(),
        );
        let record = register(
            &*pooler,
            &stream,
            &login,
            &admission,
            config.pgbouncer.listen_port,
            Some(&pool),
        );
        let log = config.pgbouncer.log_disconnections;
        drop(config);
        let reason = match replication::serve(&mut stream, &mut buf, &target, &record).await {
            Ok(reason) => reason,
            Err(e) => {
                tracing::warn!(%peer, user = %login.user, error = %e.message, "replication connection to the server failed");
                return refused(pooler.as_ref(), &mut stream, LoginError::fatal(e)).await;
            }
        };
        if log {
            tracing::info!(%peer, user = %login.user, database = %login.database, reason, "disconnect");
        }
        return None;
    }
    let deadline = wait_deadline(Instant::now(), config.pgbouncer.query_wait_timeout);
    let welcome = match pool.welcome_params(deadline).await {
        Ok(w) => w,
        Err(e) => {
            return refused(
                pooler.as_ref(),
                &mut stream,
                LoginError::fatal(e.to_client_error()),
            )
            .await
        }
    };
    let record = register(
        &*pooler,
        &stream,
        &login,
        &admission,
        config.pgbouncer.listen_port,
        Some(&pool),
    );
    let wanted = greet(&mut stream, &login.params, &welcome, &record).await;
    let Ok(wanted) = wanted else {
        return None;
    };
    if config.pgbouncer.log_connections {
        tracing::info!(%peer, user = %login.user, database = %login.database, "login");
    }
    drop(config);
    pool.stats()
        .clients
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = Session {
        config: ConfigCache::new(ConfigSource(pooler.clone())),
        pool_settings: pool.settings_cache(),
        pooler,
        pool,
        stream,
        buf,
        params: wanted,
        record,
        _admission: admission,
        state: None,
    };
    Some(session)
}

/// Records a logged-in client in the registry, which gives it its cancel key.
fn register(
    pooler: &dyn SessionContext,
    stream: &Stream,
    login: &login::Login,
    admission: &Admission,
    listen_port: u16,
    pool: Option<&Pool>,
) -> ClientHandle {
    let (peer, local) = stream.endpoints(listen_port);
    let info = ClientInfo {
        user: admission.user().clone(),
        database: admission.database().clone(),
        application_name: login
            .params
            .get("application_name")
            .unwrap_or_default()
            .into(),
        peer,
        local,
        pool: pool.map(Pool::shared_key),
        replication: login.replication.map_or("none", |r| r.show_name()),
    };
    pooler.registry().add_client(info, pooler.peers().own_id())
}

/// When a login that starts now must be done by, after `client_login_timeout` (zero, or a
/// limit too far off to represent: never).
fn login_deadline(limit: Duration) -> Option<tokio::time::Instant> {
    if limit.is_zero() {
        return None;
    }
    tokio::time::Instant::now().checked_add(limit)
}

/// Bounds a step of the login by the login's deadline.
async fn within_login_deadline<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = Result<T, LoginError>>,
) -> Result<T, LoginError> {
    let Some(deadline) = deadline else {
        return fut.await;
    };
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or_else(|_| {
            Err(LoginError::fatal(PgError::fatal(
                "08P01",
                "client_login_timeout: login took too long",
            )))
        })
}

fn wait_deadline(requested: Instant, query_wait_timeout: Duration) -> Instant {
    // Zero disables the limit; a day stands in for "forever" without overflow.
    let wait = if query_wait_timeout.is_zero() {
        Duration::from_secs(86_400)
    } else {
        query_wait_timeout
    };
    requested + wait
}

/// Tells a client why it cannot go on, then lets the connection close; `None`, for
/// [`log_in`] to return.
async fn refused<T>(pooler: &dyn SessionContext, stream: &mut Stream, e: LoginError) -> Option<T> {
    if let LoginError::Fatal(e) = e {
        tracing::debug!(code = %e.code, message = %e.message, "refusing client");
        log_pooler_error(pooler, &e);
        let mut out = BytesMut::new();
        backend::error_response(&mut out, &e);
        wire::farewell(stream, &mut out).await;
    }
    None
}

/// [`forward_cancel`], given up after `cancel_wait_timeout` (0: no limit), as PgBouncer
/// gives up a cancel request that waits too long.
async fn forward_cancel_in_time(pooler: &dyn SessionContext, process_id: i32, secret_key: i32) {
    let limit = pooler.config_now().pgbouncer.cancel_wait_timeout;
    let forward = forward_cancel(pooler, process_id, secret_key);
    if limit.is_zero() {
        forward.await;
    } else if tokio::time::timeout(limit, forward).await.is_err() {
        tracing::warn!("cancel request dropped: not forwarded within cancel_wait_timeout");
    }
}

async fn forward_cancel(pooler: &dyn SessionContext, process_id: i32, secret_key: i32) {
    let key = CancelKey {
        process_id,
        secret_key,
    };
    let peers = pooler.peers();
    let key = match key.route(peers.own_id()) {
        Route::Local(key) => key,
        Route::Forward { peer, key } => return peers.forward(&pooler.config(), peer, key).await,
        Route::AlreadyForwarded => return peers.dropped_forwarded(),
    };
    let Some(permit) = pooler.registry().cancel_target(key) else {
        tracing::debug!("cancel request for an unknown key or an idle client ignored");
        return;
    };
    let config = pooler.config();
    let keepalive = Keepalive::of(&config);
    let connect_timeout = config.pgbouncer.server_connect_timeout;
    if let Err(e) =
        server::send_cancel(permit.addr(), permit.key(), &keepalive, connect_timeout).await
    {
        tracing::warn!(error = %e, server = %permit.addr(), "could not forward a cancel request");
    }
}

/// Completes the login: AuthenticationOk, the parameters, the cancel key, ReadyForQuery.
/// Returns the parameter values the client now believes in.
async fn greet(
    stream: &mut Stream,
    requested: &ParamSet,
    welcome: &ParamSet,
    record: &ClientHandle,
) -> std::io::Result<ParamSet> {
    let mut out = BytesMut::new();
    backend::authentication_ok(&mut out);
    let mut wanted = ParamSet::new();
    for (name, value) in welcome.iter() {
        let value = requested.get(name).unwrap_or(value);
        backend::parameter_status(&mut out, name, value);
        if params::TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
            || requested.get(name).is_some()
        {
            wanted.set(name, value);
        }
    }
    // A tracked parameter the server did not report still follows the client's wish.
    for (name, value) in requested.iter() {
        if welcome.get(name).is_none() {
            backend::parameter_status(&mut out, name, value);
            wanted.set(name, value);
        }
    }
    backend::backend_key_data(&mut out, record.process_id, record.secret_key);
    backend::ready_for_query(&mut out, b'I');
    wire::flush(stream, &mut out).await?;
    // Compared with a server connection's on every checkout.
    wanted.intern();
    Ok(wanted)
}

/// Why a client waiting for a server connection got none.
enum NoConnection {
    /// It left meanwhile.
    Left,
    /// The pool refused it (no connection in time, pool closed, ...); it is told this.
    Refused(PgError),
}

/// How a transaction's relay ended, for [`Session::conclude`].
struct Relayed {
    outcome: Outcome,
    tx: TxState,
    /// The server's SQLSTATE when it signalled a failover.
    failover: Option<[u8; 5]>,
    /// The client keeps state only a full reset removes from the connection.
    pinned: bool,
    /// When the relay ended: the transaction's time ends there, and a connection given back
    /// at once is idle from then (one clock reading for both).
    ended: Instant,
}

/// A logged-in client.
struct Session {
    pooler: Arc<dyn SessionContext>,
    /// The configuration as of this session's latest look, for the looks made per transaction.
    config: ConfigCache,
    pool: Arc<Pool>,
    /// The pool's settings as of this session's latest look, likewise.
    pool_settings: SettingsCache,
    stream: Stream,
    /// Client bytes not yet forwarded; empty (and unallocated) while the client is idle.
    buf: BytesMut,
    /// The parameter values the client believes in.
    params: ParamSet,
    /// Its entry in the registry: state for the console, the link cancel requests follow.
    record: ClientHandle,
    /// Its place under `max_db_client_connections` and `max_user_client_connections`.
    _admission: Admission,
    /// Prepared statements, session settings and pinning (transaction and statement modes);
    /// boxed when there is any, so that a client without them carries none of it.
    state: Option<Box<ClientState>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pool
            .stats()
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if pinned(&self.state) {
            self.pooler
                .pinned_clients()
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Session {
    /// The session loop; returns why the client left.
    async fn run(&mut self) -> &'static str {
        let mode = self.pool.settings().mode;
        loop {
            let settings = match self.wait_for_work(mode).await {
                Ok(settings) => settings,
                Err(reason) => return reason,
            };
            // Boxed per transaction: its state (checkout, relay) is large, and an idle
            // client's task should hold only what waiting for work needs. The settings are
            // lent, as an argument's value would be held in the callee's future twice.
            if let Err(reason) = Box::pin(self.serve_transaction(mode, &settings)).await {
                return reason;
            }
        }
    }

    /// Borrows a server connection for the work the client sent and relays until it can be
    /// given back (Ok) or the session is over (Err).
    async fn serve_transaction(
        &mut self,
        mode: PoolMode,
        settings: &TxSettings,
    ) -> Result<(), &'static str> {
        // One clock read: the request's time, its wait deadline, the pool's "now" and, when
        // a connection is ready at once, the start of its lending.
        let requested = Instant::now();
        self.record.start_waiting(requested);
        let checkout = self.checkout(requested, settings.query_wait_timeout, settings.pkt_buf);
        let mut checkout = match checkout.await {
            Ok(c) => c,
            Err(no) => {
                let reason = match no {
                    NoConnection::Left => "client left while waiting for a server connection",
                    NoConnection::Refused(e) => {
                        self.fatal(e).await;
                        "no server connection"
                    }
                };
                self.record.stop_waiting();
                return Err(reason);
            }
        };
        self.record.link_to(checkout.record());
        let session = self.state.as_ref().map_or(&[][..], |s| s.session.applied());
        let prepared = match checkout.server().prepare_for(session, &self.params) {
            Some(preparing) => preparing.await,
            None => Ok(()),
        };
        // Consumed here, not held through the relay below.
        if let Some(e) = prepared.err() {
            let (e, reason) = match e {
                PrepareError::Session(e) => (e, "replaying session settings failed"),
                PrepareError::Params(e) => (e, "parameter sync failed"),
            };
            self.fatal(e.to_client_error()).await;
            return Err(reason);
        }
        let relayed = self.relay(mode, settings, &mut checkout).await;
        // The common end, without making (and copying) the future of the others.
        if matches!(relayed.outcome, Outcome::Released) && !settings.reset_always {
            checkout.release_at(relayed.ended, self.pool_settings.load());
            return Ok(());
        }
        // Boxed: rarer (once per session in session mode), and kept out of this future.
        Box::pin(self.conclude(mode, settings.reset_always, checkout, relayed)).await
    }

    /// Waits until the client has sent something that needs a server, and returns the
    /// settings its transaction runs under. Err means it left.
    async fn wait_for_work(&mut self, mode: PoolMode) -> Result<TxSettings, &'static str> {
        let idle_limit = self
            .config
            .load()
            .client_idle_timeout_for(&self.record.info.user);
        // Transaction and statement modes let clients go between transactions when draining;
        // session-mode clients keep their session until they leave (or shutdown_timeout).
        let releases = mode != PoolMode::Session;
        while self.buf.is_empty() {
            // Give the read buffer back while idle: idle clients should cost almost nothing.
            spare::give(std::mem::take(&mut self.buf));
            if releases && self.pooler.is_draining() {
                self.buf = spare::take(READ_BUFFER);
                match self.stream.try_read_buf(&mut self.buf) {
                    Ok(n) if n > 0 => break,
                    Ok(_) => return Err("client closed the connection"),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err("client connection failed"),
                }
                self.fatal(PgError::fatal(
                    "57P01",
                    "the pooler is shutting down; reconnect to continue",
                ))
                .await;
                return Err("pooler shutting down");
            }
            // A shutdown wakes every client's task (Registry::nudge_clients), which polls
            // this again.
            let pooler = &self.pooler;
            let drained = std::future::poll_fn(|_| {
                if releases && pooler.is_draining() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            // No timer at all unless there is a limit: arming and clearing one per
            // transaction shows in profiles.
            let idle_timeout = async {
                if idle_limit.is_zero() || mode == PoolMode::Session {
                    std::future::pending::<()>().await;
                } else {
                    // Boxed: a timer held inline would enlarge every idle client's task.
                    Box::pin(tokio::time::sleep(idle_limit)).await;
                }
            };
            tokio::select! {
                biased;
                ready = self.stream.readable() => {
                    ready.map_err(|_| "client connection failed")?;
                }
                () = drained => continue,
                () = idle_timeout => {
                    self.fatal(PgError::fatal(
                        "57P05",
                        "client_idle_timeout: client was idle too long",
                    ))
                    .await;
                    return Err("client_idle_timeout");
                }
            }
            self.buf = spare::take(READ_BUFFER);
            match self.stream.read_now(&mut self.buf) {
                Some(Ok(0)) => return Err("client closed the connection"),
                Some(Ok(_)) | None => {}
                Some(Err(_)) => return Err("client connection failed"),
            }
        }
        if self.buf.first() == Some(&b'X') {
            return Err("client said goodbye");
        }
        // Read once per transaction: a reload applies from the next request on.
        let settings = TxSettings::of(
            self.config.load(),
            &self.pool.key().user,
            &self.record.info.user,
        );
        // Refused before a server connection is borrowed, as PgBouncer does.
        if self.buf.first() == Some(&b'Q') && !settings.simple_query {
            tracing::error!("client used \"Query\" packet type");
            self.fatal(ProtocolError::SimpleQueryDisallowed.to_pg_error())
                .await;
            return Err("PQexec disallowed");
        }
        // A header that cannot be valid is refused before a server connection is borrowed.
        if let Err(e) = crate::protocol::peek_header(&self.buf, settings.max_message) {
            self.fatal(e.to_pg_error()).await;
            return Err("client protocol violation");
        }
        Ok(settings)
    }

    /// Borrows a server connection, noticing meanwhile if the client goes away. What the
    /// client sends meanwhile is read up to `pkt_buf` bytes; past that the client is not read
    /// (it waits, as its socket fills) until it has a connection.
    async fn checkout(
        &mut self,
        requested: Instant,
        query_wait_timeout: Duration,
        bound: usize,
    ) -> Result<Checkout, NoConnection> {
        // This future is part of the one boxed for every transaction, and the pool's future
        // is most of it; the answer to a refusal is awaited by the caller, since a future
        // keeps room for a local that lives across two awaits in every other state.
        let result = 'lent: {
            let pool = &self.pool;
            let settings = self.pool_settings.load();
            let deadline = wait_deadline(requested, query_wait_timeout);
            let checkout = pool.checkout(requested, deadline, settings);
            tokio::pin!(checkout);
            // Polled alone first: a connection lent at once needs no look at the client.
            if let Poll::Ready(result) =
                std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await
            {
                break 'lent result;
            }
            loop {
                let reading = self.buf.len() < bound;
                tokio::select! {
                    biased;
                    result = &mut checkout => break 'lent result,
                    read = self.stream.read_buf(&mut self.buf), if reading => match read {
                        Ok(0) | Err(_) => return Err(NoConnection::Left),
                        Ok(_) => {}
                    },
                }
            }
        };
        result.map_err(|e| NoConnection::Refused(e.to_client_error()))
    }

    /// Relays until the connection can be given back or the session is over, and says which.
    /// The connection is lent, not given: an `async fn` holds an argument's value twice in its
    /// future, and this one is part of the future boxed for every transaction.
    async fn relay(
        &mut self,
        mode: PoolMode,
        settings: &TxSettings,
        checkout: &mut Checkout,
    ) -> Relayed {
        let policy = ReleasePolicy {
            release_when_idle: mode != PoolMode::Session,
            statement_mode: mode == PoolMode::Statement,
        };
        let TxSettings {
            timeouts,
            max_message,
            simple_query,
            tracking,
            ..
        } = *settings;

        let mut tx = TxState::default();
        let mut counts = Counts::default();
        let param_changes = checkout.server().params().changes();
        let pooler = &*self.pooler;
        let tracker = (mode != PoolMode::Session).then(|| {
            Tracker::new(
                &mut self.state,
                pooler.statements(),
                pooler.pinned_clients(),
                &self.record,
                tracking,
            )
        });
        let outcome = Relay::new(
            &mut self.stream,
            &mut self.buf,
            &mut self.params,
            checkout.server().relay_parts(),
            &mut tx,
            policy,
            timeouts,
            max_message,
            simple_query,
            tracker,
            &mut counts,
        )
        .await;
        let ended = Instant::now();
        self.pool
            .stats()
            .add(&counts, ended.saturating_duration_since(checkout.lent_at()));
        let server = checkout.server();
        let standby_report = (server.params().changes() != param_changes)
            .then(|| server.params().get("in_hot_standby"))
            .flatten();
        let failed = matches!(outcome, Outcome::ServerFailed(_));
        self.pool
            .relay_ended(server, failed, counts.failover, standby_report);
        // Unlinked, and cancels sent meanwhile delivered, before anyone else can borrow it.
        self.record.unlink(checkout.record());
        checkout.record().cancels_delivered().await;
        self.record
            .set_prepared(self.state.as_ref().map_or(0, |s| s.statements.count()));
        // A pinned client's connection carries state only a full reset removes.
        let pinned = pinned(&self.state);
        if self.state.as_deref().is_some_and(holds_nothing) {
            self.state = None;
        }
        Relayed {
            outcome,
            tx,
            failover: counts.failover,
            pinned,
            ended,
        }
    }

    /// Gives the connection back (or closes it) as the relay's outcome says, and tells the
    /// client why its session ends if it does; every end but a plain release, which
    /// [`Session::serve_transaction`] does without making this future.
    async fn conclude(
        &mut self,
        mode: PoolMode,
        reset_always: bool,
        mut checkout: Checkout,
        relayed: Relayed,
    ) -> Result<(), &'static str> {
        let Relayed {
            outcome,
            tx,
            failover,
            pinned,
            // These ends give the connection back later, after a reset or not at all.
            ended: _,
        } = relayed;
        match outcome {
            // Only with server_reset_query_always: a plain release is the caller's.
            Outcome::Released => {
                reset_and_release(checkout, &self.reset_query()).await;
                Ok(())
            }
            Outcome::TransactionInStatementMode => {
                let server = checkout.server();
                // Drop the ReadyForQuery that reported the transaction, then undo it.
                server.skip_buffered(6);
                // Boxed, as statement mode's rare path, to keep client tasks small.
                if Box::pin(server.simple_query("ROLLBACK")).await.is_err() {
                    self.fatal(PgError::fatal("08006", "server connection lost"))
                        .await;
                    return Err("server failed");
                }
                let mut out = BytesMut::new();
                backend::error_response(
                    &mut out,
                    &PgError::error(
                        "0A000",
                        "transaction blocks are not allowed in statement pooling mode; the transaction was rolled back",
                    ),
                );
                backend::ready_for_query(&mut out, b'I');
                checkout.release();
                if wire::flush(&mut self.stream, &mut out).await.is_err() {
                    return Err("client connection failed");
                }
                Ok(())
            }
            Outcome::ClientGone { server_idle } => {
                if server_idle {
                    if mode == PoolMode::Session || reset_always || pinned {
                        reset_and_release(checkout, &self.reset_query()).await;
                    } else {
                        checkout.release();
                    }
                } else {
                    self.abandon(checkout, &tx).await;
                }
                Err("client closed the connection")
            }
            Outcome::ClientFailed(e) => {
                tracing::debug!(error = %e, "client socket failed");
                self.abandon(checkout, &tx).await;
                Err("client connection failed")
            }
            Outcome::ClientProtocol(e) => {
                self.abandon(checkout, &tx).await;
                self.fatal(e.to_pg_error()).await;
                Err("client protocol violation")
            }
            Outcome::ClientOverLimit(limit) => {
                self.abandon(checkout, &tx).await;
                self.fatal(PgError::fatal("54000", limit)).await;
                Err("client went over a limit")
            }
            Outcome::ServerFailed(why) => {
                tracing::warn!(pool = %self.pool.key(), %why, "server connection failed during a client's work");
                drop(checkout);
                // The server's own reason (57P01 for a shutdown) when it gave one.
                let code = failover.map_or_else(
                    || "08006".into(),
                    |c| String::from_utf8_lossy(&c).into_owned(),
                );
                self.fatal(PgError::fatal(
                    code,
                    format!("server connection failed: {why}"),
                ))
                .await;
                Err("server connection failed")
            }
            Outcome::Timeout { kind, server_idle } => {
                let (code, message, reason) = match kind {
                    TimeoutKind::Query => (
                        "57014",
                        "query_timeout: query ran too long",
                        "query_timeout",
                    ),
                    TimeoutKind::IdleTransaction => (
                        "25P03",
                        "idle_transaction_timeout: transaction was idle too long",
                        "idle_transaction_timeout",
                    ),
                    TimeoutKind::ClientIdle => (
                        "57P05",
                        "client_idle_timeout: client was idle too long",
                        "client_idle_timeout",
                    ),
                };
                // The connection is given back (or closed) before the client is told: a
                // client that does not read must not keep it.
                if server_idle {
                    reset_and_release(checkout, &self.reset_query()).await;
                    self.fatal(PgError::fatal(code, message)).await;
                } else {
                    // Told while the query is cancelled, not after: a server that cannot be
                    // reached must not add its connect timeout to the client's wait.
                    let abandon = self.abandon(checkout, &tx);
                    tokio::join!(abandon, self.fatal(PgError::fatal(code, message)));
                }
                Err(reason)
            }
        }
    }

    /// Closes a server connection the client left in use; a query still running on it is
    /// cancelled first (with the server's own key), so that no orphaned work holds a backend.
    /// The future owns what it needs, so the client can be told meanwhile.
    fn abandon(
        &self,
        mut checkout: Checkout,
        tx: &TxState,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let running = tx.outstanding > 0;
        let config = self.pooler.config();
        let keepalive = Keepalive::of(&config);
        let connect_timeout = config.pgbouncer.server_connect_timeout;
        // Boxed: a rare path, kept out of every client task's size.
        Box::pin(async move {
            if running {
                let server = checkout.server();
                let (addr, key) = server.cancel_target();
                if let Err(e) = server::send_cancel(&addr, key, &keepalive, connect_timeout).await {
                    tracing::warn!(error = %e, server = %addr, "could not cancel an abandoned query");
                }
            }
            drop(checkout);
        })
    }

    /// `server_reset_query` as configured now; read only when a connection needs resetting.
    fn reset_query(&self) -> String {
        self.pooler
            .config_now()
            .pgbouncer
            .server_reset_query
            .clone()
    }

    /// Tells the client a FATAL error (the connection closes after it).
    fn fatal(&mut self, e: PgError) -> impl Future<Output = ()> + '_ {
        log_pooler_error(self.pooler.as_ref(), &e);
        // Encoded before the future is made, so that the future (stored in every state of
        // the session that can fail) holds bytes and not the error.
        let mut out = BytesMut::new();
        backend::error_response(&mut out, &e);
        async move {
            // Boxed, to keep the timers out of the states of every client task.
            Box::pin(wire::farewell(&mut self.stream, &mut out)).await;
        }
    }
}

/// The settings one transaction runs under, read from the configuration once, when its
/// first bytes arrive.
#[derive(Debug, Clone, Copy)]
struct TxSettings {
    /// `query_wait_timeout`.
    query_wait_timeout: Duration,
    /// `pkt_buf`: how much a waiting client is read ahead.
    pkt_buf: usize,
    /// The relay's timeouts.
    timeouts: Timeouts,
    /// The largest client message (`max_packet_size`).
    max_message: usize,
    /// Whether simple-query messages pass (`disable_pqexec` off).
    simple_query: bool,
    /// `server_reset_query_always`.
    reset_always: bool,
    /// Prepared statements and pinning.
    tracking: tracked::Policy,
}

impl TxSettings {
    /// As in PgBouncer: the server connection's user for the query limits, the client's own
    /// for its idleness.
    fn of(config: &crate::config::Config, server_user: &str, client_user: &str) -> TxSettings {
        let s = &config.pgbouncer;
        TxSettings {
            query_wait_timeout: s.query_wait_timeout,
            pkt_buf: s.pkt_buf as usize,
            timeouts: Timeouts {
                query: config.query_timeout_for(server_user),
                idle_transaction: config.idle_transaction_timeout_for(server_user),
                client_idle: config.client_idle_timeout_for(client_user),
            },
            max_message: max_message(s.max_packet_size),
            simple_query: !s.disable_pqexec,
            reset_always: s.server_reset_query_always,
            tracking: tracked::Policy {
                max_prepared: s.max_prepared_statements as usize,
                pinning: s.pinning,
            },
        }
    }
}

/// Whether the client is pinned to its server connection.
fn pinned(state: &Option<Box<ClientState>>) -> bool {
    state.as_ref().is_some_and(|s| s.pinned.is_some())
}

/// Whether a client's state is what a fresh client has, so that its box can be freed.
fn holds_nothing(state: &ClientState) -> bool {
    state.statements.count() == 0
        && state.pinned.is_none()
        && state.session == SessionState::default()
}

/// With `log_pooler_errors`, logs an error the pooler itself tells a client, in PgBouncer's
/// words.
fn log_pooler_error(pooler: &dyn SessionContext, e: &PgError) {
    if pooler.config_now().pgbouncer.log_pooler_errors {
        tracing::warn!("pooler error: {}", e.message);
    }
}

/// The largest client message relayed: `max_packet_size`, and never more than PostgreSQL
/// itself accepts (1 GB), so an absurd length is refused here rather than by the server.
fn max_message(max_packet_size: u32) -> usize {
    const POSTGRES_LIMIT: usize = (1 << 30) - 1;
    usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .min(POSTGRES_LIMIT)
}

/// Runs `server_reset_query` and gives the connection back if it worked; otherwise the
/// connection is closed.
fn reset_and_release(
    mut checkout: Checkout,
    query: &str,
) -> Pin<Box<impl Future<Output = bool> + '_>> {
    // Boxed: it runs a query, and its future would otherwise enlarge every client task.
    Box::pin(async move {
        if !query.is_empty() && checkout.server().reset(query).await.is_err() {
            return false;
        }
        checkout.release();
        true
    })
}

/// The error for a database the configuration does not know.
pub fn no_such_database(database: &str) -> PgError {
    PgError::fatal("3D000", format!("no such database: {database}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_state_is_freed_only_when_it_holds_nothing() {
        assert!(holds_nothing(&ClientState::default()));
        let mut settings = ClientState::default();
        settings.session.set("search_path", "SET search_path = app");
        settings.session.on_ready(b'I');
        assert!(!holds_nothing(&settings));
        let pinned = ClientState {
            pinned: Some("LISTEN"),
            ..ClientState::default()
        };
        assert!(!holds_nothing(&pinned));
    }

    fn size_of_future<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn a_client_task_holds_no_login_state_and_no_copy_of_its_arguments() {
        // Every idle client's task is this future; login's state is boxed and freed. (Debug
        // builds lay it out larger than release builds.)
        let size = size_of_future(serve);
        assert!(size <= 640, "a client's task future is {size} bytes");
    }

    #[test]
    fn a_session_keeps_what_few_clients_need_out_of_line() {
        // Inline in every logged-in client's task: statement and setting state is boxed. (40
        // of it are the cached configuration and pool settings, which save five loads from
        // shared cells per transaction.)
        let size = size_of::<Session>();
        assert!(size <= 232, "Session is {size} bytes");
    }
}
