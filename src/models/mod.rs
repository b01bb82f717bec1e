//! Embedding and chat models behind traits. Nothing here knows about HTTP serving, documents
//! or prompts.

pub mod governor;
#[cfg(feature = "local-llm")]
pub mod local_chat;
pub mod local_embed;
pub mod openai;
pub use governor::redis_buckets;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, thiserror::Error, Clone)]
pub enum ModelError {
    #[error("model files not found: {0}")]
    Missing(String),
    #[error("model failed: {0}")]
    Inference(String),
    #[error("upstream {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the prompt does not fit the model's context window: {0}")]
    ContextLength(String),
    /// `cap_secs`: the upstream asked for a wait longer than kb's cap, so the call failed at once.
    #[error("upstream rate limit (429){}", rate_limit_detail(*retry_after_secs, *cap_secs))]
    RateLimited {
        retry_after_secs: Option<f64>,
        cap_secs: Option<f64>,
    },
    #[error("too many model calls waiting for {upstream}; retry after {retry_after_secs:.0} s")]
    Overloaded {
        upstream: String,
        retry_after_secs: f64,
    },
    #[error("{upstream} is failing, calls are refused (circuit breaker open); retry after {retry_after_secs:.0} s")]
    CircuitOpen {
        upstream: String,
        retry_after_secs: f64,
    },
    #[error("upstream {0} timeout")]
    Timeout(TimeoutKind),
    #[error("could not reach upstream: {0}")]
    Connect(String),
    #[error("malformed upstream response: {0}")]
    Malformed(String),
    #[error("the embedder is shutting down")]
    Closed,
}

/// Which deadline of a remote model call passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Establishing the connection.
    Connect,
    /// Waiting for the response (for a stream, its first data).
    FirstToken,
    /// A stream went quiet between two pieces of data.
    Idle,
    /// The whole call, retries included.
    Total,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::FirstToken => "first token",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Total => "total",
        })
    }
}

fn rate_limit_detail(retry_after: Option<f64>, cap: Option<f64>) -> String {
    match (retry_after, cap) {
        (Some(s), Some(c)) => format!(
            ": the upstream asks to retry after {s:.0} s, beyond the {c:.0} s cap; retry after {s:.0} s"
        ),
        (Some(s), None) => format!(", retry after {s:.0} s"),
        _ => String::new(),
    }
}

impl ModelError {
    /// Retryable before the first token reaches the client.
    pub fn retryable(&self) -> bool {
        match self {
            ModelError::RateLimited { cap_secs, .. } => cap_secs.is_none(),
            ModelError::Connect(_) => true,
            ModelError::Timeout(kind) => {
                matches!(kind, TimeoutKind::Connect | TimeoutKind::FirstToken)
            }
            ModelError::Upstream { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Whether this failure counts against the upstream's circuit breaker (it looks unwell:
    /// 5xx, unreachable, timeouts, garbage), as opposed to a refusal of this request.
    pub fn breaker_failure(&self) -> bool {
        match self {
            ModelError::Upstream { status, .. } => *status >= 500,
            ModelError::Connect(_) | ModelError::Timeout(_) | ModelError::Malformed(_) => true,
            _ => false,
        }
    }

    /// The client-facing code (its status and Retry-After come from `crate::error::Code`).
    pub fn error_code(&self) -> crate::error::Code {
        use crate::error::Code;
        match self {
            ModelError::Missing(_) => Code::ModelMissing,
            ModelError::Inference(_) => Code::ModelError,
            ModelError::Upstream { .. } => Code::UpstreamError,
            ModelError::ContextLength(_) => Code::ContextLengthExceeded,
            ModelError::RateLimited { .. } => Code::UpstreamRateLimited,
            ModelError::Overloaded { .. } => Code::Overloaded,
            ModelError::CircuitOpen { .. } => Code::UpstreamUnavailable,
            ModelError::Timeout(_) => Code::UpstreamTimeout,
            ModelError::Connect(_) => Code::UpstreamUnreachable,
            ModelError::Malformed(_) => Code::UpstreamMalformed,
            ModelError::Closed => Code::ShuttingDown,
        }
    }

    /// The code as a string, for usage rows and metrics.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// This error as a client sees it: its code, message and wait.
    /// An upstream's own error text never reaches clients (a gateway may echo the request's
    /// headers in it): they get the status; the text is in the server log, redacted.
    pub fn client_error(&self) -> crate::error::ClientError {
        let message = match self {
            ModelError::Upstream { status, .. } if *status >= 500 => {
                format!("the model API failed ({status})")
            }
            ModelError::Upstream { status, .. } => {
                format!("the model API refused the request ({status})")
            }
            other => other.to_string(),
        };
        crate::error::ClientError::new(self.error_code(), message)
            .with_retry_after(self.retry_after_secs().map(std::time::Duration::from_secs))
    }

    /// The kind of failure, for `kb_model_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Upstream { status, .. } if *status >= 500 => "server_error",
            ModelError::Upstream { .. } => "client_error",
            ModelError::RateLimited { .. } => "rate_limited",
            ModelError::Timeout(TimeoutKind::Connect) => "timeout_connect",
            ModelError::Timeout(TimeoutKind::FirstToken) => "timeout_first_token",
            ModelError::Timeout(TimeoutKind::Idle) => "timeout_idle",
            ModelError::Timeout(TimeoutKind::Total) => "timeout_total",
            ModelError::Overloaded { .. } => "queue_full",
            ModelError::CircuitOpen { .. } => "breaker_open",
            other => other.code(),
        }
    }

    /// Seconds a client should wait before trying again, when there is a reason to say.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ModelError::RateLimited {
                retry_after_secs: Some(s),
                ..
            }
            | ModelError::Overloaded {
                retry_after_secs: s,
                ..
            }
            | ModelError::CircuitOpen {
                retry_after_secs: s,
                ..
            } => Some(s.max(1.0).ceil() as u64),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// `text` with credentials blanked: bearer tokens, API keys (`sk-...`), and the values of
/// authorization and api-key headers or fields. For upstream error text kept in logs.
pub fn redact_secrets(text: &str) -> String {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+|\bsk-[A-Za-z0-9_-]{6,}|((?:authorization|x-api-key|api[-_]key)["']?\s*[:=]\s*["']?)[^"',}\s]+(?:\s+[^"',}\s]+)?"#,
        )
        .expect("valid pattern")
    });
    RE.replace_all(text, |c: &regex::Captures| {
        if let Some(p) = c.get(1) {
            format!("{}[redacted]", p.as_str())
        } else if let Some(p) = c.get(2) {
            format!("{}[redacted]", p.as_str())
        } else {
            "[redacted]".to_string()
        }
    })
    .into_owned()
}

