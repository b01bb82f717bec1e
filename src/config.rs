//! Layered configuration: defaults in code < `kb.toml` < `KB_*` environment < command-line flags.
//! Unknown keys are errors. Secrets are masked when printed.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub embedding: EmbeddingConfig,
    pub llm: LlmConfig,
    pub store: StoreConfig,
    pub chunking: ChunkingConfig,
    pub retrieval: RetrievalConfig,
    pub limits: LimitsConfig,
    pub jobs: JobsConfig,
    pub log: LogConfig,
    pub cache: CacheConfig,
    pub conversations: ConversationsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            data_dir: PathBuf::from("./data"),
            models_dir: PathBuf::from("./models"),
            embedding: EmbeddingConfig::default(),
            llm: LlmConfig::default(),
            store: StoreConfig::default(),
            chunking: ChunkingConfig::default(),
            retrieval: RetrievalConfig::default(),
            limits: LimitsConfig::default(),
            jobs: JobsConfig::default(),
            log: LogConfig::default(),
            cache: CacheConfig::default(),
            conversations: ConversationsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub addr: String,
    /// Seconds between `: keep-alive` comments on SSE streams.
    pub keep_alive_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "127.0.0.1:8080".into(),
            keep_alive_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// `local` (weights from `models_dir`) or `openai` (any OpenAI-compatible API).
    pub provider: EmbeddingProvider,
    /// Model name; for `local`, a directory under `models_dir` or an absolute path.
    pub model: String,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// Vector dimension for remote models (local models report their own).
    pub dim: Option<usize>,
    /// Chunks per embedding call during ingestion.
    pub batch_size: usize,
    /// Threads the local embedder may use (0 = all cores).
    pub threads: usize,
    /// Local engine: `native` (kb's encoder) or `candle`.
    pub engine: crate::models::local_embed::Engine,
    /// Native engine: `f32`, or `int8` linear layers (faster; vectors differ slightly, so an
    /// int8 embedder has its own model id and cannot search collections embedded in f32).
    pub precision: EmbeddingPrecision,
    /// Remote embedder: requests and tokens per minute (0 = unlimited).
    pub rpm: u32,
    pub tpm: u32,
    /// Remote embedder: requests in flight at once, and calls waiting per priority.
    pub max_concurrency: usize,
    pub queue_size: usize,
    /// Remote embedder: one request carries at most this many texts and tokens.
    pub max_batch_texts: usize,
    pub max_batch_tokens: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            provider: EmbeddingProvider::Local,
            model: "all-MiniLM-L6-v2".into(),
            base_url: None,
            api_key: None,
            dim: None,
            batch_size: 8,
            threads: 0,
            engine: crate::models::local_embed::Engine::Native,
            precision: EmbeddingPrecision::F32,
            rpm: 0,
            tpm: 0,
            max_concurrency: 4,
            queue_size: 64,
            max_batch_texts: 64,
            max_batch_tokens: 8192,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// `extractive` (no model: quotes the best sentences), `local` (a GGUF instruct model run
    /// in-process by llama.cpp) or `openai` (any OpenAI-compatible API).
    pub provider: LlmProvider,
    /// For `openai`, the model name. For `local`, a `.gguf` file, or a directory (absolute or
    /// under `models_dir`) holding one; default `SmolLM2-135M-Instruct`.
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// The model's context window, in tokens.
    pub context_window: usize,
    /// Tokens reserved for the answer.
    pub max_answer_tokens: usize,
    pub temperature: f32,
    /// Threads of the local generator (`provider = "local"`), apart from the embedder's: for
    /// generating tokens (memory-bound; one thread keeps its speed when another process takes
    /// a core, two collapse) and for reading the prompt (compute-bound).
    pub threads: usize,
    pub prefill_threads: usize,
    /// The local model's context (its KV cache) in tokens, prompt plus answer; it caps
    /// `context_window`. Reading the prompt dominates the wait for the first token, and a
    /// 135M model does not use 8k tokens of sources well.
    pub local_context_tokens: usize,
    /// What to do with a generated answer that has a sentence its cited sources do not
    /// support: `fallback` (replace it with the extractive answer), `decline`, `flag` (keep it,
    /// report it in `done.guard`) or `off`.
    pub guard: GuardMode,
    /// Least share of a sentence's content words its sources must contain.
    pub guard_min_support: f64,
    pub connect_timeout_secs: f64,
    pub first_token_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub total_timeout_secs: f64,
    /// Requests and tokens per minute for each chat model (0 = unlimited).
    pub rpm: u32,
    pub tpm: u32,
    /// Chat calls in flight at once per model (streams hold their slot until they end), and
    /// calls waiting; beyond that a question is refused with 429 and Retry-After.
    pub max_concurrency: usize,
    pub queue_size: usize,
    /// Longest a question waits for a slot (chat or embedding) before it is refused.
    pub queue_timeout_secs: f64,
    /// Retries of a retryable failure (every remote call, embeddings included).
    pub max_retries: u32,
    /// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)].
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// A `Retry-After` longer than this fails the call at once.
    pub retry_after_cap_secs: f64,
    /// Consecutive failures that open an upstream's circuit breaker, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: f64,
    /// Chat models tried in order when the primary's breaker is open or it fails before its
    /// first token (same base URL and key).
    pub fallback_models: Vec<String>,
    /// Price per model name, for the cost in `done.usage` and `/v1/usage`. Models without an
    /// entry cost 0.
    pub prices: BTreeMap<String, Price>,
    /// Which model does which task (`rewrite`, `summarize`); unset tasks use `llm.model`.
    pub routes: RoutesConfig,
}

