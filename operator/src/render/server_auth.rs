//! What `spec.database.serverAuth` changes in the rendered objects: the `[databases]` entry's
//! `server_auth` keys, the ServiceAccount's annotations, the Azure pod label, and the egress
//! the pooler needs to fetch its tokens.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_pooler::config::ServerAuth;

use crate::api::{
    CloudProvider, ConnectionPoolSpec, ServerAuthSpec, AZURE_WORKLOAD_IDENTITY_LABEL,
};

/// Link-local metadata endpoints (GKE's metadata server on 80 and 988, the EKS Pod Identity
/// agent on 80), over IPv4 and the Pod Identity agent's IPv6 address.
const METADATA_BLOCKS: [&str; 2] = ["169.254.0.0/16", "fd00:ec2::23/128"];
const METADATA_PORTS: [i32; 2] = [80, 988];
/// HTTPS to any address: AWS STS and Microsoft Entra ID have no fixed addresses.
const TOKEN_ENDPOINT_PORT: i32 = 443;

/// The pool's `serverAuth`, when its database has one.
pub(crate) fn of(spec: &ConnectionPoolSpec) -> Option<&ServerAuthSpec> {
    spec.database.as_ref()?.server_auth.as_ref()
}

/// The `server_auth` and `server_auth_region` keys of the `[databases]` entry.
pub(crate) fn entry_keys(spec: &ConnectionPoolSpec) -> (Option<ServerAuth>, Option<String>) {
    match (spec.database.as_ref(), of(spec)) {
        (Some(db), Some(auth)) => (Some(auth.provider.into()), auth.region_for(&db.host)),
        _ => (None, None),
    }
}

/// The ServiceAccount's annotations the cloud's workload identity reads.
pub(crate) fn service_account_annotations(
    spec: &ConnectionPoolSpec,
) -> Option<BTreeMap<String, String>> {
    of(spec)?
        .service_account
        .as_ref()?
        .annotations
        .clone()
        .filter(|a| !a.is_empty())
}

/// Pod labels the provider's webhook needs before it injects the token environment.
pub(crate) fn pod_labels(spec: &ConnectionPoolSpec) -> BTreeMap<String, String> {
    match of(spec).map(|a| a.provider) {
        Some(CloudProvider::AzureAd) => {
            BTreeMap::from([(AZURE_WORKLOAD_IDENTITY_LABEL.to_owned(), "true".to_owned())])
        }
        _ => BTreeMap::new(),
    }
}

/// Egress to the endpoints tokens come from, when the pool logs in with them.
pub(crate) fn egress(spec: &ConnectionPoolSpec) -> Vec<NetworkPolicyEgressRule> {
    if of(spec).is_none() {
        return Vec::new();
    }
    let tcp = |p: i32| NetworkPolicyPort {
        protocol: Some("TCP".to_owned()),
        port: Some(IntOrString::Int(p)),
        end_port: None,
    };
    vec![
        NetworkPolicyEgressRule {
            to: Some(
                METADATA_BLOCKS
                    .iter()
                    .map(|cidr| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: (*cidr).to_owned(),
                            except: None,
                        }),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
            ports: Some(METADATA_PORTS.iter().copied().map(tcp).collect()),
        },
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![tcp(TOKEN_ENDPOINT_PORT)]),
        },
    ]
}
