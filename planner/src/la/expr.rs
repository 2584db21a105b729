//! The linear-algebra expression tree inside one plan node, its shapes and size
//! estimates, and the rewrites applied before physical planning.

use std::fmt;
use std::sync::Arc;

use datafusion::common::{Result, plan_err};
use tessera_storage::kernels::{BinaryOp, UnaryOp};
use tessera_storage::{Partitioning, Snapshot};

/// Largest `t(X) X` output side computed by the fused `tsmm` kernel (one output block).
pub(crate) const TSMM_MAX_COLS: u64 = 4096;
/// Largest number of columns of `v` in `t(X) (X v)` for the fused `mmchain` kernel.
pub(crate) const MMCHAIN_MAX_COLS: u64 = 64;

/// A reduction of a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Sum of all cells, as a 1 x 1 matrix.
    Sum,
    /// Smallest cell (implicit zeros included), 1 x 1.
    Min,
    /// Largest cell (implicit zeros included), 1 x 1.
    Max,
    /// Number of non-zero cells, 1 x 1.
    Nnz,
    /// Row sums, rows x 1.
    RowSums,
    /// Column sums, 1 x cols.
    ColSums,
    /// Row means, rows x 1.
    RowMeans,
    /// Column means, 1 x cols.
    ColMeans,
}

impl Reduction {
    /// The SQL function name.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Min => "min",
            Reduction::Max => "max",
            Reduction::Nnz => "nnz",
            Reduction::RowSums => "rowsums",
            Reduction::ColSums => "colsums",
            Reduction::RowMeans => "rowmeans",
            Reduction::ColMeans => "colmeans",
        }
    }

    /// True for the reductions whose result is one number.
    pub fn is_scalar(self) -> bool {
        matches!(
            self,
            Reduction::Sum | Reduction::Min | Reduction::Max | Reduction::Nnz
        )
    }
}

/// A stored array version pinned at planning time.
#[derive(Clone)]
pub struct Pinned(pub Arc<Snapshot>);

impl Pinned {
    /// Array name.
    pub fn name(&self) -> &str {
        &self.0.info().name
    }
    /// `(rows, cols)`.
    pub fn shape(&self) -> (u64, u64) {
        self.0.info().schema.shape2()
    }
    /// `(block rows, block cols)`.
    pub fn block(&self) -> (u64, u64) {
        let d = self.0.info().schema.dimensions();
        (d[0].block_len, d[1].block_len)
    }
    /// Stored partitioning.
    pub fn partitioning(&self) -> Partitioning {
        self.0.info().partitioning
    }
}

impl fmt::Debug for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name(), self.0.version())
    }
}

impl PartialEq for Pinned {
    fn eq(&self, other: &Self) -> bool {
        self.0.info().id == other.0.info().id && self.0.version() == other.0.version()
    }
}

/// One step of a fused elementwise program (a kernel's input, so it lives in storage).
pub use tessera_storage::kernels::Step;

/// An operation of the expression tree; its operands are the node's `args`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A stored matrix (one pinned version).
    Array(Pinned),
    /// The `k`-th `(i, j, v)` subquery input of the plan node.
    Input(usize),
    /// `eye(n)`.
    Eye(u64),
    /// `rand(rows, cols, density, seed, min, max)`.
    Rand {
        /// Rows.
        rows: u64,
        /// Columns.
        cols: u64,
        /// Fraction of non-zero cells.
        density: f64,
        /// Seed: the same seed gives the same matrix.
        seed: u64,
        /// Smallest value.
        min: f64,
        /// Largest value (exclusive).
        max: f64,
    },
    /// `matmul(a, b)`.
    MatMul,
    /// `t(a)`.
    Transpose,
    /// Elementwise `op(a, b)`, `b` broadcast when it is a row or column vector.
    Binary(BinaryOp),
    /// `op(a, value)` or `op(value, a)` (`scale`, `pow`).
    Scalar {
        /// The operation.
        op: BinaryOp,
        /// The scalar.
        value: f64,
        /// The scalar is the left operand.
        left: bool,
    },
    /// `op(a)` cell by cell.
    Unary(UnaryOp),
    /// A reduction.
    Reduce(Reduction),
    /// `diag(a)`: a vector becomes a diagonal matrix, a square matrix its diagonal.
    Diag,
    /// `slice(a, r0, r1, c0, c1)`: rows `r0..r1`, columns `c0..c1` (half-open).
    Slice {
        /// First row.
        r0: u64,
        /// One past the last row.
        r1: u64,
        /// First column.
        c0: u64,
        /// One past the last column.
        c1: u64,
    },
    /// `cbind(a, b)`.
    CBind,
    /// `rbind(a, b)`.
    RBind,
    /// `solve(a, b)`: `x` with `a x = b`.
    Solve,
    /// `inv(a)`.
    Inv,
    /// `cholesky(a)`: lower-triangular `l` with `l t(l) = a`.
    Cholesky,
    /// `t(x) x`, from the rewrite of `matmul(t(x), x)`.
    Tsmm,
    /// `t(x) (x v)`, from the rewrite of `matmul(t(x), matmul(x, v))`.
    MMChain,
    /// A chain of elementwise operations over the args, in one pass over the blocks.
    Fused(Vec<Step>),
}

