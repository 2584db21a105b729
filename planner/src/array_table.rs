//! Every array is a relation: `ArrayTable` shows a stored array as rows of
//! `(dim_0, ..., dim_n, attr_0, ...)` (for a matrix `(i, j, v)`), read block by block
//! from one committed version. Filters on the dimensions prune blocks before any I/O;
//! shards are the scan's partitions.

use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, Result, ScalarValue, TableReference, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, LogicalPlanBuilder, Operator, TableProviderFilterPushDown,
    TableType, cast, lit,
};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use tessera_storage::{ArrayInfo, ArraySchema, Block, BlockKey, Snapshot, Store};

use crate::array_write::ArraySink;
use crate::cell_scan::CellScanExec;
use crate::dml::RowChange;
use crate::error::{ErrorKind, storage_error, tessera_error};

/// Which cells of stored blocks become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CellListing {
    /// Cells where some attribute is non-zero: the coordinate (COO) form of a sparse
    /// array. Zeros are implicit, so `count(*)` is the non-zero count.
    #[default]
    NonZeros,
    /// Every cell of every stored block, zeros included (blocks that are all zeros are
    /// not stored and list nothing).
    StoredCells,
}

/// A stored array (one committed version) as a DataFusion table.
#[derive(Debug)]
pub struct ArrayTable {
    store: Store,
    snapshot: Arc<Snapshot>,
    schema: SchemaRef,
    listing: CellListing,
    /// Opened at an explicit version (`"x@3"`): read-only.
    pinned: bool,
}

impl ArrayTable {
    /// The current version of array `name` (or version `version`).
    pub fn open(
        store: &Store,
        name: &str,
        version: Option<u64>,
        listing: CellListing,
    ) -> Result<Self> {
        let snapshot = store.snapshot(name, version).map_err(storage_error)?;
        let schema = cell_schema(&snapshot.info().schema);
        Ok(Self {
            store: store.clone(),
            snapshot: Arc::new(snapshot),
            schema,
            listing,
            pinned: version.is_some(),
        })
    }

    /// The array and version this table reads.
    pub fn info(&self) -> &ArrayInfo {
        self.snapshot.info()
    }

    /// The committed version this table reads.
    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }

    /// The blocks a scan with `filters` reads, grouped by shard (one entry per shard,
    /// empty or not, so that partition `k` of a scan is shard `k`).
    fn plan_blocks(&self, filters: &[Expr]) -> (Vec<Vec<BlockKey>>, Vec<RangeInclusive<i64>>) {
        let schema = &self.snapshot.info().schema;
        let ranges = dimension_ranges(schema, filters);
        let shards = self.snapshot.info().partitioning.shard_count() as usize;
        let mut parts = vec![Vec::new(); shards];
        for meta in self.snapshot.blocks() {
            let touches =
                meta.key
                    .0
                    .iter()
                    .zip(schema.dimensions())
                    .zip(&ranges)
                    .all(|((&b, d), r)| {
                        let lo = d.start + b * d.block_len as i64;
                        let hi = lo + d.block_extent(b as u64) as i64 - 1;
                        lo <= *r.end() && hi >= *r.start()
                    });
            if touches {
                parts[(meta.shard as usize).min(shards - 1)].push(meta.key);
            }
        }
        (parts, ranges)
    }
}

/// `(dims as Int64, attributes as Float64)`.
pub fn cell_schema(schema: &ArraySchema) -> SchemaRef {
    let dims = schema
        .dimensions()
        .iter()
        .map(|d| Field::new(&d.name, DataType::Int64, false));
    let attrs = schema
        .attributes()
        .iter()
        .map(|a| Field::new(&a.name, DataType::Float64, false));
    Arc::new(Schema::new(dims.chain(attrs).collect::<Vec<_>>()))
}

