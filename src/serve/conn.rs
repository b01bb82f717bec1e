//! Open connections: which are busy, which may be closed to make room, and the per-connection
//! service that keeps count.

use super::body::{Busy, Guarded, MinRate};
use super::ListenLimits;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The open connections, oldest first.
pub struct Registry {
    cap: usize,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    busy: Arc<AtomicUsize>,
    evicted: Arc<Notify>,
}

/// A connection's place in the registry; leaving it (drop) frees the place.
pub struct Slot {
    id: u64,
    registry: Arc<Registry>,
    /// Requests in progress on the connection, response bodies included.
    pub busy: Arc<AtomicUsize>,
    /// Notified when the connection must close to make room for a new one.
    pub evicted: Arc<Notify>,
}

impl Registry {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Registry {
        Registry {
            cap: cap.max(1),
            metrics,
            inner: Mutex::new(Inner {
                next: 0,
                open: BTreeMap::new(),
            }),
        }
    }

    pub fn open(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .len()
    }

    /// A place for a new connection: at the cap, the oldest idle connection is told to close
    /// and gives up its place; `None` when every open connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.open.len() >= self.cap {
            let idle = inner
                .open
                .iter()
                .find(|(_, e)| e.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id);
            let Some(id) = idle else {
                self.metrics.connection_refused();
                return None;
            };
            if let Some(e) = inner.open.remove(&id) {
                // notify_one keeps a permit: the connection closes even if it is not waiting yet.
                e.evicted.notify_one();
                self.metrics.connection_evicted();
                self.metrics.connection_closed();
            }
        }
        let id = inner.next;
        inner.next += 1;
        self.metrics.connection_opened();
        let busy = Arc::new(AtomicUsize::new(0));
        let evicted = Arc::new(Notify::new());
        inner.open.insert(
            id,
            Entry {
                busy: busy.clone(),
                evicted: evicted.clone(),
            },
        );
        Some(Slot {
            id,
            registry: self.clone(),
            busy,
            evicted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if inner.open.remove(&self.id).is_some() {
            self.registry.metrics.connection_closed();
        }
    }
}

/// The router as one connection's hyper service: request bodies held to the minimum rate,
/// requests counted as busy while they (and their responses) last.
pub fn service(
    router: Router,
    busy: Arc<AtomicUsize>,
    limits: &ListenLimits,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let (timeout, rate) = (limits.body_timeout, limits.body_min_rate);
    let svc = move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let guard = Busy::new(busy.clone());
        async move {
            let req = req.map(|b| Body::new(MinRate::new(b, timeout, rate)));
            let resp = match tower::ServiceExt::oneshot(router, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|b| Body::new(Guarded::new(b, guard))))
        }
    };
    hyper::service::service_fn(svc)
}

/// At most one report per `every`.
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
}

impl Throttled {
    pub fn new(every: Duration) -> Throttled {
        Throttled { every, last: None }
    }

    pub fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let reg = Arc::new(Registry::new(2, Arc::new(Metrics::default())));
        let a = reg.admit().unwrap();
        let b = reg.admit().unwrap();
        a.busy.fetch_add(1, Ordering::SeqCst);
        // a is busy, b idle: b goes.
        let c = reg.admit().unwrap();
        assert_eq!(reg.open(), 2);
        let evicted_b = b.evicted.clone();
        assert!(futures::FutureExt::now_or_never(evicted_b.notified()).is_some());
        assert!(futures::FutureExt::now_or_never(a.evicted.notified()).is_none());
        // Both busy: refused.
        c.busy.fetch_add(1, Ordering::SeqCst);
        assert!(reg.admit().is_none());
        // a's request ends: a is the oldest idle one.
        a.busy.fetch_sub(1, Ordering::SeqCst);
        let _d = reg.admit().unwrap();
        assert!(futures::FutureExt::now_or_never(a.evicted.notified()).is_some());
        // Dropping an evicted slot does not remove anyone else.
        drop(b);
        assert_eq!(reg.open(), 2);
    }
}
