//! A computed matrix read by its block rows, for the builtins' iterative loops
//! (conjugate gradient): the blocks stay as they are (dense or CSR, shared, never
//! gathered into one dense copy), and each pass (`x v`, `t(x) u`, or the fused
//! `t(x) f(x v)` that reads a row once) runs block rows in parallel.
//!
//! Partial sums are added in task order, and the tasks are fixed by the row count and
//! the CPU pool's size, so a pass gives the same bits every time on a machine.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::Result;
use faer::Mat;
use faer::Par;
use rayon::prelude::*;
use tessera_storage::kernels::{chain_rows_add, cpu_pool, matvec_add, tmatvec_add, tsmm_seq};
use tessera_storage::{Block, DenseBlock};

use super::dense::data_error;
use crate::error::storage_error;
use crate::la::BlockMatrix;

/// One block row: rows `r0..r0 + rows` and their blocks, left to right.
#[derive(Debug)]
struct Panel {
    r0: usize,
    rows: usize,
    /// Each block with its first column.
    blocks: Vec<(usize, Arc<Block>)>,
}

impl Panel {
    /// The block row as one row-major `rows x cols` slice: the block's own values when
    /// it is one dense block of that shape, else a copy (absent cells are zeros).
    fn dense_rows(&self, cols: usize) -> Cow<'_, [f64]> {
        if let [(0, b)] = self.blocks.as_slice()
            && let Block::Dense(d) = &**b
            && d.rows() == self.rows
            && d.cols() == cols
        {
            return Cow::Borrowed(d.values());
        }
        let mut rows = vec![0.0; self.rows * cols];
        for (c0, b) in &self.blocks {
            match &**b {
                Block::Dense(dense) => {
                    for r in 0..dense.rows() {
                        let at = r * cols + c0;
                        rows[at..at + dense.cols()].copy_from_slice(dense.row(r));
                    }
                }
                sparse => sparse.for_each_nonzero(|r, c, v| rows[r * cols + c0 + c] = v),
            }
        }
        Cow::Owned(rows)
    }
}

/// A matrix as block rows; every row of `0..rows` is in exactly one panel (block rows
/// with no stored block are panels without blocks: their rows are zeros).
#[derive(Debug)]
pub(crate) struct RowPanels {
    rows: usize,
    cols: usize,
    panels: Vec<Panel>,
}

impl RowPanels {
    /// `m` by block rows, `rows` rows at least (absent trailing rows are zeros).
    pub(crate) fn new(m: &BlockMatrix, rows: Option<usize>) -> Self {
        let br = m.br as usize;
        let total = rows.unwrap_or(0).max(m.rows as usize);
        let mut by_row: BTreeMap<u64, Vec<(usize, Arc<Block>)>> = BTreeMap::new();
        for (bi, bj, b) in m.tiles() {
            by_row
                .entry(*bi)
                .or_default()
                .push((*bj as usize * m.bc as usize, Arc::clone(b)));
        }
        let panels = (0..total.div_ceil(br.max(1)))
            .map(|bi| {
                let mut blocks = by_row.remove(&(bi as u64)).unwrap_or_default();
                blocks.sort_by_key(|(c0, _)| *c0);
                let r0 = bi * br;
                Panel {
                    r0,
                    rows: br.min(total - r0),
                    blocks,
                }
            })
            .collect();
        Self {
            rows: total,
            cols: m.cols as usize,
            panels,
        }
    }

    pub(crate) fn nrows(&self) -> usize {
        self.rows
    }

    pub(crate) fn ncols(&self) -> usize {
        self.cols
    }

