//! What the governor adds to a model call: kb's OpenAI-compatible clients (token estimate,
//! batching, admission through the governor's buckets, queue and breaker, the call record and
//! its log line) against a direct reqwest call doing the same HTTP and JSON work, both talking
//! to a local zero-latency upstream in the same run.
//!
//! Cases take turns call by call, so a noisy neighbour slows them alike. Overhead = governed
//! minus direct at the same percentile. A third row times admission alone (acquire + release of
//! a slot, no I/O) with rate limits switched on so the buckets are exercised.
//!
//! `cargo bench --bench governor` (or `--profile dev` for the cached build); `KB_BENCH_CALLS`
//! (default 2000) calls per case.

mod common;

use axum::response::IntoResponse;
use axum::routing::post;
use common::{env_usize, num, percentile, pin_timer_thread, Table};
use futures::StreamExt;
use kb::models::governor::{Governor, Limits, Policy};
use kb::models::openai::{Client, OpenAiChat, OpenAiEmbedder};
use kb::models::{ChatModel, ChatRequest, Embedder, Message, Priority};
use serde_json::{json, Value};
use std::time::Instant;

const DIM: usize = 384;

async fn embeddings(body: axum::Json<Value>) -> axum::response::Response {
    let n = body.0["input"].as_array().map_or(1, |a| a.len());
    let v: Vec<f32> = (0..DIM).map(|i| i as f32 / DIM as f32).collect();
    axum::Json(json!({
        "data": (0..n).map(|i| json!({"index": i, "embedding": v})).collect::<Vec<_>>(),
        "usage": {"prompt_tokens": 12, "total_tokens": 12},
    }))
    .into_response()
}

async fn completions() -> axum::response::Response {
    let mut out = String::new();
    for p in ["Twelve ", "lanterns ", "hang ", "there ", "[1]."] {
        out.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": p}}]})
        ));
    }
    out.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    ));
    out.push_str(&format!(
        "data: {}\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 5}})
    ));
    out.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], out).into_response()
}

fn start_upstream() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/v1/embeddings", post(embeddings))
                .route("/v1/chat/completions", post(completions));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{}/v1", rx.recv().unwrap())
}

fn ms(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(v, p) * 1000.0
}

fn main() {
    let calls = env_usize("KB_BENCH_CALLS", 2000);
    // Log lines are formatted (as JSON, at info) and thrown away: their cost is counted.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter("info")
        .json()
        .init();
    let base = start_upstream();
    pin_timer_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = "How many lanterns hang in the east hall of the old library?".to_string();
    let question = ChatRequest {
        messages: vec![
            Message::new("system", "Answer from the sources; cite them as [n]."),
            Message::new(
                "user",
                format!("[1] (hall.md) Twelve lanterns hang in the east hall.\n\n{text}"),
            ),
        ],
        max_tokens: 64,
        temperature: 0.0,
    };
    let limits = Limits {
        // Limits far above what the bench reaches, so the buckets are consulted but never wait.
        rpm: 1_000_000_000,
        tpm: 2_000_000_000,
        ..Limits::default()
    };
    let governor = Governor::new(Policy::default());
    let client = Client::new(&base, Some("sk-bench".into()), Policy::default()).unwrap();
    let embedder = OpenAiEmbedder::new(
        client.clone(),
        "text-embedding-3-small",
        DIM,
        &governor,
        limits.clone(),
        64,
        8192,
    );
    let chat = OpenAiChat::new(client, "gpt-4o-mini", &governor, limits.clone());
    let admission = governor.upstream("bench", "admission", limits);
    let http = reqwest::Client::new();

    let embed_body = json!({"model": "text-embedding-3-small", "input": [text]});
    let chat_body = json!({
        "model": "gpt-4o-mini", "messages": question.messages, "stream": true,
        "stream_options": {"include_usage": true}, "max_tokens": 64, "temperature": 0.0,
    });
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    rt.block_on(async {
        for i in 0..calls + 50 {
            // 0: direct embeddings
            let s = Instant::now();
            let v: Value = http
                .post(format!("{base}/embeddings"))
                .bearer_auth("sk-bench")
                .json(&embed_body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let emb: Vec<f32> = v["data"][0]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(emb.len(), DIM);
            let d0 = s.elapsed().as_secs_f64();
            // 1: governed embeddings
            let s = Instant::now();
            let out = embedder
                .embed(vec![text.clone()], Priority::Interactive)
                .await
                .unwrap();
            assert_eq!(out[0].len(), DIM);
            let d1 = s.elapsed().as_secs_f64();
            // 2: direct chat stream, read to the end
            let s = Instant::now();
            let mut body = http
                .post(format!("{base}/chat/completions"))
                .bearer_auth("sk-bench")
                .json(&chat_body)
                .send()
                .await
                .unwrap()
                .bytes_stream();
            let mut n = 0;
            while let Some(b) = body.next().await {
                n += b.unwrap().len();
            }
            assert!(n > 0);
            let d2 = s.elapsed().as_secs_f64();
            // 3: governed chat stream
            let s = Instant::now();
            let mut st = chat.stream(question.clone()).await.unwrap();
            let mut k = 0;
            while let Some(d) = st.next().await {
                d.unwrap();
                k += 1;
            }
            assert!(k >= 5);
            let d3 = s.elapsed().as_secs_f64();
            // 4: admission alone
            let s = Instant::now();
            let p = admission
                .acquire(Priority::Interactive, 100, false)
                .await
                .unwrap();
            drop(p);
            let d4 = s.elapsed().as_secs_f64();
            if i >= 50 {
                for (v, d) in t.iter_mut().zip([d0, d1, d2, d3, d4]) {
                    v.push(d);
                }
            }
        }
    });
    let [mut d_emb, mut g_emb, mut d_chat, mut g_chat, mut adm] = t;
    let mut table = Table::new(
        format!("governor overhead per call ({calls} calls per case, local zero-latency upstream)"),
        &[
            "case",
            "direct p50 ms",
            "kb p50 ms",
            "direct p99 ms",
            "kb p99 ms",
            "overhead p50 ms",
            "overhead p99 ms",
        ],
    );
    for (name, d, g) in [
        ("embeddings (1 text)", &mut d_emb, &mut g_emb),
        ("chat stream (5 tokens)", &mut d_chat, &mut g_chat),
    ] {
        let (d50, g50, d99, g99) = (ms(d, 50.0), ms(g, 50.0), ms(d, 99.0), ms(g, 99.0));
        table.row(vec![
            name.into(),
            num(d50),
            num(g50),
            num(d99),
            num(g99),
            num(g50 - d50),
            num(g99 - d99),
        ]);
    }
    let (a50, a99) = (ms(&mut adm, 50.0), ms(&mut adm, 99.0));
    table.row(vec![
        "admission alone (acquire + release)".into(),
        "-".into(),
        num(a50),
        "-".into(),
        num(a99),
        num(a50),
        num(a99),
    ]);
    table.note("kb = kb's client through the governor: token estimate (tiktoken), batching, buckets, queue, breaker, call record and log line, lenient parsing.");
    table.note("direct = reqwest with the same request and JSON parsing, no governor. Overhead = kb - direct at the same percentile; target < 1 ms at p99.");
    table.print();
}
