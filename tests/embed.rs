//! kb's native BERT encoder gives the same vectors as candle's `BertModel` (the reference) on
//! the real all-MiniLM-L6-v2 weights, whatever the batch: texts are never padded, so a text's
//! vector does not depend on what it is batched with.

mod common;
use common::*;
use kb::models::local_embed::{Engine, LocalEmbedder};
use kb::models::{Embedder, Priority};

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn native_engine_matches_candle() {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let candle = LocalEmbedder::load_with(&dir, "all-MiniLM-L6-v2", Engine::Candle, 2).unwrap();
    let native = LocalEmbedder::load_with(&dir, "all-MiniLM-L6-v2", Engine::Native, 2).unwrap();
    let long = std::fs::read_to_string(root().join("tests/fixtures/eval/docs/lighthouse.md"))
        .unwrap()
        .repeat(3); // past the 256-token input: both must truncate the same way
    let texts: Vec<String> = vec![
        "What is the default port?".into(),
        "a".into(),
        "Snapshots of the zephyr catalog are written every 45 minutes to the spool directory."
            .into(),
        std::fs::read_to_string(root().join("tests/fixtures/eval/docs/bakery.md")).unwrap(),
        long,
        "Ünïcödé — and emoji 🚀 with CJK 漢字".into(),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = rt
        .block_on(candle.embed(texts.clone(), Priority::Bulk))
        .unwrap();
    let b = rt
        .block_on(native.embed(texts.clone(), Priority::Bulk))
        .unwrap();
    assert_eq!(a.len(), texts.len());
    assert_eq!(b.len(), texts.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(y.len(), 384);
        let norm = cos(y, y).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
        let c = cos(x, y);
        assert!(c >= 0.9999, "text {i}: cosine {c} against candle");
    }
    // One at a time: the same vectors as in the batch (no padding effects).
    for (i, t) in texts.iter().enumerate() {
        let one = rt
            .block_on(native.embed(vec![t.clone()], Priority::Interactive))
            .unwrap();
        let c = cos(&one[0], &b[i]);
        assert!(c >= 0.99999, "text {i}: alone vs batched cosine {c}");
    }
    // Different texts get different vectors (a broken encoder often returns one vector).
    assert!(cos(&b[0], &b[3]) < 0.9);
    candle.shutdown();
    native.shutdown();
}
