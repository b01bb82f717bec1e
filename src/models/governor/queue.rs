//! One upstream: bounded concurrency and a bounded wait queue where interactive calls are
//! always served before bulk ones, admitted through the rate-limit buckets. A [`Permit`] is a
//! slot, held for the whole call.

use super::breaker::Breaker;
use super::buckets::{BucketStore, Limits};
use super::metrics::Stats;
use super::policy::Policy;
use crate::models::{ModelError, Priority, Result};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(super) struct Waiter {
    tx: oneshot::Sender<Permit>,
    tokens: u64,
}

pub(super) struct State {
    pub(super) in_flight: usize,
    /// [interactive, bulk]
    pub(super) waiting: [VecDeque<Waiter>; 2],
    pub(super) breaker: Breaker,
    /// The upstream said `Retry-After`: nobody is sent before then.
    paused_until: Option<Instant>,
    timer_armed: bool,
    /// Moving average of call latency, for the Retry-After of a refusal.
    pub(super) latency_ewma: f64,
}

pub struct Upstream {
    /// `kind:model`, e.g. `chat:gpt-4o-mini` (metrics label, bucket key, log field).
    pub name: String,
    pub model: String,
    pub policy: Policy,
    pub(super) limits: Limits,
    pub(super) buckets: Arc<dyn BucketStore>,
    pub(super) state: Mutex<State>,
    pub(super) stats: Mutex<Stats>,
}

fn pidx(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Bulk => 1,
    }
}

/// A slot to call the upstream: held for the whole call (a chat stream holds it until it ends).
/// Dropping it frees the slot and lets the next waiter in.
pub struct Permit {
    up: Arc<Upstream>,
    /// Tokens taken from the bucket, settled with the reported usage.
    reserved: u64,
    pub(super) probe: bool,
    armed: bool,
}

impl Permit {
    /// Settle the token bucket with the usage the upstream reported.
    pub fn settle(&mut self, actual_tokens: u64) {
        let l = &self.up.limits;
        if l.tpm > 0 {
            let diff = self.reserved as i64 - actual_tokens as i64;
            self.up
                .buckets
                .give_back(&self.up.name, l.rpm, l.tpm, 0, diff, Instant::now());
        }
        self.reserved = actual_tokens;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.up.state.lock().unwrap();
        st.in_flight -= 1;
        if self.probe {
            if let Breaker::HalfOpen { probing: true } = st.breaker {
                // The probe went away without a verdict: the next call probes.
                st.breaker = Breaker::HalfOpen { probing: false };
            }
        }
        self.up.dispatch(&mut st);
    }
}

impl Upstream {
    pub fn new(
        name: String,
        model: String,
        policy: Policy,
        limits: Limits,
        buckets: Arc<dyn BucketStore>,
    ) -> Arc<Upstream> {
        Arc::new(Upstream {
            name,
            model,
            policy,
            limits,
            buckets,
            state: Mutex::new(State {
                in_flight: 0,
                waiting: [VecDeque::new(), VecDeque::new()],
                breaker: Breaker::Closed { failures: 0 },
                paused_until: None,
                timer_armed: false,
                latency_ewma: 1.0,
            }),
            stats: Mutex::new(Stats::default()),
        })
    }

    fn permit(self: &Arc<Self>, tokens: u64) -> Permit {
        Permit {
            up: self.clone(),
            reserved: tokens,
            probe: false,
            armed: true,
        }
    }

