//! The Redis data path's protocol against a real redis-server: session state kept apart
//! between clients, RESP3 and Pub/Sub, AUTH with passwords and ACL users, pipelines answered
//! in order, malformed bytes, and the drain on SIGTERM.

use std::time::Duration;

use weir_tests::redis::{http_get, Pair, Reply, Resp};
use weir_tests::weir::Signal;

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

#[tokio::test]
async fn nothing_one_client_sets_is_seen_by_the_next() {
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let mut a = pair.client().await.unwrap();
    a.ok(&["SELECT", "3"]).await.unwrap();
    a.ok(&["CLIENT", "SETNAME", "alice"]).await.unwrap();
    a.ok(&["SET", "where", "db3"]).await.unwrap();
    assert!(matches!(
        a.cmd(&["HELLO", "3"]).await.unwrap(),
        Reply::Map(_)
    ));
    a.ok(&["CLIENT", "TRACKING", "on"]).await.unwrap();
    assert_eq!(a.cmd(&["GET", "where"]).await.unwrap(), bulk("db3"));

    let mut b = pair.client().await.unwrap();
    assert_eq!(
        b.cmd(&["CLIENT", "GETNAME"]).await.unwrap(),
        Reply::Bulk(None)
    );
    assert_eq!(
        b.cmd(&["GET", "where"]).await.unwrap(),
        Reply::Bulk(None),
        "db 0 for B"
    );
    assert!(
        matches!(b.cmd(&["HGETALL", "none"]).await.unwrap(), Reply::Array(_)),
        "RESP2 for B"
    );
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await.unwrap(), bulk("alice"));

    // A's tracking connection carries its invalidations, and is never handed on.
    b.ok(&["SELECT", "3"]).await.unwrap();
    b.ok(&["SET", "where", "changed"]).await.unwrap();
    match a.read().await.unwrap() {
        Reply::Push(p) => assert_eq!(p[0], bulk("invalidate")),
        other => panic!("expected an invalidation push, got {other:?}"),
    }
    drop(a);
    let mut direct = pair.redis.direct(&[]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = direct.cmd(&["CLIENT", "LIST"]).await.unwrap().text();
        let tracking = list.lines().any(|l| l.contains("flags=t"));
        if !tracking {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a tracking connection stayed:\n{list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = pair.client().await.unwrap();
    c.ok(&["MULTI"]).await.unwrap();
    c.cmd(&["CLIENT", "INFO"]).await.unwrap();
    match c.cmd(&["EXEC"]).await.unwrap() {
        Reply::Array(Some(v)) => {
            let info = v[0].text();
            assert!(
                info.contains(" db=0 ") && info.contains(" name= "),
                "{info}"
            );
            assert!(!info.contains("flags=t"), "{info}");
        }
        other => panic!("EXEC answered {other:?}"),
    }
}

#[tokio::test]
async fn resp3_pushes_and_pubsub() {
    let pair = Pair::start(&[], "", "").await.expect("start");
    let mut sub3 = pair.client().await.unwrap();
    match sub3.cmd(&["HELLO", "3"]).await.unwrap() {
        Reply::Map(m) => assert!(m.contains(&(bulk("proto"), Reply::Int(3))), "{m:?}"),
        other => panic!("HELLO 3 answered {other:?}"),
    }
    assert!(matches!(
        sub3.cmd(&["SUBSCRIBE", "news"]).await.unwrap(),
        Reply::Push(_)
    ));
    let mut sub2 = pair.client().await.unwrap();
    assert!(matches!(
        sub2.cmd(&["PSUBSCRIBE", "n*"]).await.unwrap(),
        Reply::Array(_)
    ));
    pair.wait_backend(|b| b["pubsub"] == 2).await.unwrap();
    let metrics = http_get(pair.http_port, "/metrics").await.unwrap();
    let line = format!(
        "weir_redis_server_connections{{backend=\"{}\",kind=\"pubsub\"}} 2",
        pair.redis.addr()
    );
    assert!(metrics.contains(&line), "{metrics}");

    let mut publisher = pair.client().await.unwrap();
    assert_eq!(
        publisher.cmd(&["PUBLISH", "news", "hi"]).await.unwrap(),
        Reply::Int(2)
    );
    assert_eq!(
        sub3.read().await.unwrap(),
        Reply::Push(vec![bulk("message"), bulk("news"), bulk("hi")])
    );
    assert_eq!(
        sub2.read().await.unwrap(),
        Reply::Array(Some(vec![
            bulk("pmessage"),
            bulk("n*"),
            bulk("news"),
            bulk("hi")
        ]))
    );
    // RESP3 allows ordinary commands on a subscribed connection.
    assert_eq!(
        sub3.cmd(&["PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    drop((sub3, sub2));
    pair.wait_backend(|b| b["pubsub"] == 0).await.unwrap();
}

#[tokio::test]
async fn auth_with_passwords_and_acl_users() {
    let users = "\"default\" \"dpw\"\n\"alice\" \"apw\"\n";
    let pair = Pair::start(
        &[
            "--requirepass",
            "dpw",
            "--user",
            "alice",
            "on",
            ">apw",
            "~*",
            "&*",
            "+@all",
        ],
        "auth_file = {dir}/userlist.txt\n",
        users,
    )
    .await
    .expect("start");
    let mut c = pair.client().await.unwrap();
    let noauth = c.cmd(&["GET", "k"]).await.unwrap();
    assert!(noauth.text().starts_with("NOAUTH"), "{noauth:?}");
    let wrong = c.cmd(&["AUTH", "nope"]).await.unwrap();
    assert!(wrong.text().starts_with("WRONGPASS"), "{wrong:?}");
    let wrong = c.cmd(&["AUTH", "alice", "dpw"]).await.unwrap();
    assert!(wrong.text().starts_with("WRONGPASS"), "{wrong:?}");
    c.ok(&["AUTH", "dpw"]).await.unwrap();
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await.unwrap(), bulk("default"));
    c.ok(&["AUTH", "alice", "apw"]).await.unwrap();
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await.unwrap(), bulk("alice"));
    c.ok(&["MULTI"]).await.unwrap();
    c.cmd(&["ACL", "WHOAMI"]).await.unwrap();
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        Reply::Array(Some(vec![bulk("alice")]))
    );

    let mut h = pair.client().await.unwrap();
    let wrong = h.cmd(&["HELLO", "3", "AUTH", "alice", "x"]).await.unwrap();
    assert!(wrong.text().starts_with("WRONGPASS"), "{wrong:?}");
    assert!(matches!(
        h.cmd(&["HELLO", "3", "AUTH", "alice", "apw"])
            .await
            .unwrap(),
        Reply::Map(_)
    ));
    assert_eq!(h.cmd(&["ACL", "WHOAMI"]).await.unwrap(), bulk("alice"));
    assert!(
        pair.weir.log().lines().all(|l| !l.contains("apw")),
        "no password in the log"
    );
}

#[tokio::test]
async fn a_pipeline_is_answered_in_order_across_connections() {
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let mut c = pair.client().await.unwrap();
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300 {
        let (k, v) = (format!("p{i}"), i.to_string());
        wire.extend(Resp::encode(&["SET", &k, &v]));
        expected.push(Reply::Simple("OK".into()));
        wire.extend(Resp::encode(&["GET", &k]));
        expected.push(bulk(&v));
        if i % 50 == 0 {
            // An exclusive stretch and a database switch in the middle of the pipeline.
            wire.extend(Resp::encode(&["MULTI"]));
            wire.extend(Resp::encode(&["INCR", &k]));
            wire.extend(Resp::encode(&["EXEC"]));
            wire.extend(Resp::encode(&["SELECT", &(i % 2).to_string()]));
            wire.extend(Resp::encode(&["BLPOP", "nothing", "0.01"]));
            expected.extend([
                Reply::Simple("OK".into()),
                Reply::Simple("QUEUED".into()),
                Reply::Array(Some(vec![Reply::Int(i + 1)])),
                Reply::Simple("OK".into()),
                Reply::Array(None),
            ]);
        }
    }
    c.send_raw(&wire).await.unwrap();
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(&c.read().await.unwrap(), want, "reply {n}");
    }
}

#[tokio::test]
async fn malformed_bytes_get_an_error_and_a_closed_connection() {
    let pair = Pair::start(&[], "", "").await.expect("start");
    for bad in [
        &b"*2\r\n$3\r\nGET\r\n$x\r\n"[..],
        b"*1\r\n:5\r\n",
        b"*-7x\r\n",
        b"SET \"unbalanced\r\n",
    ] {
        let mut c = pair.client().await.unwrap();
        c.ok(&["SET", "before", "1"]).await.unwrap();
        c.send_raw(bad).await.unwrap();
        let rest = String::from_utf8_lossy(&c.closed().await.unwrap()).into_owned();
        assert!(rest.starts_with("-ERR Protocol error"), "{rest:?}");
    }
    let refused = pair
        .client()
        .await
        .unwrap()
        .cmd(&["PSYNC", "?", "-1"])
        .await
        .unwrap();
    assert!(refused.is_error(), "{refused:?}");
    let mut after = pair.client().await.unwrap();
    assert_eq!(
        after.cmd(&["PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
}

#[tokio::test]
async fn sigterm_finishes_what_is_in_flight_and_refuses_new_clients() {
    let mut pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let mut idle = pair.client().await.unwrap();
    idle.ok(&["SET", "a", "1"]).await.unwrap();
    let mut blocked = pair.client().await.unwrap();
    blocked.send(&["BLPOP", "drain", "0"]).await.unwrap();
    pair.wait_backend(|b| b["exclusive_in_use"] == 1)
        .await
        .unwrap();
    pair.weir.signal(Signal::SIGTERM).unwrap();
    idle.closed().await.expect("an idle client is let go");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Resp::connect(pair.port).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pair.redis
        .direct(&[])
        .await
        .unwrap()
        .cmd(&["RPUSH", "drain", "x"])
        .await
        .unwrap();
    assert_eq!(
        blocked.read().await.unwrap(),
        Reply::Array(Some(vec![bulk("drain"), bulk("x")]))
    );
    blocked.closed().await.expect("let go once served");
    assert_eq!(
        pair.weir.wait_exit(Duration::from_secs(15)).await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn a_lost_server_connection_is_an_error_then_replaced() {
    let pair = Pair::start(&[], "private_conn_pool_enabled = 1\n", "")
        .await
        .expect("start");
    let mut c = pair.client().await.unwrap();
    c.ok(&["SET", "k", "v"]).await.unwrap();
    let mut blocked = pair.client().await.unwrap();
    blocked.send(&["BLPOP", "never", "0"]).await.unwrap();
    pair.wait_backend(|b| b["exclusive_in_use"] == 1)
        .await
        .unwrap();
    let mut direct = pair.redis.direct(&[]).await.unwrap();
    direct
        .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .await
        .unwrap();
    pair.wait_backend(|b| b["shared"] == 0)
        .await
        .expect("the lost connection is let go");
    assert_eq!(
        c.cmd(&["GET", "k"]).await.unwrap(),
        bulk("v"),
        "a new shared connection"
    );
    pair.wait_backend(|b| b["shared"] == 1).await.unwrap();
}
