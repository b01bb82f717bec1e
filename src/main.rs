//! kb command line: parse arguments, load configuration, call into the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kb::config::{Config, Overrides};
use kb::query::{AskEvent, AskParams, SearchParams};
use kb::store::SearchMode;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kb", version, about = "A retrieval-augmented knowledge-base server", long_about = None)]
struct Cli {
    /// Configuration file (default: $KB_CONFIG, else ./kb.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the HTTP server.
    Serve {
        /// Listen address (overrides `server.addr`).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Add files and directories (recursively) to a collection.
    Ingest {
        #[arg(long, short, default_value = "default")]
        collection: String,
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        remote: Remote,
        /// Return after queueing, without waiting for indexing to finish.
        #[arg(long)]
        no_wait: bool,
    },
    /// Ask a question; the answer streams to the terminal.
    Ask {
        question: String,
        #[arg(long, short, default_value = "default")]
        collection: String,
        #[arg(long)]
        top_k: Option<usize>,
        #[command(flatten)]
        remote: Remote,
        /// Print the final JSON instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Show the ranked chunks for a query (no answer).
    Search {
        query: String,
        #[arg(long, short, default_value = "default")]
        collection: String,
        #[arg(long)]
        top_k: Option<usize>,
        /// hybrid, dense or sparse.
        #[arg(long)]
        mode: Option<String>,
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Run a QA set (JSONL, the format of the public eval set) through retrieval and answering;
    /// score it, store the run, compare it with the previous run of the same set.
    ///
    /// Writes per-item results (`results-<mode>.jsonl`), `summary.json` and `report.md` into
    /// `--out`, and appends the run to `--history`. Exit code 3: a metric got worse than the
    /// previous run by more than `--tolerance` (with `--fail-on-regression`).
    Eval {
        /// The QA set (JSONL: id, type, question, answers, evidence, unanswerable).
        #[arg(long)]
        qa: PathBuf,
        #[arg(long, short, default_value = "default")]
        collection: String,
        /// Cut-offs for hit@k.
        #[arg(long, default_value = "1,3,5,10", value_delimiter = ',')]
        k: Vec<usize>,
        /// Retrieval modes to score side by side (answers use the configured mode).
        #[arg(long, default_value = "hybrid,dense,sparse", value_delimiter = ',')]
        modes: Vec<String>,
        /// Score retrieval only; do not ask for answers.
        #[arg(long)]
        no_answers: bool,
        /// Output directory (default: eval-runs/<run id>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run history, one JSON line per run.
        #[arg(long, default_value = "eval-runs/history.jsonl")]
        history: PathBuf,
        /// Exit 3 when a metric is worse than the previous run by more than the tolerance.
        #[arg(long)]
        fail_on_regression: bool,
        /// Absolute drop in a metric (0-1) tolerated before it counts as a regression.
        #[arg(long, default_value_t = 0.02)]
        tolerance: f64,
        #[command(flatten)]
        remote: Remote,
        /// Print the run record as JSON instead of the report.
        #[arg(long)]
        json: bool,
    },
    /// List or delete the documents of a collection.
    ///
    /// Without --server this opens the data directory (no server may be running on it); with
    /// --server it calls that server's HTTP API. Exit codes: 0 done, 1 error, 2 bad
    /// configuration, 5 no such document (delete) or collection (list).
    Docs {
        #[command(subcommand)]
        cmd: DocsCmd,
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

#[derive(Subcommand)]
enum DocsCmd {
    /// List a collection's documents.
    ///
    /// One line per document: id, status (ready, processing, failed), newest version, chunks,
    /// size, updated time (UTC), name. Exit code 5 when the collection does not exist.
    List {
        #[arg(long, short, default_value = "default")]
        collection: String,
        #[command(flatten)]
        remote: Remote,
        /// Print JSON (the shape of GET /v1/collections/{c}/documents) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a document and all its versions.
    ///
    /// Its chunks leave the index and its uploaded bytes are removed, as with
    /// DELETE /v1/documents/{id}. Exit code 5 when there is no such document.
    Delete {
        /// The document id: the first column of `kb docs list`.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Exit code of `kb docs` when the document (or collection) does not exist.
const EXIT_NOT_FOUND: u8 = 5;

#[derive(Args)]
struct Remote {
    /// Talk to a running kb server instead of opening the data directory.
    #[arg(long)]
    server: Option<String>,
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
    let addr = match &cli.cmd {
        Cmd::Serve { addr } => addr.clone(),
        _ => None,
    };
    let cfg = match Config::load(
        cli.config.as_deref(),
        &Overrides {
            addr,
            data_dir: cli.data_dir.clone(),
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kb: {e:#}");
            return ExitCode::from(2);
        }
    };
    let quiet = !matches!(cli.cmd, Cmd::Serve { .. });
    init_tracing(&cfg, quiet);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli.cmd, cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd, cfg: Config) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve { .. } => serve(cfg).await,
        Cmd::Config => {
            print!("{}", cfg.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ingest {
            collection,
            paths,
            remote,
            no_wait,
        } => ingest(cfg, &collection, &paths, remote.server, no_wait).await,
        Cmd::Ask {
            question,
            collection,
            top_k,
            remote,
            json,
        } => ask(cfg, &question, &collection, top_k, remote.server, json).await,
        Cmd::Search {
            query,
            collection,
            top_k,
            mode,
            remote,
            json,
        } => search(cfg, &query, &collection, top_k, mode, remote.server, json).await,
        Cmd::Docs { cmd } => docs(cfg, cmd).await,
        Cmd::Eval {
            qa,
            collection,
            k,
            modes,
            no_answers,
            out,
            history,
            fail_on_regression,
            tolerance,
            remote,
            json,
        } => {
            let mut ms = Vec::new();
            for m in modes {
                ms.push(SearchMode::parse(&m)?);
            }
            if k.is_empty() || k.iter().any(|&k| k == 0 || k > 100) {
                anyhow::bail!("--k takes cut-offs between 1 and 100");
            }
            let mut k = k;
            k.sort_unstable();
            k.dedup();
            let run_id = kb::eval::new_run_id();
            let opts = kb::eval::Options {
                out: out.unwrap_or_else(|| PathBuf::from("eval-runs").join(&run_id)),
                run_id,
                qa,
                collection,
                ks: k,
                modes: ms,
                answers: !no_answers,
                history,
                tolerance,
                progress: !json,
            };
            eval(cfg, opts, remote.server, fail_on_regression, json).await
        }
        Cmd::Extract { .. } => unreachable!(),
    }
}

async fn eval(
    cfg: Config,
    opts: kb::eval::Options,
    server: Option<String>,
    fail_on_regression: bool,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    use kb::eval::report;
    let run = match server {
        Some(base) => kb::eval::run(&kb::eval::RemoteTarget::new(&base), &base, &opts).await?,
        None => {
            let core = kb::Core::open(cfg.clone()).await?;
            let name = format!("data dir {}", cfg.data_dir.display());
            let r = kb::eval::run(&kb::eval::LocalTarget(core.clone()), &name, &opts).await;
            core.shutdown().await;
            r?
        }
    };
    let history = report::load_history(&opts.history)?;
    let prev = report::previous(&history, &run);
    let deltas = prev
        .map(|p| report::compare(p, &run, opts.tolerance))
        .unwrap_or_default();
    let md = report::markdown(&run, prev, &deltas);
    std::fs::write(opts.out.join("report.md"), &md)?;
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"run": run, "previous": prev.map(|p| &p.run_id), "changes": deltas}),
        )?,
    )?;
    report::append(&opts.history, &run)?;
    let regressions: Vec<&report::Delta> = deltas.iter().filter(|d| d.regression).collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run": run, "changes": deltas}))?
        );
    } else {
        print!("{md}");
        println!("\nper-item results and this report: {}", opts.out.display());
        if !regressions.is_empty() {
            println!(
                "regression against the previous run: {}",
                regressions
                    .iter()
                    .map(|d| format!("{} {:.3} -> {:.3}", d.metric, d.before, d.after))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(if fail_on_regression && !regressions.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The message of an API error body, or a fallback.
async fn api_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("request failed: HTTP {status}"))
}

async fn docs(cfg: Config, cmd: DocsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DocsCmd::List {
            collection,
            remote,
            json,
        } => {
            let listing: Option<serde_json::Value> = if let Some(base) = remote.server {
                let base = base.trim_end_matches('/');
                let resp = reqwest::Client::new()
                    .get(format!("{base}/v1/collections/{collection}/documents"))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {base}"))?;
                match resp.status() {
                    s if s.is_success() => Some(resp.json().await?),
                    reqwest::StatusCode::NOT_FOUND => None,
                    _ => anyhow::bail!("{}", api_error(resp).await),
                }
            } else {
                let core = kb::Core::open(cfg).await?;
                let r = async {
                    if core.catalog.collection(&collection).await?.is_none() {
                        return anyhow::Ok(None);
                    }
                    let docs = core.catalog.documents(&collection).await?;
                    anyhow::Ok(Some(
                        serde_json::json!({"collection": collection, "documents": docs}),
                    ))
                }
                .await;
                core.shutdown().await;
                r?
            };
            let Some(listing) = listing else {
                eprintln!("kb: collection `{collection}` does not exist");
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print_docs(&listing["documents"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        DocsCmd::Delete { id, remote } => {
            let deleted = if let Some(base) = remote.server {
                let base = base.trim_end_matches('/');
                let resp = reqwest::Client::new()
                    .delete(format!("{base}/v1/documents/{id}"))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {base}"))?;
                match resp.status() {
                    s if s.is_success() => true,
                    reqwest::StatusCode::NOT_FOUND => false,
                    _ => anyhow::bail!("{}", api_error(resp).await),
                }
            } else {
                let core = kb::Core::open(cfg).await?;
                // The same path as DELETE /v1/documents/{id}: catalog, visibility, index, blobs.
                let r = core.delete_document(&id).await;
                core.shutdown().await;
                r?
            };
            if deleted {
                eprintln!("deleted document {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("kb: no document `{id}`");
                Ok(ExitCode::from(EXIT_NOT_FOUND))
            }
        }
    }
}

fn print_docs(docs: &serde_json::Value) {
    let docs = docs.as_array().cloned().unwrap_or_default();
    if docs.is_empty() {
        eprintln!("no documents");
        return;
    }
    println!(
        "{:<36}  {:<10}  {:>3}  {:>6}  {:>9}  {:<20}  NAME",
        "ID", "STATUS", "VER", "CHUNKS", "SIZE", "UPDATED"
    );
    for d in docs {
        let size = d["size_bytes"].as_u64().unwrap_or(0);
        let size = if size >= 1 << 20 {
            format!("{:.1} MB", size as f64 / (1u64 << 20) as f64)
        } else if size >= 1 << 10 {
            format!("{:.1} KB", size as f64 / 1024.0)
        } else {
            format!("{size} B")
        };
        let updated: String = d["updated_at"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(19)
            .collect();
        let status = d["status"].as_str().unwrap_or("");
        let error = d["error"]
            .as_str()
            .map(|e| format!("  (failed: {e})"))
            .unwrap_or_default();
        println!(
            "{:<36}  {:<10}  {:>3}  {:>6}  {:>9}  {:<20}  {}",
            d["id"].as_str().unwrap_or(""),
            status,
            d["version"].as_i64().unwrap_or(0),
            d["chunks"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            size,
            updated.replace('T', " "),
            d["name"].as_str().unwrap_or(""),
        );
        if !error.is_empty() {
            println!("{:<36}  {error}", "");
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<ExitCode> {
    let addr = cfg.server.addr.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let app = kb::App::build(cfg).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "kb listening");
    // Tests and scripts read this line to find the port.
    println!("kb listening on http://{local}");
    let _ = std::io::stdout().flush();
    let core = app.core.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
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

/// Files under `paths`, recursively, sorted; hidden files skipped.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                let e = e?;
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                stack.push(e.path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A document name from a path relative to the ingested root (directories joined with ` › `,
/// since names may not contain `/`).
fn doc_name(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.is_empty() || (parts.len() == 1 && parts[0].is_empty()) {
        file.file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
    } else {
        parts.join(" › ")
    }
}

fn names_for(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for root in paths {
        let base = if root.is_dir() {
            root.clone()
        } else {
            root.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        for f in collect_files(std::slice::from_ref(root))? {
            let name = doc_name(&base, &f);
            out.push((f, name));
        }
    }
    Ok(out)
}

/// Print a line above the bar (or plainly when stderr is not a terminal and the bar is hidden).
fn say(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}");
    } else {
        pb.println(msg);
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    pb
}

async fn ingest(
    cfg: Config,
    collection: &str,
    paths: &[PathBuf],
    server: Option<String>,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    let files = names_for(paths)?;
    if files.is_empty() {
        anyhow::bail!("no files found");
    }
    let pb = bar(files.len() as u64, "upload");
    let mut jobs: Vec<(String, String)> = Vec::new();
    let mut failures = 0;
    let client = reqwest::Client::new();
    let core = match &server {
        None => Some(kb::Core::open(cfg.clone()).await?),
        Some(_) => None,
    };
    for (path, name) in &files {
        pb.set_message(name.clone());
        let r: anyhow::Result<(String, bool)> = async {
            if let Some(core) = &core {
                let bytes = tokio::fs::read(path).await?;
                if bytes.len() as u64 > cfg.limits.max_upload_bytes {
                    anyhow::bail!(
                        "over the upload limit of {} bytes",
                        cfg.limits.max_upload_bytes
                    );
                }
                let kind = kb_ingest::check_and_sniff(&bytes, name, None, &cfg.ingest_limits());
                if let Err(e) = kind {
                    anyhow::bail!("{e}");
                }
                let tmp = core.temp_path();
                tokio::fs::write(&tmp, &bytes).await?;
                let hash = hex::encode(Sha256::digest(&bytes));
                let r = core
                    .register(collection, name, &tmp, &hash, bytes.len() as u64)
                    .await?;
                Ok((r.job_id, r.duplicate))
            } else {
                let base = server.as_deref().unwrap().trim_end_matches('/');
                let bytes = tokio::fs::read(path).await?;
                let part = reqwest::multipart::Part::bytes(bytes).file_name(name.clone());
                let form = reqwest::multipart::Form::new().part("file", part);
                let resp = client
                    .post(format!("{base}/v1/collections/{collection}/documents"))
                    .multipart(form)
                    .send()
                    .await?;
                let status = resp.status();
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                if !status.is_success() {
                    anyhow::bail!(
                        "{}",
                        v["error"]["message"].as_str().unwrap_or("upload failed")
                    );
                }
                let d = &v["documents"][0];
                Ok((
                    d["job_id"].as_str().unwrap_or_default().to_string(),
                    d["duplicate"].as_bool().unwrap_or(false),
                ))
            }
        }
        .await;
        match r {
            Ok((job, _dup)) => jobs.push((job, name.clone())),
            Err(e) => {
                failures += 1;
                say(&pb, format!("✗ {name}: {e:#}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if no_wait {
        eprintln!("queued {} file(s), {failures} rejected", jobs.len());
        return Ok(if failures > 0 {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        });
    }
    let pb = bar(jobs.len() as u64, "index ");
    let mut pending = jobs.clone();
    let mut chunks_total = 0i64;
    let mut indexed = 0usize;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (job, name) in pending {
            let row: Option<serde_json::Value> = if let Some(core) = &core {
                core.catalog
                    .job(&job)
                    .await?
                    .map(|j| serde_json::to_value(j).unwrap())
            } else {
                let base = server.as_deref().unwrap().trim_end_matches('/');
                let resp = client.get(format!("{base}/v1/jobs/{job}")).send().await?;
                if resp.status().is_success() {
                    Some(resp.json().await?)
                } else {
                    None
                }
            };
            match row
                .as_ref()
                .and_then(|r| r["status"].as_str().map(str::to_string))
                .as_deref()
            {
                Some("done") => {
                    indexed += 1;
                    chunks_total += row.as_ref().unwrap()["total"].as_i64().unwrap_or(0);
                    pb.inc(1);
                }
                Some("failed") => {
                    failures += 1;
                    say(
                        &pb,
                        format!(
                            "✗ {name}: {}",
                            row.as_ref().unwrap()["error"].as_str().unwrap_or("failed")
                        ),
                    );
                    pb.inc(1);
                }
                None => {
                    failures += 1;
                    pb.inc(1);
                }
                _ => still.push((job, name)),
            }
        }
        pending = still;
        pb.set_message(format!("{chunks_total} chunks"));
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    pb.finish_and_clear();
    eprintln!(
        "indexed {indexed} file(s) into `{collection}` ({chunks_total} chunks), {failures} failed"
    );
    if let Some(core) = core {
        core.shutdown().await;
    }
    Ok(if failures > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_sources(sources: &serde_json::Value) {
    if let Some(arr) = sources.as_array() {
        if arr.is_empty() {
            return;
        }
        eprintln!("\nSources:");
        for s in arr {
            let mut label = s["doc_name"].as_str().unwrap_or("").to_string();
            if let Some(p) = s["page"].as_u64() {
                label.push_str(&format!(", page {p}"));
            }
            if let Some(h) = s["heading"].as_str() {
                label.push_str(&format!(", {h}"));
            }
            eprintln!(
                "  [{}] {label} (score {:.3})",
                s["n"],
                s["score"].as_f64().unwrap_or(0.0)
            );
        }
    }
}

async fn ask(
    cfg: Config,
    question: &str,
    collection: &str,
    top_k: Option<usize>,
    server: Option<String>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let mut sources = serde_json::Value::Null;
    let mut done = serde_json::Value::Null;
    let mut out = std::io::stdout();
    if let Some(base) = server {
        let base = base.trim_end_matches('/');
        let mut body = serde_json::json!({"question": question, "collection": collection});
        if let Some(k) = top_k {
            body["top_k"] = k.into();
        }
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/ask"))
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            anyhow::bail!(
                "{}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            );
        }
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        let mut event = String::new();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(pos) = buf.find('\n') {
                let line: String = buf.drain(..=pos).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    let v: serde_json::Value = serde_json::from_str(d.trim()).unwrap_or_default();
                    match event.as_str() {
                        "token" if !json_out => {
                            print!("{}", v["text"].as_str().unwrap_or(""));
                            out.flush().ok();
                        }
                        "sources" => sources = v,
                        "done" => done = v,
                        "error" => {
                            anyhow::bail!("{}", v["error"]["message"].as_str().unwrap_or("error"))
                        }
                        _ => {}
                    }
                }
            }
        }
    } else {
        let core = kb::Core::open(cfg.clone()).await?;
        let params = SearchParams {
            collection: collection.to_string(),
            query: question.to_string(),
            top_k: top_k.unwrap_or(cfg.retrieval.top_k),
            mode: cfg.retrieval.mode,
            doc_ids: None,
        };
        let mut events = core.query.ask(AskParams {
            search: params,
            request_id: uuid::Uuid::new_v4().to_string(),
            conversation_id: None,
            use_cache: true,
        });
        while let Some(ev) = events.next().await {
            match ev {
                AskEvent::Token(t) if !json_out => {
                    print!("{t}");
                    out.flush().ok();
                }
                AskEvent::Sources(s) => sources = serde_json::to_value(s)?,
                AskEvent::Done(d) => done = serde_json::to_value(*d)?,
                AskEvent::Error(e) => {
                    core.shutdown().await;
                    anyhow::bail!("{}", e.message)
                }
                _ => {}
            }
        }
        core.shutdown().await;
    }
    if json_out {
        let mut v = done.clone();
        v["sources"] = sources;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
        print_sources(&sources);
    }
    let declined = done["declined"].as_bool().unwrap_or(false);
    Ok(if declined {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

#[allow(clippy::too_many_arguments)]
async fn search(
    cfg: Config,
    query: &str,
    collection: &str,
    top_k: Option<usize>,
    mode: Option<String>,
    server: Option<String>,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let results: serde_json::Value = if let Some(base) = server {
        let base = base.trim_end_matches('/');
        let mut body = serde_json::json!({"query": query, "collection": collection});
        if let Some(k) = top_k {
            body["top_k"] = k.into();
        }
        if let Some(m) = &mode {
            body["mode"] = m.clone().into();
        }
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/search"))
            .json(&body)
            .send()
            .await?;
        let ok = resp.status().is_success();
        let v: serde_json::Value = resp.json().await?;
        if !ok {
            anyhow::bail!(
                "{}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            );
        }
        v["results"].clone()
    } else {
        let core = kb::Core::open(cfg.clone()).await?;
        let p = SearchParams {
            collection: collection.to_string(),
            query: query.to_string(),
            top_k: top_k.unwrap_or(cfg.retrieval.top_k),
            mode: match mode.as_deref() {
                Some(m) => SearchMode::parse(m)?,
                None => cfg.retrieval.mode,
            },
            doc_ids: None,
        };
        let r = core.query.search(&p).await;
        core.shutdown().await;
        serde_json::to_value(r?)?
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for s in results.as_array().cloned().unwrap_or_default() {
            println!(
                "[{}] {:.4} {}{}",
                s["n"],
                s["score"].as_f64().unwrap_or(0.0),
                s["doc_name"].as_str().unwrap_or(""),
                s["page"]
                    .as_u64()
                    .map(|p| format!(" p.{p}"))
                    .unwrap_or_default()
            );
            let text: String = s["text"].as_str().unwrap_or("").chars().take(200).collect();
            println!("    {}", text.replace('\n', " "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
