//! OpenAI-compatible chat and embeddings over plain HTTP (OpenAI, Ollama, vLLM, llama.cpp
//! server, LM Studio...). Responses are parsed leniently as JSON values: servers differ in
//! which fields they omit (chunk `id`, embeddings `usage`, ...), and none of those matter here.
//!
//! Every call has connect / first-token / idle-gap / total timeouts and retries retryable
//! failures (429, 500, 502, 503, 504, connection errors, timeouts before the first token) with
//! exponential backoff and full jitter, honouring `Retry-After` up to a cap. Nothing is retried
//! once a token has been handed to the caller.

use super::*;
use futures::StreamExt;
use rand::Rng;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Policy {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub retry_after_cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(20),
            total: Duration::from_secs(120),
            max_retries: 3,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
            retry_after_cap: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_cap);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// How long to wait before retry `attempt` after `err`, or None to give up now.
    fn wait_before_retry(&self, err: &ModelError, attempt: u32) -> Option<Duration> {
        if !err.retryable() || attempt >= self.max_retries {
            return None;
        }
        if let ModelError::RateLimited {
            retry_after_secs: Some(s),
        } = err
        {
            let d = Duration::from_secs_f64(s.max(0.0));
            return (d <= self.retry_after_cap).then_some(d);
        }
        Some(self.backoff(attempt))
    }
}

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
            Err(_) => return Err(ModelError::Timeout("first token")),
            Ok(Err(e)) if e.is_connect() => return Err(ModelError::Connect(e.to_string())),
            Ok(Err(e)) if e.is_timeout() => return Err(ModelError::Timeout("connect")),
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
            });
        }
        if !(200..300).contains(&status) {
            let text = tokio::time::timeout(Duration::from_secs(5), resp.text())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(ModelError::Upstream { status, message });
        }
        Ok(resp)
    }

    /// Run `op` with the retry policy.
    async fn with_retries<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.policy.wait_before_retry(&e, attempt) {
                    Some(wait) => {
                        tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "retrying upstream call");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

pub struct OpenAiChat {
    client: Client,
    model: String,
}

impl OpenAiChat {
    pub fn new(client: Client, model: &str) -> OpenAiChat {
        OpenAiChat {
            client,
            model: model.to_string(),
        }
    }
}

/// Parse one SSE `data:` payload of a chat completion stream: its deltas, and whether it
/// carried a `finish_reason` (the answer is complete).
fn parse_chunk(data: &str) -> Result<(Vec<ChatDelta>, bool)> {
    let v: serde_json::Value = serde_json::from_str(data).map_err(|_| {
        ModelError::Malformed(format!(
            "not JSON: {}",
            data.chars().take(80).collect::<String>()
        ))
    })?;
    if let Some(err) = v.get("error") {
        return Err(ModelError::Upstream {
            status: 500,
            message: err["message"]
                .as_str()
                .unwrap_or("error in stream")
                .to_string(),
        });
    }
    let finished = v["choices"][0]["finish_reason"].is_string();
    let mut out = Vec::new();
    if let Some(text) = v["choices"][0]["delta"]["content"].as_str() {
        if !text.is_empty() {
            out.push(ChatDelta::Text(text.to_string()));
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        out.push(ChatDelta::Usage(Usage {
            prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        }));
    }
    Ok((out, finished))
}

type DeltaStream = BoxStream<'static, Result<ChatDelta>>;

/// Turn a streaming HTTP body into deltas, enforcing the deadlines: `first_deadline` until the
/// first data arrives, then the idle gap between data, and `deadline` throughout. A stream that
/// ends without `[DONE]` or a `finish_reason` was cut short: that is an error, not an answer.
fn sse_deltas(
    resp: reqwest::Response,
    first_deadline: Instant,
    idle: Duration,
    deadline: Instant,
) -> DeltaStream {
    let body = resp.bytes_stream();
    let s = async_stream::stream! {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        let mut got_data = false;
        let mut finished = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                yield Err(ModelError::Timeout("total"));
                return;
            }
            let wait = if got_data {
                idle.min(deadline - now)
            } else {
                first_deadline.min(deadline).saturating_duration_since(now)
            };
            let next = match tokio::time::timeout(wait, body.next()).await {
                Err(_) => {
                    let kind = if Instant::now() >= deadline {
                        "total"
                    } else if got_data {
                        "idle"
                    } else {
                        "first token"
                    };
                    yield Err(ModelError::Timeout(kind));
                    return;
                }
                Ok(n) => n,
            };
            match next {
                None => {
                    if !finished {
                        yield Err(ModelError::Connect("the stream ended before the answer was complete".into()));
                    }
                    return;
                }
                Some(Err(e)) => {
                    yield Err(ModelError::Connect(format!("stream cut: {e}")));
                    return;
                }
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        let line = line.trim();
                        let Some(data) = line.strip_prefix("data:") else { continue };
                        let data = data.trim();
                        if data == "[DONE]" {
                            return;
                        }
                        got_data = true;
                        match parse_chunk(data) {
                            Ok((ds, fin)) => {
                                finished |= fin;
                                for d in ds { yield Ok(d) }
                            }
                            Err(e) => { yield Err(e); return; }
                        }
                    }
                }
            }
        }
    };
    Box::pin(s)
}

