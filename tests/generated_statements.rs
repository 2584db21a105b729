//! Generated statements: SQL-shaped text from a small grammar of Tessera's and
//! DataFusion's statements (arrays, matrices, linear algebra, tables, joins,
//! aggregates, COPY, SET, SHOW, DESCRIBE, EXPLAIN), then mutated (truncated, a
//! multi-byte character at every position, huge numbers, deep nesting, long operator
//! chains, tokens dropped or repeated). Every case runs in-process, over pgwire and
//! over Flight SQL against one server; each must succeed or fail with a SQLSTATE that
//! is not XX000 (an internal error is a bug), no connection may break, and the server
//! answers `SELECT 1` at the end.
//!
//! The random numbers come from a seeded xorshift, so a failure names a seed and case
//! that reproduce it.

use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tessera_server::config::ServerConfig;
use tessera_server::{SQLSTATE_METADATA_KEY, Server, Session};
use tokio_postgres::NoTls;
use tonic::transport::{Channel, Endpoint};

/// xorshift64*: small, seeded, good enough to pick grammar branches.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Where generated COPY statements write.
static OUT_DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The matrices every generated statement may use: name, rows, columns.
const MATRICES: [(&str, usize, usize); 3] = [("ma", 4, 4), ("mb", 4, 3), ("mc", 3, 4)];

/// A statement and whether it may be given huge numbers: statements that build
/// shapes (array definitions, matrix functions) are kept small, since shape limits
/// are another item of the issue.
struct Generated {
    sql: String,
    shapes: bool,
}

fn matrix(rng: &mut Rng) -> &'static str {
    rng.pick(&MATRICES).0
}

/// A matrix expression for a table function argument, nested up to `depth`.
fn matrix_expr(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.chance(35) {
        return match rng.below(5) {
            0 => format!(
                "rand({}, {}, seed => {})",
                rng.range(1, 4),
                rng.range(1, 4),
                rng.below(9)
            ),
            1 => format!("eye({})", rng.range(1, 4)),
            2 => "(SELECT i, j, v FROM ma WHERE v > 0)".to_string(),
            _ => matrix(rng).to_string(),
        };
    }
    let a = matrix_expr(rng, depth - 1);
    match rng.below(9) {
        0 | 1 => format!("matmul({a}, {})", matrix_expr(rng, depth - 1)),
        2 => format!("t({a})"),
        3 => format!("add({a}, {})", matrix_expr(rng, depth - 1)),
        4 => format!("scale({a}, {})", number(rng)),
        5 => format!("sub({a}, {})", matrix_expr(rng, depth - 1)),
        6 => format!("emul({a}, {})", matrix_expr(rng, depth - 1)),
        7 => format!("rowsums({a})"),
        _ => format!("colmeans({a})"),
    }
}

fn number(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => rng.below(10).to_string(),
        1 => format!("{}.{}", rng.below(100), rng.below(100)),
        2 => format!("-{}", rng.below(50)),
        3 => "0".to_string(),
        _ => format!("{}e{}", rng.range(1, 9), rng.below(4)),
    }
}

/// A scalar expression over the columns of table `t` (a INT, b DOUBLE, c VARCHAR).
fn scalar(rng: &mut Rng, depth: usize) -> String {
    if depth == 0 || rng.chance(30) {
        return match rng.below(6) {
            0 => "a".into(),
            1 => "b".into(),
            2 => number(rng),
            3 => "c".into(),
            4 => "'x''y'".into(),
            _ => "NULL".into(),
        };
    }
    let x = scalar(rng, depth - 1);
    let y = scalar(rng, depth - 1);
    match rng.below(14) {
        0 => format!("{x} + {y}"),
        1 => format!("({x}) * ({y})"),
        2 => format!("{x} - {y}"),
        3 => format!("({x}) / ({y})"),
        4 => format!("({x}) % ({y})"),
        5 => format!("{x} || {y}"),
        6 => format!("CASE WHEN {x} > {y} THEN {x} ELSE {y} END"),
        7 => format!(
            "CAST({x} AS {})",
            rng.pick(&["INT", "DOUBLE", "VARCHAR", "BIGINT"])
        ),
        8 => format!("abs({x})"),
        9 => format!("coalesce({x}, {y})"),
        10 => format!("({x} = {y} OR {x} IS NULL)"),
        11 => format!("round({x})"),
        12 => format!("length({x})"),
        _ => format!("sqrt({x})"),
    }
}

