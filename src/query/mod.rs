//! Questions: retrieve (dense + BM25 fused), pack the context into a token budget, answer
//! (extractive or a chat model), as a stream of typed events.

pub mod context;
pub mod conversation;
pub mod extractive;
pub mod guard;
pub mod prompt;

use crate::cache::{AnswerCache, CachedAnswer};
use crate::catalog::{Catalog, CollectionInfo, TurnRow, UsageRecord};
use crate::models::{ChatDelta, ChatModel, ChatRequest, Embedder, ModelError, Priority, Usage};
use crate::store::{
    FusionParams, RetrieverScore, SearchHit, SearchMode, SearchQuery, StoreError, VectorStore,
};
use crate::usage::UsageLog;
use futures::stream::BoxStream;
use futures::StreamExt;
use kb_ingest::TokenCounter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("collection `{0}` does not exist")]
    NoCollection(String),
    #[error("collection `{collection}` was built with `{have}`; this server embeds with `{want}`")]
    EmbedderMismatch {
        collection: String,
        have: String,
        want: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::NoCollection(_) => "collection_not_found",
            QueryError::EmbedderMismatch { .. } => "embedder_mismatch",
            QueryError::Model(m) => m.code(),
            QueryError::Store(_) => "store_error",
            QueryError::Catalog(_) => "internal_error",
        }
    }
}

/// Version keys that queries must not see, per collection: versions still being indexed and
/// retired ones whose points are being removed. Swapping a version live is one update here,
/// made together with the catalog transaction.
#[derive(Default)]
pub struct Visibility {
    hidden: RwLock<HashMap<String, HashSet<String>>>,
}

impl Visibility {
    pub fn hide(&self, collection: &str, key: &str) {
        self.hidden
            .write()
            .unwrap()
            .entry(collection.to_string())
            .or_default()
            .insert(key.to_string());
    }

    pub fn show(&self, collection: &str, key: &str) {
        if let Some(s) = self.hidden.write().unwrap().get_mut(collection) {
            s.remove(key);
        }
    }

    /// Make `show` visible and `hide` invisible in one step.
    pub fn swap(&self, collection: &str, show: &str, hide: Option<&str>) {
        let mut map = self.hidden.write().unwrap();
        let s = map.entry(collection.to_string()).or_default();
        s.remove(show);
        if let Some(h) = hide {
            s.insert(h.to_string());
        }
    }

