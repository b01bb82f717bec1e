//! Self-attention per sequence and head, in blocks of query rows that stay in L1, with AVX-512
//! kernels for a head size of 32 and a portable fallback; the softmax's exponentials.

use crate::ops::exp;
use rayon::prelude::*;

/// Query rows per attention block.
pub(crate) const AR: usize = 8;

/// Self-attention of every sequence and head, without padding or masks. `qkv` rows are
/// `[q | k | v]`, each `h` wide; `ctx` gets the heads' outputs side by side.
///
/// One task per sequence and head. It copies the head's queries (pre-scaled), keys (transposed)
/// and values into small contiguous buffers, then takes `AR` query rows at a time through
/// scores, softmax and the weighted sum of values while they sit in L1; the softmax is
/// normalised on the `AR × dh` output rather than the `AR × t` weights.
pub(crate) fn attention(
    qkv: &[f32],
    ctx: &mut [f32],
    seqs: &[Vec<u32>],
    starts: &[usize],
    h: usize,
    heads: usize,
) {
    #[cfg(target_arch = "x86_64")]
    let simd = h / heads == 32 && std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    attention_with(qkv, ctx, seqs, starts, h, heads, simd)
}

/// `attention`, with the AVX-512 kernels (`simd`, needs dh = 32 and avx512f) or portable code.
pub(crate) fn attention_with(
    qkv: &[f32],
    ctx: &mut [f32],
    seqs: &[Vec<u32>],
    starts: &[usize],
    h: usize,
    heads: usize,
    simd: bool,
) {
    let dh = h / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let stride = 3 * h;
    // Each task writes a disjoint block of ctx (its sequence's rows, its head's columns).
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
        .collect();
    tasks.par_iter().for_each(|&(s, hd)| {
        let ctx_ptr = &ctx_ptr;
        let t = seqs[s].len();
        // Keys padded to whole 32-column blocks, queries to whole AR-row blocks (zeros).
        let tp = t.div_ceil(32) * 32;
        let tq = t.div_ceil(AR) * AR;
        let mut q = vec![0f32; tq * dh];
        let mut kt = vec![0f32; dh * tp];
        let mut v = vec![0f32; t * dh];
        for r in 0..t {
            let row = &qkv[(starts[s] + r) * stride + hd * dh..];
            for d in 0..dh {
                q[r * dh + d] = row[d] * scale;
                kt[d * tp + r] = row[h + d];
            }
            v[r * dh..][..dh].copy_from_slice(&row[2 * h..][..dh]);
        }
        let mut sc = vec![0f32; AR * tp];
        let mut o = vec![0f32; AR * dh];
        let mut sums = [0f32; AR];
        for i0 in (0..t).step_by(AR) {
            let qb = &q[i0 * dh..][..AR * dh];
            let rows = AR.min(t - i0);
            if simd {
                // SAFETY: avx512f was detected; the buffers have the sizes the kernels read
                // and write (AR rows of dh = 32, tp a multiple of 32, t <= tp).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    scores_avx512(qb, &kt, tp, &mut sc);
                    for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                        *sum = exp_sum_avx512(&mut sc[r * tp..][..t]);
                    }
                    weighted_avx512(&sc, tp, &v, t, &mut o);
                }
            } else {
                scores_generic(qb, &kt, dh, tp, &mut sc);
                for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                    *sum = exp_sum(&mut sc[r * tp..][..t]);
                }
                weighted_generic(&sc, tp, &v, t, dh, &mut o);
            }
            for (r, sum) in sums.iter().enumerate().take(rows) {
                let inv = 1.0 / sum;
                // SAFETY: row starts[s] + i0 + r, columns hd*dh..+dh of ctx belong to this
                // task alone (one sequence and head).
                unsafe {
                    let dst = ctx_ptr.0.add((starts[s] + i0 + r) * h + hd * dh);
                    for d in 0..dh {
                        *dst.add(d) = o[r * dh + d] * inv;
                    }
                }
            }
        }
    });
}

