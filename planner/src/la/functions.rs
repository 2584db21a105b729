//! Matrix table functions in `FROM`: `matmul(a, b)`, `t(a)`, `solve(a, b)`, ...,
//! planned by a DataFusion `RelationPlanner` into one [`LaNode`] per outermost call.
//! Arguments nest freely; a matrix argument is an array name (`x`, or `"x@3"` for
//! version 3), a table name, a nested matrix function or an `(i, j, v)` subquery.

use std::fmt;

use datafusion::common::{Result, plan_datafusion_err, plan_err};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, TableFactor, UnaryOperator, Value,
};
use std::sync::Arc;
use tessera_storage::Store;
use tessera_storage::kernels::{BinaryOp, UnaryOp};

use super::exec::Output;
use super::expr::{MatExpr, Op, Pinned, Reduction};
use super::node::LaNode;
use crate::error::{ErrorKind, storage_error_kind, tessera_error};

/// What a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Param {
    /// A matrix.
    M(&'static str),
    /// A number.
    N(&'static str),
    /// A number with a default.
    D(&'static str, f64),
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::M(n) | Param::N(n) | Param::D(n, _) => n,
        }
    }
}

/// The signature of a matrix function, or `None` when `name` is not one.
fn signature(name: &str) -> Option<&'static [Param]> {
    use Param::*;
    Some(match name {
        "matmul" | "cbind" | "rbind" | "solve" => &[M("a"), M("b")],
        "add" | "sub" | "mul" | "div" => &[M("a"), M("b")],
        "t" | "exp" | "log" | "abs" | "sqrt" | "rowsums" | "colsums" | "rowmeans" | "colmeans"
        | "sum" | "nnz" | "diag" | "inv" | "cholesky" | "rows" => &[M("m")],
        "min" | "max" => &[M("a"), M("b")],
        "scale" => &[M("m"), N("factor")],
        "pow" => &[M("m"), N("exponent")],
        "eye" => &[N("n")],
        "rand" => &[
            N("rows"),
            N("cols"),
            D("density", 1.0),
            D("seed", 42.0),
            D("min", 0.0),
            D("max", 1.0),
        ],
        "slice" => &[M("m"), N("r0"), N("r1"), N("c0"), N("c1")],
        _ => return None,
    })
}

/// Every matrix function, for messages and docs.
pub const MATRIX_FUNCTIONS: &[&str] = &[
    "matmul", "t", "add", "sub", "mul", "div", "scale", "pow", "exp", "log", "abs", "sqrt",
    "rowsums", "colsums", "rowmeans", "colmeans", "sum", "min", "max", "nnz", "eye", "rand",
    "diag", "slice", "cbind", "rbind", "solve", "inv", "cholesky", "rows",
];

/// The `RelationPlanner` for matrix functions.
pub struct MatrixFunctions {
    store: Store,
}

impl fmt::Debug for MatrixFunctions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MatrixFunctions")
    }
}

impl MatrixFunctions {
    /// Matrix functions reading arrays from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn single_name(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id),
        _ => None,
    }
}

impl RelationPlanner for MatrixFunctions {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        if let TableFactor::Function {
            lateral: true,
            name,
            args,
            alias,
            ..
        } = &relation
            && let Some(id) = single_name(name)
        {
            let fname = context.normalize_ident(id.clone());
            if crate::ml::is_builtin(&fname) {
                let planned = crate::ml::plan_call(&fname, args, &self.store, context, true)?;
                let plan = crate::ml::LateralNode::plan(planned)?;
                return Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
                    plan,
                    alias.clone(),
                ))));
            }
            if signature(&fname).is_some() {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::FeatureNotSupported,
                    format!(
                        "LATERAL {fname}(...): only the ML builtins (lm, kmeans, ...) take arguments from the row before them; write {fname}(...) without LATERAL"
                    ),
                ));
            }
        }
        let TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } = &relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let Some(id) = single_name(name) else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let fname = context.normalize_ident(id.clone());
        if crate::ml::is_builtin(&fname) {
            let plan = crate::ml::plan_builtin(&fname, &args.args, &self.store, context)?;
            return Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
                plan,
                alias.clone(),
            ))));
        }
        if signature(&fname).is_none() {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        }
        let mut b = Builder {
            store: &self.store,
            inputs: Vec::new(),
            context,
        };
        let expr = b.call(&fname, &args.args, true)?;
        if let Some(shape) = expr.shape()?
            && (shape.0 == 0 || shape.1 == 0)
        {
            return plan_err!(
                "{fname}: the result would be empty ({}x{})",
                shape.0,
                shape.1
            );
        }
        let output = if fname == "rows" {
            Output::Rows
        } else {
            Output::Cells
        };
        let node = LaNode::new(expr, b.inputs, output)?;
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan,
            alias.clone(),
        ))))
    }
}

