//! Arrow Flight SQL end to end: an in-process server (Flight on 127.0.0.1:0 beside
//! pgwire) driven by arrow-flight's `FlightSqlServiceClient`, and by raw gRPC and raw
//! sockets for malformed input.

use std::io::Write;
use std::net::TcpStream as StdTcpStream;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, Any, CommandGetDbSchemas, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, DoPutUpdateResult, ProstMessageExt, SqlInfo, TableDefinitionOptions,
    TableExistsOption, TableNotExistOption,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightInfo, HandshakeRequest, IpcMessage, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, AsArray, BinaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    UInt32Array,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, UInt64Type};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tessera_server::config::{AuthMethod, ServerConfig, UserConfig};
use tessera_server::{SQLSTATE_METADATA_KEY, Server, ServerHandle};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

pub(crate) struct TestServer {
    pub(crate) server: ServerHandle,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.server.flight_addr().expect("flight is served")
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> FlightSqlServiceClient<Channel> {
        FlightSqlServiceClient::new(self.channel().await)
    }
}

pub(crate) async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    };
    edit(&mut config);
    let server = Server::builder().config(config).build().await.unwrap();
    TestServer { server, _dir: dir }
}

pub(crate) async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Fetches every endpoint of a FlightInfo.
async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> RecordBatch {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let schema = Arc::new(info.clone().try_decode_schema().unwrap());
    let batches = fetch(client, info).await;
    concat_batches(&schema, &batches).unwrap()
}

/// The gRPC status behind a client error.
fn status(e: &FlightError) -> &tonic::Status {
    match e {
        FlightError::Tonic(s) => s,
        other => panic!("not a gRPC status: {other}"),
    }
}

fn sqlstate(s: &tonic::Status) -> &str {
    s.metadata()
        .get(SQLSTATE_METADATA_KEY)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("none")
}

pub(crate) fn f64s(batch: &RecordBatch, column: usize) -> Vec<f64> {
    let c = batch.column(column);
    let c = datafusion::arrow::compute::cast(c, &DataType::Float64).unwrap();
    c.as_primitive::<Float64Type>().values().to_vec()
}