/// `sc[r][j] = q[r] · kt[·][j]` for `AR` rows and `j < tp`.
pub(crate) fn scores_generic(q: &[f32], kt: &[f32], dh: usize, tp: usize, sc: &mut [f32]) {
    for (qr, sr) in q.chunks_exact(dh).zip(sc.chunks_exact_mut(tp)) {
        sr.fill(0.0);
        for (d, &qv) in qr.iter().enumerate() {
            for (s, &k) in sr.iter_mut().zip(&kt[d * tp..][..tp]) {
                *s += qv * k;
            }
        }
    }
}

/// `o[r] = Σ_j sc[r][j] · v[j]` for `AR` rows and `j < t`.
pub(crate) fn weighted_generic(
    sc: &[f32],
    tp: usize,
    v: &[f32],
    t: usize,
    dh: usize,
    o: &mut [f32],
) {
    for (sr, or) in sc.chunks_exact(tp).zip(o.chunks_exact_mut(dh)) {
        or.fill(0.0);
        for (&p, vr) in sr[..t].iter().zip(v.chunks_exact(dh)) {
            for (a, &x) in or.iter_mut().zip(vr) {
                *a += p * x;
            }
        }
    }
}

/// `scores_generic` for dh = 32: `AR` rows × 32 columns of accumulators in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn scores_avx512(q: &[f32], kt: &[f32], tp: usize, sc: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(q.len() >= AR * 32 && kt.len() >= 32 * tp && sc.len() >= AR * tp);
    let (q, kt, sc) = (q.as_ptr(), kt.as_ptr(), sc.as_mut_ptr());
    for j in (0..tp).step_by(32) {
        let mut c = [[_mm512_setzero_ps(); 2]; AR];
        for d in 0..32 {
            let k0 = _mm512_loadu_ps(kt.add(d * tp + j));
            let k1 = _mm512_loadu_ps(kt.add(d * tp + j + 16));
            for (r, cr) in c.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*q.add(r * 32 + d));
                cr[0] = _mm512_fmadd_ps(qv, k0, cr[0]);
                cr[1] = _mm512_fmadd_ps(qv, k1, cr[1]);
            }
        }
        for (r, cr) in c.iter().enumerate() {
            _mm512_storeu_ps(sc.add(r * tp + j), cr[0]);
            _mm512_storeu_ps(sc.add(r * tp + j + 16), cr[1]);
        }
    }
}

/// `weighted_generic` for dh = 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn weighted_avx512(sc: &[f32], tp: usize, v: &[f32], t: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(sc.len() >= AR * tp && v.len() >= t * 32 && o.len() >= AR * 32 && t <= tp);
    let (sc, v) = (sc.as_ptr(), v.as_ptr());
    let mut c = [[_mm512_setzero_ps(); 2]; AR];
    for j in 0..t {
        let v0 = _mm512_loadu_ps(v.add(j * 32));
        let v1 = _mm512_loadu_ps(v.add(j * 32 + 16));
        for (r, cr) in c.iter_mut().enumerate() {
            let p = _mm512_set1_ps(*sc.add(r * tp + j));
            cr[0] = _mm512_fmadd_ps(p, v0, cr[0]);
            cr[1] = _mm512_fmadd_ps(p, v1, cr[1]);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        _mm512_storeu_ps(o.as_mut_ptr().add(r * 32), cr[0]);
        _mm512_storeu_ps(o.as_mut_ptr().add(r * 32 + 16), cr[1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp_sum_avx512(row: &mut [f32]) -> f32 {
    exp_sum(row)
}

/// The unnormalised softmax of a row in place, `e^(x - max)`, returning its sum. The max and
/// the sum run in 16 lanes so they vectorise (a single f32 accumulator would not).
#[inline(always)]
pub(crate) fn exp_sum(row: &mut [f32]) -> f32 {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (a, &x) in m.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&m)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut s = [0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for (a, x) in s.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum + s.iter().sum::<f32>()
}

pub(crate) struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint blocks of one buffer to rayon tasks (see `attention`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