/// A linear-algebra expression: an operation and its operands.
#[derive(Debug, Clone, PartialEq)]
pub struct MatExpr {
    /// The operation.
    pub op: Op,
    /// Its operands.
    pub args: Vec<MatExpr>,
}

/// Size estimate of a (sub)expression, used by chain ordering and the cost model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Rows (exact unless the expression reads a subquery).
    pub rows: f64,
    /// Columns.
    pub cols: f64,
    /// Expected non-zero cells.
    pub nnz: f64,
    /// True when rows and columns are known at planning time.
    pub exact: bool,
}

impl Estimate {
    /// Fraction of non-zero cells.
    pub fn density(&self) -> f64 {
        let cells = self.rows * self.cols;
        if cells <= 0.0 {
            0.0
        } else {
            (self.nnz / cells).min(1.0)
        }
    }

    /// Bytes the matrix takes in blocks: dense when over the sparse threshold, CSR below.
    pub fn bytes(&self) -> f64 {
        if self.density() >= tessera_storage::SPARSE_THRESHOLD {
            self.rows * self.cols * 8.0
        } else {
            self.nnz * 16.0 + self.rows * 8.0
        }
    }
}

/// Shape assumed for a subquery input at planning time (its shape is only known once it
/// has run).
const UNKNOWN_SIDE: f64 = 1000.0;

impl MatExpr {
    /// A node.
    pub fn new(op: Op, args: Vec<MatExpr>) -> Self {
        Self { op, args }
    }

    /// A leaf.
    pub fn leaf(op: Op) -> Self {
        Self { op, args: vec![] }
    }

    fn unary(op: Op, a: MatExpr) -> Self {
        Self::new(op, vec![a])
    }

    /// `t(self)`.
    pub fn t(self) -> Self {
        Self::unary(Op::Transpose, self)
    }

    /// The exact shape, when it is known at planning time (no subquery inputs), after
    /// checking that every operation's operands conform.
    pub fn shape(&self) -> Result<Option<(u64, u64)>> {
        if matches!(self.op, Op::Input(_)) {
            return Ok(None);
        }
        let mut shapes = Vec::with_capacity(self.args.len());
        for a in &self.args {
            match a.shape()? {
                Some(s) => shapes.push(s),
                None => return Ok(None),
            }
        }
        result_shape(&self.op, &shapes).map(Some)
    }

