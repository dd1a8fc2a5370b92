//! `status`: each pool's budget arithmetic from `.status.budget` and each pod's usage from
//! the pooler's `/status` document.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Deserialize;
use weir_operator::api::{BudgetStatus, ConnectionPool, ConnectionPoolStatus};

use crate::table::Table;

/// What one pooler pod reports on `/status` (the fields `status` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PodStatus {
    /// The configuration generation the pod runs.
    pub config_generation: u64,
    /// Whether the pod is shutting down.
    #[serde(default)]
    pub draining: bool,
    /// Clients connected.
    #[serde(default)]
    pub clients: u64,
    /// Its pools.
    #[serde(default)]
    pub pools: Vec<PoolUsage>,
}

/// One pool of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PoolUsage {
    /// Database name.
    pub database: String,
    /// User name.
    pub user: String,
    /// Server connections open.
    #[serde(default)]
    pub server_connections: u64,
    /// Clients waiting for a server connection.
    #[serde(default)]
    pub waiting: u64,
}

impl PodStatus {
    /// Parses the `/status` JSON document.
    pub fn parse(text: &str) -> anyhow::Result<PodStatus> {
        serde_json::from_str(text).context("not a pooler /status document")
    }

    /// Server connections over all pools.
    pub fn server_connections(&self) -> u64 {
        self.pools.iter().map(|p| p.server_connections).sum()
    }

    /// Waiting clients over all pools.
    pub fn waiting(&self) -> u64 {
        self.pools.iter().map(|p| p.waiting).sum()
    }
}

/// A pooler pod as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name.
    pub name: String,
    /// Whether its Ready condition is true.
    pub ready: bool,
    /// Its `/status`, or why it could not be read.
    pub status: Result<PodStatus, String>,
}

/// The budget arithmetic in two lines, as the operator derived it.
pub fn budget_lines(b: &BudgetStatus) -> String {
    format!(
        "  database budget: max_connections {} − {} superuser-reserved − {} headroom − {} used by \
         others = {}\n  this pool: {} (other pools claim {}); {} pods at most × {} per pod \
         (max_db_connections) ≤ {}\n",
        b.max_connections,
        b.superuser_reserved,
        b.reserved_headroom,
        b.used_by_others,
        b.database,
        b.pool,
        b.claimed_by_others,
        b.pods_max,
        b.per_pod,
        b.pool
    )
}

