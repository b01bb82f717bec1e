//! OpenAI-compatible chat and embeddings over plain HTTP (OpenAI, Ollama, vLLM, llama.cpp
//! server, LM Studio...). Responses are parsed leniently as JSON values: servers differ in
//! which fields they omit (chunk `id`, embeddings `usage`, ...), and none of those matter here.
//!
//! This module makes single attempts (connect / first-token / idle-gap / total deadlines, error
//! classification); everything else — queueing, rate limits, the breaker and the one retry
//! loop — is the governor's (`super::governor`). Nothing is retried once a token has been
//! handed to the caller.

pub use super::governor::Policy;
use super::governor::{Governor, Limits, Upstream};
use super::*;
use futures::StreamExt;
use kb_ingest::TokenCounter;
use std::time::{Duration, Instant};

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
fn is_context_length(code: Option<&str>, message: &str) -> bool {
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
            return Err(ModelError::Upstream { status, message });
        }
        Ok(resp)
    }
}

pub struct OpenAiChat {
    client: Client,
    model: String,
    upstream: Arc<Upstream>,
    counter: BpeCounter,
}

impl OpenAiChat {
    pub fn new(client: Client, model: &str, governor: &Governor, limits: Limits) -> OpenAiChat {
        OpenAiChat {
            upstream: governor.upstream("chat", model, limits),
            client,
            model: model.to_string(),
            counter: BpeCounter::for_model(model),
        }
    }

