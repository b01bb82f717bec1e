//! Qdrant Edge (in-process) behind [`VectorStore`]. One shard directory per collection under
//! `<data_dir>/index/<collection>/`.
//!
//! Notes on qdrant-edge 0.7.0 that shape this module:
//! - every call blocks: all of them run on tokio's blocking pool;
//! - `flush()` panics if it races a write, so writes, flushes and `optimize()` of one shard are
//!   serialised behind a mutex (reads are not);
//! - its WAL is written but never replayed or truncated, so durability comes from `flush()` after
//!   each upsert, and the stale WAL is removed before a shard is opened (it would only grow).

mod open;
mod panics;

use super::*;
use panics::*;
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, JsonPath, Match, Modifier,
    NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery, UpdateOperation, Vector,
    VectorInternal, Vectors, WithPayloadInterface, WithVector,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const DENSE: &str = "dense";
const SPARSE: &str = "bm25";
const SPEC_FILE: &str = "kb-collection.json";

struct Shard {
    shard: EdgeShard,
    /// Writes (upserts, deletes) and flushes: `flush()` panics if it races a write.
    write: Mutex<()>,
    /// One `optimize()` at a time. It does not take `write`: Qdrant Edge builds the new segments
    /// on proxies while writes go on (its own updates lock covers the final swap), so writes
    /// and flushes are not held up for the whole build (10 s at 12k points on 2 cores).
    optimizing: Mutex<()>,
    /// Test hook: the next flush panics the way Qdrant Edge's does on an I/O error.
    #[cfg(test)]
    fail_next_flush: std::sync::atomic::AtomicBool,
}

/// Directories of deleted collections on their way out (not a valid collection name).
const TRASH_PREFIX: &str = ".dropped-";

pub struct EdgeStore {
    root: PathBuf,
    shards: Arc<RwLock<HashMap<String, Arc<Shard>>>>,
    /// Held (on the blocking pool, so a cancelled caller cannot release it early) while a shard
    /// is opened or created: two first uploads to a new collection must not both create its
    /// directory, WAL and lock (the loser failed with a WAL rename error or "in use by another
    /// process").
    opening: Arc<Mutex<()>>,
    bm25: Arc<EdgeBm25>,
    /// Set by `close()`: every later call fails, so nothing (a purge, say) "succeeds" on a
    /// shard that is no longer there, and no shard is reopened behind the shutdown.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Shard {
    /// The write lock, recovered if a panic ever poisoned it: every call that panics under it
    /// is [`guarded`], and a failed write leaves nothing the next one must repair (jobs re-run
    /// from the top; deletes are retried).
    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| {
            self.write.clear_poison();
            p.into_inner()
        })
    }

    fn flush(&self) -> Result<()> {
        #[cfg(test)]
        if self
            .fail_next_flush
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return guarded("saved", || {
                panic!("failed to flush: Too many open files (os error 24)")
            });
        }
        // `flush()` panics (without harm: it only `try`-locks) when it meets the optimiser's
        // brief exclusive hold of the segment list, which no kb lock covers any more: retry.
        let mut tries = 0;
        loop {
            match guarded_quiet("saved", || {
                self.shard.flush();
                Ok(())
            }) {
                Ok(()) => return Ok(()),
                Err((_, detail)) if detail.contains("lock acquired") && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err((e, detail)) => {
                    tracing::error!(operation = "flush", detail = %detail, "the vector index failed");
                    return Err(e);
                }
            }
        }
    }
}

fn jp(key: &str) -> JsonPath {
    key.parse().expect("static payload key")
}

fn any_of(key: &str, vals: &[String]) -> Condition {
    Condition::Field(FieldCondition::new_match(
        jp(key),
        Match::from(vals.to_vec()),
    ))
}

fn eq(key: &str, val: &str) -> Filter {
    Filter::new_must(Condition::Field(FieldCondition::new_match(
        jp(key),
        Match::from(val.to_string()),
    )))
}

#[derive(Serialize, Deserialize)]
struct SpecFile {
    model: String,
    dim: usize,
}

