//! int8 linear layers: weights quantised once at load, symmetrically per output channel to i8;
//! activations quantised per row (asymmetric, u8 with a zero point) on every call; products
//! accumulated exactly in i32, then scaled back to f32 with the bias added.
//!
//! For a row `x` with scale `sa` and zero point `za` (`x ≈ sa · (qa − za)`) and an output
//! channel with weight scale `sw` (`w ≈ sw · qw`):
//! `x · w ≈ sa · sw · (Σ qa·qw − za · Σ qw)`; the column sums `Σ qw` are computed at load.
//!
//! Weights are packed in panels of `NR` = 64 output channels; within a panel, for each group of
//! four inputs, 64 channels × 4 bytes (the layout `vpdpbusd` consumes: one 512-bit register
//! holds 16 channels' four weights). A micro-tile is `MR` rows × 64 channels.
//!
//! Three kernels compute the same integer sums (all exact, no saturation): AVX-512 VNNI, AVX2
//! (widening to i16 and `vpmaddwd`) and portable scalar code. The best one the CPU has is chosen
//! at load.

use rayon::prelude::*;

/// Output channels per packed panel.
const NR: usize = 64;
/// Rows per micro-tile.
const MR: usize = 6;
/// Rows per parallel task (a multiple of `MR`).
const MB: usize = 8 * MR;

/// Which integer kernel runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 with VNNI (`vpdpbusd`).
    Vnni,
    /// AVX2: bytes widened to i16, `vpmaddwd`.
    Avx2,
    /// Portable code.
    Scalar,
}

impl Int8Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Int8Kernel {
        [Int8Kernel::Vnni, Int8Kernel::Avx2]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Int8Kernel::Scalar)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Int8Kernel::Scalar => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Vnni => "avx512-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Scalar => "scalar",
        }
    }
}

/// A linear layer `y = x · wᵀ + b` with int8 weights.
pub(crate) struct QLinear {
    /// Output channels and inputs.
    n: usize,
    k: usize,
    /// Four-input groups (`k` rounded up to a multiple of 4, divided by 4).
    groups: usize,
    panels: usize,
    /// `[panel][group][channel in panel][4]`; channels past `n` and inputs past `k` are 0.
    w: Vec<i8>,
    /// Per output channel (padded to `panels * NR`): weight scale and sum of quantised weights.
    scale: Vec<f32>,
    colsum: Vec<i32>,
    bias: Vec<f32>,
}

impl QLinear {
    /// Quantise `w` ([n, k], rows are output channels) per channel: `qw = round(w / sw)` with
    /// `sw = max|w| / 127`.
    pub(crate) fn new(w: &[f32], b: &[f32], n: usize, k: usize) -> QLinear {
        assert_eq!(w.len(), n * k);
        assert_eq!(b.len(), n);
        let groups = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut packed = vec![0i8; panels * groups * NR * 4];
        let mut scale = vec![0f32; panels * NR];
        let mut colsum = vec![0i32; panels * NR];
        for (c, row) in w.chunks_exact(k).enumerate() {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            scale[c] = s;
            let (p, cc) = (c / NR, c % NR);
            for (i, &v) in row.iter().enumerate() {
                let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                colsum[c] += q as i32;
                packed[((p * groups + i / 4) * NR + cc) * 4 + i % 4] = q;
            }
        }
        let mut bias = b.to_vec();
        bias.resize(panels * NR, 0.0);
        QLinear {
            n,
            k,
            groups,
            panels,
            w: packed,
            scale,
            colsum,
            bias,
        }
    }

    /// `out[rows, n] = x[rows, k] · wᵀ + b`.
    pub(crate) fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], kernel: Int8Kernel) {
        let (n, k, kp) = (self.n, self.k, self.groups * 4);
        assert!(x.len() >= rows * k && out.len() >= rows * n);
        // Quantised rows, padded to whole tiles (extra rows are zeros and never written out).
        let rows_p = rows.div_ceil(MR) * MR;
        let mut qa = vec![0u8; rows_p * kp];
        let mut sa = vec![0f32; rows_p];
        let mut za = vec![0i32; rows_p];
        qa.par_chunks_mut(kp)
            .zip(sa.par_iter_mut().zip(za.par_iter_mut()))
            .take(rows)
            .enumerate()
            .for_each(|(r, (q, (s, z)))| {
                (*s, *z) = quantize_row(&x[r * k..][..k], &mut q[..k], kernel);
            });
        let qa = &qa;
        let (sa, za) = (&sa, &za);
        out[..rows * n]
            .par_chunks_mut(MB * n)
            .enumerate()
            .for_each(|(blk, o)| {
                let r0 = blk * MB;
                let nrows = o.len() / n;
                let mut acc = [[0i32; NR]; MR];
                for p in 0..self.panels {
                    let w = &self.w[p * self.groups * NR * 4..][..self.groups * NR * 4];
                    let c0 = p * NR;
                    let cols = NR.min(n - c0);
                    for t in (0..nrows).step_by(MR) {
                        let a = &qa[(r0 + t) * kp..][..MR * kp];
                        tile(kernel, a, kp, w, self.groups, &mut acc);
                        for (r, acc_r) in acc.iter().enumerate().take(MR.min(nrows - t)) {
                            let row = r0 + t + r;
                            let dst = &mut o[(t + r) * n + c0..][..cols];
                            epilogue(
                                dst,
                                &acc_r[..cols],
                                sa[row],
                                za[row],
                                &self.scale[c0..][..cols],
                                &self.colsum[c0..][..cols],
                                &self.bias[c0..][..cols],
                            );
                        }
                    }
                }
            });
    }
}

