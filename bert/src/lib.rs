//! A BERT encoder for sentence embeddings, written for CPU throughput: the forward pass of
//! `BertModel` (post-LayerNorm, absolute positions, GELU) in f32, on raw slices.
//!
//! Why not candle's `BertModel`: on this workload (256-token chunks) its matrix products run at
//! the same speed as here (both use the `gemm` crate), but the rest — padding every sequence to
//! the batch's longest, attention as reshaped/transposed tensors with copies, unfused softmax,
//! GELU and LayerNorm — took more time than the products. Here:
//! - sequences are never padded: the linear layers run on all tokens of the batch stacked
//!   (they do not care where a sequence ends) and attention runs per sequence and head, in
//!   blocks of query rows that stay in L1;
//! - optionally (`Precision::Int8`, module `int8`) the linear layers run in int8 with VNNI;
//! - Q, K and V are one product with the three weight matrices stacked;
//! - bias, GELU, residual and LayerNorm are fused loops over rows;
//! - work runs on a dedicated rayon pool of a fixed size, so inference has its own thread
//!   budget and does not compete with the async runtime's workers.

mod attention;
mod int8;
mod ops;
mod small;

use attention::attention;
use ops::{add_and_norm, gelu_slice, layer_norm, linear};

pub use int8::Int8Kernel;

use gemm::Parallelism;
use int8::QLinear;
use rayon::prelude::*;
use safetensors::SafeTensors;
use std::path::Path;

/// The architecture numbers, from the model's `config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertDims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f32 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

/// The number format of the linear layers' weights and products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// The linear layers in int8 (weights per output channel, activations per row, i32
    /// sums); embeddings, attention, softmax, GELU and LayerNorm stay f32.
    Int8,
}

/// A linear layer, `[rows, k] -> [rows, n]`.
enum Linear {
    /// Weights [n, k], rows are output features (PyTorch's layout).
    F32 {
        w: Vec<f32>,
        b: Vec<f32>,
        n: usize,
        k: usize,
        /// Short inputs may take `small.rs` (sums in another order than `gemm`'s). Off for the
        /// f32 layer of an int8 model, whose vectors are the same alone and in any batch, bit
        /// for bit.
        short: bool,
    },
    Int8(QLinear),
}

impl Linear {
    fn new(w: Vec<f32>, b: Vec<f32>, n: usize, k: usize, precision: Precision) -> Linear {
        match precision {
            Precision::F32 => Linear::F32 {
                w,
                b,
                n,
                k,
                short: true,
            },
            Precision::Int8 => Linear::Int8(QLinear::new(&w, &b, n, k)),
        }
    }

    fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], par: Parallelism, kern: Int8Kernel) {
        match self {
            Linear::F32 { w, b, n, k, short } => linear(x, rows, *k, w, b, *n, out, par, *short),
            Linear::Int8(q) => q.forward(x, rows, out, kern),
        }
    }
}

struct Layer {
    /// Q, K and V stacked: 3H outputs.
    qkv: Linear,
    out: Linear,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    ffn1: Linear,
    ffn2: Linear,
    ln2_g: Vec<f32>,
    ln2_b: Vec<f32>,
}

pub struct Bert {
    d: BertDims,
    word: Vec<f32>,
    pos: Vec<f32>,
    /// Token type 0 (single-segment input).
    type0: Vec<f32>,
    ln_g: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<Layer>,
    pool: rayon::ThreadPool,
    threads: usize,
    precision: Precision,
    /// The integer kernel of int8 layers.
    kernel: Int8Kernel,
    /// `KB_BERT_PROFILE` was set at load: print per-stage times of each forward pass.
    profile: bool,
}

