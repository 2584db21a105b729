//! psql's catalog queries against Tessera's `pg_catalog` emulation: every query psql 15
//! sends for `\d`, `\dt`, `\d name`, `\l`, `\dn`, `\df`, ... (captured from a real
//! psql with `-E`, in `fixtures/psql15/`) runs after `rewrite_statement`, and the rows are
//! those psql would show.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::error::Result;
use datafusion::physical_plan::common::collect;
use tessera_planner::ddl;
use tessera_server::pg_catalog::rewrite_statement;
use tessera_server::{Database, Session};

/// The queries of one captured psql command.
fn fixture(name: &str) -> Vec<String> {
    let path = format!("{}/fixtures/psql15/{name}.sql", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n-- end\n")
        .map(|q| {
            q.lines()
                .skip_while(|l| l.starts_with("-- "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|q| !q.trim().is_empty())
        .collect()
}

/// Rows as text, `NULL` as the empty string (as psql prints them).
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            String::new()
                        } else {
                            array_value_to_string(c, r).unwrap()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// Runs `sql` as the PostgreSQL server does: parsed, rewritten in the tree, executed.
/// Returns the last statement's batches and the statements' texts after the rewrite.
async fn run_rewritten(session: &Session, sql: &str) -> (Result<Vec<RecordBatch>>, String) {
    let statements = match ddl::parse(sql) {
        Ok(statements) => statements,
        Err(e) => return (Err(e), sql.to_string()),
    };
    let mut texts = Vec::new();
    let mut last = Ok(Vec::new());
    for mut statement in statements {
        rewrite_statement(&mut statement);
        if let ddl::Statement::Sql(text) = &statement {
            texts.push(text.text.clone());
        }
        last = match session.execute_statement(statement).await {
            Ok(stream) => collect(stream).await,
            Err(e) => Err(e),
        };
        if last.is_err() {
            break;
        }
    }
    (last, texts.join(";\n"))
}

async fn run(session: &Session, sql: &str) -> Vec<Vec<String>> {
    match run_rewritten(session, sql).await {
        (Ok(batches), _) => rows(&batches),
        (Err(e), rewritten) => {
            panic!("{e}\n--- psql sent:\n{sql}\n--- rewritten:\n{rewritten}")
        }
    }
}

/// A database with a table, a view, a sparse matrix and a 2-d array.
async fn database() -> (Database, Session) {
    let db = Database::in_memory().unwrap();
    db.sql(
        "CREATE TABLE emp (id BIGINT NOT NULL, name VARCHAR, salary DOUBLE);
         INSERT INTO emp VALUES (1, 'a', 10.0);
         CREATE VIEW high AS SELECT name FROM emp WHERE salary > 5;
         CREATE MATRIX m (1000, 1000) BLOCK (100, 100) SPARSE;
         INSERT INTO m VALUES (0, 0, 1.5), (999, 3, 2.0);
         CREATE ARRAY temps (t DOUBLE) DIMENSIONS (station 0:9 BLOCK 5, day 0:364 BLOCK 365)",
    )
    .await
    .unwrap();
    let session = db.session().unwrap();
    (db, session)
}

/// Runs the queries of `\d name` for `name`, as psql does: the first finds the OID,
/// the others use it. Returns each query's rows.
async fn describe(session: &Session, fixture_name: &str, name: &str) -> Vec<Vec<Vec<String>>> {
    let (captured_name, captured_oid) = match fixture_name {
        "d_view" => ("v", "16389"),
        _ => ("emp", "16384"),
    };
    let queries = fixture(fixture_name);
    let lookup = queries[0].replace(&format!("'^({captured_name})$'"), &format!("'^({name})$'"));
    let found = run(session, &lookup).await;
    assert_eq!(found.len(), 1, "\\d {name} finds one relation: {found:?}");
    let oid = found[0][0].clone();
    assert_eq!(
        (found[0][1].as_str(), found[0][2].as_str()),
        ("public", name)
    );
    let mut results = vec![found];
    for q in &queries[1..] {
        results.push(run(session, &q.replace(captured_oid, &oid)).await);
    }
    results
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[tokio::test]
async fn pg_catalog_every_captured_query_runs() {
    let (_db, session) = database().await;
    let mut failures = Vec::new();
    for name in [
        "d", "dt", "d_plus", "dt_plus", "dv", "l", "l_plus", "dn", "dn_plus", "df", "df_plus",
        "du", "di", "ds", "dT", "dx",
    ] {
        for q in fixture(name) {
            if let (Err(e), rewritten) = run_rewritten(&session, &q).await {
                failures.push(format!("{name}: {e}\n{rewritten}\n"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn pg_catalog_d_lists_tables_views_and_arrays() {
    let (_db, session) = database().await;
    let d = run(&session, &fixture("d")[0]).await;
    assert_eq!(
        d,
        vec![
            row(&["public", "emp", "table", "tessera"]),
            row(&["public", "high", "view", "tessera"]),
            row(&["public", "m", "table", "tessera"]),
            row(&["public", "temps", "table", "tessera"]),
        ]
    );
    let dt = run(&session, &fixture("dt")[0]).await;
    let names: Vec<&str> = dt.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names, ["emp", "m", "temps"]);
    let dv = run(&session, &fixture("dv")[0]).await;
    assert_eq!(dv, vec![row(&["public", "high", "view", "tessera"])]);
}

#[tokio::test]
async fn pg_catalog_d_plus_shows_array_shapes() {
    let (_db, session) = database().await;
    let d = run(&session, &fixture("d_plus")[0]).await;
    // Schema, Name, Type, Owner, Persistence, Access method, Size, Description.
    let by_name = |n: &str| d.iter().find(|r| r[1] == n).unwrap().clone();
    assert_eq!(
        by_name("m"),
        row(&[
            "public",
            "m",
            "table",
            "tessera",
            "permanent",
            "blocks",
            "",
            "matrix 1000 x 1000, block 100 x 100, sparse, 2 non-zeros",
        ])
    );
    assert_eq!(
        by_name("temps")[7],
        "array station 0:9 x day 0:364 (t), block 5 x 365, 0 non-zeros"
    );
    assert_eq!(by_name("emp")[5], "heap");
    assert_eq!(by_name("emp")[7], "");
}

#[tokio::test]
async fn pg_catalog_d_name_shows_columns() {
    let (_db, session) = database().await;
    let results = describe(&session, "d_name", "emp").await;
    // relchecks, relkind, ..., amname
    assert_eq!(results[1][0][1], "r");
    assert_eq!(results[1][0][14], "heap");
    // attname, format_type, default, attnotnull, collation, identity, generated
    let columns: Vec<(String, String, String)> = results[2]
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[3].clone()))
        .collect();
    assert_eq!(
        columns,
        [
            ("id".into(), "bigint".into(), "true".into()),
            ("name".into(), "text".into(), "false".into()),
            ("salary".into(), "double precision".into(), "false".into()),
        ]
    );
    // Policies, statistics, publications, parents, partitions: none.
    for r in &results[3..] {
        assert!(r.is_empty(), "{r:?}");
    }

    let results = describe(&session, "d_name", "m").await;
    assert_eq!(results[1][0][14], "blocks");
    let columns: Vec<(&str, &str)> = results[2]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        columns,
        [("i", "bigint"), ("j", "bigint"), ("v", "double precision")]
    );

    let plus = describe(&session, "d_plus_name", "temps").await;
    let columns: Vec<(&str, &str, &str)> = plus[2]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[7].as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("station", "bigint", "p"),
            ("day", "bigint", "p"),
            ("t", "double precision", "p")
        ]
    );

    let view = describe(&session, "d_view", "high").await;
    assert_eq!(view[1][0][1], "v");
    assert_eq!(view[2][0][..2], row(&["name", "text"])[..]);
}

#[tokio::test]
async fn pg_catalog_l_dn_df_du() {
    let (_db, session) = database().await;
    let l = run(&session, &fixture("l")[0]).await;
    assert_eq!(
        l,
        vec![row(&[
            "tessera", "tessera", "UTF8", "C.UTF-8", "C.UTF-8", "", "libc", ""
        ])]
    );
    let dn = run(&session, &fixture("dn")[0]).await;
    assert_eq!(dn, vec![row(&["public", "tessera"])]);
    let df = run(&session, &fixture("df")[0]).await;
    let names: Vec<&str> = df.iter().map(|r| r[1].as_str()).collect();
    assert!(
        names.contains(&"matmul") && names.contains(&"solve"),
        "{names:?}"
    );
    let matmul = df.iter().find(|r| r[1] == "matmul").unwrap();
    assert_eq!(matmul[2], "TABLE(i bigint, j bigint, v double precision)");
    let du = run(&session, &fixture("du")[0]).await;
    assert_eq!(du[0][0], "tessera");
}

#[tokio::test]
async fn pg_catalog_sees_new_objects_without_restart() {
    let (db, session) = database().await;
    let before = run(&session, &fixture("dt")[0]).await.len();
    db.sql("CREATE MATRIX later (2, 2)").await.unwrap();
    let after = run(&session, &fixture("dt")[0]).await;
    assert_eq!(after.len(), before + 1);
    assert!(after.iter().any(|r| r[1] == "later"));
    // OIDs are stable: the same in another session.
    let other = db.session().unwrap();
    let q = "SELECT oid FROM pg_catalog.pg_class WHERE relname = 'later'";
    assert_eq!(run(&session, q).await, run(&other, q).await);
}

#[tokio::test]
async fn pg_catalog_leaves_ordinary_sql_alone() {
    let (db, _session) = database().await;
    let tables = db
        .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        .await
        .unwrap();
    assert_eq!(
        rows(&tables),
        vec![row(&["emp"]), row(&["high"]), row(&["m"]), row(&["temps"])]
    );
    let regclass = run(
        &db.session().unwrap(),
        "SELECT 'emp'::regclass::oid = (SELECT oid FROM pg_catalog.pg_class WHERE relname = 'emp')",
    )
    .await;
    assert_eq!(regclass, vec![row(&["true"])]);
}

/// The catalog functions and tables SQLAlchemy's PostgreSQL dialect and psycopg's
/// TypeInfo read, with PostgreSQL 15's answers worked by hand: schema and database
/// names, identifiers quoted as `quote_ident` does, type OIDs (int4 is 23, float8 701),
/// settings' defaults, catalog tables named without `pg_catalog.`, the empty sequence
/// and operator-class catalogs, array subscripts and `LIKE ... ESCAPE`.
#[tokio::test]
async fn pg_catalog_functions_sqlalchemy_and_psycopg_call() {
    let (_db, session) = database().await;
    assert_eq!(
        run(
            &session,
            "SELECT current_schema(), current_database(), quote_ident('emp'), \
             quote_ident('Emp'), quote_ident('a\"b'), quote_ident('1x')"
        )
        .await,
        vec![row(&[
            "public",
            "tessera",
            "emp",
            "\"Emp\"",
            "\"a\"\"b\"",
            "\"1x\""
        ])]
    );
    assert_eq!(
        run(
            &session,
            "SELECT to_regtype('int4'), to_regtype('double precision'), \
             to_regtype('hstore') IS NULL, format_type(23, NULL), format_type(701, -1)"
        )
        .await,
        vec![row(&["23", "701", "true", "integer", "double precision"])]
    );
    assert_eq!(
        run(
            &session,
            "SELECT current_setting('default_table_access_method'), \
             current_setting('standard_conforming_strings'), \
             current_setting('nosuch', true) IS NULL, \
             has_table_privilege('emp', 'SELECT'), current_user"
        )
        .await,
        vec![row(&["heap", "on", "true", "true", "tessera"])]
    );
    // psycopg's TypeInfo.fetch, unqualified pg_type and all.
    assert_eq!(
        run(
            &session,
            "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, \
             typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype('float8') ORDER BY t.oid"
        )
        .await,
        vec![row(&["float8", "701", "1022", "double precision", ","])]
    );
    assert_eq!(
        run(
            &session,
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'public') AS n, \
             (SELECT count(*) FROM pg_sequence) AS s, (SELECT count(*) FROM pg_opclass) AS o"
        )
        .await,
        vec![row(&["1", "0", "0"])]
    );
    assert_eq!(
        run(
            &session,
            "SELECT unnest(a) AS v, generate_subscripts(a, 1) AS k \
             FROM (SELECT make_array(10, 20, 30) AS a) ORDER BY k"
        )
        .await,
        vec![row(&["10", "1"]), row(&["20", "2"]), row(&["30", "3"])]
    );
    // pgcli's relation kinds, as an array literal.
    assert_eq!(
        run(
            &session,
            "SELECT c.relname FROM pg_catalog.pg_class c \
             WHERE c.relkind = ANY('{r,p}') AND c.relnamespace = 2200 ORDER BY 1"
        )
        .await,
        vec![row(&["emp"]), row(&["m"]), row(&["temps"])]
    );
    // SQLAlchemy's `autoescape`: `_` is literal after the escape character.
    assert_eq!(
        run(
            &session,
            "SELECT relname FROM pg_class WHERE relname LIKE 'e/_%' ESCAPE '/' \
             OR relname LIKE 'em%' ESCAPE '/' ORDER BY 1"
        )
        .await,
        vec![row(&["emp"])]
    );
}
