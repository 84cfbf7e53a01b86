//! The Redis backplane: pub/sub for live delivery, one stream per channel for
//! history, both written by one Lua script so that they never disagree.
//!
//! Keys (`<p>` is `--redis-prefix`; the braces are Redis Cluster hash tags so a
//! channel's keys share a slot):
//! - `<p>:h:{<channel>}` — the history stream; each entry holds the envelope `m`
//!   and `p`, the id of the event before it (so a reader can tell whether the
//!   event right after its position was trimmed);
//! - `<p>:l:{<channel>}` — the channel's last id;
//! - `<p>:m:{<channel>}` — the pub/sub channel, messages `<id>\n<envelope>`;
//! - `<p>:broadcast` — the pub/sub channel of broadcasts, messages `<envelope>`;
//! - `<p>:replicas` (sorted set) and `<p>:replica:<id>` — the cluster view;
//! - `<p>:ping:<id>` — the pub/sub channel on which a replica's heartbeat
//!   reaches its own subscriber, proving the subscription carries messages.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{AsyncCommands, Client, Msg, Script};
use tokio::sync::{mpsc, oneshot};

use super::pipeline::{classify_sent, ScriptPipeline};
use super::shared_reads::{ReadKey, SharedReads};
use super::{
    rfc3339_ms, Backplane, BackplaneError, Check, EventSink, Health, History, PublishItem,
    ReplicaReport,
};
use crate::event::{now_ms, EventBody, Position};

/// How long one Redis command may take before Redis counts as down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often this replica proves Redis accepts writes and reports its figures.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The subscription counts as dead when its own heartbeat has not come back
/// over it for this long (a connection cut without a close looks open).
const SUBSCRIPTION_STALE_AFTER: Duration = Duration::from_secs(3);
/// A replica that has not reported for this long drops out of the cluster view.
const REPLICA_EXPIRY: Duration = Duration::from_secs(15);
/// Keys of idle channels live at least this long, so that a channel's ids keep
/// growing even when it keeps no history.
const MIN_KEY_TTL_MS: u64 = 3_600_000;
/// Most channels named in one SUBSCRIBE.
const SUBSCRIBE_BATCH: usize = 512;
/// Most received messages delivered before the parked streams are flushed.
const MESSAGE_BATCH: usize = 256;
/// History reads for resuming streams under way at once (each on the replay
/// connection; resumes from the same position share one).
const REPLAY_READS: usize = 4;
/// Most events a channel catches up after the subscription reconnected; when
/// more were missed, the oldest are announced as a gap instead.
const CATCH_UP_LIMIT: usize = 10_000;
/// How long one history read may take: replies can be large.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Appends each event to its channel's stream and publishes it, trimming the
/// stream with the operator the replica chose ([`trim_operator`]). A channel
/// that keeps no history has no stream, only its last id. Reads take
/// the newest `max_events` entries and trim by age exactly, so a replay is
/// exact however the stream was trimmed.
const PUBLISH_SCRIPT: &str = r"
local ids, prevs, new = {}, {}, 0
for i = 1, #KEYS / 2 do
  prevs[i] = redis.call('GET', KEYS[2 * i])
  if not prevs[i] then new = new + 1 end
