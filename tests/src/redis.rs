//! A real `redis-server` (Debian's) as a child process on a free loopback port, in a temporary
//! directory and without persistence, and a small RESP client that speaks raw bytes so tests
//! can say exactly what goes over the wire.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::child::{self, Supervised};
use crate::net;

/// How long redis-server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one reply may take before the test fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running redis-server.
pub struct RedisServer {
    port: u16,
    _child: Supervised,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server with `extra` arguments (`--requirepass x`, ...) added to a
    /// no-persistence configuration; returns once it answers PING.
    pub async fn start(extra: &[&str]) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("weir-redis-")
            .tempdir()
            .context("creating the redis directory")?;
        for _ in 0..3 {
            let port = net::free_port();
            let log = std::fs::File::create(dir.path().join("redis.log"))?;
            let mut cmd = child::command("redis-server", None);
            cmd.args(["--port", &port.to_string(), "--bind", net::HOST])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--maxclients", "4064", "--protected-mode", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let child = Supervised::spawn(cmd).context("starting redis-server")?;
            let deadline = Instant::now() + LISTEN_TIMEOUT;
            while child.exit().is_none() && Instant::now() < deadline {
                if net::wait_for_port(port, Duration::from_millis(100))
                    .await
                    .is_ok()
                {
                    return Ok(RedisServer {
                        port,
                        _child: child,
                        _dir: dir,
                    });
                }
            }
            let log = std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default();
            if !log.contains("Address already in use") {
                bail!("redis-server did not start; log:\n{log}");
            }
        }
        bail!("redis-server found no free port")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, as `[redis] server` takes it.
    pub fn addr(&self) -> String {
        format!("{}:{}", net::HOST, self.port)
    }

    /// A client connected straight to the server (with `auth` as `AUTH` arguments, if any).
    pub async fn direct(&self, auth: &[&str]) -> anyhow::Result<Resp> {
        let mut c = Resp::connect(self.port).await?;
        if !auth.is_empty() {
            let mut args = vec!["AUTH"];
            args.extend(auth);
            c.ok(&args).await?;
        }
        Ok(c)
    }

    /// Connections the server has from clients other than the one asking, by `CLIENT LIST`.
    pub async fn clients(&self, auth: &[&str]) -> anyhow::Result<usize> {
        let mut c = self.direct(auth).await?;
        let list = c.cmd(&["CLIENT", "LIST"]).await?.text();
        Ok(list.lines().filter(|l| !l.is_empty()).count() - 1)
    }

    /// Waits until [`RedisServer::clients`] satisfies `want`, returning the last count.
    pub async fn wait_clients(
        &self,
        auth: &[&str],
        want: impl Fn(usize) -> bool,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let n = self.clients(auth).await?;
            if want(n) {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("the server still has {n} clients");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One RESP reply, RESP2 or RESP3.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+text`
    Simple(String),
    /// `-text` or `!text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` (None: the null bulk)
    Bulk(Option<Vec<u8>>),
    /// `*n`, `~n` (None: the null array)
    Array(Option<Vec<Reply>>),
    /// `%n`
    Map(Vec<(Reply, Reply)>),
    /// `>n`
    Push(Vec<Reply>),
    /// `_`
    Null,
    /// `,` `#` `(` `=`: kept as text
    Other(String),
}

impl Reply {
    /// The reply as text: a simple string, bulk, error or other scalar.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) | Reply::Other(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// A raw RESP connection.
pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects to a loopback port.
    pub async fn connect(port: u16) -> anyhow::Result<Resp> {
        let stream = TcpStream::connect((net::HOST, port))
            .await
            .with_context(|| format!("connecting to port {port}"))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream,
            buf: Vec::new(),
        })
    }

    /// The multibulk encoding of a command.
    pub fn encode(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends a command without waiting for its reply (pipelining).
    pub async fn send(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.send_raw(&Self::encode(args)).await
    }

    /// Sends a command and reads its reply.
    pub async fn cmd(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        self.send(args).await?;
        self.read().await
    }

    /// Sends a command and fails unless the reply is `+OK`.
    pub async fn ok(&mut self, args: &[&str]) -> anyhow::Result<()> {
        match self.cmd(args).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => bail!("{args:?} answered {other:?}"),
        }
    }

    /// Reads the next reply, failing after 30 s.
    pub async fn read(&mut self) -> anyhow::Result<Reply> {
        tokio::time::timeout(REPLY_TIMEOUT, self.read_untimed())
            .await
            .context("no reply in time")?
    }

    /// Reads the next reply, however long it takes (a blocked BLPOP).
    pub async fn read_untimed(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits until the peer closes the connection, failing after 30 s; bytes read on the way
    /// are returned.
    pub async fn closed(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.buf);
        let work = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, work)
            .await
            .context("the connection stayed open")?;
        Ok(rest)
    }
}

fn line(buf: &[u8]) -> Option<(&str, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((std::str::from_utf8(&buf[1..end]).ok()?, end + 2))
}

