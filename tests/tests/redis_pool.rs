//! The Redis data path's connection economy against a real redis-server: ordinary commands of
//! many clients over a few shared connections, exclusive connections pooled or not (counted
//! on the server with `CLIENT LIST` and `INFO stats`), 1,000 blocked consumers over a small
//! budget, concurrent optimistic transactions, and each of Tair's four settings changed live
//! with SIGHUP.

use std::collections::BTreeSet;

use weir_tests::redis::{Pair, Reply};

const CLIENTS: usize = 10;
const ROUNDS: usize = 20;

/// Ten clients, each running `ROUNDS` WATCH/MULTI/EXEC transactions and ordinary commands;
/// returns how many connections the server received meanwhile.
async fn ten_clients_transact(pair: &Pair) -> u64 {
    let before = pair.connections_received().await.expect("info");
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut c = pair.client().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let key = format!("k{i}");
                c.ok(&["SET", &key, &r.to_string()]).await.expect("set");
                c.ok(&["WATCH", &key]).await.expect("watch");
                c.ok(&["MULTI"]).await.expect("multi");
                assert_eq!(
                    c.cmd(&["INCR", &key]).await.expect("incr"),
                    Reply::Simple("QUEUED".into())
                );
                let exec = c.cmd(&["EXEC"]).await.expect("exec");
                assert_eq!(exec, Reply::Array(Some(vec![Reply::Int(r as i64 + 1)])));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // Less the connection that asked.
    pair.connections_received().await.expect("info") - before - 1
}

#[tokio::test]
async fn ten_clients_share_two_connections_and_the_pool_reuses_exclusive_ones() {
    // Pool off: every transaction opens (and closes) a connection of its own.
    let off = Pair::start(&[], "", "").await.expect("start");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = off.client().await.expect("connect");
        c.ok(&["SET", &format!("s{i}"), "v"]).await.expect("set");
        clients.push(c);
    }
    // Ten clients with ordinary commands: the two shared connections (the default).
    assert_eq!(off.redis.clients(&[]).await.unwrap(), 2);
    let opened_off = ten_clients_transact(&off).await;
    assert!(
        opened_off >= (CLIENTS * ROUNDS) as u64,
        "pool off opened {opened_off}"
    );
    off.redis
        .wait_clients(&[], |n| n == 2)
        .await
        .expect("exclusive ones closed");
    let b = off.backend().await.unwrap();
    assert_eq!(
        (b["pool_hits"].as_u64(), b["shared"].as_u64()),
        (Some(0), Some(2))
    );

    // Pool on: at most one exclusive connection per client, reused ever after.
    let on = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let opened_on = ten_clients_transact(&on).await;
    assert!(
        opened_on <= (CLIENTS + 2) as u64,
        "pool on opened {opened_on}"
    );
    let b = on.backend().await.unwrap();
    assert!(
        b["pool_hits"].as_u64().unwrap() >= ((ROUNDS - 1) * CLIENTS) as u64,
        "{b}"
    );
    assert_eq!(b["exclusive_in_use"].as_u64(), Some(0), "{b}");
    let idle = b["exclusive_idle"].as_u64().unwrap() as usize;
    assert_eq!(on.redis.clients(&[]).await.unwrap(), 2 + idle);
    println!("connections opened for {CLIENTS} clients x {ROUNDS} transactions: pool off {opened_off}, pool on {opened_on}");
}

#[tokio::test]
async fn a_thousand_blpop_consumers_over_a_small_budget() {
    const CONSUMERS: usize = 1000;
    let pair = Pair::start(
        &[],
        "private_conn_pool_enabled = 1\nmax_server_connections = 20\n",
        "",
    )
    .await
    .expect("start");
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let mut c = pair.client().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            c.send(&["BLPOP", "queue", "0"]).await.expect("send");
            match c.read_untimed().await.expect("reply") {
                Reply::Array(Some(v)) => v[1].text(),
                other => panic!("BLPOP answered {other:?}"),
            }
        }));
    }
    // The budget leaves room for the two shared connections: 18 consumers block in Redis.
    pair.wait_backend(|b| b["exclusive_in_use"] == 18 && b["waits"].as_u64() > Some(0))
        .await
        .expect("consumers blocked");
    let blocked = pair.redis.clients(&[]).await.unwrap();
    assert!(blocked <= 20, "{blocked} server connections");
    let mut producer = pair.redis.direct(&[]).await.unwrap();
    let items: Vec<String> = (0..CONSUMERS).map(|i| i.to_string()).collect();
    let mut rpush = vec!["RPUSH", "queue"];
    rpush.extend(items.iter().map(String::as_str));
    producer.cmd(&rpush).await.expect("rpush");
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(t.await.expect("consumer"));
    }
    assert_eq!(
        got.len(),
        CONSUMERS,
        "every item went to exactly one consumer"
    );
    assert!(pair.redis.clients(&[]).await.unwrap() <= 21);
}