/// Where embeddings come from (`embedding.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingProvider {
    /// A BERT-family model from `models_dir`, run in-process.
    Local,
    /// Any OpenAI-compatible embeddings API.
    Openai,
}

/// The native encoder's linear layers (`embedding.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingPrecision {
    F32,
    /// Faster; vectors differ slightly, so an int8 embedder has its own model id.
    Int8,
}

impl From<EmbeddingPrecision> for kb_bert::Precision {
    fn from(p: EmbeddingPrecision) -> Self {
        match p {
            EmbeddingPrecision::F32 => kb_bert::Precision::F32,
            EmbeddingPrecision::Int8 => kb_bert::Precision::Int8,
        }
    }
}

/// Who answers (`llm.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    /// No model: the best sentences of the sources, quoted.
    Extractive,
    /// A GGUF instruct model run in-process by llama.cpp.
    Local,
    /// Any OpenAI-compatible chat API.
    Openai,
}

impl LlmProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmProvider::Extractive => "extractive",
            LlmProvider::Local => "local",
            LlmProvider::Openai => "openai",
        }
    }
}

/// Where vectors live (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Qdrant Edge, in-process, under `data_dir`.
    Edge,
}

/// What the grounding guard does with a generated answer that has a sentence its cited sources
/// do not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Replace the answer with the extractive answer.
    Fallback,
    /// Replace it with the decline sentence.
    Decline,
    /// Keep it; report the sentences in `done.guard`.
    Flag,
    /// Do not check.
    Off,
}

