//! Policies from the cluster: a watcher on `ChannelPolicy` resources feeding the
//! store, and a status writer (one replica at a time, by Lease) reporting
//! whether each policy is in force.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::compile::PolicyDocument;
use super::crd::{ChannelPolicy, ChannelPolicyStatus};
use super::store::PolicyVerdict;
use super::SourceHandle;

/// The usual name of the Lease that elects the status writer.
pub const DEFAULT_LEASE_NAME: &str = "sseplane-status";

/// How often the Lease is read and renewed (or taken).
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a holder keeps the Lease without renewing it.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The field manager of status patches.
const FIELD_MANAGER: &str = "sseplane";
/// The condition type reporting whether a policy is in force.
const READY: &str = "Ready";
/// Longest condition message written; the API server refuses messages over 32768 bytes.
const MAX_MESSAGE_CHARS: usize = 4096;
/// Where Kubernetes mounts the pod's namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Where to watch and who we are.
#[derive(Debug, Clone)]
pub struct KubeSourceConfig {
    /// Namespace to watch; None = all namespaces.
    pub namespace: Option<String>,
    /// Namespace of the status Lease (the pod's namespace).
    pub lease_namespace: String,
    /// Name of the Lease used to elect the status writer ("sseplane-status").
    pub lease_name: String,
    /// This replica's identity (holderIdentity in the Lease).
    pub replica_id: String,
}

/// Watches ChannelPolicy resources and feeds `source` (key "namespace/name",
/// generation from metadata.generation); writes status when this replica holds the Lease.
/// Runs until the process ends; reconnects with backoff on watch errors (kube-runtime default_backoff).
pub async fn run(client: Client, config: KubeSourceConfig, source: SourceHandle) {
    let policies: Api<ChannelPolicy> = match &config.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let elector = LeaseElector {
        api: Api::namespaced(client.clone(), &config.lease_namespace),
        name: config.lease_name,
        identity: config.replica_id,
        lease_duration: LEASE_DURATION,
        renew_every: RENEW_EVERY,
    };
    tracing::info!(
        namespace = config.namespace.as_deref().unwrap_or("(all)"),
        lease = %elector.name,
        identity = %elector.identity,
        "watching ChannelPolicy resources"
    );
    let (snapshots, latest) = watch::channel(Arc::new(Snapshot::default()));
    // Both halves run concurrently in this task. The watcher hands each new set of
    // policies to the status writer through a watch channel, which keeps only the
    // latest value: a slow API server delays status writes, never the store.
    // `DefaultBackoff` is what `WatchStreamExt::default_backoff` uses.
    tokio::join!(
        watch_policies(policies, source, DefaultBackoff::default(), snapshots),
        write_statuses(client, elector, latest),
    );
}

/// The pod's namespace: POD_NAMESPACE env, else /var/run/secrets/kubernetes.io/serviceaccount/namespace, else "default".
pub fn pod_namespace() -> String {
    choose_namespace(std::env::var("POD_NAMESPACE").ok(), || {
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok()
    })
}

/// The first non-blank of `env` and `file()`, else `default`.
fn choose_namespace(env: Option<String>, file: impl FnOnce() -> Option<String>) -> String {
    fn non_blank(text: String) -> Option<String> {
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
    env.and_then(non_blank)
        .or_else(|| file().and_then(non_blank))
        .unwrap_or_else(|| "default".to_owned())
}

/// `namespace/name`, the key of a cluster policy in the store.
fn policy_key(policy: &ChannelPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// The cluster's policies as last given to the store, with what became of each.
#[derive(Debug, Default)]
struct Snapshot {
    /// Every policy, sorted by key.
    policies: Vec<Arc<ChannelPolicy>>,
    /// The verdict of each policy, by key.
    verdicts: HashMap<String, PolicyVerdict>,
}

/// Feeds `source` from a watcher on `api`: the whole set after every complete
/// list and after every change that follows, never a partial list. Publishes
/// each set with its verdicts to `snapshots`. Watch errors are logged and
/// retried after `backoff`; the watcher never ends, so neither does this.
async fn watch_policies<B: Backoff>(
    api: Api<ChannelPolicy>,
    source: SourceHandle,
    backoff: B,
    snapshots: watch::Sender<Arc<Snapshot>>,
) {
    let (reader, writer) = reflector::store();
    let events = watcher::watcher(api, watcher::Config::default())
        .backoff(backoff)
        .reflect(writer);
    let mut events = pin!(events);
    let mut feed = Feed {
        reader,
        source,
        snapshots,
        last: None,
    };
    // Until the first `InitDone` the reflector holds a partial list at best.
    let mut listed = false;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::InitDone) => {
                listed = true;
                true
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => listed,
            // A (re-)list in progress: the reflector keeps the previous set until it completes.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
            Err(error) => {
                tracing::warn!(%error, "ChannelPolicy watch failed; retrying");
                false
            }
        };
        if changed {
            feed.publish();
        }
    }
}

