//! The logical plan node for a matrix expression, Tessera's settings, and the physical
//! planner that turns the node into `LaExec` operators with strategies.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigExtension;
use datafusion::common::{DFSchema, DFSchemaRef, Result, extensions_options, plan_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use tessera_storage::Partitioning;

use super::exec::{FlowGeometry, LaExec, Output, cells_schema, rows_schema};
use super::expr::{Estimate, MatExpr, Op};
use super::flow::{
    BlockCellsExec, BlockMap, BlockMapExec, BlockScanExec, FlowStrategy, fused_plan, matmul_plan,
};
use super::matrix::{KeyFn, Layout};
use super::strategy::{self, CostContext, Operand, Pattern, Strategy};
use crate::partitioning::hash_placement_is_live;

extensions_options! {
    /// Tessera's session settings (`SET tessera.<name> = ...`).
    pub struct TesseraConfig {
        /// Force a matmul strategy: `auto` (the cost model decides), `local`,
        /// `broadcast`, `broadcast_left`, `copartitioned`, `repartition`,
        /// `replication`, `tsmm` or `mmchain` (SystemML names also accepted).
        pub matmul_strategy: String, default = "auto".to_string()
        /// Largest operand, in bytes, broadcast to every partition or held by one task.
        pub broadcast_budget: usize, default = 256 * 1024 * 1024
        /// With workers, run block dataflows over stored matrices on them (`true`), or
        /// keep every statement of this session in the coordinator (`false`).
        pub distributed: bool, default = true
    }
}

impl ConfigExtension for TesseraConfig {
    const PREFIX: &'static str = "tessera";
}

/// A matrix expression in a logical plan: `expr` after the rewrites, over the
/// `(i, j, v)` subquery `inputs`.
#[derive(Debug, Clone)]
pub struct LaNode {
    written: String,
    expr: MatExpr,
    inputs: Vec<LogicalPlan>,
    output: Output,
    schema: DFSchemaRef,
}

impl LaNode {
    /// A node for `expr` as written; the rewrites are applied here.
    pub fn new(expr: MatExpr, inputs: Vec<LogicalPlan>, output: Output) -> Result<Self> {
        let written = expr.to_string();
        let expr = super::expr::optimize(expr);
        let arrow = match output {
            Output::Cells => cells_schema(),
            Output::Rows => rows_schema(),
        };
        let schema = Arc::new(DFSchema::try_from(arrow.as_ref().clone())?);
        Ok(Self {
            written,
            expr,
            inputs,
            output,
            schema,
        })
    }

    /// The rewritten expression.
    pub fn expr(&self) -> &MatExpr {
        &self.expr
    }
}

impl PartialEq for LaNode {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.inputs == other.inputs && self.output == other.output
    }
}

impl Eq for LaNode {}

impl Hash for LaNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.to_string().hash(state);
        self.inputs.hash(state);
    }
}

impl PartialOrd for LaNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for LaNode {
    fn name(&self) -> &str {
        "LinearAlgebra"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        self.inputs.iter().collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let now = self.expr.to_string();
        if now == self.written {
            write!(f, "LinearAlgebra: {now}")
        } else {
            write!(f, "LinearAlgebra: {} rewritten to {now}", self.written)
        }
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(Self {
            inputs,
            ..self.clone()
        })
    }
}

/// Plans [`LaNode`]s into [`LaExec`] trees.
#[derive(Debug, Default)]
pub struct LaPlanner;

struct Ctx<'a> {
    inputs: &'a [Arc<dyn ExecutionPlan>],
    cost: CostContext,
    forced: Option<Strategy>,
}

fn settings(session: &dyn Session) -> Result<(Option<Strategy>, usize)> {
    let cfg = session
        .config()
        .options()
        .extensions
        .get::<TesseraConfig>()
        .cloned()
        .unwrap_or_default();
    let forced = match cfg.matmul_strategy.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => None,
        s => match Strategy::parse(s) {
            Some(s) => Some(s),
            None => {
                return plan_err!(
                    "unknown tessera.matmul_strategy '{}'; use auto, local, broadcast, broadcast_left, copartitioned, repartition, replication, tsmm or mmchain",
                    cfg.matmul_strategy
                );
            }
        },
    };
    Ok((forced, cfg.broadcast_budget))
}

