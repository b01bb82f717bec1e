//! Ingestion throughput, each figure next to a baseline measured in the same run:
//!
//! - extract: HTML with `kb_ingest::extract` vs a byte-level tag strip; PDF with
//!   `kb_ingest::pdf::extract_pages` (in this process) vs `pdftotext` run as a subprocess;
//! - chunk: `kb_ingest::chunk` (tokenizes once, sizes candidates from token offsets) vs the same
//!   text-splitter configuration re-encoding every candidate it tries (`NaiveSizer`);
//! - embed: `LocalEmbedder` (all-MiniLM-L6-v2) on full-size chunks at batch 1, 8 and 16: candle,
//!   native f32 and native int8.
//!
//! `cargo bench --bench ingest [-- extract chunk embed]`; knobs in benches/README.md.
//! Every figure is the best of `KB_BENCH_ROUNDS` rounds; kb and its baseline alternate within a
//! round, so a noisy neighbour slows both.

mod common;

use anyhow::{bail, Context, Result};
use common::{
    env_usize, mb, num, per_sec, pin_current_thread, pin_timer_thread, ratio, root, sections,
    time_per_call, unpin_current_thread, wanted, Table,
};
use kb::models::local_embed::{Engine, LocalEmbedder, Precision, QueueLimits};
use kb::models::{Embedder, Priority};
use kb_ingest::{Chunk, ChunkConfig, ExtractedDoc, Heading, Limits, MediaType};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use text_splitter::{ChunkSizer, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

const MODEL: &str = "all-MiniLM-L6-v2";
/// Small inputs are repeated until a measurement lasts this long.
const MIN_TIME: Duration = Duration::from_millis(300);
/// kb's chunking for all-MiniLM-L6-v2: 256 input tokens minus [CLS] and [SEP], 32 overlap.
const CHUNKING: ChunkConfig = ChunkConfig {
    max_tokens: 254,
    overlap_tokens: 32,
};

fn main() -> Result<()> {
    let sections = sections();
    let rounds = env_usize("KB_BENCH_ROUNDS", 3).max(1);
    let corpus = Corpus::load()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kb ingest bench: {} | {} HTML files ({:.1} MB), {} PDFs ({:.1} MB) | best of {rounds} rounds | {cores} cores",
        corpus.dir.display(),
        corpus.html.len(),
        mb(Input::total(&corpus.html)),
        corpus.pdf.len(),
        mb(Input::total(&corpus.pdf)),
    );

    // Extraction and chunking run on this thread; the embedder starts its own (unpinned).
    pin_timer_thread();

    let (html_docs, pdf_docs) = extraction(&corpus, rounds, wanted(&sections, "extract"))?;
    let want_chunk = wanted(&sections, "chunk");
    let want_embed = wanted(&sections, "embed");
    if !want_chunk && !want_embed {
        return Ok(());
    }
    let tokenizer = load_tokenizer()?;
    let chunks = chunking(&tokenizer, &html_docs, &pdf_docs, rounds, want_chunk);
    if want_embed {
        embedding(&tokenizer, &chunks, rounds)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs

struct Input {
    path: PathBuf,
    name: String,
    bytes: Vec<u8>,
}

impl Input {
    fn total(files: &[Input]) -> usize {
        files.iter().map(|f| f.bytes.len()).sum()
    }
}

struct Corpus {
    dir: PathBuf,
    html: Vec<Input>,
    pdf: Vec<Input>,
}

impl Corpus {
    /// `KB_BENCH_CORPUS`, else `../shared/eval/corpus`; if that is missing, the test fixtures.
    fn load() -> Result<Corpus> {
        let fixtures = root().join("test-artifacts/fixtures");
        let wanted = std::env::var_os("KB_BENCH_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("../shared/eval/corpus"));
        let dir = if wanted.is_dir() {
            wanted
        } else {
            eprintln!(
                "note: corpus {} not found; using {}",
                wanted.display(),
                fixtures.display()
            );
            fixtures
        };
        let mut paths = Vec::new();
        walk(&dir, &mut paths).with_context(|| {
            format!("reading {} (run scripts/test-fixtures.sh?)", dir.display())
        })?;
        paths.sort();
        let mut corpus = Corpus {
            dir: dir.clone(),
            html: Vec::new(),
            pdf: Vec::new(),
        };
        for path in paths {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let list = match ext.as_deref() {
                Some("html" | "htm") => &mut corpus.html,
                Some("pdf") => &mut corpus.pdf,
                _ => continue,
            };
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            list.push(Input { path, name, bytes });
        }
        if corpus.html.is_empty() && corpus.pdf.is_empty() {
            bail!("no .html or .pdf files under {}", dir.display());
        }
        Ok(corpus)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn models_dir() -> PathBuf {
    std::env::var_os("KB_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

/// The embedder's tokenizer as kb counts with it: no truncation, no padding.
fn load_tokenizer() -> Result<Tokenizer> {
    let path = models_dir().join(MODEL).join("tokenizer.json");
    let mut t = Tokenizer::from_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (run scripts/fetch-models.sh)", path.display()))?;
    t.with_truncation(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    t.with_padding(None);
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Extraction

fn extract_html(files: &[Input]) -> (Vec<ExtractedDoc>, usize) {
    let limits = Limits::default();
    let mut docs = Vec::with_capacity(files.len());
    let mut failed = 0;
    for f in files {
        match kb_ingest::extract(&f.bytes, &f.name, None, &limits) {
            Ok(d) => docs.push(d),
            Err(_) => failed += 1,
        }
    }
    (docs, failed)
}

/// In-process PDF extraction, then page assembly as kb does after its isolated child.
fn extract_pdfs(files: &[Input]) -> (Vec<ExtractedDoc>, usize) {
    let limits = Limits::default();
    // pdf-extract panics on some pages (caught per page); keep the default hook quiet meanwhile.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut docs = Vec::with_capacity(files.len());
    let mut failed = 0;
    for f in files {
        match kb_ingest::pdf::extract_pages(&f.bytes, limits.max_pages)
            .and_then(|pages| kb_ingest::from_pdf_pages(pages, &limits))
        {
            Ok(d) => docs.push(d),
            Err(_) => failed += 1,
        }
    }
    std::panic::set_hook(hook);
    (docs, failed)
}

/// HTML baseline: keep the bytes outside `<...>`; returns how many were kept.
fn strip_tags(files: &[Input]) -> usize {
    let mut kept = 0;
    for f in files {
        let mut inside = false;
        for &b in &f.bytes {
            match b {
                b'<' => inside = true,
                b'>' => inside = false,
                _ if !inside => kept += 1,
                _ => {}
            }
        }
    }
    kept
}

/// PDF baseline: `pdftotext -q -enc UTF-8 FILE -` per file (process start included, as kb's
/// own isolated extraction also starts a process per PDF). None if pdftotext is missing or fails.
fn pdftotext(files: &[Input]) -> Option<usize> {
    let mut text = 0;
    for f in files {
        let out = Command::new("pdftotext")
            .args(["-q", "-enc", "UTF-8"])
            .arg(&f.path)
            .arg("-")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        text += out.stdout.len();
    }
    Some(text)
}

fn extraction(
    corpus: &Corpus,
    rounds: usize,
    timed: bool,
) -> Result<(Vec<ExtractedDoc>, Vec<ExtractedDoc>)> {
    if !timed {
        return Ok((extract_html(&corpus.html).0, extract_pdfs(&corpus.pdf).0));
    }
    let have_pdftotext = !corpus.pdf.is_empty() && pdftotext(&corpus.pdf[..1]).is_some();
    // Best seconds per pass: kb HTML, tag strip, kb PDF, pdftotext.
    let mut t = [f64::INFINITY; 4];
    let (mut html, mut pdf) = ((Vec::new(), 0), (Vec::new(), 0));
    let (mut stripped, mut poppler_text) = (0, 0);
    for round in 0..rounds {
        eprintln!("extract: round {}/{rounds}", round + 1);
        if !corpus.html.is_empty() {
            let (s, out) = time_per_call(MIN_TIME, || extract_html(&corpus.html));
            t[0] = t[0].min(s);
            html = out;
            let (s, out) = time_per_call(MIN_TIME, || strip_tags(&corpus.html));
            t[1] = t[1].min(s);
            stripped = out;
        }
        if !corpus.pdf.is_empty() {
            let (s, out) = time_per_call(MIN_TIME, || extract_pdfs(&corpus.pdf));
            t[2] = t[2].min(s);
            pdf = out;
            if have_pdftotext {
                let (s, out) = time_per_call(MIN_TIME, || pdftotext(&corpus.pdf));
                t[3] = t[3].min(s);
                poppler_text = out.unwrap_or(0);
            }
        }
    }

    let mut table = Table::new(
        "extraction (MB = 10^6 bytes of input)",
        &[
            "figure",
            "kb",
            "baseline",
            "baseline value",
            "kb / baseline",
        ],
    );
    if !corpus.html.is_empty() {
        let (bytes, files) = (Input::total(&corpus.html) as f64, corpus.html.len() as f64);
        table.row(vec![
            "HTML MB/s".into(),
            num(per_sec(bytes / 1e6, t[0])),
            "tag strip".into(),
            num(per_sec(bytes / 1e6, t[1])),
            ratio(t[1], t[0]),
        ]);
        table.row(vec![
            "HTML pages/s".into(),
            num(per_sec(files, t[0])),
            "tag strip".into(),
            num(per_sec(files, t[1])),
            ratio(t[1], t[0]),
        ]);
        let text: usize = html.0.iter().map(|d| d.text.len()).sum();
        table.note(format!(
            "HTML: {} files, {} failed; text out: kb {:.2} MB, tag strip {:.2} MB",
            corpus.html.len(),
            html.1,
            mb(text),
            mb(stripped)
        ));
    }
    if !corpus.pdf.is_empty() {
        let pages: u32 = pdf.0.iter().map(|d| d.pages).sum();
        let bytes = Input::total(&corpus.pdf) as f64;
        let base = if have_pdftotext {
            "pdftotext"
        } else {
            "pdftotext (missing)"
        };
        table.row(vec![
            "PDF pages/s".into(),
            num(per_sec(pages as f64, t[2])),
            base.into(),
            num(per_sec(pages as f64, t[3])),
            ratio(t[3], t[2]),
        ]);
        table.row(vec![
            "PDF MB/s".into(),
            num(per_sec(bytes / 1e6, t[2])),
            base.into(),
            num(per_sec(bytes / 1e6, t[3])),
            ratio(t[3], t[2]),
        ]);
        let text: usize = pdf.0.iter().map(|d| d.text.len()).sum();
        table.note(format!(
            "PDF: {} files, {pages} pages, {} failed; text out: kb {:.2} MB, pdftotext {:.2} MB",
            corpus.pdf.len(),
            pdf.1,
            mb(text),
            mb(poppler_text)
        ));
    }
    table.print();
    Ok((html.0, pdf.0))
}

// ---------------------------------------------------------------------------------------------
// Chunking

/// The baseline sizer: re-encodes every candidate chunk the splitter tries.
struct NaiveSizer<'a>(&'a Tokenizer);

impl ChunkSizer for NaiveSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.0.encode(chunk, false).map(|e| e.len()).unwrap_or(0)
    }
}

/// The splitter kb uses for this media type and configuration, sized naively. Returns the
/// number of chunks (kb also hashes each chunk and looks up its page and heading: cheap).
fn naive_chunk(doc: &ExtractedDoc, tokenizer: &Tokenizer) -> usize {
    let config = text_splitter::ChunkConfig::new(CHUNKING.max_tokens)
        .with_overlap(CHUNKING.overlap_tokens)
        .expect("overlap below capacity")
        .with_sizer(NaiveSizer(tokenizer));
    match doc.media_type {
        MediaType::Markdown | MediaType::Html => {
            MarkdownSplitter::new(config).chunks(&doc.text).count()
        }
        MediaType::Text | MediaType::Pdf => TextSplitter::new(config).chunks(&doc.text).count(),
    }
}

/// One document of at least `target` bytes: `docs` joined by blank lines, repeated if needed,
/// with page starts and headings kept in step.
fn concat(docs: &[ExtractedDoc], media_type: MediaType, target: usize) -> ExtractedDoc {
    let mut out = ExtractedDoc {
        media_type,
        title: None,
        text: String::with_capacity(target + (1 << 20)),
        page_starts: Vec::new(),
        pages: 0,
        headings: Vec::new(),
    };
    'fill: loop {
        for d in docs {
            if !out.text.is_empty() {
                out.text.push_str("\n\n");
            }
            let base = out.text.len();
            out.text.push_str(&d.text);
            out.page_starts
                .extend(d.page_starts.iter().map(|s| s + base));
            out.pages += d.pages;
            out.headings.extend(d.headings.iter().map(|h| Heading {
                byte_start: h.byte_start + base,
                ..h.clone()
            }));
            if out.text.len() >= target {
                break 'fill;
            }
        }
    }
    out
}

/// The first `max` bytes of `doc` (cut after a newline when one is near).
fn prefix(doc: &ExtractedDoc, max: usize) -> ExtractedDoc {
    let mut end = max.min(doc.text.len());
    while !doc.text.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(i) = doc.text[..end].rfind('\n').filter(|&i| i > end / 2) {
        end = i + 1;
    }
    let page_starts: Vec<usize> = doc
        .page_starts
        .iter()
        .copied()
        .filter(|&s| s < end)
        .collect();
    ExtractedDoc {
        media_type: doc.media_type,
        title: None,
        text: doc.text[..end].to_string(),
        pages: page_starts.len() as u32,
        page_starts,
        headings: doc
            .headings
            .iter()
            .filter(|h| h.byte_start < end)
            .cloned()
            .collect(),
    }
}

/// Returns kb's chunks of the large texts (for the embedding section).
fn chunking(
    tokenizer: &Tokenizer,
    html_docs: &[ExtractedDoc],
    pdf_docs: &[ExtractedDoc],
    rounds: usize,
    timed: bool,
) -> Vec<Chunk> {
    let target = env_usize("KB_BENCH_CHUNK_MB", 2).max(1) * 1_000_000;
    let naive_bytes = env_usize("KB_BENCH_NAIVE_KB", 200).max(1) * 1000;
    let mut table = Table::new(
        format!(
            "chunking, max {} tokens, overlap {} (MB = 10^6 bytes of text)",
            CHUNKING.max_tokens, CHUNKING.overlap_tokens
        ),
        &[
            "figure",
            "kb MB/s",
            "baseline",
            "baseline MB/s",
            "kb / baseline",
        ],
    );
    let mut all = Vec::new();
    let inputs = [
        ("PDF text", MediaType::Pdf, pdf_docs),
        ("HTML text", MediaType::Html, html_docs),
    ];
    for (label, media_type, docs) in inputs {
        if docs.is_empty() {
            continue;
        }
        let big = concat(docs, media_type, target);
        if !timed {
            all.extend(kb_ingest::chunk(&big, &CHUNKING, tokenizer));
            continue;
        }
        let small = prefix(&big, naive_bytes);
        // Best seconds per pass: kb on the large text, kb on the slice, naive on the slice.
        let mut t = [f64::INFINITY; 3];
        let (mut chunks, mut n_kb, mut n_naive) = (Vec::new(), 0, 0);
        for round in 0..rounds {
            eprintln!("chunk {label}: round {}/{rounds}", round + 1);
            let (s, out) = time_per_call(MIN_TIME, || kb_ingest::chunk(&big, &CHUNKING, tokenizer));
            t[0] = t[0].min(s);
            chunks = out;
            let (s, out) = time_per_call(MIN_TIME, || {
                kb_ingest::chunk(&small, &CHUNKING, tokenizer).len()
            });
            t[1] = t[1].min(s);
            n_kb = out;
            let (s, out) = time_per_call(MIN_TIME, || naive_chunk(&small, tokenizer));
            t[2] = t[2].min(s);
            n_naive = out;
        }
        let (big_mb, small_mb) = (mb(big.text.len()), mb(small.text.len()));
        let naive = format!("naive, {:.0} KB", small_mb * 1000.0);
        table.row(vec![
            format!("{label}, kb on {big_mb:.1} MB"),
            num(big_mb / t[0]),
            naive.clone(),
            num(small_mb / t[2]),
            ratio(big_mb / t[0], small_mb / t[2]),
        ]);
        table.row(vec![
            format!("{label}, kb on the same {:.0} KB", small_mb * 1000.0),
            num(small_mb / t[1]),
            naive,
            num(small_mb / t[2]),
            ratio(t[2], t[1]),
        ]);
        let tokens: u64 = chunks.iter().map(|c| c.token_count as u64).sum();
        table.note(format!(
            "{label}: kb made {} chunks of {:.0} tokens on average from {big_mb:.1} MB; \
             on the slice kb made {n_kb} chunks, naive {n_naive}",
            chunks.len(),
            tokens as f64 / chunks.len().max(1) as f64
        ));
        all.extend(chunks);
    }
    if timed {
        table.print();
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Embedding

fn embedding(tokenizer: &Tokenizer, chunks: &[Chunk], rounds: usize) -> Result<()> {
    let n = env_usize("KB_BENCH_EMBED_CHUNKS", 48).max(1);
    // Full-size chunks (most of what ingestion embeds), spread over the documents.
    let mut pool: Vec<&Chunk> = chunks
        .iter()
        .filter(|c| c.token_count as usize >= CHUNKING.max_tokens * 4 / 5)
        .collect();
    if pool.len() < n {
        pool = chunks.iter().collect();
        pool.sort_by_key(|c| std::cmp::Reverse(c.token_count));
        pool.truncate(n);
    }
    let step = (pool.len() / n).max(1);
    let texts: Vec<String> = pool
        .iter()
        .step_by(step)
        .take(n)
        .map(|c| c.text.clone())
        .collect();
    if texts.is_empty() {
        bail!("no chunks to embed");
    }

    let dir = models_dir().join(MODEL);
    // The model threads must not inherit this thread's pin.
    unpin_current_thread();
    let engines = [
        ("candle", Engine::Candle, Precision::F32),
        ("native", Engine::Native, Precision::F32),
        ("native-int8", Engine::Native, Precision::Int8),
    ];
    let mut loaded = Vec::new();
    for (name, e, p) in engines {
        loaded.push((
            name,
            LocalEmbedder::load_with(&dir, MODEL, e, 0, p, QueueLimits::default())
                .with_context(|| format!("loading the embedder from {}", dir.display()))?,
        ));
    }
    pin_current_thread();
    let max_input = loaded[0].1.max_input_tokens();
    // Tokens the model reads: with [CLS] and [SEP], truncated as the embedder does.
    let tokens: usize = texts
        .iter()
        .map(|t| {
            tokenizer
                .encode(t.as_str(), true)
                .map(|e| e.len().min(max_input))
                .unwrap_or(0)
        })
        .sum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let embed = |e: &LocalEmbedder, batch: &[String]| -> Result<Vec<Vec<f32>>> {
        let vectors = rt.block_on(e.embed(batch.to_vec(), Priority::Bulk))?;
        anyhow::ensure!(
            vectors.len() == batch.len(),
            "embedder returned too few vectors"
        );
        Ok(vectors)
    };
    // Same vectors: the native engine against candle's, text by text; int8 against both.
    let reference = embed(&loaded[0].1, &texts)?;
    let native = embed(&loaded[1].1, &texts)?;
    let int8 = embed(&loaded[2].1, &texts)?;
    let cosines = |x: &[Vec<f32>], y: &[Vec<f32>]| -> (f32, f32) {
        let c: Vec<f32> = x
            .iter()
            .zip(y)
            .map(|(a, b)| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>())
            .collect();
        let min = c.iter().copied().fold(f32::INFINITY, f32::min);
        (min, c.iter().sum::<f32>() / c.len() as f32)
    };
    let (min_cos, _) = cosines(&reference, &native);
    let (int8_min, int8_mean) = cosines(&native, &int8);

    let sizes = [1usize, 8, 16];
    // best[engine][size], seconds; engines alternate within a round so noise hits both.
    let mut best = vec![[f64::INFINITY; 3]; loaded.len()];
    for round in 0..rounds {
        eprintln!("embed: round {}/{rounds}", round + 1);
        for (i, &b) in sizes.iter().enumerate() {
            for (ei, (_, e)) in loaded.iter().enumerate() {
                let t = Instant::now();
                for group in texts.chunks(b) {
                    embed(e, group)?;
                }
                best[ei][i] = best[ei][i].min(t.elapsed().as_secs_f64());
            }
        }
    }

    let mut table = Table::new(
        format!(
            "embedding, {MODEL}, {} chunks of {:.0} tokens on average",
            texts.len(),
            tokens as f64 / texts.len() as f64
        ),
        &[
            "engine",
            "batch",
            "tokens/s",
            "chunks/s",
            "vs candle batch 8",
            "vs native same batch",
        ],
    );
    let base = best[0][1];
    for (ei, (name, _)) in loaded.iter().enumerate() {
        for (i, &b) in sizes.iter().enumerate() {
            let label = if ei == 0 && b == 8 {
                "8 (baseline)".to_string()
            } else {
                b.to_string()
            };
            table.row(vec![
                name.to_string(),
                label,
                num(tokens as f64 / best[ei][i]),
                num(texts.len() as f64 / best[ei][i]),
                ratio(base, best[ei][i]),
                ratio(best[1][i], best[ei][i]),
            ]);
        }
    }
    table.note(format!(
        "tokens include [CLS] and [SEP]; padding within a batch is not counted; \
         lowest cosine between the engines' vectors: {min_cos:.6}"
    ));
    table.note(format!(
        "native-int8 (int8 linear layers) vs native f32: cosine lowest {int8_min:.5}, \
         mean {int8_mean:.5}"
    ));
    table.print();
    cosine_spread(chunks, &embed, &loaded[1].1, &loaded[2].1, &native, &int8)?;
    for (_, e) in &loaded {
        e.shutdown();
    }
    Ok(())
}

type EmbedFn<'a> = dyn Fn(&LocalEmbedder, &[String]) -> Result<Vec<Vec<f32>>> + 'a;

/// int8 vs f32 cosines over more chunks than the timed ones: `KB_BENCH_COSINE_CHUNKS` chunks
/// of any size, spread over the documents (0 = only the timed chunks, the default).
fn cosine_spread(
    chunks: &[Chunk],
    embed: &EmbedFn,
    f32e: &LocalEmbedder,
    int8e: &LocalEmbedder,
    timed_f32: &[Vec<f32>],
    timed_int8: &[Vec<f32>],
) -> Result<()> {
    let n = env_usize("KB_BENCH_COSINE_CHUNKS", 0);
    let mut cos: Vec<f32> = match chunks.len().checked_div(n) {
        None => timed_f32
            .iter()
            .zip(timed_int8)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
            .collect(),
        Some(step) => {
            let step = step.max(1);
            let texts: Vec<String> = chunks
                .iter()
                .step_by(step)
                .take(n)
                .map(|c| c.text.clone())
                .collect();
            eprintln!("embed: cosines over {} chunks", texts.len());
            let mut out = Vec::with_capacity(texts.len());
            for group in texts.chunks(16) {
                let (a, b) = (embed(f32e, group)?, embed(int8e, group)?);
                out.extend(
                    a.iter()
                        .zip(&b)
                        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>()),
                );
            }
            out
        }
    };
    cos.sort_by(f32::total_cmp);
    let q = |f: f64| cos[((cos.len() - 1) as f64 * f).round() as usize];
    let mean = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
    let mut table = Table::new(
        format!(
            "native-int8 vs native f32, cosine over {} chunks",
            cos.len()
        ),
        &[
            "min",
            "p1",
            "p5",
            "median",
            "mean",
            "below 0.99",
            "below 0.995",
        ],
    );
    table.row(vec![
        format!("{:.5}", q(0.0)),
        format!("{:.5}", q(0.01)),
        format!("{:.5}", q(0.05)),
        format!("{:.5}", q(0.5)),
        format!("{mean:.5}"),
        cos.iter().filter(|&&c| c < 0.99).count().to_string(),
        cos.iter().filter(|&&c| c < 0.995).count().to_string(),
    ]);
    table.print();
    Ok(())
}
