//! Relational joins of two arrays stored alike, without a repartition.
//!
//! DataFusion plans a partitioned hash join by hash-repartitioning both inputs on the
//! join keys. When both inputs are scans of arrays whose shards are assigned by the
//! same function of the joined dimensions (the same stored partitioning, the same
//! blocking of those dimensions), equal keys already sit in the same shard on both
//! sides, and a scan's partition `k` is its shard `k` ([`CellScanExec`]). This rule
//! removes both repartitions and joins shard `k` with shard `k`: the co-partitioned
//! strategy of the matmul planner, for relational joins.
//!
//! Which function assigns shards decides which joins qualify:
//!
//! | stored partitioning | shard depends on | joins that qualify |
//! |---|---|---|
//! | `hash` (default), placed by the live placement | every block index | on every dimension (`a.i = b.i AND a.j = b.j`) |
//! | `hash`, placed by another function | unknown | none |
//! | `rows` | the block row | on `i` (and possibly more) |
//! | `grid` | block row and column | on `i` and `j` |
//!
//! A hash-partitioned array qualifies only when the function that placed its blocks
//! is the one this build's DataFusion computes ([`hash_placement_is_live`]): an array
//! written by a build that hashed differently would meet the other side's shard `k`
//! with blocks of other keys, and the join would drop matches.
//!
//! The rule runs after DataFusion's own rules (including join selection, which
//! broadcasts a small side by its statistics, and the sanity check). An operator above
//! the join may rely on the join's output being hash-partitioned on the keys (an
//! aggregate on them, another join); there the rule either re-establishes that
//! partitioning on the join's output, which is no larger than either input when every
//! dimension is joined, or leaves the plan as DataFusion made it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, PlanProperties, SendableRecordBatchStream,
};
use datafusion::physical_plan::{Distribution, ExecutionPlan, Partitioning};
use tessera_storage::{ArrayInfo, Partitioning as Stored};

use crate::cell_scan::CellScanExec;
use crate::partitioning::hash_placement_is_live;

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct CoPartitionedJoins;

impl PhysicalOptimizerRule for CoPartitionedJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite(plan, false)
    }

    fn name(&self) -> &str {
        "tessera_copartitioned_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Rewrites joins under `plan`. `relied` says whether an operator above relies on how
/// `plan`'s output is hash-partitioned.
fn rewrite(plan: Arc<dyn ExecutionPlan>, relied: bool) -> Result<Arc<dyn ExecutionPlan>> {
    let required = plan.input_distribution_requirements();
    // These operators change the partitioning; nothing above them sees what is below.
    let boundary = plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<SortPreservingMergeExec>().is_some();
    let children = plan.children();
    let mut rewritten = Vec::with_capacity(children.len());
    let mut changed = false;
    for (k, child) in children.into_iter().enumerate() {
        let child_relied = match required.child_distribution(k) {
            Some(Distribution::KeyPartitioned(_)) => true,
            #[allow(deprecated)]
            Some(Distribution::HashPartitioned(_)) => true,
            Some(Distribution::SinglePartition) => false,
            _ => relied && !boundary,
        };
        let new = rewrite(Arc::clone(child), child_relied)?;
        changed |= !Arc::ptr_eq(&new, child);
        rewritten.push(new);
    }
    let plan = if changed {
        replace_children(plan, rewritten)?
    } else {
        plan
    };
    match plan.downcast_ref::<HashJoinExec>() {
        Some(join) if *join.partition_mode() == PartitionMode::Partitioned => {
            Ok(copartitioned(join, relied)?.unwrap_or(plan))
        }
        _ => Ok(plan),
    }
}

/// One side of a join, with its repartition removed.
struct Side<'a> {
    plan: Arc<dyn ExecutionPlan>,
    scan: &'a CellScanExec,
    /// For each output column, the array dimension it is.
    dims: Vec<Option<usize>>,
}

/// The join reading both sides shard by shard, or `None` when the sides are not
/// stored alike on the joined dimensions.
fn copartitioned(join: &HashJoinExec, relied: bool) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let (Some(left), Some(right)) = (side(join.left())?, side(join.right())?) else {
        return Ok(None);
    };
    // Every key must be the same dimension on both sides.
    let mut joined = BTreeSet::new();
    for (l, r) in join.on() {
        let dim = |e: &Arc<dyn PhysicalExpr>, s: &Side| {
            e.downcast_ref::<Column>()
                .and_then(|c| s.dims.get(c.index()).copied().flatten())
        };
        match (dim(l, &left), dim(r, &right)) {
            (Some(a), Some(b)) if a == b => {
                joined.insert(a);
            }
            _ => return Ok(None),
        }
    }
    let (a, b) = (left.scan.info(), right.scan.info());
    let (Some(placing), Some(_)) = (placing_dimensions(a), placing_dimensions(b)) else {
        return Ok(None);
    };
    let alike = a.partitioning == b.partitioning
        && a.partitioning.shard_count() > 1
        && left.scan.partitions_are_shards()
        && right.scan.partitions_are_shards()
        && placing.iter().all(|&d| {
            let (x, y) = (a.schema.dimensions().get(d), b.schema.dimensions().get(d));
            joined.contains(&d)
                && matches!((x, y), (Some(x), Some(y))
                    if (x.start, x.end, x.block_len) == (y.start, y.end, y.block_len))
        });
    if !alike {
        return Ok(None);
    }
    // Every dimension joined: each key is at most one row per side, so the output is no
    // larger than either input and re-partitioning it is cheaper than the inputs.
    let all =
        a.schema.dimensions().len() == joined.len() && b.schema.dimensions().len() == joined.len();
    if relied && !all {
        return Ok(None);
    }
    let promised = join.properties().output_partitioning().clone();
    let shards = a.partitioning.shard_count() as usize;
    let new = join
        .builder()
        .reset_state()
        .with_new_children(vec![left.plan, right.plan])?
        .recompute_properties()
        .build_exec()?;
    let new: Arc<dyn ExecutionPlan> = Arc::new(CoPartitionedJoinExec { join: new, shards });
    Ok(Some(match promised {
        Partitioning::Hash(..) if relied => Arc::new(RepartitionExec::try_new(new, promised)?),
        _ => new,
    }))
}

