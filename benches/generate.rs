//! Local generation: kb's `LocalChat` (llama.cpp, through the same `ChatModel` trait the server
//! uses) against candle's quantized llama on the same GGUF weights and the same prompt tokens,
//! in the same run.
//!
//! The prompt is a RAG prompt of about `KB_BENCH_PROMPT_TOKENS` (default 1500) tokens: kb's
//! own system prompt and numbered sources cut from the bench corpus (or the test fixtures).
//! Reported: time to first token (reading the prompt) and tokens/s after it, greedy, up to
//! `KB_BENCH_GEN_TOKENS` (default 96) tokens.
//!
//! `cargo bench --bench generate`; the model comes from `$KB_MODELS_DIR/SmolLM2-135M-Instruct`
//! (`scripts/fetch-models.sh --llm`). Knobs: `KB_BENCH_ROUNDS` (default 2, best of),
//! `KB_BENCH_LLM_THREADS` / `KB_BENCH_LLM_PREFILL_THREADS` (default: kb's config defaults),
//! `KB_BENCH_CANDLE=0` to skip the baseline.

mod common;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use common::{env_usize, num, ratio, root, Table};
use futures::StreamExt;
use kb::models::local_chat::{
    resolve_model_path, LocalChat, LocalChatOptions, DEFAULT_LOCAL_MODEL,
};
use kb::models::{ChatDelta, ChatModel, ChatRequest, Message};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Run {
    ttft: f64,
    tokens: usize,
    decode_secs: f64,
    prompt_tokens: usize,
}

impl Run {
    fn tok_s(&self) -> f64 {
        if self.tokens > 1 {
            (self.tokens - 1) as f64 / self.decode_secs
        } else {
            f64::NAN
        }
    }
}

fn main() -> Result<()> {
    let rounds = env_usize("KB_BENCH_ROUNDS", 2).max(1);
    let want_prompt = env_usize("KB_BENCH_PROMPT_TOKENS", 1500);
    let gen = env_usize("KB_BENCH_GEN_TOKENS", 96);
    let defaults = kb::config::Config::default();
    let threads = env_usize("KB_BENCH_LLM_THREADS", defaults.llm.threads);
    let prefill = env_usize("KB_BENCH_LLM_PREFILL_THREADS", defaults.llm.prefill_threads);
    let models =
        std::env::var("KB_MODELS_DIR").map_or_else(|_| root().join("models"), PathBuf::from);
    let original = resolve_model_path(&models, DEFAULT_LOCAL_MODEL)
        .context("the local model is missing: run scripts/fetch-models.sh --llm")?;

    let chat = LocalChat::load(
        &original,
        LocalChatOptions {
            threads,
            prefill_threads: prefill,
            context_tokens: 4096,
            queue_size: 4,
            flash_attention: match std::env::var("KB_BENCH_LLM_FA").as_deref() {
                Ok("1") => Some(true),
                Ok("0") => Some(false),
                _ => None,
            },
        },
    )?;
    // The file kb actually runs (a Q8_0 copy when the shipped file is Q4_1).
    let running = chat.model_path().to_path_buf();
    let messages = prompt_messages(&chat, want_prompt)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "kb generate bench: {} (running {}) | threads {threads} (prompt {prefill}) | best of {rounds}",
        original.display(),
        running.file_name().unwrap_or_default().to_string_lossy()
    );

    let mut kb_best: Option<Run> = None;
    let mut candle_best: Vec<(String, Run)> = Vec::new();
    let candle_files: Vec<PathBuf> = if std::env::var("KB_BENCH_CANDLE").as_deref() == Ok("0") {
        vec![]
    } else if running != original {
        vec![original.clone(), running.clone()]
    } else {
        vec![original.clone()]
    };
    let tokens = chat.tokenize_chat(&messages)?;
    for round in 0..rounds {
        eprintln!("generate: round {}/{rounds}", round + 1);
        let r = rt.block_on(run_kb(&chat, &messages, gen))?;
        if kb_best.as_ref().is_none_or(|b| r.ttft < b.ttft) {
            kb_best = Some(r);
        }
        for f in &candle_files {
            let r = run_candle(f, &tokens, gen, chat.eog_tokens())?;
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match candle_best.iter_mut().find(|(n, _)| *n == name) {
                Some((_, b)) if r.ttft < b.ttft => *b = r,
                Some(_) => {}
                None => candle_best.push((name, r)),
            }
        }
    }
    let kb = kb_best.expect("one round");
    let mut t = Table::new(
        format!(
            "local generation, {} prompt tokens, up to {gen} answer tokens (greedy)",
            kb.prompt_tokens
        ),
        &[
            "runtime",
            "first token s",
            "tokens/s after",
            "kb speed-up (first token, tokens/s)",
        ],
    );
    t.row(vec![
        format!(
            "kb: llama.cpp ({})",
            running.file_name().unwrap_or_default().to_string_lossy()
        ),
        num(kb.ttft),
        num(kb.tok_s()),
        "-".into(),
    ]);
    for (name, c) in &candle_best {
        t.row(vec![
            format!("candle quantized llama ({name})"),
            num(c.ttft),
            num(c.tok_s()),
            format!(
                "{}, {}",
                ratio(c.ttft, kb.ttft),
                ratio(kb.tok_s(), c.tok_s())
            ),
        ]);
    }
    t.note("speed-up: first token = candle time / kb time; tokens/s = kb / candle (both > 1 when kb is faster)");
    t.print();
    Ok(())
}

