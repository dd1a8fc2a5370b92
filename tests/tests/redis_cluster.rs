//! A 3-master Redis Cluster (made in the test with `redis-cli --cluster create`) behind weir's
//! one endpoint: keys routed by hash slot, hash tags, CROSSSLOT refused as Redis Cluster does,
//! transactions bound to their first key's shard, connections counted per node with the
//! pool off and on, a slot migrated while clients write (ASK and MOVED followed, no client
//! error), and redis-cli and redis-py speaking to weir as to a standalone Redis.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use weir_tests::redis::{http_get, ClusterPair, RedisCluster, Reply, Resp};

const CLIENTS: usize = 10;
const ROUNDS: usize = 5;
const MASTERS: usize = 3;

/// `INFO stats` `total_connections_received` of each node.
async fn received(cluster: &RedisCluster) -> Vec<u64> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let mut c = node.direct(&[]).await.expect("direct");
        let info = c.cmd(&["INFO", "stats"]).await.expect("info").text();
        out.push(
            info.lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .and_then(|n| n.trim().parse().ok())
                .expect("total_connections_received"),
        );
    }
    out
}

/// Ten clients, each running `ROUNDS` WATCH/MULTI/EXEC transactions on a key of every shard;
/// returns the connections each node received meanwhile.
async fn ten_clients_transact(pair: &ClusterPair, keys: &[Vec<String>]) -> Vec<u64> {
    let before = received(&pair.cluster).await;
    let mut tasks = Vec::new();
    for client_keys in keys {
        let client_keys = client_keys.clone();
        let mut c = pair.client().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                for key in &client_keys {
                    c.ok(&["SET", key, &r.to_string()]).await.expect("set");
                    c.ok(&["WATCH", key]).await.expect("watch");
                    c.ok(&["MULTI"]).await.expect("multi");
                    assert_eq!(
                        c.cmd(&["INCR", key]).await.expect("incr"),
                        Reply::Simple("QUEUED".into())
                    );
                    let exec = c.cmd(&["EXEC"]).await.expect("exec");
                    assert_eq!(exec, Reply::Array(Some(vec![Reply::Int(r as i64 + 1)])));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let after = received(&pair.cluster).await;
    // Less the connection that asked.
    after.iter().zip(before).map(|(a, b)| a - b - 1).collect()
}

#[tokio::test]
async fn ten_clients_on_three_shards_pool_off_and_on() {
    let pair = ClusterPair::start(MASTERS, "").await.expect("start");
    let mut keys = Vec::new();
    for i in 0..CLIENTS {
        let mut per_client = Vec::new();
        for node in 0..MASTERS {
            per_client.push(
                pair.cluster
                    .key_on(node, &format!("c{i}-"))
                    .await
                    .expect("key"),
            );
        }
        keys.push(per_client);
    }

    // Ten clients connected straight to every node, as cluster clients do: 10 per node.
    let mut direct = Vec::new();
    for _ in 0..CLIENTS {
        for node in &pair.cluster.nodes {
            direct.push(node.direct(&[]).await.expect("direct"));
        }
    }
    // Waited for: the test's own earlier look-ups may still be closing.
    for node in &pair.cluster.nodes {
        node.wait_clients(&[], |n| n == CLIENTS)
            .await
            .expect("10 direct clients per node");
    }
    drop(direct);
    for node in &pair.cluster.nodes {
        node.wait_clients(&[], |n| n == 0).await.expect("closed");
    }

    // The same ten clients through weir, ordinary commands on every shard: 2 per node.
    let mut clients = Vec::new();
    for k in &keys {
        let mut c = pair.client().await.expect("connect");
        for key in k {
            c.ok(&["SET", key, "v"]).await.expect("set");
        }
        clients.push(c);
    }
    for node in &pair.cluster.nodes {
        node.wait_clients(&[], |n| n == 2)
            .await
            .expect("2 shared connections per node");
    }
    let status = pair.status().await.expect("status");
    let backends = status["redis"]["backends"].as_array().expect("backends");
    let mut addrs: Vec<_> = backends
        .iter()
        .map(|b| b["backend"].as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    let mut want: Vec<_> = pair.cluster.nodes.iter().map(|n| n.addr()).collect();
    want.sort();
    assert_eq!(addrs, want, "one backend per master");
    assert!(backends.iter().all(|b| b["shared"] == 2), "{backends:?}");
    let metrics = http_get(pair.http_port, "/metrics").await.expect("metrics");
    for addr in &want {
        let line = format!("weir_redis_server_connections{{backend=\"{addr}\",kind=\"shared\"}} 2");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }

    // Pool off: every transaction opens a connection of its own on its shard.
    let off = ten_clients_transact(&pair, &keys).await;
    for (node, n) in off.iter().enumerate() {
        assert!(
            *n >= (CLIENTS * ROUNDS) as u64,
            "pool off: node {node} got {n}"
        );
    }
    drop(clients);

    // Pool on: at most one exclusive connection per client and shard, reused, plus the two
    // shared ones and the connection that read the slot map (from the first seed).
    let pair = pair
        .restart("private_conn_pool_enabled = 1\n")
        .await
        .expect("restart");
    let on = ten_clients_transact(&pair, &keys).await;
    for (node, n) in on.iter().enumerate() {
        assert!(*n <= (CLIENTS + 3) as u64, "pool on: node {node} got {n}");
    }
    let status = pair.status().await.expect("status");
    for b in status["redis"]["backends"].as_array().expect("backends") {
        assert!(b["pool_hits"].as_u64().unwrap() > 0, "{b}");
    }
    println!(
        "connections received per node for {CLIENTS} clients x {ROUNDS} WATCH/MULTI/EXEC \
         on each of {MASTERS} shards: pool off {off:?}, pool on {on:?}"
    );
}

#[tokio::test]
async fn keys_route_by_slot_and_cross_slot_is_refused() {
    let pair = ClusterPair::start(MASTERS, "private_conn_pool_enabled = 1\n")
        .await
        .expect("start");
    let mut c = pair.client().await.expect("connect");

    // Keys of every shard, each stored on the node that serves its slot.
    for node in 0..MASTERS {
        let key = pair.cluster.key_on(node, "route-").await.unwrap();
        c.ok(&["SET", &key, "here"]).await.unwrap();
        let mut d = pair.cluster.nodes[node].direct(&[]).await.unwrap();
        assert_eq!(d.cmd(&["GET", &key]).await.unwrap().text(), "here");
    }

    // Hash tags put keys in one slot: multi-key commands work on them.
    c.ok(&["MSET", "{user1}:a", "1", "{user1}:b", "2"])
        .await
        .unwrap();
    assert_eq!(
        c.cmd(&["MGET", "{user1}:a", "{user1}:b"]).await.unwrap(),
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"1".to_vec())),
            Reply::Bulk(Some(b"2".to_vec()))
        ]))
    );
    assert_eq!(
        c.cmd(&["DEL", "{user1}:a", "{user1}:b"]).await.unwrap(),
        Reply::Int(2)
    );

    // Keys of different slots: refused with Redis Cluster's own error, and nothing is done.
    let crossslot = Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into());
    assert_eq!(
        c.cmd(&["MSET", "foo", "1", "bar", "2"]).await.unwrap(),
        crossslot
    );
    assert_eq!(c.cmd(&["MGET", "foo", "bar"]).await.unwrap(), crossslot);
    assert_eq!(c.cmd(&["DEL", "foo", "bar"]).await.unwrap(), crossslot);
    assert_eq!(c.cmd(&["EXISTS", "foo"]).await.unwrap(), Reply::Int(0));

    // Keyless commands: answered by a shard, or refused when they need them all.
    assert_eq!(
        c.cmd(&["PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    assert_eq!(c.cmd(&["ECHO", "hi"]).await.unwrap().text(), "hi");
    for cmd in [
        &["KEYS", "*"][..],
        &["DBSIZE"],
        &["SCAN", "0"],
        &["FLUSHALL"],
    ] {
        let r = c.cmd(cmd).await.unwrap();
        assert!(r.text().contains("every shard"), "{cmd:?}: {r:?}");
    }
    assert_eq!(
        c.cmd(&["SELECT", "1"]).await.unwrap(),
        Reply::Error("ERR SELECT is not allowed in cluster mode".into())
    );
    c.ok(&["SELECT", "0"]).await.unwrap();

    // A transaction begun with MULTI goes to the shard of its first key.
    c.ok(&["MULTI"]).await.unwrap();
    assert_eq!(
        c.cmd(&["SET", "{tx}a", "1"]).await.unwrap().text(),
        "QUEUED"
    );
    assert_eq!(c.cmd(&["INCR", "{tx}b"]).await.unwrap().text(), "QUEUED");
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        Reply::Array(Some(vec![Reply::Simple("OK".into()), Reply::Int(1)]))
    );
    // An empty transaction, and one discarded.
    c.ok(&["MULTI"]).await.unwrap();
    assert_eq!(c.cmd(&["EXEC"]).await.unwrap(), Reply::Array(Some(vec![])));
    c.ok(&["MULTI"]).await.unwrap();
    c.ok(&["DISCARD"]).await.unwrap();

    // A transaction whose first command has no key binds to some master: of keys on the
    // three masters, the one on that master is queued, the others are CROSSSLOT.
    c.ok(&["MULTI"]).await.unwrap();
    assert_eq!(c.cmd(&["PING"]).await.unwrap().text(), "QUEUED");
    let mut queued = 0;
    for node in 0..MASTERS {
        let key = pair.cluster.key_on(node, "bind-").await.unwrap();
        match c.cmd(&["SET", &key, "x"]).await.unwrap() {
            Reply::Simple(s) if s == "QUEUED" => queued += 1,
            other => assert_eq!(other, crossslot, "{key}"),
        }
    }
    assert_eq!(queued, 1);
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        Reply::Array(Some(vec![
            Reply::Simple("PONG".into()),
            Reply::Simple("OK".into())
        ]))
    );

    // WATCH binds to its key's slot: another slot inside is CROSSSLOT.
    c.ok(&["WATCH", "foo"]).await.unwrap();
    assert_eq!(c.cmd(&["GET", "bar"]).await.unwrap(), crossslot);
    c.ok(&["MULTI"]).await.unwrap();
    assert_eq!(c.cmd(&["SET", "foo", "x"]).await.unwrap().text(), "QUEUED");
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        Reply::Array(Some(vec![Reply::Simple("OK".into())]))
    );

    // A blocking command waits on its key's shard and is woken from another client.
    let list = pair.cluster.key_on(1, "queue-").await.unwrap();
    let mut consumer = pair.client().await.unwrap();
    consumer.send(&["BLPOP", &list, "0"]).await.unwrap();
    let mut producer = pair.client().await.unwrap();
    // The consumer may not be blocked yet; RPUSH either wakes it or leaves the item for it.
    assert_eq!(
        producer.cmd(&["RPUSH", &list, "job"]).await.unwrap(),
        Reply::Int(1)
    );
    assert_eq!(
        consumer.read().await.unwrap(),
        Reply::Array(Some(vec![
            Reply::Bulk(Some(list.clone().into_bytes())),
            Reply::Bulk(Some(b"job".to_vec()))
        ]))
    );
    // A pipeline across shards comes back in order.
    let k0 = pair.cluster.key_on(0, "p-").await.unwrap();
    let k1 = pair.cluster.key_on(1, "p-").await.unwrap();
    let k2 = pair.cluster.key_on(2, "p-").await.unwrap();
    for (i, k) in [&k0, &k1, &k2, &k0, &k1, &k2].iter().enumerate() {
        c.send(&["SET", k, &i.to_string()]).await.unwrap();
        c.send(&["GET", k]).await.unwrap();
    }
    for i in 0..6 {
        assert_eq!(c.read().await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(c.read().await.unwrap().text(), i.to_string());
    }
}

