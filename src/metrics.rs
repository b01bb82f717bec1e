//! Prometheus metrics: request counts and latency per route and status, the answer and
//! embedding caches, ingestion throughput. (Model calls are counted by the governor.)
//!
//! The series live in prometheus-client metrics and are written by its encoder in the
//! Prometheus text format, version 0.0.4 (so label values are escaped as the format requires).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// The labels of an HTTP request's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: String,
    route: String,
    status: u16,
}

type Kind = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    request_duration: Family<Request, Histogram, fn() -> Histogram>,
    /// Answer cache lookups: [exact, semantic] x [hit, miss].
    answer_cache: [[Counter; 2]; 2],
    /// Chunks whose embedding was computed, and reused from the embedding cache.
    chunks_embedded: Counter,
    chunks_reused: Counter,
    documents_indexed: Counter,
    chunks_indexed: Counter,
    /// Embedding calls of ingestion (one per batch of chunks not in the cache).
    ingest_embedding: Histogram,
    /// Open HTTP connections, and those closed to make room or refused at the cap.
    connections_open: Gauge,
    connections_evicted: Counter,
    connections_refused: Counter,
}

/// `help` without its final full stop: the registry adds one.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let hits = Family::<Kind, Counter>::default();
        let misses = Family::<Kind, Counter>::default();
        let kinds: [Kind; 2] = [[("kind", "exact")], [("kind", "semantic")]];
        // Both kinds are shown from the start, at zero.
        let answer_cache =
            kinds.map(|k| [hits.get_or_create_owned(&k), misses.get_or_create_owned(&k)]);
        // Names of counters go without `_total`: the encoder appends it.
        registry.register(
            "kb_answer_cache_hits",
            help("Answer cache lookups that found an answer, by kind."),
            hits,
        );
        registry.register(
            "kb_answer_cache_misses",
            help(
                "Answer cache lookups that found none, by kind (semantic: only when switched on).",
            ),
            misses,
        );
        let chunks = Family::<Kind, Counter>::default();
        let chunks_embedded = chunks.get_or_create_owned(&[("result", "embedded")]);
        let chunks_reused = chunks.get_or_create_owned(&[("result", "reused")]);
        registry.register(
            "kb_embedding_cache_chunks",
            help("Chunks being indexed: embedded, or reused from the embedding cache."),
            chunks,
        );
        let documents_indexed = Counter::default();
        registry.register(
            "kb_ingest_documents",
            help("Document versions indexed (gone live)."),
            documents_indexed.clone(),
        );
        let chunks_indexed = Counter::default();
        registry.register(
            "kb_ingest_chunks",
            help("Chunks of the document versions indexed."),
            chunks_indexed.clone(),
        );
        let ingest_embedding = histogram();
        registry.register(
            "kb_ingest_embedding_seconds",
            help("Ingestion embedding calls (one per batch of chunks not in the cache)."),
            ingest_embedding.clone(),
        );
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "kb_http_requests",
            help("HTTP requests by route and status."),
            requests.clone(),
        );
        let request_duration =
            Family::<Request, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "kb_http_request_duration_seconds",
            help("HTTP request latency (to the end of headers for streams)."),
            request_duration.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "kb_http_connections_open",
            help("Open HTTP connections."),
            connections_open.clone(),
        );
        let closed = Family::<Kind, Counter>::default();
        let connections_evicted = closed.get_or_create_owned(&[("reason", "evicted")]);
        let connections_refused = closed.get_or_create_owned(&[("reason", "refused")]);
        registry.register(
            "kb_http_connections_shed",
            help("Connections closed at the cap: an idle one to make room (evicted), or a new one when all were busy (refused)."),
            closed,
        );
        Metrics {
            registry,
            connections_open,
            connections_evicted,
            connections_refused,
            requests,
            request_duration,
            answer_cache,
            chunks_embedded,
            chunks_reused,
            documents_indexed,
            chunks_indexed,
            ingest_embedding,
        }
    }
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = Request {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// An answer cache lookup of `kind` (`exact` or `semantic`) found an answer or not.
    pub fn answer_cache(&self, kind: &str, hit: bool) {
        let k = usize::from(kind == "semantic");
        self.answer_cache[k][usize::from(!hit)].inc();
    }

    /// Chunks of one ingestion batch: sent to the embedder, and found in the embedding cache.
    pub fn embedding_cache(&self, embedded: u64, reused: u64) {
        self.chunks_embedded.inc_by(embedded);
        self.chunks_reused.inc_by(reused);
    }

    /// One ingestion embedding call took `seconds`.
    pub fn ingest_embedding(&self, seconds: f64) {
        self.ingest_embedding.observe(seconds);
    }

    /// A document version went live with `chunks` chunks.
    pub fn indexed(&self, chunks: u64) {
        self.documents_indexed.inc();
        self.chunks_indexed.inc_by(chunks);
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// `registry` in the Prometheus text format (version 0.0.4).
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing metrics into a String does not fail");
    out
}

/// Panics unless `text` is valid Prometheus text exposition (version 0.0.4): comments, and
/// samples `name{label="value",...} number` with label values escaped, each `# TYPE` once.
#[cfg(test)]
pub(crate) fn assert_valid_exposition(text: &str) {
    let name_ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(name_ok(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        assert!(name_ok(&line[..end]), "{line}");
        let mut rest = &line[end..];
        if let Some(labels) = rest.strip_prefix('{') {
            let mut s = labels;
            loop {
                let (key, after) = s.split_once("=\"").expect(line);
                assert!(name_ok(key), "label {key} in {line}");
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().expect(line) {
                        (_, '\\') => {
                            let (_, c) = chars.next().expect(line);
                            assert!(matches!(c, '\\' | '"' | 'n'), "escape \\{c} in {line}");
                        }
                        (i, '"') => break i,
                        (_, '\n') => panic!("raw newline in {line}"),
                        _ => {}
                    }
                };
                s = &after[close + 1..];
                if let Some(more) = s.strip_prefix(',') {
                    s = more;
                } else {
                    rest = s.strip_prefix('}').expect(line);
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect(line);
        let value = value.split(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value {value} in {line}"
        );
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
        assert!(t.contains("# TYPE kb_http_request_duration_seconds histogram\n"));
        assert!(t.contains(
            "# HELP kb_http_requests_total HTTP requests by route and status.\n\
             # TYPE kb_http_requests_total counter\n"
        ));
        assert_valid_exposition(&t);
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
            "# HELP kb_ingest_embedding_seconds Ingestion embedding calls (one per batch of chunks not in the cache).",
            "# TYPE kb_ingest_embedding_seconds histogram",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in\n{t}");
        }
        assert_valid_exposition(&t);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.observe("GET", "/a\"b\\c\nd", 404, 0.01);
        let t = m.render();
        assert!(
            t.contains(
                r#"kb_http_requests_total{method="GET",route="/a\"b\\c\nd",status="404"} 1"#
            ),
            "{t}"
        );
        assert_valid_exposition(&t);
        // The checker itself refuses what the hand-written renderer used to write.
        let raw = "kb_x_total{route=\"/a\"b\\c\nd\"} 1\n";
        assert!(std::panic::catch_unwind(|| assert_valid_exposition(raw)).is_err());
    }
}
