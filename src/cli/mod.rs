//! The subcommands: the clap definitions, and one module per subcommand with its code.

mod ask;
mod docs;
mod eval;
mod ingest;
mod keys;
mod remote;
mod search;
mod serve;

use clap::{Parser, Subcommand};
use kb::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kb", version, about = "A retrieval-augmented knowledge-base server", long_about = None)]
pub struct Cli {
    /// Configuration file (default: $KB_CONFIG, else ./kb.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// The argument structs of the subcommands carry no doc comments of their own: the variant's
// doc comment is the subcommand's help.
#[derive(Subcommand)]
pub enum Cmd {
    /// Start the HTTP server.
    Serve(serve::ServeArgs),
    /// Add files and directories (recursively) to a collection.
    Ingest(ingest::IngestArgs),
    /// Ask a question; the answer streams to the terminal.
    Ask(ask::AskArgs),
    /// Show the ranked chunks for a query (no answer).
    Search(search::SearchArgs),
    /// Run a QA set (JSONL, the format of the public eval set) through retrieval and answering;
    /// score it, store the run, compare it with the previous run of the same set.
    ///
    /// Writes per-item results (`results-<mode>.jsonl`), `summary.json` and `report.md` into
    /// `--out`, and appends the run to `--history`. Exit code 3: a metric got worse than the
    /// previous run by more than `--tolerance` (with `--fail-on-regression`).
    Eval(eval::EvalArgs),
    /// List or delete the documents of a collection.
    ///
    /// Without --server this opens the data directory (no server may be running on it); with
    /// --server it calls that server's HTTP API. Exit codes: 0 done, 1 error, 2 bad
    /// configuration, 5 no such document (delete) or collection (list).
    Docs {
        #[command(subcommand)]
        cmd: docs::DocsCmd,
    },
    /// Make, list and revoke API keys (for `auth.mode = "keys"`).
    ///
    /// Without --server this opens the catalog of the data directory (also while a server runs
    /// on it); with --server it calls that server with the admin key in KB_API_KEY. Exit code 5:
    /// no such key (revoke).
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Print the effective configuration (secrets masked).
    Config,
    /// Internal: extract a document from stdin in an isolated child process.
    #[command(name = "__extract", hide = true)]
    Extract {
        /// The document's name (breaks the Markdown / plain text tie).
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value_t = 5000)]
        max_pages: usize,
    },
}

impl Cmd {
    /// The listen address given on the command line (`kb serve --addr`).
    pub fn addr(&self) -> Option<String> {
        match self {
            Cmd::Serve(a) => a.addr.clone(),
            _ => None,
        }
    }
}

/// Run a subcommand (all but `__extract`, which `main` runs before there is a runtime).
pub async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve(a) => serve::run(cfg, a).await,
        Cmd::Config => {
            print!("{}", cfg.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ingest(a) => ingest::run(cfg, a).await,
        Cmd::Ask(a) => ask::run(cfg, a).await,
        Cmd::Search(a) => search::run(cfg, a).await,
        Cmd::Docs { cmd } => docs::run(cfg, cmd).await,
        Cmd::Eval(a) => eval::run(cfg, a).await,
        Cmd::Keys { cmd } => keys::run(cfg, cmd).await,
        Cmd::Extract { .. } => unreachable!("main runs __extract before the runtime starts"),
    }
}
