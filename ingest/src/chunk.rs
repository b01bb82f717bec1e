//! Token-sized, structure-aware chunking.
//!
//! Chunks are sized with the embedder's own tokenizer so none exceeds what the embedder reads.
//! Re-encoding every candidate the splitter tries is what makes naive token chunking slow
//! (0.1 MB/s): instead the whole document is tokenized once, and the sizer answers each
//! candidate from the token offsets with two binary searches.

use crate::{ExtractedDoc, MediaType};
use sha2::{Digest, Sha256};
use text_splitter::{ChunkSizer, MarkdownSplitter, TextSplitter};

/// Something that can tokenize text into byte ranges (no special tokens).
pub trait TokenCounter: Sync {
    /// Byte ranges of the tokens of `text`, in order.
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)>;
    /// Number of tokens in `text`.
    fn count(&self, text: &str) -> usize {
        self.token_offsets(text).len()
    }
}

impl TokenCounter for tokenizers::Tokenizer {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        // Callers pass tokenizers with truncation and padding switched off; encode in
        // line-aligned segments so memory stays bounded on very large documents.
        let mut out = Vec::with_capacity(text.len() / 4);
        for (base, seg) in segments(text, 64 * 1024) {
            if let Ok(enc) = self.encode(seg, false) {
                out.extend(enc.get_offsets().iter().map(|&(s, e)| (base + s, base + e)));
            }
        }
        out
    }

    fn count(&self, text: &str) -> usize {
        segments(text, 64 * 1024)
            .map(|(_, seg)| self.encode(seg, false).map(|e| e.len()).unwrap_or(0))
            .sum()
    }
}

/// Split `text` into pieces of about `target` bytes, cut just after a newline (or whitespace),
/// so tokenizers that pre-split on whitespace see the same words.
fn segments(text: &str, target: usize) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= text.len() {
            return None;
        }
        let mut end = (start + target).min(text.len());
        if end < text.len() {
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let window = &text[start..end];
            if let Some(i) = window.rfind('\n').filter(|&i| i > 0) {
                end = start + i + 1;
            } else if let Some(i) = window.rfind(char::is_whitespace).filter(|&i| i > 0) {
                end = start + i + 1;
                while !text.is_char_boundary(end) {
                    end += 1;
                }
            }
        }
        let piece = (start, &text[start..end]);
        start = end;
        Some(piece)
    })
}

/// Text handed to the splitter at a time.
const BLOCK_BYTES: usize = 16 * 1024;

/// Cut `text` into blocks of at most about `target` bytes, at the best boundary in the last
/// quarter of each block: a Markdown heading (when `markdown`), else a blank line, else a line
/// end, else whitespace.
fn blocks(text: &str, target: usize, markdown: bool) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + target).min(text.len());
        if end < text.len() {
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let lo = start + target * 3 / 4;
            let window = &text[start..end];
            let cut = |pat: &str| window.rfind(pat).map(|i| start + i + 1).filter(|&c| c > lo);
            let heading = if markdown { cut("\n#") } else { None };
            end = heading
                .or_else(|| cut("\n\n"))
                .or_else(|| cut("\n"))
                .or_else(|| cut(" "))
                .unwrap_or(end);
        }
        out.push((start, &text[start..end]));
        start = end;
    }
    out
}

#[derive(Debug, Clone)]
pub struct ChunkConfig {
    /// Largest chunk, in tokens of the counter (excluding any special tokens the embedder adds).
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks.
    pub overlap_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub ord: u32,
    pub text: String,
    pub token_count: u32,
    pub byte_start: usize,
    pub byte_end: usize,
    pub page: Option<u32>,
    pub heading: Option<String>,
    /// sha256 of the chunk text, hex.
    pub content_hash: String,
}

/// Answers sizes from one tokenization of the whole text.
struct PrefixSizer<'a> {
    base: usize,
    len: usize,
    starts: Vec<usize>,
    ends: Vec<usize>,
    counter: &'a dyn TokenCounter,
}

impl PrefixSizer<'_> {
    fn tokens_in(&self, a: usize, b: usize) -> usize {
        // Tokens overlapping [a, b): a token cut by a boundary counts, so the estimate never
        // undercounts what re-encoding the slice would give.
        let first = self.ends.partition_point(|&e| e <= a);
        let last = self.starts.partition_point(|&s| s < b);
        last.saturating_sub(first)
    }
}

impl ChunkSizer for PrefixSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        let p = chunk.as_ptr() as usize;
        if p >= self.base && p + chunk.len() <= self.base + self.len {
            let a = p - self.base;
            self.tokens_in(a, a + chunk.len())
        } else {
            self.counter.count(chunk)
        }
    }
}

