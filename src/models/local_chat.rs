//! Local generation: a small instruct model in GGUF run in-process by llama.cpp (through the
//! `llama-cpp-2` crate), streamed token by token through the same `ChatModel` trait as a
//! remote model.
//!
//! One dedicated thread owns the model and its context (KV cache) and answers one request at
//! a time; requests wait in a bounded queue and a full queue refuses at once (`Overloaded`,
//! 429 with Retry-After), like a remote upstream's queue. The thread has its own fixed thread
//! budget (`llm.threads`) apart from the embedder's, so inference and ingestion do not fight
//! over the same cores unboundedly. A request whose caller went away (client disconnected,
//! Stop) is skipped if still queued and stops generating at the next token if running.

use super::*;
use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// The model kb fetches for `llm.provider = "local"` when `llm.model` names none.
pub const DEFAULT_LOCAL_MODEL: &str = "SmolLM2-135M-Instruct";

/// Fewest answer tokens a prompt must leave room for.
const MIN_ANSWER_TOKENS: usize = 128;

/// Tokens decoded per `decode` call while reading the prompt.
const PREFILL_BATCH: usize = 512;

/// llama.cpp's backend is process-wide and may be initialised once.
fn backend() -> std::result::Result<&'static LlamaBackend, ModelError> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            // llama.cpp logs every tensor at load; kb logs what matters itself.
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| ModelError::Inference(format!("llama.cpp backend: {e}")))
}

/// Where the GGUF file of `model` is: a path to a `.gguf` file, or a directory (or a name in
/// the models directory) holding exactly one `.gguf` file.
pub fn resolve_model_path(
    models_dir: &Path,
    model: &str,
) -> std::result::Result<PathBuf, ModelError> {
    let given = Path::new(model);
    let candidates = [given.to_path_buf(), models_dir.join(model)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
        if c.is_dir() {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(c)
                .map_err(|e| ModelError::Missing(format!("{}: {e}", c.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
                })
                .collect();
            ggufs.sort();
            return match ggufs.len() {
                1 => Ok(ggufs.remove(0)),
                0 => Err(ModelError::Missing(format!(
                    "no .gguf file in {}",
                    c.display()
                ))),
                _ => Err(ModelError::Missing(format!(
                    "several .gguf files in {}; set llm.model to one of them",
                    c.display()
                ))),
            };
        }
    }
    Err(ModelError::Missing(format!(
        "local model `{model}`: neither a file nor a directory, here or in {} \
         (run scripts/fetch-models.sh --llm to fetch {DEFAULT_LOCAL_MODEL})",
        models_dir.display()
    )))
}

/// Settings of the local generator.
#[derive(Debug, Clone)]
pub struct LocalChatOptions {
    /// Threads for generating (one token at a time: memory-bound, and the first to collapse
    /// when another process takes a core), and for reading the prompt (compute-bound).
    pub threads: usize,
    pub prefill_threads: usize,
    /// Context size (KV cache) in tokens: prompt plus answer.
    pub context_tokens: usize,
    /// Requests waiting behind the running one before new ones are refused.
    pub queue_size: usize,
    /// llama.cpp's flash attention: `None` lets it decide (it enables it on CPU). kb turns
    /// it off: measured here, generating ran at ~1.5x the tokens/s without it, and reading
    /// the prompt at the same speed.
    pub flash_attention: Option<bool>,
}

/// GGUF file types (`general.file_type`) whose matrix products llama.cpp has no fast batched
/// kernel for on x86 (Q4_1, Q5_0, Q5_1): reading a prompt with them is several times slower
/// than with Q8_0.
const SLOW_FILE_TYPES: [u32; 3] = [3, 8, 9];
const FTYPE_Q8_0: u32 = 7;

/// The file to run for `path`: itself, or for a slow quantisation type a Q8_0 copy made once
/// next to it (written atomically; about 2 s for a 135M model). If the copy
/// cannot be made (read-only directory), the original is used and a warning logged. The copy is
/// named `<file>.kb-q8_0` (not `.gguf`) so that a directory still holds one `.gguf` file.
fn fast_variant(backend: &LlamaBackend, path: &Path) -> PathBuf {
    let file_type = LlamaModel::load_from_file(
        backend,
        path,
        &LlamaModelParams::default().with_vocab_only(true),
    )
    .ok()
    .and_then(|m| m.meta_val_str("general.file_type").ok())
    .and_then(|v| v.trim().parse::<u32>().ok());
    let Some(ft) = file_type.filter(|t| SLOW_FILE_TYPES.contains(t)) else {
        return path.to_path_buf();
    };
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let target = path.with_file_name(format!("{file}.kb-q8_0"));
    if target.is_file() {
        return target;
    }
    let partial = path.with_file_name(format!("{file}.kb-q8_0.partial"));
    let started = std::time::Instant::now();
    let made = (|| -> std::result::Result<(), String> {
        let inp =
            std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        let out = std::ffi::CString::new(partial.to_string_lossy().as_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and the
        // parameters come from llama.cpp's own defaults.
        let rc = unsafe {
            let mut p = llama_cpp_sys_2::llama_model_quantize_default_params();
            p.ftype = FTYPE_Q8_0 as _;
            p.allow_requantize = true;
            p.nthread = 2;
            llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &p)
        };
        if rc != 0 {
            return Err(format!("llama_model_quantize returned {rc}"));
        }
        std::fs::rename(&partial, &target).map_err(|e| e.to_string())
    })();
    match made {
        Ok(()) => {
            tracing::info!(from = %path.display(), to = %target.display(), file_type = ft,
                ms = started.elapsed().as_millis() as u64, "re-quantised the local model to Q8_0 for speed");
            target
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(model = %path.display(), error = %e,
                "could not write a Q8_0 copy of the local model; using it as it is (slower)");
            path.to_path_buf()
        }
    }
}

struct Job {
    req: ChatRequest,
    out: mpsc::Sender<Result<ChatDelta>>,
}

/// The model, loaded once: shared by the generating thread (which owns the context) and by
/// callers that only tokenize.
struct Loaded {
    model: LlamaModel,
    template: llama_cpp_2::model::LlamaChatTemplate,
    eog: Vec<u32>,
}

impl Loaded {
    fn prompt_tokens(
        &self,
        messages: &[Message],
    ) -> std::result::Result<Vec<LlamaToken>, ModelError> {
        let inf = |e: &dyn std::fmt::Display| ModelError::Inference(e.to_string());
        let messages: Vec<LlamaChatMessage> = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.replace('\0', "")))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| inf(&e))?;
        let prompt = self
            .model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| inf(&e))?;
        Ok(self.model.vocab().tokenize(prompt.as_bytes(), false, true))
    }
}

