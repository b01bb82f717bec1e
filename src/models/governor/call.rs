//! Per-call accounting: every model call is logged once when it ends (model, outcome,
//! latency, retries, tokens; never prompt text) and counted in the upstream's metrics.

use super::queue::Upstream;
use crate::models::{ModelError, Priority};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One model call's record: logged exactly once, when it ends (or is dropped: `cancelled`).
pub struct Call {
    up: Arc<Upstream>,
    priority: Priority,
    started: Instant,
    pub retries: u32,
    est_tokens: u64,
    ttft: Option<Duration>,
    done: bool,
}

impl Call {
    pub(super) fn new(up: Arc<Upstream>, priority: Priority, est_tokens: u64) -> Call {
        Call {
            up,
            priority,
            started: Instant::now(),
            retries: 0,
            est_tokens,
            ttft: None,
            done: false,
        }
    }

    pub(super) fn attempt_latency(&self, d: Duration) {
        let mut st = self.up.state.lock().unwrap();
        st.latency_ewma = 0.8 * st.latency_ewma + 0.2 * d.as_secs_f64();
    }

    /// The first token reached the caller now.
    pub fn first_token(&mut self) {
        if self.ttft.is_none() {
            let d = self.started.elapsed();
            self.ttft = Some(d);
            self.up.stats.lock().unwrap().first_token(d.as_secs_f64());
        }
    }

    /// The call ended without error; `usage`: (in, out) tokens as reported, else estimated.
    pub fn succeed(mut self, usage: Option<(u64, u64)>) {
        let (tin, tout) = usage.unwrap_or((self.est_tokens, 0));
        self.finish("ok", None, tin, tout);
    }

    /// The call failed (before or after its first token): logs it and returns the error.
    pub fn fail(mut self, e: ModelError) -> ModelError {
        if matches!(
            e,
            ModelError::Overloaded { .. } | ModelError::CircuitOpen { .. }
        ) {
            // Refused here, never sent: counted as an error of its kind, with no tokens.
            self.up.stats.lock().unwrap().error(&e);
        }
        self.finish(e.code(), Some(&e), 0, 0);
        e
    }

    /// A failure after the first token (mid-stream): counts with the breaker too.
    pub fn fail_streaming(self, e: ModelError, usage: Option<(u64, u64)>) -> ModelError {
        self.up.record(Some(&e));
        self.up.stats.lock().unwrap().error(&e);
        let mut this = self;
        let (tin, tout) = usage.unwrap_or((this.est_tokens, 0));
        this.finish(e.code(), Some(&e), tin, tout);
        e
    }

    fn finish(&mut self, outcome: &'static str, err: Option<&ModelError>, tin: u64, tout: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let latency = self.started.elapsed();
        {
            let mut s = self.up.stats.lock().unwrap();
            *s.calls.entry(outcome).or_default() += 1;
            s.tokens_in += tin;
            s.tokens_out += tout;
            s.duration.observe(latency.as_secs_f64());
        }
        let priority = match self.priority {
            Priority::Interactive => "interactive",
            Priority::Bulk => "bulk",
        };
        let ttft_ms = self.ttft.map(|d| d.as_millis() as u64);
        let latency_ms = latency.as_millis() as u64;
        match err {
            None => tracing::info!(
                upstream = %self.up.name, model = %self.up.model, priority, outcome,
                latency_ms, ttft_ms, retries = self.retries, tokens_in = tin, tokens_out = tout,
                "model call"
            ),
            Some(e) => tracing::warn!(
                upstream = %self.up.name, model = %self.up.model, priority, outcome,
                latency_ms, ttft_ms, retries = self.retries, tokens_in = tin, tokens_out = tout,
                error = %e, "model call"
            ),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("cancelled", None, self.est_tokens, 0);
    }
}
