//! Local sentence-transformers embedder (BERT family, e.g. all-MiniLM-L6-v2) from a directory
//! holding `config.json`, `tokenizer.json` and `model.safetensors`. Two engines: kb's own
//! encoder (`kb_bert`, the default: about 2-3x candle's throughput here) and candle's
//! `BertModel` (the reference the native one is checked against). The native engine can run
//! its linear layers in int8 (`embedding.precision = "int8"`): faster, with vectors close to but
//! not equal to f32's, so it has its own model id (embedding cache, collections, eval history).
//!
//! One dedicated thread runs the model; requests wait in two queues and interactive ones are
//! always served before bulk ones. A bulk batch is run a few texts at a time, with the
//! interactive queue served between the slices, so a question waits for at most one slice of an
//! upload's batch, not the whole batch. The interactive queue is bounded: when it is full, a
//! question is refused at once (`Overloaded`, 429 with Retry-After) instead of joining a queue
//! that would keep it waiting for seconds.

use super::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::oneshot;

/// Largest input of a sentence-transformers MiniLM/BERT model, special tokens included.
const DEFAULT_MAX_INPUT: usize = 256;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

#[derive(Default)]
struct Queues {
    interactive: VecDeque<Job>,
    bulk: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    /// Interactive requests waiting at most, and the longest wait (estimated) a new one may
    /// face; beyond either it is refused.
    max_waiting: usize,
    max_wait_us: u64,
    /// Texts of a bulk batch run between two looks at the interactive queue.
    bulk_slice: usize,
    /// Recent time of one interactive request (microseconds, smoothed): the Retry-After estimate.
    interactive_us: std::sync::atomic::AtomicU64,
}

/// How many interactive requests may wait, and how finely bulk batches are cut.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_waiting: usize,
    pub max_wait: std::time::Duration,
    pub bulk_slice: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_waiting: 64,
            max_wait: std::time::Duration::from_secs(1),
            bulk_slice: 2,
        }
    }
}

pub use kb_bert::Precision;

pub struct LocalEmbedder {
    name: String,
    precision: Precision,
    dim: usize,
    max_input: usize,
    counter: Arc<Tokenizer>,
    shared: Arc<Shared>,
}

/// Which implementation runs the model (`embedding.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// kb's encoder: no padding, fused loops, its own thread pool.
    Native,
    /// candle's `BertModel`.
    Candle,
}

enum Model {
    Native {
        bert: Box<kb_bert::Bert>,
        /// Truncating, not padding.
        tokenizer: Tokenizer,
    },
    Candle {
        bert: Box<BertModel>,
        tokenizer: Tokenizer,
        device: Device,
    },
}

impl Model {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let inf = |e: &dyn std::fmt::Display| ModelError::Inference(e.to_string());
        let (bert, tokenizer, device) = match self {
            Model::Native { bert, tokenizer } => {
                let encs = tokenizer
                    .encode_batch(texts.to_vec(), true)
                    .map_err(|e| inf(&e))?;
                let ids: Vec<Vec<u32>> = encs.iter().map(|e| e.get_ids().to_vec()).collect();
                return bert.embed(&ids).map_err(|e| inf(&e));
            }
            Model::Candle {
                bert,
                tokenizer,
                device,
            } => (bert, tokenizer, device),
        };
        let encs = tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| inf(&e))?;
        let n = encs.len();
        let len = encs.first().map(|e| e.len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encs {
            ids.extend(e.get_ids().iter().copied());
            mask.extend(e.get_attention_mask().iter().copied());
        }
        let ids = Tensor::from_vec(ids, (n, len), device).map_err(|e| inf(&e))?;
        let mask_t = Tensor::from_vec(mask, (n, len), device).map_err(|e| inf(&e))?;
        let types = ids.zeros_like().map_err(|e| inf(&e))?;
        let out = bert
            .forward(&ids, &types, Some(&mask_t))
            .map_err(|e| inf(&e))?;
        // Mean pooling over real tokens, then L2 normalisation.
        let m = mask_t
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(|e| inf(&e))?;
        let summed = out
            .broadcast_mul(&m)
            .and_then(|x| x.sum(1))
            .map_err(|e| inf(&e))?;
        let counts = m.sum(1).map_err(|e| inf(&e))?;
        let mean = summed.broadcast_div(&counts).map_err(|e| inf(&e))?;
        let norm = mean
            .sqr()
            .and_then(|x| x.sum_keepdim(1))
            .and_then(|x| x.sqrt())
            .and_then(|x| x.clamp(1e-12, f64::MAX))
            .map_err(|e| inf(&e))?;
        let normed = mean.broadcast_div(&norm).map_err(|e| inf(&e))?;
        normed.to_vec2::<f32>().map_err(|e| inf(&e))
    }
}

