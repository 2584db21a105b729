//! The plan shape of each matmul strategy, in DataFusion's own operators.

use std::sync::Arc;

use datafusion::common::{JoinType, NullEquality, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

use super::{BI, BJ, BLOCK_STREAM_WIDTH, BlockProductExec, BlockSumExec};

/// The matmul strategies that run as a dataflow of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStrategy {
    /// cpmm: both sides hash-repartitioned on `k`, a partitioned join on `k`.
    Repartition,
    /// mapmm: the right side is the build side of a collect-left join, the left
    /// streams.
    BroadcastRight,
    /// mapmm mirrored: the left side is the build side, the right streams.
    BroadcastLeft,
}

fn column(name: &str, at: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, at))
}

/// `a b` for block streams `a` (blocks `A(i, k)`) and `b` (blocks `B(k, j)`) whose
/// block sizes meet (`a`'s block columns are `b`'s block rows): a join of the blocks on
/// `k`, a block product per joined pair, and a block sum by `(i, j)`.
///
/// The exchanges are not placed here: the partitioned join requires both sides
/// hash-partitioned on `k`, the collect-left join its build side in one partition, and
/// the block sum its input hash-partitioned on `(i, j)`; DataFusion's distribution rule
/// inserts the repartitions and the coalesce those requirements need, and none where
/// an input already satisfies them.
pub fn matmul_plan(
    a: Arc<dyn ExecutionPlan>,
    b: Arc<dyn ExecutionPlan>,
    strategy: FlowStrategy,
) -> Result<Arc<dyn ExecutionPlan>> {
    // A(i, k) joins B(k, j) on A.bj = B.bi.
    let a_k = || column(BJ, 1);
    let b_k = || column(BI, 0);
    let (join, a_at, b_at) = match strategy {
        FlowStrategy::Repartition => (
            HashJoinExec::try_new(
                a,
                b,
                vec![(a_k(), b_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::Partitioned,
                NullEquality::NullEqualsNothing,
                false,
            )?,
            0,
            BLOCK_STREAM_WIDTH,
        ),
        FlowStrategy::BroadcastRight => (
            HashJoinExec::try_new(
                b,
                a,
                vec![(b_k(), a_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )?,
            BLOCK_STREAM_WIDTH,
            0,
        ),
        FlowStrategy::BroadcastLeft => (
            HashJoinExec::try_new(
                a,
                b,
                vec![(a_k(), b_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )?,
            0,
            BLOCK_STREAM_WIDTH,
        ),
    };
    let products = BlockProductExec::try_new(Arc::new(join), a_at, b_at)?;
    Ok(Arc::new(BlockSumExec::try_new(Arc::new(products))?))
}
