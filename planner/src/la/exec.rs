//! `LaExec`: one linear-algebra operator in a DataFusion physical plan.
//!
//! Operators pass matrices to their parent as blocks (the parent asks a child
//! `LaExec` to compute and takes its blocks); only the top operator turns blocks into
//! rows, `(i, j, v)` for the non-zero cells or `(i, row)` for `rows(m)`. A child that is
//! not an `LaExec` is an `(i, j, v)` subquery, read as rows. Each operator reserves the
//! memory of its result in the session's pool before computing, so a product too large
//! for the budget fails with "resources exhausted" instead of exhausting the machine.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Builder, Int64Array, ListBuilder, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::expr::{Estimate, Op, op_name};
use super::flow::CellBatches;
use super::matrix::{BlockMatrix, Tile, TileSink};
use super::ops::{self, Work};
use super::strategy::{Choice, Strategy};

/// What the operator's rows look like when it is the top of a matrix expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `(i, j, v)` for every non-zero cell.
    Cells,
    /// `(i, row)`: every row as a `FLOAT8[]`.
    Rows,
    /// The matrix's blocks as a block stream in one partition, blocked as the
    /// geometry says: an operand of a block dataflow.
    Blocks(FlowGeometry),
}

/// The schema of [`Output::Cells`].
pub fn cells_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, false),
        Field::new("j", DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
    ]))
}

/// The schema of [`Output::Rows`].
pub fn rows_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, false),
        Field::new(
            "row",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
            false,
        ),
    ]))
}

/// One linear-algebra operator.
#[derive(Debug)]
pub struct LaExec {
    op: Op,
    choice: Option<Choice>,
    est: Estimate,
    children: Vec<Arc<dyn ExecutionPlan>>,
    output: Output,
    parts: usize,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// The result, or the error computing it, shared by the output partitions: a
    /// failure is kept too, since computing again would execute the inputs' streams
    /// (exchanges among them) a second time.
    result: Arc<tokio::sync::OnceCell<std::result::Result<Arc<BlockMatrix>, Arc<DataFusionError>>>>,
    /// Set when the only child is a block dataflow that computes this operator's
    /// result (see [`super::flow`]): the result's shape and block size.
    flow: Option<FlowGeometry>,
    /// For each child that is a block dataflow giving an operand, its shape and block
    /// size (the operand is gathered from its blocks).
    child_flows: Vec<Option<FlowGeometry>>,
}

/// The shape and block size of a matrix a block dataflow computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowGeometry {
    /// `(rows, cols)`.
    pub shape: (u64, u64),
    /// `(block rows, block cols)`.
    pub block: (u64, u64),
}

impl FlowGeometry {
    /// The shape of block `(i, j)`: the block size, cut at the matrix's edge.
    pub fn block_shape(&self, (i, j): (u64, u64)) -> (usize, usize) {
        let ((rows, cols), (br, bc)) = (self.shape, self.block);
        (
            br.min(rows.saturating_sub(i * br)) as usize,
            bc.min(cols.saturating_sub(j * bc)) as usize,
        )
    }
}

impl LaExec {
    /// An operator computing `op` over `children` (each an `LaExec` or, for
    /// [`Op::Input`], the subquery's plan), with `parts` output partitions.
    pub fn new(
        op: Op,
        choice: Option<Choice>,
        est: Estimate,
        children: Vec<Arc<dyn ExecutionPlan>>,
        output: Output,
        parts: usize,
    ) -> Self {
        let schema = match output {
            Output::Cells => cells_schema(),
            Output::Rows => rows_schema(),
            Output::Blocks(_) => super::flow::block_stream_schema(),
        };
        let parts = match output {
            Output::Blocks(_) => 1,
            _ => parts.max(1),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Final,
            Boundedness::Bounded,
        )
        // Blocks are computed in the kernel pool, off the async runtime; the stream
        // only hands out finished batches.
        .with_scheduling_type(SchedulingType::Cooperative);
        Self {
            op,
            choice,
            est,
            children,
            output,
            parts,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
            result: Arc::new(tokio::sync::OnceCell::new()),
            flow: None,
            child_flows: Vec::new(),
        }
    }

    /// This operator with `flows[k]` the geometry of child `k` when that child is a
    /// block dataflow.
    pub fn with_child_flows(mut self, flows: Vec<Option<FlowGeometry>>) -> Self {
        self.child_flows = flows;
        self
    }

