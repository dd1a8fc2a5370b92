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
    /// Seconds running pods get to reload a changed ConfigMap (kubelet refresh plus
    /// pooler reload) before pods are added.
    #[arg(long, default_value_t = 90)]
    config_settle_seconds: u64,
    /// Bound, in seconds, on reading max_connections from a database.
    #[arg(long, default_value_t = 5)]
    database_timeout_seconds: u64,
    /// Seconds a database's max_connections is reused before it is read again.
    #[arg(long, default_value_t = 60)]
    database_cache_seconds: u64,
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
            reconcile: controller::Settings {
                settle: Duration::from_secs(args.config_settle_seconds),
                database_timeout: Duration::from_secs(args.database_timeout_seconds),
                database_ttl: Duration::from_secs(args.database_cache_seconds),
                resync: Duration::from_secs(args.resync_seconds.max(1)),
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
