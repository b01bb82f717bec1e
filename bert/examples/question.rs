//! Latency of embedding one short sequence (a question), the interactive path:
//! `cargo run -p kb-bert --example question -- MODEL_DIR [threads] [f32|int8] [tokens]`.
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let threads: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(0);
    let precision = match args.get(3).map(String::as_str).unwrap_or("f32") {
        "int8" => kb_bert::Precision::Int8,
        _ => kb_bert::Precision::F32,
    };
    let tokens: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(16);
    let cfg: kb_bert::BertDims =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let bert = kb_bert::Bert::load_with(&dir.join("model.safetensors"), cfg, threads, precision)?;
    let seq: Vec<Vec<u32>> = vec![(0..tokens)
        .map(|i| 1000 + (i * 37 % 20000) as u32)
        .collect()];
    for _ in 0..20 {
        bert.embed(&seq)?;
    }
    let mut ms: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            bert.embed(&seq).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{precision:?} threads {threads} tokens {tokens}: p50 {:.2} ms p99 {:.2} ms",
        ms[150], ms[297]
    );
    Ok(())
}
