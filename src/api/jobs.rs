//! Ingestion jobs: their state, and their progress as server-sent events.

use super::error::{ApiError, ErrorBody};
use super::http::{shutting_down, sse, AppState};
use crate::auth::Principal;
use crate::catalog::JobRow;
use crate::error::Code;
use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/events", get(job_events))
}

/// Sent once the job's document was deleted; the stream ends.
#[derive(Serialize, ToSchema)]
pub struct JobDeleted {
    pub id: String,
    #[schema(example = "deleted")]
    pub status: String,
}

/// The events of `GET /v1/jobs/{id}/events` (`text/event-stream`): `progress` with the job's
/// current state, first at once and then on every change; the stream ends after a `progress`
/// whose status is `done` or `failed`, after `deleted`, or after `error` (`shutting_down`: the
/// server is stopping; the job resumes at its next start or on another replica). Comments (`: keep-alive`) keep idle
/// connections open. Here an event is written as `{"event": name, "data": ...}` (this type
/// describes the stream for the OpenAPI document).
#[derive(ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
#[allow(dead_code)]
pub enum JobStreamEvent {
    /// The job's state (the same object as `GET /v1/jobs/{id}`).
    Progress(Box<JobRow>),
    /// The job's document was deleted: no more progress will come.
    Deleted(JobDeleted),
    /// The server is stopping (`shutting_down`); follow the job again later.
    Error(ErrorBody),
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::new(Code::JobNotFound, format!("no job `{id}`"))
}

/// An ingestion job's state.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id (from the upload response)")),
    responses(
        (status = 200, description = "The job", body = JobRow),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn get_job(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobRow>, ApiError> {
    match core.catalog.job(&id).await? {
        // Another tenant's job does not exist for this key.
        Some(j) if p.can_read(&j.collection) || p.can_write(&j.collection) => Ok(Json(j)),
        _ => Err(job_not_found(&id)),
    }
}

/// At most this many ids in one `GET /v1/jobs?ids=`.
pub const MAX_JOB_IDS: usize = 500;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobsQuery {
    ids: String,
}

/// The jobs of `GET /v1/jobs?ids=`.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// The jobs that exist and the caller may see, in no particular order (an id that is
    /// unknown, or another tenant's, is left out).
    pub jobs: Vec<JobRow>,
}

/// Several ingestion jobs' states in one request (what a client following many uploads polls).
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(("ids" = String, Query, description = "Job ids, comma-separated, at most 500")),
    responses(
        (status = 200, description = "The jobs found", body = JobList),
        (status = 400, description = "`invalid_request`: no `ids`, more than 500, or an unknown query parameter", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn list_jobs(
    State(core): State<AppState>,
    p: Principal,
    q: Result<axum::extract::Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| {
        ApiError::new(
            Code::InvalidRequest,
            format!("query parameters: {} (`ids` is required)", e.body_text()),
        )
    })?;
    let ids: Vec<String> = q
        .ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() || ids.len() > MAX_JOB_IDS {
        return Err(ApiError::new(
            Code::InvalidRequest,
            format!(
                "ids: give 1 to {MAX_JOB_IDS} job ids, comma-separated (got {})",
                ids.len()
            ),
        ));
    }
    let mut jobs = core.catalog.jobs(&ids).await?;
    jobs.retain(|j| p.can_read(&j.collection) || p.can_write(&j.collection));
    Ok(Json(JobList { jobs }))
}

fn terminal(status: &str) -> bool {
    status == "done" || status == "failed"
}

fn progress(row: &JobRow) -> Event {
    Event::default()
        .event("progress")
        .json_data(row)
        .expect("serialisable job")
}

/// An ingestion job's progress as server-sent events.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id (from the upload response)")),
    responses(
        (status = 200, description = "Server-sent events: `progress` (data: the job, as `GET /v1/jobs/{id}`) at once and on every change, until one with status `done` or `failed`; or `deleted` (data: `{\"id\", \"status\": \"deleted\"}`) when the job's document was deleted; or `error` (data: `ErrorBody`, code `shutting_down`) when the server stops. `: keep-alive` comments keep the connection open. The schema shows each event as `{\"event\": name, \"data\": ...}`", body = JobStreamEvent, content_type = "text/event-stream"),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn job_events(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // Subscribe before reading the current state so no update is missed in between.
    let mut rx = core.ingestor.events.subscribe();
    let Some(first) = core
        .catalog
        .job(&id)
        .await?
        .filter(|j| p.can_read(&j.collection) || p.can_write(&j.collection))
    else {
        return Err(job_not_found(&id));
    };
    let keep_alive = core.config.server.keep_alive_secs;
    let draining = core.stopping.draining.clone();
    let stream = async_stream::stream! {
        let done = terminal(&first.status);
        yield Ok::<Event, Infallible>(progress(&first));
        if done {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = draining.cancelled() => {
                    // The job resumes where it stopped, on this replica or another: say so, so
                    // the client follows it there.
                    let e = shutting_down();
                    yield Ok(Event::default().event("error").json_data(ErrorBody::of(&e)).expect("serialisable"));
                    return;
                }
                _ = tick.tick() => {
                    // A job whose document was deleted sends nothing more: notice, and end.
                    if matches!(core.catalog.job(&id).await, Ok(None)) {
                        let gone = JobDeleted { id: id.clone(), status: "deleted".into() };
                        yield Ok(Event::default().event("deleted").json_data(gone).expect("serialisable"));
                        return;
                    }
                    continue;
                }
            };
            match next {
                Ok(row) if row.id == id => {
                    let end = terminal(&row.status);
                    yield Ok(progress(&row));
                    if end {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: resend the current state.
                    if let Ok(Some(row)) = core.catalog.job(&id).await {
                        let end = terminal(&row.status);
                        yield Ok(progress(&row));
                        if end { return; }
                    }
                }
                Err(_) => return,
            }
        }
    };
    Ok(sse(stream, keep_alive))
}
