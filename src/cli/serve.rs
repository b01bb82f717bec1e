//! `kb serve`: the HTTP server, until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Args;
use kb::config::Config;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Listen address (overrides `server.addr`).
    #[arg(long)]
    pub addr: Option<String>,
}

/// Serve `cfg.server.addr` (the `--addr` override is already in `cfg`).
pub async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let addr = cfg.server.addr.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let app = kb::App::build(cfg).await?;
    let local = listener.local_addr()?;
    // Take SIGTERM and SIGINT before saying we listen: a signal that arrived between the
    // "listening" line and a handler installed later killed kb without flushing its index.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!(addr = %local, "kb listening");
    // Tests and scripts read this line to find the port.
    println!("kb listening on http://{local}");
    let _ = std::io::stdout().flush();
    let core = app.core.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let mut graceful = stop_rx.clone();
    // Streamed answers are many small writes: without TCP_NODELAY, Nagle holds each behind the
    // client's delayed ACK (~40 ms per event burst on loopback).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app.router).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    // Open streams (a job's progress, a long answer) get a grace period, not a veto.
    let mut deadline = stop_rx;
    tokio::select! {
        r = std::future::IntoFuture::into_future(server) => r?,
        _ = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        } => tracing::warn!("streams still open 10 s after the shutdown signal: closing them"),
    }
    core.shutdown().await;
    tracing::info!("index flushed; bye");
    Ok(ExitCode::SUCCESS)
}
