//! Traces and metrics as an operator sees them: an OTLP collector inside the
//! test receives the spans of two real replicas on one Redis; `/metrics` after
//! a scenario says what happened.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde_json::json;

/// A span as received, flattened.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    replica: String,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// An OTLP/gRPC trace collector on a free port that keeps every span.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Keeps the spans of one export request.
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = flatten(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let replica = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        replica: replica.clone(),
                        attributes: flatten(&span.attributes),
                    });
                }
            }
        }
    }

    async fn start() -> (Collector, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (collector, port)
    }

    /// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body, as the
    /// OpenTelemetry Collector's HTTP receiver takes it.
    async fn start_http() -> (Collector, u16) {
        use axum::http::{header, HeaderMap, StatusCode};
        use prost::Message;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let collector = Collector::default();
        let kept = collector.clone();
        let traces = move |headers: HeaderMap, body: bytes::Bytes| async move {
            let content_type = headers.get(header::CONTENT_TYPE);
            if content_type.is_none_or(|v| v != "application/x-protobuf") {
                return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
            }
            match ExportTraceServiceRequest::decode(body) {
                Ok(request) => {
                    kept.keep(request);
                    let answer = ExportTraceServiceResponse {
                        partial_success: None,
                    };
                    (StatusCode::OK, answer.encode_to_vec())
                }
                Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
            }
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(traces));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, port)
    }

    fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn otel_env(port: u16) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_SERVICE_NAME".into(), "sseplane-test".into()),
    ]
}

