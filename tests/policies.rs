//! Channel policies: the generated CRD, the examples, and every rule enforced
//! over HTTP by real processes reading `--policies`, changed while they run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CRD_COPIES: [&str; 2] = [
    "manifests/crds/channelpolicy.yaml",
    "charts/sseplane/crds/channelpolicy.yaml",
];

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Writes `text` to `dir/name` atomically (as ConfigMap updates do).
fn write_policy(dir: &Path, name: &str, text: &str) {
    let staged = dir.join(format!(".{name}.tmp"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, dir.join(name)).unwrap();
}

fn policy_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: sseplane.dev/v1alpha1\nkind: ChannelPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

#[test]
fn committed_crds_match_the_types() {
    let generated = sseplane_stdout(&["crd"]);
    assert!(generated.contains("kind: CustomResourceDefinition"));
    for copy in CRD_COPIES {
        let committed = std::fs::read_to_string(repo(copy)).unwrap_or_default();
        assert!(
            committed == generated,
            "{copy} is out of date: run `cargo run -- crd > {copy}` (for every copy)"
        );
    }
}

fn crd_schema() -> Value {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(sseplane::policy::crd::ChannelPolicy::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["chp"]));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        columns.contains(&"Channels") && columns.contains(&"History") && columns.contains(&"Ready")
    );
    version["schema"]["openAPIV3Schema"].clone()
}

fn example_documents() -> Vec<Value> {
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo("manifests/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        documents.extend(sseplane::yaml::documents(&text).unwrap());
    }
    documents
}

