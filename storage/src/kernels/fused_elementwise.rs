//! Elementwise programs run in one pass: `add(mul(a, b), a)` reads each leaf cell once
//! and makes no block-sized intermediate, evaluating every step over a few hundred
//! cells at a time that stay in L1.

use super::elementwise::{BinaryOp, UnaryOp, max_nan, min_nan};

/// One step of a fused elementwise program. Slots are numbered in order: leaves first
/// (slot `k` is leaf `k`), then one slot per step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// `op(slot a, slot b)`, both the same shape.
    Binary(BinaryOp, usize, usize),
    /// `op(slot, value)`, or `op(value, slot)` when `left`.
    Scalar {
        /// The operation.
        op: BinaryOp,
        /// The scalar.
        value: f64,
        /// The scalar is the left operand.
        left: bool,
        /// The matrix operand's slot.
        x: usize,
    },
    /// `op(slot)`.
    Unary(UnaryOp, usize),
}

/// Cells evaluated per step at a time by [`fused_dense`]: every slot's chunk stays in
/// L1 (a few KiB each), and the loops over a chunk are long enough to vectorise.
pub const FUSED_CHUNK: usize = 256;

/// Runs the elementwise program `steps` over dense leaves (the row-major values of
/// blocks of one shape, leaf `k` in slot `k`), [`FUSED_CHUNK`] cells at a time, and
/// hands each chunk of the last step's values to `out` with the index of its first
/// cell. Each cell gets exactly the value the block kernels give it step by step
/// ([`BinaryOp::apply`], [`UnaryOp::apply`], `pow(x, 2)` as `x * x`).
///
/// # Panics
/// If a step names a slot that is not a leaf or an earlier step, or the leaves differ
/// in length (a planner bug, never user input).
///
/// ```
/// use tessera_storage::kernels::{BinaryOp, Step, fused_dense};
///
/// let (a, b) = ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]);
/// // a * b + a
/// let steps = [Step::Binary(BinaryOp::Mul, 0, 1), Step::Binary(BinaryOp::Add, 2, 0)];
/// let mut got = Vec::new();
/// fused_dense(&steps, &[&a, &b], |_, chunk| got.extend_from_slice(chunk));
/// assert_eq!(got, [5.0, 12.0, 21.0]);
/// ```
pub fn fused_dense(steps: &[Step], leaves: &[&[f64]], mut out: impl FnMut(usize, &[f64])) {
    let Some(len) = leaves.first().map(|l| l.len()) else {
        return;
    };
    assert!(
        leaves.iter().all(|l| l.len() == len),
        "fused_dense: leaves of different lengths"
    );
    if steps.is_empty() {
        out(0, leaves[0]);
        return;
    }
    let nl = leaves.len();
    let mut scratch = vec![0.0; steps.len() * FUSED_CHUNK];
    let mut o = 0;
    while o < len {
        let n = FUSED_CHUNK.min(len - o);
        for (s, step) in steps.iter().enumerate() {
            let (done, rest) = scratch.split_at_mut(s * FUSED_CHUNK);
            let dst = &mut rest[..n];
            let slot = |k: usize| -> &[f64] {
                if k < nl {
                    &leaves[k][o..o + n]
                } else {
                    &done[(k - nl) * FUSED_CHUNK..][..n]
                }
            };
            match *step {
                Step::Binary(op, x, y) => binary(op, slot(x), slot(y), dst),
                Step::Scalar { op, value, left, x } => scalar(op, slot(x), value, left, dst),
                Step::Unary(op, x) => unary(op, slot(x), dst),
            }
        }
        out(o, &scratch[(steps.len() - 1) * FUSED_CHUNK..][..n]);
        o += n;
    }
}

#[inline(always)]
fn zip_map(x: &[f64], y: &[f64], dst: &mut [f64], f: impl Fn(f64, f64) -> f64) {
    for ((d, &a), &b) in dst.iter_mut().zip(x).zip(y) {
        *d = f(a, b);
    }
}

#[inline(always)]
fn map(x: &[f64], dst: &mut [f64], f: impl Fn(f64) -> f64) {
    for (d, &a) in dst.iter_mut().zip(x) {
        *d = f(a);
    }
}

fn binary(op: BinaryOp, x: &[f64], y: &[f64], dst: &mut [f64]) {
    match op {
        BinaryOp::Add => zip_map(x, y, dst, |a, b| a + b),
        BinaryOp::Sub => zip_map(x, y, dst, |a, b| a - b),
        BinaryOp::Mul => zip_map(x, y, dst, |a, b| a * b),
        BinaryOp::Div => zip_map(x, y, dst, |a, b| a / b),
        BinaryOp::Min => zip_map(x, y, dst, min_nan),
        BinaryOp::Max => zip_map(x, y, dst, max_nan),
        BinaryOp::Pow => zip_map(x, y, dst, f64::powf),
    }
}

fn scalar(op: BinaryOp, x: &[f64], s: f64, left: bool, dst: &mut [f64]) {
    match (op, left) {
        (BinaryOp::Add, _) => map(x, dst, |a| a + s),
        (BinaryOp::Mul, _) => map(x, dst, |a| a * s),
        (BinaryOp::Pow, false) if s == 2.0 => map(x, dst, |a| a * a),
        (op, false) => map(x, dst, |a| op.apply(a, s)),
        (op, true) => map(x, dst, |a| op.apply(s, a)),
    }
}

fn unary(op: UnaryOp, x: &[f64], dst: &mut [f64]) {
    match op {
        UnaryOp::Neg => map(x, dst, |a| -a),
        UnaryOp::Abs => map(x, dst, f64::abs),
        op => map(x, dst, |a| op.apply(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op, scalar side and unary against [`BinaryOp::apply`] cell by cell, over
    /// lengths that do and do not fill whole chunks.
    #[test]
    fn fused_programs_match_the_ops_cell_by_cell() {
        let ops = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Min,
            BinaryOp::Max,
            BinaryOp::Pow,
        ];
        for len in [1, FUSED_CHUNK - 1, FUSED_CHUNK, 3 * FUSED_CHUNK + 7] {
            let a: Vec<f64> = (0..len).map(|k| (k % 7) as f64 - 3.0).collect();
            let b: Vec<f64> = (0..len).map(|k| (k % 5) as f64 * 0.5).collect();
            for op in ops {
                for (left, value) in [(false, 2.0), (true, -1.5), (false, 0.0)] {
                    // op(a, b), then op with a scalar, then exp.
                    let steps = [
                        Step::Binary(op, 0, 1),
                        Step::Scalar {
                            op,
                            value,
                            left,
                            x: 2,
                        },
                        Step::Unary(UnaryOp::Exp, 3),
                    ];
                    let mut got = vec![f64::NAN; len];
                    fused_dense(&steps, &[&a, &b], |o, chunk| {
                        got[o..o + chunk.len()].copy_from_slice(chunk)
                    });
                    for k in 0..len {
                        let z = op.apply(a[k], b[k]);
                        let z = if left {
                            op.apply(value, z)
                        } else {
                            op.apply(z, value)
                        };
                        let want = z.exp();
                        assert!(
                            got[k] == want || (got[k].is_nan() && want.is_nan()),
                            "{op:?} left={left} {value} at {k}: {} vs {want}",
                            got[k]
                        );
                    }
                }
            }
        }
    }
}
