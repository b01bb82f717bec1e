//! Search and answers: `POST /v1/search`, `POST /v1/ask` (server-sent events or one JSON body).

use super::auth::require_read;
use super::error::{ApiError, ErrorBody, JsonBody};
use super::http::{accepts, sse, until_stopped, AppState, RequestId};
use super::validate::{search_params, valid_conversation_id};
use crate::auth::Principal;
use crate::error::Code;
use crate::query::{AskEvent, AskParams, Done, Meta, Source};
use crate::store::SearchMode;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Instant;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/search", post(search))
        .route("/v1/ask", post(ask))
}

/// Unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query (`question` is accepted too).
    #[serde(alias = "question")]
    pub query: String,
    /// Default: `default`.
    #[serde(default)]
    pub collection: Option<String>,
    /// 1-100; default: `retrieval.top_k`.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `hybrid`, `dense` or `sparse` (`bm25`); default: `retrieval.mode`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Search only these documents.
    #[serde(default)]
    pub document_ids: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    pub collection: String,
    pub mode: SearchMode,
    /// Ranked chunks, numbered from 1.
    pub results: Vec<Source>,
    pub timings_ms: SearchTimings,
}

#[derive(Serialize, ToSchema)]
pub struct SearchTimings {
    pub total: u64,
}

/// Ranked chunks for a query (no answer).
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "questions",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Ranked chunks", body = SearchResponse),
        (status = 400, description = "`empty_question`, `invalid_collection`, `malformed_json`, `invalid_request` (an unreadable body)", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 409, description = "`embedder_mismatch`: the collection was built with another embedding model", body = ErrorBody),
        (status = 413, description = "`question_too_long` (`limits.max_question_chars`), or `body_too_large` (over 2 MB)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_top_k` (1-100), `invalid_mode`, or a field of the wrong type or unknown (`invalid_request`)", body = ErrorBody),
        (status = 429, description = "`overloaded` (the embedder's queue is full) or `upstream_rate_limited`", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 502, description = "An upstream model failed: `upstream_error`, `upstream_unreachable`, `upstream_malformed`, `model_error`, ...", body = ErrorBody),
        (status = 503, description = "`upstream_unavailable` (circuit open) or `shutting_down`", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn search(
    State(core): State<AppState>,
    who: Principal,
    JsonBody(req): JsonBody<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let p = search_params(
        &core,
        req.collection,
        &req.query,
        req.top_k,
        req.mode,
        req.document_ids,
    )?;
    require_read(&who, &p.collection)?;
    let t = Instant::now();
    let results = core.query.search(&p).await?;
    Ok(Json(SearchResponse {
        collection: p.collection,
        mode: p.mode,
        results,
        timings_ms: SearchTimings {
            total: t.elapsed().as_millis() as u64,
        },
    }))
}

/// Unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub question: String,
    /// Default: `default`.
    #[serde(default)]
    pub collection: Option<String>,
    /// 1-100; default: `retrieval.top_k`.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `hybrid`, `dense` or `sparse` (`bm25`); default: `retrieval.mode`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Search only these documents.
    #[serde(default)]
    pub document_ids: Option<Vec<String>>,
    /// `false`: one JSON body; `true`: server-sent events; absent: decided by `Accept`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Continue this conversation (created when unknown; ids are 1-64 letters, digits, `-`, `_`).
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Start a new conversation; its id comes back in `meta.conversation_id`.
    #[serde(default)]
    pub conversation: Option<bool>,
    /// `false`: do not answer from the cache (the fresh answer is still cached).
    #[serde(default)]
    pub cache: Option<bool>,
}

/// `POST /v1/ask` answered as JSON (`"stream": false`, or `Accept: application/json`): the
/// `meta` and `sources` events, and the fields of the `done` event at the top level.
#[derive(Serialize, ToSchema)]
pub struct AskResponse {
    pub meta: Meta,
    pub sources: Vec<Source>,
    #[serde(flatten)]
    pub done: Done,
}

/// The data of a `token` event: the next piece of the answer's text.
#[derive(Serialize, ToSchema)]
pub struct TokenData {
    pub text: String,
}

/// The events of `POST /v1/ask` when it streams (`text/event-stream`), in order: one `meta`,
/// one `sources`, any number of `token`, then one `done` or one `error`. Each is sent as
/// `event: <name>` and `data: <JSON>`; comments (`: keep-alive`) keep idle connections open.
/// Here an event is written as `{"event": name, "data": ...}`: this type describes the stream
/// for the OpenAPI document; `sse_event` writes each event's data with the types it names.
#[derive(ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
#[allow(dead_code)]
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

fn sse_event(ev: &AskEvent) -> Event {
    match ev {
        AskEvent::Meta(m) => Event::default().event("meta").json_data(m),
        AskEvent::Sources(s) => Event::default().event("sources").json_data(s),
        AskEvent::Token(t) => Event::default()
            .event("token")
            .json_data(TokenData { text: t.clone() }),
        AskEvent::Done(d) => Event::default().event("done").json_data(d),
        AskEvent::Error(e) => Event::default().event("error").json_data(ErrorBody::of(e)),
    }
    .expect("serialisable event")
}

