//! `sseplane bench`: a load generator for any SSE server, driven by URL and body
//! templates so the same tool measures sseplane and its peers in one run.
//!
//! Modes: `latency` (publish→receive percentiles at a fixed rate, lost and
//! duplicated events), `fanout` (deliveries per second and per server
//! CPU-second), `idle` (open streams held, server memory per stream), and the
//! fault loads of [`storm`]: `resume-storm` and `churn`. It only ever talks to
//! loopback addresses.

pub mod post;
pub mod procstat;
pub mod storm;
pub mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::client::SseParser;
use wire::{open_stream, Dechunker, HttpUrl};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Publish→receive latency at a fixed rate.
    Latency,
    /// Deliveries per second, publishing as fast as allowed.
    Fanout,
    /// Memory per open, idle stream.
    Idle,
    /// Every client of a lost replica resuming at once on another.
    ResumeStorm,
    /// Streams opening and closing for `--duration`; memory and fds after.
    Churn,
}

/// Arguments of `sseplane bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Name of the system under test, for the report.
    #[arg(long, default_value = "sseplane")]
    pub label: String,
    /// Stream URL template (`{channel}` is replaced); repeat to spread subscribers over replicas.
    #[arg(
        long = "sub-url",
        default_value = "http://127.0.0.1:8080/v1/stream?channel={channel}"
    )]
    pub sub_urls: Vec<String>,
    /// Publish URL template.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/publish")]
    pub pub_url: String,
    /// Publish body template (`{channel}`, `{payload}` — a JSON object).
    #[arg(long, default_value = r#"{"channel":"{channel}","data":{payload}}"#)]
    pub pub_body: String,
    /// Subscribers (streams).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels the subscribers are spread over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publishes per second (latency mode).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// How long to publish (latency, fanout).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub duration: Duration,
    /// Most events to publish (fanout; 0 = bounded by time only).
    #[arg(long, default_value_t = 0)]
    pub max_events: u64,
    /// Concurrent publishers (fanout).
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Padding added to each payload, in bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// How long to hold the streams open (idle).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub hold: Duration,
    /// Server process to sample for CPU and memory (repeat for several).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Redis to count commands per published event (`INFO commandstats`).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// How long the clients stay away before resuming (resume-storm).
    #[arg(long, default_value = "3s", value_parser = crate::duration::parse_duration)]
    pub behind: Duration,
    /// The receiving replica's `/readyz`, polled during the wave (resume-storm).
    #[arg(long)]
    pub readyz_url: Option<String>,
    /// Longest life of one stream (churn).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub lifetime: Duration,
    /// Print progress every second.
    #[arg(long)]
    pub progress: bool,
}

/// Counters shared by the subscriber tasks.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Latencies in µs, merged by each subscriber when it ends.
    latencies: Mutex<Vec<u32>>,
    /// Duplicates seen (same sequence number twice on one stream).
    duplicates: AtomicU64,
    /// Distinct (stream, event) pairs received.
    unique: AtomicU64,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Reads a non-negative integer field `"name":123` out of a JSON text.
