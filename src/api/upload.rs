//! `POST /v1/collections/{c}/documents`: multipart upload of one or more `file` parts.
//!
//! Each file streams to a temp file while it is hashed; the size limit is enforced while
//! streaming. Every file is checked before any is registered, so a request with one bad file
//! changes nothing.

use super::error::{ApiError, ErrorBody};
use super::http::AppState;
use super::validate::valid_collection;
use crate::error::Code;
use crate::UploadResult;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kb_ingest::{ExtractError, MediaType};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

struct Staged {
    name: String,
    tmp: std::path::PathBuf,
    hash: String,
    size: u64,
    /// The whole file is valid UTF-8.
    utf8: bool,
}

/// Temp files of a request, removed unless handed over.
struct Cleanup(Vec<std::path::PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One or more `file` parts; other parts are ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// A file (repeat the part for several). Its file name is the document's name; a name
    /// already in the collection makes a new version of that document.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

#[derive(Serialize, ToSchema)]
pub struct UploadResponse {
    pub collection: String,
    /// One entry per `file` part, in order.
    pub documents: Vec<UploadResult>,
}

pub fn valid_filename(name: &str) -> Result<String, ApiError> {
    let bad = |m: &str| ApiError::new(Code::InvalidFilename, m.to_string());
    if name.is_empty() || name.trim().is_empty() {
        return Err(bad("the file has no name"));
    }
    if name.len() > 255 {
        return Err(bad("the file name is longer than 255 bytes"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad("the file name contains control characters"));
    }
    if name.contains('/') || name.contains('\\') || name == "." || name == ".." {
        return Err(bad("the file name must not contain path components"));
    }
    // Invisible characters make names lie: a right-to-left override shows
    // `invoice\u{202e}txt.exe` as "invoiceexe.txt", a zero-width space makes `known\u{200b}.md`
    // look like `known.md`.
    if let Some(c) = name.chars().find(|&c| invisible(c)) {
        return Err(bad(&format!(
            "the file name contains an invisible formatting character (U+{:04X})",
            c as u32
        )));
    }
    // One spelling per name: `é` typed as one character or as `e` and an accent is one name.
    use unicode_normalization::UnicodeNormalization;
    Ok(name.nfc().collect())
}

/// Bidirectional controls, zero-width characters and other invisible format characters.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

fn extract_error(name: &str, e: ExtractError) -> ApiError {
    let msg = format!("{name}: {e}");
    match e {
        ExtractError::Empty => ApiError::new(Code::EmptyFile, msg),
        ExtractError::TooLarge { .. } => ApiError::new(Code::FileTooLarge, msg),
        ExtractError::Unsupported(_) => ApiError::new(Code::UnsupportedMediaType, msg),
        ExtractError::InvalidUtf8 => ApiError::new(Code::InvalidUtf8, msg),
        _ => ApiError::new(Code::UnprocessableDocument, msg),
    }
}

/// A write of the upload failed: a full disk is the client's 507, anything else kb's 500.
fn write_error(core: &AppState) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |e| {
        if crate::disk::is_no_space(&e) {
            core.disk.check();
            ApiError(core.disk.full_error())
        } else {
            ApiError::internal(e)
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if crate::serve::is_slow_client(&e) {
        return super::error::slow_body();
    }
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(Code::FileTooLarge, e.body_text())
    } else {
        ApiError::new(
            Code::MalformedMultipart,
            format!("malformed multipart body: {}", e.body_text()),
        )
    }
}

/// Check what can be checked without parsing: type (from the first bytes), UTF-8 for text
/// (judged while the file streamed in, never by reading it back whole), the text size limit,
/// PDF truncation.
async fn check_file(
    st: &Staged,
    head: &[u8],
    declared: Option<&str>,
    max_text: u64,
) -> Result<(), ApiError> {
    if st.size == 0 {
        return Err(extract_error(&st.name, ExtractError::Empty));
    }
    let media = kb_ingest::sniff(head, &st.name, declared).or_else(|e| match e {
        // The head may end inside a multi-byte character: the whole file is judged below.
        ExtractError::InvalidUtf8 => Ok(MediaType::Text),
        e => Err(e),
    });
    let media = media.map_err(|e| extract_error(&st.name, e))?;
    if media == MediaType::Pdf {
        // A PDF ends with %%EOF (possibly followed by a little whitespace or junk).
        let tail = read_tail(&st.tmp, 2048).await.map_err(ApiError::internal)?;
        if !tail.windows(5).any(|w| w == b"%%EOF") {
            return Err(ApiError::new(
                Code::CorruptPdf,
                format!("{}: the PDF is truncated (no end-of-file marker)", st.name),
            ));
        }
        return Ok(());
    }
    if !st.utf8 {
        return Err(extract_error(&st.name, ExtractError::InvalidUtf8));
    }
    // Text and Markdown are their own text: over the limit they could never be indexed. (HTML
    // loses its markup first and is judged after extraction.)
    if matches!(media, MediaType::Text | MediaType::Markdown) && st.size > max_text {
        return Err(ApiError::new(
            Code::FileTooLarge,
            format!(
                "{}: {} bytes of text is over the limit of {max_text} bytes that one document may have",
                st.name, st.size
            ),
        ));
    }
    Ok(())
}

/// UTF-8 validity of a byte stream, judged chunk by chunk (a character may span two chunks).
#[derive(Default)]
struct Utf8Stream {
    carry: Vec<u8>,
    bad: bool,
}

impl Utf8Stream {
    fn feed(&mut self, chunk: &[u8]) {
        if self.bad {
            return;
        }
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(chunk);
            joined = v;
            &joined
        };
        if let Err(e) = std::str::from_utf8(bytes) {
            match e.error_len() {
                // Cut off at the end: the rest comes in the next chunk.
                None => self.carry = bytes[e.valid_up_to()..].to_vec(),
                Some(_) => self.bad = true,
            }
        }
    }

    fn valid(&self) -> bool {
        !self.bad && self.carry.is_empty()
    }
}

async fn read_tail(path: &std::path::Path, n: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(n)))
        .await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    Ok(buf)
}

