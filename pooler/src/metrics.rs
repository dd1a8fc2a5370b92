//! Prometheus metrics: counters and gauges read from the pools at scrape time, and the
//! checkout wait-time histogram observed as clients are served.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::Config;
use crate::peers::Peers;
use crate::pool::Pool;
use crate::pool::PoolKey;
use crate::tls::Tls;
use crate::token_review;

/// Metrics that live for the whole process (observed as things happen).
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

static WAIT_SECONDS: LazyLock<Option<HistogramVec>> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "weir_pool_wait_seconds",
        "Time clients waited for a server connection.",
    )
    .buckets(vec![
        0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
    ]);
    let h = HistogramVec::new(opts, &["database", "user"]).ok()?;
    REGISTRY.register(Box::new(h.clone())).ok()?;
    Some(h)
});

static HOLD_SECONDS: LazyLock<Option<HistogramVec>> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "weir_failover_hold_seconds",
        "Time clients were held while the pool looked for a new primary (failover_hold).",
    )
    .buckets(vec![
        0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]);
    let h = HistogramVec::new(opts, &["database", "user"]).ok()?;
    REGISTRY.register(Box::new(h.clone())).ok()?;
    Some(h)
});

/// The failover hold-time histogram of `pool`, looked up once.
pub fn hold_histogram(pool: &PoolKey) -> Option<Histogram> {
    HOLD_SECONDS
        .as_ref()
        .map(|h| h.with_label_values(&[&pool.database, &pool.user]))
}

/// The wait-time histogram of `pool`, looked up once so that each checkout only observes.
pub fn wait_histogram(pool: &PoolKey) -> Option<Histogram> {
    WAIT_SECONDS
        .as_ref()
        .map(|h| h.with_label_values(&[&pool.database, &pool.user]))
}

fn gauge(r: &Registry, name: &str, help: &str, value: i64) -> prometheus::Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(value);
    r.register(Box::new(g))
}

