//! Stage 4: the answer delivered: cached, its usage recorded, the conversation's turn stored,
//! and the `done` event built. Also the replay of a cached answer.

use super::answer::Answered;
use super::prepare::Prepared;
use super::retrieve::Retrieved;
use super::run::{CachedAnswer, Run};
use crate::cache::Hit;
use crate::models::Usage;
use crate::query::engine::{citations_in, QueryEngine, Source};
use crate::query::events::{
    usage_out, AskEvent, AskParams, CacheInfo, ConversationInfo, Done, Timings,
};
use crate::query::extractive;

impl Run<'_> {
    /// What the conversation did for this turn.
    fn conversation_info(&self, turn: Option<i64>, prep: &Prepared) -> Option<ConversationInfo> {
        self.p.conversation_id.as_ref().map(|id| ConversationInfo {
            id: id.clone(),
            turn: turn.unwrap_or(0),
            standalone_question: prep.standalone.clone(),
            rewritten: prep.rewrite_method.is_some(),
            rewrite_method: prep.rewrite_method.map(str::to_string),
            summarized: prep.summarized,
            history_tokens: prep.history_tokens,
            history_turns: prep.history.turns.len(),
        })
    }

    /// A cached answer, replayed through the same events (after `meta`), with no new usage.
    pub(super) async fn replay(&self, hit: &Hit<CachedAnswer>, prep: &Prepared) -> Vec<AskEvent> {
        let a = &hit.answer;
        let mut events = vec![AskEvent::Sources(a.sources.clone())];
        let mut first_token = None;
        for piece in extractive::pieces(&a.answer) {
            first_token.get_or_insert(self.elapsed_ms());
            events.push(AskEvent::Token(piece));
        }
        let mut rows = self.calls.clone();
        rows.push(self.engine.record(
            self.p,
            "answer",
            &self.answer_model,
            &Usage::default(),
            Some(self.elapsed_ms()),
            first_token,
            true,
            "ok",
        ));
        self.engine.usage.record(&rows).await;
        let turn = self
            .engine
            .save_turn(
                self.p,
                &prep.standalone,
                &a.answer,
                &a.citations,
                &a.sources,
            )
            .await;
        events.push(AskEvent::Done(Box::new(Done {
            answer: a.answer.clone(),
            citations: a.citations.clone(),
            declined: a.declined,
            answerer: a.answerer.clone(),
            usage: usage_out(&self.calls),
            timings_ms: Timings {
                retrieve: 0,
                first_token,
                total: self.elapsed_ms(),
            },
            context: a.context.clone(),
            grounding: a.grounding.clone(),
            guard: None,
            cache: Some(CacheInfo {
                kind: hit.kind.to_string(),
                question: a.question.clone(),
                created_at: a.created_at.clone(),
                distance: hit.distance,
            }),
            routing: self.routing.clone(),
            conversation: self.conversation_info(turn, prep),
        })));
        events
    }

    /// Stage 4.
    pub(super) async fn finish(&mut self, prep: Prepared, r: Retrieved, a: Answered) -> Done {
        let e = self.engine;
        self.calls.push(a.record);
        let citations = citations_in(&a.text, r.sources.len());
        let declined = extractive::is_decline(&a.text);
        // Complete answers only (errors ended the stream earlier); declines are answers too.
        if let Some(cache) = &e.cache {
            let entry = CachedAnswer {
                question: prep.standalone.clone(),
                model: self.answer_model.clone(),
                answer: a.text.clone(),
                citations: citations.clone(),
                declined,
                answerer: a.answerer.to_string(),
                sources: r.sources.clone(),
                context: r.manifest.clone(),
                grounding: a.grounding.clone(),
                created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            };
            cache
                .put(&prep.key, &prep.scope, prep.vector.clone(), &entry)
                .await;
        }
        e.usage.record(&self.calls).await;
        if e.log_content {
            tracing::info!(request_id = %self.p.request_id, question = %self.p.search.query,
                standalone = %prep.standalone, answer = %a.text, declined, "answer content");
        }
        let turn = e
            .save_turn(self.p, &prep.standalone, &a.text, &citations, &r.sources)
            .await;
        Done {
            citations,
            declined,
            answerer: a.answerer.to_string(),
            usage: usage_out(&self.calls),
            timings_ms: Timings {
                retrieve: r.retrieve_ms,
                first_token: a.first_token,
                total: self.elapsed_ms(),
            },
            context: r.manifest,
            grounding: a.grounding,
            guard: a.guard,
            answer: a.text,
            cache: None,
            routing: self.routing.clone(),
            conversation: self.conversation_info(turn, &prep),
        }
    }
}

impl QueryEngine {
    /// Store a finished turn; returns its number.
    pub(super) async fn save_turn(
        &self,
        p: &AskParams,
        standalone: &str,
        answer: &str,
        citations: &[usize],
        sources: &[Source],
    ) -> Option<i64> {
        let id = p.conversation_id.as_ref()?;
        let compact: Vec<serde_json::Value> = sources
            .iter()
            .map(|s| {
                serde_json::json!({"n": s.n, "doc_id": s.doc_id, "doc_name": s.doc_name,
                    "chunk_id": s.chunk_id, "page": s.page, "heading": s.heading})
            })
            .collect();
        match self
            .catalog
            .add_turn(
                id,
                p.search.query.trim(),
                standalone,
                answer,
                &serde_json::json!(citations),
                &serde_json::Value::Array(compact),
            )
            .await
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(request_id = %p.request_id, error = %e, "turn not stored");
                None
            }
        }
    }
}
