//! A real Kubernetes control plane, and the operator running against it, for end-to-end
//! tests.
//!
//! [`ControlPlane::start`] runs `tests/controlplane/up.sh` into a fresh temporary state
//! directory: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which
//! plays the kubelet, so Pods become Running and Ready without containers). Dropping it
//! runs `down.sh`, which stops every one of those processes and fails loudly if one
//! survives; the state directory (logs included) is kept when the test is panicking, so a
//! failure can be investigated, and removed otherwise.
//!
//! The control-plane processes run in their own sessions (up.sh starts them with
//! `setsid`), so unlike the harness's other children they do not die with the test
//! process if it is killed outright; `down.sh STATE_DIR` stops them then.
//!
//! [`Operator`] runs the `weir-operator` binary as a local process with the control
//! plane's kubeconfig, as a developer would with `weir-operator run`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::process::Command;

use crate::child::{self, Supervised};
use crate::net;

/// Environment variable naming the operator binary to test, overriding the build output.
pub const OPERATOR_BIN_ENV: &str = "WEIR_OPERATOR_BIN";

/// Upper bound for `up.sh` with a warm binary cache (it takes 10-20 s); a cold cache
/// builds Kubernetes from source first, which takes far longer.
const UP_TIMEOUT: Duration = Duration::from_secs(1800);

/// Upper bound for one kubectl call.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (-1 when ended by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// How long a freshly applied CRD may take to be served.
const CRD_WAIT: Duration = Duration::from_secs(60);

/// A running control plane, stopped on drop.
pub struct ControlPlane {
    state: Option<TempDir>,
    bin: PathBuf,
    kubeconfig: PathBuf,
    client: kube::Client,
    /// How long `up.sh` took.
    pub startup: Duration,
}

