//! `kb ingest`: upload files into a collection (the data dir directly, or a server) and wait for
//! them to be indexed, with progress bars.

use super::remote::Remote;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kb::config::Config;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct IngestArgs {
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

pub async fn run(cfg: Config, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let IngestArgs {
        collection,
        paths,
        remote: Remote { server },
        no_wait,
    } = args;
    let collection = collection.as_str();
    let files = names_for(&paths)?;
    if files.is_empty() {
        anyhow::bail!("no files found");
    }
    let pb = bar(files.len() as u64, "upload");
    let mut jobs: Vec<(String, String)> = Vec::new();
    let mut failures = 0;
    let client = super::remote::http();
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
                let v = super::remote::json_ok(resp).await?;
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
        // One query (with --server, one request per `MAX_JOB_IDS` ids) for every unfinished
        // job: polling each job alone took most of a core from the embedder on a large directory.
        let ids: Vec<String> = pending.iter().map(|(job, _)| job.clone()).collect();
        let rows: HashMap<String, serde_json::Value> = if let Some(core) = &core {
            core.catalog
                .jobs(&ids)
                .await?
                .into_iter()
                .map(|j| (j.id.clone(), serde_json::to_value(j).unwrap()))
                .collect()
        } else {
            let base = server.as_deref().unwrap().trim_end_matches('/');
            let mut rows = HashMap::new();
            for part in ids.chunks(kb::api::MAX_JOB_IDS) {
                let resp = client
                    .get(format!("{base}/v1/jobs"))
                    .query(&[("ids", part.join(","))])
                    .send()
                    .await?;
                let v = super::remote::json_ok(resp)
                    .await
                    .context("following the jobs")?;
                for j in v["jobs"].as_array().into_iter().flatten() {
                    rows.insert(j["id"].as_str().unwrap_or_default().to_string(), j.clone());
                }
            }
            rows
        };
        let mut still = Vec::new();
        for (job, name) in pending {
            let row = rows.get(&job);
            match row.and_then(|r| r["status"].as_str()) {
                Some("done") => {
                    indexed += 1;
                    chunks_total += row.unwrap()["total"].as_i64().unwrap_or(0);
                    pb.inc(1);
                }
                Some("failed") => {
                    failures += 1;
                    say(
                        &pb,
                        format!(
                            "✗ {name}: {}",
                            row.unwrap()["error"].as_str().unwrap_or("failed")
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
            tokio::time::sleep(Duration::from_millis(500)).await;
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
