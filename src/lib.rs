//! sseplane: Server-Sent Events over a Redis backplane, for Kubernetes.
//!
//! Map of the crate, from the socket inwards:
//! - [`http`]: the public API (`/v1/stream`, `/v1/publish`, `/v1/broadcast`) and
//!   the admin API (`/healthz`, `/readyz`, `/v1/diagnostics`);
//! - [`sse`]: SSE framing and the stream ids clients resume from;
//! - [`hub`]: this replica's channels and local subscribers, fan-out;
//! - [`queue`]: the bounded queue between the hub and one stream;
//! - [`backplane`]: moving events between replicas and keeping history
//!   (in memory, or Redis);
//! - [`event`]: positions, validated names, envelopes, frames;
//! - [`policy`]: what applies to a channel: the `ChannelPolicy` CRD, the
//!   store that resolves channels, and its sources (files, the cluster);
//! - [`yaml`]: YAML behind one module; [`duration`]: how durations are written;
//! - [`config`], [`server`], [`shutdown`], [`telemetry`]: running the service;
//! - [`client`], [`cli`]: an SSE client and the `publish`/`watch` commands.

pub mod auth;
pub mod backplane;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod duration;
pub mod event;
pub mod file_watch;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod telemetry;
pub mod yaml;
