//! `spec.database.serverAuth`: the poolers log in to a managed database with the pod's cloud
//! identity (a short-lived token) instead of a stored password, and the pods' ServiceAccount
//! carries what the cloud's workload identity needs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_pooler::config::ServerAuth;

use super::rules::{unless, Rule};
use super::{ConnectionPoolSpec, DatabaseSpec, MaxConnections, SslMode};

/// The pod label Azure Workload Identity's webhook looks for before it injects the
/// federated token and its environment into a pod.
pub const AZURE_WORKLOAD_IDENTITY_LABEL: &str = "azure.workload.identity/use";

/// How the poolers log in to the database without a stored password: a short-lived token of
/// the pods' cloud identity, fetched and renewed by the pooler (`server_auth`). The database
/// is then reached with TLS only (the clouds take the token as a clear-text password).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = server_auth_schema)]
pub struct ServerAuthSpec {
    /// The cloud: `rdsIam` (RDS / Aurora IAM authentication, with IRSA or EKS Pod
    /// Identity credentials), `gcpIam` (Cloud SQL / AlloyDB IAM users, with GKE Workload
    /// Identity) or `azureAd` (Azure Database for PostgreSQL with Microsoft Entra ID, with
    /// Azure Workload Identity; the pods get the label azure.workload.identity/use: "true").
    pub provider: CloudProvider,

    /// With rdsIam: the AWS region the tokens are signed for. Default: the region in
    /// database.host when it is an RDS endpoint (`….<region>.rds.amazonaws.com`); required
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub region: Option<String>,

    /// What the pool's ServiceAccount (named like the pool) needs for the cloud to map it
    /// to an identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<CloudServiceAccount>,
}

/// The cloud whose identity the poolers log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CloudProvider {
    /// AWS RDS / Aurora IAM authentication tokens.
    RdsIam,
    /// Google Cloud SQL / AlloyDB IAM database authentication.
    GcpIam,
    /// Azure Database for PostgreSQL with Microsoft Entra ID.
    AzureAd,
}

impl From<CloudProvider> for ServerAuth {
    fn from(provider: CloudProvider) -> Self {
        match provider {
            CloudProvider::RdsIam => ServerAuth::RdsIam,
            CloudProvider::GcpIam => ServerAuth::GcpIam,
            CloudProvider::AzureAd => ServerAuth::AzureAd,
        }
    }
}

/// Metadata of the pool's ServiceAccount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudServiceAccount {
    /// Annotations of the pool's ServiceAccount: `eks.amazonaws.com/role-arn` (IRSA),
    /// `iam.gke.io/gcp-service-account` (GKE Workload Identity),
    /// `azure.workload.identity/client-id` (Azure Workload Identity). EKS Pod Identity needs
    /// none (its association names the ServiceAccount). Keys under weir.dev/ are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::rules::pod_annotations_schema)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ServerAuthSpec {
    /// The region RDS tokens are signed for: the one given, else the one in `host`.
    pub fn region_for(&self, host: &str) -> Option<String> {
        match self.provider {
            CloudProvider::RdsIam => self.region.clone().or_else(|| rds_region(host)),
            CloudProvider::GcpIam | CloudProvider::AzureAd => None,
        }
    }
}

/// The region of an RDS endpoint, `<name>.<id>.<region>.rds.amazonaws.com[.cn]`.
pub fn rds_region(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    let (_, region) = rest.rsplit_once('.')?;
    is_region(region).then(|| region.to_owned())
}

