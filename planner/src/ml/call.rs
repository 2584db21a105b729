//! A builtin call in `FROM`: its arguments read from SQL, the matrix expressions it
//! needs computed (block dataflows over its matrix arguments), and the in-memory step
//! that turns their results into its output.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column, DFSchema, Result, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::planner::RelationPlannerContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, FunctionArg, FunctionArgExpr, Value};
use faer::{Mat, MatRef, Par};
use tessera_storage::Store;
use tessera_storage::kernels::BinaryOp;

use super::classify::{self, FitParams, Model};
use super::dense::{check_finite, data_error, gather, parameter_error};
use super::exec::{BuiltinTable, ParforSettings};
use super::kmeans::{self, KmeansParams};
use super::linear::{self, LM_DIRECT_MAX_COLS, LmParams, LmSolver};
use super::panels::RowPanels;
use super::parfor::{ParforReport, TaskCost};
use super::stats;
use crate::error::{ErrorKind, tessera_error};
use crate::la::{BlockMatrix, LaNode, MatExpr, Op, Output, Reduction, cells_schema};

/// Every builtin, for messages and docs.
pub const BUILTINS: &[&str] = &[
    "lm",
    "lm_predict",
    "cov",
    "cor",
    "pca",
    "pca_components",
    "pca_variance",
    "kmeans",
    "kmeans_predict",
    "logreg",
    "logreg_predict",
    "logreg_proba",
    "l2svm",
    "l2svm_predict",
];

/// True when `name` is a builtin.
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

/// True when the builtin returns a matrix (`(i, j, v)`), so it may be a matrix argument.
pub fn returns_matrix(name: &str) -> bool {
    !matches!(name, "kmeans_predict" | "logreg_predict" | "l2svm_predict")
}

/// What a parameter takes.
#[derive(Debug, Clone, Copy)]
enum Param {
    /// A matrix.
    M(&'static str),
    /// A number (or `true` / `false`), with its default when optional.
    N(&'static str, Option<f64>),
    /// A string with its default.
    S(&'static str, &'static str),
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::M(n) | Param::N(n, _) | Param::S(n, _) => n,
        }
    }
}

fn signature(name: &str) -> &'static [Param] {
    use Param::*;
    match name {
        "lm" => &[
            M("x"),
            M("y"),
            N("lambda", Some(0.0)),
            N("intercept", Some(0.0)),
            N("tol", Some(1e-7)),
            N("max_iter", Some(0.0)),
            S("solver", "auto"),
        ],
        "lm_predict" => &[M("x"), M("beta")],
        "cov" => &[M("x")],
        "cor" => &[M("x"), S("method", "pearson")],
        "pca" | "pca_components" | "pca_variance" => &[
            M("x"),
            N("k", None),
            N("center", Some(1.0)),
            N("scale", Some(0.0)),
        ],
        "kmeans" => &[
            M("x"),
            N("k", None),
            N("runs", Some(10.0)),
            N("max_iter", Some(100.0)),
            N("seed", Some(42.0)),
            N("tol", Some(1e-4)),
        ],
        "kmeans_predict" => &[M("x"), M("centroids")],
        "logreg" | "l2svm" => &[
            M("x"),
            M("y"),
            N("lambda", Some(1.0)),
            N("intercept", Some(1.0)),
            N("max_iter", Some(100.0)),
            N("tol", Some(1e-9)),
        ],
        "logreg_predict" | "logreg_proba" | "l2svm_predict" => &[M("x"), M("model")],
        _ => &[],
    }
}

/// What a builtin computes, with its parameters read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Builtin {
    Lm(LmParams),
    LmPredict,
    Cov,
    Cor {
        spearman: bool,
    },
    Pca {
        k: usize,
        center: bool,
        scale: bool,
        output: PcaOutput,
    },
    Kmeans(KmeansParams),
    KmeansPredict,
    Logreg(FitParams),
    LogregPredict {
        probabilities: bool,
    },
    L2svm(FitParams),
    L2svmPredict,
}

/// Which of PCA's results a call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PcaOutput {
    Projection,
    Components,
    Variance,
}

