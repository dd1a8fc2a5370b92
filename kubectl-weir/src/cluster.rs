//! Everything that talks to the API server: pools, their pods, `/status` through the pod
//! proxy, and the admin console through port-forwarding.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tokio_postgres::{NoTls, SimpleQueryMessage};
use weir_operator::api::ConnectionPool;
use weir_operator::render::config::{AUTH_FILE, HTTP_PORT};
use weir_operator::render::{names, selector_string, POOLER_PORT_NAME, SERVICE_PORT};
use weir_pooler::config::parse_userlist;

use crate::console::{self, Answer};
use crate::status::{self, PodStatus};

/// Bound on one pod's `/status` read or console command, so that one unreachable pod does
/// not hold up the others' answers.
const POD_TIMEOUT: Duration = Duration::from_secs(15);

/// The pools named, or every pool of the namespace, sorted by name.
pub async fn pools(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
) -> anyhow::Result<Vec<ConnectionPool>> {
    let api: Api<ConnectionPool> = Api::namespaced(client.clone(), namespace);
    let mut pools = match name {
        Some(name) => vec![api
            .get(name)
            .await
            .with_context(|| format!("ConnectionPool {namespace}/{name}"))?],
        None => {
            api.list(&ListParams::default())
                .await
                .with_context(|| format!("listing ConnectionPools in {namespace}"))?
                .items
        }
    };
    pools.sort_by_key(|p| p.name_any());
    Ok(pools)
}

/// The pool's pooler pods, sorted by name.
async fn pods(client: &Client, namespace: &str, pool: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pods = api
        .list(&ListParams::default().labels(&selector_string(pool)))
        .await
        .with_context(|| format!("listing the pods of {namespace}/{pool}"))?
        .items;
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port clients reach in the pod: its container port named as the operator names it.
fn listen_port(pod: &Pod) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(POOLER_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(SERVICE_PORT)
}

/// A pod's `/status` document, read through the API server's pod proxy so that it works
/// from outside the cluster.
async fn pod_status(client: &Client, namespace: &str, pod: &str) -> Result<PodStatus, String> {
    let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{HTTP_PORT}/proxy/status");
    let request = http::Request::get(uri)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(POD_TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| format!("no answer within {}s", POD_TIMEOUT.as_secs()))?
        .map_err(|e| match e {
            // The API server's own words, without kube's wrapping of a non-JSON body.
            kube::Error::Api(status) => format!("{} {}", status.code, status.message),
            e => e.to_string(),
        })?;
    PodStatus::parse(&text).map_err(|e| e.to_string())
}

/// `kubectl weir status`: one block per pool.
pub async fn status(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
) -> anyhow::Result<String> {
    let pools = pools(client, namespace, name).await?;
    if pools.is_empty() {
        return Ok(format!("No ConnectionPools in namespace {namespace}.\n"));
    }
    let mut out = Vec::new();
    for pool in &pools {
        let pods = pods(client, namespace, &pool.name_any()).await?;
        let reads = pods.iter().map(|pod| async move {
            status::Pod {
                name: pod.name_any(),
                ready: is_ready(pod),
                status: pod_status(client, namespace, &pod.name_any()).await,
            }
        });
        let pods = join_all(reads).await;
        out.push(status::pool_report(pool, &pods));
    }
    Ok(out.join("\n"))
}

/// `kubectl weir console`: `command` on every running pod of the pool, merged; with the
/// number of pods that failed and of pods asked, when some failed.
pub async fn console(
    client: &Client,
    namespace: &str,
    pool_name: &str,
    command: &str,
) -> anyhow::Result<(String, Option<(usize, usize)>)> {
    let pool = pools(client, namespace, Some(pool_name)).await?;
    let pool = pool.first().context("no such ConnectionPool")?;
    let secret_name = names::auth_secret(pool_name);
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&secret_name)
        .await
        .with_context(|| format!("reading the operator's auth Secret {namespace}/{secret_name}"))?;
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(AUTH_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .with_context(|| format!("Secret {secret_name} has no {AUTH_FILE}"))?;
    let userlist = parse_userlist(&text, Path::new(AUTH_FILE))?;
    let (user, password) = console::login(pool_name, pool.spec.parameters.as_ref(), &userlist)?;
    let pods: Vec<Pod> = pods(client, namespace, pool_name)
        .await?
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    if pods.is_empty() {
        bail!("ConnectionPool {namespace}/{pool_name} has no running pods");
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let runs = pods.iter().map(|pod| {
        let (api, user, password) = (&api, &user, &password);
        async move {
            let name = pod.name_any();
            let run = console_on_pod(api, &name, listen_port(pod), user, password, command);
            let answer = match tokio::time::timeout(POD_TIMEOUT, run).await {
                Ok(answer) => answer.map_err(|e| format!("{e:#}")),
                Err(_) => Err(format!("no answer within {}s", POD_TIMEOUT.as_secs())),
            };
            (name, answer)
        }
    });
    let answers = join_all(runs).await;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    Ok((
        console::merge(&answers),
        (failed > 0).then_some((failed, answers.len())),
    ))
}

async fn console_on_pod(
    api: &Api<Pod>,
    pod: &str,
    port: u16,
    user: &str,
    password: &str,
    command: &str,
) -> anyhow::Result<Answer> {
    let mut forwarder = api
        .portforward(pod, &[port])
        .await
        .with_context(|| format!("port-forward to {pod}:{port}"))?;
    let stream = forwarder
        .take_stream(port)
        .context("the port-forward gave no stream")?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(user)
        .password(password)
        .dbname(console::ADMIN_DATABASE)
        .application_name("kubectl-weir");
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .with_context(|| format!("logging in to the admin console as {user}"))?;
    let connection = tokio::spawn(connection);
    let messages = client.simple_query(command).await;
    drop(client);
    // The connection ends once the client is gone; its error, if any, adds nothing.
    let _ = connection.await;
    forwarder.abort();
    let mut answer = Answer::default();
    for message in messages? {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                answer.columns = columns.iter().map(|c| c.name().to_owned()).collect();
                answer.rows.clear();
            }
            SimpleQueryMessage::Row(row) => answer.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(_) => answer.tags.push("OK".to_owned()),
            _ => {}
        }
    }
    Ok(answer)
}
