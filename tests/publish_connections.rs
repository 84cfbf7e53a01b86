//! Publishers on kept-alive connections, as HTTP clients send them: requests
//! one after another and pipelined, bodies split over several writes, another
//! route on the same connection, `Connection: close`, shutdown between
//! requests. The answers must be those of the router (same status, body and
//! headers), whichever path serves them.

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