pub(crate) fn i64s(batch: &RecordBatch, column: usize) -> Vec<i64> {
    let c = batch.column(column);
    let c = datafusion::arrow::compute::cast(c, &DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().values().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_query_matmul_matches_hand_worked_product() {
    let server = start().await;
    let mut client = server.client().await;
    // a = [[1 2 0] [0 1 3]], b = [[1 0] [2 1] [0 4]]; a b = [[5 2] [2 13]].
    let setup = "CREATE MATRIX a (2, 3); CREATE MATRIX b (3, 2);
        INSERT INTO a VALUES (0, 0, 1.0), (0, 1, 2.0), (1, 1, 1.0), (1, 2, 3.0);
        INSERT INTO b VALUES (0, 0, 1.0), (1, 0, 2.0), (1, 1, 1.0), (2, 1, 4.0)";
    assert_eq!(client.execute_update(setup.into(), None).await.unwrap(), 4);
    let product = query(
        &mut client,
        "SELECT i, j, v FROM matmul(a, b) ORDER BY i, j",
    )
    .await;
    assert_eq!(i64s(&product, 0), [0, 0, 1, 1]);
    assert_eq!(i64s(&product, 1), [0, 1, 0, 1]);
    assert_eq!(f64s(&product, 2), [5.0, 2.0, 2.0, 13.0]);
    // The in-process database sees the same arrays.
    let local = server
        .server
        .database()
        .sql("SELECT sum(v) FROM matmul(a, b)")
        .await
        .unwrap();
    assert_eq!(f64s(&local[0], 0), [22.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_large_result_streams_in_many_batches() {
    let server = start().await;
    let mut client = server.client().await;
    // 300 x 400 dense cells: 120,000 rows, well past one batch and one 2 MiB message.
    client
        .execute_update(
            "CREATE MATRIX big AS SELECT * FROM rand(300, 400)".into(),
            None,
        )
        .await
        .unwrap();
    let info = client
        .execute("SELECT i, j, v FROM big".into(), None)
        .await
        .unwrap();
    let batches = fetch(&mut client, info).await;
    assert!(batches.len() > 1, "{} batches", batches.len());
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 120_000);
    let sum_i: i64 = batches.iter().flat_map(|b| i64s(b, 0)).sum();
    // Each of 300 rows appears 400 times: 400 * (0 + ... + 299).
    assert_eq!(sum_i, 400 * 299 * 300 / 2);
}

/// DoPutUpdate of UPDATE and DELETE reports the rows changed, for a table and for a
/// matrix (hand-worked: a = [[1 2 0] [0 1 3]]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_update_and_delete_report_their_row_counts() {
    let server = start().await;
    let mut client = server.client().await;
    let c = &mut client;
    async fn update(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> i64 {
        c.execute_update(sql.into(), None).await.unwrap()
    }
    update(c, "CREATE TABLE t (a INT, b VARCHAR)").await;
    update(c, "INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'x')").await;
    assert_eq!(update(c, "UPDATE t SET b = 'z' WHERE b = 'x'").await, 2);
    assert_eq!(update(c, "DELETE FROM t WHERE a >= 2").await, 2);
    update(c, "CREATE MATRIX a (2, 3)").await;
    let cells = "INSERT INTO a VALUES (0, 0, 1.0), (0, 1, 2.0), (1, 1, 1.0), (1, 2, 3.0)";
    update(c, cells).await;
    assert_eq!(update(c, "UPDATE a SET v = v * 10 WHERE j >= 1").await, 3);
    assert_eq!(update(c, "DELETE FROM a WHERE i = 0").await, 2);
    let rest = query(&mut client, "SELECT i, j, v FROM a ORDER BY i, j").await;
    assert_eq!(i64s(&rest, 0), [1, 1]);
    assert_eq!(i64s(&rest, 1), [1, 2]);
    assert_eq!(f64s(&rest, 2), [10.0, 30.0]);
    let rows = query(&mut client, "SELECT a, b FROM t").await;
    assert_eq!(i64s(&rows, 0), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_updates_and_ddl_through_both_statement_paths() {
    let server = start().await;
    let mut client = server.client().await;
    // DDL reports no count (-1); DML its rows.
    let created = client
        .execute_update("CREATE TABLE t (a INT, b VARCHAR)".into(), None)
        .await
        .unwrap();
    assert_eq!(created, -1);
    let inserted = client
        .execute_update("INSERT INTO t VALUES (1, 'x'), (2, 'y')".into(), None)
        .await
        .unwrap();
    assert_eq!(inserted, 2);
    // DDL through the query path runs at GetFlightInfo, before any DoGet.
    let info = client
        .execute("CREATE MATRIX m (2, 2)".into(), None)
        .await
        .unwrap();
    assert!(
        info.clone()
            .try_decode_schema()
            .unwrap()
            .fields()
            .is_empty()
    );
    let info2 = client
        .execute("INSERT INTO m VALUES (0, 0, 1.5), (1, 1, 2.5)".into(), None)
        .await
        .unwrap();
    let seen = server
        .server
        .database()
        .sql("SELECT count(*) FROM m")
        .await
        .unwrap();
    assert_eq!(i64s(&seen[0], 0), [2], "the INSERT ran before DoGet");
    let counts = fetch(&mut client, info2).await;
    assert_eq!(counts[0].column(0).as_primitive::<UInt64Type>().value(0), 2);
    assert!(
        fetch(&mut client, info)
            .await
            .iter()
            .all(|b| b.num_rows() == 0)
    );
    let t = query(&mut client, "SELECT a, b FROM t ORDER BY a").await;
    assert_eq!(i64s(&t, 0), [1, 2]);
    assert_eq!(t.column(1).as_string_view().value(1), "y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_prepared_statements_with_parameters() {
    let server = start().await;
    let mut client = server.client().await;
    client
        .execute_update(
            "CREATE TABLE t (a BIGINT, b DOUBLE); INSERT INTO t VALUES (1, 0.5), (2, 1.5), (3, 2.5)"
                .into(),
            None,
        )
        .await
        .unwrap();

    // A query with a parameter.
    let mut prepared = client
        .prepare("SELECT a, b FROM t WHERE a >= $1 ORDER BY a".into(), None)
        .await
        .unwrap();
    assert_eq!(prepared.parameter_schema().unwrap().fields().len(), 1);
    assert_eq!(prepared.dataset_schema().unwrap().fields().len(), 2);
    let param = Schema::new(vec![Field::new("$1", DataType::Int64, false)]);
    let bind = |v: i64| {
        RecordBatch::try_new(
            Arc::new(param.clone()),
            vec![Arc::new(Int64Array::from(vec![v]))],
        )
        .unwrap()
    };
    prepared.set_parameters(bind(2)).unwrap();
    let info = prepared.execute().await.unwrap();
    let rows = fetch(&mut client, info).await;
    assert_eq!(i64s(&rows[0], 0), [2, 3]);
    assert_eq!(f64s(&rows[0], 1), [1.5, 2.5]);
    // Rebinding runs it again with the new value.
    prepared.set_parameters(bind(3)).unwrap();
    let rows = fetch(&mut client, prepared.execute().await.unwrap()).await;
    assert_eq!(i64s(&rows[0], 0), [3]);
    prepared.close().await.unwrap();

    // An update bound with three rows first (the Rust client's way), then executed.
    let mut insert = client
        .prepare("INSERT INTO t VALUES ($1, $2)".into(), None)
        .await
        .unwrap();
    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Int64, false),
            Field::new("$2", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![10, 11, 12])),
            Arc::new(Float64Array::from(vec![10.0, 11.0, 12.0])),
        ],
    )
    .unwrap();
    insert.set_parameters(rows.clone()).unwrap();
    assert_eq!(insert.execute_update().await.unwrap(), 3);

    // The batch form ADBC's executemany sends: the parameter rows in the DoPut of
    // CommandPreparedStatementUpdate itself.
    let raw = raw_prepare(&server, "INSERT INTO t VALUES (?, ?)").await;
    let command = CommandPreparedStatementUpdate {
        prepared_statement_handle: raw,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let data: Vec<FlightData> = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(rows)]))
        .try_collect()
        .await
        .unwrap();
    let mut put = client.do_put(futures::stream::iter(data)).await.unwrap();
    let result = put.message().await.unwrap().unwrap();
    let count = DoPutUpdateResult::decode(&*result.app_metadata).unwrap();
    assert_eq!(count.record_count, 3);

    let total = query(&mut client, "SELECT count(*), sum(a) FROM t").await;
    assert_eq!(i64s(&total, 0), [9]);
    assert_eq!(i64s(&total, 1), [1 + 2 + 3 + 2 * (10 + 11 + 12)]);
}

/// DoPut of `batches` under `command` on a raw client, and the first answer.
async fn raw_put(
    raw: &mut FlightServiceClient<Channel>,
    command: impl ProstMessageExt,
    batches: Vec<RecordBatch>,
) -> Result<arrow_flight::PutResult, tonic::Status> {
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let messages = if batches.is_empty() {
        vec![FlightData::new().with_descriptor(descriptor)]
    } else {
        put_messages(descriptor, batches).await
    };
    let mut answers = raw
        .do_put(futures::stream::iter(messages))
        .await?
        .into_inner();
    Ok(answers.message().await?.unwrap_or_default())
}

/// The update count a DoPut answered with.
fn record_count(answer: &arrow_flight::PutResult) -> i64 {
    DoPutUpdateResult::decode(&*answer.app_metadata)
        .unwrap()
        .record_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_prepared_parameters_are_bound_for_one_execution() {
    let server = start().await;
    let mut client = server.client().await;
    client
        .execute_update(
            "CREATE TABLE t (a BIGINT, b DOUBLE); INSERT INTO t VALUES (1, 0.5), (2, 1.0), (3, 1.5)"
                .into(),
            None,
        )
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(server.channel().await);
    let one = |a: i64| pairs(vec![a]).project(&[0]).unwrap();

    // A query: bound, run; run again without a bind and it has no value for $1.
    let select = CommandPreparedStatementQuery {
        prepared_statement_handle: raw_prepare(&server, "SELECT a FROM t WHERE a >= $1 ORDER BY a")
            .await,
    };
    let run = |raw: &mut FlightServiceClient<Channel>| {
        let mut raw = raw.clone();
        let descriptor = FlightDescriptor::new_cmd(select.as_any().encode_to_vec());
        async move {
            raw.get_flight_info(descriptor)
                .await
                .map(|r| r.into_inner())
        }
    };
    raw_put(&mut raw, select.clone(), vec![one(2)])
        .await
        .unwrap();
    let rows = fetch(&mut client, run(&mut raw).await.unwrap()).await;
    assert_eq!(i64s(&rows[0], 0), [2, 3]);
    let e = run(&mut raw).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert_eq!(sqlstate(&e), "08P01", "{e}");
    assert!(e.message().contains("parameter $1"), "{e}");
    // Bound again, it runs with the new value.
    raw_put(&mut raw, select.clone(), vec![one(3)])
        .await
        .unwrap();
    let rows = fetch(&mut client, run(&mut raw).await.unwrap()).await;
    assert_eq!(i64s(&rows[0], 0), [3]);

    // An update: a bind, then a DoPut without data runs it with the bound row, once.
    let insert = CommandPreparedStatementUpdate {
        prepared_statement_handle: raw_prepare(&server, "INSERT INTO t VALUES ($1, $2)").await,
    };
    let bind = CommandPreparedStatementQuery {
        prepared_statement_handle: insert.prepared_statement_handle.clone(),
    };
    raw_put(&mut raw, bind.clone(), vec![pairs(vec![10])])
        .await
        .unwrap();
    let answer = raw_put(&mut raw, insert.clone(), vec![]).await.unwrap();
    assert_eq!(record_count(&answer), 1);
    let e = raw_put(&mut raw, insert.clone(), vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("parameter $1"), "{e}");
    // The empty record Go's Flight SQL client sends when nothing is bound: no values.
    let nothing = RecordBatch::new_empty(Arc::new(Schema::empty()));
    let e = raw_put(&mut raw, insert.clone(), vec![nothing.clone()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Too few columns: the first parameter without a value is named.
    raw_put(&mut raw, bind, vec![one(11)]).await.unwrap();
    let e = raw_put(&mut raw, insert.clone(), vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("parameter $2"), "{e}");
    // Rows in the update's own DoPut run once each; zero rows run it zero times.
    let answer = raw_put(&mut raw, insert.clone(), vec![pairs(vec![12, 13])])
        .await
        .unwrap();
    assert_eq!(record_count(&answer), 2);
    let answer = raw_put(&mut raw, insert, vec![pairs(vec![])])
        .await
        .unwrap();
    assert_eq!(record_count(&answer), 0);

    // A statement without parameters runs with no bind, and with Go's empty record.
    let fixed = CommandPreparedStatementUpdate {
        prepared_statement_handle: raw_prepare(&server, "INSERT INTO t VALUES (100, 50.0)").await,
    };
    let answer = raw_put(&mut raw, fixed.clone(), vec![]).await.unwrap();
    assert_eq!(record_count(&answer), 1);
    let answer = raw_put(&mut raw, fixed, vec![nothing]).await.unwrap();
    assert_eq!(record_count(&answer), 1);

    let totals = query(&mut client, "SELECT count(*), sum(a) FROM t").await;
    assert_eq!(i64s(&totals, 0), [3 + 1 + 2 + 2]);
    assert_eq!(i64s(&totals, 1), [1 + 2 + 3 + 10 + 12 + 13 + 100 + 100]);
}

/// Prepares `sql` on the anonymous (trust) client and returns its handle.
async fn raw_prepare(server: &TestServer, sql: &str) -> Bytes {
    let mut raw = FlightServiceClient::new(server.channel().await);
    let request = arrow_flight::sql::ActionCreatePreparedStatementRequest {
        query: sql.to_string(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let mut results = raw.do_action(action).await.unwrap().into_inner();
    let body = results.message().await.unwrap().unwrap().body;
    let result: arrow_flight::sql::ActionCreatePreparedStatementResult =
        Any::decode(&*body).unwrap().unpack().unwrap().unwrap();
    result.prepared_statement_handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_metadata_lists_catalogs_schemas_tables_and_info() {
    let server = start().await;
    let mut client = server.client().await;
    client
        .execute_update(
            "CREATE MATRIX m (3, 3); CREATE TABLE t (a INT); CREATE VIEW w AS SELECT a FROM t"
                .into(),
            None,
        )
        .await
        .unwrap();

    let info = client.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut client, info).await;
    let names = catalogs[0].column(0).as_string::<i32>();
    assert_eq!(names.value(0), tessera_planner::DEFAULT_CATALOG);

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("pub%".into()),
        })
        .await
        .unwrap();
    let schemas = fetch(&mut client, info).await;
    let schemas = schemas[0].column(1).as_string::<i32>();
    assert_eq!(schemas.iter().flatten().collect::<Vec<_>>(), ["public"]);

    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await;
    let tables = &tables[0];
    let names: Vec<&str> = tables
        .column(2)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    let types: Vec<&str> = tables
        .column(3)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(names, ["m", "t", "w"]);
    assert_eq!(types, ["TABLE", "TABLE", "VIEW"]);
    // The array's columns are its coordinate form.
    let schemas = tables
        .column(4)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap();
    let m = Schema::try_from(IpcMessage(Bytes::copy_from_slice(schemas.value(0)))).unwrap();
    let columns: Vec<&str> = m.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(columns, ["i", "j", "v"]);

    let info = client.get_table_types().await.unwrap();
    let types = fetch(&mut client, info).await;
    let types: Vec<&str> = types[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(types, ["SYSTEM TABLE", "TABLE", "VIEW"]);

    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerCancel,
        ])
        .await
        .unwrap();
    let sql_info = fetch(&mut client, info).await;
    let ids = sql_info[0]
        .column(0)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .unwrap();
    assert_eq!(
        ids.values(),
        &[
            SqlInfo::FlightSqlServerName as u32,
            SqlInfo::FlightSqlServerCancel as u32
        ]
    );
    let values = sql_info[0].column(1).as_union();
    let name = values.value(0);
    assert_eq!(name.as_string::<i32>().value(0), "Tessera");
}

fn ingest_command(
    table: &str,
    if_not_exist: TableNotExistOption,
    if_exists: TableExistsOption,
) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_not_exist as i32,
            if_exists: if_exists as i32,
        }),
        table: table.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_ingest_creates_appends_replaces_and_loads_arrays() {
    let server = start().await;
    let mut client = server.client().await;
    let people = |ids: Vec<i32>, names: Vec<&str>| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int32, false),
                Field::new("name", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int32Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    };
    let batches = vec![
        Ok(people(vec![1, 2], vec!["ann", "bo"])),
        Ok(people(vec![3], vec!["cy"])),
    ];
    let create = ingest_command(
        "people",
        TableNotExistOption::Create,
        TableExistsOption::Fail,
    );
    let n = client
        .execute_ingest(create.clone(), futures::stream::iter(batches))
        .await
        .unwrap();
    assert_eq!(n, 3);
    // Creating again fails: the table exists.
    let again = client
        .execute_ingest(
            create,
            futures::stream::iter([Ok(people(vec![9], vec!["x"]))]),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&again).code(), Code::AlreadyExists, "{again}");

    let append = ingest_command(
        "people",
        TableNotExistOption::Fail,
        TableExistsOption::Append,
    );
    let n = client
        .execute_ingest(
            append,
            futures::stream::iter([Ok(people(vec![4], vec!["di"]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let all = query(&mut client, "SELECT sum(id), count(*) FROM people").await;
    assert_eq!(i64s(&all, 0), [10]);
    assert_eq!(i64s(&all, 1), [4]);

    let replace = ingest_command(
        "people",
        TableNotExistOption::Create,
        TableExistsOption::Replace,
    );
    let n = client
        .execute_ingest(
            replace,
            futures::stream::iter([Ok(people(vec![7], vec!["ed"]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let all = query(&mut client, "SELECT id, name FROM people").await;
    assert_eq!(i64s(&all, 0), [7]);

    // Into a missing table without Create: NOT_FOUND.
    let missing = ingest_command(
        "nobody",
        TableNotExistOption::Fail,
        TableExistsOption::Append,
    );
    let e = client
        .execute_ingest(
            missing,
            futures::stream::iter([Ok(people(vec![1], vec!["a"]))]),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::NotFound, "{e}");

    // An Arrow table of cells into an array: (i, j, v), ints and floats as sent.
    client
        .execute_update("CREATE MATRIX g (3, 3)".into(), None)
        .await
        .unwrap();
    let cells = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("j", DataType::Int32, false),
            Field::new("v", DataType::Float32, false),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![0, 1, 2])),
            Arc::new(Int32Array::from(vec![0, 1, 2])),
            Arc::new(datafusion::arrow::array::Float32Array::from(vec![
                2.0, 3.0, 4.0,
            ])),
        ],
    )
    .unwrap();
    let into_array = ingest_command("g", TableNotExistOption::Fail, TableExistsOption::Append);
    let n = client
        .execute_ingest(into_array.clone(), futures::stream::iter([Ok(cells)]))
        .await
        .unwrap();
    assert_eq!(n, 3);
    // The diagonal 2, 3, 4 squared: trace 4 + 9 + 16.
    let trace = query(&mut client, "SELECT sum(v) FROM matmul(g, g) WHERE i = j").await;
    assert_eq!(f64s(&trace, 0), [29.0]);
    // A cell outside the array is the data's fault, and nothing is written.
    let outside = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("j", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![0, 7])),
            Arc::new(Int64Array::from(vec![1, 7])),
            Arc::new(Float64Array::from(vec![1.0, 1.0])),
        ],
    )
    .unwrap();
    let e = client
        .execute_ingest(into_array, futures::stream::iter([Ok(outside)]))
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::InvalidArgument, "{e}");
    let count = query(&mut client, "SELECT count(*) FROM g").await;
    assert_eq!(i64s(&count, 0), [3]);
}

/// The Flight data of a DoPut: `descriptor`'s command, then `batches`.
async fn put_messages(descriptor: FlightDescriptor, batches: Vec<RecordBatch>) -> Vec<FlightData> {
    arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .try_collect()
        .await
        .unwrap()
}

/// A DoPut that sends `messages` and then neither sends more nor ends its stream: the
/// server waits for the rest. Aborting the task drops the call mid-upload, which makes
/// hyper reset the HTTP/2 stream with CANCEL.
fn unfinished_upload(channel: Channel, messages: Vec<FlightData>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut raw = FlightServiceClient::new(channel);
        let stream = futures::stream::iter(messages).chain(futures::stream::pending());
        let answer = raw.do_put(stream).await;
        panic!("an upload that never ended was answered: {answer:?}");
    })
}

