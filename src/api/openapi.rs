//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated at compile time (utoipa) from the `#[utoipa::path]` attribute on every
//! handler and the `ToSchema` types they return. Most handlers build their JSON with `json!`;
//! the types in this module describe those bodies (and the server-sent events) for the document
//! only: they are never constructed. `tests/openapi.rs` checks that every route the router
//! serves is described, and that real responses match the described ones.

#![allow(dead_code)]

use crate::catalog::UsageAggregate;
use crate::catalog::{CollectionInfo, ConversationRow, DocumentView, JobRow, TurnRow};
use crate::query::{Done, Meta, Source};
use crate::store::SearchMode;
use crate::UploadResult;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use utoipa::{OpenApi, ToSchema};

/// kb's error body, for every route but the OpenAI-compatible ones.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`collection_not_found`, `file_too_large`, ...).
    #[schema(example = "collection_not_found")]
    code: String,
    /// A human-readable explanation (internal details are only logged).
    #[schema(example = "collection `docs` does not exist")]
    message: String,
}

/// `{"status": "ok"}` (`/healthz`) or `{"status": "ready"}` (`/readyz`).
#[derive(ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    status: String,
}

#[derive(ToSchema)]
pub struct CollectionList {
    collections: Vec<CollectionInfo>,
}

/// A collection with its counts.
#[derive(ToSchema)]
pub struct CollectionDetail {
    #[serde(flatten)]
    info: CollectionInfo,
    /// Chunks of the live document versions (catalog).
    chunks: i64,
    /// Points in the collection's index.
    points: i64,
}

#[derive(ToSchema)]
pub struct DocumentList {
    collection: String,
    documents: Vec<DocumentView>,
}

/// One or more `file` parts; other parts are ignored.
#[derive(ToSchema)]
pub struct UploadForm {
    /// A file (repeat the part for several). Its file name is the document's name; a name
    /// already in the collection makes a new version of that document.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

#[derive(ToSchema)]
pub struct UploadResponse {
    collection: String,
    /// One entry per `file` part, in order.
    documents: Vec<UploadResult>,
}

#[derive(ToSchema)]
pub struct SearchResponse {
    collection: String,
    mode: SearchMode,
    /// Ranked chunks, numbered from 1.
    results: Vec<Source>,
    timings_ms: SearchTimings,
}

#[derive(ToSchema)]
pub struct SearchTimings {
    total: u64,
}

/// `POST /v1/ask` answered as JSON (`"stream": false`, or `Accept: application/json`): the
/// `meta` and `sources` events, and the fields of the `done` event at the top level.
#[derive(ToSchema)]
pub struct AskResponse {
    meta: Meta,
    sources: Vec<Source>,
    #[serde(flatten)]
    done: Done,
}

/// The data of a `token` event: the next piece of the answer's text.
#[derive(ToSchema)]
pub struct TokenData {
    text: String,
}

/// The events of `POST /v1/ask` when it streams (`text/event-stream`), in order: one `meta`,
/// one `sources`, any number of `token`, then one `done` or one `error`. Each is sent as
/// `event: <name>` and `data: <JSON>`; comments (`: keep-alive`) keep idle connections open.
/// Here an event is written as `{"event": name, "data": ...}`.
#[derive(ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
pub enum AskStreamEvent {
    /// First: the request id, the conversation id (if any), the answering model, whether the
    /// answer comes from the cache.
    Meta(Meta),
    /// The retrieved sources, numbered `n` from 1; the answer cites them as `[n]`.
    Sources(Vec<Source>),
    /// A piece of the answer's text, in order.
    Token(TokenData),
    /// Last, on success: the whole answer, its citations, usage, timings and context manifest.
    Done(Box<Done>),
    /// Last, on a failure after the stream started (same body as kb's error responses).
    Error(ErrorBody),
}

/// Sent once the job's document was deleted; the stream ends.
#[derive(ToSchema)]
pub struct JobDeleted {
    id: String,
    #[schema(example = "deleted")]
    status: String,
}

/// The events of `GET /v1/jobs/{id}/events` (`text/event-stream`): `progress` with the job's
/// current state, first at once and then on every change; the stream ends after a `progress`
/// whose status is `done` or `failed`, or after `deleted`. Comments (`: keep-alive`) keep idle
/// connections open. Here an event is written as `{"event": name, "data": ...}`.
#[derive(ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
pub enum JobStreamEvent {
    /// The job's state (the same object as `GET /v1/jobs/{id}`).
    Progress(Box<JobRow>),
    /// The job's document was deleted: no more progress will come.
    Deleted(JobDeleted),
}

/// The build and the settings that shape answers.
#[derive(ToSchema)]
pub struct Info {
    kb_version: String,
    git_commit: String,
    /// The embedding model's id.
    embedder: String,
    chunker: InfoChunker,
    retrieval: InfoRetrieval,
    /// `extractive`, or the chat model's id.
    answerer: String,
    prompt_version: String,
    cache: InfoCache,
}

#[derive(ToSchema)]
pub struct InfoChunker {
    splitter: String,
    max_tokens: usize,
    overlap_tokens: usize,
}

#[derive(ToSchema)]
pub struct InfoRetrieval {
    /// `hybrid`, `dense` or `sparse`.
    mode: String,
    top_k: usize,
    candidates: usize,
    fusion: InfoFusion,
}

#[derive(ToSchema)]
pub struct InfoFusion {
    rrf_k: f32,
    dense_weight: f32,
    sparse_weight: f32,
}

#[derive(ToSchema)]
pub struct InfoCache {
    /// `memory` or `redis`; null when the answer cache is off.
    answers: Option<String>,
    semantic: bool,
    embeddings: bool,
}

#[derive(ToSchema)]
pub struct UsageResponse {
    /// The start of the window (RFC 3339).
    since: String,
    /// Per collection and model.
    usage: Vec<UsageAggregate>,
    total: UsageTotal,
}

#[derive(ToSchema)]
pub struct UsageTotal {
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cache_hits: i64,
    errors: i64,
    cost_usd: f64,
}

#[derive(ToSchema)]
pub struct ConversationList {
    /// The 200 most recently updated.
    conversations: Vec<ConversationRow>,
}

#[derive(ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    conversation: ConversationRow,
    turns: Vec<TurnRow>,
}