impl ControlPlane {
    /// Builds the binaries if needed, starts the control plane (kwok's fake nodes) and
    /// connects to it.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Self::start_with(&[]).await
    }

    /// Like [`ControlPlane::start`], with one real node instead of kwok's (containerd,
    /// kubelet, kube-proxy, CoreDNS: see tests/controlplane/node-up.sh), its containerd
    /// holding `localhost/weir:test` built from the `weir` and `weir-operator` in `weir_bins`.
    pub async fn start_with_real_node(weir_bins: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_with(&[
            ("WEIR_CONTROLPLANE_NODE", "real".as_ref()),
            ("WEIR_NODE_WEIR_BIN", weir_bins.as_os_str()),
        ])
        .await
    }

    /// Like [`ControlPlane::start`], with the controller-manager's and the scheduler's
    /// client rate limits at `qps` requests per second (burst twice that) instead of their
    /// defaults (20 and 50), which bound how fast hundreds of Deployments roll out.
    pub async fn start_with_client_qps(qps: u32) -> anyhow::Result<ControlPlane> {
        let qps = qps.to_string();
        Self::start_with(&[("WEIR_CONTROLPLANE_CLIENT_QPS", qps.as_ref())]).await
    }

    async fn start_with(env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<ControlPlane> {
        let scripts = workspace().join("tests/controlplane");
        let state = tempfile::Builder::new()
            .prefix("weir-k8s-")
            .tempdir()
            .context("creating the control-plane state directory")?;
        let started = Instant::now();
        let build = run(
            Command::new(scripts.join("build.sh")),
            UP_TIMEOUT,
            "build.sh",
        )
        .await?;
        if !build.success() {
            bail!("tests/controlplane/build.sh failed:\n{}", build.stderr);
        }
        let bin = PathBuf::from(build.stdout.trim());
        let mut up = Command::new(scripts.join("up.sh"));
        up.arg(state.path()).envs(env.iter().copied());
        let up = run(up, UP_TIMEOUT, "up.sh").await;
        // From here on, dropping the value runs down.sh, also when starting failed half-way.
        let mut plane = ControlPlane {
            kubeconfig: state.path().join("kubeconfig"),
            state: Some(state),
            bin,
            client: placeholder_client()?,
            startup: started.elapsed(),
        };
        let up = up?;
        if !up.success() {
            bail!("tests/controlplane/up.sh failed:\n{}", up.stderr);
        }
        let kubeconfig =
            Kubeconfig::read_from(&plane.kubeconfig).context("reading the kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig")?;
        plane.client = kube::Client::try_from(config).context("creating a Kubernetes client")?;
        Ok(plane)
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client with admin rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The state directory: logs of every process under `logs/`.
    pub fn state_dir(&self) -> &Path {
        self.state.as_ref().map_or(Path::new(""), |s| s.path())
    }

    /// The directory holding kubectl, helm and the control-plane binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Runs kubectl with `args` against this control plane.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_with_input(args, None).await
    }

    /// Runs kubectl with `args`, feeding `input` on standard input (for `-f -`).
    pub async fn kubectl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<Output> {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.env_remove("KUBECONFIG").current_dir(workspace());
        run_with_input(
            cmd,
            KUBECTL_TIMEOUT,
            &format!("kubectl {}", args.join(" ")),
            input,
        )
        .await
    }

    /// Runs `kubectl weir ARGS` the way a user does: kubectl finds the `kubectl-weir` plugin
    /// on PATH (from `plugin_dir`) and hands it KUBECONFIG.
    pub async fn kubectl_weir(&self, plugin_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let path =
            std::env::join_paths([plugin_dir.to_owned(), self.bin.clone()].into_iter().chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
            ))?;
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("weir").args(args);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path)
            .current_dir(workspace());
        run(
            cmd,
            KUBECTL_TIMEOUT,
            &format!("kubectl weir {}", args.join(" ")),
        )
        .await
    }

    /// Runs kubectl and returns its standard output, failing with its standard error if
    /// it exits non-zero.
    pub async fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args).await?;
        if !out.success() {
            bail!("kubectl {} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Waits until the ConnectionPool CRD is served. Right after it is created the CRD may
    /// have no conditions yet, which `kubectl wait` reports as an error, so it is asked again.
    pub async fn wait_for_crd(&self) -> anyhow::Result<()> {
        eventually(
            "the ConnectionPool CRD to be established",
            CRD_WAIT,
            || async {
                self.kubectl_ok(&[
                    "wait",
                    "--for=condition=Established",
                    "crd/connectionpools.weir.dev",
                    "--timeout=10s",
                ])
                .await
            },
        )
        .await
        .map(drop)
    }

    /// Creates the Secret a ConnectionPool's `credentialsSecret` names: `username` and
    /// `password` keys.
    pub async fn create_credentials(
        &self,
        namespace: &str,
        name: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        self.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            namespace,
            &format!("--from-literal=username={user}"),
            &format!("--from-literal=password={password}"),
        ])
        .await
        .map(drop)
    }

    /// Stops the kube-apiserver process, leaving etcd and every other process running
    /// (tests/controlplane/apiserver.sh): clients see the API server go away.
    pub async fn stop_apiserver(&self) -> anyhow::Result<()> {
        self.apiserver("stop").await
    }

    /// Starts the kube-apiserver stopped by [`ControlPlane::stop_apiserver`] again, on the
    /// same port with the same certificates and etcd, and waits until it is ready.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        self.apiserver("start").await
    }

    async fn apiserver(&self, action: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(workspace().join("tests/controlplane/apiserver.sh"));
        cmd.arg(action).arg(self.state_dir());
        let out = run(cmd, UP_TIMEOUT, &format!("apiserver.sh {action}")).await?;
        if !out.success() {
            bail!(
                "tests/controlplane/apiserver.sh {action} failed:\n{}",
                out.stderr
            );
        }
        Ok(())
    }

    /// The end of a control-plane process's log, for failure messages.
    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        let path = self.state_dir().join("logs").join(format!("{process}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let down = std::process::Command::new(workspace().join("tests/controlplane/down.sh"))
            .arg(state.path())
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "tests/controlplane/down.sh {} failed:\n{}",
                state.path().display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot run tests/controlplane/down.sh: {e}"),
        }
        if std::thread::panicking() {
            let kept = state.keep();
            eprintln!("control-plane logs kept in {}", kept.join("logs").display());
        }
    }
}

