//! The int8 encoder on the real all-MiniLM-L6-v2 weights (`KB_TEST_MODELS_DIR`, else
//! `../models`): every integer kernel this CPU runs gives the same vectors bit for bit, and
//! they stay close to f32's.
use kb_bert::{Bert, BertDims, Int8Kernel, Precision};
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("KB_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"))
        .join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "model files missing in {} (set KB_TEST_MODELS_DIR)",
        dir.display()
    );
    dir
}

fn load(precision: Precision) -> Bert {
    let dir = model_dir();
    let dims: BertDims =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    Bert::load_with(&dir.join("model.safetensors"), dims, 2, precision).unwrap()
}

#[test]
fn int8_kernels_agree_bitwise_and_stay_close_to_f32() {
    // [CLS] … [SEP] with assorted word pieces; lengths off the tile sizes.
    let seqs: Vec<Vec<u32>> = [1usize, 7, 64, 131, 256]
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let mut v = vec![101u32];
            v.extend((0..n.saturating_sub(2)).map(|i| 2000 + ((i * 37 + s * 101) % 25000) as u32));
            v.push(102);
            v.truncate(n.max(2));
            v
        })
        .collect();
    let f32v = load(Precision::F32).embed(&seqs).unwrap();
    let mut bert = load(Precision::Int8);
    assert_eq!(bert.precision(), Precision::Int8);
    let best = bert.int8_kernel();
    assert_eq!(best, Int8Kernel::detect());
    let reference = bert.embed(&seqs).unwrap();
    for (a, b) in f32v.iter().zip(&reference) {
        let c: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(c > 0.98, "int8 vs f32 cosine {c}");
    }
    for k in [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Scalar] {
        if !k.available() {
            assert!(bert.set_int8_kernel(k).is_err());
            continue;
        }
        bert.set_int8_kernel(k).unwrap();
        assert_eq!(bert.embed(&seqs).unwrap(), reference, "kernel {}", k.name());
    }
}
