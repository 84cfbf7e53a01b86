//! Faults a production Redis and network bring, reproduced with real
//! processes: a stalled or frozen Redis, Redis losing its data, a link to Redis
//! that goes silent without closing, a replica killed under many clients.
//! What a user would notice is asserted: every event exactly once in order or
//! an explicit gap notice, every publish answered "not published" absent from
//! history, readiness that tells the truth.

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use serde_json::{json, Value};

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// Publishes `n` and returns the status and body, however long it takes.
async fn publish_n(url: &str, channel: &str, n: u64) -> (u16, Value) {
    post_json(url, &json!({"channel": channel, "data": {"n": n}})).await
}

/// Publishes every 40 ms while `stall` holds Redis up for about 3 s, then checks
/// every answer against history: 200s are there, 503s are not (and never will
/// be), 504s say the outcome is unknown.
async fn publishes_across_a_stall(stall: &[&str]) {
    let redis = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), &[]).await;
    let url = replica.url("/v1/publish");
    let publisher = tokio::spawn(async move {
        let mut answers = Vec::new();
        for n in 0..80u64 {
            let started = std::time::Instant::now();
            let (status, body) = publish_n(&url, "stall", n).await;
            // Never a hang: every publish is answered within its deadline.
            assert!(started.elapsed() < Duration::from_secs(10), "{body}");
            answers.push((n, status, body));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut command = redis::cmd(stall[0]);
    for arg in &stall[1..] {
        command.arg(*arg);
    }
    let stalled: redis::RedisResult<String> = command.query_async(&mut conn).await;
    // DEBUG SLEEP outlasts the client's patience; anything else is a refusal.
    if let Err(e) = &stalled {
        assert!(e.is_timeout(), "{stall:?} refused: {e}");
    }
    let answers = publisher.await.unwrap();
    wait_ready(&replica, true).await;
    let history = history_seqs(&redis, "stall").await;
    let mut counts = [0usize; 3];
    for (n, status, body) in &answers {
        match status {
            200 => {
                counts[0] += 1;
                assert!(history.contains(n), "published {n} is missing");
            }
            503 => {
                counts[1] += 1;
                assert_eq!(body["error"]["code"], "backplane_unavailable", "{body}");
                assert!(!history.contains(n), "{n} was answered 503 but published");
            }
            504 => {
                counts[2] += 1;
                assert_eq!(body["error"]["code"], "publish_outcome_unknown", "{body}");
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert!(
        counts[1] + counts[2] > 0,
        "the stall was noticed: {counts:?}"
    );
    assert!(
        counts[0] > 0,
        "publishes went through before and after: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_answered_not_published_during_a_redis_stall_is_not_in_history() {
    // The server sleeps inside a command: connected, silent.
    publishes_across_a_stall(&["DEBUG", "SLEEP", "3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_answered_not_published_while_redis_pauses_writes_is_not_in_history() {
    // Redis answers reads but holds every write (a failover's pause).
    publishes_across_a_stall(&["CLIENT", "PAUSE", "3000", "WRITE"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_never_hangs_a_publish_and_503s_stay_unpublished() {
    let redis = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), &["--retry", "200ms"]).await;
    let mut open = Subscriber::connect(vec![replica.stream_url(&["frozen"])], None).await;
    publish(&replica, "frozen", json!({"n": 0})).await;
    let pid = redis.pid();
    signal(pid, libc::SIGSTOP);
    let body = wait_ready(&replica, false).await;
    assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
    let url = replica.url("/v1/publish");
    let mut refused = Vec::new();
    for n in 1..=5u64 {
        let started = std::time::Instant::now();
        let (status, body) = publish_n(&url, "frozen", n).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{body}");
        assert!(status == 503 || status == 504, "{status} {body}");
        if status == 503 {
            refused.push(n);
        }
    }
    assert!(!refused.is_empty(), "an unready replica refuses up front");
    signal(pid, libc::SIGCONT);
    wait_ready(&replica, true).await;
    let history = history_seqs(&redis, "frozen").await;
    for n in &refused {
        assert!(!history.contains(n), "{n} was answered 503 but published");
    }
    publish(&replica, "frozen", json!({"n": 100})).await;
    // The open stream saw 0, then whatever of 1..=5 was published, then 100:
    // in order, nothing silently skipped.
    let mut seen = vec![open.next_event().await];
    while data(seen.last().unwrap())["n"] != 100 {
        seen.push(open.next_event().await);
    }
    let got = seqs(&seen);
    let mut expected: Vec<u64> = std::iter::once(0)
        .chain((1..=5).filter(|n| history.contains(n)))
        .collect();
    expected.push(100);
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_redis_lost_its_data_gets_a_gap() {
    let mut redis = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), &[]).await;
    let first = publish(&replica, "lost", json!({"n": 1})).await;
    publish(&replica, "lost", json!({"n": 2})).await;
    publish(&replica, "lost", json!({"n": 3})).await;
    // No persistence: a restart loses every key.
    redis.stop();
    redis.restart().await;
    wait_ready(&replica, true).await;
    wait_for("a publish after the restart", WAIT, || async {
        let (status, _) = publish_n(&replica.url("/v1/publish"), "lost", 4).await;
        (status == 200).then_some(())
    })
    .await;
    let mut resumed = Subscriber::connect(vec![replica.stream_url(&["lost"])], Some(first)).await;
    let gap = resumed.next_event().await;
    assert_eq!(
        gap.event, "sseplane.gap",
        "events 2 and 3 are gone: {gap:?}"
    );
    assert_eq!(data(&gap)["channels"], json!(["lost"]));
    assert_eq!(seqs(&resumed.take(1).await), vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_redis_without_a_close_turns_unready_and_catches_up() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let cut = Replica::start("cut", None, &["--redis-url", &proxy.redis_url()]).await;
    let other = Replica::start("other", Some(&redis), &[]).await;
    let mut open = Subscriber::connect(vec![cut.stream_url(&["silent"])], None).await;
    publish(&other, "silent", json!({"n": 0})).await;
    assert_eq!(seqs(&open.take(1).await), vec![0]);

    proxy.cut();
    let body = wait_ready(&cut, false).await;
    // Both checks tell the truth: the subscription carries nothing either.
    let body = if body["checks"]["subscription"]["ok"] == false {
        body
    } else {
        wait_for("the subscription check to fail", WAIT, || async {
            let (_, body) = readyz(&cut).await;
            (body["checks"]["subscription"]["ok"] == false).then_some(body)
        })
        .await
    };
    assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
    for n in 1..=20u64 {
        publish(&other, "silent", json!({"n": n})).await;
    }
    proxy.heal();
    wait_ready(&cut, true).await;
    publish(&other, "silent", json!({"n": 21})).await;
    let events = open.take(21).await;
    assert_eq!(seqs(&events), (1..=21).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_many_clients_all_resume_on_another() {
    const CLIENTS: usize = 150;
    let redis = Redis::start().await;
    let mut doomed = Replica::start("doomed", Some(&redis), &["--retry", "100ms"]).await;
    let survivor = Replica::start("survivor", Some(&redis), &["--retry", "100ms"]).await;
    let urls = vec![
        doomed.stream_url(&["storm"]),
        survivor.stream_url(&["storm"]),
    ];
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Subscriber::connect(urls.clone(), None).await);
    }
    let url = survivor.url("/v1/publish");
    for n in 0..50u64 {
        publish_n(&url, "storm", n).await;
    }
    for client in &mut clients {
        assert_eq!(seqs(&client.take(50).await), (0..50).collect::<Vec<_>>());
    }
    // The clients are now behind by what is published while they come back.
    let publisher = tokio::spawn(async move {
        for n in 50..250u64 {
            let (status, body) = publish_n(&url, "storm", n).await;
            assert_eq!(status, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    doomed.kill();
    publisher.await.unwrap();
    let mut tasks = Vec::new();
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            let events = client.take(200).await;
            (seqs(&events), client.replicas)
        }));
    }
    for task in tasks {
        let (seqs, replicas) = task.await.unwrap();
        assert_eq!(seqs, (50..250).collect::<Vec<_>>());
        assert_eq!(replicas.last().unwrap(), "survivor");
    }
    let (status, _) = readyz(&survivor).await;
    assert_eq!(status, 200);
}
