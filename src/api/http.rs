//! What every resource module shares: the state handlers get, the request's id, content
//! negotiation.

use crate::Core;
use std::sync::Arc;

pub type AppState = Arc<Core>;

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
