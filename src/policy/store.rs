//! The policy store: every valid policy from every source, and the resolution
//! of a channel to its effective policy (cached per channel, recomputed when
//! policies change).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::watch;

use super::compile::{compare_matches, compile, CompiledPolicy, PolicyDocument};
use super::EffectivePolicy;

/// Gives `policy` the rate-limit buckets of `previous` (the same policy before
/// a reload) when its limit did not change.
fn keep_rate_buckets(policy: &mut CompiledPolicy, previous: Option<&Arc<CompiledPolicy>>) {
    let Some(old) = previous.and_then(|p| p.effective.rate_limit.as_ref()) else {
        return;
    };
    if policy
        .effective
        .rate_limit
        .as_ref()
        .is_some_and(|new| new.same_limit(old))
    {
        Arc::make_mut(&mut policy.effective).rate_limit = Some(old.clone());
    }
}

/// Most channels whose resolution is cached; past it the cache starts over.
const CACHE_LIMIT: usize = 100_000;

/// What became of one document at the last update of its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVerdict {
    /// `namespace/name` or `file:name`.
    pub key: String,
    /// The generation read (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `None` when in force; the reason when ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a channel has the policy it has.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The channel.
    pub channel: String,
    /// The winning policy (`default` when none matched).
    pub policy: String,
    /// The winning pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Every policy that matched, best first, with its pattern.
    pub candidates: Vec<Candidate>,
    /// In words.
    pub reason: String,
}

/// A matching policy.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The policy.
    pub policy: String,
    /// Its best pattern for the channel.
    pub pattern: String,
    /// Its priority.
    pub priority: i32,
}

#[derive(Default)]
struct Sources {
    /// Compiled policies by source name.
    policies: BTreeMap<String, Vec<Arc<CompiledPolicy>>>,
    /// Sources that have delivered their first full set.
    synced: BTreeMap<String, bool>,
    /// Verdicts of the last update, by source.
    verdicts: BTreeMap<String, Vec<PolicyVerdict>>,
    /// Health of each source: updates applied and the last failure.
    status: BTreeMap<String, SourceStatus>,
}

/// How a policy source is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `files` or `kubernetes`.
    pub source: String,
    /// Delivered its first full set.
    pub synced: bool,
    /// Sets applied since start.
    pub updates: u64,
    /// The last failure to read the source (cleared by the next success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Inner {
    default: Arc<EffectivePolicy>,
    sources: Mutex<Sources>,
    /// All valid policies of all sources (rebuilt on every change).
    all: RwLock<Arc<Vec<Arc<CompiledPolicy>>>>,
    // A std mutex: held only for a map lookup or insert.
    cache: Mutex<HashMap<Box<str>, Arc<EffectivePolicy>>>,
    version: watch::Sender<u64>,
}

/// Resolves channel names to effective policies; cheap to clone.
#[derive(Clone)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("version", &self.version())
            .finish()
    }
}

/// A source's handle for replacing its policies.
#[derive(Clone)]
pub struct SourceHandle {
    store: PolicyStore,
    name: String,
}

