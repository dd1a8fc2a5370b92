//! `spec.networkPolicy`: who may reach the pooler pods, and what they may reach.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A NetworkPolicy for the pooler pods. Ingress: the listed clients reach the Service's
/// ports, the operator and the listed metrics scrapers reach the HTTP port (metrics,
/// status, health), and the pool's own pods reach each other's client port (cancel
/// requests forwarded between peers). Egress: the database, DNS (kube-dns in kube-system),
/// the peers, and, when a user logs in with ServiceAccount tokens, the API server.
/// Enforced only where the cluster's network plugin implements NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::rules::network_policy_schema)]
pub struct NetworkPolicySettings {
    /// Who may connect to the pooler (the Service's ports): namespaces, pods or address
    /// ranges, as in a NetworkPolicy rule's `from`. `podSelector: {}` admits every pod of
    /// the pool's namespace.
    #[schemars(length(max = 32))]
    pub clients: Vec<NetworkPolicyPeer>,

    /// Who may scrape the HTTP port (/metrics, /status) besides the operator, typically
    /// the Prometheus pods. Default: nobody else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub metrics: Vec<NetworkPolicyPeer>,

    /// The operator's pods. Default: pods labelled `app.kubernetes.io/name: weir` and
    /// `app.kubernetes.io/component: operator` (the chart's labels) in the operator's
    /// namespace, or in any namespace when the operator does not know its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<NetworkPolicyPeer>,

    /// The database's addresses as a CIDR (like `10.0.12.0/24`), to which egress on
    /// database.port is limited. Default: database.host when it is an IP address; when it
    /// is a name, egress on database.port goes to any address (a NetworkPolicy cannot
    /// name hosts).
    #[serde(
        default,
        rename = "databaseCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 49))]
    pub database_cidr: Option<String>,
}
