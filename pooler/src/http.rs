//! The HTTP endpoint (`http_port`): `/metrics` for Prometheus, `/healthz` (the process is
//! alive), `/readyz` (listening with a loaded configuration and not shutting down) and
//! `/status` (JSON for the operator: configuration generation and digest, pools with sizes
//! and usage).
//!
//! Readiness deliberately ignores the database: when it is down every pooler pod is equally
//! unable to help, and taking them all out of the Service would only turn clear errors
//! ("could not connect to server") into connection timeouts and slow the recovery.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::{self, PoolerView};

/// Binds the HTTP endpoint; `None` when `http_port` is 0 (off).
pub async fn bind(pooler: &dyn PoolerView) -> std::io::Result<Option<TcpListener>> {
    let config = pooler.config();
    let s = &config.pgbouncer;
    if s.http_port == 0 {
        return Ok(None);
    }
    let listener = TcpListener::bind((s.http_listen_addr.as_str(), s.http_port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}:{}: {e}",
                    s.http_listen_addr, s.http_port
                ),
            )
        })?;
    Ok(Some(listener))
}

/// Serves HTTP requests until the process ends (it keeps answering while draining, so
/// readiness can report it).
pub async fn serve(listener: TcpListener, pooler: Arc<dyn PoolerView>) {
    loop {
        let (socket, _peer): (_, SocketAddr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let pooler = pooler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let pooler = pooler.clone();
                async move { Ok::<_, Infallible>(route(pooler.as_ref(), &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(pooler: &dyn PoolerView, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if pooler.is_draining() {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            } else if pooler.peers().awaiting_id() {
                // Clients taken now would get cancel keys no peer can route.
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for this process's entry in [peers]\n".into(),
                )
            } else {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(pooler),
        ),
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&status(pooler)).unwrap_or_default(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The JSON document of `/status`: what the operator reads of each pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDocument {
    /// The pooler's version.
    pub version: String,
    /// How many configurations have been loaded (1 at start).
    pub config_generation: u64,
    /// A digest of the configuration in force, secrets and TLS files included.
    pub config_digest: String,
    /// [`crate::config::file_digest`] of the configuration file's text last loaded: equal to
    /// the digest of a ConfigMap's text once this process runs it.
    #[serde(default)]
    pub config_file_digest: String,
    /// The threads running clients and server connections (`worker_threads` as resolved).
    #[serde(default)]
    pub worker_threads: u64,
    /// Their scheduler: `multi-thread` (tokio's work-stealing one) or `current-thread` (one
    /// thread runs everything).
    #[serde(default)]
    pub scheduler: String,
    /// Whether the pooler is shutting down.
    pub draining: bool,
    /// Client connections open.
    pub clients: u64,
    /// Clients pinned to a server connection.
    pub pinned_clients: u64,
    /// One entry per (database, user) pool.
    pub pools: Vec<PoolStatus>,
    /// The Redis side, when a `[redis]` section is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,
}

/// The Redis side in [`StatusDocument`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisStatus {
    /// Redis clients connected.
    pub clients: u64,
    /// One entry per backend.
    pub backends: Vec<crate::redis::BackendStats>,
}

/// One pool in [`StatusDocument`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The database name clients use.
    pub database: String,
    /// The user.
    pub user: String,
    /// session, transaction or statement.
    pub mode: String,
    /// pool_size.
    pub size: u64,
    /// reserve_pool_size.
    pub reserve_size: u64,
    /// min_pool_size.
    pub min_size: u64,
    /// Server connections open (idle and lent out).
    pub server_connections: u64,
    /// Idle server connections.
    pub idle: u64,
    /// Server connections lent to clients.
    pub active: u64,
    /// Clients waiting for a server connection.
    pub waiting: u64,
    /// How long the longest-waiting of them has waited, in milliseconds.
    #[serde(default)]
    pub longest_wait_ms: u64,
    /// Clients logged in to the pool.
    pub clients: u64,
    /// Each host of a host list (or of a pool with `replica_max_lag`): its state and
    /// connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostHealth>,
}

/// One host of a pool in [`PoolStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    /// `host:port`.
    pub host: String,
    /// `up`, `out` (failed; probed with backoff) or `lagging` (replay lag beyond
    /// `replica_max_lag`).
    pub state: String,
    /// Server connections open to it.
    pub server_connections: u64,
    /// Of those, lent to clients.
    pub active: u64,
    /// Replay lag when last measured, in milliseconds (standbys, with `replica_max_lag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

/// The document `/status` serves.
pub fn status(pooler: &dyn PoolerView) -> StatusDocument {
    let (config_generation, config_digest) = pooler.config_generation();
    // What the runtime serving this request runs, not what the configuration asked for.
    let (worker_threads, scheduler) = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => (
            runtime.metrics().num_workers(),
            match runtime.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread",
                _ => "multi-thread",
            },
        ),
        Err(_) => (0, ""),
    };
    let waits = pooler.longest_waits();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let pools = pooler
        .pools()
        .iter()
        .map(|pool| {
            let s = pool.stats();
            let settings = pool.settings();
            let (idle, total) = pool.counts();
            let longest = waits.get(pool.key()).copied().unwrap_or_default();
            let health = pool.host_status();
            let listed = health.len() > 1 || !settings.replica_max_lag.is_zero();
            let hosts = health
                .into_iter()
                .filter(|_| listed)
                .map(|h| HostHealth {
                    host: h.host,
                    state: h.state.to_owned(),
                    server_connections: count(h.server_connections),
                    active: count(h.active),
                    lag_ms: h
                        .lag
                        .map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)),
                })
                .collect();
            PoolStatus {
                database: pool.key().database.clone(),
                user: pool.key().user.clone(),
                mode: settings.mode.to_string(),
                size: count(settings.size),
                reserve_size: count(settings.reserve_size),
                min_size: count(settings.min_size),
                server_connections: count(total),
                idle: count(idle),
                active: count(s.active.load(Ordering::Relaxed)),
                waiting: count(s.waiting.load(Ordering::Relaxed)),
                longest_wait_ms: u64::try_from(longest.as_millis()).unwrap_or(u64::MAX),
                clients: count(s.clients.load(Ordering::Relaxed)),
                hosts,
            }
        })
        .collect();
    StatusDocument {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_generation,
        config_digest,
        config_file_digest: pooler.config_file_digest(),
        worker_threads: count(worker_threads),
        scheduler: scheduler.to_owned(),
        draining: pooler.is_draining(),
        clients: count(pooler.client_count()),
        pinned_clients: count(pooler.pinned_clients()),
        pools,
        redis: pooler.redis().map(|r| RedisStatus {
            clients: count(r.client_count()),
            backends: r.stats(),
        }),
    }
}