impl LocalEmbedder {
    /// Load from `dir` with the native engine on every core, and start the model thread.
    pub fn load(dir: &Path, name: &str) -> Result<LocalEmbedder> {
        LocalEmbedder::load_with(
            dir,
            name,
            Engine::Native,
            0,
            Precision::F32,
            QueueLimits::default(),
        )
    }

    /// Load from `dir` with `engine` using `threads` cores (0 = all) and start the model thread.
    /// `precision` other than f32 needs the native engine.
    pub fn load_with(
        dir: &Path,
        name: &str,
        engine: Engine,
        threads: usize,
        precision: Precision,
        limits: QueueLimits,
    ) -> Result<LocalEmbedder> {
        if engine == Engine::Candle && precision != Precision::F32 {
            return Err(ModelError::Inference(
                "embedding.precision other than f32 needs embedding.engine = native".into(),
            ));
        }
        let need = ["config.json", "tokenizer.json", "model.safetensors"];
        for f in need {
            if !dir.join(f).exists() {
                return Err(ModelError::Missing(format!(
                    "{} (run scripts/fetch-models.sh)",
                    dir.join(f).display()
                )));
            }
        }
        let inf = |e: &dyn std::fmt::Display| ModelError::Inference(e.to_string());
        let cfg_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| inf(&e))?;
        let cfg: BertConfig = serde_json::from_str(&cfg_text).map_err(|e| inf(&e))?;
        let raw: serde_json::Value = serde_json::from_str(&cfg_text).map_err(|e| inf(&e))?;
        let dim = raw["hidden_size"].as_u64().unwrap_or(384) as usize;
        let positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        let max_input = DEFAULT_MAX_INPUT.min(positions);

        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| inf(&e))?;
        // The packaged tokenizer truncates at 128; the model reads 256. Set it explicitly.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_input,
                ..Default::default()
            }))
            .map_err(|e| inf(&e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let mut counter = tokenizer.clone();
        counter.with_truncation(None).map_err(|e| inf(&e))?;
        counter.with_padding(None);

        let model = match engine {
            Engine::Native => {
                let dims: kb_bert::BertDims =
                    serde_json::from_str(&cfg_text).map_err(|e| inf(&e))?;
                let bert = kb_bert::Bert::load_with(
                    &dir.join("model.safetensors"),
                    dims,
                    threads,
                    precision,
                )
                .map_err(|e| inf(&e))?;
                tracing::debug!(
                    ?precision,
                    kernel = bert.int8_kernel().name(),
                    "native encoder loaded"
                );
                let mut tokenizer = tokenizer;
                tokenizer.with_padding(None);
                Model::Native {
                    bert: Box::new(bert),
                    tokenizer,
                }
            }
            Engine::Candle => {
                let device = Device::Cpu;
                let vb = unsafe {
                    VarBuilder::from_mmaped_safetensors(
                        &[dir.join("model.safetensors")],
                        DType::F32,
                        &device,
                    )
                }
                .map_err(|e| inf(&e))?;
                let bert = BertModel::load(vb, &cfg).map_err(|e| inf(&e))?;
                Model::Candle {
                    bert: Box::new(bert),
                    tokenizer,
                    device,
                }
            }
        };

        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            max_waiting: limits.max_waiting.max(1),
            max_wait_us: limits.max_wait.as_micros() as u64,
            bulk_slice: limits.bulk_slice.max(1),
            interactive_us: std::sync::atomic::AtomicU64::new(20_000),
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("kb-embed".into())
            .spawn(move || run(model, s2))
            .map_err(|e| inf(&e))?;
        Ok(LocalEmbedder {
            name: name.to_string(),
            precision,
            dim,
            max_input,
            counter: Arc::new(counter),
            shared,
        })
    }

    pub fn shutdown(&self) {
        let mut q = self.shared.queues.lock().unwrap();
        q.closed = true;
        self.shared.ready.notify_all();
    }
}

