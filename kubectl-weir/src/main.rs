//! `kubectl weir`: a kubectl plugin for Weir ConnectionPools: their budgets and usage, why
//! each budget number is what it is, the pods' admin consoles, and the offline render.

mod cluster;
mod console;
mod explain;
mod status;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Client;
use weir_operator::api::{
    BudgetStatus, ConnectionPool, MaxConnections, ReadOnlyPoolStatus, ReadReplicas,
};
use weir_operator::offline::{self, RenderArgs};
use weir_operator::render::{self, Observed, ObservedDatabase};
use weir_operator::sizing;

use crate::explain::{Origin, Servers};

/// Inspect Weir ConnectionPools (kubectl plugin: `kubectl weir ...`).
#[derive(Debug, Parser)]
#[command(name = "kubectl weir", bin_name = "kubectl weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The pools, their budget arithmetic and each pooler pod's usage (read from the pod's
    /// /status through the API server's pod proxy).
    Status {
        /// Namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Only this ConnectionPool.
        pool: Option<String>,
    },
    /// Why each number of a pool's budget is what it is, from the live spec and status or,
    /// with -f, from a manifest offline.
    ExplainBudget(ExplainArgs),
    /// Run an admin console command on every pod of a pool and merge the answers, e.g.
    /// `kubectl weir console orders -- SHOW POOLS`.
    Console {
        /// Namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The ConnectionPool.
        pool: String,
        /// The console command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print, offline, the objects the operator would apply for a ConnectionPool manifest.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// Namespace (default: the kubeconfig's; offline: "default" unless the manifest says).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The ConnectionPool (live).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pool: Option<String>,
    /// A ConnectionPool manifest to explain offline ("-" reads standard input).
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
    /// Offline, with `maxConnections: auto`: the database's max_connections.
    #[arg(long, requires = "file")]
    max_connections: Option<u32>,
    /// Offline, with `auto`: superuser_reserved_connections plus reserved_connections.
    #[arg(long, default_value_t = 3)]
    superuser_reserved: u32,
    /// Offline: server connections other pools on the database claim.
    #[arg(long, default_value_t = 0)]
    others_claimed: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(report) => {
            print!("{}", report.text);
            match report.failure {
                None => ExitCode::SUCCESS,
                Some(failure) => {
                    eprintln!("kubectl weir: {failure}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("kubectl weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a command prints, and whether part of it failed.
struct Report {
    text: String,
    failure: Option<String>,
}

impl From<String> for Report {
    fn from(text: String) -> Report {
        Report {
            text,
            failure: None,
        }
    }
}

fn run(command: Command) -> anyhow::Result<Report> {
    match command {
        Command::Render(args) => offline::render_yaml(&args).map(Report::from),
        Command::ExplainBudget(args) if args.file.is_some() => {
            explain_offline(&args).map(Report::from)
        }
        Command::ExplainBudget(args) => live(|client| async move {
            let ns = namespace(&client, args.namespace);
            let name = args.pool.context("name a ConnectionPool or pass -f")?;
            let pools = cluster::pools(&client, &ns, Some(&name)).await?;
            explain_live(pools.first().context("no such ConnectionPool")?).map(Report::from)
        }),
        Command::Status {
            namespace: ns,
            pool,
        } => live(|client| async move {
            cluster::status(&client, &namespace(&client, ns), pool.as_deref())
                .await
                .map(Report::from)
        }),
        Command::Console {
            namespace: ns,
            pool,
            command,
        } => live(|client| async move {
            let ns = namespace(&client, ns);
            let (text, failed) = cluster::console(&client, &ns, &pool, &command.join(" ")).await?;
            Ok(Report {
                text,
                failure: failed
                    .map(|(failed, pods)| format!("{failed} of {pods} pods did not answer")),
            })
        }),
    }
}

/// The namespace given, else the kubeconfig's.
fn namespace(client: &Client, given: Option<String>) -> String {
    given.unwrap_or_else(|| client.default_namespace().to_owned())
}

/// Runs `f` with a client for the kubeconfig's cluster.
fn live<F, Fut>(f: F) -> anyhow::Result<Report>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Report>>,
{
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let client = Client::try_default()
            .await
            .context("cannot configure the Kubernetes client (KUBECONFIG, ~/.kube/config)")?;
        f(client).await
    })
}

/// Explains the live pool from the limits and claims the operator recorded in its status.
fn explain_live(pool: &ConnectionPool) -> anyhow::Result<String> {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let namespace = pool.metadata.namespace.as_deref().unwrap_or_default();
    let status = pool.status.clone().unwrap_or_default();
    let Some(recorded) = status.budget.clone() else {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == "BudgetFeasible")
            .map_or("no BudgetFeasible condition yet".to_owned(), |c| {
                format!("{}: {}", c.reason, c.message)
            });
        anyhow::bail!("ConnectionPool {namespace}/{name} has no computed budget: {why}");
    };
    let database = match pool.spec.database.as_ref().map(|db| db.max_connections) {
        Some(MaxConnections::Auto) => Some(ObservedDatabase {
            max_connections: u32::try_from(recorded.max_connections)?,
            superuser_reserved_connections: u32::try_from(recorded.superuser_reserved)?,
            reserved_connections: 0,
        }),
        _ => None,
    };
    // A Redis pool without maxClients: the server's maxclients, recorded as max_connections.
    let max_clients = match &pool.spec.redis {
        Some(redis) if redis.max_clients.is_none() => {
            Some(u32::try_from(recorded.max_connections)?)
        }
        _ => None,
    };
    let observed = Observed {
        database,
        max_clients,
        others_claimed: u32::try_from(recorded.claimed_by_others)?,
        ..Observed::default()
    };
    let inputs = render::sizing_inputs(pool, &observed)?;
    let outcome = sizing::compute(&inputs);
    let users: Vec<String> = status.users.iter().map(|u| u.user.clone()).collect();
    let title = format!(
        "ConnectionPool {namespace}/{name} (generation {}; the database's limits and the other \
         pools' claims as the operator recorded them in .status.budget)",
        pool.metadata.generation.unwrap_or_default()
    );
    let mut text = explain::explain(
        &title,
        &inputs,
        &outcome,
        &users,
        Origin::of(pool, Origin::Database),
        Servers::Primary,
    );
    if let (Some(standbys), Some(ro)) = (&pool.spec.read_replicas, &status.read_only) {
        text.push('\n');
        text.push_str(&explain_read_only(pool, standbys, ro)?);
    }
    if let Ok(sizing) = &outcome {
        if BudgetStatus::from(&sizing.budget) != recorded {
            text.push_str(&format!(
                "\nNote: .status.budget differs ({recorded:?}): the operator has not applied \
                 this spec yet (status.observedGeneration {:?}).\n",
                status.observed_generation
            ));
        }
    }
    Ok(text)
}

/// The title of a read-only pool's explanation.
fn read_only_title(pool: &ConnectionPool) -> String {
    format!(
        "Read-only pool {} over spec.readReplicas (every read-only pod may connect to every \
         standby: sized for the standby with the least room)",
        weir_operator::api::read_only_name(pool.metadata.name.as_deref().unwrap_or_default())
    )
}

/// Where the standbys' limits came from.
fn standby_origin(standbys: &ReadReplicas, auto_origin: Origin) -> Origin {
    match standbys.max_connections {
        MaxConnections::Auto => auto_origin,
        MaxConnections::Count(_) => Origin::Spec,
    }
}

/// Explains the live read-only pool from the tightest standby's limits recorded in
/// `.status.readOnly.budget`.
fn explain_read_only(
    pool: &ConnectionPool,
    standbys: &ReadReplicas,
    status: &ReadOnlyPoolStatus,
) -> anyhow::Result<String> {
    let Some(recorded) = &status.budget else {
        return Ok(format!(
            "{}\n\nNo computed budget yet: see the ReadOnlyReady condition.\n",
            read_only_title(pool)
        ));
    };
    // Every standby stands in as the tightest one the operator recorded.
    let seen = ObservedDatabase {
        max_connections: u32::try_from(recorded.max_connections)?,
        superuser_reserved_connections: u32::try_from(recorded.superuser_reserved)?,
        reserved_connections: 0,
    };
    let observed = Observed {
        standbys: standbys
            .hosts
            .iter()
            .map(|h| (render::read_only::standby_key(&h.host, h.port), seen))
            .collect(),
        ..Observed::default()
    };
    let inputs = render::read_only::inputs(pool, standbys, &observed)?;
    let users: Vec<String> = status.users.iter().map(|u| u.user.clone()).collect();
    Ok(explain::explain(
        &read_only_title(pool),
        &inputs,
        &sizing::compute(&inputs),
        &users,
        standby_origin(standbys, Origin::Database),
        Servers::Standbys,
    ))
}

fn explain_offline(args: &ExplainArgs) -> anyhow::Result<String> {
    let render_args = RenderArgs {
        file: args.file.clone().context("-f is required offline")?,
        max_connections: args.max_connections,
        superuser_reserved: args.superuser_reserved,
        others_claimed: args.others_claimed,
        namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    };
    let pool = offline::read_pool(&render_args)?;
    let (observed, notes) = offline::observed(&pool, &render_args)?;
    let inputs = render::sizing_inputs(&pool, &observed)?;
    let outcome = sizing::compute(&inputs);
    let users: Vec<String> = pool
        .spec
        .user_sources()
        .iter()
        .map(|s| match s {
            weir_operator::api::UserSource::Listed(u) => u.user.clone(),
            weir_operator::api::UserSource::Database(c) => format!("<{}>", c.name),
        })
        .collect();
    let title = format!(
        "ConnectionPool {}/{} from {} (offline)",
        pool.metadata.namespace.as_deref().unwrap_or_default(),
        pool.metadata.name.as_deref().unwrap_or_default(),
        render_args.file.display()
    );
    let mut text = explain::explain(
        &title,
        &inputs,
        &outcome,
        &users,
        Origin::of(&pool, Origin::Arguments),
        Servers::Primary,
    );
    if let Some(standbys) = &pool.spec.read_replicas {
        let inputs = render::read_only::inputs(&pool, standbys, &observed)?;
        text.push('\n');
        text.push_str(&explain::explain(
            &read_only_title(&pool),
            &inputs,
            &sizing::compute(&inputs),
            &users,
            standby_origin(standbys, Origin::Arguments),
            Servers::Standbys,
        ));
    }
    for note in notes {
        text.push_str(&format!("Note: {note}\n"));
    }
    Ok(text)
}