pub struct LocalChat {
    name: String,
    path: PathBuf,
    loaded: Arc<Loaded>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// One per live request (running or waiting): `queue_size + 1`. A request holds its
    /// permit until its stream is dropped, so abandoned requests free their place at once.
    permits: Arc<tokio::sync::Semaphore>,
    context_tokens: usize,
}

impl LocalChat {
    /// Load the GGUF model at `path` and start its thread. Fails if the file is not a model
    /// llama.cpp can run or has no chat template.
    pub fn load(path: &Path, opts: LocalChatOptions) -> std::result::Result<LocalChat, ModelError> {
        let backend = backend()?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        let path = fast_variant(backend, path);
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
            .map_err(|e| {
                ModelError::Missing(format!(
                    "{}: not a model llama.cpp can load: {e}",
                    path.display()
                ))
            })?;
        let template = model.chat_template(None).map_err(|e| {
            ModelError::Inference(format!(
                "{}: no chat template in the model file ({e})",
                path.display()
            ))
        })?;
        let vocab = model.vocab();
        let eog = vocab
            .tokens()
            .filter(|t| vocab.is_eog(*t))
            .map(|t| t.0 as u32)
            .collect();
        let n_ctx = opts
            .context_tokens
            .max(256)
            .min(model.n_ctx_train() as usize);
        let loaded = Arc::new(Loaded {
            model,
            template,
            eog,
        });
        let threads = opts.threads.max(1) as i32;
        let prefill_threads = opts.prefill_threads.max(1) as i32;
        let flash_attention = opts.flash_attention;
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.queue_size.max(1) + 1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker_model = loaded.clone();
        std::thread::Builder::new()
            .name("kb-generate".into())
            .spawn(move || {
                let params = LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(n_ctx as u32))
                    .with_n_batch(PREFILL_BATCH as u32)
                    .with_n_ubatch(PREFILL_BATCH as u32)
                    .with_n_threads(threads)
                    .with_n_threads_batch(prefill_threads)
                    .with_flash_attention_policy(match flash_attention {
                        None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
                        Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
                        Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
                    });
                let mut ctx = match worker_model.model.new_context(backend, params) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ModelError::Inference(format!(
                            "creating the llama.cpp context: {e}"
                        ))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let worker = Worker {
                    loaded: &worker_model,
                    n_ctx,
                };
                while let Ok(job) = rx.recv() {
                    if job.out.is_closed() {
                        continue;
                    }
                    let started = std::time::Instant::now();
                    match worker.generate(&mut ctx, &job) {
                        Ok((prompt, completion)) => tracing::debug!(
                            prompt_tokens = prompt,
                            completion_tokens = completion,
                            ms = started.elapsed().as_millis() as u64,
                            "local generation"
                        ),
                        Err(e) => {
                            let _ = job.out.blocking_send(Err(e));
                        }
                    }
                }
            })
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        ready_rx.recv().map_err(|_| {
            ModelError::Inference("the generator thread died while loading".into())
        })??;
        Ok(LocalChat {
            name,
            path,
            loaded,
            jobs,
            permits,
            context_tokens: n_ctx,
        })
    }

    /// Tokens of prompt plus answer the model's context holds.
    pub fn context_tokens(&self) -> usize {
        self.context_tokens
    }

    /// The file being run (a Q8_0 copy of the configured one when that was slow to run).
    pub fn model_path(&self) -> &Path {
        &self.path
    }

    /// The prompt token ids of `messages` in the model's chat template.
    pub fn tokenize_chat(&self, messages: &[Message]) -> std::result::Result<Vec<u32>, ModelError> {
        Ok(self
            .loaded
            .prompt_tokens(messages)?
            .into_iter()
            .map(|t| t.0 as u32)
            .collect())
    }

    /// The tokens that end a turn.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.loaded.eog
    }
}

