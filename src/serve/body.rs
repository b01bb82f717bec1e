//! Request bodies held to a minimum rate; response bodies that keep their connection busy.

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that came too slowly; handlers answer 408 `request_timeout`.
#[derive(Debug)]
pub struct SlowClient;

impl std::fmt::Display for SlowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body arrived too slowly")
    }
}

impl std::error::Error for SlowClient {}

/// Whether `e` (or an error it wraps) is `SlowClient`.
pub fn is_slow_client(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<SlowClient>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A body that must keep sending: time spent waiting for the client comes out of a budget of
/// `grace`; every byte received puts `1 / rate` seconds back, up to `grace` again. A stalled
/// client is cut after `grace`; a trickling one once its average falls below `rate`. Time the
/// handler spends not reading is not the client's and does not count.
pub struct MinRate<B> {
    inner: B,
    grace: Duration,
    rate: u64,
    budget: Duration,
    waiting: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<B> MinRate<B> {
    pub fn new(inner: B, grace: Duration, rate: u64) -> MinRate<B> {
        MinRate {
            inner,
            grace,
            rate,
            budget: grace,
            waiting: None,
        }
    }
}

impl<B> HttpBody for MinRate<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((since, _)) = this.waiting.take() {
                    this.budget = this.budget.saturating_sub(since.elapsed());
                }
                if let Some(data) = frame.data_ref() {
                    if this.rate > 0 {
                        let earned = Duration::from_secs_f64(data.len() as f64 / this.rate as f64);
                        this.budget = (this.budget + earned).min(this.grace);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let budget = this.budget;
                let (_, sleep) = this.waiting.get_or_insert_with(|| {
                    let now = Instant::now();
                    (now, Box::pin(tokio::time::sleep_until(now + budget)))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.budget = Duration::ZERO;
                        this.waiting = None;
                        Poll::Ready(Some(Err(Box::new(SlowClient))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request in progress: counted from its headers until its response body is done.
pub struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub fn new(n: Arc<AtomicUsize>) -> Busy {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection counted as busy until it is done.
pub struct Guarded {
    body: Body,
    _busy: Busy,
}

impl Guarded {
    pub fn new(body: Body, busy: Busy) -> Guarded {
        Guarded { body, _busy: busy }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::BodyExt;

    fn trickle(
        every: Duration,
        n: usize,
        size: usize,
    ) -> impl HttpBody<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let s = futures::stream::iter(0..n).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; size])))
        });
        http_body_util::StreamBody::new(Box::pin(s))
    }

    #[tokio::test]
    async fn a_trickle_below_the_rate_is_cut_and_a_steady_body_is_not() {
        // 500 B/s against a minimum of 1024 B/s with 0.5 s of grace: the budget runs out after
        // about a second.
        let grace = Duration::from_millis(500);
        let started = Instant::now();
        let slow = MinRate::new(trickle(Duration::from_millis(100), 100, 50), grace, 1024);
        let err = slow.collect().await.expect_err("cut");
        assert!(is_slow_client(err.as_ref()), "{err}");
        let took = started.elapsed();
        assert!(took > grace && took < Duration::from_secs(5), "{took:?}");
        // 20 KB/s goes on to the end, well past the grace.
        let steady = MinRate::new(trickle(Duration::from_millis(100), 15, 2048), grace, 1024);
        let all = steady.collect().await.expect("whole body").to_bytes();
        assert_eq!(all.len(), 15 * 2048);
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_after_the_grace_and_a_slow_reader_is_not_blamed() {
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let stalled = MinRate::new(trickle(Duration::from_secs(3600), 1, 1), grace, 1024);
        let err = stalled.collect().await.expect_err("cut");
        assert!(is_slow_client(err.as_ref()));
        assert!(started.elapsed() >= grace);
        // The handler pauses between reads longer than the grace; the client is ready each
        // time, so nothing is cut.
        let mut body = MinRate::new(trickle(Duration::ZERO, 3, 10), grace, 1024);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let frame = body.frame().await.expect("a frame").expect("not cut");
            assert_eq!(frame.into_data().unwrap().len(), 10);
        }
    }
}
