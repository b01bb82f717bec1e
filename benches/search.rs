//! Qdrant Edge behind kb's `VectorStore`: upsert throughput, then search latency (dense, BM25,
//! hybrid RRF, hybrid with a 5-document filter, hybrid with 50 hidden versions) before and after
//! `optimize`, which is timed too.
//!
//! Baseline: dense search before optimize (brute force over unindexed segments); every other
//! latency is reported as a ratio to it. The cases take turns query by query, so a noisy
//! neighbour slows them alike.
//!
//! `KB_BENCH_POINTS=100000 cargo bench --bench search`; knobs in benches/README.md.
//! Synthetic data: random unit vectors (384-d) and ~150-word texts drawn from a 5,000-word
//! vocabulary with Zipf-like frequencies, spread over 1,000 documents.

mod common;

use anyhow::{ensure, Result};
use common::{
    dir_bytes, env_usize, mb, num, percentile, pin_timer_thread, ratio, unpin_current_thread, Table,
};
use kb::store::edge::EdgeStore;
use kb::store::{ChunkPayload, CollectionSpec, Point, SearchMode, SearchQuery, VectorStore};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

const COLLECTION: &str = "bench";
const DIM: usize = 384;
const DOCS: usize = 1000;
const VOCAB: usize = 5000;
const WORDS_PER_CHUNK: usize = 150;
const BATCH: usize = 512;
const WARMUP: usize = 10;
const TOP_K: usize = 8;
/// kb's default `retrieval.candidates`.
const CANDIDATES: usize = 50;
const FILTER_DOCS: usize = 5;
const HIDDEN_VERSIONS: usize = 50;

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    mode: SearchMode,
    doc_filter: bool,
    hidden: bool,
}

impl Case {
    const fn new(name: &'static str, mode: SearchMode, doc_filter: bool, hidden: bool) -> Case {
        Case {
            name,
            mode,
            doc_filter,
            hidden,
        }
    }
}

const CASES: [Case; 5] = [
    Case::new("dense", SearchMode::Dense, false, false),
    Case::new("sparse (BM25)", SearchMode::Sparse, false, false),
    Case::new("hybrid (RRF)", SearchMode::Hybrid, false, false),
    Case::new("hybrid, 5-doc filter", SearchMode::Hybrid, true, false),
    Case::new(
        "hybrid, 50 hidden versions",
        SearchMode::Hybrid,
        false,
        true,
    ),
];

fn main() -> Result<()> {
    // Store calls run on tokio's threads (unpinned); this thread only waits and reads the clock.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(unpin_current_thread)
        .build()?;
    pin_timer_thread();
    rt.block_on(run())
}

