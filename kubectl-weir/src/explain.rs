//! `explain-budget`: every number of a pool's connection budget with the rule and the inputs
//! it comes from, computed by the operator's own sizing code.

use std::fmt::Write as _;

use weir_operator::api::{ConnectionPool, MaxConnections};
use weir_operator::sizing::{Inputs, Share, Sizing, SizingError};

/// Where the database's limits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the database by the operator (`maxConnections: auto`, live status).
    Database,
    /// Given on the command line (`maxConnections: auto`, offline).
    Arguments,
    /// Written in the spec.
    Spec,
}

impl Origin {
    /// The origin for `pool` when `auto` limits came from `auto_origin`.
    pub fn of(pool: &ConnectionPool, auto_origin: Origin) -> Origin {
        match (&pool.spec.database, &pool.spec.redis) {
            (Some(db), _) => match db.max_connections {
                MaxConnections::Auto => auto_origin,
                MaxConnections::Count(_) => Origin::Spec,
            },
            // A Redis pool without maxClients has the server's maxclients read for it.
            (None, Some(redis)) if redis.max_clients.is_none() => auto_origin,
            _ => Origin::Spec,
        }
    }
}

/// Which pool of a ConnectionPool is explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// The pool over `spec.database`.
    Primary,
    /// The read-only pool over `spec.readReplicas`, sized for the tightest standby.
    Standbys,
}

