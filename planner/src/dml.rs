//! `UPDATE` and `DELETE` on Tessera's own relations, through DataFusion's DML hooks
//! ([`TableProvider::update`](datafusion::catalog::TableProvider::update) and
//! [`delete_from`](datafusion::catalog::TableProvider::delete_from)): DataFusion plans
//! the statement and hands the provider the `WHERE` conjuncts and the `SET`
//! assignments, each an expression over the target's own columns.
//!
//! - A stored table ([`crate::StoredTable`]) is rewritten: every row of the files the
//!   statement read is written again (changed or not, minus deleted rows) as new files,
//!   and one catalog commit swaps the old files for the new. A statement that matches
//!   no row commits nothing.
//! - An array ([`crate::ArrayTable`]) gets a new version: the matching cells, with
//!   their new values (zeros for `DELETE`), are written in update mode, so a zero
//!   removes a cell, as an `INSERT` of a zero does. `DELETE` of a cell therefore makes
//!   it absent in both block formats (a sparse block drops it; a dense block stores a
//!   zero, which the relation does not list). An `UPDATE` that assigns a dimension is
//!   refused: a cell's coordinates are its identity.
//!
//! Either way the statement commits once, after every row was computed: an error
//! midway (a failed cast, a NULL for an array cell) commits nothing, and a concurrent
//! write to the same relation makes the later commit fail with SQLSTATE 40001.
//!
//! DataFusion hands over only the conjuncts on the target table, so a statement whose
//! meaning needs more (`UPDATE ... FROM`, a subquery in `WHERE` or `SET`, `DELETE ...
//! LIMIT`) is refused before it is planned ([`check_row_changes`]), never run with a
//! weaker filter.

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, WriteOp, lit};

use crate::error::{ErrorKind, tessera_error};

/// The column of a rewrite's input that says whether the row matched `WHERE`.
pub(crate) const MATCHED: &str = "__tessera_matched";

/// What an `UPDATE` or `DELETE` does to the rows it matches.
#[derive(Debug, Clone)]
pub(crate) enum RowChange {
    /// New values for the named columns.
    Update(Vec<(String, Expr)>),
    /// The rows go.
    Delete,
}

impl RowChange {
    /// The statement, for messages: `UPDATE t` or `DELETE FROM t`.
    pub(crate) fn statement(&self, name: &str) -> String {
        match self {
            RowChange::Update(_) => format!("UPDATE {name}"),
            RowChange::Delete => format!("DELETE FROM {name}"),
        }
    }

    /// The new value of `column`, if the statement assigns it.
    pub(crate) fn assignment(&self, column: &str) -> Option<&Expr> {
        match self {
            RowChange::Update(assignments) => assignments
                .iter()
                .find(|(name, _)| name == column)
                .map(|(_, e)| e),
            RowChange::Delete => None,
        }
    }
}

/// True for the rows that `filters` (a conjunction; empty: every row) select; NULL
/// counts as false, as in `WHERE`.
pub(crate) fn matched_expr(filters: Vec<Expr>) -> Expr {
    conjunction(filters).map_or_else(|| lit(true), Expr::is_true)
}

