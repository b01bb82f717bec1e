//! The governor's metrics: per-upstream counters and latency histograms, and their Prometheus
//! text.

use super::Governor;
use crate::models::ModelError;
use std::collections::BTreeMap;

/// Seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
pub(super) struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    pub(super) fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    pub(super) retries: u64,
    pub(super) tokens_in: u64,
    pub(super) tokens_out: u64,
    pub(super) duration: Hist,
    pub(super) ttft: Hist,
}

impl Stats {
    pub(super) fn error(&mut self, e: &ModelError) {
        *self.errors.entry(e.kind()).or_default() += 1;
    }
}

impl Governor {
    /// Prometheus text for every upstream.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let ups = self.upstreams.lock().unwrap().clone();
        let mut out = String::new();
        let mut section = |name: &str, kind: &str, help: &str, body: &dyn Fn(&mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            body(&mut out);
        };
        let snap: Vec<(String, StateSnap, StatsSnap)> = ups
            .iter()
            .map(|u| {
                let st = u.state.lock().unwrap();
                let s = u.stats.lock().unwrap();
                (
                    u.name.clone(),
                    StateSnap {
                        in_flight: st.in_flight,
                        interactive: st.waiting[0].len(),
                        bulk: st.waiting[1].len(),
                        breaker: st.breaker.gauge(),
                    },
                    StatsSnap {
                        calls: s.calls.clone(),
                        errors: s.errors.clone(),
                        retries: s.retries,
                        tokens_in: s.tokens_in,
                        tokens_out: s.tokens_out,
                        duration: s.duration.clone(),
                        ttft: s.ttft.clone(),
                    },
                )
            })
            .collect();
        section(
            "kb_model_calls_total",
            "counter",
            "Model calls by upstream and outcome (ok or an error code).",
            &|o| {
                for (n, _, s) in &snap {
                    for (outcome, c) in &s.calls {
                        let _ = writeln!(
                            o,
                            "kb_model_calls_total{{upstream=\"{n}\",outcome=\"{outcome}\"}} {c}"
                        );
                    }
                }
            },
        );
        section(
            "kb_model_call_duration_seconds",
            "histogram",
            "Model call latency, queueing and retries included (to the end of a stream).",
            &|o| {
                for (n, _, s) in &snap {
                    s.duration.render(
                        o,
                        "kb_model_call_duration_seconds",
                        &format!("upstream=\"{n}\""),
                    );
                }
            },
        );
        section(
            "kb_model_time_to_first_token_seconds",
            "histogram",
            "Time from the start of a chat call to its first token, as the caller sees it.",
            &|o| {
                for (n, _, s) in &snap {
                    if s.ttft.count > 0 {
                        s.ttft.render(
                            o,
                            "kb_model_time_to_first_token_seconds",
                            &format!("upstream=\"{n}\""),
                        );
                    }
                }
            },
        );
        section(
            "kb_model_tokens_total",
            "counter",
            "Tokens sent (in) and generated (out), as reported by the upstream or estimated.",
            &|o| {
                for (n, _, s) in &snap {
                    let _ = writeln!(
                        o,
                        "kb_model_tokens_total{{upstream=\"{n}\",direction=\"in\"}} {}",
                        s.tokens_in
                    );
                    let _ = writeln!(
                        o,
                        "kb_model_tokens_total{{upstream=\"{n}\",direction=\"out\"}} {}",
                        s.tokens_out
                    );
                }
            },
        );
        section(
            "kb_model_retries_total",
            "counter",
            "Retried attempts.",
            &|o| {
                for (n, _, s) in &snap {
                    let _ = writeln!(
                        o,
                        "kb_model_retries_total{{upstream=\"{n}\"}} {}",
                        s.retries
                    );
                }
            },
        );
        section(
            "kb_model_upstream_errors_total",
            "counter",
            "Failed attempts and refusals by kind.",
            &|o| {
                for (n, _, s) in &snap {
                    for (kind, c) in &s.errors {
                        let _ = writeln!(
                            o,
                            "kb_model_upstream_errors_total{{upstream=\"{n}\",kind=\"{kind}\"}} {c}"
                        );
                    }
                }
            },
        );
        section(
            "kb_model_queue_depth",
            "gauge",
            "Calls waiting for a slot, by priority.",
            &|o| {
                for (n, st, _) in &snap {
                    let _ = writeln!(
                        o,
                        "kb_model_queue_depth{{upstream=\"{n}\",priority=\"interactive\"}} {}",
                        st.interactive
                    );
                    let _ = writeln!(
                        o,
                        "kb_model_queue_depth{{upstream=\"{n}\",priority=\"bulk\"}} {}",
                        st.bulk
                    );
                }
            },
        );
        section(
            "kb_model_in_flight",
            "gauge",
            "Calls holding a slot.",
            &|o| {
                for (n, st, _) in &snap {
                    let _ = writeln!(o, "kb_model_in_flight{{upstream=\"{n}\"}} {}", st.in_flight);
                }
            },
        );
        section(
            "kb_model_breaker_state",
            "gauge",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            &|o| {
                for (n, st, _) in &snap {
                    let _ = writeln!(
                        o,
                        "kb_model_breaker_state{{upstream=\"{n}\"}} {}",
                        st.breaker
                    );
                }
            },
        );
        if let Some(n) = self.buckets.fallbacks() {
            section(
                "kb_rate_limit_redis_fallbacks_total",
                "counter",
                "Rate-limit decisions made by the local buckets because Redis could not be reached.",
                &|o| {
                    let _ = writeln!(o, "kb_rate_limit_redis_fallbacks_total {n}");
                },
            );
        }
        out
    }
}

struct StateSnap {
    in_flight: usize,
    interactive: usize,
    bulk: usize,
    breaker: u8,
}

struct StatsSnap {
    calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    retries: u64,
    tokens_in: u64,
    tokens_out: u64,
    duration: Hist,
    ttft: Hist,
}