/// Integer products of one tile: `acc[r][c] = Σ_i a[r·kp + i] · w(c, i)` for `MR` rows of `a`
/// (stride `kp` = 4 · `groups`) and the 64 channels of one packed panel `w`.
pub(crate) fn tile(
    kernel: Int8Kernel,
    a: &[u8],
    kp: usize,
    w: &[i8],
    groups: usize,
    acc: &mut [[i32; NR]; MR],
) {
    assert!(a.len() >= MR * kp && kp >= groups * 4 && w.len() >= groups * NR * 4);
    match kernel {
        // SAFETY: the slices are long enough for the reads (asserted above), and a kernel is
        // only ever selected when `available()` says the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni => unsafe { tile_vnni(a.as_ptr(), kp, w.as_ptr(), groups, acc) },
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => unsafe { tile_avx2(a.as_ptr(), kp, w.as_ptr(), groups, acc) },
        _ => tile_scalar(a, kp, w, groups, acc),
    }
}

fn tile_scalar(a: &[u8], kp: usize, w: &[i8], groups: usize, acc: &mut [[i32; NR]; MR]) {
    for (r, acc_r) in acc.iter_mut().enumerate() {
        let ar = &a[r * kp..][..groups * 4];
        *acc_r = [0; NR];
        for (a4, wg) in ar.chunks_exact(4).zip(w.chunks_exact(NR * 4)) {
            for (s, w4) in acc_r.iter_mut().zip(wg.chunks_exact(4)) {
                *s += (0..4).map(|j| a4[j] as i32 * w4[j] as i32).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(
    a: *const u8,
    kp: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_si512(); 4]; MR];
    for g in 0..groups {
        let wp = w.add(g * NR * 4);
        let b = [
            _mm512_loadu_si512(wp as *const _),
            _mm512_loadu_si512(wp.add(64) as *const _),
            _mm512_loadu_si512(wp.add(128) as *const _),
            _mm512_loadu_si512(wp.add(192) as *const _),
        ];
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(r * kp + g * 4) as *const i32).read_unaligned());
            for (cj, bj) in cr.iter_mut().zip(&b) {
                *cj = _mm512_dpbusd_epi32(*cj, av, *bj);
            }
        }
    }
    for (cr, acc_r) in c.iter().zip(acc.iter_mut()) {
        for (j, cj) in cr.iter().enumerate() {
            _mm512_storeu_si512(acc_r.as_mut_ptr().add(16 * j) as *mut _, *cj);
        }
    }
}

/// AVX2 has no byte dot product that is exact for u8 × i8 (`vpmaddubsw` saturates), so bytes
/// are widened to i16 and multiplied with `vpmaddwd`. Each 256-bit accumulator holds two
/// partial sums for each of four channels; they are added at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(
    a: *const u8,
    kp: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    for (r, acc_r) in acc.iter_mut().enumerate() {
        // Two halves of 32 channels: 8 accumulators each.
        for half in 0..2 {
            let mut c = [_mm256_setzero_si256(); 8];
            for g in 0..groups {
                let a4 = (a.add(r * kp + g * 4) as *const u32).read_unaligned() as u64;
                // [a0 a1 a2 a3] as i16, four times.
                let a16 = (a4 & 0xff)
                    | ((a4 >> 8) & 0xff) << 16
                    | ((a4 >> 16) & 0xff) << 32
                    | ((a4 >> 24) & 0xff) << 48;
                let av = _mm256_set1_epi64x(a16 as i64);
                let wp = w.add(g * NR * 4 + half * 128);
                for (j, cj) in c.iter_mut().enumerate() {
                    // Four channels × four inputs, widened to i16.
                    let w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16 * j) as *const _));
                    *cj = _mm256_add_epi32(*cj, _mm256_madd_epi16(av, w16));
                }
            }
            for (j, cj) in c.iter().enumerate() {
                let mut pairs = [0i32; 8];
                _mm256_storeu_si256(pairs.as_mut_ptr() as *mut _, *cj);
                for q in 0..4 {
                    acc_r[half * 32 + j * 4 + q] = pairs[2 * q] + pairs[2 * q + 1];
                }
            }
        }
    }
}

