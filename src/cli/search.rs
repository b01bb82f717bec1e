//! `kb search`: the ranked chunks for a query, without an answer.

use super::remote::Remote;
use clap::Args;
use kb::config::Config;
use kb::query::SearchParams;
use kb::store::SearchMode;
use std::process::ExitCode;

#[derive(Args)]
pub struct SearchArgs {
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
}

pub async fn run(cfg: Config, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let SearchArgs {
        query,
        collection,
        top_k,
        mode,
        remote: Remote { server },
        json: json_out,
    } = args;
    let results: serde_json::Value = if let Some(base) = server {
        let base = base.trim_end_matches('/');
        let mut body = serde_json::json!({"query": query, "collection": collection});
        if let Some(k) = top_k {
            body["top_k"] = k.into();
        }
        if let Some(m) = &mode {
            body["mode"] = m.clone().into();
        }
        let resp = super::remote::http()
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
