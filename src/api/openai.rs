//! The OpenAI-compatible surface: `GET /v1/models` and `POST /v1/chat/completions`.
//!
//! A collection is a model, `kb/<collection>`; `kb` is an alias for the collection `/v1/ask`
//! uses when none is named. Answers come from the same event stream as `/v1/ask`
//! (`QueryEngine::ask`), mapped onto `chat.completion` / `chat.completion.chunk` objects. What
//! OpenAI's schema has no place for (sources, citations, whether kb declined) rides in an extra
//! top-level `kb` object, which standard clients ignore. Every error of these routes is in
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use super::{ask_error_status, search_params, valid_collection, ApiError, AppState, RequestId};
use crate::query::{AskEvent, AskParams, Done, Source};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

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

/// An error in OpenAI's shape.
#[derive(Debug)]
struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: String,
    retry_after: Option<u64>,
}

impl OpenAiError {
    fn invalid(param: Option<&str>, code: &str, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_string),
            code: code.into(),
            retry_after: None,
        }
    }

    fn model_not_found(model: &str) -> OpenAiError {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist. kb serves each collection as \
                 `{PREFIX}<collection>`, and `{ALIAS}` for the collection `{DEFAULT_COLLECTION}`; \
                 GET /v1/models lists them."
            ),
            param: Some("model".into()),
            code: "model_not_found".into(),
            retry_after: None,
        }
    }

    /// An `AskEvent::Error` that arrived before the response started.
    fn from_event(code: String, message: String) -> OpenAiError {
        let status = ask_error_status(&code);
        let retry_after = crate::models::ModelError::retry_after_in_message(&message)
            .filter(|_| matches!(status.as_u16(), 429 | 503));
        OpenAiError {
            status,
            message,
            param: None,
            code,
            retry_after,
        }
    }

    fn kind(status: StatusCode) -> &'static str {
        if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": Self::kind(self.status),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError {
            status: e.status,
            message: e.message,
            param: None,
            code: e.code.into(),
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

fn model_entry(id: &str, created_at: &str) -> Value {
    let created = chrono::DateTime::parse_from_rfc3339(created_at)
        .map(|t| t.timestamp())
        .unwrap_or(0);
    json!({"id": id, "object": "model", "created": created, "owned_by": "kb"})
}

/// Every collection as `kb/<name>`; `kb` first when the default collection exists.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "The models: one per collection", body = super::openapi::ModelList),
        (status = 500, description = "`internal_error`", body = super::openapi::OpenAiErrorBody),
    )
)]
async fn list_models(State(core): State<AppState>) -> Result<Response, OpenAiError> {
    let collections = core.catalog.collections().await.map_err(ApiError::from)?;
    let mut data = Vec::with_capacity(collections.len() + 1);
    if let Some(c) = collections.iter().find(|c| c.name == DEFAULT_COLLECTION) {
        data.push(model_entry(ALIAS, &c.created_at));
    }
    for c in &collections {
        data.push(model_entry(&format!("{PREFIX}{}", c.name), &c.created_at));
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// The collection a model name stands for, if it names an existing one.
async fn resolve_model(core: &AppState, model: &str) -> Result<(String, String), OpenAiError> {
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
        Some(info) => Ok((collection.to_string(), info.created_at)),
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
        (status = 200, description = "The model", body = super::openapi::ModelObject),
        (status = 404, description = "`model_not_found`", body = super::openapi::OpenAiErrorBody),
        (status = 500, description = "`internal_error`", body = super::openapi::OpenAiErrorBody),
    )
)]
async fn get_model(
    State(core): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, OpenAiError> {
    let (_, created_at) = resolve_model(&core, &model).await?;
    Ok(Json(model_entry(&model, &created_at)).into_response())
}

/// The fields kb reads; every other OpenAI parameter (temperature, max_tokens, top_p, user,
/// tools, ...) is accepted and ignored: the server's configuration decides how it answers.
#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The text of a message's content: a string, or an array of `{"type": "text", "text"}` parts.
/// `Ok(None)` for absent or null content.
fn content_text(content: Option<&Value>, param: &str) -> Result<Option<String>, OpenAiError> {
    match content {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}].text")),
                            "invalid_type",
                            format!("`{param}[{j}].text` must be a string"),
                        ))
                    }
                    (Some(other), _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}].type")),
                            "unsupported_content",
                            format!("content of type `{other}` is not supported (text only)"),
                        ))
                    }
                    (None, _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}]")),
                            "invalid_type",
                            format!("`{param}[{j}]` must be an object with a string `type`"),
                        ))
                    }
                }
            }
            Ok(Some(texts.join("\n")))
        }
        Some(_) => Err(OpenAiError::invalid(
            Some(param),
            "invalid_type",
            format!("`{param}` must be a string or an array of content parts"),
        )),
    }
}