/// Interactive requests (a user waiting on a question) go ahead of bulk ingestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Interactive,
    Bulk,
}

#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// A stable name recorded with each collection (a mismatch is an error).
    fn model_id(&self) -> String;
    fn dim(&self) -> usize;
    /// Largest input in tokens, including any special tokens.
    fn max_input_tokens(&self) -> usize;
    /// Counter for sizing chunks with this embedder's own tokenizer.
    fn token_counter(&self) -> Arc<dyn kb_ingest::TokenCounter + Send>;
    /// Whether `word` (lower case) is a whole word of this model's vocabulary: a common word,
    /// as opposed to a name or identifier. `None` when the model cannot say (remote models).
    fn knows_word(&self, _word: &str) -> Option<bool> {
        None
    }
    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Vec<Vec<f32>>>;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: f32,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChatDelta {
    Text(String),
    Usage(Usage),
}

#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    fn model_id(&self) -> String;
    /// Tokens (prompt plus answer) the model can take, when kb runs it and knows.
    fn context_window(&self) -> Option<usize> {
        None
    }
    /// Stream the answer. Errors before the first item are returned here; later ones arrive in
    /// the stream and end it.
    async fn stream(&self, req: ChatRequest) -> Result<BoxStream<'static, Result<ChatDelta>>>;
}

/// Counts tokens with an OpenAI BPE (tiktoken): generation budgets use the generating model's
/// own tokenizer. Models tiktoken does not know (Ollama, vLLM...) are counted with cl100k_base,
/// an approximation.
pub struct BpeCounter(&'static tiktoken_rs::CoreBPE);

impl BpeCounter {
    pub fn for_model(model: &str) -> BpeCounter {
        BpeCounter(
            tiktoken_rs::bpe_for_model(model)
                .unwrap_or_else(|_| tiktoken_rs::cl100k_base_singleton()),
        )
    }
}

impl kb_ingest::TokenCounter for BpeCounter {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        if let Ok(pieces) = self.0.split_by_token_ordinary(text) {
            for p in pieces {
                out.push((pos, pos + p.len()));
                pos += p.len();
            }
        }
        out
    }

    fn count(&self, text: &str) -> usize {
        self.0.encode_ordinary(text).len()
    }
}

/// The counter for generation budgets: the chat model's tokenizer when kb knows it.
pub fn generation_counter(
    provider: &str,
    model: Option<&str>,
) -> Option<Arc<dyn kb_ingest::TokenCounter + Send + Sync>> {
    match (provider, model) {
        ("openai", Some(m)) => Some(Arc::new(BpeCounter::for_model(m))),
        _ => None,
    }
}

/// Counts tokens roughly (about four bytes per token) where no tokenizer is known.
pub struct ApproxCounter;