const DRAIN_MAX: usize = 64 << 20;

/// Read and discard what is left of a stream of chunks (a rejected field, a body that is not
/// multipart), up to 64 MiB. Returns the bytes read.
async fn drain<S, E>(mut chunks: S) -> usize
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    use futures::StreamExt;
    let mut n = 0usize;
    while let Some(Ok(c)) = chunks.next().await {
        n += c.len();
        if n > DRAIN_MAX {
            break;
        }
    }
    n
}

/// Read and discard the remaining fields, up to 64 MiB.
async fn drain_rest(multipart: &mut Multipart) {
    let mut n = 0usize;
    while n <= DRAIN_MAX {
        match multipart.next_field().await {
            Ok(Some(mut f)) => n += drain(&mut f).await,
            _ => return,
        }
    }
}

/// Upload documents: each `file` part becomes a new document, a new version of the document of
/// that name, or (same bytes) the existing document. Ingestion runs in the background: follow
/// each job at `/v1/jobs/{id}` or `/v1/jobs/{id}/events`.
#[utoipa::path(
    post,
    path = "/v1/collections/{collection}/documents",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name (created on first upload): 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Registered; ingestion queued", body = UploadResponse),
        (status = 400, description = "`invalid_collection`, `invalid_filename`, `empty_file`, `no_files`, `malformed_multipart`", body = ErrorBody),
        (status = 409, description = "`embedder_mismatch`: the collection was built with another embedding model", body = ErrorBody),
        (status = 413, description = "`file_too_large` (`limits.max_upload_bytes`, or text over the 64 MiB of one document), `too_many_files` (`limits.max_files_per_request`) or `too_many_parts` (twice that, plus 16)", body = ErrorBody),
        (status = 415, description = "`expected_multipart` (not multipart/form-data) or `unsupported_media_type` (a file of a type kb does not read)", body = ErrorBody),
        (status = 422, description = "`invalid_utf8`, `corrupt_pdf` (truncated), `unprocessable_document`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the data disk is nearly full (`limits.min_free_disk_mb`); kb is read-only until space is freed", body = ErrorBody),
    )
)]
pub async fn upload(
    State(core): State<AppState>,
    p: crate::auth::Principal,
    Path(collection): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequest;
    let headers = req.headers().clone();
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut multipart = if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        Multipart::from_request(req, &())
            .await
            .map_err(|e| e.body_text())
    } else {
        // Not multipart: the 415 comes once the body is read (to a bound), for the reason
        // below.
        drain(req.into_body().into_data_stream()).await;
        Err(if ct.is_empty() {
            "the request has no Content-Type".to_string()
        } else {
            format!("the body is `{ct}`")
        })
    };
    let r = receive(core, p, collection, headers, &mut multipart).await;
    if r.is_err() {
        // Refused before the whole body was read: read on (to a bound), so that the client,
        // still sending, gets the status. Closing a socket with unread data resets it, and
        // the client then sees a broken connection instead of the refusal.
        if let Ok(m) = multipart.as_mut() {
            drain_rest(m).await;
        }
    }
    r
}