/// kb's RAG prompt around sources cut from real documents, grown until it reaches about
/// `want` tokens of the model's own tokenizer.
fn prompt_messages(chat: &LocalChat, want: usize) -> Result<Vec<Message>> {
    let text = corpus_text()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let question = "How do I create a virtual environment, and what does the --system-site-packages option change?";
    let build = |n: usize| -> Vec<Message> {
        let mut sources = String::new();
        for (i, part) in words[..n.min(words.len())].chunks(180).enumerate() {
            sources.push_str(&format!("[{}] (bench.txt)\n{}\n\n", i + 1, part.join(" ")));
        }
        vec![
            Message::new(
                "system",
                "Answer the question using only the numbered sources. Cite them as [n]. If they do not contain the answer, say you don't know.",
            ),
            Message::new("user", format!("Sources:\n{sources}\nQuestion: {question}")),
        ]
    };
    let (mut lo, mut hi) = (10, words.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if chat.tokenize_chat(&build(mid))?.len() <= want {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(build(lo))
}

fn corpus_text() -> Result<String> {
    let dirs = [
        std::env::var("KB_BENCH_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("../shared/eval/corpus")),
        root().join("test-artifacts/fixtures"),
        root().join("tests/fixtures"),
    ];
    let mut out = String::new();
    for d in &dirs {
        collect(d, &mut out, 200_000);
        if out.len() > 50_000 {
            break;
        }
    }
    anyhow::ensure!(
        out.len() > 10_000,
        "no text found for the bench prompt (set KB_BENCH_CORPUS)"
    );
    Ok(out)
}

fn collect(dir: &Path, out: &mut String, cap: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if out.len() >= cap {
            return;
        }
        if p.is_dir() {
            collect(&p, out, cap);
        } else if p
            .extension()
            .is_some_and(|e| e == "html" || e == "md" || e == "txt")
        {
            if let Ok(bytes) = std::fs::read(&p) {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                if let Ok(doc) =
                    kb_ingest::extract(&bytes, &name, None, &kb_ingest::Limits::default())
                {
                    out.push_str(&doc.text);
                    out.push('\n');
                }
            }
        }
    }
}

async fn run_kb(chat: &LocalChat, messages: &[Message], gen: usize) -> Result<Run> {
    let start = Instant::now();
    let mut stream = chat
        .stream(ChatRequest {
            messages: messages.to_vec(),
            max_tokens: gen,
            temperature: 0.0,
        })
        .await?;
    let mut first = None;
    let mut usage = None;
    while let Some(d) = stream.next().await {
        match d? {
            ChatDelta::Text(_) => {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
            ChatDelta::Usage(u) => usage = Some(u),
        }
    }
    let total = start.elapsed().as_secs_f64();
    let u = usage.context("no usage from the local model")?;
    let ttft = first.unwrap_or(total);
    Ok(Run {
        ttft,
        tokens: u.completion_tokens as usize,
        decode_secs: total - ttft,
        prompt_tokens: u.prompt_tokens as usize,
    })
}

/// candle 0.11's quantized llama, greedy, on the same prompt token ids.
fn run_candle(path: &Path, tokens: &[u32], gen: usize, eog: &[u32]) -> Result<Run> {
    let dev = Device::Cpu;
    let mut f = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut model =
        ModelWeights::from_gguf(content, &mut f, &dev).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let input = Tensor::new(tokens, &dev)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?;
    let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
    let ttft = start.elapsed().as_secs_f64();
    let mut produced = 1;
    let mut pos = tokens.len();
    while produced < gen && !eog.contains(&next) {
        let input = Tensor::new(&[next], &dev)?.unsqueeze(0)?;
        let logits = model.forward(&input, pos)?;
        next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        pos += 1;
        produced += 1;
    }
    Ok(Run {
        ttft,
        tokens: produced,
        decode_secs: start.elapsed().as_secs_f64() - ttft,
        prompt_tokens: tokens.len(),
    })
}
