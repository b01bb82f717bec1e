//! Model calls on the question path: collected side tasks (`rewrite`, `summarize`) and the
//! usage rows every call leaves.

use crate::catalog::UsageRecord;
use crate::models::{ChatDelta, ChatModel, ChatRequest, ModelError, Usage};
use crate::query::engine::QueryEngine;
use crate::query::events::AskParams;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The outcome of one chat call, collected.
pub(super) struct Completion {
    pub text: String,
    pub usage: Usage,
    pub latency_ms: u64,
    pub first_token_ms: Option<u64>,
}

impl QueryEngine {
    /// Collect a chat call's text and usage.
    pub(super) async fn complete(
        &self,
        chat: &Arc<dyn ChatModel>,
        messages: Vec<crate::models::Message>,
        max_tokens: usize,
    ) -> Result<Completion, ModelError> {
        let t = Instant::now();
        let mut stream = chat
            .stream(ChatRequest {
                messages,
                max_tokens,
                temperature: 0.0,
            })
            .await?;
        let mut out = Completion {
            text: String::new(),
            usage: Usage::default(),
            latency_ms: 0,
            first_token_ms: None,
        };
        while let Some(item) = stream.next().await {
            match item? {
                ChatDelta::Text(x) => {
                    out.first_token_ms
                        .get_or_insert(t.elapsed().as_millis() as u64);
                    out.text.push_str(&x);
                }
                ChatDelta::Usage(u) => out.usage = u,
            }
        }
        out.latency_ms = t.elapsed().as_millis() as u64;
        Ok(out)
    }

    /// A side task (`rewrite`, `summarize`) on its routed model: records the routing and the
    /// call's usage, and returns the model's text, or `None` when the call failed (logged; the
    /// caller falls back to its rule).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn side_task(
        &self,
        p: &AskParams,
        task: &str,
        chat: &Arc<dyn ChatModel>,
        messages: Vec<crate::models::Message>,
        max_tokens: usize,
        routing: &mut BTreeMap<String, String>,
        calls: &mut Vec<UsageRecord>,
    ) -> Option<String> {
        let model = chat.model_id();
        routing.insert(task.into(), model.clone());
        match self.complete(chat, messages, max_tokens).await {
            Ok(c) => {
                calls.push(self.record(
                    p,
                    task,
                    &model,
                    &c.usage,
                    Some(c.latency_ms),
                    c.first_token_ms,
                    false,
                    "ok",
                ));
                Some(c.text)
            }
            Err(e) => {
                tracing::warn!(request_id = %p.request_id, task, error = %e,
                    "side task failed; falling back to its rule");
                calls.push(self.record(
                    p,
                    task,
                    &model,
                    &Usage::default(),
                    None,
                    None,
                    false,
                    e.code(),
                ));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        p: &AskParams,
        task: &str,
        model: &str,
        usage: &Usage,
        latency_ms: Option<u64>,
        first_token_ms: Option<u64>,
        cache_hit: bool,
        outcome: &str,
    ) -> UsageRecord {
        UsageRecord {
            ts: crate::catalog::now_ms(),
            request_id: Some(p.request_id.clone()),
            collection: Some(p.search.collection.clone()),
            task: task.into(),
            model: model.into(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms,
            first_token_ms,
            // The model client does not report its retries (yet).
            retries: None,
            cache_hit,
            outcome: outcome.into(),
            cost_usd: self
                .usage
                .cost(model, usage.prompt_tokens, usage.completion_tokens),
            key_id: p.key_id.clone(),
        }
    }
}
