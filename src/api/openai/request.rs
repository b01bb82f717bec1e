//! Reading a chat completion request: the fields kb uses, every message checked so that each
//! error names its `param`, the question (the last `user` message).

use super::error::OpenAiError;
use crate::error::{ClientError, Code};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The fields kb reads. Every other OpenAI parameter (temperature, max_tokens, tools, ...) is
/// accepted and ignored: the server's configuration decides how it answers. (The request is
/// read as `ChatRequest`, whose messages are checked one by one so that each error names its
/// `param`; this type describes it for the OpenAPI document.)
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChatCompletionRequest {
    /// `kb/<collection>`, or `kb` for the collection `default`.
    #[schema(example = "kb/docs")]
    model: String,
    /// The last `user` message is the question; the others must be well-formed.
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    stream_options: Option<StreamOptionsSchema>,
    /// Must be 1.
    n: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    role: String,
    /// Required for `user` messages.
    content: Option<MessageContent>,
}

/// A string, or text parts (other part types are refused).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(example = "text")]
    kind: String,
    text: String,
}

#[derive(ToSchema)]
#[schema(as = StreamOptions)]
#[allow(dead_code)]
pub struct StreamOptionsSchema {
    /// Send a last chunk with `usage` (and `usage: null` on the others).
    include_usage: Option<bool>,
}

/// The fields kb reads; every other OpenAI parameter (temperature, max_tokens, top_p, user,
/// tools, ...) is accepted and ignored: the server's configuration decides how it answers.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The text of a message's content: a string, or an array of `{"type": "text", "text"}` parts.
/// `Ok(None)` for absent or null content.
fn content_text(content: Option<&Value>, param: &str) -> Result<Option<String>, OpenAiError> {
    match content {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}].text")),
                            Code::InvalidType,
                            format!("`{param}[{j}].text` must be a string"),
                        ))
                    }
                    (Some(other), _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}].type")),
                            Code::UnsupportedContent,
                            format!("content of type `{other}` is not supported (text only)"),
                        ))
                    }
                    (None, _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{param}[{j}]")),
                            Code::InvalidType,
                            format!("`{param}[{j}]` must be an object with a string `type`"),
                        ))
                    }
                }
            }
            Ok(Some(texts.join("\n")))
        }
        Some(_) => Err(OpenAiError::invalid(
            Some(param),
            Code::InvalidType,
            format!("`{param}` must be a string or an array of content parts"),
        )),
    }
}

/// Check every message; the question is the last `user` message. Earlier messages are not used
/// yet (kb has no conversations), but they must still be well-formed.
pub fn question_of(messages: &[Value]) -> Result<String, OpenAiError> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid(
            Some("messages"),
            Code::EmptyArray,
            "`messages` must contain at least one message",
        ));
    }
    let mut question = None;
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(OpenAiError::invalid(
                Some(&format!("messages[{i}]")),
                Code::InvalidType,
                format!("`messages[{i}]` must be an object"),
            ));
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            _ => {
                return Err(OpenAiError::invalid(
                    Some(&format!("messages[{i}].role")),
                    Code::InvalidValue,
                    format!("`messages[{i}].role` must be one of {}", ROLES.join(", ")),
                ))
            }
        };
        let text = content_text(obj.get("content"), &format!("messages[{i}].content"))?;
        if role == "user" {
            match text {
                Some(t) => question = Some(t),
                None => {
                    return Err(OpenAiError::invalid(
                        Some(&format!("messages[{i}].content")),
                        Code::MissingContent,
                        format!("`messages[{i}].content` is required for a user message"),
                    ))
                }
            }
        }
    }
    question.ok_or_else(|| {
        OpenAiError::invalid(
            Some("messages"),
            Code::NoUserMessage,
            "`messages` has no `user` message; the last one is the question",
        )
    })
}

pub fn parse_request(body: Result<Bytes, BytesRejection>) -> Result<ChatRequest, OpenAiError> {
    let bytes = body.map_err(|rej| {
        if crate::serve::is_slow_client(&rej) {
            return OpenAiError::from(crate::api::slow_body().0);
        }
        let code = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Code::InvalidBodyTooLarge
        } else {
            Code::InvalidBody
        };
        OpenAiError::from(ClientError::new(code, rej.body_text()))
    })?;
    serde_json::from_slice::<ChatRequest>(&bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            Code::MalformedJson
        } else {
            Code::InvalidRequest
        };
        OpenAiError::invalid(None, code, format!("invalid request body: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(r: Result<String, OpenAiError>) -> (Option<String>, String) {
        let e = r.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        (e.param, e.error.code.as_str().to_string())
    }

    #[test]
    fn the_last_user_message_is_the_question() {
        let q = question_of(&[
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
            json!({"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]}),
            json!({"role": "assistant", "content": "prefill"}),
        ]);
        assert_eq!(q.unwrap(), "second\npart");
    }

    #[test]
    fn malformed_messages_are_rejected_with_their_param() {
        assert_eq!(
            err(question_of(&[])),
            (Some("messages".into()), "empty_array".into())
        );
        assert_eq!(
            err(question_of(&[json!({"role": "system", "content": "x"})])).1,
            "no_user_message"
        );
        assert_eq!(
            err(question_of(&[json!("hello")])).0.as_deref(),
            Some("messages[0]")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "wizard", "content": "x"})]))
                .0
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "user", "content": 42})]))
                .0
                .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(question_of(&[json!({"role": "user"})])).1,
            "missing_content"
        );
        assert_eq!(
            err(question_of(&[
                json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
            ]))
            .1,
            "unsupported_content"
        );
    }

    #[test]
    fn error_types_follow_the_status() {
        let body = |e: &OpenAiError| serde_json::to_value(e.body()).unwrap();
        let e = OpenAiError::from(ClientError::new(Code::UpstreamTimeout, "slow"));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body(&e)["error"]["type"], "server_error");
        assert_eq!(body(&e)["error"]["code"], "upstream_timeout");
        let e = OpenAiError::from(ClientError::new(Code::UpstreamRateLimited, "later"));
        assert_eq!(body(&e)["error"]["type"], "rate_limit_error");
        let e = OpenAiError::model_not_found("gpt-4");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(&e)["error"]["type"], "invalid_request_error");
        assert_eq!(body(&e)["error"]["param"], "model");
        // A question kb cannot take: the code's own status on /v1/ask, 400 here.
        let e = OpenAiError {
            as_bad_request: true,
            ..OpenAiError::from(ClientError::new(Code::QuestionTooLong, "long"))
        };
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(&e)["error"]["code"], "question_too_long");
    }
}