impl Drop for LocalEmbedder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Next {
    Interactive(Job),
    Bulk(Job),
}

fn next_job(shared: &Shared, bulk_too: bool) -> Option<Next> {
    let mut q = shared.queues.lock().unwrap();
    loop {
        if let Some(j) = q.interactive.pop_front() {
            return Some(Next::Interactive(j));
        }
        if !bulk_too {
            return None;
        }
        if let Some(j) = q.bulk.pop_front() {
            return Some(Next::Bulk(j));
        }
        if q.closed {
            return None;
        }
        q = shared.ready.wait(q).unwrap();
    }
}

fn run_one(model: &Model, shared: &Shared, job: Job) {
    if job.reply.is_closed() {
        return;
    }
    let started = std::time::Instant::now();
    let r = model.embed(&job.texts);
    let us = started.elapsed().as_micros() as u64;
    // An exponential average over the last few requests.
    let old = shared
        .interactive_us
        .load(std::sync::atomic::Ordering::Relaxed);
    shared
        .interactive_us
        .store((old * 7 + us) / 8, std::sync::atomic::Ordering::Relaxed);
    let _ = job.reply.send(r);
}

fn run(model: Model, shared: Arc<Shared>) {
    while let Some(next) = next_job(&shared, true) {
        let job = match next {
            Next::Interactive(job) => {
                run_one(&model, &shared, job);
                continue;
            }
            Next::Bulk(job) => job,
        };
        if job.reply.is_closed() {
            continue;
        }
        let started = std::time::Instant::now();
        let mut out = Vec::with_capacity(job.texts.len());
        let mut failed = None;
        for slice in job.texts.chunks(shared.bulk_slice) {
            // Questions that arrived meanwhile go first.
            while let Some(Next::Interactive(q)) = next_job(&shared, false) {
                run_one(&model, &shared, q);
            }
            match model.embed(slice) {
                Ok(v) => out.extend(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        tracing::debug!(
            texts = job.texts.len(),
            ms = started.elapsed().as_millis() as u64,
            "embed batch"
        );
        let _ = job.reply.send(match failed {
            Some(e) => Err(e),
            None => Ok(out),
        });
    }
}

#[async_trait::async_trait]
impl Embedder for LocalEmbedder {
    fn model_id(&self) -> String {
        // int8 vectors differ slightly from f32 ones: never mix them in a cache or collection.
        match self.precision {
            Precision::F32 => format!("local:{}", self.name),
            Precision::Int8 => format!("local:{}:int8", self.name),
        }
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_input_tokens(&self) -> usize {
        self.max_input
    }

    fn knows_word(&self, word: &str) -> Option<bool> {
        Some(self.counter.token_to_id(&word.to_lowercase()).is_some())
    }

    fn token_counter(&self) -> Arc<dyn kb_ingest::TokenCounter + Send> {
        self.counter.clone()
    }

    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.queues.lock().unwrap();
            if q.closed {
                return Err(ModelError::Closed);
            }
            let job = Job { texts, reply: tx };
            // The wait for the questions ahead, roughly.
            let each = self
                .shared
                .interactive_us
                .load(std::sync::atomic::Ordering::Relaxed);
            let ahead = q.interactive.len() as u64;
            let full = ahead as usize >= self.shared.max_waiting
                || (ahead > 0 && ahead * each > self.shared.max_wait_us);
            match priority {
                Priority::Interactive if full => {
                    let wait = (ahead as f64 * each as f64 / 1e6).max(1.0);
                    return Err(ModelError::Overloaded {
                        upstream: self.model_id(),
                        retry_after_secs: wait.ceil(),
                    });
                }
                Priority::Interactive => q.interactive.push_back(job),
                Priority::Bulk => q.bulk.push_back(job),
            }
        }
        self.shared.ready.notify_one();
        rx.await.map_err(|_| ModelError::Closed)?
    }
}
