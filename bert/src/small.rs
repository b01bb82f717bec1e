//! The f32 linear layer for short inputs (a question of a dozen tokens): dot products of each
//! input row with each weight row, read in place.
//!
//! `gemm` packs the whole weight matrix into its panel layout on every call. For a 256-token
//! chunk that cost is spread over 256 rows; for a 16-row question it weighs as much as the
//! products (one 16-token question on 2 threads: 13.5 ms through `gemm`, 7.0 ms here). Here
//! each weight row is read once and multiplied with every input row while it is in L1;
//! nothing is packed.

use rayon::prelude::*;

/// Inputs of at most this many rows take this path (measured crossover with `gemm`: see
/// `examples/question.rs`).
pub(crate) const MAX_ROWS: usize = 24;

/// Output columns per parallel task.
const COLS_PER_TASK: usize = 64;

/// `out[rows, n] = x[rows, k] · wᵀ + b`, with `w` as [n, k], for small `rows`.
pub(crate) fn linear_small(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    b: &[f32],
    n: usize,
    out: &mut [f32],
) {
    assert!(x.len() >= rows * k && w.len() >= n * k && b.len() >= n && out.len() >= rows * n);
    if rows == 0 || n == 0 {
        return;
    }
    // Transposed while computing (each task owns whole columns), then laid out as rows.
    let mut t = vec![0f32; n * rows];
    t.par_chunks_mut(COLS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, cols)| {
            let j0 = task * COLS_PER_TASK;
            let ncols = cols.len() / rows;
            let mut c = 0;
            while c < ncols {
                let m = (ncols - c).min(COLS);
                let wj = &w[(j0 + c) * k..][..m * k];
                dots(x, rows, k, wj, m, &mut cols[c * rows..][..m * rows]);
                c += m;
            }
        });
    for r in 0..rows {
        let o = &mut out[r * n..][..n];
        for j in 0..n {
            o[j] = t[j * rows + r] + b[j];
        }
    }
}

/// Weight rows (output columns) per register tile.
const COLS: usize = 3;

/// `out[c * rows + r] = x[r] · w[c]` for every row of `x` and each of the `m` weight rows of
/// `w` (`m <= COLS`).
fn dots(x: &[f32], rows: usize, k: usize, w: &[f32], m: usize, out: &mut [f32]) {
    assert!(m <= COLS && x.len() >= rows * k && w.len() >= m * k && out.len() >= m * rows);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for; sizes asserted above.
        return unsafe { dots_avx2(x, rows, k, w, m, out) };
    }
    dots_portable(x, rows, k, w, m, out)
}

/// AVX2 + FMA: tiles of 4 input rows x 3 weight rows, 12 sums of 8 lanes in registers, so
/// each load feeds more than one product.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(x: &[f32], rows: usize, k: usize, w: &[f32], m: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const V: usize = 8;
    let whole = k / V * V;
    // Missing weight rows and input rows repeat the last real one (computed, never stored).
    let wp: [*const f32; COLS] = std::array::from_fn(|c| w.as_ptr().add(c.min(m - 1) * k));
    let hsum = |v: __m256| -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().sum()
    };
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(4);
        let xp: [*const f32; 4] = std::array::from_fn(|i| x.as_ptr().add((r + i.min(n - 1)) * k));
        let mut a = [[_mm256_setzero_ps(); COLS]; 4];
        let mut p = 0;
        while p < whole {
            let wv: [__m256; COLS] = std::array::from_fn(|c| _mm256_loadu_ps(wp[c].add(p)));
            for i in 0..4 {
                let xv = _mm256_loadu_ps(xp[i].add(p));
                for c in 0..COLS {
                    a[i][c] = _mm256_fmadd_ps(xv, wv[c], a[i][c]);
                }
            }
            p += V;
        }
        for i in 0..n {
            for c in 0..m {
                let tail: f32 = (whole..k).map(|q| x[(r + i) * k + q] * w[c * k + q]).sum();
                out[c * rows + r + i] = hsum(a[i][c]) + tail;
            }
        }
        r += n;
    }
}

fn dots_portable(x: &[f32], rows: usize, k: usize, w: &[f32], m: usize, out: &mut [f32]) {
    for c in 0..m {
        for r in 0..rows {
            out[c * rows + r] = x[r * k..][..k]
                .iter()
                .zip(&w[c * k..][..k])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_plain_product() {
        // Rows that are and are not a multiple of 4, a k with a remainder, columns over one task.
        for (rows, k, n) in [(1, 40, 3), (5, 384, 130), (8, 33, 70), (24, 64, 65)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 / 10.0).collect();
            let mut out = vec![0f32; rows * n];
            linear_small(&x, rows, k, &w, &b, n, &mut out);
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..k).map(|c| x[r * k + c] * w[j * k + c]).sum::<f32>() + b[j];
                    let got = out[r * n + j];
                    assert!((got - want).abs() < 1e-4, "r{r} j{j}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn the_vector_kernel_agrees_with_the_portable_one() {
        let (rows, k) = (7, 100);
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 17) as f32 - 8.0).collect();
        let w: Vec<f32> = (0..COLS * k).map(|i| (i % 5) as f32 * 0.5).collect();
        // Small integers and halves: both sum exactly.
        for m in 1..=COLS {
            let (mut a, mut b) = (vec![0f32; m * rows], vec![0f32; m * rows]);
            dots(&x, rows, k, &w, m, &mut a);
            dots_portable(&x, rows, k, &w, m, &mut b);
            assert_eq!(a, b, "{m} columns");
        }
    }
}