end
-- The last argument says whether channels may be created.
if new > 0 and ARGV[#ARGV] == '0' then
  return {'new', tostring(new)}
end
for i = 1, #KEYS / 2 do
  local hist, last_key = KEYS[2 * i - 1], KEYS[2 * i]
  local a = (i - 1) * 6
  local chan, trim, max_events, max_age, ttl, msg = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local prev = prevs[i] or '0-0'
  local id
  if max_events == '0' then
    -- No history: no stream at all (a new stream takes ~4 KB); the id is the
    -- next one after the channel's last, from Redis's clock.
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local last_ms, last_seq = string.match(prev, '^(%d+)-(%d+)$')
    if now > tonumber(last_ms) then
      id = string.format('%d-0', now)
    else
      id = last_ms .. '-' .. string.format('%d', tonumber(last_seq) + 1)
    end
  else
    id = redis.call('XADD', hist, 'MAXLEN', trim, max_events, '*', 'p', prev, 'm', msg)
    if max_age ~= '0' then
      -- The new id's milliseconds are Redis's clock: no TIME call needed.
      local now = tonumber(string.match(id, '^(%d+)'))
      redis.call('XTRIM', hist, 'MINID', trim, string.format('%d', now - tonumber(max_age)))
    end
    redis.call('PEXPIRE', hist, ttl)
  end
  redis.call('SET', last_key, id, 'PX', ttl)
  redis.call('PUBLISH', chan, id .. '\n' .. msg)
  ids[i] = id
end
return ids
";

/// What history holds after ARGV[1]: the newest ARGV[3] entries, none older
/// than ARGV[2] ms (0: any age). Answers whether the channel exists, its last
/// id and the entries, oldest first.
const HISTORY_SCRIPT: &str = r"
local last = redis.call('GET', KEYS[2])
if not last then return {0, '0-0', {}} end
local max_age, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if max_age > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - max_age))
end
local entries = {}
if limit > 0 then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '(' .. ARGV[1], 'COUNT', ARGV[3])
  for i = #newest, 1, -1 do
    entries[#entries + 1] = newest[i]
  end
end
return {1, last, entries}
";

/// Histories this long or longer are trimmed approximately at publish.
const APPROXIMATE_TRIM_FROM: u64 = 100;

/// How a publish trims a history of `max_events`: `~` (Redis drops whole
/// stream nodes of up to 100 entries, no per-entry work; a stream holds at
/// most about 100 entries, never more than twice its limit) for long
/// histories, `=` (exact) for short ones and for none.
fn trim_operator(max_events: u64) -> &'static str {
    if max_events >= APPROXIMATE_TRIM_FROM {
        "~"
    } else {
        "="
    }
}

/// Key names for one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn history(&self, channel: &str) -> String {
        format!("{}:h:{{{channel}}}", self.prefix)
    }
    fn last(&self, channel: &str) -> String {
        format!("{}:l:{{{channel}}}", self.prefix)
    }
    fn pubsub(&self, channel: &str) -> String {
        format!("{}:m:{{{channel}}}", self.prefix)
    }
    fn broadcast(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }
    fn replicas(&self) -> String {
        format!("{}:replicas", self.prefix)
    }
    fn replica(&self, id: &str) -> String {
        format!("{}:replica:{id}", self.prefix)
    }
    fn ping(&self, id: &str) -> String {
        format!("{}:ping:{id}", self.prefix)
    }
    /// The sseplane channel of a pub/sub channel name, if it is one of ours.
    fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":m:{")?
            .strip_suffix('}')
    }
}

/// Readiness as the background tasks see it.
struct State {
    redis: Mutex<Check>,
    subscription_live: AtomicBool,
    subscription_message: Mutex<String>,
    /// When this replica's heartbeat last came back over the subscription
    /// (Unix ms; 0: not since it connected).
    last_ping_ms: AtomicU64,
}

impl State {
    /// How long ago the subscription last carried a heartbeat, if ever since
    /// it connected.
    fn ping_age(&self) -> Option<Duration> {
        match self.last_ping_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }

    /// True when the subscription carried a heartbeat recently.
    fn subscription_carries(&self) -> bool {
        self.ping_age()
            .is_some_and(|age| age <= SUBSCRIPTION_STALE_AFTER)
    }
}

enum PubSubCommand {
    Subscribe(Arc<str>, oneshot::Sender<Result<Position, BackplaneError>>),
    Unsubscribe(Arc<str>),
}

/// Backplane shared by every replica through one Redis.
pub struct RedisBackplane {
    client: Client,
    /// Publishes, the heartbeat (readiness) and small reads.
    conn: ConnectionManager,
    /// History reads, whose replies can be large: they never delay a
    /// publish or a readiness check.
    replay: ConnectionManager,
    reads: Arc<SharedReads>,
    keys: Keys,
    replica_id: String,
    publish: ScriptPipeline,
    history_script: Script,
    state: Arc<State>,
    commands: mpsc::UnboundedSender<PubSubCommand>,
    command_rx: Mutex<Option<mpsc::UnboundedReceiver<PubSubCommand>>>,
    started: OnceLock<()>,
}

