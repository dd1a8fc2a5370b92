//! `weir-operator`: the Weir control plane's command line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use weir_operator::api::{self, MaxConnections, UserSource};
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
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The ConnectionPool manifest ("-" reads standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The database's max_connections, standing in for what the operator reads from the
    /// database when the spec says `maxConnections: auto`.
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    let database = match (pool.spec.database.max_connections, args.max_connections) {
        (MaxConnections::Auto, Some(max_connections)) => Some(ObservedDatabase {
            max_connections,
            superuser_reserved_connections: args.superuser_reserved,
            reserved_connections: 0,
        }),
        (MaxConnections::Auto, None) => bail!(
            "maxConnections is auto: pass --max-connections N, the database's max_connections"
        ),
        (MaxConnections::Count(_), Some(_)) => {
            notes.push("# --max-connections ignored: the spec sets maxConnections itself\n");
            None
        }
        (MaxConnections::Count(_), None) => None,
    };
    let observed = Observed {
        database,
        others_claimed: args.others_claimed,
        secrets: placeholder_secrets(&pool.spec),
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