async fn run() -> Result<()> {
    let n = env_usize("KB_BENCH_POINTS", 100_000).max(1);
    let n_queries = env_usize("KB_BENCH_QUERIES", 200).max(1);
    let parent = std::env::var_os("KB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("kb-bench-search-")
        .tempdir_in(parent)?;
    let index = tmp.path().join("index");
    let mut synth = Synth::new(n, 0x6b62_2d62_656e_6368);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kb search bench: {n} points ({DIM}-d, ~{WORDS_PER_CHUNK} words) over {} documents, \
         batches of {BATCH} | {n_queries} queries per case | {cores} cores | {}",
        synth.doc_ids.len(),
        index.display()
    );

    let store = EdgeStore::new(&index)?;
    store
        .ensure_collection(&CollectionSpec {
            name: COLLECTION.into(),
            dim: DIM,
            model: "bench:random-unit".into(),
        })
        .await?;

    // Upsert: only the store calls are timed, not generating the points. kb flushes once per
    // document (before it goes live); KB_BENCH_FLUSH_EACH=1 flushes after every batch instead.
    let flush_each = std::env::var("KB_BENCH_FLUSH_EACH").is_ok_and(|v| v == "1");
    let mut batches: Vec<(usize, f64)> = Vec::new();
    let mut k = 0;
    while k < n {
        let m = BATCH.min(n - k);
        let points: Vec<Point> = (k..k + m).map(|i| synth.point(i)).collect();
        let t = Instant::now();
        store.upsert(COLLECTION, points).await?;
        if flush_each {
            store.flush(COLLECTION).await?;
        }
        batches.push((m, t.elapsed().as_secs_f64()));
        k += m;
        if batches.len().is_multiple_of(20) || k == n {
            eprint!("\rupserted {k}/{n}");
        }
    }
    let t = Instant::now();
    store.flush(COLLECTION).await?;
    batches.push((0, t.elapsed().as_secs_f64()));
    eprintln!();
    let count = store.count(COLLECTION, None).await?;
    ensure!(count == n, "the store holds {count} points, expected {n}");
    let upsert_secs: f64 = batches.iter().map(|b| b.1).sum();
    let tenth = (batches.len() / 10).max(1);
    let rate = |bs: &[(usize, f64)]| {
        bs.iter().map(|b| b.0 as f64).sum::<f64>() / bs.iter().map(|b| b.1).sum::<f64>()
    };
    let (first, last) = (
        rate(&batches[..tenth]),
        rate(&batches[batches.len() - tenth..]),
    );
    let disk_before = dir_bytes(&index);

    let queries = synth.queries(n_queries + WARMUP);
    let hidden = synth.hidden_versions(HIDDEN_VERSIONS);
    eprintln!("searching (before optimize)");
    let before = measure(&store, &queries, &hidden).await?;
    eprintln!("optimizing");
    let t = Instant::now();
    let changed = store.optimize(COLLECTION).await?;
    let optimize_secs = t.elapsed().as_secs_f64();
    let disk_after = dir_bytes(&index);
    eprintln!("searching (after optimize)");
    let after = measure(&store, &queries, &hidden).await?;
    store.close().await;

    let mut t = Table::new(
        "indexing",
        &["figure", "value", "baseline", "baseline value", "ratio"],
    );
    t.row(vec![
        "upsert points/s, all batches".into(),
        num(n as f64 / upsert_secs),
        "first 10% of batches".into(),
        num(first),
        ratio(n as f64 / upsert_secs, first),
    ]);
    t.row(vec![
        "upsert points/s, last 10%".into(),
        num(last),
        "first 10% of batches".into(),
        num(first),
        ratio(last, first),
    ]);
    t.row(vec![
        format!("optimize s (changed: {changed})"),
        num(optimize_secs),
        "all upserts, s".into(),
        num(upsert_secs),
        ratio(optimize_secs, upsert_secs),
    ]);
    t.row(vec![
        "index on disk, MB, after optimize".into(),
        num(mb(disk_after as usize)),
        "before optimize".into(),
        num(mb(disk_before as usize)),
        ratio(disk_after as f64, disk_before as f64),
    ]);
    t.note(if flush_each {
        "flushed after every batch (KB_BENCH_FLUSH_EACH=1)"
    } else {
        "one flush at the end, as kb does per document (its time is in the last batch)"
    });
    t.print();

    let base = &before[0];
    let mut t = Table::new(
        format!(
            "search latency, top {TOP_K}, {CANDIDATES} candidates per retriever \
             (baseline: dense before optimize)"
        ),
        &[
            "case",
            "index",
            "p50 ms",
            "p99 ms",
            "p50 / base",
            "p99 / base",
            "hits/query",
        ],
    );
    for (label, stats) in [("before optimize", &before), ("after optimize", &after)] {
        for (case, s) in CASES.iter().zip(stats.iter()) {
            t.row(vec![
                case.name.into(),
                label.into(),
                format!("{:.2}", s.p50),
                format!("{:.2}", s.p99),
                ratio(s.p50, base.p50),
                ratio(s.p99, base.p99),
                format!("{:.1}", s.hits as f64 / s.queries as f64),
            ]);
            if s.violations > 0 {
                t.note(format!(
                    "WARNING: {} ({label}): {} hits broke the filter",
                    case.name, s.violations
                ));
            }
        }
    }
    t.note(format!(
        "{n_queries} queries per case after {WARMUP} warm-up queries; latency is the \
         VectorStore::search call (BM25 query encoding and payload decoding included)"
    ));
    t.print();
    drop(tmp);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Stats {
    p50: f64,
    p99: f64,
    queries: usize,
    hits: usize,
    /// Hits outside the document filter or of a hidden version (must be 0).
    violations: usize,
}

async fn measure(store: &EdgeStore, queries: &[Query], hidden: &[String]) -> Result<Vec<Stats>> {
    let hidden_set: HashSet<&str> = hidden.iter().map(String::as_str).collect();
    let mut lat: Vec<Vec<f64>> = vec![Vec::with_capacity(queries.len()); CASES.len()];
    let mut hits = [0usize; CASES.len()];
    let mut violations = [0usize; CASES.len()];
    for (i, q) in queries.iter().enumerate() {
        // Rotate the order so no case always runs right after another.
        for j in 0..CASES.len() {
            let c = (i + j) % CASES.len();
            let case = CASES[c];
            let sq = SearchQuery {
                collection: COLLECTION.into(),
                dense: Some(q.dense.clone()),
                text: q.text.clone(),
                mode: case.mode,
                limit: TOP_K,
                candidates: CANDIDATES,
                fusion: Default::default(),
                doc_ids: case.doc_filter.then(|| q.docs.clone()),
                hidden: if case.hidden {
                    hidden.to_vec()
                } else {
                    Vec::new()
                },
            };
            let t = Instant::now();
            let found = store.search(&sq).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if i < WARMUP {
                continue;
            }
            lat[c].push(ms);
            hits[c] += found.len();
            violations[c] += found
                .iter()
                .filter(|h| {
                    (case.doc_filter && !q.docs.contains(&h.payload.doc_id))
                        || (case.hidden && hidden_set.contains(h.payload.version_key.as_str()))
                })
                .count();
        }
    }
    Ok(lat
        .into_iter()
        .enumerate()
        .map(|(c, mut l)| {
            l.sort_by(f64::total_cmp);
            Stats {
                p50: percentile(&l, 50.0),
                p99: percentile(&l, 99.0),
                queries: l.len().max(1),
                hits: hits[c],
                violations: violations[c],
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Synthetic data

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller), so that normalised vectors are uniform on the sphere.
    fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        let v: Vec<f64> = (0..dim).map(|_| self.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.into_iter().map(|x| (x / norm) as f32).collect()
    }
}

struct Query {
    dense: Vec<f32>,
    text: String,
    docs: Vec<String>,
}

struct Synth {
    rng: Rng,
    words: Vec<String>,
    doc_ids: Vec<String>,
    per_doc: usize,
}

impl Synth {
    fn new(points: usize, seed: u64) -> Synth {
        let mut rng = Rng(seed | 1);
        let words = vocabulary(&mut rng);
        let per_doc = points.div_ceil(DOCS).max(1);
        let docs = points.div_ceil(per_doc);
        let doc_ids = (0..docs)
            .map(|_| {
                let hi = rng.next_u64() as u128;
                uuid::Uuid::from_u128((hi << 64) | rng.next_u64() as u128).to_string()
            })
            .collect();
        Synth {
            rng,
            words,
            doc_ids,
            per_doc,
        }
    }

    /// A word with Zipf-like frequency: rank r has probability ~ 1/r (log-uniform rank).
    fn word(&mut self) -> &str {
        let r = (VOCAB as f64).powf(self.rng.f64()) as usize;
        &self.words[r.clamp(1, VOCAB) - 1]
    }

    /// `n` words, a full stop every 15.
    fn text(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n * 8);
        for i in 1..=n {
            let w = self.word().to_string();
            s.push_str(&w);
            s.push_str(if i % 15 == 0 { ". " } else { " " });
        }
        s.truncate(s.trim_end().len());
        if !s.ends_with('.') {
            s.push('.');
        }
        s
    }

    /// Point `k`: documents hold consecutive points, as ingestion writes them.
    fn point(&mut self, k: usize) -> Point {
        let doc = k / self.per_doc;
        let ord = (k % self.per_doc) as u32;
        let doc_id = self.doc_ids[doc].clone();
        let text = self.text(WORDS_PER_CHUNK);
        let byte_start = ord as usize * 1100;
        let byte_end = byte_start + text.len();
        let content_hash = hex::encode(Sha256::digest(text.as_bytes()));
        Point {
            dense: self.rng.unit_vector(DIM),
            payload: ChunkPayload {
                collection: COLLECTION.into(),
                version_key: kb::catalog::version_key(&doc_id, 1),
                doc_id,
                doc_version: 1,
                ord,
                text,
                token_count: (WORDS_PER_CHUNK * 4 / 3) as u32,
                gen_token_count: None,
                // Half the documents are "PDFs" with pages, all have heading paths.
                page: doc.is_multiple_of(2).then_some(ord / 3 + 1),
                heading: Some(format!(
                    "Chapter {} > Section {}",
                    ord / 20 + 1,
                    ord / 5 + 1
                )),
                byte_start,
                byte_end,
                content_hash,
            },
        }
    }

    fn queries(&mut self, n: usize) -> Vec<Query> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let words = 2 + self.rng.below(5);
            let text = self.text(words).trim_end_matches('.').to_string();
            let mut docs = Vec::with_capacity(FILTER_DOCS);
            for _ in 0..FILTER_DOCS {
                let d = self.rng.below(self.doc_ids.len());
                docs.push(self.doc_ids[d].clone());
            }
            out.push(Query {
                dense: self.rng.unit_vector(DIM),
                text,
                docs,
            });
        }
        out
    }

    /// Version keys of `n` distinct existing documents (fewer if there are fewer documents).
    fn hidden_versions(&mut self, n: usize) -> Vec<String> {
        let mut picked = HashSet::new();
        while picked.len() < n.min(self.doc_ids.len()) {
            picked.insert(self.rng.below(self.doc_ids.len()));
        }
        let mut keys: Vec<String> = picked
            .into_iter()
            .map(|d| kb::catalog::version_key(&self.doc_ids[d], 1))
            .collect();
        keys.sort();
        keys
    }
}

/// `VOCAB` distinct pronounceable words of 2-4 syllables.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const CONSONANTS: &[u8] = b"bcdfghjklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(VOCAB);
    while words.len() < VOCAB {
        let mut w = String::new();
        for _ in 0..2 + rng.below(3) {
            w.push(CONSONANTS[rng.below(CONSONANTS.len())] as char);
            w.push(VOWELS[rng.below(VOWELS.len())] as char);
        }
        if rng.below(3) == 0 {
            w.push(CONSONANTS[rng.below(CONSONANTS.len())] as char);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}