fn tensor(st: &SafeTensors, prefix: &str, name: &str, len: usize) -> anyhow::Result<Vec<f32>> {
    let t = st
        .tensor(&format!("{prefix}{name}"))
        .map_err(|e| anyhow::anyhow!("tensor {prefix}{name}: {e}"))?;
    if t.dtype() != safetensors::Dtype::F32 {
        anyhow::bail!("tensor {name} is {:?}; only F32 is supported", t.dtype());
    }
    let data = t.data();
    if data.len() != len * 4 {
        anyhow::bail!(
            "tensor {name} has {} values, expected {len}",
            data.len() / 4
        );
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl Bert {
    /// Load weights from a sentence-transformers / Hugging Face `model.safetensors` (with or
    /// without the `bert.` prefix). `threads` = 0 uses every core. f32 precision.
    pub fn load(weights: &Path, d: BertDims, threads: usize) -> anyhow::Result<Bert> {
        Bert::load_with(weights, d, threads, Precision::F32)
    }

    /// As [`Bert::load`], with the linear layers in `precision`.
    pub fn load_with(
        weights: &Path,
        d: BertDims,
        threads: usize,
        precision: Precision,
    ) -> anyhow::Result<Bert> {
        if d.hidden_act != "gelu" {
            anyhow::bail!("hidden_act `{}` is not supported (gelu only)", d.hidden_act);
        }
        if d.num_attention_heads == 0 || !d.hidden_size.is_multiple_of(d.num_attention_heads) {
            anyhow::bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let bytes = std::fs::read(weights)?;
        let st = SafeTensors::deserialize(&bytes)?;
        let prefix = if st.names().iter().any(|n| n.starts_with("bert.")) {
            "bert."
        } else {
            ""
        };
        let (h, i) = (d.hidden_size, d.intermediate_size);
        let t = |name: &str, len: usize| tensor(&st, prefix, name, len);
        let type_all = t("embeddings.token_type_embeddings.weight", 2 * h)
            .or_else(|_| t("embeddings.token_type_embeddings.weight", h))?;
        let mut layers = Vec::with_capacity(d.num_hidden_layers);
        for l in 0..d.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            let mut wqkv = t(&format!("{p}attention.self.query.weight"), h * h)?;
            wqkv.extend(t(&format!("{p}attention.self.key.weight"), h * h)?);
            wqkv.extend(t(&format!("{p}attention.self.value.weight"), h * h)?);
            let mut bqkv = t(&format!("{p}attention.self.query.bias"), h)?;
            bqkv.extend(t(&format!("{p}attention.self.key.bias"), h)?);
            bqkv.extend(t(&format!("{p}attention.self.value.bias"), h)?);
            let lin = |w: &str, b: &str, n: usize, k: usize| -> anyhow::Result<Linear> {
                Ok(Linear::new(
                    t(&format!("{p}{w}"), n * k)?,
                    t(&format!("{p}{b}"), n)?,
                    n,
                    k,
                    precision,
                ))
            };
            layers.push(Layer {
                qkv: Linear::new(wqkv, bqkv, 3 * h, h, precision),
                out: lin(
                    "attention.output.dense.weight",
                    "attention.output.dense.bias",
                    h,
                    h,
                )?,
                ln1_g: t(&format!("{p}attention.output.LayerNorm.weight"), h)?,
                ln1_b: t(&format!("{p}attention.output.LayerNorm.bias"), h)?,
                ffn1: lin("intermediate.dense.weight", "intermediate.dense.bias", i, h)?,
                // The first block's FFN output stays f32 in int8 mode: its input (the GELU
                // output) takes rare huge values in a few channels on degenerate text (the dot
                // leaders of a book index), which leave nothing of the other channels after
                // per-row quantisation. Measured on 1,000 corpus chunks: lowest cosine to f32
                // 0.969 with it in int8, 0.996 without; about 1/18 of the products.
                ffn2: if l == 0 && precision == Precision::Int8 {
                    Linear::F32 {
                        w: t(&format!("{p}output.dense.weight"), h * i)?,
                        b: t(&format!("{p}output.dense.bias"), h)?,
                        n: h,
                        k: i,
                        short: false,
                    }
                } else {
                    lin("output.dense.weight", "output.dense.bias", h, i)?
                },
                ln2_g: t(&format!("{p}output.LayerNorm.weight"), h)?,
                ln2_b: t(&format!("{p}output.LayerNorm.bias"), h)?,
            });
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kb-embed-{i}"))
            .build()?;
        Ok(Bert {
            word: t("embeddings.word_embeddings.weight", d.vocab_size * h)?,
            pos: t(
                "embeddings.position_embeddings.weight",
                d.max_position_embeddings * h,
            )?,
            type0: type_all[..h].to_vec(),
            ln_g: t("embeddings.LayerNorm.weight", h)?,
            ln_b: t("embeddings.LayerNorm.bias", h)?,
            layers,
            d,
            pool,
            threads,
            precision,
            kernel: Int8Kernel::detect(),
            profile: std::env::var_os("KB_BERT_PROFILE").is_some(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.d.hidden_size
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The integer kernel int8 layers use (chosen at load from the CPU's features).
    pub fn int8_kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// Use another integer kernel (e.g. to check the portable one against the fastest);
    /// fails if this CPU cannot run it.
    pub fn set_int8_kernel(&mut self, kernel: Int8Kernel) -> anyhow::Result<()> {
        if !kernel.available() {
            anyhow::bail!("this CPU cannot run the {} kernel", kernel.name());
        }
        self.kernel = kernel;
        Ok(())
    }

    /// Mean-pooled, L2-normalised embeddings of token-id sequences (each already carrying its
    /// special tokens and at most `max_position_embeddings` long).
    pub fn embed(&self, seqs: &[Vec<u32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        for s in seqs {
            if s.is_empty() || s.len() > self.d.max_position_embeddings {
                anyhow::bail!("sequence length {} out of range", s.len());
            }
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= self.d.vocab_size) {
                anyhow::bail!("token id {bad} outside the vocabulary");
            }
        }
        if seqs.is_empty() {
            return Ok(vec![]);
        }
        Ok(self.pool.install(|| self.forward(seqs)))
    }

    fn forward(&self, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.d.hidden_size;
        let inter = self.d.intermediate_size;
        let heads = self.d.num_attention_heads;
        let eps = self.d.layer_norm_eps;
        let starts: Vec<usize> = seqs
            .iter()
            .scan(0, |acc, s| {
                let st = *acc;
                *acc += s.len();
                Some(st)
            })
            .collect();
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let par = if self.threads > 1 {
            Parallelism::Rayon(self.threads)
        } else {
            Parallelism::None
        };

        // Embeddings + LayerNorm.
        let mut x = vec![0f32; total * h];
        let rows: Vec<(usize, u32)> = seqs
            .iter()
            .flat_map(|s| s.iter().enumerate().map(|(p, &id)| (p, id)))
            .collect();
        x.par_chunks_mut(h)
            .zip(rows.par_iter())
            .for_each(|(row, &(p, id))| {
                let w = &self.word[id as usize * h..][..h];
                let pe = &self.pos[p * h..][..h];
                for j in 0..h {
                    row[j] = w[j] + pe[j] + self.type0[j];
                }
                layer_norm(row, &self.ln_g, &self.ln_b, eps);
            });

        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut tmp = vec![0f32; total * h];
        let mut mid = vec![0f32; total * inter];
        let prof = self.profile;
        let kern = self.kernel;
        let mut tm = [0f64; 6];
        let mut clock = std::time::Instant::now();
        let mut lap = |i: usize, tm: &mut [f64; 6]| {
            if prof {
                tm[i] += clock.elapsed().as_secs_f64();
                clock = std::time::Instant::now();
            }
        };
        for l in &self.layers {
            lap(5, &mut tm);
            // Q, K, V in one product.
            l.qkv.apply(&x, total, &mut qkv, par, kern);
            lap(0, &mut tm);
            attention(&qkv, &mut ctx, seqs, &starts, h, heads);
            lap(1, &mut tm);
            // Output projection, residual, LayerNorm.
            l.out.apply(&ctx, total, &mut tmp, par, kern);
            lap(0, &mut tm);
            add_and_norm(&mut x, &tmp, h, &l.ln1_g, &l.ln1_b, eps);
            lap(2, &mut tm);
            // Feed-forward.
            l.ffn1.apply(&x, total, &mut mid, par, kern);
            lap(0, &mut tm);
            mid.par_chunks_mut(inter).for_each(gelu_slice);
            lap(3, &mut tm);
            l.ffn2.apply(&mid, total, &mut tmp, par, kern);
            lap(0, &mut tm);
            add_and_norm(&mut x, &tmp, h, &l.ln2_g, &l.ln2_b, eps);
            lap(2, &mut tm);
        }

        lap(5, &mut tm);
        if prof {
            eprintln!(
                "linear {:.1} ms, attention {:.1}, residual+ln {:.1}, gelu {:.1}, other {:.1}",
                tm[0] * 1e3,
                tm[1] * 1e3,
                tm[2] * 1e3,
                tm[3] * 1e3,
                tm[5] * 1e3
            );
        }
        // Mean pooling over each sequence's tokens, then L2 normalisation.
        seqs.iter()
            .zip(&starts)
            .map(|(s, &st)| {
                let mut v = vec![0f32; h];
                for r in 0..s.len() {
                    let row = &x[(st + r) * h..][..h];
                    for j in 0..h {
                        v[j] += row[j];
                    }
                }
                let n = s.len() as f32;
                v.iter_mut().for_each(|a| *a /= n);
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect()
    }
}

/// The residual connection and LayerNorm, row by row: `x = LN(x + y)`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::*;
    use crate::ops::*;

    #[test]
    fn exp_is_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            // f32 range reduction loses about |x| * 6e-8 of relative precision.
            let tol = 2e-6f32.max(x.abs() * 1e-7);
            assert!(((got - want) / want).abs() < tol, "x={x}: {got} vs {want}");
        }
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn erf_matches_libm() {
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            assert!((erf(x) - libm::erff(x)).abs() < 2e-6, "x={x}");
        }
    }

    #[test]
    fn softmax_and_layer_norm_are_normalised() {
        // Longer than the 16 lanes, with a remainder, the max in the remainder.
        let mut r: Vec<f32> = (0..37).map(|i| (i % 5) as f32).collect();
        r[36] = 1000.0;
        let sum = exp_sum(&mut r);
        assert!((r.iter().sum::<f32>() - sum).abs() < 1e-6);
        assert!((r[36] - 1.0).abs() < 1e-6 && r[35] < 1e-30);
        let mut r = vec![1.0, 2.0, 3.0, 4.0];
        let sum = exp_sum(&mut r);
        let want: f32 = (1..=4).map(|i| ((i - 4) as f32).exp()).sum();
        assert!((sum - want).abs() < 1e-5);
        let mut r = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut r, &[1.0; 4], &[0.0; 4], 1e-12);
        assert!(r.iter().sum::<f32>().abs() < 1e-5);
        assert!((r.iter().map(|v| v * v).sum::<f32>() / 4.0 - 1.0).abs() < 1e-4);
    }

    #[test]
    fn attention_matches_naive_softmax_attention() {
        // Two sequences (lengths off the block sizes), 12 heads of 32 (the SIMD path's shape)
        // and 3 heads of 8 (portable only).
        let lens = [37usize, 9];
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let starts = [0, lens[0]];
        let total: usize = lens.iter().sum();
        for (h, heads) in [(384usize, 12usize), (24, 3)] {
            let dh = h / heads;
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let qkv: Vec<f32> = (0..total * 3 * h)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 20_001) as f32 / 10_000.0 - 1.0
                })
                .collect();
            let mut want = vec![0f32; total * h];
            for (s, &n) in lens.iter().enumerate() {
                for hd in 0..heads {
                    for i in 0..n {
                        let row = |r: usize, part: usize| {
                            &qkv[(starts[s] + r) * 3 * h + part * h + hd * dh..][..dh]
                        };
                        let mut w: Vec<f64> = (0..n)
                            .map(|j| {
                                let dot: f64 = row(i, 0)
                                    .iter()
                                    .zip(row(j, 1))
                                    .map(|(a, b)| *a as f64 * *b as f64)
                                    .sum();
                                dot / (dh as f64).sqrt()
                            })
                            .collect();
                        let m = w.iter().copied().fold(f64::MIN, f64::max);
                        w.iter_mut().for_each(|x| *x = (*x - m).exp());
                        let z: f64 = w.iter().sum();
                        for d in 0..dh {
                            let o: f64 = (0..n).map(|j| w[j] / z * row(j, 2)[d] as f64).sum();
                            want[(starts[s] + i) * h + hd * dh + d] = o as f32;
                        }
                    }
                }
            }
            let mut paths = vec![false];
            #[cfg(target_arch = "x86_64")]
            if dh == 32 && std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(true);
            }
            for simd in paths {
                let mut got = vec![f32::NAN; total * h];
                attention_with(&qkv, &mut got, &seqs, &starts, h, heads, simd);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-5, "h={h} simd={simd} [{i}]: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn linear_is_x_times_w_transposed_plus_bias() {
        // x: 2x3, w: 2x3 (n=2 outputs), b: 2.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut out = [0.0; 4];
        linear(
            &x,
            2,
            3,
            &w,
            &[10.0, 20.0],
            2,
            &mut out,
            Parallelism::None,
            false,
        );
        assert_eq!(out, [14.0, 22.0, 20.0, 25.0]);
    }
}
