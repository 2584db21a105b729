//! Sessions: one DataFusion `SessionContext` each (its own configuration and `SET`
//! state) over the database's shared catalog, store and memory pool.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use tessera_planner::{DEFAULT_CATALOG, DEFAULT_SCHEMA, ddl, la, session};

use crate::database::Inner;

/// A session of a [`Database`](crate::Database): the same arrays and tables, its own
/// settings (`SET datafusion.execution.batch_size = ...`, `SET tessera.* = ...`).
/// Cloning shares the session (and its settings).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    ctx: SessionContext,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.ctx.session_id())
            .finish()
    }
}

impl Session {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<Session> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA);
        if let Some(n) = inner.options.target_partitions {
            config = config.with_target_partitions(n.max(1));
        }
        // Tessera's settings first, then the builder: the linear-algebra extension
        // installs its functions, rewrites and physical planner.
        let config = la::session_config(config);
        let builder = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(inner.runtime.clone())
            .with_catalog_list(inner.catalogs.clone())
            .with_default_features();
        let state = la::install(builder, inner.store.clone()).build();
        let ctx = SessionContext::new_with_state(state);
        crate::pg_catalog::install(&ctx, inner.catalog.clone())?;
        Ok(Session { ctx, inner })
    }

    /// Runs a script of one or more statements (separated by `;`) and returns the
    /// result of the last one; an empty script returns no batches. Statements run in
    /// order, each to completion; the first error stops the script and is returned.
    pub async fn sql(&self, text: &str) -> Result<Vec<RecordBatch>> {
        collect(self.sql_stream(text).await?).await
    }

    /// Like [`Session::sql`], but streams the last statement's result: the statements
    /// before it have completed when this returns; the last runs as the stream is read.
    pub async fn sql_stream(&self, text: &str) -> Result<SendableRecordBatchStream> {
        let statements = ddl::parse(text)?;
        self.restore().await;
        let count = statements.len();
        let mut last = None;
        for (n, statement) in statements.into_iter().enumerate() {
            let stream = session::execute(&self.ctx, &self.inner.catalog, statement).await?;
            if n + 1 == count {
                last = Some(stream);
            } else {
                collect(stream).await?;
            }
        }
        Ok(last.unwrap_or_else(|| {
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                futures::stream::empty(),
            ))
        }))
    }

    /// The DataFusion context this session plans in (for embedders and the protocol
    /// servers; SQL should go through [`Session::sql`] so Tessera's statements work).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans the stored external tables and views once per database, in the first
    /// session that runs a statement.
    async fn restore(&self) {
        let (ctx, catalog) = (&self.ctx, &self.inner.catalog);
        self.inner
            .restored
            .get_or_init(|| session::restore_catalog(ctx, catalog))
            .await;
    }
}
