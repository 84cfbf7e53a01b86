//! `sseplane watch`: print events as they arrive, reconnecting like a browser.

use clap::Args;

use crate::client::{follow, ClientEvent};

/// Arguments of `sseplane watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Base URL of the public API.
    #[arg(long, env = "SSEPLANE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Channel to watch (repeat for several).
    #[arg(long = "channel", required = true)]
    pub channels: Vec<String>,
    /// Resume after this id.
    #[arg(long)]
    pub last_event_id: Option<String>,
    /// Token for channels that need one (sent as `access_token`).
    #[arg(long, env = "SSEPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Prints `[replica] id=… event=… data=…` per event until interrupted.
pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(args.channels.iter().map(|c| ("channel", c)));
    if let Some(token) = &args.token {
        query.append_pair(crate::auth::credentials::QUERY_PARAMETER, token);
    }
    let query = query.finish();
    let url = format!("{}/v1/stream?{query}", args.url.trim_end_matches('/'));
    let mut events = follow(vec![url], args.last_event_id);
    let mut replica = String::from("?");
    while let Some(item) = events.recv().await {
        match item {
            ClientEvent::Connected { replica: r } => {
                eprintln!("connected to replica {r}");
                replica = r;
            }
            ClientEvent::Event(e) => println!(
                "[{replica}] id={} event={} data={}",
                e.id.as_deref().unwrap_or("-"),
                e.event,
                e.data
            ),
            ClientEvent::Disconnected { reason } => {
                eprintln!("disconnected ({reason}); reconnecting")
            }
        }
    }
    Ok(())
}
