//! What the subcommands that can talk to a running server share.

use clap::Args;

#[derive(Args)]
pub struct Remote {
    /// Talk to a running kb server instead of opening the data directory.
    #[arg(long)]
    pub server: Option<String>,
}

/// An HTTP client for a kb server: with `KB_API_KEY` set, every request carries it as
/// `Authorization: Bearer` (servers with `auth.mode = "keys"`).
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("KB_API_KEY") {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
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

/// The JSON body of a successful response, or the API's error message as the error.
pub async fn json_ok(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    if !resp.status().is_success() {
        anyhow::bail!("{}", api_error(resp).await);
    }
    Ok(resp.json().await.unwrap_or_default())
}