/// A planned call: what it computes and the matrix expressions (jobs) it reads.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// The call as written.
    pub(crate) written: String,
    pub(crate) name: String,
    pub(crate) builtin: Builtin,
    /// The jobs, in the order [`Call::finish`] reads their results.
    pub(crate) jobs: Vec<MatExpr>,
    /// Rows of x when known at planning time.
    pub(crate) rows: Option<u64>,
    /// The last job gives the row count (rows of `rowsums(x)`), as x's shape is only
    /// known once its subquery has run.
    pub(crate) rows_job: bool,
    /// Its numeric and string arguments.
    arguments: Arguments,
    /// Its matrix arguments.
    mats: Vec<MatExpr>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// The schema of a builtin's output.
pub(crate) fn output_schema(name: &str) -> SchemaRef {
    let i = Field::new("i", DataType::Int64, false);
    match name {
        "kmeans_predict" => Arc::new(Schema::new(vec![
            i,
            Field::new("cluster", DataType::Int64, false),
        ])),
        "logreg_predict" => Arc::new(Schema::new(vec![
            i,
            Field::new("label", DataType::Float64, false),
            Field::new("probability", DataType::Float64, false),
        ])),
        "l2svm_predict" => Arc::new(Schema::new(vec![
            i,
            Field::new("label", DataType::Float64, false),
            Field::new("score", DataType::Float64, false),
        ])),
        _ => cells_schema(),
    }
}

fn centred(x: &MatExpr) -> MatExpr {
    MatExpr::new(
        Op::Binary(BinaryOp::Sub),
        vec![
            x.clone(),
            MatExpr::new(Op::Reduce(Reduction::ColMeans), vec![x.clone()]),
        ],
    )
}

fn tsmm(x: MatExpr) -> MatExpr {
    MatExpr::new(Op::Tsmm, vec![x])
}

fn reduce(r: Reduction, x: &MatExpr) -> MatExpr {
    MatExpr::new(Op::Reduce(r), vec![x.clone()])
}

/// Plans `name(args)` as a relation: a scan of a [`BuiltinTable`] that computes it.
pub fn plan_builtin(
    name: &str,
    args: &[FunctionArg],
    store: &Store,
    context: &mut dyn RelationPlannerContext,
) -> Result<LogicalPlan> {
    let planned = plan_call(name, args, store, context, false)?;
    if !planned.table.outer_columns().is_empty() {
        return Err(tessera_error(
            ErrorKind::FeatureNotSupported,
            format!(
                "{name}: a subquery argument refers to a column of an outer query; write the call as LATERAL after the relation whose rows it reads"
            ),
        ));
    }
    planned.scan()
}

/// Plans `name(args)` as an argument of another call: its subqueries may read the row
/// of the `LATERAL` call it is nested in, which binds them for each row.
pub(crate) fn plan_nested_builtin(
    name: &str,
    args: &[FunctionArg],
    store: &Store,
    context: &mut dyn RelationPlannerContext,
) -> Result<LogicalPlan> {
    plan_call(name, args, store, context, false)?.scan()
}

