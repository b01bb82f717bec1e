//! The answer caches, measured.
//!
//! - `semantic`: with the real MiniLM embedder, the cosine distance between each question of
//!   `benches/semantic_cache.jsonl` (taken from the public eval set) and its paraphrase (same
//!   answer: a hit is wanted) and its near-miss (similar wording, another answer: a hit would
//!   serve a wrong answer), and the hit and false-hit rates at several thresholds.
//! - `latency`: `/v1/ask` on a real `kb serve` over loopback, on the small eval fixture
//!   collection, answered afresh (`"cache": false`) vs. from the exact cache, in the same run:
//!   time to the first byte of the SSE stream and to the end of `done`.
//!
//! `KB_TEST_MODELS_DIR=/root/.cache/kb-models cargo bench --bench cache [-- semantic|latency]`
//! (`KB_BENCH_ASKS` asks per variant, default 200).

mod common;

use common::*;
use kb::models::{Embedder, Priority};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn models_dir() -> PathBuf {
    std::env::var_os("KB_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

#[derive(serde::Deserialize)]
struct Item {
    id: String,
    question: String,
    paraphrase: String,
    near_miss: String,
}

async fn semantic() -> anyhow::Result<()> {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let emb = kb::models::local_embed::LocalEmbedder::load(&dir, "all-MiniLM-L6-v2")?;
    let items: Vec<Item> = std::fs::read_to_string(root().join("benches/semantic_cache.jsonl"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut para = Vec::new();
    let mut near = Vec::new();
    // Unrelated: each question against every other item's question.
    let mut other = Vec::new();
    let mut originals = Vec::new();
    for it in &items {
        let v = emb
            .embed(
                vec![
                    it.question.clone(),
                    it.paraphrase.clone(),
                    it.near_miss.clone(),
                ],
                Priority::Interactive,
            )
            .await?;
        para.push(kb::cache::cosine_distance(&v[0], &v[1]));
        near.push(kb::cache::cosine_distance(&v[0], &v[2]));
        originals.push(v[0].clone());
    }
    for (i, a) in originals.iter().enumerate() {
        for b in &originals[i + 1..] {
            other.push(kb::cache::cosine_distance(a, b));
        }
    }
    let mut t = Table::new(
        format!(
            "semantic cache: {} questions, MiniLM-L6 cosine distance to the cached question",
            items.len()
        ),
        &["item", "paraphrase", "near-miss"],
    );
    for (i, it) in items.iter().enumerate() {
        t.row(vec![
            it.id.clone(),
            num(para[i] as f64),
            num(near[i] as f64),
        ]);
    }
    t.print();
    let mut t = Table::new(
        "hit rate (paraphrases served) and false-hit rate (near-misses / unrelated questions served)",
        &["max distance", "hits", "false hits (near-miss)", "false hits (unrelated)"],
    );
    let rate = |v: &[f32], th: f32| v.iter().filter(|d| **d <= th).count() as f64 / v.len() as f64;
    for th in [0.02f32, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3] {
        t.row(vec![
            format!("{th}"),
            format!("{:.2}", rate(&para, th)),
            format!("{:.2}", rate(&near, th)),
            format!("{:.3}", rate(&other, th)),
        ]);
    }
    let min_near = near.iter().cloned().fold(f32::INFINITY, f32::min);
    t.note(format!(
        "closest near-miss: {}; paraphrases within it: {:.2}",
        num(min_near as f64),
        rate(&para, min_near - 1e-6)
    ));
    t.print();
    Ok(())
}

/// `kb serve` on a free loopback port over `data`; returns the child and its base URL.
fn spawn_kb(data: &std::path::Path) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kb"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KB_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("KB_MODELS_DIR", models_dir())
        .env("KB_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("kb listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected: {line}"))?
        .to_string();
    Ok((child, base))
}

fn latency() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("kb-bench-cache-")
        .tempdir()?;
    let (mut child, base) = spawn_kb(&tmp.path().join("data"))?;
    let http = reqwest::blocking::Client::new();
    for name in ["bakery.md", "lighthouse.md", "observatory.md"] {
        let bytes = std::fs::read(root().join("tests/fixtures/eval/docs").join(name))?;
        let form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(bytes).file_name(name),
        );
        let v: serde_json::Value = http
            .post(format!("{base}/v1/collections/bench/documents"))
            .multipart(form)
            .send()?
            .json()?;
        let job = v["documents"][0]["job_id"].as_str().unwrap().to_string();
        loop {
            let j: serde_json::Value = http.get(format!("{base}/v1/jobs/{job}")).send()?.json()?;
            if j["status"] == "done" {
                break;
            }
            anyhow::ensure!(j["status"] != "failed", "job failed: {j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let asks = env_usize("KB_BENCH_ASKS", 200);
    let question = "At what time is the Kessel Point lamp lit in winter?";
    let mut results = Vec::new();
    for (label, use_cache) in [("uncached", false), ("exact cache hit", true)] {
        let mut total = Vec::new();
        let mut first = Vec::new();
        for _ in 0..asks {
            use std::io::Read;
            let t = Instant::now();
            let mut r = http
                .post(format!("{base}/v1/ask"))
                .json(&serde_json::json!({"collection": "bench", "question": question, "cache": use_cache}))
                .send()?;
            let mut buf = [0u8; 1];
            r.read_exact(&mut buf)?;
            first.push(t.elapsed().as_secs_f64() * 1e3);
            let mut rest = String::new();
            r.read_to_string(&mut rest)?;
            total.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(rest.contains("event: done"), "{rest}");
            anyhow::ensure!(
                rest.contains("\"cached\":true") == use_cache,
                "{label}: {}",
                &rest[..200.min(rest.len())]
            );
        }
        total.sort_by(f64::total_cmp);
        first.sort_by(f64::total_cmp);
        results.push((label, total, first));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut t = Table::new(
        format!("/v1/ask over loopback HTTP, {asks} asks each, extractive answerer, 3 documents"),
        &["path", "first byte p50 ms", "done p50 ms", "done p99 ms"],
    );
    for (label, total, first) in &results {
        t.row(vec![
            label.to_string(),
            num(percentile(first, 50.0)),
            num(percentile(total, 50.0)),
            num(percentile(total, 99.0)),
        ]);
    }
    t.note(format!(
        "hit path p50 is {} of the uncached p50 (both in this run)",
        ratio(
            percentile(&results[1].1, 50.0),
            percentile(&results[0].1, 50.0)
        )
    ));
    t.print();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let s = sections();
    rt.block_on(async {
        if wanted(&s, "semantic") {
            semantic().await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if wanted(&s, "latency") {
        latency()?;
    }
    Ok(())
}
