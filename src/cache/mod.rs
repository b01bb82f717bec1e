//! The answer caches.
//!
//! - Exact: the key is a sha256 over the normalised question and everything else that shapes an
//!   answer (collection, its index version, answer model, prompt version, retrieval parameters,
//!   conversation history when the model sees it). Any document change bumps the collection's
//!   index version, so an answer computed before it is never found again. In memory (an LRU
//!   bounded by entries) by default; Redis when `cache.redis_url` is set, so replicas share it.
//! - Semantic (off by default): question embeddings of cached answers, per scope (everything in
//!   the key but the question); a question within a cosine distance of one of them gets that
//!   answer. Always in memory: it points at exact keys, whose answers live in the backend.
//!
//! Cache failures never fail a question: a Redis error is a miss (logged).
//!
//! The cache knows nothing of what it stores: values are any serde type (the question path
//! stores its `CachedAnswer`), kept as JSON bytes in memory or in Redis.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lower-case, trimmed, runs of whitespace collapsed to one space.
pub fn normalise_question(q: &str) -> String {
    q.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Everything but the question that an answer depends on. `parts` are (name, value) pairs;
/// the scope is their sha256 (names included, so two parameters cannot be confused).
pub fn scope_key(parts: &[(&str, String)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in parts {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The exact key: the scope and the normalised question.
pub fn exact_key(scope: &str, question: &str) -> String {
    let q = normalise_question(question);
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(q.as_bytes());
    hex::encode(h.finalize())
}

/// An LRU of byte strings with a TTL, bounded by entries.
struct Lru {
    cap: usize,
    tick: u64,
    map: HashMap<String, (u64, Instant, Vec<u8>)>,
    order: BTreeMap<u64, String>,
}

impl Lru {
    fn new(cap: usize) -> Lru {
        Lru {
            cap,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let (t, expires, _) = self.map.get(key)?;
        if *expires <= Instant::now() {
            let t = *t;
            self.order.remove(&t);
            self.map.remove(key);
            return None;
        }
        let old = *t;
        self.tick += 1;
        let now = self.tick;
        self.order.remove(&old);
        self.order.insert(now, key.to_string());
        let e = self.map.get_mut(key).unwrap();
        e.0 = now;
        Some(e.2.clone())
    }

    fn put(&mut self, key: String, value: Vec<u8>, ttl: Duration) {
        self.tick += 1;
        if let Some((t, _, _)) = self.map.remove(&key) {
            self.order.remove(&t);
        }
        while self.map.len() >= self.cap {
            let Some((_, k)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&k);
        }
        self.order.insert(self.tick, key.clone());
        self.map
            .insert(key, (self.tick, Instant::now() + ttl, value));
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

enum Backend {
    Memory(Mutex<Lru>),
    Redis(redis::aio::ConnectionManager),
}

struct SemanticEntry {
    vector: Vec<f32>,
    key: String,
    expires: Instant,
}

pub struct AnswerCache {
    backend: Backend,
    ttl: Duration,
    semantic: Option<Mutex<SemanticIndex>>,
    pub semantic_max_distance: f32,
}

struct SemanticIndex {
    cap: usize,
    /// Per scope, oldest first.
    scopes: HashMap<String, Vec<SemanticEntry>>,
    len: usize,
}

/// A hit: the answer, how it was found, and (semantic) its distance.
pub struct Hit<T> {
    pub answer: T,
    pub kind: &'static str,
    pub distance: Option<f32>,
}

const REDIS_PREFIX: &str = "kb:answer:";

/// Cosine distance of two L2-normalised (or any) vectors.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 2.0;
    }
    1.0 - dot / (na.sqrt() * nb.sqrt())
}

impl AnswerCache {
    /// In memory, `max_entries` answers (and as many semantic entries when `semantic`).
    pub fn memory(
        max_entries: usize,
        ttl: Duration,
        semantic: bool,
        max_distance: f32,
    ) -> AnswerCache {
        AnswerCache {
            backend: Backend::Memory(Mutex::new(Lru::new(max_entries))),
            ttl,
            semantic: semantic.then(|| Mutex::new(SemanticIndex::new(max_entries))),
            semantic_max_distance: max_distance,
        }
    }

    /// Redis at `url` (connects now: an unreachable Redis is a start-up error).
    pub async fn redis(
        url: &str,
        max_entries: usize,
        ttl: Duration,
        semantic: bool,
        max_distance: f32,
    ) -> anyhow::Result<AnswerCache> {
        let conn =
            crate::redis_client::connect(url, Duration::from_secs(5), Duration::from_secs(2), 2)
                .await?;
        Ok(AnswerCache {
            backend: Backend::Redis(conn),
            ttl,
            semantic: semantic.then(|| Mutex::new(SemanticIndex::new(max_entries))),
            semantic_max_distance: max_distance,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub fn semantic_enabled(&self) -> bool {
        self.semantic.is_some()
    }

    async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Memory(m) => m.lock().unwrap().get(key),
            Backend::Redis(c) => {
                let mut c = c.clone();
                let r: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
                    .arg(format!("{REDIS_PREFIX}{key}"))
                    .query_async(&mut c)
                    .await;
                match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "answer cache: Redis GET failed (a miss)");
                        None
                    }
                }
            }
        }
    }

    /// The answer stored under `key`, if any and not expired.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let raw = self.get_raw(key).await?;
        serde_json::from_slice(&raw).ok()
    }

    /// Exact lookup, then (when on and `vector` is given) the nearest cached question of the
    /// same scope within the distance.
    pub async fn lookup<T: DeserializeOwned>(
        &self,
        key: &str,
        scope: &str,
        vector: Option<&[f32]>,
    ) -> Option<Hit<T>> {
        if let Some(answer) = self.get(key).await {
            return Some(Hit {
                answer,
                kind: "exact",
                distance: None,
            });
        }
        let (sem, v) = (self.semantic.as_ref()?, vector?);
        let (other, d) = sem
            .lock()
            .unwrap()
            .nearest(scope, v, self.semantic_max_distance)?;
        let answer = self.get(&other).await?;
        Some(Hit {
            answer,
            kind: "semantic",
            distance: Some(d),
        })
    }

    pub async fn put<T: Serialize>(&self, key: &str, scope: &str, vector: Option<Vec<f32>>, a: &T) {
        let Ok(bytes) = serde_json::to_vec(a) else {
            return;
        };
        match &self.backend {
            Backend::Memory(m) => m.lock().unwrap().put(key.to_string(), bytes, self.ttl),
            Backend::Redis(c) => {
                let mut c = c.clone();
                let r: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(format!("{REDIS_PREFIX}{key}"))
                    .arg(bytes)
                    .arg("EX")
                    .arg(self.ttl.as_secs().max(1))
                    .query_async(&mut c)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "answer cache: Redis SET failed");
                    return;
                }
            }
        }
        if let (Some(sem), Some(v)) = (&self.semantic, vector) {
            sem.lock().unwrap().insert(scope, key, v, self.ttl);
        }
    }

    /// Entries held in memory (answers for the memory backend; 0 for Redis).
    pub fn len(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.lock().unwrap().len(),
            Backend::Redis(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SemanticIndex {
    fn new(cap: usize) -> SemanticIndex {
        SemanticIndex {
            cap,
            scopes: HashMap::new(),
            len: 0,
        }
    }

    fn insert(&mut self, scope: &str, key: &str, vector: Vec<f32>, ttl: Duration) {
        let now = Instant::now();
        // Expired entries of this scope go first; then the oldest anywhere when full.
        let list = self.scopes.entry(scope.to_string()).or_default();
        let before = list.len();
        list.retain(|e| e.expires > now && e.key != key);
        self.len -= before - list.len();
        while self.len >= self.cap {
            let oldest = self
                .scopes
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .min_by_key(|(_, l)| l[0].expires)
                .map(|(s, _)| s.clone());
            let Some(s) = oldest else { break };
            self.scopes.get_mut(&s).unwrap().remove(0);
            self.len -= 1;
        }
        self.scopes
            .entry(scope.to_string())
            .or_default()
            .push(SemanticEntry {
                vector,
                key: key.to_string(),
                expires: now + ttl,
            });
        self.len += 1;
        self.scopes.retain(|_, l| !l.is_empty());
    }

    fn nearest(&self, scope: &str, v: &[f32], max: f32) -> Option<(String, f32)> {
        let now = Instant::now();
        self.scopes
            .get(scope)?
            .iter()
            .filter(|e| e.expires > now)
            .map(|e| (e, cosine_distance(&e.vector, v)))
            .filter(|(_, d)| *d <= max)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, d)| (e.key.clone(), d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Answer {
        question: String,
        answer: String,
    }

    fn answer(q: &str) -> Answer {
        Answer {
            question: q.into(),
            answer: format!("answer to {q}"),
        }
    }

    #[test]
    fn keys_normalise_the_question_and_separate_scopes() {
        let s1 = scope_key(&[("collection", "a".into()), ("top_k", "8".into())]);
        let s2 = scope_key(&[("collection", "a".into()), ("top_k", "5".into())]);
        assert_ne!(s1, s2);
        assert_eq!(
            exact_key(&s1, "  What IS\tthe   default? "),
            exact_key(&s1, "what is the default?")
        );
        assert_ne!(exact_key(&s1, "q"), exact_key(&s2, "q"));
        // Names are part of the key: values cannot slide between parameters.
        assert_ne!(
            scope_key(&[("a", "bc".into())]),
            scope_key(&[("ab", "c".into())])
        );
    }

    #[tokio::test]
    async fn lru_evicts_least_recently_used_and_expires() {
        let c = AnswerCache::memory(2, Duration::from_secs(60), false, 0.1);
        c.put("k1", "s", None, &answer("1")).await;
        c.put("k2", "s", None, &answer("2")).await;
        assert!(c.get::<Answer>("k1").await.is_some()); // k1 is now the most recent
        c.put("k3", "s", None, &answer("3")).await;
        assert!(
            c.get::<Answer>("k2").await.is_none(),
            "least recently used evicted"
        );
        assert!(c.get::<Answer>("k1").await.is_some() && c.get::<Answer>("k3").await.is_some());
        assert_eq!(c.len(), 2);

        let c = AnswerCache::memory(2, Duration::from_millis(30), false, 0.1);
        c.put("k", "s", None, &answer("1")).await;
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.get::<Answer>("k").await.is_none(), "expired");
    }

    #[tokio::test]
    async fn semantic_lookup_stays_within_scope_and_distance() {
        let c = AnswerCache::memory(10, Duration::from_secs(60), true, 0.1);
        c.put("k1", "s1", Some(vec![1.0, 0.0]), &answer("1")).await;
        let near = [0.99, 0.1];
        let h = c
            .lookup::<Answer>("other", "s1", Some(&near))
            .await
            .unwrap();
        assert_eq!((h.kind, h.answer.question.as_str()), ("semantic", "1"));
        assert!(h.distance.unwrap() < 0.01);
        assert!(c
            .lookup::<Answer>("other", "s2", Some(&near))
            .await
            .is_none());
        assert!(c
            .lookup::<Answer>("other", "s1", Some(&[0.0, 1.0]))
            .await
            .is_none());
        let h = c.lookup::<Answer>("k1", "s1", None).await.unwrap();
        assert_eq!(h.kind, "exact");
    }
}
