//! kb: a retrieval-augmented knowledge-base server.
//!
//! `Core::open(config)` wires the parts (catalog, store, models, jobs, query engine);
//! `App::build(config)` adds the HTTP router on top. The CLI and the tests use both.

pub mod api;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod disk;
mod documents;
pub mod error;
pub mod eval;
pub mod info;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod query;
pub mod redis_client;
pub mod serve;
pub mod store;
pub mod usage;

use anyhow::Context;
use catalog::Catalog;
use config::Config;
pub use documents::{UploadError, UploadResult};
use jobs::{Blobs, Ingestor, JobQueue};
use models::{ChatModel, Embedder};
use query::{QueryEngine, Visibility};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::VectorStore;

/// Exclusive use of a data directory (Qdrant Edge shards allow one process).
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let path = dir.join("kb.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            anyhow::bail!(
                "data dir {} is in use by another kb process (use `--server URL` to talk to it)",
                dir.display()
            );
        }
        Ok(DataDirLock { _file: file })
    }
}

pub struct Core {
    pub config: Config,
    pub catalog: Catalog,
    pub store: Arc<dyn VectorStore>,
    pub embedder: Arc<dyn Embedder>,
    pub ingestor: Arc<Ingestor>,
    pub queue: JobQueue,
    pub query: Arc<QueryEngine>,
    pub metrics: Arc<metrics::Metrics>,
    /// Every remote model call goes through it (limits, queues, breakers; model metrics).
    pub governor: Arc<models::governor::Governor>,
    pub tmp_dir: PathBuf,
    /// The phases of a graceful stop (`kb serve` cancels them).
    pub stopping: Stopping,
    /// The data disk's free space: below its reserve kb is read-only.
    pub disk: Arc<disk::DiskGuard>,
    /// The install's secret that API keys are hashed with.
    pub auth_secret: Vec<u8>,
    /// Held while a collection is deleted, and while an upload makes sure its collection exists.
    collections_lock: tokio::sync::Mutex<()>,
    _lock: DataDirLock,
}

/// The phases of a graceful stop, for the work that must end in time.
#[derive(Clone, Default)]
pub struct Stopping {
    /// SIGTERM arrived: streams that never end on their own (a job's events) end now, with a
    /// `shutting_down` error so that their clients reconnect elsewhere.
    pub draining: tokio_util::sync::CancellationToken,
    /// The grace is over: answers still streaming end with a `shutting_down` error.
    pub closing: tokio_util::sync::CancellationToken,
}

fn build_embedder(
    cfg: &Config,
    governor: &models::governor::Governor,
) -> anyhow::Result<Arc<dyn Embedder>> {
    let e = &cfg.embedding;
    match e.provider {
        config::EmbeddingProvider::Local => {
            let p = Path::new(&e.model);
            let dir = if p.is_absolute() || p.exists() {
                p.to_path_buf()
            } else {
                cfg.models_dir.join(&e.model)
            };
            Ok(Arc::new(models::local_embed::LocalEmbedder::load_with(
                &dir,
                &e.model,
                e.engine,
                e.threads,
                e.precision.into(),
                models::local_embed::QueueLimits {
                    max_waiting: e.queue_size,
                    max_wait: std::time::Duration::from_millis(e.max_wait_ms),
                    bulk_slice: e.bulk_slice,
                },
            )?))
        }
        config::EmbeddingProvider::Openai => {
            let base = e
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let dim = e
                .dim
                .context("embedding.dim is required for the openai provider")?;
            let client = models::openai::Client::new(&base, e.api_key.clone(), cfg.model_policy())?;
            Ok(Arc::new(models::openai::OpenAiEmbedder::new(
                client,
                &e.model,
                dim,
                governor,
                cfg.model_limits(false),
                e.max_batch_texts,
                e.max_batch_tokens,
            )))
        }
    }
}

/// The chat models by task: (answer, rewrite, summarize). Tasks without a route use the answer
/// model; all share one client (one connection pool) per base URL, and every call goes through
/// the governor.
type ChatModels = (
    Option<Arc<dyn ChatModel>>,
    Option<Arc<dyn ChatModel>>,
    Option<Arc<dyn ChatModel>>,
);

