//! kb command line: parse arguments, load configuration, call into the library. Each
//! subcommand lives in its own module under `cli/`.

mod cli;

use clap::Parser;
use cli::{Cli, Cmd};
use kb::config::{Config, Overrides};
use std::process::ExitCode;

fn init_tracing(cfg: &Config, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    // Qdrant Edge warns about process-wide flags it cannot let an embedder set: keep that quiet
    // unless asked for.
    let mut spec = std::env::var("KB_LOG").unwrap_or_else(|_| default.to_string());
    if !spec.contains("qdrant_edge") {
        spec.push_str(",qdrant_edge::common=error");
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The PDF child runs before anything else: no runtime, no config, no logging.
    if let Cmd::Extract { name, max_pages } = &cli.cmd {
        return ExitCode::from(kb_ingest::pdf::child_main(name, *max_pages) as u8);
    }
    let cfg = match Config::load(
        cli.config.as_deref(),
        &Overrides {
            addr: cli.cmd.addr(),
            data_dir: cli.data_dir.clone(),
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kb: {e:#}");
            return ExitCode::from(2);
        }
    };
    let quiet = !matches!(cli.cmd, Cmd::Serve(_));
    init_tracing(&cfg, quiet);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli::run(cli.cmd, cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
