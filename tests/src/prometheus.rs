//! A real Prometheus, built from its Go module by `scripts/ensure-prometheus.sh`, scraping
//! the test's processes from static targets, and queried through its HTTP API; and
//! `promtool` for the rule files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::child::{self, Supervised};
use crate::k8s::workspace;
use crate::net;

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one promtool run may take.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding `prometheus` and `promtool`, built on first use (minutes, once per
/// machine) and cached under ~/.cache/weir/bin.
pub fn binaries() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = std::process::Command::new(workspace().join("scripts/ensure-prometheus.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running scripts/ensure-prometheus.sh: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last() {
            Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim())),
            _ => Err(format!(
                "scripts/ensure-prometheus.sh failed: {}",
                out.status
            )),
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Runs `promtool` with `args` in the workspace root; returns its exit success and output.
pub async fn promtool(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let mut cmd = tokio::process::Command::new(binaries()?.join("promtool"));
    cmd.args(args)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROMTOOL_TIMEOUT, cmd.output())
        .await
        .context("promtool timed out")?
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Something to scrape: `host:port` serving `/metrics`, and the target labels to give it
/// (those a PodMonitor would add: namespace, pod, and the pool's).
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// Target labels.
    pub labels: Vec<(&'static str, String)>,
}

/// One series of a query result: its labels and its value as Prometheus prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The value (`"NaN"`, `"+Inf"` or a number).
    pub value: String,
}

/// A running Prometheus with its own data directory, killed on drop.
pub struct Prometheus {
    port: u16,
    _child: Supervised,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` every second, and returns once it is ready.
    pub async fn start(targets: &[Target]) -> anyhow::Result<Prometheus> {
        let binary = binaries()?.join("prometheus");
        let dir = tempfile::Builder::new()
            .prefix("weir-prometheus-")
            .tempdir()
            .context("creating the Prometheus directory")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets)).context("writing prometheus.yml")?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .context("creating prometheus.log")?;
        let port = net::free_port();
        let mut cmd = child::command(&binary, None);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={}:{port}", net::HOST))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        let child =
            Supervised::spawn(cmd).with_context(|| format!("starting {}", binary.display()))?;
        let prometheus = Prometheus {
            port,
            _child: child,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = prometheus.get("/-/ready").await {
                return Ok(prometheus);
            }
            if Instant::now() >= deadline {
                bail!(
                    "Prometheus not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    prometheus.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `expr` now; an expression Prometheus refuses is an error with its reason.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let (status, body) = self
            .get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("HTTP {status}: {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or(&body)
            );
        }
        let data = &answer["data"];
        let result = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            other => bail!("expected an instant vector, got {other:?}"),
        };
        Ok(result
            .iter()
            .map(|series| Sample {
                labels: series["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: series["value"][1].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    /// A plain HTTP/1.0 GET (no chunked answers); the status code and the body.
    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect((net::HOST, self.port))
            .await
            .context("connecting to Prometheus")?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// prometheus.yml: one job, a static configuration per target with its labels.
fn scrape_config(targets: &[Target]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: weir\n    scrape_timeout: 1s\n    static_configs:\n",
    );
    for target in targets {
        text.push_str(&format!(
            "      - targets: [\"{}\"]\n        labels:\n",
            target.address
        ));
        for (name, value) in &target.labels {
            text.push_str(&format!("          {name}: \"{value}\"\n"));
        }
    }
    text
}

/// `text` for a URL query value: everything but RFC 3986's unreserved characters escaped.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