impl PolicyStore {
    /// A store with no policies: every channel gets `default`.
    pub fn new(default: EffectivePolicy) -> PolicyStore {
        PolicyStore {
            inner: Arc::new(Inner {
                default: Arc::new(default),
                sources: Mutex::new(Sources::default()),
                all: RwLock::new(Arc::new(Vec::new())),
                cache: Mutex::new(HashMap::new()),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// Registers a source; readiness waits until it delivered its first set.
    pub fn source(&self, name: &str) -> SourceHandle {
        let mut sources = self.inner.sources.lock().expect("store lock");
        sources.synced.insert(name.to_owned(), false);
        sources.status.insert(
            name.to_owned(),
            SourceStatus {
                source: name.to_owned(),
                ..SourceStatus::default()
            },
        );
        SourceHandle {
            store: self.clone(),
            name: name.to_owned(),
        }
    }

    /// The policy for channels no policy matches.
    pub fn default_policy(&self) -> &Arc<EffectivePolicy> {
        &self.inner.default
    }

    /// Forgets idle rate-limit buckets every 10 s, so that memory goes back
    /// down after a flood of channel names. Needs a Tokio runtime.
    pub fn spawn_upkeep(&self) {
        let store = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                ticker.tick().await;
                let Some(inner) = store.upgrade() else { return };
                PolicyStore { inner }.forget_idle_rate_buckets();
            }
        });
    }

    /// Drops idle rate-limit buckets of every policy (see
    /// [`crate::policy::RateLimit::forget_idle`]).
    pub fn forget_idle_rate_buckets(&self) {
        let all = self.inner.all.read().expect("store lock").clone();
        let limits = all
            .iter()
            .map(|p| &p.effective)
            .chain(std::iter::once(&self.inner.default))
            .filter_map(|p| p.rate_limit.as_ref());
        for limit in limits {
            limit.forget_idle();
        }
    }

    /// The effective policy of `channel`.
    pub fn resolve(&self, channel: &str) -> Arc<EffectivePolicy> {
        if let Some(hit) = self.inner.cache.lock().expect("cache lock").get(channel) {
            return hit.clone();
        }
        let version = self.version();
        let all = self.inner.all.read().expect("store lock").clone();
        let policy = best(&all, channel)
            .map(|(policy, _)| policy.effective.clone())
            .unwrap_or_else(|| self.inner.default.clone());
        let mut cache = self.inner.cache.lock().expect("cache lock");
        // A change may have landed while resolving; then the answer is not cached.
        if self.version() == version {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(channel.into(), policy.clone());
        }
        policy
    }

    /// The effective policy of each of `channels`, in order.
    pub fn resolve_all(&self, channels: &[impl AsRef<str>]) -> Vec<Arc<EffectivePolicy>> {
        channels.iter().map(|c| self.resolve(c.as_ref())).collect()
    }

    /// Which policy `channel` gets, and why.
    pub fn explain(&self, channel: &str) -> Explanation {
        let all = self.inner.all.read().expect("store lock").clone();
        let mut candidates: Vec<_> = all
            .iter()
            .filter_map(|p| p.best_match(channel).map(|m| (p.as_ref(), m)))
            .collect();
        candidates.sort_by(|a, b| compare_matches(*b, *a));
        let reason = match candidates.as_slice() {
            [] => "no policy matches: the default policy (flags) applies".to_owned(),
            [_] => "the only matching policy".to_owned(),
            [first, second, ..] if first.1.specificity != second.1.specificity => {
                "the most specific matching pattern".to_owned()
            }
            [first, second, ..] if first.0.priority != second.0.priority => {
                "equally specific patterns: the highest priority".to_owned()
            }
            _ => "equally specific patterns and priorities: the first name in order".to_owned(),
        };
        Explanation {
            channel: channel.to_owned(),
            policy: candidates
                .first()
                .map(|c| c.0.key.clone())
                .unwrap_or_else(|| "default".to_owned()),
            pattern: candidates.first().map(|c| c.1.text.clone()),
            candidates: candidates
                .iter()
                .map(|(p, m)| Candidate {
                    policy: p.key.clone(),
                    pattern: m.text.clone(),
                    priority: p.priority,
                })
                .collect(),
            reason,
        }
    }

    /// The largest body any policy accepts: the limit for reading publish bodies.
    pub fn max_payload_bytes(&self) -> usize {
        let all = self.inner.all.read().expect("store lock").clone();
        all.iter()
            .map(|p| p.effective.max_payload_bytes)
            .chain(std::iter::once(self.inner.default.max_payload_bytes))
            .max()
            .unwrap_or(self.inner.default.max_payload_bytes)
    }

    /// True once every registered source delivered its first set.
    pub fn synced(&self) -> bool {
        self.inner
            .sources
            .lock()
            .expect("store lock")
            .synced
            .values()
            .all(|s| *s)
    }

    /// Sources not synced yet.
    pub fn unsynced_sources(&self) -> Vec<String> {
        let sources = self.inner.sources.lock().expect("store lock");
        sources
            .synced
            .iter()
            .filter(|(_, s)| !**s)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Increases on every change of policies.
    pub fn version(&self) -> u64 {
        *self.inner.version.borrow()
    }

    /// Notifies on every change of policies.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// How every source is doing.
    pub fn source_status(&self) -> Vec<SourceStatus> {
        self.inner
            .sources
            .lock()
            .expect("store lock")
            .status
            .values()
            .cloned()
            .collect()
    }

    /// The verdicts of every source's last update.
    pub fn verdicts(&self) -> Vec<PolicyVerdict> {
        let sources = self.inner.sources.lock().expect("store lock");
        sources.verdicts.values().flatten().cloned().collect()
    }
}

/// The best matching policy for `channel`, with its pattern.
fn best<'a>(
    all: &'a [Arc<CompiledPolicy>],
    channel: &str,
) -> Option<(&'a CompiledPolicy, &'a super::compile::CompiledPattern)> {
    all.iter()
        .filter_map(|p| p.best_match(channel).map(|m| (p.as_ref(), m)))
        .max_by(|a, b| compare_matches(*a, *b))
}

impl SourceHandle {
    /// Records that reading the source failed; the policies stay as they were.
    pub fn report_error(&self, error: String) {
        let mut sources = self.store.inner.sources.lock().expect("store lock");
        if let Some(status) = sources.status.get_mut(&self.name) {
            status.last_error = Some(error);
        }
    }

