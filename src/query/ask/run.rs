//! One answer in progress (`Run`), and what the answer cache keeps (`CachedAnswer`).

use crate::catalog::UsageRecord;
use crate::error::ClientError;
use crate::query::engine::{QueryEngine, Source};
use crate::query::events::{AskEvent, AskParams, Meta};
use crate::query::{context, extractive};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// A complete answer, as stored in the answer cache and replayed on a hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub question: String,
    pub model: String,
    pub answer: String,
    pub citations: Vec<usize>,
    pub declined: bool,
    pub answerer: String,
    pub sources: Vec<Source>,
    pub context: context::Manifest,
    #[serde(default)]
    pub grounding: Option<extractive::Grounding>,
    /// When the answer was computed (RFC 3339).
    pub created_at: String,
}

/// One answer in progress: what every stage reads and the model calls it has made so far.
pub(super) struct Run<'a> {
    pub engine: &'a QueryEngine,
    pub p: &'a AskParams,
    pub started: Instant,
    pub answer_model: String,
    /// Which model did which task.
    pub routing: BTreeMap<String, String>,
    /// Every model call of this request, for `/v1/usage` and `done.usage`.
    pub calls: Vec<UsageRecord>,
}

impl<'a> Run<'a> {
    pub fn new(engine: &'a QueryEngine, p: &'a AskParams) -> Run<'a> {
        let answer_model = engine.model_name();
        let mut routing = BTreeMap::new();
        routing.insert("answer".to_string(), answer_model.clone());
        Run {
            engine,
            p,
            started: Instant::now(),
            answer_model,
            routing,
            calls: Vec::new(),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn meta(&self, cached: bool) -> AskEvent {
        AskEvent::Meta(Meta {
            request_id: self.p.request_id.clone(),
            conversation_id: self.p.conversation_id.clone(),
            model: self.answer_model.clone(),
            cached,
        })
    }

    /// The request failed: record the calls it made, and say so.
    pub async fn fail(&self, e: ClientError) -> AskEvent {
        self.engine.usage.record(&self.calls).await;
        AskEvent::Error(e)
    }
}