/// The upload itself: checks, each file streamed to `tmp/`, then registered.
async fn receive(
    core: AppState,
    p: crate::auth::Principal,
    collection: String,
    headers: axum::http::HeaderMap,
    multipart: &mut Result<Multipart, String>,
) -> Result<Response, ApiError> {
    valid_collection(&collection)?;
    super::auth::require_write(&p, &collection)?;
    // Read-only on a nearly full disk; and no upload that would take it there.
    let declared_len = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    core.disk.room_for(declared_len).map_err(ApiError)?;
    let multipart = multipart.as_mut().map_err(|e| {
        ApiError::new(
            Code::ExpectedMultipart,
            format!("expected a multipart/form-data body with `file` parts: {e}"),
        )
    })?;
    let limit = core.config.limits.max_upload_bytes;
    let max_files = core.config.limits.max_files_per_request;
    let max_text = core.ingestor.limits.max_text_bytes as u64;
    let mut staged: Vec<Staged> = Vec::new();
    let mut cleanup = Cleanup(Vec::new());
    // Parts other than `file` are ignored, but not without end.
    let max_parts = max_files.saturating_mul(2) + 16;
    let mut parts = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        parts += 1;
        if parts > max_parts {
            // `upload` reads on (to a bound) so that the client, still sending, gets the 413.
            return Err(ApiError::new(
                Code::TooManyParts,
                format!("at most {max_parts} multipart parts per request"),
            ));
        }
        if field.name() != Some("file") {
            continue;
        }
        if staged.len() >= max_files {
            return Err(ApiError::new(
                Code::TooManyFiles,
                format!("at most {max_files} files per request"),
            ));
        }
        let name = valid_filename(field.file_name().unwrap_or(""))?;
        let declared = field.content_type().map(str::to_string);
        let tmp = core.temp_path();
        cleanup.0.push(tmp.clone());
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(ApiError::internal)?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut head: Vec<u8> = Vec::with_capacity(1024);
        let mut utf8 = Utf8Stream::default();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            size += chunk.len() as u64;
            if size > limit {
                // Nothing more is stored; this field and then the rest (`upload`) are read
                // on, to a bound, so that the client, still sending, gets the 413 instead of
                // a reset connection.
                drain(&mut field).await;
                return Err(ApiError::new(
                    Code::FileTooLarge,
                    format!("{name}: over the upload limit of {limit} bytes"),
                ));
            }
            if head.len() < 8192 {
                let take = (8192 - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            utf8.feed(&chunk);
            if size % (8 << 20) < chunk.len() as u64 {
                core.disk.room_for(size).map_err(ApiError)?;
            }
            file.write_all(&chunk).await.map_err(write_error(&core))?;
        }
        file.flush().await.map_err(write_error(&core))?;
        file.sync_all().await.map_err(write_error(&core))?;
        drop(file);
        let st = Staged {
            name,
            tmp,
            hash: hex::encode(hasher.finalize()),
            size,
            utf8: utf8.valid(),
        };
        check_file(&st, &head, declared.as_deref(), max_text).await?;
        staged.push(st);
    }
    if staged.is_empty() {
        return Err(ApiError::new(
            Code::NoFiles,
            "the request has no `file` parts",
        ));
    }
    let mut results = Vec::with_capacity(staged.len());
    for st in staged {
        let r = core
            .register(&collection, &st.name, &st.tmp, &st.hash, st.size)
            .await
            .map_err(|e| match e {
                crate::UploadError::EmbedderMismatch { .. } => {
                    ApiError::new(Code::EmbedderMismatch, e.to_string())
                }
                crate::UploadError::Other(e) => ApiError::internal(e),
            })?;
        results.push(r);
    }
    drop(cleanup);
    Ok((
        StatusCode::ACCEPTED,
        Json(UploadResponse {
            collection,
            documents: results,
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_judged_across_chunk_boundaries() {
        let text = "naïve café — 日本語 😀 end".as_bytes();
        for cut in 0..text.len() {
            let mut u = Utf8Stream::default();
            u.feed(&text[..cut]);
            u.feed(&text[cut..]);
            assert!(u.valid(), "cut at {cut}");
        }
        // Byte by byte.
        let mut u = Utf8Stream::default();
        for b in text {
            u.feed(std::slice::from_ref(b));
        }
        assert!(u.valid());
        // An invalid byte anywhere, and a character cut off at the very end.
        let mut u = Utf8Stream::default();
        u.feed(b"fine so far ");
        u.feed(b"\xff then more");
        assert!(!u.valid());
        let mut u = Utf8Stream::default();
        u.feed(&text[..text.len() - 5]);
        u.feed(&"😀".as_bytes()[..2]);
        assert!(!u.valid());
    }

    #[test]
    fn filenames_with_paths_or_controls_are_rejected() {
        assert!(valid_filename("report.pdf").is_ok());
        assert!(valid_filename("ünïcode name (1).md").is_ok());
        // Decomposed and composed spellings are one name.
        assert_eq!(
            valid_filename("cafe\u{301}.md").unwrap(),
            valid_filename("caf\u{e9}.md").unwrap()
        );
        for bad in [
            "",
            "  ",
            "../etc/passwd",
            "a/b.txt",
            "a\\b.txt",
            "bad\nname.txt",
            "nul\0.txt",
            "..",
            "invoice\u{202e}txt.exe",
            "known\u{200b}.md",
            "\u{feff}bom.txt",
            "a\u{2066}b.txt",
        ] {
            let e = valid_filename(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidFilename, "{bad:?}");
        }
    }
}
