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
            status(pooler).to_string(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The JSON document of `/status`.
pub fn status(pooler: &dyn PoolerView) -> serde_json::Value {
    let (generation, digest) = pooler.config_generation();
    let pools: Vec<serde_json::Value> = pooler
        .pools()
        .iter()
        .map(|pool| {
            let s = pool.stats();
            let settings = pool.settings();
            let (idle, total) = pool.counts();
            serde_json::json!({
                "database": pool.key().database,
                "user": pool.key().user,
                "mode": settings.mode.to_string(),
                "size": settings.size,
                "reserve_size": settings.reserve_size,
                "min_size": settings.min_size,
                "server_connections": total,
                "idle": idle,
                "active": s.active.load(Ordering::Relaxed),
                "waiting": s.waiting.load(Ordering::Relaxed),
                "clients": s.clients.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_generation": generation,
        "config_digest": digest,
        "draining": pooler.is_draining(),
        "clients": pooler.client_count(),
        "pinned_clients": pooler.pinned_clients(),
        "pools": pools,
        "redis": pooler.redis().map(|r| serde_json::json!({
            "clients": r.client_count(),
            "backends": r.stats(),
        })),
    })
}
