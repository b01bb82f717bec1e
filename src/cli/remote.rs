//! What the subcommands that can talk to a running server share.

use clap::Args;

#[derive(Args)]
pub struct Remote {
    /// Talk to a running kb server instead of opening the data directory.
    #[arg(long)]
    pub server: Option<String>,
}

/// The message of an API error body, or a fallback.
pub async fn api_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("request failed: HTTP {status}"))
}
