//! Questions: retrieve (dense + BM25 fused), pack the context into a token budget, answer
//! (extractive or a chat model), as a stream of typed events.

pub mod context;
pub mod extractive;
pub mod prompt;

use crate::catalog::Catalog;
use crate::models::{ChatDelta, ChatModel, ChatRequest, Embedder, ModelError, Priority, Usage};
use crate::store::{
    FusionParams, RetrieverScore, SearchHit, SearchMode, SearchQuery, StoreError, VectorStore,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::Serialize;
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
#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub retrieve: u64,
    pub first_token: Option<u64>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageOut {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
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
    pub conversation_id: Option<String>,
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
        let Some(info) = self.catalog.collection(&p.collection).await? else {
            return Err(QueryError::NoCollection(p.collection.clone()));
        };
        // Vectors of another model would be silent garbage: refuse.
        let want = self.embedder.model_id();
        if info.embed_model != want {
            return Err(QueryError::EmbedderMismatch {
                collection: p.collection.clone(),
                have: info.embed_model,
                want,
            });
        }
        let dense = if p.mode == SearchMode::Sparse {
            None
        } else {
            let mut v = self
                .embedder
                .embed(vec![p.query.clone()], Priority::Interactive)
                .await?;
            v.pop()
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

    /// Answer a question as a stream of events.
    pub fn ask(self: &Arc<Self>, p: AskParams) -> BoxStream<'static, AskEvent> {
        let this = self.clone();
        let s = async_stream::stream! {
            let started = Instant::now();
            yield AskEvent::Meta(Meta {
                request_id: p.request_id.clone(),
                conversation_id: p.conversation_id.clone(),
                model: this.model_name(),
                cached: false,
            });
            let hits = match this.search(&p.search).await {
                Ok(h) => h,
                Err(e) => {
                    yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                    return;
                }
            };
            let retrieve_ms = started.elapsed().as_millis() as u64;
            let budget = context::budget(
                this.context_window,
                this.max_answer_tokens,
                &p.search.query,
                this.chat.is_some(),
            );
            let (sources, manifest) = context::pack(hits, budget);
            yield AskEvent::Sources(sources.clone());

            let mut answer = String::new();
            let mut usage = Usage::default();
            let mut first_token: Option<u64> = None;
            let answerer;
            let mut grounding = None;
            match &this.chat {
                None => {
                    answerer = "extractive".to_string();
                    let missing = extractive::missing_words(&p.search.query, &sources);
                    let unknown = this.unknown_words(&p.search, &missing).await;
                    let (text, g) = extractive::answer_with_grounding(
                        &p.search.query,
                        &sources,
                        missing,
                        unknown,
                    );
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
                    let messages = prompt::messages(&p.search.query, &sources);
                    let req = ChatRequest {
                        messages,
                        max_tokens: this.max_answer_tokens,
                        temperature: this.temperature,
                    };
                    let mut stream = match chat.stream(req).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(request_id = %p.request_id, error = %e, "chat model failed");
                            yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                            return;
                        }
                    };
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(ChatDelta::Text(t)) => {
                                if first_token.is_none() {
                                    first_token = Some(started.elapsed().as_millis() as u64);
                                }
                                answer.push_str(&t);
                                yield AskEvent::Token(t);
                            }
                            Ok(ChatDelta::Usage(u)) => usage = u,
                            Err(e) => {
                                tracing::warn!(request_id = %p.request_id, error = %e, "chat stream failed");
                                yield AskEvent::Error { code: e.code().into(), message: e.to_string() };
                                return;
                            }
                        }
                    }
                }
            }
            let citations = citations_in(&answer, sources.len());
            let declined = extractive::is_decline(&answer);
            yield AskEvent::Done(Box::new(Done {
                citations,
                declined,
                answerer,
                usage: UsageOut {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cost_usd: 0.0,
                },
                timings_ms: Timings {
                    retrieve: retrieve_ms,
                    first_token,
                    total: started.elapsed().as_millis() as u64,
                },
                context: manifest,
                grounding,
                answer,
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
