//! pgbench through the pooler: the select-only and TPC-B scripts, simple and extended
//! protocol, transaction and session mode, with zero failed transactions.

use weir_tests::fixture::{Fixture, Options};
use weir_tests::postgres::parse_pgbench;

async fn initialised(opts: Options) -> Fixture {
    let fx = Fixture::start(opts).await.expect("fixture");
    let init = fx
        .pgbench_direct(&["-i", "-q", "-s", "2"])
        .await
        .expect("pgbench -i");
    assert!(init.success(), "pgbench -i failed: {}", init.stderr);
    fx
}

async fn run(fx: &Fixture, args: &[&str]) {
    let out = fx.pgbench(args).await.expect("pgbench");
    assert!(
        out.success(),
        "pgbench {args:?} failed:\n{}\n{}\nweir log:\n{}",
        out.stdout,
        out.stderr,
        fx.weir.log()
    );
    let summary = parse_pgbench(&out.stdout).expect("a pgbench report");
    assert!(summary.transactions > 0, "no transactions: {}", out.stdout);
    assert_eq!(summary.failed, 0, "failed transactions: {}", out.stdout);
    assert!(summary.tps > 0.0);
}

#[tokio::test]
async fn select_only_and_tpcb_in_transaction_mode() {
    let fx = initialised(Options::mode("transaction", 5)).await;
    run(&fx, &["-n", "-S", "-c", "20", "-j", "2", "-t", "200"]).await;
    run(
        &fx,
        &[
            "-n", "-S", "-M", "extended", "-c", "20", "-j", "2", "-t", "200",
        ],
    )
    .await;
    run(&fx, &["-n", "-c", "20", "-j", "2", "-t", "100"]).await;
    let servers = fx.server_connections().await.expect("count");
    assert!(servers <= 5, "{servers} server connections for a pool of 5");
}

#[tokio::test]
async fn tpcb_in_session_mode() {
    let fx = initialised(Options::mode("session", 10)).await;
    run(&fx, &["-n", "-c", "8", "-j", "2", "-t", "100"]).await;
    run(
        &fx,
        &[
            "-n", "-S", "-M", "prepared", "-c", "8", "-j", "2", "-t", "200",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_new_connection_per_transaction() {
    let fx = initialised(Options::mode("transaction", 4)).await;
    // -C: connect, authenticate with SCRAM, run one transaction, disconnect — every time.
    run(&fx, &["-n", "-S", "-C", "-c", "8", "-j", "2", "-t", "50"]).await;
}

#[tokio::test]
async fn statement_mode_runs_the_select_only_script() {
    let fx = initialised(Options::mode("statement", 3)).await;
    run(&fx, &["-n", "-S", "-c", "10", "-j", "2", "-t", "200"]).await;
}