    /// Replaces every policy of this source with `documents`. Invalid ones are
    /// logged and left out; the valid ones take effect at once, all together.
    pub fn replace(&self, documents: Vec<PolicyDocument>) -> Vec<PolicyVerdict> {
        let inner = &self.store.inner;
        let mut compiled = Vec::new();
        let mut verdicts = Vec::new();
        // A reload keeps the buckets of rate limits it does not change, so
        // that rewriting a policy file does not hand out fresh bursts.
        let previous: HashMap<String, Arc<CompiledPolicy>> = inner
            .sources
            .lock()
            .expect("store lock")
            .policies
            .get(&self.name)
            .into_iter()
            .flatten()
            .map(|p| (p.key.clone(), p.clone()))
            .collect();
        for document in &documents {
            let error = match compile(document, &inner.default) {
                Ok(mut policy) => {
                    let before = previous.get(&policy.key).cloned();
                    keep_rate_buckets(&mut policy, before.as_ref());
                    compiled.push(Arc::new(policy));
                    None
                }
                Err(reason) => {
                    tracing::warn!(policy = %document.key, %reason, "ignoring an invalid ChannelPolicy");
                    Some(reason)
                }
            };
            verdicts.push(PolicyVerdict {
                key: document.key.clone(),
                generation: document.generation,
                error,
            });
        }
        let mut sources = inner.sources.lock().expect("store lock");
        sources.policies.insert(self.name.clone(), compiled);
        sources.synced.insert(self.name.clone(), true);
        sources.verdicts.insert(self.name.clone(), verdicts.clone());
        if let Some(status) = sources.status.get_mut(&self.name) {
            status.synced = true;
            status.updates += 1;
            status.last_error = None;
        }
        let all: Vec<_> = sources.policies.values().flatten().cloned().collect();
        *inner.all.write().expect("store lock") = Arc::new(all);
        inner.cache.lock().expect("cache lock").clear();
        inner.version.send_modify(|v| *v += 1);
        let invalid = sources
            .verdicts
            .values()
            .flatten()
            .filter(|v| v.error.is_some())
            .count();
        let valid = sources.verdicts.values().flatten().count() - invalid;
        metrics::gauge!(crate::metrics::POLICIES, "state" => "valid").set(valid as f64);
        metrics::gauge!(crate::metrics::POLICIES, "state" => "invalid").set(invalid as f64);
        tracing::info!(source = %self.name, policies = documents.len(), "policies updated");
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::crd::{ChannelPolicySpec, HistorySpec};
    use crate::policy::Retention;
    use std::time::Duration;

    fn default() -> EffectivePolicy {
        crate::config::ServeArgs::default().default_policy()
    }

    fn doc(key: &str, channels: &[&str], priority: i32) -> PolicyDocument {
        PolicyDocument {
            key: key.to_owned(),
            generation: None,
            spec: ChannelPolicySpec {
                channels: channels.iter().map(|c| c.to_string()).collect(),
                priority,
                ..Default::default()
            },
        }
    }

    fn store(docs: Vec<PolicyDocument>) -> PolicyStore {
        let store = PolicyStore::new(default());
        store.source("test").replace(docs);
        store
    }

    fn rate_limited(per_second: u32, burst: u32) -> PolicyDocument {
        let mut document = doc("ns/limited", &["rl:*"], 0);
        document.spec.rate_limit = Some(crate::policy::crd::RateLimitSpec {
            per_second,
            burst: Some(burst),
        });
        document
    }

    #[test]
    fn a_reload_that_keeps_a_rate_limit_keeps_its_buckets() {
        let store = store(vec![rate_limited(1, 2)]);
        let limit = store.resolve("rl:a").rate_limit.clone().unwrap();
        assert!(limit.check("rl:a").is_ok());
        assert!(limit.check("rl:a").is_ok());
        assert!(limit.check("rl:a").is_err());
        // The same file read again (an unrelated file in the directory
        // changed), then another policy added: the spent burst stays spent.
        store.source("test").replace(vec![rate_limited(1, 2)]);
        store
            .source("test")
            .replace(vec![rate_limited(1, 2), doc("ns/other", &["x:*"], 0)]);
        let reloaded = store.resolve("rl:a").rate_limit.clone().unwrap();
        assert!(reloaded.check("rl:a").is_err());
        // A changed limit starts afresh.
        store.source("test").replace(vec![rate_limited(1, 3)]);
        let changed = store.resolve("rl:a").rate_limit.clone().unwrap();
        assert!(changed.check("rl:a").is_ok());
    }

    #[test]
    fn rate_buckets_of_many_channel_names_stay_bounded_and_are_forgotten() {
        let store = store(vec![rate_limited(1000, 1)]);
        let limit = store.resolve("rl:a").rate_limit.clone().unwrap();
        for n in 0..25_000 {
            let _ = limit.check(&format!("rl:{n}"));
        }
        assert!(
            limit.tracked_channels() <= 10_001,
            "{}",
            limit.tracked_channels()
        );
        // At 1000/s a bucket is full again within a millisecond.
        std::thread::sleep(Duration::from_millis(20));
        store.forget_idle_rate_buckets();
        assert_eq!(limit.tracked_channels(), 0);
    }

    #[test]
    fn no_match_falls_back_to_the_default() {
        let store = store(vec![doc("ns/game", &["game:*"], 0)]);
        assert_eq!(store.resolve("chat:1").source, "default");
        assert_eq!(store.explain("chat:1").policy, "default");
    }

    #[test]
    fn the_most_specific_pattern_wins_over_priority() {
        let store = store(vec![
            doc("ns/any", &["*"], 100),
            doc("ns/game", &["game:*"], 0),
            doc("ns/joined", &["game:*:PlayerJoined"], -5),
            doc("ns/exact", &["game:1:PlayerJoined"], -10),
        ]);
        assert_eq!(store.resolve("game:2:PlayerJoined").source, "ns/joined");
        assert_eq!(store.resolve("game:2:RoundStarted").source, "ns/game");
        assert_eq!(store.resolve("game:1:PlayerJoined").source, "ns/exact");
        assert_eq!(store.resolve("lobby").source, "ns/any");
        let why = store.explain("game:2:PlayerJoined");
        assert_eq!(why.pattern.as_deref(), Some("game:*:PlayerJoined"));
        assert_eq!(why.candidates.len(), 3);
        assert_eq!(why.reason, "the most specific matching pattern");
    }

    #[test]
    fn priority_then_name_break_ties() {
        let store = store(vec![
            doc("ns/b", &["game:*"], 1),
            doc("ns/a", &["game:*"], 0),
        ]);
        assert_eq!(store.resolve("game:1").source, "ns/b");
        assert_eq!(
            store.explain("game:1").reason,
            "equally specific patterns: the highest priority"
        );
        let store = store_tie();
        assert_eq!(store.resolve("game:1").source, "ns/a");
        assert_eq!(
            store.resolve("game:1").source,
            "ns/a",
            "stable across calls"
        );
    }

    fn store_tie() -> PolicyStore {
        store(vec![
            doc("ns/b", &["game:*"], 0),
            doc("ns/a", &["game:*"], 0),
        ])
    }

    #[test]
    fn invalid_policies_are_left_out_with_a_reason() {
        let mut bad_glob = doc("ns/bad-glob", &["game:[*"], 0);
        bad_glob.spec.history = None;
        let mut bad_schema = doc("ns/bad-schema", &["a"], 0);
        bad_schema.spec.schema = Some(serde_json::json!({"type": 12}));
        let mut contradiction = doc("ns/contradiction", &["b"], 0);
        contradiction.spec.history = Some(HistorySpec {
            max_events: Some(10),
            max_age: Some("0s".into()),
        });
        let good = doc("ns/good", &["game:*"], 0);
        let store = PolicyStore::new(default());
        let verdicts =
            store
                .source("test")
                .replace(vec![bad_glob, bad_schema, contradiction, good]);
        let errors: Vec<_> = verdicts.iter().map(|v| v.error.is_some()).collect();
        assert_eq!(errors, vec![true, true, true, false]);
        assert!(verdicts[2].error.as_ref().unwrap().contains("maxAge"));
        assert_eq!(store.resolve("game:1").source, "ns/good");
        assert_eq!(store.resolve("a").source, "default");
    }

    #[test]
    fn changes_invalidate_the_cache_and_readiness_waits_for_sources() {
        let store = PolicyStore::new(default());
        assert!(store.synced());
        let source = store.source("files");
        assert!(!store.synced());
        assert_eq!(store.resolve("game:1").source, "default");
        source.replace(vec![doc("file:game", &["game:*"], 0)]);
        assert!(store.synced());
        assert_eq!(store.resolve("game:1").source, "file:game");
        source.replace(vec![]);
        assert_eq!(store.resolve("game:1").source, "default");
    }

    #[test]
    fn unset_fields_inherit_the_default() {
        let mut partial = doc("ns/p", &["p:*"], 0);
        partial.spec.keepalive = Some("2s".into());
        partial.spec.history = Some(HistorySpec {
            max_events: Some(5),
            max_age: None,
        });
        let store = store(vec![partial]);
        let policy = store.resolve("p:1");
        assert_eq!(policy.keepalive, Duration::from_secs(2));
        assert_eq!(policy.retry, Duration::from_secs(3));
        assert_eq!(
            policy.history,
            Retention {
                max_events: 5,
                max_age: Duration::from_secs(3600)
            }
        );
        assert_eq!(policy.max_payload_bytes, 65536);
    }
}