async fn traced_replica(id: &str, redis: &Redis, port: u16) -> Replica {
    let env = otel_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Replica::start_with_env(id, Some(redis), &[], &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_event_to_every_replica() {
    let (collector, port) = Collector::start().await;
    let redis = Redis::start().await;
    let r0 = traced_replica("r0", &redis, port).await;
    let r1 = traced_replica("r1", &redis, port).await;
    let _idle = traced_replica("r2", &redis, port).await;
    let mut on_r0 = Subscriber::connect(vec![r0.stream_url(&["traced"])], None).await;
    let mut on_r1 = Subscriber::connect(vec![r1.stream_url(&["traced"])], None).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(r0.url("/v1/publish"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"channel": "traced", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.json::<serde_json::Value>().await.unwrap()["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    on_r0.next_event().await;
    on_r1.next_event().await;

    let spans = wait_for(
        "the request, the publish and two deliveries in one trace",
        WAIT,
        || async {
            let spans = collector.trace(trace_id);
            let deliveries = spans
                .iter()
                .filter(|s| s.name == "sseplane.deliver")
                .count();
            // The request span ends last (after the answer is written), so
            // it may come in a later export batch than its children.
            let publish = spans.iter().any(|s| s.name == "backplane.publish");
            let request = spans.iter().any(|s| s.name == "POST /v1/publish");
            (publish && request && deliveries == 2).then_some(spans)
        },
    )
    .await;
    let request = spans
        .iter()
        .find(|s| s.name == "POST /v1/publish")
        .expect("the request span");
    assert_eq!(
        request.parent_span_id, caller_span,
        "the caller's traceparent is continued"
    );
    assert_eq!(request.replica, "r0");
    let hop = spans
        .iter()
        .find(|s| s.name == "backplane.publish")
        .unwrap();
    assert_eq!(hop.parent_span_id, request.span_id);
    assert_eq!(hop.attributes["messaging.system"], "redis");
    let mut replicas = Vec::new();
    for delivery in spans.iter().filter(|s| s.name == "sseplane.deliver") {
        assert_eq!(
            delivery.parent_span_id, hop.span_id,
            "deliveries hang off the Redis hop"
        );
        assert_eq!(delivery.attributes["messaging.destination.name"], "traced");
        assert_eq!(delivery.attributes["sseplane.event_id"], id);
        assert_eq!(delivery.attributes["sseplane.subscribers"], "1");
        assert_eq!(delivery.attributes["sseplane.replica"], delivery.replica);
        assert!(delivery.attributes.contains_key("sseplane.lag_ms"));
        replicas.push(delivery.replica.clone());
    }
    replicas.sort();
    assert_eq!(
        replicas,
        ["r0", "r1"],
        "one delivery span per replica with subscribers, none from r2"
    );
    // The trace as a tree (shown with --nocapture; docs/observability.md's rendering).
    let mut deliveries: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "sseplane.deliver")
        .collect();
    deliveries.sort_by(|a, b| a.replica.cmp(&b.replica));
    eprintln!(
        "trace {trace_id}\n{} [{}] parent={caller_span}",
        request.name, request.replica
    );
    eprintln!("└─ {} [{}] messaging.system=redis", hop.name, hop.replica);
    for (i, d) in deliveries.iter().enumerate() {
        let branch = if i + 1 == deliveries.len() {
            "└─"
        } else {
            "├─"
        };
        eprintln!(
            "   {branch} {} [{}] channel={} event_id={} subscribers={} lag_ms={}",
            d.name,
            d.replica,
            d.attributes["messaging.destination.name"],
            d.attributes["sseplane.event_id"],
            d.attributes["sseplane.subscribers"],
            d.attributes["sseplane.lag_ms"]
        );
    }

    // A resume is traced as a replay.
    publish(&r1, "traced", json!({"n": 2})).await;
    let resume_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .get(r1.stream_url(&["traced"]))
        .header("last-event-id", id.as_str())
        .header(
            "traceparent",
            format!("00-{resume_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let replay = wait_for("the replay span", WAIT, || async {
        collector
            .trace(resume_trace)
            .into_iter()
            .find(|s| s.name == "sseplane.replay")
    })
    .await;
    assert_eq!(replay.attributes["sseplane.replayed"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_export_over_http_protobuf() {
    let (collector, port) = Collector::start_http().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "sseplane-test"),
    ];
    let replica = Replica::start_logged("h0", None, &[], &env, Some(&log)).await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let caller_span = "10f067aa0ba902b7";
    for n in 0..2 {
        let response = reqwest::Client::new()
            .post(replica.url("/v1/publish"))
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&json!({"channel": "traced", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let spans = wait_for("the publish spans over OTLP/HTTP", WAIT, || async {
        let spans = collector.trace(trace_id);
        let hops = spans
            .iter()
            .filter(|s| s.name == "backplane.publish")
            .count();
        let requests = spans
            .iter()
            .filter(|s| s.name == "POST /v1/publish")
            .count();
        (hops == 2 && requests == 2).then_some(spans)
    })
    .await;
    let request = spans.iter().find(|s| s.name == "POST /v1/publish").unwrap();
    assert_eq!(request.parent_span_id, caller_span);
    assert_eq!(request.replica, "h0");
    assert!(spans
        .iter()
        .filter(|s| s.name == "backplane.publish")
        .all(|hop| spans.iter().any(|r| r.span_id == hop.parent_span_id)));
    assert_eq!(
        metric(
            &replica.metrics().await,
            "sseplane_trace_spans_dropped_total",
            ""
        ),
        0.0
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_delivery() {
    let redis = Redis::start().await;
    let closed = free_port();
    let replica = traced_replica("r0", &redis, closed).await;
    let mut subscriber = Subscriber::connect(vec![replica.stream_url(&["dark"])], None).await;
    for n in 0..20 {
        let response = reqwest::Client::new()
            .post(replica.url("/v1/publish"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&json!({"channel": "dark", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        seqs(&subscriber.take(20).await),
        (0..20).collect::<Vec<_>>()
    );
    wait_for("dropped spans to be counted", WAIT, || async {
        (metric(
            &replica.metrics().await,
            "sseplane_trace_spans_dropped_total",
            "",
        ) > 0.0)
            .then_some(())
    })
    .await;
}

/// Publishes `count` small events on `channel` over `workers` keep-alive
/// connections, asserting each is accepted.
async fn publish_many(replica: &Replica, channel: &str, count: usize, workers: usize) {
    let url = replica.url("/v1/publish");
    let body = serde_json::to_vec(&json!({"channel": channel, "data": {"n": 1}})).unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (url, body) = (url.clone(), body.clone());
            let share = count / workers + usize::from(w < count % workers);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for _ in 0..share {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Publishes per round, enough for the recorder's per-request histogram
/// samples (about 20 bytes each when nothing drains them) to show in RSS.
const ROUND: usize = 40_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_when_nothing_scrapes_metrics() {
    let replica = Replica::start("rss", None, &[]).await;
    // Warm up: allocator pools, connection buffers, history at its limit.
    publish_many(&replica, "flat", ROUND, 4).await;
    let mut rss = vec![replica.rss_kib()];
    for _ in 0..3 {
        publish_many(&replica, "flat", ROUND, 4).await;
        rss.push(replica.rss_kib());
    }
    let growth: Vec<i64> = rss.windows(2).map(|w| w[1] as i64 - w[0] as i64).collect();
    eprintln!(
        "RSS after warm-up and {ROUND} publishes per round: {rss:?} KiB, growth {growth:?} KiB"
    );
    // Undrained samples cost ~20 B per request: ~780 KiB per round here
    // (measured 600 KiB to 2.4 MB per round without the upkeep). A flat
    // process moves by a few hundred KiB either way (allocator pages); the
    // last two rounds together must stay under one round's leak.
    let leak_per_round = (ROUND * 20 / 1024) as i64;
    assert!(
        growth[1] + growth[2] < leak_per_round,
        "memory keeps growing without scrapes: RSS {rss:?} KiB (growth {growth:?})"
    );
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_what_happened_and_ignore_probes() {
    let replica = Replica::start("m", None, &["--queue-events", "4"]).await;
    let mut a = Subscriber::connect(vec![replica.stream_url(&["metered"])], None).await;
    let mut b = Subscriber::connect(vec![replica.stream_url(&["metered", "other"])], None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&replica, "metered", json!({"n": n})).await);
    }
    a.take(3).await;
    b.take(3).await;
    let (status, _) = post_json(
        &replica.url("/v1/publish"),
        &json!({"channel": "bad channel", "data": 1}),
    )
    .await;
    assert_eq!(status, 400);
    let mut resumed =
        Subscriber::connect(vec![replica.stream_url(&["metered"])], Some(ids[0].clone())).await;
    resumed.take(2).await;

    let text = replica.metrics().await;
    assert_eq!(metric(&text, "sseplane_open_streams", ""), 3.0, "{text}");
    assert_eq!(
        metric(&text, "sseplane_events_published_total", "outcome=\"ok\""),
        3.0
    );
    assert_eq!(metric(&text, "sseplane_events_delivered_total", ""), 6.0);
    assert_eq!(metric(&text, "sseplane_replayed_events_total", ""), 2.0);
    assert_eq!(
        metric(&text, "sseplane_publish_deliver_lag_seconds_count", ""),
        3.0
    );
    assert_eq!(metric(&text, "sseplane_backplane_up", ""), 1.0);
    let publishes =
        |text: &str| metric(text, "axum_http_requests_total", "endpoint=\"/v1/publish\"");
    assert_eq!(publishes(&text), 4.0, "{text}");
    drop(a);
    wait_for("the gauge to follow a closed stream", WAIT, || async {
        (metric(&replica.metrics().await, "sseplane_open_streams", "") == 2.0).then_some(())
    })
    .await;

    // Probes and scrapes leave the HTTP metrics alone.
    let http_lines = |text: String| {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("axum_http"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let before = http_lines(replica.metrics().await);
    for _ in 0..30 {
        for path in ["/healthz", "/readyz", "/metrics", "/v1/diagnostics"] {
            assert!(reqwest::get(replica.admin_url(path))
                .await
                .unwrap()
                .status()
                .is_success());
        }
    }
    let after = http_lines(replica.metrics().await);
    assert_eq!(before, after);
    assert!(!after
        .iter()
        .any(|l| l.contains("healthz") || l.contains("readyz") || l.contains("metrics")));
    assert!(!text.contains("metered"), "no channel names as labels");
}

async fn log_filter(http: &reqwest::Client, replica: &Replica) -> serde_json::Value {
    let response = http
        .get(replica.admin_url("/v1/log-level"))
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time() {
    let replica = Replica::start("l", None, &["--log-level", "warn"]).await;
    let http = reqwest::Client::new();
    let current = log_filter(&http, &replica).await;
    assert_eq!(current["filter"], "warn");
    let changed = http
        .put(replica.admin_url("/v1/log-level"))
        .json(&json!({"filter": "sseplane=debug,info"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let current = log_filter(&http, &replica).await;
    assert!(current["filter"]
        .as_str()
        .unwrap()
        .contains("sseplane=debug"));
    let refused = http
        .put(replica.admin_url("/v1/log-level"))
        .json(&json!({"filter": "=[bad"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "invalid_filter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_inside_a_request_carry_its_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let (public, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sseplane"))
        .args([
            "--listen",
            &format!("127.0.0.1:{public}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--log-format", "json", "--log-level", "sseplane=debug,info"])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for("ready", WAIT, || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{public}/v1/publish"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"channel": "logged", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = wait_for("the log line of the publish", WAIT, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move {
            text.lines()
                .find(|l| l.contains("\"published\""))
                .map(str::to_owned)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let entry: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(entry["span"]["trace_id"], trace_id, "{entry}");
    assert_eq!(entry["level"], "DEBUG");
}