// The OpenAI-compatible routes.

/// A collection as a model: `kb/<collection>`, or `kb` for the collection `default`.
#[derive(ToSchema)]
pub struct ModelObject {
    #[schema(example = "kb/docs")]
    id: String,
    #[schema(example = "model")]
    object: String,
    /// The collection's creation time (Unix seconds).
    created: i64,
    #[schema(example = "kb")]
    owned_by: String,
}

#[derive(ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    object: String,
    data: Vec<ModelObject>,
}

/// The fields kb reads. Every other OpenAI parameter (temperature, max_tokens, tools, ...) is
/// accepted and ignored: the server's configuration decides how it answers.
#[derive(ToSchema)]
pub struct ChatCompletionRequest {
    /// `kb/<collection>`, or `kb` for the collection `default`.
    #[schema(example = "kb/docs")]
    model: String,
    /// The last `user` message is the question; the others must be well-formed.
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Must be 1.
    n: Option<i64>,
}

#[derive(ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    role: String,
    /// Required for `user` messages.
    content: Option<MessageContent>,
}

/// A string, or text parts (other part types are refused).
#[derive(ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(example = "text")]
    kind: String,
    text: String,
}

#[derive(ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `usage: null` on the others).
    include_usage: Option<bool>,
}

#[derive(ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<request id>`.
    id: String,
    #[schema(example = "chat.completion")]
    object: String,
    created: i64,
    model: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    system_fingerprint: (),
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
    kb: KbAnswer,
}

#[derive(ToSchema)]
pub struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: (),
    #[schema(example = "stop")]
    finish_reason: String,
}

#[derive(ToSchema)]
pub struct AssistantMessage {
    #[schema(example = "assistant")]
    role: String,
    content: String,
    /// Always null (a declined answer is a normal answer; see `kb.declined`).
    #[schema(value_type = Option<String>)]
    refusal: (),
}

