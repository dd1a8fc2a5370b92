//! The Prometheus Operator PodMonitor that scrapes a pool's pods, when the spec asks for one.
//!
//! The Prometheus Operator's CRDs may not be installed, so the type is declared here with
//! only the fields Weir sets; the controller applies it only while the API server serves
//! it (see `controller::monitoring`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::meta::{selector_labels, Context};
use super::workload::HTTP_PORT_NAME;
use crate::api::ConnectionPoolSpec;

/// The Prometheus Operator's API group and version.
pub const API_GROUP_VERSION: &str = "monitoring.coreos.com/v1";
/// The resource (plural) the API server serves PodMonitors as.
pub const POD_MONITORS: &str = "podmonitors";
/// The path of the pooler's Prometheus metrics on its HTTP port.
const METRICS_PATH: &str = "/metrics";

/// The part of a PodMonitor's spec Weir renders.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    namespaced,
    derive = "PartialEq",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// The pods to scrape.
    pub selector: LabelSelector,
    /// Where on each pod.
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

/// One scraped endpoint of each pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricsEndpoint {
    /// The container port's name.
    pub port: String,
    /// The HTTP path.
    pub path: String,
    /// The scrape interval; the Prometheus' own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// The PodMonitor for the pool's pods' HTTP port, when `spec.monitoring.podMonitor` asks.
pub(crate) fn pod_monitor(ctx: &Context<'_>, spec: &ConnectionPoolSpec) -> Option<PodMonitor> {
    let settings = spec.pod_monitor()?;
    let mut metadata = ctx.meta(ctx.name.to_owned());
    // The operator's labels win over the user's (admission refuses clashes anyway).
    let mut labels = settings.labels.clone().unwrap_or_default();
    labels.extend(metadata.labels.take().unwrap_or_default());
    metadata.labels = Some(labels);
    Some(PodMonitor {
        metadata,
        spec: PodMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(ctx.name)),
                ..LabelSelector::default()
            },
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: HTTP_PORT_NAME.to_owned(),
                path: METRICS_PATH.to_owned(),
                interval: settings.interval.as_ref().map(ToString::to_string),
            }],
        },
    })
}