impl EdgeStore {
    pub fn new(root: &Path) -> Result<EdgeStore> {
        std::fs::create_dir_all(root).map_err(err)?;
        // What a collection deletion could not remove before a crash.
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(TRASH_PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let bm25 = EdgeBm25::new(EdgeBm25Config {
            language: Some("english".into()),
            ..Default::default()
        })
        .map_err(|e| err(format!("{e:?}")))?;
        Ok(EdgeStore {
            root: root.to_path_buf(),
            shards: Arc::new(RwLock::new(HashMap::new())),
            opening: Arc::new(Mutex::new(())),
            bm25: Arc::new(bm25),
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("the store is closed".into()));
        }
        Ok(())
    }

    fn get(&self, collection: &str) -> Result<Arc<Shard>> {
        self.check_open()?;
        self.shards
            .read()
            .unwrap()
            .get(collection)
            .cloned()
            .ok_or_else(|| StoreError::NoCollection(collection.to_string()))
    }

    fn config(dim: usize) -> EdgeConfig {
        EdgeConfig::builder()
            .vector(
                DENSE,
                EdgeVectorParams::builder(dim, Distance::Cosine).build(),
            )
            .sparse_vector(
                SPARSE,
                EdgeSparseVectorParams::builder()
                    .modifier(Modifier::Idf)
                    .build(),
            )
            .build()
    }

    fn sparse_text(p: &ChunkPayload) -> String {
        match &p.heading {
            Some(h) => format!("{h}\n{}", p.text),
            None => p.text.clone(),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        // A panic outside `guarded` (a search, say): its text is for the log, not for users.
        tracing::error!(error = %e, "a vector index task failed");
        StoreError::Transient("the index failed (an internal error of the index)".into())
    })?
}

#[async_trait::async_trait]
impl VectorStore for EdgeStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<()> {
        self.check_open()?;
        if self.shards.read().unwrap().contains_key(&spec.name) {
            return Ok(());
        }
        let (root, spec, shards, opening, closed) = (
            self.root.clone(),
            spec.clone(),
            self.shards.clone(),
            self.opening.clone(),
            self.closed.clone(),
        );
        blocking(move || {
            // It guards no data: a panic while opening leaves nothing to repair.
            let _opening = opening.lock().unwrap_or_else(|p| p.into_inner());
            if closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Backend("the store is closed".into()));
            }
            // Another caller may have opened it while this one waited.
            if shards.read().unwrap().contains_key(&spec.name) {
                return Ok(());
            }
            let shard = EdgeStore::open_blocking(&root, &spec)?;
            shards
                .write()
                .unwrap()
                .insert(spec.name.clone(), Arc::new(shard));
            Ok(())
        })
        .await
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let shard = self.get(collection)?;
        let bm25 = self.bm25.clone();
        blocking(move || {
            let mut batch = Vec::with_capacity(points.len());
            for p in points {
                let sparse = bm25.embed_document(&EdgeStore::sparse_text(&p.payload));
                let mut named: Vec<(&str, Vector)> = vec![(DENSE, Vector::new_dense(p.dense))];
                if !sparse.indices.is_empty() {
                    named.push((SPARSE, Vector::from(sparse)));
                }
                let id = PointId::Uuid(p.payload.point_id());
                let payload = serde_json::to_value(&p.payload).map_err(err)?;
                batch.push(PointStruct::new(id, Vectors::new_named(named), payload).into());
            }
            let _w = shard.lock_writes();
            guarded("written", || {
                shard
                    .shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                    ))
                    .map_err(err)
            })
        })
        .await
    }

    async fn flush(&self, collection: &str) -> Result<()> {
        let shard = self.get(collection)?;
        blocking(move || {
            let _w = shard.lock_writes();
            shard.flush()
        })
        .await
    }

    async fn delete_version(&self, collection: &str, version_key: &str) -> Result<()> {
        let shard = match self.get(collection) {
            Ok(s) => s,
            Err(StoreError::NoCollection(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let key = version_key.to_string();
        blocking(move || {
            let _w = shard.lock_writes();
            guarded("written", || {
                shard
                    .shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(eq("version_key", &key)),
                    ))
                    .map_err(err)
            })?;
            shard.flush()
        })
        .await
    }

    async fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>> {
        let shard = self.get(&q.collection)?;
        let bm25 = self.bm25.clone();
        let q = q.clone();
        blocking(move || {
            let mut filter = Filter::default();
            let mut any = false;
            if let Some(ids) = &q.doc_ids {
                filter.must = Some(vec![any_of("doc_id", ids)]);
                any = true;
            }
            if !q.hidden.is_empty() {
                filter.must_not = Some(vec![any_of("version_key", &q.hidden)]);
                any = true;
            }
            let filter = any.then_some(filter);
            let nearest = |name: &str, v: VectorInternal| {
                ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(v, name)))
            };
            let sparse_q = || -> Option<ScoringQuery> {
                let sv = bm25.embed_query(&q.text);
                (!sv.indices.is_empty()).then(|| nearest(SPARSE, sv.into()))
            };
            let dense_q = || q.dense.clone().map(|d| nearest(DENSE, d.into()));
            // Without payloads, hits carry an empty one (filled after fusion).
            let run =
                |query: ScoringQuery, limit: usize, with_payload: bool| -> Result<Vec<SearchHit>> {
                    let req = QueryRequest {
                        prefetches: vec![],
                        query: Some(query),
                        filter: filter.clone(),
                        score_threshold: None,
                        limit,
                        offset: 0,
                        params: None,
                        with_vector: WithVector::Bool(false),
                        with_payload: WithPayloadInterface::Bool(with_payload),
                    };
                    let points = shard.shard.query(req).map_err(err)?;
                    let mut hits = Vec::with_capacity(points.len());
                    for p in points {
                        let payload = match p.payload {
                            Some(payload) => decode_payload(payload.0)?,
                            None if with_payload => continue,
                            None => ChunkPayload::default(),
                        };
                        hits.push(SearchHit {
                            chunk_id: chunk_id_of(&p.id),
                            score: p.score,
                            dense: None,
                            sparse: None,
                            payload,
                        });
                    }
                    Ok(hits)
                };
            let tag = |mut hits: Vec<SearchHit>, dense: bool| {
                for (i, h) in hits.iter_mut().enumerate() {
                    let r = Some(RetrieverScore {
                        rank: i + 1,
                        score: h.score,
                    });
                    if dense {
                        h.dense = r;
                    } else {
                        h.sparse = r;
                    }
                }
                hits
            };
            match q.mode {
                SearchMode::Dense => match dense_q() {
                    Some(d) => Ok(tag(run(d, q.limit, true)?, true)),
                    None => Ok(vec![]),
                },
                SearchMode::Sparse => match sparse_q() {
                    Some(sq) => Ok(tag(run(sq, q.limit, true)?, false)),
                    None => Ok(vec![]),
                },
                SearchMode::Hybrid => {
                    // Each retriever ranks its candidates; kb fuses them (weighted reciprocal
                    // rank) so every hit keeps both retrievers' raw scores and ranks, which the
                    // answerer uses to judge whether the evidence is strong enough.
                    // The candidates are ranked without their payloads (a chunk's text is
                    // most of its payload); only the fused top `limit` are read.
                    let n = q.candidates.max(q.limit);
                    let dense = match dense_q() {
                        Some(d) => tag(run(d, n, false)?, true),
                        None => vec![],
                    };
                    let sparse = match sparse_q() {
                        Some(sq) => tag(run(sq, n, false)?, false),
                        None => vec![],
                    };
                    let mut hits = fuse(dense, sparse, &q.fusion, q.limit);
                    let ids: Vec<PointId> = hits.iter().map(|h| point_id_of(&h.chunk_id)).collect();
                    let mut payloads: HashMap<String, ChunkPayload> = HashMap::new();
                    for r in shard
                        .shard
                        .retrieve(&ids, Some(WithPayloadInterface::Bool(true)), None)
                        .map_err(err)?
                    {
                        if let Some(p) = r.payload {
                            payloads.insert(chunk_id_of(&r.id), decode_payload(p.0)?);
                        }
                    }
                    // A chunk deleted since the query is left out, never shown empty.
                    hits.retain_mut(|h| match payloads.remove(&h.chunk_id) {
                        Some(p) => {
                            h.payload = p;
                            true
                        }
                        None => false,
                    });
                    Ok(hits)
                }
            }
        })
        .await
    }

    fn sparse_terms(&self, text: &str) -> usize {
        self.bm25.embed_query(text).indices.len()
    }

    async fn count(&self, collection: &str, version_key: Option<&str>) -> Result<usize> {
        let shard = self.get(collection)?;
        let filter = version_key.map(|k| eq("version_key", k));
        blocking(move || {
            shard
                .shard
                .count(CountRequest {
                    filter,
                    exact: true,
                })
                .map_err(err)
        })
        .await
    }

    async fn optimize(&self, collection: &str) -> Result<bool> {
        let shard = self.get(collection)?;
        blocking(move || {
            let _o = shard.optimizing.lock().unwrap_or_else(|p| p.into_inner());
            let changed = guarded("indexed", || shard.shard.optimize().map_err(err))?;
            let _w = shard.lock_writes();
            shard.flush()?;
            Ok(changed)
        })
        .await
    }

    async fn drop_collection(&self, collection: &str) -> Result<()> {
        self.check_open()?;
        let (root, name, shards, opening) = (
            self.root.clone(),
            collection.to_string(),
            self.shards.clone(),
            self.opening.clone(),
        );
        blocking(move || {
            // No open of the same name while it goes.
            let _opening = opening.lock().unwrap_or_else(|p| p.into_inner());
            let shard = shards.write().unwrap().remove(&name);
            if let Some(shard) = shard {
                // Out of the map, no new call finds it; let the writes and the optimisation
                // under way finish, and the searches holding it let go.
                drop(shard.lock_writes());
                drop(shard.optimizing.lock().unwrap_or_else(|p| p.into_inner()));
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while Arc::strong_count(&shard) > 1 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                drop(shard);
            }
            let dir = root.join(&name);
            if dir.exists() {
                // Renamed first: a collection of the same name made next finds a clean place,
                // whatever the removal below leaves (it is retried at the next start).
                let trash = root.join(format!("{TRASH_PREFIX}{}", uuid::Uuid::new_v4()));
                std::fs::rename(&dir, &trash).map_err(err)?;
                if let Err(e) = std::fs::remove_dir_all(&trash) {
                    tracing::warn!(error = %e, dir = %trash.display(), "removing a deleted collection's index");
                }
            }
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let (shards, opening) = (self.shards.clone(), self.opening.clone());
        let _ = tokio::task::spawn_blocking(move || {
            // After an open under way has finished (it sees `closed` and stops, or its shard is
            // in the map and is flushed here).
            let _opening = opening.lock().unwrap_or_else(|p| p.into_inner());
            let shards: Vec<Arc<Shard>> = shards.write().unwrap().drain().map(|(_, s)| s).collect();
            for s in shards {
                let _w = s.lock_writes();
                if let Err(e) = s.flush() {
                    tracing::error!(error = %e, "index not flushed at shutdown");
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests;

fn decode_payload(map: serde_json::Map<String, serde_json::Value>) -> Result<ChunkPayload> {
    serde_json::from_value(serde_json::Value::Object(map)).map_err(err)
}

fn chunk_id_of(id: &PointId) -> String {
    match id {
        PointId::Uuid(u) => u.to_string(),
        PointId::NumId(n) => n.to_string(),
    }
}

/// The point id a chunk id names (kb writes UUIDs; a number is read as a numeric id).
fn point_id_of(chunk_id: &str) -> PointId {
    match uuid::Uuid::parse_str(chunk_id) {
        Ok(u) => PointId::Uuid(u),
        Err(_) => PointId::NumId(chunk_id.parse().unwrap_or_default()),
    }
}
