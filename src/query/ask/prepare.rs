//! Stage 1 of a question: the conversation's history (summarised when over budget), the
//! standalone question, the answer cache's key, and a cached answer if there is one.

use super::run::{CachedAnswer, Run};
use crate::catalog::{TurnRow, UsageRecord};
use crate::query::engine::{QueryEngine, QueryError};
use crate::query::events::AskParams;
use crate::query::{conversation, prompt};
use crate::store::SearchMode;
use std::collections::BTreeMap;

/// Everything decided before retrieval.
pub(super) struct Prepared {
    pub standalone: String,
    pub rewrite_method: Option<&'static str>,
    pub history: prompt::History,
    pub history_tokens: usize,
    pub summarized: bool,
    pub scope: String,
    pub key: String,
    pub vector: Option<Vec<f32>>,
    pub hit: Option<crate::cache::Hit<CachedAnswer>>,
}

impl QueryEngine {
    /// Tokens `h` takes in a prompt, framing included.
    pub(super) fn history_cost(&self, h: &prompt::History) -> usize {
        if h.is_empty() {
            return 0;
        }
        let items = h.turns.len() * 2 + usize::from(h.summary.is_some());
        self.gen_counter.count(&h.text()) + items * prompt::HISTORY_OVERHEAD_PER_TURN
    }

    /// The conversation's history within `history_tokens`: when the summary and the turns after
    /// it do not fit, all but the last `keep_turns` are folded into the summary (by the
    /// summarize model, else extractively), which is stored. Returns (history, summarized).
    pub(super) async fn history(
        &self,
        p: &AskParams,
        id: &str,
        turns: &[TurnRow],
        routing: &mut BTreeMap<String, String>,
        calls: &mut Vec<UsageRecord>,
    ) -> Result<(prompt::History, bool), QueryError> {
        let Some(conv) = self.catalog.conversation(id).await? else {
            return Ok((prompt::History::default(), false));
        };
        let budget = self.history_tokens;
        let mut summary = conv.summary.clone();
        let mut recent: Vec<&TurnRow> = turns
            .iter()
            .filter(|t| t.n > conv.summarized_upto)
            .collect();
        let make = |summary: &Option<String>, recent: &[&TurnRow]| prompt::History {
            summary: summary.clone(),
            turns: recent
                .iter()
                .map(|t| (t.question.clone(), t.answer.clone()))
                .collect(),
        };
        let mut summarized = false;
        if self.history_cost(&make(&summary, &recent)) > budget && recent.len() > self.keep_turns {
            let split = recent.len() - self.keep_turns;
            let fold: Vec<TurnRow> = recent[..split].iter().map(|t| (*t).clone()).collect();
            let max = budget / 2;
            let mut new = None;
            if let Some(chat) = &self.summarize_chat {
                let pairs: Vec<(String, String)> = fold
                    .iter()
                    .map(|t| (t.question.clone(), t.answer.clone()))
                    .collect();
                let msgs = prompt::summarize_messages(summary.as_deref(), &pairs);
                new = self
                    .side_task(p, "summarize", chat, msgs, max, routing, calls)
                    .await
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
            }
            let new = new.unwrap_or_else(|| {
                conversation::extractive_summary(summary.as_deref(), &fold, max, &*self.gen_counter)
            });
            let new = conversation::truncate_tokens(&new, max, &*self.gen_counter);
            let upto = fold.last().map(|t| t.n).unwrap_or(conv.summarized_upto);
            self.catalog.set_summary(id, &new, upto).await?;
            summary = Some(new);
            recent.drain(..split);
            summarized = true;
        }
        let mut h = make(&summary, &recent);
        // Still over (very long recent turns): cut each verbatim turn to its share.
        let over = self.history_cost(&h);
        if over > budget && !h.turns.is_empty() {
            let summary_cost = self.history_cost(&prompt::History {
                summary: summary.clone(),
                turns: vec![],
            });
            let share = budget.saturating_sub(summary_cost) / h.turns.len();
            let each = share.saturating_sub(2 * prompt::HISTORY_OVERHEAD_PER_TURN + 2) / 2;
            for (q, a) in &mut h.turns {
                *q = conversation::truncate_tokens(q, each, &*self.gen_counter);
                *a = conversation::truncate_tokens(a, each, &*self.gen_counter);
            }
        }
        Ok((h, summarized))
    }

