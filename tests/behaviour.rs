//! The behaviour suite: each scenario runs against real processes on the Redis
//! backplane (three replicas on one real `redis-server`) and on the in-memory
//! backplane (one instance), where it applies.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sseplane::client::SseParser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Redis,
    Memory,
}

/// Replicas on one backplane: three on Redis, one in memory.
struct Cluster {
    // Fields drop in order: the replicas go before their Redis.
    replicas: Vec<Replica>,
    _redis: Option<Redis>,
}

impl Cluster {
    async fn start(kind: Kind, extra: &[&str]) -> Cluster {
        match kind {
            Kind::Memory => Cluster {
                _redis: None,
                replicas: vec![Replica::start("m0", None, extra).await],
            },
            Kind::Redis => {
                let redis = Redis::start().await;
                let mut replicas = Vec::new();
                for i in 0..3 {
                    replicas.push(Replica::start(&format!("r{i}"), Some(&redis), extra).await);
                }
                Cluster {
                    _redis: Some(redis),
                    replicas,
                }
            }
        }
    }

    /// Replica `i`, wrapping around (so memory scenarios reuse the one instance).
    fn at(&self, i: usize) -> &Replica {
        &self.replicas[i % self.replicas.len()]
    }

    fn len(&self) -> usize {
        self.replicas.len()
    }
}

/// Generates a `redis` and a `memory` test for a scenario.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$scenario(super::Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario(super::Kind::Memory).await
            }
        }
    )*};
}

on_both!(
    events_reach_every_replica_in_order_once,
    ids_are_the_publish_ids_on_every_replica,
    several_channels_share_one_stream,
    broadcast_reaches_every_stream,
    resume_on_another_replica_gets_exactly_the_missed_events,
    resume_a_stream_of_several_channels,
    gap_notice_when_history_no_longer_covers_the_position,
    bad_last_event_ids_are_refused,
    clients_connecting_during_a_publish_burst_miss_nothing,
    payloads_cannot_break_the_framing,
    keepalive_comments_follow_the_configured_interval,
    a_slow_consumer_is_cut_off_and_resumes,
    every_contract_error_has_its_status_and_json_body,
    browsers_on_other_origins_may_call_the_api,
);

async fn events_reach_every_replica_in_order_once(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut subscribers = Vec::new();
    for i in 0..3 {
        subscribers
            .push(Subscriber::connect(vec![cluster.at(i).stream_url(&["orders"])], None).await);
    }
    for n in 0..30u64 {
        publish(cluster.at(n as usize), "orders", json!({ "n": n })).await;
    }
    // A sentinel after the burst: the event right after the 30th must be it,
    // so nothing was delivered twice.
    publish(cluster.at(1), "orders", json!({ "n": 999 })).await;
    for subscriber in &mut subscribers {
        let events = subscriber.take(31).await;
        let mut expected: Vec<u64> = (0..30).collect();
        expected.push(999);
        assert_eq!(seqs(&events), expected);
    }
    let served: Vec<_> = subscribers.iter().map(|s| s.replicas[0].clone()).collect();
    let distinct: std::collections::HashSet<_> = served.iter().collect();
    assert_eq!(
        distinct.len(),
        cluster.len(),
        "subscribers were spread over the replicas: {served:?}"
    );
}