fn statement(rng: &mut Rng, n: usize) -> Generated {
    let small = |sql: String| Generated { sql, shapes: true };
    let free = |sql: String| Generated { sql, shapes: false };
    match rng.below(22) {
        0 => small(format!(
            "CREATE MATRIX g{n} ({}, {}){}{}",
            rng.range(1, 6),
            rng.range(1, 6),
            if rng.chance(50) {
                format!(" BLOCK ({}, {})", rng.range(1, 3), rng.range(1, 3))
            } else {
                String::new()
            },
            rng.pick(&["", " SPARSE", " DENSE"])
        )),
        1 => small(format!(
            "CREATE ARRAY g{n} (v DOUBLE) DIMENSIONS (i 0:{} BLOCK {}, j 0:{} BLOCK 2)",
            rng.range(0, 5),
            rng.range(1, 3),
            rng.range(0, 5)
        )),
        2 => small(format!(
            "CREATE MATRIX g{n} AS SELECT * FROM {}",
            matrix_expr(rng, 2)
        )),
        3 | 4 => {
            let (name, rows, cols) = *rng.pick(&MATRICES);
            let cells: Vec<String> = (0..rng.range(1, 4))
                .map(|_| {
                    format!(
                        "({}, {}, {})",
                        rng.below(rows + 1),
                        rng.below(cols),
                        number(rng)
                    )
                })
                .collect();
            free(format!("INSERT INTO {name} VALUES {}", cells.join(", ")))
        }
        5 => free(format!(
            "INSERT INTO t VALUES ({}, {}, '{}')",
            rng.below(100),
            number(rng),
            rng.pick(&["a", "é", "x y", "", "€"])
        )),
        6 | 7 => small(format!("SELECT * FROM {}", matrix_expr(rng, 3))),
        8 => small(format!(
            "SELECT i, sum(v) AS s FROM {} GROUP BY i ORDER BY i",
            matrix_expr(rng, 2)
        )),
        9 | 10 => free(format!(
            "SELECT {}, {} FROM t WHERE {} ORDER BY 1 LIMIT {}",
            scalar(rng, 3),
            scalar(rng, 2),
            scalar(rng, 2),
            rng.range(0, 5)
        )),
        11 => free(format!(
            "SELECT t.a, count(*), sum(m.v) FROM t JOIN {} m ON t.a = m.i GROUP BY t.a",
            matrix(rng)
        )),
        12 => free(format!(
            "SELECT {}(v) FROM {} WHERE i {} {}",
            rng.pick(&["sum", "avg", "min", "max", "count", "stddev"]),
            matrix(rng),
            rng.pick(&["=", "<", ">=", "<>"]),
            number(rng)
        )),
        13 => small(format!(
            "COPY {} TO '{}/out{n}.csv' WITH (FORMAT csv)",
            matrix(rng),
            OUT_DIR.get().map_or("/nonexistent", String::as_str)
        )),
        14 => free(format!(
            "SET {} = {}",
            rng.pick(&[
                "datafusion.execution.batch_size",
                "tessera.broadcast_budget",
                "application_name",
                "extra_float_digits",
            ]),
            rng.range(1, 4096)
        )),
        15 => free("SHOW ARRAYS".into()),
        16 => free(format!("DESCRIBE {}", matrix(rng))),
        17 => small(format!("EXPLAIN SELECT * FROM {}", matrix_expr(rng, 2))),
        18 => free(format!(
            "SELECT a, b FROM t UNION ALL SELECT i, v FROM {} ORDER BY 1",
            matrix(rng)
        )),
        19 => small(format!(
            "SELECT * FROM rows({}) ORDER BY i",
            matrix_expr(rng, 1)
        )),
        20 => free(format!(
            "WITH w AS (SELECT {} AS x FROM t) SELECT count(*), max(x) FROM w",
            scalar(rng, 3)
        )),
        _ => free(format!("DROP MATRIX IF EXISTS g{}", rng.below(n.max(1)))),
    }
}

/// Characters of one, two, three and four bytes in UTF-8, and a quote.
const INSERTED: [&str; 6] = ["é", "€", "𝄞", "'", "\u{a0}", "ﬁ"];

