//! HTTP: routes, extractors, request/response types, SSE encoding. Errors have one JSON shape,
//! `{"error": {"code", "message"}}`, with the right status; internal details are logged only.

mod openai;
mod openapi;
mod upload;
mod web;

pub use openapi::ApiDoc;

use crate::query::{AskEvent, AskParams, SearchParams};
use crate::store::SearchMode;
use crate::Core;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type AppState = Arc<Core>;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: Option<u64>) -> ApiError {
        self.retry_after = secs;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Log the detail, return a generic message.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        ApiError::internal(e)
    }
}

impl From<crate::query::QueryError> for ApiError {
    fn from(e: crate::query::QueryError) -> Self {
        use crate::models::ModelError as M;
        use crate::query::QueryError as Q;
        match e {
            Q::NoCollection(c) => ApiError::not_found(
                "collection_not_found",
                format!("collection `{c}` does not exist"),
            ),
            Q::EmbedderMismatch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "embedder_mismatch", e.to_string())
            }
            Q::Model(m) => {
                let status = match &m {
                    M::RateLimited { .. } | M::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
                    M::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    M::Closed | M::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                ApiError::new(status, m.code(), m.to_string())
                    .with_retry_after(m.retry_after_secs())
            }
            Q::Store(s) => ApiError::internal(s),
            Q::Catalog(c) => ApiError::internal(c),
        }
    }
}

/// `Json<T>` whose rejections use the API's error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rej) => Err(match rej {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "expected Content-Type: application/json",
                ),
                JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
                    "malformed_json",
                    format!("malformed JSON: {}", e.body_text()),
                ),
                JsonRejection::JsonDataError(e) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    e.body_text(),
                ),
                other => ApiError::bad_request("invalid_request", other.body_text()),
            }),
        }
    }
}

pub fn valid_collection(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_collection",
            "collection names are 1-64 characters: letters, digits, '_', '-', '.', starting with a letter or digit",
        ))
    }
}

pub fn router(core: Arc<Core>) -> Router {
    let api = Router::new()
        .route("/v1/collections", get(list_collections))
        .route("/v1/collections/{collection}", get(get_collection))
        .route(
            "/v1/collections/{collection}/documents",
            post(upload::upload)
                .get(list_documents)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/search", post(search))
        .route("/v1/ask", post(ask))
        .route("/v1/info", get(info))
        .route("/v1/usage", get(usage))
        .route("/v1/conversations", get(list_conversations))
        .route(
            "/v1/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json));
    api.merge(openai::routes())
        .merge(web::routes())
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(core.clone(), observe))
        .with_state(core)
}

/// The build and the settings that shape answers (recorded by `kb eval --server`).
#[utoipa::path(
    get,
    path = "/v1/info",
    tag = "operations",
    responses(
        (status = 200, description = "The build and the settings that shape answers (recorded by `kb eval --server`)", body = openapi::Info),
    )
)]
async fn info(State(core): State<AppState>) -> Json<serde_json::Value> {
    Json(core.describe())
}