    /// Size estimate (shapes exact when known, non-zeros estimated by the usual
    /// independence assumptions).
    pub fn estimate(&self) -> Estimate {
        let args: Vec<Estimate> = self.args.iter().map(|a| a.estimate()).collect();
        let exact = args.iter().all(|a| a.exact);
        let e = |rows: f64, cols: f64, nnz: f64| Estimate {
            rows,
            cols,
            nnz: nnz.min(rows * cols).max(0.0),
            exact,
        };
        match &self.op {
            Op::Array(p) => {
                let (r, c) = p.shape();
                Estimate {
                    rows: r as f64,
                    cols: c as f64,
                    nnz: p.0.nnz() as f64,
                    exact: true,
                }
            }
            Op::Input(_) => Estimate {
                rows: UNKNOWN_SIDE,
                cols: UNKNOWN_SIDE,
                nnz: UNKNOWN_SIDE * UNKNOWN_SIDE,
                exact: false,
            },
            Op::Eye(n) => Estimate {
                rows: *n as f64,
                cols: *n as f64,
                nnz: *n as f64,
                exact: true,
            },
            Op::Rand {
                rows,
                cols,
                density,
                ..
            } => Estimate {
                rows: *rows as f64,
                cols: *cols as f64,
                nnz: *rows as f64 * *cols as f64 * density.clamp(0.0, 1.0),
                exact: true,
            },
            Op::MatMul => product_estimate(&args[0], &args[1]),
            Op::Tsmm => {
                let x = args[0];
                product_estimate(&transposed(x), &x)
            }
            Op::MMChain => {
                let x = args[0];
                let xv = product_estimate(&x, &args[1]);
                product_estimate(&transposed(x), &xv)
            }
            Op::Transpose => transposed(args[0]),
            Op::Binary(op) => {
                // The larger operand gives the shape (either side may broadcast).
                let (a, b) = if args[0].rows * args[0].cols >= args[1].rows * args[1].cols {
                    (args[0], args[1])
                } else {
                    (args[1], args[0])
                };
                let nnz = match op {
                    BinaryOp::Mul => a.nnz * b.density(),
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Min | BinaryOp::Max => {
                        a.nnz + b.nnz * (a.rows * a.cols) / (b.rows * b.cols).max(1.0)
                    }
                    _ => a.rows * a.cols,
                };
                e(a.rows, a.cols, nnz)
            }
            Op::Scalar { op, value, left } => {
                let a = args[0];
                let zero_stays = op.apply(
                    if *left { *value } else { 0.0 },
                    if *left { 0.0 } else { *value },
                ) == 0.0;
                e(
                    a.rows,
                    a.cols,
                    if zero_stays { a.nnz } else { a.rows * a.cols },
                )
            }
            Op::Unary(op) => {
                let a = args[0];
                let zero_stays = op.apply(0.0) == 0.0;
                e(
                    a.rows,
                    a.cols,
                    if zero_stays { a.nnz } else { a.rows * a.cols },
                )
            }
            Op::Fused(_) => {
                let a = args[0];
                e(a.rows, a.cols, a.rows * a.cols)
            }
            Op::Reduce(r) => {
                let a = args[0];
                match r {
                    Reduction::RowSums | Reduction::RowMeans => e(a.rows, 1.0, a.rows),
                    Reduction::ColSums | Reduction::ColMeans => e(1.0, a.cols, a.cols),
                    _ => e(1.0, 1.0, 1.0),
                }
            }
            Op::Diag => {
                let a = args[0];
                if a.cols == 1.0 {
                    e(a.rows, a.rows, a.nnz)
                } else {
                    e(a.rows, 1.0, a.rows)
                }
            }
            Op::Slice { r0, r1, c0, c1 } => {
                let a = args[0];
                let (r, c) = ((r1 - r0) as f64, (c1 - c0) as f64);
                e(r, c, r * c * a.density())
            }
            Op::CBind => e(
                args[0].rows,
                args[0].cols + args[1].cols,
                args[0].nnz + args[1].nnz,
            ),
            Op::RBind => e(
                args[0].rows + args[1].rows,
                args[0].cols,
                args[0].nnz + args[1].nnz,
            ),
            Op::Solve => e(args[0].cols, args[1].cols, args[0].cols * args[1].cols),
            Op::Inv => e(args[0].rows, args[0].cols, args[0].rows * args[0].cols),
            Op::Cholesky => e(
                args[0].rows,
                args[0].cols,
                args[0].rows * args[0].cols / 2.0,
            ),
        }
    }

    /// The SQL name of the operation, for plans and errors.
    pub fn name(&self) -> String {
        op_name(&self.op)
    }
}

