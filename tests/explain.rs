//! EXPLAIN as a picture over the PostgreSQL protocol: `FORMAT tree` and `FORMAT
//! graphviz`, with and without `ANALYZE`, show Tessera's operators with their strategy
//! and estimates as `key: value` lines, and with `ANALYZE` the rows they produced,
//! checked against a count made by hand; Graphviz's `dot` (installed by `.ci/run`)
//! renders the graph.

use std::io::Write;
use std::process::{Command, Stdio};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::psql::start;

/// The `plan` column of an EXPLAIN, over the simple protocol (as psql sends it).
async fn plan_text(client: &Client, sql: &str) -> String {
    let mut text = String::new();
    for message in client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    {
        if let SimpleQueryMessage::Row(row) = message {
            text.push_str(row.get("plan").unwrap_or(""));
            text.push('\n');
        }
    }
    text
}

/// The label lines of the first node of `dot` whose label starts with `name`.
fn node_lines(dot: &str, name: &str) -> Vec<String> {
    let start = format!("[label=\"{name}\\l");
    let line = dot
        .lines()
        .find(|l| l.contains(&start))
        .unwrap_or_else(|| panic!("no {name} node in\n{dot}"));
    let label = &line[line.find(&start).unwrap() + start.len()..];
    label
        .split("\\l")
        .map(str::to_string)
        .filter(|l| !l.starts_with('"'))
        .collect()
}

/// Runs `dot -Tsvg` on `graph`; its output.
fn render(graph: &str) -> String {
    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz's dot (.ci/run installs it)");
    dot.stdin
        .take()
        .unwrap()
        .write_all(graph.as_bytes())
        .unwrap();
    let out = dot.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dot refused the graph: {}\n{graph}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_draws_trees_and_graphs_with_strategies_and_actual_rows() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=tessera dbname=tessera",
            server.local_addr().port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // Every value positive, so every cell of the product is too: 100 x 60 = 6000 cells.
    client
        .batch_execute(
            "CREATE MATRIX a (100, 80) BLOCK (32, 32);
             INSERT INTO a SELECT r.value, c.value, CAST(1 + (r.value * 7 + c.value * 3) % 11 AS DOUBLE)
               FROM generate_series(0, 99) r CROSS JOIN generate_series(0, 79) c;
             CREATE MATRIX b (80, 60) BLOCK (32, 32);
             INSERT INTO b SELECT r.value, c.value, CAST(1 + (r.value * 5 + c.value) % 7 AS DOUBLE)
               FROM generate_series(0, 79) r CROSS JOIN generate_series(0, 59) c;
             SET tessera.matmul_strategy = 'repartition';",
        )
        .await
        .unwrap();
    let query = "SELECT i, j, v FROM matmul(a, b)";

    // Graphviz without ANALYZE: the strategy and estimates, as key: value lines.
    let graph = plan_text(&client, &format!("EXPLAIN (FORMAT graphviz) {query}")).await;
    assert!(graph.starts_with("digraph plan {"), "{graph}");
    let cells = node_lines(&graph, "BlockCellsExec");
    for want in [
        "shape: 100x60",
        "blocks: 32x32",
        "op: matmul",
        "strategy: repartition (cpmm)",
        "estimate: 100x60",
    ] {
        assert!(cells.iter().any(|l| l == want), "{want} not in {cells:?}");
    }
    assert!(
        !cells.iter().any(|l| l.starts_with("output_rows")),
        "{cells:?}"
    );
    assert!(render(&graph).contains("BlockCellsExec"));

    // With ANALYZE: the rows each operator produced, after the statement ran.
    let graph = plan_text(
        &client,
        &format!("EXPLAIN (ANALYZE, FORMAT graphviz) {query}"),
    )
    .await;
    let cells = node_lines(&graph, "BlockCellsExec");
    assert!(
        cells.iter().any(|l| l == "output_rows: 6000"),
        "6000 cells: {cells:?}"
    );
    // The sum by (i, j) produced the 4 x 2 output blocks of 32 x 32.
    let sum = node_lines(&graph, "BlockSumExec");
    assert!(
        sum.iter().any(|l| l == "output_rows: 8"),
        "8 blocks: {sum:?}"
    );
    render(&graph);

    // FORMAT tree with ANALYZE, DataFusion's boxes with the same lines.
    let tree = plan_text(&client, &format!("EXPLAIN ANALYZE FORMAT tree {query}")).await;
    for want in ["BlockCellsExec", "repartition", "output_rows", "┌"] {
        assert!(tree.contains(want), "{want} not in\n{tree}");
    }
    // FORMAT tree without ANALYZE stays DataFusion's own, over Tessera's lines.
    let tree = plan_text(&client, &format!("EXPLAIN FORMAT tree {query}")).await;
    assert!(tree.contains("bytes moved"), "{tree}");
    assert!(!tree.contains("output_rows"), "{tree}");

    // The extended protocol describes and runs it too.
    let rows = client
        .query(&format!("EXPLAIN (ANALYZE, FORMAT tree) {query}"), &[])
        .await
        .unwrap();
    let plan: String = rows[0].get("plan");
    assert!(plan.contains("output_rows"), "{plan}");
    server.shutdown().await;
}