/// Migrates every key of `slot` from node `from` to node `to` as `redis-cli --cluster
/// reshard` does, calling `between` once the slot is half-way (IMPORTING/MIGRATING set).
async fn migrate<F, Fut>(
    cluster: &RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
    between: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (src_id, dst_id) = (cluster.id(from).await?, cluster.id(to).await?);
    let slot = slot.to_string();
    let mut src = cluster.nodes[from].direct(&[]).await?;
    let mut dst = cluster.nodes[to].direct(&[]).await?;
    dst.ok(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id])
        .await?;
    src.ok(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id])
        .await?;
    between().await;
    let port = cluster.nodes[to].port().to_string();
    loop {
        let Reply::Array(Some(keys)) = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "10"]).await?
        else {
            anyhow::bail!("GETKEYSINSLOT did not answer with keys");
        };
        if keys.is_empty() {
            break;
        }
        let keys: Vec<String> = keys.iter().map(Reply::text).collect();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let r = src.cmd(&args).await?;
        anyhow::ensure!(!r.is_error(), "MIGRATE: {r:?}");
    }
    // The target first, then the source, then the rest, as redis-cli does: otherwise the
    // source could send clients to a target that still sends them back.
    let others = (0..cluster.nodes.len()).filter(|n| *n != from && *n != to);
    for node in [to, from].into_iter().chain(others) {
        let mut c = cluster.nodes[node].direct(&[]).await?;
        c.ok(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id])
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_slot_migrated_under_load_costs_clients_nothing() {
    let pair = ClusterPair::start(MASTERS, "").await.expect("start");
    // Every key of the load is in one slot: `{mig}...`.
    let from = pair.cluster.owner("{mig}").await.unwrap();
    let to = (from + 1) % MASTERS;
    let slot = {
        let mut d = pair.cluster.nodes[0].direct(&[]).await.unwrap();
        match d.cmd(&["CLUSTER", "KEYSLOT", "{mig}"]).await.unwrap() {
            Reply::Int(n) => n as u16,
            other => panic!("{other:?}"),
        }
    };
    let mut c = pair.client().await.unwrap();
    for i in 0..50 {
        c.ok(&["SET", &format!("{{mig}}{i}"), &i.to_string()])
            .await
            .unwrap();
    }

    // Four clients write and read keys of the slot until told to stop; every reply checked.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let mut c = pair.client().await.unwrap();
        let (stop, done) = (stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{{mig}}w{w}-{}", n % 20);
                let value = n.to_string();
                c.ok(&["SET", &key, &value]).await.expect("SET under load");
                assert_eq!(c.cmd(&["GET", &key]).await.unwrap().text(), value);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            n
        }));
    }
    // Lets the load do `more` pairs: each phase of the migration is seen by the clients. A
    // client that failed stops counting, so this gives up after 30 s rather than hang.
    let progress = |more: u64| {
        let done = done.clone();
        async move {
            let until = done.load(Ordering::Relaxed) + more;
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while done.load(Ordering::Relaxed) < until {
                assert!(
                    std::time::Instant::now() < give_up,
                    "the load stopped: a client saw an error"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    progress(20).await;

    let port = pair.port;
    let halfway = progress(40);
    migrate(&pair.cluster, slot, from, to, || async move {
        // Half-way: a new key is not on the source, which answers ASK; weir asks the target.
        let mut c = Resp::connect(port).await.unwrap();
        c.ok(&["SET", "{mig}new", "asked"]).await.unwrap();
        assert_eq!(c.cmd(&["GET", "{mig}new"]).await.unwrap().text(), "asked");
        halfway.await;
    })
    .await
    .expect("migrate");
    progress(40).await;
    let mut dst = pair.cluster.nodes[to].direct(&[]).await.unwrap();
    assert_eq!(dst.cmd(&["GET", "{mig}new"]).await.unwrap().text(), "asked");

    // The slot is the target's now: the old owner answers MOVED, which weir follows.
    assert_eq!(c.cmd(&["GET", "{mig}7"]).await.unwrap().text(), "7");
    c.ok(&["SET", "{mig}7", "after"]).await.unwrap();
    assert_eq!(dst.cmd(&["GET", "{mig}7"]).await.unwrap().text(), "after");

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        total += t.await.expect("no client saw an error");
    }
    println!("{total} SET+GET pairs during the migration of slot {slot}, no client error");
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run the client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn redis_cli_and_redis_py_see_one_redis() {
    let pair = ClusterPair::start(MASTERS, "private_conn_pool_enabled = 1\n")
        .await
        .expect("start");
    let port = pair.port.to_string();
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        run(&mut c)
    };
    // Plain redis-cli (no -c): one endpoint, no redirection ever reaches it.
    for i in 0..20 {
        assert_eq!(
            cli(&["SET", &format!("cli{i}"), &i.to_string()]).trim(),
            "OK"
        );
    }
    for i in 0..20 {
        assert_eq!(cli(&["GET", &format!("cli{i}")]).trim(), i.to_string());
    }
    let mass: String = (0..1000).map(|i| format!("SET mass:{i} {i}\r\n")).collect();
    let mut pipe = std::process::Command::new("sh");
    pipe.arg("-c").arg(format!(
        "printf '%s' \"$MASS\" | redis-cli -h 127.0.0.1 -p {port} --pipe"
    ));
    pipe.env("MASS", mass);
    let report = run(&mut pipe);
    assert!(report.contains("errors: 0, replies: 1000"), "{report}");
    let mut spread = Vec::new();
    for node in &pair.cluster.nodes {
        let mut d = node.direct(&[]).await.unwrap();
        spread.push(match d.cmd(&["DBSIZE"]).await.unwrap() {
            Reply::Int(n) => n,
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(spread.iter().sum::<i64>(), 1020, "{spread:?}");
    assert!(
        spread.iter().all(|n| *n > 200),
        "every shard has keys: {spread:?}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers/python");
    let python = dir.join(".venv/bin/python");
    assert!(
        std::process::Command::new(&python)
            .args(["-c", "import redis"])
            .status()
            .is_ok_and(|s| s.success()),
        "redis-py is not installed: run scripts/install-drivers.sh"
    );
    let out = run(std::process::Command::new(&python)
        .arg(dir.join("redis_cluster_check.py"))
        .arg(&port));
    assert!(out.contains("cluster: ok"), "{out}");
}