/// The SQL-facing name of an operation.
pub(crate) fn op_name(op: &Op) -> String {
    match op {
        Op::Array(p) => format!("scan {p:?}"),
        Op::Input(k) => format!("input {k}"),
        Op::Eye(n) => format!("eye({n})"),
        Op::Rand {
            rows,
            cols,
            density,
            seed,
            ..
        } => format!("rand({rows}, {cols}, {density}, seed {seed})"),
        Op::MatMul => "matmul".into(),
        Op::Transpose => "t".into(),
        Op::Binary(op) => op.name().into(),
        Op::Scalar { op, value, left } => match (op, left) {
            (BinaryOp::Mul, _) => format!("scale {value}"),
            (BinaryOp::Pow, false) => format!("pow {value}"),
            (op, true) => format!("{} ({value}, m)", op.name()),
            (op, false) => format!("{} (m, {value})", op.name()),
        },
        Op::Unary(op) => format!("{op:?}").to_lowercase(),
        Op::Reduce(r) => r.name().into(),
        Op::Diag => "diag".into(),
        Op::Slice { r0, r1, c0, c1 } => format!("slice [{r0}:{r1}, {c0}:{c1}]"),
        Op::CBind => "cbind".into(),
        Op::RBind => "rbind".into(),
        Op::Solve => "solve".into(),
        Op::Inv => "inv".into(),
        Op::Cholesky => "cholesky".into(),
        Op::Tsmm => "tsmm".into(),
        Op::MMChain => "mmchain".into(),
        Op::Fused(steps) => format!("fused elementwise ({} steps)", steps.len()),
    }
}

fn transposed(a: Estimate) -> Estimate {
    Estimate {
        rows: a.cols,
        cols: a.rows,
        ..a
    }
}

/// `a b`: output density `1 - (1 - da db)^k` (independent non-zeros).
fn product_estimate(a: &Estimate, b: &Estimate) -> Estimate {
    let k = a.cols.max(1.0);
    let p = a.density() * b.density();
    let density = if p >= 1.0 {
        1.0
    } else {
        1.0 - (k * (-p).ln_1p()).exp()
    };
    Estimate {
        rows: a.rows,
        cols: b.cols,
        nnz: a.rows * b.cols * density,
        exact: a.exact && b.exact,
    }
}

/// Expected multiply-adds of `a b` (times 2): each non-zero of `a` meets the non-zeros of
/// one row of `b`.
pub(crate) fn product_flops(a: &Estimate, b: &Estimate) -> f64 {
    2.0 * a.nnz * b.nnz / a.cols.max(1.0)
}

fn dims(s: (u64, u64)) -> String {
    format!("{}x{}", s.0, s.1)
}

/// How the right operand of an elementwise operation lines up with the left one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broadcast {
    /// Same shape.
    None,
    /// The right operand is `1 x cols`, repeated for every row.
    Row,
    /// The right operand is `rows x 1`, repeated for every column.
    Col,
    /// The right operand is `1 x 1`.
    Scalar,
}

/// How `b` broadcasts against `a` for elementwise `name`, or a shape error naming both.
pub(crate) fn broadcast(name: &str, a: (u64, u64), b: (u64, u64)) -> Result<Broadcast> {
    if a == b {
        Ok(Broadcast::None)
    } else if b == (1, 1) {
        Ok(Broadcast::Scalar)
    } else if b.0 == 1 && b.1 == a.1 {
        Ok(Broadcast::Row)
    } else if b.1 == 1 && b.0 == a.0 {
        Ok(Broadcast::Col)
    } else {
        Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "{name}: shapes do not conform: {} and {} (the second must be the same shape, 1x{} or {}x1)",
                dims(a),
                dims(b),
                a.1,
                a.0
            ),
        ))
    }
}

