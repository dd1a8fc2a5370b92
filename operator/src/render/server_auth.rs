//! What `spec.database.serverAuth` changes in the rendered objects: the `[databases]` entry's
//! `server_auth` keys, the ServiceAccount's annotations, the Azure pod label, and the egress
//! the pooler needs to fetch its tokens.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
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

/// Pod-template annotation holding a digest of the provider and the ServiceAccount's
/// annotations: the clouds' webhooks inject credentials only into new pods, so a change of
/// identity must roll them.
pub const IDENTITY_ANNOTATION: &str = "weir.dev/server-auth-identity";

/// The pod-template annotations of `serverAuth` (none without it).
pub(crate) fn pod_annotations(spec: &ConnectionPoolSpec) -> BTreeMap<String, String> {
    let Some(auth) = of(spec) else {
        return BTreeMap::new();
    };
    let mut hasher = Sha256::new();
    hasher.update(format!("{:?}\n", auth.provider));
    for (key, value) in service_account_annotations(spec).iter().flatten() {
        hasher.update(format!("{key}={value}\n"));
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    BTreeMap::from([(IDENTITY_ANNOTATION.to_owned(), format!("sha256:{hex}"))])
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use weir_pooler::config::{parse_userlist, Config, ServerAuth};

    use crate::api::from_yaml;
    use crate::render::{render, Observed, Rendered};

    /// A pool whose `reports` user logs in with ServiceAccount tokens; `server_auth` is
    /// spliced in under `database`.
    fn pool_text(server_auth: &str, host: &str) -> String {
        format!(
            "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata: {{name: orders, namespace: shop, uid: 0d9c7d5e-1111-4222-8333-444455556666}}
spec:
  database:
    host: {host}
    dbname: orders
    credentialsSecret: {{name: unused}}
    maxConnections: 100
{server_auth}  users:
    - user: app
      credentialsSecret: {{name: app-creds}}
    - user: reports
      credentialsSecret: {{name: reports-creds}}
      serviceAccounts: [{{name: reports}}]
  tls:
    client: {{secretName: orders-tls}}
  networkPolicy:
    clients: [{{podSelector: {{}}}}]
"
        )
    }

    /// The Secrets a controller would read: app's password and the TLS certificate; the
    /// token user's Secret is absent.
    fn observed(with_reports: bool) -> Observed {
        let mut secrets = BTreeMap::from([
            (
                "app-creds".to_owned(),
                BTreeMap::from([("password".to_owned(), b"app-pw".to_vec())]),
            ),
            (
                "orders-tls".to_owned(),
                BTreeMap::from([
                    ("tls.crt".to_owned(), b"PEM".to_vec()),
                    ("tls.key".to_owned(), b"PEM".to_vec()),
                ]),
            ),
        ]);
        if with_reports {
            secrets.insert(
                "reports-creds".to_owned(),
                BTreeMap::from([("password".to_owned(), b"reports-pw".to_vec())]),
            );
        }
        Observed {
            secrets,
            ..Observed::default()
        }
    }

    fn rendered(server_auth: &str, host: &str, with_reports: bool) -> Result<Rendered, String> {
        let pool = from_yaml(&pool_text(server_auth, host)).map_err(|e| e.to_string())?;
        render(&pool, &observed(with_reports)).map_err(|e| e.to_string())
    }

    fn parsed(r: &Rendered) -> Config {
        let ini = &r.config_map.data.as_ref().expect("data")["pgbouncer.ini"];
        let parsed = Config::parse(ini, Path::new("pgbouncer.ini")).expect("the pooler accepts it");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        parsed.config
    }

    fn userlist(r: &Rendered) -> BTreeMap<String, String> {
        let data = r.auth_secret.data.as_ref().expect("data");
        let text = String::from_utf8(data["userlist.txt"].0.clone()).expect("utf-8");
        parse_userlist(&text, Path::new("userlist.txt")).expect("parses")
    }

    #[test]
    fn rds_iam_renders_the_entry_and_the_role_annotation() {
        let auth = "    serverAuth:
      provider: rdsIam
      serviceAccount:
        annotations: {eks.amazonaws.com/role-arn: 'arn:aws:iam::1:role/weir'}
";
        let host = "orders.cluster-abc.eu-west-1.rds.amazonaws.com";
        let r = rendered(auth, host, false).expect("renders without the token user's Secret");
        let config = parsed(&r);
        let entry = &config.databases["orders"];
        assert_eq!(entry.server_auth, Some(ServerAuth::RdsIam));
        assert_eq!(entry.server_auth_region.as_deref(), Some("eu-west-1"));
        assert_eq!(entry.password, None);
        // Only the password user is in the auth file: the token user needs none.
        assert_eq!(
            userlist(&r),
            BTreeMap::from([("app".to_owned(), "app-pw".to_owned())])
        );
        let annotations = r.service_account.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::1:role/weir"
        );
        // The pods can reach the metadata endpoints and the token services.
        let policy = serde_json::to_string(&r.network_policy).expect("json");
        assert!(policy.contains("169.254.0.0/16"), "{policy}");
        assert!(policy.contains("\"port\":443"), "{policy}");
    }

    #[test]
    fn the_given_region_wins_and_gcp_and_azure_have_none() {
        let r = rendered(
            "    serverAuth: {provider: rdsIam, region: us-east-2}\n",
            "orders-db.internal",
            false,
        )
        .expect("renders");
        let entry = &parsed(&r).databases["orders"];
        assert_eq!(entry.server_auth_region.as_deref(), Some("us-east-2"));
        for (provider, auth) in [
            ("gcpIam", ServerAuth::GcpIam),
            ("azureAd", ServerAuth::AzureAd),
        ] {
            let text = format!("    serverAuth: {{provider: {provider}}}\n");
            let r = rendered(&text, "10.0.0.5", false).expect("renders");
            let entry = &parsed(&r).databases["orders"];
            assert_eq!(
                (entry.server_auth, &entry.server_auth_region),
                (Some(auth), &None)
            );
            let labels = r
                .deployment
                .spec
                .as_ref()
                .expect("spec")
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .expect("labels");
            let azure = labels
                .get(super::AZURE_WORKLOAD_IDENTITY_LABEL)
                .map(String::as_str);
            let expected = (auth == ServerAuth::AzureAd).then_some("true");
            assert_eq!(azure, expected, "{provider}");
            assert_eq!(r.service_account.metadata.annotations, None);
        }
    }

    fn identity(r: &Rendered) -> Option<String> {
        let template = &r.deployment.spec.as_ref().expect("spec").template;
        let annotations = template.metadata.as_ref()?.annotations.as_ref()?;
        annotations.get(super::IDENTITY_ANNOTATION).cloned()
    }

    #[test]
    fn a_new_identity_rolls_the_pods() {
        let with = |auth: &str| identity(&rendered(auth, "10.0.0.5", false).expect("renders"));
        let gcp = with("    serverAuth: {provider: gcpIam}\n");
        let azure = with("    serverAuth: {provider: azureAd}\n");
        let annotated =
            with("    serverAuth: {provider: gcpIam, serviceAccount: {annotations: {a: b}}}\n");
        let other =
            with("    serverAuth: {provider: gcpIam, serviceAccount: {annotations: {a: c}}}\n");
        assert!(gcp.is_some());
        let all = [&gcp, &azure, &annotated, &other];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(gcp, with("    serverAuth: {provider: gcpIam}\n"));
        let plain = rendered("", "orders-db", true).expect("renders");
        assert_eq!(identity(&plain), None);
    }

    #[test]
    fn without_server_auth_nothing_changes() {
        // The token user's password is still needed: the pooler logs in to the database with it.
        let missing = rendered("", "orders-db", false).expect_err("reports-creds is needed");
        assert!(missing.contains("reports-creds"), "{missing}");
        let r = rendered("", "orders-db", true).expect("renders");
        let entry = &parsed(&r).databases["orders"];
        assert_eq!(
            (entry.server_auth, &entry.server_auth_region),
            (None, &None)
        );
        assert_eq!(userlist(&r).len(), 2);
        let policy = serde_json::to_string(&r.network_policy).expect("json");
        assert!(!policy.contains("169.254.0.0/16"), "{policy}");
        assert_eq!(r.service_account.metadata.annotations, None);
        let labels = r
            .deployment
            .spec
            .as_ref()
            .expect("spec")
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert!(!labels.contains_key(super::AZURE_WORKLOAD_IDENTITY_LABEL));
    }

    #[test]
    fn a_password_user_still_needs_its_password() {
        let auth = "    serverAuth: {provider: gcpIam}\n";
        let pool = from_yaml(&pool_text(auth, "10.0.0.5")).expect("valid");
        let mut facts = observed(false);
        facts.secrets.remove("app-creds");
        let err = render(&pool, &facts).expect_err("app's password is what clients log in with");
        assert!(err.to_string().contains("app-creds"), "{err}");
    }
}
