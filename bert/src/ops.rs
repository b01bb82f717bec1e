//! The fused row operations of the forward pass: linear layers on `gemm`, residual plus
//! LayerNorm, GELU, and the fast `exp` and `erf` they use.

use gemm::Parallelism;
use rayon::prelude::*;

pub(crate) fn add_and_norm(x: &mut [f32], y: &[f32], h: usize, g: &[f32], b: &[f32], eps: f32) {
    x.par_chunks_mut(h)
        .zip(y.par_chunks(h))
        .for_each(|(xr, yr)| {
            for (a, c) in xr.iter_mut().zip(yr) {
                *a += c;
            }
            layer_norm(xr, g, b, eps);
        });
}

/// `out[rows, n] = x[rows, k] · wᵀ + b`, with `w` as [n, k] (PyTorch's Linear layout).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    b: &[f32],
    n: usize,
    out: &mut [f32],
    par: Parallelism,
    short: bool,
) {
    assert_eq!(x.len(), rows * k);
    assert_eq!(w.len(), n * k);
    // `KB_BERT_NO_SMALL` (read once): always `gemm`, to measure the short-input path against it.
    static SMALL: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("KB_BERT_NO_SMALL").is_none());
    if short && rows <= crate::small::MAX_ROWS && *SMALL {
        return crate::small::linear_small(x, rows, k, w, b, n, out);
    }
    let out = &mut out[..rows * n];
    out.par_chunks_mut(n).for_each(|r| r.copy_from_slice(b));
    // SAFETY: the slices hold exactly the rows x columns the strides describe (asserted above).
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// GELU over a slice, in place.
pub(crate) fn gelu_slice(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { gelu_avx2(xs) };
    }
    xs.iter_mut().for_each(|v| *v = gelu(*v))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gelu_avx2(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = gelu(*v))
}

/// e^x without branches or calls, so loops over it vectorise: 2^(x log2 e) split into an
/// integer power (built in the exponent bits) and 2^f for f in [-0.5, 0.5) by a degree-6
/// polynomial. Relative error about 1e-6 for |x| < 20 (softmax and erf stay there).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to the nearest integer, which lands in the low mantissa
    // bits (no float-to-int conversion, which would keep the loop scalar).
    const MAGIC: f32 = 12_582_912.0;
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    let r = t + MAGIC;
    let n = r - MAGIC;
    let f = t - n; // in [-0.5, 0.5]
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11
                    + f * (0.009_618_129 + f * (0.001_333_355_8 + f * 0.000_154_035_3)))));
    let pow2 = (r.to_bits().wrapping_sub(MAGIC.to_bits()))
        .wrapping_add(127)
        .wrapping_shl(23);
    f32::from_bits(pow2) * p
}

pub(crate) fn layer_norm(row: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// GELU with the exact erf form BERT was trained with.
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to about 1e-7 absolute (Abramowitz & Stegun 7.1.26 is 1.5e-7; this uses its form).
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t
            * exp(-a * a);
    y.copysign(x)
}