/// A builtin call planned: its relation, and the numeric arguments a `LATERAL` call
/// takes from each row of the relation before it.
pub(crate) struct PlannedCall {
    pub(crate) table: Arc<BuiltinTable>,
    /// `(parameter, expression over the outer row's columns)`.
    pub(crate) per_row: Vec<(&'static str, Expr)>,
}

impl PlannedCall {
    /// The call as a relation of its own (no per-row arguments).
    pub(crate) fn scan(self) -> Result<LogicalPlan> {
        let name = self.table.call_name().to_string();
        LogicalPlanBuilder::scan(name, provider_as_source(self.table), None)?.build()
    }
}

/// Plans `name(args)`. With `lateral`, a numeric argument may be an expression over
/// the columns of the relation before it in `FROM` (`lambda => p.lambda`): it is
/// returned in [`PlannedCall::per_row`] and the call planned with a stand-in value.
pub(crate) fn plan_call(
    name: &str,
    args: &[FunctionArg],
    store: &Store,
    context: &mut dyn RelationPlannerContext,
    lateral: bool,
) -> Result<PlannedCall> {
    let sig = signature(name);
    let usage = || {
        let params: Vec<String> = sig
            .iter()
            .map(|p| match p {
                Param::N(n, Some(d)) => format!("{n} => {d}"),
                Param::S(n, d) => format!("{n} => '{d}'"),
                p => p.name().to_string(),
            })
            .collect();
        format!("{name}({})", params.join(", "))
    };
    let mut slots: Vec<Option<&SqlExpr>> = vec![None; sig.len()];
    let mut positional = 0;
    for arg in args {
        let (slot, e) = match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => {
                positional += 1;
                (positional - 1, e)
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
                let n = context.normalize_ident(n.clone());
                match sig.iter().position(|p| p.name() == n) {
                    Some(k) => (k, e),
                    None => {
                        return plan_err!("{name}: no parameter named '{n}'; usage: {}", usage());
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
                "{name} takes at most {} arguments, got {}; usage: {}",
                sig.len(),
                args.len(),
                usage()
            );
        }
        if slots[slot].replace(e).is_some() {
            return plan_err!("{name}: argument '{}' given twice", sig[slot].name());
        }
    }
    let mut builder = crate::la::MatrixArguments::new(store, context);
    let mut mats = Vec::new();
    let mut owners: Vec<(usize, &'static str)> = Vec::new();
    let mut nums = HashMap::new();
    let mut strs = HashMap::new();
    let mut per_row = Vec::new();
    for (k, (p, e)) in sig.iter().zip(&slots).enumerate() {
        match (p, e) {
            (Param::M(n), Some(e)) => {
                let before = builder.input_count();
                mats.push(builder.matrix(name, k + 1, e)?);
                for _ in before..builder.input_count() {
                    owners.push((k + 1, *n));
                }
            }
            (Param::N(n, default), Some(e)) => match scalar(e) {
                Some(v) => {
                    nums.insert(*n, v);
                }
                None if lateral && let Some(outer) = outer_expr(e, builder.context()) => {
                    // Planned with a stand-in; each row's value is checked as it runs.
                    nums.insert(*n, default.unwrap_or(1.0));
                    per_row.push((*n, outer));
                }
                None => {
                    return Err(parameter_error(format!(
                        "{name}: argument {} ({n}) must be a number, got {e}",
                        k + 1
                    )));
                }
            },
            (Param::N(n, Some(d)), None) => {
                nums.insert(*n, *d);
            }
            (Param::S(n, _), Some(e)) => match e {
                SqlExpr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => {
                        strs.insert(*n, s.to_ascii_lowercase());
                    }
                    _ => {
                        return Err(parameter_error(format!(
                            "{name}: argument {} ({n}) must be a string, got {e}",
                            k + 1
                        )));
                    }
                },
                _ => {
                    return Err(parameter_error(format!(
                        "{name}: argument {} ({n}) must be a string, got {e}",
                        k + 1
                    )));
                }
            },
            (Param::S(n, d), None) => {
                strs.insert(*n, d.to_string());
            }
            (_, None) => {
                return plan_err!(
                    "{name}: missing argument {} ({}); usage: {}",
                    k + 1,
                    p.name(),
                    usage()
                );
            }
        }
    }
    let inputs = builder.into_inputs();
    let written = format!(
        "{name}({})",
        args.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let arguments = Arguments {
        nums,
        strs,
        per_row: per_row.iter().map(|(n, _)| *n).collect(),
    };
    let (builtin, jobs, rows_job) = read(name, &arguments, &mats)?;
    let call = Call {
        written,
        name: name.to_string(),
        builtin,
        jobs,
        rows: mats[0].shape()?.map(|s| s.0),
        rows_job,
        arguments,
        mats,
    };
    let table = BuiltinTable::new(Arc::new(call), inputs, owners)?;
    Ok(PlannedCall {
        table: Arc::new(table),
        per_row,
    })
}

/// The numeric and string arguments of a call, by parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Arguments {
    nums: HashMap<&'static str, f64>,
    strs: HashMap<&'static str, String>,
    /// The numeric parameters a `LATERAL` call takes from each row.
    per_row: Vec<&'static str>,
}

/// What builtin `name` computes with `arguments` over the matrices `mats`, the jobs it
/// reads, and whether the last job is the row count; bad arguments are errors.
fn read(
    name: &str,
    arguments: &Arguments,
    mats: &[MatExpr],
) -> Result<(Builtin, Vec<MatExpr>, bool)> {
    let sig = signature(name);
    let num = |n: &str| arguments.nums.get(n).copied().unwrap_or(0.0);
    let count = |n: &str, min: f64| -> Result<usize> {
        let v = num(n);
        if v.fract() != 0.0 || v < min || v > 1e12 {
            Err(parameter_error(format!(
                "{name}: {n} must be a whole number from {min}, got {v}"
            )))
        } else {
            Ok(v as usize)
        }
    };
    let flag = |n: &str| -> Result<bool> {
        match num(n) {
            0.0 => Ok(false),
            1.0 => Ok(true),
            v => Err(parameter_error(format!(
                "{name}: {n} must be true or false (1 or 0), got {v}"
            ))),
        }
    };
    let real = |n: &str| -> Result<f64> {
        let v = num(n);
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(parameter_error(format!(
                "{name}: {n} must be a number from 0, got {v}"
            )))
        }
    };
    let x = mats[0].clone();
    let xshape = x.shape()?;
    let rows = xshape.map(|s| s.0);
    if let (Some(a), Some(Ok(Some(b)))) = (xshape, mats.get(1).map(|m| m.shape())) {
        let second = sig.get(1).map_or("y", |p| p.name());
        if second == "y" && (a.0 != b.0 || b.1 != 1) {
            return Err(data_error(format!(
                "{name}: y must be {}x1 for an x of {}x{}, it is {}x{}",
                a.0, a.0, a.1, b.0, b.1
            )));
        }
    }
    let mut rows_job = false;
    let (builtin, mut jobs) = match name {
        "lm" => {
            let solver = match arguments.strs.get("solver").map(String::as_str) {
                Some("auto") | None => LmSolver::Auto,
                Some("direct") => LmSolver::Direct,
                Some("cg") => LmSolver::Cg,
                Some(other) => {
                    return Err(parameter_error(format!(
                        "lm: solver must be 'auto', 'direct' or 'cg', got '{other}'"
                    )));
                }
            };
            let params = LmParams {
                lambda: real("lambda")?,
                intercept: flag("intercept")?,
                tol: real("tol")?,
                max_iter: count("max_iter", 0.0)?,
                solver,
            };
            let y = mats[1].clone();
            let cg = match solver {
                LmSolver::Cg => true,
                LmSolver::Direct => false,
                LmSolver::Auto => xshape.is_some_and(|s| s.1 > LM_DIRECT_MAX_COLS),
            };
            let jobs = if cg {
                vec![x.clone(), y]
            } else {
                rows_job = rows.is_none();
                let mut jobs = vec![
                    tsmm(x.clone()),
                    MatExpr::new(Op::MatMul, vec![x.clone().t(), y.clone()]),
                ];
                // The column sums centre the system for the intercept: read only when
                // some call (or some row of a LATERAL one) fits one.
                if params.intercept || arguments.per_row.contains(&"intercept") {
                    jobs.push(reduce(Reduction::ColSums, &x));
                    jobs.push(reduce(Reduction::ColSums, &y));
                }
                jobs
            };
            let params = LmParams {
                solver: if cg { LmSolver::Cg } else { LmSolver::Direct },
                ..params
            };
            (Builtin::Lm(params), jobs)
        }
        "lm_predict" => (Builtin::LmPredict, vec![x.clone(), mats[1].clone()]),
        "cov" => {
            rows_job = rows.is_none();
            (Builtin::Cov, vec![tsmm(centred(&x))])
        }
        "cor" => match arguments.strs.get("method").map(String::as_str) {
            Some("pearson") | None => {
                rows_job = rows.is_none();
                (Builtin::Cor { spearman: false }, vec![tsmm(centred(&x))])
            }
            Some("spearman") => (Builtin::Cor { spearman: true }, vec![x.clone()]),
            Some(other) => {
                return Err(parameter_error(format!(
                    "cor: method must be 'pearson' or 'spearman', got '{other}'"
                )));
            }
        },
        "pca" | "pca_components" | "pca_variance" => {
            let k = count("k", 1.0)?;
            let center = flag("center")?;
            let scale = flag("scale")?;
            if let Some((_, p)) = xshape
                && k as u64 > p
            {
                return Err(parameter_error(format!(
                    "{name}: k must be from 1 to ncol(x) = {p}, got {k}"
                )));
            }
            let output = match name {
                "pca" => PcaOutput::Projection,
                "pca_components" => PcaOutput::Components,
                _ => PcaOutput::Variance,
            };
            let scatter = if center {
                tsmm(centred(&x))
            } else {
                tsmm(x.clone())
            };
            let jobs = if output == PcaOutput::Projection {
                vec![scatter, reduce(Reduction::ColMeans, &x), x.clone()]
            } else {
                rows_job = rows.is_none();
                vec![scatter]
            };
            (
                Builtin::Pca {
                    k,
                    center,
                    scale,
                    output,
                },
                jobs,
            )
        }
        "kmeans" => {
            let params = KmeansParams {
                k: count("k", 1.0)?,
                runs: count("runs", 1.0)?,
                max_iter: count("max_iter", 1.0)?,
                seed: num("seed") as i64 as u64,
                tol: real("tol")?,
            };
            if let Some(n) = rows
                && params.k as u64 > n
            {
                return Err(parameter_error(format!(
                    "kmeans: k ({}) is larger than the number of rows of x ({n})",
                    params.k
                )));
            }
            (Builtin::Kmeans(params), vec![x.clone()])
        }
        "kmeans_predict" => (Builtin::KmeansPredict, vec![x.clone(), mats[1].clone()]),
        "logreg" | "l2svm" => {
            let params = FitParams {
                lambda: real("lambda")?,
                intercept: flag("intercept")?,
                max_iter: count("max_iter", 1.0)?,
                tol: real("tol")?,
            };
            let b = if name == "logreg" {
                Builtin::Logreg(params)
            } else {
                Builtin::L2svm(params)
            };
            (b, vec![x.clone(), mats[1].clone()])
        }
        "logreg_predict" | "logreg_proba" => (
            Builtin::LogregPredict {
                probabilities: name == "logreg_proba",
            },
            vec![x.clone(), mats[1].clone()],
        ),
        "l2svm_predict" => (Builtin::L2svmPredict, vec![x.clone(), mats[1].clone()]),
        _ => return plan_err!("unknown builtin '{name}'"),
    };
    if rows_job {
        jobs.push(reduce(Reduction::RowSums, &x));
    }
    Ok((builtin, jobs, rows_job))
}

/// `e` as an expression over the outer row's columns, when it refers to any.
fn outer_expr(e: &SqlExpr, context: &mut dyn RelationPlannerContext) -> Option<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let expr = context.sql_to_expr(e.clone(), &DFSchema::empty()).ok()?;
    let mut outer = false;
    let expr = expr
        .transform(|e| match e {
            Expr::OuterReferenceColumn(_, c) => {
                outer = true;
                Ok(Transformed::yes(Expr::Column(c)))
            }
            e => Ok(Transformed::no(e)),
        })
        .ok()?
        .data;
    outer.then_some(expr)
}

