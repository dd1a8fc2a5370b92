//! SHOW STATS arithmetic: traffic totals per database, and their averages over the latest
//! `stats_period`, which a background task samples as PgBouncer does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Console;

use super::show::PoolView;

/// Traffic of one database since start, summed over its pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Transactions completed.
    pub xacts: u64,
    /// Requests completed.
    pub queries: u64,
    /// Times a server connection was lent to a client.
    pub assignments: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Microseconds server connections were lent to clients.
    pub xact_us: u64,
    /// Microseconds clients waited for a server connection.
    pub wait_us: u64,
}

impl Totals {
    /// The totals of every database that has a pool.
    pub fn by_database(views: &[PoolView]) -> BTreeMap<String, Totals> {
        let mut by_db: BTreeMap<String, Totals> = BTreeMap::new();
        for v in views {
            let t = by_db.entry(v.database.clone()).or_default();
            t.xacts = t.xacts.saturating_add(v.transactions);
            t.queries = t.queries.saturating_add(v.queries);
            t.assignments = t.assignments.saturating_add(v.checkouts);
            t.received = t.received.saturating_add(v.received);
            t.sent = t.sent.saturating_add(v.sent);
            t.xact_us = t.xact_us.saturating_add(v.lent_us);
            t.wait_us = t.wait_us.saturating_add(v.wait_us);
        }
        by_db
    }

    /// The totals of every database together, for the periodic log line.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Totals>) -> Totals {
        all.into_iter().fold(Totals::default(), |t, d| Totals {
            xacts: t.xacts.saturating_add(d.xacts),
            queries: t.queries.saturating_add(d.queries),
            assignments: t.assignments.saturating_add(d.assignments),
            received: t.received.saturating_add(d.received),
            sent: t.sent.saturating_add(d.sent),
            xact_us: t.xact_us.saturating_add(d.xact_us),
            wait_us: t.wait_us.saturating_add(d.wait_us),
        })
    }
}

/// One database's averages over a sampling period: counts and bytes per second, times in
/// microseconds per transaction or per assignment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    /// Transactions per second.
    pub xacts: u64,
    /// Requests per second.
    pub queries: u64,
    /// Server assignments per second.
    pub assignments: u64,
    /// Bytes from clients per second.
    pub received: u64,
    /// Bytes to clients per second.
    pub sent: u64,
    /// Microseconds a transaction held its server connection, on average.
    pub xact_us: u64,
    /// Microseconds a client waited for an assignment, on average.
    pub wait_us: u64,
}

impl Averages {
    /// The averages between two samples `period` apart. Counters only grow, but a pool
    /// closed in between takes its share away, which counts as no traffic.
    pub fn between(before: &Totals, after: &Totals, period: Duration) -> Averages {
        let micros = period.as_micros().max(1);
        let per_second = |a: u64, b: u64| {
            let delta = u128::from(b.saturating_sub(a));
            u64::try_from(delta * 1_000_000 / micros).unwrap_or(u64::MAX)
        };
        let per = |time: u64, count: u64| time.checked_div(count).unwrap_or(0);
        let xacts = after.xacts.saturating_sub(before.xacts);
        let assignments = after.assignments.saturating_sub(before.assignments);
        Averages {
            xacts: per_second(before.xacts, after.xacts),
            queries: per_second(before.queries, after.queries),
            assignments: per_second(before.assignments, after.assignments),
            received: per_second(before.received, after.received),
            sent: per_second(before.sent, after.sent),
            xact_us: per(after.xact_us.saturating_sub(before.xact_us), xacts),
            wait_us: per(after.wait_us.saturating_sub(before.wait_us), assignments),
        }
    }
}

impl Averages {
    /// PgBouncer's `log_stats` line (`src/stats.c`); the prepared-statement rates and the
    /// query time, which weir does not measure, are 0.
    pub fn log_line(&self) -> String {
        format!(
            "stats: {} xacts/s, {} queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s, \
             in {} B/s, out {} B/s, xact {} us, query 0 us, wait {} us",
            self.xacts, self.queries, self.received, self.sent, self.xact_us, self.wait_us
        )
    }
}

/// Samples every pool's totals each `stats_period` (re-read every round, so a reload or
/// SET changes it) and publishes the averages of the latest period for SHOW STATS.
pub async fn sample(pooler: Arc<impl Console>) {
    let mut before = (Instant::now(), BTreeMap::new());
    loop {
        let period = pooler
            .config()
            .pgbouncer
            .stats_period
            .max(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = pooler.drained() => return,
        }
        let views: Vec<PoolView> = pooler.pools().iter().map(|p| PoolView::of(p)).collect();
        let now = (Instant::now(), Totals::by_database(&views));
        let elapsed = now.0.duration_since(before.0);
        let averages = now
            .1
            .iter()
            .map(|(db, after)| {
                let prior = before.1.get(db).copied().unwrap_or_default();
                (db.clone(), Averages::between(&prior, after, elapsed))
            })
            .collect();
        pooler.set_stats_averages(averages);
        if pooler.config().pgbouncer.log_stats {
            let overall = Averages::between(
                &Totals::sum(before.1.values()),
                &Totals::sum(now.1.values()),
                elapsed,
            );
            tracing::info!("{}", overall.log_line());
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_per_event_times() {
        let before = Totals {
            xacts: 100,
            queries: 300,
            assignments: 100,
            received: 1_000,
            sent: 10_000,
            xact_us: 50_000,
            wait_us: 1_000,
        };
        let after = Totals {
            xacts: 700,
            queries: 2_100,
            assignments: 700,
            received: 7_000,
            sent: 70_000,
            xact_us: 350_000,
            wait_us: 7_000,
        };
        let a = Averages::between(&before, &after, Duration::from_secs(60));
        assert_eq!(a.xacts, 10);
        assert_eq!(a.queries, 30);
        assert_eq!(a.assignments, 10);
        assert_eq!(a.received, 100);
        assert_eq!(a.sent, 1_000);
        assert_eq!(a.xact_us, 500);
        assert_eq!(a.wait_us, 10);
    }

    #[test]
    fn no_traffic_and_shrinking_totals_average_to_zero() {
        let t = Totals {
            xacts: 5,
            wait_us: 9,
            ..Totals::default()
        };
        assert_eq!(
            Averages::between(&t, &t, Duration::ZERO),
            Averages::default()
        );
        assert_eq!(
            Averages::between(&t, &Totals::default(), Duration::from_secs(1)),
            Averages::default()
        );
    }

    #[test]
    fn the_log_line_reads_like_pgbouncers() {
        let a = Averages {
            xacts: 1,
            queries: 2,
            assignments: 3,
            received: 4,
            sent: 5,
            xact_us: 6,
            wait_us: 7,
        };
        assert_eq!(
            a.log_line(),
            "stats: 1 xacts/s, 2 queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s, \
             in 4 B/s, out 5 B/s, xact 6 us, query 0 us, wait 7 us"
        );
        let t = Totals {
            xacts: 2,
            ..Totals::default()
        };
        assert_eq!(Totals::sum([&t, &t]).xacts, 4);
    }

    #[test]
    fn totals_sum_the_pools_of_a_database() {
        let view = |db: &str, user: &str, n: u64| PoolView {
            database: db.into(),
            user: user.into(),
            transactions: n,
            queries: 2 * n,
            ..PoolView::default()
        };
        let by_db = Totals::by_database(&[view("a", "x", 1), view("a", "y", 2), view("b", "x", 5)]);
        assert_eq!(by_db["a"].xacts, 3);
        assert_eq!(by_db["a"].queries, 6);
        assert_eq!(by_db["b"].xacts, 5);
    }
}
