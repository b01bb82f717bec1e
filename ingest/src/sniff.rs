//! Decide a document's real type from its bytes. The filename and declared type only break
//! the tie between Markdown and plain text, which bytes cannot tell apart.

use crate::ExtractError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    Pdf,
    Html,
    Markdown,
    Text,
}

impl MediaType {
    pub fn as_str(&self) -> &'static str {
        match self {
            MediaType::Pdf => "pdf",
            MediaType::Html => "html",
            MediaType::Markdown => "markdown",
            MediaType::Text => "text",
        }
    }

    pub fn mime(&self) -> &'static str {
        match self {
            MediaType::Pdf => "application/pdf",
            MediaType::Html => "text/html",
            MediaType::Markdown => "text/markdown",
            MediaType::Text => "text/plain",
        }
    }

    pub fn parse(s: &str) -> Option<MediaType> {
        Some(match s {
            "pdf" => MediaType::Pdf,
            "html" => MediaType::Html,
            "markdown" => MediaType::Markdown,
            "text" => MediaType::Text,
            _ => return None,
        })
    }
}

const BINARY_MAGIC: &[(&[u8], &str)] = &[
    (b"PK\x03\x04", "zip archive (docx, xlsx, epub, ...)"),
    (b"\x89PNG", "PNG image"),
    (b"\xFF\xD8\xFF", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"\x7FELF", "executable"),
    (b"\x1F\x8B", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xFD7zXZ", "xz archive"),
    (b"7z\xBC\xAF", "7z archive"),
    (b"Rar!", "rar archive"),
    (b"\xD0\xCF\x11\xE0", "legacy Office document"),
    (b"RIFF", "RIFF media"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
    (b"%!PS", "PostScript"),
    (b"{\\rtf", "RTF document"),
];

/// Sniff the media type. Errors: unsupported binary formats and invalid UTF-8.
pub fn sniff(
    bytes: &[u8],
    filename: &str,
    declared: Option<&str>,
) -> Result<MediaType, ExtractError> {
    let head = &bytes[..bytes.len().min(1024)];
    // PDF: the header may be preceded by junk in the first 1024 bytes (as readers allow).
    if find(head, b"%PDF-").is_some() {
        return Ok(MediaType::Pdf);
    }
    for (magic, what) in BINARY_MAGIC {
        if bytes.starts_with(magic) {
            return Err(ExtractError::Unsupported((*what).to_string()));
        }
    }
    let probe = &bytes[..bytes.len().min(8192)];
    if probe.contains(&0) {
        return Err(ExtractError::Unsupported("binary data".into()));
    }
    let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    if std::str::from_utf8(body).is_err() {
        return Err(ExtractError::InvalidUtf8);
    }
    if looks_like_html(head) {
        return Ok(MediaType::Html);
    }
    let name = filename.to_ascii_lowercase();
    let declared = declared.unwrap_or("").to_ascii_lowercase();
    if name.ends_with(".md")
        || name.ends_with(".markdown")
        || name.ends_with(".mdx")
        || declared.starts_with("text/markdown")
        || declared.starts_with("text/x-markdown")
    {
        return Ok(MediaType::Markdown);
    }
    Ok(MediaType::Text)
}

fn looks_like_html(head: &[u8]) -> bool {
    let s = String::from_utf8_lossy(head).to_ascii_lowercase();
    let t = s.trim_start_matches('\u{feff}').trim_start();
    t.starts_with("<!doctype html")
        || t.starts_with("<html")
        || (t.starts_with('<')
            && (s.contains("<html") || s.contains("<body") || s.contains("<head")))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_from_bytes_not_names() {
        assert_eq!(
            sniff(b"%PDF-1.7\n...", "notes.txt", None).unwrap(),
            MediaType::Pdf
        );
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><body>x</body></html>", "a.pdf", None).unwrap(),
            MediaType::Html
        );
        assert_eq!(
            sniff(b"  <html lang=en><p>x", "a.txt", None).unwrap(),
            MediaType::Html
        );
        assert_eq!(
            sniff(b"# Title\n", "readme.md", None).unwrap(),
            MediaType::Markdown
        );
        assert_eq!(
            sniff(b"# Title\n", "readme", Some("text/markdown; charset=utf-8")).unwrap(),
            MediaType::Markdown
        );
        assert_eq!(
            sniff(b"plain words", "a.pdf", None).unwrap(),
            MediaType::Text
        );
    }

    #[test]
    fn rejects_binaries() {
        assert!(matches!(
            sniff(b"\x89PNG\r\n\x1a\n....", "a.png", None),
            Err(ExtractError::Unsupported(_))
        ));
        assert!(matches!(
            sniff(b"PK\x03\x04rest", "a.docx", None),
            Err(ExtractError::Unsupported(_))
        ));
        assert!(matches!(
            sniff(b"abc\0def", "a.txt", None),
            Err(ExtractError::Unsupported(_))
        ));
        assert_eq!(
            sniff(b"caf\xe9", "a.txt", None).unwrap_err(),
            ExtractError::InvalidUtf8
        );
    }
}
