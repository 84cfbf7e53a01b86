//! Prometheus metrics on the admin port: HTTP metrics of the public API
//! (axum-prometheus) and sseplane's own. Labels stay bounded: no channel names.

use std::sync::OnceLock;
use std::time::Duration;

use axum_prometheus::metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use axum_prometheus::{PrometheusMetricLayer, PrometheusMetricLayerBuilder};

/// Open streams on this replica (gauge).
pub const OPEN_STREAMS: &str = "sseplane_open_streams";
/// Events accepted or refused by `POST /v1/publish`, per channel, by `outcome`.
pub const EVENTS_PUBLISHED: &str = "sseplane_events_published_total";
/// Events queued to local subscribers (one per subscriber).
pub const EVENTS_DELIVERED: &str = "sseplane_events_delivered_total";
/// Slow consumers, by `reason`: `disconnected` streams and `dropped_oldest` events.
pub const SLOW_CONSUMERS: &str = "sseplane_slow_consumer_total";
/// Time from the publish request to the delivery on this replica.
pub const DELIVER_LAG: &str = "sseplane_publish_deliver_lag_seconds";
/// Events sent from history on resume.
pub const REPLAYED: &str = "sseplane_replayed_events_total";
/// 1 while the backplane is usable (Redis answers and accepts writes, subscription live).
pub const BACKPLANE_UP: &str = "sseplane_backplane_up";
/// Reconnections of the Redis pub/sub connection.
pub const REDIS_RECONNECTS: &str = "sseplane_redis_reconnects_total";
/// Policies read, by `state`: `valid` or `invalid`.
pub const POLICIES: &str = "sseplane_policies";
/// Channels the in-memory backplane holds state for (gauge).
pub const BACKPLANE_CHANNELS: &str = "sseplane_backplane_channels";
/// Spans the OTLP exporter could not send.
pub const SPANS_DROPPED: &str = "sseplane_trace_spans_dropped_total";

/// Buckets of the lag histogram, in seconds.
const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static INSTALLED: OnceLock<(PrometheusMetricLayer<'static>, PrometheusHandle)> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the HTTP metrics layer
/// for the public API and the handle that renders `/metrics`.
pub fn install() -> (PrometheusMetricLayer<'static>, PrometheusHandle) {
    INSTALLED
        .get_or_init(|| {
            let pair = PrometheusMetricLayerBuilder::new()
                .with_metrics_from_fn(|| {
                    PrometheusBuilder::new()
                        .set_buckets_for_metric(Matcher::Full(DELIVER_LAG.to_owned()), LAG_BUCKETS)
                        .and_then(|b| {
                            b.set_buckets_for_metric(
                                Matcher::Full(
                                    axum_prometheus::AXUM_HTTP_REQUESTS_DURATION_SECONDS.to_owned(),
                                ),
                                axum_prometheus::utils::SECONDS_DURATION_BUCKETS,
                            )
                        })
                        .expect("valid buckets")
                        .install_recorder()
                        .expect("the metrics recorder is installed once")
                })
                .build_pair();
            describe();
            spawn_upkeep(pair.1.clone());
            pair
        })
        .clone()
}

/// How often histogram samples are folded into their summaries when nothing
/// scrapes `/metrics` (a scrape does it too).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is folded into its
/// summary, which only a render or an upkeep does: without a scraper, memory
/// would grow with every request. A thread of its own (the recorder is
/// process-wide and lives as long as the process) does it periodically.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics upkeep: memory grows until /metrics is scraped");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(OPEN_STREAMS, "Open SSE streams on this replica.");
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events published through this replica, per channel, by outcome."
    );
    describe_counter!(
        EVENTS_DELIVERED,
        "Events queued to local subscribers (one per subscriber)."
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Slow consumers: streams disconnected and events dropped, by reason."
    );
    describe_histogram!(
        DELIVER_LAG,
        Unit::Seconds,
        "Time from publish to delivery on this replica."
    );
    describe_counter!(
        REPLAYED,
        "Events replayed from history to resuming clients."
    );
    describe_gauge!(BACKPLANE_UP, "1 while the backplane is usable.");
    describe_counter!(
        REDIS_RECONNECTS,
        "Reconnections of the Redis pub/sub connection."
    );
    describe_gauge!(POLICIES, "ChannelPolicies read, by state (valid, invalid).");
    describe_counter!(
        SPANS_DROPPED,
        "Trace spans the OTLP exporter could not send."
    );
}
