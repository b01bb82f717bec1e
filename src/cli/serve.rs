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
    /// Serve without API keys on a non-loopback address (`auth.allow_insecure`).
    #[arg(long)]
    pub insecure: bool,
}

/// Serve `cfg.server.addr` (the `--addr` override is already in `cfg`).
pub async fn run(mut cfg: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.insecure {
        cfg.auth.allow_insecure = true;
    }
    if cfg.auth.mode == kb::config::AuthMode::None && !cfg.server.listens_on_loopback() {
        if !cfg.auth.allow_insecure {
            anyhow::bail!(
                "refusing to serve on {} without API keys: anyone who can reach it could read and delete every collection and spend the model's tokens. Set auth.mode = \"keys\" (KB_AUTH__MODE=keys; make a key with `kb keys create --name admin --scope admin`), or pass --insecure if something in front of kb does the access control",
                cfg.server.addr
            );
        }
        tracing::warn!(addr = %cfg.server.addr, "serving without API keys on a non-loopback address (--insecure): anyone who can reach it can read, delete and spend the model's tokens");
    }
    // Before anything opens files: idle clients must not be able to take kb's last descriptor.
    let nofile = kb::serve::raise_nofile();
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
    let stopping = core.stopping.clone();
    let grace = Duration::from_secs(core.config.server.shutdown_grace_secs);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!(grace_secs = grace.as_secs(), "shutting down");
        stopping.draining.cancel();
        // Answers in progress get the grace, less a moment for their streams to end cleanly.
        tokio::time::sleep(grace.saturating_sub(Duration::from_secs(1))).await;
        stopping.closing.cancel();
    });
    let limits = kb::serve::ListenLimits::from_config(&core.config.server, nofile);
    tracing::debug!(?limits, nofile, "connection limits");
    kb::serve::serve(
        listener,
        app.router,
        limits,
        core.metrics.clone(),
        core.stopping.draining.clone(),
        grace,
    )
    .await;
    core.shutdown().await;
    tracing::info!("index flushed; bye");
    Ok(ExitCode::SUCCESS)
}
