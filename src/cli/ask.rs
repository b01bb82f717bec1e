//! `kb ask`: ask a question, streaming the answer to stdout and the sources to stderr.

use super::remote::Remote;
use anyhow::Context;
use clap::Args;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use kb::config::Config;
use kb::query::{AskEvent, AskParams, SearchParams};
use std::io::Write;
use std::process::ExitCode;

#[derive(Args)]
pub struct AskArgs {
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

pub async fn run(cfg: Config, args: AskArgs) -> anyhow::Result<ExitCode> {
    let AskArgs {
        question,
        collection,
        top_k,
        remote: Remote { server },
        json: json_out,
    } = args;
    let mut sources = serde_json::Value::Null;
    let mut done = serde_json::Value::Null;
    let mut out = std::io::stdout();
    if let Some(base) = server {
        let base = base.trim_end_matches('/');
        let mut body = serde_json::json!({"question": question, "collection": collection});
        if let Some(k) = top_k {
            body["top_k"] = k.into();
        }
        let resp = super::remote::http()
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
        // Events are parsed from the byte stream as a whole: a network chunk may end inside an
        // event or inside a UTF-8 character.
        let mut events = resp.bytes_stream().eventsource();
        while let Some(ev) = events.next().await {
            let ev = ev.context("reading the answer stream")?;
            let v: serde_json::Value = serde_json::from_str(ev.data.trim()).unwrap_or_default();
            match ev.event.as_str() {
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
            key_id: None,
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