#[derive(ToSchema)]
pub struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// What OpenAI's schema has no place for; standard clients ignore it.
#[derive(ToSchema)]
pub struct KbAnswer {
    collection: String,
    sources: Vec<Source>,
    citations: Vec<usize>,
    declined: bool,
    /// `extractive`, or the chat model's id.
    answerer: String,
}

/// A `chat.completion.chunk`, the `data` of each event when `stream` is true. The stream is
/// `data: <chunk>` lines: first the role (with `kb.collection` and `kb.sources`), then the
/// content pieces, then an empty delta with `finish_reason: "stop"` (with `kb.citations`,
/// `kb.declined`, `kb.answerer`), then the usage chunk when `stream_options.include_usage`,
/// then `data: [DONE]`. A failure after the stream started is sent as `data:` with an
/// OpenAI error body, then `data: [DONE]`.
#[derive(ToSchema)]
pub struct ChatCompletionChunk {
    id: String,
    #[schema(example = "chat.completion.chunk")]
    object: String,
    created: i64,
    model: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    system_fingerprint: (),
    /// Empty on the usage chunk.
    choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: null on every chunk but the last.
    usage: Option<ChatUsage>,
    /// On the first and the finishing chunk only.
    kb: Option<KbChunk>,
}

#[derive(ToSchema)]
pub struct ChunkChoice {
    index: u32,
    delta: ChunkDelta,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: (),
    /// `stop` on the finishing chunk, null before.
    finish_reason: Option<String>,
}

#[derive(ToSchema)]
pub struct ChunkDelta {
    role: Option<String>,
    content: Option<String>,
}

/// `collection` and `sources` on the first chunk; `citations`, `declined` and `answerer` on
/// the finishing one.
#[derive(ToSchema)]
pub struct KbChunk {
    collection: Option<String>,
    sources: Option<Vec<Source>>,
    citations: Option<Vec<usize>>,
    declined: Option<bool>,
    answerer: Option<String>,
}

/// OpenAI's error body, for the OpenAI-compatible routes.
#[derive(ToSchema)]
pub struct OpenAiErrorBody {
    error: OpenAiErrorDetail,
}

#[derive(ToSchema)]
pub struct OpenAiErrorDetail {
    message: String,
    /// `invalid_request_error` (4xx), `rate_limit_error` (429) or `server_error` (5xx).
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    kind: String,
    /// The request field at fault, when there is one (`model`, `messages[0].role`, ...).
    param: Option<String>,
    #[schema(example = "model_not_found")]
    code: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kb",
        description = "A retrieval-augmented knowledge base: upload documents into collections, \
            search them, and ask questions answered from them with citations. Errors are \
            `{\"error\": {\"code\", \"message\"}}` with the right status (the OpenAI-compatible \
            routes use OpenAI's error shape). Every response carries `x-request-id` (the \
            request's own, when it sends one of up to 64 printable characters). An unknown path \
            answers 404 `not_found`; a known path with another method, 405."
    ),
    paths(
        super::list_collections,
        super::get_collection,
        super::upload::upload,
        super::list_documents,
        super::get_document,
        super::delete_document,
        super::get_job,
        super::job_events,
        super::search,
        super::ask,
        super::info,
        super::usage,
        super::list_conversations,
        super::get_conversation,
        super::delete_conversation,
        super::healthz,
        super::readyz,
        super::metrics,
        openapi_json,
        super::openai::list_models,
        super::openai::get_model,
        super::openai::chat_completions,
        super::web::index,
        super::web::app_js,
        super::web::markdown_js,
        super::web::style_css,
    ),
    components(schemas(AskStreamEvent, TokenData, JobStreamEvent, JobDeleted, ChatCompletionChunk)),
    tags(
        (name = "collections", description = "Collections and their documents"),
        (name = "jobs", description = "Ingestion jobs"),
        (name = "questions", description = "Search and answers"),
        (name = "conversations", description = "Conversations kept by `/v1/ask`"),
        (name = "openai", description = "The OpenAI-compatible surface: a collection is a model"),
        (name = "operations", description = "Health, metrics, build information, usage, this document"),
        (name = "web", description = "The embedded web page"),
    )
)]
pub struct ApiDoc;

static DOC: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str()).into_response()
}
