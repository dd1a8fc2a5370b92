//! `weir-operator`: the Weir control plane's command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_operator::controller::{self, LeaseSettings, RunSettings};
use weir_operator::offline;

/// Runs and sizes Weir connection poolers on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weir-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ConnectionPool CustomResourceDefinition as YAML.
    Crd,
    /// Print, offline, the objects the operator would apply for a ConnectionPool, with the
    /// computed connection budget and pool sizes (for review before a GitOps merge).
    /// Secrets are not read: credentials appear as placeholders.
    Render(offline::RenderArgs),
    /// Run the controller: reconcile ConnectionPools in the cluster of the current
    /// kubeconfig (KUBECONFIG, ~/.kube/config) or, inside a pod, of its service account.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of the HTTP endpoint serving /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Compete for a Lease and reconcile only while holding it, so that several replicas
    /// can run; `false` for a single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else the
    /// kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "weir-operator")]
    leader_election_name: String,
    /// Watch only this namespace (default: every namespace); the chart's namespaced
    /// install grants nothing else.
    #[arg(long)]
    watch_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the pod's name, else host name and
    /// process id).
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds before expiry that the leader renews (and steps down if it cannot).
    #[arg(long, default_value_t = 5)]
    lease_renew_grace_seconds: u64,
    /// Seconds a changed ConfigMap is left alone before pods are added: a minimum besides
    /// every running pod reporting it in its /status. With --poll-pod-status=false it is
    /// all that guards the budget, and must cover the kubelet's ConfigMap refresh (about
    /// a minute by default) plus the pooler's reload.
    #[arg(long, default_value_t = 5)]
    config_settle_seconds: u64,
    /// Read every pooler pod's /status (from the pod IP, on the pooler's HTTP port):
    /// status.usage, the NearBudget condition, and the check that running pods run the
    /// new pool sizes before pods are added. Turn off only where the operator cannot
    /// reach the pods.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    poll_pod_status: bool,
    /// Seconds between two reads of every pool's pods.
    #[arg(long, default_value_t = 15)]
    pod_status_interval_seconds: u64,
    /// Bound, in milliseconds, on reading one pod's /status.
    #[arg(long, default_value_t = 2000)]
    pod_status_timeout_millis: u64,
    /// Pod /status requests in flight at once, over all pools.
    #[arg(long, default_value_t = 32)]
    pod_status_concurrency: usize,
    /// NearBudget turns true when open server connections reach this percentage of the
    /// pool's budget...
    #[arg(long, default_value_t = 90)]
    near_budget_percent: u32,
    /// ...and stay there for this many seconds.
    #[arg(long, default_value_t = 300)]
    near_budget_seconds: u64,
    /// Bound, in seconds, on reading max_connections from a database.
    #[arg(long, default_value_t = 5)]
    database_timeout_seconds: u64,
    /// Seconds a database's max_connections is reused before it is read again.
    #[arg(long, default_value_t = 60)]
    database_cache_seconds: u64,
    /// Seconds API discovery's answer (is the PodMonitor CRD installed?) is reused: how
    /// soon a Prometheus Operator installed later is noticed.
    #[arg(long, default_value_t = 60)]
    discovery_cache_seconds: u64,
    /// The namespace the operator runs in (the NetworkPolicy's default operator peer).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Pools reconciled at once (0: no bound). A reconciliation that changes nothing reads
    /// only the watches' caches; one that creates a pool's children sends up to seven
    /// requests at once, so a burst of new pools queues here instead of making every
    /// reconciliation wait on a saturated API server (500 new pools on a 2-core control
    /// plane: 16 at once gave a p99 of 2.3-2.4 s, 8 at once 1.0-1.25 s, both 63-73 s to all
    /// Ready).
    #[arg(long, default_value_t = 8)]
    concurrent_reconciles: u16,
    /// Seconds between reconciliations of an unchanged pool.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => weir_operator::crd::crd_yaml()
            .map(|text| print!("{text}"))
            .map_err(anyhow::Error::from),
        Command::Render(args) => offline::render_yaml(&args).map(|text| print!("{text}")),
        Command::Run(args) => run_operator(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts logging and the runtime, and runs the controller until it is told to stop.
fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("cannot configure the Kubernetes client (kubeconfig or in-cluster)")?;
        let identity = args
            .leader_election_identity
            .clone()
            .unwrap_or_else(default_identity);
        let lease = args.leader_elect.then(|| LeaseSettings {
            namespace: args
                .leader_election_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            name: args.leader_election_name.clone(),
            identity: identity.clone(),
            duration_seconds: args.lease_duration_seconds,
            grace_seconds: args.lease_renew_grace_seconds,
        });
        let settings = RunSettings {
            metrics_address: args.metrics_address,
            lease,
            instance: identity,
            watch_namespace: args.watch_namespace,
            concurrent_reconciles: args.concurrent_reconciles,
            reconcile: controller::Settings {
                settle: Duration::from_secs(args.config_settle_seconds),
                database_timeout: Duration::from_secs(args.database_timeout_seconds),
                database_ttl: Duration::from_secs(args.database_cache_seconds),
                resync: Duration::from_secs(args.resync_seconds.max(1)),
                discovery_ttl: Duration::from_secs(args.discovery_cache_seconds.max(1)),
                operator_namespace: args.operator_namespace,
                pod_status: args.poll_pod_status.then(|| controller::PodStatusSettings {
                    read: controller::pod_status::ReadSettings {
                        port: weir_operator::render::config::HTTP_PORT,
                        timeout: Duration::from_millis(args.pod_status_timeout_millis.max(1)),
                        concurrency: args.pod_status_concurrency.max(1),
                    },
                    interval: Duration::from_secs(args.pod_status_interval_seconds.max(1)),
                    near_budget: controller::usage::NearBudgetSettings {
                        percent: args.near_budget_percent,
                        sustain: Duration::from_secs(args.near_budget_seconds),
                    },
                }),
            },
        };
        controller::run(client, settings).await?;
        Ok(())
    })
}

/// Outside a pod: the host name and process id, unique among replicas on one machine.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weir-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
