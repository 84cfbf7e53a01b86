//! The `ChannelPolicy` custom resource. These types are the source of truth:
//! `sseplane crd` prints the CRD generated from them, and the policy files
//! outside a cluster hold the same documents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration written `250ms`, `15s`, `1m`, `1h`, `1h30m`.
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A channel glob: channel characters plus `*`, `?`, `[`, `]`, `!`, `{`, `}`, `,`.
const CHANNEL_PATTERN: &str = r"^[A-Za-z0-9_.:@/*?!\[\]{},-]{1,200}$";

/// How a set of channels behaves: history, keepalive, limits, payload rules and
/// whether tokens are needed. Fields left out take the service's defaults.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sseplane.dev",
    version = "v1alpha1",
    kind = "ChannelPolicy",
    plural = "channelpolicies",
    shortname = "chp",
    namespaced,
    status = "ChannelPolicyStatus",
    printcolumn = r#"{"name":"Channels","type":"string","jsonPath":".spec.channels"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"History","type":"integer","jsonPath":".spec.history.maxEvents"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelPolicySpec {
    /// Glob patterns of the channels this policy covers, e.g. `game:*`. The most
    /// specific matching pattern wins, then the highest priority, then the name.
    #[schemars(length(min = 1, max = 64), inner(regex(pattern = CHANNEL_PATTERN)))]
    pub channels: Vec<String>,
    /// Breaks ties between equally specific patterns: higher wins. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// History kept for replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySpec>,
    /// A `: keepalive` comment after this much quiet (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub keepalive: Option<String>,
    /// The `retry:` given to clients (default 3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retry: Option<String>,
    /// Largest publish body in bytes (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 16777216))]
    pub max_payload_bytes: Option<u64>,
    /// Most streams on one replica subscribed to one channel (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_subscribers_per_replica: Option<u64>,
    /// Event types publishers may use; absent means any type (and none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9_.:-]{1,64}$")))]
    #[x_kube(validation = Rule::new("self.all(t, !t.startsWith('sseplane.'))").message("event types starting with sseplane. are reserved"))]
    pub allowed_event_types: Option<Vec<String>>,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise) that `data` must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_object")]
    pub schema: Option<serde_json::Value>,
    /// Publish rate limit per channel and replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// What happens to a subscriber that cannot keep up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumer: Option<SlowConsumerSpec>,
    /// Whether subscribing and publishing need a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn any_json_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// History kept per channel for replay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// At most this many events (0 = no replay; default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000))]
    pub max_events: Option<u64>,
    /// At most this old (`0s` = no replay; default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
}

/// Token bucket for publishes on each channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained publishes per second.
    #[schemars(range(min = 1, max = 1000000))]
    pub per_second: u32,
    /// Publishes allowed at once above the rate (default: `perSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
}

/// What to do when a subscriber's queue is full.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SlowConsumerAction {
    /// End the stream; the client reconnects and resumes from history.
    #[default]
    Disconnect,
    /// Drop the oldest queued events and tell the client with `sseplane.gap`.
    DropOldest,
}

/// Slow-consumer handling.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlowConsumerSpec {
    /// Events queued per connection (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub queue_events: Option<u32>,
    /// `Disconnect` (default) or `DropOldest`.
    #[serde(default)]
    pub action: SlowConsumerAction,
}

/// Whether tokens are required; a field left out keeps the default policy's
/// choice (with a key configured, publishing needs a token).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Subscribing needs a token that covers the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<bool>,
    /// Publishing needs a token that covers the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
}

/// What sseplane found when it read the policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: `True` when the policy is in force, `False` with the reason when invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, as `sseplane crd` prints it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ChannelPolicy::crd();
    format!(
        "# Generated by `sseplane crd` from src/policy/crd.rs; do not edit.\n{}",
        crate::yaml::to_string(&crd).expect("the CRD serialises")
    )
}