    /// Runs `f` over every panel with one accumulator per task (made by `init`),
    /// panels in contiguous ranges, in parallel unless `par` is sequential; returns
    /// the accumulators in row order.
    fn over_panels<T: Send>(
        &self,
        par: Par,
        init: impl Fn() -> T + Sync,
        f: impl Fn(&Panel, &mut T) -> Result<()> + Sync,
    ) -> Result<Vec<T>> {
        let threads = match par {
            Par::Seq => 1,
            Par::Rayon(_) => cpu_pool().current_num_threads(),
        };
        let tasks = (threads * 4).min(self.panels.len()).max(1);
        let per = self.panels.len().div_ceil(tasks).max(1);
        let run = |chunk: &[Panel]| -> Result<T> {
            let mut acc = init();
            for p in chunk {
                f(p, &mut acc)?;
            }
            Ok(acc)
        };
        if threads == 1 {
            return self.panels.chunks(per).map(run).collect();
        }
        cpu_pool().install(|| self.panels.par_chunks(per).map(run).collect())
    }

    /// Fails naming the first NaN or infinite cell, argument `what` of `fname`.
    pub(crate) fn check_finite(&self, fname: &str, what: &str) -> Result<()> {
        for p in &self.panels {
            for (c0, b) in &p.blocks {
                let mut bad = None;
                b.for_each_nonzero(|r, c, v| {
                    if bad.is_none() && !v.is_finite() {
                        bad = Some((p.r0 + r, c0 + c, v));
                    }
                });
                if let Some((i, j, v)) = bad {
                    return Err(data_error(format!(
                        "{fname}: {what} has a {} value at ({i}, {j}); remove or replace it first",
                        if v.is_nan() { "NaN" } else { "infinite" }
                    )));
                }
            }
        }
        Ok(())
    }

    /// `x v`.
    pub(crate) fn mv(&self, v: &[f64], par: Par) -> Result<Vec<f64>> {
        let parts = self.over_panels(par, Vec::new, |p, out: &mut Vec<f64>| {
            let at = out.len();
            out.resize(at + p.rows, 0.0);
            for (c0, b) in &p.blocks {
                let rows = &mut out[at..at + b.rows()];
                matvec_add(b, &v[*c0..*c0 + b.cols()], rows).map_err(storage_error)?;
            }
            Ok(())
        })?;
        Ok(parts.concat())
    }

    /// `t(x) diag(d) x` (`d` at least 0), one Gram matrix per block row of the rows
    /// scaled by `sqrt(d)`, summed; and `t(x) u` for each `u` of `us`, in the same
    /// read of each block row.
    pub(crate) fn weighted_gram(
        &self,
        d: &[f64],
        us: &[&[f64]],
        par: Par,
    ) -> Result<(Mat<f64>, Vec<Vec<f64>>)> {
        let cols = self.cols;
        let gram_len = cols * cols;
        let len = gram_len + us.len() * cols;
        let parts = self.over_panels(
            par,
            || vec![0.0; len],
            |p, acc| {
                if p.blocks.is_empty() {
                    return Ok(());
                }
                let (gram_acc, tmv_acc) = acc.split_at_mut(gram_len);
                for (u, out) in us.iter().zip(tmv_acc.chunks_exact_mut(cols.max(1))) {
                    for (c0, b) in &p.blocks {
                        tmatvec_add(b, &u[p.r0..p.r0 + b.rows()], &mut out[*c0..*c0 + b.cols()])
                            .map_err(storage_error)?;
                    }
                }
                let mut rows = p.dense_rows(cols).into_owned();
                for (r, row) in rows.chunks_exact_mut(cols.max(1)).enumerate() {
                    let s = d[p.r0 + r].sqrt();
                    row.iter_mut().for_each(|v| *v *= s);
                }
                let scaled = DenseBlock::new(p.rows, cols, rows).map_err(storage_error)?;
                let gram = tsmm_seq(&Block::Dense(scaled)).map_err(storage_error)?;
                add(gram_acc, gram.values());
                Ok(())
            },
        )?;
        let sum = sum_in_order(parts, len);
        let gram = Mat::from_fn(cols, cols, |a, b| sum[a * cols + b]);
        let products = (0..us.len())
            .map(|k| sum[gram_len + k * cols..gram_len + (k + 1) * cols].to_vec())
            .collect();
        Ok((gram, products))
    }