/// The plans a call over `inputs` (its subquery arguments, `owners` naming each one's
/// argument) runs: each job a linear-algebra plan node over all the inputs, and per
/// input not a builtin's own relation a check for a NULL value (an error, not an absent
/// cell).
pub(crate) type CallPlans = (Vec<(MatExpr, LogicalPlan)>, Vec<(String, LogicalPlan)>);

pub(crate) fn plan_jobs(
    call: &Call,
    inputs: &[LogicalPlan],
    owners: &[(usize, &'static str)],
) -> Result<CallPlans> {
    let mut jobs = Vec::with_capacity(call.jobs.len());
    for e in &call.jobs {
        let node = LaNode::new(e.clone(), inputs.to_vec(), Output::Cells)?;
        jobs.push((
            e.clone(),
            LogicalPlan::Extension(Extension {
                node: Arc::new(node),
            }),
        ));
    }
    let mut checks = Vec::new();
    for (input, (k, pname)) in inputs.iter().zip(owners) {
        if is_builtin_scan(input) {
            continue;
        }
        let v = Expr::Column(Column::from(input.schema().qualified_field(2)));
        let plan = LogicalPlanBuilder::from(input.clone())
            .filter(v.is_null())?
            .limit(0, Some(1))?
            .build()?;
        checks.push((format!("argument {k} ({pname})"), plan));
    }
    Ok((jobs, checks))
}

/// True when `plan` is a builtin's own relation (its cells are never NULL).
fn is_builtin_scan(plan: &LogicalPlan) -> bool {
    builtin_scan(plan).is_some()
}

/// The builtin call `plan` scans, when it is a builtin's own relation.
pub(crate) fn builtin_scan(plan: &LogicalPlan) -> Option<Arc<BuiltinTable>> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
            (provider as Arc<dyn std::any::Any + Send + Sync>)
                .downcast::<BuiltinTable>()
                .ok()
        }
        _ => None,
    }
}

