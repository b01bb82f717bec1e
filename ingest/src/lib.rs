//! kb-ingest: bytes -> text -> token-sized chunks.
//!
//! Pure and synchronous: no async runtime, no HTTP. Limits are arguments, never globals.
//! PDF parsing is the one hostile part: [`pdf::extract_isolated`] runs it in a child process
//! with memory and CPU-time limits so a bad file fails its document, never the caller.

pub mod chunk;
pub mod html;
pub mod pdf;
pub mod sniff;

pub use chunk::{chunk, Chunk, ChunkConfig, TokenCounter, Words};
pub use sniff::{sniff, MediaType};

use std::time::Duration;

/// Limits applied while extracting one document.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest input accepted, in bytes.
    pub max_bytes: usize,
    /// Largest number of PDF pages accepted.
    pub max_pages: usize,
    /// Wall-clock limit for PDF extraction (the child is killed after it).
    pub max_time: Duration,
    /// A PDF's pages report progress: a child that has finished no page for this long is
    /// stopped before `max_time` (a page the parser spins on).
    pub max_stall: Duration,
    /// Address-space limit of the PDF extraction child, in bytes. Caps decompressed data too.
    pub max_memory_bytes: u64,
    /// Largest amount of extracted text accepted, in bytes.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 100 * 1024 * 1024,
            max_pages: 5_000,
            max_time: Duration::from_secs(120),
            max_stall: Duration::from_secs(30),
            max_memory_bytes: 2 * 1024 * 1024 * 1024,
            max_text_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A heading seen in the extracted text, with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heading {
    pub byte_start: usize,
    pub level: u8,
    pub text: String,
}

/// Text extracted from one document.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExtractedDoc {
    pub media_type: MediaType,
    pub title: Option<String>,
    /// The whole text. For PDFs, pages joined by a blank line.
    pub text: String,
    /// For PDFs: byte offset in `text` where each page starts (index 0 = page 1). Empty otherwise.
    pub page_starts: Vec<usize>,
    /// Number of pages (PDF) or 0.
    pub pages: u32,
    /// Headings in document order (Markdown and HTML).
    pub headings: Vec<Heading>,
}

impl ExtractedDoc {
    /// The 1-based page containing byte offset `pos`, for PDFs.
    pub fn page_at(&self, pos: usize) -> Option<u32> {
        if self.page_starts.is_empty() {
            return None;
        }
        let idx = self.page_starts.partition_point(|&s| s <= pos);
        Some(idx.max(1) as u32)
    }

    /// The heading path ("A > B > C") in effect at byte offset `pos`.
    pub fn heading_at(&self, pos: usize) -> Option<String> {
        let upto = self.headings.partition_point(|h| h.byte_start <= pos);
        if upto == 0 {
            return None;
        }
        // Walk back collecting the nearest heading of each shallower level.
        let mut path: Vec<&Heading> = Vec::new();
        let mut level = u8::MAX;
        for h in self.headings[..upto].iter().rev() {
            if h.level < level {
                path.push(h);
                level = h.level;
                if level <= 1 {
                    break;
                }
            }
        }
        path.reverse();
        Some(
            path.iter()
                .map(|h| h.text.as_str())
                .collect::<Vec<_>>()
                .join(" > "),
        )
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExtractError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported file type: {0}")]
    Unsupported(String),
    #[error("the file is not valid UTF-8 text")]
    InvalidUtf8,
    #[error("the document contains no extractable text{0}")]
    NoText(String),
    #[error("the PDF has {pages} pages, over the limit of {limit}")]
    TooManyPages { pages: usize, limit: usize },
    #[error("the PDF could not be read: {0}")]
    Pdf(String),
    #[error("extraction took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("extraction made no progress for {0:?} (a page the PDF parser could not finish) and was stopped")]
    Stalled(Duration),
    #[error("extraction exceeded its resource limits ({0})")]
    ResourceLimit(String),
    #[error("extraction failed: {0}")]
    Extractor(String),
    #[error("the extracted text is larger than the limit of {0} bytes")]
    TextTooLarge(usize),
}

/// Extract text from `bytes`, sniffing the real type from the content.
///
/// This parses in the calling process: callers that may see hostile input use
/// [`pdf::extract_isolated`] instead (kb does).
pub fn extract(
    bytes: &[u8],
    filename: &str,
    declared_media_type: Option<&str>,
    limits: &Limits,
) -> Result<ExtractedDoc, ExtractError> {
    let media_type = check_and_sniff(bytes, filename, declared_media_type, limits)?;
    match media_type {
        MediaType::Pdf => {
            let pages = pdf::extract_pages(bytes, limits.max_pages)?;
            from_pdf_pages(pages, limits)
        }
        other => extract_text_like(bytes, other, limits),
    }
}

/// Size checks plus [`sniff`].
pub fn check_and_sniff(
    bytes: &[u8],
    filename: &str,
    declared_media_type: Option<&str>,
    limits: &Limits,
) -> Result<MediaType, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ExtractError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    sniff(bytes, filename, declared_media_type)
}

