//! Embeddings: batches bounded by texts and tokens, one attempt per batch through the governor.

use super::Client;
use crate::models::governor::{Governor, Limits, Upstream};
use crate::models::*;
use kb_ingest::TokenCounter;
use std::time::Instant;

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

pub(super) fn parse_embeddings(
    v: &serde_json::Value,
    n: usize,
    dim: usize,
) -> Result<Vec<Vec<f32>>> {
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