/// Parses one reply at the start of `buf`: `None` if incomplete.
fn parse(buf: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((head, mut used)) = line(buf) else {
        return Ok(None);
    };
    let head = head.to_owned();
    let n = || {
        head.parse::<i64>()
            .with_context(|| format!("bad length {head:?}"))
    };
    let reply = match kind {
        b'+' => Reply::Simple(head),
        b'-' => Reply::Error(head),
        b':' => Reply::Int(n()?),
        b'_' => Reply::Null,
        b',' | b'#' | b'(' => Reply::Other(head),
        b'$' | b'!' | b'=' => {
            let len = n()?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = len as usize;
                if buf.len() < used + len + 2 {
                    return Ok(None);
                }
                let data = buf[used..used + len].to_vec();
                used += len + 2;
                match kind {
                    b'!' => Reply::Error(String::from_utf8_lossy(&data).into_owned()),
                    b'=' => Reply::Other(String::from_utf8_lossy(&data).into_owned()),
                    _ => Reply::Bulk(Some(data)),
                }
            }
        }
        b'*' | b'~' | b'>' | b'%' => {
            let count = n()?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), used)));
            }
            let items = if kind == b'%' { count * 2 } else { count };
            let mut out = Vec::new();
            for _ in 0..items {
                let Some((r, u)) = parse(&buf[used..])? else {
                    return Ok(None);
                };
                out.push(r);
                used += u;
            }
            match kind {
                b'>' => Reply::Push(out),
                b'%' => {
                    let mut pairs = Vec::new();
                    let mut it = out.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Reply::Map(pairs)
                }
                _ => Reply::Array(Some(out)),
            }
        }
        other => bail!("unknown reply type {:?}", other as char),
    };
    Ok(Some((reply, used)))
}

/// A weir configuration with a `[redis]` section for `server` on `redis_port`, the
/// PostgreSQL side listening on `{port}` with nothing behind it; `extra` goes into `[redis]`.
pub fn weir_ini(server: &str, redis_port: u16, extra: &str) -> String {
    format!(
        "[databases]\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir =\n\
         auth_type = any\n\
         [redis]\n\
         listen_port = {redis_port}\n\
         server = {server}\n\
         {extra}"
    )
}

/// A redis-server with a weir in front of it.
pub struct Pair {
    /// The server.
    pub redis: RedisServer,
    /// The pooler.
    pub weir: crate::weir::WeirProcess,
    /// weir's RESP port.
    pub port: u16,
    /// weir's HTTP port (`/metrics`, `/status`).
    pub http_port: u16,
    /// What goes into `[redis]` besides listen_port and server, kept for reloads.
    pub extra: String,
}

impl Pair {
    /// Starts redis-server with `redis_args`, then weir with `extra` in `[redis]` and
    /// `userlist` as its `userlist.txt` (in `{dir}`).
    pub async fn start(redis_args: &[&str], extra: &str, userlist: &str) -> anyhow::Result<Pair> {
        let redis = RedisServer::start(redis_args).await?;
        let port = net::free_port();
        let http_port = net::free_port();
        let ini = Self::ini(&redis, port, http_port, extra);
        let weir = crate::weir::WeirProcess::start(&ini, userlist).await?;
        Ok(Pair {
            redis,
            weir,
            port,
            http_port,
            extra: extra.to_owned(),
        })
    }

    fn ini(redis: &RedisServer, port: u16, http_port: u16, extra: &str) -> String {
        let ini = weir_ini(&redis.addr(), port, extra);
        ini.replace(
            "[redis]\n",
            &format!("http_listen_addr = 127.0.0.1\nhttp_port = {http_port}\n[redis]\n"),
        )
    }

    /// A client of weir's RESP listener.
    pub async fn client(&self) -> anyhow::Result<Resp> {
        Resp::connect(self.port).await
    }

    /// Rewrites `[redis]` with `extra` and reloads with SIGHUP, returning once `/status`
    /// shows the new configuration generation.
    pub async fn reload(&mut self, extra: &str) -> anyhow::Result<()> {
        let before = self.status().await?["config_generation"].as_u64();
        self.weir
            .rewrite_config(&Self::ini(&self.redis, self.port, self.http_port, extra))?;
        self.weir.signal(crate::weir::Signal::SIGHUP)?;
        self.extra = extra.to_owned();
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while self.status().await?["config_generation"].as_u64() == before {
            if Instant::now() > deadline {
                bail!("the reload did not happen; log:\n{}", self.weir.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// weir's `/status` document.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &http_get(self.http_port, "/status").await?,
        )?)
    }

    /// The first Redis backend's entry of `/status`.
    pub async fn backend(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self.status().await?["redis"]["backends"][0].clone())
    }

