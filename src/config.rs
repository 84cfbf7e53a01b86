//! Command line and environment: every flag of `sseplane serve` is also
//! `SSEPLANE_<FLAG>`; the defaults live here and nowhere else.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;
use crate::policy::{EffectivePolicy, Retention};

/// The `sseplane` command line.
#[derive(Debug, Parser)]
#[command(
    name = "sseplane",
    version,
    about = "Server-Sent Events over a Redis backplane"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start: the size of the serve variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Publish one event to a running service.
    Publish(crate::cli::publish::PublishArgs),
    /// Print the events of one or more channels as they arrive.
    Watch(crate::cli::watch::WatchArgs),
    /// Print the ChannelPolicy CRD (YAML), generated from the Rust types.
    Crd,
    /// Mint a token (JWT) that lets its holder subscribe to and publish on channels.
    Token(crate::cli::token::TokenArgs),
    /// Load-test an SSE server (sseplane or a peer) and report.
    Bench(crate::bench::BenchArgs),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for containers.
    Json,
}

/// Settings of `sseplane serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Public API address.
    #[arg(long, env = "SSEPLANE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin API address (health, readiness, diagnostics).
    #[arg(long, env = "SSEPLANE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Redis URL (`redis://host:6379/0`); unset runs the in-memory backplane (one instance).
    #[arg(long, env = "SSEPLANE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and pub/sub channel sseplane uses.
    #[arg(long, env = "SSEPLANE_REDIS_PREFIX", default_value = "sseplane")]
    pub redis_prefix: String,
    /// Name of this replica in diagnostics and the `X-Sseplane-Replica` header
    /// (default: `POD_NAME`, else the host name).
    #[arg(long, env = "SSEPLANE_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Origins allowed to call the public API from a browser: `*` or a comma-separated list.
    #[arg(long, env = "SSEPLANE_CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Default keepalive: a `: keepalive` comment after this much quiet.
    #[arg(long, env = "SSEPLANE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub keepalive: Duration,
    /// Default `retry:` given to clients.
    #[arg(long, env = "SSEPLANE_RETRY", default_value = "3s", value_parser = parse_duration)]
    pub retry: Duration,
    /// Default history length per channel (0 = no replay).
    #[arg(long, env = "SSEPLANE_HISTORY_MAX_EVENTS", default_value_t = 1000)]
    pub history_max_events: u64,
    /// Default history age per channel (0s = no replay).
    #[arg(long, env = "SSEPLANE_HISTORY_MAX_AGE", default_value = "1h", value_parser = parse_duration)]
    pub history_max_age: Duration,
    /// Default limit of a whole publish body, in bytes.
    #[arg(long, env = "SSEPLANE_MAX_PAYLOAD_BYTES", default_value_t = 65536)]
    pub max_payload_bytes: usize,
    /// Default per-connection queue: a client this many events behind is disconnected
    /// (it reconnects and resumes from history).
    #[arg(long, env = "SSEPLANE_QUEUE_EVENTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue_events: u32,
    /// Most channels on one stream.
    #[arg(long, env = "SSEPLANE_MAX_CHANNELS_PER_STREAM", default_value_t = 100)]
    pub max_channels_per_stream: usize,
    /// Time allowed after SIGTERM for open streams to end before the process exits.
    #[arg(long, env = "SSEPLANE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// `ChannelPolicy` YAML: a file or a directory of `*.yaml`/`*.yml`/`*.json`,
    /// reloaded when it changes.
    #[arg(long, env = "SSEPLANE_POLICIES")]
    pub policies: Option<std::path::PathBuf>,
    /// Watch `ChannelPolicy` resources in the cluster (`auto`: when in a pod).
    #[arg(
        long,
        env = "SSEPLANE_KUBE_POLICIES",
        value_enum,
        default_value = "auto"
    )]
    pub kube_policies: Toggle,
    /// Watch policies in every namespace instead of the pod's own.
    #[arg(long, env = "SSEPLANE_WATCH_ALL_NAMESPACES")]
    pub watch_all_namespaces: bool,
    /// The built-in page at `/` to watch delivery and publish test events (`on` or `off`).
    #[arg(long, env = "SSEPLANE_UI", value_enum, default_value = "on")]
    pub ui: Toggle,
    /// HS256 shared secret for tokens (turns auth on).
    #[arg(long, env = "SSEPLANE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA (RS256) or EC (ES256) public key for tokens,
    /// reloaded when it changes (turns auth on).
    #[arg(long, env = "SSEPLANE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// JWKS file (`{"keys":[…]}`) with the public keys for tokens, reloaded
    /// when it changes (turns auth on).
    #[arg(long, env = "SSEPLANE_JWKS")]
    pub jwks: Option<std::path::PathBuf>,
    /// Required `aud` claim of tokens.
    #[arg(long, env = "SSEPLANE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim of tokens.
    #[arg(long, env = "SSEPLANE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "SSEPLANE_JWT_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// Name of the cookie that carries a browser's token.
    #[arg(long, env = "SSEPLANE_TOKEN_COOKIE", default_value = crate::auth::credentials::DEFAULT_COOKIE)]
    pub token_cookie: String,
    /// Token the admin API asks for (`Authorization: Bearer`) on diagnostics
    /// and the log level; unset leaves them open (health, readiness and
    /// metrics are always open).
    #[arg(long, env = "SSEPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Most open streams on this replica (503 beyond); 0 = no limit, default:
    /// what the open-files limit allows, less a reserve.
    #[arg(long, env = "SSEPLANE_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Most open streams from one client address (429 beyond); 0 = no limit.
    /// Behind a proxy every client has the proxy's address: raise it or set 0.
    #[arg(long, env = "SSEPLANE_MAX_STREAMS_PER_CLIENT", default_value_t = 1000)]
    pub max_streams_per_client: usize,
    /// New channels one publisher (its token's subject, else its address) may
    /// create per second on this replica, in bursts of 50 times as many; a
    /// publish that would create more gets 429 `channel_creation_limited`.
    /// Bounds the Redis memory one client can claim. 0 = no limit.
    #[arg(long, env = "SSEPLANE_NEW_CHANNELS_PER_SECOND", default_value_t = 20)]
    pub new_channels_per_second: u32,
    /// Time allowed for a request body to arrive (408 beyond).
    #[arg(long, env = "SSEPLANE_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time a connection on the public port may wait for a whole request head
    /// (a new connection, or a kept-alive one between requests, publishes
    /// included) before it is closed; the same on every request path.
    #[arg(long, env = "SSEPLANE_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Most connections on the public port waiting for a request at once
    /// (kept-alive publish connections between requests, new connections
    /// before their first bytes): beyond it the oldest idle one is closed.
    /// Counted apart from `--max-streams`; 0 = no cap.
    #[arg(long, env = "SSEPLANE_MAX_IDLE_CONNECTIONS", default_value_t = crate::http::lean::DEFAULT_MAX_IDLE)]
    pub max_idle_connections: usize,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "SSEPLANE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "SSEPLANE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (`info`, `sseplane=debug`, …); `RUST_LOG` works too.
    #[arg(long, env = "SSEPLANE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Cli::parse_from(["sseplane"]).serve
    }
}

