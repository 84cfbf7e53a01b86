//! What only the Redis backplane has: outages, failover to a read-only node,
//! replicas dying, one subscription per channel per replica, the cluster view.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn readyz(replica: &Replica) -> (u16, Value) {
    let response = reqwest::get(replica.admin_url("/readyz")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_readiness(replica: &Replica, status: u16) -> Value {
    wait_for(
        &format!("{} readiness {status}", replica.id),
        WAIT,
        || async {
            let (got, body) = readyz(replica).await;
            (got == status).then_some(body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_streams_open_and_recovers() {
    let mut redis = Redis::start().await;
    let r0 = Replica::start("r0", Some(&redis), &["--retry", "200ms"]).await;
    let r1 = Replica::start("r1", Some(&redis), &["--retry", "200ms"]).await;
    let mut open = Subscriber::connect(vec![r0.stream_url(&["live"])], None).await;
    let mut leaving = Subscriber::connect(vec![r1.stream_url(&["live"])], None).await;
    publish(&r1, "live", json!({"n": 1})).await;
    assert_eq!(seqs(&open.take(1).await), vec![1]);
    let last_id = leaving.next_event().await.id;
    drop(leaving);

    redis.stop();
    for replica in [&r0, &r1] {
        let body = wait_for("readiness to blame Redis", WAIT, || async {
            let (status, body) = readyz(replica).await;
            (status == 503 && body["checks"]["redis"]["ok"] == false).then_some(body)
        })
        .await;
        assert_eq!(body["ready"], false);
        assert!(!body["checks"]["redis"]["message"]
            .as_str()
            .unwrap()
            .is_empty());
        // Liveness does not depend on Redis.
        let health = reqwest::get(replica.admin_url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
    }
    let response = reqwest::Client::new()
        .post(r0.url("/v1/publish"))
        .json(&json!({"channel": "live", "data": {"n": 99}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backplane_unavailable");
    let refused = reqwest::get(r1.stream_url(&["live"])).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    redis.restart().await;
    wait_readiness(&r0, 200).await;
    wait_readiness(&r1, 200).await;
    publish(&r1, "live", json!({"n": 2})).await;
    // The stream that stayed open gets the new event, and was never dropped;
    // the refused publish was not published.
    assert_eq!(seqs(&open.take(1).await), vec![2]);
    assert!(open.disconnects.is_empty(), "{:?}", open.disconnects);
    // A client that left before the outage resumes with what it missed. Redis
    // lost its data in the outage, so history cannot tell whether events
    // between its position and the restart were lost: the client is told.
    let mut resumed = Subscriber::connect(vec![r0.stream_url(&["live"])], last_id).await;
    assert_eq!(resumed.next_event().await.event, "sseplane.gap");
    assert_eq!(seqs(&resumed.take(1).await), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_redis_counts_as_down() {
    let redis = Redis::start().await;
    let primary = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), &[]).await;
    let port = primary.port.to_string();
    let _: String = redis.cmd(&["REPLICAOF", "127.0.0.1", &port]).await;
    let body = wait_readiness(&replica, 503).await;
    let message = body["checks"]["redis"]["message"].as_str().unwrap();
    assert!(message.contains("READONLY"), "{message}");
    let (status, _) = post_json(
        &replica.url("/v1/publish"),
        &json!({"channel": "a", "data": 1}),
    )
    .await;
    assert_eq!(status, 503);
    let _: String = redis.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    wait_readiness(&replica, 200).await;
    publish(&replica, "a", json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_redis_at_start() {
    let port = free_port();
    let replica_args = [
        "--redis-url".to_owned(),
        format!("redis://127.0.0.1:{port}"),
    ];
    let args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
    // Start without waiting for readiness: Redis is not there yet.
    let mut redis = Redis::start().await;
    redis.stop();
    let replica = {
        let public = free_port();
        let admin = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sseplane"))
            .args([
                "--listen",
                &format!("127.0.0.1:{public}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(&args)
            .env("SSEPLANE_LOG_LEVEL", "error")
            .spawn()
            .unwrap();
        (child, public, admin)
    };
    let (mut child, _, admin) = replica;
    let health = wait_for("healthz", WAIT, || async move {
        reqwest::get(format!("http://127.0.0.1:{admin}/healthz"))
            .await
            .ok()
    })
    .await;
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Redis appears on the configured port: the replica gets ready by itself.
    let mut late = Redis::start().await;
    late.stop();
    late.port = port;
    late.restart().await;
    wait_for("ready once Redis is up", WAIT, || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_clients_resume_elsewhere_without_a_gap() {
    const EVENTS: u64 = 150;
    let redis = Redis::start().await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(&format!("r{i}"), Some(&redis), &["--retry", "200ms"]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.stream_url(&["load"])).collect();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(Subscriber::connect(urls.clone(), None).await);
    }
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let url = replicas[1].url("/v1/publish");
        let published = published.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                let (status, body) =
                    post_json(&url, &json!({"channel": "load", "data": {"n": n}})).await;
                assert_eq!(status, 200, "{body}");
                published.store(n + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    wait_for("a third of the events", WAIT, || {
        let published = published.clone();
        async move { (published.load(Ordering::SeqCst) >= EVENTS / 3).then_some(()) }
    })
    .await;
    replicas[0].kill();
    publisher.await.unwrap();
    for client in &mut clients {
        let events = client.take(EVENTS as usize).await;
        assert_eq!(seqs(&events), (0..EVENTS).collect::<Vec<_>>());
        assert_eq!(client.replicas[0], "r0");
        assert!(
            client.replicas.len() >= 2,
            "the client moved to another replica"
        );
        assert_ne!(client.replicas.last().unwrap(), "r0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_channel_per_replica() {
    let redis = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), &[]).await;
    let mut subscribers = Vec::new();
    for _ in 0..20 {
        subscribers.push(Subscriber::connect(vec![replica.stream_url(&["shared"])], None).await);
    }
    subscribers
        .push(Subscriber::connect(vec![replica.stream_url(&["shared", "other"])], None).await);
    let numsub = |channel: &'static str| {
        let redis = &redis;
        async move {
            let reply: Vec<Value> = redis
                .cmd::<Vec<redis::Value>>(&[
                    "PUBSUB",
                    "NUMSUB",
                    &format!("sseplane:m:{{{channel}}}"),
                ])
                .await
                .into_iter()
                .map(|v| match v {
                    redis::Value::Int(n) => json!(n),
                    _ => Value::Null,
                })
                .collect();
            reply[1].as_i64().unwrap()
        }
    };
    assert_eq!(numsub("shared").await, 1);
    assert_eq!(numsub("other").await, 1);
    let diagnostics = replica.diagnostics("").await;
    assert_eq!(diagnostics["totalChannels"], 2);
    assert_eq!(diagnostics["totalLocalSubscribers"], 22);
    assert_eq!(
        diagnostics["channels"],
        json!([
            {"channel": "other", "localSubscribers": 1, "policy": "default"},
            {"channel": "shared", "localSubscribers": 21, "policy": "default"}
        ])
    );
    subscribers.truncate(1);
    wait_for("the last-but-one subscribers to leave", WAIT, || async {
        (replica.diagnostics("").await["totalLocalSubscribers"] == 1).then_some(())
    })
    .await;
    assert_eq!(numsub("shared").await, 1);
    assert_eq!(numsub("other").await, 0);
    subscribers.clear();
    wait_for("unsubscribe after the last subscriber", WAIT, || async {
        (numsub("shared").await == 0).then_some(())
    })
    .await;
    assert_eq!(replica.diagnostics("").await["totalChannels"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_diagnostics_list_live_replicas_only() {
    let redis = Redis::start().await;
    let r0 = Replica::start("r0", Some(&redis), &[]).await;
    let mut r1 = Replica::start("r1", Some(&redis), &[]).await;
    let _subscriber = Subscriber::connect(vec![r1.stream_url(&["a", "b"])], None).await;
    let body = wait_for("both replicas in the cluster view", WAIT, || async {
        let body = r0.diagnostics("?scope=cluster").await;
        let replicas = body["replicas"].as_array()?;
        let r1_figures = replicas.iter().find(|r| r["replica"] == "r1")?;
        (replicas.len() == 2 && r1_figures["totalLocalSubscribers"] == 2).then_some(body)
    })
    .await;
    assert_eq!(body["replica"], "r0");
    assert_eq!(body["backplane"], "redis");
    let r1_figures = body["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["replica"] == "r1")
        .unwrap();
    assert_eq!(r1_figures["totalChannels"], 2);
    assert!(r1_figures["lastSeen"].as_str().unwrap().ends_with('Z'));
    // Local scope has no replicas list.
    assert!(r0.diagnostics("").await.get("replicas").is_none());
    r1.kill();
    wait_for(
        "the dead replica to drop out",
        Duration::from_secs(40),
        || async {
            let body = r0.diagnostics("?scope=cluster").await;
            let names: Vec<&str> = body["replicas"]
                .as_array()?
                .iter()
                .filter_map(|r| r["replica"].as_str())
                .collect();
            (names == ["r0"]).then_some(())
        },
    )
    .await;
}

/// Publishes that arrive together share one Redis write (pipelined); each is
/// still its own atomic step with its own id, and none is lost or reordered
/// against its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_pipelined_and_each_answered() {
    let redis = Redis::start().await;
    let r0 = Replica::start("r0", Some(&redis), &[]).await;
    let r1 = Replica::start("r1", Some(&redis), &[]).await;
    let mut subscriber = Subscriber::connect(vec![r0.stream_url(&["burst"])], None).await;
    let publishes = (0..64u64).map(|n| {
        let r1 = &r1;
        async move { (n, publish(r1, "burst", json!({"n": n})).await) }
    });
    let answered = futures_util::future::join_all(publishes).await;
    let events = subscriber.take(64).await;
    // Every answer's id is the id the event was delivered with, ids are
    // distinct, and delivery is in id order.
    let delivered: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                data(e)["n"].as_u64().unwrap(),
                e.id.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut by_position = answered.clone();
    by_position.sort_by_key(|(_, id)| id.parse::<sseplane::event::Position>().unwrap());
    by_position.dedup_by(|a, b| a.1 == b.1);
    assert_eq!(by_position.len(), 64, "ids are distinct");
    assert_eq!(delivered, by_position);
}

/// Entries the Redis stream of `channel` holds (default key prefix).
async fn stream_len(redis: &Redis, channel: &str) -> i64 {
    redis
        .cmd(&["XLEN", &format!("sseplane:h:{{{channel}}}")])
        .await
}

/// Publishes trim a long history approximately (whole stream nodes) and a short
/// one exactly; either way a client that resumes from far behind is told of the
/// gap and replayed exactly the newest `maxEvents` events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_near_its_limit_and_replays_exactly_the_newest() {
    let redis = Redis::start().await;
    let long = Replica::start("long", Some(&redis), &["--history-max-events", "150"]).await;
    let short = Replica::start("short", Some(&redis), &["--history-max-events", "3"]).await;
    let first_long = publish(&long, "long", json!({"n": 1})).await;
    for n in 2..=400u64 {
        publish(&long, "long", json!({"n": n})).await;
    }
    let first_short = publish(&short, "short", json!({"n": 1})).await;
    for n in 2..=10u64 {
        publish(&short, "short", json!({"n": n})).await;
    }
    let kept = stream_len(&redis, "long").await;
    assert!(
        (150..=250).contains(&kept),
        "a 150-event history holds {kept} entries"
    );
    assert_eq!(stream_len(&redis, "short").await, 3);

    let mut resumed = Subscriber::connect(vec![long.stream_url(&["long"])], Some(first_long)).await;
    let gap = resumed.next_event().await;
    assert_eq!(gap.event, "sseplane.gap");
    assert_eq!(
        seqs(&resumed.take(150).await),
        (251..=400).collect::<Vec<_>>()
    );
    // Nothing older follows: the next event is a new publish.
    publish(&long, "long", json!({"n": 401})).await;
    assert_eq!(seqs(&resumed.take(1).await), vec![401]);

    let mut resumed =
        Subscriber::connect(vec![short.stream_url(&["short"])], Some(first_short)).await;
    assert_eq!(resumed.next_event().await.event, "sseplane.gap");
    assert_eq!(seqs(&resumed.take(3).await), vec![8, 9, 10]);
}
