//! Stage timings of one forward pass: `cargo run -p kb-bert --example profile -- MODEL_DIR [threads]`.
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let threads: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(0);
    let cfg: kb_bert::BertDims =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let bert = kb_bert::Bert::load(&dir.join("model.safetensors"), cfg, threads)?;
    let seqs: Vec<Vec<u32>> = (0..8)
        .map(|s| {
            (0..256)
                .map(|i| 1000 + ((i * 7 + s * 13) % 20000) as u32)
                .collect()
        })
        .collect();
    bert.embed(&seqs)?;
    for _ in 0..3 {
        let t = Instant::now();
        bert.embed(&seqs)?;
        let s = t.elapsed().as_secs_f64();
        println!("{:.1} ms  {:.0} tok/s", s * 1e3, 2048.0 / s);
    }
    Ok(())
}