/// The explanation, one number per line: label, value, why.
pub fn explain(
    title: &str,
    inputs: &Inputs,
    outcome: &Result<Sizing, SizingError>,
    users: &[String],
    origin: Origin,
    servers: Servers,
) -> String {
    let mut out = format!("{title}\n\n");
    let sizing = match outcome {
        Ok(sizing) => sizing,
        Err(e) => {
            let _ = writeln!(out, "The budget does not fit: {e}");
            return out;
        }
    };
    let b = &sizing.budget;
    let db = &inputs.database;
    let mut lines: Vec<(String, String, String)> = Vec::new();
    let mut line = |label: &str, value: String, why: String| {
        lines.push((label.to_owned(), value, why));
    };
    let (max_why, reserved_why) = match (servers, origin) {
        (Servers::Standbys, Origin::Database) => (
            "the tightest standby's max_connections, read by the operator (readReplicas.maxConnections: auto)",
            "that standby's superuser_reserved_connections + reserved_connections",
        ),
        (Servers::Standbys, Origin::Arguments) => (
            "--max-connections, standing in for every standby (readReplicas.maxConnections: auto)",
            "--superuser-reserved, standing in for every standby",
        ),
        (Servers::Standbys, Origin::Spec) => (
            "spec.readReplicas.maxConnections, for every standby",
            "spec.readReplicas.superuserReservedConnections",
        ),
        (Servers::Primary, Origin::Database) => (
            "the database's max_connections, read by the operator (maxConnections: auto)",
            "the database's superuser_reserved_connections + reserved_connections",
        ),
        (Servers::Primary, Origin::Arguments) => (
            "--max-connections, standing in for the database (maxConnections: auto)",
            "--superuser-reserved, standing in for the database",
        ),
        (Servers::Primary, Origin::Spec) => (
            "spec.database.maxConnections",
            "spec.database.superuserReservedConnections",
        ),
    };
    line(
        "max_connections",
        b.max_connections.to_string(),
        max_why.to_owned(),
    );
    line(
        "- superuser reserved",
        b.superuser_reserved.to_string(),
        format!("{reserved_why}: only superusers may use these slots"),
    );
    line(
        "- headroom",
        b.reserved_headroom.to_string(),
        format!(
            "ceil({} × reservedPercent {} / 100), kept free for maintenance and replication",
            db.max_connections, db.reserved_percent
        ),
    );
    let (spec_field, replicas_field) = match servers {
        Servers::Primary => ("spec.database", "replicas"),
        Servers::Standbys => ("spec.readReplicas", "readReplicas.replicas (0 counts as 1)"),
    };
    line(
        "- used by others",
        b.used_by_others.to_string(),
        format!("{spec_field}.usedByOthers: applications that bypass every pool"),
    );
    line(
        "= database budget",
        b.database.to_string(),
        format!(
            "{} − {} − {} − {}: {}",
            b.max_connections,
            b.superuser_reserved,
            b.reserved_headroom,
            b.used_by_others,
            match servers {
                Servers::Primary => "what all pools on this database share",
                Servers::Standbys => "what the tightest standby leaves for the read-only pool",
            }
        ),
    );
    line(
        "claimed by others",
        b.others_claimed.to_string(),
        match servers {
            Servers::Primary => {
                "the budgets of the other ConnectionPools on the same database host and port"
            }
            Servers::Standbys => "none counted on standbys: readReplicas.usedByOthers covers them",
        }
        .to_owned(),
    );
    let share_why = match (servers, inputs.share) {
        (Servers::Standbys, _) => format!("all of the standby budget {}", b.database),
        (_, Share::Percent(p)) => {
            format!("floor({} × maxConnectionsPercent {p} / 100)", b.database)
        }
        (_, Share::Absolute(n)) => format!("min(maxServerConnections {n}, {})", b.database),
    };
    line(
        "pool budget",
        b.pool.to_string(),
        format!(
            "{share_why}; with the others' {}: {} ≤ {}",
            b.others_claimed,
            u64::from(b.pool) + u64::from(b.others_claimed),
            b.database
        ),
    );
    let pods_why = match inputs.max_replicas {
        Some(max) => format!(
            "autoscaling.maxReplicas {max} + rollout.maxSurge {} (replicas {} now)",
            inputs.max_surge, inputs.replicas
        ),
        None => format!(
            "{replicas_field} {} + rollout.maxSurge {}: the pods a rolling update adds count too",
            inputs.replicas, inputs.max_surge
        ),
    };
    line("pods at most", b.pods_max.to_string(), pods_why);
    line(
        "per pod",
        b.per_pod.to_string(),
        format!(
            "floor({} / {}): each pod's max_db_connections",
            b.pool, b.pods_max
        ),
    );
    let total_weight: u64 = inputs.users.iter().map(|u| u64::from(u.weight)).sum();
    for (i, (pool, demand)) in sizing.users.iter().zip(&inputs.users).enumerate() {
        let name = users
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{}", i + 1));
        line(
            &format!("user {name}"),
            pool.share().to_string(),
            format!(
                "weight {} of {total_weight} of the {} per pod: pool_size {} + reserve_pool_size {} \
                 (min_pool_size {}, at least {})",
                demand.weight,
                b.per_pod,
                pool.pool_size,
                pool.reserve_pool_size,
                pool.min_pool_size,
                demand.minimum_share()
            ),
        );
    }
    line(
        "committed",
        sizing.committed().to_string(),
        format!(
            "{} pods × {} per pod in users' pools ≤ pool budget {}",
            b.pods_max,
            sizing
                .users
                .iter()
                .map(|u| u64::from(u.share()))
                .sum::<u64>(),
            b.pool
        ),
    );
    let label_width = lines.iter().map(|l| l.0.chars().count()).max().unwrap_or(0);
    let value_width = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
    for (label, value, why) in lines {
        let pad = label_width - label.chars().count();
        let _ = writeln!(
            out,
            "{label}{}  {value:>value_width$}  {why}",
            " ".repeat(pad)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_operator::sizing::{self, DatabaseLimits, UserDemand};

    fn inputs() -> Inputs {
        Inputs {
            database: DatabaseLimits {
                max_connections: 100,
                superuser_reserved: 3,
                reserved_percent: 10,
                used_by_others: 7,
            },
            share: Share::Percent(50),
            others_claimed: 20,
            replicas: 2,
            max_surge: 1,
            max_replicas: None,
            users: vec![
                UserDemand {
                    weight: 3,
                    min_pool_size: 2,
                    reserve_pool_size: 1,
                },
                UserDemand {
                    weight: 1,
                    min_pool_size: 0,
                    reserve_pool_size: 0,
                },
            ],
        }
    }

    #[test]
    fn every_number_is_spelled_out() {
        let inputs = inputs();
        let outcome = sizing::compute(&inputs);
        let users = ["app".to_owned(), "report".to_owned()];
        let text = explain(
            "ConnectionPool ns/p",
            &inputs,
            &outcome,
            &users,
            Origin::Spec,
            Servers::Primary,
        );
        // 100 − 3 − ceil(10) − 7 = 80; floor(80 × 50%) = 40; 3 pods; 13 per pod, split 3:1.
        let expected = "ConnectionPool ns/p\n\n\
max_connections       100  spec.database.maxConnections\n\
- superuser reserved    3  spec.database.superuserReservedConnections: only superusers may use these slots\n\
- headroom             10  ceil(100 × reservedPercent 10 / 100), kept free for maintenance and replication\n\
- used by others        7  spec.database.usedByOthers: applications that bypass every pool\n\
= database budget      80  100 − 3 − 10 − 7: what all pools on this database share\n\
claimed by others      20  the budgets of the other ConnectionPools on the same database host and port\n\
pool budget            40  floor(80 × maxConnectionsPercent 50 / 100); with the others' 20: 60 ≤ 80\n\
pods at most            3  replicas 2 + rollout.maxSurge 1: the pods a rolling update adds count too\n\
per pod                13  floor(40 / 3): each pod's max_db_connections\n\
user app               10  weight 3 of 4 of the 13 per pod: pool_size 9 + reserve_pool_size 1 (min_pool_size 2, at least 3)\n\
user report             3  weight 1 of 4 of the 13 per pod: pool_size 3 + reserve_pool_size 0 (min_pool_size 0, at least 1)\n\
committed              39  3 pods × 13 per pod in users' pools ≤ pool budget 40\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn an_infeasible_budget_names_its_fixes() {
        let mut inputs = inputs();
        inputs.replicas = 30;
        let outcome = sizing::compute(&inputs);
        let text = explain(
            "t",
            &inputs,
            &outcome,
            &[],
            Origin::Database,
            Servers::Primary,
        );
        assert!(
            text.contains("The budget does not fit: connection budget does not fit: 31 pods")
                && text.contains("reduce replicas to ≤ "),
            "{text}"
        );
    }

    #[test]
    fn autoscaling_divides_by_the_maximum() {
        let mut inputs = inputs();
        inputs.max_replicas = Some(4);
        let outcome = sizing::compute(&inputs);
        let text = explain(
            "t",
            &inputs,
            &outcome,
            &[],
            Origin::Arguments,
            Servers::Primary,
        );
        assert!(
            text.contains(
                "pods at most            5  autoscaling.maxReplicas 4 + rollout.maxSurge 1 (replicas 2 now)"
            ) && text.contains("--max-connections, standing in")
                && text.contains("user #1"),
            "{text}"
        );
    }

    #[test]
    fn a_read_only_pool_names_the_standbys_fields() {
        let mut inputs = inputs();
        inputs.share = Share::Percent(100);
        inputs.others_claimed = 0;
        let outcome = sizing::compute(&inputs);
        let text = explain("t", &inputs, &outcome, &[], Origin::Spec, Servers::Standbys);
        assert!(
            text.contains(
                "max_connections       100  spec.readReplicas.maxConnections, for every standby"
            ) && text.contains("spec.readReplicas.usedByOthers")
                && text.contains("readReplicas.replicas (0 counts as 1) 2 + rollout.maxSurge 1"),
            "{text}"
        );
    }
}
