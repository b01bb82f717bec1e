//! What the OpenAI-compatible routes send: `chat.completion`, `chat.completion.chunk` and the
//! model objects, with kb's extra `kb` object.

use crate::query::{Done, Source};
use axum::response::sse::Event;
use serde::Serialize;
use utoipa::ToSchema;

/// A collection as a model: `kb/<collection>`, or `kb` for the collection `default`.
#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    #[schema(example = "kb/docs")]
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    /// The collection's creation time (Unix seconds).
    pub created: i64,
    #[schema(example = "kb")]
    pub owned_by: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

pub fn model_entry(id: &str, created_at: &str) -> ModelObject {
    let created = chrono::DateTime::parse_from_rfc3339(created_at)
        .map(|t| t.timestamp())
        .unwrap_or(0);
    ModelObject {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "kb",
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<request id>`.
    pub id: String,
    #[schema(example = "chat.completion")]
    pub object: String,
    pub created: i64,
    pub model: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: (),
    pub choices: Vec<ChatChoice>,
    pub usage: ChatUsage,
    pub kb: KbAnswer,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: (),
    #[schema(example = "stop")]
    pub finish_reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    #[schema(example = "assistant")]
    pub role: String,
    pub content: String,
    /// Always null (a declined answer is a normal answer; see `kb.declined`).
    #[schema(value_type = Option<String>)]
    pub refusal: (),
}

#[derive(Serialize, ToSchema)]
pub struct ChatUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// What OpenAI's schema has no place for; standard clients ignore it.
#[derive(Serialize, ToSchema)]
pub struct KbAnswer {
    pub collection: String,
    pub sources: Vec<Source>,
    pub citations: Vec<usize>,
    pub declined: bool,
    /// `extractive`, or the chat model's id.
    pub answerer: String,
}

/// A `chat.completion.chunk`, the `data` of each event when `stream` is true. The stream is
/// `data: <chunk>` lines: first the role (with `kb.collection` and `kb.sources`), then the
/// content pieces, then an empty delta with `finish_reason: "stop"` (with `kb.citations`,
/// `kb.declined`, `kb.answerer`), then the usage chunk when `stream_options.include_usage`,
/// then `data: [DONE]`. A failure after the stream started is sent as `data:` with an
/// OpenAI error body, then `data: [DONE]`.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    #[schema(example = "chat.completion.chunk")]
    pub object: String,
    pub created: i64,
    pub model: String,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub system_fingerprint: (),
    /// Empty on the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: null on every chunk but the last (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ChatUsage>)]
    pub usage: Option<Option<ChatUsage>>,
    /// On the first and the finishing chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kb: Option<KbChunk>,
}

#[derive(Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: (),
    /// `stop` on the finishing chunk, null before.
    pub finish_reason: Option<String>,
}

#[derive(Serialize, ToSchema, Default)]
pub struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `collection` and `sources` on the first chunk; `citations`, `declined` and `answerer` on
/// the finishing one.
#[derive(Serialize, ToSchema, Default)]
pub struct KbChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Source>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answerer: Option<String>,
}

/// The `kb` object of the first chunk: what the answer is drawn from.
pub fn kb_sources(collection: &str, sources: Vec<Source>) -> KbChunk {
    KbChunk {
        collection: Some(collection.to_string()),
        sources: Some(sources),
        ..KbChunk::default()
    }
}

/// The `kb` object once the answer is complete.
pub fn kb_outcome(done: &Done) -> KbChunk {
    KbChunk {
        citations: Some(done.citations.clone()),
        declined: Some(done.declined),
        answerer: Some(done.answerer.clone()),
        ..KbChunk::default()
    }
}

pub fn usage(done: &Done) -> ChatUsage {
    let (p, c) = (done.usage.prompt_tokens, done.usage.completion_tokens);
    ChatUsage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p + c,
    }
}

/// What every chunk of one completion shares.
pub struct Chunks {
    pub id: String,
    pub created: i64,
    pub model: String,
    pub include_usage: bool,
}

impl Chunks {
    pub fn chunk(&self, delta: ChunkDelta, finish_reason: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: (),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: (),
                finish_reason: finish_reason.map(str::to_string),
            }],
            // As OpenAI does: `usage` is null on every chunk but the last.
            usage: self.include_usage.then_some(None),
            kb: None,
        }
    }

    pub fn role(&self) -> ChatCompletionChunk {
        self.chunk(
            ChunkDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            None,
        )
    }

    pub fn usage_chunk(&self, done: &Done) -> ChatCompletionChunk {
        ChatCompletionChunk {
            choices: vec![],
            usage: Some(Some(usage(done))),
            ..self.chunk(ChunkDelta::default(), None)
        }
    }
}

pub fn data(v: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(v).expect("serialisable chunk"))
}
