//! The vector store seam. `edge` (Qdrant Edge, in-process) is the embedded default; a Qdrant
//! server/cluster backend implements the same trait.

pub mod edge;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection `{0}` does not exist")]
    NoCollection(String),
    #[error("collection `{collection}` holds {have}-d vectors of `{have_model}`, but the embedder gives {want}-d vectors of `{want_model}`")]
    DimensionMismatch {
        collection: String,
        have: usize,
        have_model: String,
        want: usize,
        want_model: String,
    },
    #[error("the index at {0} is in use by another process")]
    Locked(String),
    #[error("vector store error: {0}")]
    Backend(String),
    /// Qdrant Edge gave up (it panicked) on a write, a flush or a build, typically on a
    /// resource error (too many open files, disk full). Nothing is poisoned: a later call, or a
    /// re-run of the job, may succeed. `0` is kb's short wording; the detail is in the log.
    #[error("{0}")]
    Transient(String),
}

impl StoreError {
    /// Worth trying again later (the job is re-run), rather than failing the document.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Dense + BM25, fused with reciprocal rank fusion.
    Hybrid,
    Dense,
    /// BM25 only.
    #[serde(alias = "bm25")]
    Sparse,
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Sparse => "sparse",
        })
    }
}

impl SearchMode {
    pub fn parse(s: &str) -> anyhow::Result<SearchMode> {
        Ok(match s {
            "hybrid" => SearchMode::Hybrid,
            "dense" => SearchMode::Dense,
            "sparse" | "bm25" => SearchMode::Sparse,
            other => anyhow::bail!("retrieval mode must be hybrid, dense or sparse, not `{other}`"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct CollectionSpec {
    pub name: String,
    pub dim: usize,
    pub model: String,
}

/// What every point carries (DESIGN 3.3).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkPayload {
    pub collection: String,
    pub doc_id: String,
    pub doc_version: i64,
    /// `doc_id@version`: the unit of visibility and deletion.
    pub version_key: String,
    pub ord: u32,
    pub text: String,
    /// Tokens in the embedder's tokenizer.
    pub token_count: u32,
    /// Tokens in the generating model's tokenizer, when one was configured at ingestion.
    #[serde(default)]
    pub gen_token_count: Option<u32>,
    pub page: Option<u32>,
    pub heading: Option<String>,
    pub byte_start: usize,
    pub byte_end: usize,
    pub content_hash: String,
}

impl ChunkPayload {
    /// Deterministic point id: replaying a job overwrites, never duplicates.
    pub fn point_id(&self) -> uuid::Uuid {
        chunk_id(&self.doc_id, self.doc_version, self.ord)
    }
}

pub fn chunk_id(doc_id: &str, version: i64, ord: u32) -> uuid::Uuid {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x6b62_2d63_6875_6e6b_2d69_6473_0000_0001);
    uuid::Uuid::new_v5(&NS, format!("{doc_id}:{version}:{ord}").as_bytes())
}

#[derive(Debug, Clone)]
pub struct Point {
    pub dense: Vec<f32>,
    pub payload: ChunkPayload,
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub collection: String,
    pub dense: Option<Vec<f32>>,
    pub text: String,
    pub mode: SearchMode,
    pub limit: usize,
    /// Candidates per retriever before fusion.
    pub candidates: usize,
    /// Restrict to these documents.
    pub doc_ids: Option<Vec<String>>,
    /// Version keys that must not be seen (not yet live, or retired).
    pub hidden: Vec<String>,
    pub fusion: FusionParams,
}

/// Weighted reciprocal-rank fusion: a hit at rank r (from 1) of a retriever adds
/// `weight / (k + r)` to its score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FusionParams {
    pub k: f32,
    pub dense_weight: f32,
    pub sparse_weight: f32,
}

impl Default for FusionParams {
    fn default() -> Self {
        FusionParams {
            k: 60.0,
            dense_weight: 1.0,
            sparse_weight: 1.0,
        }
    }
}

/// One retriever's view of a hit: its rank (from 1) and raw score (cosine for dense, BM25 for
/// sparse).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetrieverScore {
    pub rank: usize,
    pub score: f32,
}

/// Fuse a dense and a sparse ranking into the best `limit` hits. Ties go to the better dense
/// rank, then to the chunk id, so equal inputs always give the same order.
pub fn fuse(
    dense: Vec<SearchHit>,
    sparse: Vec<SearchHit>,
    p: &FusionParams,
    limit: usize,
) -> Vec<SearchHit> {
    let mut by_id: std::collections::HashMap<String, SearchHit> = std::collections::HashMap::new();
    for h in dense.into_iter().chain(sparse) {
        match by_id.get_mut(&h.chunk_id) {
            Some(e) => {
                e.dense = e.dense.or(h.dense);
                e.sparse = e.sparse.or(h.sparse);
            }
            None => {
                by_id.insert(h.chunk_id.clone(), h);
            }
        }
    }
    let mut hits: Vec<SearchHit> = by_id
        .into_values()
        .map(|mut h| {
            let part = |r: Option<RetrieverScore>, w: f32| {
                r.map(|r| w / (p.k + r.rank as f32)).unwrap_or(0.0)
            };
            h.score = part(h.dense, p.dense_weight) + part(h.sparse, p.sparse_weight);
            h
        })
        .collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| {
                let r = |h: &SearchHit| h.dense.map(|d| d.rank).unwrap_or(usize::MAX);
                r(a).cmp(&r(b))
            })
            .then_with(|| a.chunk_id.cmp(&b.chunk_id))
    });
    hits.truncate(limit);
    hits
}

