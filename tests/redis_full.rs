//! "Redis is full", reproduced with a real `redis-server` given a small
//! `maxmemory` once the replicas are up: what docs/reliability.md ("Sizing
//! Redis") promises for each kind of policy.
//! - With `allkeys-lru` or `volatile-lru`, Redis drops the least recently used
//!   channels' keys; publishing goes on, and a resume into dropped history gets
//!   `sseplane.gap`, never a silent skip.
//! - With `noeviction`, publishes are refused with 503 and nothing of them is
//!   written; once Redis is over its limit every replica turns unready (its
//!   heartbeat is a write; a publish refused for its size can leave room for
//!   small writes, and the replicas then stay ready); open streams stay open,
//!   and once memory is freed everything works again.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};

/// Room Redis gets above what it uses when the test makes it "full".
const HEADROOM: u64 = 2 * 1024 * 1024;
/// Padding of every filler event.
const PAD: usize = 2048;
/// New channels named in one filler publish (each costs ~7 KB: a new stream
/// node, the padded event, the last id).
const FILL_BATCH: usize = 50;
/// Most filler publishes before a test gives up (about 80 times `HEADROOM`).
const MAX_FILLS: usize = 500;

/// No bound on new channels per publisher (the test creates thousands), and
/// short histories.
const REPLICA_ARGS: &[&str] = &[
    "--new-channels-per-second",
    "0",
    "--history-max-events",
    "10",
];

fn history_key(channel: &str) -> String {
    format!("sseplane:h:{{{channel}}}")
}

fn last_key(channel: &str) -> String {
    format!("sseplane:l:{{{channel}}}")
}

/// A numeric field of an `INFO` answer.
fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("INFO has no {field}"))
        .trim()
        .parse()
        .unwrap()
}

async fn exists(redis: &Redis, key: &str) -> bool {
    let n: i64 = redis.cmd(&["EXISTS", key]).await;
    n == 1
}

/// Whether any key of `channel` is in Redis.
async fn channel_exists(redis: &Redis, channel: &str) -> bool {
    exists(redis, &history_key(channel)).await || exists(redis, &last_key(channel)).await
}

/// Sets `policy` and a `maxmemory` of what Redis uses now plus [`HEADROOM`];
/// the limit set.
async fn limit_memory(redis: &Redis, policy: &str) -> u64 {
    let _: () = redis
        .cmd(&["CONFIG", "SET", "maxmemory-policy", policy])
        .await;
    let info: String = redis.cmd(&["INFO", "memory"]).await;
    let limit = info_field(&info, "used_memory") + HEADROOM;
    let _: () = redis
        .cmd(&["CONFIG", "SET", "maxmemory", &limit.to_string()])
        .await;
    limit
}

/// One filler publish through `replica`: 2 KB of data to [`FILL_BATCH`] new
/// channels `fill:<round>:<i>` at once. The status, the answer and the channels.
async fn fill(replica: &Replica, round: usize) -> (u16, Value, Vec<String>) {
    let channels: Vec<String> = (0..FILL_BATCH)
        .map(|i| format!("fill:{round}:{i}"))
        .collect();
    let (status, answer) = post_json(
        &replica.url("/v1/publish"),
        &json!({"channels": channels, "data": {"round": round, "pad": "x".repeat(PAD)}}),
    )
    .await;
    (status, answer, channels)
}

