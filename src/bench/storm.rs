//! Fault-load modes of `sseplane bench`: a resume storm (every client of a
//! lost replica coming back at once to another, each behind by what was
//! published meanwhile) and a churn soak (streams opening and closing for a
//! long time while events flow; server memory and file descriptors must come
//! back to where they were).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::post::PostConnection;
use super::wire::{open_stream_from, Dechunker, HttpUrl, OpenError};
use super::{expand, number_field, payload, print_report, procstat, source_ip, BenchArgs};
use crate::client::SseParser;

/// Publishes to `channel` at `rate` per second until `stop`; `published` is
/// the next sequence number.
fn spawn_publisher(
    args: &BenchArgs,
    channel: String,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<u64>> {
    let url = HttpUrl::parse(&expand(&args.pub_url, &channel, "")).map_err(anyhow::Error::msg)?;
    let body_template = args.pub_body.clone();
    let pad = "x".repeat(args.payload_bytes);
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    Ok(tokio::spawn(async move {
        let mut connection = PostConnection::default();
        let mut ticks = tokio::time::interval(period);
        let mut refused = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return refused,
            }
            let seq = published.load(Ordering::SeqCst);
            let body = expand(&body_template, &channel, &payload(seq, &pad));
            match connection
                .post(&url, "application/json", body.as_bytes())
                .await
            {
                Ok(200) => {
                    published.fetch_add(1, Ordering::SeqCst);
                }
                _ => refused += 1,
            }
        }
    }))
}

/// What one stream saw: its last id and sequence number, and any lapse.
#[derive(Debug, Default, Clone)]
struct Seen {
    last_id: Option<String>,
    last_seq: Option<u64>,
    /// Sequence numbers skipped without a gap notice.
    lost: u64,
    duplicates: u64,
    gaps: u64,
}

/// Reads a stream until `until(seen)` holds, the stream ends or `stop`.
async fn follow(
    response: super::wire::SseResponse,
    seen: &mut Seen,
    until: impl Fn(&Seen) -> bool,
    stop: &CancellationToken,
) -> bool {
    let mut stream = response.stream;
    let mut dechunk = response.chunked.then(Dechunker::default);
    let mut parser = SseParser::new();
    let mut pending = response.leftover;
    let mut body = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        body.clear();
        match &mut dechunk {
            Some(d) => {
                if !d.feed(&pending, &mut body) {
                    return false;
                }
            }
            None => body.extend_from_slice(&pending),
        }
        for event in parser.feed(&body) {
            match event.event.as_str() {
                "sseplane.gap" => {
                    seen.gaps += 1;
                    seen.last_seq = None;
                }
                "message" => {
                    let Some(seq) = number_field(&event.data, "seq") else {
                        continue;
                    };
                    match seen.last_seq {
                        Some(last) if seq <= last => seen.duplicates += 1,
                        Some(last) => seen.lost += seq - last - 1,
                        None => {}
                    }
                    if seen.last_seq.is_none_or(|last| seq > last) {
                        seen.last_seq = Some(seq);
                    }
                    seen.last_id = event.id.clone();
                }
                _ => {}
            }
        }
        if until(seen) {
            return true;
        }
        let read = tokio::select! {
            read = stream.read(&mut buf) => read,
            _ = stop.cancelled() => return false,
        };
        match read {
            Ok(0) | Err(_) => return false,
            Ok(n) => pending = buf[..n].to_vec(),
        }
    }
}

/// Readiness as polled during a wave.
#[derive(Debug, Default)]
struct ReadinessPolls {
    polls: u64,
    not_ready: u64,
    /// What the last answer other than 200 said.
    last_failure: Option<String>,
}

/// Polls `url` every 100 ms until `stop`.
fn spawn_readiness_poll(
    url: Option<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<ReadinessPolls> {
    tokio::spawn(async move {
        let mut seen = ReadinessPolls::default();
        let Some(url) = url else { return seen };
        let client = reqwest::Client::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return seen,
            }
            seen.polls += 1;
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            let failure = match answer {
                Ok(response) if response.status() == 200 => None,
                Ok(response) => Some(response.text().await.unwrap_or_default()),
                Err(e) => Some(e.to_string()),
            };
            if failure.is_some() {
                seen.not_ready += 1;
                seen.last_failure = failure;
            }
        }
    })
}

