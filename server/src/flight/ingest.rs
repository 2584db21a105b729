//! Arrow data a client sends with DoPut: parameter batches, and bulk ingest
//! (`CommandStatementIngest`, what ADBC's `adbc_ingest` sends) into a table or, as
//! cells `(i, j, v)`, into an array. Ingest streams the batches into the target's
//! insert, as `INSERT INTO target SELECT ...` would; nothing is gathered in memory
//! except to replace a table, which is swapped in whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{Column, Constraints, ScalarValue, TableReference, plan_err};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, cast};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tessera_planner::{
    DEFAULT_CATALOG, DEFAULT_SCHEMA, ErrorKind, NewTable, TesseraCatalog, tessera_error,
};
use tonic::Status;

use super::status;
use crate::Session;
use crate::edge::Interrupt;

type BatchStream = std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// A client's Arrow data that cannot be read is its mistake.
fn unreadable(e: FlightError) -> DataFusionError {
    match e {
        FlightError::Tonic(status) => DataFusionError::Execution(format!(
            "reading the client's data failed: {}",
            status.message()
        )),
        other => DataFusionError::Plan(format!("cannot read the Arrow data sent: {other}")),
    }
}

/// The first failure of a DoPut's request stream itself (its client reset it, a message
/// over `max_message_size`): the call's answer, whatever the load made of it.
#[derive(Clone, Default)]
struct StreamFailure(Arc<Mutex<Option<Status>>>);

impl StreamFailure {
    fn record(&self, status: &Status) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(status.clone());
        }
    }

    /// The status of a failed load: the stream's own failure if there was one.
    fn answer(&self, error: &DataFusionError) -> Status {
        let recorded = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        recorded.unwrap_or_else(|| status(error))
    }
}

/// Decodes a DoPut's Flight data: the schema, then record batches. Messages without
/// an IPC header (the first one may carry only the descriptor) are skipped.
async fn decode(
    stream: PeekableFlightDataStream,
    failure: StreamFailure,
) -> Result<(Option<SchemaRef>, BatchStream)> {
    let data = stream
        .try_filter(|d| futures::future::ready(!d.data_header.is_empty()))
        .map_err(move |s| {
            failure.record(&s);
            FlightError::Tonic(Box::new(s))
        });
    let mut decoder = FlightDataDecoder::new(data);
    let schema = loop {
        match decoder.next().await {
            None => return Ok((None, Box::pin(futures::stream::empty()))),
            Some(Err(e)) => return Err(unreadable(e)),
            Some(Ok(message)) => match message.payload {
                DecodedPayload::Schema(schema) => break schema,
                DecodedPayload::None => continue,
                DecodedPayload::RecordBatch(_) => {
                    return plan_err!("Arrow data sent without a schema first");
                }
            },
        }
    };
    let batches = decoder.filter_map(|message| {
        futures::future::ready(match message {
            Ok(m) => match m.payload {
                DecodedPayload::RecordBatch(batch) => Some(Ok(batch)),
                _ => None,
            },
            Err(e) => Some(Err(unreadable(e))),
        })
    });
    Ok((Some(schema), Box::pin(batches)))
}

/// Every batch of a DoPut (for parameters, which are small).
pub(crate) async fn read_batches(
    stream: PeekableFlightDataStream,
) -> Result<(Option<SchemaRef>, Vec<RecordBatch>), Status> {
    let failure = StreamFailure::default();
    let (schema, batches) = decode(stream, failure.clone())
        .await
        .map_err(|e| failure.answer(&e))?;
    let batches = batches
        .try_collect()
        .await
        .map_err(|e| failure.answer(&e))?;
    Ok((schema, batches))
}