    /// This operator with its result computed by its one child, a block dataflow
    /// producing a matrix of `geometry`.
    pub fn with_flow(mut self, geometry: FlowGeometry) -> Self {
        self.flow = Some(geometry);
        self
    }

    /// The geometry of the block dataflow computing this operator, if one does.
    pub fn flow(&self) -> Option<FlowGeometry> {
        self.flow
    }

    /// The operation.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// What its rows look like.
    pub fn output(&self) -> Output {
        self.output
    }

    /// The chosen strategy, for products.
    pub fn choice(&self) -> Option<&Choice> {
        self.choice.as_ref()
    }

    /// Planning-time size estimate.
    pub fn estimate(&self) -> &Estimate {
        &self.est
    }

    /// The same operator with another output form.
    pub fn with_output(&self, output: Output) -> LaExec {
        LaExec {
            flow: self.flow,
            child_flows: self.child_flows.clone(),
            ..LaExec::new(
                self.op.clone(),
                self.choice.clone(),
                self.est,
                self.children.clone(),
                output,
                self.parts,
            )
        }
    }

    /// Computes the matrix (children first), reserving its memory in the session pool.
    pub fn compute(&self, ctx: Arc<TaskContext>) -> BoxFuture<'_, Result<BlockMatrix>> {
        self.compute_into(ctx, None)
    }

    /// Computes this operator's inputs: child operators' matrices, a block dataflow's
    /// blocks, or a subquery's `(i, j, v)` rows.
    pub(crate) fn compute_inputs(
        &self,
        ctx: Arc<TaskContext>,
    ) -> BoxFuture<'_, Result<Vec<BlockMatrix>>> {
        async move {
            let mut inputs = Vec::with_capacity(self.children.len());
            for (k, child) in self.children.iter().enumerate() {
                let child = look_through(child);
                let m = match child.downcast_ref::<LaExec>() {
                    Some(la) => la.compute(ctx.clone()).await?,
                    None if self.child_flows.get(k).is_some_and(Option::is_some) => {
                        let geometry = self.child_flows[k].unwrap_or(FlowGeometry {
                            shape: (0, 0),
                            block: (1, 1),
                        });
                        let batches = collect(child.clone(), ctx.clone()).await?;
                        BlockMatrix::from_block_batches(&batches, geometry, self.parts)?
                    }
                    None if self.flow.is_some() => {
                        let geometry = self.flow.unwrap_or(FlowGeometry {
                            shape: (0, 0),
                            block: (1, 1),
                        });
                        let batches = collect(child.clone(), ctx.clone()).await?;
                        BlockMatrix::from_block_batches(&batches, geometry, self.parts)?
                    }
                    None => {
                        let batches = collect(child.clone(), ctx.clone()).await?;
                        BlockMatrix::from_batches(&self.label(), &batches, None, self.parts)?
                    }
                };
                inputs.push(m);
            }
            Ok(inputs)
        }
        .boxed()
    }

    /// [`LaExec::compute`], offering this operator's output blocks to `sink` as they are
    /// finished (its inputs are computed whole).
    pub fn compute_into(
        &self,
        ctx: Arc<TaskContext>,
        sink: Option<Arc<dyn TileSink>>,
    ) -> BoxFuture<'_, Result<BlockMatrix>> {
        async move {
            let inputs = self.compute_inputs(ctx.clone()).await?;
            let reservation = MemoryConsumer::new(format!("LaExec[{}]", self.label()))
                .register(ctx.memory_pool());
            let expected = self.est.bytes().min(u64::MAX as f64 / 2.0) as usize;
            reservation
                .try_grow(expected)
                .map_err(|e| self.exhausted(e))?;
            let elapsed: Time = MetricBuilder::new(&self.metrics).elapsed_compute(0);
            let moved: Count = MetricBuilder::new(&self.metrics).global_counter("bytes_moved");
            let blocks: Count = MetricBuilder::new(&self.metrics).global_counter("blocks");
            let start = Instant::now();
            let op = self.op.clone();
            let strategy = self.choice.as_ref().map(|c| c.chosen.strategy);
            let parts = self.parts;
            let flow = self.flow.is_some();
            let (mut m, work) = tokio::task::spawn_blocking(move || {
                let mut work = Work {
                    sink,
                    ..Work::default()
                };
                let m = match (flow, <[BlockMatrix; 1]>::try_from(inputs)) {
                    // A product its block dataflow child computed.
                    (true, Ok([m])) => m,
                    (true, Err(_)) => {
                        return Err(DataFusionError::Internal(
                            "a dataflow operator has one input".into(),
                        ));
                    }
                    (false, Ok(inputs)) => run(op, strategy, inputs.into(), parts, &mut work)?,
                    (false, Err(inputs)) => run(op, strategy, inputs, parts, &mut work)?,
                };
                Ok::<_, DataFusionError>((m, work))
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
            elapsed.add_duration(start.elapsed());
            moved.add(work.bytes_moved as usize);
            blocks.add(m.block_count());
            reservation
                .try_resize(m.bytes() as usize)
                .map_err(|e| self.exhausted(e))?;
            m.reservation = Some(reservation);
            Ok(m)
        }
        .boxed()
    }

    fn exhausted(&self, e: DataFusionError) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "{} needs about {} for its result, more than the session's memory budget allows: {e}",
            self.label(),
            human_bytes(self.est.bytes())
        ))
    }

    fn label(&self) -> String {
        match &self.choice {
            Some(c) => format!("{} [{}]", op_name(&self.op), c.chosen.strategy.name()),
            None => op_name(&self.op),
        }
    }
}

