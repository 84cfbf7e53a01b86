//! The process as an operator and a person at a terminal meet it: graceful
//! shutdown and the `publish`/`watch` helpers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_within_the_grace_period() {
    let redis = Redis::start().await;
    let mut leaving = Replica::start(
        "leaving",
        Some(&redis),
        &["--shutdown-grace", "5s", "--retry", "100ms"],
    )
    .await;
    let staying = Replica::start("staying", Some(&redis), &["--retry", "100ms"]).await;
    let mut subscriber = Subscriber::connect(
        vec![
            leaving.stream_url(&["drain"]),
            staying.stream_url(&["drain"]),
        ],
        None,
    )
    .await;
    publish(&staying, "drain", json!({"n": 1})).await;
    assert_eq!(seqs(&subscriber.take(1).await), vec![1]);
    leaving.terminate();
    subscriber.wait_disconnected().await;
    let status = leaving.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    // The client reconnected to the other replica and resumes there.
    publish(&staying, "drain", json!({"n": 2})).await;
    assert_eq!(seqs(&subscriber.take(1).await), vec![2]);
    assert_eq!(subscriber.replicas, vec!["leaving", "staying"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_watch_from_a_terminal() {
    let replica = Replica::start("term", None, &[]).await;
    let mut watch = Command::new(env!("CARGO_BIN_EXE_sseplane"))
        .args(["watch", "--url", &replica.url(""), "--channel", "demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("watch to subscribe", WAIT, || async {
        (replica.diagnostics("").await["totalLocalSubscribers"] == 1).then_some(())
    })
    .await;
    let printed = sseplane_stdout(&[
        "publish",
        "--url",
        &replica.url(""),
        "--channel",
        "demo",
        "--event",
        "greeting",
        "--data",
        r#"{"hello": "world"}"#,
    ]);
    let (channel, id) = printed.trim().split_once(' ').unwrap();
    assert_eq!(channel, "demo");
    let stdout = watch.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().next().unwrap().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        line,
        format!(r#"[term] id={id} event=greeting data={{"hello":"world"}}"#)
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let refused = run_sseplane(&[
        "publish",
        "--url",
        &replica.url(""),
        "--channel",
        "bad channel",
        "--data",
        "1",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("400"));
}
