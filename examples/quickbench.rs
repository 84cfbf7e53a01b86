//! A quick measurement until the real benchmark tool lands: publish→deliver
//! latency and deliveries per second, subscribers on one replica, publishes
//! through another.
//!
//! `cargo run --release --example quickbench -- <sub-url> <pub-url> <subscribers> <rate/s> <seconds>`
//! (rate 0 = as fast as 8 concurrent publishers go).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use sseplane::client::SseParser;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, sub_url, pub_url, subscribers, rate, seconds] = &args[..] else {
        eprintln!("usage: quickbench <sub-url> <pub-url> <subscribers> <rate/s> <seconds>");
        std::process::exit(2);
    };
    let subscribers: usize = subscribers.parse().unwrap();
    let rate: u64 = rate.parse().unwrap();
    let duration = Duration::from_secs(seconds.parse().unwrap());
    let channel = format!("bench{}", now_us());
    let lags = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    for _ in 0..subscribers {
        let response = http
            .get(format!("{sub_url}/v1/stream?channel={channel}"))
            .send()
            .await
            .unwrap();
        let lags = lags.clone();
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut parser = SseParser::new();
            let mut local = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                for event in parser.feed(&chunk) {
                    let sent: u64 = event.data.parse().unwrap_or(0);
                    if sent == 0 {
                        lags.lock().unwrap().append(&mut local);
                        return;
                    }
                    local.push(now_us().saturating_sub(sent));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let started = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let workers = if rate == 0 { 8 } else { 1 };
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let http = http.clone();
        let url = format!("{pub_url}/v1/publish");
        let channel = channel.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = (rate > 0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64)));
            while started.elapsed() < duration {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                let body = format!(r#"{{"channel":"{channel}","data":{}}}"#, now_us());
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = published.load(Ordering::Relaxed) * subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed().as_secs_f64();
    // The end marker: data 0.
    http.post(format!("{pub_url}/v1/publish"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"channel":"{channel}","data":0}}"#))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lags.lock().unwrap().len() < delivered.load(Ordering::Relaxed) as usize
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags = lags.lock().unwrap().clone();
    lags.sort_unstable();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let delivered = delivered.load(Ordering::Relaxed);
    println!(
        "subscribers={subscribers} published={} ({:.0}/s) delivered={delivered}/{expected} ({:.0}/s) lag_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        published.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed) as f64 / elapsed,
        delivered as f64 / drained,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}
