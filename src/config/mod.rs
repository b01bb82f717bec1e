//! Layered configuration: defaults in code < `kb.toml` < `KB_*` environment < command-line flags.
//! Unknown keys are errors. Secrets are masked when printed.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod models;
mod validate;

pub use models::*;

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
    pub auth: AuthConfig,
}

/// `auth.mode`: who may call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who can reach the port (allowed only on a loopback address, unless
    /// `auth.allow_insecure`).
    None,
    /// `Authorization: Bearer KEY` on every `/v1` route (`kb keys create`).
    Keys,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Serve without keys on a non-loopback address anyway (anyone who can reach it can read,
    /// delete and spend the model's tokens).
    pub allow_insecure: bool,
    /// With keys: `/metrics` needs a key too (any valid key).
    pub protect_metrics: bool,
    /// With keys: `/openapi.json` needs a key too.
    pub protect_openapi: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            allow_insecure: false,
            protect_metrics: true,
            protect_openapi: false,
        }
    }
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
            auth: AuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub addr: String,
    /// Seconds between `: keep-alive` comments on SSE streams.
    pub keep_alive_secs: u64,
    /// A request's headers must arrive within this, and so must the next request on a kept-alive
    /// connection.
    pub header_timeout_secs: u64,
    /// A request body may go this long without sending anything...
    pub body_timeout_secs: u64,
    /// ...and must keep up this average rate (bytes per second), or it gets 408.
    pub body_min_bytes_per_sec: u64,
    /// Open connections at most (kept to half the open-file limit). At the cap the oldest idle
    /// connection is closed for a new one; a new one is refused only when all are busy.
    pub max_connections: usize,
    /// On SIGTERM: seconds that answers in progress get to finish before their streams end with
    /// a `shutting_down` error.
    pub shutdown_grace_secs: u64,
    /// Host names (with or without a port) requests may name in `Host`; empty: `localhost`,
    /// `127.0.0.1` and `[::1]` when listening on loopback (against DNS rebinding), any otherwise.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) besides the server's own whose pages may send
    /// state-changing requests (uploads, deletes, questions) from a browser.
    pub allowed_origins: Vec<String>,
}

impl ServerConfig {
    /// Whether `addr` is a loopback address (only this machine can connect).
    pub fn listens_on_loopback(&self) -> bool {
        match self.addr.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip().is_loopback(),
            Err(_) => self.addr.starts_with("localhost:"),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "127.0.0.1:8080".into(),
            keep_alive_secs: 10,
            header_timeout_secs: 15,
            body_timeout_secs: 15,
            body_min_bytes_per_sec: 1024,
            max_connections: 4096,
            shutdown_grace_secs: 10,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
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
    /// Embed each chunk with its heading path (title > section > ...) before its text.
    pub embed_headings: bool,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig {
            max_tokens: 0,
            overlap_tokens: 32,
            embed_headings: true,
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
    /// Also search each part of a multi-part question and fuse the rankings. Off: measured on
    /// the public eval set it gained nothing (docs/NOTES.md, "Questions").
    pub split_questions: bool,
    /// From this many chunks, a question word the collection never uses makes the extractive
    /// answer a decline even when it is no name (below it, only names count: a small
    /// collection lacks most common words).
    pub unknown_word_min_chunks: usize,
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
            split_questions: false,
            // Public set: correct declines 0.556 -> 0.667, false declines unchanged.
            unknown_word_min_chunks: 2_000,
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
    /// A PDF whose extraction finishes no page for this long is stopped early.
    pub extract_stall_secs: u64,
    pub extract_memory_mb: u64,
    pub max_question_chars: usize,
    /// Below this much free space on the data disk kb is read-only (uploads and deletes get 507,
    /// jobs wait); the index writes through memory maps and must never meet a full disk.
    pub min_free_disk_mb: u64,
    /// Seconds between checks of the free space.
    pub disk_check_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_upload_bytes: 104_857_600,
            max_files_per_request: 100,
            max_pages: 5_000,
            extract_timeout_secs: 120,
            extract_stall_secs: 30,
            extract_memory_mb: 2048,
            max_question_chars: 4_000,
            min_free_disk_mb: 256,
            disk_check_secs: 5,
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
    /// embedder's vectors) of a cached one gets its answer. Off: see docs/NOTES.md for the
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
    /// Turns one conversation may have; a question beyond it gets 409 `conversation_full`.
    pub max_turns: usize,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        ConversationsConfig {
            history_tokens: 1024,
            keep_turns: 2,
            max_turns: 1000,
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
            // Not configuration: the config file, the log filter, the CLI's key, and the
            // embedding engine's measuring switches (`KB_BERT_PROFILE`, `KB_BERT_NO_SMALL`).
            Env::prefixed("KB_")
                .ignore(&["CONFIG", "LOG", "API_KEY", "BERT_PROFILE", "BERT_NO_SMALL"])
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
            max_stall: std::time::Duration::from_secs(self.limits.extract_stall_secs),
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