    /// Tokens the request may use: the prompt (with the model's tokenizer, plus a few per
    /// message for the chat framing) and the answer's maximum. Settled with the reported usage.
    fn estimate(&self, req: &ChatRequest) -> (u64, u64) {
        let prompt: usize = req
            .messages
            .iter()
            .map(|m| self.counter.count(&m.content) + 4)
            .sum();
        (prompt as u64, (prompt + req.max_tokens) as u64)
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
        // Only data resets the idle deadline: bytes that carry none (`: keep-alive` comments,
        // blank lines) do not.
        let mut last_data = Instant::now();
        let mut finished = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                yield Err(ModelError::Timeout(TimeoutKind::Total));
                return;
            }
            let wait = if got_data {
                (last_data + idle).min(deadline).saturating_duration_since(now)
            } else {
                first_deadline.min(deadline).saturating_duration_since(now)
            };
            let next = match tokio::time::timeout(wait, body.next()).await {
                Err(_) => {
                    let kind = if Instant::now() >= deadline {
                        TimeoutKind::Total
                    } else if got_data {
                        TimeoutKind::Idle
                    } else {
                        TimeoutKind::FirstToken
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
                        last_data = Instant::now();
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

impl OpenAiChat {
    /// One governed call: attempts until the first token (retried by the governor's rules),
    /// then the rest of the stream, which holds the upstream slot until it ends.
    async fn governed_stream(&self, req: ChatRequest) -> Result<DeltaStream> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": req.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        });
        let policy = self.client.policy.clone();
        let (prompt_est, est) = self.estimate(&req);
        let governed = self
            .upstream
            .run(Priority::Interactive, est, |deadline| {
                let body = body.clone();
                let client = self.client.clone();
                let policy = policy.clone();
                async move {
                    let attempt_start = Instant::now();
                    let left = deadline.saturating_duration_since(attempt_start);
                    if left.is_zero() {
                        return Err(ModelError::Timeout(TimeoutKind::Total));
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
                            Err(_) => return Err(ModelError::Timeout(TimeoutKind::FirstToken)),
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
        let (first, rest) = governed.value;
        let mut permit = governed.permit;
        let mut call = governed.call;
        let counter = BpeCounter::for_model(&self.model);
        let s = async_stream::stream! {
            let mut usage: Option<Usage> = None;
            let mut out_chars = String::new();
            let mut rest = rest;
            let mut items = futures::stream::iter(first.into_iter().map(Ok)).chain(&mut rest);
            while let Some(item) = items.next().await {
                match item {
                    Ok(ChatDelta::Text(t)) => {
                        call.first_token();
                        if usage.is_none() {
                            out_chars.push_str(&t);
                        }
                        yield Ok(ChatDelta::Text(t));
                    }
                    Ok(ChatDelta::Usage(u)) => {
                        usage = Some(u.clone());
                        yield Ok(ChatDelta::Usage(u));
                    }
                    Err(e) => {
                        let u = usage.as_ref().map(|u| (u.prompt_tokens, u.completion_tokens));
                        if let Some((i, o)) = u {
                            permit.settle(i + o);
                        }
                        yield Err(call.fail_streaming(e, u));
                        return;
                    }
                }
            }
            let u = match &usage {
                Some(u) => (u.prompt_tokens, u.completion_tokens),
                // Not reported: the estimate in, the answer counted out.
                None => (prompt_est, counter.count(&out_chars) as u64),
            };
            permit.settle(u.0 + u.1);
            call.succeed(Some(u));
        };
        Ok(Box::pin(s))
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiChat {
    fn model_id(&self) -> String {
        self.model.clone()
    }

    async fn stream(&self, req: ChatRequest) -> Result<DeltaStream> {
        self.governed_stream(req).await
    }
}

/// A chat model with fallbacks: when a model's breaker is open, or its call fails before the
/// first token (after the governor's retries), the next model in the list is tried. Requests
/// the upstream refused as malformed or too long for the context are not sent elsewhere.
pub struct FallbackChat {
    models: Vec<OpenAiChat>,
}

impl FallbackChat {
    pub fn new(models: Vec<OpenAiChat>) -> FallbackChat {
        assert!(!models.is_empty());
        FallbackChat { models }
    }
}

fn falls_back(e: &ModelError) -> bool {
    !matches!(
        e,
        ModelError::ContextLength(_) | ModelError::Upstream { status: 400, .. }
    )
}

#[async_trait::async_trait]
impl ChatModel for FallbackChat {
    fn model_id(&self) -> String {
        self.models[0].model.clone()
    }

    async fn stream(&self, req: ChatRequest) -> Result<DeltaStream> {
        let mut last = None;
        for (i, m) in self.models.iter().enumerate() {
            match m.governed_stream(req.clone()).await {
                Ok(s) => {
                    if i > 0 {
                        tracing::info!(model = %m.model, primary = %self.models[0].model, "answered by a fallback model");
                    }
                    return Ok(s);
                }
                Err(e) if falls_back(&e) && i + 1 < self.models.len() => {
                    tracing::warn!(model = %m.model, error = %e, next = %self.models[i + 1].model, "falling back");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ModelError::Closed))
    }
}

pub struct OpenAiEmbedder {
    client: Client,
    model: String,
    dim: usize,
    upstream: Arc<Upstream>,
    counter: BpeCounter,
    max_batch_texts: usize,
    max_batch_tokens: usize,
}

impl OpenAiEmbedder {
    pub fn new(
        client: Client,
        model: &str,
        dim: usize,
        governor: &Governor,
        limits: Limits,
        max_batch_texts: usize,
        max_batch_tokens: usize,
    ) -> OpenAiEmbedder {
        OpenAiEmbedder {
            upstream: governor.upstream("embed", model, limits),
            client,
            model: model.to_string(),
            dim,
            counter: BpeCounter::for_model(model),
            max_batch_texts: max_batch_texts.max(1),
            max_batch_tokens: max_batch_tokens.max(1),
        }
    }

    /// One request's worth: `texts` with `tokens` estimated.
    async fn embed_batch(
        &self,
        texts: &[String],
        tokens: u64,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>> {
        let n = texts.len();
        let body = serde_json::json!({"model": self.model, "input": texts});
        let governed = self
            .upstream
            .run(priority, tokens, |deadline| {
                let body = body.clone();
                let client = self.client.clone();
                async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ModelError::Timeout(TimeoutKind::Total));
                    }
                    let resp = client.post("/embeddings", &body, left).await?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, resp.json::<serde_json::Value>())
                        .await
                        .map_err(|_| ModelError::Timeout(TimeoutKind::Total))?
                        .map_err(|e| ModelError::Malformed(e.to_string()))
                }
            })
            .await?;
        let v = governed.value;
        let mut permit = governed.permit;
        let call = governed.call;
        let used = v["usage"]["prompt_tokens"]
            .as_u64()
            .or_else(|| v["usage"]["total_tokens"].as_u64());
        permit.settle(used.unwrap_or(tokens));
        match parse_embeddings(&v, n, self.dim) {
            Ok(out) => {
                call.succeed(Some((used.unwrap_or(tokens), 0)));
                Ok(out)
            }
            Err(e) => Err(call.fail(e)),
        }
    }
}

/// Split `counts` (tokens per text) into consecutive batches of at most `max_texts` texts and
/// `max_tokens` tokens (a single text over the token bound is a batch of its own).
pub fn plan_batches(
    counts: &[usize],
    max_texts: usize,
    max_tokens: usize,
) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0usize);
    for (i, &c) in counts.iter().enumerate() {
        let n = i - start;
        if n > 0 && (n >= max_texts || tokens + c > max_tokens) {
            out.push((start, i, tokens as u64));
            start = i;
            tokens = 0;
        }
        tokens += c;
    }
    if start < counts.len() {
        out.push((start, counts.len(), tokens as u64));
    }
    out
}

fn parse_embeddings(v: &serde_json::Value, n: usize, dim: usize) -> Result<Vec<Vec<f32>>> {
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
        if emb.len() != dim {
            return Err(ModelError::Malformed(format!(
                "embedding has {} dimensions, expected {dim}",
                emb.len(),
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

    /// Batches bounded by count and tokens, sent concurrently; the governor bounds how many
    /// are in flight and puts interactive calls ahead of bulk ones.
    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let counts: Vec<usize> = texts.iter().map(|t| self.counter.count(t)).collect();
        let plan = plan_batches(&counts, self.max_batch_texts, self.max_batch_tokens);
        let calls = plan
            .iter()
            .map(|&(a, b, tokens)| self.embed_batch(&texts[a..b], tokens, priority));
        let parts = futures::future::try_join_all(calls).await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
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
