//! Chat completions: one streamed attempt (`OpenAiChat`), and the fallback chain of models
//! (`FallbackChat`).

use super::Client;
use crate::models::governor::{Governor, Limits, Upstream};
use crate::models::*;
use futures::StreamExt;
use kb_ingest::TokenCounter;
use std::time::{Duration, Instant};

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
pub(super) fn parse_chunk(data: &str) -> Result<(Vec<ChatDelta>, bool)> {
    let v: serde_json::Value = serde_json::from_str(data).map_err(|_| {
        ModelError::Malformed(format!(
            "not JSON: {}",
            data.chars().take(80).collect::<String>()
        ))
    })?;
    if let Some(err) = v.get("error") {
        return Err(ModelError::Upstream {
            status: 500,
            message: redact_secrets(err["message"].as_str().unwrap_or("error in stream")),
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
pub(super) fn sse_deltas(
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

pub(super) fn falls_back(e: &ModelError) -> bool {
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
