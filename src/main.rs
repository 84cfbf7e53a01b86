//! The `sseplane` binary: parse flags, then serve, publish or watch.

use anyhow::Context;
use clap::Parser;
use sseplane::config::{Cli, Command, ServeArgs};
use sseplane::shutdown::{os_signal, Shutdown};

/// mimalloc: the publish path allocates per request (body, envelope, answer),
/// and glibc's allocator was ~19 % of a publishing replica's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workers = match &cli.command {
        None => cli.serve.worker_threads,
        Some(Command::Serve(args)) => args.worker_threads,
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        runtime.worker_threads(workers.max(1));
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Publish(args)) => sseplane::cli::publish::run(args).await,
        Some(Command::Watch(args)) => sseplane::cli::watch::run(args).await,
        Some(Command::Bench(args)) => sseplane::bench::run(args).await,
        Some(Command::Token(args)) => sseplane::cli::token::run(args),
        Some(Command::Crd) => {
            print!("{}", sseplane::policy::crd::crd_yaml());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = sseplane::telemetry::init(args.log_format, &args.log_level, &args.replica_id());
    // One descriptor per stream: take every descriptor the process may have
    // (the soft limit is often 1024, far below what a replica holds).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let public = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        os_signal().await;
        trigger.trigger();
    });
    let result =
        sseplane::server::run(args, public, admin, shutdown, telemetry.log_level.clone()).await;
    telemetry.shutdown();
    result
}
