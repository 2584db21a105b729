//! Products with a sparse operand: CSR x dense (`spmm`), dense x CSR, CSR x CSR into a
//! dense accumulator, and CSR x CSR into CSR (Gustavson's row-by-row algorithm).
//!
//! All of them split the output by rows, so threads never write the same cell.

use rayon::prelude::*;

use super::pool::{Parallelism, cpu_pool};
use super::simd::{Isa, axpy, multiversion};
use crate::block::CsrBlock;

/// Output rows per parallel task: about eight tasks per thread, so rows with uneven
/// non-zero counts still balance through work stealing.
fn rows_per_task(rows: usize) -> usize {
    let tasks = cpu_pool().current_num_threads() * 8;
    rows.div_ceil(tasks).max(1)
}

/// Runs `f(first_row, out_rows)` over the `width`-wide rows of `out`, in row chunks across
/// the CPU pool or in one call on this thread.
fn for_row_chunks(
    out: &mut [f64],
    width: usize,
    par: Parallelism,
    f: impl Fn(usize, &mut [f64]) + Sync + Send,
) {
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / width;
    match par {
        Parallelism::Seq => f(0, out),
        Parallelism::Pool => {
            let per = rows_per_task(rows);
            cpu_pool().install(|| {
                out.par_chunks_mut(per * width)
                    .enumerate()
                    .for_each(|(t, chunk)| f(t * per, chunk));
            });
        }
    }
}

/// `out += a * b` with `a` CSR and `b` dense row-major with `n` columns.
pub(crate) fn spmm_into(out: &mut [f64], a: &CsrBlock, b: &[f64], n: usize, par: Parallelism) {
    let isa = Isa::best();
    let (indptr, indices, data) = (a.indptr(), a.indices(), a.data());
    for_row_chunks(out, n, par, |first, chunk| {
        spmm_rows(isa, chunk, first, indptr, indices, data, b, n)
    });
}

multiversion! {
    /// `out` holds output rows `first..`; each gets the sum of its CSR row's entries
    /// times the matching rows of `b`.
    #[allow(clippy::too_many_arguments, reason = "the CSR parts and the dense operand, unpacked once")]
    fn spmm_rows(
        out: &mut [f64],
        first: usize,
        indptr: &[usize],
        indices: &[usize],
        data: &[f64],
        b: &[f64],
        n: usize,
    ) {
        for (i, out_row) in out.chunks_exact_mut(n).enumerate() {
            let (lo, hi) = (indptr[first + i], indptr[first + i + 1]);
            spmm_row(out_row, &indices[lo..hi], &data[lo..hi], b, n);
        }
    }
}

/// One output row, in strips of 16, 8 and 4 columns held in registers across the whole
/// sparse row, then the leftover columns.
#[inline(always)]
fn spmm_row(out_row: &mut [f64], idx: &[usize], vals: &[f64], b: &[f64], n: usize) {
    let mut j = 0;
    while j + 16 <= n {
        spmm_strip::<16>(out_row, j, idx, vals, b, n);
        j += 16;
    }
    if j + 8 <= n {
        spmm_strip::<8>(out_row, j, idx, vals, b, n);
        j += 8;
    }
    if j + 4 <= n {
        spmm_strip::<4>(out_row, j, idx, vals, b, n);
        j += 4;
    }
    if j < n {
        let tail = &mut out_row[j..];
        for (&c, &v) in idx.iter().zip(vals) {
            axpy(tail, v, &b[c * n + j..(c + 1) * n]);
        }
    }
}

#[inline(always)]
fn spmm_strip<const W: usize>(
    out_row: &mut [f64],
    j: usize,
    idx: &[usize],
    vals: &[f64],
    b: &[f64],
    n: usize,
) {
    let mut acc = [0.0f64; W];
    acc.copy_from_slice(&out_row[j..j + W]);
    for (&c, &v) in idx.iter().zip(vals) {
        let start = c * n + j;
        let brow = &b[start..start + W];
        for w in 0..W {
            acc[w] += v * brow[w];
        }
    }
    out_row[j..j + W].copy_from_slice(&acc);
}

/// `out += a * b` with `a` dense row-major with `k` columns and `b` CSR.
pub(crate) fn dsmm_into(out: &mut [f64], a: &[f64], k: usize, b: &CsrBlock, par: Parallelism) {
    let isa = Isa::best();
    let n = b.cols();
    let (indptr, indices, data) = (b.indptr(), b.indices(), b.data());
    for_row_chunks(out, n, par, |first, chunk| {
        let rows = chunk.len() / n;
        dsmm_rows(
            isa,
            chunk,
            n,
            &a[first * k..(first + rows) * k],
            k,
            indptr,
            indices,
            data,
        );
    });
}