async fn ids_are_the_publish_ids_on_every_replica(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut a = Subscriber::connect(vec![cluster.at(0).stream_url(&["game:1"])], None).await;
    let mut b = Subscriber::connect(vec![cluster.at(2).stream_url(&["game:1"])], None).await;
    let (status, answer) = post_json(
        &cluster.at(1).url("/v1/publish"),
        &json!({"channel": "game:1", "event": "PlayerJoined", "data": {"player": "ada"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"][0]["channel"], "game:1");
    let id = answer["results"][0]["id"].as_str().unwrap().to_owned();
    for subscriber in [&mut a, &mut b] {
        let event = subscriber.next_event().await;
        assert_eq!(event.id.as_deref(), Some(id.as_str()));
        assert_eq!(event.event, "PlayerJoined");
        assert_eq!(data(&event), json!({"player": "ada"}));
    }
}

async fn several_channels_share_one_stream(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut both = Subscriber::connect(vec![cluster.at(0).stream_url(&["b", "a"])], None).await;
    let mut only_a = Subscriber::connect(vec![cluster.at(1).stream_url(&["a"])], None).await;
    publish(cluster.at(1), "a", json!({"n": 1})).await;
    publish(cluster.at(2), "b", json!({"n": 2})).await;
    publish(cluster.at(2), "c", json!({"n": 3})).await;
    let (status, answer) = post_json(
        &cluster.at(0).url("/v1/publish"),
        &json!({"channels": ["a", "b"], "data": {"n": 4}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"].as_array().unwrap().len(), 2);
    let events = both.take(4).await;
    assert_eq!(seqs(&events), vec![1, 2, 4, 4]);
    let ids: Vec<_> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "every event of a multi-channel stream has its own id: {ids:?}"
    );
    assert_eq!(seqs(&only_a.take(2).await), vec![1, 4]);
}

async fn broadcast_reaches_every_stream(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut subscribers = Vec::new();
    for (i, channel) in ["x", "y", "z"].iter().enumerate() {
        subscribers
            .push(Subscriber::connect(vec![cluster.at(i).stream_url(&[channel, "w"])], None).await);
    }
    let (status, answer) = post_json(
        &cluster.at(1).url("/v1/broadcast"),
        &json!({"event": "announcement", "data": {"text": "maintenance at noon"}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"replicas": cluster.len()}));
    for subscriber in &mut subscribers {
        let event = subscriber.next_event().await;
        assert_eq!(event.event, "announcement");
        assert_eq!(event.id, None, "broadcasts carry no id");
        assert_eq!(data(&event)["text"], "maintenance at noon");
    }
    // Broadcasts are not kept: a resume from before it does not replay it.
    let first = publish(cluster.at(0), "x", json!({"n": 1})).await;
    publish(cluster.at(0), "x", json!({"n": 2})).await;
    let mut resumed =
        Subscriber::connect(vec![cluster.at(2).stream_url(&["x"])], Some(first)).await;
    assert_eq!(seqs(&resumed.take(1).await), vec![2]);
}

async fn resume_on_another_replica_gets_exactly_the_missed_events(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut first = Subscriber::connect(vec![cluster.at(0).stream_url(&["feed"])], None).await;
    for n in 0..3 {
        publish(cluster.at(2), "feed", json!({"n": n})).await;
    }
    let seen = first.take(3).await;
    let last_id = seen[2].id.clone().unwrap();
    drop(first);
    for n in 3..7 {
        publish(cluster.at(2), "feed", json!({"n": n})).await;
    }
    let mut resumed = Subscriber::connect(
        vec![cluster.at(1).stream_url(&["feed"])],
        Some(last_id.clone()),
    )
    .await;
    assert_eq!(seqs(&resumed.take(4).await), vec![3, 4, 5, 6]);
    publish(cluster.at(0), "feed", json!({"n": 7})).await;
    assert_eq!(seqs(&resumed.take(1).await), vec![7]);

    // The query parameter works as the header does.
    let url = format!(
        "{}&lastEventId={last_id}",
        cluster.at(2).stream_url(&["feed"])
    );
    let mut by_query = Subscriber::connect(vec![url], None).await;
    assert_eq!(seqs(&by_query.take(5).await), vec![3, 4, 5, 6, 7]);
}

async fn resume_a_stream_of_several_channels(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let mut first = Subscriber::connect(vec![cluster.at(0).stream_url(&["p", "q"])], None).await;
    publish(cluster.at(1), "p", json!({"n": 1})).await;
    publish(cluster.at(1), "q", json!({"n": 2})).await;
    let seen = first.take(2).await;
    drop(first);
    publish(cluster.at(2), "q", json!({"n": 3})).await;
    publish(cluster.at(2), "p", json!({"n": 4})).await;
    publish(cluster.at(2), "q", json!({"n": 5})).await;
    // Resuming from the *first* id replays what followed it on both channels.
    let mut from_first = Subscriber::connect(
        vec![cluster.at(1).stream_url(&["q", "p"])],
        seen[0].id.clone(),
    )
    .await;
    let mut replayed = seqs(&from_first.take(4).await);
    replayed.sort();
    assert_eq!(replayed, vec![2, 3, 4, 5]);
    let mut from_last = Subscriber::connect(
        vec![cluster.at(2).stream_url(&["p", "q"])],
        seen[1].id.clone(),
    )
    .await;
    let events = from_last.take(3).await;
    let mut replayed = seqs(&events);
    replayed.sort();
    assert_eq!(replayed, vec![3, 4, 5]);
    // And resuming from a replayed event's id continues exactly after it.
    publish(cluster.at(0), "p", json!({"n": 6})).await;
    let mut again = Subscriber::connect(
        vec![cluster.at(0).stream_url(&["p", "q"])],
        events[2].id.clone(),
    )
    .await;
    assert_eq!(seqs(&again.take(1).await), vec![6]);
}

async fn gap_notice_when_history_no_longer_covers_the_position(kind: Kind) {
    let cluster = Cluster::start(kind, &["--history-max-events", "3"]).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(publish(cluster.at(n), "short", json!({"n": n})).await);
    }
    let mut late =
        Subscriber::connect(vec![cluster.at(1).stream_url(&["short", "other"])], None).await;
    // A single-channel id is refused on a stream of other channels, so resume
    // on the one channel.
    drop(late);
    late = Subscriber::connect(
        vec![cluster.at(1).stream_url(&["short"])],
        Some(ids[2].clone()),
    )
    .await;
    let gap = late.next_event().await;
    assert_eq!(gap.event, "sseplane.gap");
    assert_eq!(data(&gap), json!({"channels": ["short"]}));
    assert_eq!(seqs(&late.take(3).await), vec![7, 8, 9]);

    // Still covered: no notice.
    let mut covered = Subscriber::connect(
        vec![cluster.at(2).stream_url(&["short"])],
        Some(ids[6].clone()),
    )
    .await;
    let events = covered.take(3).await;
    assert_eq!(seqs(&events), vec![7, 8, 9]);
}

async fn bad_last_event_ids_are_refused(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let http = reqwest::Client::new();
    let id = publish(cluster.at(0), "a", json!(1)).await;
    let cases: Vec<(String, Option<&str>)> = vec![
        (cluster.at(0).stream_url(&["a"]), Some("not-an-id")),
        (cluster.at(0).stream_url(&["a"]), Some("12-x")),
        (
            format!("{}&lastEventId=%0A1-0", cluster.at(0).stream_url(&["a"])),
            None,
        ),
        (cluster.at(1).stream_url(&["a", "b"]), Some(id.as_str())),
        (
            cluster.at(1).stream_url(&["a", "b"]),
            Some("0123abcd_1-0_2-0"),
        ),
    ];
    for (url, header) in cases {
        let mut request = http.get(&url);
        if let Some(header) = header {
            request = request.header("last-event-id", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{url} {header:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_last_event_id", "{body}");
    }
}

async fn clients_connecting_during_a_publish_burst_miss_nothing(kind: Kind) {
    const EVENTS: u64 = 200;
    let cluster = Arc::new(Cluster::start(kind, &[]).await);
    let published = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let publisher = {
        let cluster = cluster.clone();
        let published = published.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                publish(cluster.at(n as usize), "race", json!({"n": n})).await;
                published.store(n + 1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 0..24usize {
        let url = cluster.at(i).stream_url(&["race"]);
        let counter = published.clone();
        clients.push(tokio::spawn(async move {
            let mut subscriber = Subscriber::connect(vec![url], None).await;
            // Everything published after the stream opened must arrive.
            let before = counter.load(Ordering::SeqCst);
            let mut seen = Vec::new();
            if before < EVENTS {
                loop {
                    let n = seqs(&[subscriber.next_event().await])[0];
                    seen.push(n);
                    if n == EVENTS - 1 {
                        break;
                    }
                }
            }
            (before, seen)
        }));
        // Stagger the connections through the burst.
        wait_for("the burst to move on", WAIT, || {
            let published = published.clone();
            let target = (i as u64 + 1) * EVENTS / 30;
            async move { (published.load(Ordering::SeqCst) >= target).then_some(()) }
        })
        .await;
    }
    publisher.await.unwrap();
    for client in clients {
        let (before, seen) = client.await.unwrap();
        if seen.is_empty() {
            assert_eq!(before, EVENTS);
            continue;
        }
        // Publishes are sequential: at most the one in flight while the stream
        // opened may be missed; every later one must arrive.
        assert!(
            seen[0] <= before + 1,
            "first event {} but only {before} were published before the stream opened",
            seen[0]
        );
        let expected: Vec<u64> = (seen[0]..EVENTS).collect();
        assert_eq!(seen, expected, "missed or repeated events");
    }
}

async fn payloads_cannot_break_the_framing(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let url = cluster.at(0).stream_url(&["frame"]);
    let response = reqwest::get(&url).await.unwrap();
    let payloads = vec![
        json!("line1\nline2"),
        json!("cr\rlf\ncrlf\r\n\r\nend"),
        json!("\ndata: injected\n\nid: 999-0\nevent: evil\n\n"),
        json!({"id: 5": "retry: 1", "event": "data:", "nested": ["\r\n", ":comment"]}),
        json!("\u{2028}\u{2029}\u{0}\u{1b}"),
        json!(null),
        json!(12345678901234567890u64),
    ];
    for payload in &payloads {
        publish(cluster.at(1), "frame", payload.clone()).await;
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    let mut raw = Vec::new();
    let mut events = Vec::new();
    while events.len() < payloads.len() {
        let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        raw.extend_from_slice(&chunk);
        events.extend(parser.feed(&chunk));
    }
    for (event, payload) in events.iter().zip(&payloads) {
        assert_eq!(event.event, "message");
        assert_eq!(&data(event), payload);
    }
    let text = String::from_utf8(raw).unwrap();
    for line in text.split('\n') {
        assert!(
            line.is_empty()
                || ["retry: ", "id: ", "data: "]
                    .iter()
                    .any(|p| line.starts_with(p)),
            "unexpected SSE line {line:?}"
        );
        assert!(!line.contains('\r'), "raw CR on the wire: {line:?}");
    }
}

async fn keepalive_comments_follow_the_configured_interval(kind: Kind) {
    let cluster = Cluster::start(kind, &["--keepalive", "300ms", "--retry", "1500ms"]).await;
    let started = Instant::now();
    let response = reqwest::get(cluster.at(0).stream_url(&["quiet"]))
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new();
    while parser.comments < 3 {
        let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
            .await
            .expect("keepalives arrive")
            .unwrap()
            .unwrap();
        parser.feed(&chunk);
    }
    assert_eq!(parser.retry_ms, Some(1500));
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "three keepalives came after {:?}, faster than every 300 ms",
        started.elapsed()
    );
}

async fn a_slow_consumer_is_cut_off_and_resumes(kind: Kind) {
    let cluster = Cluster::start(kind, &["--queue-events", "8"]).await;
    let replica = cluster.at(0);
    // A client that sends its request and then reads nothing.
    let mut stuck = tokio::net::TcpStream::connect(("127.0.0.1", replica.public))
        .await
        .unwrap();
    stuck
        .write_all(b"GET /v1/stream?channel=bulk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    wait_for("the stuck stream to open", WAIT, || async {
        let d = replica.diagnostics("").await;
        (d["totalLocalSubscribers"] == 1).then_some(())
    })
    .await;
    let rss_before = replica.rss_kib();
    let blob = "x".repeat(40_000);
    // Publish until the hub gives up on the client (socket buffers fill first).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0u64;
    while replica.diagnostics("").await["slowConsumerDisconnects"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never cut off"
        );
        for _ in 0..20 {
            publish(
                cluster.at(n as usize),
                "bulk",
                json!({"n": n, "blob": blob}),
            )
            .await;
            n += 1;
        }
    }
    for _ in 0..200 {
        publish(
            cluster.at(n as usize),
            "bulk",
            json!({"n": n, "blob": blob}),
        )
        .await;
        n += 1;
    }
    let growth_mib = replica.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 32,
        "memory grew by {growth_mib} MiB for a stuck client"
    );
    // When the client reads again it finds its stream ended, short of the end.
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stuck.read_to_end(&mut raw))
        .await
        .expect("stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let mut parser = SseParser::new();
    let events = parser.feed(body.as_bytes());
    assert!(
        !events.is_empty(),
        "the client got events before falling behind"
    );
    assert_eq!(replica.diagnostics("").await["totalLocalSubscribers"], 0);
    // It resumes from its last id and gets everything after it.
    let last = events.last().unwrap().id.clone();
    let missed_first = {
        let mut resumed =
            Subscriber::connect(vec![cluster.at(1).stream_url(&["bulk"])], last).await;
        resumed.next_event().await
    };
    let last_seen = data(events.last().unwrap())["n"].as_u64().unwrap();
    assert_ne!(data(&missed_first)["n"].as_u64().unwrap(), last_seen);
}

/// Removes HTTP/1.1 chunked framing.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            out.push_str(&after[..size.min(after.len())]);
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

async fn every_contract_error_has_its_status_and_json_body(kind: Kind) {
    let cluster = Cluster::start(kind, &["--max-payload-bytes", "1000"]).await;
    let r = cluster.at(0);
    let http = reqwest::Client::new();
    let post = |path: &str, content_type: &str, body: String| {
        http.post(r.url(path))
            .header("content-type", content_type)
            .body(body)
    };
    let cases = vec![
        (
            "no channel",
            http.get(r.url("/v1/stream")),
            400,
            "missing_channel",
        ),
        (
            "bad channel",
            http.get(r.url("/v1/stream?channel=a%20b")),
            400,
            "invalid_channel",
        ),
        (
            "long channel",
            http.get(r.url(&format!("/v1/stream?channel={}", "c".repeat(201)))),
            400,
            "invalid_channel",
        ),
        (
            "not JSON",
            post(
                "/v1/publish",
                "text/plain",
                r#"{"channel":"a","data":1}"#.into(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "malformed JSON",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a","data":"#.into(),
            ),
            400,
            "malformed_json",
        ),
        (
            "missing data",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a"}"#.into(),
            ),
            400,
            "missing_data",
        ),
        (
            "both channel and channels",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a","channels":["b"],"data":1}"#.into(),
            ),
            400,
            "invalid_request",
        ),
        (
            "neither channel nor channels",
            post("/v1/publish", "application/json", r#"{"data":1}"#.into()),
            400,
            "missing_channel",
        ),
        (
            "empty channels",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channels":[],"data":1}"#.into(),
            ),
            400,
            "invalid_channels",
        ),
        (
            "bad channel in publish",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a*","data":1}"#.into(),
            ),
            400,
            "invalid_channel",
        ),
        (
            "event type with a newline",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a","event":"x\nid: 1","data":1}"#.into(),
            ),
            400,
            "invalid_event_type",
        ),
        (
            "reserved event type",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a","event":"sseplane.gap","data":1}"#.into(),
            ),
            400,
            "invalid_event_type",
        ),
        (
            "unknown field",
            post(
                "/v1/publish",
                "application/json",
                r#"{"channel":"a","data":1,"extra":true}"#.into(),
            ),
            400,
            "invalid_request",
        ),
        (
            "body over the limit",
            post(
                "/v1/publish",
                "application/json",
                format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(1000)),
            ),
            413,
            "payload_too_large",
        ),
        (
            "broadcast without data",
            post(
                "/v1/broadcast",
                "application/json",
                r#"{"event":"x"}"#.into(),
            ),
            400,
            "missing_data",
        ),
        (
            "not an object",
            post("/v1/publish", "application/json", "[1,2]".into()),
            400,
            "invalid_request",
        ),
        (
            // serde would read the fields in order: event null, data null.
            "an array that reads as a broadcast",
            post("/v1/broadcast", "application/json", "[null, null]".into()),
            400,
            "invalid_request",
        ),
        (
            "an array that reads as a publish",
            post(
                "/v1/publish",
                "application/json",
                r#"["a", null, null, 1]"#.into(),
            ),
            400,
            "invalid_request",
        ),
        (
            "unknown path",
            http.get(r.url("/v2/nothing")),
            404,
            "not_found",
        ),
        (
            "wrong method",
            http.get(r.url("/v1/publish")),
            405,
            "method_not_allowed",
        ),
        (
            "wrong method on stream",
            http.delete(r.url("/v1/stream?channel=a")),
            405,
            "method_not_allowed",
        ),
        (
            "unknown admin path",
            http.get(r.admin_url("/nope")),
            404,
            "not_found",
        ),
        (
            "bad diagnostics scope",
            http.get(r.admin_url("/v1/diagnostics?scope=galaxy")),
            400,
            "invalid_scope",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
    }
    // Nothing was published by any of them.
    let mut subscriber = Subscriber::connect(vec![r.stream_url(&["a"])], Some("0-0".into())).await;
    publish(r, "a", json!("only")).await;
    assert_eq!(data(&subscriber.next_event().await), json!("only"));
    // data: null is a value.
    let (status, _) = post_json(
        &r.url("/v1/publish"),
        &json!({"channel": "a", "data": null}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(subscriber.next_event().await.data, "null");
}

async fn browsers_on_other_origins_may_call_the_api(kind: Kind) {
    let cluster = Cluster::start(kind, &[]).await;
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, cluster.at(0).url("/v1/publish"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let stream = http
        .get(cluster.at(0).stream_url(&["cors"]))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["access-control-allow-origin"], "*");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_eq!(stream.headers()["cache-control"], "no-cache");
    assert_eq!(stream.headers()["x-accel-buffering"], "no");

    let listed = Replica::start("cors", None, &["--cors-origins", "https://app.example"]).await;
    let allowed = http
        .get(listed.stream_url(&["cors"]))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let other = http
        .get(listed.stream_url(&["cors"]))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
