//! `sseplane publish`: send one event and print its ids.

use clap::Args;

/// Arguments of `sseplane publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Base URL of the public API.
    #[arg(long, env = "SSEPLANE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Channel to publish to (repeat for several).
    #[arg(long = "channel", required = true)]
    pub channels: Vec<String>,
    /// Event type.
    #[arg(long)]
    pub event: Option<String>,
    /// The data, as JSON.
    #[arg(long)]
    pub data: String,
    /// Token (sent as `Authorization: Bearer`).
    #[arg(long, env = "SSEPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Publishes and prints `<channel> <id>` per channel.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let data: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
    let mut body = serde_json::json!({ "data": data });
    if let [channel] = args.channels.as_slice() {
        body["channel"] = channel.clone().into();
    } else {
        body["channels"] = args.channels.clone().into();
    }
    if let Some(event) = args.event {
        body["event"] = event.into();
    }
    let url = format!("{}/v1/publish", args.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(&url).json(&body);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await?;
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            answer["error"]["message"]
                .as_str()
                .unwrap_or("unknown error")
        );
    }
    for result in answer["results"].as_array().into_iter().flatten() {
        println!(
            "{} {}",
            result["channel"].as_str().unwrap_or_default(),
            result["id"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