/// Runs one operation on its computed inputs.
fn run(
    op: Op,
    strategy: Option<Strategy>,
    inputs: Vec<BlockMatrix>,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    // Only a product that is this operator's result may hand its blocks to the sink
    // (an mmchain forced into two products must not offer its intermediate one).
    let sink = work.sink.take();
    let mut it = inputs.into_iter();
    let mut arg = || {
        it.next().ok_or_else(|| {
            DataFusionError::Internal("linear-algebra operator is missing an input".into())
        })
    };
    Ok(match op {
        Op::Array(p) => ops::scan(&p.0)?,
        Op::Input(_) => arg()?,
        Op::Eye(k) => ops::eye(k, n)?,
        Op::Rand {
            rows,
            cols,
            density,
            seed,
            min,
            max,
        } => ops::rand(rows, cols, density, seed, min, max, n)?,
        Op::MatMul => {
            let (a, b) = (arg()?, arg()?);
            work.sink = sink;
            ops::matmul(a, b, strategy.unwrap_or(Strategy::Repartition), n, work)?
        }
        Op::Tsmm => {
            let x = arg()?;
            match strategy {
                None | Some(Strategy::Tsmm) => ops::tsmm(x, n, work)?,
                Some(s) => {
                    let xt = ops::transpose(x.share())?;
                    work.sink = sink;
                    ops::matmul(xt, x, s, n, work)?
                }
            }
        }
        Op::MMChain => {
            let (x, v) = (arg()?, arg()?);
            match strategy {
                None | Some(Strategy::MMChain) => ops::mmchain(x, v, n, work)?,
                Some(s) => {
                    let xv = ops::matmul(x.share(), v, s, n, work)?;
                    let xt = ops::transpose(x)?;
                    ops::matmul(xt, xv, s, n, work)?
                }
            }
        }
        Op::Transpose => ops::transpose(arg()?)?,
        Op::Binary(b) => {
            let (x, y) = (arg()?, arg()?);
            ops::binary(x, y, b, n, work)?
        }
        Op::Scalar { op, value, left } => ops::scalar(arg()?, op, value, left)?,
        Op::Unary(u) => ops::unary(arg()?, u)?,
        Op::Reduce(r) => ops::reduce(arg()?, r, n, work)?,
        Op::Diag => ops::diag(arg()?, n)?,
        Op::Slice { r0, r1, c0, c1 } => ops::slice(arg()?, (r0, r1, c0, c1), n)?,
        Op::CBind | Op::RBind => {
            let (x, y) = (arg()?, arg()?);
            ops::bind(x, y, op == Op::RBind, n)?
        }
        Op::Solve => {
            let (a, b) = (arg()?, arg()?);
            ops::solve(a, b, n)?
        }
        Op::Inv => ops::inv(arg()?, n)?,
        Op::Cholesky => ops::cholesky(arg()?, n)?,
        Op::Fused(steps) => {
            let leaves: Vec<BlockMatrix> = it.collect();
            ops::fused(&steps, leaves, n, work)?
        }
    })
}

