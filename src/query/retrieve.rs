//! Retrieval: the collection checked, the question embedded (interactive priority), the store
//! searched with the visibility filter, hits decorated with their documents' names.

use super::engine::{QueryEngine, QueryError, SearchParams, Source};
use super::extractive;
use super::split;
use crate::catalog::CollectionInfo;
use crate::models::{ModelError, Priority};
use crate::store::{fuse_lists, SearchHit, SearchMode, SearchQuery, StoreError};
use std::time::Instant;

impl QueryEngine {
    /// Ranked chunks for a query, as sources numbered from 1.
    pub async fn search(&self, p: &SearchParams) -> Result<Vec<Source>, QueryError> {
        self.collection_info(&p.collection).await?;
        self.search_with(p, None).await
    }

    /// The collection, checked against this server's embedder.
    pub(super) async fn collection_info(
        &self,
        collection: &str,
    ) -> Result<CollectionInfo, QueryError> {
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
    pub(super) async fn embed_question(
        &self,
        collection: &str,
        text: &str,
    ) -> Result<Vec<f32>, QueryError> {
        let mut v = self.embed_texts(collection, &[text.to_string()]).await?;
        Ok(v.remove(0))
    }

    /// Search with the question's vector when already computed. A multi-part question
    /// (`split::parts`) is also searched part by part, and the rankings are fused.
    pub(super) async fn search_with(
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
        let parts = if self.split_questions {
            split::parts(&p.query)
        } else {
            vec![]
        };
        let whole = self.store_search(p, &p.query, dense).await?;
        if parts.is_empty() {
            return self.decorate(whole).await;
        }
        let vectors = if p.mode == SearchMode::Sparse {
            vec![None; parts.len()]
        } else {
            self.embed_texts(&p.collection, &parts)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        };
        let mut lists = vec![whole];
        for (part, v) in parts.iter().zip(vectors) {
            lists.push(self.store_search(p, part, v).await?);
        }
        self.decorate(fuse_lists(lists, self.fusion.k, p.top_k))
            .await
    }

    /// One search of the store for `text` (and its vector).
    async fn store_search(
        &self,
        p: &SearchParams,
        text: &str,
        dense: Option<Vec<f32>>,
    ) -> Result<Vec<SearchHit>, QueryError> {
        let q = SearchQuery {
            collection: p.collection.clone(),
            dense,
            text: text.to_string(),
            mode: p.mode,
            limit: p.top_k,
            candidates: self.candidates,
            fusion: self.fusion,
            doc_ids: p.doc_ids.clone(),
            hidden: self.visibility.hidden(&p.collection),
        };
        match self.store.search(&q).await {
            Err(StoreError::NoCollection(_)) => Ok(vec![]),
            r => Ok(r?),
        }
    }

    /// Vectors for several texts in one call (interactive priority).
    async fn embed_texts(
        &self,
        collection: &str,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, QueryError> {
        let t = Instant::now();
        let model = self.embedder.model_id();
        let r = self
            .embedder
            .embed(texts.to_vec(), Priority::Interactive)
            .await;
        let counter = self.embedder.token_counter();
        let tokens: u64 = texts.iter().map(|s| counter.count(s) as u64).sum();
        self.usage
            .embed_call(collection, &model, tokens, t.elapsed(), &r);
        let v = r?;
        if v.len() != texts.len() {
            return Err(QueryError::Model(ModelError::Malformed(
                "wrong number of embeddings".into(),
            )));
        }
        Ok(v)
    }

    /// The extractive answer to `search.query` from `sources`, with its grounding (including
    /// the question's names the collection never mentions).
    pub(super) async fn extractive_answer(
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
    ///
    /// In a large collection (`retrieval.unknown_word_min_chunks`) every word counts: a word
    /// that thousands of passages never use is as telling as a name ("uv").
    pub(super) async fn unknown_words(&self, p: &SearchParams, words: &[String]) -> Vec<String> {
        if words.is_empty() {
            return vec![];
        }
        let hidden = self.visibility.hidden(&p.collection);
        let mut out = Vec::new();
        let large = p.doc_ids.is_none()
            && self
                .store
                .count(&p.collection, None)
                .await
                .is_ok_and(|n| n >= self.unknown_word_min_chunks);
        let names = words.iter().filter(|w| {
            large
                || extractive::written_as_name(&p.query, w)
                || self.embedder.knows_word(w) == Some(false)
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

    pub(super) async fn decorate(&self, hits: Vec<SearchHit>) -> Result<Vec<Source>, QueryError> {
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
}
