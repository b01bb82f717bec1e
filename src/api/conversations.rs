//! Conversations kept by `/v1/ask`: list, read, delete.

use super::error::{ApiError, ErrorBody};
use super::http::AppState;
use crate::auth::Principal;
use crate::catalog::{ConversationRow, TurnRow};
use crate::error::Code;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", get(list_conversations))
        .route(
            "/v1/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
}

#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    /// The 200 most recently updated.
    pub conversations: Vec<ConversationRow>,
}

#[derive(Serialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub conversation: ConversationRow,
    pub turns: Vec<TurnRow>,
}

fn conversation_not_found(id: &str) -> ApiError {
    ApiError::new(
        Code::ConversationNotFound,
        format!("no conversation `{id}`"),
    )
}

#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    responses(
        (status = 200, description = "The most recently updated conversations", body = ConversationList),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn list_conversations(
    State(core): State<AppState>,
    p: Principal,
) -> Result<Json<ConversationList>, ApiError> {
    // A key sees its own (an admin, and kb without keys, every one).
    let owner = if p.is_admin() { None } else { p.key_id() };
    let conversations = core.catalog.conversations(200, owner).await?;
    Ok(Json(ConversationList { conversations }))
}

#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The conversation with its turns", body = ConversationDetail),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn get_conversation(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<ConversationDetail>, ApiError> {
    let Some(conversation) = core
        .catalog
        .conversation(&id)
        .await?
        .filter(|c| p.owns(c.owner.as_deref()))
    else {
        return Err(conversation_not_found(&id));
    };
    let turns = core.catalog.turns(&id).await?;
    Ok(Json(ConversationDetail {
        conversation,
        turns,
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn delete_conversation(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mine = core
        .catalog
        .conversation(&id)
        .await?
        .is_some_and(|c| p.owns(c.owner.as_deref()));
    if mine && core.catalog.delete_conversation(&id).await? {
        super::auth::audit(&core, &p, "conversation.delete", &id).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(conversation_not_found(&id))
    }
}
