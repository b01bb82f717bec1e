//! kb's error responses: `{"error": {"code", "message"}}` with the status of the code's line
//! in `crate::error::Code`, and `Retry-After` when the error names a wait. Internal details are
//! logged, never returned.

use crate::error::{ClientError, Code};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An error response of kb's own routes.
#[derive(Debug)]
pub struct ApiError(pub ClientError);

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError(ClientError::new(code, message))
    }

    /// Log the detail, return a generic message.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError(ClientError::internal(e))
    }

    pub fn code(&self) -> Code {
        self.0.code
    }

    pub fn collection_not_found(name: &str) -> ApiError {
        ApiError::new(
            Code::CollectionNotFound,
            format!("collection `{name}` does not exist"),
        )
    }
}

/// kb's error body (every route but the OpenAI-compatible ones).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`collection_not_found`, `file_too_large`, ...).
    #[schema(value_type = String, example = "collection_not_found")]
    pub code: Code,
    /// A human-readable explanation (internal details are only logged).
    #[schema(example = "collection `docs` does not exist")]
    pub message: String,
}

impl ErrorBody {
    pub fn of(e: &ClientError) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: e.code,
                message: e.message.clone(),
            },
        }
    }
}

/// Adds `Retry-After` to `r` when `e` names a wait and its code sends one.
pub fn with_retry_after(mut r: Response, e: &ClientError) -> Response {
    if let Some(s) = e.retry_after_secs() {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let r = (self.0.code.status(), Json(ErrorBody::of(&self.0))).into_response();
        with_retry_after(r, &self.0)
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        ApiError(e)
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        ApiError::internal(e)
    }
}

impl From<crate::query::QueryError> for ApiError {
    fn from(e: crate::query::QueryError) -> Self {
        ApiError(e.client_error())
    }
}

/// The client sent its body too slowly (cut by `crate::serve`).
pub fn slow_body() -> ApiError {
    ApiError::new(
        Code::RequestTimeout,
        "the request body arrived too slowly; send it again",
    )
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
            Err(rej) if crate::serve::is_slow_client(&rej) => Err(slow_body()),
            Err(rej) => Err(match rej {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    Code::UnsupportedMediaType,
                    "expected Content-Type: application/json",
                ),
                JsonRejection::JsonSyntaxError(e) => ApiError::new(
                    Code::MalformedJson,
                    format!("malformed JSON: {}", e.body_text()),
                ),
                JsonRejection::JsonDataError(e) => ApiError::new(Code::InvalidField, e.body_text()),
                // Over the body limit: say so with 413 (the bytes were never all read).
                other if other.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(Code::BodyTooLarge, other.body_text())
                }
                other => ApiError::new(Code::InvalidRequest, other.body_text()),
            }),
        }
    }
}
