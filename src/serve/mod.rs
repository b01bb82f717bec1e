//! kb's listener: its own accept loop on hyper, so that clients cannot hold kb's descriptors.
//!
//! - Every request's headers must arrive within `header_timeout`, and so must the next request
//!   on a kept-alive connection (hyper's header read timer covers the idle wait too).
//! - A request body must keep up a minimum rate (`body.rs`), or it ends with `SlowClient`
//!   (a 408 from the handler reading it).
//! - At most `max_connections` are open. When a new one arrives at the cap, the oldest
//!   connection with no request in progress is closed to make room; only when every open
//!   connection is busy is the new one refused. Idle sockets therefore cannot lock out a
//!   health check or a search, however many of them a client opens.
//! - The process's open-file soft limit is raised to its hard limit at start (`raise_nofile`),
//!   and the connection cap stays well under it, leaving descriptors for the index and the
//!   catalog.
//! - Shutdown: no new connections; idle ones close; requests in progress get `grace`.

mod body;
mod conn;

pub use body::{is_slow_client, SlowClient};

use axum::Router;
use conn::Registry;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one client may hold, and for how long.
#[derive(Debug, Clone)]
pub struct ListenLimits {
    pub header_timeout: Duration,
    /// How long a request body may go without sending anything.
    pub body_timeout: Duration,
    /// The long-run rate a body must keep up (bytes per second).
    pub body_min_rate: u64,
    pub max_connections: usize,
}

impl ListenLimits {
    pub fn from_config(cfg: &crate::config::ServerConfig, nofile: u64) -> ListenLimits {
        ListenLimits {
            header_timeout: Duration::from_secs(cfg.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(cfg.body_timeout_secs.max(1)),
            body_min_rate: cfg.body_min_bytes_per_sec,
            max_connections: connection_cap(cfg.max_connections, nofile),
        }
    }
}

/// The configured cap, kept to half the descriptors (at least 128 stay for the index, the
/// catalog, temp files and extraction children).
pub fn connection_cap(configured: usize, nofile: u64) -> usize {
    let reserve = (nofile / 2).max(128);
    let room = nofile.saturating_sub(reserve).max(16) as usize;
    configured.clamp(1, room)
}

/// Raise the soft open-file limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit write to and read from a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// Serve `router` on `listener` until `stop` is cancelled, then give requests in progress
/// `grace` to finish. Returns when every connection is closed or the grace is over.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenLimits,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
    grace: Duration,
) {
    let registry = Arc::new(Registry::new(limits.max_connections, metrics));
    let mut tasks = tokio::task::JoinSet::new();
    let mut accept_errors = conn::Throttled::new(Duration::from_secs(5));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
        let (tcp, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                // back off a little rather than spin.
                if accept_errors.ready() {
                    tracing::warn!(error = %e, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = registry.admit() else {
            // Every connection is busy with a request: refuse this one (closing it now).
            drop(tcp);
            continue;
        };
        // Streamed answers are many small writes: without TCP_NODELAY, Nagle holds each behind
        // the client's delayed ACK (~40 ms per event burst on loopback).
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = conn::service(router, slot.busy.clone(), &limits);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = slot.evicted.notified() => break,
                }
            }
            drop(slot);
        });
    }
    // Stopped: wait for open requests, up to the grace.
    let wait = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, wait).await.is_err() {
        tracing::warn!(
            open = registry.open(),
            "connections still open at the end of the shutdown grace: closing them"
        );
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_index() {
        assert_eq!(connection_cap(4096, 256), 128);
        assert_eq!(connection_cap(4096, 1024), 512);
        assert_eq!(connection_cap(4096, 1 << 20), 4096);
        assert_eq!(connection_cap(10, 1 << 20), 10);
        // A tiny limit still allows some connections.
        assert_eq!(connection_cap(4096, 64), 16);
    }
}
