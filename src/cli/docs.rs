//! `kb docs list` and `kb docs delete`: a collection's documents.

use super::remote::{api_error, Remote};
use anyhow::Context;
use clap::Subcommand;
use kb::config::Config;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DocsCmd {
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

pub async fn run(cfg: Config, cmd: DocsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DocsCmd::List {
            collection,
            remote,
            json,
        } => {
            let listing: Option<serde_json::Value> = if let Some(base) = remote.server {
                let base = base.trim_end_matches('/');
                let resp = super::remote::http()
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
                let resp = super::remote::http()
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