    /// Decide what to retrieve with and look in the cache: the conversation's history (summarised
    /// when over budget), the standalone question, the cache key, and a hit if there is one.
    pub(super) async fn prepare(
        &self,
        p: &AskParams,
        routing: &mut BTreeMap<String, String>,
        calls: &mut Vec<UsageRecord>,
    ) -> Result<Prepared, QueryError> {
        let info = self.collection_info(&p.search.collection).await?;
        let question = p.search.query.trim().to_string();
        let mut standalone = question.clone();
        let mut rewrite_method = None;
        let mut history = prompt::History::default();
        let mut summarized = false;
        if let Some(id) = &p.conversation_id {
            let turns = self.catalog.turns(id).await?;
            let (h, s) = self.history(p, id, &turns, routing, calls).await?;
            history = h;
            summarized = s;
            // A follow-up that refers back is made standalone before retrieval.
            if let Some(prev) = turns.last() {
                if conversation::refers_back(&question) {
                    if let Some(chat) = &self.rewrite_chat {
                        let msgs = prompt::rewrite_messages(&question, &history);
                        if let Some(t) = self
                            .side_task(p, "rewrite", chat, msgs, 128, routing, calls)
                            .await
                        {
                            let text = t.trim().trim_matches(|c| c == '"' || c == '\'').trim();
                            if !text.is_empty() && text.len() <= 2000 {
                                standalone = text.to_string();
                                rewrite_method = Some("llm");
                            }
                        }
                    }
                    if rewrite_method.is_none() {
                        standalone =
                            conversation::rule_rewrite(&question, &prev.standalone_question);
                        rewrite_method = Some("rule");
                    }
                }
            }
        }
        let history_tokens = if self.chat.is_some() {
            self.history_cost(&history)
        } else {
            0
        };
        // Everything but the question that the answer depends on.
        let s = &p.search;
        let mut doc_ids = s.doc_ids.clone().unwrap_or_default();
        doc_ids.sort();
        let mut parts = vec![
            ("collection", s.collection.clone()),
            // A collection deleted and made again starts its index version afresh: its
            // creation time keeps the old one's answers out.
            ("created", info.created_at.clone()),
            ("index_version", info.index_version.to_string()),
            ("embedder", info.embed_model.clone()),
            ("model", self.model_name()),
            ("prompt", prompt::PROMPT_VERSION.to_string()),
            ("mode", format!("{:?}", s.mode)),
            ("top_k", s.top_k.to_string()),
            ("candidates", self.candidates.to_string()),
            (
                "fusion",
                format!(
                    "{}/{}/{}",
                    self.fusion.k, self.fusion.dense_weight, self.fusion.sparse_weight
                ),
            ),
            (
                "doc_ids",
                if s.doc_ids.is_some() {
                    doc_ids.join(",")
                } else {
                    "*".into()
                },
            ),
            (
                "window",
                format!(
                    "{}/{}/{}",
                    self.context_window, self.max_answer_tokens, self.temperature
                ),
            ),
        ];
        // A chat model sees the history: then it is part of what the answer depends on.
        if self.chat.is_some() && !history.is_empty() {
            parts.push(("history", history.text()));
        }
        let scope = crate::cache::scope_key(&parts);
        let key = crate::cache::exact_key(&scope, &standalone);
        let mut vector = None;
        let mut hit = None;
        if let Some(cache) = self.cache.as_ref().filter(|_| p.use_cache) {
            hit = cache.lookup(&key, &scope, None).await;
            self.metrics.answer_cache("exact", hit.is_some());
            if hit.is_none() && cache.semantic_enabled() && s.mode != SearchMode::Sparse {
                let v = self.embed_question(&s.collection, &standalone).await?;
                hit = cache.lookup(&key, &scope, Some(&v)).await;
                self.metrics.answer_cache("semantic", hit.is_some());
                vector = Some(v);
            }
        }
        Ok(Prepared {
            standalone,
            rewrite_method,
            history,
            history_tokens,
            summarized,
            scope,
            key,
            vector,
            hit,
        })
    }
}

impl Run<'_> {
    /// Stage 1, with this request's routing and model calls.
    pub(super) async fn prepare(&mut self) -> Result<Prepared, QueryError> {
        self.engine
            .prepare(self.p, &mut self.routing, &mut self.calls)
            .await
    }
}
