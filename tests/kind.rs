//! Kubernetes end to end on a kind cluster: install the chart with Redis and
//! Jaeger, scale, kill pods, stop Redis, change a policy, find the trace, and
//! uninstall. Needs Docker, kind, kubectl and helm; where any is missing the
//! test prints one skip line (the GitHub workflow `kind.yml` runs it on two
//! Kubernetes versions). The scenario code is the local tests' own harness.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const NAMESPACE: &str = "sseplane";
const RELEASE: &str = "sseplane";
const IMAGE: &str = "sseplane:kind-test";

fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = ["docker", "kind", "kubectl", "helm"]
        .iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|t| t.to_string())
        .collect();
    let engine = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !missing.iter().any(|t| t == "docker") && !engine.is_ok_and(|s| s.success()) {
        missing.push("a running Docker engine".into());
    }
    missing
}

/// Runs a command to completion, panicking with its output on failure.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A token that may publish anywhere, signed with the secret the chart generated.
fn publisher_token() -> String {
    use base64::Engine;
    let encoded = kubectl(&[
        "get",
        "secret",
        &format!("{RELEASE}-auth"),
        "-o",
        "jsonpath={.data.jwt-secret}",
    ]);
    let secret = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("the generated secret is base64");
    let claims = json!({"sseplane": {"publish": ["*"], "subscribe": ["*"]}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

fn kubectl(args: &[&str]) -> String {
    let mut all = vec!["-n", NAMESPACE];
    all.extend_from_slice(args);
    run("kubectl", &all)
}

/// A kind cluster, deleted when dropped (unless KEEP_KIND_CLUSTER is set).
struct Cluster {
    name: String,
}

impl Cluster {
    fn create() -> Cluster {
        let name = std::env::var("KIND_CLUSTER_NAME").unwrap_or_else(|_| "sseplane-test".into());
        let config = format!("{}/manifests/kind-cluster.yaml", env!("CARGO_MANIFEST_DIR"));
        let mut args = vec![
            "create", "cluster", "--name", &name, "--config", &config, "--wait", "120s",
        ];
        let image = std::env::var("KIND_NODE_IMAGE").unwrap_or_default();
        if !image.is_empty() {
            args.extend(["--image", &image]);
        }
        run("kind", &args);
        Cluster { name }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_KIND_CLUSTER").is_none() {
            let _ = Command::new("kind")
                .args(["delete", "cluster", "--name", &self.name])
                .status();
        }
    }
}

/// `kubectl port-forward` to a pod or service; the local ports, in order.
struct Forward {
    child: Child,
    ports: Vec<u16>,
}

impl Forward {
    fn start(target: &str, remote: &[u16]) -> Forward {
        let specs: Vec<String> = remote.iter().map(|p| format!(":{p}")).collect();
        let mut args = vec!["-n", NAMESPACE, "port-forward", target];
        args.extend(specs.iter().map(String::as_str));
        let mut child = Command::new("kubectl")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ports = Vec::new();
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        while ports.len() < remote.len() {
            let line = lines.next().expect("port-forward output").unwrap();
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                ports.push(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Forward { child, ports }
    }

    fn url(&self, index: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[index])
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_pods() -> Vec<String> {
    let selector: Value = serde_json::from_str(&kubectl(&[
        "get",
        "deploy",
        RELEASE,
        "-o",
        "jsonpath={.spec.selector.matchLabels}",
    ]))
    .unwrap();
    let labels: Vec<String> = selector
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let names = kubectl(&[
        "get", "pods", "-l", &labels.join(","), "--field-selector=status.phase=Running",
        "-o", "jsonpath={range .items[?(@.metadata.deletionTimestamp==null)]}{.metadata.name}{\"\\n\"}{end}",
    ]);
    names
        .lines()
        .map(str::to_owned)
        .filter(|n| !n.is_empty())
        .collect()
}

fn scale(deployment: &str, replicas: u32) {
    kubectl(&[
        "scale",
        &format!("deploy/{deployment}"),
        &format!("--replicas={replicas}"),
    ]);
    kubectl(&[
        "rollout",
        "status",
        &format!("deploy/{deployment}"),
        "--timeout=180s",
    ]);
}

async fn ready_status(forward: &Forward) -> Option<u16> {
    reqwest::get(forward.url(1, "/readyz"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_install_scale_fail_and_trace() {
    let missing = missing_tools();
    if !missing.is_empty() {
        // Written past the test harness's capture, so the skip shows in every run.
        use std::io::Write;
        let line = format!(
            "SKIP kind tests: {} not available here (they run in .github/workflows/kind.yml)\n",
            missing.join(", ")
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let _cluster = Cluster::create();
    run("docker", &["build", "-t", IMAGE, root]);
    run(
        "kind",
        &["load", "docker-image", IMAGE, "--name", &_cluster.name],
    );
    run(
        "helm",
        &[
            "install",
            RELEASE,
            &format!("{root}/charts/sseplane"),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "image.repository=sseplane",
            "--set",
            "image.tag=kind-test",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "redis.enabled=true",
            "--set",
            "jaeger.enabled=true",
            "--set",
            "replicaCount=1",
            // The examples are applied below as they are.
            "--set",
            "policies=null",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    kubectl(&["apply", "-f", &format!("{root}/manifests/examples")]);
    // The chart turned auth on with a generated secret: publish with a token
    // minted from it, as a backend would.
    let token = publisher_token();

    // Scale 1 → 3: subscribers held by each pod get events published through any other.
    scale(RELEASE, 3);
    let pods = server_pods();
    assert_eq!(pods.len(), 3, "{pods:?}");
    let forwards: Vec<Forward> = pods
        .iter()
        .map(|p| Forward::start(&format!("pod/{p}"), &[8080, 9090]))
        .collect();
    let mut subscribers = Vec::new();
    for forward in &forwards {
        subscribers.push(
            Subscriber::connect(vec![forward.url(0, "/v1/stream?channel=kind:demo")], None).await,
        );
    }
    for (i, forward) in forwards.iter().enumerate() {
        let (status, body) = post_json_with(
            &forward.url(0, "/v1/publish"),
            &json!({"channel": "kind:demo", "data": {"n": i}}),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    for (subscriber, pod) in subscribers.iter_mut().zip(&pods) {
        assert_eq!(
            subscriber.replicas[0], *pod,
            "the stream is held by the pod it was forwarded to"
        );
        assert_eq!(seqs(&subscriber.take(3).await), vec![0, 1, 2]);
    }

    // Delete a pod under load: its clients resume on another with no gap.
    let mut moving = Subscriber::connect(
        vec![
            forwards[0].url(0, "/v1/stream?channel=kind:load"),
            forwards[1].url(0, "/v1/stream?channel=kind:load"),
        ],
        None,
    )
    .await;
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let url = forwards[1].url(0, "/v1/publish");
        let published = published.clone();
        let token = token.clone();
        tokio::spawn(async move {
            for n in 0..200u64 {
                let body = json!({"channel": "kind:load", "data": {"n": n}});
                let (status, body) = post_json_with(&url, &body, Some(&token)).await;
                assert_eq!(status, 200, "{body}");
                published.store(n + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_for("load to start", WAIT, || {
        let p = published.clone();
        async move { (p.load(Ordering::SeqCst) > 50).then_some(()) }
    })
    .await;
    kubectl(&["delete", "pod", &pods[0], "--wait=false"]);
    publisher.await.unwrap();
    assert_eq!(seqs(&moving.take(200).await), (0..200).collect::<Vec<_>>());
    assert!(
        moving.replicas.len() >= 2,
        "the client moved to another pod"
    );
    drop(forwards);
    kubectl(&[
        "rollout",
        "status",
        &format!("deploy/{RELEASE}"),
        "--timeout=180s",
    ]);

    // Redis to 0: every pod goes unready, then ready again.
    let pods = server_pods();
    let forwards: Vec<Forward> = pods
        .iter()
        .map(|p| Forward::start(&format!("pod/{p}"), &[8080, 9090]))
        .collect();
    scale(&format!("{RELEASE}-redis"), 0);
    for forward in &forwards {
        wait_for(
            "every pod unready without Redis",
            Duration::from_secs(60),
            || async { (ready_status(forward).await == Some(503)).then_some(()) },
        )
        .await;
    }
    scale(&format!("{RELEASE}-redis"), 1);
    for forward in &forwards {
        wait_for(
            "every pod ready again",
            Duration::from_secs(120),
            || async { (ready_status(forward).await == Some(200)).then_some(()) },
        )
        .await;
    }

    // A policy change takes effect without a restart.
    let policy = json!({
        "apiVersion": "sseplane.dev/v1alpha1", "kind": "ChannelPolicy",
        "metadata": {"name": "kind-small", "namespace": NAMESPACE},
        "spec": {"channels": ["kind:small:*"], "maxPayloadBytes": 100}
    });
    let file = std::env::temp_dir().join("kind-small-policy.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    let body = json!({"channel": "kind:small:1", "data": "x".repeat(300)});
    assert_eq!(
        post_json_with(&forwards[0].url(0, "/v1/publish"), &body, Some(&token))
            .await
            .0,
        200
    );
    kubectl(&["apply", "-f", file.to_str().unwrap()]);
    for forward in &forwards {
        wait_for(
            "the policy on every pod",
            Duration::from_secs(60),
            || async {
                let url = forward.url(0, "/v1/publish");
                let (status, _) = post_json_with(&url, &body, Some(&token)).await;
                (status == 413).then_some(())
            },
        )
        .await;
    }
    wait_for("the policy status", Duration::from_secs(60), || async {
        let status = kubectl(&[
            "get",
            "channelpolicy",
            "kind-small",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (status == "True").then_some(())
    })
    .await;

    // One trace in Jaeger holds the publish and deliveries from at least two pods.
    let mut watchers = Vec::new();
    for forward in &forwards {
        watchers.push(
            Subscriber::connect(vec![forward.url(0, "/v1/stream?channel=kind:traced")], None).await,
        );
    }
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(forwards[0].url(0, "/v1/publish"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"channel": "kind:traced", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let jaeger = Forward::start(&format!("svc/{RELEASE}-jaeger"), &[16686]);
    wait_for("the trace in Jaeger", Duration::from_secs(90), || async {
        let trace: Value = reqwest::get(jaeger.url(0, &format!("/api/traces/{trace_id}")))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let data = trace["data"].get(0)?;
        let processes = &data["processes"];
        let mut delivering = std::collections::HashSet::new();
        let mut published = false;
        for span in data["spans"].as_array()? {
            let pod = processes[span["processID"].as_str()?]["tags"]
                .as_array()?
                .iter()
                .find(|t| t["key"] == "service.instance.id")?["value"]
                .as_str()?
                .to_owned();
            match span["operationName"].as_str()? {
                "backplane.publish" => published = true,
                "sseplane.deliver" => {
                    delivering.insert(pod);
                }
                _ => {}
            }
        }
        (published && delivering.len() >= 2).then_some(())
    })
    .await;
    drop(watchers);
    drop(forwards);

    // Uninstall cleanly.
    run(
        "helm",
        &[
            "uninstall",
            RELEASE,
            "-n",
            NAMESPACE,
            "--wait",
            "--timeout",
            "3m",
        ],
    );
    wait_for("no pods left", Duration::from_secs(120), || async {
        kubectl(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    })
    .await;
}