/// Rows of `(a BIGINT, b DOUBLE)`.
fn pairs(a: Vec<i64>) -> RecordBatch {
    let b = a.iter().map(|&a| a as f64 / 2.0).collect::<Vec<_>>();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(a)),
            Arc::new(Float64Array::from(b)),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_cancelled_uploads_write_nothing() {
    let server = start().await;
    let mut client = server.client().await;
    let setup = "CREATE TABLE t (a BIGINT, b DOUBLE); INSERT INTO t VALUES (1, 0.5), (2, 1.0);
        CREATE TABLE u (a BIGINT, b DOUBLE); INSERT INTO u VALUES (7, 3.5);
        CREATE MATRIX m (4, 4); INSERT INTO m VALUES (0, 0, 1.0)";
    client.execute_update(setup.into(), None).await.unwrap();
    let database = server.server.database();
    let count = |table: &'static str| {
        let database = database.clone();
        async move {
            let batches = database
                .sql(&format!("SELECT count(*) FROM {table}"))
                .await?;
            Ok::<_, datafusion::error::DataFusionError>(i64s(&batches[0], 0)[0])
        }
    };

    // Four uploads that stop half-way: an ingest appending to a table, one into an
    // array, one creating a table, and the parameter rows of an executemany.
    let channel = server.channel().await;
    let ingest = |table: &str, if_not_exist, if_exists| {
        FlightDescriptor::new_cmd(
            ingest_command(table, if_not_exist, if_exists)
                .as_any()
                .encode_to_vec(),
        )
    };
    let append = ingest("t", TableNotExistOption::Fail, TableExistsOption::Append);
    let cells = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("j", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(Float64Array::from(vec![5.0, 6.0, 7.0])),
        ],
    )
    .unwrap();
    let into_array = ingest("m", TableNotExistOption::Fail, TableExistsOption::Append);
    let create = ingest(
        "fresh",
        TableNotExistOption::Create,
        TableExistsOption::Fail,
    );
    let insert = CommandPreparedStatementUpdate {
        prepared_statement_handle: raw_prepare(&server, "INSERT INTO u VALUES (?, ?)").await,
    };
    let executemany = FlightDescriptor::new_cmd(insert.as_any().encode_to_vec());
    let uploads = [
        (append, vec![pairs(vec![10, 11, 12]), pairs(vec![13])]),
        (into_array, vec![cells]),
        (executemany, vec![pairs(vec![20, 21])]),
        (create, vec![pairs(vec![30, 31])]),
    ];
    let mut calls = Vec::new();
    for (descriptor, batches) in uploads {
        let messages = put_messages(descriptor, batches).await;
        calls.push(unfinished_upload(channel.clone(), messages));
    }
    // The server has the created table once the schema arrived; the batches follow it
    // on the same connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count("fresh").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ingest never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    for call in calls {
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
    }
    // The failed create drops its table again: then the server is done with the resets.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut fresh_dropped = false;
    while std::time::Instant::now() < deadline {
        if count("fresh").await.is_err() {
            fresh_dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = (
        count("t").await.unwrap(),
        count("m").await.unwrap(),
        count("u").await.unwrap(),
        fresh_dropped,
    );
    assert_eq!(
        counts,
        (2, 1, 1, true),
        "(t rows, m cells, u rows, fresh dropped)"
    );

    // The server goes on, and the same loads sent whole are written.
    let whole = client
        .execute_ingest(
            ingest_command("t", TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter([Ok(pairs(vec![10, 11, 12])), Ok(pairs(vec![13]))]),
        )
        .await
        .unwrap();
    assert_eq!(whole, 4);
    let sums = query(&mut client, "SELECT count(*), sum(a) FROM t").await;
    assert_eq!(i64s(&sums, 0), [6]);
    assert_eq!(i64s(&sums, 1), [1 + 2 + 10 + 11 + 12 + 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_errors_map_to_grpc_statuses() {
    let server = start().await;
    let mut client = server.client().await;
    let error = |client: &mut FlightSqlServiceClient<Channel>, sql: &'static str| {
        let mut client = client.clone();
        async move { client.execute(sql.into(), None).await.unwrap_err() }
    };
    let e = error(&mut client, "SELECT * FROM nosuch").await;
    assert_eq!(status(&e).code(), Code::NotFound, "{e}");
    assert_eq!(sqlstate(status(&e)), "42P01");
    let e = error(&mut client, "SELECT nosuchfn(1)").await;
    assert_eq!(status(&e).code(), Code::NotFound, "{e}");
    let e = error(&mut client, "SELEC 1").await;
    assert_eq!(status(&e).code(), Code::InvalidArgument, "{e}");
    assert_eq!(sqlstate(status(&e)), "42601");
    client
        .execute_update("CREATE MATRIX a (2, 3)".into(), None)
        .await
        .unwrap();
    // Shapes that do not conform: found when the plan is built, or when it runs.
    let info = client
        .execute("SELECT * FROM matmul(a, a)".into(), None)
        .await;
    let e = match info {
        Err(e) => e,
        Ok(info) => {
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            let stream = client.do_get(ticket).await.unwrap();
            stream.try_collect::<Vec<_>>().await.unwrap_err()
        }
    };
    assert_eq!(status(&e).code(), Code::InvalidArgument, "{e}");
    // A ticket is read once.
    let info = client.execute("SELECT 1".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let _ = client
        .do_get(ticket.clone())
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let again = client.do_get(ticket).await;
    let e = match again {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert_eq!(status(&e).code(), Code::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_memory_budget_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        memory_limit: Some("1M".into()),
        ..ServerConfig::default()
    };
    config.max_connections = 4;
    let server = TestServer {
        server: Server::builder().config(config).build().await.unwrap(),
        _dir: dir,
    };
    let mut client = server.client().await;
    let sql = "SELECT count(*) FROM matmul(rand(1000, 1000), rand(1000, 1000))";
    let e = match client.execute(sql.into(), None).await {
        Err(e) => e,
        Ok(info) => {
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            let stream = client.do_get(ticket).await.unwrap();
            stream.try_collect::<Vec<_>>().await.unwrap_err()
        }
    };
    assert_eq!(status(&e).code(), Code::ResourceExhausted, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_cancel_stops_a_query_before_and_while_it_runs() {
    let server = start().await;
    let mut client = server.client().await;
    let mut raw = FlightServiceClient::new(server.channel().await);
    let slow = "SELECT count(*) FROM matmul(rand(1500, 1500), rand(1500, 1500))";

    // CancelFlightInfo before DoGet: the result is cancelled, DoGet says so.
    let info = client.execute(slow.into(), None).await.unwrap();
    let request = CancelFlightInfoRequest::new(info.clone());
    let action = Action::new("CancelFlightInfo", request.encode_to_vec());
    let mut results = raw.do_action(action).await.unwrap().into_inner();
    let result =
        CancelFlightInfoResult::decode(&*results.message().await.unwrap().unwrap().body).unwrap();
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let e = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::Cancelled, "{e}");

    // The deprecated CancelQuery action, while DoGet waits for the result.
    let info = client.execute(slow.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut reader = client.clone();
    let fetching = tokio::spawn(async move {
        reader
            .do_get(ticket)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = ActionCancelQueryRequest {
        info: info.encode_to_vec().into(),
    };
    let action = Action::new("CancelQuery", request.as_any().encode_to_vec());
    let mut results = raw.do_action(action).await.unwrap().into_inner();
    let body = results.message().await.unwrap().unwrap().body;
    let result: ActionCancelQueryResult = Any::decode(&*body).unwrap().unpack().unwrap().unwrap();
    let e = fetching.await.unwrap().unwrap_err();
    assert_eq!(result.result, 1, "cancelled");
    assert_eq!(status(&e).code(), Code::Cancelled, "{e}");

    // The client goes on.
    let one = query(&mut client, "SELECT 41 + 1").await;
    assert_eq!(i64s(&one, 0), [42]);
}

pub(crate) fn password_config(config: &mut ServerConfig) {
    config.auth.method = AuthMethod::ScramSha256;
    config.users.push(UserConfig {
        name: "alice".into(),
        password: Some("secret!".into()),
        scram_verifier: None,
    });
}

/// A raw Handshake with `authorization: <header>`.
async fn handshake_with(server: &TestServer, header: &str) -> Result<String, tonic::Status> {
    let mut raw = FlightServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    request
        .metadata_mut()
        .insert("authorization", header.parse().unwrap());
    let response = raw.handshake(request).await?;
    let bearer = response
        .metadata()
        .get("authorization")
        .expect("a bearer token")
        .to_str()
        .unwrap()
        .to_string();
    Ok(bearer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_basic_then_bearer_authentication() {
    use base64::Engine;
    let server = start_with(password_config).await;

    // Without credentials nothing runs.
    let mut anonymous = server.client().await;
    let e = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::Unauthenticated, "{e}");
    assert_eq!(sqlstate(status(&e)), "28000", "{e}");

    // Wrong password, unknown user: UNAUTHENTICATED with 28P01, the same way, on the
    // Handshake and on a call that sends Basic credentials itself.
    for (user, password) in [("alice", "wrong"), ("mallory", "secret!")] {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let e = handshake_with(&server, &header).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        assert_eq!(sqlstate(&e), "28P01", "{e}");
        assert_eq!(
            e.message(),
            format!("password authentication failed for user \"{user}\"")
        );
        let mut client = server.client().await;
        assert!(client.handshake(user, password).await.is_err());
        let mut raw = FlightServiceClient::new(server.channel().await);
        let mut request = tonic::Request::new(Action::new("ListTables", Bytes::new()));
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let e = raw.do_action(request).await.unwrap_err();
        assert_eq!((e.code(), sqlstate(&e)), (Code::Unauthenticated, "28P01"));
    }
    // Credentials that are not Basic's form: 28000.
    for header in ["Basic !!!", "Digest abc"] {
        let e = handshake_with(&server, header).await.unwrap_err();
        assert_eq!((e.code(), sqlstate(&e)), (Code::Unauthenticated, "28000"));
    }

    // Padded (pyarrow) and unpadded (ADBC) base64 both work.
    let padded = base64::engine::general_purpose::STANDARD.encode("alice:secret!");
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("alice:secret!");
    assert_ne!(padded, unpadded);
    for encoded in [padded, unpadded] {
        let bearer = handshake_with(&server, &format!("Basic {encoded}"))
            .await
            .unwrap();
        assert!(bearer.starts_with("Bearer "), "{bearer}");
    }

    // The arrow-flight client's handshake, then every call with the bearer token.
    let mut client = server.client().await;
    client.handshake("alice", "secret!").await.unwrap();
    let one = query(&mut client, "SELECT 1 AS one").await;
    assert_eq!(i64s(&one, 0), [1]);
    // Session settings stay with the token.
    client
        .execute_update("SET datafusion.execution.batch_size = 7".into(), None)
        .await
        .unwrap();
    let setting = query(
        &mut client,
        "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'",
    )
    .await;
    let value = datafusion::arrow::compute::cast(setting.column(0), &DataType::Utf8).unwrap();
    assert_eq!(value.as_string::<i32>().value(0), "7");

    // A made-up token is refused.
    let mut forged = server.client().await;
    forged.set_token("not-a-token".into());
    let e = forged.execute("SELECT 1".into(), None).await.unwrap_err();
    assert_eq!(status(&e).code(), Code::Unauthenticated, "{e}");
    assert_eq!(sqlstate(status(&e)), "28000", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = crate::pgwire::self_signed(certs.path());
    let server = start_with(|c| {
        password_config(c);
        c.tls = Some(tessera_server::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            required: true,
        });
    })
    .await;
    let pem = std::fs::read(&cert).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", server.addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake("alice", "secret!").await.unwrap();
    let one = query(&mut client, "SELECT 2 * 21").await;
    assert_eq!(i64s(&one, 0), [42]);
    // Plaintext gRPC to the TLS port fails, and the server goes on.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut plain = FlightSqlServiceClient::new(channel);
        assert!(plain.execute("SELECT 1".into(), None).await.is_err());
    }
    let again = query(&mut client, "SELECT 1").await;
    assert_eq!(i64s(&again, 0), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_malformed_input_leaves_the_server_answering() {
    let server = start_with(|c| c.max_message_size = "1M".into()).await;
    let mut healthy = server.client().await;
    let check = |mut client: FlightSqlServiceClient<Channel>| async move {
        let one = query(&mut client, "SELECT 1").await;
        assert_eq!(i64s(&one, 0), [1]);
    };

    // Garbage bytes on the port, and a connection closed half-way through a preface.
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 4096][..],
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut tcp = StdTcpStream::connect(server.addr()).unwrap();
        let _ = tcp.write_all(garbage);
        drop(tcp);
    }
    check(healthy.clone()).await;

    let mut raw = FlightServiceClient::new(server.channel().await);
    // A descriptor whose command is not a protobuf Any.
    let e = raw
        .get_flight_info(FlightDescriptor::new_cmd(vec![0xff, 0x01, 0x02]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // A well-formed Any of a Flight SQL type whose value is not that message.
    let bogus = Any {
        type_url: CommandStatementQuery::type_url().to_string(),
        value: Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff]),
    };
    let e = raw
        .get_flight_info(FlightDescriptor::new_cmd(bogus.encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // A ticket that is not one.
    let e = match raw.do_get(Ticket::new(vec![1, 2, 3])).await {
        Err(e) => e,
        Ok(r) => r.into_inner().try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // Corrupt IPC in an ingest DoPut.
    let command = ingest_command("junk", TableNotExistOption::Create, TableExistsOption::Fail);
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let corrupt = vec![
        FlightData::new()
            .with_descriptor(descriptor)
            .with_data_header(vec![0x10, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef])
            .with_data_body(vec![0u8; 64]),
    ];
    let e = match raw.do_put(futures::stream::iter(corrupt)).await {
        Err(e) => e,
        Ok(r) => r.into_inner().try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let missing = server.server.database().sql("SELECT * FROM junk").await;
    assert!(missing.is_err(), "a failed ingest leaves no table");

    // A message over max_message_size (1 MiB here) is refused with RESOURCE_EXHAUSTED
    // and 54000, as pgwire refuses one: a query, and a batch in the middle of an ingest.
    let huge = format!("SELECT '{}'", "x".repeat(2 << 20));
    let e = healthy.execute(huge, None).await.unwrap_err();
    assert_eq!(status(&e).code(), Code::ResourceExhausted, "{e}");
    assert_eq!(sqlstate(status(&e)), "54000", "{e}");
    assert!(status(&e).message().contains("max_message_size"), "{e}");
    let big = pairs((0..200_000).collect());
    let e = healthy
        .execute_ingest(
            ingest_command("big", TableNotExistOption::Create, TableExistsOption::Fail),
            futures::stream::iter([Ok(pairs(vec![1])), Ok(big)]),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::ResourceExhausted, "{e}");
    assert_eq!(sqlstate(status(&e)), "54000", "{e}");
    let missing = server.server.database().sql("SELECT * FROM big").await;
    assert!(missing.is_err(), "a refused ingest leaves no table");

    check(healthy.clone()).await;
    check(server.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_shares_the_database_with_pgwire_and_shuts_down_with_it() {
    let server = start().await;
    let mut client = server.client().await;
    client
        .execute_update(
            "CREATE MATRIX shared (2, 2); INSERT INTO shared VALUES (1, 1, 9.0)".into(),
            None,
        )
        .await
        .unwrap();
    let port = server.server.local_addr().port();
    let (pg, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let row = pg.query_one("SELECT v FROM shared", &[]).await.unwrap();
    assert_eq!(row.get::<_, f64>(0), 9.0);

    let addr = server.addr();
    let TestServer { server, _dir } = server;
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the Flight port is closed"
    );
}

#[test]
fn flight_is_served_by_tessera_serve_by_default() {
    let config = ServerConfig::default();
    assert_eq!(
        config.flight_address(),
        None,
        "a library server serves Flight only when asked"
    );
    let mut off = config.clone();
    off.set("flight_listen", "off").unwrap();
    assert_eq!(off.flight_address(), None);
    let mut on = config;
    on.set("flight_listen", "127.0.0.1:6000").unwrap();
    assert_eq!(on.flight_address(), Some("127.0.0.1:6000"));
}

/// A PostgreSQL connection to the same server, as `user` (trust).
async fn pg_as(server: &TestServer, user: &str) -> tokio_postgres::Client {
    let port = server.server.local_addr().port();
    let (pg, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} dbname=tessera"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    pg
}

/// A stored `n x n` matrix in 100 blocks, and a join over it with `n^3` rows.
async fn join_input(client: &mut FlightSqlServiceClient<Channel>, n: i64) -> String {
    client
        .execute_update(
            format!(
                "CREATE MATRIX big ({n}, {n}) BLOCK ({b}, {b});
                 INSERT INTO big SELECT i, j, v FROM rand({n}, {n}, seed => 5)",
                b = n / 10
            ),
            None,
        )
        .await
        .unwrap();
    "SELECT count(*) FROM big a JOIN big b ON a.i = b.j".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_statements_are_backends_in_pg_stat_activity_that_pg_cancel_backend_stops() {
    let server = start().await;
    let mut client = server.client().await;
    let slow = join_input(&mut client, 1000).await;
    // Trust: the Flight caller without credentials is `anonymous`; a PostgreSQL
    // connection of the same user may cancel its statements.
    let pg = pg_as(&server, "anonymous").await;
    let own_pid: i32 = pg
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let info = client.execute(slow.clone(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut reader = client.clone();
    let fetching = tokio::spawn(async move {
        reader
            .do_get(ticket)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
    });
    let listed = "SELECT pid, usename, client_addr, application_name, backend_type, state, query \
                  FROM pg_stat_activity WHERE backend_type = 'flight sql'";
    let rows = pg.query(listed, &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "one Flight statement runs");
    let row = &rows[0];
    let pid: i32 = row.get(0);
    assert_ne!(pid, own_pid);
    let described: Vec<String> = (1..7).map(|c| row.get(c)).collect();
    assert_eq!(
        described,
        [
            "anonymous",
            "127.0.0.1",
            "Arrow Flight SQL",
            "flight sql",
            "active",
            slow.as_str()
        ]
    );
    // Its progress: the blocks its scans read, out of the two sides' 200.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = pg
            .query_one(
                "SELECT blocks_done, blocks_total FROM tessera_progress WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        let (done, total): (i64, i64) = (row.get(0), row.get(1));
        assert!(done <= total && total <= 200, "{done} of {total}");
        if done > 0 || std::time::Instant::now() > deadline {
            assert!(done > 0, "no block read in 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // pg_cancel_backend stops it: the DoGet ends with CANCELLED, and the row goes.
    let cancelled: bool = pg
        .query_one(&format!("SELECT pg_cancel_backend({pid})"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let e = tokio::time::timeout(Duration::from_secs(30), fetching)
        .await
        .expect("a cancelled statement stops")
        .unwrap()
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::Cancelled, "{e}");
    assert_eq!(sqlstate(status(&e)), "57014");
    wait_unlisted(&pg, listed).await;
    // Another user may not cancel a Flight statement; a finished one is gone.
    let info = client.execute(slow.clone(), None).await.unwrap();
    let other = pg_as(&server, "mallory").await;
    let pid: i32 = other
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flight sql'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let e = other
        .query_one(&format!("SELECT pg_cancel_backend({pid})"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42501", "{e}");
    // Read, the result ends the statement, and its row goes with it.
    let cancel = CancelFlightInfoRequest::new(info.clone());
    let action = Action::new("CancelFlightInfo", cancel.encode_to_vec());
    let mut raw = FlightServiceClient::new(server.channel().await);
    raw.do_action(action).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let e = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(status(&e).code(), Code::Cancelled, "{e}");
    wait_unlisted(&other, listed).await;
}

/// Waits (up to 10 s) until `listed` returns no rows.
async fn wait_unlisted(pg: &tokio_postgres::Client, listed: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pg.query(listed, &[]).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the row stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_poll_flight_info_reports_growing_progress_then_the_result() {
    let server = start().await;
    let mut client = server.client().await;
    // A join of 1e9 pairs: it runs for over a second here, so several polls see it
    // running while its probe side is read (500 x 500 ended before the second poll).
    let n = 1000i64;
    let slow = join_input(&mut client, n).await;
    let mut raw = FlightServiceClient::new(server.channel().await);
    let command = CommandStatementQuery {
        query: slow,
        transaction_id: None,
    };
    let mut descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let mut running = Vec::new();
    let started = std::time::Instant::now();
    let info = loop {
        let poll = raw
            .poll_flight_info(descriptor.clone())
            .await
            .unwrap()
            .into_inner();
        let progress = poll.progress.expect("a progress fraction");
        assert!((0.0..=1.0).contains(&progress), "{progress}");
        match poll.flight_descriptor {
            Some(retry) => {
                assert!(poll.info.is_none());
                assert!(progress < 1.0, "{progress} while running");
                running.push(progress);
                descriptor = retry;
            }
            None => {
                assert_eq!(progress, 1.0);
                break poll.info.expect("the final poll has the FlightInfo");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{running:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        running.len() >= 2,
        "the join outlasts two polls: {running:?}"
    );
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "progress never falls: {running:?}"
    );
    assert!(
        running[running.len() - 1] > running[0],
        "it grows: {running:?}"
    );
    // The final FlightInfo's endpoint has the result: every cell of one side meets the n
    // cells of a column of the other.
    let schema = Arc::new(info.clone().try_decode_schema().unwrap());
    let batches = fetch(&mut client, info).await;
    let count = concat_batches(&schema, &batches).unwrap();
    assert_eq!(i64s(&count, 0), [n * n * n]);
    // The poll handle is spent.
    let e = raw.poll_flight_info(descriptor).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    // A metadata command finishes within its first poll.
    let tables = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: Some("big".into()),
        table_types: vec![],
        include_schema: false,
    };
    let poll = raw
        .poll_flight_info(FlightDescriptor::new_cmd(tables.as_any().encode_to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert!(poll.flight_descriptor.is_none() && poll.progress == Some(1.0));
    let listed = fetch(&mut client, poll.info.unwrap()).await;
    assert!(listed.iter().map(|b| b.num_rows()).sum::<usize>() >= 1);
}
