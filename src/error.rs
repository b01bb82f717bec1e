//! kb's error vocabulary: every error a client can see has one `Code`, and the table below is
//! the only place that says which HTTP status it gets, whether trying again can help, and
//! whether a `Retry-After` goes with it. Lower layers (models, store, query) name a `Code` for
//! each of their variants with exhaustive matches, so a new variant without a code, or a new
//! code without a status, does not compile. The API layer renders it (kb's own shape, or
//! OpenAI's) from the same table.

use axum::http::StatusCode;
use std::time::Duration;

/// One line per code: `Variant = "wire_name", STATUS, retryable, retry_after;`.
macro_rules! codes {
    ($($(#[$doc:meta])* $v:ident = $name:literal, $status:ident, $retryable:literal, $retry_after:literal;)*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $v,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$v,)*];

            /// The name clients see in `error.code`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$v => $name,)*
                }
            }

            /// The HTTP status of a response that fails with this code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$v => StatusCode::$status,)*
                }
            }

            /// Whether the same request may succeed later.
            pub fn retryable(self) -> bool {
                match self {
                    $(Code::$v => $retryable,)*
                }
            }

            /// Whether a response with this code says how long to wait (`Retry-After`), when
            /// the error knows.
            pub fn sends_retry_after(self) -> bool {
                match self {
                    $(Code::$v => $retry_after,)*
                }
            }
        }
    };
}

