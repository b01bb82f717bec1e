//! The governor's metrics: per-upstream counters and latency histograms, written by
//! prometheus-client's encoder in the Prometheus text format (version 0.0.4).
//!
//! Counters are plain numbers under the upstream's stats lock; a scrape takes a snapshot of
//! every upstream and hands it to the encoder as a [`Collector`], so the series come out in a
//! stable order (upstreams as created, outcomes and kinds sorted).

use super::Governor;
use crate::models::ModelError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

/// Seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

pub(super) struct Stats {
    pub(super) calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    pub(super) retries: u64,
    pub(super) tokens_in: u64,
    pub(super) tokens_out: u64,
    pub(super) duration: Histogram,
    /// Made by the first first token: an upstream without one (embeddings) shows no series.
    ttft: Option<Histogram>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            calls: BTreeMap::new(),
            errors: BTreeMap::new(),
            retries: 0,
            tokens_in: 0,
            tokens_out: 0,
            duration: histogram(),
            ttft: None,
        }
    }
}

impl Stats {
    pub(super) fn error(&mut self, e: &ModelError) {
        *self.errors.entry(e.kind()).or_default() += 1;
    }

    pub(super) fn first_token(&mut self, seconds: f64) {
        self.ttft.get_or_insert_with(histogram).observe(seconds);
    }
}

/// One upstream at the time of a scrape.
#[derive(Debug)]
struct UpstreamSnap {
    name: String,
    in_flight: usize,
    /// [interactive, bulk]
    waiting: [usize; 2],
    breaker: u8,
    calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    retries: u64,
    tokens_in: u64,
    tokens_out: u64,
    duration: Histogram,
    ttft: Option<Histogram>,
}

#[derive(Debug)]
struct Snapshot {
    upstreams: Vec<UpstreamSnap>,
    /// Of a shared bucket store only.
    redis_fallbacks: Option<u64>,
}

