//! End to end: the NetworkPolicy and the PodMonitor a ConnectionPool asks for, on a real
//! control plane (kube-apiserver with kwok nodes, see tests/controlplane) with the operator
//! as a local process, as in e2e_operator.
//!
//! The API server validates both objects server-side: the NetworkPolicy against the
//! built-in type, the PodMonitor against the Prometheus Operator's real CRD
//! (tests/crds/, from its Go module). The PodMonitor CRD is installed only mid-test, to
//! check that a pool asking for a PodMonitor without it is reported and left alone, and
//! gets one once the CRD exists, with no restart of the operator.
//!
//! Not tested: that the NetworkPolicy is enforced. The test cluster's network (kwok's fake
//! pods; the real-node setup's bridge CNI) implements no NetworkPolicy, so only its shape
//! and its acceptance by the API server are checked here.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use weir_operator::api::ConnectionPool;
use weir_operator::render::PodMonitor;
use weir_tests::k8s::{
    eventually, workspace, ControlPlane, Crd, Operator, OperatorFixture, OperatorSetup,
};

const NS: &str = "ops";
const WAIT: Duration = Duration::from_secs(60);
/// Discovery's answer is reused for 1 s, so the CRD installed mid-test is seen at once.
const OPERATOR_ARGS: &[&str] = &[
    "--config-settle-seconds=2",
    "--leader-elect=false",
    "--resync-seconds=20",
    "--discovery-cache-seconds=1",
    "--operator-namespace=weir-system",
];

/// A pool whose `app` user logs in with ServiceAccount tokens, so that the policy's egress
/// includes the API server; its TLS Secret only needs to exist (kwok runs no pooler).
const POOL: &str = "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: guarded
spec:
  database:
    host: 10.77.0.9
    dbname: orders
    credentialsSecret: {name: guarded-db}
    maxConnections: 100
  replicas: 1
  users:
    - user: app
      credentialsSecret: {name: guarded-db}
      serviceAccounts: [{name: checkout}]
  tls:
    client: {secretName: guarded-tls}
  monitoring:
    podMonitor:
      labels: {release: prometheus}
      interval: 15s
  networkPolicy:
    clients:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
        podSelector: {matchLabels: {app: checkout}}
      - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.9.0/24]}
    metrics:
      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
        podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}
";

struct Env {
    plane: ControlPlane,
    operator: Operator,
}

impl Env {
    async fn kubectl_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        self.plane.kubectl_ok(&all).await
    }

    async fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let out = self
            .plane
            .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
            .await?;
        ensure!(out.success(), "{}", out.stderr);
        Ok(())
    }

    async fn pool(&self) -> anyhow::Result<ConnectionPool> {
        Ok(Api::<ConnectionPool>::namespaced(self.plane.client(), NS)
            .get("guarded")
            .await?)
    }

    /// Waits until the pool's Monitoring condition is `status`/`reason` for its current
    /// generation (`None`: until it has none).
    async fn wait_monitoring(
        &self,
        want: Option<(&str, &str)>,
    ) -> anyhow::Result<Option<Condition>> {
        eventually(&format!("Monitoring {want:?}"), WAIT, || async {
            let pool = self.pool().await?;
            let status = pool.status.clone().unwrap_or_default();
            ensure!(
                status.observed_generation == pool.metadata.generation,
                "generation {:?} not observed yet",
                pool.metadata.generation
            );
            let found = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Monitoring")
                .cloned();
            match (want, found) {
                (None, None) => Ok(None),
                (Some((s, r)), Some(c)) if c.status == s && c.reason == r => Ok(Some(c)),
                (_, found) => anyhow::bail!("Monitoring is {found:?}"),
            }
        })
        .await
    }

    async fn events(&self, reason: &str) -> anyhow::Result<Vec<String>> {
        let text = self
            .kubectl_ns(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.kind=ConnectionPool,reason={reason}"),
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ])
            .await?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    async fn policy(&self) -> anyhow::Result<Option<NetworkPolicy>> {
        Ok(Api::<NetworkPolicy>::namespaced(self.plane.client(), NS)
            .get_opt("guarded")
            .await?)
    }

    async fn monitor(&self) -> anyhow::Result<Option<PodMonitor>> {
        Ok(Api::<PodMonitor>::namespaced(self.plane.client(), NS)
            .get_opt("guarded")
            .await?)
    }
}