/// `resume-storm`: opens the streams on the first `--sub-url`, drops them all
/// at once (as when their replica dies), waits `--behind`, then has every
/// client resume with its `Last-Event-ID` on the last `--sub-url`, honouring
/// `Retry-After` on refusals, while events keep flowing at `--rate`.
pub async fn resume_storm(args: BenchArgs) -> anyhow::Result<()> {
    let channel = format!("storm{}", super::now_us() % 1_000_000_000);
    let first =
        HttpUrl::parse(&expand(&args.sub_urls[0], &channel, "")).map_err(anyhow::Error::msg)?;
    let last_template = args.sub_urls.last().expect("a sub url");
    let second =
        HttpUrl::parse(&expand(last_template, &channel, "")).map_err(anyhow::Error::msg)?;
    let published = Arc::new(AtomicU64::new(0));
    let stop_publishing = CancellationToken::new();
    let publisher = spawn_publisher(&args, channel, published.clone(), stop_publishing.clone())?;

    // Phase 1: every client on the first replica, each with events.
    let drop_all = CancellationToken::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..args.subscribers {
        let (url, drop_all, connected) = (first.clone(), drop_all.clone(), connected.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let Ok(response) = open_stream_from(&url, source_ip(i), None).await else {
                return seen;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            follow(response, &mut seen, |_| false, &drop_all).await;
            seen
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < args.subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let every stream receive events before its replica "dies".
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop_all.cancel();
    let mut seens = Vec::new();
    for client in clients {
        seens.push(client.await?);
    }
    let away_from = published.load(Ordering::SeqCst);
    tokio::time::sleep(args.behind).await;

    // Phase 2: all of them back at once on the other replica.
    let cpu_before = procstat::total_cpu(&args.pids);
    let stop_polling = CancellationToken::new();
    let poll = spawn_readiness_poll(args.readyz_url.clone(), stop_polling.clone());
    let wave_start = Instant::now();
    let target = published.load(Ordering::SeqCst);
    let refusals = Arc::new(AtomicU64::new(0));
    let back_times = Arc::new(Mutex::new(Vec::new()));
    let give_up = CancellationToken::new();
    let mut resumed = Vec::new();
    for (i, mut seen) in seens.into_iter().enumerate() {
        let (url, refusals, back_times, give_up) = (
            second.clone(),
            refusals.clone(),
            back_times.clone(),
            give_up.clone(),
        );
        resumed.push(tokio::spawn(async move {
            loop {
                match open_stream_from(&url, source_ip(i), seen.last_id.as_deref()).await {
                    Ok(response) => {
                        let caught_up = |s: &Seen| s.last_seq.is_some_and(|seq| seq >= target);
                        if follow(response, &mut seen, caught_up, &give_up).await {
                            back_times
                                .lock()
                                .expect("times lock")
                                .push(wave_start.elapsed().as_secs_f64());
                            return seen;
                        }
                    }
                    Err(OpenError::Refused { retry_after, .. }) => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        let wait = Duration::from_secs(retry_after.unwrap_or(1));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = give_up.cancelled() => return seen,
                        }
                    }
                    Err(OpenError::Io(_)) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = give_up.cancelled() => return seen,
                        }
                    }
                }
                if give_up.is_cancelled() {
                    return seen;
                }
            }
        }));
    }
    // Clients still out after `--duration` give up.
    let timer = {
        let (give_up, limit) = (give_up.clone(), args.duration);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            give_up.cancel();
        })
    };
    let mut outcomes = Vec::new();
    for task in resumed {
        outcomes.push(task.await?);
    }
    timer.abort();
    let wave_time = wave_start.elapsed().as_secs_f64();
    let cpu = procstat::total_cpu(&args.pids) - cpu_before;
    stop_polling.cancel();
    stop_publishing.cancel();
    let readiness = poll.await?;
    let publish_refused = publisher.await?;
    let mut times = std::mem::take(&mut *back_times.lock().expect("times lock"));
    times.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map(|t| (t * 1000.0).round() / 1000.0)
    };
    let back = times.len();
    let all_back = times.last().copied().unwrap_or(wave_time);
    let report = json!({
        "label": args.label,
        "mode": "resume-storm",
        "clients": args.subscribers,
        "rate": args.rate,
        "events_published_while_away": target.saturating_sub(away_from),
        "clients_back": back,
        "refusals": refusals.load(Ordering::Relaxed),
        "seconds_to_all_back": (all_back * 1000.0).round() / 1000.0,
        "back_p50_s": quantile(0.5),
        "back_p99_s": quantile(0.99),
        "resumes_per_s": (back as f64 / all_back.max(0.001)).round(),
        "lost_without_gap": outcomes.iter().map(|s| s.lost).sum::<u64>(),
        "duplicates": outcomes.iter().map(|s| s.duplicates).sum::<u64>(),
        "gap_notices": outcomes.iter().map(|s| s.gaps).sum::<u64>(),
        "readiness_polls": readiness.polls,
        "readiness_not_200": readiness.not_ready,
        "readiness_last_failure": readiness.last_failure,
        "publishes_refused": publish_refused,
        "server_cpu_s": (cpu * 1000.0).round() / 1000.0,
    });
    print_report(&report);
    Ok(())
}

