//! Durable ingestion jobs: extract -> chunk -> embed -> index -> activate.
//!
//! Jobs live in the catalog, so a job survives a crash: at start-up every queued or running job
//! is queued again and re-run from the top. That is safe because chunk ids are deterministic and
//! a run first removes whatever an earlier attempt of the same version left behind.
//! A version is invisible to queries until its last chunk is indexed; then one catalog
//! transaction plus one visibility swap make it live and retire the previous version.

use crate::catalog::{Catalog, JobRow};
use crate::models::{Embedder, Priority};
use crate::query::Visibility;
use crate::store::{ChunkPayload, CollectionSpec, Point, VectorStore};
use kb_ingest::{ChunkConfig, ExtractError, Limits, MediaType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

mod background;
mod embed_input;
mod queue;
use embed_input::embed_input;
pub use queue::JobQueue;

pub struct Ingestor {
    pub catalog: Catalog,
    pub store: Arc<dyn VectorStore>,
    pub embedder: Arc<dyn Embedder>,
    pub visibility: Arc<Visibility>,
    pub blobs: Blobs,
    pub limits: Limits,
    pub chunking: ChunkConfig,
    /// Program and arguments that run the isolated extractor (all document types).
    pub extractor: (PathBuf, Vec<String>),
    pub batch_size: usize,
    pub max_attempts: u32,
    pub events: broadcast::Sender<JobRow>,
    /// Counts chunk tokens for generation budgets (the chat model's tokenizer), if known.
    pub gen_counter: Option<Arc<dyn kb_ingest::TokenCounter + Send + Sync>>,
    /// Reuse chunk embeddings by (embedder, content hash) from the catalog.
    pub embedding_cache: bool,
    /// Embed each chunk with its heading path before it (`chunking.embed_headings`).
    pub embed_headings: bool,
    /// Records remote embedding calls (usage and cost).
    pub usage: Option<Arc<crate::usage::UsageLog>>,
    /// Ingestion throughput and the embedding cache are counted here (`/metrics`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Collections written to, and when: the optimiser waits for quiet.
    dirty: Mutex<HashMap<String, Instant>>,
    /// Set at shutdown: a job interrupted by it stays `running`, to be resumed at the next start.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Serialises activation (catalog commit + visibility swap).
    activation: tokio::sync::Mutex<()>,
    /// Serialises blob placement + registration against blob garbage collection.
    pub blob_lock: tokio::sync::Mutex<()>,
    /// The queue `start` made: a job that failed with an error worth retrying is put back on it.
    queue: std::sync::OnceLock<JobQueue>,
    /// The data disk's free space: below its reserve, jobs wait instead of writing.
    pub disk: Option<Arc<crate::disk::DiskGuard>>,
}

/// Uploaded bytes, content-addressed, so jobs can be re-run after a crash.
#[derive(Clone)]
pub struct Blobs {
    pub dir: PathBuf,
}

impl Blobs {
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2.min(hash.len())]).join(hash)
    }

    /// Move a finished temp file into place (atomic rename).
    pub fn put(&self, tmp: &Path, hash: &str) -> std::io::Result<()> {
        let dst = self.path(hash);
        if dst.exists() {
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        }
        std::fs::create_dir_all(dst.parent().expect("blob dir"))?;
        std::fs::rename(tmp, dst)
    }

    pub fn remove(&self, hash: &str) {
        let _ = std::fs::remove_file(self.path(hash));
    }
}

/// A step that panicked: the panic text goes to the log, a sentence to the document.
fn internal(step: &str, e: tokio::task::JoinError) -> JobError {
    tracing::error!(error = %e, step, "an ingestion step panicked");
    JobError::Internal(format!("kb failed while {step} this document"))
}

