//! What serde cannot check: values in range, and settings that only make sense together.

use super::{Config, EmbeddingPrecision, LlmProvider};

impl Config {
    /// Refuse values out of range and settings that contradict each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.llm.provider == LlmProvider::Openai && self.llm.model.is_none() {
            anyhow::bail!("llm.model is required when llm.provider is `openai`");
        }
        if self.retrieval.top_k == 0 || self.retrieval.top_k > 100 {
            anyhow::bail!("retrieval.top_k must be between 1 and 100");
        }
        let r = &self.retrieval;
        if !(r.rrf_k >= 0.0 && r.dense_weight >= 0.0 && r.sparse_weight >= 0.0)
            || r.dense_weight + r.sparse_weight <= 0.0
        {
            anyhow::bail!(
                "retrieval.rrf_k and the fusion weights must be >= 0, with one weight > 0"
            );
        }
        if self.embedding.engine == crate::models::local_embed::Engine::Candle
            && self.embedding.precision != EmbeddingPrecision::F32
        {
            anyhow::bail!("embedding.precision = int8 needs embedding.engine = native");
        }
        if !(0.0..=1.0).contains(&self.llm.guard_min_support) {
            anyhow::bail!("llm.guard_min_support must be between 0 and 1");
        }
        if self.embedding.batch_size == 0 {
            anyhow::bail!("embedding.batch_size must be at least 1");
        }
        let e = &self.embedding;
        let l = &self.llm;
        for (name, v) in [
            ("embedding.max_concurrency", e.max_concurrency),
            ("embedding.queue_size", e.queue_size),
            ("embedding.max_batch_texts", e.max_batch_texts),
            ("embedding.max_batch_tokens", e.max_batch_tokens),
            ("llm.max_concurrency", l.max_concurrency),
            ("llm.queue_size", l.queue_size),
            ("llm.breaker_failures", l.breaker_failures as usize),
        ] {
            if v == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        for (name, v) in [
            ("llm.connect_timeout_secs", l.connect_timeout_secs),
            ("llm.first_token_timeout_secs", l.first_token_timeout_secs),
            ("llm.idle_timeout_secs", l.idle_timeout_secs),
            ("llm.total_timeout_secs", l.total_timeout_secs),
            ("llm.queue_timeout_secs", l.queue_timeout_secs),
        ] {
            if !(v > 0.0 && v < 1e6) {
                anyhow::bail!("{name} must be a positive number of seconds");
            }
        }
        for (name, v) in [
            ("llm.retry_after_cap_secs", l.retry_after_cap_secs),
            ("llm.breaker_cooldown_secs", l.breaker_cooldown_secs),
        ] {
            if !(0.0..1e6).contains(&v) {
                anyhow::bail!("{name} must be a number of seconds >= 0");
            }
        }
        if l.backoff_base_ms > l.backoff_cap_ms {
            anyhow::bail!("llm.backoff_base_ms must not exceed llm.backoff_cap_ms");
        }
        let c = &self.cache;
        if c.ttl_secs == 0 || c.max_entries == 0 {
            anyhow::bail!("cache.ttl_secs and cache.max_entries must be at least 1");
        }
        if !(0.0..=2.0).contains(&c.semantic_max_distance) {
            anyhow::bail!("cache.semantic_max_distance is a cosine distance, between 0 and 2");
        }
        if let Some(u) = &c.redis_url {
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
            {
                anyhow::bail!("cache.redis_url must start with redis://, rediss:// or unix://");
            }
        }
        for (model, p) in &self.llm.prices {
            if !(p.prompt_per_1k >= 0.0 && p.completion_per_1k >= 0.0) {
                anyhow::bail!("llm.prices.\"{model}\": prices must be >= 0");
            }
        }
        if !(1..=256).contains(&self.llm.threads) || !(1..=256).contains(&self.llm.prefill_threads)
        {
            anyhow::bail!("llm.threads and llm.prefill_threads must be between 1 and 256");
        }
        if self.llm.provider == LlmProvider::Local
            && self.llm.local_context_tokens < self.llm.max_answer_tokens + 512
        {
            anyhow::bail!(
                "llm.local_context_tokens ({}) must leave at least 512 tokens beside llm.max_answer_tokens ({})",
                self.llm.local_context_tokens,
                self.llm.max_answer_tokens
            );
        }
        let r = &self.llm.routes;
        if self.llm.provider != LlmProvider::Openai
            && (r.rewrite.is_some() || r.summarize.is_some())
        {
            anyhow::bail!("llm.routes needs llm.provider = `openai`");
        }
        if self.conversations.history_tokens < 64 {
            anyhow::bail!("conversations.history_tokens must be at least 64");
        }
        Ok(())
    }
}
