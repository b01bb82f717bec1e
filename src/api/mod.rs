//! HTTP: one module per resource, each with its own `routes()`, merged here with the layers
//! every route shares (request id, tracing span over the whole response body, metrics).
//! Errors have one JSON shape, `{"error": {"code", "message"}}`, with the status of their code
//! (`crate::error::Code`); internal details are logged only.

mod ask;
mod auth;
mod collections;
mod conversations;
mod error;
mod http;
mod jobs;
mod openai;
mod openapi;
mod ops;
mod upload;
mod validate;
mod web;

pub use auth::{make_key, CreatedKey};
pub use error::{slow_body, ApiError, ErrorBody, JsonBody};
pub use http::{AppState, RequestId};
pub use jobs::MAX_JOB_IDS;
pub use openapi::ApiDoc;
pub use validate::{search_params, valid_collection};

use crate::error::Code;
use crate::Core;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tower_http::set_header::SetResponseHeaderLayer;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .merge(collections::routes())
        .merge(jobs::routes())
        .merge(ask::routes())
        .merge(conversations::routes())
        .merge(ops::routes())
        .merge(openapi::routes())
        .merge(openai::routes())
        .merge(web::routes())
        .merge(auth::routes())
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            auth::check_origin,
        ))
        // Every response: no content sniffing, no referrer, no framing.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(cors(&core))
        .layer(axum::middleware::from_fn_with_state(core.clone(), observe))
        .with_state(core)
}

/// CORS: off unless `server.allowed_origins` names origins; then those may call the API from
/// their pages (with the methods and headers the API uses).
fn cors(core: &Core) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = core
        .config
        .server
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            axum::http::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([axum::http::HeaderName::from_static("x-request-id")])
}

/// Request id, tracing span, metrics.
async fn observe(State(core): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_graphic()))
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
    let resp = {
        use tracing::Instrument;
        next.run(req).instrument(span.clone()).await
    };
    let status = resp.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    core.metrics.observe(&method, &route, status, secs);
    span.in_scope(|| tracing::info!(status, ms = (secs * 1000.0) as u64, "request"));
    // The body (an answer's event stream) runs on after this returns: keep its logs in the
    // request's span.
    let (mut parts, body) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(&id) {
        parts.headers.insert("x-request-id", v);
    }
    let body = axum::body::Body::new(InSpan { body, span });
    Response::from_parts(parts, body)
}

/// A response body polled inside a tracing span.
struct InSpan {
    body: axum::body::Body,
    span: tracing::Span,
}

impl http_body::Body for InSpan {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _g = this.span.enter();
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}
