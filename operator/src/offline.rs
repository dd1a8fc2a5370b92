//! The offline render: a ConnectionPool manifest plus stand-in facts for what the controller
//! would observe, shared by `weir-operator render` and `kubectl weir render`/`explain-budget -f`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::api::{self, ConnectionPool, MaxConnections, UserSource};
use crate::render::{self, Observed, ObservedDatabase};

/// The manifest and the facts standing in for the database and the other pools.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The ConnectionPool manifest ("-" reads standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The database's max_connections, standing in for what the operator reads from the
    /// database when the spec says `maxConnections: auto` (for a Redis pool without
    /// `redis.maxClients`: the server's maxclients).
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// With `auto`: the database's superuser_reserved_connections plus
    /// reserved_connections.
    #[arg(long, default_value_t = 3)]
    pub superuser_reserved: u32,
    /// Server connections other ConnectionPools on the same database claim.
    #[arg(long, default_value_t = 0)]
    pub others_claimed: u32,
    /// Namespace to render into when the manifest names none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// Stands in for the API server's `metadata.uid`, which an unapplied manifest lacks.
const OFFLINE_UID: &str = "<assigned-by-the-api-server>";

/// The manifest's ConnectionPool, with the namespace and uid an unapplied one lacks.
pub fn read_pool(args: &RenderArgs) -> anyhow::Result<ConnectionPool> {
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
    Ok(pool)
}

/// The stand-in facts for `pool`, and notes about arguments that were not used.
pub fn observed(
    pool: &ConnectionPool,
    args: &RenderArgs,
) -> anyhow::Result<(Observed, Vec<&'static str>)> {
    let mut notes = Vec::new();
    let max_clients = match (&pool.spec.redis, args.max_connections) {
        (Some(redis), Some(n)) if redis.max_clients.is_none() => Some(n),
        (Some(redis), None) if redis.max_clients.is_none() => bail!(
            "redis.maxClients is not set: pass --max-connections N, the Redis server's maxclients"
        ),
        (Some(_), Some(_)) => {
            notes.push("--max-connections ignored: the spec sets redis.maxClients itself");
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
            notes.push("--max-connections ignored: the spec sets maxConnections itself");
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
        standbys: standbys(pool, args)?,
        ..Observed::default()
    };
    Ok((observed, notes))
}

/// With `readReplicas.maxConnections: auto`, every standby reports `--max-connections`.
fn standbys(
    pool: &ConnectionPool,
    args: &RenderArgs,
) -> anyhow::Result<BTreeMap<String, ObservedDatabase>> {
    let Some(standbys) = &pool.spec.read_replicas else {
        return Ok(BTreeMap::new());
    };
    if standbys.max_connections != MaxConnections::Auto {
        return Ok(BTreeMap::new());
    }
    let Some(max_connections) = args.max_connections else {
        bail!(
            "readReplicas.maxConnections is auto: pass --max-connections N, the standbys' \
             max_connections"
        );
    };
    Ok(standbys
        .hosts
        .iter()
        .map(|h| {
            let seen = ObservedDatabase {
                max_connections,
                superuser_reserved_connections: args.superuser_reserved,
                reserved_connections: 0,
            };
            (render::read_only::standby_key(&h.host, h.port), seen)
        })
        .collect())
}

/// The objects the operator would apply, as a commented YAML stream.
pub fn render_yaml(args: &RenderArgs) -> anyhow::Result<String> {
    let pool = read_pool(args)?;
    let (observed, notes) = observed(&pool, args)?;
    let rendered =
        render::render(&pool, &observed).with_context(|| args.file.display().to_string())?;
    let read_only = render::read_only::render(&pool, &observed)
        .with_context(|| format!("{}: spec.readReplicas", args.file.display()))?;
    let mut out = String::from(
        "# Rendered offline by weir-operator: credentials are placeholders, Secrets not read.\n",
    );
    for note in notes {
        out.push_str(&format!("# {note}\n"));
    }
    out.push_str(&rendered.to_yaml_stream()?);
    if let Some(read_only) = read_only {
        out.push_str(&render::read_only::to_yaml_stream(&read_only)?);
    }
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