/// The plan under any `CooperativeExec` / coalescing wrappers DataFusion's optimizer puts
/// around an operator.
pub(crate) fn look_through(plan: &Arc<dyn ExecutionPlan>) -> &Arc<dyn ExecutionPlan> {
    let mut node = plan;
    loop {
        let children = node.children();
        let wrapper = matches!(
            node.name(),
            "CooperativeExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec"
        );
        match (wrapper, children.as_slice()) {
            (true, [only]) => node = only,
            _ => return node,
        }
    }
}

/// `1.5 GiB`-style sizes for plans and errors.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b.max(0.0);
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{x:.0} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

fn fmt_count(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.1}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The `key=value` lines of `plan`'s tree form (`DisplayFormatType::TreeRender`).
pub(crate) fn tree_lines(plan: &dyn ExecutionPlan) -> String {
    struct Tree<'a>(&'a dyn ExecutionPlan);
    impl fmt::Display for Tree<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt_as(DisplayFormatType::TreeRender, f)
        }
    }
    Tree(plan).to_string()
}

impl DisplayAs for LaExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.est;
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "op={}", op_name(&self.op))?;
            if let Some(c) = &self.choice {
                writeln!(
                    f,
                    "strategy={} ({})",
                    c.chosen.strategy.name(),
                    c.chosen.strategy.systemml()
                )?;
            }
            writeln!(f, "estimate={}x{}", e.rows, e.cols)?;
            writeln!(f, "estimated nnz={}", fmt_count(e.nnz))?;
            writeln!(
                f,
                "estimated bytes={}{}",
                human_bytes(e.bytes()),
                if e.exact { "" } else { " (shape from data)" }
            )?;
            if let Some(c) = &self.choice {
                writeln!(f, "bytes moved={}", human_bytes(c.chosen.bytes_moved))?;
                writeln!(f, "flops={}", fmt_count(c.chosen.flops))?;
                writeln!(f, "tasks={}", c.chosen.tasks)?;
                writeln!(f, "why={}", c.why)?;
            }
            match self.output {
                Output::Rows => writeln!(f, "output=rows")?,
                Output::Blocks(_) => writeln!(f, "output=blocks in one partition")?,
                Output::Cells => {}
            }
            return Ok(());
        }
        write!(f, "{}: {}", self.name(), op_name(&self.op))?;
        if let Some(c) = &self.choice {
            write!(
                f,
                ", strategy={} ({})",
                c.chosen.strategy.name(),
                c.chosen.strategy.systemml()
            )?;
        }
        write!(
            f,
            ", est=[{}x{}, nnz {}, {}{}]",
            e.rows,
            e.cols,
            fmt_count(e.nnz),
            human_bytes(e.bytes()),
            if e.exact { "" } else { ", shape from data" }
        )?;
        if let Some(c) = &self.choice {
            write!(
                f,
                ", moves={}, flops={}, tasks={}, why={}",
                human_bytes(c.chosen.bytes_moved),
                fmt_count(c.chosen.flops),
                c.chosen.tasks,
                c.why
            )?;
        }
        match self.output {
            Output::Rows => write!(f, ", output=rows")?,
            Output::Blocks(_) => write!(f, ", output=blocks in one partition")?,
            Output::Cells => {}
        }
        Ok(())
    }
}