/// Answer a question from a collection, with citations: server-sent events, or one JSON body.
#[utoipa::path(
    post,
    path = "/v1/ask",
    tag = "questions",
    request_body = AskRequest,
    responses(
        (status = 200, description = "The answer. As JSON when `stream` is false, or when `stream` is absent and `Accept` names `application/json` but not `text/event-stream`. Otherwise server-sent events, in order: `meta` (data: `Meta`), `sources` (data: an array of `Source`), `token`* (data: `TokenData`, pieces of the answer), then `done` (data: `Done`) or `error` (data: `ErrorBody`). `: keep-alive` comments keep the connection open. The status line waits until retrieval is through, so an error before that is a real HTTP status; later errors travel as the `error` event. The event-stream schema shows each event as `{\"event\": name, \"data\": ...}`", content((AskResponse = "application/json"), (AskStreamEvent = "text/event-stream"))),
        (status = 400, description = "`empty_question`, `invalid_collection`, `invalid_conversation_id`, `malformed_json`, `invalid_request` (an unreadable body)", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 409, description = "`embedder_mismatch`, `conversation_collection_mismatch` (the conversation belongs to another collection), or `conversation_full` (`conversations.max_turns`)", body = ErrorBody),
        (status = 413, description = "`question_too_long` (`limits.max_question_chars`), or `body_too_large` (over 2 MB)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_top_k` (1-100), `invalid_mode`, or a field of the wrong type or unknown (`invalid_request`)", body = ErrorBody),
        (status = 429, description = "`overloaded` (the embedder's queue is full) or `upstream_rate_limited`", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 502, description = "An upstream model failed: `upstream_error`, `upstream_unreachable`, `upstream_malformed`, `model_error`, `context_length_exceeded`, ...", body = ErrorBody),
        (status = 503, description = "`upstream_unavailable` (circuit open) or `shutting_down`", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn ask(
    State(core): State<AppState>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    who: Principal,
    headers: HeaderMap,
    JsonBody(req): JsonBody<AskRequest>,
) -> Result<Response, ApiError> {
    let p = search_params(
        &core,
        req.collection,
        &req.question,
        req.top_k,
        req.mode,
        req.document_ids,
    )?;
    require_read(&who, &p.collection)?;
    let wants_json = req.stream == Some(false)
        || (req.stream.is_none()
            && accepts(&headers, "application/json")
            && !accepts(&headers, "text/event-stream"));
    // A conversation: the one named (created when unknown, so clients may choose ids), or a
    // new one when asked for. It belongs to one collection.
    let conversation_id = match (req.conversation_id, req.conversation) {
        (Some(id), _) => Some(id),
        (None, Some(true)) => Some(uuid::Uuid::new_v4().to_string()),
        (None, _) => None,
    };
    if let Some(id) = &conversation_id {
        valid_conversation_id(id)?;
    }
    // Unknown collection: a plain 404 before any stream starts.
    if core.catalog.collection(&p.collection).await?.is_none() {
        return Err(ApiError::collection_not_found(&p.collection));
    }
    if let Some(id) = &conversation_id {
        let conv = core
            .catalog
            .ensure_conversation(id, &p.collection, who.key_id())
            .await?;
        // Another key's conversation does not exist for this one.
        if !who.owns(conv.owner.as_deref()) {
            return Err(ApiError::new(
                Code::ConversationNotFound,
                format!("no conversation `{id}`"),
            ));
        }
        let max_turns = core.config.conversations.max_turns as i64;
        if conv.turn_count >= max_turns {
            return Err(ApiError::new(
                Code::ConversationFull,
                format!("conversation `{id}` has {max_turns} turns, the most one may have: start a new one"),
            ));
        }
        if conv.collection != p.collection {
            return Err(ApiError::new(
                Code::ConversationCollectionMismatch,
                format!(
                    "conversation `{id}` belongs to collection `{}`",
                    conv.collection
                ),
            ));
        }
    }
    let mut events = core.query.ask(AskParams {
        search: p,
        request_id,
        conversation_id,
        use_cache: req.cache != Some(false),
        key_id: who.key_id().map(str::to_string),
    });
    if wants_json {
        let (mut meta, mut sources) = (None, Vec::new());
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(m) => meta = Some(m),
                AskEvent::Sources(s) => sources = s,
                AskEvent::Token(_) => {}
                AskEvent::Done(done) => {
                    let Some(meta) = meta else {
                        return Err(ApiError::internal("the answer stream sent no meta event"));
                    };
                    return Ok(Json(AskResponse {
                        meta,
                        sources,
                        done: *done,
                    })
                    .into_response());
                }
                AskEvent::Error(e) => return Err(ApiError(e)),
            }
        }
        return Err(ApiError::internal(
            "the answer stream ended without a result",
        ));
    }
    // Hold the status line until retrieval is through (the first event after `meta`), so that
    // a refused or failed question embedding (a full queue: 429 with Retry-After) is a real
    // HTTP status; errors after that travel in the stream.
    let mut head = Vec::new();
    while let Some(ev) = events.next().await {
        match ev {
            AskEvent::Meta(_) => head.push(ev),
            AskEvent::Error(e) => return Err(ApiError(e)),
            ev => {
                head.push(ev);
                break;
            }
        }
    }
    let events = until_stopped(events, core.stopping.closing.clone());
    let stream = futures::stream::iter(head)
        .chain(events)
        .map(|ev| Ok::<Event, Infallible>(sse_event(&ev)));
    Ok(sse(stream, core.config.server.keep_alive_secs))
}
