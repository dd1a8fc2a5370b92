//! The pooler pods and what surrounds them: Deployment, Service, PodDisruptionBudget and
//! ServiceAccount.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, SleepAction, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_pooler::config::Config;

use super::config::{AUTH_DIR, AUTH_FILE, CONFIG_DIR, CONFIG_FILE, HTTP_PORT};
use super::meta::{labels, names, selector_labels, Context, RESTART_HASH_ANNOTATION};
use super::redis::{REDIS_PORT, REDIS_PORT_NAME};
use super::server_auth;
use super::{rbac, tls};
use crate::api::ConnectionPoolSpec;

/// The port clients connect to on the Service: PostgreSQL's, so that applications need
/// no special port for the pooler.
pub const SERVICE_PORT: u16 = 5432;

/// The pooler container's name.
const CONTAINER: &str = "weir";
/// Name of the container port clients reach.
pub const POOLER_PORT_NAME: &str = "pooler";
/// The environment variable the downward API fills with the pod's IP.
const POD_IP_ENV: &str = "POD_IP";
/// Name of the HTTP port (health, readiness, metrics).
pub(crate) const HTTP_PORT_NAME: &str = "http";
/// The unprivileged user and group the pooler runs as.
const RUN_AS: i64 = 65532;
/// Seconds a terminating pod keeps accepting clients before the pooler is told to drain,
/// so that endpoints and load balancers stop sending it new ones first.
const PRE_STOP_SLEEP: i64 = 5;
/// Seconds of slack after the pooler's `shutdown_timeout` before the pod is killed.
const GRACE_MARGIN: i64 = 10;

