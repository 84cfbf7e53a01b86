//! Test harness: real `redis-server` and real `sseplane` processes on free
//! loopback ports, plus an SSE client that reconnects like a browser.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sseplane::client::{follow, ClientEvent, SseEvent};
use tokio::sync::mpsc;

pub mod proxy;

/// Generous limit for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Times a server is started on fresh ports when the one it was given was
/// taken before it bound it (another test's server, an outgoing connection's
/// source port): it then exits at once.
const START_ATTEMPTS: usize = 5;

/// Polls `ready` until it holds (true) or `child` exits (false, and `child` is
/// cleared), panicking with `what` after [`WAIT`].
async fn ready_or_exited<F, Fut>(what: &str, child: &mut Option<Child>, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if ready().await {
            return true;
        }
        let process = child.as_mut().expect("spawned");
        if process.try_wait().expect("wait for the process").is_some() {
            *child = None;
            return false;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `url` (a Redis server) answers PING.
async fn answers_ping(url: String) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    matches!(pong.as_deref(), Ok("PONG"))
}

/// Whether `url` (a replica's `/readyz`) answers 200.
async fn ready_at(url: String) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|response| response.status() == 200)
}

/// A `redis-server` on a free port, stopped when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..START_ATTEMPTS {
            redis.spawn();
            if redis.answers_or_exits().await {
                return redis;
            }
            redis.port = free_port();
        }
        panic!("redis-server exited at start {START_ATTEMPTS} times");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Restarts the server on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        self.spawn();
        assert!(self.answers_or_exits().await, "redis-server exited");
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
    }

    /// Waits until the server answers PING (true) or exits (false).
    async fn answers_or_exits(&mut self) -> bool {
        let url = self.url();
        ready_or_exited("redis to answer PING", &mut self.child, || {
            answers_ping(url.clone())
        })
        .await
    }
    /// The server's process id (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis running").id()
    }

    /// Kills the server (its data is lost, as with no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command against the server.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `sseplane serve` process on free ports, killed when dropped.
pub struct Replica {
    pub id: String,
    pub public: u16,
    pub admin: u16,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// File that receives the process's stderr (inherited when `None`).
    log: Option<std::path::PathBuf>,
}

impl Replica {
    /// Starts a replica (on Redis when given, else in memory) and waits for `/readyz`.
    pub async fn start(id: &str, redis: Option<&Redis>, extra: &[&str]) -> Replica {
        Replica::start_with_env(id, redis, extra, &[]).await
    }

    /// Like [`Replica::start`], with extra environment variables.
    pub async fn start_with_env(
        id: &str,
        redis: Option<&Redis>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        Replica::start_logged(id, redis, extra, env, None).await
    }