#[async_trait::async_trait]
impl ChatModel for OpenAiChat {
    fn model_id(&self) -> String {
        self.model.clone()
    }

    async fn stream(&self, req: ChatRequest) -> Result<DeltaStream> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        });
        let started = Instant::now();
        let policy = self.client.policy.clone();
        let deadline = started + policy.total;
        // The retry loop covers everything up to the first token.
        let (first, rest) = self
            .client
            .with_retries(|| {
                let body = body.clone();
                let client = self.client.clone();
                let policy = policy.clone();
                async move {
                    let attempt_start = Instant::now();
                    let left = deadline.saturating_duration_since(attempt_start);
                    if left.is_zero() {
                        return Err(ModelError::Timeout("total"));
                    }
                    let first_deadline = attempt_start + policy.first_token.min(left);
                    let resp = client
                        .post("/chat/completions", &body, policy.first_token.min(left))
                        .await?;
                    let mut s = sse_deltas(resp, first_deadline, policy.idle, deadline);
                    // Wait for the first text (usage-only items may come first).
                    let mut pending = Vec::new();
                    loop {
                        let wait = first_deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(wait, s.next()).await {
                            Err(_) => return Err(ModelError::Timeout("first token")),
                            Ok(None) => return Ok((pending, s)),
                            Ok(Some(Err(e))) => return Err(e),
                            Ok(Some(Ok(d))) => {
                                let is_text = matches!(d, ChatDelta::Text(_));
                                pending.push(d);
                                if is_text {
                                    return Ok((pending, s));
                                }
                            }
                        }
                    }
                }
            })
            .await?;
        let head = futures::stream::iter(first.into_iter().map(Ok));
        Ok(Box::pin(head.chain(rest)))
    }
}

pub struct OpenAiEmbedder {
    client: Client,
    model: String,
    dim: usize,
}

impl OpenAiEmbedder {
    pub fn new(client: Client, model: &str, dim: usize) -> OpenAiEmbedder {
        OpenAiEmbedder {
            client,
            model: model.to_string(),
            dim,
        }
    }
}

#[async_trait::async_trait]
impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> String {
        format!("openai:{}", self.model)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_input_tokens(&self) -> usize {
        8191
    }

    fn token_counter(&self) -> Arc<dyn kb_ingest::TokenCounter + Send> {
        Arc::new(ApproxCounter)
    }

    async fn embed(&self, texts: Vec<String>, _priority: Priority) -> Result<Vec<Vec<f32>>> {
        let n = texts.len();
        let body = serde_json::json!({"model": self.model, "input": texts});
        // One deadline for the whole call, retries included.
        let deadline = Instant::now() + self.client.policy.total;
        let v: serde_json::Value = self
            .client
            .with_retries(|| {
                let body = body.clone();
                let client = self.client.clone();
                async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ModelError::Timeout("total"));
                    }
                    let resp = client.post("/embeddings", &body, left).await?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, resp.json::<serde_json::Value>())
                        .await
                        .map_err(|_| ModelError::Timeout("total"))?
                        .map_err(|e| ModelError::Malformed(e.to_string()))
                }
            })
            .await?;
        let data = v["data"]
            .as_array()
            .ok_or_else(|| ModelError::Malformed("embeddings response has no data".into()))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
        for (i, item) in data.iter().enumerate() {
            let idx = item["index"].as_u64().map(|x| x as usize).unwrap_or(i);
            let emb: Vec<f32> = item["embedding"]
                .as_array()
                .ok_or_else(|| ModelError::Malformed("embedding is not an array".into()))?
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect();
            if emb.len() != self.dim {
                return Err(ModelError::Malformed(format!(
                    "embedding has {} dimensions, expected {}",
                    emb.len(),
                    self.dim
                )));
            }
            if idx < n {
                out[idx] = Some(emb);
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| ModelError::Malformed("missing embeddings".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds() {
        let p = Policy::default();
        for attempt in 0..10 {
            for _ in 0..200 {
                let d = p.backoff(attempt);
                let bound = p
                    .backoff_base
                    .saturating_mul(1 << attempt)
                    .min(p.backoff_cap);
                assert!(d <= bound, "attempt {attempt}: {d:?} > {bound:?}");
            }
        }
    }

    #[test]
    fn retry_after_over_the_cap_fails_fast() {
        let p = Policy::default();
        let long = ModelError::RateLimited {
            retry_after_secs: Some(600.0),
        };
        assert_eq!(p.wait_before_retry(&long, 0), None);
        let short = ModelError::RateLimited {
            retry_after_secs: Some(2.0),
        };
        assert_eq!(p.wait_before_retry(&short, 0), Some(Duration::from_secs(2)));
        let bad_request = ModelError::Upstream {
            status: 400,
            message: String::new(),
        };
        assert_eq!(p.wait_before_retry(&bad_request, 0), None);
        let unavailable = ModelError::Upstream {
            status: 503,
            message: String::new(),
        };
        assert!(p.wait_before_retry(&unavailable, 0).is_some());
        assert_eq!(p.wait_before_retry(&unavailable, p.max_retries), None);
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
