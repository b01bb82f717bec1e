//! The governor: the one path every remote model call takes (chat and embeddings, interactive
//! and bulk).
//!
//! Per upstream (provider + model): token buckets on requests and tokens per minute, bounded
//! concurrency, a bounded wait queue where interactive calls are always served before bulk ones,
//! a circuit breaker, and the single retry loop (exponential backoff with full jitter,
//! `Retry-After` honoured up to a cap). Every call is logged once (model, outcome, latency,
//! retries, tokens; never prompt text) and counted in the metrics.
//!
//! Rate-limit buckets live behind [`BucketStore`]; [`LocalBuckets`] keeps them in memory,
//! [`super::redis_buckets::RedisBuckets`] in Redis (shared by several kb replicas).

use super::{ModelError, Priority, Result};
use rand::Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Timeouts and the retry rules, shared by every upstream.
#[derive(Debug, Clone)]
pub struct Policy {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub retry_after_cap: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(20),
            total: Duration::from_secs(120),
            max_retries: 3,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
            retry_after_cap: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The ceiling of retry `attempt`'s backoff: min(cap, base * 2^attempt).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_cap)
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
    pub fn backoff_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ms = self.backoff_ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.random_range(0..=ms))
    }

    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, &mut rand::rng())
    }

    /// How long to wait before retry `attempt` (0-based) after `err`, or `Err` with the error to
    /// return now: not retryable, out of retries, or a `Retry-After` beyond the cap.
    pub fn wait_before_retry(
        &self,
        err: ModelError,
        attempt: u32,
    ) -> std::result::Result<Duration, ModelError> {
        if !err.retryable() || attempt >= self.max_retries {
            return Err(err);
        }
        if let ModelError::RateLimited {
            retry_after_secs: Some(s),
            ..
        } = err
        {
            let d = Duration::from_secs_f64(s.max(0.0));
            if d > self.retry_after_cap {
                return Err(ModelError::RateLimited {
                    retry_after_secs: Some(s),
                    cap_secs: Some(self.retry_after_cap.as_secs_f64()),
                });
            }
            return Ok(d);
        }
        Ok(self.backoff(attempt))
    }
}

/// Limits of one upstream.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per minute, 0 = unlimited.
    pub rpm: u32,
    /// Tokens per minute, 0 = unlimited.
    pub tpm: u32,
    /// Calls in flight at once.
    pub max_concurrency: usize,
    /// Calls waiting for a slot, per priority; an interactive call beyond this is refused
    /// (`Overloaded`, HTTP 429 with Retry-After).
    pub queue_size: usize,
    /// Longest an interactive call waits for a slot before it is refused.
    pub queue_timeout: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub breaker_cooldown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rpm: 0,
            tpm: 0,
            max_concurrency: 16,
            queue_size: 64,
            queue_timeout: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate-limit buckets

/// Where token buckets live. Admission decisions are made under the upstream's lock, so the
/// calls are synchronous and must be quick; a shared store (Redis) answers from a lease taken
/// from the server in the background, and asks to be polled again meanwhile (`Err(wait)`).
pub trait BucketStore: Send + Sync {
    /// Take one request and `tokens` tokens from `key`'s buckets, or say how long until they
    /// could be taken (nothing is taken then).
    fn try_take(
        &self,
        key: &str,
        rpm: u32,
        tpm: u32,
        tokens: u64,
        now: Instant,
    ) -> std::result::Result<(), Duration>;
    /// Correct an earlier take: `requests` and `tokens` are given back (negative: taken).
    fn give_back(&self, key: &str, rpm: u32, tpm: u32, requests: i64, tokens: i64, now: Instant);
    /// A shared store: how many times it fell back to local buckets because the server could
    /// not be reached (`None`: not a shared store).
    fn fallbacks(&self) -> Option<u64> {
        None
    }
}

/// A token bucket holding up to `per_minute`, refilled continuously. A take larger than the
/// whole bucket is let through once the bucket is full (it then goes into debt), so an
/// oversized request waits, but never forever.
#[derive(Debug, Clone)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, per_minute: u32, now: Instant) {
        let cap = per_minute as f64;
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * cap / 60.0).min(cap);
        self.at = now;
    }

    /// Time until `n` could be taken (zero: now).
    fn wait_for(&self, per_minute: u32, n: f64) -> Duration {
        let cap = per_minute as f64;
        let need = n.min(cap);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) * 60.0 / cap)
        }
    }
}