struct Worker<'m> {
    loaded: &'m Loaded,
    n_ctx: usize,
}

impl Worker<'_> {
    /// Runs one request, sending text as it decodes. Returns (prompt, completion) tokens; an
    /// error is returned only when nothing was sent yet or decoding failed.
    fn generate(
        &self,
        ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
        job: &Job,
    ) -> std::result::Result<(usize, usize), ModelError> {
        let inf = |e: &dyn std::fmt::Display| ModelError::Inference(e.to_string());
        let model = &self.loaded.model;
        let tokens = self.loaded.prompt_tokens(&job.req.messages)?;
        let vocab = model.vocab();
        // kb sizes the sources with the embedder's tokenizer, not this model's: when the prompt
        // comes out longer, the answer gets what is left, down to MIN_ANSWER_TOKENS.
        let room = self.n_ctx.saturating_sub(tokens.len());
        let max_new = job.req.max_tokens.max(1).min(room);
        if tokens.is_empty() {
            return Err(ModelError::Inference("empty prompt".into()));
        }
        if max_new < job.req.max_tokens.clamp(1, MIN_ANSWER_TOKENS) {
            return Err(ModelError::ContextLength(format!(
                "{} prompt tokens leave {room} of the model's {} for the answer \
                 (llm.local_context_tokens, or the model's own limit)",
                tokens.len(),
                self.n_ctx
            )));
        }
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(PREFILL_BATCH, 1);
        let last = tokens.len() - 1;
        for (start, chunk) in tokens.chunks(PREFILL_BATCH).enumerate() {
            if job.out.is_closed() {
                return Ok((tokens.len(), 0));
            }
            batch.clear();
            for (j, t) in chunk.iter().enumerate() {
                let pos = start * PREFILL_BATCH + j;
                batch
                    .add(*t, pos as i32, &[0], pos == last)
                    .map_err(|e| inf(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| inf(&e))?;
        }
        let mut sampler = sampler(model, job.req.temperature);
        let mut pending: Vec<u8> = Vec::new();
        let mut produced = 0usize;
        let mut pos = tokens.len();
        while produced < max_new {
            let tok = sampler.sample(ctx, batch.n_tokens() - 1);
            sampler.accept(tok);
            if vocab.is_eog(tok) {
                break;
            }
            produced += 1;
            pending.extend_from_slice(&vocab.token_to_piece(tok, false, None));
            // Send whole characters only: a token may end inside a UTF-8 sequence.
            let valid = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => pending.len(),
            };
            if valid > 0 {
                let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
                pending.drain(..valid);
                if job.out.blocking_send(Ok(ChatDelta::Text(text))).is_err() {
                    return Ok((tokens.len(), produced));
                }
            }
            batch.clear();
            batch
                .add(tok, pos as i32, &[0], true)
                .map_err(|e| inf(&e))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(|e| inf(&e))?;
        }
        if !pending.is_empty() {
            let _ = job.out.blocking_send(Ok(ChatDelta::Text(
                String::from_utf8_lossy(&pending).into_owned(),
            )));
        }
        let _ = job.out.blocking_send(Ok(ChatDelta::Usage(Usage {
            prompt_tokens: tokens.len() as u64,
            completion_tokens: produced as u64,
        })));
        Ok((tokens.len(), produced))
    }
}

/// Greedy at temperature 0; otherwise top-k/top-p sampling at that temperature. Both with a
/// mild repetition penalty: small models fall into loops without one.
fn sampler(model: &LlamaModel, temperature: f32) -> LlamaSampler {
    let penalty = LlamaSampler::penalties(model.n_vocab(), 64, 1.1, 0.0, 0.0);
    if temperature <= 0.0 {
        LlamaSampler::chain_simple([penalty, LlamaSampler::greedy()])
    } else {
        LlamaSampler::chain_simple([
            penalty,
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(temperature),
            LlamaSampler::dist(rand::random()),
        ])
    }
}

#[async_trait::async_trait]
impl ChatModel for LocalChat {
    fn model_id(&self) -> String {
        format!("local:{}", self.name)
    }

    fn context_window(&self) -> Option<usize> {
        Some(self.context_tokens)
    }

    async fn stream(&self, req: ChatRequest) -> Result<BoxStream<'static, Result<ChatDelta>>> {
        let permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| ModelError::Overloaded {
                    upstream: self.model_id(),
                    retry_after_secs: 5.0,
                })?;
        let (tx, mut rx) = mpsc::channel(64);
        self.jobs
            .send(Job { req, out: tx })
            .map_err(|_| ModelError::Closed)?;
        // Errors before the first token (prompt too long, decode failure) are the call's error.
        let first = match rx.recv().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e),
            None => return Err(ModelError::Inference("the generator stopped".into())),
        };
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .map(move |d| {
                let _held = &permit;
                d
            })
            .boxed())
    }
}