/// Check every message; the question is the last `user` message. Earlier messages are not used
/// yet (kb has no conversations), but they must still be well-formed.
fn question_of(messages: &[Value]) -> Result<String, OpenAiError> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "empty_array",
            "`messages` must contain at least one message",
        ));
    }
    let mut question = None;
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(OpenAiError::invalid(
                Some(&format!("messages[{i}]")),
                "invalid_type",
                format!("`messages[{i}]` must be an object"),
            ));
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            _ => {
                return Err(OpenAiError::invalid(
                    Some(&format!("messages[{i}].role")),
                    "invalid_value",
                    format!("`messages[{i}].role` must be one of {}", ROLES.join(", ")),
                ))
            }
        };
        let text = content_text(obj.get("content"), &format!("messages[{i}].content"))?;
        if role == "user" {
            match text {
                Some(t) => question = Some(t),
                None => {
                    return Err(OpenAiError::invalid(
                        Some(&format!("messages[{i}].content")),
                        "missing_content",
                        format!("`messages[{i}].content` is required for a user message"),
                    ))
                }
            }
        }
    }
    question.ok_or_else(|| {
        OpenAiError::invalid(
            Some("messages"),
            "no_user_message",
            "`messages` has no `user` message; the last one is the question",
        )
    })
}

fn parse_request(body: Result<Bytes, BytesRejection>) -> Result<ChatRequest, OpenAiError> {
    let bytes = body.map_err(|rej| OpenAiError {
        status: rej.status(),
        message: rej.body_text(),
        param: None,
        code: "invalid_body".into(),
        retry_after: None,
    })?;
    serde_json::from_slice::<ChatRequest>(&bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "malformed_json"
        } else {
            "invalid_request"
        };
        OpenAiError::invalid(None, code, format!("invalid request body: {e}"))
    })
}

/// The `kb` object of the first chunk: what the answer is drawn from.
fn kb_sources(collection: &str, sources: &[Source]) -> Value {
    json!({"collection": collection, "sources": sources})
}

/// The `kb` object once the answer is complete.
fn kb_outcome(done: &Done) -> Value {
    json!({"citations": done.citations, "declined": done.declined, "answerer": done.answerer})
}