pub(crate) fn number_field(text: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let start = text.find(&key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Expands `{channel}` and `{payload}` in a template.
pub fn expand(template: &str, channel: &str, payload: &str) -> String {
    template
        .replace("{channel}", channel)
        .replace("{payload}", payload)
}

/// The payload of event `seq`: its sequence number, its send time, padding.
pub fn payload(seq: u64, pad: &str) -> String {
    format!(r#"{{"seq":{seq},"t":{},"pad":"{pad}"}}"#, now_us())
}

/// One subscriber: reads its stream until told to stop, counting events (and,
/// when `track` is set, recording latencies and duplicates).
async fn subscriber(
    url: HttpUrl,
    source: Option<IpAddr>,
    tally: Arc<Tally>,
    track: bool,
    hold_only: bool,
    stop: CancellationToken,
) {
    let response = match open_stream(&url, source).await {
        Ok(r) => r,
        Err(_) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let mut stream = response.stream;
    if hold_only {
        // Idle streams: read with a tiny buffer so the client stays lean.
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => if !matches!(read, Ok(n) if n > 0) { return },
                _ = stop.cancelled() => return,
            }
        }
    }
    let mut dechunk = response.chunked.then(Dechunker::default);
    let mut parser = SseParser::new();
    let mut latencies = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut body = Vec::with_capacity(64 * 1024);
    let mut pending = response.leftover;
    loop {
        body.clear();
        match &mut dechunk {
            Some(d) => {
                if !d.feed(&pending, &mut body) {
                    break;
                }
            }
            None => body.extend_from_slice(&pending),
        }
        let received = now_us();
        let mut count = 0;
        for event in parser.feed(&body) {
            if event.event != "message" {
                continue;
            }
            count += 1;
            if track {
                if let (Some(seq), Some(sent)) = (
                    number_field(&event.data, "seq"),
                    number_field(&event.data, "t"),
                ) {
                    latencies.push(received.saturating_sub(sent).min(u32::MAX as u64) as u32);
                    if !seen.insert(seq) {
                        tally.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        tally.delivered.fetch_add(count, Ordering::Relaxed);
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => pending = buf[..n].to_vec(),
        }
    }
    tally.unique.fetch_add(seen.len() as u64, Ordering::Relaxed);
    tally
        .latencies
        .lock()
        .expect("tally lock")
        .append(&mut latencies);
}

/// Source address for connection `i`: a new 127.0.0.x every 50k connections.
pub(crate) fn source_ip(i: usize) -> Option<IpAddr> {
    (i >= 50_000).then(|| IpAddr::from([127, 0, 0, 1 + (i / 50_000) as u8]))
}

async fn redis_calls(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    Some(
        info.lines()
            .filter_map(|l| number_field(&l.replace("calls=", "\"calls\":"), "calls"))
            .sum(),
    )
}

/// Runs the benchmark and prints a table and one JSON line.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match args.mode {
        Mode::ResumeStorm => return storm::resume_storm(args).await,
        Mode::Churn => return storm::churn(args).await,
        _ => {}
    }
    let run_id = format!("b{}", now_us() % 1_000_000_000);
    let channels: Vec<String> = (0..args.channels.max(1))
        .map(|i| format!("{run_id}-{i}"))
        .collect();
    let sub_templates = if args.sub_urls.is_empty() {
        vec![String::new()]
    } else {
        args.sub_urls.clone()
    };
    for template in &sub_templates {
        HttpUrl::parse(&expand(template, "x", "")).map_err(anyhow::Error::msg)?;
    }
    HttpUrl::parse(&expand(&args.pub_url, "x", "")).map_err(anyhow::Error::msg)?;
    let tally = Arc::new(Tally::default());
    let rss_before = procstat::total_rss(&args.pids);
    let track = args.mode == Mode::Latency;
    let hold_only = args.mode == Mode::Idle;
    let stop = CancellationToken::new();

    // Open the streams, spread over the URLs and channels.
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let template = &sub_templates[i % sub_templates.len()];
        let channel = &channels[i % channels.len()];
        let url = HttpUrl::parse(&expand(template, channel, "")).map_err(anyhow::Error::msg)?;
        tasks.push(tokio::spawn(subscriber(
            url,
            source_ip(i),
            tally.clone(),
            track,
            hold_only,
            stop.clone(),
        )));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.connected.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed)
        < args.subscribers
    {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = tally.connected.load(Ordering::Relaxed);
    if args.progress {
        eprintln!(
            "[{}] {connected}/{} streams open",
            args.label, args.subscribers
        );
    }

    let mut report = json!({
        "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "subscribers": args.subscribers,
        "channels": channels.len(),
        "connected": connected,
        "failed": tally.failed.load(Ordering::Relaxed),
    });

    if args.mode == Mode::Idle {
        tokio::time::sleep(args.hold.min(Duration::from_secs(3600))).await;
        let rss_after = procstat::total_rss(&args.pids);
        let per_stream = if connected > 0 {
            (rss_after.saturating_sub(rss_before)) as f64 / connected as f64
        } else {
            0.0
        };
        report["established"] = json!(connected);
        report["server_rss_kib_before"] = json!(rss_before);
        report["server_rss_kib_after"] = json!(rss_after);
        report["rss_kib_per_stream"] = json!((per_stream * 100.0).round() / 100.0);
        print_report(&report);
        stop.cancel();
        return Ok(());
    }

    let redis_before = match &args.redis_url {
        Some(url) => redis_calls(url).await,
        None => None,
    };
    let cpu_before = procstat::total_cpu(&args.pids);
    let published = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(args.payload_bytes);
    let started = Instant::now();
    let stop_at = started + args.duration;

    // Progress and the per-second series of deliveries.
    let series = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let tally = tally.clone();
        let series = series.clone();
        let label = args.label.clone();
        let progress = args.progress;
        tokio::spawn(async move {
            let mut last = 0;
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.tick().await;
            for second in 1.. {
                interval.tick().await;
                let now = tally.delivered.load(Ordering::Relaxed);
                series.lock().expect("series lock").push(now - last);
                if progress {
                    eprintln!("[{label}] t={second}s delivered {now} ({}/s)", now - last);
                }
                last = now;
            }
        })
    };

    // A fixed rate is kept by several staggered publishers, so that one slow
    // answer does not hold back the next publish.
    let workers = if args.mode == Mode::Latency {
        4
    } else {
        args.publishers.max(1)
    };
    let mut publishers = Vec::new();
    for worker in 0..workers {
        let args = args.clone();
        let channels = channels.clone();
        let published = published.clone();
        let refused = refused.clone();
        let pad = pad.clone();
        publishers.push(tokio::spawn(async move {
            let mut connection = post::PostConnection::default();
            let mut ticks = (args.mode == Mode::Latency).then(|| {
                let period = Duration::from_secs_f64(workers as f64 / args.rate.max(1) as f64);
                let first =
                    tokio::time::Instant::now() + period.mul_f64(worker as f64 / workers as f64);
                let mut i = tokio::time::interval_at(first, period);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            while Instant::now() < stop_at {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                let seq = published.fetch_add(1, Ordering::Relaxed);
                if args.max_events > 0 && seq >= args.max_events {
                    published.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                let channel = &channels[seq as usize % channels.len()];
                let body = expand(&args.pub_body, channel, &payload(seq, &pad));
                let ok = match HttpUrl::parse(&expand(&args.pub_url, channel, "")) {
                    Ok(url) => connection
                        .post(&url, "application/json", body.as_bytes())
                        .await
                        .is_ok_and(|status| (200..300).contains(&status)),
                    Err(_) => false,
                };
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for publisher in publishers {
        publisher.await?;
    }
    let publish_time = started.elapsed().as_secs_f64();
    let published_n = published.load(Ordering::Relaxed) - refused.load(Ordering::Relaxed);
    // Each channel's events go to that channel's subscribers.
    let per_channel: HashMap<usize, u64> =
        (0..args.subscribers).fold(HashMap::new(), |mut m, i| {
            *m.entry(i % channels.len()).or_default() += 1;
            m
        });
    let expected: u64 = (0..published_n)
        .map(|seq| {
            per_channel
                .get(&(seq as usize % channels.len()))
                .copied()
                .unwrap_or(0)
        })
        .sum();
    // Wait for the deliveries to drain (bounded).
    let mut last = (tally.delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let delivered = tally.delivered.load(Ordering::Relaxed);
        if delivered >= expected || last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procstat::total_cpu(&args.pids) - cpu_before;
    ticker.abort();
    // Stop the subscribers; they hand in their latencies as they end.
    stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let delivered = tally.delivered.load(Ordering::Relaxed);
    report["published"] = json!(published_n);
    report["publish_errors"] = json!(refused.load(Ordering::Relaxed));
    report["publishes_per_s"] = json!((published_n as f64 / publish_time).round());
    report["delivered"] = json!(delivered);
    report["expected"] = json!(expected);
    report["deliveries_per_s"] = json!((delivered as f64 / elapsed).round());
    report["series_per_s"] = json!(series.lock().expect("series lock").clone());
    if !args.pids.is_empty() {
        report["server_cpu_s"] = json!((cpu * 1000.0).round() / 1000.0);
        if cpu > 0.0 {
            report["deliveries_per_cpu_s"] = json!((delivered as f64 / cpu).round());
        }
    }
    if let (Some(url), Some(before)) = (&args.redis_url, redis_before) {
        if let Some(after) = redis_calls(url).await {
            // One INFO call of ours is in the difference.
            let calls = after.saturating_sub(before + 1);
            report["redis_commands_per_publish"] =
                json!(((calls as f64 / published_n.max(1) as f64) * 100.0).round() / 100.0);
        }
    }
    if track {
        let latencies = std::mem::take(&mut *tally.latencies.lock().expect("tally lock"));
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for l in &latencies {
            histogram.saturating_record(u64::from(*l).max(1));
        }
        let ms = |q: f64| (histogram.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
        report["latency_ms"] = json!({
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999),
            "max": (histogram.max() as f64 / 10.0).round() / 100.0,
        });
        report["lost"] = json!(expected.saturating_sub(delivered));
        report["duplicates"] = json!(tally.duplicates.load(Ordering::Relaxed));
    }
    print_report(&report);
    Ok(())
}

pub(crate) fn print_report(report: &serde_json::Value) {
    if let Some(fields) = report.as_object() {
        for (key, value) in fields {
            if key != "series_per_s" {
                println!("{key:>28}  {value}");
            }
        }
    }
    println!("{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_channel_and_payload() {
        assert_eq!(
            expand(
                r#"{"channel":"{channel}","data":{payload}}"#,
                "c1",
                r#"{"seq":1}"#
            ),
            r#"{"channel":"c1","data":{"seq":1}}"#
        );
        assert_eq!(
            expand("http://127.0.0.1:1/sub/{channel}", "a", ""),
            "http://127.0.0.1:1/sub/a"
        );
        let p = payload(7, "xx");
        assert_eq!(number_field(&p, "seq"), Some(7));
        assert!(number_field(&p, "t").unwrap() > 0);
        assert_eq!(number_field(r#"{"a":1}"#, "seq"), None);
    }
}
