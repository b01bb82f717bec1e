//! kb command line: parse arguments, load configuration, call into the library. Each
//! subcommand lives in its own module under `cli/`.

mod cli;

use clap::Parser;
use cli::{Cli, Cmd};
use kb::config::{Config, Overrides};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Colour the log only on a terminal, and not when `NO_COLOR` is set to anything but "" (a log
/// file or a pipe gets no escape codes).
fn use_ansi(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

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
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

#[cfg(test)]
mod tests {
    use super::use_ansi;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(
            use_ansi(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_ansi(true, Some("1".into())));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(false, Some("1".into())));
    }
}
