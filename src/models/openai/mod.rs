//! OpenAI-compatible chat and embeddings over plain HTTP (OpenAI, Ollama, vLLM, llama.cpp
//! server, LM Studio...). Responses are parsed leniently as JSON values: servers differ in
//! which fields they omit (chunk `id`, embeddings `usage`, ...), and none of those matter here.
//!
//! This module makes single attempts (connect / first-token / idle-gap / total deadlines, error
//! classification); everything else — queueing, rate limits, the breaker and the one retry
//! loop — is the governor's (`super::governor`). Nothing is retried once a token has been
//! handed to the caller.

mod chat;
mod embed;

pub use super::governor::Policy;
use super::*;
pub use chat::{FallbackChat, OpenAiChat};
pub use embed::{plan_batches, OpenAiEmbedder};
use std::time::Duration;

/// Parse `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<f64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return Some(s);
    }
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs =
        (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(secs.max(0.0))
}

/// Whether an upstream error is about the prompt not fitting the model (never retried).
pub(super) fn is_context_length(code: Option<&str>, message: &str) -> bool {
    if code == Some("context_length_exceeded") {
        return true;
    }
    let m = message.to_lowercase();
    [
        "context length",
        "context window",
        "context size",
        "maximum context",
        "prompt is too long",
        "too many tokens",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    pub policy: Policy,
}

impl Client {
    pub fn new(base_url: &str, api_key: Option<String>, policy: Policy) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.connect)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Client {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            policy,
        })
    }

    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        deadline: Duration,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .post(format!("{}{}", self.base_url, path))
            .json(body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match tokio::time::timeout(deadline, req.send()).await {
            Err(_) => return Err(ModelError::Timeout(TimeoutKind::FirstToken)),
            Ok(Err(e)) if e.is_connect() => return Err(ModelError::Connect(e.to_string())),
            Ok(Err(e)) if e.is_timeout() => return Err(ModelError::Timeout(TimeoutKind::Connect)),
            Ok(Err(e)) => return Err(ModelError::Connect(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if status == 429 {
            let ra = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Err(ModelError::RateLimited {
                retry_after_secs: ra,
                cap_secs: None,
            });
        }
        if !(200..300).contains(&status) {
            let text = tokio::time::timeout(Duration::from_secs(5), resp.text())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            let v = serde_json::from_str::<serde_json::Value>(&text).ok();
            let message = v
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            let code = v.as_ref().and_then(|v| v["error"]["code"].as_str());
            if matches!(status, 400 | 413 | 422 | 500) && is_context_length(code, &message) {
                return Err(ModelError::ContextLength(message));
            }
            return Err(ModelError::Upstream {
                status,
                message: redact_secrets(&message),
            });
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::chat::*;
    use super::embed::*;
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_tokens() {
        assert_eq!(
            plan_batches(&[10, 10, 10, 10, 10], 2, 1000),
            vec![(0, 2, 20), (2, 4, 20), (4, 5, 10)]
        );
        assert_eq!(
            plan_batches(&[60, 50, 10, 200, 5], 10, 100),
            vec![(0, 1, 60), (1, 3, 60), (3, 4, 200), (4, 5, 5)]
        );
        assert!(plan_batches(&[], 4, 4).is_empty());
    }

    #[test]
    fn context_length_errors_are_recognised() {
        assert!(is_context_length(Some("context_length_exceeded"), ""));
        assert!(is_context_length(
            None,
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(is_context_length(
            None,
            "the request exceeds the available context size"
        ));
        assert!(!is_context_length(None, "invalid api key"));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(7.0));
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let s = parse_retry_after(&future).unwrap();
        assert!((25.0..=31.0).contains(&s), "{s}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn lenient_chunk_parsing() {
        // No id, no model, no finish_reason: still fine.
        assert_eq!(
            parse_chunk(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#).unwrap(),
            (vec![ChatDelta::Text("Hi".into())], false)
        );
        assert!(
            parse_chunk(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#)
                .unwrap()
                .1
        );
        assert_eq!(
            parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#)
                .unwrap(),
            (
                vec![ChatDelta::Usage(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                })],
                false
            )
        );
        assert!(matches!(
            parse_chunk("{oops"),
            Err(ModelError::Malformed(_))
        ));
    }
}