/// Fills a Redis that evicts with `policy` until every key of a channel left
/// alone is gone, then resumes into that channel's lost history.
async fn a_full_redis_that_evicts_drops_old_channels_and_resumes_get_a_gap(policy: &str) {
    let redis = Redis::start().await;
    let replica = Replica::start("r0", Some(&redis), REPLICA_ARGS).await;
    let kept = publish(&replica, "old", json!({"n": 1})).await;
    publish(&replica, "old", json!({"n": 2})).await;
    let limit = limit_memory(&redis, policy).await;
    // Publishing goes on while Redis makes room by dropping old channels; the
    // channel left alone goes, history and last id.
    let mut rounds = 0;
    while channel_exists(&redis, "old").await {
        assert!(
            rounds < MAX_FILLS,
            "{policy}: {rounds} filler publishes and \"old\" is still in Redis"
        );
        let (status, answer, _) = fill(&replica, rounds).await;
        assert_eq!(status, 200, "{policy}: publishing goes on: {answer}");
        rounds += 1;
    }
    let stats: String = redis.cmd(&["INFO", "stats"]).await;
    let evicted = info_field(&stats, "evicted_keys");
    assert!(evicted > 0, "{policy}: Redis evicted, nothing expired");
    let memory: String = redis.cmd(&["INFO", "memory"]).await;
    eprintln!(
        "{policy}: \"old\" evicted after {rounds} filler publishes of {FILL_BATCH} channels; \
         {evicted} keys evicted; used_memory {} of maxmemory {limit}",
        info_field(&memory, "used_memory")
    );
    assert_eq!(readyz(&replica).await.0, 200, "{policy}: still ready");

    // Event 2 is gone with the history: a resume from event 1 is told so,
    // then gets what was published since.
    publish(&replica, "old", json!({"n": 3})).await;
    let mut resumed = Subscriber::connect(vec![replica.stream_url(&["old"])], Some(kept)).await;
    let gap = resumed.next_event().await;
    assert_eq!(
        gap.event, "sseplane.gap",
        "{policy}: event 2 was evicted: {gap:?}"
    );
    assert_eq!(data(&gap)["channels"], json!(["old"]));
    assert_eq!(seqs(&resumed.take(1).await), vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_with_allkeys_lru_drops_old_channels_and_resumes_get_a_gap() {
    a_full_redis_that_evicts_drops_old_channels_and_resumes_get_a_gap("allkeys-lru").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_with_volatile_lru_drops_old_channels_and_resumes_get_a_gap() {
    a_full_redis_that_evicts_drops_old_channels_and_resumes_get_a_gap("volatile-lru").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_without_eviction_refuses_publishes_until_memory_is_freed() {
    let redis = Redis::start().await;
    let r0 = Replica::start("r0", Some(&redis), REPLICA_ARGS).await;
    let r1 = Replica::start("r1", Some(&redis), REPLICA_ARGS).await;
    let mut open = Subscriber::connect(vec![r1.stream_url(&["open"])], None).await;
    publish(&r0, "open", json!({"n": 0})).await;
    assert_eq!(seqs(&open.take(1).await), vec![0]);
    let limit = limit_memory(&redis, "noeviction").await;

    // Fill until Redis refuses a publish: 503, and nothing of it written,
    // none of its channels.
    let mut refused = None;
    for round in 0..MAX_FILLS {
        let (status, answer, channels) = fill(&r0, round).await;
        if status != 200 {
            refused = Some((round, status, answer, channels));
            break;
        }
    }
    let (rounds, status, answer, channels) = refused.expect("Redis refused a publish when full");
    eprintln!("noeviction: publish {rounds} refused (maxmemory {limit}): {status} {answer}");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "backplane_unavailable", "{answer}");
    for channel in &channels {
        assert!(
            !channel_exists(&redis, channel).await,
            "{channel} of a publish answered 503 is in Redis"
        );
    }

    let memory: String = redis.cmd(&["INFO", "memory"]).await;
    eprintln!(
        "noeviction: after the refusal used_memory {} of {limit}; r0 /readyz {:?}",
        info_field(&memory, "used_memory"),
        readyz(&r0).await
    );

    // A publish refused for its size may leave a little room that a small
    // write still takes. Small publishes go on until one takes Redis over
    // its limit: then every replica turns unready (its heartbeat is a
    // write). Each answered 503 left nothing behind.
    let deadline = std::time::Instant::now() + WAIT;
    let (mut small, mut small_refused) = (0, 0);
    loop {
        let (s0, s1) = (readyz(&r0).await.0, readyz(&r1).await.0);
        if s0 == 503 && s1 == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for both replicas to turn unready ({s0}, {s1})"
        );
        let channel = format!("small:{small}");
        let (status, answer) = post_json(
            &r0.url("/v1/publish"),
            &json!({"channel": channel, "data": small}),
        )
        .await;
        match status {
            200 => {}
            503 => {
                small_refused += 1;
                assert!(!channel_exists(&redis, &channel).await, "{channel}");
            }
            _ => panic!("{channel}: {status} {answer}"),
        }
        small += 1;
    }
    let memory: String = redis.cmd(&["INFO", "memory"]).await;
    eprintln!(
        "noeviction: both unready after {small} small publishes ({small_refused} refused); \
         used_memory {} of {limit}",
        info_field(&memory, "used_memory")
    );
    for replica in [&r0, &r1] {
        let (status, body) = readyz(replica).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
        eprintln!("noeviction: {} /readyz {body}", replica.id);
    }
    // Publishes through either replica, to the existing channel, to a new
    // one, to both at once: refused, and not in Redis.
    for (replica, n) in [(&r0, 1), (&r1, 2)] {
        for body in [
            json!({"channel": "open", "data": {"n": n}}),
            json!({"channel": format!("new:{n}"), "data": {"n": n}}),
            json!({"channels": ["open", format!("both:{n}")], "data": {"n": n}}),
        ] {
            let (status, answer) = post_json(&replica.url("/v1/publish"), &body).await;
            assert_eq!(status, 503, "{} {body}: {answer}", replica.id);
            assert_eq!(answer["error"]["code"], "backplane_unavailable", "{answer}");
        }
        for channel in [format!("new:{n}"), format!("both:{n}")] {
            assert!(!channel_exists(&redis, &channel).await, "{channel}");
        }
    }
    assert_eq!(history_seqs(&redis, "open").await, HashSet::from([0]));

    // Memory freed: ready again, publishing works, and the stream that was
    // open all along gets the next event, nothing refused before it.
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;
    for replica in [&r0, &r1] {
        wait_ready(replica, true).await;
    }
    publish(&r0, "open", json!({"n": 3})).await;
    publish(&r1, "new:3", json!({"n": 3})).await;
    assert_eq!(seqs(&open.take(1).await), vec![3]);
    assert!(
        open.disconnects.is_empty(),
        "the open stream was closed: {:?}",
        open.disconnects
    );
    assert_eq!(open.replicas, vec!["r1".to_owned()]);
}