/// The watcher's side: what it last gave the store.
struct Feed {
    reader: Store<ChannelPolicy>,
    source: SourceHandle,
    snapshots: watch::Sender<Arc<Snapshot>>,
    /// The documents last given to the store, with their verdicts.
    last: Option<(Vec<PolicyDocument>, Vec<PolicyVerdict>)>,
}

impl Feed {
    /// Gives the reflector's whole set to the store and the status writer.
    fn publish(&mut self) {
        let mut policies = self.reader.state();
        policies.sort_by_cached_key(|policy| policy_key(policy));
        let documents: Vec<_> = policies
            .iter()
            .map(|policy| PolicyDocument {
                key: policy_key(policy),
                generation: policy.metadata.generation,
                spec: policy.spec.clone(),
            })
            .collect();
        // Status writes (ours included) change objects but not their documents;
        // compiling the same set again would only flush every channel's cached policy.
        let verdicts = match &self.last {
            Some((last, verdicts)) if *last == documents => verdicts.clone(),
            _ => {
                let verdicts = self.source.replace(documents.clone());
                self.last = Some((documents, verdicts.clone()));
                verdicts
            }
        };
        let verdicts = verdicts.into_iter().map(|v| (v.key.clone(), v)).collect();
        self.snapshots
            .send_replace(Arc::new(Snapshot { policies, verdicts }));
    }
}

/// Takes or renews the Lease every `renew_every` and, while this replica holds
/// it, brings every policy's status in line with its verdict: after each round
/// (which retries failed writes) and after each new snapshot. Ends only when the
/// watcher is gone.
async fn write_statuses(
    client: Client,
    elector: LeaseElector,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let mut writer = StatusWriter {
        client,
        written: HashMap::new(),
    };
    let mut leader = false;
    let mut next_round = Instant::now();
    loop {
        // Only the waits race in `select!`: the Lease round runs in a branch's
        // handler and the writes after it, where the other branch cannot cancel
        // them halfway.
        tokio::select! {
            () = tokio::time::sleep_until(next_round) => {
                let held = elector.try_acquire_or_renew().await;
                if held != leader {
                    let change = if held { "now writing" } else { "no longer writing" };
                    tracing::info!(lease = %elector.name, identity = %elector.identity,
                        "{change} ChannelPolicy status");
                }
                leader = held;
                next_round = Instant::now() + elector.renew_every;
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        // Marks the snapshot seen even when not leading, or `changed` would fire again at once.
        let snapshot = snapshots.borrow_and_update().clone();
        if leader {
            writer.write(&snapshot).await;
        }
    }
}

/// One replica's side of the status Lease.
struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// How long a holder keeps the Lease without renewing it.
    lease_duration: Duration,
    /// How often the Lease is read and renewed.
    renew_every: Duration,
}

impl LeaseElector {
    /// One election round: true when this replica holds the Lease afterwards.
    /// Losing a race (409 Conflict) is normal; other errors are logged.
    async fn try_acquire_or_renew(&self) -> bool {
        match self.round().await {
            Ok(held) => held,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(lease = %self.name, "another replica updated the Lease first");
                false
            }
            Err(kube::Error::Api(status)) if status.is_forbidden() => {
                tracing::warn!(
                    lease = %self.name,
                    message = %status.message,
                    "cannot elect the status writer: RBAC must allow get, create and update on leases.coordination.k8s.io"
                );
                false
            }
            Err(error) => {
                tracing::warn!(lease = %self.name, %error, "cannot read or update the status Lease");
                false
            }
        }
    }

    async fn round(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let duration = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            // Two replicas creating it at once: the loser gets 409 AlreadyExists.
            self.api.create(&PostParams::default(), &lease).await?;
            return Ok(true);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder == self.identity {
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration);
        } else if holder.is_empty() || expired(spec, now, duration) {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(duration);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        } else {
            return Ok(false);
        }
        // The resourceVersion read is sent back: if another replica wrote the
        // Lease since, the API server answers 409 Conflict and it keeps it.
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }
}