impl RedisBackplane {
    /// Prepares a backplane on `url`; nothing is connected until [`Backplane::start`].
    pub fn new(
        url: &str,
        prefix: &str,
        replica_id: &str,
    ) -> Result<RedisBackplane, BackplaneError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let replay = ConnectionManager::new_lazy_with_config(
            client.clone(),
            config.set_response_timeout(Some(REPLAY_TIMEOUT)),
        )?;
        let publish = ScriptPipeline::new(conn.clone(), Script::new(PUBLISH_SCRIPT));
        let (commands, command_rx) = mpsc::unbounded_channel();
        Ok(RedisBackplane {
            client,
            conn,
            replay,
            reads: Arc::new(SharedReads::new(REPLAY_READS)),
            keys: Keys {
                prefix: prefix.to_owned(),
            },
            replica_id: replica_id.to_owned(),
            publish,
            history_script: Script::new(HISTORY_SCRIPT),
            state: Arc::new(State {
                redis: Mutex::new(Check::fail("not checked yet")),
                subscription_live: AtomicBool::new(false),
                subscription_message: Mutex::new("not connected yet".to_owned()),
                last_ping_ms: AtomicU64::new(0),
            }),
            commands,
            command_rx: Mutex::new(Some(command_rx)),
            started: OnceLock::new(),
        })
    }

    fn redis_up(&self) -> bool {
        self.state.redis.lock().expect("state lock").ok
    }
}

/// Runs `fut` with the command timeout, turning a timeout into `Unavailable`.
async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackplaneError> {
    match tokio::time::timeout(COMMAND_TIMEOUT * 2, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BackplaneError::Unavailable(
            "Redis did not answer in time".into(),
        )),
    }
}

/// Runs a read for at most `limit`, once more when its connection turned out
/// to be broken (e.g. Redis restarted since the connection's last command): a
/// read is safe to repeat, and the second attempt goes over a new connection.
async fn read_retrying<T, F, Fut>(limit: Duration, mut read: F) -> Result<T, BackplaneError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let timed_out = || BackplaneError::Unavailable("Redis did not answer in time".into());
    match tokio::time::timeout(limit, read()).await {
        Ok(Err(e)) if e.is_connection_dropped() && !e.is_timeout() => {
            match tokio::time::timeout(limit, read()).await {
                Ok(result) => Ok(result?),
                Err(_) => Err(timed_out()),
            }
        }
        Ok(result) => Ok(result?),
        Err(_) => Err(timed_out()),
    }
}

fn parse_position(text: &str) -> Result<Position, BackplaneError> {
    text.parse().map_err(|_| {
        BackplaneError::Unavailable(format!("Redis returned a bad stream id {text:?}"))
    })
}

impl Backplane for RedisBackplane {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn start(&self, sink: Arc<dyn EventSink>) {
        if self.started.set(()).is_err() {
            return;
        }
        let command_rx = self
            .command_rx
            .lock()
            .expect("lock")
            .take()
            .expect("started once");
        let subscriber = Subscriber {
            ping: self.keys.ping(&self.replica_id),
            client: self.client.clone(),
            conn: self.conn.clone(),
            replay: self.replay.clone(),
            keys: self.keys.clone(),
            history_script: self.history_script.clone(),
            state: self.state.clone(),
            sink: sink.clone(),
        };
        tokio::spawn(subscriber.run(command_rx));
        tokio::spawn(heartbeat(
            self.conn.clone(),
            self.keys.clone(),
            self.replica_id.clone(),
            self.state.clone(),
            sink,
        ));
    }