/// The value of the series `name` (with its labels) in a /metrics text; 0 when absent.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The chart's operator may manage both kinds, the PodMonitor's before its CRD exists (a
/// SubjectAccessReview: `kubectl auth can-i` resolves resources by discovery first).
async fn the_chart_grants_networkpolicies_and_podmonitors(env: &Env) -> anyhow::Result<()> {
    let reviews = Api::<SubjectAccessReview>::all(env.plane.client());
    for (verb, group, resource) in [
        ("patch", "networking.k8s.io", "networkpolicies"),
        ("watch", "networking.k8s.io", "networkpolicies"),
        ("delete", "networking.k8s.io", "networkpolicies"),
        ("patch", "monitoring.coreos.com", "podmonitors"),
        ("delete", "monitoring.coreos.com", "podmonitors"),
    ] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some("system:serviceaccount:weir-system:weir-operator".to_owned()),
                groups: Some(vec![
                    "system:serviceaccounts".to_owned(),
                    "system:serviceaccounts:weir-system".to_owned(),
                    "system:authenticated".to_owned(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_owned()),
                    group: Some(group.to_owned()),
                    resource: Some(resource.to_owned()),
                    namespace: Some(NS.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        ensure!(
            allowed,
            "the chart's operator may not {verb} {resource}.{group}"
        );
    }
    Ok(())
}

/// The policy is accepted by the API server with the selectors the spec names, the pool's
/// own pods, the operator's, and egress to DNS, the database, the peers and the API server's
/// real endpoints.
async fn the_network_policy_is_applied_as_rendered(env: &Env) -> anyhow::Result<()> {
    env.apply(POOL).await?;
    let policy = eventually("NetworkPolicy guarded", WAIT, || async {
        env.policy().await?.context("not there yet")
    })
    .await?;
    let pool = env.pool().await?;
    let owner = policy.owner_references().first().context("no owner")?;
    ensure!(owner.uid == pool.uid().unwrap_or_default() && owner.controller == Some(true));
    let spec = serde_json::to_value(&policy.spec)?;
    let own = serde_json::json!({"matchLabels": {"app.kubernetes.io/name": "weir", "weir.dev/pool": "guarded"}});
    ensure!(spec["podSelector"] == own, "{spec}");
    let clients = &spec["ingress"][0];
    ensure!(
        clients["ports"] == serde_json::json!([{"port": "pooler", "protocol": "TCP"}]),
        "{clients}"
    );
    ensure!(
        clients["from"][0]["podSelector"]["matchLabels"]["app"] == "checkout"
            && clients["from"][1]["ipBlock"]["except"][0] == "192.168.9.0/24"
            && clients["from"][2]["podSelector"] == own,
        "{clients}"
    );
    let scrapers = &spec["ingress"][1];
    ensure!(
        scrapers["ports"][0]["port"] == "http"
            && scrapers["from"][0]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"]
                == "weir-system"
            && scrapers["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                == "prometheus",
        "{scrapers}"
    );
    let egress = spec["egress"].as_array().context("egress")?;
    ensure!(egress.len() == 4, "{egress:?}");
    ensure!(egress[0]["ports"][0]["port"] == 53, "{}", egress[0]);
    ensure!(
        egress[1]["to"][0]["ipBlock"]["cidr"] == "10.77.0.9/32",
        "{}",
        egress[1]
    );
    ensure!(egress[2]["to"][0]["podSelector"] == own, "{}", egress[2]);
    // kwok's control plane gives the `kubernetes` Service no endpoints
    // (--endpoint-reconciler-type=none): the usual ports, to any address.
    let slices = Api::<EndpointSlice>::namespaced(env.plane.client(), "default");
    let api_server = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    ensure!(slices.list(&api_server).await?.items.is_empty());
    ensure!(
        egress[3]
            == serde_json::json!({"ports": [
                {"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}
            ]}),
        "{}",
        egress[3]
    );
    // With endpoints, as a real API server publishes them, egress goes to those only.
    let created = env
        .plane
        .kubectl_with_input(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes}
addressType: IPv4
endpoints: [{addresses: [10.244.0.1]}]
ports: [{name: https, port: 6443, protocol: TCP}]
",
            ),
        )
        .await?;
    ensure!(created.success(), "{}", created.stderr);
    env.kubectl_ns(&["annotate", "cpool", "guarded", "e2e/nudge=1"])
        .await?;
    eventually("egress to the API server's endpoint", WAIT, || async {
        let policy = env.policy().await?.context("gone")?;
        let egress = serde_json::to_value(&policy.spec)?["egress"][3].clone();
        ensure!(
            egress
                == serde_json::json!({
                    "to": [{"ipBlock": {"cidr": "10.244.0.1/32"}}],
                    "ports": [{"port": 6443, "protocol": "TCP"}]
                }),
            "{egress}"
        );
        Ok(())
    })
    .await
}

/// Asked for without its CRD, the PodMonitor is reported missing once, in the condition
/// and an Event, and the pool reconciles without errors.
async fn a_pod_monitor_without_its_crd_is_reported(env: &Env) -> anyhow::Result<()> {
    let condition = env
        .wait_monitoring(Some(("False", "PodMonitorCRDMissing")))
        .await?
        .context("no condition")?;
    ensure!(
        condition
            .message
            .contains("podmonitors.monitoring.coreos.com/v1"),
        "{}",
        condition.message
    );
    eventually("a PodMonitorCRDMissing Event", WAIT, || async {
        ensure!(
            !env.events("PodMonitorCRDMissing").await?.is_empty(),
            "none yet"
        );
        Ok(())
    })
    .await?;
    // Requeued once discovery's 1 s answer expires. Reconciliations racing with the first
    // status update may each tell it once; after that, two more successful reconciliations
    // add no Event and no error.
    let successes = |text: &str| sample(text, "weir_operator_reconciles_total{result=\"success\"}");
    let errors = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("weir_operator_reconcile_errors_total"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let two_more = |since: String| async move {
        eventually("two more reconciliations", WAIT, || async {
            let now = env.operator.metrics().await?;
            ensure!(
                successes(&now) >= successes(&since) + 2,
                "{} then {}",
                successes(&since),
                successes(&now)
            );
            Ok(now)
        })
        .await
    };
    let before = two_more(env.operator.metrics().await?).await?;
    let told = env.events("PodMonitorCRDMissing").await?;
    let after = two_more(before.clone()).await?;
    ensure!(errors(&before) == errors(&after), "{:?}", errors(&after));
    ensure!(
        env.events("PodMonitorCRDMissing").await? == told,
        "{told:?}"
    );
    ensure!(env.policy().await?.is_some(), "the NetworkPolicy went");
    Ok(())
}

/// Installing the Prometheus Operator's CRD later makes the PodMonitor appear, valid by
/// that CRD's schema, without restarting the operator.
async fn the_pod_monitor_appears_once_its_crd_exists(env: &Env) -> anyhow::Result<()> {
    let crd = workspace().join("tests/crds/monitoring.coreos.com_podmonitors.yaml");
    let crd = crd.to_str().context("path")?;
    env.plane
        .kubectl_ok(&["create", "-f", crd])
        .await
        .context("installing the PodMonitor CRD")?;
    env.plane
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/podmonitors.monitoring.coreos.com",
            "--timeout=30s",
        ])
        .await?;
    env.wait_monitoring(Some(("True", "PodMonitorApplied")))
        .await?;
    let monitor = env.monitor().await?.context("no PodMonitor")?;
    let pool = env.pool().await?;
    ensure!(
        monitor.owner_references().first().map(|o| o.uid.as_str()) == pool.uid().as_deref(),
        "not owned by the pool"
    );
    ensure!(monitor.labels().get("release").map(String::as_str) == Some("prometheus"));
    let spec = serde_json::to_value(&monitor.spec)?;
    ensure!(
        spec == serde_json::json!({
            "selector": {"matchLabels": {"app.kubernetes.io/name": "weir", "weir.dev/pool": "guarded"}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]
        }),
        "{spec}"
    );
    eventually("a PodMonitorApplied Event", WAIT, || async {
        ensure!(
            !env.events("PodMonitorApplied").await?.is_empty(),
            "none yet"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// Dropping both fields deletes both objects and the condition; the pool's deletion takes
/// them along through their owner references.
async fn both_go_with_the_spec_and_the_pool(env: &Env) -> anyhow::Result<()> {
    env.kubectl_ns(&[
        "patch",
        "cpool",
        "guarded",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/monitoring"}, {"op": "remove", "path": "/spec/networkPolicy"}]"#,
    ])
    .await?;
    env.wait_monitoring(None).await?;
    eprintln!("  fields removed: condition gone");
    eventually("both objects deleted", WAIT, || async {
        ensure!(env.policy().await?.is_none(), "NetworkPolicy left");
        ensure!(env.monitor().await?.is_none(), "PodMonitor left");
        Ok(())
    })
    .await?;
    eprintln!("  fields removed: objects deleted");
    env.apply(POOL).await?;
    eventually("both objects back", WAIT, || async {
        ensure!(env.policy().await?.is_some() && env.monitor().await?.is_some());
        Ok(())
    })
    .await?;
    eprintln!("  fields back: objects back");
    env.kubectl_ns(&["delete", "cpool", "guarded"]).await?;
    eprintln!("  pool deleted");
    eventually("both objects collected", WAIT, || async {
        ensure!(env.policy().await?.is_none(), "NetworkPolicy left");
        ensure!(env.monitor().await?.is_none(), "PodMonitor left");
        Ok(())
    })
    .await
}

async fn setup() -> anyhow::Result<Env> {
    let OperatorFixture { plane, operator } = OperatorFixture::start(OperatorSetup {
        namespace: NS,
        crd: Crd::Helm,
        credentials: &[("guarded-db", "app", "app-secret")],
        operator: ("op-ops", OPERATOR_ARGS),
    })
    .await?;
    eprintln!("control plane up in {:?}", plane.startup);
    plane
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "guarded-tls",
            "-n",
            NS,
            "--from-literal=tls.crt=placeholder",
            "--from-literal=tls.key=placeholder",
        ])
        .await?;
    Ok(Env { plane, operator })
}

macro_rules! step {
    ($env:expr, $step:ident) => {
        if let Err(e) = weir_tests::k8s::timed_step(stringify!($step), $step($env)).await {
            weir_tests::k8s::step_failed(stringify!($step), &e, &$env.operator.log());
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_and_pod_monitor_on_a_real_api_server() {
    let started = Instant::now();
    let env = match setup().await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    let env = &env;
    step!(env, the_chart_grants_networkpolicies_and_podmonitors);
    step!(env, the_network_policy_is_applied_as_rendered);
    step!(env, a_pod_monitor_without_its_crd_is_reported);
    step!(env, the_pod_monitor_appears_once_its_crd_exists);
    step!(env, both_go_with_the_spec_and_the_pool);
    eprintln!("e2e_ops_objects: {:?} in all", started.elapsed());
}