/// True when the holder of `spec` let it lapse (its own duration, else `default_seconds`).
fn expired(spec: &LeaseSpec, now: Timestamp, default_seconds: i32) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = spec.lease_duration_seconds.unwrap_or(default_seconds);
    renewed.0.as_second().saturating_add(i64::from(duration)) < now.as_second()
}

/// The leader's side: status patches sent.
struct StatusWriter {
    client: Client,
    /// The last status written per key, with the resourceVersion of the object it
    /// was computed from: until the watcher delivers the patched object, the same
    /// patch is not sent again.
    written: HashMap<String, (Option<String>, Ready)>,
}

impl StatusWriter {
    /// Patches the status of every policy in `snapshot` whose status is out of date.
    async fn write(&mut self, snapshot: &Snapshot) {
        self.written
            .retain(|key, _| snapshot.verdicts.contains_key(key));
        for policy in &snapshot.policies {
            let key = policy_key(policy);
            let Some(verdict) = snapshot.verdicts.get(&key) else {
                continue;
            };
            let ready = Ready::of(policy, verdict);
            if ready.is_current(policy) {
                continue;
            }
            let version = policy.resource_version();
            if self
                .written
                .get(&key)
                .is_some_and(|written| written.0 == version && written.1 == ready)
            {
                continue;
            }
            let patch = ready.patch(policy, Timestamp::now());
            let api: Api<ChannelPolicy> =
                Api::namespaced(self.client.clone(), &policy.namespace().unwrap_or_default());
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match api
                .patch_status(&policy.name_any(), &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(policy = %key, ready = ready.status, "ChannelPolicy status written");
                    self.written.insert(key, (version, ready));
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    tracing::debug!(policy = %key, "ChannelPolicy deleted before its status was written");
                }
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    tracing::warn!(
                        policy = %key,
                        message = %status.message,
                        "cannot write ChannelPolicy status: RBAC must allow patch on channelpolicies/status"
                    );
                    // Every other policy would be refused the same way.
                    return;
                }
                Err(error) => {
                    tracing::warn!(policy = %key, %error, "cannot write ChannelPolicy status");
                }
            }
        }
    }
}

/// The `Ready` condition a policy should carry, with the generation it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    generation: Option<i64>,
    status: &'static str,
    reason: &'static str,
    message: String,
}

impl Ready {
    /// What `verdict` says about `policy`.
    fn of(policy: &ChannelPolicy, verdict: &PolicyVerdict) -> Ready {
        let generation = policy.metadata.generation;
        match &verdict.error {
            None => Ready {
                generation,
                status: "True",
                reason: "Valid",
                message: "in force".to_owned(),
            },
            Some(error) => Ready {
                generation,
                status: "False",
                reason: "Invalid",
                message: match error.char_indices().nth(MAX_MESSAGE_CHARS) {
                    Some((end, _)) => format!("{}…", &error[..end]),
                    None => error.clone(),
                },
            },
        }
    }

    /// True when `policy`'s status already says this.
    fn is_current(&self, policy: &ChannelPolicy) -> bool {
        let Some(status) = &policy.status else {
            return false;
        };
        status.observed_generation == self.generation
            && ready_condition(status).is_some_and(|c| {
                c.status == self.status && c.reason == self.reason && c.message == self.message
            })
    }

    /// The JSON merge patch putting this in `policy`'s status. Other conditions
    /// are kept; `lastTransitionTime` moves only when the condition's status flips.
    fn patch(&self, policy: &ChannelPolicy, now: Timestamp) -> serde_json::Value {
        let mut status = policy.status.clone().unwrap_or_default();
        let last_transition_time = match ready_condition(&status) {
            Some(previous) if previous.status == self.status => {
                previous.last_transition_time.clone()
            }
            _ => Time(now),
        };
        let condition = Condition {
            type_: READY.to_owned(),
            status: self.status.to_owned(),
            reason: self.reason.to_owned(),
            message: self.message.clone(),
            observed_generation: self.generation,
            last_transition_time,
        };
        match status.conditions.iter_mut().find(|c| c.type_ == READY) {
            Some(existing) => *existing = condition,
            None => status.conditions.push(condition),
        }
        status.observed_generation = self.generation;
        serde_json::json!({ "status": status })
    }
}

