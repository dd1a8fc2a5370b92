//! The NetworkPolicy of a pool's pods, when `spec.networkPolicy` asks for one.
//!
//! Ingress: the named clients on the Service's ports (whatever ports the Service exposes,
//! by their target port), the pool's own pods on the client port (cancel requests
//! forwarded between peers, see `peers`), the operator and the named scrapers on the HTTP
//! port. Egress: DNS, the database, the peers, and the API server when the pooler reviews
//! ServiceAccount tokens. Kubelet probes come from the node, which policy engines admit.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_pooler::config::Config;

use super::meta::{selector_labels, Context};
use super::rbac;
use super::server_auth;
use super::workload::HTTP_PORT_NAME;
use super::Observed;
use crate::api::{ConnectionPoolSpec, NetworkPolicySettings};

/// The namespace label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The ports the API server is reached on when its endpoints are unknown: the Service's
/// and kube-apiserver's usual secure port.
const API_SERVER_FALLBACK_PORTS: [i32; 2] = [443, 6443];

/// What the policy needs from outside the spec.
pub(crate) struct Inputs<'a> {
    pub spec: &'a ConnectionPoolSpec,
    pub service: &'a Service,
    pub config: &'a Config,
    pub observed: &'a Observed,
}

/// The pool's NetworkPolicy, or none when the spec does not ask for one.
pub(crate) fn network_policy(ctx: &Context<'_>, inputs: &Inputs<'_>) -> Option<NetworkPolicy> {
    let settings = inputs.spec.network_policy.as_ref()?;
    Some(NetworkPolicy {
        metadata: ctx.meta(ctx.name.to_owned()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(ctx.name)),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress(ctx.name, settings, inputs)),
            egress: Some(egress(ctx.name, settings, inputs)),
        }),
    })
}

fn ingress(
    pool: &str,
    settings: &NetworkPolicySettings,
    inputs: &Inputs<'_>,
) -> Vec<NetworkPolicyIngressRule> {
    let service_ports: Vec<NetworkPolicyPort> = inputs
        .service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| tcp(p.target_port.clone().unwrap_or(IntOrString::Int(p.port))))
        .collect();
    let mut clients = settings.clients.clone();
    // Peers forward cancel requests to the pod holding the client.
    clients.push(peer_pods(pool));
    let mut scrapers = vec![operator(settings, inputs.observed)];
    scrapers.extend(settings.metrics.iter().cloned());
    vec![
        NetworkPolicyIngressRule {
            from: Some(clients),
            ports: Some(service_ports),
        },
        NetworkPolicyIngressRule {
            from: Some(scrapers),
            ports: Some(vec![tcp(IntOrString::String(HTTP_PORT_NAME.to_owned()))]),
        },
    ]
}

fn egress(
    pool: &str,
    settings: &NetworkPolicySettings,
    inputs: &Inputs<'_>,
) -> Vec<NetworkPolicyEgressRule> {
    // Validation admits only specs with exactly one server; none here allows no egress at all.
    let Ok(server) = inputs.spec.backend() else {
        return Vec::new();
    };
    let database_block = settings
        .database_cidr
        .clone()
        .or_else(|| server.host().parse::<IpAddr>().ok().map(host_cidr));
    let mut rules = vec![
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(labelled(NAMESPACE_NAME_LABEL, "kube-system")),
                pod_selector: Some(labelled("k8s-app", "kube-dns")),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![
                port("UDP", IntOrString::Int(53)),
                port("TCP", IntOrString::Int(53)),
            ]),
        },
        NetworkPolicyEgressRule {
            // A host name cannot be a peer: then any address, on the database's port only.
            to: database_block.map(|cidr| vec![block(cidr)]),
            ports: Some(vec![tcp(IntOrString::Int(server.port()))]),
        },
        NetworkPolicyEgressRule {
            to: Some(vec![peer_pods(pool)]),
            ports: Some(vec![tcp(IntOrString::Int(i32::from(
                inputs.config.pgbouncer.listen_port,
            )))]),
        },
    ];
    if rbac::reviews_tokens(inputs.config) {
        rules.push(api_server(&inputs.observed.api_server));
    }
    rules.extend(server_auth::egress(inputs.spec));
    rules
}

/// Egress to the API server's endpoints (the `kubernetes` Service's, which policy
/// engines see after the Service address is translated); to its usual ports on any
/// address when they are unknown.
fn api_server(endpoints: &BTreeMap<String, Vec<i32>>) -> NetworkPolicyEgressRule {
    if endpoints.is_empty() {
        return NetworkPolicyEgressRule {
            to: None,
            ports: Some(
                API_SERVER_FALLBACK_PORTS
                    .iter()
                    .map(|p| tcp(IntOrString::Int(*p)))
                    .collect(),
            ),
        };
    }
    let mut ports: Vec<i32> = endpoints.values().flatten().copied().collect();
    ports.sort_unstable();
    ports.dedup();
    NetworkPolicyEgressRule {
        to: Some(
            endpoints
                .keys()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| block(host_cidr(ip)))
                .collect(),
        ),
        ports: Some(
            ports
                .into_iter()
                .map(|p| tcp(IntOrString::Int(p)))
                .collect(),
        ),
    }
}

/// The operator's pods: as the spec names them, else by the chart's labels in the
/// operator's namespace (any namespace when unknown).
fn operator(settings: &NetworkPolicySettings, observed: &Observed) -> NetworkPolicyPeer {
    if let Some(peer) = &settings.operator {
        return peer.clone();
    }
    let namespaces = match &observed.operator_namespace {
        Some(ns) => labelled(NAMESPACE_NAME_LABEL, ns),
        None => LabelSelector::default(),
    };
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "weir".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "operator".to_owned(),
                ),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn pods(pool: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(pool)),
        ..LabelSelector::default()
    }
}

fn peer_pods(pool: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pods(pool)),
        ..NetworkPolicyPeer::default()
    }
}

fn labelled(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
        ..LabelSelector::default()
    }
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn block(cidr: String) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock { cidr, except: None }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port_: IntOrString) -> NetworkPolicyPort {
    port("TCP", port_)
}

fn port(protocol: &str, port: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(port),
        end_port: None,
    }
}
