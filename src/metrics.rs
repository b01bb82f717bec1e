//! Prometheus text-format metrics: request counts and latency per route and status, the answer
//! and embedding caches, ingestion throughput. (Model calls are counted by the governor.)

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    /// Answer cache lookups: [exact, semantic] x [hit, miss].
    answer_cache: [[AtomicU64; 2]; 2],
    /// Chunks whose embedding was computed, and reused from the embedding cache.
    chunks_embedded: AtomicU64,
    chunks_reused: AtomicU64,
    documents_indexed: AtomicU64,
    chunks_indexed: AtomicU64,
    /// Embedding calls of ingestion (one per batch of chunks not in the cache).
    ingest_embedding: Mutex<Histogram>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.requests.lock().unwrap();
        m.entry((method.to_string(), route.to_string(), status))
            .or_default()
            .observe(seconds);
    }

    /// An answer cache lookup of `kind` (`exact` or `semantic`) found an answer or not.
    pub fn answer_cache(&self, kind: &str, hit: bool) {
        let k = usize::from(kind == "semantic");
        self.answer_cache[k][usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    /// Chunks of one ingestion batch: sent to the embedder, and found in the embedding cache.
    pub fn embedding_cache(&self, embedded: u64, reused: u64) {
        self.chunks_embedded.fetch_add(embedded, Ordering::Relaxed);
        self.chunks_reused.fetch_add(reused, Ordering::Relaxed);
    }

    /// One ingestion embedding call took `seconds`.
    pub fn ingest_embedding(&self, seconds: f64) {
        self.ingest_embedding.lock().unwrap().observe(seconds);
    }

    /// A document version went live with `chunks` chunks.
    pub fn indexed(&self, chunks: u64) {
        self.documents_indexed.fetch_add(1, Ordering::Relaxed);
        self.chunks_indexed.fetch_add(chunks, Ordering::Relaxed);
    }

    fn render_counters(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, i) in [
            (
                "kb_answer_cache_hits_total",
                "Answer cache lookups that found an answer, by kind.",
                0,
            ),
            (
                "kb_answer_cache_misses_total",
                "Answer cache lookups that found none, by kind (semantic: only when switched on).",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, kind) in ["exact", "semantic"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{kind}\"}} {}",
                    get(&self.answer_cache[k][i])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP kb_embedding_cache_chunks_total Chunks being indexed: embedded, or reused from the embedding cache.\n\
             # TYPE kb_embedding_cache_chunks_total counter\n\
             kb_embedding_cache_chunks_total{{result=\"embedded\"}} {}\n\
             kb_embedding_cache_chunks_total{{result=\"reused\"}} {}",
            get(&self.chunks_embedded),
            get(&self.chunks_reused)
        );
        let _ = writeln!(
            out,
            "# HELP kb_ingest_documents_total Document versions indexed (gone live).\n\
             # TYPE kb_ingest_documents_total counter\n\
             kb_ingest_documents_total {}\n\
             # HELP kb_ingest_chunks_total Chunks of the document versions indexed.\n\
             # TYPE kb_ingest_chunks_total counter\n\
             kb_ingest_chunks_total {}",
            get(&self.documents_indexed),
            get(&self.chunks_indexed)
        );
        let h = self.ingest_embedding.lock().unwrap();
        let name = "kb_ingest_embedding_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Ingestion embedding calls (one per batch of chunks not in the cache).\n\
             # TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_counters(&mut out);
        let m = self.requests.lock().unwrap();
        out.push_str("# HELP kb_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE kb_http_requests_total counter\n");
        for ((method, route, status), h) in m.iter() {
            out.push_str(&format!(
                "kb_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}\n",
                h.count
            ));
        }
        out.push_str("# HELP kb_http_request_duration_seconds HTTP request latency (to the end of headers for streams).\n");
        out.push_str("# TYPE kb_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "kb_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}\n",
                    h.counts[i]
                ));
            }
            out.push_str(&format!(
                "kb_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n",
                h.count
            ));
            out.push_str(&format!(
                "kb_http_request_duration_seconds_sum{{{labels}}} {}\n",
                h.sum
            ));
            out.push_str(&format!(
                "kb_http_request_duration_seconds_count{{{labels}}} {}\n",
                h.count
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let m = Metrics::default();
        m.observe("GET", "/healthz", 200, 0.003);
        m.observe("GET", "/healthz", 200, 0.2);
        let t = m.render();
        assert!(t.contains(
            "kb_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
        ));
        assert!(t.contains("status=\"200\",le=\"0.005\"} 1"));
        assert!(t.contains("status=\"200\",le=\"0.25\"} 2"));
    }

    #[test]
    fn counts_caches_and_ingestion() {
        let m = Metrics::default();
        m.answer_cache("exact", false);
        m.answer_cache("exact", true);
        m.answer_cache("exact", true);
        m.answer_cache("semantic", false);
        m.embedding_cache(3, 5);
        m.embedding_cache(1, 0);
        m.indexed(8);
        m.ingest_embedding(0.2);
        let t = m.render();
        for line in [
            "kb_answer_cache_hits_total{kind=\"exact\"} 2",
            "kb_answer_cache_misses_total{kind=\"exact\"} 1",
            "kb_answer_cache_hits_total{kind=\"semantic\"} 0",
            "kb_answer_cache_misses_total{kind=\"semantic\"} 1",
            "kb_embedding_cache_chunks_total{result=\"embedded\"} 4",
            "kb_embedding_cache_chunks_total{result=\"reused\"} 5",
            "kb_ingest_documents_total 1",
            "kb_ingest_chunks_total 8",
            "kb_ingest_embedding_seconds_bucket{le=\"0.1\"} 0",
            "kb_ingest_embedding_seconds_bucket{le=\"0.25\"} 1",
            "kb_ingest_embedding_seconds_count 1",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in\n{t}");
        }
    }
}