/// A number, or `true` / `false` as 1 / 0.
fn scalar(e: &SqlExpr) -> Option<f64> {
    if let SqlExpr::Value(v) = e
        && let Value::Boolean(b) = v.value
    {
        return Some(f64::from(u8::from(b)));
    }
    crate::la::number(e)
}

/// What a call's in-memory step produced.
pub(crate) struct Finished {
    pub(crate) batch: RecordBatch,
    pub(crate) report: Option<ParforReport>,
}

impl Call {
    /// The independent tasks it runs and what each costs, when known at planning time
    /// (k-means runs, over an `x` of shape `x`).
    pub(crate) fn tasks(&self, x: Option<(u64, u64)>) -> Option<(usize, TaskCost)> {
        match &self.builtin {
            Builtin::Kmeans(p) => {
                let cost = x.map_or(
                    TaskCost {
                        uniform: true,
                        ..TaskCost::default()
                    },
                    |(n, d)| kmeans::run_cost(n as usize, d as usize, p),
                );
                Some((p.runs, cost))
            }
            _ => None,
        }
    }

    /// What this call costs as one task of a `LATERAL` run, its jobs' results `mats`
    /// at hand: rough operation and byte counts of its in-memory step, from the shapes.
    pub(crate) fn task_cost(&self, mats: &[BlockMatrix]) -> TaskCost {
        let (r, c) = mats
            .first()
            .map_or((0.0, 0.0), |m| (m.rows as f64, m.cols as f64));
        let (flops, memory, uniform) = match &self.builtin {
            // x' x is c x c: a Cholesky solve.
            Builtin::Lm(p) if p.solver != LmSolver::Cg => {
                (c * c * c / 3.0, 2.0 * c * c * 8.0, true)
            }
            Builtin::Lm(p) => {
                let iters = if p.max_iter == 0 {
                    c
                } else {
                    p.max_iter as f64
                };
                (iters * 4.0 * r * c, 3.0 * r * 8.0, false)
            }
            // A p x p eigen-decomposition or scaling.
            Builtin::Cov | Builtin::Cor { .. } | Builtin::Pca { .. } => {
                (10.0 * c * c * c, 3.0 * c * c * 8.0, true)
            }
            Builtin::Kmeans(p) => {
                let run = kmeans::run_cost(r as usize, c as usize, p);
                (
                    p.runs as f64 * run.flops.unwrap_or(0.0),
                    run.memory.unwrap_or(0) as f64,
                    false,
                )
            }
            Builtin::Logreg(f) | Builtin::L2svm(f) => {
                let q = c as usize + usize::from(f.intercept);
                let fit = classify::newton_cost(r as usize, q, f);
                (
                    fit.flops.unwrap_or(0.0),
                    fit.memory.unwrap_or(0) as f64,
                    false,
                )
            }
            // One pass over x.
            _ => (2.0 * r * c, r * 16.0, true),
        };
        TaskCost {
            flops: Some(flops),
            memory: Some(memory as u64),
            uniform,
        }
    }

