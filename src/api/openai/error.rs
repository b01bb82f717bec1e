//! Errors of the OpenAI-compatible routes, in OpenAI's shape, from the same codes and statuses
//! as kb's own errors.

use super::{ALIAS, DEFAULT_COLLECTION, PREFIX};
use crate::api::error::{with_retry_after, ApiError};
use crate::error::{ClientError, Code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An error in OpenAI's shape, from the same codes and statuses as kb's own errors.
#[derive(Debug)]
pub struct OpenAiError {
    pub error: ClientError,
    pub param: Option<String>,
    /// A question kb cannot take is a bad request here, whatever `/v1/ask` answers for it.
    pub as_bad_request: bool,
}

/// OpenAI's error body, for the OpenAI-compatible routes.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error` (4xx), `rate_limit_error` (429) or `server_error` (5xx).
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    /// The request field at fault, when there is one (`model`, `messages[0].role`, ...).
    pub param: Option<String>,
    #[schema(value_type = String, example = "model_not_found")]
    pub code: Code,
}

impl OpenAiError {
    pub fn invalid(param: Option<&str>, code: Code, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            error: ClientError::new(code, message),
            param: param.map(str::to_string),
            as_bad_request: false,
        }
    }

    pub fn model_not_found(model: &str) -> OpenAiError {
        OpenAiError::invalid(
            Some("model"),
            Code::ModelNotFound,
            format!(
                "The model `{model}` does not exist. kb serves each collection as \
                 `{PREFIX}<collection>`, and `{ALIAS}` for the collection `{DEFAULT_COLLECTION}`; \
                 GET /v1/models lists them."
            ),
        )
    }

    pub fn status(&self) -> StatusCode {
        let s = self.error.code.status();
        if self.as_bad_request && s.is_client_error() {
            StatusCode::BAD_REQUEST
        } else {
            s
        }
    }

    fn kind(status: StatusCode) -> &'static str {
        if status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_error"
        } else if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    pub fn body(&self) -> OpenAiErrorBody {
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.error.message.clone(),
                kind: Self::kind(self.status()),
                param: self.param.clone(),
                code: self.error.code,
            },
        }
    }
}

impl From<ClientError> for OpenAiError {
    fn from(error: ClientError) -> Self {
        OpenAiError {
            error,
            param: None,
            as_bad_request: false,
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError::from(e.0)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let r = (self.status(), Json(self.body())).into_response();
        with_retry_after(r, &self.error)
    }
}