#[test]
fn the_crd_schema_accepts_the_examples_and_rejects_bad_specs() {
    let schema = crd_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let examples = example_documents();
    assert!(examples.len() >= 5, "the seeds' scenarios are all there");
    for example in &examples {
        let errors: Vec<String> = validator
            .iter_errors(example)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{}: {errors:?}",
            example["metadata"]["name"]
        );
    }
    let base = examples[0].clone();
    let bad = [
        ("/spec/keepalive", json!("10 seconds")),
        ("/spec/channels", json!([])),
        ("/spec/channels", json!(["has space"])),
        ("/spec/history/maxEvents", json!(-1)),
        ("/spec/maxPayloadBytes", json!(0)),
        ("/spec/slowConsumer", json!({"action": "Explode"})),
        ("/spec/rateLimit", json!({"burst": 3})),
        ("/spec/priority", json!("high")),
    ];
    for (pointer, value) in bad {
        let mut document = base.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        document.pointer_mut(parent).unwrap()[field] = value.clone();
        assert!(
            !validator.is_valid(&document),
            "{pointer} = {value} was accepted"
        );
    }
    // The CEL rule on reserved event types is in the CRD for the API server.
    let text = serde_json::to_string(&schema).unwrap();
    assert!(text.contains("x-kubernetes-validations") && text.contains("sseplane."));
    assert!(text.contains("x-kubernetes-preserve-unknown-fields"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_load_in_a_running_replica() {
    let replica = Replica::start(
        "ex",
        None,
        &["--policies", repo("manifests/examples").to_str().unwrap()],
    )
    .await;
    let diagnostics = replica
        .diagnostics("?channel=game:7:PlayerJoinedEvent")
        .await;
    let verdicts = diagnostics["policies"].as_array().unwrap();
    assert_eq!(verdicts.len(), 5, "{verdicts:?}");
    assert!(
        verdicts.iter().all(|v| v.get("error").is_none()),
        "{verdicts:?}"
    );
    assert_eq!(diagnostics["policy"]["policy"], "file:game-player-joined");
    assert_eq!(diagnostics["policy"]["pattern"], "game:*:PlayerJoinedEvent");
    let (status, body) = post_json(
        &replica.url("/v1/publish"),
        &json!({"channel": "game:7:PlayerJoinedEvent", "event": "PlayerJoinedEvent", "data": {"gameId": "7", "playerId": "ada"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_rule_is_enforced_over_http() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(
        dir.path(),
        "strict.yaml",
        &policy_yaml(
            "strict",
            "  channels: [\"strict:*\"]\n  maxPayloadBytes: 300\n  allowedEventTypes: [Ok]\n  schema:\n    type: object\n    required: [n]\n    properties:\n      n: {type: integer}\n  rateLimit: {perSecond: 1, burst: 3}\n  maxSubscribersPerReplica: 2\n  retry: 1500ms\n  keepalive: 300ms\n  history: {maxEvents: 2}\n",
        ),
    );
    let replica = Replica::start("p", None, &["--policies", dir.path().to_str().unwrap()]).await;
    let publish_to = |channel: &str, event: Option<&str>, data: Value| {
        let mut body = json!({"channel": channel, "data": data});
        if let Some(event) = event {
            body["event"] = json!(event);
        }
        let url = replica.url("/v1/publish");
        async move { post_json(&url, &body).await }
    };
    let expect = |(status, body): (u16, Value), want: u16, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        body["error"]["message"].as_str().unwrap().to_owned()
    };
    // 413: the policy's body limit, not the default one.
    let big = "x".repeat(400);
    expect(
        publish_to("strict:a", Some("Ok"), json!({"n": 1, "pad": big})).await,
        413,
        "payload_too_large",
    );
    assert_eq!(publish_to("loose", None, json!({"pad": big})).await.0, 200);
    // 422: event types and schema, with the failing path.
    expect(
        publish_to("strict:a", Some("Nope"), json!({"n": 1})).await,
        422,
        "event_type_not_allowed",
    );
    expect(
        publish_to("strict:a", None, json!({"n": 1})).await,
        422,
        "event_type_not_allowed",
    );
    let message = expect(
        publish_to("strict:a", Some("Ok"), json!({"n": "one"})).await,
        422,
        "schema_violation",
    );
    assert!(message.contains("/n"), "{message}");
    let message = expect(
        publish_to("strict:a", Some("Ok"), json!({"m": 1})).await,
        422,
        "schema_violation",
    );
    assert!(message.contains("\"n\""), "{message}");
    // 429 after the burst, with Retry-After; refused publishes spent no tokens.
    for n in 0..3 {
        let (status, body) = publish_to("strict:rate", Some("Ok"), json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
    }
    let response = reqwest::Client::new()
        .post(replica.url("/v1/publish"))
        .json(&json!({"channel": "strict:rate", "event": "Ok", "data": {"n": 4}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // 503 past the subscriber limit, with Retry-After.
    let _first = Subscriber::connect(vec![replica.stream_url(&["strict:subs"])], None).await;
    let _second = Subscriber::connect(vec![replica.stream_url(&["strict:subs"])], None).await;
    let refused = reqwest::get(replica.stream_url(&["strict:subs"]))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "subscriber_limit"
    );
    // The stream takes retry and keepalive from the policy.
    let started = Instant::now();
    let response = reqwest::get(replica.stream_url(&["strict:ka"]))
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut parser = sseplane::client::SseParser::new();
    while parser.comments < 2 {
        let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        parser.feed(&chunk);
    }
    assert_eq!(parser.retry_ms, Some(1500));
    assert!(started.elapsed() < Duration::from_secs(10));
    // History is trimmed by the policy: 2 events kept.
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, body) = publish_to("strict:h", Some("Ok"), json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["results"][0]["id"].as_str().unwrap().to_owned());
    }
    let mut resumed =
        Subscriber::connect(vec![replica.stream_url(&["strict:h"])], Some("0-0".into())).await;
    assert_eq!(resumed.next_event().await.event, "sseplane.gap");
    assert_eq!(seqs(&resumed.take(2).await), vec![1, 2]);
    // Diagnostics say which policy won and why.
    let diagnostics = replica.diagnostics("?channel=strict:a").await;
    assert_eq!(diagnostics["policy"]["policy"], "file:strict");
    assert_eq!(diagnostics["policy"]["pattern"], "strict:*");
    let channel = diagnostics["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "strict:subs")
        .unwrap();
    assert_eq!(channel["policy"], "file:strict");
    assert_eq!(
        replica.diagnostics("?channel=other").await["policy"]["policy"],
        "default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_policy_files_changes_running_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start().await;
    let path = dir.path().to_str().unwrap();
    let replicas = [
        Replica::start("a", Some(&redis), &["--policies", path]).await,
        Replica::start("b", Some(&redis), &["--policies", path]).await,
    ];
    let body = json!({"channel": "live:1", "data": "x".repeat(300)});
    for replica in &replicas {
        assert_eq!(post_json(&replica.url("/v1/publish"), &body).await.0, 200);
    }
    // An open stream with the default 15 s keepalive.
    let response = reqwest::get(replicas[0].stream_url(&["live:1"]))
        .await
        .unwrap();
    let mut stream = response.bytes_stream();

    write_policy(
        dir.path(),
        "live.yaml",
        &policy_yaml(
            "live",
            "  channels: [\"live:*\"]\n  maxPayloadBytes: 100\n  keepalive: 200ms\n",
        ),
    );
    for replica in &replicas {
        wait_for("the new limit on every replica", WAIT, || async {
            (post_json(&replica.url("/v1/publish"), &body).await.0 == 413).then_some(())
        })
        .await;
    }
    // The open stream now gets keepalives every 200 ms.
    let mut parser = sseplane::client::SseParser::new();
    while parser.comments < 3 {
        let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        parser.feed(&chunk);
    }
    // A file that does not parse leaves the policies as they were.
    write_policy(dir.path(), "broken.yaml", "kind: ChannelPolicy\nspec: [\n");
    for replica in &replicas {
        wait_for("the failed reload to be reported", WAIT, || async {
            let sources = replica.diagnostics("").await["policySources"].clone();
            let error = sources[0]["lastError"].as_str().unwrap_or("").to_owned();
            error.contains("broken.yaml").then_some(())
        })
        .await;
    }
    assert_eq!(
        post_json(&replicas[1].url("/v1/publish"), &body).await.0,
        413
    );
    std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("live.yaml")).unwrap();
    for replica in &replicas {
        wait_for("the limit to go with the file", WAIT, || async {
            (post_json(&replica.url("/v1/publish"), &body).await.0 == 200).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_ignored_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = [
        policy_yaml("bad-glob", "  channels: [\"game:[*\"]\n"),
        policy_yaml(
            "bad-schema",
            "  channels: [\"s:*\"]\n  schema: {type: 12}\n",
        ),
        policy_yaml("good", "  channels: [\"g:*\"]\n  maxPayloadBytes: 50\n"),
    ]
    .join("---\n");
    write_policy(dir.path(), "mixed.yaml", &text);
    let replica = Replica::start("i", None, &["--policies", dir.path().to_str().unwrap()]).await;
    let verdicts = replica.diagnostics("").await["policies"].clone();
    let error_of = |key: &str| {
        verdicts
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == key)
            .unwrap()
            .get("error")
            .cloned()
    };
    assert!(error_of("file:bad-glob")
        .unwrap()
        .as_str()
        .unwrap()
        .contains("game:[*"));
    assert!(error_of("file:bad-schema")
        .unwrap()
        .as_str()
        .unwrap()
        .contains("schema"));
    assert!(error_of("file:good").is_none());
    let (status, _) = post_json(
        &replica.url("/v1/publish"),
        &json!({"channel": "g:1", "data": "x".repeat(60)}),
    )
    .await;
    assert_eq!(status, 413);

    // A file that cannot be read at start stops the start with a clear error.
    write_policy(
        dir.path(),
        "zz-broken.yaml",
        "kind: ChannelPolicy\nspec: [\n",
    );
    let output = run_sseplane(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("zz-broken.yaml"));
}
