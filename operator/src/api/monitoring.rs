//! `spec.monitoring`: the Prometheus Operator objects that scrape the pooler pods.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DurationSpec;

/// How Prometheus finds the pooler pods' metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// A Prometheus Operator PodMonitor (monitoring.coreos.com/v1) for the pods' metrics
    /// port. Rendered only while that CRD is installed; without it the Monitoring
    /// condition says so, and the PodMonitor appears once the CRD is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_monitor: Option<PodMonitorSettings>,
}

/// The PodMonitor of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSettings {
    /// Whether to render the PodMonitor.
    #[serde(default = "enabled")]
    pub enabled: bool,

    /// Extra labels of the PodMonitor, typically those a Prometheus' podMonitorSelector
    /// picks (for example `release: prometheus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::rules::pod_labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,

    /// How often Prometheus scrapes each pod, like `30s`. Default: the Prometheus'
    /// scrape interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSpec>,
}

fn enabled() -> bool {
    true
}
