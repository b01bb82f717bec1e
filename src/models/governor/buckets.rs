//! Rate-limit buckets: the limits of one upstream, the [`BucketStore`] they live behind, and
//! [`LocalBuckets`], the in-memory store (see [`super::redis_buckets`] for the shared one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