fn condition<'a>(status: &'a ConnectionPoolStatus, type_: &str) -> Option<&'a str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// One pool's block: its summary, budget, users and a table of its pods.
pub fn pool_report(pool: &ConnectionPool, pods: &[Pod]) -> String {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let namespace = pool.metadata.namespace.as_deref().unwrap_or_default();
    let status = pool.status.clone().unwrap_or_default();
    let mut out = format!(
        "ConnectionPool {namespace}/{name}: {}/{} pods ready, Ready={}, BudgetFeasible={}, \
         endpoint {}\n",
        status.ready_replicas.unwrap_or(0),
        status.replicas.unwrap_or(0),
        condition(&status, "Ready").unwrap_or("Unknown"),
        condition(&status, "BudgetFeasible").unwrap_or("Unknown"),
        status.endpoint.as_deref().unwrap_or("-"),
    );
    match &status.budget {
        Some(b) => out.push_str(&budget_lines(b)),
        None => out.push_str("  budget: not computed yet (see `kubectl describe cpool`)\n"),
    }
    for u in &status.users {
        let _ = writeln!(
            out,
            "  user {}: pool_size {} + reserve_pool_size {} per pod (min_pool_size {})",
            u.user, u.pool_size, u.reserve_pool_size, u.min_pool_size
        );
    }
    let per_pod = status.budget.as_ref().map(|b| b.per_pod);
    let mut table = Table::new(&[
        "pod",
        "ready",
        "generation",
        "clients",
        "waiting",
        "server-conns",
        "max",
        "note",
    ]);
    let mut used = 0;
    for pod in pods {
        let max = per_pod.map_or("-".to_owned(), |m| m.to_string());
        let ready = pod.ready.to_string();
        match &pod.status {
            Ok(s) => {
                used += s.server_connections();
                table.row(vec![
                    pod.name.clone(),
                    ready,
                    s.config_generation.to_string(),
                    s.clients.to_string(),
                    s.waiting().to_string(),
                    s.server_connections().to_string(),
                    max,
                    if s.draining { "draining" } else { "" }.to_owned(),
                ]);
            }
            Err(e) => table.row(vec![
                pod.name.clone(),
                ready,
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                max,
                format!("/status unreadable: {e}"),
            ]),
        }
    }
    let budget = status
        .budget
        .as_ref()
        .map_or("-".to_owned(), |b| b.pool.to_string());
    let _ = writeln!(
        out,
        "  server connections in use: {used} of the pool budget {budget}"
    );
    if table.is_empty() {
        out.push_str("  no pooler pods\n");
    } else {
        for line in table.render().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use weir_operator::api::UserPoolStatus;

    const POD_STATUS: &str = r#"{"version":"0.1.0","config_generation":3,"config_digest":"ab",
        "draining":false,"clients":4,"pinned_clients":0,"pools":[
        {"database":"orders","user":"app","mode":"transaction","size":16,"reserve_size":0,
         "min_size":0,"server_connections":5,"idle":2,"active":3,"waiting":1,"clients":4},
        {"database":"orders","user":"report","mode":"transaction","size":1,"reserve_size":0,
         "min_size":0,"server_connections":1,"idle":1,"active":0,"waiting":0,"clients":0}]}"#;

    #[test]
    fn pod_status_sums_its_pools() {
        let s = PodStatus::parse(POD_STATUS).expect("parses");
        assert_eq!(
            (
                s.config_generation,
                s.clients,
                s.server_connections(),
                s.waiting()
            ),
            (3, 4, 6, 1)
        );
        assert!(PodStatus::parse("not found\n").is_err());
    }

    #[test]
    fn report_spells_out_the_budget_and_lists_every_pod() {
        let mut pool = ConnectionPool::new("orders", serde_json::from_str(
            r#"{"database":{"host":"db","dbname":"orders","credentialsSecret":{"name":"c"},"maxConnections":60}}"#,
        ).expect("spec"));
        pool.metadata.namespace = Some("shop".into());
        pool.status = Some(ConnectionPoolStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            endpoint: Some("orders.shop.svc:5432".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "Progressing".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            budget: Some(BudgetStatus {
                max_connections: 60,
                superuser_reserved: 3,
                reserved_headroom: 6,
                used_by_others: 0,
                database: 51,
                claimed_by_others: 0,
                pool: 51,
                pods_max: 3,
                per_pod: 17,
            }),
            users: vec![UserPoolStatus {
                user: "app".into(),
                pool_size: 17,
                min_pool_size: 0,
                reserve_pool_size: 0,
            }],
            ..ConnectionPoolStatus::default()
        });
        let pods = [
            Pod {
                name: "orders-a".into(),
                ready: true,
                status: PodStatus::parse(POD_STATUS).map_err(|e| e.to_string()),
            },
            Pod {
                name: "orders-b".into(),
                ready: false,
                status: Err("connection refused".into()),
            },
        ];
        let text = pool_report(&pool, &pods);
        let expected = "\
ConnectionPool shop/orders: 1/2 pods ready, Ready=False, BudgetFeasible=Unknown, endpoint orders.shop.svc:5432
  database budget: max_connections 60 − 3 superuser-reserved − 6 headroom − 0 used by others = 51
  this pool: 51 (other pools claim 0); 3 pods at most × 17 per pod (max_db_connections) ≤ 51
  user app: pool_size 17 + reserve_pool_size 0 per pod (min_pool_size 0)
  server connections in use: 6 of the pool budget 51
  POD        READY   GENERATION   CLIENTS   WAITING   SERVER-CONNS   MAX   NOTE
  orders-a   true    3            4         1         6              17
  orders-b   false   -            -         -         -              17    /status unreadable: connection refused
";
        assert_eq!(text, expected);
    }
}
