//! The OpenAI-compatible surface: `GET /v1/models` and `POST /v1/chat/completions`.
//!
//! A collection is a model, `kb/<collection>`; `kb` is an alias for the collection `/v1/ask`
//! uses when none is named. Answers come from the same event stream as `/v1/ask`
//! (`QueryEngine::ask`), mapped onto `chat.completion` / `chat.completion.chunk` objects. What
//! OpenAI's schema has no place for (sources, citations, whether kb declined) rides in an extra
//! top-level `kb` object, which standard clients ignore. Every error of these routes is in
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

mod error;
mod request;
mod wire;

pub use error::OpenAiErrorBody;
pub use wire::ChatCompletionChunk;

use super::error::ApiError;
use super::http::{sse, until_stopped, AppState, RequestId};
use super::validate::{search_params, valid_collection};
use crate::auth::Principal;
use crate::error::Code;
use crate::query::{AskEvent, AskParams};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use error::OpenAiError;
use futures::StreamExt;
use request::{parse_request, question_of, ChatCompletionRequest};
use std::convert::Infallible;
use wire::*;

/// The model name that stands for [`DEFAULT_COLLECTION`].
const ALIAS: &str = "kb";
/// The collection `/v1/ask` answers from when the request names none.
const DEFAULT_COLLECTION: &str = "default";
const PREFIX: &str = "kb/";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        // Model ids contain a slash (`kb/docs`): the rest of the path is the id.
        .route("/v1/models/{*model}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
}

/// Every collection as `kb/<name>`; `kb` first when the default collection exists.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "The models: one per collection", body = ModelList),
        (status = 500, description = "`internal_error`", body = OpenAiErrorBody),
    )
)]
pub(super) async fn list_models(
    State(core): State<AppState>,
    p: Principal,
) -> Result<Json<ModelList>, OpenAiError> {
    let mut collections = core.catalog.collections().await.map_err(ApiError::from)?;
    collections.retain(|c| p.can_read(&c.name));
    let mut data = Vec::with_capacity(collections.len() + 1);
    if let Some(c) = collections.iter().find(|c| c.name == DEFAULT_COLLECTION) {
        data.push(model_entry(ALIAS, &c.created_at));
    }
    for c in &collections {
        data.push(model_entry(&format!("{PREFIX}{}", c.name), &c.created_at));
    }
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// The collection a model name stands for, if it names an existing one the caller may read
/// (another tenant's collection is not a model for this key).
async fn resolve_model(
    core: &AppState,
    p: &Principal,
    model: &str,
) -> Result<(String, String), OpenAiError> {
    let collection = if model == ALIAS {
        DEFAULT_COLLECTION
    } else {
        match model.strip_prefix(PREFIX) {
            Some(c) if valid_collection(c).is_ok() => c,
            _ => return Err(OpenAiError::model_not_found(model)),
        }
    };
    match core
        .catalog
        .collection(collection)
        .await
        .map_err(ApiError::from)?
    {
        Some(info) if p.can_read(collection) => Ok((collection.to_string(), info.created_at)),
        Some(_) => Err(OpenAiError::model_not_found(model)),
        None => Err(OpenAiError::model_not_found(model)),
    }
}

/// One model. Its id contains a slash (`kb/docs`): the rest of the path is the id, sent as is
/// or percent-encoded.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    params(("model" = String, Path, description = "`kb/<collection>`, or `kb`", example = "kb/docs")),
    responses(
        (status = 200, description = "The model", body = ModelObject),
        (status = 404, description = "`model_not_found`", body = OpenAiErrorBody),
        (status = 500, description = "`internal_error`", body = OpenAiErrorBody),
    )
)]
pub(super) async fn get_model(
    State(core): State<AppState>,
    p: Principal,
    Path(model): Path<String>,
) -> Result<Json<ModelObject>, OpenAiError> {
    let (_, created_at) = resolve_model(&core, &p, &model).await?;
    Ok(Json(model_entry(&model, &created_at)))
}