    /// The same call with the numeric arguments `values` (a `LATERAL` call's row),
    /// checked as the call's own were. With `shared` (every row shares the jobs'
    /// results), values that would change what the call reads (its jobs) are refused.
    pub(crate) fn with_numbers(
        &self,
        values: &[(&'static str, f64)],
        shared: bool,
    ) -> Result<Call> {
        let mut arguments = self.arguments.clone();
        for (n, v) in values {
            arguments.nums.insert(n, *v);
        }
        let (builtin, jobs, rows_job) = read(&self.name, &arguments, &self.mats)?;
        if !shared {
            return Ok(Call {
                builtin,
                jobs,
                rows_job,
                arguments,
                ..self.clone()
            });
        }
        if jobs != self.jobs || rows_job != self.rows_job {
            return Err(tessera_error(
                ErrorKind::FeatureNotSupported,
                format!(
                    "{}: these per-row arguments change which matrices the call reads; give them as constants",
                    self.name
                ),
            ));
        }
        Ok(Call {
            builtin,
            arguments,
            ..self.clone()
        })
    }

    /// The call's output from its jobs' results (in job order), its dense steps run
    /// with `par`.
    pub(crate) fn finish(
        &self,
        mats: &[BlockMatrix],
        parfor: &ParforSettings,
        par: Par,
    ) -> Result<Finished> {
        let name = self.name.as_str();
        let row_count = |mats: &[BlockMatrix]| -> Result<usize> {
            match (self.rows, self.rows_job) {
                (Some(n), _) => Ok(n as usize),
                (None, true) => Ok(mats.last().map_or(0, |m| m.rows) as usize),
                (None, false) => plan_err!("internal: {name} has no row count"),
            }
        };
        let mut report = None;
        let batch = match &self.builtin {
            Builtin::Lm(p) if p.solver == LmSolver::Cg => {
                let x = RowPanels::new(&mats[0], None);
                let y = gather(&mats[1], Some(x.nrows()))?;
                check_y(name, (x.nrows(), x.ncols()), &y)?;
                let y: Vec<f64> = y.col(0).iter().copied().collect();
                cells(linear::lm_cg(p, &x, &y, par)?.as_ref())
            }
            Builtin::Lm(p) => {
                let n = row_count(mats)?;
                if n == 0 {
                    return Err(data_error("lm: x has no rows"));
                }
                let xtx = gather(&mats[0], None)?;
                let xty = gather(&mats[1], Some(xtx.nrows()))?;
                if xty.ncols() != 1 {
                    return Err(data_error(format!(
                        "lm: y must be one column, it has {}",
                        xty.ncols()
                    )));
                }
                let summed = self
                    .jobs
                    .get(2)
                    .is_some_and(|j| j.op == Op::Reduce(Reduction::ColSums));
                let (xsum, ysum) = if summed {
                    let ysum = gather(&mats[3], None)?;
                    let ysum = if ysum.nrows() > 0 && ysum.ncols() > 0 {
                        ysum[(0, 0)]
                    } else {
                        0.0
                    };
                    (gather(&mats[2], None)?, ysum)
                } else {
                    (Mat::zeros(1, xtx.ncols()), 0.0)
                };
                cells(linear::lm_direct(p, xtx, xty, xsum.as_ref(), ysum, n)?.as_ref())
            }
            Builtin::LmPredict => {
                let x = gather(&mats[0], None)?;
                let beta = gather(&mats[1], None)?;
                check_finite(name, "x", x.as_ref())?;
                cells(linear::lm_predict(x.as_ref(), beta.as_ref(), par)?.as_ref())
            }
            Builtin::Cov | Builtin::Cor { spearman: false } => {
                let n = row_count(mats)?;
                let s = gather(&mats[0], None)?;
                let c = stats::cov_from_scatter(name, s.as_ref(), n)?;
                if self.builtin == Builtin::Cov {
                    cells(c.as_ref())
                } else {
                    cells(stats::cor_from_cov(c.as_ref()).as_ref())
                }
            }
            Builtin::Cor { spearman: true } => {
                let x = gather(&mats[0], self.rows.map(|r| r as usize))?;
                check_finite(name, "x", x.as_ref())?;
                let ranks = stats::column_ranks(x.as_ref());
                let s = stats::scatter(ranks.as_ref(), par);
                let c = stats::cov_from_scatter(name, s.as_ref(), x.nrows())?;
                cells(stats::cor_from_cov(c.as_ref()).as_ref())
            }
            Builtin::Pca {
                k,
                center,
                scale,
                output,
            } => {
                let s = gather(&mats[0], None)?;
                let (n, x) = match output {
                    PcaOutput::Projection => {
                        let x = gather(&mats[2], self.rows.map(|r| r as usize))?;
                        (x.nrows(), Some(x))
                    }
                    _ => (row_count(mats)?, None),
                };
                let cov = stats::cov_from_scatter(name, s.as_ref(), n)?;
                let fit = stats::pca_fit(cov.as_ref(), *k, *scale)?;
                match output {
                    PcaOutput::Components => cells(fit.vectors.as_ref()),
                    PcaOutput::Variance => {
                        let total = fit.total;
                        let v = Mat::from_fn(fit.values.len(), 2, |i, j| {
                            if j == 0 {
                                fit.values[i]
                            } else {
                                fit.values[i] / total
                            }
                        });
                        cells(v.as_ref())
                    }
                    PcaOutput::Projection => {
                        let means = gather(&mats[1], None)?;
                        let means: Vec<f64> = (0..means.ncols()).map(|j| means[(0, j)]).collect();
                        let x = x.unwrap_or_else(|| Mat::zeros(0, 0));
                        let m = center.then_some(means.as_slice());
                        cells(stats::pca_project(x.as_ref(), m, &fit, par).as_ref())
                    }
                }
            }
            Builtin::Kmeans(p) => {
                let x = RowPanels::new(&mats[0], self.rows.map(|r| r as usize));
                x.check_finite(name, "x")?;
                let (c, _, r) = kmeans::kmeans(&x, p, parfor)?;
                report = Some(r);
                cells(c.as_ref())
            }
            Builtin::KmeansPredict => {
                let x = RowPanels::new(&mats[0], None);
                let c = gather(&mats[1], None)?;
                x.check_finite(name, "x")?;
                check_finite(name, "centroids", c.as_ref())?;
                if c.ncols() != x.ncols() {
                    return Err(data_error(format!(
                        "kmeans_predict: centroids have {} columns, x has {}",
                        c.ncols(),
                        x.ncols()
                    )));
                }
                let (norms, _) = kmeans::row_norms_and_variance(&x, par)?;
                let pass = kmeans::assign(&x, &norms, c.as_ref(), par)?;
                let i = Int64Array::from_iter_values(0..pass.labels.len() as i64);
                let l = Int64Array::from_iter_values(pass.labels.iter().map(|&l| i64::from(l)));
                batch(name, vec![Arc::new(i), Arc::new(l)])?
            }
            Builtin::Logreg(f) => {
                let rows = self.rows.map(|r| r as usize);
                let x = RowPanels::new(&mats[0], rows);
                let y = gather(&mats[1], Some(x.nrows()))?;
                check_y(name, (x.nrows(), x.ncols()), &y)?;
                x.check_finite(name, "x")?;
                let (labels, index) = classify::classes(name, y.as_ref())?;
                if labels.len() == 2 {
                    // Two classes: Newton's method over x's blocks.
                    cells(classify::logreg_binary(&x, &labels, &index, f, par)?.as_ref())
                } else {
                    cells(classify::logreg_multinomial(&x, &labels, &index, f, par)?.as_ref())
                }
            }
            Builtin::L2svm(f) => {
                let x = RowPanels::new(&mats[0], self.rows.map(|r| r as usize));
                let y = gather(&mats[1], Some(x.nrows()))?;
                check_y(name, (x.nrows(), x.ncols()), &y)?;
                let (m, r) = classify::l2svm(&x, y.as_ref(), f, parfor)?;
                report = r;
                cells(m.as_ref())
            }
            Builtin::LogregPredict { probabilities } => {
                let x = gather(&mats[0], None)?;
                check_finite(name, "x", x.as_ref())?;
                let model = gather(&mats[1], Some(x.ncols() + 2))?;
                let model = Model::read(name, model.as_ref(), x.ncols())?;
                let prob = classify::softmax_rows(model.scores(x.as_ref(), par));
                if *probabilities {
                    cells(prob.as_ref())
                } else {
                    labelled(name, &classify::argmax_rows(prob.as_ref()), &model.labels)?
                }
            }
            Builtin::L2svmPredict => {
                let x = gather(&mats[0], None)?;
                check_finite(name, "x", x.as_ref())?;
                let model = gather(&mats[1], Some(x.ncols() + 2))?;
                let model = Model::read(name, model.as_ref(), x.ncols())?;
                let s = model.scores(x.as_ref(), par);
                labelled(name, &classify::argmax_rows(s.as_ref()), &model.labels)?
            }
        };
        Ok(Finished { batch, report })
    }
}

/// `y` must be one finite column as long as an x of `(rows, cols)`.
fn check_y(name: &str, (rows, cols): (usize, usize), y: &Mat<f64>) -> Result<()> {
    if y.nrows() != rows || y.ncols() != 1 {
        return Err(data_error(format!(
            "{name}: y must be {}x1 for an x of {}x{}, it is {}x{}",
            rows,
            rows,
            cols,
            y.nrows(),
            y.ncols()
        )));
    }
    check_finite(name, "y", y.as_ref())
}

fn batch(name: &str, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(output_schema(name), columns)?)
}

/// `(i, label, value)` rows from each row's best class.
fn labelled(name: &str, best: &[(usize, f64)], labels: &[f64]) -> Result<RecordBatch> {
    let i = Int64Array::from_iter_values(0..best.len() as i64);
    let l = Float64Array::from_iter_values(best.iter().map(|(c, _)| labels[*c]));
    let v = Float64Array::from_iter_values(best.iter().map(|(_, v)| *v));
    batch(name, vec![Arc::new(i), Arc::new(l), Arc::new(v)])
}

/// The non-zero cells of `m` as `(i, j, v)` rows (NaN cells included).
pub(crate) fn cells(m: MatRef<'_, f64>) -> RecordBatch {
    let (mut is, mut js, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            let v = m[(i, j)];
            if v != 0.0 {
                is.push(i as i64);
                js.push(j as i64);
                vs.push(v);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(is)),
        Arc::new(Int64Array::from(js)),
        Arc::new(Float64Array::from(vs)),
    ];
    // The columns match cells_schema by construction.
    RecordBatch::try_new(cells_schema(), columns)
        .unwrap_or_else(|_| RecordBatch::new_empty(cells_schema()))
}