multiversion! {
    /// Each output row gathers `a[r, kk] * b[kk, :]` over the CSR rows of `b`.
    #[allow(clippy::too_many_arguments, reason = "the CSR parts and the dense operand, unpacked once")]
    fn dsmm_rows(
        out: &mut [f64],
        n: usize,
        a: &[f64],
        k: usize,
        indptr: &[usize],
        indices: &[usize],
        data: &[f64],
    ) {
        if k == 0 || n == 0 {
            return;
        }
        for (out_row, a_row) in out.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
            for (kk, &x) in a_row.iter().enumerate() {
                let (lo, hi) = (indptr[kk], indptr[kk + 1]);
                for (&c, &v) in indices[lo..hi].iter().zip(&data[lo..hi]) {
                    out_row[c] += x * v;
                }
            }
        }
    }
}

/// `out += a * b`, both CSR, into a dense row-major output.
pub(crate) fn spspmm_into(out: &mut [f64], a: &CsrBlock, b: &CsrBlock, par: Parallelism) {
    let n = b.cols();
    for_row_chunks(out, n, par, |first, chunk| {
        for (i, out_row) in chunk.chunks_exact_mut(n).enumerate() {
            let (ai, av) = a.row(first + i);
            for (&kk, &x) in ai.iter().zip(av) {
                let (bi, bv) = b.row(kk);
                for (&c, &v) in bi.iter().zip(bv) {
                    out_row[c] += x * v;
                }
            }
        }
    });
}

/// `a * b`, both CSR, as CSR: Gustavson's algorithm with a dense scatter row per task.
/// Entries that cancel to exactly zero are dropped.
pub(crate) fn spgemm(a: &CsrBlock, b: &CsrBlock, par: Parallelism) -> CsrBlock {
    let (m, n) = (a.rows(), b.cols());
    let parts: Vec<RowsPart> = match par {
        Parallelism::Seq => vec![spgemm_rows(a, b, 0..m)],
        Parallelism::Pool => {
            let per = rows_per_task(m);
            cpu_pool().install(|| {
                (0..m.div_ceil(per))
                    .into_par_iter()
                    .map(|t| spgemm_rows(a, b, t * per..((t + 1) * per).min(m)))
                    .collect()
            })
        }
    };
    let nnz = parts.iter().map(|p| p.indices.len()).sum();
    let mut indptr = Vec::with_capacity(m + 1);
    let mut indices = Vec::with_capacity(nnz);
    let mut data = Vec::with_capacity(nnz);
    indptr.push(0);
    for p in parts {
        let base = indices.len();
        indptr.extend(p.row_ends.iter().map(|e| base + e));
        indices.extend_from_slice(&p.indices);
        data.extend_from_slice(&p.data);
    }
    // Valid by construction: offsets grow, and each row's columns are sorted and < n.
    CsrBlock::from_sprs(sprs::CsMat::new((m, n), indptr, indices, data))
}

/// CSR rows of a product, with row ends relative to this part.
struct RowsPart {
    row_ends: Vec<usize>,
    indices: Vec<usize>,
    data: Vec<f64>,
}

fn spgemm_rows(a: &CsrBlock, b: &CsrBlock, rows: std::ops::Range<usize>) -> RowsPart {
    let n = b.cols();
    let mut part = RowsPart {
        row_ends: Vec::with_capacity(rows.len()),
        indices: vec![],
        data: vec![],
    };
    let mut scatter = vec![0.0f64; n];
    // `seen[c] == r + 1` marks column c as touched in row r.
    let mut seen = vec![0usize; n];
    let mut touched: Vec<usize> = Vec::new();
    for r in rows {
        touched.clear();
        let (ai, av) = a.row(r);
        for (&kk, &x) in ai.iter().zip(av) {
            let (bi, bv) = b.row(kk);
            for (&c, &v) in bi.iter().zip(bv) {
                if seen[c] == r + 1 {
                    scatter[c] += x * v;
                } else {
                    seen[c] = r + 1;
                    scatter[c] = x * v;
                    touched.push(c);
                }
            }
        }
        touched.sort_unstable();
        for &c in &touched {
            if scatter[c] != 0.0 {
                part.indices.push(c);
                part.data.push(scatter[c]);
            }
        }
        part.row_ends.push(part.indices.len());
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::DenseBlock;
    use crate::kernels::testing::assert_slices_close;

    #[test]
    fn every_instruction_set_gives_the_baseline_result() {
        // Widths that hit the 16, 8 and 4 strips and a tail: 1, 3, 4, 7, 16, 29.
        for n in [1usize, 3, 4, 7, 16, 29] {
            let a = CsrBlock::from_dense(&DenseBlock::from_fn(9, 11, |i, j| {
                if (i * 3 + j) % 4 == 0 {
                    1.0 + (i as f64) * 0.5 - j as f64
                } else {
                    0.0
                }
            }));
            let b: Vec<f64> = (0..11 * n).map(|x| (x % 17) as f64 * 0.25 - 2.0).collect();
            let isas = Isa::available();
            let run = |isa: Isa| {
                let mut out = vec![1.0; 9 * n];
                spmm_rows(isa, &mut out, 0, a.indptr(), a.indices(), a.data(), &b, n);
                out
            };
            let want = run(isas[0]);
            for &isa in &isas[1..] {
                assert_slices_close(&run(isa), &want);
            }
        }
    }
}
