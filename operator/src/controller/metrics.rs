//! The operator's own Prometheus metrics and the small HTTP server that exposes them,
//! with `/healthz` for the liveness probe.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

use crate::sizing::Budget;

/// Labels of the per-pool budget gauges; not `namespace`, which a scrape sets to the
/// operator's own namespace.
const POOL_LABELS: &[&str] = &["pool_namespace", "pool"];

/// Upper bounds of the reconcile-duration buckets, in seconds: up to a minute, so that a
/// p99 above the 1 s target is still read as a number rather than "above the top bucket",
/// and close together around that target, where a quantile is interpolated within its
/// bucket (between 1 and 2.5 s, a p99 of about 1.0 s was read as 1.7 s).
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Counters, durations, the leadership gauge and each pool's budget arithmetic.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    leader: IntGauge,
    database_budget: IntGaugeVec,
    pool_budget: IntGaugeVec,
    others_claimed: IntGaugeVec,
    /// The (namespace, name) of every pool with budget gauges, to drop deleted ones.
    budgeted: Arc<Mutex<BTreeSet<(String, String)>>>,
}

/// A metric could not be registered (a programming error, reported rather than panicking).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "weir_operator_reconciles_total",
                "ConnectionPool reconciliations, by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "weir_operator_reconcile_errors_total",
                "Failed ConnectionPool reconciliations, by cause",
            ),
            &["cause"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weir_operator_reconcile_duration_seconds",
                "Time spent reconciling one ConnectionPool",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["result"],
        )?;
        let leader = IntGauge::new(
            "weir_operator_leader",
            "1 while this replica holds the leader lease and runs the controller",
        )?;
        let database_budget = IntGaugeVec::new(
            Opts::new(
                "weir_operator_database_budget_connections",
                "Server connections the pool's database leaves for all pools (budget_db)",
            ),
            POOL_LABELS,
        )?;
        let pool_budget = IntGaugeVec::new(
            Opts::new(
                "weir_operator_pool_budget_connections",
                "Server connections this pool claims of its database's budget (B)",
            ),
            POOL_LABELS,
        )?;
        let others_claimed = IntGaugeVec::new(
            Opts::new(
                "weir_operator_other_pools_claimed_connections",
                "Server connections the other pools on the same database claim",
            ),
            POOL_LABELS,
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(database_budget.clone()))?;
        registry.register(Box::new(pool_budget.clone()))?;
        registry.register(Box::new(others_claimed.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            database_budget,
            pool_budget,
            others_claimed,
            budgeted: Arc::default(),
        })
    }

    /// Records the budget arithmetic of pool `name` in `namespace`, feasible or not.
    pub fn set_budget(&self, namespace: &str, name: &str, budget: &Budget) {
        let labels = [namespace, name];
        self.database_budget
            .with_label_values(&labels)
            .set(i64::from(budget.database));
        self.pool_budget
            .with_label_values(&labels)
            .set(i64::from(budget.pool));
        self.others_claimed
            .with_label_values(&labels)
            .set(i64::from(budget.others_claimed));
        self.budgeted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_owned(), name.to_owned()));
    }

    /// Drops the budget gauges of pools not in `alive` (namespace, name): deleted pools.
    pub fn retain_budgets(&self, alive: &BTreeSet<(String, String)>) {
        let mut budgeted = self.budgeted.lock().unwrap_or_else(PoisonError::into_inner);
        for (namespace, name) in budgeted.difference(alive) {
            let labels = [namespace.as_str(), name.as_str()];
            for gauge in [
                &self.database_budget,
                &self.pool_budget,
                &self.others_claimed,
            ] {
                // Absent label values are the goal here, so "not found" is fine.
                let _ = gauge.remove_label_values(&labels);
            }
        }
        budgeted.retain(|key| alive.contains(key));
    }

    /// Counts one reconciliation that took `elapsed`; `cause` is `None` on success.
    pub fn reconciled(&self, elapsed: Duration, cause: Option<&str>) {
        let result = if cause.is_some() { "error" } else { "success" };
        self.reconciles.with_label_values(&[result]).inc();
        self.duration
            .with_label_values(&[result])
            .observe(elapsed.as_secs_f64());
        if let Some(cause) = cause {
            self.errors.with_label_values(&[cause]).inc();
        }
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into memory only fails on metric families the registry refused already.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Binds `address` now (so that a taken port fails the start) and serves `/metrics` and
/// `/healthz` on it until the returned task is dropped or aborted.
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &request)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended");
                }
            });
        }
    });
    Ok((bound, task))
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::GET, "/healthz" | "/readyz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reconciliations_are_counted_by_result_and_cause() {
        let m = Metrics::new().expect("metrics");
        m.reconciled(Duration::from_millis(30), None);
        m.reconciled(Duration::from_millis(30), Some("kube"));
        m.set_leader(true);
        let text = m.render();
        assert!(text.contains("weir_operator_reconciles_total{result=\"success\"} 1"));
        assert!(text.contains("weir_operator_reconciles_total{result=\"error\"} 1"));
        assert!(text.contains("weir_operator_reconcile_errors_total{cause=\"kube\"} 1"));
        assert!(text.contains("weir_operator_reconcile_duration_seconds_bucket"));
        assert!(text.contains("weir_operator_leader 1"));
    }

    #[test]
    fn slow_reconciliations_land_in_a_finite_bucket() {
        let m = Metrics::new().expect("metrics");
        m.reconciled(Duration::from_secs(45), None);
        let text = m.render();
        let bucket = |le: &str| {
            format!(
                "weir_operator_reconcile_duration_seconds_bucket{{result=\"success\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 0", bucket("30"))), "{text}");
        assert!(text.contains(&format!("{} 1", bucket("60"))), "{text}");
    }

    #[test]
    fn budgets_are_exported_per_pool_and_dropped_with_the_pool() {
        let m = Metrics::new().expect("metrics");
        let budget = |pool, others_claimed| Budget {
            max_connections: 100,
            superuser_reserved: 3,
            reserved_headroom: 15,
            used_by_others: 2,
            database: 80,
            others_claimed,
            pool,
            pods_max: 3,
            per_pod: pool / 3,
        };
        m.set_budget("shop", "orders", &budget(60, 30));
        m.set_budget("shop", "billing", &budget(30, 60));
        let text = m.render();
        for line in [
            "weir_operator_database_budget_connections{pool=\"orders\",pool_namespace=\"shop\"} 80",
            "weir_operator_pool_budget_connections{pool=\"orders\",pool_namespace=\"shop\"} 60",
            "weir_operator_other_pools_claimed_connections{pool=\"orders\",pool_namespace=\"shop\"} 30",
            "weir_operator_pool_budget_connections{pool=\"billing\",pool_namespace=\"shop\"} 30",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let alive = BTreeSet::from([("shop".to_owned(), "billing".to_owned())]);
        m.retain_budgets(&alive);
        let text = m.render();
        assert!(!text.contains("pool=\"orders\""), "{text}");
        assert!(text.contains("pool=\"billing\""), "{text}");
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let m = Metrics::new().expect("metrics");
        m.reconciled(Duration::from_millis(1), None);
        let (address, task) = serve("127.0.0.1:0".parse().expect("addr"), m)
            .await
            .expect("bound");
        let metrics = get(address, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("weir_operator_reconciles_total"),
            "{metrics}"
        );
        assert!(get(address, "/healthz").await.ends_with("ok\n"));
        assert!(get(address, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
