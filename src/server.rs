//! Wires a configured service together and runs it until shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::backplane::memory::MemoryBackplane;
use crate::backplane::redis::RedisBackplane;
use crate::backplane::Backplane;
use crate::config::ServeArgs;
use crate::http::{admin_router, public_router, AppState};
use crate::hub::Hub;
use crate::policy::PolicyStore;
use crate::shutdown::Shutdown;

/// Builds the backplane the flags ask for.
pub fn backplane(args: &ServeArgs, replica_id: &str) -> anyhow::Result<Arc<dyn Backplane>> {
    Ok(match &args.redis_url {
        Some(url) => Arc::new(RedisBackplane::new(url, &args.redis_prefix, replica_id)?),
        None => Arc::new(MemoryBackplane::new()),
    })
}

/// Descriptors kept for Redis, the admin API, files and the requests being
/// served, beside streams and idle connections.
const RESERVE: u64 = 128;

/// The open-files limit (soft), `None` when there is none.
fn open_files_limit() -> Option<u64> {
    let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    (soft != rlimit::INFINITY && soft != 0).then_some(soft)
}

/// The default cap on open streams: what the open-files limit leaves after
/// the reserve and the idle connections' share (`max_idle`), so that neither
/// idle connections nor streams can take the descriptors the other needs, and
/// a full replica answers 503 instead of failing to accept. With the default
/// `--max-idle-connections` (128), the open-files limit less 256.
fn default_max_streams(max_idle: usize) -> usize {
    let Some(soft) = open_files_limit() else {
        return 0;
    };
    soft.saturating_sub(RESERVE + max_idle as u64).max(1) as usize
}

/// Warns when the caps given add up to more descriptors than the process may
/// open: `accept` could then fail while streams are refused nothing.
fn check_descriptor_budget(max_streams: usize, max_idle: usize) {
    let Some(soft) = open_files_limit() else {
        return;
    };
    let needed = RESERVE + max_streams as u64 + max_idle as u64;
    if max_streams == 0 || max_idle == 0 || needed > soft {
        tracing::warn!(
            open_files_limit = soft,
            max_streams,
            max_idle_connections = max_idle,
            "--max-streams and --max-idle-connections (0 = no cap) leave fewer than {RESERVE} of the open-files limit for Redis, the admin API and requests: new connections may fail when the limit is reached"
        );
    }
}

/// Starts the policy sources the flags ask for: files (read once now, so a
/// bad file stops the start) and the cluster watcher (readiness waits for its
/// first full list).
async fn start_policy_sources(
    args: &ServeArgs,
    policies: &PolicyStore,
    replica_id: &str,
) -> anyhow::Result<()> {
    if let Some(path) = &args.policies {
        crate::policy::file::watch(path.clone(), policies.source("files"))
            .map_err(|e| anyhow::anyhow!("cannot load --policies: {e}"))?;
        tracing::info!(path = %path.display(), "policies from files, reloaded on change");
    }
    if args.watch_kubernetes() {
        let source = policies.source("kubernetes");
        let namespace = crate::policy::kube::pod_namespace();
        let config = crate::policy::kube::KubeSourceConfig {
            namespace: (!args.watch_all_namespaces).then(|| namespace.clone()),
            lease_namespace: namespace,
            lease_name: crate::policy::kube::DEFAULT_LEASE_NAME.to_owned(),
            replica_id: replica_id.to_owned(),
        };
        match ::kube::Client::try_default().await {
            Ok(client) => {
                tracing::info!(
                    all_namespaces = args.watch_all_namespaces,
                    "watching ChannelPolicy resources"
                );
                tokio::spawn(crate::policy::kube::run(client, config, source));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the Kubernetes API: policies stay unsynced")
            }
        }
    }
    Ok(())
}

