//! `weir`: the pooler binary, invoked like PgBouncer: `weir [-d] [-q] [-v] config.ini`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::prelude::*;

use weir_pooler::app::{self, Pooler, ShutdownMode};
use weir_pooler::config::Config;
use weir_pooler::listener::Listeners;
use weir_pooler::process::{self, PidFile};

/// mimalloc instead of glibc's malloc (see `allocator`).
#[global_allocator]
static ALLOCATOR: weir_pooler::allocator::Allocator = weir_pooler::allocator::Allocator;

/// A PgBouncer-compatible PostgreSQL connection pooler.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Args {
    /// Run in the background (requires `pidfile` in the configuration, as in PgBouncer).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Do not log to standard error.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Log more; repeat for even more.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// This process's host in `[peers]` (the operator passes the pod IP): when `peer_id` is
    /// 0, the peer id is the key of the `[peers]` entry with this host, and the process is
    /// not ready until there is one.
    #[arg(long = "peer-address", value_name = "HOST")]
    peer_address: Option<String>,
    /// The configuration file, in pgbouncer.ini format.
    config: PathBuf,
}

fn main() -> ExitCode {
    let small_pages = weir_pooler::allocator::keep_small_pages();
    let args = Args::parse();
    let loaded = match Config::load(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("weir: {e}");
            return ExitCode::from(1);
        }
    };
    // As PgBouncer: an unreadable auth_file leaves no users to log in, and weir still starts.
    let (secrets, unreadable) = match app::load_secrets(&loaded.config) {
        Ok(s) => (s, None),
        Err(e) => (Default::default(), Some(e)),
    };
    if let Err(e) = init_logging(&args, &loaded.config) {
        eprintln!("weir: {e:#}");
        return ExitCode::from(1);
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = small_pages {
        tracing::warn!("could not turn off transparent huge pages for the heap: {e}");
    }
    if let Some(e) = unreadable {
        tracing::warn!("{e}; no user can log in until a reload reads it");
    }
    let tls = match weir_pooler::tls::Tls::load(&loaded.config.pgbouncer) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("weir: {e}");
            return ExitCode::from(1);
        }
    };
    // PgBouncer's order: switch user, check the pid file, go to the background, listen,
    // write the pid file (the TCP ports accept only after it is written).
    if let Some(user) = loaded
        .config
        .pgbouncer
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        if let Err(e) = process::change_user(user) {
            tracing::error!("{e}");
            eprintln!("weir: {e}");
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &loaded.config.pgbouncer.pidfile {
        if let Err(e) = process::check_pidfile(path) {
            tracing::error!("{e}");
            eprintln!("weir: {e}");
            return ExitCode::from(1);
        }
    }
    if args.daemon {
        if loaded.config.pgbouncer.pidfile.is_none() {
            tracing::error!("daemon needs pidfile configured");
            eprintln!("weir: daemon needs pidfile configured");
            return ExitCode::from(1);
        }
        if let Err(e) = nix::unistd::daemon(true, false) {
            eprintln!("weir: cannot daemonize: {e}");
            return ExitCode::from(1);
        }
    }
    raise_fd_limit();
    let (runtime, workers) =
        match weir_pooler::runtime::build(loaded.config.pgbouncer.worker_threads) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("weir: cannot start the runtime: {e}");
                return ExitCode::from(1);
            }
        };
    tracing::info!(
        worker_threads = workers,
        scheduler = if workers == 1 {
            "current-thread"
        } else {
            "multi-thread"
        },
        "runtime started"
    );
    let pooler = Pooler::new(
        &args.config,
        loaded.config,
        loaded.file_digest,
        secrets,
        tls,
        args.peer_address.clone(),
    );
    match runtime.block_on(run(pooler)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weir: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Every client and server connection is a file descriptor; the default soft limit (often
/// 1024) would cap `max_client_conn` far below what the hard limit allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "could not raise the open-file limit");
            }
        }
    }
}

fn init_logging(args: &Args, config: &Config) -> anyhow::Result<()> {
    let level = match (args.quiet, args.verbose, config.pgbouncer.verbose) {
        (_, 0, 0) => "info",
        (_, 1, _) | (_, 0, 1) => "debug",
        _ => "trace",
    };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("weir_pooler={level},weir={level},warn"))
        })
    };
    let stderr = (!args.quiet).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let file = match &config.pgbouncer.logfile {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open logfile {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(f))
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}