/// `dst[c] = sa · scale[c] · (acc[c] − za · colsum[c]) + bias[c]`.
#[inline(always)]
fn epilogue(
    dst: &mut [f32],
    acc: &[i32],
    sa: f32,
    za: i32,
    scale: &[f32],
    colsum: &[i32],
    bias: &[f32],
) {
    for ((((d, &a), &s), &cs), &b) in dst.iter_mut().zip(acc).zip(scale).zip(colsum).zip(bias) {
        *d = (a - za * cs) as f32 * (sa * s) + b;
    }
}

/// Quantise one row to u8 with a zero point: `x ≈ scale · (q − zero)`. The range always
/// includes 0, so 0 is exact.
fn quantize_row(x: &[f32], q: &mut [u8], kernel: Int8Kernel) -> (f32, i32) {
    match kernel {
        // SAFETY: the kernel was chosen because the CPU has these features.
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Vnni => unsafe { quantize_row_avx512(x, q) },
        #[cfg(target_arch = "x86_64")]
        Int8Kernel::Avx2 => unsafe { quantize_row_avx2(x, q) },
        _ => quantize_row_generic(x, q),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    quantize_row_generic(x, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    quantize_row_generic(x, q)
}

#[inline(always)]
fn quantize_row_generic(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for &v in x {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let inv = 1.0 / scale;
    let zero = (-lo * inv).round().clamp(0.0, 255.0);
    for (d, &v) in q.iter_mut().zip(x) {
        // Saturating float-to-int conversion: values outside 0..=255 clamp.
        *d = (v * inv + zero).round_ties_even() as u8;
    }
    (scale, zero as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f32(&mut self) -> f32 {
            (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
        }
    }

    fn kernels() -> Vec<Int8Kernel> {
        [Int8Kernel::Vnni, Int8Kernel::Avx2, Int8Kernel::Scalar]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    #[test]
    fn kernels_match_naive_integer_sums_exactly() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for groups in [1usize, 3, 96, 384] {
            let kp = groups * 4;
            // Extremes included: 255 × ±127 over the whole row must not saturate.
            let a: Vec<u8> = (0..MR * kp)
                .map(|i| if i % 7 == 0 { 255 } else { rng.next() as u8 })
                .collect();
            let w: Vec<i8> = (0..groups * NR * 4)
                .map(|i| match i % 5 {
                    0 => 127,
                    1 => -127,
                    _ => (rng.next() % 255) as i8,
                })
                .collect();
            let mut want = [[0i32; NR]; MR];
            for (r, want_r) in want.iter_mut().enumerate() {
                for (c, s) in want_r.iter_mut().enumerate() {
                    for i in 0..kp {
                        let wv = w[((i / 4) * NR + c) * 4 + i % 4];
                        *s += a[r * kp + i] as i32 * wv as i32;
                    }
                }
            }
            for k in kernels() {
                let mut got = [[7i32; NR]; MR];
                tile(k, &a, kp, &w, groups, &mut got);
                assert_eq!(got, want, "kernel {} with {groups} groups", k.name());
            }
        }
    }

    #[test]
    fn qlinear_is_close_to_f32_and_kernels_agree_bitwise() {
        let mut rng = Rng(12345);
        // Shapes that are not multiples of the tile or panel sizes.
        let (rows, k, n) = (13, 70, 83);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.f32() * 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.f32() * 0.2).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let mut want = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                want[r * n + c] = b[c] + (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>();
            }
        }
        let q = QLinear::new(&w, &b, n, k);
        let mut first: Option<Vec<f32>> = None;
        for kern in kernels() {
            let mut got = vec![f32::NAN; rows * n + 5];
            q.forward(&x, rows, &mut got, kern);
            assert!(
                got[rows * n..].iter().all(|v| v.is_nan()),
                "wrote past the end"
            );
            // Error of the product: about sqrt(k) · (x step · |w| + |x| · w step) / 2.
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() < 0.05, "{}: [{i}] {g} vs {e}", kern.name());
            }
            match &first {
                None => first = Some(got),
                Some(f) => {
                    for (i, (g, e)) in got.iter().zip(f).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{}: [{i}] {g} vs {e}",
                            kern.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_rows_round_trip_within_half_a_step() {
        let x = [-1.5f32, 0.0, 0.25, 3.0, 2.999, -0.001];
        let mut q = [0u8; 6];
        let (s, z) = quantize_row_generic(&x, &mut q);
        assert!((s - 4.5 / 255.0).abs() < 1e-7);
        assert_eq!(q[1] as i32, z, "0 is exact");
        for (v, &qv) in x.iter().zip(&q) {
            assert!((s * (qv as i32 - z) as f32 - v).abs() <= s * 0.5 + 1e-6);
        }
        let (s, z) = quantize_row_generic(&[0.0; 4], &mut q[..4]);
        assert_eq!((s, z, &q[..4]), (1.0, 0, &[0u8; 4][..]));
    }
}