/// Refuses an `UPDATE` / `DELETE` (anywhere in `plan`, `EXPLAIN ANALYZE` included)
/// whose rows are not selected by conditions on the target table alone: DataFusion's
/// DML hooks pass the target's own conjuncts only, so such a statement would change
/// more rows than it names.
pub(crate) fn check_row_changes(plan: &LogicalPlan) -> Result<()> {
    let mut refused = None;
    plan.apply(|node| {
        if let LogicalPlan::Dml(dml) = node
            && matches!(dml.op, WriteOp::Update | WriteOp::Delete)
        {
            let what = if dml.op == WriteOp::Update {
                "UPDATE"
            } else {
                "DELETE"
            };
            if let Some(reason) = unsupported_input(&dml.input)? {
                refused = Some(tessera_error(
                    ErrorKind::FeatureNotSupported,
                    format!(
                        "{what} of {} with {reason} is not supported",
                        dml.table_name
                    ),
                ));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    refused.map_or(Ok(()), Err)
}

/// Why the input of an `UPDATE` / `DELETE` is more than a filtered scan of its target.
fn unsupported_input(input: &LogicalPlan) -> Result<Option<&'static str>> {
    let mut reason = None;
    input.apply(|node| {
        let found = match node {
            LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::Projection(p) if p.expr.iter().any(has_subquery) => {
                Some("a subquery in SET")
            }
            LogicalPlan::Projection(_) => None,
            LogicalPlan::Filter(f) if has_subquery(&f.predicate) => Some("a subquery in WHERE"),
            LogicalPlan::Filter(_) => None,
            LogicalPlan::Limit(_) => Some("LIMIT"),
            LogicalPlan::Join(_) => Some("FROM (a join)"),
            _ => Some("this input"),
        };
        match found {
            Some(r) => {
                reason = Some(r);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    })?;
    Ok(reason)
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
        ))
    })
    .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, RecordBatch};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use tessera_storage::backend::MemoryBackend;
    use tessera_storage::{ArraySchema, Block, BlockKey, DenseBlock, Store, WriteMode};

    use super::*;
    use crate::catalog::{DEFAULT_CATALOG, DEFAULT_SCHEMA, TesseraCatalog};

    fn session(catalog: &Arc<TesseraCatalog>) -> SessionContext {
        let config = crate::la::session_config(
            SessionConfig::new()
                .with_target_partitions(3)
                .with_create_default_catalog_and_schema(false)
                .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA),
        );
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_catalog_list(catalog.catalog_list().unwrap())
            .with_default_features();
        SessionContext::new_with_state(crate::la::install(builder, catalog.store().clone()).build())
    }

    fn database() -> (Arc<TesseraCatalog>, SessionContext) {
        let store = Store::in_memory();
        let catalog =
            TesseraCatalog::open_backend(store, Arc::new(MemoryBackend::new()), "memory").unwrap();
        let ctx = session(&catalog);
        (catalog, ctx)
    }

    async fn sql(
        catalog: &Arc<TesseraCatalog>,
        ctx: &SessionContext,
        text: &str,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for statement in crate::ddl::parse(text)? {
            let stream = crate::session::execute(ctx, catalog, statement).await?;
            out = datafusion::physical_plan::common::collect(stream).await?;
        }
        Ok(out)
    }

    fn count(batches: &[RecordBatch]) -> u64 {
        batches[0].column(0).as_primitive::<UInt64Type>().value(0)
    }

    /// `(a, b)` rows of `SELECT a, b FROM t ORDER BY a`, NULL as `None`.
    async fn rows(
        catalog: &Arc<TesseraCatalog>,
        ctx: &SessionContext,
        query: &str,
    ) -> Vec<(i64, Option<f64>)> {
        let mut out = Vec::new();
        for b in sql(catalog, ctx, query).await.unwrap() {
            let a = b.column(0).as_primitive::<Int64Type>();
            let v = b.column(1).as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                out.push((a.value(r), (!v.is_null(r)).then(|| v.value(r))));
            }
        }
        out
    }

    #[tokio::test]
    async fn update_and_delete_rewrite_a_stored_table() {
        let (catalog, ctx) = database();
        sql(
            &catalog,
            &ctx,
            "CREATE TABLE t (a BIGINT NOT NULL, b DOUBLE)",
        )
        .await
        .unwrap();
        // Three INSERTs: three files, scanned in three partitions.
        for k in 0..3 {
            let values: Vec<String> = (0..10)
                .map(|r| format!("({}, {}.5)", k * 10 + r, k * 10 + r))
                .collect();
            let insert = format!("INSERT INTO t VALUES {}", values.join(", "));
            sql(&catalog, &ctx, &insert).await.unwrap();
        }
        let expected = |f: &dyn Fn(i64) -> Option<Option<f64>>| -> Vec<(i64, Option<f64>)> {
            (0..30).filter_map(|a| f(a).map(|v| (a, v))).collect()
        };
        let all = "SELECT a, b FROM t ORDER BY a";

        let n = count(
            &sql(&catalog, &ctx, "UPDATE t SET b = b * 2 WHERE a < 10")
                .await
                .unwrap(),
        );
        assert_eq!(n, 10);
        let doubled = |a: i64| {
            let b = a as f64 + 0.5;
            Some(Some(if a < 10 { 2.0 * b } else { b }))
        };
        assert_eq!(rows(&catalog, &ctx, all).await, expected(&doubled));

        let n = count(
            &sql(&catalog, &ctx, "DELETE FROM t WHERE a % 3 = 0 OR a > 27")
                .await
                .unwrap(),
        );
        assert_eq!(n, 12);
        let deleted = |a: i64| (a % 3 != 0 && a <= 27).then(|| doubled(a).unwrap());
        assert_eq!(rows(&catalog, &ctx, all).await, expected(&deleted));

        // Nothing matches: nothing is committed, the count is 0.
        let n = count(
            &sql(&catalog, &ctx, "DELETE FROM t WHERE a > 100")
                .await
                .unwrap(),
        );
        assert_eq!(n, 0);

        // A failure midway (NULL into NOT NULL, a bad cast) changes nothing.
        for bad in [
            "UPDATE t SET a = NULL WHERE a = 20",
            "UPDATE t SET b = CAST('x' || CAST(a AS VARCHAR) AS DOUBLE) WHERE a > 15",
        ] {
            assert!(sql(&catalog, &ctx, bad).await.is_err(), "{bad}");
            assert_eq!(rows(&catalog, &ctx, all).await, expected(&deleted), "{bad}");
        }
        // A division by zero on rows the statement does not touch is not evaluated.
        let n = count(
            &sql(
                &catalog,
                &ctx,
                "UPDATE t SET b = 1 / (a - 1) WHERE a > 1 AND b IS NOT NULL",
            )
            .await
            .unwrap(),
        );
        assert_eq!(n, 17);
        // NULLs: a predicate that is NULL does not match.
        let n = count(
            &sql(&catalog, &ctx, "UPDATE t SET b = NULL WHERE a = 2")
                .await
                .unwrap(),
        );
        assert_eq!(n, 1);
        // Integer division: b is 1 for a = 2 (now NULL), 0 above; a = 1 kept its 3.0.
        let n = count(
            &sql(&catalog, &ctx, "DELETE FROM t WHERE b > 0")
                .await
                .unwrap(),
        );
        assert_eq!(n, 1);
        let n = count(
            &sql(&catalog, &ctx, "DELETE FROM t WHERE b = 0")
                .await
                .unwrap(),
        );
        assert_eq!(n, 16);
        assert_eq!(rows(&catalog, &ctx, all).await, vec![(2, None)]);
        let n = count(&sql(&catalog, &ctx, "DELETE FROM t").await.unwrap());
        assert_eq!(n, 1);
        assert!(rows(&catalog, &ctx, all).await.is_empty());
    }

    /// Stores a dense `rows x cols` matrix `m` of `i * 10 + j + 1` in 4 x 4 blocks.
    fn put_matrix(store: &Store, rows: u64, cols: u64) {
        let schema = ArraySchema::matrix(rows, cols, 4, 4).unwrap();
        store.create_array("m", schema, None, None).unwrap();
        let mut w = store.writer("m", WriteMode::Replace).unwrap();
        for bi in 0..rows.div_ceil(4) {
            for bj in 0..cols.div_ceil(4) {
                let (r, c) = (4.min(rows - bi * 4), 4.min(cols - bj * 4));
                let d = DenseBlock::from_fn(r as usize, c as usize, |i, j| {
                    ((bi * 4 + i as u64) * 10 + bj * 4 + j as u64 + 1) as f64
                });
                w.put_block(BlockKey::matrix(bi as i64, bj as i64), Block::Dense(d))
                    .unwrap();
            }
        }
        w.commit().unwrap();
    }

    async fn cells(catalog: &Arc<TesseraCatalog>, ctx: &SessionContext) -> Vec<(i64, i64, f64)> {
        let mut out = Vec::new();
        for b in sql(catalog, ctx, "SELECT i, j, v FROM m ORDER BY i, j")
            .await
            .unwrap()
        {
            let (i, j) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Int64Type>(),
            );
            let v = b.column(2).as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                out.push((i.value(r), j.value(r), v.value(r)));
            }
        }
        out
    }

    #[tokio::test]
    async fn update_and_delete_write_a_new_array_version() {
        let (catalog, ctx) = database();
        put_matrix(catalog.store(), 10, 7);
        let expected = |f: &dyn Fn(i64, i64, f64) -> f64| -> Vec<(i64, i64, f64)> {
            let mut out = Vec::new();
            for i in 0..10 {
                for j in 0..7 {
                    let v = f(i, j, (i * 10 + j + 1) as f64);
                    if v != 0.0 {
                        out.push((i, j, v));
                    }
                }
            }
            out
        };
        let n = count(
            &sql(&catalog, &ctx, "UPDATE m SET v = v * 2 WHERE i < 5")
                .await
                .unwrap(),
        );
        assert_eq!(n, 35);
        let step1 = |i: i64, _: i64, v: f64| if i < 5 { 2.0 * v } else { v };
        assert_eq!(cells(&catalog, &ctx).await, expected(&step1));

        let n = count(
            &sql(&catalog, &ctx, "DELETE FROM m WHERE j = 3")
                .await
                .unwrap(),
        );
        assert_eq!(n, 10);
        let step2 = |i: i64, j: i64, v: f64| if j == 3 { 0.0 } else { step1(i, j, v) };
        assert_eq!(cells(&catalog, &ctx).await, expected(&step2));
        // Deleted cells are absent, so they are not updated again.
        let n = count(
            &sql(&catalog, &ctx, "UPDATE m SET v = -1 WHERE j = 3")
                .await
                .unwrap(),
        );
        assert_eq!(n, 0);
        let version = catalog.store().array("m").unwrap().current().version;

        // Coordinates cannot change; a NULL or a failing value changes nothing.
        let e = sql(&catalog, &ctx, "UPDATE m SET i = i + 1")
            .await
            .unwrap_err();
        let t = crate::TesseraError::find(&e).unwrap();
        assert_eq!(t.kind(), ErrorKind::FeatureNotSupported);
        assert!(t.message().contains("dimension i"), "{}", t.message());
        for bad in [
            "UPDATE m SET v = NULL WHERE i = 9",
            "UPDATE m SET v = CAST(CAST(i AS VARCHAR) || 'x' AS DOUBLE) WHERE i > 7",
            "UPDATE \"m@1\" SET v = 0",
        ] {
            assert!(sql(&catalog, &ctx, bad).await.is_err(), "{bad}");
        }
        assert_eq!(cells(&catalog, &ctx).await, expected(&step2));
        assert_eq!(
            catalog.store().array("m").unwrap().current().version,
            version
        );
        let n = count(&sql(&catalog, &ctx, "DELETE FROM m").await.unwrap());
        assert_eq!(n, 60);
        assert!(cells(&catalog, &ctx).await.is_empty());
    }

    async fn plan(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a INT, b INT)").await.unwrap();
        ctx.sql("CREATE TABLE u (a INT)").await.unwrap();
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    #[tokio::test]
    async fn filtered_changes_pass_and_wider_ones_are_refused() {
        for ok in [
            "UPDATE t SET b = b * 2 WHERE a < 10",
            "UPDATE t SET b = 1",
            "DELETE FROM t WHERE a = 3 AND b IS NULL",
            "DELETE FROM t",
            "EXPLAIN UPDATE t SET b = 0 WHERE a IN (1, 2)",
        ] {
            check_row_changes(&plan(ok).await).unwrap();
        }
        for (refused, reason) in [
            (
                "DELETE FROM t WHERE a IN (SELECT a FROM u)",
                "subquery in WHERE",
            ),
            (
                "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u)",
                "subquery in WHERE",
            ),
            ("UPDATE t SET b = (SELECT max(a) FROM u)", "subquery in SET"),
        ] {
            let e = check_row_changes(&plan(refused).await).unwrap_err();
            let t = crate::TesseraError::find(&e).unwrap();
            assert_eq!(t.kind(), ErrorKind::FeatureNotSupported, "{refused}");
            assert!(t.message().contains(reason), "{refused}: {}", t.message());
        }
    }
}