codes! {
    // Requests kb cannot take.
    NotFound = "not_found", NOT_FOUND, false, false;
    CollectionNotFound = "collection_not_found", NOT_FOUND, false, false;
    DocumentNotFound = "document_not_found", NOT_FOUND, false, false;
    JobNotFound = "job_not_found", NOT_FOUND, false, false;
    ConversationNotFound = "conversation_not_found", NOT_FOUND, false, false;
    /// OpenAI-compatible routes: the `model` names no collection.
    ModelNotFound = "model_not_found", NOT_FOUND, false, false;
    MalformedJson = "malformed_json", BAD_REQUEST, false, false;
    // Access (`auth.mode = "keys"`; Host and Origin checks always).
    Unauthorized = "unauthorized", UNAUTHORIZED, false, false;
    Forbidden = "forbidden", FORBIDDEN, false, false;
    HostNotAllowed = "host_not_allowed", FORBIDDEN, false, false;
    CrossOrigin = "cross_origin_request", FORBIDDEN, false, false;
    KeyNotFound = "key_not_found", NOT_FOUND, false, false;
    /// The key's own request rate (`rpm`) is used up.
    KeyRateLimited = "rate_limited", TOO_MANY_REQUESTS, true, true;
    /// The key's tokens for the day (UTC) are used up.
    TokenBudgetExhausted = "token_budget_exhausted", TOO_MANY_REQUESTS, true, true;
    /// The request body came too slowly (`server.body_timeout_secs`, `body_min_bytes_per_sec`).
    RequestTimeout = "request_timeout", REQUEST_TIMEOUT, true, false;
    /// A request body over the server's limit (2 MB for JSON).
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE, false, false;
    /// A body kb could not read as a request.
    InvalidRequest = "invalid_request", BAD_REQUEST, false, false;
    /// A well-formed JSON body with a field of the wrong type, or an unknown one.
    InvalidField = "invalid_request", UNPROCESSABLE_ENTITY, false, false;
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, false, false;
    InvalidCollection = "invalid_collection", BAD_REQUEST, false, false;
    InvalidConversationId = "invalid_conversation_id", BAD_REQUEST, false, false;
    InvalidSince = "invalid_since", BAD_REQUEST, false, false;
    EmptyQuestion = "empty_question", BAD_REQUEST, false, false;
    QuestionTooLong = "question_too_long", PAYLOAD_TOO_LARGE, false, false;
    InvalidTopK = "invalid_top_k", UNPROCESSABLE_ENTITY, false, false;
    InvalidMode = "invalid_mode", UNPROCESSABLE_ENTITY, false, false;
    ConversationCollectionMismatch = "conversation_collection_mismatch", CONFLICT, false, false;
    /// The conversation has `conversations.max_turns` turns.
    ConversationFull = "conversation_full", CONFLICT, false, false;
    /// The collection was built with another embedding model.
    EmbedderMismatch = "embedder_mismatch", CONFLICT, false, false;
    // Uploads.
    ExpectedMultipart = "expected_multipart", UNSUPPORTED_MEDIA_TYPE, false, false;
    MalformedMultipart = "malformed_multipart", BAD_REQUEST, false, false;
    NoFiles = "no_files", BAD_REQUEST, false, false;
    TooManyFiles = "too_many_files", PAYLOAD_TOO_LARGE, false, false;
    TooManyParts = "too_many_parts", PAYLOAD_TOO_LARGE, false, false;
    InvalidFilename = "invalid_filename", BAD_REQUEST, false, false;
    FileTooLarge = "file_too_large", PAYLOAD_TOO_LARGE, false, false;
    EmptyFile = "empty_file", BAD_REQUEST, false, false;
    InvalidUtf8 = "invalid_utf8", UNPROCESSABLE_ENTITY, false, false;
    CorruptPdf = "corrupt_pdf", UNPROCESSABLE_ENTITY, false, false;
    UnprocessableDocument = "unprocessable_document", UNPROCESSABLE_ENTITY, false, false;
    // OpenAI-compatible request checks (each names its `param`).
    InvalidBody = "invalid_body", BAD_REQUEST, false, false;
    InvalidBodyTooLarge = "invalid_body", PAYLOAD_TOO_LARGE, false, false;
    EmptyArray = "empty_array", BAD_REQUEST, false, false;
    NoUserMessage = "no_user_message", BAD_REQUEST, false, false;
    InvalidType = "invalid_type", BAD_REQUEST, false, false;
    InvalidValue = "invalid_value", BAD_REQUEST, false, false;
    MissingContent = "missing_content", BAD_REQUEST, false, false;
    UnsupportedContent = "unsupported_content", BAD_REQUEST, false, false;
    UnsupportedValue = "unsupported_value", BAD_REQUEST, false, false;
    // Load and availability.
    Overloaded = "overloaded", TOO_MANY_REQUESTS, true, true;
    UpstreamRateLimited = "upstream_rate_limited", TOO_MANY_REQUESTS, true, true;
    UpstreamUnavailable = "upstream_unavailable", SERVICE_UNAVAILABLE, true, true;
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE, true, true;
    /// The data disk is nearly full: kb is read-only (`limits.min_free_disk_mb`).
    InsufficientStorage = "insufficient_storage", INSUFFICIENT_STORAGE, true, false;
    NotReady = "not_ready", SERVICE_UNAVAILABLE, true, false;
    // A model failed.
    UpstreamTimeout = "upstream_timeout", GATEWAY_TIMEOUT, true, false;
    UpstreamUnreachable = "upstream_unreachable", BAD_GATEWAY, true, false;
    UpstreamMalformed = "upstream_malformed", BAD_GATEWAY, true, false;
    UpstreamError = "upstream_error", BAD_GATEWAY, false, false;
    /// The prompt kb built did not fit the model: kb's fault, not the client's.
    ContextLengthExceeded = "context_length_exceeded", BAD_GATEWAY, false, false;
    /// A local model failed while running.
    ModelError = "model_error", BAD_GATEWAY, false, false;
    /// A local model's files are missing.
    ModelMissing = "model_missing", BAD_GATEWAY, false, false;
    // kb itself (details only in the log).
    InternalError = "internal_error", INTERNAL_SERVER_ERROR, false, false;
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error as a client sees it: a code, a short message kb wrote (never a panic or an
/// upstream's raw text), and how long to wait when that is known.
#[derive(Debug, Clone)]
pub struct ClientError {
    pub code: Code,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, wait: Option<Duration>) -> ClientError {
        self.retry_after = wait;
        self
    }

    /// Log `detail`; the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> ClientError {
        tracing::error!(error = %detail, "internal error");
        ClientError::new(
            Code::InternalError,
            "an internal error occurred; see the server log",
        )
    }

    /// The `Retry-After` header value in whole seconds (at least 1), when this code sends one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if !self.code.sends_retry_after() {
            return None;
        }
        self.retry_after
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_snake_case_name_and_a_status_in_range() {
        for c in Code::ALL {
            let n = c.as_str();
            assert!(
                n.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
                "{n}"
            );
            let s = c.status().as_u16();
            assert!((400..600).contains(&s), "{n}: {s}");
            // Only waits the server can name get Retry-After, and only on 429 / 503.
            if c.sends_retry_after() {
                assert!(matches!(s, 429 | 503), "{n}: {s}");
            }
        }
    }

    #[test]
    fn a_wire_name_shared_by_two_codes_differs_only_in_status() {
        for a in Code::ALL {
            for b in Code::ALL {
                if a != b && a.as_str() == b.as_str() {
                    assert_ne!(a.status(), b.status(), "{a:?} and {b:?}");
                }
            }
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_and_only_where_the_code_sends_it() {
        let e = ClientError::new(Code::Overloaded, "full")
            .with_retry_after(Some(Duration::from_millis(1200)));
        assert_eq!(e.retry_after_secs(), Some(2));
        let e = ClientError::new(Code::Overloaded, "full")
            .with_retry_after(Some(Duration::from_millis(10)));
        assert_eq!(e.retry_after_secs(), Some(1));
        let e = ClientError::new(Code::UpstreamTimeout, "slow")
            .with_retry_after(Some(Duration::from_secs(3)));
        assert_eq!(e.retry_after_secs(), None);
    }
}