/// Serves the public API on `public` and the admin API on `admin` until
/// `shutdown` triggers, then drains: readiness answers 503, open streams end
/// (their clients reconnect elsewhere and resume), and the call returns when
/// every connection closed or the grace period ran out.
pub async fn run(
    args: ServeArgs,
    public: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
    log_level: Option<crate::telemetry::LogLevel>,
) -> anyhow::Result<()> {
    // The metrics recorder first: the hub keeps handles to its metrics.
    crate::metrics::install();
    let replica_id = args.replica_id();
    let backplane = backplane(&args, &replica_id)?;
    match &args.redis_url {
        Some(_) => tracing::info!(replica = %replica_id, "using the Redis backplane"),
        None => tracing::info!(
            replica = %replica_id,
            "using the in-memory backplane: one instance only (set --redis-url for several)"
        ),
    }
    let auth = args
        .authenticator()
        .map_err(|e| anyhow::anyhow!("cannot load the token keys: {e}"))?;
    if auth.is_enabled() {
        auth.keys()
            .watch()
            .map_err(|e| anyhow::anyhow!("cannot watch the token key files: {e}"))?;
        tracing::info!(
            audience = args.jwt_audience.as_deref().unwrap_or("(any)"),
            issuer = args.jwt_issuer.as_deref().unwrap_or("(any)"),
            "auth is on: publishing needs a token unless a policy says otherwise"
        );
    } else {
        tracing::warn!("no signing key configured (--jwt-secret, --jwt-public-key, --jwks): auth is off, publishing is open to anyone who reaches the public port, and policies that ask for tokens are not enforced");
    }
    let policies = PolicyStore::new(args.default_policy());
    policies.spawn_upkeep();
    start_policy_sources(&args, &policies, &replica_id).await?;
    let hub = Hub::new(backplane, replica_id);
    hub.start();
    let max_idle = args.max_idle_connections;
    let max_streams = args
        .max_streams
        .unwrap_or_else(|| default_max_streams(max_idle));
    check_descriptor_budget(max_streams, max_idle);
    let state = AppState {
        max_channels_per_stream: args.max_channels_per_stream,
        log_level,
        auth,
        token_cookie: Arc::from(args.token_cookie.as_str()),
        admin_token: args
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        streams: crate::http::limits::StreamGate::new(max_streams, args.max_streams_per_client),
        body_timeout: args.body_timeout,
        channel_creation: (args.new_channels_per_second > 0).then(|| {
            let rate = args.new_channels_per_second;
            crate::policy::RateLimit::new(rate, rate.saturating_mul(50))
        }),
        ..AppState::new(hub, policies, shutdown.clone())
    };
    tracing::info!(
        public = %public.local_addr()?,
        admin = %admin.local_addr()?,
        "listening"
    );
    let public_app = public_router(
        state.clone(),
        &args.cors_origins,
        args.ui != crate::config::Toggle::Off,
    );
    let public_state = state.clone();
    let admin_app = admin_router(state);

    // The admin server outlives the public one so that probes see readiness
    // turn 503 while streams drain.
    let public_done = Shutdown::new();
    let public_server = {
        let public_done = public_done.clone();
        let cors = crate::http::lean::StreamCors::new(&args.cors_origins);
        let limits = crate::http::lean::ConnectionLimits {
            idle_timeout: args.idle_timeout,
            max_idle,
        };
        async move {
            let result =
                crate::http::lean::serve(public, public_app, public_state, cors, limits).await;
            public_done.trigger();
            result
        }
    };
    let admin_server = axum::serve(admin, admin_app).with_graceful_shutdown(public_done.wait());
    let served = async { tokio::try_join!(public_server, admin_server) };
    let grace = args.shutdown_grace;
    let deadline = async {
        shutdown.clone().wait().await;
        tracing::info!(grace = ?grace, "shutting down: draining streams");
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = served => { result?; }
        _ = deadline => tracing::warn!("grace period over; exiting with connections still open"),
    }
    tracing::info!("stopped");
    Ok(())
}
