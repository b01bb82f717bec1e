//! Timeouts and the retry rules: exponential backoff with full jitter, `Retry-After` honoured
//! up to a cap.

use crate::models::ModelError;
use rand::Rng;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::TimeoutKind;
    use rand::SeedableRng;

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
            .wait_before_retry(ModelError::Timeout(TimeoutKind::FirstToken), 0)
            .is_ok());
        assert!(p
            .wait_before_retry(ModelError::Timeout(TimeoutKind::Idle), 0)
            .is_err());
        assert!(p
            .wait_before_retry(ModelError::Timeout(TimeoutKind::Total), 0)
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
}