    pub fn hidden(&self, collection: &str) -> Vec<String> {
        self.hidden
            .read()
            .unwrap()
            .get(collection)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct SearchParams {
    pub collection: String,
    pub query: String,
    pub top_k: usize,
    pub mode: SearchMode,
    pub doc_ids: Option<Vec<String>>,
}

/// A retrieved chunk, decorated for clients.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    pub n: usize,
    pub chunk_id: String,
    pub doc_id: String,
    pub doc_name: String,
    pub page: Option<u32>,
    pub heading: Option<String>,
    pub score: f32,
    /// The dense retriever's rank and cosine for this chunk, if it found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<RetrieverScore>,
    /// BM25's rank and score for this chunk, if it found it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<RetrieverScore>,
    pub text: String,
    #[serde(skip)]
    pub token_count: u32,
    #[serde(skip)]
    pub ord: u32,
    #[serde(skip)]
    pub version_key: String,
    #[serde(skip)]
    pub byte_range: (usize, usize),
}

pub struct QueryEngine {
    pub catalog: Catalog,
    pub store: Arc<dyn VectorStore>,
    pub embedder: Arc<dyn Embedder>,
    pub chat: Option<Arc<dyn ChatModel>>,
    pub visibility: Arc<Visibility>,
    pub candidates: usize,
    pub fusion: FusionParams,
    pub context_window: usize,
    pub max_answer_tokens: usize,
    pub temperature: f32,
    /// The grounding guard for generated answers (`llm.guard`) and its threshold.
    pub guard: String,
    pub guard_min_support: f64,
    /// `log.content`: log questions and answers (off by default: logs carry no user text).
    pub log_content: bool,
    /// The answer cache (exact, and semantic when switched on); None when switched off.
    pub cache: Option<Arc<AnswerCache>>,
    pub usage: Arc<UsageLog>,
    /// Models for the `rewrite` and `summarize` tasks (`llm.routes`, else the answer model).
    pub rewrite_chat: Option<Arc<dyn ChatModel>>,
    pub summarize_chat: Option<Arc<dyn ChatModel>>,
    /// Tokens a conversation may take in a prompt, and the turns always kept verbatim.
    pub history_tokens: usize,
    pub keep_turns: usize,
    /// Counts prompt tokens (the chat model's tokenizer when known).
    pub gen_counter: Arc<dyn TokenCounter + Send + Sync>,
    /// Answer cache hits and misses are counted here (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

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
fn usage_out(calls: &[UsageRecord]) -> UsageOut {
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
    Error { code: String, message: String },
}

pub struct AskParams {
    pub search: SearchParams,
    pub request_id: String,
    /// A conversation that exists in the catalog (the API creates it).
    pub conversation_id: Option<String>,
    /// Read the answer cache (false: answer afresh; the new answer is still stored).
    pub use_cache: bool,
}

/// The outcome of one chat call, collected.
struct Completion {
    text: String,
    usage: Usage,
    latency_ms: u64,
    first_token_ms: Option<u64>,
}

/// Everything decided before retrieval.
struct Prepared {
    info: CollectionInfo,
    standalone: String,
    rewrite_method: Option<&'static str>,
    history: prompt::History,
    history_tokens: usize,
    summarized: bool,
    scope: String,
    key: String,
    vector: Option<Vec<f32>>,
    hit: Option<crate::cache::Hit>,
}

/// Words of `[n]` citations in `answer` that point at one of `n_sources`.
pub fn citations_in(answer: &str, n_sources: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let b = answer.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let mut j = i + 1;
            let mut nums = Vec::new();
            let mut cur = String::new();
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b',' || b[j] == b' ') {
                if b[j].is_ascii_digit() {
                    cur.push(b[j] as char);
                } else if !cur.is_empty() {
                    nums.push(std::mem::take(&mut cur));
                }
                j += 1;
            }
            if j < b.len() && b[j] == b']' {
                if !cur.is_empty() {
                    nums.push(cur);
                }
                for n in nums {
                    if let Ok(n) = n.parse::<usize>() {
                        if (1..=n_sources).contains(&n) && !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

impl QueryEngine {
    pub fn model_name(&self) -> String {
        self.chat
            .as_ref()
            .map(|c| c.model_id())
            .unwrap_or_else(|| "extractive".into())
    }

    /// Ranked chunks for a query, as sources numbered from 1.
    pub async fn search(&self, p: &SearchParams) -> Result<Vec<Source>, QueryError> {
        self.collection_info(&p.collection).await?;
        self.search_with(p, None).await
    }

    /// The collection, checked against this server's embedder.
    async fn collection_info(&self, collection: &str) -> Result<CollectionInfo, QueryError> {
        let Some(info) = self.catalog.collection(collection).await? else {
            return Err(QueryError::NoCollection(collection.to_string()));
        };
        // Vectors of another model would be silent garbage: refuse.
        let want = self.embedder.model_id();
        if info.embed_model != want {
            return Err(QueryError::EmbedderMismatch {
                collection: collection.to_string(),
                have: info.embed_model,
                want,
            });
        }
        Ok(info)
    }

    /// The question's vector (interactive priority).
    async fn embed_question(&self, collection: &str, text: &str) -> Result<Vec<f32>, QueryError> {
        let t = Instant::now();
        let model = self.embedder.model_id();
        let r = self
            .embedder
            .embed(vec![text.to_string()], Priority::Interactive)
            .await;
        let tokens = self.embedder.token_counter().count(text) as u64;
        self.usage
            .embed_call(collection, &model, tokens, t.elapsed(), &r);
        r?.pop()
            .ok_or_else(|| QueryError::Model(ModelError::Malformed("no embedding".into())))
    }

    /// Search with the question's vector when already computed.
    async fn search_with(
        &self,
        p: &SearchParams,
        vector: Option<Vec<f32>>,
    ) -> Result<Vec<Source>, QueryError> {
        let dense = if p.mode == SearchMode::Sparse {
            None
        } else {
            match vector {
                Some(v) => Some(v),
                None => Some(self.embed_question(&p.collection, &p.query).await?),
            }
        };
        let q = SearchQuery {
            collection: p.collection.clone(),
            dense,
            text: p.query.clone(),
            mode: p.mode,
            limit: p.top_k,
            candidates: self.candidates,
            fusion: self.fusion,
            doc_ids: p.doc_ids.clone(),
            hidden: self.visibility.hidden(&p.collection),
        };
        let hits = match self.store.search(&q).await {
            Err(StoreError::NoCollection(_)) => vec![],
            r => r?,
        };
        self.decorate(hits).await
    }

    /// The extractive answer to `search.query` from `sources`, with its grounding (including
    /// the question's names the collection never mentions).
    async fn extractive_answer(
        &self,
        search: &SearchParams,
        sources: &[Source],
    ) -> (String, extractive::Grounding) {
        let missing = extractive::missing_words(&search.query, sources);
        let unknown = self.unknown_words(search, &missing).await;
        extractive::answer_with_grounding(&search.query, sources, missing, unknown)
    }

    /// Of `words`, the names that occur nowhere in the visible part of the collection (one BM25
    /// lookup each; a word BM25 ignores, such as a stopword, is not unknown). A common word
    /// missing from a small collection says nothing, so only names count: written as one in
    /// the question, or not a whole word of the embedder's vocabulary. Errors count as known:
    /// this only ever adds a decline.
    async fn unknown_words(&self, p: &SearchParams, words: &[String]) -> Vec<String> {
        let hidden = self.visibility.hidden(&p.collection);
        let mut out = Vec::new();
        let names = words.iter().filter(|w| {
            extractive::written_as_name(&p.query, w) || self.embedder.knows_word(w) == Some(false)
        });
        for w in names.take(8) {
            let q = SearchQuery {
                collection: p.collection.clone(),
                dense: None,
                text: w.clone(),
                mode: SearchMode::Sparse,
                limit: 1,
                candidates: 1,
                fusion: self.fusion,
                doc_ids: p.doc_ids.clone(),
                hidden: hidden.clone(),
            };
            if let Ok(hits) = self.store.search(&q).await {
                if hits.is_empty() && self.store.sparse_terms(w) > 0 {
                    out.push(w.clone());
                }
            }
        }
        out
    }

    async fn decorate(&self, hits: Vec<SearchHit>) -> Result<Vec<Source>, QueryError> {
        let ids: Vec<String> = hits.iter().map(|h| h.payload.doc_id.clone()).collect();
        let names = self.catalog.document_names(&ids).await?;
        Ok(hits
            .into_iter()
            // A document deleted a moment ago may still have points: never cite it.
            .filter(|h| names.contains_key(&h.payload.doc_id))
            .enumerate()
            .map(|(i, h)| Source {
                n: i + 1,
                doc_name: names.get(&h.payload.doc_id).cloned().unwrap_or_default(),
                chunk_id: h.chunk_id,
                doc_id: h.payload.doc_id,
                page: h.payload.page,
                heading: h.payload.heading,
                score: h.score,
                dense: h.dense,
                sparse: h.sparse,
                text: h.payload.text,
                // Budgets count in the generating model's tokens when known.
                token_count: h.payload.gen_token_count.unwrap_or(h.payload.token_count),
                ord: h.payload.ord,
                version_key: h.payload.version_key,
                byte_range: (h.payload.byte_start, h.payload.byte_end),
            })
            .collect())
    }

    /// Collect a chat call's text and usage.
    async fn complete(
        &self,
        chat: &Arc<dyn ChatModel>,
        messages: Vec<crate::models::Message>,
        max_tokens: usize,
    ) -> Result<Completion, ModelError> {
        let t = Instant::now();
        let mut stream = chat
            .stream(ChatRequest {
                messages,
                max_tokens,
                temperature: 0.0,
            })
            .await?;
        let mut out = Completion {
            text: String::new(),
            usage: Usage::default(),
            latency_ms: 0,
            first_token_ms: None,
        };
        while let Some(item) = stream.next().await {
            match item? {
                ChatDelta::Text(x) => {
                    out.first_token_ms
                        .get_or_insert(t.elapsed().as_millis() as u64);
                    out.text.push_str(&x);
                }
                ChatDelta::Usage(u) => out.usage = u,
            }
        }
        out.latency_ms = t.elapsed().as_millis() as u64;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    /// A side task (`rewrite`, `summarize`) on its routed model: records the routing and the
    /// call's usage, and returns the model's text, or `None` when the call failed (logged; the
    /// caller falls back to its rule).
    #[allow(clippy::too_many_arguments)]
    async fn side_task(
        &self,
        p: &AskParams,
        task: &str,
        chat: &Arc<dyn ChatModel>,
        messages: Vec<crate::models::Message>,
        max_tokens: usize,
        routing: &mut BTreeMap<String, String>,
        calls: &mut Vec<UsageRecord>,
    ) -> Option<String> {
        let model = chat.model_id();
        routing.insert(task.into(), model.clone());
        match self.complete(chat, messages, max_tokens).await {
            Ok(c) => {
                calls.push(self.record(
                    p,
                    task,
                    &model,
                    &c.usage,
                    Some(c.latency_ms),
                    c.first_token_ms,
                    false,
                    "ok",
                ));
                Some(c.text)
            }
            Err(e) => {
                tracing::warn!(request_id = %p.request_id, task, error = %e,
                    "side task failed; falling back to its rule");
                calls.push(self.record(
                    p,
                    task,
                    &model,
                    &Usage::default(),
                    None,
                    None,
                    false,
                    e.code(),
                ));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        p: &AskParams,
        task: &str,
        model: &str,
        usage: &Usage,
        latency_ms: Option<u64>,
        first_token_ms: Option<u64>,
        cache_hit: bool,
        outcome: &str,
    ) -> UsageRecord {
        UsageRecord {
            ts: crate::catalog::now_ms(),
            request_id: Some(p.request_id.clone()),
            collection: Some(p.search.collection.clone()),
            task: task.into(),
            model: model.into(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms,
            first_token_ms,
            // The model client does not report its retries (yet).
            retries: None,
            cache_hit,
            outcome: outcome.into(),
            cost_usd: self
                .usage
                .cost(model, usage.prompt_tokens, usage.completion_tokens),
        }
    }

    /// Tokens `h` takes in a prompt, framing included.
    fn history_cost(&self, h: &prompt::History) -> usize {
        if h.is_empty() {
            return 0;
        }
        let items = h.turns.len() * 2 + usize::from(h.summary.is_some());
        self.gen_counter.count(&h.text()) + items * prompt::HISTORY_OVERHEAD_PER_TURN
    }

    /// The conversation's history within `history_tokens`: when the summary and the turns after
    /// it do not fit, all but the last `keep_turns` are folded into the summary (by the
    /// summarize model, else extractively), which is stored. Returns (history, summarized).
    async fn history(
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
    async fn prepare(
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
            info,
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

    /// Store a finished turn; returns its number.
    async fn save_turn(
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

    /// Answer a question as a stream of events.
    pub fn ask(self: &Arc<Self>, p: AskParams) -> BoxStream<'static, AskEvent> {
        let this = self.clone();
        let s = async_stream::stream! {
            let started = Instant::now();
            let answer_model = this.model_name();
            let mut routing = BTreeMap::new();
            routing.insert("answer".to_string(), answer_model.clone());
            let mut calls: Vec<UsageRecord> = Vec::new();
            let meta = |cached: bool| AskEvent::Meta(Meta {
                request_id: p.request_id.clone(),
                conversation_id: p.conversation_id.clone(),
                model: answer_model.clone(),
                cached,
            });
            let prep = match this.prepare(&p, &mut routing, &mut calls).await {
                Ok(x) => x,
                Err(e) => {
                    yield meta(false);
                    this.usage.record(&calls).await;
                    yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                    return;
                }
            };
            let conv_info = |turn: Option<i64>, prep: &Prepared| {
                p.conversation_id.as_ref().map(|id| ConversationInfo {
                    id: id.clone(),
                    turn: turn.unwrap_or(0),
                    standalone_question: prep.standalone.clone(),
                    rewritten: prep.rewrite_method.is_some(),
                    rewrite_method: prep.rewrite_method.map(str::to_string),
                    summarized: prep.summarized,
                    history_tokens: prep.history_tokens,
                    history_turns: prep.history.turns.len(),
                })
            };

            // A cached answer replays through the same events, with no new usage.
            if let Some(hit) = &prep.hit {
                let a = &hit.answer;
                yield meta(true);
                yield AskEvent::Sources(a.sources.clone());
                let mut first_token = None;
                for piece in extractive::pieces(&a.answer) {
                    first_token.get_or_insert(started.elapsed().as_millis() as u64);
                    yield AskEvent::Token(piece);
                }
                let mut rows = calls.clone();
                rows.push(this.record(&p, "answer", &answer_model, &Usage::default(),
                    Some(started.elapsed().as_millis() as u64), first_token, true, "ok"));
                this.usage.record(&rows).await;
                let turn = this.save_turn(&p, &prep.standalone, &a.answer, &a.citations, &a.sources).await;
                yield AskEvent::Done(Box::new(Done {
                    answer: a.answer.clone(),
                    citations: a.citations.clone(),
                    declined: a.declined,
                    answerer: a.answerer.clone(),
                    usage: usage_out(&calls),
                    timings_ms: Timings {
                        retrieve: 0,
                        first_token,
                        total: started.elapsed().as_millis() as u64,
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
                    routing,
                    conversation: conv_info(turn, &prep),
                }));
                return;
            }

            yield meta(false);
            let mut search = p.search.clone();
            search.query = prep.standalone.clone();
            let hits = match this.search_with(&search, prep.vector.clone()).await {
                Ok(h) => h,
                Err(e) => {
                    this.usage.record(&calls).await;
                    yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                    return;
                }
            };
            let retrieve_ms = started.elapsed().as_millis() as u64;
            let budget = context::budget(
                this.context_window,
                this.max_answer_tokens,
                &search.query,
                this.chat.is_some(),
            )
            .saturating_sub(prep.history_tokens);
            let (sources, manifest) = context::pack(hits, budget);
            yield AskEvent::Sources(sources.clone());

            let mut answer = String::new();
            let mut usage = Usage::default();
            let mut first_token: Option<u64> = None;
            let answerer;
            let mut grounding = None;
            let mut guard_report = None;
            match &this.chat {
                None => {
                    answerer = "extractive".to_string();
                    let (text, g) = this.extractive_answer(&search, &sources).await;
                    grounding = Some(g);
                    for piece in extractive::pieces(&text) {
                        if first_token.is_none() {
                            first_token = Some(started.elapsed().as_millis() as u64);
                        }
                        answer.push_str(&piece);
                        yield AskEvent::Token(piece);
                    }
                }
                Some(chat) => {
                    answerer = "llm".to_string();
                    let messages = if prep.history.is_empty() {
                        prompt::messages(&search.query, &sources)
                    } else {
                        prompt::messages_with_history(&search.query, &sources, &prep.history)
                    };
                    let req = ChatRequest {
                        messages,
                        max_tokens: this.max_answer_tokens,
                        temperature: this.temperature,
                    };
                    let call_start = Instant::now();
                    let mut call_first = None;
                    let mut stream = match chat.stream(req).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(request_id = %p.request_id, error = %e, "chat model failed");
                            calls.push(this.record(&p, "answer", &answer_model, &Usage::default(),
                                Some(call_start.elapsed().as_millis() as u64), None, false, e.code()));
                            this.usage.record(&calls).await;
                            yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                            return;
                        }
                    };
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(ChatDelta::Text(t)) => {
                                if first_token.is_none() {
                                    first_token = Some(started.elapsed().as_millis() as u64);
                                    call_first = Some(call_start.elapsed().as_millis() as u64);
                                }
                                answer.push_str(&t);
                                yield AskEvent::Token(t);
                            }
                            Ok(ChatDelta::Usage(u)) => usage = u,
                            Err(e) => {
                                tracing::warn!(request_id = %p.request_id, error = %e, "chat stream failed");
                                calls.push(this.record(&p, "answer", &answer_model, &usage,
                                    Some(call_start.elapsed().as_millis() as u64), call_first, false, e.code()));
                                this.usage.record(&calls).await;
                                yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                                return;
                            }
                        }
                    }
                    calls.push(this.record(&p, "answer", &answer_model, &usage,
                        Some(call_start.elapsed().as_millis() as u64), call_first, false, "ok"));
                    if this.guard != "off" {
                        let (checked, unsupported) =
                            guard::check(&answer, &sources, this.guard_min_support);
                        let mut report = guard::GuardReport {
                            checked,
                            unsupported,
                            action: "passed".into(),
                            original_answer: None,
                        };
                        if !report.unsupported.is_empty() {
                            tracing::info!(request_id = %p.request_id,
                                unsupported = report.unsupported.len(), mode = %this.guard,
                                "generated answer not supported by its sources");
                            match this.guard.as_str() {
                                "flag" => report.action = "flagged".into(),
                                "decline" => {
                                    report.original_answer = Some(std::mem::replace(
                                        &mut answer,
                                        extractive::DECLINE.to_string(),
                                    ));
                                    report.action = "declined".into();
                                }
                                _ => {
                                    let (text, g) = this.extractive_answer(&search, &sources).await;
                                    grounding = Some(g);
                                    report.original_answer =
                                        Some(std::mem::replace(&mut answer, text));
                                    report.action = "fallback_extractive".into();
                                }
                            }
                        }
                        guard_report = Some(report);
                    }
                }
            }
            if this.chat.is_none() {
                calls.push(this.record(&p, "answer", &answer_model, &Usage::default(),
                    Some(started.elapsed().as_millis() as u64), first_token, false, "ok"));
            }
            let citations = citations_in(&answer, sources.len());
            let declined = extractive::is_decline(&answer);
            // Complete answers only (errors returned above); declines are answers too.
            if let Some(cache) = &this.cache {
                let entry = CachedAnswer {
                    question: prep.standalone.clone(),
                    model: answer_model.clone(),
                    answer: answer.clone(),
                    citations: citations.clone(),
                    declined,
                    answerer: answerer.clone(),
                    sources: sources.clone(),
                    context: manifest.clone(),
                    grounding: grounding.clone(),
                    created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                };
                cache.put(&prep.key, &prep.scope, prep.vector.clone(), &entry).await;
            }
            this.usage.record(&calls).await;
            if this.log_content {
                tracing::info!(request_id = %p.request_id, question = %p.search.query,
                    standalone = %prep.standalone, answer = %answer, declined, "answer content");
            }
            let turn = this.save_turn(&p, &prep.standalone, &answer, &citations, &sources).await;
            let _ = &prep.info;
            yield AskEvent::Done(Box::new(Done {
                citations,
                declined,
                answerer,
                usage: usage_out(&calls),
                timings_ms: Timings {
                    retrieve: retrieve_ms,
                    first_token,
                    total: started.elapsed().as_millis() as u64,
                },
                context: manifest,
                grounding,
                guard: guard_report,
                answer,
                cache: None,
                routing,
                conversation: conv_info(turn, &prep),
            }));
        };
        Box::pin(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_parsed_and_bounded() {
        assert_eq!(
            citations_in("A [1] and B [3][2], C [1, 2] D [9] [x]", 3),
            vec![1, 3, 2]
        );
        assert_eq!(citations_in("no cites", 3), Vec::<usize>::new());
    }

    #[test]
    fn visibility_swap_is_one_step() {
        let v = Visibility::default();
        v.hide("c", "d@2");
        assert_eq!(v.hidden("c"), vec!["d@2".to_string()]);
        v.swap("c", "d@2", Some("d@1"));
        assert_eq!(v.hidden("c"), vec!["d@1".to_string()]);
        v.show("c", "d@1");
        assert!(v.hidden("c").is_empty());
    }
}