/// Output shape of `op` over operands of shapes `s`, or an error naming the shapes.
pub(crate) fn result_shape(op: &Op, s: &[(u64, u64)]) -> Result<(u64, u64)> {
    let square = |name: &str, a: (u64, u64)| {
        if a.0 == a.1 {
            Ok(a)
        } else {
            Err(crate::error::tessera_error(
                crate::error::ErrorKind::DataException,
                format!("{name}: the matrix must be square, it is {}", dims(a)),
            ))
        }
    };
    Ok(match op {
        Op::Array(p) => p.shape(),
        Op::Input(_) => return plan_err!("internal: the shape of a subquery is not known"),
        Op::Eye(n) => (*n, *n),
        Op::Rand { rows, cols, .. } => (*rows, *cols),
        Op::MatMul => {
            let (a, b) = (s[0], s[1]);
            if a.1 != b.0 {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "matmul: shapes do not conform: {} times {} (inner dimensions {} and {} differ)",
                        dims(a),
                        dims(b),
                        a.1,
                        b.0
                    ),
                ));
            }
            (a.0, b.1)
        }
        Op::Tsmm => (s[0].1, s[0].1),
        Op::MMChain => {
            let (x, v) = (s[0], s[1]);
            if x.1 != v.0 {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "matmul: shapes do not conform: {} times {}",
                        dims(x),
                        dims(v)
                    ),
                ));
            }
            (x.1, v.1)
        }
        Op::Transpose => (s[0].1, s[0].0),
        Op::Binary(op) => match broadcast(op.name(), s[0], s[1]) {
            Ok(_) => s[0],
            // A vector on the left broadcasts over a matrix on the right.
            Err(e) => match broadcast(op.name(), s[1], s[0]) {
                Ok(_) => s[1],
                Err(_) => return Err(e),
            },
        },
        Op::Fused(steps) => {
            for st in steps {
                if let Step::Binary(op, a, b) = st
                    && let (Some(x), Some(y)) = (s.get(*a), s.get(*b))
                {
                    broadcast(op.name(), *x, *y)?;
                }
            }
            s[0]
        }
        Op::Scalar { .. } | Op::Unary(_) => s[0],
        Op::Reduce(r) => match r {
            Reduction::RowSums | Reduction::RowMeans => (s[0].0, 1),
            Reduction::ColSums | Reduction::ColMeans => (1, s[0].1),
            _ => (1, 1),
        },
        Op::Diag => {
            let a = s[0];
            if a.1 == 1 {
                (a.0, a.0)
            } else if a.0 == 1 {
                (a.1, a.1)
            } else {
                (square("diag", a)?.0, 1)
            }
        }
        Op::Slice { r0, r1, c0, c1 } => {
            let a = s[0];
            if r0 >= r1 || c0 >= c1 || *r1 > a.0 || *c1 > a.1 {
                return plan_err!(
                    "slice: rows {r0}:{r1} and columns {c0}:{c1} are not a non-empty part of a {} matrix (ranges are half-open, from 0)",
                    dims(a)
                );
            }
            (r1 - r0, c1 - c0)
        }
        Op::CBind => {
            let (a, b) = (s[0], s[1]);
            if a.0 != b.0 {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "cbind: shapes do not conform: {} and {} (row counts differ)",
                        dims(a),
                        dims(b)
                    ),
                ));
            }
            (a.0, a.1 + b.1)
        }
        Op::RBind => {
            let (a, b) = (s[0], s[1]);
            if a.1 != b.1 {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "rbind: shapes do not conform: {} and {} (column counts differ)",
                        dims(a),
                        dims(b)
                    ),
                ));
            }
            (a.0 + b.0, a.1)
        }
        Op::Solve => {
            let (a, b) = (s[0], s[1]);
            square("solve", a)?;
            if a.0 != b.0 {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "solve: shapes do not conform: {} and {} (row counts differ)",
                        dims(a),
                        dims(b)
                    ),
                ));
            }
            (a.1, b.1)
        }
        Op::Inv => square("inv", s[0])?,
        Op::Cholesky => square("cholesky", s[0])?,
    })
}

// ---------------------------------------------------------------------------------
// Rewrites

/// Applies the rewrites in order: transpose push-down (which also removes `t(t(x))`),
/// matrix-chain ordering, `tsmm` / `mmchain` detection, elementwise fusion.
pub fn optimize(e: MatExpr) -> MatExpr {
    let e = push_transposes(e);
    let e = order_chains(e);
    let e = fused_products(e);
    fuse_elementwise(e)
}