fn store_error_text(e: &crate::store::StoreError) -> String {
    match e {
        // Already a sentence of kb's own ("the index could not be saved (too many open files)").
        crate::store::StoreError::Transient(m) => m.clone(),
        e => format!("indexing failed: {e}"),
    }
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("{0}")]
    Extract(#[from] ExtractError),
    #[error("embedding failed: {0}")]
    Model(#[from] crate::models::ModelError),
    #[error("{}", store_error_text(.0))]
    Store(#[from] crate::store::StoreError),
    #[error("catalog error: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("the uploaded bytes are missing: {0}")]
    Blob(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The document was deleted while its job ran.
    #[error("the document was deleted")]
    Gone,
    /// The data disk is below its reserve: the job waits for room.
    #[error("the data disk is nearly full")]
    NoRoom,
}

impl JobError {
    /// Not the document's fault and likely to pass: the job is run again later.
    fn is_transient(&self) -> bool {
        matches!(self, JobError::Store(e) if e.is_transient())
    }
}

impl Ingestor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Catalog,
        store: Arc<dyn VectorStore>,
        embedder: Arc<dyn Embedder>,
        visibility: Arc<Visibility>,
        blobs: Blobs,
        limits: Limits,
        chunking: ChunkConfig,
        extractor: (PathBuf, Vec<String>),
        batch_size: usize,
        max_attempts: u32,
    ) -> Ingestor {
        let (events, _) = broadcast::channel(1024);
        Ingestor {
            catalog,
            store,
            embedder,
            visibility,
            blobs,
            limits,
            chunking,
            extractor,
            batch_size,
            max_attempts,
            events,
            gen_counter: None,
            embedding_cache: true,
            embed_headings: true,
            usage: None,
            metrics: None,
            dirty: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            activation: tokio::sync::Mutex::new(()),
            blob_lock: tokio::sync::Mutex::new(()),
            queue: std::sync::OnceLock::new(),
            disk: None,
        }
    }

    /// Start `workers` job runners; returns the queue.
    pub fn start(self: &Arc<Self>, workers: usize) -> JobQueue {
        let queue = JobQueue::default();
        for _ in 0..workers.max(1) {
            let queue = queue.clone();
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    let id = queue.next().await;
                    if this.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    this.run(&id).await;
                    release_free_memory();
                }
            });
        }
        let _ = self.queue.set(queue.clone());
        queue
    }

    /// Before any query: versions not live yet, and those whose points are being removed, are
    /// hidden (reads only; `recover` does the writes).
    pub async fn hide_unfinished(&self) -> anyhow::Result<()> {
        for (collection, key) in self.catalog.hidden_version_keys().await? {
            self.visibility.hide(&collection, &key);
        }
        for (collection, key) in self.catalog.pending_deletes().await? {
            self.visibility.hide(&collection, &key);
        }
        Ok(())
    }

    /// Crash recovery: finish pending deletions, hide unfinished versions, requeue their jobs.
    ///
    /// A restart, a SIGKILL or a crash does not count against a job: only its own failures do,
    /// and crashes while it was splitting its document (see `Catalog::interrupted_jobs`). As a
    /// last resort against a crash loop elsewhere, a job is given up after ten times
    /// `max_attempts` runs.
    pub async fn recover(&self, queue: &JobQueue) -> anyhow::Result<usize> {
        self.hide_unfinished().await?;
        for (collection, key) in self.catalog.pending_deletes().await? {
            self.purge(&collection, &key).await;
        }
        let jobs = self.catalog.interrupted_jobs().await?;
        let max = self.max_attempts.max(1) as i64;
        let mut queued = 0;
        for (id, collection, crashes, attempts) in &jobs {
            let reason = if *crashes >= max {
                Some(format!(
                    "kb stopped {crashes} times while splitting this document into chunks; giving up"
                ))
            } else if *attempts >= 10 * max {
                Some(format!(
                    "indexing was interrupted {attempts} times; giving up"
                ))
            } else {
                None
            };
            match reason {
                Some(msg) => self.fail(id, &msg).await,
                None => {
                    queue.submit(collection, id);
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// Fail a job for good: its version's points go (durably: a pending delete first).
    async fn fail(&self, job_id: &str, msg: &str) {
        let Ok(Some(job)) = self.catalog.job(job_id).await else {
            return;
        };
        let key = crate::catalog::version_key(&job.doc_id, job.version);
        self.visibility.hide(&job.collection, &key);
        if self.catalog.job_failed(job_id, msg).await.is_ok() {
            self.purge(&job.collection, &key).await;
        }
        self.emit(job_id).await;
    }

    /// Remove a version's points, then forget it.
    pub async fn purge(&self, collection: &str, key: &str) {
        match self.store.delete_version(collection, key).await {
            Ok(()) => match self.catalog.deletion_done(key).await {
                Ok(hash) => {
                    self.visibility.show(collection, key);
                    if let Some(h) = hash {
                        self.gc_blob(&h).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, key, "could not record deletion"),
            },
            Err(e) => {
                tracing::error!(error = %e, key, "could not delete points (retried at restart)")
            }
        }
    }

    pub async fn gc_blob(&self, hash: &str) {
        let _g = self.blob_lock.lock().await;
        if matches!(self.catalog.hash_in_use(hash).await, Ok(false)) {
            self.blobs.remove(hash);
        }
    }

    async fn emit(&self, job_id: &str) {
        if let Ok(Some(row)) = self.catalog.job(job_id).await {
            let _ = self.events.send(row);
        }
    }

    async fn progress(&self, job_id: &str, stage: &str, done: usize, total: usize) {
        if let Err(e) = self
            .catalog
            .job_progress(job_id, stage, done as i64, total as i64)
            .await
        {
            tracing::warn!(error = %e, "job progress not recorded");
        }
        self.emit(job_id).await;
    }

    async fn run(&self, job_id: &str) {
        let job = match self.catalog.job(job_id).await {
            Ok(Some(j)) if j.status == "queued" || j.status == "running" => j,
            _ => return,
        };
        if !self.room() {
            self.wait_for_room(&job).await;
            return;
        }
        if let Err(e) = self.catalog.job_started(job_id).await {
            tracing::error!(error = %e, "cannot start job");
            return;
        }
        let key = crate::catalog::version_key(&job.doc_id, job.version);
        self.visibility.hide(&job.collection, &key);
        self.emit(job_id).await;
        let started = Instant::now();
        match self.process(&job, &key).await {
            Ok(chunks) => {
                tracing::info!(
                    job_id,
                    chunks,
                    ms = started.elapsed().as_millis() as u64,
                    "document indexed"
                );
            }
            Err(JobError::Gone) => {
                tracing::info!(job_id, "document deleted during ingestion");
                // It may have written a batch after the delete purged: purge again, durably.
                if self
                    .catalog
                    .add_pending_delete(&job.collection, &key)
                    .await
                    .is_ok()
                {
                    self.purge(&job.collection, &key).await;
                }
            }
            Err(JobError::NoRoom) => {
                tracing::warn!(job_id, "ingestion paused: the data disk is nearly full");
                self.wait_for_room(&job).await;
            }
            Err(e) if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::info!(job_id, error = %e, "ingestion interrupted by shutdown; resumes at the next start");
                let _ = self.catalog.job_interrupted(job_id).await;
            }
            Err(e) if e.is_transient() => {
                let failures = self.catalog.job_failures(job_id).await.unwrap_or(0) + 1;
                if failures >= self.max_attempts.max(1) as i64 {
                    tracing::warn!(job_id, error = %e, failures, "ingestion failed; giving up");
                    self.fail(job_id, &e.to_string()).await;
                    return;
                }
                tracing::warn!(job_id, error = %e, failures, "ingestion failed; will retry");
                // Whatever this run indexed stays hidden; the next run deletes it first.
                match self
                    .catalog
                    .job_retry_later(job_id, &format!("{e}; will retry"))
                    .await
                {
                    Ok(n) => {
                        self.emit(job_id).await;
                        if let Some(q) = self.queue.get().cloned() {
                            let id = job_id.to_string();
                            let collection = job.collection.clone();
                            let wait = Duration::from_secs(1 << n.clamp(0, 6));
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                q.submit(&collection, &id);
                            });
                        }
                    }
                    Err(ce) => tracing::error!(error = %ce, "retry not recorded"),
                }
            }
            Err(e) => {
                tracing::warn!(job_id, error = %e, "ingestion failed");
                // Its points must not linger (job_failed records a pending delete; purge
                // removes them, then the key leaves the hidden set, which filters every query).
                self.fail(job_id, &e.to_string()).await;
            }
        }
    }

    async fn process(&self, job: &JobRow, key: &str) -> Result<usize, JobError> {
        let job_id = job.id.as_str();
        // Leftovers of an interrupted attempt go first: no duplicate or orphaned chunks.
        self.store
            .ensure_collection(&CollectionSpec {
                name: job.collection.clone(),
                dim: self.embedder.dim(),
                model: self.embedder.model_id(),
            })
            .await?;
        self.store.delete_version(&job.collection, key).await?;

        self.progress(job_id, "extract", 0, 1).await;
        let bytes = tokio::fs::read(self.blobs.path(&job.content_hash))
            .await
            .map_err(|e| JobError::Blob(e.to_string()))?;
        let limits = self.limits.clone();
        let (prog, mut args) = self.extractor.clone();
        let name = job.doc_name.clone();
        // One argument, so a name starting with '-' is not taken for a flag.
        args.push(format!("--name={name}"));
        let doc = tokio::task::spawn_blocking(move || {
            match kb_ingest::check_and_sniff(&bytes, &name, None, &limits)? {
                // Markdown and plain text are only decoded and scanned line by line: nothing
                // in them can exhaust memory or hang, so they skip the child process (whose
                // start cost more than the rest of a small file's ingestion).
                m @ (MediaType::Markdown | MediaType::Text) => {
                    kb_ingest::extract_text_like(&bytes, m, &limits)
                }
                _ => kb_ingest::pdf::extract_isolated(&prog, &args, &bytes, &limits),
            }
        })
        .await
        .map_err(|e| internal("reading", e))??;
        self.catalog
            .version_extracted(
                job_id,
                doc.media_type.as_str(),
                (doc.pages > 0).then_some(doc.pages as i64),
            )
            .await?;

        self.progress(job_id, "chunk", 0, 1).await;
        let counter = self.embedder.token_counter();
        let cfg = self.chunking.clone();
        let chunks = tokio::task::spawn_blocking(move || kb_ingest::chunk(&doc, &cfg, &*counter))
            .await
            .map_err(|e| internal("splitting", e))?;
        if chunks.is_empty() {
            return Err(ExtractError::NoText(String::new()).into());
        }
        let total = chunks.len();
        let tokens: u64 = chunks.iter().map(|c| c.token_count as u64).sum();
        self.progress(job_id, "embed", 0, total).await;
        let mut done = 0;
        let (mut embedded, mut reused) = (0i64, 0i64);
        let model = self.embedder.model_id();
        let dim = self.embedder.dim();
        for batch in chunks.chunks(self.batch_size) {
            if !self.room() {
                return Err(JobError::NoRoom);
            }
            // Text this embedder has embedded before (an earlier version, another document, a
            // re-run) is not embedded again.
            // What each chunk is embedded as, and the key its vector is cached under.
            let inputs: Vec<(String, String)> = batch
                .iter()
                .map(|c| embed_input(c, self.embed_headings))
                .collect();
            let mut known = if self.embedding_cache {
                let hashes: Vec<String> = inputs.iter().map(|(_, k)| k.clone()).collect();
                self.catalog.cached_embeddings(&model, dim, &hashes).await?
            } else {
                HashMap::new()
            };
            let mut todo: Vec<(usize, &kb_ingest::Chunk)> = Vec::new();
            for (i, c) in batch.iter().enumerate() {
                let key = &inputs[i].1;
                if !known.contains_key(key) && !todo.iter().any(|(j, _)| &inputs[*j].1 == key) {
                    todo.push((i, c));
                }
            }
            reused += (batch.len() - todo.len()) as i64;
            if let Some(m) = &self.metrics {
                m.embedding_cache(todo.len() as u64, (batch.len() - todo.len()) as u64);
            }
            if !todo.is_empty() {
                let texts: Vec<String> = todo.iter().map(|(i, _)| inputs[*i].0.clone()).collect();
                let t = Instant::now();
                let result = self.embedder.embed(texts, Priority::Bulk).await;
                if let Some(m) = &self.metrics {
                    m.ingest_embedding(t.elapsed().as_secs_f64());
                }
                if let Some(u) = &self.usage {
                    // What was sent: a heading path adds to the chunk's own tokens.
                    let counter = self.embedder.token_counter();
                    let tokens: u64 = todo
                        .iter()
                        .map(|(i, c)| {
                            // The chunk's own key: it went alone, its count is known.
                            if inputs[*i].1 == c.content_hash {
                                c.token_count as u64
                            } else {
                                counter.count(&inputs[*i].0) as u64
                            }
                        })
                        .sum();
                    u.embed_call(&job.collection, &model, tokens, t.elapsed(), &result);
                }
                let fresh = result?;
                embedded += todo.len() as i64;
                let items: Vec<(String, Vec<f32>)> = todo
                    .iter()
                    .map(|(i, _)| inputs[*i].1.clone())
                    .zip(fresh)
                    .collect();
                if self.embedding_cache {
                    self.catalog.store_embeddings(&model, &items).await?;
                }
                known.extend(items);
            }
            self.catalog
                .job_embed_counts(job_id, embedded, reused)
                .await?;
            let vectors: Vec<Vec<f32>> = inputs.iter().map(|(_, k)| known[k].clone()).collect();
            let points = batch
                .iter()
                .zip(vectors)
                .map(|(c, dense)| Point {
                    dense,
                    payload: ChunkPayload {
                        collection: job.collection.clone(),
                        doc_id: job.doc_id.clone(),
                        doc_version: job.version,
                        version_key: key.to_string(),
                        ord: c.ord,
                        text: c.text.clone(),
                        token_count: c.token_count,
                        gen_token_count: self.gen_counter.as_ref().map(|g| g.count(&c.text) as u32),
                        page: c.page,
                        heading: c.heading.clone(),
                        byte_start: c.byte_start,
                        byte_end: c.byte_end,
                        content_hash: c.content_hash.clone(),
                    },
                })
                .collect();
            self.store.upsert(&job.collection, points).await?;
            done += batch.len();
            if self.catalog.job(job_id).await?.is_none() {
                return Err(JobError::Gone);
            }
            self.progress(job_id, "embed", done, total).await;
        }
        self.mark_dirty(&job.collection);
        // Durable before it goes live. A crash before this point re-runs the job from the top,
        // so the batches above need no flush of their own.
        self.store.flush(&job.collection).await?;

        // Go live: catalog first, then the visibility swap, then retire the old version. One lock
        // around both, so two versions of a document finishing together swap in commit order.
        let activation = self.activation.lock().await;
        let (collection, new_key, retired) = match self
            .catalog
            .activate(job_id, total as i64, tokens as i64)
            .await
        {
            Ok(r) => r,
            Err(crate::catalog::CatalogError::Db(sqlx::Error::RowNotFound)) => {
                return Err(JobError::Gone)
            }
            Err(e) => return Err(e.into()),
        };
        self.visibility
            .swap(&collection, &new_key, retired.as_deref());
        drop(activation);
        // Answers cached between the commit and the swap were computed on the old content.
        if let Err(e) = self.catalog.bump_index_version(&collection).await {
            tracing::warn!(error = %e, "index version not bumped after activation");
        }
        if let Some(m) = &self.metrics {
            m.indexed(total as u64);
        }
        self.emit(job_id).await;
        if let Some(old) = retired {
            self.purge(&collection, &old).await;
        }
        Ok(total)
    }
}

/// Hand memory freed by a finished job back to the system: a large document's text, chunks and
/// vectors leave glibc's heap fragmented, and without this the process kept its peak (431 MB
/// after one 50 MB HTML file) for good.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
