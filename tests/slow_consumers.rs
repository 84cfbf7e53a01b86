//! Clients that stop reading. Once the hub cuts one off as a slow consumer,
//! its stream's place is given back at once, even though the client does not
//! read; a client that reads again gets what was sent and the end of the
//! stream, and one that never does is reset after the write timeout, which
//! gives back the descriptor and the kernel's send buffer. Meanwhile a reader
//! of the same channel gets every event, in order.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Streams opened by clients that stop reading.
const SLOW: usize = 6;
/// The `n` of the last event published.
const END: u64 = u64::MAX;

/// Opens a stream over a socket with a small receive buffer and reads up to
/// its `retry:` line (it is then subscribed); the caller reads no more.
async fn slow_client(replica: &Replica, channel: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = format!("127.0.0.1:{}", replica.public).parse().unwrap();
    let mut tcp = socket.connect(address).await.unwrap();
    let request = format!("GET /v1/stream?channel={channel} HTTP/1.1\r\nhost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(&read).contains("retry:") {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stream opens");
    assert!(read.starts_with(b"HTTP/1.1 200"), "{read:?}");
    tcp
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The `sseplane_open_streams` gauge.
async fn open_streams(replica: &Replica) -> u64 {
    let metrics = replica.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sseplane_open_streams "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Memory of the kernel's TCP buffers, in pages (`/proc/net/sockstat`).
fn tcp_memory_pages() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP: "))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn publish_with(client: &reqwest::Client, replica: &Replica, data: Value) -> String {
    let response = client
        .post(replica.url("/v1/publish"))
        .json(&json!({"channel": "wide", "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["results"][0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_disconnected_and_give_back_their_stream() {
    let replica = Replica::start("a", None, &["--queue-events", "8"]).await;
    let mut reader = Subscriber::connect(vec![replica.stream_url(&["wide"])], None).await;
    let client = reqwest::Client::new();
    publish_with(&client, &replica, json!({"n": "warm-up"})).await;
    assert_eq!(reader.next_event().await.data, r#"{"n":"warm-up"}"#);
    let fds = fd_count(replica.pid());

    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(slow_client(&replica, "wide").await);
    }
    assert_eq!(open_streams(&replica).await, 1 + SLOW as u64);

    // The reader takes every event as it comes.
    let collector = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            let event = reader.next_event().await;
            if data(&event)["n"] == json!(END) {
                return (received, reader);
            }
            received.push(event);
        }
    });

    // Large events until every slow client is cut off.
    let big = "x".repeat(48_000);
    let mut ids = Vec::new();
    loop {
        let n = ids.len() as u64;
        ids.push(publish_with(&client, &replica, json!({"n": n, "pad": big})).await);
        if n % 10 == 9 {
            let cut_off = replica.diagnostics("").await["slowConsumerDisconnects"]
                .as_u64()
                .unwrap();
            if cut_off >= SLOW as u64 {
                break;
            }
        }
        assert!(n < 5000, "the slow clients were never cut off");
    }
    let kernel_memory = tcp_memory_pages();

    // Without a byte read by the slow clients, the server lets go of their
    // streams at once.
    wait_for("the slow streams to close", WAIT, || async {
        (open_streams(&replica).await == 1).then_some(())
    })
    .await;

    // Half of them read again: they get what was sent, then the end.
    let never_reading = slow.split_off(SLOW / 2);
    for mut tcp in slow {
        tokio::time::timeout(WAIT, async {
            let mut chunk = vec![0u8; 64 * 1024];
            while tcp.read(&mut chunk).await.expect("a clean end, no reset") > 0 {}
        })
        .await
        .expect("the slow client's stream ends");
    }
    // The others never read: the server gives up on them after its write
    // timeout, freeing their descriptors and kernel buffers.
    let pid = replica.pid();
    let left = wait_for("the slow clients' descriptors to close", WAIT, || {
        let open = fd_count(pid);
        // The publisher's kept-alive connection is new since the baseline.
        async move { (open <= fds + 2).then_some(open) }
    })
    .await;
    eprintln!(
        "{} events published; replica descriptors {fds} before the slow clients, {left} after; \
         kernel TCP memory {kernel_memory} pages at the cut-off, {} now",
        ids.len(),
        tcp_memory_pages()
    );
    assert_eq!(
        replica.diagnostics("").await["totalLocalSubscribers"],
        json!(1)
    );

    // The reader got everything, in order, on one connection.
    publish_with(&client, &replica, json!({"n": END})).await;
    let (received, reader) = collector.await.unwrap();
    let got: Vec<String> = received.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(got, ids, "every event, in publish order");
    assert_eq!(seqs(&received), (0..ids.len() as u64).collect::<Vec<_>>());
    assert!(reader.disconnects.is_empty(), "{:?}", reader.disconnects);

    // The clients that never read find their connection ended (reset).
    for mut tcp in never_reading {
        tokio::time::timeout(WAIT, async {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = tcp.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await
        .expect("the connection is ended");
    }
}
