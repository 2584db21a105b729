//! The plan shape of each matmul strategy, in DataFusion's own operators.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{JoinSide, JoinType, NullEquality, Result};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::utils::{ColumnIndex, JoinFilter};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

use super::fused::FusedPartialExec;
use super::map::{BlockMap, BlockMapExec, OI, OJ};
use super::product::OutputKeys;
use super::zip::BlockZipJoinExec;
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
    /// mm: both sides gathered into one partition, joined, multiplied and summed there.
    Local,
    /// zipmm: both sides already placed alike on `k`; partition `p` joins partition `p`.
    CoPartitioned,
    /// rmm: each block sent to every output block it feeds, one hash exchange by
    /// `(i, j)` per side, a partitioned join on `(i, j)` with `k` matched in the join,
    /// and the sums made where the products are.
    Replication,
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
///
/// `grid` is the product's block rows and block columns (the fan-out of replication).
pub fn matmul_plan(
    a: Arc<dyn ExecutionPlan>,
    b: Arc<dyn ExecutionPlan>,
    strategy: FlowStrategy,
    grid: (u64, u64),
) -> Result<Arc<dyn ExecutionPlan>> {
    // A(i, k) joins B(k, j) on A.bj = B.bi.
    let a_k = || column(BJ, 1);
    let b_k = || column(BI, 0);
    let (join, a_at, b_at): (Arc<dyn ExecutionPlan>, usize, usize) = match strategy {
        FlowStrategy::Replication => return replication_plan(a, b, grid),
        FlowStrategy::CoPartitioned => (
            Arc::new(BlockZipJoinExec::try_new(a, b)?),
            0,
            BLOCK_STREAM_WIDTH,
        ),
        FlowStrategy::Local => {
            // Every product in one task: the pairs gathered into one partition, where
            // the products and their sums are made (the left the join's build side).
            let join = HashJoinExec::try_new(
                a,
                b,
                vec![(a_k(), b_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )?;
            let products = BlockProductExec::single(Arc::new(join), 0, BLOCK_STREAM_WIDTH)?;
            return Ok(Arc::new(BlockSumExec::single(Arc::new(products))?));
        }
        FlowStrategy::Repartition => (
            Arc::new(HashJoinExec::try_new(
                a,
                b,
                vec![(a_k(), b_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::Partitioned,
                NullEquality::NullEqualsNothing,
                false,
            )?),
            0,
            BLOCK_STREAM_WIDTH,
        ),
        FlowStrategy::BroadcastRight => (
            Arc::new(HashJoinExec::try_new(
                b,
                a,
                vec![(b_k(), a_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )?),
            BLOCK_STREAM_WIDTH,
            0,
        ),
        FlowStrategy::BroadcastLeft => (
            Arc::new(HashJoinExec::try_new(
                a,
                b,
                vec![(a_k(), b_k())],
                None,
                &JoinType::Inner,
                None,
                PartitionMode::CollectLeft,
                NullEquality::NullEqualsNothing,
                false,
            )?),
            0,
            BLOCK_STREAM_WIDTH,
        ),
    };
    let products = BlockProductExec::try_new(join, a_at, b_at)?;
    Ok(Arc::new(BlockSumExec::try_new(Arc::new(products))?))
}

/// rmm: `A(i, k)` fanned out to `(i, oj)` for every output block column, `B(k, j)` to
/// `(oi, j)` for every output block row; a partitioned join on the output key (both
/// sides hash-repartitioned on it, the only exchange) keeps the pairs whose `k` meet,
/// and each output block is summed where it was made.
fn replication_plan(
    a: Arc<dyn ExecutionPlan>,
    b: Arc<dyn ExecutionPlan>,
    (i_blocks, j_blocks): (u64, u64),
) -> Result<Arc<dyn ExecutionPlan>> {
    let a = Arc::new(BlockMapExec::try_new(
        a,
        BlockMap::FanOutLeft { copies: j_blocks },
    )?);
    let b = Arc::new(BlockMapExec::try_new(
        b,
        BlockMap::FanOutRight { copies: i_blocks },
    )?);
    // Rows: A = (oj, bi = i, bj = k, block), B = (oi, bi = k, bj = j, block).
    let width = 1 + BLOCK_STREAM_WIDTH;
    let on = vec![
        (column(BI, 1), column(OI, 0)),
        (column(OJ, 0), column(BJ, 2)),
    ];
    // The k of both sides must meet: A.bj = B.bi.
    let filter_schema = Arc::new(Schema::new(vec![
        Field::new("a_k", DataType::Int64, false),
        Field::new("b_k", DataType::Int64, false),
    ]));
    let filter = JoinFilter::new(
        Arc::new(BinaryExpr::new(
            column("a_k", 0),
            Operator::Eq,
            column("b_k", 1),
        )),
        vec![
            ColumnIndex {
                index: 2,
                side: JoinSide::Left,
            },
            ColumnIndex {
                index: 1,
                side: JoinSide::Right,
            },
        ],
        filter_schema,
    );
    let join = HashJoinExec::try_new(
        a,
        b,
        on,
        Some(filter),
        &JoinType::Inner,
        None,
        PartitionMode::Partitioned,
        NullEquality::NullEqualsNothing,
        false,
    )?;
    let (a_at, b_at) = (1, width + 1);
    let keys = OutputKeys {
        i: vec![a_at, width],
        j: vec![0, b_at + 1],
    };
    let products = BlockProductExec::with_keys(Arc::new(join), a_at, b_at, keys)?;
    Ok(Arc::new(BlockSumExec::try_new(Arc::new(products))?))
}

/// `t(X) X` (no `v`) or `t(X) (X v)`: one partial per partition of `X`, summed in one
/// partition. `rows_together` when each partition of `x` holds whole block rows.
pub fn fused_plan(
    x: Arc<dyn ExecutionPlan>,
    v: Option<Arc<dyn ExecutionPlan>>,
    rows_together: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partials = FusedPartialExec::try_new(x, v, rows_together)?;
    Ok(Arc::new(BlockSumExec::single(Arc::new(partials))?))
}

/// `t(X - 1 c) (X - 1 c)` for a row vector `c` (blocked as `X`'s columns): one partial
/// per partition of `X`, each block centred as it is read, summed in one partition.
pub fn centred_tsmm_plan(
    x: Arc<dyn ExecutionPlan>,
    c: Arc<dyn ExecutionPlan>,
    rows_together: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partials = FusedPartialExec::centred(x, c, rows_together)?;
    Ok(Arc::new(BlockSumExec::single(Arc::new(partials))?))
}