/// A client that is never used, for the moment between starting and connecting, so that
/// the value (and its `Drop`) exists before connecting can fail.
fn placeholder_client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::new(
        "https://127.0.0.1:1"
            .parse()
            .context("parsing a placeholder URL")?,
    );
    kube::Client::try_from(config).context("creating a placeholder client")
}

async fn run(cmd: Command, limit: Duration, what: &str) -> anyhow::Result<Output> {
    run_with_input(cmd, limit, what, None).await
}

async fn run_with_input(
    mut cmd: Command,
    limit: Duration,
    what: &str,
    input: Option<&str>,
) -> anyhow::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        stdin
            .write_all(text.as_bytes())
            .await
            .with_context(|| format!("writing to {what}"))?;
    }
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    Ok(Output {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Polls `check` every 250 ms until it succeeds, failing after `limit` with `what` and
/// the last error.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not within {limit:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The `weir-operator` binary under test: `$WEIR_OPERATOR_BIN`, else `target/debug`'s,
/// brought up to date first by [`build_binaries`].
pub async fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(OPERATOR_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    build_binaries().await?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace().join(dir),
        None => workspace().join("target"),
    };
    Ok(target.join("debug/weir-operator"))
}

/// Upper bound for building the binaries (a cold build of the operator takes minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// Builds the `weir-operator` and `weir` binaries once per test process: `cargo test`
/// builds only the test's own package, and a stale binary would test old code. Cargo
/// releases its build lock before it runs tests, so this nested build does not wait on it.
pub async fn build_binaries() -> anyhow::Result<()> {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_try_init(|| async { cargo_build_binaries().await.map(drop) })
        .await
        .map(|_| ())
}

/// Runs the nested `cargo build` of the binaries now and returns the packages it had to
/// compile (none when they were up to date).
pub async fn cargo_build_binaries() -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "weir-operator",
        "-p",
        "weir-pooler",
        "-p",
        "kubectl-weir",
        "--bins",
        "--message-format=json",
    ])
    .current_dir(workspace());
    for (name, _) in std::env::vars_os() {
        if set_for_tests(&name.to_string_lossy()) {
            cmd.env_remove(name);
        }
    }
    let out = run(cmd, BUILD_TIMEOUT, "cargo build --bins").await?;
    if !out.success() {
        bail!("cargo build --bins failed:\n{}", out.stderr);
    }
    Ok(out
        .stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#) && l.contains(r#""fresh":false"#))
        .filter_map(|l| {
            let (_, rest) = l.split_once(r#""package_id":""#)?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect())
}

/// Whether cargo sets the environment variable `name` for the test it runs. Build scripts
/// (ring's) depend on some of them, so a nested build that inherits them sees its
/// dependencies as changed and rebuilds them, and the next `cargo test` rebuilds them back.
fn set_for_tests(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// A running `weir-operator run`, killed on drop.
pub struct Operator {
    child: Supervised,
    dir: TempDir,
    metrics_port: u16,
    identity: String,
}

impl Operator {
    /// Starts the operator against `plane` as `identity` (its leader-election identity),
    /// with `extra` arguments after `run`.
    pub async fn start(
        plane: &ControlPlane,
        identity: &str,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let binary = operator_binary().await?;
        let dir = tempfile::Builder::new()
            .prefix("weir-operator-")
            .tempdir()
            .context("creating the operator directory")?;
        let log = std::fs::File::create(dir.path().join("operator.log"))
            .context("creating operator.log")?;
        let metrics_port = net::free_port();
        let mut cmd = child::command(&binary, None);
        cmd.arg("run")
            .arg(format!("--metrics-address=127.0.0.1:{metrics_port}"))
            .arg(format!("--leader-election-identity={identity}"))
            .args(extra)
            .env("KUBECONFIG", plane.kubeconfig())
            .env("RUST_LOG", "info,weir_operator=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        let child =
            Supervised::spawn(cmd).with_context(|| format!("starting {}", binary.display()))?;
        Ok(Operator {
            child,
            dir,
            metrics_port,
            identity: identity.to_owned(),
        })
    }

    /// The port of its `/metrics` endpoint on the loopback address.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Its leader-election identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }

    /// The process id, for reading its memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether the process still runs.
    pub fn running(&self) -> bool {
        self.child.exit().is_none()
    }

    /// Fetches its `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect((net::HOST, self.metrics_port))
            .await
            .context("connecting to the metrics endpoint")?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
            .await
            .context("requesting /metrics")?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .context("reading /metrics")?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("/metrics answered {response:?}");
        }
        Ok(response)
    }

    /// Stops it with SIGTERM (it releases its lease) and waits up to `limit`.
    pub async fn terminate(&self, limit: Duration) -> anyhow::Result<()> {
        self.child.signal(Signal::SIGTERM)?;
        match self.child.wait(limit).await {
            Some(exit) if exit.code() == Some(0) => Ok(()),
            Some(exit) => bail!("operator exited with {exit}; log:\n{}", self.log()),
            None => bail!("operator still running {limit:?} after SIGTERM"),
        }
    }

    /// Kills it with SIGKILL, as a crash or an evicted pod would end, and waits for it.
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.child.signal(Signal::SIGKILL)?;
        self.child
            .wait(Duration::from_secs(10))
            .await
            .map(|_| ())
            .context("operator did not die after SIGKILL")
    }
}

/// How a suite gets the ConnectionPool CRD into the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crd {
    /// `kubectl apply -f crds/`.
    Apply,
    /// `helm install weir charts/weir` into `weir-system` with no operator replicas: the
    /// chart's CRD, ServiceAccount and RBAC objects, as a user installs them.
    Helm,
}

/// What a suite on the kwok control plane needs before its first step.
#[derive(Debug, Clone, Copy)]
pub struct OperatorSetup<'a> {
    /// The namespace to create for the test's objects.
    pub namespace: &'a str,
    /// How the CRD is installed.
    pub crd: Crd,
    /// Credentials Secrets to create in the namespace: (Secret, username, password).
    pub credentials: &'a [(&'a str, &'a str, &'a str)],
    /// The operator's leader-election identity and its arguments after `run`.
    pub operator: (&'a str, &'a [&'a str]),
}

/// A control plane with the CRD served, a namespace, credentials and a running operator:
/// the set-up every operator suite shares.
pub struct OperatorFixture {
    /// The control plane.
    pub plane: ControlPlane,
    /// The operator under test.
    pub operator: Operator,
}

impl OperatorFixture {
    /// Starts the control plane while the binaries are brought up to date, then installs
    /// the CRD, creates the namespace and the Secrets, and starts the operator.
    pub async fn start(setup: OperatorSetup<'_>) -> anyhow::Result<OperatorFixture> {
        let (plane, _) = tokio::try_join!(ControlPlane::start(), operator_binary())?;
        let namespace = setup.namespace;
        let create = ["create", "namespace", namespace];
        tokio::try_join!(plane.kubectl_ok(&create), install_crd(&plane, setup.crd))?;
        for (secret, user, password) in setup.credentials {
            plane
                .create_credentials(namespace, secret, user, password)
                .await?;
        }
        plane.wait_for_crd().await?;
        let (identity, args) = setup.operator;
        let operator = Operator::start(&plane, identity, args).await?;
        Ok(OperatorFixture { plane, operator })
    }

    /// Stops the running operator, if it still runs, and starts a new one.
    pub async fn restart_operator(&mut self, identity: &str, args: &[&str]) -> anyhow::Result<()> {
        if self.operator.running() {
            self.operator.kill().await?;
        }
        self.operator = Operator::start(&self.plane, identity, args).await?;
        Ok(())
    }

    /// `kubectl apply` of `manifest` in `namespace`.
    pub async fn apply(&self, namespace: &str, manifest: &str) -> anyhow::Result<()> {
        let out = self
            .plane
            .kubectl_with_input(&["apply", "-n", namespace, "-f", "-"], Some(manifest))
            .await?;
        if !out.success() {
            bail!("kubectl apply failed: {}", out.stderr.trim());
        }
        Ok(())
    }
}

async fn install_crd(plane: &ControlPlane, crd: Crd) -> anyhow::Result<()> {
    match crd {
        Crd::Apply => plane
            .kubectl_ok(&["apply", "-f", "crds/connectionpools.weir.dev.yaml"])
            .await
            .map(drop),
        Crd::Helm => {
            let mut cmd = Command::new(plane.bin_dir().join("helm"));
            cmd.args([
                "install",
                "weir",
                "charts/weir",
                "--namespace",
                "weir-system",
                "--create-namespace",
                "--set",
                "replicaCount=0",
            ])
            .env("KUBECONFIG", plane.kubeconfig())
            .env("HELM_CACHE_HOME", plane.state_dir().join("helm-cache"))
            .env("HELM_CONFIG_HOME", plane.state_dir().join("helm-config"))
            .env("HELM_DATA_HOME", plane.state_dir().join("helm-data"))
            .current_dir(workspace());
            let out = run(cmd, KUBECTL_TIMEOUT, "helm install").await?;
            if !out.success() {
                bail!("helm install failed: {}", out.stderr);
            }
            Ok(())
        }
    }
}

/// A pgbouncer.ini rendered for a pod, adapted to run as a local process: the listening
/// ports become `{port}` (filled in by [`crate::weir::WeirProcess`]) and `http_port`, and
/// `auth_file` points at `{dir}/userlist.txt`, where the harness writes the Secret's file
/// instead of the kubelet's mount. Every other line stays as rendered. Fails if a line to
/// adapt is missing, which would mean the rendering changed shape.
pub fn localize_pgbouncer_ini(rendered: &str, http_port: u16) -> anyhow::Result<String> {
    let mut seen = [false; 3];
    let lines: Vec<String> = rendered
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            match key {
                "listen_port" => {
                    seen[0] = true;
                    "listen_port = {port}".to_owned()
                }
                "http_port" => {
                    seen[1] = true;
                    format!("http_port = {http_port}")
                }
                "auth_file" => {
                    seen[2] = true;
                    "auth_file = {dir}/userlist.txt".to_owned()
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    if seen != [true; 3] {
        bail!("the rendered pgbouncer.ini lacks listen_port, http_port or auth_file:\n{rendered}");
    }
    Ok(lines.join("\n") + "\n")
}

/// Runs one step of an e2e suite and prints how long it took.
pub async fn timed_step(
    name: &str,
    step: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let result = step.await;
    eprintln!("step {name}: {:?}", started.elapsed());
    result
}

/// Fails the test for a step that failed, with the end of the operator's log.
pub fn step_failed(name: &str, error: &anyhow::Error, log: &str) -> ! {
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "step {name} failed: {error:#}\n--- operator log (end) ---\n{}",
        tail.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nested_build_drops_what_cargo_sets_for_tests() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ] {
            assert!(set_for_tests(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "PATH",
            "CC",
        ] {
            assert!(!set_for_tests(name), "{name}");
        }
    }

    #[test]
    fn a_pod_config_is_localized_line_by_line() {
        let rendered = "[databases]\norders = host=db port=5432\n\n[pgbouncer]\nlisten_addr = *\n\
                        listen_port = 6432\nauth_file = /etc/weir/auth/userlist.txt\nhttp_port = 8080\n";
        let local = localize_pgbouncer_ini(rendered, 18080).unwrap();
        assert_eq!(
            local,
            "[databases]\norders = host=db port=5432\n\n[pgbouncer]\nlisten_addr = *\n\
             listen_port = {port}\nauth_file = {dir}/userlist.txt\nhttp_port = 18080\n"
        );
        assert!(localize_pgbouncer_ini("[pgbouncer]\nlisten_port = 1\n", 1).is_err());
    }
}
