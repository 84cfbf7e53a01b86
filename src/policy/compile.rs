//! Turning a `ChannelPolicy` document into something the store can match and
//! apply, rejecting what cannot work (bad globs, bad schemas, contradictions).

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use super::crd::ChannelPolicySpec;
use super::{DataSchema, EffectivePolicy, RateLimit, Retention};
use crate::event::validate_event_type;

/// A policy as read from a source, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// Where it came from: `namespace/name` in a cluster, `file:name` from files.
    pub key: String,
    /// `metadata.generation` (cluster only).
    pub generation: Option<i64>,
    /// The spec.
    pub spec: ChannelPolicySpec,
}

/// How specific a pattern is: exact names beat globs; then more literal
/// characters; then fewer wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    exact: bool,
    literal_chars: usize,
    fewer_wildcards: std::cmp::Reverse<usize>,
}

impl Specificity {
    /// The specificity of `pattern`.
    pub fn of(pattern: &str) -> Specificity {
        let wildcards = pattern
            .chars()
            .filter(|c| matches!(c, '*' | '?' | '[' | '{'))
            .count();
        let literal_chars = pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!'))
            .count();
        Specificity {
            exact: wildcards == 0,
            literal_chars,
            fewer_wildcards: std::cmp::Reverse(wildcards),
        }
    }
}

/// One pattern of a compiled policy.
#[derive(Debug, Clone)]
pub struct CompiledPattern {
    /// The pattern as written.
    pub text: String,
    matcher: GlobMatcher,
    /// Its specificity.
    pub specificity: Specificity,
}

impl CompiledPattern {
    /// Compiles a channel glob.
    pub fn new(text: &str) -> Result<CompiledPattern, String> {
        if text.is_empty() || text.len() > 200 {
            return Err(format!("pattern {text:?}: 1 to 200 characters"));
        }
        let glob = Glob::new(text).map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(CompiledPattern {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
            specificity: Specificity::of(text),
        })
    }

    /// True when `channel` matches.
    pub fn is_match(&self, channel: &str) -> bool {
        self.matcher.is_match(channel)
    }
}

/// A valid policy, ready to match channels.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `namespace/name` or `file:name`.
    pub key: String,
    /// Tie-break after specificity.
    pub priority: i32,
    /// Its patterns.
    pub patterns: Vec<CompiledPattern>,
    /// What applies to matching channels.
    pub effective: Arc<EffectivePolicy>,
}

impl CompiledPolicy {
    /// The most specific of this policy's patterns that matches `channel`.
    pub fn best_match(&self, channel: &str) -> Option<&CompiledPattern> {
        self.patterns
            .iter()
            .filter(|p| p.is_match(channel))
            .max_by_key(|p| p.specificity)
    }
}

/// Orders two matches: the better one is `Greater`.
pub fn compare_matches(
    a: (&CompiledPolicy, &CompiledPattern),
    b: (&CompiledPolicy, &CompiledPattern),
) -> Ordering {
    a.1.specificity
        .cmp(&b.1.specificity)
        .then(a.0.priority.cmp(&b.0.priority))
        // Stable tie-break: the smaller key wins.
        .then_with(|| b.0.key.cmp(&a.0.key))
}

fn duration(field: &str, text: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(text).map_err(|e| format!("{field}: {e}"))
}

/// Validates `document` and fills what it leaves out from `default`.
pub fn compile(
    document: &PolicyDocument,
    default: &EffectivePolicy,
) -> Result<CompiledPolicy, String> {
    let spec = &document.spec;
    if spec.channels.is_empty() {
        return Err("channels: name at least one pattern".into());
    }
    let patterns = spec
        .channels
        .iter()
        .map(|p| CompiledPattern::new(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut effective = default.clone();
    effective.source = document.key.clone();
    if let Some(keepalive) = &spec.keepalive {
        effective.keepalive = duration("keepalive", keepalive)?;
        if effective.keepalive < Duration::from_millis(100)
            || effective.keepalive > Duration::from_secs(3600)
        {
            return Err("keepalive: between 100ms and 1h".into());
        }
    }
    if let Some(retry) = &spec.retry {
        effective.retry = duration("retry", retry)?;
        if effective.retry.is_zero() || effective.retry > Duration::from_secs(3600) {
            return Err("retry: between 1ms and 1h".into());
        }
    }
    if let Some(history) = &spec.history {
        let max_events = history.max_events.unwrap_or(default.history.max_events);
        let max_age = match &history.max_age {
            Some(age) => duration("history.maxAge", age)?,
            None => default.history.max_age,
        };
        if history.max_events.is_some_and(|n| n > 0)
            && history.max_age.is_some()
            && max_age.is_zero()
        {
            return Err("history: maxEvents keeps events but maxAge 0s keeps none; set both to 0 for no replay".into());
        }
        effective.history = Retention {
            max_events,
            max_age,
        };
    }
    if let Some(bytes) = spec.max_payload_bytes {
        effective.max_payload_bytes = bytes as usize;
    }
    effective.max_subscribers_per_replica = spec
        .max_subscribers_per_replica
        .or(default.max_subscribers_per_replica);
    if let Some(types) = &spec.allowed_event_types {
        for t in types {
            validate_event_type(t).map_err(|e| format!("allowedEventTypes: {e}"))?;
        }
        effective.allowed_event_types = Some(types.clone());
    }
    if let Some(schema) = &spec.schema {
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| format!("schema: not a valid JSON Schema: {e}"))?;
        effective.schema = Some(DataSchema(Arc::new(validator)));
    }
    if let Some(limit) = &spec.rate_limit {
        if limit.per_second == 0 || limit.burst == Some(0) {
            return Err("rateLimit: perSecond and burst are at least 1".into());
        }
        effective.rate_limit = Some(RateLimit::new(
            limit.per_second,
            limit.burst.unwrap_or(limit.per_second),
        ));
    }
    if let Some(slow) = &spec.slow_consumer {
        if slow.queue_events == Some(0) {
            return Err("slowConsumer.queueEvents: at least 1".into());
        }
        effective.queue_events = slow
            .queue_events
            .map(|n| n as usize)
            .unwrap_or(default.queue_events);
        effective.slow_consumer = slow.action;
    }
    if let Some(auth) = &spec.auth {
        effective.auth.subscribe = auth.subscribe.unwrap_or(default.auth.subscribe);
        effective.auth.publish = auth.publish.unwrap_or(default.auth.publish);
    }
    Ok(CompiledPolicy {
        key: document.key.clone(),
        priority: spec.priority,
        patterns,
        effective: Arc::new(effective),
    })
}
