//! The circuit breaker of one upstream: closed, open for a cooldown after enough consecutive
//! failures, then half-open with a single probe.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Breaker {
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
    pub(super) fn admit(&mut self, now: Instant) -> std::result::Result<bool, Duration> {
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

    pub(super) fn record(
        &mut self,
        failure: bool,
        threshold: u32,
        cooldown: Duration,
        now: Instant,
    ) {
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

    pub(super) fn gauge(&self) -> u8 {
        match self {
            Breaker::Closed { .. } => 0,
            Breaker::HalfOpen { .. } => 1,
            Breaker::Open { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_limits as limits, Governor, Limits, Policy};
    use super::*;
    use crate::models::{ModelError, Priority};
    use std::sync::atomic::{AtomicU32, Ordering};

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
}