#[derive(Default)]
pub struct LocalBuckets {
    buckets: Mutex<HashMap<String, (Bucket, Bucket)>>,
}

impl LocalBuckets {
    fn with<R>(
        &self,
        key: &str,
        rpm: u32,
        tpm: u32,
        now: Instant,
        f: impl FnOnce(&mut Bucket, &mut Bucket) -> R,
    ) -> R {
        let mut m = self.buckets.lock().unwrap();
        let (r, t) = m.entry(key.to_string()).or_insert_with(|| {
            (
                Bucket {
                    level: rpm as f64,
                    at: now,
                },
                Bucket {
                    level: tpm as f64,
                    at: now,
                },
            )
        });
        r.refill(rpm, now);
        t.refill(tpm, now);
        f(r, t)
    }

    /// Take `requests` requests and `tokens` tokens, both or neither.
    pub(crate) fn take(
        &self,
        key: &str,
        (rpm, tpm): (u32, u32),
        requests: u64,
        tokens: u64,
        now: Instant,
    ) -> std::result::Result<(), Duration> {
        if rpm == 0 && tpm == 0 {
            return Ok(());
        }
        self.with(key, rpm, tpm, now, |r, t| {
            let mut wait = Duration::ZERO;
            if rpm > 0 && requests > 0 {
                wait = wait.max(r.wait_for(rpm, requests as f64));
            }
            if tpm > 0 && tokens > 0 {
                wait = wait.max(t.wait_for(tpm, tokens as f64));
            }
            if !wait.is_zero() {
                return Err(wait);
            }
            r.level -= requests as f64;
            t.level -= tokens as f64;
            Ok(())
        })
    }
}

impl BucketStore for LocalBuckets {
    fn try_take(
        &self,
        key: &str,
        rpm: u32,
        tpm: u32,
        tokens: u64,
        now: Instant,
    ) -> std::result::Result<(), Duration> {
        self.take(key, (rpm, tpm), 1, tokens, now)
    }