/// Request id, tracing span, metrics.
async fn observe(State(core): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut req = req;
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = {
        use tracing::Instrument;
        next.run(req).instrument(span.clone()).await
    };
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    core.metrics.observe(&method, &route, status, secs);
    span.in_scope(|| tracing::info!(status, ms = (secs * 1000.0) as u64, "request"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[derive(Clone)]
pub struct RequestId(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    since: Option<String>,
}

/// Usage since `since` (RFC 3339; default: the last 24 hours), per collection and model.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "operations",
    params(("since" = Option<String>, Query, description = "RFC 3339 start of the window; default: the last 24 hours")),
    responses(
        (status = 200, description = "Usage of model calls since `since`, per collection and model, and in total", body = openapi::UsageResponse),
        (status = 400, description = "`invalid_since`. An unknown query parameter is refused with a plain-text 400", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn usage(
    State(core): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> Result<Response, ApiError> {
    let since = match &q.since {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| ApiError::bad_request("invalid_since", format!("since: {e} (RFC 3339)")))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now() - chrono::Duration::hours(24),
    };
    let rows = core.catalog.usage_since(since.timestamp_millis()).await?;
    let sum = |f: fn(&crate::catalog::UsageAggregate) -> i64| rows.iter().map(f).sum::<i64>();
    let total = json!({
        "requests": sum(|r| r.requests),
        "prompt_tokens": sum(|r| r.prompt_tokens),
        "completion_tokens": sum(|r| r.completion_tokens),
        "cache_hits": sum(|r| r.cache_hits),
        "errors": sum(|r| r.errors),
        "cost_usd": rows.iter().map(|r| r.cost_usd).sum::<f64>(),
    });
    Ok(Json(json!({
        "since": since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "usage": rows,
        "total": total,
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    responses(
        (status = 200, description = "The most recently updated conversations", body = openapi::ConversationList),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn list_conversations(State(core): State<AppState>) -> Result<Response, ApiError> {
    let c = core.catalog.conversations(200).await?;
    Ok(Json(json!({"conversations": c})).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation with its turns", body = openapi::ConversationDetail),
        (status = 404, description = "`conversation_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn get_conversation(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(c) = core.catalog.conversation(&id).await? else {
        return Err(ApiError::not_found(
            "conversation_not_found",
            format!("no conversation `{id}`"),
        ));
    };
    let turns = core.catalog.turns(&id).await?;
    let mut v = serde_json::to_value(c).map_err(ApiError::internal)?;
    v["turns"] = serde_json::to_value(turns).map_err(ApiError::internal)?;
    Ok(Json(v).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`conversation_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn delete_conversation(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if core.catalog.delete_conversation(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(
            "conversation_not_found",
            format!("no conversation `{id}`"),
        ))
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = openapi::Status))
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the catalog answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = openapi::Status),
        (status = 503, description = "`not_ready`: the catalog is unavailable", body = openapi::ErrorBody),
    )
)]
async fn readyz(State(core): State<AppState>) -> Response {
    match core.catalog.collections().await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "not ready");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the catalog is unavailable",
            )
            .into_response()
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format (version 0.0.4): HTTP requests and latencies by route, ingestion, models, caches, the governor", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
async fn metrics(State(core): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        core.metrics.render() + &core.governor.render(),
    )
        .into_response()
}

/// Every collection.
#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "collections",
    responses(
        (status = 200, description = "Every collection", body = openapi::CollectionList),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn list_collections(State(core): State<AppState>) -> Result<Response, ApiError> {
    let c = core.catalog.collections().await?;
    Ok(Json(json!({"collections": c})).into_response())
}

/// A collection with its counts: `chunks` (catalog, live versions) and `points` (index).
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name: 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit")),
    responses(
        (status = 200, description = "The collection", body = openapi::CollectionDetail),
        (status = 400, description = "`invalid_collection`", body = openapi::ErrorBody),
        (status = 404, description = "`collection_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn get_collection(
    State(core): State<AppState>,
    Path(collection): Path<String>,
) -> Result<Response, ApiError> {
    valid_collection(&collection)?;
    let Some(info) = core.catalog.collection(&collection).await? else {
        return Err(ApiError::not_found(
            "collection_not_found",
            format!("collection `{collection}` does not exist"),
        ));
    };
    let chunks = core.catalog.live_chunks(&collection).await?;
    let points = match core.store.count(&collection, None).await {
        Ok(n) => n as i64,
        Err(crate::store::StoreError::NoCollection(_)) => 0,
        Err(e) => return Err(ApiError::internal(e)),
    };
    let mut v = serde_json::to_value(info).map_err(ApiError::internal)?;
    v["chunks"] = chunks.into();
    v["points"] = points.into();
    Ok(Json(v).into_response())
}

/// The documents of a collection.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/documents",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name: 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit")),
    responses(
        (status = 200, description = "The documents, with the state of their newest version", body = openapi::DocumentList),
        (status = 400, description = "`invalid_collection`", body = openapi::ErrorBody),
        (status = 404, description = "`collection_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn list_documents(
    State(core): State<AppState>,
    Path(collection): Path<String>,
) -> Result<Response, ApiError> {
    valid_collection(&collection)?;
    if core.catalog.collection(&collection).await?.is_none() {
        return Err(ApiError::not_found(
            "collection_not_found",
            format!("collection `{collection}` does not exist"),
        ));
    }
    let docs = core.catalog.documents(&collection).await?;
    Ok(Json(json!({"collection": collection, "documents": docs})).into_response())
}

/// A document: its live version (if any) and its newest one.
#[utoipa::path(
    get,
    path = "/v1/documents/{id}",
    tag = "collections",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document", body = crate::catalog::DocumentView),
        (status = 404, description = "`document_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn get_document(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match core.catalog.document(&id).await? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::not_found(
            "document_not_found",
            format!("no document `{id}`"),
        )),
    }
}

/// Delete a document and all its versions; its chunks leave the index.
#[utoipa::path(
    delete,
    path = "/v1/documents/{id}",
    tag = "collections",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`document_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn delete_document(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match core.delete_document(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(
            "document_not_found",
            format!("no document `{id}`"),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// An ingestion job's state.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id (from the upload response)")),
    responses(
        (status = 200, description = "The job", body = crate::catalog::JobRow),
        (status = 404, description = "`job_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn get_job(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match core.catalog.job(&id).await? {
        Some(j) => Ok(Json(j).into_response()),
        None => Err(ApiError::not_found(
            "job_not_found",
            format!("no job `{id}`"),
        )),
    }
}

fn terminal(status: &str) -> bool {
    status == "done" || status == "failed"
}

/// An ingestion job's progress as server-sent events.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id (from the upload response)")),
    responses(
        (status = 200, description = "Server-sent events: `progress` (data: the job, as `GET /v1/jobs/{id}`) at once and on every change, until one with status `done` or `failed`; or `deleted` (data: `{\"id\", \"status\": \"deleted\"}`) when the job's document was deleted. `: keep-alive` comments keep the connection open. The schema shows each event as `{\"event\": name, \"data\": ...}`", body = openapi::JobStreamEvent, content_type = "text/event-stream"),
        (status = 404, description = "`job_not_found`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn job_events(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Subscribe before reading the current state so no update is missed in between.
    let mut rx = core.ingestor.events.subscribe();
    let Some(first) = core.catalog.job(&id).await? else {
        return Err(ApiError::not_found(
            "job_not_found",
            format!("no job `{id}`"),
        ));
    };
    let keep_alive = core.config.server.keep_alive_secs;
    let stream = async_stream::stream! {
        let done = terminal(&first.status);
        yield Ok::<Event, Infallible>(Event::default().event("progress").json_data(&first).unwrap());
        if done {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = tick.tick() => {
                    // A job whose document was deleted sends nothing more: notice, and end.
                    if matches!(core.catalog.job(&id).await, Ok(None)) {
                        yield Ok(Event::default().event("deleted").json_data(json!({"id": id, "status": "deleted"})).unwrap());
                        return;
                    }
                    continue;
                }
            };
            match next {
                Ok(row) if row.id == id => {
                    let end = terminal(&row.status);
                    yield Ok(Event::default().event("progress").json_data(&row).unwrap());
                    if end {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: resend the current state.
                    if let Ok(Some(row)) = core.catalog.job(&id).await {
                        let end = terminal(&row.status);
                        yield Ok(Event::default().event("progress").json_data(&row).unwrap());
                        if end { return; }
                    }
                }
                Err(_) => return,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(keep_alive))
                .text("keep-alive"),
        )
        .into_response())
}

/// Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
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

fn search_params(
    core: &Core,
    collection: Option<String>,
    query: &str,
    top_k: Option<usize>,
    mode: Option<String>,
    document_ids: Option<Vec<String>>,
) -> Result<SearchParams, ApiError> {
    let collection = collection.unwrap_or_else(|| "default".into());
    valid_collection(&collection)?;
    let q = query.trim();
    if q.is_empty() {
        return Err(ApiError::bad_request(
            "empty_question",
            "the question is empty",
        ));
    }
    let max = core.config.limits.max_question_chars;
    if q.chars().count() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "question_too_long",
            format!("the question is longer than {max} characters"),
        ));
    }
    let top_k = top_k.unwrap_or(core.config.retrieval.top_k);
    if top_k == 0 || top_k > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_top_k",
            "top_k must be between 1 and 100",
        ));
    }
    let mode =
        SearchMode::parse(mode.as_deref().unwrap_or(&core.config.retrieval.mode)).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_mode",
                e.to_string(),
            )
        })?;
    Ok(SearchParams {
        collection,
        query: q.to_string(),
        top_k,
        mode,
        doc_ids: document_ids,
    })
}

/// Ranked chunks for a query (no answer).
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "questions",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Ranked chunks", body = openapi::SearchResponse),
        (status = 400, description = "`empty_question`, `invalid_collection`, `malformed_json`, `invalid_request` (an unreadable body, e.g. over 2 MB)", body = openapi::ErrorBody),
        (status = 404, description = "`collection_not_found`", body = openapi::ErrorBody),
        (status = 409, description = "`embedder_mismatch`: the collection was built with another embedding model", body = openapi::ErrorBody),
        (status = 413, description = "`question_too_long` (`limits.max_question_chars`)", body = openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = openapi::ErrorBody),
        (status = 422, description = "`invalid_top_k` (1-100), `invalid_mode`, or a field of the wrong type or unknown (`invalid_request`)", body = openapi::ErrorBody),
        (status = 429, description = "`overloaded` (the embedder's queue is full) or `upstream_rate_limited`", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 502, description = "An upstream model failed: `upstream_error`, `upstream_unreachable`, `upstream_malformed`, `model_error`, ...", body = openapi::ErrorBody),
        (status = 503, description = "`upstream_unavailable` (circuit open) or `shutting_down`", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn search(
    State(core): State<AppState>,
    JsonBody(req): JsonBody<SearchRequest>,
) -> Result<Response, ApiError> {
    let p = search_params(
        &core,
        req.collection,
        &req.query,
        req.top_k,
        req.mode,
        req.document_ids,
    )?;
    let t = Instant::now();
    let results = core.query.search(&p).await?;
    Ok(Json(json!({
        "collection": p.collection,
        "mode": p.mode,
        "results": results,
        "timings_ms": {"total": t.elapsed().as_millis() as u64},
    }))
    .into_response())
}

/// Unknown fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
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

fn valid_conversation_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_conversation_id",
            "conversation ids are 1-64 letters, digits, '-' or '_'",
        ))
    }
}

fn sse_event(ev: &AskEvent) -> Event {
    match ev {
        AskEvent::Meta(m) => Event::default().event("meta").json_data(m),
        AskEvent::Sources(s) => Event::default().event("sources").json_data(s),
        AskEvent::Token(t) => Event::default()
            .event("token")
            .json_data(json!({"text": t})),
        AskEvent::Done(d) => Event::default().event("done").json_data(d),
        AskEvent::Error { code, message } => Event::default()
            .event("error")
            .json_data(json!({"error": {"code": code, "message": message}})),
    }
    .expect("serialisable event")
}

/// The HTTP status for the code of an `AskEvent::Error` that arrives before a response started.
fn ask_error_status(code: &str) -> StatusCode {
    match code {
        "upstream_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "upstream_rate_limited" | "overloaded" => StatusCode::TOO_MANY_REQUESTS,
        "upstream_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "collection_not_found" => StatusCode::NOT_FOUND,
        "embedder_mismatch" => StatusCode::CONFLICT,
        "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// An answer's error before any of it was sent: its status, with Retry-After when the error
/// names a wait.
fn ask_error_response(code: String, message: String) -> Response {
    let status = ask_error_status(&code);
    let retry = crate::models::ModelError::retry_after_in_message(&message)
        .filter(|_| matches!(status.as_u16(), 429 | 503));
    let mut r = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    if let Some(s) = retry {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Answer a question from a collection, with citations: server-sent events, or one JSON body.
#[utoipa::path(
    post,
    path = "/v1/ask",
    tag = "questions",
    request_body = AskRequest,
    responses(
        (status = 200, description = "The answer. As JSON when `stream` is false, or when `stream` is absent and `Accept` names `application/json` but not `text/event-stream`. Otherwise server-sent events, in order: `meta` (data: `Meta`), `sources` (data: an array of `Source`), `token`* (data: `TokenData`, pieces of the answer), then `done` (data: `Done`) or `error` (data: `ErrorBody`). `: keep-alive` comments keep the connection open. The status line waits until retrieval is through, so an error before that is a real HTTP status; later errors travel as the `error` event. The event-stream schema shows each event as `{\"event\": name, \"data\": ...}`", content((openapi::AskResponse = "application/json"), (openapi::AskStreamEvent = "text/event-stream"))),
        (status = 400, description = "`empty_question`, `invalid_collection`, `invalid_conversation_id`, `malformed_json`, `invalid_request` (an unreadable body, e.g. over 2 MB)", body = openapi::ErrorBody),
        (status = 404, description = "`collection_not_found`", body = openapi::ErrorBody),
        (status = 409, description = "`embedder_mismatch`, or `conversation_collection_mismatch`: the conversation belongs to another collection", body = openapi::ErrorBody),
        (status = 413, description = "`question_too_long` (`limits.max_question_chars`)", body = openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = openapi::ErrorBody),
        (status = 422, description = "`invalid_top_k` (1-100), `invalid_mode`, or a field of the wrong type or unknown (`invalid_request`)", body = openapi::ErrorBody),
        (status = 429, description = "`overloaded` (the embedder's queue is full) or `upstream_rate_limited`", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 502, description = "An upstream model failed: `upstream_error`, `upstream_unreachable`, `upstream_malformed`, `model_error`, ...", body = openapi::ErrorBody),
        (status = 503, description = "`upstream_unavailable` (circuit open) or `shutting_down`", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "`upstream_timeout`", body = openapi::ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = openapi::ErrorBody),
    )
)]
async fn ask(
    State(core): State<AppState>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
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
    // Unknown collection: a plain 404 before any stream starts.
    if core.catalog.collection(&p.collection).await?.is_none() {
        return Err(ApiError::not_found(
            "collection_not_found",
            format!("collection `{}` does not exist", p.collection),
        ));
    }
    let wants_json = req.stream == Some(false)
        || (req.stream.is_none()
            && headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| {
                    a.contains("application/json") && !a.contains("text/event-stream")
                }));
    // A conversation: the one named (created when unknown, so clients may choose ids), or a
    // new one when asked for. It belongs to one collection.
    let conversation_id = match (req.conversation_id, req.conversation) {
        (Some(id), _) => Some(id),
        (None, Some(true)) => Some(uuid::Uuid::new_v4().to_string()),
        (None, _) => None,
    };
    if let Some(id) = &conversation_id {
        valid_conversation_id(id)?;
        let conv = core.catalog.ensure_conversation(id, &p.collection).await?;
        if conv.collection != p.collection {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conversation_collection_mismatch",
                format!(
                    "conversation `{id}` belongs to collection `{}`",
                    conv.collection
                ),
            ));
        }
    }
    let events = core.query.ask(AskParams {
        search: p,
        request_id,
        conversation_id,
        use_cache: req.cache != Some(false),
    });
    if wants_json {
        let mut body = serde_json::Map::new();
        let mut events = events;
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Meta(m) => {
                    body.insert("meta".into(), serde_json::to_value(m).unwrap());
                }
                AskEvent::Sources(s) => {
                    body.insert("sources".into(), serde_json::to_value(s).unwrap());
                }
                AskEvent::Token(_) => {}
                AskEvent::Done(d) => {
                    if let serde_json::Value::Object(m) = serde_json::to_value(*d).unwrap() {
                        body.extend(m);
                    }
                }
                AskEvent::Error { code, message } => {
                    return Ok(ask_error_response(code, message));
                }
            }
        }
        return Ok(Json(serde_json::Value::Object(body)).into_response());
    }
    // Hold the status line until retrieval is through (the first event after `meta`), so that
    // a refused or failed question embedding (a full queue: 429 with Retry-After) is a real
    // HTTP status; errors after that travel in the stream.
    let mut events = events;
    let mut head = Vec::new();
    while let Some(ev) = events.next().await {
        match ev {
            AskEvent::Meta(_) => head.push(ev),
            AskEvent::Error { code, message } => return Ok(ask_error_response(code, message)),
            ev => {
                head.push(ev);
                break;
            }
        }
    }
    let stream = futures::stream::iter(head)
        .chain(events)
        .map(|ev| Ok::<Event, Infallible>(sse_event(&ev)));
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(core.config.server.keep_alive_secs))
                .text("keep-alive"),
        )
        .into_response())
}
