//! Collections and their documents: list, inspect, upload (`upload.rs`), delete.

use super::auth::{audit, require_read, require_write};
use super::error::{ApiError, ErrorBody};
use super::http::AppState;
use super::upload;
use super::validate::valid_collection;
use crate::auth::Principal;
use crate::catalog::{CollectionInfo, DocumentView};
use crate::error::Code;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collections", get(list_collections))
        .route(
            "/v1/collections/{collection}",
            get(get_collection).delete(delete_collection),
        )
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
}

#[derive(Serialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// A collection with its counts.
#[derive(Serialize, ToSchema)]
pub struct CollectionDetail {
    #[serde(flatten)]
    pub info: CollectionInfo,
    /// Chunks of the live document versions (catalog).
    pub chunks: i64,
    /// Points in the collection's index.
    pub points: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentList {
    pub collection: String,
    pub documents: Vec<DocumentView>,
}

/// Every collection.
#[utoipa::path(
    get,
    path = "/v1/collections",
    tag = "collections",
    responses(
        (status = 200, description = "Every collection", body = CollectionList),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn list_collections(
    State(core): State<AppState>,
    p: Principal,
) -> Result<Json<CollectionList>, ApiError> {
    let mut collections = core.catalog.collections().await?;
    collections.retain(|c| p.can_read(&c.name));
    Ok(Json(CollectionList { collections }))
}

/// A collection with its counts: `chunks` (catalog, live versions) and `points` (index).
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name: 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit")),
    responses(
        (status = 200, description = "The collection", body = CollectionDetail),
        (status = 400, description = "`invalid_collection`", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn get_collection(
    State(core): State<AppState>,
    p: Principal,
    Path(collection): Path<String>,
) -> Result<Json<CollectionDetail>, ApiError> {
    valid_collection(&collection)?;
    require_read(&p, &collection)?;
    let Some(info) = core.catalog.collection(&collection).await? else {
        return Err(ApiError::collection_not_found(&collection));
    };
    let chunks = core.catalog.live_chunks(&collection).await?;
    let points = match core.store.count(&collection, None).await {
        Ok(n) => n as i64,
        Err(crate::store::StoreError::NoCollection(_)) => 0,
        Err(e) => return Err(ApiError::internal(e)),
    };
    Ok(Json(CollectionDetail {
        info,
        chunks,
        points,
    }))
}

/// The documents of a collection.
#[utoipa::path(
    get,
    path = "/v1/collections/{collection}/documents",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name: 1-64 letters, digits, `_`, `-`, `.`, starting with a letter or digit")),
    responses(
        (status = 200, description = "The documents, with the state of their newest version", body = DocumentList),
        (status = 400, description = "`invalid_collection`", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn list_documents(
    State(core): State<AppState>,
    p: Principal,
    Path(collection): Path<String>,
) -> Result<Json<DocumentList>, ApiError> {
    valid_collection(&collection)?;
    require_read(&p, &collection)?;
    if core.catalog.collection(&collection).await?.is_none() {
        return Err(ApiError::collection_not_found(&collection));
    }
    let documents = core.catalog.documents(&collection).await?;
    Ok(Json(DocumentList {
        collection,
        documents,
    }))
}

fn document_not_found(id: &str) -> ApiError {
    ApiError::new(Code::DocumentNotFound, format!("no document `{id}`"))
}

/// A document: its live version (if any) and its newest one.
#[utoipa::path(
    get,
    path = "/v1/documents/{id}",
    tag = "collections",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document", body = DocumentView),
        (status = 404, description = "`document_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
    )
)]
pub(super) async fn get_document(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<DocumentView>, ApiError> {
    match core.catalog.document(&id).await? {
        // Another tenant's document does not exist for this key.
        Some(d) if p.can_read(&d.collection) => Ok(Json(d)),
        _ => Err(document_not_found(&id)),
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
        (status = 404, description = "`document_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the data disk is nearly full; kb is read-only", body = ErrorBody),
    )
)]
pub(super) async fn delete_document(
    State(core): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let Some(d) = core.catalog.document(&id).await? else {
        return Err(document_not_found(&id));
    };
    if !p.can_read(&d.collection) && !p.can_write(&d.collection) {
        return Err(document_not_found(&id));
    }
    require_write(&p, &d.collection)?;
    core.disk.room_for(0).map_err(ApiError)?;
    match core.delete_document(&id).await {
        Ok(true) => {
            audit(
                &core,
                &p,
                "document.delete",
                &format!("{}/{id}", d.collection),
            )
            .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(document_not_found(&id)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Delete a collection: every document and version, its conversations, and its index. The
/// name can be used again at once (for a collection built from scratch, with any embedder).
#[utoipa::path(
    delete,
    path = "/v1/collections/{collection}",
    tag = "collections",
    params(("collection" = String, Path, description = "Collection name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_collection`", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error` (details in the server log)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the data disk is nearly full; kb is read-only", body = ErrorBody),
    )
)]
pub(super) async fn delete_collection(
    State(core): State<AppState>,
    p: Principal,
    Path(collection): Path<String>,
) -> Result<StatusCode, ApiError> {
    valid_collection(&collection)?;
    require_write(&p, &collection)?;
    core.disk.room_for(0).map_err(ApiError)?;
    match core.delete_collection(&collection).await {
        Ok(true) => {
            audit(&core, &p, "collection.delete", &collection).await;
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(ApiError::collection_not_found(&collection)),
        Err(e) => Err(ApiError::internal(e)),
    }
}