/// Moves transposes towards the leaves: `t(t(x)) = x`, `t(a b) = t(b) t(a)`,
/// `t(a + b) = t(a) + t(b)`, `t(f(a)) = f(t(a))`, `t(eye) = eye`; except the `t(x)` of
/// `t(x) x` and `t(x) (x v)`, which the fused products read as they are.
pub(crate) fn push_transposes(e: MatExpr) -> MatExpr {
    let MatExpr { op, args } = e;
    if op == Op::MatMul
        && let [a, b] = args.as_slice()
        && a.op == Op::Transpose
        && let [x] = a.args.as_slice()
    {
        // `t(x) x` and `t(x) (x v)` keep their transpose at x, even when x is an
        // expression (`t(x - m) (x - m)`), so that tsmm and mmchain see them.
        let x2 = push_transposes(x.clone());
        if x == b {
            return MatExpr::new(Op::MatMul, vec![x2.clone().t(), x2]);
        }
        if b.op == Op::MatMul
            && let [bx, v] = b.args.as_slice()
            && bx == x
        {
            let chain = MatExpr::new(Op::MatMul, vec![x2.clone(), push_transposes(v.clone())]);
            return MatExpr::new(Op::MatMul, vec![x2.t(), chain]);
        }
    }
    if op != Op::Transpose {
        return MatExpr::new(op, args.into_iter().map(push_transposes).collect());
    }
    let Some(inner) = args.into_iter().next() else {
        return MatExpr::leaf(Op::Transpose);
    };
    let MatExpr { op, args } = inner;
    match op {
        Op::Transpose => match args.into_iter().next() {
            Some(x) => push_transposes(x),
            None => MatExpr::leaf(Op::Transpose),
        },
        Op::MatMul => {
            let mut it = args.into_iter();
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => MatExpr::new(
                    Op::MatMul,
                    vec![push_transposes(b.t()), push_transposes(a.t())],
                ),
                _ => MatExpr::leaf(Op::MatMul).t(),
            }
        }
        Op::Eye(n) => MatExpr::leaf(Op::Eye(n)),
        op @ (Op::Binary(_) | Op::Scalar { .. } | Op::Unary(_)) => MatExpr::new(
            op,
            args.into_iter().map(|a| push_transposes(a.t())).collect(),
        ),
        op => MatExpr::new(op, args.into_iter().map(push_transposes).collect()).t(),
    }
}

/// Reorders every chain of three or more products by dynamic programming over the
/// estimated dimensions and sparsity (the classic matrix-chain order, with sparse
/// products costed by their non-zeros).
pub(crate) fn order_chains(e: MatExpr) -> MatExpr {
    if e.op != Op::MatMul {
        let MatExpr { op, args } = e;
        return MatExpr::new(op, args.into_iter().map(order_chains).collect());
    }
    let mut factors = Vec::new();
    flatten_chain(e, &mut factors);
    let factors: Vec<MatExpr> = factors.into_iter().map(order_chains).collect();
    if factors.len() < 3 {
        return MatExpr::new(Op::MatMul, factors);
    }
    let n = factors.len();
    let est: Vec<Estimate> = factors.iter().map(|f| f.estimate()).collect();
    // cost[i][j]: flops of the best order for factors i..=j; split[i][j] its split point.
    let mut cost = vec![vec![0.0f64; n]; n];
    let mut split = vec![vec![0usize; n]; n];
    let mut sub = vec![vec![est[0]; n]; n];
    for (i, e) in est.iter().enumerate() {
        sub[i][i] = *e;
    }
    for len in 2..=n {
        for i in 0..=n - len {
            let j = i + len - 1;
            cost[i][j] = f64::INFINITY;
            for k in i..j {
                let c = cost[i][k] + cost[k + 1][j] + product_flops(&sub[i][k], &sub[k + 1][j]);
                if c < cost[i][j] {
                    cost[i][j] = c;
                    split[i][j] = k;
                    sub[i][j] = product_estimate(&sub[i][k], &sub[k + 1][j]);
                }
            }
        }
    }
    let mut slots: Vec<Option<MatExpr>> = factors.into_iter().map(Some).collect();
    build_chain(&mut slots, &split, 0, n - 1)
}

fn flatten_chain(e: MatExpr, out: &mut Vec<MatExpr>) {
    if e.op == Op::MatMul && e.args.len() == 2 {
        for a in e.args {
            flatten_chain(a, out);
        }
    } else {
        out.push(e);
    }
}

fn build_chain(slots: &mut [Option<MatExpr>], split: &[Vec<usize>], i: usize, j: usize) -> MatExpr {
    if i == j {
        return slots[i].take().unwrap_or_else(|| MatExpr::leaf(Op::Eye(0)));
    }
    let k = split[i][j];
    let left = build_chain(slots, split, i, k);
    let right = build_chain(slots, split, k + 1, j);
    MatExpr::new(Op::MatMul, vec![left, right])
}

/// `matmul(t(x), x)` becomes `tsmm(x)` and `matmul(t(x), matmul(x, v))` becomes
/// `mmchain(x, v)`, when the output is small enough for the fused kernels.
pub(crate) fn fused_products(e: MatExpr) -> MatExpr {
    let MatExpr { op, args } = e;
    let args: Vec<MatExpr> = args.into_iter().map(fused_products).collect();
    if op != Op::MatMul || args.len() != 2 {
        return MatExpr::new(op, args);
    }
    let (a, b) = (&args[0], &args[1]);
    if a.op == Op::Transpose && a.args.len() == 1 {
        let x = &a.args[0];
        let narrow = x.estimate().cols <= TSMM_MAX_COLS as f64;
        if narrow && x == b {
            return MatExpr::new(Op::Tsmm, vec![x.clone()]);
        }
        if narrow
            && b.op == Op::MatMul
            && b.args.len() == 2
            && &b.args[0] == x
            && b.args[1].estimate().cols <= MMCHAIN_MAX_COLS as f64
        {
            return MatExpr::new(Op::MMChain, vec![x.clone(), b.args[1].clone()]);
        }
    }
    MatExpr::new(op, args)
}

