//! The question engine and the types every stage shares: what to search, what was found.

use super::visibility::Visibility;
use crate::cache::AnswerCache;
use crate::catalog::Catalog;
use crate::config::GuardMode;
use crate::error::{ClientError, Code};
use crate::models::{ChatModel, Embedder, ModelError};
use crate::store::{FusionParams, RetrieverScore, SearchMode, StoreError, VectorStore};
use crate::usage::UsageLog;
use kb_ingest::TokenCounter;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// This error as a client sees it (store and catalog details are only logged).
    pub fn client_error(&self) -> ClientError {
        match self {
            QueryError::NoCollection(_) => {
                ClientError::new(Code::CollectionNotFound, self.to_string())
            }
            QueryError::EmbedderMismatch { .. } => {
                ClientError::new(Code::EmbedderMismatch, self.to_string())
            }
            QueryError::Model(m) => m.client_error(),
            QueryError::Store(e) => ClientError::internal(e),
            QueryError::Catalog(e) => ClientError::internal(e),
        }
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
    /// Search a multi-part question's parts too (`retrieval.split_questions`).
    pub split_questions: bool,
    /// `retrieval.unknown_word_min_chunks`: from this many chunks every missing question word
    /// is looked up in the collection, not only names.
    pub unknown_word_min_chunks: usize,
    pub fusion: FusionParams,
    pub context_window: usize,
    pub max_answer_tokens: usize,
    pub temperature: f32,
    /// The grounding guard for generated answers (`llm.guard`) and its threshold.
    pub guard: GuardMode,
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
}