/// Extract a non-PDF document (HTML, Markdown, plain text).
pub fn extract_text_like(
    bytes: &[u8],
    media_type: MediaType,
    limits: &Limits,
) -> Result<ExtractedDoc, ExtractError> {
    let raw = std::str::from_utf8(strip_bom(bytes)).map_err(|_| ExtractError::InvalidUtf8)?;
    let doc = match media_type {
        MediaType::Html => {
            let out = html::html_to_text(raw);
            ExtractedDoc {
                media_type,
                title: out.title,
                text: out.text,
                page_starts: vec![],
                pages: 0,
                headings: out.headings,
            }
        }
        MediaType::Markdown => {
            let text = normalise_newlines(raw);
            let headings = markdown_headings(&text);
            let title = headings
                .iter()
                .find(|h| h.level == 1)
                .map(|h| h.text.clone());
            ExtractedDoc {
                media_type,
                title,
                text,
                page_starts: vec![],
                pages: 0,
                headings,
            }
        }
        MediaType::Text => ExtractedDoc {
            media_type,
            title: None,
            text: normalise_newlines(raw),
            page_starts: vec![],
            pages: 0,
            headings: vec![],
        },
        MediaType::Pdf => unreachable!("PDFs go through pdf::extract_*"),
    };
    finish(doc, limits)
}

/// Assemble a document from per-page PDF text.
pub fn from_pdf_pages(pages: Vec<String>, limits: &Limits) -> Result<ExtractedDoc, ExtractError> {
    let mut text = String::new();
    let mut page_starts = Vec::with_capacity(pages.len());
    let n = pages.len();
    for page in pages {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        page_starts.push(text.len());
        text.push_str(clean_pdf_page(&page).trim_end());
    }
    let doc = ExtractedDoc {
        media_type: MediaType::Pdf,
        title: None,
        text,
        page_starts,
        pages: n as u32,
        headings: vec![],
    };
    finish(doc, limits).map_err(|e| match e {
        ExtractError::NoText(_) => ExtractError::NoText(
            " (the PDF has no text layer; it may be a scan that needs OCR)".into(),
        ),
        e => e,
    })
}

fn finish(doc: ExtractedDoc, limits: &Limits) -> Result<ExtractedDoc, ExtractError> {
    if doc.text.len() > limits.max_text_bytes {
        return Err(ExtractError::TextTooLarge(limits.max_text_bytes));
    }
    if !doc.text.chars().any(|c| c.is_alphanumeric()) {
        return Err(ExtractError::NoText(String::new()));
    }
    Ok(doc)
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(b)
}

fn normalise_newlines(s: &str) -> String {
    if s.contains('\r') {
        s.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        s.to_string()
    }
}

/// Collapse the layout noise of PDF text: trailing spaces, runs of blank lines,
/// and words hyphenated across line ends are left alone (they may be real hyphens).
fn clean_pdf_page(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut blank_run = 0;
    for line in page.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    let trimmed = out.trim_start_matches('\n');
    trimmed.to_string()
}

/// ATX headings (`# Title`) outside fenced code blocks.
fn markdown_headings(text: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            let level = line.bytes().take_while(|&b| b == b'#').count();
            let rest = &line[level..];
            if (1..=6).contains(&level) && (rest.starts_with(' ') || rest.trim().is_empty()) {
                let title = rest.trim().trim_end_matches('#').trim();
                if !title.is_empty() {
                    out.push(Heading {
                        byte_start: pos,
                        level: level as u8,
                        text: title.to_string(),
                    });
                }
            }
        }
        pos += line.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_too_large_are_rejected() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            extract(b"", "a.txt", None, &limits).unwrap_err(),
            ExtractError::Empty
        );
        assert!(matches!(
            extract(b"01234567890", "a.txt", None, &limits).unwrap_err(),
            ExtractError::TooLarge { size: 11, .. }
        ));
    }

    #[test]
    fn invalid_utf8_is_a_clear_error() {
        let err = extract(b"hello \xff\xfe world", "a.txt", None, &Limits::default()).unwrap_err();
        assert_eq!(err, ExtractError::InvalidUtf8);
    }

    #[test]
    fn whitespace_only_has_no_text() {
        let err = extract(b"  \n\n \t", "a.txt", None, &Limits::default()).unwrap_err();
        assert!(matches!(err, ExtractError::NoText(_)));
    }

    #[test]
    fn markdown_heading_paths() {
        let md = "# Guide\nintro\n## Install\nsteps\n```\n# not a heading\n```\n### Linux\napt\n## Use\nrun\n";
        let doc = extract(md.as_bytes(), "g.md", None, &Limits::default()).unwrap();
        assert_eq!(doc.media_type, MediaType::Markdown);
        assert_eq!(doc.title.as_deref(), Some("Guide"));
        let pos = doc.text.find("apt").unwrap();
        assert_eq!(
            doc.heading_at(pos).as_deref(),
            Some("Guide > Install > Linux")
        );
        let pos = doc.text.find("run").unwrap();
        assert_eq!(doc.heading_at(pos).as_deref(), Some("Guide > Use"));
        assert_eq!(doc.heading_at(0).as_deref(), Some("Guide"));
        assert_eq!(doc.headings.len(), 4, "fenced '#' line is not a heading");
    }

    #[test]
    fn pdf_pages_map_offsets() {
        let doc = from_pdf_pages(
            vec!["first page".into(), "".into(), "third page".into()],
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(doc.pages, 3);
        assert_eq!(doc.page_at(0), Some(1));
        let p3 = doc.text.find("third").unwrap();
        assert_eq!(doc.page_at(p3), Some(3));
    }

    #[test]
    fn pdf_without_text_layer_says_so() {
        let err = from_pdf_pages(vec!["".into(), "  ".into()], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("no text layer"), "{err}");
    }
}