/// Runs a `CommandStatementIngest`: the table is created, appended to or replaced as
/// its options say; an array can only be appended to. Returns the rows written.
pub(crate) async fn ingest(
    session: &Session,
    catalog: &Arc<TesseraCatalog>,
    command: CommandStatementIngest,
    stream: PeekableFlightDataStream,
    interrupt: Interrupt,
) -> Result<i64, Status> {
    // A write like any other: cached plans of other statements must not outlive it.
    let _writing = session.begin_write();
    let failure = StreamFailure::default();
    let run = async {
        let target = target_name(&command)?;
        let (schema, batches) = decode(stream, failure.clone()).await?;
        let Some(schema) = schema else {
            return plan_err!("ingest into '{target}': no Arrow data was sent");
        };
        let options = command.table_definition_options.unwrap_or_default();
        let exists = catalog.kind_of(&target);
        let written = match exists {
            Some(kind) => match options.if_exists() {
                TableExistsOption::Append => append(session, &target, schema, batches).await?,
                TableExistsOption::Replace if kind == "table" => {
                    replace(catalog, &target, schema, batches).await?
                }
                TableExistsOption::Replace => {
                    return plan_err!(
                        "ingest cannot replace {kind} '{target}'; drop it first or append"
                    );
                }
                TableExistsOption::Fail | TableExistsOption::Unspecified => {
                    return Err(tessera_error(
                        ErrorKind::DuplicateTable,
                        format!("{kind} '{target}' already exists"),
                    ));
                }
            },
            None => match options.if_not_exist() {
                TableNotExistOption::Create => {
                    create(session, catalog, &target, schema, batches).await?
                }
                TableNotExistOption::Fail | TableNotExistOption::Unspecified => {
                    return Err(tessera_error(
                        ErrorKind::UndefinedTable,
                        format!(
                            "table '{target}' not found (ingest does not create it unless asked to)"
                        ),
                    ));
                }
            },
        };
        Ok(i64::try_from(written).unwrap_or(i64::MAX))
    };
    interrupt.run(run).await.map_err(|e| failure.answer(&e))
}

/// The target's name; only Tessera's one catalog and schema hold tables.
fn target_name(command: &CommandStatementIngest) -> Result<String> {
    if command.temporary {
        return Err(tessera_error(
            ErrorKind::FeatureNotSupported,
            "temporary tables are not supported",
        ));
    }
    if command.transaction_id.is_some() {
        return Err(tessera_error(
            ErrorKind::FeatureNotSupported,
            "transactions are not supported",
        ));
    }
    if let Some(catalog) = command.catalog.as_deref().filter(|c| !c.is_empty())
        && catalog != DEFAULT_CATALOG
    {
        return plan_err!(
            "catalog '{catalog}' does not exist (the database is '{DEFAULT_CATALOG}')"
        );
    }
    if let Some(schema) = command.schema.as_deref().filter(|s| !s.is_empty())
        && schema != DEFAULT_SCHEMA
    {
        return plan_err!("schema '{schema}' does not exist (tables live in '{DEFAULT_SCHEMA}')");
    }
    if command.table.is_empty() {
        return plan_err!("ingest needs a table name");
    }
    Ok(command.table.clone())
}

/// Appends the batches to a table or array through its insert, matching columns by
/// name (or, when the names differ, by position) and casting to the target's types.
async fn append(
    session: &Session,
    target: &str,
    schema: SchemaRef,
    batches: BatchStream,
) -> Result<u64> {
    let ctx = session.context();
    let table = TableReference::bare(target);
    let target_schema = ctx.table_provider(table.clone()).await?.schema();
    let source = StreamingTable::try_new(
        schema.clone(),
        vec![Arc::new(OnePass::new(schema.clone(), batches))],
    )?;
    let projection = conform(&schema, &target_schema, target)?;
    let result = ctx
        .read_table(Arc::new(source))?
        .select(projection)?
        .write_table(&table.to_quoted_string(), DataFrameWriteOptions::new())
        .await?;
    Ok(result
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .map(|c| c.iter().flatten().sum::<u64>())
        .sum())
}