/// Reciprocal-rank fusion of several rankings (the whole question's first, then its parts'):
/// a hit at rank r of a list adds `1 / (k + r)`. A hit keeps the retriever scores of the first
/// list it appears in; ties go to the earlier position in the lists, so the result is
/// deterministic.
pub fn fuse_lists(lists: Vec<Vec<SearchHit>>, k: f32, limit: usize) -> Vec<SearchHit> {
    let mut by_id: std::collections::HashMap<String, (f32, usize, SearchHit)> =
        std::collections::HashMap::new();
    let mut order = 0usize;
    for list in lists {
        for (i, h) in list.into_iter().enumerate() {
            let add = 1.0 / (k + (i + 1) as f32);
            order += 1;
            by_id
                .entry(h.chunk_id.clone())
                .and_modify(|e| e.0 += add)
                .or_insert((add, order, h));
        }
    }
    let mut hits: Vec<(f32, usize, SearchHit)> = by_id.into_values().collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    hits.into_iter()
        .take(limit)
        .map(|(score, _, mut h)| {
            h.score = score;
            h
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub chunk_id: String,
    /// The fused score in hybrid mode, else the retriever's own.
    pub score: f32,
    pub dense: Option<RetrieverScore>,
    pub sparse: Option<RetrieverScore>,
    pub payload: ChunkPayload,
}

#[async_trait::async_trait]
pub trait VectorStore: Send + Sync {
    /// Create or open a collection; a dimension or model mismatch is an error.
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<()>;
    /// Upsert points. They are searchable at once, but durable only after [`flush`].
    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()>;
    /// Make everything written so far survive a crash.
    async fn flush(&self, collection: &str) -> Result<()>;
    /// Delete every point of a document version.
    async fn delete_version(&self, collection: &str, version_key: &str) -> Result<()>;
    async fn search(&self, query: &SearchQuery) -> Result<Vec<SearchHit>>;
    /// How many terms the sparse (BM25) side makes of `text` (0: all stopwords or too short).
    fn sparse_terms(&self, text: &str) -> usize;
    /// Points of a version (or of the whole collection when `version_key` is None).
    async fn count(&self, collection: &str, version_key: Option<&str>) -> Result<usize>;
    /// Build indexes (HNSW) and vacuum. Slow; never on a request path.
    async fn optimize(&self, collection: &str) -> Result<bool>;
    /// Remove a collection and all its points (idempotent: a missing one is fine).
    async fn drop_collection(&self, collection: &str) -> Result<()>;
    /// Flush and release everything.
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32) -> SearchHit {
        SearchHit {
            chunk_id: id.into(),
            score,
            dense: None,
            sparse: None,
            payload: ChunkPayload {
                collection: "c".into(),
                doc_id: "d".into(),
                doc_version: 1,
                version_key: "d@1".into(),
                ord: 0,
                text: id.into(),
                token_count: 1,
                gen_token_count: None,
                page: None,
                heading: None,
                byte_start: 0,
                byte_end: 1,
                content_hash: "x".into(),
            },
        }
    }

    fn ranked(ids: &[&str], dense: bool) -> Vec<SearchHit> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let mut h = hit(id, 1.0 - i as f32 * 0.1);
                let r = Some(RetrieverScore {
                    rank: i + 1,
                    score: h.score,
                });
                if dense {
                    h.dense = r;
                } else {
                    h.sparse = r;
                }
                h
            })
            .collect()
    }

    #[test]
    fn lists_fuse_by_reciprocal_rank_and_keep_first_scores() {
        // The whole question's ranking, then two parts': a hit each part ranks first gets
        // in, and one every list agrees on leads.
        let whole = ranked(&["a", "b", "c", "d"], true);
        let p1 = ranked(&["e", "a"], false);
        let p2 = ranked(&["f", "a"], true);
        let out = fuse_lists(vec![whole, p1, p2], 20.0, 3);
        let ids: Vec<&str> = out.iter().map(|h| h.chunk_id.as_str()).collect();
        // a: 1/21 + 1/22 + 1/22; e, f: 1/21 each (e first: earlier list); b: 1/22.
        assert_eq!(ids, vec!["a", "e", "f"]);
        assert!((out[0].score - (1.0 / 21.0 + 2.0 / 22.0)).abs() < 1e-6);
        // a keeps the whole question's (dense) scores, e its part's (sparse) ones.
        assert_eq!(out[0].dense.unwrap().rank, 1);
        assert!(out[0].sparse.is_none());
        assert_eq!(out[1].sparse.unwrap().rank, 1);
        assert!(fuse_lists(vec![vec![], vec![]], 20.0, 3).is_empty());
    }

    #[test]
    fn fusion_rewards_agreement_and_keeps_both_scores() {
        let d = ranked(&["a", "b", "c"], true);
        let s = ranked(&["c", "d", "a"], false);
        let out = fuse(d, s, &FusionParams::default(), 10);
        let ids: Vec<&str> = out.iter().map(|h| h.chunk_id.as_str()).collect();
        // a: 1/61 + 1/63; c: 1/63 + 1/61 -> tie, a wins on dense rank.
        assert_eq!(ids, vec!["a", "c", "b", "d"]);
        assert_eq!(out[0].dense.unwrap().rank, 1);
        assert_eq!(out[0].sparse.unwrap().rank, 3);
        assert!(out[2].sparse.is_none() && out[3].dense.is_none());
    }

    #[test]
    fn fusion_weights_tilt_the_order_and_limit_cuts() {
        let p = FusionParams {
            k: 10.0,
            dense_weight: 1.0,
            sparse_weight: 2.0,
        };
        let out = fuse(ranked(&["a", "b"], true), ranked(&["b", "c"], false), &p, 2);
        let ids: Vec<&str> = out.iter().map(|h| h.chunk_id.as_str()).collect();
        // b: 1/12 + 2/11; c: 2/12; a: 1/11.
        assert_eq!(ids, vec!["b", "c"]);
    }
}
