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
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use tessera_storage::kernels::{BinaryOp, Step};
use tessera_storage::{PartTarget, Partitioning, Store};

use super::exec::{FlowGeometry, LaExec, Output, cells_schema, rows_schema};
use super::expr::{Broadcast, Estimate, MatExpr, Op, Reduction, broadcast};
use super::flow::{
    BlockAssembleExec, BlockCellsExec, BlockElementwiseExec, BlockGatherExec, BlockGenerateExec,
    BlockMap, BlockMapExec, BlockProductExec, BlockScanExec, BlockSumExec, BlockWindow,
    BlockWriteExec, FlowStrategy, Fold, FusedPartialExec, Gathered, Generator, Total,
    centred_tsmm_plan, fused_plan, matmul_plan,
};
use super::matrix::{KeyFn, Layout};
use super::ops::Draw;
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
        /// The parfor scheme of the builtins' independent tasks, as `parfor.scheme`
        /// (which it overrides when set): `auto`, `naive`, `static`, `fixed` or
        /// `factoring`.
        pub parfor_scheme: String, default = String::new()
        /// Make a product's blocks one partial per product (and `t(X) X`'s one per
        /// block row), added in a fixed order on one thread, so a matrix result is the
        /// same to the bit however its work is spread over partitions and workers.
        /// Every statement that runs distributed is planned so (a retry on fewer
        /// workers then gives the first attempt's answer).
        pub exact_sums: bool, default = false
        /// Take a builtin's intermediates over stored arrays (`t(X) X`, `t(X) y`,
        /// column sums) from the store's lineage cache when an earlier call computed
        /// them from the same array versions, and keep new ones there (`false`:
        /// compute every one again).
        pub reuse: bool, default = true
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
            Output::Blocks(_) => super::flow::block_stream_schema(),
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

/// `CREATE MATRIX ... AS` a matrix expression that runs as a block dataflow: its
/// blocks, cut to the new matrix's blocking, are stored where they are computed (a
/// [`BlockWriteExec`] over the dataflow, on the workers in a distributed statement);
/// its rows are the parts written, for the statement to adopt and commit.
#[derive(Debug, Clone)]
pub struct MatrixWriteNode {
    input: LogicalPlan,
    target: PartTarget,
    block: (u64, u64),
    store: Store,
    schema: DFSchemaRef,
}

impl MatrixWriteNode {
    /// Stores the blocks of the matrix expression `input` as parts of `target`, in
    /// blocks of `block`, with the files of `store`.
    pub fn new(
        input: LogicalPlan,
        target: PartTarget,
        block: (u64, u64),
        store: Store,
    ) -> Result<Self> {
        let arrow = super::flow::written_parts_schema();
        let schema = Arc::new(DFSchema::try_from(arrow.as_ref().clone())?);
        Ok(Self {
            input,
            target,
            block,
            store,
            schema,
        })
    }
}

impl PartialEq for MatrixWriteNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.target == other.target && self.block == other.block
    }
}

impl Eq for MatrixWriteNode {}

impl Hash for MatrixWriteNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        (self.target.array_id, self.target.version, self.block).hash(state);
    }
}

impl PartialOrd for MatrixWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for MatrixWriteNode {
    fn name(&self) -> &str {
        "MatrixWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "MatrixWrite: {} version {} in {}x{} blocks",
            self.target.name, self.target.version, self.block.0, self.block.1
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match (inputs.pop(), inputs.is_empty()) {
            (Some(input), true) => Ok(Self {
                input,
                ..self.clone()
            }),
            _ => plan_err!("MatrixWrite takes one input"),
        }
    }
}

/// True when `plan` (planned in this process) is a matrix expression whose cells a
/// block dataflow makes: what [`MatrixWriteNode`] can store where it is computed.
pub fn is_block_dataflow(plan: &Arc<dyn ExecutionPlan>) -> Option<FlowGeometry> {
    plan.downcast_ref::<BlockCellsExec>()
        .filter(|c| !c.one_cell)
        .map(BlockCellsExec::geometry)
}