/// A chat completion answered from the model's collection, with the sources and citations in
/// an extra `kb` object.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A `chat.completion` (JSON), or with `stream: true` server-sent events whose `data` is a `chat.completion.chunk` each, ending with `data: [DONE]` (an error after the stream started is sent as `data: <OpenAI error body>` before `[DONE]`). The status line waits for the first token, so earlier failures are real HTTP statuses", content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, description = "`malformed_json`, `invalid_request`, `invalid_body`, `empty_array`, `no_user_message`, `invalid_type`, `invalid_value`, `missing_content`, `unsupported_content`, `unsupported_value` (`n` > 1), or a question kb cannot take (`empty_question`, `question_too_long`), with `param`", body = OpenAiErrorBody),
        (status = 404, description = "`model_not_found`", body = OpenAiErrorBody),
        (status = 409, description = "`embedder_mismatch`", body = OpenAiErrorBody),
        (status = 413, description = "`invalid_body`: the body is over the request limit", body = OpenAiErrorBody),
        (status = 429, description = "`overloaded` or `upstream_rate_limited`", body = OpenAiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 500, description = "`internal_error`", body = OpenAiErrorBody),
        (status = 502, description = "An upstream model failed", body = OpenAiErrorBody),
        (status = 503, description = "`upstream_unavailable` or `shutting_down`", body = OpenAiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = OpenAiErrorBody),
    )
)]
pub(super) async fn chat_completions(
    State(core): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    p: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let req = parse_request(body)?;
    match req.n {
        None | Some(1) => {}
        Some(n) if n > 1 => {
            return Err(OpenAiError::invalid(
                Some("n"),
                Code::UnsupportedValue,
                "kb returns one choice per request: `n` must be 1",
            ))
        }
        Some(_) => {
            return Err(OpenAiError::invalid(
                Some("n"),
                Code::InvalidValue,
                "`n` must be 1",
            ))
        }
    }
    let question = question_of(&req.messages)?;
    let (collection, _) = resolve_model(&core, &p, &req.model).await?;
    let search = search_params(&core, Some(collection.clone()), &question, None, None, None)
        .map_err(|e| OpenAiError {
            param: Some("messages".into()),
            as_bad_request: true,
            ..OpenAiError::from(e)
        })?;
    let chunks = Chunks {
        id: format!("chatcmpl-{request_id}"),
        created: chrono::Utc::now().timestamp(),
        model: req.model,
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    };
    let mut events = core.query.ask(AskParams {
        search,
        request_id,
        conversation_id: None,
        use_cache: true,
        key_id: p.key_id().map(str::to_string),
    });

    if req.stream != Some(true) {
        let mut sources = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(_) | AskEvent::Token(_) => {}
                AskEvent::Sources(s) => sources = s,
                AskEvent::Error(e) => return Err(e.into()),
                AskEvent::Done(done) => {
                    let usage = usage(&done);
                    let done = *done;
                    return Ok(Json(ChatCompletion {
                        id: chunks.id,
                        object: "chat.completion".into(),
                        created: chunks.created,
                        model: chunks.model,
                        system_fingerprint: (),
                        choices: vec![ChatChoice {
                            index: 0,
                            message: AssistantMessage {
                                role: "assistant".into(),
                                content: done.answer,
                                refusal: (),
                            },
                            logprobs: (),
                            finish_reason: "stop".into(),
                        }],
                        usage,
                        kb: KbAnswer {
                            collection,
                            sources,
                            citations: done.citations,
                            declined: done.declined,
                            answerer: done.answerer,
                        },
                    })
                    .into_response());
                }
            }
        }
        return Err(ApiError::internal("the answer stream ended without a result").into());
    }

    // Streaming. Wait for the first token (or the end) before answering, so that a failure in
    // retrieval or an upstream refusal is a proper HTTP status rather than a stream that starts
    // and breaks at once.
    let mut head = Vec::new();
    loop {
        match events.next().await {
            Some(AskEvent::Error(e)) => return Err(e.into()),
            Some(ev @ (AskEvent::Token(_) | AskEvent::Done(_))) => {
                head.push(ev);
                break;
            }
            Some(ev) => head.push(ev),
            None => {
                return Err(ApiError::internal("the answer stream ended without a result").into())
            }
        }
    }
    let events = until_stopped(events, core.stopping.closing.clone());
    let events = futures::stream::iter(head).chain(events);
    let stream = async_stream::stream! {
        let mut events = events;
        let mut started = false;
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(_) => {}
                AskEvent::Sources(sources) => {
                    let mut c = chunks.role();
                    c.kb = Some(kb_sources(&collection, sources));
                    started = true;
                    yield Ok::<Event, Infallible>(data(&c));
                }
                AskEvent::Token(t) => {
                    if !started {
                        started = true;
                        yield Ok(data(&chunks.role()));
                    }
                    if !t.is_empty() {
                        let delta = ChunkDelta { content: Some(t), ..ChunkDelta::default() };
                        yield Ok(data(&chunks.chunk(delta, None)));
                    }
                }
                AskEvent::Done(done) => {
                    if !started {
                        yield Ok(data(&chunks.role()));
                    }
                    let mut c = chunks.chunk(ChunkDelta::default(), Some("stop"));
                    c.kb = Some(kb_outcome(&done));
                    yield Ok(data(&c));
                    if chunks.include_usage {
                        yield Ok(data(&chunks.usage_chunk(&done)));
                    }
                    break;
                }
                AskEvent::Error(e) => {
                    // The status line is long gone: the error travels in the stream, in the
                    // shape OpenAI's clients raise from.
                    yield Ok(data(&OpenAiError::from(e).body()));
                    break;
                }
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Ok(sse(stream, core.config.server.keep_alive_secs))
}