#[async_trait]
impl TableProvider for ArrayTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Dimension filters prune blocks; rows are still filtered by DataFusion.
        Ok(filters
            .iter()
            .map(|f| {
                if dimension_ranges(&self.snapshot.info().schema, &[(*f).clone()])
                    .iter()
                    .zip(self.snapshot.info().schema.dimensions())
                    .any(|(r, d)| *r != (d.start..=d.end))
                {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (shards, ranges) = self.plan_blocks(filters);
        Ok(Arc::new(CellScanExec::try_new(
            self.snapshot.clone(),
            self.schema.clone(),
            projection,
            shards,
            ranges,
            self.listing,
            limit,
        )?))
    }

    /// `INSERT INTO array SELECT ...`: the input's columns are the array's dimensions
    /// then its attributes (by position); cells overwrite stored cells (later rows win,
    /// nothing is summed) and the write commits once, or not at all if any cell is
    /// outside the array.
    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let name = &self.snapshot.info().name;
        if self.pinned {
            return plan_err!(
                "version {} of array '{name}' is read-only; INSERT INTO the array itself",
                self.snapshot.version()
            );
        }
        if insert_op != InsertOp::Append {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::FeatureNotSupported,
                format!("{insert_op} is not supported for arrays; use INSERT INTO {name}"),
            ));
        }
        let sink = ArraySink {
            store: self.store.clone(),
            name: name.clone(),
            schema: self.snapshot.info().schema.clone(),
            // Nullable, so a NULL reaches the sink, whose error names the array and row.
            cell_schema: Arc::new(Schema::new(
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            statement: format!("INSERT INTO {name}"),
            base: None,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    /// `DELETE FROM array [WHERE ...]`: the matching cells become absent (zero); see
    /// [`crate::dml`].
    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.change_cells(state, RowChange::Delete, filters).await
    }

    /// `UPDATE array SET attr = ... [WHERE ...]`: new values for the matching cells;
    /// dimensions cannot be assigned. See [`crate::dml`].
    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.change_cells(state, RowChange::Update(assignments), filters)
            .await
    }
}

impl ArrayTable {
    /// The plan of an `UPDATE` or `DELETE`: the cells of the current version that
    /// match `filters` (the relation's cells: non-zeros), with their new values,
    /// written in update mode by an [`ArraySink`] that commits only if that version is
    /// still the current one.
    async fn change_cells(
        &self,
        state: &dyn Session,
        change: RowChange,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let info = self.snapshot.info();
        let name = &info.name;
        let statement = change.statement(name);
        if self.pinned {
            return plan_err!(
                "version {} of array '{name}' is read-only; {statement} changes the array itself",
                self.snapshot.version()
            );
        }
        let dimensions = info.schema.dimensions();
        if let RowChange::Update(assignments) = &change
            && let Some((dim, _)) = assignments
                .iter()
                .find(|(c, _)| dimensions.iter().any(|d| &d.name == c))
        {
            return Err(tessera_error(
                ErrorKind::FeatureNotSupported,
                format!(
                    "{statement}: cannot assign to dimension {dim}: a cell's coordinates do \
                     not change; DELETE the cell and INSERT it at its new coordinates"
                ),
            ));
        }
        let mut columns: Vec<Expr> = dimensions
            .iter()
            .map(|d| Expr::Column(Column::new_unqualified(&d.name)))
            .collect();
        for a in info.schema.attributes() {
            let value = match &change {
                RowChange::Delete => lit(0.0f64),
                RowChange::Update(_) => match change.assignment(&a.name) {
                    Some(new) => cast(new.clone(), DataType::Float64),
                    None => Expr::Column(Column::new_unqualified(&a.name)),
                },
            };
            columns.push(value.alias(&a.name));
        }
        // The current version, not the one this table was opened at: a plan kept by a
        // prepared statement must not write cells computed from an older version.
        let current = self.store.snapshot(name, None).map_err(storage_error)?;
        if current.info().id != info.id {
            return Err(tessera_error(
                ErrorKind::SerializationFailure,
                format!("{statement}: array '{name}' was dropped and created again; retry"),
            ));
        }
        let base = current.version();
        let cells = ArrayTable {
            store: self.store.clone(),
            snapshot: Arc::new(current),
            schema: self.schema.clone(),
            listing: self.listing,
            pinned: false,
        };
        let mut plan = LogicalPlanBuilder::scan(
            TableReference::bare(name.as_str()),
            provider_as_source(Arc::new(cells)),
            None,
        )?;
        if let Some(predicate) = conjunction(filters) {
            plan = plan.filter(predicate)?;
        }
        let plan = plan.project(columns)?.build()?;
        let input = state.create_physical_plan(&plan).await?;
        // The sink reads partition 0 only.
        let input: Arc<dyn ExecutionPlan> = if input.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(input))
        } else {
            input
        };
        let sink = ArraySink {
            store: self.store.clone(),
            name: name.clone(),
            schema: info.schema.clone(),
            cell_schema: Arc::new(Schema::new(
                input
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            statement,
            base: Some(base),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// Reads one block and turns its cells inside `ranges` into batches.
pub(crate) fn block_batches(
    snapshot: &Snapshot,
    schema: &SchemaRef,
    key: &BlockKey,
    ranges: &[RangeInclusive<i64>],
    listing: CellListing,
    batch_size: usize,
) -> Result<Vec<RecordBatch>> {
    let array = &snapshot.info().schema;
    let Some(blocks) = snapshot.read(key).map_err(storage_error)? else {
        return Ok(Vec::new());
    };
    let dims = array.dimensions();
    // Extent of the block along each dimension and its first coordinate.
    let extents: Vec<usize> = dims
        .iter()
        .zip(&key.0)
        .map(|(d, &b)| d.block_extent(b as u64) as usize)
        .collect();
    let origin: Vec<i64> = dims
        .iter()
        .zip(&key.0)
        .map(|(d, &b)| d.start + b * d.block_len as i64)
        .collect();

    // Cell positions (row, col) within the block to list.
    let mut positions: Vec<(usize, usize)> = Vec::new();
    match (listing, blocks.as_slice()) {
        (CellListing::NonZeros, [only]) => only.for_each_nonzero(|r, c, _| positions.push((r, c))),
        (CellListing::NonZeros, many) => {
            let dense: Vec<_> = many.iter().map(Block::to_dense).collect();
            let (rows, cols) = many[0].shape();
            for r in 0..rows {
                for c in 0..cols {
                    if dense.iter().any(|d| d.get(r, c) != 0.0) {
                        positions.push((r, c));
                    }
                }
            }
        }
        (CellListing::StoredCells, _) => {
            let (rows, cols) = blocks[0].shape();
            positions.extend((0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))));
        }
    }

    let ndims = dims.len();
    let mut coords: Vec<Vec<i64>> = vec![Vec::with_capacity(positions.len()); ndims];
    let mut values: Vec<Vec<f64>> = vec![Vec::with_capacity(positions.len()); blocks.len()];
    let mut cell = vec![0i64; ndims];
    'cells: for &(r, c) in &positions {
        // Undo the 2-d flattening: leading dimensions row-major in `r`, the last in `c`.
        if ndims == 1 {
            cell[0] = origin[0] + r as i64;
        } else {
            cell[ndims - 1] = origin[ndims - 1] + c as i64;
            let mut rest = r;
            for d in (0..ndims - 1).rev() {
                cell[d] = origin[d] + (rest % extents[d]) as i64;
                rest /= extents[d];
            }
        }
        for (x, range) in cell.iter().zip(ranges) {
            if !range.contains(x) {
                continue 'cells;
            }
        }
        for (d, x) in cell.iter().enumerate() {
            coords[d].push(*x);
        }
        for (a, b) in blocks.iter().enumerate() {
            values[a].push(b.get(r, c));
        }
    }
    let total = coords.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    let mut start = 0;
    while start < total {
        let end = (start + batch_size.max(1)).min(total);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(ndims + blocks.len());
        columns.extend(
            coords
                .iter()
                .map(|c| Arc::new(Int64Array::from(c[start..end].to_vec())) as ArrayRef),
        );
        columns.extend(
            values
                .iter()
                .map(|v| Arc::new(Float64Array::from(v[start..end].to_vec())) as ArrayRef),
        );
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
        start = end;
    }
    Ok(out)
}

/// The inclusive coordinate range each dimension can take under `filters` (a
/// conjunction): comparisons and BETWEEN of a dimension with a literal narrow it; other
/// filters leave it whole. An empty result range is `1..=0`.
fn dimension_ranges(schema: &ArraySchema, filters: &[Expr]) -> Vec<RangeInclusive<i64>> {
    let mut ranges: Vec<(i64, i64)> = schema
        .dimensions()
        .iter()
        .map(|d| (d.start, d.end))
        .collect();
    let dim = |e: &Expr| -> Option<usize> {
        match e {
            Expr::Column(c) => schema.dimensions().iter().position(|d| d.name == c.name),
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Column(col) => schema.dimensions().iter().position(|d| d.name == col.name),
                _ => None,
            },
            _ => None,
        }
    };
    fn literal(e: &Expr) -> Option<f64> {
        match e {
            Expr::Literal(v, _) => match v {
                ScalarValue::Int8(Some(x)) => Some(*x as f64),
                ScalarValue::Int16(Some(x)) => Some(*x as f64),
                ScalarValue::Int32(Some(x)) => Some(*x as f64),
                ScalarValue::Int64(Some(x)) => Some(*x as f64),
                ScalarValue::UInt8(Some(x)) => Some(*x as f64),
                ScalarValue::UInt16(Some(x)) => Some(*x as f64),
                ScalarValue::UInt32(Some(x)) => Some(*x as f64),
                ScalarValue::UInt64(Some(x)) => Some(*x as f64),
                ScalarValue::Float32(Some(x)) => Some(*x as f64),
                ScalarValue::Float64(Some(x)) => Some(*x),
                _ => None,
            },
            Expr::Cast(c) => literal(&c.expr),
            _ => None,
        }
    }
    fn narrow(r: &mut (i64, i64), op: Operator, x: f64) {
        let clamp = |v: f64| v.clamp(i64::MIN as f64, i64::MAX as f64) as i64;
        match op {
            Operator::Eq => {
                if x.fract() != 0.0 {
                    *r = (1, 0);
                } else {
                    r.0 = r.0.max(clamp(x));
                    r.1 = r.1.min(clamp(x));
                }
            }
            Operator::Lt => r.1 = r.1.min(clamp(x.ceil() - 1.0)),
            Operator::LtEq => r.1 = r.1.min(clamp(x.floor())),
            Operator::Gt => r.0 = r.0.max(clamp(x.floor() + 1.0)),
            Operator::GtEq => r.0 = r.0.max(clamp(x.ceil())),
            _ => {}
        }
    }
    fn flip(op: Operator) -> Operator {
        match op {
            Operator::Lt => Operator::Gt,
            Operator::LtEq => Operator::GtEq,
            Operator::Gt => Operator::Lt,
            Operator::GtEq => Operator::LtEq,
            other => other,
        }
    }
    let mut stack: Vec<&Expr> = filters.iter().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                stack.push(left);
                stack.push(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(d), Some(x)) = (dim(left), literal(right)) {
                    narrow(&mut ranges[d], *op, x);
                } else if let (Some(x), Some(d)) = (literal(left), dim(right)) {
                    narrow(&mut ranges[d], flip(*op), x);
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                if let (Some(d), Some(lo), Some(hi)) = (dim(expr), literal(low), literal(high)) {
                    narrow(&mut ranges[d], Operator::GtEq, lo);
                    narrow(&mut ranges[d], Operator::LtEq, hi);
                }
            }
            _ => {}
        }
    }
    ranges.into_iter().map(|(lo, hi)| lo..=hi).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    use datafusion::prelude::SessionContext;
    use tessera_storage::{Attribute, DenseBlock, Dimension, Partitioning, WriteMode};

    /// Cell (i, j) of the test matrix: zero on a checkerboard of 7x7 patches.
    fn cell(i: i64, j: i64) -> f64 {
        if (i / 7 + j / 7) % 2 == 0 {
            0.0
        } else {
            (i * 1000 + j) as f64
        }
    }

    /// A 45x33 matrix in 10x10 blocks (ragged last blocks) over 3 hash shards.
    fn store_matrix() -> Store {
        let store = Store::in_memory();
        let schema = ArraySchema::matrix(45, 33, 10, 10).unwrap();
        store
            .create_array(
                "m",
                schema.clone(),
                Some(Partitioning::Hash { shards: 3 }),
                None,
            )
            .unwrap();
        let mut w = store.writer("m", WriteMode::Replace).unwrap();
        for bi in 0..5 {
            for bj in 0..4 {
                let key = BlockKey::matrix(bi, bj);
                let (r, c) = schema.block_shape(&key);
                let b =
                    DenseBlock::from_fn(r, c, |x, y| cell(bi * 10 + x as i64, bj * 10 + y as i64));
                w.put_block(key, Block::Dense(b).into_preferred_format())
                    .unwrap();
            }
        }
        w.commit().unwrap();
        store
    }

    async fn query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn arrays_answer_relational_queries() {
        let store = store_matrix();
        let ctx = SessionContext::new();
        ctx.register_table(
            "m",
            Arc::new(ArrayTable::open(&store, "m", None, CellListing::NonZeros).unwrap()),
        )
        .unwrap();

        // Row sums and counts of non-zeros, against the cells computed directly.
        let batches = query(
            &ctx,
            "SELECT i, sum(v) AS s, count(*) AS n FROM m GROUP BY i ORDER BY i",
        )
        .await;
        let mut got = Vec::new();
        for b in &batches {
            let (i, s, n) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Float64Type>(),
                b.column(2).as_primitive::<Int64Type>(),
            );
            for r in 0..b.num_rows() {
                got.push((i.value(r), s.value(r), n.value(r)));
            }
        }
        let want: Vec<(i64, f64, i64)> = (0..45)
            .filter_map(|i| {
                let nz: Vec<f64> = (0..33).map(|j| cell(i, j)).filter(|v| *v != 0.0).collect();
                (!nz.is_empty()).then(|| (i, nz.iter().sum(), nz.len() as i64))
            })
            .collect();
        assert_eq!(got, want);

        // A filter on both dimensions: exact rows, and only the touched blocks are read.
        let batches = query(
            &ctx,
            "SELECT count(*), sum(v) FROM m WHERE i BETWEEN 12 AND 17 AND j > 25",
        )
        .await;
        let want: Vec<f64> = (12..=17)
            .flat_map(|i| (26..33).map(move |j| cell(i, j)))
            .filter(|v| *v != 0.0)
            .collect();
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            want.len() as i64
        );
        assert_eq!(
            batches[0].column(1).as_primitive::<Float64Type>().value(0),
            want.iter().sum::<f64>()
        );
        let table = ArrayTable::open(&store, "m", None, CellListing::NonZeros).unwrap();
        let (parts, ranges) = table.plan_blocks(&[
            datafusion::prelude::col("i").between(
                datafusion::prelude::lit(12i64),
                datafusion::prelude::lit(17i64),
            ),
            datafusion::prelude::col("j").gt(datafusion::prelude::lit(25i64)),
        ]);
        let mut keys: Vec<BlockKey> = parts.into_iter().flatten().collect();
        keys.sort();
        assert_eq!(keys, vec![BlockKey::matrix(1, 2), BlockKey::matrix(1, 3)]);
        assert_eq!(ranges, vec![12..=17, 26..=32]);
    }

    #[tokio::test]
    async fn stored_cells_and_nd_arrays_list_their_coordinates() {
        let store = Store::in_memory();
        let schema = ArraySchema::new(
            vec![
                Dimension::new("x", -2, 1, 3),
                Dimension::new("y", 0, 2, 2),
                Dimension::new("z", 5, 6, 2),
            ],
            vec![Attribute::double("t")],
        )
        .unwrap();
        store
            .create_array("cube", schema.clone(), None, None)
            .unwrap();
        let mut w = store.writer("cube", WriteMode::Replace).unwrap();
        let g = schema.block_grid();
        for bx in 0..g[0] as i64 {
            for by in 0..g[1] as i64 {
                let key = BlockKey(vec![bx, by, 0]);
                let (rows, cols) = schema.block_shape(&key);
                let ylen = schema.dimensions()[1].block_extent(by as u64) as usize;
                let b = DenseBlock::from_fn(rows, cols, |r, c| {
                    let (x, y, z) = (
                        -2 + bx * 3 + (r / ylen) as i64,
                        by * 2 + (r % ylen) as i64,
                        5 + c as i64,
                    );
                    (x * 100 + y * 10 + z) as f64
                });
                w.put_block(key, Block::Dense(b)).unwrap();
            }
        }
        w.commit().unwrap();
        let ctx = SessionContext::new();
        ctx.register_table(
            "cube",
            Arc::new(ArrayTable::open(&store, "cube", None, CellListing::StoredCells).unwrap()),
        )
        .unwrap();
        let batches = query(&ctx, "SELECT x, y, z, t FROM cube ORDER BY x, y, z").await;
        let mut n = 0;
        for b in &batches {
            for r in 0..b.num_rows() {
                let (x, y, z) = (
                    b.column(0).as_primitive::<Int64Type>().value(r),
                    b.column(1).as_primitive::<Int64Type>().value(r),
                    b.column(2).as_primitive::<Int64Type>().value(r),
                );
                assert_eq!(
                    b.column(3).as_primitive::<Float64Type>().value(r),
                    (x * 100 + y * 10 + z) as f64
                );
                n += 1;
            }
        }
        assert_eq!(n, 4 * 3 * 2, "every cell, including x*100+y*10+z == 0 ones");
    }
}