    fn publish<'a>(
        &'a self,
        items: &'a [PublishItem<'a>],
        create: bool,
    ) -> BoxFuture<'a, Result<Vec<Position>, BackplaneError>> {
        Box::pin(async move {
            // EVALSHA sha 2n KEYS… then ARGV: 6 per item, then `create`.
            let mut cmd = self.publish.command(2 * items.len());
            for item in items {
                cmd.arg(self.keys.history(item.channel))
                    .arg(self.keys.last(item.channel));
            }
            for item in items {
                let (max_events, max_age_ms) = if item.retention.keeps_history() {
                    (
                        item.retention.max_events,
                        item.retention.max_age.as_millis() as u64,
                    )
                } else {
                    (0, 0)
                };
                cmd.arg(self.keys.pubsub(item.channel))
                    .arg(trim_operator(max_events))
                    .arg(max_events)
                    .arg(max_age_ms)
                    .arg(max_age_ms.max(MIN_KEY_TTL_MS))
                    .arg(item.body.encode());
            }
            cmd.arg(if create { "1" } else { "0" });
            // Refused up front while the heartbeat finds Redis down: nothing
            // is sent, so the answer "not published" is certain.
            if !self.redis_up() {
                let reason = self.state.redis.lock().expect("state lock").message.clone();
                return Err(BackplaneError::Unavailable(reason));
            }
            let ids = self.publish.call(cmd, COMMAND_TIMEOUT * 2).await?;
            if let [tag, count] = ids.as_slice() {
                if tag == "new" {
                    let count = count.parse().unwrap_or(1);
                    return Err(BackplaneError::NewChannels { count });
                }
            }
            ids.iter().map(|id| parse_position(id)).collect()
        })
    }

    fn broadcast<'a>(
        &'a self,
        body: &'a EventBody,
    ) -> BoxFuture<'a, Result<usize, BackplaneError>> {
        Box::pin(async move {
            if !self.redis_up() {
                let reason = self.state.redis.lock().expect("state lock").message.clone();
                return Err(BackplaneError::Unavailable(reason));
            }
            let mut conn = self.conn.clone();
            // Once sent, a broadcast whose answer is lost may have gone out.
            let sent = conn.publish(self.keys.broadcast(), body.encode());
            match tokio::time::timeout(COMMAND_TIMEOUT * 2, sent).await {
                Ok(Ok(reached)) => Ok(reached),
                Ok(Err(e)) => Err(classify_sent(e)),
                Err(_) => Err(BackplaneError::OutcomeUnknown(
                    "Redis did not answer in time".into(),
                )),
            }
        })
    }

    fn subscribe(&self, channel: Arc<str>) -> BoxFuture<'static, Result<Position, BackplaneError>> {
        let (ack, done) = oneshot::channel();
        let sent = self.commands.send(PubSubCommand::Subscribe(channel, ack));
        Box::pin(async move {
            sent.map_err(|_| BackplaneError::Unavailable("backplane stopped".into()))?;
            done.await
                .unwrap_or_else(|_| Err(BackplaneError::Unavailable("backplane stopped".into())))
        })
    }

    fn unsubscribe(&self, channel: Arc<str>) {
        let _ = self.commands.send(PubSubCommand::Unsubscribe(channel));
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Position,
        max_age: Duration,
        limit: usize,
        live_since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Arc<History>, BackplaneError>> {
        let key = ReadKey {
            channel: channel.to_owned(),
            after,
            max_age,
            limit,
        };
        let (conn, script, keys, name) = (
            self.replay.clone(),
            self.history_script.clone(),
            self.keys.clone(),
            channel.to_owned(),
        );
        let reads = self.reads.clone();
        Box::pin(async move {
            reads
                .read(key, live_since, move || {
                    Box::pin(async move {
                        read_history(conn, &script, &keys, &name, after, max_age, limit).await
                    })
                })
                .await
        })
    }

    fn health(&self) -> Health {
        let redis = self.state.redis.lock().expect("state lock").clone();
        let message = self
            .state
            .subscription_message
            .lock()
            .expect("state lock")
            .clone();
        let subscription = if !self.state.subscription_live.load(Ordering::Acquire) {
            Check::fail(message)
        } else if self.state.subscription_carries() {
            Check::ok(message)
        } else {
            Check::fail(match self.state.ping_age() {
                None => "subscribed; waiting for the heartbeat to come back over it".to_owned(),
                Some(age) => format!(
                    "no message over the subscription for {:.1} s (its connection may be cut)",
                    age.as_secs_f64()
                ),
            })
        };
        Health {
            redis,
            subscription,
        }
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Vec<ReplicaReport>, BackplaneError>> {
        Box::pin(async move {
            if !self.redis_up() {
                return Err(BackplaneError::Unavailable("Redis is down".into()));
            }
            let mut conn = self.conn.clone();
            let since = now_ms().saturating_sub(REPLICA_EXPIRY.as_millis() as u64);
            let ids: Vec<String> =
                timed(conn.zrangebyscore(self.keys.replicas(), since, "+inf")).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| self.keys.replica(id)).collect();
            let reports: Vec<Option<String>> = timed(conn.mget(keys)).await?;
            let mut reports: Vec<ReplicaReport> = reports
                .into_iter()
                .flatten()
                .filter_map(|json| serde_json::from_str(&json).ok())
                .collect();
            reports.sort_by(|a, b| a.replica.cmp(&b.replica));
            Ok(reports)
        })
    }
}

