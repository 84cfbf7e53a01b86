//! Publishers on kept-alive connections, as HTTP clients send them: requests
//! one after another and pipelined, bodies split over several writes, another
//! route on the same connection, `Connection: close`, shutdown between
//! requests. The answers must be those of the router (same status, body and
//! headers), whichever path serves them. Kept-alive connections are held to
//! the same limits on every request: head limits, the idle timeout, the cap
//! on idle connections; and they give back what a large request took.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP response read off a raw connection.
#[derive(Debug)]
struct Answer {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_names(&self) -> BTreeSet<&str> {
        self.headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "connection")
            .collect()
    }
}

/// A raw client connection that reads answers one at a time.
struct Connection {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(replica: &Replica) -> Connection {
        let tcp = TcpStream::connect(("127.0.0.1", replica.public))
            .await
            .unwrap();
        Connection {
            tcp,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Reads one whole response (`Content-Length` delimited).
    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(answer) = self.parse() {
                    return answer;
                }
                let mut chunk = [0u8; 4096];
                let n = self.tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before a whole answer: {:?}", self.text());
                self.buffer.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("an answer in time")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer).into_owned()
    }

    fn parse(&mut self) -> Option<Answer> {
        let end = self.buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8(self.buffer[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap().splitn(3, ' ');
        let version = status_line.next().unwrap().to_owned();
        let status = status_line.next().unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        if status < 200 || status == 431 {
            // Informational answers and hyper's 431 have no body.
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            if self.buffer.len() < end + length {
                return None;
            }
            let body =
                serde_json::from_slice(&self.buffer[end..end + length]).unwrap_or(Value::Null);
            self.buffer.drain(..end + length);
            return Some(Answer {
                version,
                status,
                headers,
                body,
            });
        }
        if status < 200 {
            self.buffer.drain(..end);
            return Some(Answer {
                version,
                status,
                headers,
                body: Value::Null,
            });
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a content-length");
        if self.buffer.len() < end + length {
            return None;
        }
        let body = serde_json::from_slice(&self.buffer[end..end + length]).unwrap();
        self.buffer.drain(..end + length);
        Some(Answer {
            version,
            status,
            headers,
            body,
        })
    }

    /// Waits for the server to close the connection.
    async fn wait_closed(&mut self) {
        tokio::time::timeout(WAIT, async {
            let mut chunk = [0u8; 1024];
            while self.tcp.read(&mut chunk).await.unwrap_or(0) > 0 {}
        })
        .await
        .expect("the connection closes");
    }
}

/// A publish request in HTTP/1.`minor` with `extra` header lines.
fn publish_request(minor: u8, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST /v1/publish HTTP/1.{minor}\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn event(channel: &str, n: u64) -> String {
    json!({"channel": channel, "data": {"n": n}}).to_string()
}

fn id_of(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["results"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_one_connection_are_each_answered_and_delivered_in_order() {
    let redis = Redis::start().await;
    let replica = Replica::start("a", Some(&redis), &[]).await;
    let mut subscriber = Subscriber::connect(vec![replica.stream_url(&["kept"])], None).await;
    let mut connection = Connection::open(&replica).await;

    // Three requests in one write (pipelined), then one whose head and body
    // arrive separately, cut inside the head and inside the body.
    let pipelined: Vec<u8> = (0..3)
        .flat_map(|n| publish_request(1, &event("kept", n), ""))
        .collect();
    connection.send(&pipelined).await;
    let fourth = publish_request(1, &event("kept", 3), "");
    let (first, rest) = fourth.split_at(20);
    connection.send(first).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&connection.answer().await));
    }
    let (middle, last) = rest.split_at(rest.len() - 5);
    connection.send(middle).await;
    connection.send(last).await;
    ids.push(id_of(&connection.answer().await));

    // Another route on the same connection, then publishes again.
    connection
        .send(b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let spec = connection.answer().await;
    assert_eq!(spec.status, 200);
    assert!(spec.body["paths"]["/v1/publish"].is_object(), "{spec:?}");
    connection
        .send(&publish_request(1, &event("kept", 4), ""))
        .await;
    ids.push(id_of(&connection.answer().await));

    let events = subscriber.take(5).await;
    let delivered: Vec<String> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(delivered, ids, "delivered with the ids the publisher got");
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| data(e)["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_answers_are_the_routers_answers() {
    let redis = Redis::start().await;
    let replica = Replica::start(
        "a",
        Some(&redis),
        &["--cors-origins", "https://app.example"],
    )
    .await;
    let origin = "origin: https://app.example\r\n";
    let requests = [
        event("same", 1),
        json!({"channel": "same"}).to_string(),
        json!({"channel": "bad channel!", "data": 1}).to_string(),
        "{\"channel\":".to_owned(),
    ];
    for body in &requests {
        // HTTP/1.1 with a plain body is served on the socket; HTTP/1.0 and
        // `Expect: 100-continue` go through hyper and the router.
        let mut kept = Connection::open(&replica).await;
        kept.send(&publish_request(1, body, origin)).await;
        let kept = kept.answer().await;
        let mut old = Connection::open(&replica).await;
        old.send(&publish_request(0, body, origin)).await;
        let old = old.answer().await;
        assert_eq!(old.version, "HTTP/1.0");
        assert_eq!(kept.version, "HTTP/1.1");
        assert_eq!(kept.status, old.status, "{body}: {kept:?} / {old:?}");
        assert_eq!(kept.header_names(), old.header_names(), "{body}");
        for name in [
            "content-type",
            "vary",
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-expose-headers",
        ] {
            assert_eq!(kept.header(name), old.header(name), "{name} for {body}");
        }
        if kept.status == 200 {
            assert_eq!(kept.body["results"][0]["channel"], "same");
        } else {
            assert_eq!(kept.body, old.body, "{body}");
        }
    }

    let mut expecting = Connection::open(&replica).await;
    expecting
        .send(&publish_request(
            1,
            &event("same", 2),
            "expect: 100-continue\r\n",
        ))
        .await;
    let mut answer = expecting.answer().await;
    if answer.status == 100 {
        answer = expecting.answer().await;
    }
    id_of(&answer);

    let metrics = replica.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("axum_http_requests_total")
                && l.contains("endpoint=\"/v1/publish\"")
                && l.contains("status=\"400\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_shutdown_end_kept_alive_connections() {
    let redis = Redis::start().await;
    let mut replica = Replica::start("a", Some(&redis), &[]).await;

    let mut closing = Connection::open(&replica).await;
    closing
        .send(&publish_request(1, &event("c", 1), "connection: close\r\n"))
        .await;
    let answer = closing.answer().await;
    id_of(&answer);
    assert_eq!(answer.header("connection"), Some("close"));
    closing.wait_closed().await;

    // A publisher idle between requests does not hold up shutdown.
    let mut idle = Connection::open(&replica).await;
    idle.send(&publish_request(1, &event("c", 2), "")).await;
    id_of(&idle.answer().await);
    replica.terminate();
    idle.wait_closed().await;
    let status = replica.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sets the open-files limit (soft and hard) of a running process.
fn set_open_files_limit(pid: u32, limit: usize) {
    let limit = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: plain system call on valid pointers.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Opens a connection that publishes one event on it and stays open.
async fn idle_publisher(replica: &Replica, body: &str) -> Connection {
    let mut connection = Connection::open(replica).await;
    connection.send(&publish_request(1, body, "")).await;
    id_of(&connection.answer().await);
    connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_are_closed_after_the_idle_timeout() {
    let replica = Replica::start("a", None, &["--idle-timeout", "1s"]).await;
    // A publisher served on the socket, a connection hyper serves, and one
    // that never sends a request: each is closed once idle for the timeout.
    let mut publisher = idle_publisher(&replica, &event("idle", 1)).await;
    let mut other = Connection::open(&replica).await;
    other
        .send(b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert_eq!(other.answer().await.status, 200);
    let mut silent = Connection::open(&replica).await;
    publisher.wait_closed().await;
    other.wait_closed().await;
    silent.wait_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_publish_connections_give_back_what_a_large_body_took() {
    const CONNECTIONS: usize = 300;
    // No history: the events themselves are not what is measured.
    let replica = Replica::start(
        "a",
        None,
        &[
            "--idle-timeout",
            "10m",
            "--max-idle-connections",
            "1000",
            "--history-max-events",
            "0",
        ],
    )
    .await;
    let big = json!({"channel": "big", "data": "x".repeat(60_000)}).to_string();
    // Warm up: the allocator has served large bodies before the baseline.
    let mut warm = idle_publisher(&replica, &big).await;
    for _ in 0..5 {
        warm.send(&publish_request(1, &big, "")).await;
        id_of(&warm.answer().await);
    }
    drop(warm);
    let baseline = replica.rss_kib();

    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        idle.push(idle_publisher(&replica, &big).await);
    }
    // Each idle connection keeps a few KiB (its task, socket and a small
    // buffer), not the 60 KB its body took.
    let limit = baseline + (CONNECTIONS as u64) * 16;
    let rss = wait_for("RSS near the baseline", WAIT, || {
        let rss = replica.rss_kib();
        async move { (rss <= limit).then_some(rss) }
    })
    .await;
    eprintln!(
        "RSS {baseline} KiB before, {rss} KiB with {CONNECTIONS} idle connections that each sent 60 KB"
    );
    // They are still open and serve on.
    for connection in &mut idle {
        connection
            .send(&publish_request(1, &event("big", 1), ""))
            .await;
        id_of(&connection.answer().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_publish_connections_do_not_stop_a_new_stream_from_opening() {
    const MAX_IDLE: usize = 16;
    const MAX_STREAMS: usize = 8;
    let replica = Replica::start(
        "a",
        None,
        &[
            "--idle-timeout",
            "10m",
            "--max-idle-connections",
            &MAX_IDLE.to_string(),
            "--max-streams",
            &MAX_STREAMS.to_string(),
        ],
    )
    .await;
    // Room for the caps, and more: the open-files limit is not what keeps
    // the idle connections down.
    let baseline = fd_count(replica.pid());
    set_open_files_limit(replica.pid(), baseline + MAX_IDLE + MAX_STREAMS + 64);

    // Far more idle publishers than the cap: the oldest make room.
    let mut publishers = Vec::new();
    for n in 0..200 {
        publishers.push(idle_publisher(&replica, &event("p", n)).await);
    }
    publishers[0].wait_closed().await;
    let pid = replica.pid();
    let open = wait_for("the idle connections over the cap to close", WAIT, || {
        let open = fd_count(pid);
        async move { (open <= baseline + MAX_IDLE + 4).then_some(open) }
    })
    .await;
    eprintln!("descriptors: {baseline} before, {open} with 200 idle publishers");

    // Streams open, and events reach them.
    let mut subscriber = Subscriber::connect(vec![replica.stream_url(&["s"])], None).await;
    let id = publish(&replica, "s", json!({"n": 1})).await;
    assert_eq!(subscriber.next_event().await.id, Some(id));
    // The newest publishers were kept.
    let last = publishers.last_mut().unwrap();
    last.send(&publish_request(1, &event("p", 1), "")).await;
    id_of(&last.answer().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_closes_idle_connections_rather_than_stalling_accept() {
    // No cap on idle connections: only the open-files limit stops them.
    let replica = Replica::start(
        "a",
        None,
        &["--idle-timeout", "10m", "--max-idle-connections", "0"],
    )
    .await;
    set_open_files_limit(replica.pid(), fd_count(replica.pid()) + 24);
    // Every one is accepted and answered, more than the limit allows open at
    // once: accept makes room by closing the oldest idle ones.
    let mut publishers = Vec::new();
    for n in 0..60 {
        publishers.push(idle_publisher(&replica, &event("p", n)).await);
    }
    publishers[0].wait_closed().await;
    let mut subscriber = Subscriber::connect(vec![replica.stream_url(&["s"])], None).await;
    let id = publish(&replica, "s", json!({"n": 1})).await;
    assert_eq!(subscriber.next_event().await.id, Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_limits_hold_for_every_request_of_a_connection() {
    let replica = Replica::start("a", None, &[]).await;
    // A publish has 3 headers of its own (host, content-type, content-length).
    let body = event("l", 2);
    let headers = |n: usize| -> String { (3..n).map(|i| format!("x-h{i}: 1\r\n")).collect() };
    // A header line that makes the whole head `size` bytes long.
    let head_of = |size: usize| -> String {
        let plain = publish_request(1, &body, "").len() - body.len();
        format!(
            "x-big: {}\r\n",
            "a".repeat(size - plain - "x-big: \r\n".len())
        )
    };
    let openers: [(&str, Vec<u8>); 2] = [
        ("after a publish", publish_request(1, &event("l", 1), "")),
        (
            "after a request hyper serves",
            b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, extra, refused) in [
        ("64 headers", headers(64), false),
        ("65 headers", headers(65), true),
        ("a 16 KiB head", head_of(16 * 1024), false),
        ("a 17 KiB head", head_of(17 * 1024), true),
    ] {
        let request = publish_request(1, &body, &extra);
        // As the first request of a connection.
        let mut first = Connection::open(&replica).await;
        first.send(&request).await;
        let first_answer = first.answer().await;
        assert_eq!(
            first_answer.status,
            if refused { 431 } else { 200 },
            "{what}"
        );
        if refused {
            first.wait_closed().await;
        }
        // As a later request: answered the same way.
        for (after, opener) in &openers {
            let mut later = Connection::open(&replica).await;
            later.send(opener).await;
            assert_eq!(later.answer().await.status, 200, "{after}");
            later.send(&request).await;
            let answer = later.answer().await;
            assert_eq!(
                answer.status, first_answer.status,
                "{what} {after}: {answer:?}"
            );
            if refused {
                later.wait_closed().await;
            }
        }
    }
}