    /// Runs `f(r0, rows, acc)` over every block row, its rows as one row-major
    /// `rows.len() / ncols` by `ncols` slice starting at row `r0` (the block's own values
    /// when the block row is one dense block, else a copy of its blocks), with one
    /// accumulator per task; returns the accumulators in row order.
    pub(crate) fn fold_rows<T: Send>(
        &self,
        par: Par,
        init: impl Fn() -> T + Sync,
        f: impl Fn(usize, &[f64], &mut T) -> Result<()> + Sync,
    ) -> Result<Vec<T>> {
        let cols = self.cols;
        self.over_panels(par, init, |p, acc| f(p.r0, &p.dense_rows(cols), acc))
    }

    /// Row `i` of the matrix.
    pub(crate) fn row(&self, i: usize) -> Vec<f64> {
        let mut out = vec![0.0; self.cols];
        let at = self.panels.partition_point(|p| p.r0 + p.rows <= i);
        if let Some(p) = self.panels.get(at) {
            for (c0, b) in &p.blocks {
                if i - p.r0 < b.rows() {
                    b.for_each_nonzero_in_row(i - p.r0, |c, v| out[c0 + c] = v);
                }
            }
        }
        out
    }

    /// `t(x) u`.
    pub(crate) fn tmv(&self, u: &[f64], par: Par) -> Result<Vec<f64>> {
        let cols = self.cols;
        let parts = self.over_panels(
            par,
            || vec![0.0; cols],
            |p, acc| {
                for (c0, b) in &p.blocks {
                    let out = &mut acc[*c0..*c0 + b.cols()];
                    tmatvec_add(b, &u[p.r0..p.r0 + p.rows], out).map_err(storage_error)?;
                }
                Ok(())
            },
        )?;
        Ok(sum_in_order(parts, cols))
    }

    /// For every row `r`: `(s, e) = f(r, x_r . v)`; returns `t(x) s` and the sum of the
    /// `e`. Each row of `x` is read once when its block row is one block.
    pub(crate) fn chain(
        &self,
        v: &[f64],
        f: impl Fn(usize, f64) -> (f64, f64) + Sync,
        par: Par,
    ) -> Result<(Vec<f64>, f64)> {
        let cols = self.cols;
        let parts = self.over_panels(
            par,
            || (vec![0.0; cols], 0.0),
            |p, (acc, extra)| {
                match p.blocks.as_slice() {
                    [(0, b)] if b.shape() == (p.rows, cols) => {
                        chain_rows_add(b, v, acc, &mut |r, d| {
                            let (s, e) = f(p.r0 + r, d);
                            *extra += e;
                            s
                        })
                        .map_err(storage_error)?;
                    }
                    blocks => {
                        let mut s = vec![0.0; p.rows];
                        for (c0, b) in blocks {
                            matvec_add(b, &v[*c0..*c0 + b.cols()], &mut s[..b.rows()])
                                .map_err(storage_error)?;
                        }
                        for (r, sr) in s.iter_mut().enumerate() {
                            let (out, e) = f(p.r0 + r, *sr);
                            *sr = out;
                            *extra += e;
                        }
                        for (c0, b) in blocks {
                            tmatvec_add(b, &s[..b.rows()], &mut acc[*c0..*c0 + b.cols()])
                                .map_err(storage_error)?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        let mut extra = 0.0;
        let mut acc = vec![0.0; cols];
        for (a, e) in parts {
            add(&mut acc, &a);
            extra += e;
        }
        Ok((acc, extra))
    }
}

fn add(acc: &mut [f64], x: &[f64]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

fn sum_in_order(parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    let mut out = vec![0.0; len];
    for p in parts {
        add(&mut out, &p);
    }
    out
}
