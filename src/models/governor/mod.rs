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
//! [`redis_buckets::RedisBuckets`] in Redis (shared by several kb replicas).
//!
//! One file per concern: `policy` (timeouts, backoff), `buckets` (limits, rate-limit buckets),
//! `breaker`, `queue` (the upstream, its waiters and permits), `call` (per-call accounting),
//! `metrics` (counters and their Prometheus text); the retry loop, the one path every call
//! takes, is [`Upstream::run`] here.

mod breaker;
mod buckets;
mod call;
mod metrics;
mod policy;
mod queue;
pub mod redis_buckets;

pub use buckets::{BucketStore, Limits, LocalBuckets};
pub use call::Call;
pub use policy::Policy;
pub use queue::{Permit, Upstream};

use super::{ModelError, Priority, Result, TimeoutKind};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The value of a successful call, with its slot and its record (both finish with the call).
pub struct Governed<T> {
    pub value: T,
    pub permit: Permit,
    pub call: Call,
}

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

    /// The token buckets (in memory, or shared through Redis), for other rate limits too.
    pub fn buckets(&self) -> &Arc<dyn BucketStore> {
        &self.buckets
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
}

impl Upstream {
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
                        Ok(_) => return Err(call.fail(ModelError::Timeout(TimeoutKind::Total))),
                        Err(e) => return Err(call.fail(e)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
fn test_limits(conc: usize, queue: usize) -> Limits {
    Limits {
        max_concurrency: conc,
        queue_size: queue,
        queue_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_limits as limits;
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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
}