/// Creates a table with the data's columns and streams the data in; a load that
/// fails, or whose call is dropped (hyper drops a call its client reset), drops the
/// table again.
async fn create(
    session: &Session,
    catalog: &Arc<TesseraCatalog>,
    target: &str,
    schema: SchemaRef,
    batches: BatchStream,
) -> Result<u64> {
    catalog
        .create_table(new_table(target, &schema, Vec::new(), false)?)
        .await?;
    let created = UnfinishedTable {
        catalog,
        name: target,
        finished: false,
    };
    let written = append(session, target, schema, batches).await?;
    created.finish();
    Ok(written)
}

/// A table created for a load, dropped when this goes out of scope unfinished.
struct UnfinishedTable<'a> {
    catalog: &'a TesseraCatalog,
    name: &'a str,
    finished: bool,
}

impl UnfinishedTable<'_> {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for UnfinishedTable<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = self.catalog.drop_table(self.name) {
            tracing::warn!(table = self.name, error = %e, "dropping a table whose ingest failed");
        }
    }
}

/// Replaces a table with the data, in one swap.
async fn replace(
    catalog: &Arc<TesseraCatalog>,
    target: &str,
    schema: SchemaRef,
    batches: BatchStream,
) -> Result<u64> {
    let batches: Vec<RecordBatch> = batches.try_collect().await?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    catalog
        .create_table(new_table(target, &schema, batches, true)?)
        .await?;
    Ok(rows)
}

/// A new table with the data's columns, every one nullable.
fn new_table(
    name: &str,
    schema: &Schema,
    batches: Vec<RecordBatch>,
    replace: bool,
) -> Result<NewTable> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batches = batches
        .into_iter()
        .map(|b| b.with_schema(schema.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(NewTable {
        name: name.to_string(),
        schema,
        batches: vec![batches],
        constraints: Constraints::default(),
        defaults: HashMap::new(),
        replace,
    })
}

/// The expressions that turn the data's columns into the target's.
fn conform(source: &Schema, target: &Schema, name: &str) -> Result<Vec<Expr>> {
    let by_name = source
        .fields()
        .iter()
        .all(|f| target.field_with_name(f.name()).is_ok());
    if !by_name && source.fields().len() != target.fields().len() {
        let sent: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
        let wanted: Vec<&str> = target.fields().iter().map(|f| f.name().as_str()).collect();
        return plan_err!(
            "the data's columns ({}) do not match '{name}' ({}) by name or by count",
            sent.join(", "),
            wanted.join(", ")
        );
    }
    target
        .fields()
        .iter()
        .enumerate()
        .map(|(n, field)| {
            let column = if by_name {
                source
                    .field_with_name(field.name())
                    .ok()
                    .map(|f| f.name().clone())
            } else {
                Some(source.field(n).name().clone())
            };
            let value = match column {
                Some(c) => Expr::Column(Column::new_unqualified(c)),
                None if field.is_nullable() => Expr::Literal(ScalarValue::Null, None),
                None => {
                    return plan_err!(
                        "the data has no column '{}', which '{name}' needs",
                        field.name()
                    );
                }
            };
            Ok(cast(value, field.data_type().clone()).alias(field.name()))
        })
        .collect()
}

/// The batches of an ingest as the one partition of a scan, read once.
struct OnePass {
    schema: SchemaRef,
    batches: Mutex<Option<BatchStream>>,
}

impl OnePass {
    fn new(schema: SchemaRef, batches: BatchStream) -> OnePass {
        OnePass {
            schema,
            batches: Mutex::new(Some(batches)),
        }
    }
}

impl std::fmt::Debug for OnePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnePass").finish_non_exhaustive()
    }
}

impl PartitionStream for OnePass {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let schema = self.schema.clone();
        match taken {
            Some(batches) => Box::pin(RecordBatchStreamAdapter::new(schema, batches)),
            None => Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "the ingested data can be read only once".into(),
                    ))
                }),
            )),
        }
    }
}