/// Reads matrix arguments (array names, nested matrix functions, subqueries) into
/// matrix expressions over the `(i, j, v)` subquery inputs it collects.
pub(crate) struct Builder<'a, 'c> {
    store: &'a Store,
    inputs: Vec<LogicalPlan>,
    context: &'c mut dyn RelationPlannerContext,
}

impl<'a, 'c> Builder<'a, 'c> {
    /// A reader of matrix arguments for arrays in `store`.
    pub(crate) fn new(store: &'a Store, context: &'c mut dyn RelationPlannerContext) -> Self {
        Self {
            store,
            inputs: Vec::new(),
            context,
        }
    }

    /// The planner context it reads with.
    pub(crate) fn context(&mut self) -> &mut dyn RelationPlannerContext {
        &mut *self.context
    }

    /// The subquery inputs read so far.
    pub(crate) fn input_count(&self) -> usize {
        self.inputs.len()
    }

    /// The subquery inputs, `Op::Input(k)` being the `k`-th.
    pub(crate) fn into_inputs(self) -> Vec<LogicalPlan> {
        self.inputs
    }
}

impl Builder<'_, '_> {
    /// Plans `name(args)`; `top` is true for the outermost call (where `rows` may be).
    fn call(&mut self, name: &str, args: &[FunctionArg], top: bool) -> Result<MatExpr> {
        let Some(sig) = signature(name) else {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::UndefinedFunction,
                format!(
                    "unknown matrix function '{name}'; the matrix functions are {}",
                    MATRIX_FUNCTIONS.join(", ")
                ),
            ));
        };
        // min(m) and max(m) reduce; min(a, b) and max(a, b) are elementwise.
        let sig: &[Param] = if matches!(name, "min" | "max") && args.len() == 1 {
            &[Param::M("m")]
        } else {
            sig
        };
        if name == "rows" && !top {
            return plan_err!(
                "rows(m) returns rows, not a matrix: use it only as the outermost function"
            );
        }
        let usage = || {
            let params: Vec<String> = sig
                .iter()
                .map(|p| match p {
                    Param::D(n, d) => format!("{n} => {d}"),
                    p => p.name().to_string(),
                })
                .collect();
            format!("{name}({})", params.join(", "))
        };
        // Place positional and named arguments.
        let mut slots: Vec<Option<&SqlExpr>> = vec![None; sig.len()];
        let mut positional = 0;
        for arg in args {
            let (slot, e) = match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => {
                    let k = positional;
                    positional += 1;
                    (k, e)
                }
                FunctionArg::Named {
                    name: n,
                    arg: FunctionArgExpr::Expr(e),
                    ..
                }
                | FunctionArg::ExprNamed {
                    name: SqlExpr::Identifier(n),
                    arg: FunctionArgExpr::Expr(e),
                    ..
                } => {
                    let n = self.context.normalize_ident(n.clone());
                    match sig.iter().position(|p| p.name() == n) {
                        Some(k) => (k, e),
                        None => {
                            return plan_err!(
                                "{name}: no parameter named '{n}'; usage: {}",
                                usage()
                            );
                        }
                    }
                }
                _ => {
                    return Err(tessera_error(
                        ErrorKind::FeatureNotSupported,
                        format!("{name}: unsupported argument; usage: {}", usage()),
                    ));
                }
            };
            if slot >= sig.len() {
                return plan_err!(
                    "{name} takes {} argument(s), got {}; usage: {}",
                    sig.len(),
                    args.len(),
                    usage()
                );
            }
            if slots[slot].replace(e).is_some() {
                return plan_err!("{name}: argument '{}' given twice", sig[slot].name());
            }
        }
        let mut mats = Vec::new();
        let mut nums = Vec::new();
        for (k, (p, e)) in sig.iter().zip(&slots).enumerate() {
            match (p, e) {
                (Param::M(_), Some(e)) => {
                    // A number where a matrix may go makes the scalar form (add(x, 1)).
                    if k == 1
                        && matches!(name, "add" | "sub" | "mul" | "div" | "min" | "max")
                        && let Some(v) = number(e)
                    {
                        nums.push(v);
                        continue;
                    }
                    mats.push(self.matrix(name, k + 1, e)?);
                }
                (Param::N(_), Some(e)) | (Param::D(_, _), Some(e)) => match number(e) {
                    Some(v) => nums.push(v),
                    None => {
                        return plan_err!(
                            "{name}: argument {} ({}) must be a number, got {e}",
                            k + 1,
                            p.name()
                        );
                    }
                },
                (Param::D(_, d), None) => nums.push(*d),
                (_, None) => {
                    return plan_err!(
                        "{name} takes {} argument(s), got {}; usage: {}",
                        sig.iter().filter(|p| !matches!(p, Param::D(..))).count(),
                        args.len(),
                        usage()
                    );
                }
            }
        }
        let one = |op: Op, mats: Vec<MatExpr>| MatExpr::new(op, mats);
        let count = |v: f64, what: &str| -> Result<u64> {
            if v.fract() != 0.0 || !(0.0..=1e15).contains(&v) {
                plan_err!("{name}: {what} must be a whole number from 0, got {v}")
            } else {
                Ok(v as u64)
            }
        };
        let binary = |op: BinaryOp, mats: Vec<MatExpr>, nums: &[f64]| match nums.first() {
            Some(v) => MatExpr::new(
                Op::Scalar {
                    op,
                    value: *v,
                    left: false,
                },
                mats,
            ),
            None => MatExpr::new(Op::Binary(op), mats),
        };
        Ok(match name {
            "matmul" => one(Op::MatMul, mats),
            "t" => one(Op::Transpose, mats),
            "add" => binary(BinaryOp::Add, mats, &nums),
            "sub" => binary(BinaryOp::Sub, mats, &nums),
            "mul" => binary(BinaryOp::Mul, mats, &nums),
            "div" => binary(BinaryOp::Div, mats, &nums),
            "min" if mats.len() == 1 && nums.is_empty() => one(Op::Reduce(Reduction::Min), mats),
            "max" if mats.len() == 1 && nums.is_empty() => one(Op::Reduce(Reduction::Max), mats),
            "min" => binary(BinaryOp::Min, mats, &nums),
            "max" => binary(BinaryOp::Max, mats, &nums),
            "scale" => binary(BinaryOp::Mul, mats, &nums),
            "pow" => binary(BinaryOp::Pow, mats, &nums),
            "exp" => one(Op::Unary(UnaryOp::Exp), mats),
            "log" => one(Op::Unary(UnaryOp::Log), mats),
            "abs" => one(Op::Unary(UnaryOp::Abs), mats),
            "sqrt" => one(Op::Unary(UnaryOp::Sqrt), mats),
            "rowsums" => one(Op::Reduce(Reduction::RowSums), mats),
            "colsums" => one(Op::Reduce(Reduction::ColSums), mats),
            "rowmeans" => one(Op::Reduce(Reduction::RowMeans), mats),
            "colmeans" => one(Op::Reduce(Reduction::ColMeans), mats),
            "sum" => one(Op::Reduce(Reduction::Sum), mats),
            "nnz" => one(Op::Reduce(Reduction::Nnz), mats),
            "diag" => one(Op::Diag, mats),
            "inv" => one(Op::Inv, mats),
            "cholesky" => one(Op::Cholesky, mats),
            "solve" => one(Op::Solve, mats),
            "cbind" => one(Op::CBind, mats),
            "rbind" => one(Op::RBind, mats),
            "rows" => mats
                .into_iter()
                .next()
                .ok_or_else(|| plan_datafusion_err!("rows: missing matrix"))?,
            "eye" => {
                let n = count(nums[0], "n")?;
                if n == 0 {
                    return plan_err!("eye: n must be at least 1");
                }
                MatExpr::leaf(Op::Eye(n))
            }
            "rand" => {
                let (rows, cols) = (count(nums[0], "rows")?, count(nums[1], "cols")?);
                let (density, seed, min, max) = (nums[2], nums[3], nums[4], nums[5]);
                if !(0.0..=1.0).contains(&density) {
                    return plan_err!("rand: density must be between 0 and 1, got {density}");
                }
                if min > max || !min.is_finite() || !max.is_finite() {
                    return plan_err!("rand: min ({min}) must be finite and not above max ({max})");
                }
                if rows == 0 || cols == 0 {
                    return plan_err!("rand: rows and cols must be at least 1, got {rows}x{cols}");
                }
                MatExpr::leaf(Op::Rand {
                    rows,
                    cols,
                    density,
                    seed: seed as i64 as u64,
                    min,
                    max,
                })
            }
            "slice" => {
                let r0 = count(nums[0], "r0")?;
                let r1 = count(nums[1], "r1")?;
                let c0 = count(nums[2], "c0")?;
                let c1 = count(nums[3], "c1")?;
                one(Op::Slice { r0, r1, c0, c1 }, mats)
            }
            _ => {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::UndefinedFunction,
                    format!("unknown matrix function '{name}'"),
                ));
            }
        })
    }

    /// Plans argument `k` of `fname` as a matrix.
    pub(crate) fn matrix(&mut self, fname: &str, k: usize, e: &SqlExpr) -> Result<MatExpr> {
        match e {
            SqlExpr::Nested(inner) => self.matrix(fname, k, inner),
            SqlExpr::Identifier(id) => self.named(fname, k, ObjectName::from(vec![id.clone()])),
            SqlExpr::CompoundIdentifier(ids) => self.named(fname, k, ObjectName::from(ids.clone())),
            SqlExpr::Function(f) => {
                let Some(id) = single_name(&f.name) else {
                    return Err(crate::error::tessera_error(
                        crate::error::ErrorKind::UndefinedFunction,
                        format!(
                            "{fname}: argument {k}: unknown matrix function '{}'",
                            f.name
                        ),
                    ));
                };
                let name = self.context.normalize_ident(id.clone());
                let args: &[FunctionArg] = match &f.args {
                    FunctionArguments::List(l) => &l.args,
                    FunctionArguments::None => &[],
                    FunctionArguments::Subquery(_) => {
                        return plan_err!(
                            "{fname}: argument {k}: write a subquery argument in parentheses"
                        );
                    }
                };
                // A builtin (lm, cov, ...) is an input computed by its own operator.
                if crate::ml::is_builtin(&name) {
                    if !crate::ml::returns_matrix(&name) {
                        return plan_err!(
                            "{fname}: argument {k}: {name} returns a table, not a matrix"
                        );
                    }
                    let plan = crate::ml::plan_nested_builtin(
                        &name,
                        args,
                        self.store,
                        &mut *self.context,
                    )?;
                    self.inputs.push(plan);
                    return Ok(MatExpr::leaf(Op::Input(self.inputs.len() - 1)));
                }
                self.call(&name, args, false)
            }
            SqlExpr::Subquery(q) => {
                let plan = self.context.plan(TableFactor::Derived {
                    lateral: false,
                    subquery: q.clone(),
                    alias: None,
                    sample: None,
                })?;
                let cols = plan.schema().fields().len();
                if cols != 3 {
                    return plan_err!(
                        "{fname}: argument {k}: a matrix subquery must return three columns (i, j, v), it returns {cols}"
                    );
                }
                self.inputs.push(plan);
                Ok(MatExpr::leaf(Op::Input(self.inputs.len() - 1)))
            }
            other => plan_err!(
                "{fname}: argument {k} must be a matrix (an array or table name, a matrix function or an (i, j, v) subquery), got {other}"
            ),
        }
    }

    /// An array (`x`, `"x@3"`) or a table of `(i, j, v)` rows.
    fn named(&mut self, fname: &str, k: usize, name: ObjectName) -> Result<MatExpr> {
        let reference = self.context.object_name_to_table_reference(name.clone())?;
        let table = reference.table().to_string();
        let (array, version) = match table.rsplit_once('@') {
            Some((a, v)) if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() => {
                (a.to_string(), v.parse::<u64>().ok())
            }
            _ => (table.clone(), None),
        };
        if reference.schema().is_none() && self.store.array(&array).is_ok() {
            let snap = self.store.snapshot(&array, version).map_err(|e| {
                tessera_error(
                    storage_error_kind(&e),
                    format!("{fname}: argument {k}: {e}"),
                )
            })?;
            if !snap.info().schema.is_matrix() {
                return plan_err!(
                    "{fname}: argument {k}: array '{array}' is not a matrix (linear algebra takes 2-d arrays with one attribute)"
                );
            }
            return Ok(MatExpr::leaf(Op::Array(Pinned(Arc::new(snap)))));
        }
        if self
            .context
            .context_provider()
            .get_table_source(reference.clone())
            .is_err()
        {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::UndefinedTable,
                format!("{fname}: argument {k}: unknown array or table '{reference}'"),
            ));
        }
        let plan = self.context.plan(TableFactor::Table {
            name,
            alias: None,
            args: None,
            with_hints: vec![],
            version: None,
            with_ordinality: false,
            partitions: vec![],
            json_path: None,
            sample: None,
            index_hints: vec![],
        })?;
        let cols = plan.schema().fields().len();
        if cols != 3 {
            return plan_err!(
                "{fname}: argument {k}: table '{reference}' must have three columns (i, j, v) to be used as a matrix, it has {cols}"
            );
        }
        self.inputs.push(plan);
        Ok(MatExpr::leaf(Op::Input(self.inputs.len() - 1)))
    }
}

/// A numeric literal, possibly signed.
pub(crate) fn number(e: &SqlExpr) -> Option<f64> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(s, _) => s.parse().ok(),
            _ => None,
        },
        SqlExpr::Nested(inner) => number(inner),
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => number(expr).map(|v| -v),
        SqlExpr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => number(expr),
        _ => None,
    }
}
