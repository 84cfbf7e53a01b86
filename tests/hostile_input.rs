//! Valid but unusual JSON, published to a real replica: one nesting limit for
//! every channel whatever its policy, and numbers a schema validator cannot
//! hold answered for what they are.

mod common;

use common::*;
use serde_json::Value;

/// A policy file: `typed:*` has a JSON Schema for its data; other channels
/// have none.
fn policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        "apiVersion: sseplane.dev/v1alpha1\nkind: ChannelPolicy\nmetadata:\n  name: typed\nspec:\n  channels: [\"typed:*\"]\n  schema:\n    anyOf:\n      - type: array\n      - type: object\n      - type: number\n",
    )
    .unwrap();
    dir
}

/// `depth` nested arrays around `1` (`[[1]]` nests 2 levels).
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// POSTs the raw publish body `body`; the status and the JSON answer.
async fn publish_raw(replica: &Replica, body: String) -> (u16, Value) {
    post_raw(replica, "/v1/publish", body).await
}

/// POSTs the raw JSON `body` to `path`; the status and the JSON answer.
async fn post_raw(replica: &Replica, path: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(replica.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn publish_body(channel: &str, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","data":{data}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nesting_limit_applies_to_every_channel() {
    let dir = policies();
    let replica = Replica::start("deep", None, &["--policies", dir.path().to_str().unwrap()]).await;
    for channel in ["typed:1", "plain:1"] {
        let mut subscriber = Subscriber::connect(vec![replica.stream_url(&[channel])], None).await;
        for depth in [127, 128] {
            let data = nested(depth);
            let (status, answer) = publish_raw(&replica, publish_body(channel, &data)).await;
            assert_eq!(status, 200, "{channel}, depth {depth}: {answer}");
            assert_eq!(subscriber.next_event().await.data, data, "{channel}");
        }
        for depth in [129, 5000] {
            let (status, answer) =
                publish_raw(&replica, publish_body(channel, &nested(depth))).await;
            assert_eq!(status, 400, "{channel}, depth {depth}: {answer}");
            assert_eq!(answer["error"]["code"], "data_too_deep", "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("128"), "names the limit: {message}");
        }
        // Brackets inside strings are text, not nesting.
        let brackets = format!("[\"{}\"]", "[{".repeat(200));
        let (status, answer) = publish_raw(&replica, publish_body(channel, &brackets)).await;
        assert_eq!(status, 200, "{channel}: {answer}");
        assert_eq!(subscriber.next_event().await.data, brackets);
    }
    // Broadcasts take the same limit.
    let response = reqwest::Client::new()
        .post(replica.url("/v1/broadcast"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"data":{}}}"#, nested(129)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "data_too_deep", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_beyond_the_schema_validator_are_refused_for_what_they_are() {
    let dir = policies();
    let replica = Replica::start(
        "numbers",
        None,
        &["--policies", dir.path().to_str().unwrap()],
    )
    .await;
    let digits = "9".repeat(400);
    let huge = ["1e400", "-1E+400", &*digits, r#"{"n":[1,1e400]}"#];
    for data in huge {
        let (status, answer) = publish_raw(&replica, publish_body("typed:1", data)).await;
        assert_eq!(status, 422, "{data}: {answer}");
        assert_eq!(answer["error"]["code"], "unsupported_number", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("cannot represent number"), "{message}");
    }
    // Numbers within range still meet the schema as before.
    let (status, answer) = publish_raw(&replica, publish_body("typed:1", "1e300")).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = publish_raw(&replica, publish_body("typed:1", r#""text""#)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "schema_violation");

    // Without a schema they are published byte for byte.
    let mut subscriber = Subscriber::connect(vec![replica.stream_url(&["plain:1"])], None).await;
    for data in huge {
        let (status, answer) = publish_raw(&replica, publish_body("plain:1", data)).await;
        assert_eq!(status, 200, "{data}: {answer}");
        assert_eq!(subscriber.next_event().await.data, data);
    }
}

/// Publishes `{"n":1}` to `channel` from the source address `from`.
async fn publish_from(replica: &Replica, from: [u8; 4], channel: &str) -> (u16, Value, bool) {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap();
    let response = client
        .post(replica.url("/v1/publish"))
        .json(&serde_json::json!({"channel": channel, "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_cannot_create_channels_without_bound() {
    let redis = Redis::start().await;
    // 1 new channel per second, bursts of 50.
    let replica = Replica::start("r0", Some(&redis), &["--new-channels-per-second", "1"]).await;
    let mut created = 0;
    let mut refused = None;
    for n in 0..80 {
        let (status, body, retry_after) =
            publish_from(&replica, [127, 0, 0, 1], &format!("flood:{n}")).await;
        match status {
            200 => created += 1,
            429 => {
                assert_eq!(body["error"]["code"], "channel_creation_limited", "{body}");
                assert!(retry_after);
                refused.get_or_insert(n);
            }
            other => panic!("{other}: {body}"),
        }
    }
    // The burst, give or take what the rate refilled meanwhile.
    assert!((50..60).contains(&created), "created {created}");
    let first_refused = refused.expect("the flood was bounded");
    let keys: Vec<String> = redis.cmd(&["KEYS", "sseplane:l:*"]).await;
    assert_eq!(
        keys.len(),
        created,
        "a refused publish leaves nothing in Redis"
    );
    // Existing channels take publishes as before; another publisher has its
    // own budget.
    let (status, body, _) = publish_from(&replica, [127, 0, 0, 1], "flood:0").await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) =
        publish_from(&replica, [127, 0, 0, 2], &format!("flood:{first_refused}")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_history_keeps_no_stream_in_redis() {
    let redis = Redis::start().await;
    let replica = Replica::start(
        "r0",
        Some(&redis),
        &[
            "--history-max-events",
            "0",
            "--new-channels-per-second",
            "0",
        ],
    )
    .await;
    let before: String = redis.cmd(&["INFO", "memory"]).await;
    for n in 0..2000 {
        let (status, body, _) = publish_from(&replica, [127, 0, 0, 1], &format!("bare:{n}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let streams: Vec<String> = redis.cmd(&["KEYS", "sseplane:h:*"]).await;
    assert!(streams.is_empty(), "{} history streams", streams.len());
    let after: String = redis.cmd(&["INFO", "memory"]).await;
    let used = |info: &str| -> i64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let per_channel = (used(&after) - used(&before)) / 2000;
    assert!(
        per_channel < 400,
        "{per_channel} bytes of Redis per channel"
    );
    // Ids still increase on such a channel.
    let first = publish(&replica, "bare:0", serde_json::json!(1)).await;
    let second = publish(&replica, "bare:0", serde_json::json!(2)).await;
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    assert!(parse(&second) > parse(&first), "{first} then {second}");
}

/// POSTs the raw broadcast body `body`; the status and the JSON answer.
async fn broadcast_raw(replica: &Replica, body: String) -> (u16, Value) {
    post_raw(replica, "/v1/broadcast", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogate_escapes_get_one_answer_on_every_channel() {
    let dir = policies();
    let replica = Replica::start(
        "surrogates",
        None,
        &["--policies", dir.path().to_str().unwrap()],
    )
    .await;
    let channels = ["typed:1", "plain:1"];
    let mut subscribers = Vec::new();
    for channel in channels {
        subscribers.push(Subscriber::connect(vec![replica.stream_url(&[channel])], None).await);
    }
    // Valid JSON syntax (RFC 8259), but no Unicode scalar value: a high half
    // alone, a low half alone, a high half followed by something else, a
    // pair in the wrong order, in values and in keys. The schema of `typed:*`
    // takes arrays and objects, so only the surrogate can be the objection.
    for (data, escape) in [
        (r#"["\ud800"]"#, r"\ud800"),
        (r#"["\uDC00"]"#, r"\uDC00"),
        (r#"["x\ud83d\u0041"]"#, r"\ud83d"),
        (r#"["\ude00\ud83d"]"#, r"\ude00"),
        (r#"{"ok":"\ud83d\ude00","\udbff":1}"#, r"\udbff"),
    ] {
        let mut answers = Vec::new();
        for channel in channels {
            let (status, answer) = publish_raw(&replica, publish_body(channel, data)).await;
            assert_eq!(status, 400, "{channel}, {data}: {answer}");
            assert_eq!(answer["error"]["code"], "invalid_string", "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("lone surrogate") && message.contains(escape),
                "{message}"
            );
            answers.push(answer);
        }
        assert_eq!(
            answers[0], answers[1],
            "{data}: one answer on every channel"
        );
        let (status, answer) = broadcast_raw(&replica, format!(r#"{{"data":{data}}}"#)).await;
        assert_eq!((status, &answer), (400, &answers[0]), "broadcast {data}");
    }
    // Surrogate pairs (an emoji written as UTF-16 escapes) are characters:
    // published on both, and delivered as sent, escapes and all. Nothing
    // refused above reached the streams.
    let pairs = r#"["\ud83d\ude00","\uD83D\uDE00 x","\udbff\udfff"]"#;
    for (channel, subscriber) in channels.iter().zip(&mut subscribers) {
        let (status, answer) = publish_raw(&replica, publish_body(channel, pairs)).await;
        assert_eq!(status, 200, "{channel}: {answer}");
        let event = subscriber.next_event().await;
        assert_eq!(event.data, pairs, "{channel}: byte for byte");
        assert_eq!(
            data(&event),
            serde_json::json!(["😀", "😀 x", "\u{10FFFF}"])
        );
    }
}