#[tokio::test]
async fn concurrent_optimistic_transactions_have_no_cross_client_effects() {
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = pair.client().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < ROUNDS {
                c.ok(&["WATCH", "counter"]).await.unwrap();
                let n: i64 = match c.cmd(&["GET", "counter"]).await.unwrap() {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
                    _ => 0,
                };
                c.ok(&["MULTI"]).await.unwrap();
                c.cmd(&["SET", "counter", &(n + 1).to_string()])
                    .await
                    .unwrap();
                if let Reply::Array(Some(_)) = c.cmd(&["EXEC"]).await.unwrap() {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let mut c = pair.client().await.unwrap();
    let total = c.cmd(&["GET", "counter"]).await.unwrap().text();
    assert_eq!(total, (CLIENTS * ROUNDS).to_string());

    // A client leaving with a WATCH in place leaves nothing for the next one.
    let mut a = pair.client().await.unwrap();
    a.ok(&["WATCH", "w"]).await.unwrap();
    drop(a);
    pair.wait_backend(|b| b["exclusive_in_use"] == 0)
        .await
        .unwrap();
    pair.redis
        .direct(&[])
        .await
        .unwrap()
        .ok(&["SET", "w", "changed"])
        .await
        .unwrap();
    for _ in 0..CLIENTS {
        let mut b = pair.client().await.unwrap();
        b.ok(&["MULTI"]).await.unwrap();
        b.cmd(&["SET", "w", "mine"]).await.unwrap();
        let exec = b.cmd(&["EXEC"]).await.unwrap();
        assert_eq!(exec, Reply::Array(Some(vec![Reply::Simple("OK".into())])));
    }
}

/// One short exclusive use: a transaction.
async fn transact(pair: &Pair) {
    let mut c = pair.client().await.expect("connect");
    c.ok(&["MULTI"]).await.expect("multi");
    c.cmd(&["PING"]).await.expect("ping");
    c.cmd(&["EXEC"]).await.expect("exec");
}

#[tokio::test]
async fn each_pool_setting_changes_live_with_sighup() {
    let mut pair = Pair::start(&[], "", "").await.expect("start");
    // private_conn_pool_enabled = 0: each use opens a connection.
    let before = pair.connections_received().await.unwrap();
    for _ in 0..3 {
        transact(&pair).await;
    }
    assert!(pair.connections_received().await.unwrap() - before >= 3);

    // ... = 1: the first use opens one, the others reuse it.
    pair.reload("private_conn_pool_enabled = 1\n")
        .await
        .unwrap();
    transact(&pair).await;
    let before = pair.connections_received().await.unwrap();
    for _ in 0..3 {
        transact(&pair).await;
    }
    // Only the connection that asks is new.
    assert_eq!(pair.connections_received().await.unwrap(), before + 1);
    let b = pair.backend().await.unwrap();
    assert!(b["pool_hits"].as_u64() >= Some(3), "{b}");

    // private_conn_pool_min_idle_per_db: opened in advance.
    pair.reload("private_conn_pool_enabled = 1\nprivate_conn_pool_min_idle_per_db = 3\n")
        .await
        .unwrap();
    pair.wait_backend(|b| b["exclusive_idle"] == 3)
        .await
        .unwrap();

    // private_conn_pool_max_idle_per_db: returned above it, a connection closes.
    pair.reload("private_conn_pool_enabled = 1\nprivate_conn_pool_max_idle_per_db = 1\n")
        .await
        .unwrap();
    // The three idle ones above the new maximum are closed at the next maintenance.
    pair.wait_backend(|b| b["exclusive_idle"] == 1)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = pair.client().await.unwrap();
        c.ok(&["MULTI"]).await.unwrap();
        held.push(c);
    }
    for mut c in held {
        c.cmd(&["EXEC"]).await.unwrap();
    }
    let b = pair
        .wait_backend(|b| b["exclusive_idle"] == 1 && b["exclusive_in_use"] == 0)
        .await
        .unwrap();
    assert!(b["short_lived_closes"].as_u64() >= Some(3), "{b}");

    // private_conn_idle_time_sec: idle ones are reaped after it (0: at once).
    pair.reload("private_conn_pool_enabled = 1\nprivate_conn_idle_time_sec = 1\n")
        .await
        .unwrap();
    let b = pair
        .wait_backend(|b| b["exclusive_idle"] == 0)
        .await
        .unwrap();
    assert!(b["idle_closes"].as_u64() >= Some(1), "{b}");
    pair.reload("private_conn_pool_enabled = 1\nprivate_conn_idle_time_sec = 0\n")
        .await
        .unwrap();
    transact(&pair).await;
    pair.wait_backend(|b| b["exclusive_idle"] == 0 && b["exclusive_in_use"] == 0)
        .await
        .unwrap();
    let shared = pair.backend().await.unwrap()["shared"].as_u64().unwrap() as usize;
    pair.redis.wait_clients(&[], |n| n == shared).await.unwrap();
}

#[tokio::test]
async fn at_the_budget_an_idle_connection_switches_database_with_select() {
    // 4 in all, room kept for 1 shared connection: 3 for exclusive ones.
    let pair = Pair::start(
        &[],
        "private_conn_pool_enabled = 1\nmax_server_connections = 4\nshared_connections = 1\n",
        "",
    )
    .await
    .expect("start");
    let mut a = pair.client().await.unwrap();
    let mut b = pair.client().await.unwrap();
    for c in [&mut a, &mut b] {
        c.ok(&["MULTI"]).await.unwrap();
    }
    for c in [&mut a, &mut b] {
        c.cmd(&["EXEC"]).await.unwrap();
    }
    pair.wait_backend(|s| s["exclusive_idle"] == 2)
        .await
        .unwrap();
    // Two idle in database 0 and database 5's shared connection fill the budget; database 5
    // has no idle connection and no room for one, so a database-0 one moves over.
    let mut c = pair.client().await.unwrap();
    c.ok(&["SELECT", "5"]).await.unwrap();
    c.ok(&["MULTI"]).await.unwrap();
    c.cmd(&["SET", "moved", "here"]).await.unwrap();
    c.cmd(&["EXEC"]).await.unwrap();
    let s = pair.backend().await.unwrap();
    assert_eq!(s["select_switches"], 1, "{s}");
    let mut direct = pair.redis.direct(&[]).await.unwrap();
    direct.ok(&["SELECT", "5"]).await.unwrap();
    assert_eq!(direct.cmd(&["GET", "moved"]).await.unwrap().text(), "here");
    assert!(pair.redis.clients(&[]).await.unwrap() <= 4);
}