/// Builds the operator tree for `e`, returning it with what the cost model knows about
/// its result.
fn build(e: &MatExpr, ctx: &Ctx<'_>, output: Output) -> Result<(Arc<LaExec>, Operand)> {
    let parts = ctx.cost.parts;
    // A forced plain strategy expands the fused forms so it really runs.
    if let Some(f) = ctx.forced {
        if e.op == Op::Tsmm && f != Strategy::Tsmm {
            let x = e.args[0].clone();
            return build(
                &MatExpr::new(Op::MatMul, vec![x.clone().t(), x]),
                ctx,
                output,
            );
        }
        if e.op == Op::MMChain && f != Strategy::MMChain {
            let (x, v) = (e.args[0].clone(), e.args[1].clone());
            let xv = MatExpr::new(Op::MatMul, vec![x.clone(), v]);
            return build(&MatExpr::new(Op::MatMul, vec![x.t(), xv]), ctx, output);
        }
    }
    let est = e.estimate();
    let mut children: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut operands = Vec::new();
    if let Op::Input(k) = e.op {
        let Some(plan) = ctx.inputs.get(k) else {
            return plan_err!("internal: matrix input {k} has no plan");
        };
        children.push(plan.clone());
    }
    for a in &e.args {
        let (child, operand) = build(a, ctx, Output::Cells)?;
        children.push(child);
        operands.push(operand);
    }
    let auto = super::auto_block(est.rows.max(1.0) as u64, est.cols.max(1.0) as u64);
    let hashed = |block| Operand {
        est,
        block,
        layout: Layout::Hash2,
        parts,
    };
    let (choice, operand) = match &e.op {
        Op::Array(p) => {
            let layout = match p.partitioning() {
                Partitioning::Hash { .. } if hash_placement_is_live(p.0.info()) => Layout::Hash2,
                Partitioning::Hash { .. } => Layout::Other,
                Partitioning::RowBlock { .. } => Layout::Rows(KeyFn::Range {
                    blocks: p.shape().0.div_ceil(p.block().0.max(1)),
                }),
                Partitioning::Grid { .. } => Layout::Other,
            };
            let operand = Operand {
                est,
                block: p.block(),
                layout,
                parts: p.partitioning().shard_count() as usize,
            };
            (None, operand)
        }
        Op::MatMul | Op::Tsmm | Op::MMChain => {
            let (a, b, pattern) = match e.op {
                Op::MatMul => (operands[0], operands[1], Pattern::Plain),
                Op::Tsmm => {
                    let x = operands[0];
                    let xt = Operand {
                        est: Estimate {
                            rows: x.est.cols,
                            cols: x.est.rows,
                            ..x.est
                        },
                        block: (x.block.1, x.block.0),
                        layout: x.layout.transposed(),
                        ..x
                    };
                    (xt, x, Pattern::Tsmm)
                }
                _ => (operands[0], operands[1], Pattern::MMChain),
            };
            let choice = strategy::choose(&a, &b, pattern, &ctx.cost, ctx.forced)?;
            let layout = match choice.chosen.strategy {
                Strategy::Local => Layout::Single,
                Strategy::BroadcastRight if matches!(a.layout, Layout::Rows(_)) => a.layout,
                Strategy::BroadcastLeft if matches!(b.layout, Layout::Cols(_)) => b.layout,
                _ => Layout::Hash2,
            };
            let block = match e.op {
                Op::MatMul => (a.block.0, b.block.1),
                _ => auto,
            };
            (
                Some(choice),
                Operand {
                    est,
                    block,
                    layout,
                    parts,
                },
            )
        }
        Op::Transpose => {
            let x = operands[0];
            (
                None,
                Operand {
                    est,
                    block: (x.block.1, x.block.0),
                    layout: x.layout.transposed(),
                    parts: x.parts,
                },
            )
        }
        Op::Scalar { .. } | Op::Unary(_) => (None, operands[0]),
        Op::Binary(_) | Op::Fused(_) => {
            let x = operands[0];
            let layout = if matches!(x.layout, Layout::Other | Layout::Single) {
                Layout::Hash2
            } else {
                x.layout
            };
            (None, Operand { est, layout, ..x })
        }
        _ => (None, hashed(auto)),
    };
    if let Some(exec) = block_dataflow(e, choice.as_ref(), est, output, parts)? {
        return Ok((Arc::new(exec), operand));
    }
    let exec = LaExec::new(e.op.clone(), choice, est, children, output, parts);
    Ok((Arc::new(exec), operand))
}

