//! Operations: liveness, readiness, Prometheus metrics, build information, usage.

use super::error::{ApiError, ErrorBody};
use super::http::AppState;
use crate::catalog::UsageAggregate;
use crate::error::Code;
use crate::info::Info;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/usage", get(usage))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// `{"status": "ok"}` (`/healthz`) or `{"status": "ready"}` (`/readyz`).
#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: String,
}

/// The build and the settings that shape answers (recorded by `kb eval --server`).
#[utoipa::path(
    get,
    path = "/v1/info",
    tag = "operations",
    responses(
        (status = 200, description = "The build and the settings that shape answers (recorded by `kb eval --server`)", body = Info),
    )
)]
pub(super) async fn info(State(core): State<AppState>) -> Json<Info> {
    Json(core.describe())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    since: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageResponse {
    /// The start of the window (RFC 3339).
    pub since: String,
    /// Per collection and model.
    pub usage: Vec<UsageAggregate>,
    pub total: UsageTotal,
}

#[derive(Serialize, ToSchema)]
pub struct UsageTotal {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cache_hits: i64,
    pub errors: i64,
    pub cost_usd: f64,
}

/// Usage since `since` (RFC 3339; default: the last 24 hours), per collection and model.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "operations",
    params(("since" = Option<String>, Query, description = "RFC 3339 start of the window; default: the last 24 hours")),
    responses(
        (status = 200, description = "Usage of model calls since `since`, per collection and model, and in total", body = UsageResponse),
        (status = 400, description = "`invalid_since`, or `invalid_request` (an unknown or repeated query parameter)", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn usage(
    State(core): State<AppState>,
    p: crate::auth::Principal,
    q: Result<axum::extract::Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| {
        ApiError::new(
            Code::InvalidRequest,
            format!(
                "query parameters: {} (only `since` is known)",
                e.body_text()
            ),
        )
    })?;
    let since = match &q.since {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| ApiError::new(Code::InvalidSince, format!("since: {e} (RFC 3339)")))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now() - chrono::Duration::hours(24),
    };
    let mut rows = core.catalog.usage_since(since.timestamp_millis()).await?;
    // A key sees the usage of the collections it may read (usage of no collection: admins).
    rows.retain(|r| match &r.collection {
        Some(c) => p.can_read(c),
        None => p.is_admin(),
    });
    let sum = |f: fn(&UsageAggregate) -> i64| rows.iter().map(f).sum::<i64>();
    let total = UsageTotal {
        requests: sum(|r| r.requests),
        prompt_tokens: sum(|r| r.prompt_tokens),
        completion_tokens: sum(|r| r.completion_tokens),
        cache_hits: sum(|r| r.cache_hits),
        errors: sum(|r| r.errors),
        cost_usd: rows.iter().map(|r| r.cost_usd).sum::<f64>(),
    };
    Ok(Json(UsageResponse {
        since: since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        usage: rows,
        total,
    }))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = Status))
)]
pub(super) async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: the catalog answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = Status),
        (status = 503, description = "`not_ready`: the catalog is unavailable", body = ErrorBody),
    )
)]
pub(super) async fn readyz(State(core): State<AppState>) -> Result<Json<Status>, ApiError> {
    match core.catalog.collections().await {
        Ok(_) => Ok(Json(Status {
            status: "ready".into(),
        })),
        Err(e) => {
            tracing::error!(error = %e, "not ready");
            Err(ApiError::new(Code::NotReady, "the catalog is unavailable"))
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
pub(super) async fn metrics(State(core): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        core.metrics.render() + &core.governor.render(),
    )
        .into_response()
}