type StreamEntry = (String, HashMap<String, String>);

async fn read_history(
    conn: ConnectionManager,
    script: &Script,
    keys: &Keys,
    channel: &str,
    after: Position,
    max_age: Duration,
    limit: usize,
) -> Result<History, BackplaneError> {
    let mut invocation = script.key(keys.history(channel));
    invocation
        .key(keys.last(channel))
        .arg(after.to_string())
        .arg(max_age.as_millis() as u64)
        .arg(limit);
    let invocation = &invocation;
    let (exists, last, entries): (i64, String, Vec<StreamEntry>) =
        read_retrying(REPLAY_TIMEOUT, || {
            let mut conn = conn.clone();
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
    if exists == 0 {
        return Ok(History {
            exists: false,
            ..History::default()
        });
    }
    let last = parse_position(&last)?;
    let mut events = Vec::with_capacity(entries.len());
    // The first entry after `after` must follow it directly. An entry whose
    // predecessor is later was preceded by trimmed events; one whose
    // predecessor is earlier (`0-0` after Redis lost its data, or expired
    // keys) starts a history that does not know `after`: events may be lost
    // either way.
    let mut gap = match entries.first() {
        Some((_, fields)) => {
            let prev = parse_position(fields.get("p").map(String::as_str).unwrap_or("0-0"))?;
            prev != after
        }
        None => last != after,
    };
    for (id, fields) in &entries {
        let body = fields.get("m").and_then(|m| EventBody::decode(m).ok());
        match body {
            Some(body) => events.push((parse_position(id)?, body)),
            None => {
                tracing::warn!(channel, id, "skipping an unreadable history entry");
                gap = true;
            }
        }
    }
    Ok(History {
        exists: true,
        last,
        gap,
        events,
    })
}

/// Owns the pub/sub connection: (re)subscribes, catches up after reconnects,
/// and hands every message to the sink in order.
struct Subscriber {
    /// This replica's heartbeat channel.
    ping: String,
    client: Client,
    conn: ConnectionManager,
    replay: ConnectionManager,
    keys: Keys,
    history_script: Script,
    state: Arc<State>,
    sink: Arc<dyn EventSink>,
}

impl Subscriber {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<PubSubCommand>) {
        // Channels this replica has local subscribers for, kept across reconnects.
        let mut wanted: HashSet<Arc<str>> = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            match self.connect(&wanted).await {
                Ok((sink, stream)) => {
                    backoff = Duration::from_millis(100);
                    if connected_before {
                        metrics::counter!(crate::metrics::REDIS_RECONNECTS).increment(1);
                    }
                    connected_before = true;
                    self.set_live(true, "subscribed");
                    tracing::info!(channels = wanted.len(), "backplane subscription live");
                    self.serve(sink, stream, &mut wanted, &mut commands).await;
                    self.set_live(false, "pub/sub connection lost; reconnecting");
                    tracing::warn!("backplane pub/sub connection lost; reconnecting");
                }
                Err(e) => {
                    self.set_live(false, &format!("cannot subscribe: {e}"));
                    tracing::debug!(error = %e, "backplane subscription failed");
                }
            }
            // While disconnected, keep answering commands so that streams are
            // refused quickly instead of waiting for Redis.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    command = commands.recv() => match command {
                        None => return,
                        Some(command) => refuse(command, &mut wanted),
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn set_live(&self, live: bool, message: &str) {
        *self.state.subscription_message.lock().expect("state lock") = message.to_owned();
        self.state.subscription_live.store(live, Ordering::Release);
    }

    /// Connects, subscribes to broadcasts and every wanted channel, then catches
    /// up on what those channels missed while disconnected.
    async fn connect(
        &self,
        wanted: &HashSet<Arc<str>>,
    ) -> Result<(PubSubSink, redis::aio::PubSubStream), BackplaneError> {
        let pubsub = timed(self.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        self.state.last_ping_ms.store(0, Ordering::Release);
        timed(sink.subscribe(vec![self.keys.broadcast(), self.ping.clone()])).await?;
        let names: Vec<&Arc<str>> = wanted.iter().collect();
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            let pubsub: Vec<String> = batch.iter().map(|c| self.keys.pubsub(c)).collect();
            timed(sink.subscribe(pubsub)).await?;
        }
        // The stream is not read until catch-up is done, so live messages queue
        // behind the catch-up and per-channel order holds; the sink drops the
        // duplicates by position.
        for channel in wanted {
            self.catch_up(channel).await?;
        }
        Ok((sink, stream))
    }

    async fn catch_up(&self, channel: &str) -> Result<(), BackplaneError> {
        let Some(position) = self.sink.position(channel) else {
            return Ok(());
        };
        let history = read_history(
            self.replay.clone(),
            &self.history_script,
            &self.keys,
            channel,
            position,
            Duration::ZERO,
            CATCH_UP_LIMIT,
        )
        .await?;
        if !history.exists {
            // Nothing was published since Redis lost its data: nothing missed.
            return Ok(());
        }
        if history.gap {
            self.sink.deliver_gap(channel);
        }
        for (position, body) in &history.events {
            self.sink.deliver(channel, *position, body);
        }
        self.sink.end_of_batch();
        Ok(())
    }

    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: redis::aio::PubSubStream,
        wanted: &mut HashSet<Arc<str>>,
        commands: &mut mpsc::UnboundedReceiver<PubSubCommand>,
    ) {
        let mut check = tokio::time::interval(HEARTBEAT_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let connected = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = check.tick() => {
                    // Redis answers commands, yet this connection has carried
                    // no heartbeat for a while: it is cut without a close.
                    let redis_up = self.state.redis.lock().expect("state lock").ok;
                    let silent = match self.state.ping_age() {
                        Some(age) => age > SUBSCRIPTION_STALE_AFTER,
                        None => connected.elapsed() > SUBSCRIPTION_STALE_AFTER,
                    };
                    if redis_up && silent {
                        tracing::warn!("backplane subscription carries no messages; reconnecting");
                        return;
                    }
                }
                message = stream.next() => match message {
                    Some(message) => {
                        self.on_message(&message);
                        let ended = self.on_ready_messages(&mut stream);
                        self.sink.end_of_batch();
                        if ended {
                            return;
                        }
                    }
                    None => return,
                },
                command = commands.recv() => {
                    let Some(first) = command else { return };
                    let mut batch = vec![first];
                    while batch.len() < SUBSCRIBE_BATCH {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.apply(&mut sink, batch, wanted).await {
                        tracing::warn!(error = %e, "backplane subscribe failed");
                        return;
                    }
                }
            }
        }
    }

    /// Applies a batch of (un)subscriptions in order, answering each subscribe
    /// with the channel's position once Redis confirmed it.
    async fn apply(
        &self,
        sink: &mut PubSubSink,
        batch: Vec<PubSubCommand>,
        wanted: &mut HashSet<Arc<str>>,
    ) -> Result<(), BackplaneError> {
        let mut acks = Vec::new();
        let mut pending: Vec<String> = Vec::new();
        for command in batch {
            match command {
                PubSubCommand::Subscribe(channel, ack) => {
                    if wanted.insert(channel.clone()) {
                        pending.push(self.keys.pubsub(&channel));
                    }
                    acks.push((channel, ack));
                }
                PubSubCommand::Unsubscribe(channel) => {
                    if !pending.is_empty() {
                        timed(sink.subscribe(std::mem::take(&mut pending))).await?;
                    }
                    if wanted.remove(&channel) {
                        timed(sink.unsubscribe(self.keys.pubsub(&channel))).await?;
                    }
                }
            }
        }
        if !pending.is_empty() {
            if let Err(e) = timed(sink.subscribe(pending)).await {
                for (channel, ack) in acks {
                    wanted.remove(&channel);
                    let _ = ack.send(Err(BackplaneError::Unavailable(e.to_string())));
                }
                return Err(e);
            }
        }
        if acks.is_empty() {
            return Ok(());
        }
        // Positions are read after the subscription is confirmed: every event
        // after them is delivered live.
        let keys: Vec<String> = acks.iter().map(|(c, _)| self.keys.last(c)).collect();
        let positions: Result<Vec<Option<String>>, _> = read_retrying(COMMAND_TIMEOUT * 2, || {
            let mut conn = self.conn.clone();
            let keys = &keys;
            async move {
                if keys.len() == 1 {
                    let one: Option<String> = conn.get(&keys[0]).await?;
                    Ok(vec![one])
                } else {
                    conn.mget(keys).await
                }
            }
        })
        .await;
        match positions {
            Ok(positions) => {
                for ((_, ack), position) in acks.into_iter().zip(positions) {
                    let position = position
                        .as_deref()
                        .map(parse_position)
                        .transpose()
                        .map(Option::unwrap_or_default);
                    let _ = ack.send(position);
                }
                Ok(())
            }
            Err(e) => {
                for (_, ack) in acks {
                    let _ = ack.send(Err(BackplaneError::Unavailable(e.to_string())));
                }
                // The subscriptions stand; the streams asking were refused.
                Ok(())
            }
        }
    }

    /// Delivers the messages that arrived with the one just delivered (up to
    /// [`MESSAGE_BATCH`]): they are one batch, and a stream gets its events of a
    /// batch in one write. True when the stream ended.
    fn on_ready_messages(&self, stream: &mut redis::aio::PubSubStream) -> bool {
        for _ in 1..MESSAGE_BATCH {
            match stream.next().now_or_never() {
                Some(Some(message)) => self.on_message(&message),
                Some(None) => return true,
                None => break,
            }
        }
        false
    }

    fn on_message(&self, message: &Msg) {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            tracing::warn!("dropping a non-UTF-8 backplane message");
            return;
        };
        let name = message.get_channel_name();
        if let Some(channel) = self.keys.channel_of(name) {
            let parsed = payload.split_once('\n').and_then(|(id, envelope)| {
                Some((
                    id.parse::<Position>().ok()?,
                    EventBody::decode(envelope).ok()?,
                ))
            });
            match parsed {
                Some((position, body)) => self.sink.deliver(channel, position, &body),
                None => tracing::warn!(channel, "dropping a malformed backplane message"),
            }
        } else if name == self.ping {
            self.state.last_ping_ms.store(now_ms(), Ordering::Release);
        } else if name == self.keys.broadcast() {
            match EventBody::decode(payload) {
                Ok(body) => self.sink.deliver_broadcast(&body),
                Err(e) => tracing::warn!(error = %e, "dropping a malformed broadcast"),
            }
        }
    }
}

