//! `maxConnections: auto`: asking the database for its connection limits.
//!
//! The answer changes rarely (a restart with a new `max_connections`), while pools are
//! reconciled often, so answers are cached for a while per server and database instead
//! of logging in on every reconcile. Failures are not cached: the next attempt retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::NoTls;

use super::tls::{MakeRustls, ProbeTls};
use crate::api::SslMode;
use crate::render::ObservedDatabase;

/// Where and as whom to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database to log in to.
    pub dbname: String,
    /// Role to log in as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// How to use TLS: `spec.tls.server`, as the poolers do.
    pub tls: ProbeTls,
}

impl Target {
    fn describe(&self) -> String {
        format!(
            "{}:{} (database {:?}, user {:?})",
            self.host, self.port, self.dbname, self.user
        )
    }
}

/// Why the limits could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer in time.
    #[error("cannot reach the database at {target}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        target: String,
        /// The bound.
        timeout: Duration,
    },
    /// The TLS settings cannot be used.
    #[error("cannot use the TLS settings (spec.tls.server) toward {target}: {source}")]
    Tls {
        /// The server.
        target: String,
        /// What is wrong.
        source: super::tls::TlsSetupError,
    },
    /// Connecting or logging in failed.
    #[error("cannot connect to the database at {target}: {}", chain(.source))]
    Connect {
        /// The server.
        target: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The settings could not be read.
    #[error("cannot read max_connections from the database at {target}: {}", chain(.source))]
    Query {
        /// The server.
        target: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A setting is out of range.
    #[error("the database at {target} reports an unusable {setting}: {value}")]
    Value {
        /// The server.
        target: String,
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: i64,
    },
}

/// An error with its causes, `a: b: c`: the driver's own message alone ("error
/// connecting to server") does not say what went wrong.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// Reads `max_connections`, `superuser_reserved_connections` and `reserved_connections`
/// (PostgreSQL 16 and later; 0 before), all within `timeout`.
pub async fn probe(target: &Target, timeout: Duration) -> Result<ObservedDatabase, ProbeError> {
    match tokio::time::timeout(timeout, probe_unbounded(target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            target: target.describe(),
            timeout,
        }),
    }
}

async fn probe_unbounded(target: &Target) -> Result<ObservedDatabase, ProbeError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .dbname(&target.dbname)
        .user(&target.user)
        .password(&target.password)
        .application_name("weir-operator");
    let tls = target
        .tls
        .client_config()
        .map_err(|source| ProbeError::Tls {
            target: target.describe(),
            source,
        })?;
    let connect_error = |source| ProbeError::Connect {
        target: target.describe(),
        source,
    };
    // The connection ends with the client; its result adds nothing to the query's.
    let (client, driver) = match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, driver)
        }
        Some(tls) => {
            // tokio-postgres has no allow (plain text first): prefer reaches every server
            // allow does, encrypted when it can be.
            config.ssl_mode(match target.tls.mode {
                SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
            let (client, connection) = config
                .connect(MakeRustls::new(tls))
                .await
                .map_err(connect_error)?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, driver)
        }
    };
    let row = client
        .query_one(
            "SELECT current_setting('max_connections')::bigint, \
                    current_setting('superuser_reserved_connections')::bigint, \
                    coalesce(current_setting('reserved_connections', true), '0')::bigint",
            &[],
        )
        .await;
    drop(client);
    driver.abort();
    let row = row.map_err(|source| ProbeError::Query {
        target: target.describe(),
        source,
    })?;
    let setting = |index: usize, name: &'static str| -> Result<u32, ProbeError> {
        let value: i64 = row.try_get(index).map_err(|source| ProbeError::Query {
            target: target.describe(),
            source,
        })?;
        u32::try_from(value).map_err(|_| ProbeError::Value {
            target: target.describe(),
            setting: name,
            value,
        })
    };
    Ok(ObservedDatabase {
        max_connections: setting(0, "max_connections")?,
        superuser_reserved_connections: setting(1, "superuser_reserved_connections")?,
        reserved_connections: setting(2, "reserved_connections")?,
    })
}

/// A server and database: host, port, database name.
type ServerKey = (String, u16, String);

/// A probe's answer and when it came, kept for the callers that waited on that probe.
type Outcome = (Instant, Result<ObservedDatabase, Arc<ProbeError>>);

/// Recent answers by server and database.
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<ServerKey, (Instant, ObservedDatabase)>>,
    /// One probe per server and database at a time: the pools of one server reconciled at
    /// once share it instead of each logging in.
    gates: Mutex<HashMap<ServerKey, Arc<tokio::sync::Mutex<Option<Outcome>>>>>,
}