fn is_elementwise(e: &MatExpr) -> bool {
    match &e.op {
        Op::Scalar { .. } | Op::Unary(_) => true,
        // Only same-shape binaries fuse; broadcasting ones run on their own.
        Op::Binary(_) => matches!(
            (e.args[0].shape(), e.args[1].shape()),
            (Ok(Some(a)), Ok(Some(b))) if a == b
        ),
        _ => false,
    }
}

/// Fuses every maximal tree of two or more elementwise operations into one
/// [`Op::Fused`] node over its distinct leaves.
pub(crate) fn fuse_elementwise(e: MatExpr) -> MatExpr {
    if is_elementwise(&e) && e.args.iter().any(is_elementwise) {
        let mut leaves = Vec::new();
        let mut steps = Vec::new();
        // Leaves get slots 0..n; steps are numbered after them, so build with
        // placeholder slot ids and renumber once the leaf count is known.
        let root = compile(e, &mut leaves, &mut steps);
        let n = leaves.len();
        let fix = |s: Slot| match s {
            Slot::Leaf(k) => k,
            Slot::Step(k) => n + k,
        };
        let steps = steps
            .into_iter()
            .map(|st| match st {
                Pending::Binary(op, a, b) => Step::Binary(op, fix(a), fix(b)),
                Pending::Scalar { op, value, left, x } => Step::Scalar {
                    op,
                    value,
                    left,
                    x: fix(x),
                },
                Pending::Unary(op, x) => Step::Unary(op, fix(x)),
            })
            .collect::<Vec<_>>();
        debug_assert!(matches!(root, Slot::Step(k) if k + 1 == steps.len()));
        return MatExpr::new(Op::Fused(steps), leaves);
    }
    let MatExpr { op, args } = e;
    MatExpr::new(op, args.into_iter().map(fuse_elementwise).collect())
}

#[derive(Clone, Copy)]
enum Slot {
    Leaf(usize),
    Step(usize),
}

enum Pending {
    Binary(BinaryOp, Slot, Slot),
    Scalar {
        op: BinaryOp,
        value: f64,
        left: bool,
        x: Slot,
    },
    Unary(UnaryOp, Slot),
}

fn compile(e: MatExpr, leaves: &mut Vec<MatExpr>, steps: &mut Vec<Pending>) -> Slot {
    if !is_elementwise(&e) {
        let e = fuse_elementwise(e);
        if let Some(k) = leaves.iter().position(|l| *l == e) {
            return Slot::Leaf(k);
        }
        leaves.push(e);
        return Slot::Leaf(leaves.len() - 1);
    }
    let MatExpr { op, args } = e;
    let mut slots: Vec<Slot> = args
        .into_iter()
        .map(|a| compile(a, leaves, steps))
        .collect();
    let step = match op {
        Op::Binary(op) => {
            let b = slots.pop().unwrap_or(Slot::Leaf(0));
            let a = slots.pop().unwrap_or(Slot::Leaf(0));
            Pending::Binary(op, a, b)
        }
        Op::Scalar { op, value, left } => Pending::Scalar {
            op,
            value,
            left,
            x: slots.pop().unwrap_or(Slot::Leaf(0)),
        },
        Op::Unary(op) => Pending::Unary(op, slots.pop().unwrap_or(Slot::Leaf(0))),
        _ => unreachable!("compile is only called on elementwise nodes"),
    };
    steps.push(step);
    Slot::Step(steps.len() - 1)
}

impl fmt::Display for MatExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Array(p) => write!(f, "{}", p.name()),
            Op::Input(k) => write!(f, "input{k}"),
            op => {
                write!(f, "{}(", op_name(op))?;
                for (n, a) in self.args.iter().enumerate() {
                    if n > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, ")")
            }
        }
    }
}