/// Answers a command while the pub/sub connection is down.
fn refuse(command: PubSubCommand, wanted: &mut HashSet<Arc<str>>) {
    match command {
        PubSubCommand::Subscribe(_, ack) => {
            let _ = ack.send(Err(BackplaneError::Unavailable(
                "Redis pub/sub is down".into(),
            )));
        }
        PubSubCommand::Unsubscribe(channel) => {
            wanted.remove(&channel);
        }
    }
}

/// Every second: proves Redis answers and accepts writes (a replica that
/// answers `READONLY` after a failover counts as down) by writing this
/// replica's report, and drops reports of replicas gone silent.
async fn heartbeat(
    mut conn: ConnectionManager,
    keys: Keys,
    replica_id: String,
    state: Arc<State>,
    sink: Arc<dyn EventSink>,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = now_ms();
        let mut report = sink.report();
        report.last_seen = rfc3339_ms(now);
        let json = serde_json::to_string(&report).unwrap_or_default();
        let started = std::time::Instant::now();
        let result: Result<(), BackplaneError> = timed(
            redis::pipe()
                .zadd(keys.replicas(), &replica_id, now)
                .ignore()
                .pset_ex(
                    keys.replica(&replica_id),
                    json,
                    REPLICA_EXPIRY.as_millis() as u64,
                )
                .ignore()
                .zrembyscore(
                    keys.replicas(),
                    "-inf",
                    now.saturating_sub(REPLICA_EXPIRY.as_millis() as u64),
                )
                .ignore()
                .publish(keys.ping(&replica_id), now)
                .ignore()
                .query_async(&mut conn),
        )
        .await;
        let check = match result {
            Ok(()) => Check::ok(format!(
                "Redis accepted a write in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            )),
            Err(e) => Check::fail(e.to_string()),
        };
        let mut current = state.redis.lock().expect("state lock");
        if current.ok != check.ok {
            if check.ok {
                tracing::info!("Redis is reachable and writable");
            } else {
                tracing::warn!(reason = %check.message, "Redis is down");
            }
        }
        *current = check;
    }
}
