//! Usage and cost of model calls: one record per call, priced from `llm.prices`, stored in the
//! catalog and aggregated by `GET /v1/usage`.

use crate::catalog::{now_ms, Catalog, UsageRecord};
use crate::config::Price;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct UsageLog {
    catalog: Catalog,
    prices: BTreeMap<String, Price>,
    /// Embedding calls are recorded only for remote embedders (a local one costs nothing and
    /// would add a row per ingestion batch).
    remote_embedder: bool,
}

impl UsageLog {
    pub fn new(
        catalog: Catalog,
        prices: BTreeMap<String, Price>,
        remote_embedder: bool,
    ) -> UsageLog {
        UsageLog {
            catalog,
            prices,
            remote_embedder,
        }
    }

    /// Cost in US dollars of a call to `model` (0 for models without a price). Embedder ids
    /// (`openai:NAME`) are priced under NAME.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let name = model.strip_prefix("openai:").unwrap_or(model);
        self.prices
            .get(name)
            .map(|p| p.cost(prompt_tokens, completion_tokens))
            .unwrap_or(0.0)
    }

    /// Store records now (the answer path awaits this before `done`, so `/v1/usage` agrees
    /// with what the client has seen). Failures are logged, never raised.
    pub async fn record(&self, rows: &[UsageRecord]) {
        if let Err(e) = self.catalog.record_usage(rows).await {
            tracing::warn!(error = %e, "usage not recorded");
        }
    }

    /// A remote embedding call (in the background). `tokens`: the texts' token count.
    pub fn embed_call<T>(
        &self,
        collection: &str,
        model: &str,
        tokens: u64,
        elapsed: Duration,
        result: &crate::models::Result<T>,
    ) {
        if !self.remote_embedder {
            return;
        }
        let row = UsageRecord {
            ts: now_ms(),
            request_id: None,
            collection: Some(collection.to_string()),
            task: "embed".into(),
            model: model.to_string(),
            prompt_tokens: tokens,
            completion_tokens: 0,
            latency_ms: Some(elapsed.as_millis() as u64),
            first_token_ms: None,
            retries: None,
            cache_hit: false,
            outcome: match result {
                Ok(_) => "ok".into(),
                Err(e) => e.code().into(),
            },
            cost_usd: self.cost(model, tokens, 0),
            key_id: None,
        };
        let catalog = self.catalog.clone();
        tokio::spawn(async move {
            if let Err(e) = catalog.record_usage(&[row]).await {
                tracing::warn!(error = %e, "usage not recorded");
            }
        });
    }
}