fn build_chat(cfg: &Config, governor: &models::governor::Governor) -> anyhow::Result<ChatModels> {
    let l = &cfg.llm;
    match l.provider {
        config::LlmProvider::Extractive => Ok((None, None, None)),
        #[cfg(not(feature = "local-llm"))]
        config::LlmProvider::Local => anyhow::bail!(
            "llm.provider = \"local\" needs kb built with the `local-llm` feature (the default)"
        ),
        #[cfg(feature = "local-llm")]
        config::LlmProvider::Local => {
            let name = l
                .model
                .clone()
                .unwrap_or_else(|| models::local_chat::DEFAULT_LOCAL_MODEL.into());
            let path = models::local_chat::resolve_model_path(&cfg.models_dir, &name)?;
            let chat = models::local_chat::LocalChat::load(
                &path,
                models::local_chat::LocalChatOptions {
                    threads: l.threads,
                    prefill_threads: l.prefill_threads,
                    context_tokens: l.local_context_tokens.min(l.context_window),
                    queue_size: l.queue_size,
                    flash_attention: Some(false),
                },
            )
            .with_context(|| format!("loading the local model {}", path.display()))?;
            tracing::info!(model = %chat.model_path().display(), context_tokens = chat.context_tokens(),
                threads = l.threads, prefill_threads = l.prefill_threads, "local generator loaded");
            let chat: Arc<dyn ChatModel> = Arc::new(chat);
            Ok((Some(chat.clone()), Some(chat.clone()), Some(chat)))
        }
        config::LlmProvider::Openai => {
            let base = l
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let client = models::openai::Client::new(&base, l.api_key.clone(), cfg.model_policy())?;
            let model = l.model.clone().context("llm.model is required")?;
            let chat = |m: &str| {
                models::openai::OpenAiChat::new(client.clone(), m, governor, cfg.model_limits(true))
            };
            let answer: Arc<dyn ChatModel> = if l.fallback_models.is_empty() {
                Arc::new(chat(&model))
            } else {
                let models = std::iter::once(&model)
                    .chain(&l.fallback_models)
                    .map(|m| chat(m))
                    .collect();
                Arc::new(models::openai::FallbackChat::new(models))
            };
            let route = |m: &Option<String>| -> Arc<dyn ChatModel> {
                match m {
                    Some(m) if *m != model => Arc::new(chat(m)),
                    _ => answer.clone(),
                }
            };
            let rewrite = route(&l.routes.rewrite);
            let summarize = route(&l.routes.summarize);
            Ok((Some(answer), Some(rewrite), Some(summarize)))
        }
    }
}

/// The binary that extracts documents in a child process (`kb __extract`); default: this
/// process's own executable, which is `kb`.
static EXTRACTOR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// For programs that embed kb as a library (tests among them): the `kb` binary to run
/// extractions with, since this process's own executable is not `kb`. Set it before
/// `Core::open`; only the first call counts.
pub fn set_extractor_binary(path: impl Into<PathBuf>) {
    let _ = EXTRACTOR.set(path.into());
}

impl Core {
    pub async fn open(config: Config) -> anyhow::Result<Arc<Core>> {
        let data = config.data_dir.clone();
        let lock = DataDirLock::acquire(&data)?;
        let tmp_dir = data.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir)?;
        let catalog = Catalog::open(&data.join("catalog.db"))
            .await
            .context("opening the catalog")?;
        let store: Arc<dyn VectorStore> =
            Arc::new(store::edge::EdgeStore::new(&data.join("index"))?);
        // With a Redis URL the rate-limit buckets are shared by every replica using it.
        let buckets: Arc<dyn models::governor::BucketStore> = match &config.cache.redis_url {
            Some(url) => Arc::new(
                models::redis_buckets::RedisBuckets::connect(url)
                    .await
                    .context("connecting to Redis for the rate-limit buckets (cache.redis_url)")?,
            ),
            None => Arc::new(models::governor::LocalBuckets::default()),
        };
        let governor = Arc::new(models::governor::Governor::with_store(
            config.model_policy(),
            buckets,
        ));
        let embedder = build_embedder(&config, &governor)?;
        let (chat, rewrite_chat, summarize_chat) = build_chat(&config, &governor)?;
        // A local model's context is what kb allocated for it, which may be less than asked.
        let context_window = chat
            .as_ref()
            .and_then(|c| c.context_window())
            .map_or(config.llm.context_window, |w| {
                w.min(config.llm.context_window)
            });
        let visibility = Arc::new(Visibility::default());

