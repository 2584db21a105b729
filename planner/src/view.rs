//! Views planned again at every query. A view's query is kept as SQL and planned when
//! the view is scanned, so it reads the tables and arrays as they are then: a view over
//! an array sees the array's current version, not the version current when the view was
//! created (DataFusion's `ViewTable` would keep the table providers it resolved then).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, Result, internal_err, plan_err};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType, cast, col};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

/// A view: its statement, its query and the columns it had when it was created.
#[derive(Debug)]
pub struct SqlView {
    definition: String,
    query: String,
    schema: SchemaRef,
}

impl SqlView {
    /// The view `definition` (a `CREATE VIEW` statement) whose query DataFusion planned
    /// as `input`.
    pub fn new(definition: &str, input: &LogicalPlan) -> Result<SqlView> {
        let mut statements = DFParser::parse_sql_with_dialect(definition, &PostgreSqlDialect {})?;
        let query = match statements.pop_front() {
            Some(DFStatement::Statement(statement)) => match *statement {
                SqlStatement::CreateView(view) => view.query.to_string(),
                other => return internal_err!("not a CREATE VIEW statement: {other}"),
            },
            _ => return internal_err!("not a CREATE VIEW statement: {definition}"),
        };
        Ok(SqlView {
            definition: definition.to_string(),
            query,
            schema: Arc::new(input.schema().as_arrow().clone()),
        })
    }
}

#[async_trait]
impl TableProvider for SqlView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_table_definition(&self) -> Option<&str> {
        Some(&self.definition)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("views are planned in a DataFusion SessionState");
        };
        let plan = state.create_logical_plan(&self.query).await?;
        let columns = plan.schema().columns();
        if columns.len() != self.schema.fields().len() {
            return plan_err!(
                "the view's query now returns {} columns; the view was created with {}",
                columns.len(),
                self.schema.fields().len()
            );
        }
        // The view's own column names and types, whatever the tables became.
        let named: Vec<Expr> = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| cast(col(c), f.data_type().clone()).alias(f.name()))
            .collect();
        let mut builder = LogicalPlanBuilder::from(plan).project(named)?;
        if let Some(projection) = projection {
            builder = builder.project(
                projection
                    .iter()
                    .map(|&i| col(Column::from_name(self.schema.field(i).name()))),
            )?;
        }
        if let Some(limit) = limit {
            builder = builder.limit(0, Some(limit))?;
        }
        state.create_physical_plan(&builder.build()?).await
    }
}