fn usage(done: &Done) -> Value {
    let (p, c) = (done.usage.prompt_tokens, done.usage.completion_tokens);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// What every chunk of one completion shares.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

impl Chunks {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            // As OpenAI does: `usage` is null on every chunk but the last.
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, done: &Done) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage(done),
        })
    }
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// A chat completion answered from the model's collection, with the sources and citations in
/// an extra `kb` object.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = super::openapi::ChatCompletionRequest,
    responses(
        (status = 200, description = "A `chat.completion` (JSON), or with `stream: true` server-sent events whose `data` is a `chat.completion.chunk` each, ending with `data: [DONE]` (an error after the stream started is sent as `data: <OpenAI error body>` before `[DONE]`). The status line waits for the first token, so earlier failures are real HTTP statuses", content((super::openapi::ChatCompletion = "application/json"), (super::openapi::ChatCompletionChunk = "text/event-stream"))),
        (status = 400, description = "`malformed_json`, `invalid_request`, `invalid_body`, `empty_array`, `no_user_message`, `invalid_type`, `invalid_value`, `missing_content`, `unsupported_content`, `unsupported_value` (`n` > 1), or a question kb cannot take (`empty_question`, `question_too_long`), with `param`", body = super::openapi::OpenAiErrorBody),
        (status = 404, description = "`model_not_found`", body = super::openapi::OpenAiErrorBody),
        (status = 409, description = "`embedder_mismatch`", body = super::openapi::OpenAiErrorBody),
        (status = 413, description = "`invalid_body`: the body is over the request limit", body = super::openapi::OpenAiErrorBody),
        (status = 429, description = "`overloaded` or `upstream_rate_limited`", body = super::openapi::OpenAiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 500, description = "`internal_error`", body = super::openapi::OpenAiErrorBody),
        (status = 502, description = "An upstream model failed", body = super::openapi::OpenAiErrorBody),
        (status = 503, description = "`upstream_unavailable` or `shutting_down`", body = super::openapi::OpenAiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = super::openapi::OpenAiErrorBody),
    )
)]
async fn chat_completions(
    State(core): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let req = parse_request(body)?;
    match req.n {
        None | Some(1) => {}
        Some(n) if n > 1 => {
            return Err(OpenAiError::invalid(
                Some("n"),
                "unsupported_value",
                "kb returns one choice per request: `n` must be 1",
            ))
        }
        Some(_) => {
            return Err(OpenAiError::invalid(
                Some("n"),
                "invalid_value",
                "`n` must be 1",
            ))
        }
    }
    let question = question_of(&req.messages)?;
    let (collection, _) = resolve_model(&core, &req.model).await?;
    let search = search_params(&core, Some(collection.clone()), &question, None, None, None)
        .map_err(|e| OpenAiError {
            // A question kb cannot take is a bad request, whatever /v1/ask answers for it.
            status: if e.status.is_client_error() {
                StatusCode::BAD_REQUEST
            } else {
                e.status
            },
            param: Some("messages".into()),
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
    });

    if req.stream != Some(true) {
        let mut sources = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(_) | AskEvent::Token(_) => {}
                AskEvent::Sources(s) => sources = s,
                AskEvent::Error { code, message } => {
                    return Err(OpenAiError::from_event(code, message))
                }
                AskEvent::Done(done) => {
                    let mut kb = kb_sources(&collection, &sources);
                    if let (Value::Object(m), Value::Object(o)) = (&mut kb, kb_outcome(&done)) {
                        m.extend(o);
                    }
                    return Ok(Json(json!({
                        "id": chunks.id,
                        "object": "chat.completion",
                        "created": chunks.created,
                        "model": chunks.model,
                        "system_fingerprint": null,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": done.answer, "refusal": null},
                            "logprobs": null,
                            "finish_reason": "stop",
                        }],
                        "usage": usage(&done),
                        "kb": kb,
                    }))
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
            Some(AskEvent::Error { code, message }) => {
                return Err(OpenAiError::from_event(code, message))
            }
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
    let events = futures::stream::iter(head).chain(events);
    let stream = async_stream::stream! {
        let mut events = events;
        let mut started = false;
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(_) => {}
                AskEvent::Sources(sources) => {
                    let mut c = chunks.chunk(json!({"role": "assistant", "content": ""}), None);
                    c["kb"] = kb_sources(&collection, &sources);
                    started = true;
                    yield Ok::<Event, Infallible>(data(&c));
                }
                AskEvent::Token(t) => {
                    if !started {
                        started = true;
                        yield Ok(data(&chunks.chunk(json!({"role": "assistant", "content": ""}), None)));
                    }
                    if !t.is_empty() {
                        yield Ok(data(&chunks.chunk(json!({"content": t}), None)));
                    }
                }
                AskEvent::Done(done) => {
                    if !started {
                        yield Ok(data(&chunks.chunk(json!({"role": "assistant", "content": ""}), None)));
                    }
                    let mut c = chunks.chunk(json!({}), Some("stop"));
                    c["kb"] = kb_outcome(&done);
                    yield Ok(data(&c));
                    if chunks.include_usage {
                        yield Ok(data(&chunks.usage_chunk(&done)));
                    }
                    break;
                }
                AskEvent::Error { code, message } => {
                    // The status line is long gone: the error travels in the stream, in the
                    // shape OpenAI's clients raise from.
                    let e = OpenAiError::from_event(code, message);
                    yield Ok(data(&e.body()));
                    break;
                }
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(core.config.server.keep_alive_secs))
                .text("keep-alive"),
        )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<String, OpenAiError>) -> (Option<String>, String) {
        let e = r.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        (e.param, e.code)
    }

    #[test]
    fn the_last_user_message_is_the_question() {
        let q = question_of(&[
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
            json!({"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]}),
            json!({"role": "assistant", "content": "prefill"}),
        ]);
        assert_eq!(q.unwrap(), "second\npart");
    }

    #[test]
    fn malformed_messages_are_rejected_with_their_param() {
        assert_eq!(
            err(question_of(&[])),
            (Some("messages".into()), "empty_array".into())
        );
        assert_eq!(
            err(question_of(&[json!({"role": "system", "content": "x"})])).1,
            "no_user_message"
        );
        assert_eq!(
            err(question_of(&[json!("hello")])).0.as_deref(),
            Some("messages[0]")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "wizard", "content": "x"})]))
                .0
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "user", "content": 42})]))
                .0
                .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "user"})])).1,
            "missing_content"
        );
        assert_eq!(
            err(question_of(&[
                json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
            ]))
            .1,
            "unsupported_content"
        );
    }

    #[test]
    fn error_types_follow_the_status() {
        let e = OpenAiError::from_event("upstream_timeout".into(), "slow".into());
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.body()["error"]["type"], "server_error");
        assert_eq!(e.body()["error"]["code"], "upstream_timeout");
        let e = OpenAiError::from_event("upstream_rate_limited".into(), "later".into());
        assert_eq!(e.body()["error"]["type"], "rate_limit_error");
        let e = OpenAiError::model_not_found("gpt-4");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.body()["error"]["param"], "model");
    }
}
