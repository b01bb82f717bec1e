//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated at compile time (utoipa) from the `#[utoipa::path]` attribute on every
//! handler and the `ToSchema` types the handlers return (each defined beside its handler).
//! This module holds only the document. `tests/it/openapi.rs` checks that every route the router
//! serves is described, and that real responses match the described ones.

use super::ask::{AskStreamEvent, TokenData};
use super::http::AppState;
use super::jobs::{JobDeleted, JobStreamEvent};
use super::openai::ChatCompletionChunk;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::LazyLock;
use utoipa::OpenApi;

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
        super::collections::list_collections,
        super::collections::get_collection,
        super::collections::delete_collection,
        super::upload::upload,
        super::collections::list_documents,
        super::collections::get_document,
        super::collections::delete_document,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::job_events,
        super::ask::search,
        super::ask::ask,
        super::ops::info,
        super::ops::usage,
        super::conversations::list_conversations,
        super::conversations::get_conversation,
        super::conversations::delete_conversation,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
        super::openai::list_models,
        super::openai::get_model,
        super::openai::chat_completions,
        super::auth::create_key,
        super::auth::list_keys,
        super::auth::revoke_key,
        super::auth::audit_log,
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

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

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
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str()).into_response()
}