/// `churn`: keeps `--subscribers` streams on the `--sub-url`s for
/// `--duration`, each living up to `--lifetime` before it closes and another
/// opens, while events flow at `--rate`; then closes them all and reports the
/// servers' memory and open files before, at the peak and after.
pub async fn churn(args: BenchArgs) -> anyhow::Result<()> {
    let channel = format!("churn{}", super::now_us() % 1_000_000_000);
    let urls: Vec<HttpUrl> = args
        .sub_urls
        .iter()
        .map(|t| HttpUrl::parse(&expand(t, &channel, "")))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let rss_before = procstat::total_rss(&args.pids);
    let fds_before = procstat::total_fds(&args.pids);
    let published = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let publisher = spawn_publisher(&args, channel, published.clone(), stop.clone())?;
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let lifetime_ms = args.lifetime.as_millis().max(2) as u64;
    let mut slots = Vec::new();
    for slot in 0..args.subscribers {
        let (urls, stop) = (urls.clone(), stop.clone());
        let (opened, failed, lost) = (opened.clone(), failed.clone(), lost.clone());
        slots.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.is_cancelled() {
                let url = &urls[(slot + round) % urls.len()];
                round += 1;
                let life = Duration::from_millis(fastrand::u64(lifetime_ms / 10..=lifetime_ms));
                let end = stop.child_token();
                let ender = {
                    let end = end.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(life).await;
                        end.cancel();
                    })
                };
                match open_stream_from(url, source_ip(slot), None).await {
                    Ok(response) => {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let mut seen = Seen::default();
                        follow(response, &mut seen, |_| false, &end).await;
                        lost.fetch_add(seen.lost, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        end.cancelled().await;
                    }
                }
                ender.abort();
            }
        }));
    }
    let started = Instant::now();
    let (mut rss_peak, mut fds_peak) = (rss_before, fds_before);
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(procstat::total_rss(&args.pids));
        fds_peak = fds_peak.max(procstat::total_fds(&args.pids));
        if args.progress {
            eprintln!(
                "[{}] t={}s opened {} rss {} KiB fds {}",
                args.label,
                started.elapsed().as_secs(),
                opened.load(Ordering::Relaxed),
                procstat::total_rss(&args.pids),
                procstat::total_fds(&args.pids)
            );
        }
    }
    stop.cancel();
    for slot in slots {
        let _ = slot.await;
    }
    publisher.await?;
    // The servers notice the closed streams and give back what they held.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = json!({
        "label": args.label,
        "mode": "churn",
        "streams_held": args.subscribers,
        "seconds": args.duration.as_secs(),
        "streams_opened": opened.load(Ordering::Relaxed),
        "streams_refused": failed.load(Ordering::Relaxed),
        "events_published": published.load(Ordering::SeqCst),
        "lost_without_gap": lost.load(Ordering::Relaxed),
        "server_rss_kib_before": rss_before,
        "server_rss_kib_peak": rss_peak,
        "server_rss_kib_after": procstat::total_rss(&args.pids),
        "server_fds_before": fds_before,
        "server_fds_peak": fds_peak,
        "server_fds_after": procstat::total_fds(&args.pids),
    });
    print_report(&report);
    Ok(())
}