        let auth_secret = auth::install_secret(&data).context("the install's key secret")?;
        let disk = disk::DiskGuard::new(&data, config.limits.min_free_disk_mb << 20);
        if disk.free() < disk::OPEN_FLOOR {
            anyhow::bail!(
                "the data disk at {} has {} MiB free: kb needs at least {} MiB to open its index (it writes through memory maps, which fail hard on a full disk); free some space and start again",
                data.display(),
                disk.free() >> 20,
                disk::OPEN_FLOOR >> 20
            );
        }
        disk.watch(std::time::Duration::from_secs(
            config.limits.disk_check_secs.max(1),
        ));
        // Open the shards of existing collections now: a mismatch or a lock is a start-up error.
        for c in catalog.collections().await? {
            store
                .ensure_collection(&store::CollectionSpec {
                    name: c.name.clone(),
                    dim: c.dim,
                    model: c.embed_model.clone(),
                })
                .await?;
        }

        let max_input = embedder.max_input_tokens();
        let max_tokens = match config.chunking.max_tokens {
            0 => max_input.saturating_sub(2),
            n => n.min(max_input.saturating_sub(2)),
        };
        let exe = match EXTRACTOR.get() {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating the kb binary")?,
        };
        let pdf_args = vec![
            "__extract".to_string(),
            "--max-pages".to_string(),
            config.limits.max_pages.to_string(),
        ];
        let metrics = Arc::new(metrics::Metrics::default());
        let mut ingestor = Ingestor::new(
            catalog.clone(),
            store.clone(),
            embedder.clone(),
            visibility.clone(),
            Blobs {
                dir: data.join("blobs"),
            },
            config.ingest_limits(),
            kb_ingest::ChunkConfig {
                max_tokens,
                overlap_tokens: config.chunking.overlap_tokens,
            },
            (exe, pdf_args),
            config.embedding.batch_size,
            config.jobs.max_attempts,
        );
        ingestor.gen_counter =
            models::generation_counter(config.llm.provider.as_str(), config.llm.model.as_deref());
        let usage = Arc::new(usage::UsageLog::new(
            catalog.clone(),
            config.llm.prices.clone(),
            config.embedding.provider != config::EmbeddingProvider::Local,
        ));
        ingestor.embedding_cache = config.cache.embeddings;
        ingestor.embed_headings = config.chunking.embed_headings;
        ingestor.usage = Some(usage.clone());
        ingestor.metrics = Some(metrics.clone());
        let gen_counter: Arc<dyn kb_ingest::TokenCounter + Send + Sync> = ingestor
            .gen_counter
            .clone()
            .unwrap_or_else(|| Arc::new(models::ApproxCounter));
        let c = &config.cache;
        let ttl = std::time::Duration::from_secs(c.ttl_secs);
        let cache = match (&c.redis_url, c.enabled) {
            (_, false) => None,
            (Some(url), true) => Some(Arc::new(
                cache::AnswerCache::redis(
                    url,
                    c.max_entries,
                    ttl,
                    c.semantic,
                    c.semantic_max_distance,
                )
                .await
                .context("connecting to the answer cache (cache.redis_url)")?,
            )),
            (None, true) => Some(Arc::new(cache::AnswerCache::memory(
                c.max_entries,
                ttl,
                c.semantic,
                c.semantic_max_distance,
            ))),
        };
        ingestor.disk = Some(disk.clone());
        let ingestor = Arc::new(ingestor);
        let queue = ingestor.start(config.jobs.workers);
        // What queries must not see is known before the first request, whatever the disk.
        ingestor.hide_unfinished().await?;
        // The writes of recovery (deletions to finish, jobs to requeue) wait for room.
        let recovery = {
            let (catalog, store, ingestor, queue) = (
                catalog.clone(),
                store.clone(),
                ingestor.clone(),
                queue.clone(),
            );
            async move {
                // Collections deleted from the catalog before a crash lose their index now.
                for name in catalog.dropped_collections().await? {
                    if catalog.collection(&name).await?.is_none() {
                        store.drop_collection(&name).await?;
                        catalog.collection_dropped(&name).await?;
                        tracing::info!(collection = %name, "finished deleting a collection");
                    }
                }
                let requeued = ingestor.recover(&queue).await?;
                if requeued > 0 {
                    tracing::info!(requeued, "resuming unfinished ingestion jobs");
                }
                anyhow::Ok(())
            }
        };
        if disk.writable() {
            recovery.await?;
        } else {
            let disk = disk.clone();
            tokio::spawn(async move {
                disk.wait_writable().await;
                if let Err(e) = recovery.await {
                    tracing::error!(error = %e, "recovery after the disk had room again failed");
                }
            });
        }
        // Collections written by an earlier process (e.g. `kb ingest`, which exits before the
        // optimiser's quiet period) get their index built too; optimize() is a no-op when done.
        for c in catalog.collections().await? {
            ingestor.mark_dirty(&c.name);
        }
        ingestor.start_optimizer(std::time::Duration::from_secs(
            config.store.optimize_after_secs,
        ));
        let query = Arc::new(QueryEngine {
            catalog: catalog.clone(),
            store: store.clone(),
            embedder: embedder.clone(),
            chat,
            visibility,
            candidates: config.retrieval.candidates,
            split_questions: config.retrieval.split_questions,
            unknown_word_min_chunks: config.retrieval.unknown_word_min_chunks,
            fusion: store::FusionParams {
                k: config.retrieval.rrf_k,
                dense_weight: config.retrieval.dense_weight,
                sparse_weight: config.retrieval.sparse_weight,
            },
            context_window,
            max_answer_tokens: config.llm.max_answer_tokens,
            temperature: config.llm.temperature,
            guard: config.llm.guard,
            guard_min_support: config.llm.guard_min_support,
            log_content: config.log.content,
            cache,
            usage,
            rewrite_chat,
            summarize_chat,
            history_tokens: config.conversations.history_tokens,
            keep_turns: config.conversations.keep_turns,
            gen_counter,
            metrics: metrics.clone(),
        });
        Ok(Arc::new(Core {
            config,
            catalog,
            store,
            embedder,
            ingestor,
            queue,
            query,
            metrics,
            governor,
            tmp_dir,
            stopping: Stopping::default(),
            disk,
            auth_secret,
            collections_lock: tokio::sync::Mutex::new(()),
            _lock: lock,
        }))
    }

    /// What produces answers here: the parts that change retrieval and answer quality. Recorded
    /// with every `kb eval` run and served at `GET /v1/info`.
    pub fn describe(&self) -> info::Info {
        use info::*;
        let c = &self.config;
        Info {
            kb_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("KB_GIT_COMMIT").into(),
            embedder: self.embedder.model_id(),
            chunker: InfoChunker {
                splitter: "text-splitter 0.33, Markdown-aware for Markdown and HTML".into(),
                max_tokens: c.chunking.max_tokens,
                overlap_tokens: c.chunking.overlap_tokens,
                embed_headings: c.chunking.embed_headings,
            },
            retrieval: InfoRetrieval {
                mode: c.retrieval.mode.to_string(),
                top_k: c.retrieval.top_k,
                candidates: c.retrieval.candidates,
                split_questions: c.retrieval.split_questions,
                fusion: InfoFusion {
                    rrf_k: c.retrieval.rrf_k,
                    dense_weight: c.retrieval.dense_weight,
                    sparse_weight: c.retrieval.sparse_weight,
                },
            },
            answerer: self.query.model_name(),
            prompt_version: query::prompt::PROMPT_VERSION.into(),
            cache: InfoCache {
                answers: self
                    .query
                    .cache
                    .as_ref()
                    .map(|c| c.backend_name().to_string()),
                semantic: self
                    .query
                    .cache
                    .as_ref()
                    .is_some_and(|c| c.semantic_enabled()),
                embeddings: c.cache.embeddings,
            },
        }
    }

    /// A temp file path for an upload in progress.
    pub fn temp_path(&self) -> PathBuf {
        self.tmp_dir.join(uuid::Uuid::new_v4().to_string())
    }

    /// Flush and close the store and the catalog. Jobs still running stay `running` in the
    /// catalog and resume at the next start.
    pub async fn shutdown(&self) {
        self.ingestor
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.store.close().await;
        self.catalog.close().await;
    }
}

/// The HTTP application.
pub struct App {
    pub router: axum::Router,
    pub core: Arc<Core>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let core = Core::open(config).await?;
        let router = api::router(core.clone());
        Ok(App { router, core })
    }
}
