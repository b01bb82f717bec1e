//! What an answer is made of, as clients see it: the events of `QueryEngine::ask` and the
//! parts of its final `done` event.

use super::engine::{SearchParams, Source};
use super::{context, extractive, guard};
use crate::catalog::UsageRecord;
use crate::error::ClientError;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub retrieve: u64,
    pub first_token: Option<u64>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageOut {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Each model call of the request (answer, rewrite, summarize).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallUsage>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallUsage {
    pub task: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// The request's usage: the sum of its calls.
pub(super) fn usage_out(calls: &[UsageRecord]) -> UsageOut {
    UsageOut {
        prompt_tokens: calls.iter().map(|c| c.prompt_tokens).sum(),
        completion_tokens: calls.iter().map(|c| c.completion_tokens).sum(),
        cost_usd: calls.iter().map(|c| c.cost_usd).sum(),
        calls: calls
            .iter()
            .map(|c| CallUsage {
                task: c.task.clone(),
                model: c.model.clone(),
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                cost_usd: c.cost_usd,
            })
            .collect(),
    }
}

/// How a cached answer was found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CacheInfo {
    /// `exact` or `semantic`.
    pub kind: String,
    /// The question the answer was computed for.
    pub question: String,
    pub created_at: String,
    /// Cosine distance between the questions (semantic hits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
}

/// What the conversation did for this turn.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationInfo {
    pub id: String,
    /// This turn's number (from 1).
    pub turn: i64,
    /// The question retrieved with: the follow-up rewritten when it referred back.
    pub standalone_question: String,
    pub rewritten: bool,
    /// `llm` or `rule`, when rewritten.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_method: Option<String>,
    /// Older turns were folded into the summary for this turn.
    pub summarized: bool,
    /// Tokens of history (summary and verbatim turns) in the prompt.
    pub history_tokens: usize,
    pub history_turns: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Done {
    pub answer: String,
    pub citations: Vec<usize>,
    pub declined: bool,
    pub answerer: String,
    pub usage: UsageOut,
    pub timings_ms: Timings,
    pub context: context::Manifest,
    /// The extractive answerer's evidence for answering or declining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grounding: Option<extractive::Grounding>,
    /// The grounding guard's verdict on a generated answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<guard::GuardReport>,
    /// Set when the answer was served from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheInfo>,
    /// Which model did which task for this request.
    pub routing: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationInfo>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Meta {
    pub request_id: String,
    pub conversation_id: Option<String>,
    pub model: String,
    pub cached: bool,
}

/// The events of an answer, in order: Meta, Sources, Token*, then Done or Error.
#[derive(Debug, Clone)]
pub enum AskEvent {
    Meta(Meta),
    Sources(Vec<Source>),
    Token(String),
    Done(Box<Done>),
    Error(ClientError),
}

pub struct AskParams {
    pub search: SearchParams,
    pub request_id: String,
    /// A conversation that exists in the catalog (the API creates it).
    pub conversation_id: Option<String>,
    /// Read the answer cache (false: answer afresh; the new answer is still stored).
    pub use_cache: bool,
    /// The API key asking (its token limits count this answer's model calls).
    pub key_id: Option<String>,
}
