//! The model sections: `[embedding]` and `[llm]`, and the closed sets of values they take.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Remote embedder: requests in flight at once. Calls waiting per priority (local embedder:
    /// questions waiting; one more is refused with 429 and Retry-After).
    pub max_concurrency: usize,
    pub queue_size: usize,
    /// Local embedder: a question that would wait longer than this (estimated from the queue
    /// ahead) is refused with 429 and Retry-After.
    pub max_wait_ms: u64,
    /// Local embedder: an ingestion batch runs this many texts at a time, with questions that
    /// arrived meanwhile served in between.
    pub bulk_slice: usize,
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
            max_wait_ms: 1000,
            bulk_slice: 2,
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