impl ServeArgs {
    /// The replica name: the flag, else `POD_NAME`, else the host name.
    pub fn replica_id(&self) -> String {
        self.replica_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "sseplane".to_owned())
    }

    /// The policy for channels no `ChannelPolicy` matches.
    pub fn default_policy(&self) -> EffectivePolicy {
        let mut policy = EffectivePolicy::defaults(
            self.keepalive,
            self.retry,
            Retention {
                max_events: self.history_max_events,
                max_age: self.history_max_age,
            },
            self.max_payload_bytes,
            self.queue_events as usize,
        );
        // With a key configured, publishing needs a token unless a policy
        // says otherwise.
        policy.auth.publish = self.auth_configured();
        policy
    }

    /// True when a token key is configured: auth is on, and publishing needs
    /// a token unless a policy says otherwise.
    pub fn auth_configured(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some() || self.jwks.is_some()
    }

    /// The token verifier the flags describe (auth off when no key is set).
    pub fn authenticator(&self) -> Result<crate::auth::Authenticator, String> {
        use crate::auth::{KeyRing, KeySource, TokenRules};
        let mut sources = Vec::new();
        if let Some(secret) = &self.jwt_secret {
            sources.push(KeySource::Secret(secret.as_bytes().to_vec()));
        }
        if let Some(path) = &self.jwt_public_key {
            sources.push(KeySource::PemFile(path.clone()));
        }
        if let Some(path) = &self.jwks {
            sources.push(KeySource::JwksFile(path.clone()));
        }
        let keys = KeyRing::load(sources)?;
        let rules = TokenRules {
            audience: self.jwt_audience.clone().filter(|a| !a.is_empty()),
            issuer: self.jwt_issuer.clone().filter(|i| !i.is_empty()),
            leeway: self.jwt_leeway,
        };
        Ok(crate::auth::Authenticator::new(keys, rules))
    }

    /// Whether to watch `ChannelPolicy` resources in a cluster.
    pub fn watch_kubernetes(&self) -> bool {
        match self.kube_policies {
            Toggle::On => true,
            Toggle::Off => false,
            Toggle::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// On, off, or decided by the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// When running in a Kubernetes pod.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let args = ServeArgs::default();
        assert_eq!(args.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(args.admin_listen.to_string(), "0.0.0.0:9090");
        assert!(args.redis_url.is_none());
        assert_eq!(args.keepalive, Duration::from_secs(15));
        assert_eq!(args.retry, Duration::from_secs(3));
        assert_eq!(args.history_max_events, 1000);
        assert_eq!(args.history_max_age, Duration::from_secs(3600));
        assert_eq!(args.max_payload_bytes, 65536);
        // One idle timeout for both request paths, the lean one's default.
        assert_eq!(args.idle_timeout, crate::http::lean::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            args.max_idle_connections,
            crate::http::lean::DEFAULT_MAX_IDLE
        );
    }

    #[test]
    fn serve_flags_work_with_and_without_the_subcommand() {
        let cli = Cli::parse_from(["sseplane", "--keepalive", "250ms"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.keepalive, Duration::from_millis(250));
        let cli = Cli::parse_from(["sseplane", "serve", "--retry", "1h"]);
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.retry, Duration::from_secs(3600)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["sseplane", "--keepalive", "soon"]).is_err());
    }
}