/// Char boundaries of `text`.
fn boundaries(text: &str) -> Vec<usize> {
    let mut b: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    b.push(text.len());
    b
}

/// A mutation of `g` (or `g` itself).
fn mutate(rng: &mut Rng, g: &Generated) -> String {
    let text = &g.sql;
    let cuts = boundaries(text);
    match rng.below(8) {
        0 => text.clone(),
        1 => text[..*rng.pick(&cuts)].to_string(),
        2 => {
            let at = *rng.pick(&cuts);
            format!("{}{}{}", &text[..at], rng.pick(&INSERTED), &text[at..])
        }
        3 if !g.shapes => {
            // A huge number in place of the first digit run.
            let huge = rng.pick(&[
                "9223372036854775807",
                "-9223372036854775808",
                "99999999999999999999999999999",
                "1e308",
                "1e-400",
                "18446744073709551616",
            ]);
            match text.find(|c: char| c.is_ascii_digit()) {
                Some(start) => {
                    let end = text[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(text.len(), |e| start + e);
                    format!("{}{}{}", &text[..start], huge, &text[end..])
                }
                None => text.clone(),
            }
        }
        4 => {
            // Deep nesting around the first number.
            let depth = rng.range(20, 3000);
            match text.find(|c: char| c.is_ascii_digit()) {
                Some(at) => {
                    format!(
                        "{}{}{}{}",
                        &text[..at],
                        "(".repeat(depth),
                        &text[at..at + 1],
                        ")".repeat(depth)
                    ) + &text[at + 1..]
                }
                None => text.clone(),
            }
        }
        5 => {
            // A long operator chain in place of the first number.
            let terms = rng.range(10, 4000);
            let op = *rng.pick(&[" + ", " * ", " || ", " AND ", " OR ", " - "]);
            match text.find(|c: char| c.is_ascii_digit()) {
                Some(at) => format!(
                    "{}{}{}",
                    &text[..at],
                    vec![&text[at..at + 1]; terms].join(op),
                    &text[at + 1..]
                ),
                None => text.clone(),
            }
        }
        6 => {
            // A word dropped or doubled.
            let words: Vec<&str> = text.split(' ').collect();
            let k = rng.below(words.len());
            let mut out: Vec<&str> = words.clone();
            if rng.chance(50) {
                out.remove(k);
            } else {
                out.insert(k, words[k]);
            }
            out.join(" ")
        }
        _ => format!("{text}; {text}"),
    }
}

/// How a case ended on one path.
#[derive(Debug)]
enum Outcome {
    Ok,
    Error(String),
    /// The connection broke or the answer had no SQLSTATE: a failure of the test.
    Broken(String),
}

struct Paths {
    session: Session,
    pg: tokio_postgres::Client,
    pg_port: u16,
    flight: FlightSqlServiceClient<Channel>,
}

async fn pg_connect(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

const LIMIT: Duration = Duration::from_secs(5);

impl Paths {
    async fn in_process(&self, sql: &str) -> Outcome {
        match tokio::time::timeout(LIMIT, self.session.sql(sql)).await {
            Err(_) => Outcome::Error("57014".into()),
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Error(tessera_server::errors::sqlstate(&e).to_string()),
        }
    }

    async fn pgwire(&mut self, sql: &str) -> Outcome {
        let outcome = match self.pg.simple_query(sql).await {
            Ok(_) => Outcome::Ok,
            Err(e) => match e.code() {
                Some(code) => Outcome::Error(code.code().to_string()),
                None => Outcome::Broken(e.to_string()),
            },
        };
        if self.pg.is_closed() {
            // Go on with a new connection; the broken one is reported.
            self.pg = pg_connect(self.pg_port).await;
            self.pg
                .simple_query("SET statement_timeout = '5s'")
                .await
                .unwrap();
            return Outcome::Broken(format!("the connection closed ({outcome:?})"));
        }
        outcome
    }

    async fn flight(&mut self, sql: &str) -> Outcome {
        let code = |e: arrow_flight::error::FlightError| match e {
            arrow_flight::error::FlightError::Tonic(s) => {
                match s.metadata().get(SQLSTATE_METADATA_KEY) {
                    Some(v) => Outcome::Error(v.to_str().unwrap_or("?").to_string()),
                    None => Outcome::Broken(format!("a status without SQLSTATE: {s}")),
                }
            }
            other => Outcome::Broken(other.to_string()),
        };
        let info = match self.flight.execute(sql.to_string(), None).await {
            Ok(info) => info,
            Err(e) => return code(e),
        };
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else {
                continue;
            };
            let stream = match self.flight.do_get(ticket).await {
                Ok(s) => s,
                Err(e) => return code(e),
            };
            if let Err(e) = stream.try_collect::<Vec<_>>().await {
                return code(e);
            }
        }
        Outcome::Ok
    }
}

/// Thousands of generated and mutated statements over three paths: no XX000, no
/// broken connection, and `SELECT 1` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_statements_never_panic_or_break_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().join("db"),
        pg_listen: "127.0.0.1:0".into(),
        flight_listen: Some("127.0.0.1:0".into()),
        statement_timeout: "5s".into(),
        ..ServerConfig::default()
    };
    let server = Server::builder().config(config).build().await.unwrap();
    let db = server.database();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let _ = OUT_DIR.set(out.display().to_string());
    let mut setup = String::new();
    for (name, rows, cols) in MATRICES {
        setup += &format!(
            "CREATE MATRIX {name} ({rows}, {cols});
             INSERT INTO {name} SELECT i, j, v FROM rand({rows}, {cols}, seed => 1);"
        );
    }
    setup += "CREATE TABLE t (a INT, b DOUBLE, c VARCHAR);
              INSERT INTO t VALUES (1, 0.5, 'a'), (2, -1.0, NULL), (3, 2.5, 'é');";
    db.sql(&setup).await.unwrap();

    let pg_port = server.local_addr().port();
    let pg = pg_connect(pg_port).await;
    pg.simple_query("SET statement_timeout = '5s'")
        .await
        .unwrap();
    let channel = Endpoint::from_shared(format!("http://{}", server.flight_addr().unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut paths = Paths {
        session: db.session().unwrap(),
        pg,
        pg_port,
        flight: FlightSqlServiceClient::new(channel),
    };

    let seed = 0x7e55_e7a0_u64;
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut cases = 0usize;
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    let mut run = |sql: String, outcomes: [Outcome; 3], case: usize| {
        for (path, outcome) in ["in-process", "pgwire", "Flight SQL"].iter().zip(outcomes) {
            match outcome {
                Outcome::Ok => *states.entry("ok".into()).or_default() += 1,
                Outcome::Error(code) if code == "XX000" => {
                    failures.push(format!("case {case} ({path}): XX000 for {sql:?}"));
                }
                Outcome::Error(code) => *states.entry(code).or_default() += 1,
                Outcome::Broken(why) => {
                    failures.push(format!("case {case} ({path}): {why} for {sql:?}"));
                }
            }
        }
    };
    let started = std::time::Instant::now();
    for n in 0..700 {
        let generated = statement(&mut rng, n);
        let sql = mutate(&mut rng, &generated);
        let outcomes = [
            paths.in_process(&sql).await,
            paths.pgwire(&sql).await,
            paths.flight(&sql).await,
        ];
        cases += 3;
        run(sql, outcomes, n);
    }
    // A multi-byte character at every position of one statement of each kind.
    let mut rng = Rng(seed ^ 1);
    for n in 0..6 {
        let generated = statement(&mut rng, 1000 + n);
        for at in boundaries(&generated.sql) {
            let ch = INSERTED[at % INSERTED.len()];
            let sql = format!("{}{ch}{}", &generated.sql[..at], &generated.sql[at..]);
            // In-process and pgwire only: Flight sends the same text as in-process.
            let outcomes = [
                paths.in_process(&sql).await,
                paths.pgwire(&sql).await,
                Outcome::Ok,
            ];
            cases += 2;
            run(sql, outcomes, 1000 + n);
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{cases} cases in {elapsed:?}; outcomes: {states:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases >= 2000, "only {cases} cases");

    // The server still answers on every path, and on a fresh connection.
    assert!(matches!(paths.in_process("SELECT 1").await, Outcome::Ok));
    assert!(matches!(paths.pgwire("SELECT 1").await, Outcome::Ok));
    assert!(matches!(paths.flight("SELECT 1").await, Outcome::Ok));
    let fresh = pg_connect(pg_port).await;
    let one: i64 = fresh.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    server.shutdown().await;
}