/// Split a document into chunks of at most `cfg.max_tokens` tokens of `counter`.
pub fn chunk(doc: &ExtractedDoc, cfg: &ChunkConfig, counter: &dyn TokenCounter) -> Vec<Chunk> {
    let text = doc.text.as_str();
    let offsets = counter.token_offsets(text);
    let sizer = PrefixSizer {
        base: text.as_ptr() as usize,
        len: text.len(),
        starts: offsets.iter().map(|o| o.0).collect(),
        ends: offsets.iter().map(|o| o.1).collect(),
        counter,
    };
    let max = cfg.max_tokens.max(8);
    let overlap = cfg.overlap_tokens.min(max / 2);
    // The splitter's cost grows faster than linearly with the text it is given, so it is fed
    // blocks of bounded size, cut at structural boundaries (headings, blank lines).
    let markdown = matches!(doc.media_type, MediaType::Markdown | MediaType::Html);
    let config = || {
        text_splitter::ChunkConfig::new(max)
            .with_overlap(overlap)
            .expect("overlap below capacity")
            .with_sizer(&sizer)
    };
    let md_splitter = MarkdownSplitter::new(config());
    let txt_splitter = TextSplitter::new(config());
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    for (base, block) in blocks(text, BLOCK_BYTES, markdown) {
        let found: Vec<(usize, usize)> = if markdown {
            md_splitter
                .chunk_indices(block)
                .map(|(o, s)| (base + o, base + o + s.len()))
                .collect()
        } else {
            txt_splitter
                .chunk_indices(block)
                .map(|(o, s)| (base + o, base + o + s.len()))
                .collect()
        };
        pieces.extend(found);
    }
    pieces
        .into_iter()
        .filter(|&(a, b)| text[a..b].chars().any(|c| c.is_alphanumeric()))
        .enumerate()
        .map(|(ord, (a, b))| {
            let t = &text[a..b];
            Chunk {
                ord: ord as u32,
                text: t.to_string(),
                token_count: sizer.tokens_in(a, b) as u32,
                byte_start: a,
                byte_end: b,
                page: doc.page_at(a),
                heading: doc.heading_at(a),
                content_hash: hex::encode(Sha256::digest(t.as_bytes())),
            }
        })
        .collect()
}

/// Whitespace tokens: a counter for tests and tools that have no model files (the chunker's
/// logic does not depend on the tokenizer).
pub struct Words;

impl TokenCounter for Words {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{extract, Limits};

    use crate::Words;

    #[test]
    fn chunks_respect_the_limit_and_overlap() {
        let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
        let text = words
            .chunks(10)
            .map(|s| s.join(" ") + ".")
            .collect::<Vec<_>>()
            .join(" ");
        let doc = extract(text.as_bytes(), "a.txt", None, &Limits::default()).unwrap();
        let cfg = ChunkConfig {
            max_tokens: 50,
            overlap_tokens: 10,
        };
        let chunks = chunk(&doc, &cfg, &Words);
        assert!(chunks.len() >= 20, "{}", chunks.len());
        for c in &chunks {
            assert!(
                Words.count(&c.text) <= 50,
                "chunk of {} words",
                Words.count(&c.text)
            );
            assert_eq!(c.token_count as usize, Words.count(&c.text));
            assert_eq!(&doc.text[c.byte_start..c.byte_end], c.text);
        }
        // Every word is in some chunk, and neighbours overlap.
        for w in &words {
            assert!(
                chunks.iter().any(|c| c.text.contains(w.as_str())),
                "{w} lost"
            );
        }
        assert!(chunks[0].byte_end > chunks[1].byte_start, "no overlap");
        let ords: Vec<u32> = chunks.iter().map(|c| c.ord).collect();
        assert_eq!(ords, (0..chunks.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn markdown_chunks_carry_heading_paths() {
        let mut md = String::from("# Manual\n\n");
        for s in ["Install", "Configure"] {
            md.push_str(&format!("## {s}\n\n"));
            for i in 0..40 {
                md.push_str(&format!("{s} sentence number {i} has words. "));
            }
            md.push_str("\n\n");
        }
        let doc = extract(md.as_bytes(), "m.md", None, &Limits::default()).unwrap();
        let chunks = chunk(
            &doc,
            &ChunkConfig {
                max_tokens: 60,
                overlap_tokens: 0,
            },
            &Words,
        );
        let c = chunks
            .iter()
            .find(|c| c.text.contains("Configure sentence number 30"))
            .unwrap();
        assert_eq!(c.heading.as_deref(), Some("Manual > Configure"));
    }

    #[test]
    fn identical_text_gives_identical_hashes() {
        let doc = extract(b"alpha beta gamma", "a.txt", None, &Limits::default()).unwrap();
        let cfg = ChunkConfig {
            max_tokens: 100,
            overlap_tokens: 0,
        };
        let a = chunk(&doc, &cfg, &Words);
        let b = chunk(&doc, &cfg, &Words);
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].content_hash.len(), 64);
    }

    #[test]
    fn blocks_cover_text_and_cut_at_headings() {
        let text = "# A\n\npara one.\n\n## B\n\npara two is here.\n".repeat(2000);
        let bs = blocks(&text, 1000, true);
        assert!(bs.len() > 10);
        let mut expect = 0;
        for (base, b) in &bs {
            assert_eq!(*base, expect);
            assert!(b.len() <= 1000);
            expect += b.len();
        }
        assert_eq!(expect, text.len());
        assert!(
            bs[1..].iter().all(|(_, b)| b.starts_with('#')),
            "cut at headings"
        );
    }

    #[test]
    fn segments_cover_text_exactly() {
        let text = "line one\nline two é\n".repeat(5000);
        let mut rebuilt = String::new();
        let mut expect = 0;
        for (base, seg) in segments(&text, 1000) {
            assert_eq!(base, expect);
            expect += seg.len();
            rebuilt.push_str(seg);
        }
        assert_eq!(rebuilt, text);
    }
}