/// US dollars per 1000 tokens.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.prompt_per_1k
            + completion_tokens as f64 * self.completion_per_1k)
            / 1000.0
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Rewrites a follow-up into a standalone question (a cheap model is enough).
    pub rewrite: Option<String>,
    /// Summarises older conversation turns (a cheap model is enough).
    pub summarize: Option<String>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            provider: LlmProvider::Extractive,
            model: None,
            base_url: None,
            api_key: None,
            context_window: 8192,
            max_answer_tokens: 768,
            temperature: 0.1,
            threads: 1,
            prefill_threads: 2,
            local_context_tokens: 2560,
            guard: GuardMode::Fallback,
            guard_min_support: 0.6,
            connect_timeout_secs: 5.0,
            first_token_timeout_secs: 30.0,
            idle_timeout_secs: 20.0,
            total_timeout_secs: 120.0,
            rpm: 0,
            tpm: 0,
            max_concurrency: 16,
            queue_size: 64,
            queue_timeout_secs: 30.0,
            max_retries: 3,
            backoff_base_ms: 250,
            backoff_cap_ms: 8_000,
            retry_after_cap_secs: 60.0,
            breaker_failures: 5,
            breaker_cooldown_secs: 30.0,
            fallback_models: Vec::new(),
            prices: BTreeMap::new(),
            routes: RoutesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `edge` (Qdrant Edge, in-process, under `data_dir`).
    pub backend: StoreBackend,
    pub url: Option<String>,
    /// Seconds of ingestion quiet before the HNSW index is (re)built in the background.
    pub optimize_after_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Edge,
            url: None,
            optimize_after_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingConfig {
    /// Largest chunk in embedder tokens; 0 = the embedder's maximum input.
    pub max_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig {
            max_tokens: 0,
            overlap_tokens: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    pub top_k: usize,
    /// `hybrid` (dense + BM25, fused with RRF), `dense` or `sparse` (`bm25`).
    pub mode: crate::store::SearchMode,
    /// Candidates fetched from each retriever before fusion.
    pub candidates: usize,
    /// Reciprocal-rank fusion: a hit at rank r adds `weight / (rrf_k + r)`.
    pub rrf_k: f32,
    pub dense_weight: f32,
    pub sparse_weight: f32,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            top_k: 8,
            mode: crate::store::SearchMode::Hybrid,
            candidates: 50,
            // Measured on the public eval set against k=60 with equal weights: MRR 0.526 ->
            // 0.576, hit@1 0.392 -> 0.471, hit@10 0.765 -> 0.804, hit@5 unchanged, and fewer
            // false declines. BM25 is the stronger retriever on technical text for MiniLM.
            rrf_k: 20.0,
            dense_weight: 1.0,
            sparse_weight: 1.5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_upload_bytes: u64,
    pub max_files_per_request: usize,
    pub max_pages: usize,
    pub extract_timeout_secs: u64,
    pub extract_memory_mb: u64,
    pub max_question_chars: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_upload_bytes: 104_857_600,
            max_files_per_request: 100,
            max_pages: 5_000,
            extract_timeout_secs: 120,
            extract_memory_mb: 2048,
            max_question_chars: 4_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Documents extracted and chunked concurrently.
    pub workers: usize,
    /// Attempts before a job is marked failed.
    pub max_attempts: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            workers: 2,
            max_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// Log document and prompt text (off by default).
    pub content: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            content: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The exact answer cache (same normalised question, collection version, model, prompt
    /// and retrieval parameters -> the same answer).
    pub enabled: bool,
    /// Seconds a cached answer is served.
    pub ttl_secs: u64,
    /// Entries of the in-memory answer cache (least recently used go first), and of the
    /// semantic index.
    pub max_entries: usize,
    /// `redis://host:port/db`: answers are cached in Redis (shared by kb replicas) instead of
    /// in memory.
    pub redis_url: Option<String>,
    /// The semantic cache: a question within `semantic_max_distance` (cosine distance of the
    /// embedder's vectors) of a cached one gets its answer. Off: see ARCHITECTURE.md for the
    /// measured false hits.
    pub semantic: bool,
    pub semantic_max_distance: f32,
    /// Reuse chunk embeddings by (embedder, content hash) when re-indexing.
    pub embeddings: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_secs: 86_400,
            max_entries: 10_000,
            redis_url: None,
            semantic: false,
            semantic_max_distance: 0.05,
            embeddings: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationsConfig {
    /// Tokens the conversation may take in a prompt (summary + verbatim turns); older turns are
    /// summarised beyond it.
    pub history_tokens: usize,
    /// The last turns always sent verbatim.
    pub keep_turns: usize,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        ConversationsConfig {
            history_tokens: 1024,
            keep_turns: 2,
        }
    }
}

/// Overrides from command-line flags, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub addr: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Load the layered configuration. `file`: explicit path (`--config`), else `KB_CONFIG`,
    /// else `./kb.toml` if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let env_file = std::env::var_os("KB_CONFIG").map(PathBuf::from);
        let path = file.map(Path::to_path_buf).or(env_file);
        match path {
            Some(p) => {
                if !p.exists() {
                    anyhow::bail!("config file {} does not exist", p.display());
                }
                fig = fig.merge(Toml::file(p));
            }
            None => {
                if Path::new("kb.toml").exists() {
                    fig = fig.merge(Toml::file("kb.toml"));
                }
            }
        }
        fig = fig.merge(
            Env::prefixed("KB_")
                .ignore(&["CONFIG", "LOG"])
                .split("__")
                .lowercase(true),
        );
        if let Some(a) = &overrides.addr {
            fig = fig.merge(("server.addr", a));
        }
        if let Some(d) = &overrides.data_dir {
            fig = fig.merge(("data_dir", d));
        }
        let cfg: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

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

    /// The configuration as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        for key in [&mut c.embedding.api_key, &mut c.llm.api_key] {
            if key.is_some() {
                *key = Some("********".into());
            }
        }
        // A Redis URL may carry a password.
        if let Some(u) = &mut c.cache.redis_url {
            if let Some((scheme, rest)) = u.split_once("://") {
                if let Some((_, host)) = rest.rsplit_once('@') {
                    *u = format!("{scheme}://********@{host}");
                }
            }
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }

    /// Timeouts and retry rules of every remote model call.
    pub fn model_policy(&self) -> crate::models::governor::Policy {
        let l = &self.llm;
        let secs = std::time::Duration::from_secs_f64;
        crate::models::governor::Policy {
            connect: secs(l.connect_timeout_secs),
            first_token: secs(l.first_token_timeout_secs),
            idle: secs(l.idle_timeout_secs),
            total: secs(l.total_timeout_secs),
            max_retries: l.max_retries,
            backoff_base: std::time::Duration::from_millis(l.backoff_base_ms),
            backoff_cap: std::time::Duration::from_millis(l.backoff_cap_ms),
            retry_after_cap: secs(l.retry_after_cap_secs),
        }
    }

    /// The governor's limits for each chat model (`chat`) or the remote embedder.
    pub fn model_limits(&self, chat: bool) -> crate::models::governor::Limits {
        let l = &self.llm;
        let e = &self.embedding;
        let secs = std::time::Duration::from_secs_f64;
        let (rpm, tpm, max_concurrency, queue_size) = if chat {
            (l.rpm, l.tpm, l.max_concurrency, l.queue_size)
        } else {
            (e.rpm, e.tpm, e.max_concurrency, e.queue_size)
        };
        crate::models::governor::Limits {
            rpm,
            tpm,
            max_concurrency,
            queue_size,
            queue_timeout: secs(l.queue_timeout_secs),
            breaker_failures: l.breaker_failures,
            breaker_cooldown: secs(l.breaker_cooldown_secs),
        }
    }

    pub fn ingest_limits(&self) -> kb_ingest::Limits {
        kb_ingest::Limits {
            max_bytes: self.limits.max_upload_bytes as usize,
            max_pages: self.limits.max_pages,
            max_time: std::time::Duration::from_secs(self.limits.extract_timeout_secs),
            max_memory_bytes: self.limits.extract_memory_mb * 1024 * 1024,
            ..kb_ingest::Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_apply_in_order_and_unknown_keys_fail() {
        Jail::expect_with(|jail| {
            // Only what this test sets (the test runner may have KB_TEST_* of its own).
            jail.clear_env();
            jail.create_file(
                "kb.toml",
                "data_dir = \"/from/file\"\n[retrieval]\ntop_k = 5\n[llm]\napi_key = \"sk-secret\"\n",
            )?;
            jail.set_env("KB_RETRIEVAL__TOP_K", "7");
            let cfg = Config::load(
                None,
                &Overrides {
                    addr: Some("127.0.0.1:9999".into()),
                    data_dir: None,
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(cfg.data_dir, PathBuf::from("/from/file"));
            assert_eq!(cfg.retrieval.top_k, 7, "env beats file");
            assert_eq!(cfg.server.addr, "127.0.0.1:9999", "flag beats all");
            let shown = cfg.to_masked_toml();
            assert!(!shown.contains("sk-secret") && shown.contains("********"));

            jail.set_env("KB_RETRIEVAL__TOPK", "3");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("topk"), "{err}");
            Ok(())
        });
    }
}