impl kb_ingest::TokenCounter for ApproxCounter {
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)> {
        // Words, then long words split every 4 bytes: close to BPE counts on English prose.
        let mut out = Vec::new();
        let mut start = None;
        let push = |s: usize, e: usize, out: &mut Vec<(usize, usize)>| {
            let mut a = s;
            while a < e {
                let mut b = (a + 4).min(e);
                while !text.is_char_boundary(b) {
                    b += 1;
                }
                out.push((a, b));
                a = b;
            }
        };
        for (i, c) in text.char_indices() {
            let word = c.is_alphanumeric();
            match (word, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    push(s, i, &mut out);
                    start = None;
                }
                _ => {}
            }
            if !word && !c.is_whitespace() {
                out.push((i, i + c.len_utf8()));
            }
        }
        if let Some(s) = start {
            push(s, text.len(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kb_ingest::TokenCounter;

    #[test]
    fn retry_after_travels_typed_to_the_client_error() {
        use crate::error::Code;
        for (e, code) in [
            (
                ModelError::Overloaded {
                    upstream: "chat:m".into(),
                    retry_after_secs: 3.0,
                },
                Code::Overloaded,
            ),
            (
                ModelError::CircuitOpen {
                    upstream: "chat:m".into(),
                    retry_after_secs: 3.0,
                },
                Code::UpstreamUnavailable,
            ),
            (
                ModelError::RateLimited {
                    retry_after_secs: Some(3.0),
                    cap_secs: None,
                },
                Code::UpstreamRateLimited,
            ),
        ] {
            assert_eq!(e.retry_after_secs(), Some(3));
            let c = e.client_error();
            assert_eq!(c.code, code);
            assert_eq!(c.retry_after_secs(), Some(3), "{e}");
        }
        let over = ModelError::RateLimited {
            retry_after_secs: Some(3600.0),
            cap_secs: Some(60.0),
        };
        assert!(!over.retryable());
        assert_eq!(over.client_error().retry_after_secs(), Some(3600));
        let busy = ModelError::Upstream {
            status: 503,
            message: "busy".into(),
        };
        assert_eq!(busy.client_error().retry_after_secs(), None);
        assert_eq!(busy.client_error().code.status().as_u16(), 502);
    }

    #[test]
    fn timeouts_keep_their_words_and_codes() {
        for (k, message, kind, retryable) in [
            (
                TimeoutKind::Connect,
                "upstream connect timeout",
                "timeout_connect",
                true,
            ),
            (
                TimeoutKind::FirstToken,
                "upstream first token timeout",
                "timeout_first_token",
                true,
            ),
            (
                TimeoutKind::Idle,
                "upstream idle timeout",
                "timeout_idle",
                false,
            ),
            (
                TimeoutKind::Total,
                "upstream total timeout",
                "timeout_total",
                false,
            ),
        ] {
            let e = ModelError::Timeout(k);
            assert_eq!(e.to_string(), message);
            assert_eq!(e.code(), "upstream_timeout");
            assert_eq!(e.kind(), kind);
            assert_eq!(e.retryable(), retryable, "{e}");
            assert!(e.breaker_failure());
        }
    }

    #[test]
    fn upstream_text_is_redacted_and_kept_from_clients() {
        let echoed = r#"bad request; headers: {"authorization": "Bearer sk-live-0123456789abcdef", "x-api-key": "k3y-XYZ"} Authorization: Bearer abc.def-ghi"#;
        let r = redact_secrets(echoed);
        for secret in ["sk-live-0123456789abcdef", "k3y-XYZ", "abc.def-ghi"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("bad request"), "{r}");
        assert_eq!(redact_secrets("no secrets here"), "no secrets here");
        let e = ModelError::Upstream {
            status: 400,
            message: echoed.into(),
        };
        let c = e.client_error();
        assert!(
            !c.message.contains("sk-live") && !c.message.contains("headers"),
            "{}",
            c.message
        );
        assert!(c.message.contains("400"), "{}", c.message);
    }

    #[test]
    fn bpe_counts_with_the_models_tokenizer() {
        let c = BpeCounter::for_model("gpt-4o");
        assert_eq!(c.count("hello world"), 2);
        let text = "Retrieval-augmented generation, with citations [1].";
        let offs = c.token_offsets(text);
        assert_eq!(offs.len(), c.count(text));
        assert_eq!(offs.last().unwrap().1, text.len());
        // Unknown (self-hosted) model names fall back to cl100k_base rather than failing.
        assert!(BpeCounter::for_model("qwen2.5:7b").count("hello world") >= 2);
        assert!(generation_counter("extractive", None).is_none());
        assert!(generation_counter("openai", Some("gpt-4o-mini")).is_some());
    }
}