fn gauges(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counters(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// What `/metrics` and `/status` read of a running pooler: implemented by the pooler's
/// composition root, so these surfaces depend on this view and not on the root.
pub trait PoolerView: Send + Sync {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;
    /// How many configurations have been loaded, and the digest of the one in force.
    fn config_generation(&self) -> (u64, String);
    /// The digest of the configuration file's text last loaded ([`crate::config::file_digest`]).
    fn config_file_digest(&self) -> String;
    /// Client connections open right now.
    fn client_count(&self) -> usize;
    /// For each pool, how long its longest-waiting client has waited for a server
    /// connection; pools nobody waits for are absent.
    fn longest_waits(&self) -> HashMap<PoolKey, Duration>;
    /// Clients pinned to a server connection right now.
    fn pinned_clients(&self) -> usize;
    /// Whether the pooler is shutting down.
    fn is_draining(&self) -> bool;
    /// The TLS material in force.
    fn tls(&self) -> Arc<Tls>;
    /// Every pool that exists right now.
    fn pools(&self) -> Vec<Arc<Pool>>;
    /// This process's peer id and the cancels forwarded to its peers.
    fn peers(&self) -> &Peers;
    /// The Redis data path, if it is on.
    fn redis(&self) -> Option<Arc<crate::redis::Proxy>>;
}

/// The Redis data path: connections by kind per backend, and what its pool counted.
fn redis_metrics(r: &Registry, redis: &crate::redis::Proxy) -> prometheus::Result<()> {
    gauge(
        r,
        "weir_redis_clients",
        "Clients connected to the Redis listener.",
        redis.client_count() as i64,
    )?;
    let conns = gauges(
        r,
        "weir_redis_server_connections",
        "Connections to Redis by kind: shared, exclusive_in_use, exclusive_idle, pubsub.",
        &["backend", "kind"],
    )?;
    let counted = [
        (
            "weir_redis_pool_hits_total",
            "Exclusive connections taken from the pool.",
        ),
        (
            "weir_redis_pool_misses_total",
            "Exclusive connections opened because none was idle.",
        ),
        (
            "weir_redis_short_lived_closes_total",
            "Returned exclusive connections closed above private_conn_pool_max_idle_per_db.",
        ),
        (
            "weir_redis_idle_closes_total",
            "Idle exclusive connections closed after private_conn_idle_time_sec.",
        ),
        (
            "weir_redis_select_switches_total",
            "Idle connections moved to another database with SELECT.",
        ),
        (
            "weir_redis_waits_total",
            "Clients that waited because max_server_connections were open.",
        ),
    ];
    let counters: Vec<IntCounterVec> = counted
        .iter()
        .map(|(name, help)| counters(r, name, help, &["backend"]))
        .collect::<prometheus::Result<_>>()?;
    for b in redis.stats() {
        for (kind, n) in [
            ("shared", b.shared),
            ("exclusive_in_use", b.exclusive_in_use),
            ("exclusive_idle", b.exclusive_idle),
            ("pubsub", b.pubsub),
        ] {
            conns.with_label_values(&[&b.backend, kind]).set(n.into());
        }
        let values = [
            b.pool_hits,
            b.pool_misses,
            b.short_lived_closes,
            b.idle_closes,
            b.select_switches,
            b.waits,
        ];
        for (c, v) in counters.iter().zip(values) {
            c.with_label_values(&[&b.backend]).inc_by(v);
        }
    }
    Ok(())
}

/// Peering: this process's peer id and what became of cancels for other peers' keys.
fn peer_metrics(r: &Registry, peers: &Peers) -> prometheus::Result<()> {
    gauge(
        r,
        "weir_peer_id",
        "This process's peer id (0: peering off or id not known yet).",
        i64::from(peers.own_id()),
    )?;
    let forwarded = counters(
        r,
        "weir_peer_cancels_forwarded_total",
        "Cancel requests forwarded to the peer that issued their key.",
        &["peer"],
    )?;
    let failed = counters(
        r,
        "weir_peer_cancels_failed_total",
        "Cancel requests that could not be forwarded to their peer in time.",
        &["peer"],
    )?;
    for (peer, totals) in peers.totals() {
        let peer = peer.to_string();
        forwarded
            .with_label_values(&[&peer])
            .inc_by(totals.forwarded);
        failed.with_label_values(&[&peer]).inc_by(totals.failed);
    }
    let dropped = counters(
        r,
        "weir_peer_cancels_dropped_total",
        "Cancel requests for other peers' keys dropped: unknown peer, or already forwarded once.",
        &["reason"],
    )?;
    let (unknown, again) = peers.dropped();
    dropped.with_label_values(&["unknown_peer"]).inc_by(unknown);
    dropped
        .with_label_values(&["already_forwarded"])
        .inc_by(again);
    Ok(())
}

fn snapshot(pooler: &dyn PoolerView) -> prometheus::Result<Registry> {
    let r = Registry::new();
    let config = pooler.config();
    let (generation, digest) = pooler.config_generation();
    gauge(
        &r,
        "weir_client_connections",
        "Client connections open right now.",
        pooler.client_count() as i64,
    )?;
    gauge(
        &r,
        "weir_max_client_connections",
        "max_client_conn.",
        i64::from(config.pgbouncer.max_client_conn),
    )?;
    gauge(
        &r,
        "weir_pinned_clients",
        "Clients pinned to a server connection in transaction mode.",
        pooler.pinned_clients() as i64,
    )?;
    gauge(
        &r,
        "weir_config_generation",
        "How many configurations have been loaded.",
        i64::try_from(generation).unwrap_or(i64::MAX),
    )?;
    // The digest as a label: generations count reloads per process, so only digests compare
    // across pods.
    gauges(
        &r,
        "weir_config_info",
        "1, labelled with the digest of the configuration in force.",
        &["digest"],
    )?
    .with_label_values(&[&digest])
    .set(1);
    gauge(
        &r,
        "weir_draining",
        "1 while shutting down.",
        i64::from(pooler.is_draining()),
    )?;
    let logins = counters(
        &r,
        "weir_token_logins_total",
        "ServiceAccount-token logins by result (accepted, refused, unavailable).",
        &["result"],
    )?;
    let verdicts = counters(
        &r,
        "weir_token_verdicts_total",
        "ServiceAccount-token verdicts by source: a TokenReview (api) or the cache.",
        &["source"],
    )?;
    let t = &token_review::STATS;
    for (counter, label, n) in [
        (&logins, "accepted", &t.accepted),
        (&logins, "refused", &t.refused),
        (&logins, "unavailable", &t.unavailable),
        (&verdicts, "api", &t.reviews),
        (&verdicts, "cache", &t.cache_hits),
    ] {
        counter
            .with_label_values(&[label])
            .inc_by(n.load(Ordering::Relaxed));
    }
    let tls = pooler.tls();
    let expiring = [
        ("client_tls_cert_file", tls.client.not_after),
        ("server_tls_cert_file", tls.server.not_after),
    ];
    if expiring.iter().any(|(_, t)| t.is_some()) {
        let expiry = gauges(
            &r,
            "weir_tls_certificate_expiry_seconds",
            "Seconds until the certificate in force expires (negative once expired).",
            &["certificate"],
        )?;
        let now = jiff::Timestamp::now().as_second();
        for (setting, not_after) in expiring {
            if let Some(t) = not_after {
                expiry.with_label_values(&[setting]).set(t - now);
            }
        }
    }

    peer_metrics(&r, pooler.peers())?;
    if let Some(redis) = pooler.redis() {
        redis_metrics(&r, &redis)?;
    }

    let l = &["database", "user"];
    let clients = gauges(&r, "weir_pool_clients", "Clients logged in to the pool.", l)?;
    let waiting = gauges(
        &r,
        "weir_pool_waiting_clients",
        "Clients waiting for a server connection.",
        l,
    )?;
    let servers = gauges(
        &r,
        "weir_server_connections",
        "Server connections by state.",
        &["database", "user", "state"],
    )?;
    let size = gauges(&r, "weir_pool_size", "pool_size in force.", l)?;
    let reserve = gauges(
        &r,
        "weir_pool_reserve_size",
        "reserve_pool_size in force.",
        l,
    )?;
    let min = gauges(&r, "weir_pool_min_size", "min_pool_size in force.", l)?;
    let credential = gauges(
        &r,
        "weir_credential_generation",
        "auth_file credential generation the pool's server logins use (+1 per password change).",
        l,
    )?;
    let queries = counters(
        &r,
        "weir_queries_total",
        "Requests completed (ReadyForQuery).",
        l,
    )?;
    let xacts = counters(&r, "weir_transactions_total", "Transactions completed.", l)?;
    let received = counters(
        &r,
        "weir_received_bytes_total",
        "Bytes from clients to servers.",
        l,
    )?;
    let sent = counters(&r, "weir_sent_bytes_total", "Bytes to clients.", l)?;
    let assigned = counters(
        &r,
        "weir_server_assignments_total",
        "Server connections lent to clients.",
        l,
    )?;
    let opened = counters(
        &r,
        "weir_server_logins_total",
        "Server connections opened.",
        l,
    )?;
    let failed_logins = counters(
        &r,
        "weir_server_login_failures_total",
        "Server connections that could not be opened (login refused, server unreachable).",
        l,
    )?;
    let busy = counters(
        &r,
        "weir_server_busy_microseconds_total",
        "Time server connections spent lent to clients.",
        l,
    )?;
    let errors = counters(
        &r,
        "weir_errors_total",
        "ErrorResponses from servers by SQLSTATE class.",
        &["database", "user", "class"],
    )?;
    let failovers = counters(
        &r,
        "weir_failovers_total",
        "Failovers started: the primary went away or turned read-only (failover_hold).",
        l,
    )?;
    let holding = gauges(
        &r,
        "weir_failover_holding",
        "1 while the pool holds clients and looks for a new primary.",
        l,
    )?;
    let current = gauges(
        &r,
        "weir_pool_server_host",
        "1 for the host the pool connects to now (the primary when target_session_attrs asks for one).",
        &["database", "user", "host"],
    )?;
    let host_state = gauges(
        &r,
        "weir_pool_host_state",
        "1 for each host's state: up, out (failed; probed with backoff) or lagging (replica_max_lag).",
        &["database", "user", "host", "state"],
    )?;
    let host_servers = gauges(
        &r,
        "weir_pool_host_server_connections",
        "Server connections of the pool open to each host.",
        &["database", "user", "host"],
    )?;
    let host_lag = prometheus::GaugeVec::new(
        Opts::new(
            "weir_pool_host_replay_lag_seconds",
            "Replay lag of each standby when last measured (with replica_max_lag).",
        ),
        &["database", "user", "host"],
    )?;
    r.register(Box::new(host_lag.clone()))?;
    for pool in pooler.pools() {
        let key = pool.key();
        let v = [key.database.as_str(), key.user.as_str()];
        let s = pool.stats();
        let settings = pool.settings();
        let (idle, total) = pool.counts();
        let active = s.active.load(Ordering::Relaxed);
        clients
            .with_label_values(&v)
            .set(s.clients.load(Ordering::Relaxed) as i64);
        waiting
            .with_label_values(&v)
            .set(s.waiting.load(Ordering::Relaxed) as i64);
        servers
            .with_label_values(&[v[0], v[1], "active"])
            .set(active as i64);
        servers
            .with_label_values(&[v[0], v[1], "idle"])
            .set(idle as i64);
        servers
            .with_label_values(&[v[0], v[1], "login"])
            .set(total.saturating_sub(idle + active) as i64);
        size.with_label_values(&v).set(settings.size as i64);
        reserve
            .with_label_values(&v)
            .set(settings.reserve_size as i64);
        min.with_label_values(&v).set(settings.min_size as i64);
        credential
            .with_label_values(&v)
            .set(pool.credential_generation() as i64);
        queries
            .with_label_values(&v)
            .inc_by(s.queries.load(Ordering::Relaxed));
        xacts
            .with_label_values(&v)
            .inc_by(s.transactions.load(Ordering::Relaxed));
        received
            .with_label_values(&v)
            .inc_by(s.bytes_received.load(Ordering::Relaxed));
        sent.with_label_values(&v)
            .inc_by(s.bytes_sent.load(Ordering::Relaxed));
        assigned
            .with_label_values(&v)
            .inc_by(s.checkouts.load(Ordering::Relaxed));
        opened
            .with_label_values(&v)
            .inc_by(s.opened.load(Ordering::Relaxed));
        failed_logins
            .with_label_values(&v)
            .inc_by(s.login_failures.load(Ordering::Relaxed));
        busy.with_label_values(&v)
            .inc_by(s.server_us.load(Ordering::Relaxed));
        let failover = pool.failover_status();
        failovers.with_label_values(&v).inc_by(failover.failovers);
        holding
            .with_label_values(&v)
            .set(i64::from(failover.holding));
        if let Some(host) = &failover.current {
            current.with_label_values(&[v[0], v[1], host]).set(1);
        }
        for h in pool.host_status() {
            let labels = [v[0], v[1], h.host.as_str()];
            host_state
                .with_label_values(&[v[0], v[1], &h.host, h.state])
                .set(1);
            host_servers
                .with_label_values(&labels)
                .set(h.server_connections as i64);
            if let Some(lag) = h.lag {
                host_lag.with_label_values(&labels).set(lag.as_secs_f64());
            }
        }
        for (class, n) in s.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let class = String::from_utf8_lossy(class);
            errors.with_label_values(&[v[0], v[1], &class]).inc_by(*n);
        }
    }
    Ok(r)
}

/// The Prometheus text exposition of every metric.
pub fn render(pooler: &dyn PoolerView) -> String {
    let mut families = REGISTRY.gather();
    match snapshot(pooler) {
        Ok(r) => families.extend(r.gather()),
        Err(e) => tracing::error!(error = %e, "could not collect metrics"),
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "could not encode metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}