/// Whether `text` looks like an AWS region (`eu-west-1`, `us-gov-west-1`, `cn-north-1`), as
/// the CEL pattern [`REGION_PATTERN`] says.
fn is_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let letters = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    match parts.as_slice() {
        [area, middle @ .., number] => {
            area.len() == 2
                && letters(area)
                && !middle.is_empty()
                && middle.iter().all(letters)
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

const REGION_PATTERN: &str = "^[a-z]{2}(-[a-z]+)+-[0-9]+$";
/// The CEL test that `database.host` is an RDS endpoint naming its region.
const RDS_HOST_PATTERN: &str =
    "\\\\.[a-z]{2}(-[a-z]+)+-[0-9]+\\\\.rds\\\\.amazonaws\\\\.com(\\\\.cn)?\\\\.?$";

pub(crate) const REGION_FORM: &str =
    "region must be an AWS region such as eu-west-1 or us-gov-west-1";
pub(crate) const REGION_RDS_ONLY: &str =
    "region applies to provider rdsIam only: GCP and Azure tokens are not bound to a region";
pub(crate) const MAX_CONNECTIONS_NEEDS_NUMBER: &str = "with serverAuth, maxConnections must be \
     a number: the operator reads max_connections by logging in with the stored password, \
     and a serverAuth pool has none (its tokens exist only inside the pooler pods)";
pub(crate) const RDS_NEEDS_REGION: &str = "serverAuth.provider rdsIam needs serverAuth.region \
     when database.host is not an RDS endpoint (<name>.<id>.<region>.rds.amazonaws.com): \
     tokens are signed for a region";

pub(crate) const PLAIN_SERVER_TLS: &str = "with database.serverAuth, tls.server.mode must be \
     prefer or stronger: the token is sent as a clear-text password, which the pooler never \
     sends over an unencrypted connection";

/// Rules on `spec` that concern `database.serverAuth`.
pub(crate) fn spec_rules() -> Vec<Rule<ConnectionPoolSpec>> {
    vec![Rule::new(
        "!has(self.database) || !has(self.database.serverAuth) || !has(self.tls) || \
         !has(self.tls.server) || !has(self.tls.server.mode) || \
         !(self.tls.server.mode in ['disable', 'allow'])",
        PLAIN_SERVER_TLS,
        Some(".tls.server.mode"),
        |s| {
            let auth = s.database.as_ref().is_some_and(|d| d.server_auth.is_some());
            let mode = s.tls.as_ref().and_then(|t| t.server.as_ref()?.mode);
            unless(
                !auth || !matches!(mode, Some(SslMode::Disable | SslMode::Allow)),
                PLAIN_SERVER_TLS,
            )
        },
    )]
}

/// Rules on `spec.database.serverAuth`.
pub(crate) fn server_auth_rules() -> Vec<Rule<ServerAuthSpec>> {
    vec![
        Rule::new(
            format!("!has(self.region) || self.region.matches('{REGION_PATTERN}')"),
            REGION_FORM,
            Some(".region"),
            |a| unless(a.region.as_deref().is_none_or(is_region), REGION_FORM),
        ),
        Rule::new(
            "!has(self.region) || self.provider == 'rdsIam'",
            REGION_RDS_ONLY,
            Some(".region"),
            |a| {
                unless(
                    a.region.is_none() || a.provider == CloudProvider::RdsIam,
                    REGION_RDS_ONLY,
                )
            },
        ),
    ]
}

/// Rules on `spec.database` that concern `serverAuth`.
pub(crate) fn database_rules() -> Vec<Rule<DatabaseSpec>> {
    vec![
        Rule::new(
            "!has(self.serverAuth) || type(self.maxConnections) == int",
            MAX_CONNECTIONS_NEEDS_NUMBER,
            Some(".maxConnections"),
            |d| {
                unless(
                    d.server_auth.is_none()
                        || matches!(d.max_connections, MaxConnections::Count(_)),
                    MAX_CONNECTIONS_NEEDS_NUMBER,
                )
            },
        ),
        Rule::new(
            format!(
                "!has(self.serverAuth) || self.serverAuth.provider != 'rdsIam' || \
                 has(self.serverAuth.region) || self.host.lowerAscii().matches('{RDS_HOST_PATTERN}')"
            ),
            RDS_NEEDS_REGION,
            Some(".serverAuth"),
            |d| {
                unless(
                    d.server_auth.as_ref().is_none_or(|a| {
                        a.provider != CloudProvider::RdsIam || a.region_for(&d.host).is_some()
                    }),
                    RDS_NEEDS_REGION,
                )
            },
        ),
    ]
}

pub(crate) fn server_auth_schema(schema: &mut schemars::Schema) {
    super::rules::attach(schema, &server_auth_rules());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_region_of_rds_endpoints() {
        let cases = [
            (
                "orders.cluster-abc123.eu-west-1.rds.amazonaws.com",
                Some("eu-west-1"),
            ),
            (
                "Proxy.proxy-x.US-GOV-WEST-1.rds.amazonaws.com.",
                Some("us-gov-west-1"),
            ),
            ("db.c1.cn-north-1.rds.amazonaws.com.cn", Some("cn-north-1")),
            ("orders-db-rw", None),
            ("10.0.0.5", None),
            ("rds.amazonaws.com", None),
            ("eu-west-1.rds.amazonaws.com", None),
            ("x.notaregion.rds.amazonaws.com", None),
            ("x.eu-west-1.rds.amazonaws.com.evil.example", None),
        ];
        for (host, region) in cases {
            assert_eq!(rds_region(host).as_deref(), region, "{host}");
        }
    }

    #[test]
    fn region_forms() {
        for ok in ["eu-west-1", "us-gov-west-1", "ap-southeast-10"] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "eu-west",
            "euwest1",
            "EU-WEST-1",
            "e-west-1",
            "eu--1",
            "eu-west-1a",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn the_given_region_wins_and_only_rds_has_one() {
        let mut auth = ServerAuthSpec {
            provider: CloudProvider::RdsIam,
            region: Some("us-east-2".into()),
            service_account: None,
        };
        let host = "db.c.eu-west-1.rds.amazonaws.com";
        assert_eq!(auth.region_for(host).as_deref(), Some("us-east-2"));
        auth.region = None;
        assert_eq!(auth.region_for(host).as_deref(), Some("eu-west-1"));
        auth.provider = CloudProvider::GcpIam;
        assert_eq!(auth.region_for(host), None);
    }
}