    /// Waits until the backend's `/status` entry satisfies `want`.
    pub async fn wait_backend(
        &self,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let b = self.backend().await?;
            if want(&b) {
                return Ok(b);
            }
            if Instant::now() > deadline {
                bail!("backend status stayed {b}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `INFO stats` `total_connections_received` of the server: connections ever opened,
    /// the one asking included.
    pub async fn connections_received(&self) -> anyhow::Result<u64> {
        let mut c = self.redis.direct(&[]).await?;
        let info = c.cmd(&["INFO", "stats"]).await?.text();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .context("no total_connections_received in INFO")
    }
}

/// A plain HTTP/1.0 GET on loopback, returning the body.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect((net::HOST, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// A Redis Cluster of masters without replicas, each a [`RedisServer`] started with
/// `--cluster-enabled yes`, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The masters, in the order `redis-cli` gave them slots (0-5460, 5461-10922, ...).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes and creates the cluster; returns once every node says
    /// `cluster_state:ok` and knows every other.
    pub async fn start(masters: usize) -> anyhow::Result<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            nodes.push(
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
                .await?,
            );
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(REPLY_TIMEOUT, create.output())
            .await
            .context("redis-cli --cluster create did not finish")??;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        for node in &cluster.nodes {
            loop {
                let info = node
                    .direct(&[])
                    .await?
                    .cmd(&["CLUSTER", "INFO"])
                    .await?
                    .text();
                let known = format!("cluster_known_nodes:{masters}");
                if info.contains("cluster_state:ok") && info.contains(&known) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the cluster did not come up: {info}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// `host:port,host:port,...`, as `[redis] cluster_nodes` takes it.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub async fn id(&self, node: usize) -> anyhow::Result<String> {
        Ok(self.nodes[node]
            .direct(&[])
            .await?
            .cmd(&["CLUSTER", "MYID"])
            .await?
            .text())
    }

    /// Which node serves `slot`, by asking node 0 (`CLUSTER SHARDS` would do too).
    pub async fn owner(&self, key: &str) -> anyhow::Result<usize> {
        let mut c = self.nodes[0].direct(&[]).await?;
        let slot = match c.cmd(&["CLUSTER", "KEYSLOT", key]).await? {
            Reply::Int(n) => n,
            other => bail!("CLUSTER KEYSLOT answered {other:?}"),
        };
        let Reply::Array(Some(ranges)) = c.cmd(&["CLUSTER", "SLOTS"]).await? else {
            bail!("CLUSTER SLOTS is not an array");
        };
        for range in ranges {
            let Reply::Array(Some(r)) = range else {
                continue;
            };
            let (Some(Reply::Int(a)), Some(Reply::Int(b)), Some(Reply::Array(Some(m)))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if (*a..=*b).contains(&slot) {
                let port = m.get(1).map(Reply::text).unwrap_or_default();
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port().to_string() == port)
                    .context("an unknown node owns the slot");
            }
        }
        bail!("no node owns slot {slot}")
    }

    /// A key (`prefix` and a number) that hashes to a slot node `node` serves.
    pub async fn key_on(&self, node: usize, prefix: &str) -> anyhow::Result<String> {
        for i in 0.. {
            let key = format!("{prefix}{i}");
            if self.owner(&key).await? == node {
                return Ok(key);
            }
        }
        unreachable!()
    }
}

/// A Redis Cluster with a weir in front of it, which is given the nodes as `cluster_nodes`.
pub struct ClusterPair {
    /// The cluster.
    pub cluster: RedisCluster,
    /// The pooler.
    pub weir: crate::weir::WeirProcess,
    /// weir's RESP port.
    pub port: u16,
    /// weir's HTTP port (`/metrics`, `/status`).
    pub http_port: u16,
}

impl ClusterPair {
    /// Starts a cluster of `masters` and a weir with `extra` in `[redis]`.
    pub async fn start(masters: usize, extra: &str) -> anyhow::Result<ClusterPair> {
        Self::front(RedisCluster::start(masters).await?, extra).await
    }

    /// Stops this weir and starts another with `extra` in front of the same cluster.
    pub async fn restart(self, extra: &str) -> anyhow::Result<ClusterPair> {
        let ClusterPair { cluster, weir, .. } = self;
        drop(weir);
        Self::front(cluster, extra).await
    }

    async fn front(cluster: RedisCluster, extra: &str) -> anyhow::Result<ClusterPair> {
        let port = net::free_port();
        let http_port = net::free_port();
        let ini = weir_ini("-", port, extra)
            .replace(
                "server = -\n",
                &format!("cluster_nodes = {}\n", cluster.seeds()),
            )
            .replace(
                "[redis]\n",
                &format!("http_listen_addr = 127.0.0.1\nhttp_port = {http_port}\n[redis]\n"),
            );
        let weir = crate::weir::WeirProcess::start(&ini, "").await?;
        Ok(ClusterPair {
            cluster,
            weir,
            port,
            http_port,
        })
    }

    /// A client of weir's RESP listener.
    pub async fn client(&self) -> anyhow::Result<Resp> {
        Resp::connect(self.port).await
    }

    /// weir's `/status` document.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &http_get(self.http_port, "/status").await?,
        )?)
    }
}