/// The dataflow strategy a chosen matmul strategy runs as, if it has one.
fn flow_strategy(strategy: Strategy) -> Option<FlowStrategy> {
    match strategy {
        Strategy::Local => Some(FlowStrategy::Local),
        Strategy::Repartition => Some(FlowStrategy::Repartition),
        Strategy::BroadcastRight => Some(FlowStrategy::BroadcastRight),
        Strategy::BroadcastLeft => Some(FlowStrategy::BroadcastLeft),
        Strategy::CoPartitioned => Some(FlowStrategy::CoPartitioned),
        Strategy::Replication => Some(FlowStrategy::Replication),
        Strategy::Tsmm | Strategy::MMChain => None,
    }
}

/// An operand that is a block stream: a stored matrix's scan, or the transpose of one.
struct FlowOperand {
    plan: Arc<dyn ExecutionPlan>,
    shape: (u64, u64),
    block: (u64, u64),
    /// Each partition holds whole block rows (stored by row, or one block column).
    rows_together: bool,
}

impl FlowOperand {
    fn grid(&self) -> (u64, u64) {
        (
            self.shape.0.div_ceil(self.block.0.max(1)).max(1),
            self.shape.1.div_ceil(self.block.1.max(1)).max(1),
        )
    }
}

fn flow_operand(e: &MatExpr) -> Result<Option<FlowOperand>> {
    Ok(match &e.op {
        Op::Array(p) => {
            let operand = FlowOperand {
                plan: Arc::new(BlockScanExec::new(p.clone())),
                shape: p.shape(),
                block: p.block(),
                rows_together: false,
            };
            let rows_together =
                matches!(p.partitioning(), Partitioning::RowBlock { .. }) || operand.grid().1 == 1;
            Some(FlowOperand {
                rows_together,
                ..operand
            })
        }
        Op::Transpose => {
            let Some(x) = flow_operand(&e.args[0])? else {
                return Ok(None);
            };
            let operand = FlowOperand {
                plan: Arc::new(BlockMapExec::try_new(x.plan, BlockMap::Transpose)?),
                shape: (x.shape.1, x.shape.0),
                block: (x.block.1, x.block.0),
                rows_together: false,
            };
            let rows_together = operand.grid().1 == 1;
            Some(FlowOperand {
                rows_together,
                ..operand
            })
        }
        _ => None,
    })
}

