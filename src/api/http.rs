//! What every resource module shares: the state handlers get, the request's id, content
//! negotiation.

use crate::error::{ClientError, Code};
use crate::query::AskEvent;
use crate::Core;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub type AppState = Arc<Core>;

/// A server-sent-event response with `: keep-alive` comments every `keep_alive_secs`, so that
/// idle connections (a model thinking, a job waiting) stay open through proxies.
pub fn sse<S>(events: S, keep_alive_secs: u64) -> Response
where
    S: futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(keep_alive_secs))
                .text("keep-alive"),
        )
        .into_response()
}

/// `events` until `stop` is cancelled; then one `shutting_down` error ends them (each stream
/// renders it in its own shape), so that a client sees why its answer stopped.
pub fn until_stopped<S>(
    events: S,
    stop: tokio_util::sync::CancellationToken,
) -> impl futures::Stream<Item = AskEvent> + Send + 'static
where
    S: futures::Stream<Item = AskEvent> + Send + 'static,
{
    use futures::StreamExt;
    let events = events.boxed();
    futures::stream::unfold(Some((events, stop)), |state| async move {
        let (mut events, stop) = state?;
        tokio::select! {
            biased;
            ev = events.next() => ev.map(|ev| (ev, Some((events, stop)))),
            _ = stop.cancelled() => Some((AskEvent::Error(shutting_down()), None)),
        }
    })
    .boxed()
}

/// What a stream cut by a shutdown says.
pub fn shutting_down() -> ClientError {
    ClientError::new(
        Code::ShuttingDown,
        "kb is shutting down; ask again (another replica, or this one once it is back)",
    )
    .with_retry_after(Some(Duration::from_secs(1)))
}

/// The request's id: the client's `x-request-id` when it is 1-64 printable characters, else
/// a new UUID.
#[derive(Clone)]
pub struct RequestId(pub String);

/// Whether `Accept` names `media` (media types are case-insensitive).
pub fn accepts(headers: &axum::http::HeaderMap, media: &str) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            part.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(media))
        })
}
