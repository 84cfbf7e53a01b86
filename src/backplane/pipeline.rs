//! Publishes pipelined to Redis: the script calls of publishes that arrive
//! together are sent in one write and answered from one read, instead of one
//! round of syscalls each. Each call stays its own atomic script run.
//!
//! A call is either sent or abandoned, never both: a caller whose deadline
//! passes while its call still waits here takes it back (nothing reaches
//! Redis, so "not published" is the truth); once sent, a late or lost answer
//! means the outcome is unknown.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind};
use tokio::sync::{mpsc, oneshot};

use super::BackplaneError;

/// Most calls sent in one write.
const MAX_BATCH: usize = 128;

/// A call waits in the pipeline.
const QUEUED: u8 = 0;
/// A call was handed to the connection.
const SENT: u8 = 1;
/// A call's caller gave up before it was sent; it is never sent.
const ABANDONED: u8 = 2;

struct Call {
    cmd: Cmd,
    state: Arc<AtomicU8>,
    answer: oneshot::Sender<RedisResult<Vec<String>>>,
}

impl Call {
    /// Claims the call for sending; false when its caller abandoned it.
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Marks a call abandoned when its caller goes away before it was sent.
struct AbandonOnDrop(Arc<AtomicU8>);

impl AbandonOnDrop {
    /// True when the call was still queued and is now abandoned.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// What a sent call's error says about its outcome: an error reply from Redis
/// (`READONLY`, `OOM`, `NOSCRIPT`, `LOADING`, …) or a refused connection means
/// the script did not run; a timeout or a connection lost after the write
/// leaves the outcome unknown.
pub fn classify_sent(e: redis::RedisError) -> BackplaneError {
    let not_run = matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::AuthenticationFailed
    ) || e.is_connection_refusal();
    if not_run {
        BackplaneError::from(e)
    } else {
        BackplaneError::OutcomeUnknown(e.to_string())
    }
}

/// Sends `EVALSHA` calls of one script, batching those that arrive together.
pub struct ScriptPipeline {
    conn: ConnectionManager,
    script: Script,
    // Started on first use, inside the runtime.
    calls: OnceLock<mpsc::UnboundedSender<Call>>,
}

impl ScriptPipeline {
    /// A pipeline for `script` on `conn`.
    pub fn new(conn: ConnectionManager, script: Script) -> ScriptPipeline {
        ScriptPipeline {
            conn,
            script,
            calls: OnceLock::new(),
        }
    }

    /// The start of an `EVALSHA` of the script with `key_count` keys; the
    /// caller adds the keys, then the arguments.
    pub fn command(&self, key_count: usize) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(key_count);
        cmd
    }

    /// Runs `cmd` (from [`ScriptPipeline::command`]) in the next batch,
    /// waiting at most `deadline`. A call still queued at the deadline is taken
    /// back ([`BackplaneError::Unavailable`]: it never reaches Redis); a sent
    /// one whose answer is late is [`BackplaneError::OutcomeUnknown`].
    pub async fn call(&self, cmd: Cmd, deadline: Duration) -> Result<Vec<String>, BackplaneError> {
        let calls = self.calls.get_or_init(|| {
            let (calls, receiver) = mpsc::unbounded_channel();
            tokio::spawn(batches(receiver, self.conn.clone(), self.script.clone()));
            calls
        });
        let state = Arc::new(AtomicU8::new(QUEUED));
        let guard = AbandonOnDrop(state.clone());
        let (answer, answered) = oneshot::channel();
        if calls.send(Call { cmd, state, answer }).is_err() {
            return Err(stopped());
        }
        match tokio::time::timeout(deadline, answered).await {
            Ok(Ok(Ok(ids))) => Ok(ids),
            Ok(Ok(Err(e))) => Err(classify_sent(e)),
            // Dropped unsent (the pipeline stopped) or abandoned.
            Ok(Err(_)) => Err(stopped()),
            Err(_) if guard.abandon() => Err(BackplaneError::Unavailable(
                "Redis did not take the publish in time; it was not sent".into(),
            )),
            Err(_) => Err(BackplaneError::OutcomeUnknown(
                "Redis did not answer in time".into(),
            )),
        }
    }
}

fn stopped() -> BackplaneError {
    BackplaneError::Unavailable("the publish pipeline stopped".into())
}

/// Collects the calls that are ready together and sends each batch on a task of
/// its own (batches overlap; the connection keeps their order).
async fn batches(
    mut calls: mpsc::UnboundedReceiver<Call>,
    conn: ConnectionManager,
    script: Script,
) {
    while let Some(first) = calls.recv().await {
        let mut batch = vec![first];
        // Let the other publishes that are ready to run queue their calls.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        // Calls whose callers gave up are dropped here, before any byte is sent.
        batch.retain(Call::claim);
        if !batch.is_empty() {
            tokio::spawn(send(batch, conn.clone(), script.clone()));
        }
    }
}

async fn send(batch: Vec<Call>, mut conn: ConnectionManager, script: Script) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for call in &batch {
        pipe.add_command(call.cmd.clone());
    }
    let results: Vec<RedisResult<Vec<String>>> = match pipe.query_async(&mut conn).await {
        Ok(results) => results,
        Err(e) => {
            for call in batch {
                let _ = call.answer.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut unknown_script = Vec::new();
    for (call, result) in batch.into_iter().zip(results) {
        match result {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                unknown_script.push(call)
            }
            result => {
                let _ = call.answer.send(result);
            }
        }
    }
    if unknown_script.is_empty() {
        return;
    }
    // Redis lost its scripts (a restart, SCRIPT FLUSH): load it, then retry.
    let loaded = script.load_async(&mut conn).await;
    for call in unknown_script {
        let result = match &loaded {
            Ok(_) => call.cmd.query_async(&mut conn).await,
            Err(e) => Err(e.clone()),
        };
        let _ = call.answer.send(result);
    }
}
