//! Smoke runs of `sseplane bench` against a real sseplane: the tool counts what
//! was sent (correctness, not speed).

mod common;

use common::*;
use serde_json::Value;

fn bench(replica: &Replica, args: &[&str]) -> Value {
    let sub_url = format!("{}/v1/stream?channel={{channel}}", replica.url(""));
    let pub_url = replica.url("/v1/publish");
    let pid = replica.pid().to_string();
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend(["--sub-url", &sub_url, "--pub-url", &pub_url, "--pid", &pid]);
    let stdout = sseplane_stdout(&all);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_counts_what_was_sent() {
    let replica = Replica::start("bench", None, &[]).await;

    let latency = bench(
        &replica,
        &[
            "latency",
            "--subscribers",
            "5",
            "--rate",
            "100",
            "--duration",
            "1s",
        ],
    );
    let published = latency["published"].as_u64().unwrap();
    assert!(published >= 50, "{latency}");
    assert_eq!(latency["expected"].as_u64().unwrap(), published * 5);
    assert_eq!(latency["delivered"], latency["expected"], "{latency}");
    assert_eq!(latency["lost"], 0);
    assert_eq!(latency["duplicates"], 0);
    assert!(latency["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(latency["server_cpu_s"].as_f64().is_some());

    let fanout = bench(
        &replica,
        &[
            "fanout",
            "--subscribers",
            "6",
            "--channels",
            "3",
            "--duration",
            "1s",
            "--max-events",
            "300",
        ],
    );
    assert_eq!(fanout["published"], 300, "{fanout}");
    assert_eq!(
        fanout["expected"], 600,
        "each event reaches its channel's two subscribers"
    );
    assert_eq!(fanout["delivered"], 600, "{fanout}");

    let idle = bench(
        &replica,
        &["idle", "--subscribers", "40", "--hold", "200ms"],
    );
    assert_eq!(idle["established"], 40, "{idle}");
    assert!(idle["server_rss_kib_after"].as_u64().unwrap() > 0);

    // Refused publishes are counted as errors, not as published.
    let secured = Replica::start("bench-secured", None, &["--jwt-secret", "bench-secret"]).await;
    let refused = bench(
        &secured,
        &[
            "fanout",
            "--subscribers",
            "1",
            "--publishers",
            "2",
            "--duration",
            "5s",
            "--max-events",
            "20",
        ],
    );
    assert_eq!(refused["publish_errors"], 20, "{refused}");
    assert_eq!(refused["published"], 0, "{refused}");
    assert_eq!(refused["delivered"], 0, "{refused}");

    // Only loopback targets are accepted.
    let refused = run_sseplane(&[
        "bench",
        "idle",
        "--subscribers",
        "1",
        "--sub-url",
        "http://192.0.2.1:80/x",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("loopback"));
}

/// Streams idle between events are written by the hub for narrow channels and
/// by their own tasks for a channel wider than the hub's flush limit (64):
/// both lose nothing, with publishes going through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_and_narrow_channels_deliver_every_event() {
    let redis = Redis::start().await;
    let replica = Replica::start("bench", Some(&redis), &[]).await;
    for channels in ["1", "13"] {
        let run = bench(
            &replica,
            &[
                "fanout",
                "--subscribers",
                "130",
                "--channels",
                channels,
                "--duration",
                "20s",
                "--max-events",
                "260",
            ],
        );
        assert_eq!(run["published"], 260, "{run}");
        let per_event = 130 / channels.parse::<u64>().unwrap();
        assert_eq!(run["expected"], 260 * per_event, "{run}");
        assert_eq!(run["delivered"], run["expected"], "{run}");
    }
}