impl Cache {
    /// A cache whose answers are reused for `ttl`.
    pub fn new(ttl: Duration) -> Cache {
        Cache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn key(target: &Target) -> ServerKey {
        (target.host.clone(), target.port, target.dbname.clone())
    }

    /// A cached answer for `target` younger than the ttl at `now`.
    pub fn get(&self, target: &Target, now: Instant) -> Option<ObservedDatabase> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&Self::key(target))
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, seen)| *seen)
    }

    /// Remembers an answer for `target` obtained at `now`.
    pub fn put(&self, target: &Target, seen: ObservedDatabase, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.ttl);
        entries.insert(Self::key(target), (now, seen));
    }

    fn gate(&self, target: &Target) -> Arc<tokio::sync::Mutex<Option<Outcome>>> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        // A gate nobody holds or waits on has no answer anyone still needs.
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        Arc::clone(gates.entry(Self::key(target)).or_default())
    }

    /// The cached answer, or a fresh one from the database.
    pub async fn observe(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<ObservedDatabase, Arc<ProbeError>> {
        self.observe_with(target, || probe(target, timeout)).await
    }

    /// The cached answer, or one from `ask`: at most one `ask` per server and database runs at
    /// a time, and its answer, a failure included, also answers the callers that waited on it.
    pub async fn observe_with<F, Fut>(
        &self,
        target: &Target,
        ask: F,
    ) -> Result<ObservedDatabase, Arc<ProbeError>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ObservedDatabase, ProbeError>>,
    {
        let asked = Instant::now();
        if let Some(seen) = self.get(target, asked) {
            return Ok(seen);
        }
        let gate = self.gate(target);
        let mut last = gate.lock().await;
        if let Some((_, answer)) = last.as_ref().filter(|(at, _)| *at >= asked) {
            return answer.clone();
        }
        let answer = ask().await.map_err(Arc::new);
        let now = Instant::now();
        if let Ok(seen) = &answer {
            self.put(target, *seen, now);
        }
        *last = Some((now, answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> Target {
        Target {
            host: host.into(),
            port: 5432,
            dbname: "app".into(),
            user: "u".into(),
            password: "p".into(),
            tls: ProbeTls {
                mode: SslMode::Prefer,
                ca: None,
                client_certificate: None,
            },
        }
    }

    const SEEN: ObservedDatabase = ObservedDatabase {
        max_connections: 100,
        superuser_reserved_connections: 3,
        reserved_connections: 0,
    };

    #[test]
    fn answers_expire_after_the_ttl() {
        let cache = Cache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(cache.get(&target("a"), t0), None);
        cache.put(&target("a"), SEEN, t0);
        assert_eq!(
            cache.get(&target("a"), t0 + Duration::from_secs(29)),
            Some(SEEN)
        );
        assert_eq!(cache.get(&target("b"), t0), None);
        assert_eq!(cache.get(&target("a"), t0 + Duration::from_secs(30)), None);
    }

    #[tokio::test]
    async fn pools_of_one_server_asked_at_once_share_one_probe() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let cache = Cache::new(Duration::from_secs(30));
        let probes = AtomicU32::new(0);
        let (release, released) = tokio::sync::watch::channel(false);
        let ask = || {
            probes.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(SEEN)
            }
        };
        let a = target("a");
        let callers = futures::future::join_all((0..10).map(|_| cache.observe_with(&a, ask)));
        let opened = async {
            // Every caller is queued behind the first probe before it answers.
            while Arc::strong_count(&cache.gate(&a)) < 11 {
                tokio::task::yield_now().await;
            }
            release.send_replace(true);
        };
        let (answers, ()) = tokio::join!(callers, opened);
        assert!(answers.iter().all(|a| matches!(a, Ok(s) if *s == SEEN)));
        assert_eq!(probes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_answers_the_waiting_callers_only() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let cache = Cache::new(Duration::from_secs(30));
        let probes = AtomicU32::new(0);
        let failing = || {
            probes.fetch_add(1, Ordering::SeqCst);
            let timeout = ProbeError::Timeout {
                target: "a".to_owned(),
                timeout: Duration::from_secs(5),
            };
            async move {
                tokio::task::yield_now().await;
                Err(timeout)
            }
        };
        let a = target("a");
        let (first, second) = tokio::join!(
            cache.observe_with(&a, failing),
            cache.observe_with(&a, failing)
        );
        assert!(first.is_err() && second.is_err());
        assert_eq!(
            probes.load(Ordering::SeqCst),
            1,
            "the waiter shared the failure"
        );
        let later = cache.observe_with(&a, failing).await;
        assert!(later.is_err());
        assert_eq!(
            probes.load(Ordering::SeqCst),
            2,
            "a later caller asks again"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_with_its_address() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut t = target("127.0.0.1");
        t.port = port;
        let err = probe(&t, Duration::from_secs(5))
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(matches!(err, ProbeError::Connect { .. }), "{text}");
        assert!(
            text.to_lowercase().contains("refused"),
            "the cause is named: {text}"
        );
    }
}
