//! A mutation fuzzer for what kb parses in its own process or in the extraction child:
//! sniffing, HTML / Markdown / text extraction, PDF page text assembly, and chunking (which
//! runs inside kb). `cargo fuzz` needs a nightly toolchain, which this project does not use,
//! so this is a plain test: `fuzz_ingest` (ignored; `scripts/fuzz-ingest.sh SECONDS` runs it)
//! mutates a seed corpus for a bounded time and writes any input that panics, breaks an
//! invariant or takes over 10 s to `ingest/fuzz/regressions/`; `regressions_stay_fixed`
//! replays the seeds and those files in every test run.

use kb_ingest::{
    chunk, extract, from_pdf_pages, ChunkConfig, ExtractedDoc, Limits, TokenCounter, Words,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn regressions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        max_text_bytes: 1 << 20,
        ..Limits::default()
    }
}

/// The pipeline on one input; Err(what broke) for an invariant, a panic for a crash.
fn run_one(bytes: &[u8], counter: &dyn TokenCounter) -> Result<(), String> {
    let l = limits();
    for name in ["doc.html", "doc.md", "doc.txt"] {
        // A PDF is parsed in the isolated child in kb; here only its page text is fuzzed.
        if bytes.windows(5).take(1024).any(|w| w == b"%PDF-") {
            break;
        }
        if let Ok(doc) = extract(bytes, name, None, &l) {
            check_chunks(&doc, counter)?;
        }
    }
    // PDF page text: the input split into "pages" at form feeds.
    let text = String::from_utf8_lossy(bytes);
    let pages: Vec<String> = text.split('\u{c}').map(str::to_string).collect();
    if let Ok(doc) = from_pdf_pages(pages, &l) {
        check_chunks(&doc, counter)?;
    }
    Ok(())
}

fn check_chunks(doc: &ExtractedDoc, counter: &dyn TokenCounter) -> Result<(), String> {
    for cfg in [
        ChunkConfig {
            max_tokens: 16,
            overlap_tokens: 4,
        },
        ChunkConfig {
            max_tokens: 254,
            overlap_tokens: 32,
        },
    ] {
        for (i, c) in chunk(doc, &cfg, counter).iter().enumerate() {
            if c.ord as usize != i {
                return Err(format!("chunk {i} has ord {}", c.ord));
            }
            if c.byte_start > c.byte_end || c.byte_end > doc.text.len() {
                return Err(format!(
                    "chunk {i} range {}..{} outside the text ({} bytes)",
                    c.byte_start,
                    c.byte_end,
                    doc.text.len()
                ));
            }
            if c.text.trim().is_empty() {
                return Err(format!("chunk {i} is empty"));
            }
        }
    }
    Ok(())
}

/// xorshift64*: deterministic from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b"<html>",
    b"</html>",
    b"<body>",
    b"<div>",
    b"</div>",
    b"<p>",
    b"<h1>",
    b"</h1>",
    b"<h2>",
    b"<table><tr><td>",
    b"</td></tr></table>",
    b"<script>",
    b"</script>",
    b"<!--",
    b"-->",
    b"<![CDATA[",
    b"&amp;",
    b"&#x1F600;",
    b"&#0;",
    b"# ",
    b"## ",
    b"```",
    b"\n\n",
    b"\r\n",
    b"- ",
    b"1. ",
    b"| a | b |\n|---|---|\n",
    b"> ",
    b"[x](y)",
    b"![i](u)",
    b"\xef\xbb\xbf",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x98\x80",
    b"\xcc\x81",
    b"\x0c",
    b"\t",
    b"\0",
    b"name (integer)\n",
    b"    indented\n",
];

fn seeds() -> Vec<Vec<u8>> {
    vec![
        b"<!doctype html><html><head><title>T</title></head><body><h1>Title</h1><p>First paragraph with words.</p><div><div><div><p>Deep</p></div></div></div><table><tr><th>a</th><td>1</td></tr></table></body></html>".to_vec(),
        b"# Heading\n\nSome text here.\n\n## Sub\n\n- item one\n- item two\n\n```rust\nfn main() {}\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n".to_vec(),
        "Plain text with unicode: caf\u{e9}, \u{65e5}\u{672c}\u{8a9e}, emoji \u{1F600}.\n\nSecond paragraph.\n"
            .as_bytes()
            .to_vec(),
        b"page one text\x0cpage two text\x0c\x0cpage four".to_vec(),
        b"name (integer)\n    The default is 5.\n\nother (string)\n    The default is none.\n".to_vec(),
    ]
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + rng.below(64)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                // Repeat a slice: deep nesting and long runs.
                let start = rng.below(v.len() + 1);
                let end = (start + rng.below(32)).min(v.len());
                let piece = v[start..end].to_vec();
                for _ in 0..rng.below(200) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let mut run = Vec::new();
                for _ in 0..rng.below(500) {
                    run.extend_from_slice(t);
                }
                v.splice(at..at, run);
            }
            _ => {
                v.insert(at, rng.next() as u8);
            }
        }
        v.truncate(256 * 1024);
    }
    v
}

fn save(input: &[u8], why: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    let dir = regressions_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("crash-{:016x}", h.finish()));
    std::fs::write(&path, input).unwrap();
    eprintln!("{why}: saved {}", path.display());
    path
}

fn check(input: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| run_one(input, &Words))) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

#[test]
fn regressions_stay_fixed() {
    let mut inputs = seeds();
    if let Ok(dir) = std::fs::read_dir(regressions_dir()) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            inputs.push(std::fs::read(e.path()).unwrap());
        }
    }
    for (i, input) in inputs.iter().enumerate() {
        if let Err(e) = check(input) {
            panic!("input {i}: {e}");
        }
    }
}

#[test]
#[ignore = "bounded fuzzing run: scripts/fuzz-ingest.sh"]
fn fuzz_ingest() {
    let secs: u64 = std::env::var("KB_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("KB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let corpus = seeds();
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut failures) = (0u64, Vec::new());
    std::panic::set_hook(Box::new(|_| {}));
    while Instant::now() < end {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base);
        let started = Instant::now();
        if let Err(e) = check(&input) {
            failures.push(save(&input, &e));
        } else if started.elapsed() > Duration::from_secs(10) {
            failures.push(save(&input, "slow (over 10 s)"));
        }
        runs += 1;
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "fuzz_ingest: {runs} inputs in {secs} s (seed {seed}), {} failing",
        failures.len()
    );
    assert!(failures.is_empty(), "failing inputs: {failures:?}");
}
