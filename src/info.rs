//! The build and the settings that shape answers (`GET /v1/info`, recorded by `kb eval`).

use serde::Serialize;
use utoipa::ToSchema;

/// The build and the settings that shape answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Info {
    pub kb_version: String,
    pub git_commit: String,
    /// The embedding model's id.
    pub embedder: String,
    pub chunker: InfoChunker,
    pub retrieval: InfoRetrieval,
    /// `extractive`, or the chat model's id.
    pub answerer: String,
    pub prompt_version: String,
    pub cache: InfoCache,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoChunker {
    pub splitter: String,
    pub max_tokens: usize,
    pub overlap_tokens: usize,
    /// Chunks are embedded with their heading path before their text.
    pub embed_headings: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoRetrieval {
    /// `hybrid`, `dense` or `sparse`.
    pub mode: String,
    pub top_k: usize,
    pub candidates: usize,
    /// Multi-part questions are also searched part by part.
    pub split_questions: bool,
    pub fusion: InfoFusion,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoFusion {
    pub rrf_k: f32,
    pub dense_weight: f32,
    pub sparse_weight: f32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoCache {
    /// `memory` or `redis`; null when the answer cache is off.
    pub answers: Option<String>,
    pub semantic: bool,
    pub embeddings: bool,
}