/// A product whose operands are stored matrices (or their transposes) whose blocks
/// meet, with a strategy that has a dataflow shape, planned as that dataflow: block
/// scans, DataFusion's joins and exchanges, Tessera's block operators.
fn block_dataflow(
    e: &MatExpr,
    choice: Option<&strategy::Choice>,
    est: Estimate,
    output: Output,
    parts: usize,
) -> Result<Option<LaExec>> {
    let Some(choice) = choice else {
        return Ok(None);
    };
    let strategy = choice.chosen.strategy;
    let (plan, geometry) = match (&e.op, e.args.as_slice()) {
        (Op::MatMul, [a, b]) => {
            let Some(flow) = flow_strategy(strategy) else {
                return Ok(None);
            };
            let (Some(a), Some(b)) = (flow_operand(a)?, flow_operand(b)?) else {
                return Ok(None);
            };
            if a.block.1 != b.block.0 || a.shape.1 != b.shape.0 {
                return Ok(None);
            }
            let grid = (a.grid().0, b.grid().1);
            let geometry = FlowGeometry {
                shape: (a.shape.0, b.shape.1),
                block: (a.block.0, b.block.1),
            };
            (matmul_plan(a.plan, b.plan, flow, grid)?, geometry)
        }
        (Op::Tsmm, [x]) if strategy != Strategy::Tsmm => {
            // The cost model chose a plain strategy for t(X) X: the product of the
            // transposed scan with the scan.
            let Some(flow) = flow_strategy(strategy) else {
                return Ok(None);
            };
            let (Some(a), Some(b)) = (flow_operand(&x.clone().t())?, flow_operand(x)?) else {
                return Ok(None);
            };
            let grid = (a.grid().0, b.grid().1);
            let geometry = FlowGeometry {
                shape: (a.shape.0, b.shape.1),
                block: (a.block.0, b.block.1),
            };
            (matmul_plan(a.plan, b.plan, flow, grid)?, geometry)
        }
        (Op::Tsmm, [x]) => {
            let Some(x) = flow_operand(x)? else {
                return Ok(None);
            };
            let geometry = FlowGeometry {
                shape: (x.shape.1, x.shape.1),
                block: (x.block.1, x.block.1),
            };
            (fused_plan(x.plan, None, x.rows_together)?, geometry)
        }
        (Op::MMChain, [x, v]) if strategy == Strategy::MMChain => {
            let (Some(x), Some(v)) = (flow_operand(x)?, flow_operand(v)?) else {
                return Ok(None);
            };
            if x.block.1 != v.block.0 || x.shape.1 != v.shape.0 {
                return Ok(None);
            }
            let geometry = FlowGeometry {
                shape: (x.shape.1, v.shape.1),
                block: (x.block.1, v.block.1),
            };
            (fused_plan(x.plan, Some(v.plan), x.rows_together)?, geometry)
        }
        _ => return Ok(None),
    };
    let exec = LaExec::new(
        e.op.clone(),
        Some(choice.clone()),
        est,
        vec![plan],
        output,
        parts,
    )
    .with_flow(geometry);
    Ok(Some(exec))
}

#[async_trait]
impl ExtensionPlanner for LaPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<LaNode>() else {
            return Ok(None);
        };
        let (forced, budget) = settings(session)?;
        let parts = session.config().target_partitions().max(1);
        let cores = tessera_storage::kernels::cpu_pool()
            .current_num_threads()
            .max(1);
        let ctx = Ctx {
            inputs: physical_inputs,
            cost: CostContext {
                parts,
                cores,
                broadcast_budget: budget as f64,
            },
            forced,
        };
        let (exec, _) = build(&node.expr, &ctx, node.output)?;
        // A dataflow at the top streams its cells as its blocks arrive; below another
        // operator it is still computed into a matrix by its `LaExec`.
        if let (Some(geometry), Output::Cells, [flow]) =
            (exec.flow(), node.output, exec.children().as_slice())
        {
            let line = datafusion::physical_plan::displayable(exec.as_ref())
                .one_line()
                .to_string();
            let planned = super::flow::Planned {
                line: line
                    .trim()
                    .split_once(": ")
                    .map_or(line.trim(), |(_, rest)| rest)
                    .to_string(),
                tree: super::exec::tree_lines(exec.as_ref()),
            };
            let cells = BlockCellsExec::try_new(Arc::clone(flow), geometry, planned)?;
            return Ok(Some(Arc::new(cells)));
        }
        Ok(Some(exec))
    }
}

/// DataFusion's physical planner with the linear-algebra extension.
#[derive(Debug)]
pub struct TesseraQueryPlanner;

#[async_trait]
impl QueryPlanner for TesseraQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(LaPlanner)]);
        planner
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}