/// One metric family: `# HELP`, `# TYPE`, then a sample (or a histogram) per label set. A
/// counter's `name` goes without `_total`: the encoder appends it.
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The label set of an upstream's own series.
fn up(u: &UpstreamSnap) -> [(&'static str, &str); 1] {
    [("upstream", u.name.as_str())]
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let ups = &self.upstreams;
        family(
            &mut enc,
            "kb_model_calls",
            "Model calls by upstream and outcome (ok or an error code).",
            MetricType::Counter,
            ups.iter().flat_map(|u| {
                u.calls.iter().map(|(outcome, c)| {
                    (
                        [("upstream", u.name.as_str()), ("outcome", *outcome)],
                        ConstCounter::new(*c),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "kb_model_call_duration_seconds",
            "Model call latency, queueing and retries included (to the end of a stream).",
            MetricType::Histogram,
            ups.iter().map(|u| (up(u), u.duration.clone())),
        )?;
        family(
            &mut enc,
            "kb_model_time_to_first_token_seconds",
            "Time from the start of a chat call to its first token, as the caller sees it.",
            MetricType::Histogram,
            ups.iter().filter_map(|u| Some((up(u), u.ttft.clone()?))),
        )?;
        family(
            &mut enc,
            "kb_model_tokens",
            "Tokens sent (in) and generated (out), as reported by the upstream or estimated.",
            MetricType::Counter,
            ups.iter().flat_map(|u| {
                [("in", u.tokens_in), ("out", u.tokens_out)].map(|(direction, n)| {
                    (
                        [("upstream", u.name.as_str()), ("direction", direction)],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "kb_model_retries",
            "Retried attempts.",
            MetricType::Counter,
            ups.iter().map(|u| (up(u), ConstCounter::new(u.retries))),
        )?;
        family(
            &mut enc,
            "kb_model_upstream_errors",
            "Failed attempts and refusals by kind.",
            MetricType::Counter,
            ups.iter().flat_map(|u| {
                u.errors.iter().map(|(kind, c)| {
                    (
                        [("upstream", u.name.as_str()), ("kind", *kind)],
                        ConstCounter::new(*c),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "kb_model_queue_depth",
            "Calls waiting for a slot, by priority.",
            MetricType::Gauge,
            ups.iter().flat_map(|u| {
                [("interactive", u.waiting[0]), ("bulk", u.waiting[1])].map(|(priority, n)| {
                    (
                        [("upstream", u.name.as_str()), ("priority", priority)],
                        ConstGauge::new(n as i64),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "kb_model_in_flight",
            "Calls holding a slot.",
            MetricType::Gauge,
            ups.iter()
                .map(|u| (up(u), ConstGauge::new(u.in_flight as i64))),
        )?;
        family(
            &mut enc,
            "kb_model_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            MetricType::Gauge,
            ups.iter()
                .map(|u| (up(u), ConstGauge::new(i64::from(u.breaker)))),
        )?;
        if let Some(n) = self.redis_fallbacks {
            let m = enc.encode_descriptor(
                "kb_rate_limit_redis_fallbacks",
                "Rate-limit decisions made by the local buckets because Redis could not be reached.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}

impl Governor {
    fn snapshot(&self) -> Snapshot {
        let ups = self.upstreams.lock().unwrap().clone();
        let upstreams = ups
            .iter()
            .map(|u| {
                let st = u.state.lock().unwrap();
                let s = u.stats.lock().unwrap();
                UpstreamSnap {
                    name: u.name.clone(),
                    in_flight: st.in_flight,
                    waiting: [st.waiting[0].len(), st.waiting[1].len()],
                    breaker: st.breaker.gauge(),
                    calls: s.calls.clone(),
                    errors: s.errors.clone(),
                    retries: s.retries,
                    tokens_in: s.tokens_in,
                    tokens_out: s.tokens_out,
                    duration: s.duration.clone(),
                    ttft: s.ttft.clone(),
                }
            })
            .collect();
        Snapshot {
            upstreams,
            redis_fallbacks: self.buckets.fallbacks(),
        }
    }

    /// Prometheus text (version 0.0.4) for every upstream.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        crate::metrics::encode(&registry)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_limits, Policy};
    use super::*;
    use crate::metrics::assert_valid_exposition;

    #[test]
    fn every_family_once_and_model_names_escaped() {
        let g = Governor::new(Policy::default());
        let up = g.upstream("chat", "we\"ird\\model\nname", test_limits(2, 2));
        g.upstream("embed", "m", test_limits(2, 2));
        let mut call = super::super::Call::new(up.clone(), crate::models::Priority::Bulk, 5);
        call.first_token();
        call.succeed(Some((5, 2)));
        let t = g.render();
        assert_valid_exposition(&t);
        for line in [
            r#"kb_model_in_flight{upstream="chat:we\"ird\\model\nname"} 0"#,
            r#"kb_model_calls_total{upstream="chat:we\"ird\\model\nname",outcome="ok"} 1"#,
            r#"kb_model_tokens_total{upstream="chat:we\"ird\\model\nname",direction="out"} 2"#,
            r#"kb_model_time_to_first_token_seconds_count{upstream="chat:we\"ird\\model\nname"} 1"#,
            r#"kb_model_call_duration_seconds_bucket{upstream="embed:m",le="+Inf"} 0"#,
            r#"kb_model_queue_depth{upstream="embed:m",priority="bulk"} 0"#,
            "# HELP kb_model_breaker_state Circuit breaker: 0 closed, 1 half-open, 2 open.",
            "# TYPE kb_model_calls_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in\n{t}");
        }
        // The embedding upstream had no first token: no series of its own.
        assert!(!t.contains("kb_model_time_to_first_token_seconds_count{upstream=\"embed:m\"}"));
        // Local buckets: no Redis fallback counter.
        assert!(!t.contains("kb_rate_limit_redis_fallbacks"));
        // What /metrics serves: both blocks, one exposition.
        assert_valid_exposition(&(crate::metrics::Metrics::default().render() + &t));
    }
}
