//! Publishes pipelined to Redis: the script calls of publishes that arrive
//! together are sent in one write and answered from one read, instead of one
//! round of syscalls each. Each call stays its own atomic script run.

use std::sync::OnceLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind};
use tokio::sync::{mpsc, oneshot};

/// Most calls sent in one write.
const MAX_BATCH: usize = 128;

struct Call {
    cmd: Cmd,
    answer: oneshot::Sender<RedisResult<Vec<String>>>,
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

    /// Runs `cmd` (from [`ScriptPipeline::command`]) in the next batch.
    pub async fn call(&self, cmd: Cmd) -> RedisResult<Vec<String>> {
        let calls = self.calls.get_or_init(|| {
            let (calls, receiver) = mpsc::unbounded_channel();
            tokio::spawn(batches(receiver, self.conn.clone(), self.script.clone()));
            calls
        });
        let (answer, answered) = oneshot::channel();
        if calls.send(Call { cmd, answer }).is_err() {
            return Err(stopped());
        }
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((ErrorKind::Io, "the publish pipeline stopped"))
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
        tokio::spawn(send(batch, conn.clone(), script.clone()));
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