async fn run(pooler: Arc<Pooler>) -> anyhow::Result<()> {
    let config = pooler.config();
    // Bound before the PostgreSQL side answers, so that a process seen listening serves both.
    let redis = match pooler.redis() {
        Some(proxy) => {
            let sockets = proxy
                .bind(&config.pgbouncer.listen_addr)
                .await
                .context("cannot open the Redis listening sockets")?;
            for s in &sockets {
                tracing::info!(addr = %s.local_addr()?, "listening for Redis clients");
            }
            Some((proxy.clone(), sockets))
        }
        None => None,
    };
    let bound = Listeners::bind(&config.pgbouncer)
        .await
        .context("cannot open the listening sockets")?;
    let _pidfile = match &config.pgbouncer.pidfile {
        Some(p) => Some(PidFile::write(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let addrs = bound.tcp_local_addrs();
    // Last: a client that reaches the TCP port finds the Unix socket and the pid file made.
    let listeners = bound
        .listen()
        .context("cannot open the listening sockets")?;
    for addr in addrs {
        tracing::info!(%addr, "listening");
    }
    if !config.pgbouncer.unix_socket_dir.is_empty() {
        tracing::info!(dir = %config.pgbouncer.unix_socket_dir, "listening on a unix socket");
    }
    let http = weir_pooler::http::bind(pooler.as_ref())
        .await
        .context("cannot open the HTTP endpoint")?;
    if let Some(l) = &http {
        tracing::info!(addr = %l.local_addr()?, "HTTP endpoint (metrics, health, status)");
    }
    let shutdown_timeout = config.pgbouncer.shutdown_timeout;
    drop(config);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let accepting = tokio::spawn(listeners.run(pooler.clone()));
    if let Some((proxy, sockets)) = redis {
        tokio::spawn(proxy.run(sockets));
    }
    if let Some(l) = http {
        tokio::spawn(weir_pooler::http::serve(l, pooler.clone()));
    }
    tokio::spawn(weir_pooler::reload::watch_files(pooler.clone()));
    tokio::spawn(weir_pooler::admin::stats::sample(pooler.clone()));
    let mode = loop {
        tokio::select! {
            _ = term.recv() => break ShutdownMode::WaitForClients,
            _ = int.recv() => break ShutdownMode::WaitForServers,
            _ = quit.recv() => break ShutdownMode::Now,
            _ = hup.recv() => reload(&pooler),
            mode = pooler.shutdown_mode() => break mode,
        }
    };
    pooler.shut_down(mode);
    let _ = accepting.await;
    match mode {
        ShutdownMode::Now => tracing::info!("shutting down at once"),
        ShutdownMode::WaitForClients => {
            tracing::info!("shutting down once clients have left (new clients refused, running transactions finish)");
            wait_for(&pooler, shutdown_timeout, &mut quit, "clients", |p| {
                p.client_count() + p.redis_client_count()
            })
            .await;
        }
        ShutdownMode::WaitForServers => {
            tracing::info!("shutting down once server connections are released (pools paused)");
            pooler.set_paused(None, true);
            wait_for(
                &pooler,
                shutdown_timeout,
                &mut quit,
                "lent server connections",
                |p| p.pools().iter().map(|pool| pool.in_use()).sum(),
            )
            .await;
        }
    }
    Ok(())
}

/// Waits until `left` counts nothing, at most `shutdown_timeout` (zero: no limit); SIGQUIT
/// cuts it short.
async fn wait_for(
    pooler: &Pooler,
    shutdown_timeout: std::time::Duration,
    quit: &mut tokio::signal::unix::Signal,
    what: &str,
    left: impl Fn(&Pooler) -> usize,
) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let n = left(pooler);
        if n == 0 {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "drained; exiting"
            );
            return;
        }
        if !shutdown_timeout.is_zero() && started.elapsed() >= shutdown_timeout {
            tracing::warn!(left = n, what, "shutdown_timeout reached; exiting");
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = quit.recv() => {
                tracing::info!(left = n, what, "SIGQUIT: exiting at once");
                return;
            }
        }
    }
}

/// SIGHUP: re-read the configuration and auth file; new clients and new pools use them.
fn reload(pooler: &Pooler) {
    match pooler.reload() {
        Ok((changed, warnings)) => {
            if changed {
                for w in warnings {
                    tracing::warn!("{w}");
                }
            }
        }
        Err(e) => tracing::error!("reload failed, keeping the old configuration: {e}"),
    }
}
