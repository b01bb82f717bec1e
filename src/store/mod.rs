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
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Dense + BM25, fused with reciprocal rank fusion.
    Hybrid,
    Dense,
    /// BM25 only.
    Sparse,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub chunk_id: String,
    pub score: f32,
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
    /// Points of a version (or of the whole collection when `version_key` is None).
    async fn count(&self, collection: &str, version_key: Option<&str>) -> Result<usize>;
    /// Build indexes (HNSW) and vacuum. Slow; never on a request path.
    async fn optimize(&self, collection: &str) -> Result<bool>;
    /// Flush and release everything.
    async fn close(&self);
}