    fn give_back(&self, key: &str, rpm: u32, tpm: u32, requests: i64, tokens: i64, now: Instant) {
        if rpm == 0 && tpm == 0 {
            return;
        }
        self.with(key, rpm, tpm, now, |r, t| {
            r.level = (r.level + requests as f64).min(rpm as f64);
            t.level = (t.level + tokens as f64).min(tpm as f64);
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is let through; `probing`: it is in flight.
    HalfOpen {
        probing: bool,
    },
}

impl Breaker {
    /// May an attempt start now? `Ok(true)`: yes, as the half-open probe.
    fn admit(&mut self, now: Instant) -> std::result::Result<bool, Duration> {
        match *self {
            Breaker::Closed { .. } => Ok(false),
            Breaker::Open { until } if now < until => Err(until - now),
            Breaker::Open { .. } | Breaker::HalfOpen { probing: false } => {
                *self = Breaker::HalfOpen { probing: true };
                Ok(true)
            }
            // Another call is probing: ask again in a moment.
            Breaker::HalfOpen { probing: true } => Err(Duration::from_secs(1)),
        }
    }

    fn record(&mut self, failure: bool, threshold: u32, cooldown: Duration, now: Instant) {
        *self = match (*self, failure) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true) if failures + 1 < threshold => Breaker::Closed {
                failures: failures + 1,
            },
            (Breaker::Open { until }, true) => Breaker::Open { until },
            (_, true) => Breaker::Open {
                until: now + cooldown,
            },
        };
    }

    fn gauge(&self) -> u8 {
        match self {
            Breaker::Closed { .. } => 0,
            Breaker::HalfOpen { .. } => 1,
            Breaker::Open { .. } => 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, v: f64) {
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
struct Stats {
    calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    retries: u64,
    tokens_in: u64,
    tokens_out: u64,
    duration: Hist,
    ttft: Hist,
}

// ---------------------------------------------------------------------------------------------
// One upstream

struct Waiter {
    tx: oneshot::Sender<Permit>,
    tokens: u64,
}

struct State {
    in_flight: usize,
    /// [interactive, bulk]
    waiting: [VecDeque<Waiter>; 2],
    breaker: Breaker,
    /// The upstream said `Retry-After`: nobody is sent before then.
    paused_until: Option<Instant>,
    timer_armed: bool,
    /// Moving average of call latency, for the Retry-After of a refusal.
    latency_ewma: f64,
}

pub struct Upstream {
    /// `kind:model`, e.g. `chat:gpt-4o-mini` (metrics label, bucket key, log field).
    pub name: String,
    pub model: String,
    pub policy: Policy,
    limits: Limits,
    buckets: Arc<dyn BucketStore>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
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
    probe: bool,
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

    /// Pass the breaker for an attempt holding `permit`.
    fn admit(&self, permit: &mut Permit) -> Result<()> {
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
    fn record(&self, err: Option<&ModelError>) {
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

    fn pause(self: &Arc<Self>, wait: Duration) {
        let mut st = self.state.lock().unwrap();
        let until = Instant::now() + wait;
        if st.paused_until.is_none_or(|t| t < until) {
            st.paused_until = Some(until);
        }
    }

    /// Run one call: admission, then attempts of `op` until one succeeds or the error is final.
    /// `op` gets the call's total deadline (which starts with the first attempt, so a bulk call
    /// waiting behind interactive ones does not time out in the queue).
    pub async fn run<T, F, Fut>(
        self: &Arc<Self>,
        priority: Priority,
        est_tokens: u64,
        mut op: F,
    ) -> Result<Governed<T>>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut call = Call::new(self.clone(), priority, est_tokens);
        let mut deadline: Option<Instant> = None;
        loop {
            let mut permit = match self.acquire(priority, est_tokens, call.retries > 0).await {
                Ok(p) => p,
                Err(e) => return Err(call.fail(e)),
            };
            if let Err(e) = self.admit(&mut permit) {
                return Err(call.fail(e));
            }
            let dl = *deadline.get_or_insert_with(|| Instant::now() + self.policy.total);
            let attempt_start = Instant::now();
            match op(dl).await {
                Ok(value) => {
                    self.record(None);
                    call.attempt_latency(attempt_start.elapsed());
                    return Ok(Governed {
                        value,
                        permit,
                        call,
                    });
                }
                Err(e) => {
                    self.record(Some(&e));
                    self.stats.lock().unwrap().error(&e);
                    // Failed before any usage was reported: give the tokens back.
                    permit.settle(0);
                    drop(permit);
                    if let ModelError::RateLimited {
                        retry_after_secs: Some(s),
                        ..
                    } = &e
                    {
                        let d = Duration::from_secs_f64(s.max(0.0));
                        if d <= self.policy.retry_after_cap {
                            self.pause(d);
                        }
                    }
                    match self.policy.wait_before_retry(e, call.retries) {
                        Ok(wait) if Instant::now() + wait < dl => {
                            tracing::debug!(upstream = %self.name, attempt = call.retries, wait_ms = wait.as_millis() as u64, "retrying model call");
                            tokio::time::sleep(wait).await;
                            call.retries += 1;
                            self.stats.lock().unwrap().retries += 1;
                        }
                        Ok(_) => return Err(call.fail(ModelError::Timeout("total"))),
                        Err(e) => return Err(call.fail(e)),
                    }
                }
            }
        }
    }
}

impl Stats {
    fn error(&mut self, e: &ModelError) {
        *self.errors.entry(e.kind()).or_default() += 1;
    }
}

/// The value of a successful call, with its slot and its record (both finish with the call).
pub struct Governed<T> {
    pub value: T,
    pub permit: Permit,
    pub call: Call,
}

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
    fn new(up: Arc<Upstream>, priority: Priority, est_tokens: u64) -> Call {
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

    fn attempt_latency(&self, d: Duration) {
        let mut st = self.up.state.lock().unwrap();
        st.latency_ewma = 0.8 * st.latency_ewma + 0.2 * d.as_secs_f64();
    }

    /// The first token reached the caller now.
    pub fn first_token(&mut self) {
        if self.ttft.is_none() {
            let d = self.started.elapsed();
            self.ttft = Some(d);
            self.up.stats.lock().unwrap().ttft.observe(d.as_secs_f64());
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

// ---------------------------------------------------------------------------------------------
// The registry

/// Holds every upstream (for the metrics) and the bucket store they share.
pub struct Governor {
    pub policy: Policy,
    buckets: Arc<dyn BucketStore>,
    upstreams: Mutex<Vec<Arc<Upstream>>>,
}

impl Governor {
    pub fn new(policy: Policy) -> Governor {
        Governor::with_store(policy, Arc::new(LocalBuckets::default()))
    }

    pub fn with_store(policy: Policy, buckets: Arc<dyn BucketStore>) -> Governor {
        Governor {
            policy,
            buckets,
            upstreams: Mutex::new(Vec::new()),
        }
    }

    /// The upstream `kind:model`, created on first use with `limits`.
    pub fn upstream(&self, kind: &str, model: &str, limits: Limits) -> Arc<Upstream> {
        let name = format!("{kind}:{model}");
        let mut ups = self.upstreams.lock().unwrap();
        if let Some(u) = ups.iter().find(|u| u.name == name) {
            return u.clone();
        }
        let u = Upstream::new(
            name,
            model.to_string(),
            self.policy.clone(),
            limits,
            self.buckets.clone(),
        );
        ups.push(u.clone());
        u
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_full_jitter_within_the_capped_ceiling() {
        let p = Policy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..12 {
            let ceiling = p.backoff_ceiling(attempt);
            assert_eq!(
                ceiling,
                (p.backoff_base * 2u32.pow(attempt)).min(p.backoff_cap)
            );
            let draws: Vec<Duration> = (0..2000)
                .map(|_| p.backoff_with(attempt, &mut rng))
                .collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: spread over the whole range, not clustered at the ceiling.
            let mean = draws.iter().map(|d| d.as_secs_f64()).sum::<f64>() / 2000.0;
            let half = ceiling.as_secs_f64() / 2.0;
            assert!(
                (mean - half).abs() < half * 0.1,
                "attempt {attempt}: {mean}"
            );
            assert!(draws.iter().any(|d| *d < ceiling / 10));
        }
        assert_eq!(p.backoff_ceiling(30), p.backoff_cap);
    }

    #[test]
    fn what_is_retried() {
        let p = Policy::default();
        let status = |s: u16| ModelError::Upstream {
            status: s,
            message: String::new(),
        };
        for s in [500, 502, 503, 504] {
            assert!(p.wait_before_retry(status(s), 0).is_ok(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(p.wait_before_retry(status(s), 0).is_err(), "{s}");
        }
        assert!(p
            .wait_before_retry(ModelError::ContextLength("too long".into()), 0)
            .is_err());
        assert!(p
            .wait_before_retry(ModelError::Connect("refused".into()), 0)
            .is_ok());
        assert!(p
            .wait_before_retry(ModelError::Timeout("first token"), 0)
            .is_ok());
        assert!(p.wait_before_retry(ModelError::Timeout("idle"), 0).is_err());
        assert!(p
            .wait_before_retry(ModelError::Timeout("total"), 0)
            .is_err());
        assert!(p.wait_before_retry(status(503), p.max_retries).is_err());
        let rl = |s: Option<f64>| ModelError::RateLimited {
            retry_after_secs: s,
            cap_secs: None,
        };
        assert_eq!(
            p.wait_before_retry(rl(Some(2.0)), 0).unwrap(),
            Duration::from_secs(2)
        );
        assert!(p.wait_before_retry(rl(None), 0).unwrap() <= p.backoff_ceiling(0));
        let over = p.wait_before_retry(rl(Some(600.0)), 0).unwrap_err();
        assert!(
            over.to_string().contains("600") && over.to_string().contains("60 s cap"),
            "{over}"
        );
        assert_eq!(over.retry_after_secs(), Some(600));
    }

    #[test]
    fn buckets_limit_and_refill() {
        let b = LocalBuckets::default();
        let t0 = Instant::now();
        // 60 rpm: one a second after the first 60.
        for _ in 0..60 {
            assert!(b.try_take("k", 60, 0, 0, t0).is_ok());
        }
        let wait = b.try_take("k", 60, 0, 0, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(b
            .try_take("k", 60, 0, 0, t0 + Duration::from_secs(1))
            .is_ok());
        // Tokens: 600 tpm = 10/s; an estimate of 500 then settling at 100 gives 400 back.
        assert!(b.try_take("t", 0, 600, 500, t0).is_ok());
        assert!(b.try_take("t", 0, 600, 500, t0).is_err());
        b.give_back("t", 0, 600, 0, 400, t0);
        assert!(b.try_take("t", 0, 600, 500, t0).is_ok());
        // Larger than the whole bucket: waits for a full bucket, then goes through.
        let b = LocalBuckets::default();
        assert!(b.try_take("x", 0, 100, 1000, t0).is_ok());
        let w = b.try_take("x", 0, 100, 1000, t0).unwrap_err();
        assert!(w >= Duration::from_secs(60 * 10 - 1), "{w:?}");
    }

    #[test]
    fn breaker_opens_then_half_opens_with_one_probe() {
        let mut b = Breaker::Closed { failures: 0 };
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        for _ in 0..2 {
            b.record(true, 3, cd, t0);
        }
        b.record(false, 3, cd, t0);
        assert_eq!(b, Breaker::Closed { failures: 0 }, "a success resets");
        for _ in 0..3 {
            assert!(b.admit(t0).is_ok());
            b.record(true, 3, cd, t0);
        }
        assert!(matches!(b, Breaker::Open { .. }));
        assert!(b.admit(t0 + Duration::from_secs(5)).is_err());
        assert_eq!(b.admit(t0 + cd), Ok(true), "the probe");
        assert!(b.admit(t0 + cd).is_err(), "only one probe");
        b.record(true, 3, cd, t0 + cd);
        assert!(
            b.admit(t0 + cd + Duration::from_secs(1)).is_err(),
            "reopened"
        );
        assert_eq!(b.admit(t0 + cd * 2), Ok(true));
        b.record(false, 3, cd, t0 + cd * 2);
        assert_eq!(b.admit(t0 + cd * 2), Ok(false), "closed again");
    }

    fn limits(conc: usize, queue: usize) -> Limits {
        Limits {
            max_concurrency: conc,
            queue_size: queue,
            queue_timeout: Duration::from_secs(5),
            ..Limits::default()
        }
    }

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
    async fn run_retries_only_what_is_retryable_and_counts_it() {
        let policy = Policy {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(2),
            ..Policy::default()
        };
        let g = Governor::new(policy);
        let up = g.upstream("chat", "m", limits(4, 4));
        let n = AtomicU32::new(0);
        let r = up
            .run(Priority::Interactive, 10, |_| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k < 2 {
                        Err(ModelError::Upstream {
                            status: 503,
                            message: String::new(),
                        })
                    } else {
                        Ok(k)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(r.value, 2);
        assert_eq!(r.call.retries, 2);
        r.call.succeed(Some((10, 3)));
        drop(r.permit);
        n.store(0, Ordering::SeqCst);
        let e = up
            .run(Priority::Interactive, 10, |_| {
                n.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(ModelError::Upstream {
                        status: 401,
                        message: String::new(),
                    })
                }
            })
            .await
            .err()
            .unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 1, "401 is not retried: {e}");
        let m = g.render();
        assert!(
            m.contains("kb_model_retries_total{upstream=\"chat:m\"} 2"),
            "{m}"
        );
        assert!(m.contains("kind=\"server_error\"} 2"), "{m}");
        assert!(m.contains("kind=\"client_error\"} 1"), "{m}");
        assert!(m.contains("outcome=\"ok\"} 1"), "{m}");
        assert!(
            m.contains("kb_model_in_flight{upstream=\"chat:m\"} 0"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn the_breaker_fails_fast_then_probes() {
        let g = Governor::new(Policy {
            max_retries: 0,
            ..Policy::default()
        });
        let up = g.upstream(
            "chat",
            "m",
            Limits {
                breaker_failures: 2,
                breaker_cooldown: Duration::from_millis(200),
                ..limits(4, 4)
            },
        );
        let calls = AtomicU32::new(0);
        let fail = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), _>(ModelError::Upstream {
                    status: 500,
                    message: String::new(),
                })
            }
        };
        for _ in 0..2 {
            assert!(up.run(Priority::Interactive, 0, |_| fail()).await.is_err());
        }
        let e = up
            .run(Priority::Interactive, 0, |_| fail())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ModelError::CircuitOpen { .. }), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refused without a call");
        assert!(g
            .render()
            .contains("kb_model_breaker_state{upstream=\"chat:m\"} 2"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let ok = up
            .run(Priority::Interactive, 0, |_| async { Ok(()) })
            .await
            .unwrap();
        ok.call.succeed(None);
        assert!(g
            .render()
            .contains("kb_model_breaker_state{upstream=\"chat:m\"} 0"));
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
