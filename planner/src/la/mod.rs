//! Linear algebra in SQL: matrix table functions (`matmul`, `t`, `solve`, ...) planned
//! into extension nodes beside DataFusion's relational ones, rewritten, given a
//! strategy by one cost model, and run as partitioned operators over blocks.
//!
//! ```text
//! FROM matmul(t(x), x)            SQL table function in FROM
//!   -> MatrixFunctions            RelationPlanner: SQL arguments -> MatExpr
//!   -> LaNode                     logical node; rewrites applied (expr::optimize)
//!   -> LaPlanner                  ExtensionPlanner: one LaExec per operation, each
//!                                 product costed and given a strategy
//!   -> LaExec tree                blocks flow between operators; the top one emits rows
//! ```

mod aggregate;
mod exec;
pub(crate) use exec::tree_lines;
mod expr;
pub mod flow;
mod functions;
mod matrix;
mod node;
mod ops;
mod strategy;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use tessera_storage::Store;

pub use aggregate::{BlockAggregateExec, BlockAggregates, CellAggregate, CellGroups};
pub use exec::{FlowGeometry, LaExec, Output, cells_schema, human_bytes, rows_schema};
pub use expr::{Estimate, MatExpr, Op, Pinned, Reduction, Step, optimize};
pub(crate) use functions::{Builder as MatrixArguments, number};
pub use functions::{MATRIX_FUNCTIONS, MatrixFunctions};
pub use matrix::{BlockMatrix, Layout, Tile, TileSink};
pub use node::{
    LaNode, LaPlanner, MatrixWriteNode, TesseraConfig, TesseraQueryPlanner, is_block_dataflow,
};
pub use strategy::{Candidate, Choice, CostContext, Strategy};

/// Adds Tessera's settings (`tessera.*`, e.g. `tessera.matmul_strategy`) to a session
/// configuration. Call before building the session state.
pub fn session_config(config: SessionConfig) -> SessionConfig {
    config
        .with_option_extension(TesseraConfig::default())
        .with_option_extension(crate::ml::ParforConfig::default())
}

/// Installs the matrix table functions, the `lm_fit` aggregate and the physical planner for the
/// linear-algebra nodes into a session being built. Arrays named in matrix functions
/// are read from `store`.
pub fn install(mut builder: SessionStateBuilder, store: Store) -> SessionStateBuilder {
    builder
        .aggregate_functions()
        .get_or_insert_with(Vec::new)
        .push(Arc::new(crate::ml::lm_fit_udaf()));
    builder
        .with_relation_planners(vec![Arc::new(MatrixFunctions::new(store))])
        // `FLOAT` / `FLOAT(p)` with PostgreSQL's widths (DataFusion makes every FLOAT 32-bit).
        .with_type_planner(Arc::new(crate::PostgresTypes))
        .with_query_planner(Arc::new(TesseraQueryPlanner))
        .with_analyzer_rule(Arc::new(crate::ml::LateralCalls))
        .with_physical_optimizer_rule(Arc::new(crate::copartition::CoPartitionedJoins))
        .with_physical_optimizer_rule(Arc::new(BlockAggregates))
        .with_physical_optimizer_rule(Arc::new(flow::MeterExchanges))
}

/// The block size for a matrix the planner makes (generated, read from a subquery or
/// computed): the same rule as `CREATE MATRIX` without `BLOCK`, [`crate::auto_block_size`].
pub fn auto_block(rows: u64, cols: u64) -> (u64, u64) {
    crate::auto_block_size(rows, cols)
}

/// Computes the matrix a physical plan produces when the plan is a matrix expression
/// (an `LaExec` at the top), as blocks rather than rows: `CREATE MATRIX ... AS SELECT *
/// FROM matmul(...)` writes these blocks without going through `(i, j, v)` rows.
///
/// With a `sink`, the top operator may hand over its blocks as they are finished (see
/// [`TileSink`]); the returned matrix holds them all either way.
pub async fn compute_blocks(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    ctx: Arc<datafusion::execution::TaskContext>,
    sink: Option<Arc<dyn TileSink>>,
) -> datafusion::common::Result<Option<BlockMatrix>> {
    let node = exec::look_through(plan);
    if let Some(cells) = node.downcast_ref::<flow::BlockCellsExec>() {
        return flow_blocks(cells, ctx, sink).await.map(Some);
    }
    match node.downcast_ref::<LaExec>() {
        Some(la)
            if datafusion::physical_plan::ExecutionPlan::schema(la)
                .fields()
                .len()
                == 3 =>
        {
            la.compute_into(ctx, sink).await.map(Some)
        }
        _ => Ok(None),
    }
}

/// The blocks of a dataflow whose cells `cells` would make, each offered to `sink` as
/// it arrives, and all of them as a matrix whose memory is reserved in the session pool.
async fn flow_blocks(
    cells: &flow::BlockCellsExec,
    ctx: Arc<datafusion::execution::TaskContext>,
    sink: Option<Arc<dyn TileSink>>,
) -> datafusion::common::Result<BlockMatrix> {
    use datafusion::execution::memory_pool::MemoryConsumer;
    use futures::StreamExt;

    let exec::FlowGeometry { shape, block } = cells.geometry();
    let sink = match sink {
        Some(s) if s.open(shape, block)? => Some(s),
        _ => None,
    };
    let reservation = MemoryConsumer::new("matrix expression blocks").register(ctx.memory_pool());
    let parts = ctx.session_config().target_partitions().max(1);
    let mut stream =
        datafusion::physical_plan::execute_stream(Arc::clone(cells.input()), ctx.clone())?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        reservation.try_grow(batch.get_array_memory_size())?;
        if let Some(sink) = &sink {
            let rows = flow::BlockRows::new(&batch, 0)?;
            for row in 0..rows.len() {
                let (bi, bj) = rows.key(row);
                sink.put(&(bi, bj, Arc::new(rows.block(row)?)))?;
            }
        }
        batches.push(batch);
    }
    let mut m = BlockMatrix::from_block_batches(&batches, cells.geometry(), parts)?;
    m.reservation = Some(reservation);
    Ok(m)
}

#[cfg(test)]
mod tests;
