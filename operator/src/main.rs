//! `weir-operator`: the Weir control plane's command line.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use weir_operator::api::{self, MaxConnections, UserSource};
use weir_operator::controller::{self, LeaseSettings, RunSettings};
use weir_operator::render::{self, Observed, ObservedDatabase};

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
    Render(RenderArgs),
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

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The ConnectionPool manifest ("-" reads standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The database's max_connections, standing in for what the operator reads from the
    /// database when the spec says `maxConnections: auto` (for a Redis pool without
    /// `redis.maxClients`: the server's maxclients).
    #[arg(long)]
    max_connections: Option<u32>,
    /// With `auto`: the database's superuser_reserved_connections plus
    /// reserved_connections.
    #[arg(long, default_value_t = 3)]
    superuser_reserved: u32,
    /// Server connections other ConnectionPools on the same database claim.
    #[arg(long, default_value_t = 0)]
    others_claimed: u32,
    /// Namespace to render into when the manifest names none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => weir_operator::crd::crd_yaml()
            .map(|text| print!("{text}"))
            .map_err(anyhow::Error::from),
        Command::Render(args) => render_offline(&args).map(|text| print!("{text}")),
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

/// Stands in for the API server's `metadata.uid`, which an unapplied manifest lacks.
const OFFLINE_UID: &str = "<assigned-by-the-api-server>";

fn render_offline(args: &RenderArgs) -> anyhow::Result<String> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let mut pool = api::from_yaml(&text).with_context(|| args.file.display().to_string())?;
    let meta = &mut pool.metadata;
    meta.namespace.get_or_insert_with(|| args.namespace.clone());
    meta.uid.get_or_insert_with(|| OFFLINE_UID.to_owned());

    let mut notes = Vec::new();
    let max_clients = match (&pool.spec.redis, args.max_connections) {
        (Some(redis), Some(n)) if redis.max_clients.is_none() => Some(n),
        (Some(redis), None) if redis.max_clients.is_none() => bail!(
            "redis.maxClients is not set: pass --max-connections N, the Redis server's maxclients"
        ),
        (Some(_), Some(_)) => {
            notes.push("# --max-connections ignored: the spec sets redis.maxClients itself\n");
            None
        }
        _ => None,
    };
    let max_connections = pool.spec.database.as_ref().map(|db| db.max_connections);
    let database = match (max_connections, args.max_connections) {
        (None, _) => None,
        (Some(MaxConnections::Auto), Some(max_connections)) => Some(ObservedDatabase {
            max_connections,
            superuser_reserved_connections: args.superuser_reserved,
            reserved_connections: 0,
        }),
        (Some(MaxConnections::Auto), None) => bail!(
            "maxConnections is auto: pass --max-connections N, the database's max_connections"
        ),
        (Some(MaxConnections::Count(_)), Some(_)) => {
            notes.push("# --max-connections ignored: the spec sets maxConnections itself\n");
            None
        }
        (Some(MaxConnections::Count(_)), None) => None,
    };
    let observed = Observed {
        database,
        max_clients,
        others_claimed: args.others_claimed,
        secrets: placeholder_secrets(&pool.spec),
        config_maps: render::tls::config_map_keys(&pool.spec).into_iter().fold(
            BTreeMap::new(),
            |mut maps, (name, key)| {
                let text = format!("<configmap:{name}/{key}>");
                maps.entry(name)
                    .or_insert_with(BTreeMap::new)
                    .insert(key, text);
                maps
            },
        ),
        ..Observed::default()
    };
    let rendered =
        render::render(&pool, &observed).with_context(|| args.file.display().to_string())?;
    let mut out = String::from(
        "# Rendered offline by weir-operator: credentials are placeholders, Secrets not read.\n",
    );
    out.extend(notes);
    out.push_str(&rendered.to_yaml_stream()?);
    Ok(out)
}

/// Secret data in which every referenced key holds `<secret:NAME/KEY>`.
fn placeholder_secrets(
    spec: &api::ConnectionPoolSpec,
) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut add = |name: &str, key: &str| {
        secrets.entry(name.to_owned()).or_default().insert(
            key.to_owned(),
            format!("<secret:{name}/{key}>").into_bytes(),
        );
    };
    for (name, key) in render::tls::secret_keys(spec) {
        add(&name, &key);
    }
    for source in spec.user_sources() {
        match source {
            UserSource::Listed(u) => add(
                &u.credentials_secret.name,
                &u.credentials_secret.password_key,
            ),
            UserSource::Database(c) => {
                add(&c.name, &c.username_key);
                add(&c.name, &c.password_key);
            }
        }
    }
    secrets
}
