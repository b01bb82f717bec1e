//! Prometheus text-format metrics: request counts and latency per route and status.

use std::collections::BTreeMap;
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

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut m = self.requests.lock().unwrap();
        let h = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn render(&self) -> String {
        let m = self.requests.lock().unwrap();
        let mut out = String::new();
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
        assert!(t.contains("le=\"0.005\"} 1"));
        assert!(t.contains("le=\"0.25\"} 2"));
    }
}