/// A hash join whose inputs are partitioned alike by storage rather than by
/// DataFusion's hash: partition `k` of the join reads shard `k` of both inputs. It
/// runs the join it wraps; wrapping keeps DataFusion's co-partitioning check, which
/// only knows its own hash, from rejecting a layout it cannot see.
#[derive(Debug)]
pub struct CoPartitionedJoinExec {
    join: Arc<dyn ExecutionPlan>,
    shards: usize,
}

impl DisplayAs for CoPartitionedJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CoPartitionedJoinExec: shard k with shard k of {}, ",
            self.shards
        )?;
        self.join.fmt_as(t, f)
    }
}

impl ExecutionPlan for CoPartitionedJoinExec {
    fn name(&self) -> &str {
        "CoPartitionedJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.join.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.join.children()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.join.maintains_input_order()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.join.children().len()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(CoPartitionedJoinExec {
            join: replace_children(Arc::clone(&self.join), children)?,
            shards: self.shards,
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.join.metrics()
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        self.join.partition_statistics(partition)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.join.execute(partition, context)
    }
}

/// The dimensions whose block index decides an array's shard, or `None` when the
/// layout is not one this rule knows (including a hash placement that is not live).
fn placing_dimensions(info: &ArrayInfo) -> Option<Vec<usize>> {
    let ndims = info.schema.dimensions().len();
    match info.partitioning {
        Stored::Hash { .. } if hash_placement_is_live(info) => Some((0..ndims).collect()),
        Stored::Hash { .. } => None,
        Stored::RowBlock { .. } => Some(vec![0]),
        Stored::Grid { .. } if ndims >= 2 => Some(vec![0, 1]),
        Stored::Grid { .. } => None,
    }
}

/// Looks through a join input `RepartitionExec(hash)` -> filters, column projections
/// and round-robin repartitions -> `CellScanExec`, and returns the
/// input without either kind of repartition.
fn side(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Side<'_>>> {
    let Some(top) = plan.downcast_ref::<RepartitionExec>() else {
        return Ok(None);
    };
    if !matches!(top.partitioning(), Partitioning::Hash(..)) {
        return Ok(None);
    }
    // The operators kept, top down.
    let mut kept: Vec<&Arc<dyn ExecutionPlan>> = Vec::new();
    let mut node = top.input();
    let scan = loop {
        if let Some(scan) = node.downcast_ref::<CellScanExec>() {
            break scan;
        }
        if let Some(r) = node.downcast_ref::<RepartitionExec>() {
            if !matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) {
                return Ok(None);
            }
            node = r.input();
            continue;
        }
        let input = if let Some(f) = node.downcast_ref::<FilterExec>() {
            f.input()
        } else if let Some(p) = node.downcast_ref::<ProjectionExec>() {
            p.input()
        } else {
            return Ok(None);
        };
        kept.push(node);
        node = input;
    };

    // Rebuild bottom up, following which column is which dimension.
    let mut dims = scan.output_dimensions();
    let mut rebuilt: Arc<dyn ExecutionPlan> = Arc::clone(node);
    for op in kept.into_iter().rev() {
        if let Some(f) = op.downcast_ref::<FilterExec>() {
            if let Some(p) = f.projection() {
                dims = p.iter().map(|&c| dims.get(c).copied().flatten()).collect();
            }
        } else if let Some(p) = op.downcast_ref::<ProjectionExec>() {
            dims = p
                .expr()
                .iter()
                .map(|e| {
                    e.expr
                        .downcast_ref::<Column>()
                        .and_then(|c| dims.get(c.index()).copied().flatten())
                })
                .collect();
        }
        rebuilt = replace_children(Arc::clone(op), vec![rebuilt])?;
    }
    Ok(Some(Side {
        plan: rebuilt,
        scan,
        dims,
    }))
}

/// `plan` over new `children`, its properties recomputed.
fn replace_children(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}