/// The pods' ServiceAccount, with the annotations a cloud's workload identity reads. Its
/// token is not mounted by default: only a pooler that validates ServiceAccount tokens
/// calls the Kubernetes API (see the pod spec).
pub(crate) fn service_account(ctx: &Context<'_>, spec: &ConnectionPoolSpec) -> ServiceAccount {
    let mut metadata = ctx.meta(ctx.name.to_owned());
    metadata.annotations = server_auth::service_account_annotations(spec);
    ServiceAccount {
        metadata,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The Service clients connect to.
pub(crate) fn service(ctx: &Context<'_>, spec: &ConnectionPoolSpec) -> Service {
    let mut metadata = ctx.meta(ctx.name.to_owned());
    metadata.annotations = spec.service.annotations.clone();
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().to_owned()),
            selector: Some(selector_labels(ctx.name)),
            ports: Some(vec![client_port(spec)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service port clients reach: PostgreSQL's, or Redis's for a Redis pool.
fn client_port(spec: &ConnectionPoolSpec) -> ServicePort {
    let (name, port, target) = if spec.redis.is_some() {
        (REDIS_PORT_NAME, REDIS_PORT, REDIS_PORT_NAME)
    } else {
        ("postgres", SERVICE_PORT, POOLER_PORT_NAME)
    };
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Allows one pod at a time to be evicted, and unhealthy pods always, so that node drains
/// never block on a pooler.
pub(crate) fn pod_disruption_budget(ctx: &Context<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(ctx.name.to_owned()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(ctx.name)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The pooler Deployment. Rolling updates start new pods before stopping old ones
/// (maxUnavailable 0) and add at most `rollout.maxSurge` pods, which the budget counts.
pub(crate) fn deployment(
    ctx: &Context<'_>,
    spec: &ConnectionPoolSpec,
    config: &Config,
    restart_hash: &str,
) -> Deployment {
    let selector = selector_labels(ctx.name);
    let pod = spec.pod.clone().unwrap_or_default();

    let mut pod_labels = pod.labels.clone().unwrap_or_default();
    pod_labels.extend(server_auth::pod_labels(spec));
    pod_labels.extend(labels(ctx.name));
    let mut pod_annotations = pod.annotations.clone().unwrap_or_default();
    pod_annotations.extend(server_auth::pod_annotations(spec));
    pod_annotations.insert(RESTART_HASH_ANNOTATION.to_owned(), restart_hash.to_owned());
    pod_annotations.insert(
        "kubectl.kubernetes.io/default-container".to_owned(),
        CONTAINER.to_owned(),
    );

    // The pooler's drain bound, rounded up to whole seconds (never 0: config::build
    // refuses an unbounded drain).
    let shutdown = config.pgbouncer.shutdown_timeout;
    let drain_seconds = i64::try_from(shutdown.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(i64::from(shutdown.subsec_nanos() > 0));

    let topology_spread = pod
        .topology_spread_constraints
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![spread_across_nodes(&selector)]);

    let pod_spec = PodSpec {
        service_account_name: Some(ctx.name.to_owned()),
        // The API token only for the TokenReviews of ServiceAccount-token logins.
        automount_service_account_token: Some(rbac::reviews_tokens(config)),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(
            PRE_STOP_SLEEP
                .saturating_add(drain_seconds)
                .saturating_add(GRACE_MARGIN),
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(spec, config)],
        volumes: Some(volumes(ctx.name, spec)),
        node_selector: pod.node_selector.clone(),
        affinity: pod.affinity.clone(),
        tolerations: pod.tolerations.clone(),
        topology_spread_constraints: Some(topology_spread),
        priority_class_name: pod.priority_class_name.clone(),
        ..PodSpec::default()
    };

    Deployment {
        metadata: ctx.meta(ctx.name.to_owned()),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(spec.rollout.max_surge)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// At most one pod more on any node than on another, when the scheduler can manage; per
/// revision, so that a rollout's new pods spread too.
fn spread_across_nodes(selector: &BTreeMap<String, String>) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        match_label_keys: Some(vec!["pod-template-hash".to_owned()]),
        ..TopologySpreadConstraint::default()
    }
}

fn container(spec: &ConnectionPoolSpec, config: &Config) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HTTP_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: CONTAINER.to_owned(),
        image: Some(spec.image().to_owned()),
        command: Some(vec!["weir".to_owned()]),
        // The pod finds its peer id in [peers] by its own IP.
        args: Some(vec![
            "--peer-address".to_owned(),
            format!("$({POD_IP_ENV})"),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![EnvVar {
            name: POD_IP_ENV.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(
            [
                ContainerPort {
                    name: Some(POOLER_PORT_NAME.to_owned()),
                    container_port: i32::from(config.pgbouncer.listen_port),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some(HTTP_PORT_NAME.to_owned()),
                    container_port: i32::from(HTTP_PORT),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
            ]
            .into_iter()
            .chain(spec.redis.as_ref().map(|_| ContainerPort {
                name: Some(REDIS_PORT_NAME.to_owned()),
                container_port: i32::from(REDIS_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }))
            .collect(),
        ),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: spec.pod.as_ref().and_then(|p| p.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(
            [
                VolumeMount {
                    name: "config".to_owned(),
                    mount_path: CONFIG_DIR.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "auth".to_owned(),
                    mount_path: AUTH_DIR.to_owned(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            ]
            .into_iter()
            .chain(tls::volume_mounts(spec))
            .collect(),
        ),
        ..Container::default()
    }
}

/// The ConfigMap, the auth Secret and the TLS sources as whole-directory mounts (not
/// subPath), so that the kubelet refreshes the files in running pods and the pooler can
/// reload them.
fn volumes(pool: &str, spec: &ConnectionPoolSpec) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(pool),
                items: Some(vec![KeyToPath {
                    key: CONFIG_FILE.to_owned(),
                    path: CONFIG_FILE.to_owned(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "auth".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::auth_secret(pool)),
                items: Some(vec![KeyToPath {
                    key: AUTH_FILE.to_owned(),
                    path: AUTH_FILE.to_owned(),
                    ..KeyToPath::default()
                }]),
                // Readable by the pooler's group only.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(tls::volumes(spec));
    volumes
}
