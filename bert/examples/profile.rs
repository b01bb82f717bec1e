//! Stage timings of one forward pass:
//! `cargo run -p kb-bert --example profile -- MODEL_DIR [threads] [f32|int8|both]`.
//! With `both`, the two precisions take turns, so machine noise hits both.
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let threads: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(0);
    let which = args.get(3).map(String::as_str).unwrap_or("f32");
    let precisions: Vec<kb_bert::Precision> = match which {
        "f32" => vec![kb_bert::Precision::F32],
        "int8" => vec![kb_bert::Precision::Int8],
        "both" => vec![kb_bert::Precision::F32, kb_bert::Precision::Int8],
        o => anyhow::bail!("unknown precision {o}"),
    };
    let mut models = Vec::new();
    for p in precisions {
        let cfg: kb_bert::BertDims =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        models.push(kb_bert::Bert::load_with(
            &dir.join("model.safetensors"),
            cfg,
            threads,
            p,
        )?);
    }
    let seqs: Vec<Vec<u32>> = (0..8)
        .map(|s| {
            (0..256)
                .map(|i| 1000 + ((i * 7 + s * 13) % 20000) as u32)
                .collect()
        })
        .collect();
    let vecs: Vec<Vec<Vec<f32>>> = models
        .iter()
        .map(|b| b.embed(&seqs))
        .collect::<anyhow::Result<_>>()?;
    if vecs.len() == 2 {
        let cos = vecs[0]
            .iter()
            .zip(&vecs[1])
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
            .fold(f32::INFINITY, f32::min);
        println!("lowest cosine f32 vs int8: {cos:.5}");
    }
    for _ in 0..3 {
        for bert in &models {
            let t = Instant::now();
            bert.embed(&seqs)?;
            let s = t.elapsed().as_secs_f64();
            println!(
                "{:?}: {:.1} ms  {:.0} tok/s",
                bert.precision(),
                s * 1e3,
                2048.0 / s
            );
        }
    }
    Ok(())
}