impl ExecutionPlan for LaExec {
    fn name(&self) -> &str {
        match self.op {
            Op::MatMul | Op::Tsmm | Op::MMChain => "MatMulExec",
            Op::Array(_) => "ArrayScanExec",
            Op::Input(_) => "MatrixInputExec",
            Op::Fused(_) => "FusedElementwiseExec",
            _ => "MatrixExec",
        }
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.children.len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(LaExec {
            flow: self.flow,
            child_flows: self.child_flows.clone(),
            ..LaExec::new(
                self.op.clone(),
                self.choice.clone(),
                self.est,
                children,
                self.output,
                self.parts,
            )
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let mut s = Statistics::new_unknown(&self.schema());
        if partition.is_none() && self.est.nnz.is_finite() {
            let rows = match self.output {
                Output::Cells => self.est.nnz,
                Output::Rows => self.est.rows,
                Output::Blocks(_) => return Ok(Arc::new(s)),
            };
            s.num_rows = Precision::Inexact(rows as usize);
            s.total_byte_size = Precision::Inexact((rows * 24.0) as usize);
        }
        Ok(Arc::new(s))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition >= self.parts {
            return exec_err!("LaExec: partition {partition} of {}", self.parts);
        }
        let schema = self.schema();
        let result = self.result.clone();
        let this = LaExec::new(
            self.op.clone(),
            self.choice.clone(),
            self.est,
            self.children.clone(),
            self.output,
            self.parts,
        );
        // Share metrics with the plan node, so EXPLAIN ANALYZE sees them.
        let this = LaExec {
            metrics: self.metrics.clone(),
            flow: self.flow,
            child_flows: self.child_flows.clone(),
            ..this
        };
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let batch_size = context.session_config().batch_size().max(1);
        let scalar = matches!(self.op, Op::Reduce(r) if r.is_scalar());
        let output = self.output;
        let parts = self.parts;
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            let m = result
                .get_or_init(|| async {
                    this.compute(context).await.map(Arc::new).map_err(Arc::new)
                })
                .await
                .clone()
                .map_err(DataFusionError::Shared)?;
            let batches = match output {
                Output::Cells => {
                    cell_batches(&m, partition, parts, batch_size, scalar, &out_schema)?
                }
                Output::Rows => row_batches(&m, partition, parts, &out_schema)?,
                Output::Blocks(geometry) => block_batches(&m, geometry)?,
            };
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}

/// The tiles partition `p` of `n` emits: those of every stored partition `q` with
/// `q mod n == p`.
fn tiles_of(m: &BlockMatrix, p: usize, n: usize) -> impl Iterator<Item = &Tile> {
    m.parts
        .iter()
        .enumerate()
        .filter(move |(q, _)| q % n == p)
        .flat_map(|(_, t)| t.iter())
}

fn cell_batches(
    m: &BlockMatrix,
    p: usize,
    n: usize,
    batch_size: usize,
    scalar: bool,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let mut out = CellBatches::new(schema.clone(), batch_size);
    if scalar {
        // A scalar reduction always has its one row, zero or not.
        if p == 0 {
            out.push(0, 0, m.tiles().next().map_or(0.0, |t| t.2.get(0, 0)));
        }
        return out.finish();
    }
    let mut tiles: Vec<&Tile> = tiles_of(m, p, n).collect();
    tiles.sort_by_key(|t| (t.0, t.1));
    for (bi, bj, b) in tiles {
        out.push_block(((bi * m.br) as i64, (bj * m.bc) as i64), b)?;
    }
    out.finish()
}

fn row_batches(
    m: &BlockMatrix,
    p: usize,
    n: usize,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let index = m.index();
    let (gi, gj) = m.grid();
    let mut out = Vec::new();
    for bi in (0..gi).filter(|bi| (*bi as usize) % n == p) {
        let rows = m.br.min(m.rows - bi * m.br) as usize;
        let mut dense = vec![0.0; rows * m.cols as usize];
        for bj in 0..gj {
            if let Some(b) = index.get(&(bi, bj)) {
                let c0 = (bj * m.bc) as usize;
                let cols = m.cols as usize;
                b.for_each_nonzero(|r, c, v| dense[r * cols + c0 + c] = v);
            }
        }
        let mut ids = Vec::with_capacity(rows);
        let mut list = ListBuilder::new(Float64Builder::with_capacity(dense.len()));
        for r in 0..rows {
            ids.push((bi * m.br) as i64 + r as i64);
            list.values()
                .append_slice(&dense[r * m.cols as usize..(r + 1) * m.cols as usize]);
            list.append(true);
        }
        let cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids)), Arc::new(list.finish())];
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok(out)
}

/// Every block of `m`, reblocked to `geometry`'s block size if it differs, as block-stream
/// batches in key order.
fn block_batches(m: &BlockMatrix, geometry: FlowGeometry) -> Result<Vec<RecordBatch>> {
    if m.shape() != geometry.shape {
        return exec_err!(
            "a matrix operand is {}x{}, planned as {}x{}",
            m.rows,
            m.cols,
            geometry.shape.0,
            geometry.shape.1
        );
    }
    let reblocked;
    let m = if (m.br, m.bc) == geometry.block {
        m
    } else {
        reblocked = m.reblock(geometry.block.0, geometry.block.1, 1)?;
        &reblocked
    };
    let mut tiles: Vec<&Tile> = m.tiles().collect();
    tiles.sort_by_key(|t| (t.0, t.1));
    let mut out = super::flow::BlockBatches::new();
    for (bi, bj, b) in tiles {
        if b.nnz() > 0 {
            out.push(*bi, *bj, b)?;
        }
    }
    out.finish()
}