/// The `Ready` condition of `status`, if any.
fn ready_condition(status: &ChannelPolicyStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::crd::ChannelPolicySpec;
    use crate::policy::PolicyStore;
    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::jiff::SignedDuration;
    use kube::client::Body;
    use serde_json::{json, Value};
    use tokio::task::JoinHandle;

    type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// Each request must come within this long, so a wrong scenario fails instead of hanging.
    const STEP_TIMEOUT: Duration = Duration::from_secs(1);
    const POLICIES: &str = "/apis/sseplane.dev/v1alpha1/namespaces/ns/channelpolicies";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sseplane/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sseplane/leases/sseplane-status";

    /// One request the fake API server expects, and how it answers.
    enum Step {
        /// A list of policies (a page when `next_page` is set), answered with `items`.
        List {
            items: Vec<ChannelPolicy>,
            version: &'static str,
            next_page: Option<&'static str>,
        },
        /// A list of policies, answered with an HTTP error.
        ListFails(StatusCode),
        /// A watch of policies from resourceVersion `from`, answered with `events`; then the stream ends.
        Watch {
            from: &'static str,
            events: Vec<Value>,
        },
        /// A watch of policies from resourceVersion `from`, answered with an HTTP error.
        WatchFails {
            from: &'static str,
            code: StatusCode,
        },
        /// A read of the Lease, answered with it (held by a holder, renewed at a time) or 404.
        GetLease(Option<(&'static str, Timestamp)>),
        /// The Lease created with this replica ("me") as holder.
        CreateLease,
        /// The Lease replaced with `holder` and the resourceVersion read; 409 when `conflict`.
        ReplaceLease {
            holder: &'static str,
            conflict: bool,
        },
        /// A merge patch of `ns/{name}`'s status with a Ready condition whose message contains `message`.
        PatchStatus {
            name: &'static str,
            status: &'static str,
            reason: &'static str,
            message: &'static str,
        },
    }

    /// The requests a test expects, in order.
    type Scenario = Vec<Step>;

    /// A request received and not answered yet.
    struct Received {
        method: Method,
        path: String,
        query: String,
        content_type: String,
        body: Value,
        send: tower_test::mock::SendResponse<Response<Body>>,
    }

    impl Received {
        /// Asserts that this request is what `step` expects and answers it.
        fn answer(self, step: Step) {
            let Received {
                method,
                path,
                query,
                content_type,
                body,
                send,
            } = self;
            let is_watch = query_param(&query, "watch").as_deref() == Some("true");
            let response = match step {
                Step::List {
                    items,
                    version,
                    next_page,
                } => {
                    assert_eq!(
                        (method, path.as_str(), is_watch),
                        (Method::GET, POLICIES, false),
                        "{query}"
                    );
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "apiVersion": "sseplane.dev/v1alpha1",
                            "kind": "ChannelPolicyList",
                            "metadata": {
                                "resourceVersion": version,
                                "continue": next_page.unwrap_or_default(),
                            },
                            "items": items,
                        }),
                    )
                }
                Step::ListFails(code) => {
                    assert_eq!(
                        (method, path.as_str(), is_watch),
                        (Method::GET, POLICIES, false),
                        "{query}"
                    );
                    json_response(code, &status_error(code, "the list failed"))
                }
                Step::Watch { from, events } => {
                    assert_eq!(
                        (method, path.as_str(), is_watch),
                        (Method::GET, POLICIES, true),
                        "{query}"
                    );
                    assert_eq!(
                        query_param(&query, "resourceVersion").as_deref(),
                        Some(from)
                    );
                    let mut lines = Vec::new();
                    for event in events {
                        serde_json::to_writer(&mut lines, &event).unwrap();
                        lines.push(b'\n');
                    }
                    Response::new(Body::from(lines))
                }
                Step::WatchFails { from, code } => {
                    assert_eq!(
                        (method, path.as_str(), is_watch),
                        (Method::GET, POLICIES, true),
                        "{query}"
                    );
                    assert_eq!(
                        query_param(&query, "resourceVersion").as_deref(),
                        Some(from)
                    );
                    json_response(code, &status_error(code, "the watch failed"))
                }
                Step::GetLease(held) => {
                    assert_eq!((method, path.as_str()), (Method::GET, LEASE));
                    match held {
                        Some((holder, renewed)) => json_response(
                            StatusCode::OK,
                            &serde_json::to_value(lease(holder, renewed)).unwrap(),
                        ),
                        None => json_response(
                            StatusCode::NOT_FOUND,
                            &status_error(StatusCode::NOT_FOUND, "not found"),
                        ),
                    }
                }
                Step::CreateLease => {
                    assert_eq!((method, path.as_str()), (Method::POST, LEASES));
                    assert_eq!(body["metadata"]["name"], "sseplane-status");
                    assert_eq!(body["spec"]["holderIdentity"], "me");
                    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                    json_response(StatusCode::CREATED, &body)
                }
                Step::ReplaceLease { holder, conflict } => {
                    assert_eq!((method, path.as_str()), (Method::PUT, LEASE));
                    assert_eq!(body["spec"]["holderIdentity"], holder);
                    assert_eq!(
                        body["metadata"]["resourceVersion"], "7",
                        "optimistic concurrency"
                    );
                    if conflict {
                        json_response(
                            StatusCode::CONFLICT,
                            &status_error(StatusCode::CONFLICT, "the object has been modified"),
                        )
                    } else {
                        json_response(StatusCode::OK, &body)
                    }
                }
                Step::PatchStatus {
                    name,
                    status,
                    reason,
                    message,
                } => {
                    assert_eq!(
                        (method, path.as_str()),
                        (Method::PATCH, format!("{POLICIES}/{name}/status").as_str())
                    );
                    assert_eq!(content_type, "application/merge-patch+json");
                    assert_eq!(body["status"]["observedGeneration"], 1, "{body}");
                    let ready = &body["status"]["conditions"][0];
                    assert_eq!(ready["type"], "Ready", "{body}");
                    assert_eq!(
                        (ready["status"].as_str(), ready["reason"].as_str()),
                        (Some(status), Some(reason)),
                        "{body}"
                    );
                    assert!(
                        ready["message"].as_str().unwrap().contains(message),
                        "{body}"
                    );
                    assert!(ready["lastTransitionTime"].is_string(), "{body}");
                    json_response(
                        StatusCode::OK,
                        &serde_json::to_value(policy(name, &["x"], 1, "99")).unwrap(),
                    )
                }
            };
            send.send_response(response);
        }
    }

    /// The fake API server: checks requests in order and answers them.
    struct ApiServerVerifier(ApiServerHandle);

    impl ApiServerVerifier {
        /// The next request, within [`STEP_TIMEOUT`].
        async fn receive(&mut self) -> Received {
            let (request, send) = tokio::time::timeout(STEP_TIMEOUT, self.0.next_request())
                .await
                .expect("timed out waiting for the next request")
                .expect("the client is gone");
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap();
            Received {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap()
                },
                send,
            }
        }

        /// Expects the next request to match `step` and answers it.
        async fn expect(&mut self, step: Step) {
            self.receive().await.answer(step);
        }

        /// Walks `scenario` in a task. The task returns the verifier, so later
        /// requests stay pending rather than fail.
        fn run(mut self, scenario: Scenario) -> JoinHandle<ApiServerVerifier> {
            tokio::spawn(async move {
                for step in scenario {
                    self.expect(step).await;
                }
                self
            })
        }
    }

    fn query_param(query: &str, name: &str) -> Option<String> {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    fn mock_client() -> (Client, ApiServerVerifier) {
        let (mock_service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            Client::new(mock_service, "default"),
            ApiServerVerifier(handle),
        )
    }

    fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    fn status_error(code: StatusCode, message: &str) -> Value {
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::GONE => "Expired",
            _ => "InternalError",
        };
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })
    }

    fn event(kind: &str, object: &ChannelPolicy) -> Value {
        json!({ "type": kind, "object": object })
    }

    fn policy(name: &str, channels: &[&str], generation: i64, version: &str) -> ChannelPolicy {
        let spec = ChannelPolicySpec {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        let mut policy = ChannelPolicy::new(name, spec);
        policy.metadata.namespace = Some("ns".to_owned());
        policy.metadata.generation = Some(generation);
        policy.metadata.resource_version = Some(version.to_owned());
        policy
    }

    fn ready_status(
        generation: i64,
        status: &str,
        reason: &str,
        message: &str,
        since: Timestamp,
    ) -> ChannelPolicyStatus {
        ChannelPolicyStatus {
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: READY.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                observed_generation: Some(generation),
                last_transition_time: Time(since),
            }],
        }
    }

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("sseplane-status".to_owned()),
                namespace: Some("sseplane".to_owned()),
                resource_version: Some("7".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    fn an_hour_ago() -> Timestamp {
        Timestamp::now() - SignedDuration::from_hours(1)
    }

    fn elector(client: Client, renew_every: Duration) -> LeaseElector {
        LeaseElector {
            api: Api::namespaced(client, "sseplane"),
            name: "sseplane-status".to_owned(),
            identity: "me".to_owned(),
            lease_duration: LEASE_DURATION,
            renew_every,
        }
    }

    fn store() -> PolicyStore {
        PolicyStore::new(crate::config::ServeArgs::default().default_policy())
    }

    /// Retries at once: the default backoff's jittered delays would race the step timeouts.
    struct NoBackoff;

    impl Iterator for NoBackoff {
        type Item = Duration;
        fn next(&mut self) -> Option<Duration> {
            Some(Duration::ZERO)
        }
    }

    impl Backoff for NoBackoff {
        fn reset(&mut self) {}
    }

    /// Starts the watch loop feeding `store`'s "kubernetes" source.
    fn start_watch(store: &PolicyStore) -> (ApiServerVerifier, watch::Receiver<Arc<Snapshot>>) {
        let (client, server) = mock_client();
        let source = store.source("kubernetes");
        let (snapshots, latest) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(watch_policies(
            Api::namespaced(client, "ns"),
            source,
            NoBackoff,
            snapshots,
        ));
        (server, latest)
    }

    /// Waits until the store's policies change.
    async fn store_changed(changes: &mut watch::Receiver<u64>) {
        tokio::time::timeout(STEP_TIMEOUT, changes.changed())
            .await
            .expect("the store did not change")
            .expect("the store is alive");
    }

    async fn finish(scenario: JoinHandle<ApiServerVerifier>) -> ApiServerVerifier {
        scenario.await.expect("the scenario ran to the end")
    }

    #[tokio::test]
    async fn the_store_is_fed_only_after_the_whole_initial_list() {
        let store = store();
        let mut changes = store.changes();
        let (mut server, _snapshots) = start_watch(&store);
        assert!(!store.synced());

        server.expect(Step::ListFails(StatusCode::FORBIDDEN)).await;
        let first_page = server.receive().await;
        assert!(!store.synced(), "a failed list does not sync the source");
        first_page.answer(Step::List {
            items: vec![policy("game", &["game:*"], 1, "5")],
            version: "",
            next_page: Some("page-2"),
        });
        let second_page = server.receive().await;
        assert_eq!(
            query_param(&second_page.query, "continue").as_deref(),
            Some("page-2")
        );
        assert!(!store.synced(), "a partial list does not sync the source");
        assert_eq!(store.resolve("game:1").source, "default");
        second_page.answer(Step::List {
            items: vec![],
            version: "10",
            next_page: None,
        });

        store_changed(&mut changes).await;
        assert!(store.synced());
        assert_eq!(store.resolve("game:1").source, "ns/game");
        assert_eq!(store.verdicts()[0].generation, Some(1));
        server
            .expect(Step::Watch {
                from: "10",
                events: vec![],
            })
            .await;
    }

    #[tokio::test]
    async fn watch_events_add_modify_and_delete_policies() {
        let store = store();
        let mut changes = store.changes();
        let (mut server, _snapshots) = start_watch(&store);

        server
            .expect(Step::List {
                items: vec![],
                version: "10",
                next_page: None,
            })
            .await;
        store_changed(&mut changes).await;
        assert!(store.synced());
        assert_eq!(store.resolve("game:1").source, "default");

        let added = policy("game", &["game:*"], 1, "11");
        server
            .expect(Step::Watch {
                from: "10",
                events: vec![event("ADDED", &added)],
            })
            .await;
        store_changed(&mut changes).await;
        assert_eq!(store.resolve("game:1").source, "ns/game");

        let modified = policy("game", &["chat:*"], 2, "12");
        server
            .expect(Step::Watch {
                from: "11",
                events: vec![event("MODIFIED", &modified)],
            })
            .await;
        store_changed(&mut changes).await;
        assert_eq!(store.resolve("game:1").source, "default");
        assert_eq!(store.resolve("chat:1").source, "ns/game");
        assert_eq!(store.verdicts()[0].generation, Some(2));

        let deleted = policy("game", &["chat:*"], 2, "13");
        server
            .expect(Step::Watch {
                from: "12",
                events: vec![event("DELETED", &deleted)],
            })
            .await;
        store_changed(&mut changes).await;
        assert_eq!(store.resolve("chat:1").source, "default");
        assert!(store.verdicts().is_empty());
    }

    #[tokio::test]
    async fn watch_errors_are_survived_and_an_expired_watch_relists() {
        let store = store();
        let mut changes = store.changes();
        let (mut server, _snapshots) = start_watch(&store);

        server
            .expect(Step::List {
                items: vec![policy("game", &["game:*"], 1, "5")],
                version: "10",
                next_page: None,
            })
            .await;
        store_changed(&mut changes).await;
        let version = store.version();

        server
            .expect(Step::WatchFails {
                from: "10",
                code: StatusCode::INTERNAL_SERVER_ERROR,
            })
            .await;
        let expired = status_error(StatusCode::GONE, "too old resource version: 10 (42)");
        let gone = json!({ "type": "ERROR", "object": expired });
        server
            .expect(Step::Watch {
                from: "10",
                events: vec![gone],
            })
            .await;
        let relist = server.receive().await;
        assert_eq!(
            store.version(),
            version,
            "errors leave the policies as they were"
        );
        assert_eq!(store.resolve("game:1").source, "ns/game");
        relist.answer(Step::List {
            items: vec![policy("chat", &["chat:*"], 1, "15")],
            version: "20",
            next_page: None,
        });

        store_changed(&mut changes).await;
        assert_eq!(store.resolve("game:1").source, "default");
        assert_eq!(store.resolve("chat:1").source, "ns/chat");
        server
            .expect(Step::Watch {
                from: "20",
                events: vec![],
            })
            .await;
    }

    #[tokio::test]
    async fn the_lease_holder_writes_status_for_invalid_and_valid_policies() {
        let store = store();
        let (mut policies_server, snapshots) = start_watch(&store);
        let (client, status_server) = mock_client();
        tokio::spawn(write_statuses(
            client.clone(),
            elector(client, RENEW_EVERY),
            snapshots,
        ));
        let statuses = status_server.run(vec![
            Step::GetLease(None),
            Step::CreateLease,
            Step::PatchStatus {
                name: "bad",
                status: "False",
                reason: "Invalid",
                message: "pattern \"game:[*\"",
            },
            // "done" already says what its verdict says: no patch.
            Step::PatchStatus {
                name: "good",
                status: "True",
                reason: "Valid",
                message: "in force",
            },
        ]);

        let mut done = policy("done", &["done:*"], 1, "6");
        done.status = Some(ready_status(1, "True", "Valid", "in force", an_hour_ago()));
        let items = vec![
            policy("bad", &["game:[*"], 1, "5"),
            done,
            policy("good", &["game:*"], 1, "7"),
        ];
        policies_server
            .expect(Step::List {
                items,
                version: "10",
                next_page: None,
            })
            .await;
        finish(statuses).await;
        assert_eq!(store.resolve("game:1").source, "ns/good");
    }

    #[tokio::test]
    async fn no_status_is_written_while_another_replica_holds_the_lease() {
        let verdict = verdict(
            "ns/bad",
            Some("pattern \"game:[*\": unclosed character class"),
        );
        let snapshot = Snapshot {
            policies: vec![Arc::new(policy("bad", &["game:[*"], 1, "5"))],
            verdicts: HashMap::from([(verdict.key.clone(), verdict)]),
        };
        let (_snapshots, latest) = watch::channel(Arc::new(snapshot));
        let (client, server) = mock_client();
        tokio::spawn(write_statuses(
            client.clone(),
            elector(client, Duration::from_millis(10)),
            latest,
        ));
        let scenario = server.run(vec![
            Step::GetLease(Some(("other", Timestamp::now()))),
            // The next request is the next round, not a status patch.
            Step::GetLease(Some(("other", Timestamp::now()))),
            // Once the other replica stops renewing, this one takes over and writes.
            Step::GetLease(Some(("other", an_hour_ago()))),
            Step::ReplaceLease {
                holder: "me",
                conflict: false,
            },
            Step::PatchStatus {
                name: "bad",
                status: "False",
                reason: "Invalid",
                message: "unclosed",
            },
        ]);
        finish(scenario).await;
    }

    #[tokio::test]
    async fn the_lease_is_created_renewed_taken_over_and_lost_on_conflict() {
        let (client, server) = mock_client();
        let elector = elector(client, RENEW_EVERY);
        let scenario = server.run(vec![
            Step::GetLease(None),
            Step::CreateLease,
            Step::GetLease(Some(("me", Timestamp::now()))),
            Step::ReplaceLease {
                holder: "me",
                conflict: false,
            },
            Step::GetLease(Some(("other", an_hour_ago()))),
            Step::ReplaceLease {
                holder: "me",
                conflict: true,
            },
            Step::GetLease(Some(("other", Timestamp::now()))),
            Step::GetLease(Some(("", Timestamp::now()))),
            Step::ReplaceLease {
                holder: "me",
                conflict: false,
            },
        ]);
        assert!(
            elector.try_acquire_or_renew().await,
            "a missing Lease is created"
        );
        assert!(elector.try_acquire_or_renew().await, "our Lease is renewed");
        assert!(
            !elector.try_acquire_or_renew().await,
            "an expired Lease taken first by another replica"
        );
        assert!(
            !elector.try_acquire_or_renew().await,
            "a Lease another replica renews"
        );
        assert!(
            elector.try_acquire_or_renew().await,
            "a Lease nobody holds is taken"
        );
        finish(scenario).await;
    }

    #[tokio::test]
    async fn a_status_is_written_once_per_object_version() {
        let (client, server) = mock_client();
        let mut writer = StatusWriter {
            client,
            written: HashMap::new(),
        };
        let snapshot = |version| {
            let verdict = verdict("ns/bad", Some("pattern \"game:[*\": unclosed"));
            Snapshot {
                policies: vec![Arc::new(policy("bad", &["game:[*"], 1, version))],
                verdicts: HashMap::from([(verdict.key.clone(), verdict)]),
            }
        };
        let patch = || Step::PatchStatus {
            name: "bad",
            status: "False",
            reason: "Invalid",
            message: "unclosed",
        };
        let scenario = server.run(vec![patch(), patch()]);
        // The second write comes before the watcher delivered the patched object;
        // by the third, the object changed and its status is still stale (say,
        // edited by hand).
        for version in ["5", "5", "6"] {
            tokio::time::timeout(STEP_TIMEOUT, writer.write(&snapshot(version)))
                .await
                .expect("the write finished");
        }
        finish(scenario).await;
    }

    #[test]
    fn status_patches_only_when_the_status_is_out_of_date() {
        let now = Timestamp::now();
        let earlier = an_hour_ago();
        let time = |t: Timestamp| serde_json::to_value(Time(t)).unwrap();
        let valid = verdict("ns/p", None);
        let invalid = verdict("ns/p", Some("schema: not a valid JSON Schema"));
        let mut p = policy("p", &["p:*"], 2, "5");

        let patch = status_patch(&p, &valid, now).expect("no status yet");
        assert_eq!(patch["status"]["observedGeneration"], 2);
        let ready = &patch["status"]["conditions"][0];
        assert_eq!(
            (&ready["type"], &ready["status"]),
            (&json!("Ready"), &json!("True"))
        );
        assert_eq!(
            (&ready["reason"], &ready["message"]),
            (&json!("Valid"), &json!("in force"))
        );
        assert_eq!(ready["lastTransitionTime"], time(now));

        p.status = Some(ready_status(2, "True", "Valid", "in force", earlier));
        assert_eq!(status_patch(&p, &valid, now), None, "already current");

        p.status = Some(ready_status(1, "True", "Valid", "in force", earlier));
        let patch = status_patch(&p, &valid, now).expect("an older generation");
        assert_eq!(patch["status"]["observedGeneration"], 2);
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            time(earlier),
            "no transition"
        );

        let mut other = ready_status(2, "True", "Valid", "in force", earlier);
        other.conditions[0].type_ = "Other".to_owned();
        other.conditions.push(
            ready_status(2, "True", "Valid", "in force", earlier)
                .conditions
                .remove(0),
        );
        p.status = Some(other);
        let patch = status_patch(&p, &invalid, now).expect("turned invalid");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0]["type"], "Other", "other conditions are kept");
        assert_eq!(
            (&conditions[1]["status"], &conditions[1]["reason"]),
            (&json!("False"), &json!("Invalid"))
        );
        assert_eq!(conditions[1]["message"], "schema: not a valid JSON Schema");
        assert_eq!(conditions[1]["lastTransitionTime"], time(now));

        let long = verdict("ns/p", Some(&"é".repeat(MAX_MESSAGE_CHARS + 10)));
        let message = Ready::of(&p, &long).message;
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.ends_with("é…"));
    }

    #[test]
    fn the_namespace_comes_from_the_environment_then_the_service_account() {
        let none = || None;
        assert_eq!(
            choose_namespace(Some("env".into()), || Some("file".into())),
            "env"
        );
        assert_eq!(
            choose_namespace(Some(" ".into()), || Some("file\n".into())),
            "file"
        );
        assert_eq!(choose_namespace(None, none), "default");
    }

    /// The JSON merge patch that makes `policy`'s status match `verdict`, or `None`
    /// when it already does.
    fn status_patch(
        policy: &ChannelPolicy,
        verdict: &PolicyVerdict,
        now: Timestamp,
    ) -> Option<serde_json::Value> {
        let ready = Ready::of(policy, verdict);
        (!ready.is_current(policy)).then(|| ready.patch(policy, now))
    }

    fn verdict(key: &str, error: Option<&str>) -> PolicyVerdict {
        PolicyVerdict {
            key: key.to_owned(),
            generation: Some(1),
            error: error.map(str::to_owned),
        }
    }
}