/// The physical plan of `write` over its input's plan `input`.
fn plan_write(
    write: &MatrixWriteNode,
    input: &Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let name = &write.target.name;
    let Some(cells) = input
        .downcast_ref::<BlockCellsExec>()
        .filter(|c| !c.one_cell)
    else {
        return plan_err!(
            "CREATE MATRIX {name} AS: the query is not a matrix expression computed as blocks"
        );
    };
    let geometry = cells.geometry();
    let shape = write.target.schema.shape2();
    if geometry.shape != shape {
        return plan_err!(
            "CREATE MATRIX {name} ({}, {}) AS: the query's matrix is {}x{}",
            shape.0,
            shape.1,
            geometry.shape.0,
            geometry.shape.1
        );
    }
    let blocks = FlowOperand::new(Arc::clone(cells.input()), geometry.shape, geometry.block)
        .reblocked(write.block)?;
    let written = BlockWriteExec::try_new(blocks.plan, write.target.clone(), write.store.clone())?;
    // Only the rows saying what was written are gathered: in a distributed statement
    // the coalesce is where the network boundary goes, so the writes stay on the
    // workers that computed the blocks.
    Ok(Arc::new(
        datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(Arc::new(
            written,
        )),
    ))
}

/// Plans [`LaNode`]s into [`LaExec`] trees.
#[derive(Debug, Default)]
pub struct LaPlanner;

struct Ctx<'a> {
    inputs: &'a [Arc<dyn ExecutionPlan>],
    cost: CostContext,
    forced: Option<Strategy>,
}

fn settings(session: &dyn Session) -> Result<(Option<Strategy>, usize, bool)> {
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
    Ok((forced, cfg.broadcast_budget, cfg.exact_sums))
}

