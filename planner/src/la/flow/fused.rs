//! The fused products `t(X) X` (tsmm) and `t(X) (X v)` (mmchain): each partition makes
//! one small partial result from the block rows of `X` it holds, and the partials are
//! summed over a coalesce. `X` itself never moves when its partitions already hold
//! whole block rows (stored by row, or one block column); otherwise DataFusion
//! repartitions it by block row.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use tessera_storage::{Block, kernels};

use super::{
    BI, BJ, BlockRows, batches_stream, is_block_stream, partial_batches, partial_stream_schema,
};
use crate::error::{blocking, storage_error};
use crate::la::ops::Acc;

/// One partial `t(X) X` or `t(X) (X v)` per partition of `X` (see the module docs),
/// ordered by its partition for [`BlockSumExec`](super::BlockSumExec).
#[derive(Debug)]
pub struct FusedPartialExec {
    x: Arc<dyn ExecutionPlan>,
    v: Option<Arc<dyn ExecutionPlan>>,
    pub(crate) rows_together: bool,
    /// `v` is a row vector subtracted from every row of `X` as its blocks are read: the
    /// partials are of `t(X - 1 v) (X - 1 v)` (a scatter matrix, for `cov` and `cor`).
    pub(crate) centred: bool,
    /// One partial per block row, ordered by it, made on one thread: the same result to
    /// the bit however the block rows are spread over partitions.
    pub(crate) exact: bool,
    /// `v`'s batches, read once for every partition of this execution (a fresh cell per
    /// plan copy, so a reset plan reads `v` again), with the memory they hold.
    v_read: Arc<tokio::sync::OnceCell<SharedBatches>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// A side input read once and shared by every partition, charged to the pool.
type SharedBatches = Arc<(Vec<RecordBatch>, MemoryReservation)>;

impl FusedPartialExec {
    /// Partials of `t(X) X` (no `v`) or `t(X) (X v)` over the block stream `x` (and the
    /// block stream `v`, read whole by every partition). `rows_together` says that each
    /// partition of `x` already holds whole block rows, which the planner knows from the
    /// stored placement.
    pub fn try_new(
        x: Arc<dyn ExecutionPlan>,
        v: Option<Arc<dyn ExecutionPlan>>,
        rows_together: bool,
    ) -> Result<Self> {
        for input in std::iter::once(&x).chain(v.as_ref()) {
            let s = input.schema();
            if !is_block_stream(&s) || s.field(0).name() != BI || s.field(1).name() != BJ {
                return exec_err!("FusedPartialExec: an input is not a block stream");
            }
        }
        let parts = x.output_partitioning().partition_count();
        let props = PlanProperties::new(
            EquivalenceProperties::new(partial_stream_schema()),
            Partitioning::UnknownPartitioning(parts),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            x,
            v,
            rows_together,
            centred: false,
            exact: false,
            v_read: Arc::new(tokio::sync::OnceCell::new()),
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl FusedPartialExec {
    /// Partials of `t(X - 1 c) (X - 1 c)` over the block stream `x` and the row vector
    /// `c` (a block stream blocked as `x`'s columns, read whole by every partition): `X`
    /// centred block by block as it is read, never as a stream of its own.
    pub fn centred(
        x: Arc<dyn ExecutionPlan>,
        c: Arc<dyn ExecutionPlan>,
        rows_together: bool,
    ) -> Result<Self> {
        let mut exec = Self::try_new(x, Some(c), rows_together)?;
        exec.centred = true;
        Ok(exec)
    }
}

/// The blocks of `X` a partition holds, by block row: each row's blocks with their
/// block column.
type BlockRowsOfX = BTreeMap<u64, Vec<(u64, Block)>>;

impl FusedPartialExec {
    /// The same operator in exact mode: one partial per block row.
    pub(crate) fn exact_copy(&self) -> Result<Self> {
        let mut exec = Self::try_new(Arc::clone(&self.x), self.v.clone(), self.rows_together)?;
        exec.centred = self.centred;
        exec.exact = true;
        Ok(exec)
    }
}

impl DisplayAs for FusedPartialExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (&self.v, self.exact) {
            (None, false) => "tsmm, one partial t(X) X per partition",
            (None, true) => "tsmm, one partial t(X) X per block row (exact)",
            (Some(_), false) if self.centred => {
                "centred tsmm, one partial t(X - 1 c) (X - 1 c) per partition, c read whole"
            }
            (Some(_), true) if self.centred => {
                "centred tsmm, one partial t(X - 1 c) (X - 1 c) per block row (exact), c read whole"
            }
            (Some(_), false) => "mmchain, one partial t(X) (X v) per partition, v read whole",
            (Some(_), true) => {
                "mmchain, one partial t(X) (X v) per block row (exact), v read whole"
            }
        };
        let rows = if self.rows_together {
            "whole block rows where stored"
        } else {
            "block rows gathered by bi"
        };
        if let DisplayFormatType::TreeRender = t {
            writeln!(f, "partial={what}")?;
            return writeln!(f, "rows={rows}");
        }
        write!(f, "FusedPartialExec: {what}, {rows}")
    }
}

impl ExecutionPlan for FusedPartialExec {
    fn name(&self) -> &str {
        "FusedPartialExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        std::iter::once(&self.x).chain(self.v.as_ref()).collect()
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let x = if self.rows_together {
            Distribution::UnspecifiedDistribution
        } else {
            Distribution::KeyPartitioned(vec![Arc::new(Column::new(BI, 0))])
        };
        match self.v {
            None => vec![x],
            Some(_) => vec![x, Distribution::SinglePartition],
        }
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.children().len()]
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
        let mut it = children.into_iter();
        let (x, v) = (it.next(), it.next());
        match (x, v, self.v.is_some(), it.next()) {
            (Some(x), v, has_v, None) if v.is_some() == has_v => {
                let mut exec = Self::try_new(x, v, self.rows_together)?;
                exec.centred = self.centred;
                exec.exact = self.exact;
                Ok(Arc::new(exec))
            }
            _ => exec_err!("FusedPartialExec: wrong number of children"),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let x = self.x.execute(partition, context.clone())?;
        // `v` is read whole once, for all partitions: its plan may hold exchanges, whose
        // partitions run only once.
        let v = self.v.clone().map(|v| {
            let (cell, context) = (Arc::clone(&self.v_read), Arc::clone(&context));
            async move {
                cell.get_or_try_init(|| async move {
                    let batches: Vec<RecordBatch> =
                        v.execute(0, Arc::clone(&context))?.try_collect().await?;
                    let reservation = MemoryConsumer::new("FusedPartialExec side input")
                        .register(context.memory_pool());
                    let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
                    reservation.try_grow(bytes)?;
                    Ok::<_, DataFusionError>(Arc::new((batches, reservation)))
                })
                .await
                .cloned()
            }
        });
        let cores = kernels::cpu_pool().current_num_threads();
        let exact = self.exact;
        let centred = self.centred;
        let seq = exact || self.props.partitioning.partition_count() >= cores;
        let products = MetricBuilder::new(&self.metrics).counter("block_products", partition);
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let elapsed = MetricBuilder::new(&self.metrics).elapsed_compute(partition);
        let reservation = MemoryConsumer::new(format!("FusedPartialExec[{partition}]"))
            .register(context.memory_pool());
        Ok(batches_stream(self.schema(), async move {
            let x: Vec<_> = x.try_collect().await?;
            let v: Option<SharedBatches> = match v {
                Some(v) => Some(v.await?),
                None => None,
            };
            let timer = elapsed.timer();
            let (batches, count) = blocking(move || {
                let reservation = reservation;
                let mut rows: BlockRowsOfX = BTreeMap::new();
                for batch in &x {
                    let blocks = BlockRows::new(batch, 0)?;
                    for row in 0..blocks.len() {
                        let (i, k) = blocks.key(row);
                        rows.entry(i).or_default().push((k, blocks.block(row)?));
                    }
                }
                let mut v_by_k: Option<HashMap<u64, Vec<(u64, Block)>>> = None;
                let mut centre: HashMap<u64, Vec<f64>> = HashMap::new();
                if let (Some(v), true) = (&v, centred) {
                    for batch in &v.0 {
                        let blocks = BlockRows::new(batch, 0)?;
                        for row in 0..blocks.len() {
                            let (_, k) = blocks.key(row);
                            let block = blocks.block(row)?.to_dense();
                            centre.insert(k, block.row(0).to_vec());
                        }
                    }
                } else if let Some(v) = &v {
                    let by_k = v_by_k.get_or_insert_with(HashMap::new);
                    for batch in &v.0 {
                        let blocks = BlockRows::new(batch, 0)?;
                        for row in 0..blocks.len() {
                            let (k, l) = blocks.key(row);
                            by_k.entry(k).or_default().push((l, blocks.block(row)?));
                        }
                    }
                }
                // The partials: one for the partition, ordered by it; exact, one per
                // block row, ordered by the row.
                let groups: Vec<(u64, BlockRowsOfX)> = if exact {
                    rows.into_iter()
                        .map(|(i, blocks)| (i, BTreeMap::from([(i, blocks)])))
                        .collect()
                } else {
                    vec![(partition as u64, rows)]
                };
                let (mut count, mut bytes, mut batches) = (0, 0u64, Vec::new());
                for (ord, rows) in groups {
                    let mut partials: HashMap<(u64, u64), Option<Acc>> = HashMap::new();
                    count += match &v_by_k {
                        None if centred => {
                            tsmm_partials(rows, Some(&centre), &mut partials, seq)?
                        }
                        None => tsmm_partials(rows, None, &mut partials, seq)?,
                        Some(v_by_k) => mmchain_partials(rows, v_by_k, &mut partials, seq)?,
                    };
                    let made: u64 = partials.values().flatten().map(Acc::bytes).sum();
                    bytes += made;
                    reservation.try_grow(made as usize).map_err(|e| {
                        DataFusionError::ResourcesExhausted(format!(
                            "FusedPartialExec: a partial result of {bytes} bytes does not fit the session's memory budget: {e}"
                        ))
                    })?;
                    batches.extend(partial_batches(partials, ord)?);
                }
                reservation.free();
                Ok::<_, DataFusionError>((batches, count))
            })
            .await?;
            timer.done();
            products.add(count);
            for b in &batches {
                output_rows.add(b.num_rows());
            }
            Ok(batches)
        }))
    }
}

/// Adds `t(X_i) X_i` of every block row `X_i` in `rows` to `partials`, by output block
/// `(k, j)`, with `centre`'s row (by block column) first subtracted from every row of
/// `X_i`; returns the block products made.
fn tsmm_partials(
    rows: BlockRowsOfX,
    centre: Option<&HashMap<u64, Vec<f64>>>,
    partials: &mut HashMap<(u64, u64), Option<Acc>>,
    seq: bool,
) -> Result<usize> {
    let mut count = 0;
    for (_, mut blocks) in rows {
        blocks.sort_unstable_by_key(|b| b.0);
        if let Some(centre) = centre {
            for (k, xk) in &mut blocks {
                let Some(c) = centre.get(k) else {
                    return exec_err!("FusedPartialExec: no centre for block column {k}");
                };
                *xk = Block::Dense(kernels::sub_row(xk, c).map_err(storage_error)?);
            }
        }
        for (at, (k, xk)) in blocks.iter().enumerate() {
            // The diagonal block with the symmetric kernel (one triangle of flops).
            let d = if seq {
                kernels::tsmm_seq(xk)
            } else {
                kernels::tsmm(xk)
            }
            .map_err(storage_error)?;
            Acc::add_block(partials.entry((*k, *k)).or_default(), Block::Dense(d))?;
            count += 1;
            if at + 1 < blocks.len() {
                let xt = kernels::transpose(xk);
                for (j, xj) in &blocks[at + 1..] {
                    Acc::add_product(partials.entry((*k, *j)).or_default(), &xt, xj, seq)?;
                    count += 1;
                }
            }
        }
    }
    // Below the diagonal: the transposes of the blocks above it.
    let upper: Vec<(u64, u64)> = partials.keys().filter(|(k, j)| k < j).copied().collect();
    for (k, j) in upper {
        let Some(Some(acc)) = partials.remove(&(k, j)) else {
            continue;
        };
        let block = acc.into_block();
        let mirrored = kernels::transpose(&block);
        partials.insert((k, j), Some(Acc::wrap(block)));
        Acc::add_block(partials.entry((j, k)).or_default(), mirrored)?;
    }
    Ok(count)
}

/// Adds `t(X_i) (X_i V)` of every block row `X_i` in `rows` to `partials`, by output
/// block `(k, l)`, with `V`'s blocks by block row; returns the block products made.
fn mmchain_partials(
    rows: BlockRowsOfX,
    v_by_k: &HashMap<u64, Vec<(u64, Block)>>,
    partials: &mut HashMap<(u64, u64), Option<Acc>>,
    seq: bool,
) -> Result<usize> {
    let mut count = 0;
    for (_, mut blocks) in rows {
        blocks.sort_unstable_by_key(|b| b.0);
        if let [(k, xk)] = blocks.as_slice() {
            // One block in the row: the fused kernel reads it once per block of V.
            for (l, vkl) in v_by_k.get(k).into_iter().flatten() {
                let vd = vkl.to_dense();
                let p = if seq {
                    kernels::mmchain_seq(xk, &vd)
                } else {
                    kernels::mmchain(xk, &vd)
                }
                .map_err(storage_error)?;
                Acc::add_block(partials.entry((*k, *l)).or_default(), Block::Dense(p))?;
                count += 1;
            }
            continue;
        }
        // w(l) = sum over k of X(i, k) V(k, l), then t(X(i, k)) w(l) for every k.
        let mut w: BTreeMap<u64, Option<Acc>> = BTreeMap::new();
        for (k, xk) in &blocks {
            for (l, vkl) in v_by_k.get(k).into_iter().flatten() {
                Acc::add_product(w.entry(*l).or_default(), xk, vkl, seq)?;
                count += 1;
            }
        }
        let w: Vec<(u64, Block)> = w
            .into_iter()
            .filter_map(|(l, acc)| acc.map(|a| (l, a.into_block())))
            .collect();
        for (k, xk) in &blocks {
            let xt = kernels::transpose(xk);
            for (l, wl) in &w {
                Acc::add_product(partials.entry((*k, *l)).or_default(), &xt, wl, seq)?;
                count += 1;
            }
        }
    }
    Ok(count)
}