    /// Like [`Replica::start_with_env`], writing the process's log to `log`.
    pub async fn start_logged(
        id: &str,
        redis: Option<&Redis>,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Replica {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(redis) = redis {
            args.extend(["--redis-url".to_owned(), redis.url()]);
        }
        let mut replica = Replica {
            id: id.to_owned(),
            public: free_port(),
            admin: free_port(),
            child: None,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: log.map(ToOwned::to_owned),
        };
        for _ in 0..START_ATTEMPTS {
            replica.spawn();
            if replica.wait_ready_or_exit().await {
                return replica;
            }
            replica.public = free_port();
            replica.admin = free_port();
        }
        panic!("{} exited at start {START_ATTEMPTS} times", replica.id);
    }

    /// Waits for `/readyz` to answer 200 (true) or the process to exit (false).
    async fn wait_ready_or_exit(&mut self) -> bool {
        let what = format!("{} to be ready", self.id);
        let url = self.admin_url("/readyz");
        ready_or_exited(&what, &mut self.child, || ready_at(url.clone())).await
    }

    fn spawn(&mut self) {
        let stderr = match &self.log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_sseplane"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.public)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .args(["--replica-id", &self.id])
            .args(&self.args)
            .env("SSEPLANE_LOG_LEVEL", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start sseplane");
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// The stream URL for `channels`.
    pub fn stream_url(&self, channels: &[&str]) -> String {
        let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
        self.url(&format!("/v1/stream?{}", query.join("&")))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Status of `/readyz`, or `None` when the admin port does not answer.
    pub async fn ready_status(&self) -> Option<u16> {
        let response = reqwest::get(self.admin_url("/readyz")).await.ok()?;
        Some(response.status().as_u16())
    }

    pub async fn wait_ready(&self) {
        wait_for(&format!("{} to be ready", self.id), WAIT, || async {
            (self.ready_status().await == Some(200)).then_some(())
        })
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, leaving the process to exit by itself.
    pub fn terminate(&self) {
        let pid = self.pid() as i32;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("the replica to exit", timeout, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        self.child = None;
        status
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn diagnostics(&self, query: &str) -> Value {
        reqwest::get(self.admin_url(&format!("/v1/diagnostics{query}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the `sseplane` binary with `args` to completion.
pub fn run_sseplane(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sseplane"))
        .args(args)
        .output()
        .expect("run sseplane")
}

/// Runs the `sseplane` binary with `args`, asserting success; its stdout.
pub fn sseplane_stdout(args: &[&str]) -> String {
    let output = run_sseplane(args);
    assert!(
        output.status.success(),
        "sseplane {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// POSTs JSON `body` to `url`; the status and the JSON answer.
pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    post_json_with(url, body, None).await
}

/// Like [`post_json`], with `Authorization: Bearer <token>` when given.
pub async fn post_json_with(url: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Publishes `data` on `channel` through `replica`, asserting success; the id.
pub async fn publish(replica: &Replica, channel: &str, data: Value) -> String {
    let (status, answer) = post_json(
        &replica.url("/v1/publish"),
        &serde_json::json!({"channel": channel, "data": data}),
    )
    .await;
    assert_eq!(status, 200, "publish failed: {answer}");
    answer["results"][0]["id"].as_str().unwrap().to_owned()
}

/// An SSE subscriber that reconnects like a browser, across `urls` in turn.
pub struct Subscriber {
    events: mpsc::Receiver<ClientEvent>,
    /// Replicas this subscriber was connected to, in order.
    pub replicas: Vec<String>,
    /// Disconnections seen.
    pub disconnects: Vec<String>,
}

impl Subscriber {
    /// Connects and waits until the stream is open (it is then subscribed).
    pub async fn connect(urls: Vec<String>, last_event_id: Option<String>) -> Subscriber {
        let mut subscriber = Subscriber {
            events: follow(urls, last_event_id),
            replicas: vec![],
            disconnects: vec![],
        };
        subscriber.wait_connected().await;
        subscriber
    }

    /// Waits for the next (re)connection.
    pub async fn wait_connected(&mut self) {
        let connections = self.replicas.len();
        while self.replicas.len() == connections {
            self.next_item().await;
        }
    }

    async fn next_item(&mut self) -> Option<SseEvent> {
        let item = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting on the stream")
            .expect("client stopped");
        match item {
            ClientEvent::Connected { replica } => self.replicas.push(replica),
            ClientEvent::Disconnected { reason } => self.disconnects.push(reason),
            ClientEvent::Event(event) => return Some(event),
        }
        None
    }

    /// The next event.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.next_item().await {
                return event;
            }
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            events.push(self.next_event().await);
        }
        events
    }

    /// Waits until the current stream ends.
    pub async fn wait_disconnected(&mut self) {
        let seen = self.disconnects.len();
        while self.disconnects.len() == seen {
            if let Some(event) = self.next_item().await {
                panic!("expected the stream to end, got {event:?}");
            }
        }
    }
}

/// The JSON data of an event.
pub fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

/// The `n` field of each event's data.
pub fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| data(e)["n"].as_u64().unwrap())
        .collect()
}

/// A replica's `/readyz`: status and body.
pub async fn readyz(replica: &Replica) -> (u16, Value) {
    let response = reqwest::get(replica.admin_url("/readyz")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits until `/readyz` says `ready` (200) or not (503); its body then.
pub async fn wait_ready(replica: &Replica, ready: bool) -> Value {
    wait_for(&format!("{} ready={ready}", replica.id), WAIT, || async {
        let (status, body) = readyz(replica).await;
        ((status == 200) == ready).then_some(body)
    })
    .await
}

/// The `n` of every event in `channel`'s history, read from Redis itself.
pub async fn history_seqs(redis: &Redis, channel: &str) -> std::collections::HashSet<u64> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis
        .cmd(&["XRANGE", &format!("sseplane:h:{{{channel}}}"), "-", "+"])
        .await;
    entries
        .iter()
        .filter_map(|(_, fields)| fields.iter().find(|(k, _)| k == "m"))
        .filter_map(|(_, envelope)| {
            let data = envelope.rsplit('\n').next()?;
            serde_json::from_str::<Value>(data).ok()?["n"].as_u64()
        })
        .collect()
}