    /// Hand free slots to waiters, interactive first. Called with the state locked.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        let now = Instant::now();
        while st.in_flight < self.limits.max_concurrency {
            let q = if !st.waiting[0].is_empty() { 0 } else { 1 };
            let Some(head) = st.waiting[q].front() else {
                return;
            };
            if head.tx.is_closed() {
                st.waiting[q].pop_front();
                continue;
            }
            if let Some(t) = st.paused_until.filter(|t| *t > now) {
                self.arm_timer(st, t - now);
                return;
            }
            let l = &self.limits;
            if let Err(wait) = self
                .buckets
                .try_take(&self.name, l.rpm, l.tpm, head.tokens, now)
            {
                self.arm_timer(st, wait);
                return;
            }
            let w = st.waiting[q].pop_front().unwrap();
            st.in_flight += 1;
            if let Err(mut p) = w.tx.send(self.permit(w.tokens)) {
                // The waiter left between the check and now: undo without re-entering.
                p.armed = false;
                st.in_flight -= 1;
                self.buckets
                    .give_back(&self.name, l.rpm, l.tpm, 1, w.tokens as i64, now);
            }
        }
    }

    fn arm_timer(self: &Arc<Self>, st: &mut State, wait: Duration) {
        if st.timer_armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.timer_armed = true;
        let up = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            let mut st = up.state.lock().unwrap();
            st.timer_armed = false;
            up.dispatch(&mut st);
        });
    }

    fn overloaded(&self, st: &State) -> ModelError {
        let waiting = (st.waiting[0].len() + st.waiting[1].len()) as f64;
        let est = st.latency_ewma * (waiting + 1.0) / self.limits.max_concurrency as f64;
        ModelError::Overloaded {
            upstream: self.name.clone(),
            retry_after_secs: est.clamp(1.0, 60.0).ceil(),
        }
    }

    /// Wait for a slot. `retry`: an admitted call coming back for another attempt, which goes
    /// to the front of its queue and is never refused for a full queue.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        tokens: u64,
        retry: bool,
    ) -> Result<Permit> {
        let q = pidx(priority);
        let rx = {
            let mut st = self.state.lock().unwrap();
            let now = Instant::now();
            let ahead = if q == 0 {
                st.waiting[0].is_empty()
            } else {
                st.waiting[0].is_empty() && st.waiting[1].is_empty()
            };
            let paused = st.paused_until.is_some_and(|t| t > now);
            if ahead && !paused && st.in_flight < self.limits.max_concurrency {
                let l = &self.limits;
                if self
                    .buckets
                    .try_take(&self.name, l.rpm, l.tpm, tokens, now)
                    .is_ok()
                {
                    st.in_flight += 1;
                    return Ok(self.permit(tokens));
                }
            }
            if !retry && st.waiting[q].len() >= self.limits.queue_size {
                st.waiting[q].retain(|w| !w.tx.is_closed());
                if st.waiting[q].len() >= self.limits.queue_size && q == 0 {
                    return Err(self.overloaded(&st));
                }
            }
            let (tx, rx) = oneshot::channel();
            let w = Waiter { tx, tokens };
            if retry {
                st.waiting[q].push_front(w);
            } else {
                st.waiting[q].push_back(w);
            }
            self.dispatch(&mut st);
            rx
        };
        if priority == Priority::Interactive {
            match tokio::time::timeout(self.limits.queue_timeout, rx).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(ModelError::Closed),
                Err(_) => Err(self.overloaded(&self.state.lock().unwrap())),
            }
        } else {
            rx.await.map_err(|_| ModelError::Closed)
        }
    }

    pub(super) fn pause(self: &Arc<Self>, wait: Duration) {
        let mut st = self.state.lock().unwrap();
        let until = Instant::now() + wait;
        if st.paused_until.is_none_or(|t| t < until) {
            st.paused_until = Some(until);
        }
    }
}

/// The breaker's part of an attempt.
impl Upstream {
    /// Pass the breaker for an attempt holding `permit`.
    pub(super) fn admit(&self, permit: &mut Permit) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        match st.breaker.admit(Instant::now()) {
            Ok(probe) => {
                permit.probe = probe;
                Ok(())
            }
            Err(wait) => Err(ModelError::CircuitOpen {
                upstream: self.name.clone(),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0),
            }),
        }
    }

    /// Record an attempt's or a stream's result with the breaker.
    pub(super) fn record(&self, err: Option<&ModelError>) {
        let failure = err.is_some_and(ModelError::breaker_failure);
        if err.is_some() && !failure {
            // A refusal (4xx, 429, overloaded here) says nothing about the upstream's health.
            if let Some(ModelError::RateLimited { .. }) = err {
                return;
            }
        }
        let mut st = self.state.lock().unwrap();
        let before = st.breaker.gauge();
        st.breaker.record(
            failure,
            self.limits.breaker_failures,
            self.limits.breaker_cooldown,
            Instant::now(),
        );
        if before != 2 && st.breaker.gauge() == 2 {
            tracing::warn!(upstream = %self.name, cooldown_s = self.limits.breaker_cooldown.as_secs_f64(), "circuit breaker open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_limits as limits, Governor};
    use super::*;

    #[tokio::test]
    async fn interactive_waiters_go_first_and_a_full_queue_refuses() {
        let g = Governor::new(Policy::default());
        let up = g.upstream("embed", "m", limits(1, 2));
        let held = up.acquire(Priority::Bulk, 0, false).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, p) in [
            Priority::Bulk,
            Priority::Bulk,
            Priority::Interactive,
            Priority::Interactive,
        ]
        .into_iter()
        .enumerate()
        {
            let up = up.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _p = up.acquire(p, 0, false).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Both queues are full now (2 each): the next interactive call is refused at once.
        let e = up
            .acquire(Priority::Interactive, 0, false)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ModelError::Overloaded { .. }), "{e}");
        assert!(e.retry_after_secs().unwrap() >= 1);
        assert!(g
            .render()
            .contains("kb_model_queue_depth{upstream=\"embed:m\",priority=\"interactive\"} 2"));
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 3, 0, 1]);
    }

    #[tokio::test]
    async fn rate_limits_delay_calls() {
        let g = Governor::new(Policy::default());
        let up = g.upstream(
            "embed",
            "m",
            Limits {
                tpm: 600,
                ..limits(4, 4)
            },
        );
        let t = Instant::now();
        let _a = up.acquire(Priority::Bulk, 600, false).await.unwrap();
        let _b = up.acquire(Priority::Bulk, 5, false).await.unwrap();
        // 600 tpm = 10 tokens/s: 5 tokens take about half a second to come back.
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
}