/// `plan` with every block product and fused partial in exact mode (see
/// [`TesseraConfig::exact_sums`]), when `exact`.
fn with_exact_sums(
    plan: Arc<dyn ExecutionPlan>,
    exact: bool,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    if !exact {
        return Ok(Some(plan));
    }
    let plan = plan.transform_up(|node| {
        if let Some(p) = node.downcast_ref::<BlockProductExec>() {
            return Ok(Transformed::yes(
                Arc::new(p.exact_copy()?) as Arc<dyn ExecutionPlan>
            ));
        }
        if let Some(f) = node.downcast_ref::<FusedPartialExec>() {
            return Ok(Transformed::yes(
                Arc::new(f.exact_copy()?) as Arc<dyn ExecutionPlan>
            ));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(Some(plan.data))
}

/// Builds the operator tree for `e`: a block dataflow where its operation has one (its
/// operands made block streams, an operand computed whole gathered into one partition),
/// else an [`LaExec`] over its operands.
fn build(e: &MatExpr, ctx: &Ctx<'_>) -> Result<Built> {
    let parts = ctx.cost.parts;
    // A forced plain strategy expands the fused forms so it really runs.
    if let Some(f) = ctx.forced {
        if e.op == Op::Tsmm && f != Strategy::Tsmm {
            let x = e.args[0].clone();
            return build(&MatExpr::new(Op::MatMul, vec![x.clone().t(), x]), ctx);
        }
        if e.op == Op::MMChain && f != Strategy::MMChain {
            let (x, v) = (e.args[0].clone(), e.args[1].clone());
            let xv = MatExpr::new(Op::MatMul, vec![x.clone(), v]);
            return build(&MatExpr::new(Op::MatMul, vec![x.t(), xv]), ctx);
        }
    }
    let est = e.estimate();
    let mut built = Vec::with_capacity(e.args.len());
    let mut operands = Vec::with_capacity(e.args.len());
    for a in &e.args {
        let child = build(a, ctx)?;
        operands.push(child.operand);
        built.push(child.exec);
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
    if let Some(flow) = dataflow(e, &built, &operands, choice.as_ref(), parts)? {
        return Ok(Built {
            exec: Exec::Flow(flow),
            operand,
            choice,
        });
    }
    // Computed whole, from its operands' matrices.
    let mut children: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut flows = Vec::new();
    if let Op::Input(k) = e.op {
        let Some(plan) = ctx.inputs.get(k) else {
            return plan_err!("internal: matrix input {k} has no plan");
        };
        children.push(plan.clone());
        flows.push(None);
    }
    for child in built {
        match child {
            Exec::Flow(f) => {
                flows.push(Some(f.geometry()));
                children.push(f.plan);
            }
            Exec::La(la) => {
                flows.push(None);
                children.push(la);
            }
        }
    }
    let exec = LaExec::new(
        e.op.clone(),
        choice.clone(),
        est,
        children,
        Output::Cells,
        parts,
    )
    .with_child_flows(flows);
    Ok(Built {
        exec: Exec::La(Arc::new(exec)),
        operand,
        choice,
    })
}

/// A planned matrix expression.
struct Built {
    exec: Exec,
    /// What the cost model knows about its result.
    operand: Operand,
    /// The strategy chosen for a product.
    choice: Option<strategy::Choice>,
}

/// How a matrix expression runs.
#[derive(Clone)]
enum Exec {
    /// As a block dataflow.
    Flow(FlowOperand),
    /// Computed whole by an operator.
    La(Arc<LaExec>),
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

/// A matrix as a block stream: its plan, shape and block size.
#[derive(Clone)]
struct FlowOperand {
    plan: Arc<dyn ExecutionPlan>,
    shape: (u64, u64),
    block: (u64, u64),
    /// Each partition holds whole block rows (stored by row, one block column, or one
    /// partition).
    rows_together: bool,
    /// When it is `X - 1 c` for a row vector `c`: `X`, and `c` blocked as `X`'s columns,
    /// so that `t(this) this` can centre `X`'s blocks as it reads them.
    centred: Option<Arc<(FlowOperand, Arc<dyn ExecutionPlan>)>>,
}

impl FlowOperand {
    fn grid(&self) -> (u64, u64) {
        (
            self.shape.0.div_ceil(self.block.0.max(1)).max(1),
            self.shape.1.div_ceil(self.block.1.max(1)).max(1),
        )
    }

    fn geometry(&self) -> FlowGeometry {
        FlowGeometry {
            shape: self.shape,
            block: self.block,
        }
    }

    /// A block stream of `plan`, whose partitions hold whole block rows when it has one
    /// block column.
    fn new(plan: Arc<dyn ExecutionPlan>, shape: (u64, u64), block: (u64, u64)) -> Self {
        let operand = FlowOperand {
            plan,
            shape,
            block,
            rows_together: false,
            centred: None,
        };
        let rows_together =
            operand.grid().1 == 1 || operand.plan.output_partitioning().partition_count() == 1;
        FlowOperand {
            rows_together,
            ..operand
        }
    }

    /// Its block size cut at its shape: what two block sizes are compared by (a 5 x 5
    /// matrix stored in blocks of 1000 is one 5 x 5 block).
    fn blocks(&self) -> (u64, u64) {
        fit_block(self.block, self.shape)
    }

    /// The same matrix in blocks of `block`: itself when it is blocked so, else its
    /// blocks cut into pieces and assembled into the new blocks where the hash of
    /// their keys places them.
    fn reblocked(self, block: (u64, u64)) -> Result<Self> {
        let block = fit_block(block, self.shape);
        if block == self.blocks() {
            return Ok(self);
        }
        let geometry = FlowGeometry {
            shape: self.shape,
            block,
        };
        let plan = assembled(vec![(self, (0, 0))], geometry)?;
        Ok(FlowOperand::new(plan, geometry.shape, block))
    }

    fn transposed(self) -> Result<Self> {
        let plan = Arc::new(BlockMapExec::try_new(self.plan, BlockMap::Transpose)?);
        Ok(FlowOperand::new(
            plan,
            (self.shape.1, self.shape.0),
            (self.block.1, self.block.0),
        ))
    }
}

/// `block` cut at `shape` (and at least 1 x 1).
fn fit_block(block: (u64, u64), shape: (u64, u64)) -> (u64, u64) {
    (
        block.0.clamp(1, shape.0.max(1)),
        block.1.clamp(1, shape.1.max(1)),
    )
}

/// The matrix of `geometry` assembled from the pieces of `parts`, each moved by a cell
/// offset: a reblock, or the operands of `rbind` / `cbind` placed one after the other.
fn assembled(
    parts: Vec<(FlowOperand, (u64, u64))>,
    geometry: FlowGeometry,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut pieces: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(parts.len());
    for (part, offset) in parts {
        let map = BlockMap::Pieces {
            from: part.block,
            to: geometry.block,
            offset,
        };
        pieces.push(Arc::new(BlockMapExec::try_new(part.plan, map)?));
    }
    let input = match pieces.len() {
        1 => pieces.remove(0),
        _ => UnionExec::try_new(pieces)?,
    };
    Ok(Arc::new(BlockAssembleExec::try_new(input, geometry)?))
}

/// `exec` as a block stream: a dataflow as it is, a matrix computed whole as its blocks
/// in one partition, blocked `block` (where the planner knows its shape).
fn as_flow(exec: &Exec, block: (u64, u64)) -> Option<FlowOperand> {
    match exec {
        Exec::Flow(f) => Some(f.clone()),
        Exec::La(la) => {
            let e = la.estimate();
            if !e.exact || e.rows < 1.0 || e.cols < 1.0 {
                return None;
            }
            let shape = (e.rows as u64, e.cols as u64);
            let block = (
                block.0.clamp(1, shape.0.max(1)),
                block.1.clamp(1, shape.1.max(1)),
            );
            let geometry = FlowGeometry { shape, block };
            let plan = Arc::new(la.with_output(Output::Blocks(geometry)));
            Some(FlowOperand::new(plan, shape, block))
        }
    }
}

/// The block size a product's operand is gathered into so its blocks meet the other
/// operand's: the other's inner block size where the other is a dataflow.
fn meeting_blocks(a: (&Exec, &Operand), b: (&Exec, &Operand)) -> ((u64, u64), (u64, u64)) {
    match (a.0, b.0) {
        (Exec::Flow(fa), Exec::La(_)) => (fa.block, (fa.block.1, b.1.block.1)),
        (Exec::La(_), Exec::Flow(fb)) => ((a.1.block.0, fb.block.0), fb.block),
        _ => (a.1.block, (a.1.block.1, b.1.block.1)),
    }
}

/// The elementwise program of a single elementwise operation, over its operands.
fn elementwise_steps(op: &Op) -> Option<Vec<Step>> {
    Some(match op {
        Op::Fused(steps) => steps.clone(),
        Op::Binary(b) => vec![Step::Binary(*b, 0, 1)],
        Op::Scalar { op, value, left } => vec![Step::Scalar {
            op: *op,
            value: *value,
            left: *left,
            x: 0,
        }],
        Op::Unary(u) => vec![Step::Unary(*u, 0)],
        _ => return None,
    })
}

/// `e` as a block dataflow over its operands `children` (what the cost model knows of
/// them in `operands`), when its operation has one and the operands' blocks meet:
/// scans, transposes, products of every strategy, and elementwise programs.
fn dataflow(
    e: &MatExpr,
    children: &[Exec],
    operands: &[Operand],
    choice: Option<&strategy::Choice>,
    parts: usize,
) -> Result<Option<FlowOperand>> {
    let strategy = choice.map(|c| c.chosen.strategy);
    Ok(match (&e.op, children) {
        (&Op::Eye(n), []) => generated(Generator::Eye, (n, n), parts),
        (
            &Op::Rand {
                rows,
                cols,
                density,
                seed,
                min,
                max,
            },
            [],
        ) => {
            let draw = Draw {
                density,
                seed,
                min,
                max,
            };
            generated(Generator::Rand(draw), (rows, cols), parts)
        }
        (Op::Array(p), []) => {
            let plan = Arc::new(BlockScanExec::new(p.clone()));
            let operand = FlowOperand::new(plan, p.shape(), p.block());
            let rows_together =
                operand.rows_together || matches!(p.partitioning(), Partitioning::RowBlock { .. });
            Some(FlowOperand {
                rows_together,
                ..operand
            })
        }
        (Op::Solve | Op::Inv | Op::Cholesky, _) => {
            let op = match e.op {
                Op::Solve => Gathered::Solve,
                Op::Inv => Gathered::Inv,
                _ => Gathered::Cholesky,
            };
            let mut plans = Vec::with_capacity(children.len());
            let mut geometries = Vec::with_capacity(children.len());
            for (child, operand) in children.iter().zip(operands) {
                let Some(f) = as_flow(child, operand.block) else {
                    return Ok(None);
                };
                geometries.push(f.geometry());
                plans.push(f.plan);
            }
            if plans.len() != op.arity() {
                return Ok(None);
            }
            let shape = match op {
                Gathered::Solve => (geometries[0].shape.1, geometries[1].shape.1),
                Gathered::Inv | Gathered::Cholesky => geometries[0].shape,
            };
            let block = fit_block(super::auto_block(shape.0, shape.1), shape);
            let output = FlowGeometry { shape, block };
            let plan = Arc::new(BlockGatherExec::try_new(plans, op, geometries, output)?);
            Some(FlowOperand::new(plan, shape, block))
        }
        (Op::Transpose, [x]) => match as_flow(x, operands[0].block) {
            Some(x) => Some(x.transposed()?),
            None => None,
        },
        (Op::MatMul, [a, b]) => {
            let Some(flow) = strategy.and_then(flow_strategy) else {
                return Ok(None);
            };
            let (ab, bb) = meeting_blocks((a, &operands[0]), (b, &operands[1]));
            let (Some(a), Some(b)) = (as_flow(a, ab), as_flow(b, bb)) else {
                return Ok(None);
            };
            product(a, b, flow)?
        }
        (Op::Tsmm, [x]) => {
            let Some(x) = as_flow(x, operands[0].block) else {
                return Ok(None);
            };
            match strategy.and_then(flow_strategy) {
                // The cost model chose a plain strategy for t(X) X: the product of the
                // transposed stream with the stream.
                Some(flow) => product(x.clone().transposed()?, x, flow)?,
                None => {
                    let shape = (x.shape.1, x.shape.1);
                    let block = (x.block.1, x.block.1);
                    let plan = match x.centred.as_deref() {
                        // t(X - 1 c) (X - 1 c): X's blocks centred as they are read.
                        Some((inner, c)) => {
                            centred_tsmm_plan(inner.plan.clone(), c.clone(), inner.rows_together)?
                        }
                        None => fused_plan(x.plan, None, x.rows_together)?,
                    };
                    Some(FlowOperand::new(plan, shape, block))
                }
            }
        }
        (Op::MMChain, [x, v]) if strategy == Some(Strategy::MMChain) => {
            let (xb, vb) = meeting_blocks((x, &operands[0]), (v, &operands[1]));
            let (Some(x), Some(v)) = (as_flow(x, xb), as_flow(v, vb)) else {
                return Ok(None);
            };
            if x.shape.1 != v.shape.0 {
                return Ok(None);
            }
            let inner = (x.block.1, v.block.1);
            let v = v.reblocked(inner)?;
            let shape = (x.shape.1, v.shape.1);
            let block = (x.block.1, v.block.1);
            let plan = fused_plan(x.plan, Some(v.plan), x.rows_together)?;
            Some(FlowOperand::new(plan, shape, block))
        }
        (Op::Reduce(r), [x]) if r.is_scalar() => {
            let Some(x) = as_flow(x, operands[0].block) else {
                return Ok(None);
            };
            // One 1 x 1 partial per block, summed in the blocks' order, or the smallest
            // (largest) of them and of the zeros of the blocks not stored.
            let (grid, blocks) = (x.grid(), x.grid().0.saturating_mul(x.grid().1));
            let (of, fold) = match r {
                Reduction::Sum => (Total::Sum, Fold::Sum),
                Reduction::Nnz => (Total::Nnz, Fold::Sum),
                Reduction::Min => (Total::Min, Fold::Extreme { max: false, blocks }),
                Reduction::Max => (Total::Max, Fold::Extreme { max: true, blocks }),
                _ => return Ok(None),
            };
            let map = BlockMap::Total { of, across: grid.1 };
            let partials = Arc::new(BlockMapExec::try_new(x.plan, map)?);
            let plan = Arc::new(BlockSumExec::folding(partials, fold)?);
            Some(FlowOperand::new(plan, (1, 1), (1, 1)))
        }
        (&Op::Slice { r0, r1, c0, c1 }, [x]) => {
            let Some(x) = as_flow(x, operands[0].block) else {
                return Ok(None);
            };
            if r0 >= r1 || c0 >= c1 || r1 > x.shape.0 || c1 > x.shape.1 {
                // Out of range: the operator computing it whole reports it.
                return Ok(None);
            }
            let shape = (r1 - r0, c1 - c0);
            let block = fit_block(x.block, shape);
            let map = BlockMap::Window {
                from: x.block,
                to: block,
                rows: (r0, r1),
                cols: (c0, c1),
            };
            // A stored matrix reads only the blocks the slice touches.
            let mut input = x.plan;
            if let Some(scan) = input.downcast_ref::<BlockScanExec>()
                && scan.window().is_none()
            {
                let (br, bc) = (x.block.0.max(1), x.block.1.max(1));
                let window = BlockWindow {
                    rows: (r0 / br, r1.div_ceil(br)),
                    cols: (c0 / bc, c1.div_ceil(bc)),
                };
                let windowed = BlockScanExec::new(scan.pinned().clone()).with_window(Some(window));
                input = Arc::new(windowed);
            }
            let cut: Arc<dyn ExecutionPlan> = Arc::new(BlockMapExec::try_new(input, map)?);
            let plan: Arc<dyn ExecutionPlan> = if map.is_aligned() {
                cut
            } else {
                let geometry = FlowGeometry { shape, block };
                Arc::new(BlockAssembleExec::try_new(cut, geometry)?)
            };
            Some(FlowOperand::new(plan, shape, block))
        }
        (Op::Diag, [x]) => {
            let Some(x) = as_flow(x, operands[0].block) else {
                return Ok(None);
            };
            let (rows, cols) = x.shape;
            let vector = rows == 1 || cols == 1;
            if !vector && rows != cols {
                // Neither square nor a vector: the operator computing it whole says so.
                return Ok(None);
            }
            let (shape, block, x) = if vector {
                let b = if cols == 1 {
                    x.blocks().0
                } else {
                    x.blocks().1
                };
                let len = rows.max(cols);
                ((len, len), (b, b), x)
            } else {
                // Diagonal blocks are square only in square blocks.
                let b = x.blocks().0;
                ((rows, 1), (b, 1), x.reblocked((b, b))?)
            };
            let plan = Arc::new(BlockMapExec::try_new(x.plan, BlockMap::Diag { vector })?);
            Some(FlowOperand::new(plan, shape, block))
        }
        (Op::Reduce(r), [x]) if !r.is_scalar() => {
            let Some(x) = as_flow(x, operands[0].block) else {
                return Ok(None);
            };
            let by_row = matches!(r, Reduction::RowSums | Reduction::RowMeans);
            let (map, shape, block, count) = if by_row {
                (BlockMap::RowSums, (x.shape.0, 1), (x.block.0, 1), x.shape.1)
            } else {
                (BlockMap::ColSums, (1, x.shape.1), (1, x.block.1), x.shape.0)
            };
            // Partial sums per block, summed by their key where the hash puts them.
            let partials = Arc::new(BlockMapExec::try_new(x.plan, map)?);
            let mut plan: Arc<dyn ExecutionPlan> = Arc::new(BlockSumExec::try_new(partials)?);
            if matches!(r, Reduction::RowMeans | Reduction::ColMeans) {
                let divide = Step::Scalar {
                    op: BinaryOp::Div,
                    value: count as f64,
                    left: false,
                    x: 0,
                };
                let geometry = FlowGeometry { shape, block };
                plan = Arc::new(BlockElementwiseExec::try_new(
                    vec![plan],
                    vec![divide],
                    geometry,
                )?);
            }
            Some(FlowOperand::new(plan, shape, block))
        }
        (Op::CBind | Op::RBind, [a, b]) => {
            let Some(a) = as_flow(a, operands[0].block) else {
                return Ok(None);
            };
            let Some(b) = as_flow(b, a.block) else {
                return Ok(None);
            };
            let rbind = e.op == Op::RBind;
            let (along, across) = if rbind { (0, 1) } else { (1, 0) };
            let dims = |t: (u64, u64), k: usize| if k == 0 { t.0 } else { t.1 };
            if dims(a.shape, across) != dims(b.shape, across) {
                return Ok(None);
            }
            let (cells, shape) = if rbind {
                ((a.shape.0, 0), (a.shape.0 + b.shape.0, a.shape.1))
            } else {
                ((0, a.shape.1), (a.shape.0, a.shape.1 + b.shape.1))
            };
            if a.block != b.block || dims(a.shape, along) % dims(a.block, along) != 0 {
                // The second operand's cells go after the first's, in the first's
                // blocking: both cut into pieces and assembled.
                let geometry = FlowGeometry {
                    shape,
                    block: a.block,
                };
                let plan = assembled(vec![(a, (0, 0)), (b, cells)], geometry)?;
                return Ok(Some(FlowOperand::new(plan, shape, geometry.block)));
            }
            // The second operand's blocks follow the first's whole blocks.
            let offset = dims(a.shape, along) / dims(a.block, along);
            let shift = if rbind { (offset, 0) } else { (0, offset) };
            let shifted = Arc::new(BlockMapExec::try_new(
                b.plan,
                BlockMap::Shift {
                    rows: shift.0,
                    cols: shift.1,
                },
            )?);
            let plan = UnionExec::try_new(vec![a.plan, shifted])?;
            Some(FlowOperand::new(plan, shape, a.block))
        }
        (op, leaves) if !leaves.is_empty() => {
            let Some(steps) = elementwise_steps(op) else {
                return Ok(None);
            };
            // Operands computed whole are gathered in the blocking of the first
            // dataflow among the largest of them (not a vector that broadcasts).
            let streams: Vec<&FlowOperand> = leaves
                .iter()
                .filter_map(|l| match l {
                    Exec::Flow(f) => Some(f),
                    Exec::La(_) => None,
                })
                .collect();
            let largest = streams
                .iter()
                .map(|f| f.shape.0.saturating_mul(f.shape.1))
                .max();
            let block = streams
                .iter()
                .find(|f| Some(f.shape.0.saturating_mul(f.shape.1)) == largest)
                .map_or(operands[0].block, |f| f.block);
            let Some(flows) = leaves
                .iter()
                .map(|l| as_flow(l, block))
                .collect::<Option<Vec<_>>>()
            else {
                return Ok(None);
            };
            // The result has the shape of the largest operand and the blocking of the
            // first operand of that shape; the others are reblocked to it, and vectors
            // (and 1 x 1 matrices) that broadcast are repeated into its blocks.
            let cells = |f: &FlowOperand| f.shape.0.saturating_mul(f.shape.1);
            let Some(geometry) = flows
                .iter()
                .max_by_key(|f| cells(f))
                .and_then(|big| flows.iter().find(|f| f.shape == big.shape))
                .map(FlowOperand::geometry)
            else {
                return Ok(None);
            };
            let minus_row = steps.as_slice() == [Step::Binary(BinaryOp::Sub, 0, 1)];
            let mut centre = None;
            let mut met = Vec::with_capacity(flows.len());
            for (at, f) in flows.into_iter().enumerate() {
                let (down, across, block) = match broadcast("", geometry.shape, f.shape) {
                    Ok(Broadcast::None) => {
                        met.push(f.reblocked(geometry.block)?);
                        continue;
                    }
                    Ok(Broadcast::Row) => (true, false, (1, geometry.block.1)),
                    Ok(Broadcast::Col) => (false, true, (geometry.block.0, 1)),
                    Ok(Broadcast::Scalar) => (true, true, (1, 1)),
                    // Shapes that do not conform: the operator computing it whole
                    // reports them.
                    Err(_) => return Ok(None),
                };
                let f = f.reblocked(block)?;
                if minus_row && at == 1 && down && !across {
                    // x - 1 c: a tsmm above can centre x's blocks with c as it is here.
                    centre = Some(Arc::clone(&f.plan));
                }
                let map = BlockMap::Broadcast {
                    shape: geometry.shape,
                    block: geometry.block,
                    down,
                    across,
                };
                let plan = Arc::new(BlockMapExec::try_new(f.plan, map)?);
                met.push(FlowOperand::new(plan, geometry.shape, geometry.block));
            }
            let flows = met;
            let centred = match (centre, flows.first()) {
                (Some(c), Some(x)) => Some(Arc::new((x.clone(), c))),
                _ => None,
            };
            let plan = Arc::new(BlockElementwiseExec::try_new(
                flows.into_iter().map(|f| f.plan).collect(),
                steps,
                geometry,
            )?);
            Some(FlowOperand {
                centred,
                ..FlowOperand::new(plan, geometry.shape, geometry.block)
            })
        }
        _ => None,
    })
}

/// The blocks of `generator` for a matrix of `shape`, in the blocking the in-memory
/// evaluator gives it; `None` for a shape it refuses (it says why).
fn generated(generator: Generator, shape: (u64, u64), parts: usize) -> Option<FlowOperand> {
    let block = super::auto_block(shape.0, shape.1);
    if shape.0 == 0
        || shape.1 == 0
        || super::matrix::check_shape("", shape.0, shape.1, block.0, block.1).is_err()
    {
        return None;
    }
    let geometry = FlowGeometry { shape, block };
    let plan = Arc::new(BlockGenerateExec::new(generator, geometry, parts));
    Some(FlowOperand::new(plan, shape, block))
}

/// `a b` as the dataflow of `strategy`, when the blocks meet.
fn product(a: FlowOperand, b: FlowOperand, strategy: FlowStrategy) -> Result<Option<FlowOperand>> {
    if a.shape.1 != b.shape.0 {
        return Ok(None);
    }
    // Operands whose inner blocks differ meet in the left one's: the right one is
    // reblocked on its way in.
    let inner = (a.block.1, b.block.1);
    let b = b.reblocked(inner)?;
    let grid = (a.grid().0, b.grid().1);
    let shape = (a.shape.0, b.shape.1);
    let block = (a.block.0, b.block.1);
    let plan = matmul_plan(a.plan, b.plan, strategy, grid)?;
    Ok(Some(FlowOperand::new(plan, shape, block)))
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
        if let Some(lateral) = node.as_any().downcast_ref::<crate::ml::LateralNode>() {
            return crate::ml::plan_lateral(lateral, physical_inputs.first().cloned(), session)
                .await
                .map(Some);
        }
        if let Some(write) = node.as_any().downcast_ref::<MatrixWriteNode>() {
            let Some(input) = physical_inputs.first() else {
                return plan_err!("MatrixWrite has no input");
            };
            return plan_write(write, input).map(Some);
        }
        let Some(node) = node.as_any().downcast_ref::<LaNode>() else {
            return Ok(None);
        };
        let (forced, budget, exact) = settings(session)?;
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
        let built = build(&node.expr, &ctx)?;
        let flow = match built.exec {
            Exec::La(la) => return with_exact_sums(Arc::new(la.with_output(node.output)), exact),
            Exec::Flow(flow) => flow,
        };
        let geometry = flow.geometry();
        // What the planner chose (operation, strategy, estimates), as EXPLAIN shows it.
        let chosen = LaExec::new(
            node.expr.op.clone(),
            built.choice,
            node.expr.estimate(),
            vec![Arc::clone(&flow.plan)],
            node.output,
            parts,
        )
        .with_flow(geometry);
        if node.output != Output::Cells {
            // Rows are made from the whole matrix.
            return with_exact_sums(Arc::new(chosen), exact);
        }
        // A dataflow at the top streams its cells as its blocks arrive.
        let line = datafusion::physical_plan::displayable(&chosen)
            .one_line()
            .to_string();
        let planned = super::flow::Planned {
            line: line
                .trim()
                .split_once(": ")
                .map_or(line.trim(), |(_, rest)| rest)
                .to_string(),
            tree: super::exec::tree_lines(&chosen),
        };
        let cells = if matches!(node.expr.op, Op::Reduce(r) if r.is_scalar()) {
            BlockCellsExec::one_cell(flow.plan, geometry, planned)?
        } else {
            BlockCellsExec::try_new(flow.plan, geometry, planned)?
        };
        with_exact_sums(Arc::new(cells), exact)
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
