//! Block dataflows on worker processes: `tessera worker` processes on loopback read the
//! coordinator's data directory, and `tessera serve --workers` (here the server as a
//! library, configured the same way) sends them the stages of every matmul strategy.
//! Results are checked against a naive triple loop over the same formula the SQL
//! used to fill the matrices.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_server::{Server, ServerConfig, ServerHandle};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::sql_database::tessera_binary;

/// `tessera worker` processes; killed when dropped.
struct Workers {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Workers {
    /// `n` workers on `data_dir` requiring `secret`; their logs go to `log`.
    fn start(n: usize, data_dir: &Path, secret: &str, log: &Path) -> Workers {
        let mut workers = Workers {
            children: Vec::new(),
            urls: Vec::new(),
        };
        for _ in 0..n {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            let mut child = Command::new(tessera_binary())
                .args(["worker", "--listen", "127.0.0.1:0", "--exit-with-stdin"])
                .arg("--data-dir")
                .arg(data_dir)
                .env("TESSERA_CLUSTER_SECRET", secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("start tessera worker");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let url = line
                .strip_prefix("tessera worker listening on ")
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("worker said: {line:?}"))
                .to_string();
            workers.children.push(child);
            workers.urls.push(url);
        }
        workers
    }

    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(port: u16) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tessera dbname=tessera"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// The rows of a simple query as strings.
async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|k| r.get(k).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The value the SQL below stores at `(i, j)` of a matrix filled with `seed`.
fn cell(i: u64, j: u64, seed: u64) -> f64 {
    (((i * 7 + j * 3 + seed) % 11) as f64) - 5.0
}

/// Fills `name` (`rows x cols`) with [`cell`].
fn fill(name: &str, rows: u64, cols: u64, seed: u64) -> String {
    format!(
        "INSERT INTO {name} SELECT r.value, c.value, \
         CAST((r.value * 7 + c.value * 3 + {seed}) % 11 AS DOUBLE) - 5.0 \
         FROM generate_series(0, {}) r CROSS JOIN generate_series(0, {}) c",
        rows - 1,
        cols - 1
    )
}

/// `A B` by the triple loop, `A` is `n x m` of seed `sa`, `B` is `m x p` of seed `sb`
/// (transposed operands are read through `at`).
fn naive(
    n: u64,
    m: u64,
    p: u64,
    a: impl Fn(u64, u64) -> f64,
    b: impl Fn(u64, u64) -> f64,
) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            (0..p)
                .map(|j| (0..m).map(|k| a(i, k) * b(k, j)).sum())
                .collect()
        })
        .collect()
}

fn check(what: &str, got: &[Vec<String>], want: &[Vec<f64>]) {
    let mut seen = vec![vec![0.0; want[0].len()]; want.len()];
    for row in got {
        let i: usize = row[0].parse().unwrap();
        let j: usize = row[1].parse().unwrap();
        seen[i][j] += row[2].parse::<f64>().unwrap();
    }
    for (i, (s, w)) in seen.iter().zip(want).enumerate() {
        for (j, (x, y)) in s.iter().zip(w).enumerate() {
            assert!((x - y).abs() < 1e-9, "{what}: ({i}, {j}) is {x}, naive {y}");
        }
    }
}

const SECRET: &str = "correct horse battery staple";

/// `n` workers and a coordinator over them on a fresh data directory (kept while the
/// returned directory lives), with a client connected to the coordinator.
async fn cluster(n: usize) -> (tempfile::TempDir, Workers, ServerHandle, Client) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    std::fs::create_dir_all(&data).unwrap();
    let workers = Workers::start(n, &data, SECRET, &dir.path().join("workers.log"));
    let config = ServerConfig {
        data_dir: data,
        pg_listen: "127.0.0.1:0".into(),
        workers: workers.urls.clone(),
        cluster_secret: Some(SECRET.into()),
        ..ServerConfig::default()
    };
    let server = Server::builder().config(config).build().await.unwrap();
    let client = connect(server.local_addr().port()).await;
    (dir, workers, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_runs_on_worker_processes_and_matches_naive() {
    let (dir, mut workers, server, client) = cluster(2).await;
    for sql in [
        "CREATE MATRIX a (40, 30) BLOCK (10, 10) WITH (shards = 4)",
        "CREATE MATRIX b (30, 20) BLOCK (10, 10) WITH (shards = 3)",
        "CREATE MATRIX x (40, 20) BLOCK (10, 10) WITH (partitioning = 'rows', shards = 4)",
        "CREATE MATRIX y (40, 30) BLOCK (10, 10) WITH (partitioning = 'rows', shards = 4)",
        // Blocked unlike `b`: reblocked where it meets `a`.
        "CREATE MATRIX c (30, 20) BLOCK (7, 6) WITH (shards = 3)",
        &fill("a", 40, 30, 1),
        &fill("c", 30, 20, 5),
        &fill("b", 30, 20, 2),
        &fill("x", 40, 20, 3),
        &fill("y", 40, 30, 4),
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let ab = naive(40, 30, 20, |i, k| cell(i, k, 1), |k, j| cell(k, j, 2));
    for strategy in [
        "repartition",
        "broadcast",
        "broadcast_left",
        "local",
        "replication",
    ] {
        client
            .batch_execute(&format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        let plan = rows(&client, "EXPLAIN SELECT * FROM matmul(a, b)").await;
        let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
        assert!(
            plan.contains("DistributedExec") && plan.contains("Stage") && plan.contains("tasks=2"),
            "{strategy}: not distributed:\n{plan}"
        );
        let got = rows(&client, "SELECT i, j, v FROM matmul(a, b)").await;
        check(&format!("matmul(a, b) with {strategy}"), &got, &ab);
    }
    // A matrix made from a distributed product is stored exactly, by the workers that
    // computed its blocks: its files are parts written by both worker processes, none
    // by the coordinator (this process), and nothing else is left in its directory.
    client
        .batch_execute("CREATE MATRIX g BLOCK (10, 10) AS SELECT * FROM matmul(a, b)")
        .await
        .unwrap();
    let got = rows(&client, "SELECT i, j, v FROM g").await;
    check("CREATE MATRIX g AS matmul(a, b)", &got, &ab);
    let data = dir.path().join("db").join("store");
    let writers = part_writers(&newest_array(&data));
    let worker_pids: BTreeSet<u32> = workers.children.iter().map(Child::id).collect();
    assert!(
        writers.len() == 2 && writers.is_subset(&worker_pids),
        "the parts of g were written by {writers:?}, the workers are {worker_pids:?}"
    );
    assert_versions_hold_only_their_files(&data);
    // EXPLAIN ANALYZE shows what crossed the network between the stages.
    client
        .batch_execute("SET tessera.matmul_strategy = 'repartition'")
        .await
        .unwrap();
    let analyzed = rows(&client, "EXPLAIN ANALYZE SELECT * FROM matmul(a, b)").await;
    let analyzed: String = analyzed.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(
        analyzed.contains("NetworkShuffleExec") && analyzed.contains("bytes_transferred"),
        "{analyzed}"
    );
    // Co-partitioned (zipmm): t(x) y with both stored by row over the same shards.
    client
        .batch_execute("SET tessera.matmul_strategy = 'copartitioned'")
        .await
        .unwrap();
    let plan = rows(&client, "EXPLAIN SELECT * FROM matmul(t(x), y)").await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    // Planned with exact sums, so a retry on fewer workers gives the same bits.
    assert!(
        plan.contains("DistributedExec")
            && plan.contains("BlockZipJoinExec")
            && plan.contains("each product a partial (exact)"),
        "zipmm: {plan}"
    );
    let got = rows(&client, "SELECT i, j, v FROM matmul(t(x), y)").await;
    let xty = naive(20, 40, 30, |i, k| cell(k, i, 3), |k, j| cell(k, j, 4));
    check("matmul(t(x), y) co-partitioned", &got, &xty);
    // Ridge regression in one statement, one dataflow on the workers: the solve's
    // operands gathered into one task. The answer `b` satisfies (t(x) x + I) b = t(x) y.
    client
        .batch_execute("SET tessera.matmul_strategy = 'auto'")
        .await
        .unwrap();
    let ridge = "SELECT i, j, v FROM solve(add(matmul(t(x), x), eye(20)), matmul(t(x), y))";
    let plan = rows(&client, &format!("EXPLAIN {ridge}")).await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(
        plan.contains("DistributedExec") && plan.contains("BlockGatherExec: solve"),
        "ridge: {plan}"
    );
    let mut b = vec![vec![0.0; 30]; 20];
    for row in rows(&client, ridge).await {
        let (i, j): (usize, usize) = (row[0].parse().unwrap(), row[1].parse().unwrap());
        b[i][j] = row[2].parse().unwrap();
    }
    let gram = naive(20, 40, 20, |i, k| cell(k, i, 3), |k, j| cell(k, j, 3));
    for i in 0..20 {
        for j in 0..30 {
            let lhs: f64 = (0..20).map(|k| gram[i][k] * b[k][j]).sum::<f64>() + b[i][j];
            assert!(
                (lhs - xty[i][j]).abs() < 1e-6 * (1.0 + xty[i][j].abs()),
                "ridge: row {i}, column {j}: {lhs} against {}",
                xty[i][j]
            );
        }
    }
    // tsmm: one partial t(a) a per partition, summed on the coordinator's side.
    client
        .batch_execute("SET tessera.matmul_strategy = 'auto'")
        .await
        .unwrap();
    let got = rows(&client, "SELECT i, j, v FROM matmul(t(a), a)").await;
    let ata = naive(30, 40, 30, |i, k| cell(k, i, 1), |k, j| cell(k, j, 1));
    check("matmul(t(a), a)", &got, &ata);
    // An operand blocked unlike the one it meets is cut into pieces and assembled on
    // the workers; a row vector is repeated into the blocks of the matrix it meets.
    let plan = rows(&client, "EXPLAIN SELECT * FROM matmul(a, c)").await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(
        plan.contains("DistributedExec") && plan.contains("BlockAssembleExec"),
        "reblock: {plan}"
    );
    let got = rows(&client, "SELECT i, j, v FROM matmul(a, c)").await;
    let ac = naive(40, 30, 20, |i, k| cell(i, k, 1), |k, j| cell(k, j, 5));
    check("matmul(a, c) reblocked", &got, &ac);
    let got = rows(&client, "SELECT i, j, v FROM sub(a, colmeans(a))").await;
    let means: Vec<f64> = (0..30)
        .map(|j| (0..40).map(|i| cell(i, j, 1)).sum::<f64>() / 40.0)
        .collect();
    let centered: Vec<Vec<f64>> = (0..40)
        .map(|i| (0..30).map(|j| cell(i, j, 1) - means[j as usize]).collect())
        .collect();
    check("sub(a, colmeans(a))", &got, &centered);
    // A session may keep its statements in the coordinator.
    client
        .batch_execute("SET tessera.distributed = false")
        .await
        .unwrap();
    let plan = rows(&client, "EXPLAIN SELECT * FROM matmul(t(a), a)").await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(!plan.contains("DistributedExec"), "{plan}");
    let got = rows(&client, "SELECT i, j, v FROM matmul(t(a), a)").await;
    check("matmul(t(a), a) in the coordinator", &got, &ata);
    client
        .batch_execute("SET tessera.distributed = true")
        .await
        .unwrap();
    // A relational query stays in this process.
    let count = "SELECT count(*) FROM a WHERE v <> 0";
    let nonzero = (0..40)
        .flat_map(|i| (0..30).map(move |j| cell(i, j, 1)))
        .filter(|v| *v != 0.0)
        .count()
        .to_string();
    let plan = rows(&client, &format!("EXPLAIN {count}")).await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(!plan.contains("DistributedExec"), "{plan}");
    assert_eq!(rows(&client, count).await, vec![vec![nonzero.clone()]]);

    // A worker lost before a statement sends rows: the statement is planned again on
    // the worker left and answers exactly.
    {
        let first = &mut workers.children[0];
        first.kill().unwrap();
        first.wait().unwrap();
    }
    client
        .batch_execute("SET tessera.matmul_strategy = 'repartition'")
        .await
        .unwrap();
    let got = rows(&client, "SELECT i, j, v FROM matmul(a, b)").await;
    check("matmul(a, b) after losing a worker", &got, &ab);
    // The heartbeat (every second) reports the lost worker down.
    let query = "SELECT address, state FROM tessera_workers() ORDER BY address";
    let mut states = rows(&client, query).await;
    for _ in 0..100 {
        if states.iter().any(|r| r[1] == "down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        states = rows(&client, query).await;
    }
    let mut want: Vec<Vec<String>> = workers
        .urls
        .iter()
        .enumerate()
        .map(|(k, url)| {
            vec![
                url.clone(),
                if k == 0 { "down" } else { "live" }.to_string(),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(states, want);
    // The shards of the matrices of several shards are owned by the live workers,
    // none by the lost one.
    let shards: u64 = rows(&client, "SHOW ARRAYS")
        .await
        .iter()
        .filter_map(|r| {
            let n = r[8]
                .split_once('(')?
                .1
                .trim_end_matches(')')
                .parse::<u64>()
                .ok()?;
            (n > 1).then_some(n)
        })
        .sum();
    let owned = rows(
        &client,
        "SELECT address, shards_owned FROM tessera_workers() ORDER BY address",
    )
    .await;
    let by = |state: &str| -> u64 {
        owned
            .iter()
            .zip(&states)
            .filter(|(_, s)| s[1] == state)
            .map(|(o, _)| o[1].parse::<u64>().unwrap())
            .sum()
    };
    assert!(shards > 0);
    assert_eq!((by("live"), by("down")), (shards, 0), "{owned:?}");

    // With no worker left (once the heartbeat has seen them go), a distributed
    // statement fails at once with a retryable error, while the relational query
    // still answers. (With one live worker, every stage has one task and the library
    // runs the plan in the coordinator.)
    workers.kill();
    for _ in 0..100 {
        let states = rows(&client, query).await;
        if states.iter().all(|r| r[1] == "down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = tokio::time::timeout(
        Duration::from_secs(60),
        client.simple_query("SELECT i, j, v FROM matmul(a, b)"),
    )
    .await
    .expect("a query on dead workers must not hang");
    let error = match failed {
        Ok(_) => panic!("a matmul ran without its workers"),
        Err(e) => e,
    };
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("57P01"),
        "a lost worker is a retryable error: {error:?}"
    );
    assert_eq!(rows(&client, count).await, vec![vec![nonzero]]);
    server.shutdown().await;
}

/// A worker killed with SIGKILL while a product runs on three: the statement (an
/// aggregate of the product: its one row is held back until the statement ends) is
/// planned again on the two left and answers exactly; the heartbeat then shows the
/// killed worker down. (Once a statement has sent rows, the client gets 57P01 instead:
/// rows sent cannot be taken back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_product_is_survived_exactly() {
    let (_dir, mut workers, server, client) = cluster(3).await;
    // Small blocks make many block products and exchanged batches: a product that
    // runs long enough to be interrupted.
    const N: u64 = KILL_N;
    for sql in [
        &format!("CREATE MATRIX a ({N}, {N}) BLOCK (8, 8) WITH (shards = 6)"),
        &fill("a", N, N, 1),
        "SET tessera.matmul_strategy = 'repartition'",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let want = naive(N, N, N, |i, k| cell(i, k, 1), |k, j| cell(k, j, 1));
    let got = rows(&client, "SELECT i, j, v FROM matmul(a, a)").await;
    check("matmul(a, a) on three workers", &got, &want);
    // The product summed: one row, sent when the whole product is done. The cells are
    // integers, so the sums are exact in any order.
    let summed = "SELECT sum(v), sum(v * v) FROM matmul(a, a)";
    let cells = want.iter().flatten();
    let exact = vec![vec![
        cells.clone().sum::<f64>().to_string(),
        cells.map(|v| v * v).sum::<f64>().to_string(),
    ]];
    let start = std::time::Instant::now();
    assert_eq!(
        rows(&client, summed).await,
        exact,
        "{summed} on three workers"
    );
    let whole = start.elapsed();
    eprintln!("{summed} on three workers: {whole:?}");
    // A finished statement leaves no task counted as running (its tasks' last
    // messages, their metrics, may still be on their way for a moment).
    let tasks = "SELECT address, running_tasks FROM tessera_workers() ORDER BY address";
    let settled = async |client: &Client| {
        let mut now = rows(client, tasks).await;
        for _ in 0..50 {
            if now.iter().all(|r| r[1] == "0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = rows(client, tasks).await;
        }
        now
    };
    let idle = settled(&client).await;
    assert!(idle.iter().all(|r| r[1] == "0"), "{idle:?}");

    // Again, killing one worker a quarter of the way in.
    let port = server.local_addr().port();
    let running = tokio::spawn(async move {
        let client = connect(port).await;
        let start = std::time::Instant::now();
        let got = rows(&client, summed).await;
        (got, start.elapsed())
    });
    let kill_at = whole / 4;
    let started = std::time::Instant::now();
    // Once its stages are set up, every worker runs tasks of the product (the
    // repartition's stages spread over all three) until it ends.
    let mut busy = rows(&client, tasks).await;
    while !busy.iter().all(|r| r[1].parse::<u64>().unwrap() > 0) && started.elapsed() < whole {
        tokio::time::sleep(Duration::from_millis(10)).await;
        busy = rows(&client, tasks).await;
    }
    assert!(
        busy.iter().all(|r| r[1].parse::<u64>().unwrap() > 0),
        "running tasks mid-product: {busy:?}"
    );
    tokio::time::sleep(kill_at.saturating_sub(started.elapsed())).await;
    {
        let victim = &mut workers.children[1];
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
    let (got, took) = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the product must not hang after losing a worker")
        .unwrap();
    assert!(
        took > kill_at,
        "the product ended ({took:?}) before the worker was killed ({kill_at:?}): nothing was tested"
    );
    assert_eq!(got, exact, "{summed} after a worker was killed mid-product");

    let query = "SELECT address, state FROM tessera_workers() ORDER BY address";
    let mut states = rows(&client, query).await;
    for _ in 0..100 {
        if states.iter().any(|r| r[1] == "down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        states = rows(&client, query).await;
    }
    let down: Vec<&str> = states
        .iter()
        .filter(|r| r[1] == "down")
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(down, [workers.urls[1].as_str()], "{states:?}");
    // The statement was run again because of the killed worker, and of it alone.
    let retried = rows(
        &client,
        "SELECT address, statements_retried FROM tessera_workers() ORDER BY address",
    )
    .await;
    let mut expected: Vec<Vec<String>> = workers
        .urls
        .iter()
        .enumerate()
        .map(|(k, url)| vec![url.to_string(), u64::from(k == 1).to_string()])
        .collect();
    expected.sort();
    assert_eq!(retried, expected);
    // Nothing stays counted: not the finished retry's tasks, nor the lost worker's.
    let idle = settled(&client).await;
    assert!(idle.iter().all(|r| r[1] == "0"), "{idle:?}");

    // The two left killed as well, and the statement sent at once, before the heartbeat
    // can notice: planned on dead workers, it fails with the retryable error within 10
    // seconds (the bound), never hangs.
    workers.kill();
    let start = std::time::Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(30), client.simple_query(summed))
        .await
        .expect("a product on dead workers must not hang");
    let took = start.elapsed();
    let Err(error) = failed else {
        panic!("a product ran with every worker dead");
    };
    assert_eq!(error.code().map(|c| c.code()), Some("57P01"), "{error:?}");
    assert!(took < Duration::from_secs(10), "the error took {took:?}");
    server.shutdown().await;
}

/// The directory of the array created last in the store directory `data`.
fn newest_array(data: &Path) -> std::path::PathBuf {
    std::fs::read_dir(data.join("arrays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let id = p.file_name()?.to_str()?.parse::<u64>().ok()?;
            Some((id, p))
        })
        .max()
        .unwrap()
        .1
}

/// The processes that wrote part files under `dir` (an array's directory): the
/// process id that each part file's name starts with
/// (`part-{pid}-{partition}-{nonce}-shard-{k}.arrow`).
fn part_writers(dir: &Path) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for file in files_under(dir) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if let Some(rest) = name.strip_prefix("part-") {
            pids.insert(rest.split('-').next().unwrap().parse().unwrap());
        }
    }
    pids
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every version directory under `data` holds its manifest and exactly the files the
/// manifest names: no part of a failed attempt or of a lost worker is left.
fn assert_versions_hold_only_their_files(data: &Path) {
    for manifest in files_under(&data.join("arrays"))
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
    {
        // A header line (magic and checksum), then the JSON.
        let bytes = std::fs::read(&manifest).unwrap();
        let body = bytes.splitn(2, |b| *b == b'\n').nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        let named: BTreeSet<std::path::PathBuf> = json["files"]
            .as_object()
            .unwrap()
            .keys()
            .map(|f| data.join(f))
            .collect();
        let dir = manifest.parent().unwrap();
        let held: BTreeSet<std::path::PathBuf> = files_under(dir)
            .into_iter()
            .filter(|f| *f != manifest)
            .collect();
        assert_eq!(held, named, "{}", dir.display());
    }
}

/// A worker killed with SIGKILL while a distributed `CREATE MATRIX ... AS` runs on
/// three, its blocks being written by the workers: the statement is run again on the
/// two left and stores the exact product; nothing of the failed attempt stays (no
/// part file of the killed worker, no file a manifest does not name), and no
/// version of the matrix was ever visible half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_create_matrix_as_is_survived_exactly() {
    let (dir, mut workers, server, client) = cluster(3).await;
    const N: u64 = KILL_N;
    for sql in [
        &format!("CREATE MATRIX a ({N}, {N}) BLOCK (8, 8) WITH (shards = 6)"),
        &fill("a", N, N, 1),
        "SET tessera.matmul_strategy = 'repartition'",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let want = naive(N, N, N, |i, k| cell(i, k, 1), |k, j| cell(k, j, 1));
    let cells = want.iter().flatten();
    let exact = vec![vec![
        cells.clone().sum::<f64>().to_string(),
        cells.map(|v| v * v).sum::<f64>().to_string(),
    ]];
    // Blocked finely too, so the write has many blocks to store.
    let create =
        |name: &str| format!("CREATE MATRIX {name} BLOCK (8, 8) AS SELECT * FROM matmul(a, a)");
    let start = std::time::Instant::now();
    client.batch_execute(&create("whole")).await.unwrap();
    let whole = start.elapsed();
    eprintln!("CREATE MATRIX ... AS matmul(a, a) on three workers: {whole:?}");
    let summed = |name: &str| format!("SELECT sum(v), sum(v * v) FROM {name}");
    assert_eq!(rows(&client, &summed("whole")).await, exact);

    let port = server.local_addr().port();
    let sql = create("again");
    let running = tokio::spawn(async move {
        let client = connect(port).await;
        let start = std::time::Instant::now();
        let done = client.batch_execute(&sql).await;
        (done, start.elapsed())
    });
    let kill_at = whole / 3;
    let started = std::time::Instant::now();
    let tasks = "SELECT address, running_tasks FROM tessera_workers() ORDER BY address";
    let mut busy = rows(&client, tasks).await;
    while !busy.iter().all(|r| r[1].parse::<u64>().unwrap() > 0) && started.elapsed() < whole {
        tokio::time::sleep(Duration::from_millis(10)).await;
        busy = rows(&client, tasks).await;
    }
    tokio::time::sleep(kill_at.saturating_sub(started.elapsed())).await;
    let victim = workers.children[1].id();
    workers.children[1].kill().unwrap();
    workers.children[1].wait().unwrap();
    let (done, took) = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("CREATE MATRIX ... AS must not hang after losing a worker")
        .unwrap();
    done.unwrap_or_else(|e| panic!("CREATE MATRIX ... AS after a worker was killed: {e:?}"));
    assert!(
        took > kill_at,
        "the write ended ({took:?}) before the worker was killed ({kill_at:?}): nothing was tested"
    );
    assert_eq!(rows(&client, &summed("again")).await, exact);
    let retried = rows(
        &client,
        "SELECT statements_retried FROM tessera_workers() ORDER BY address",
    )
    .await;
    let mut urls = workers.urls.clone();
    urls.sort();
    let at = urls.iter().position(|u| *u == workers.urls[1]).unwrap();
    assert_eq!(retried[at], ["1"], "{retried:?}");
    let data = dir.path().join("db").join("store");
    let writers = part_writers(&newest_array(&data));
    assert!(
        !writers.is_empty() && !writers.contains(&victim),
        "the parts of the matrix written again are by {writers:?}; the killed worker was {victim}"
    );
    assert_versions_hold_only_their_files(&data);

    // Every worker killed, and the statement sent at once: it fails with the retryable
    // 57P01 within 10 seconds (the heartbeat, asked at once, finds no worker live), never
    // hangs, and leaves no matrix behind.
    workers.kill();
    let start = std::time::Instant::now();
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        client.batch_execute(&create("alone")),
    )
    .await
    .expect("CREATE MATRIX ... AS with every worker dead must not hang");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "it took {took:?}");
    let Err(error) = done else {
        panic!("CREATE MATRIX ... AS ran with every worker dead");
    };
    assert_eq!(error.code().map(|c| c.code()), Some("57P01"), "{error:?}");
    assert!(
        client.simple_query(&summed("alone")).await.is_err(),
        "a failed CREATE MATRIX left a matrix"
    );
    assert_versions_hold_only_their_files(&data);
    server.shutdown().await;
}

/// The side of the matrix the mid-product kill multiplies by itself.
const KILL_N: u64 = 360;

/// Workers take plans only from coordinators with the cluster's secret: a coordinator
/// with another secret gets no stage run, sees the workers down with the reason, and
/// each refusal is in the workers' log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_refuse_coordinators_without_the_cluster_secret() {
    refused(Some("not the secret"), "a wrong cluster secret").await;
    refused(None, "no cluster secret").await;
}

/// A coordinator with `secret` against workers that require [`SECRET`]; `logged` is
/// what the workers' log says of each refusal.
async fn refused(secret: Option<&str>, logged: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db").join("store");
    std::fs::create_dir_all(&data).unwrap();
    let log = dir.path().join("workers.log");
    let workers = Workers::start(2, &data, SECRET, &log);
    let config = ServerConfig {
        data_dir: data.clone(),
        pg_listen: "127.0.0.1:0".into(),
        workers: workers.urls.clone(),
        cluster_secret: secret.map(str::to_string),
        ..ServerConfig::default()
    };
    let server = Server::builder().config(config).build().await.unwrap();
    let client = connect(server.local_addr().port()).await;
    for sql in [
        "CREATE MATRIX a (40, 30) BLOCK (10, 10) WITH (shards = 4)",
        "CREATE MATRIX b (30, 20) BLOCK (10, 10) WITH (shards = 3)",
        &fill("a", 40, 30, 1),
        &fill("b", 30, 20, 2),
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        client.simple_query("SELECT i, j, v FROM matmul(a, b)"),
    )
    .await
    .expect("a refused coordinator must not hang")
    .expect_err("a worker ran a plan from a coordinator without the secret");
    let code = error.code().map(|c| c.code().to_string());
    assert!(
        matches!(code.as_deref(), Some("28000") | Some("57P01")),
        "{error:?}"
    );
    let states = rows(&client, "SELECT state, error FROM tessera_workers()").await;
    assert_eq!(states.len(), 2);
    for row in &states {
        assert_eq!(row[0], "down", "{states:?}");
        assert!(row[1].contains("cluster's secret"), "{states:?}");
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("refused a request from 127.0.0.1:") && log.contains(logged),
        "{log}"
    );
    server.shutdown().await;
    drop(workers);
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}

/// The one-command trial: `tessera serve --local-workers 2` starts two workers, runs
/// a tsmm on them, and takes them down with it when stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_local_workers_runs_on_them_and_takes_them_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trial-db");
    let data_text = data.display().to_string();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut serve = Command::new(tessera_binary())
        .args(["serve", "--flight-listen", "off", "--local-workers", "2"])
        .arg("--pg-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .env_remove("TESSERA_CLUSTER_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its banner names the workers once it serves.
    let mut banner = String::new();
    let mut err = BufReader::new(serve.stderr.take().unwrap());
    while !banner.contains("run on workers") {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "serve said: {banner}"
        );
        banner.push_str(&line);
    }
    assert_eq!(processes_naming(&data_text), 3, "serve and its two workers");
    let client = connect(port).await;
    client
        .batch_execute(&format!(
            "CREATE MATRIX a (40, 30) BLOCK (10, 10) WITH (shards = 4); {}",
            fill("a", 40, 30, 1)
        ))
        .await
        .unwrap();
    let plan = rows(&client, "EXPLAIN SELECT * FROM matmul(t(a), a)").await;
    let plan: String = plan.iter().map(|r| r.join(" ") + "\n").collect();
    assert!(plan.contains("tasks=2"), "{plan}");
    let got = rows(&client, "SELECT i, j, v FROM matmul(t(a), a)").await;
    let ata = naive(30, 40, 30, |i, k| cell(k, i, 1), |k, j| cell(k, j, 1));
    check("matmul(t(a), a) on local workers", &got, &ata);
    drop(client);
    // SIGTERM: the server stops, and its workers with it.
    Command::new("kill")
        .arg(serve.id().to_string())
        .status()
        .unwrap();
    let status = serve.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut left = processes_naming(&data_text);
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = processes_naming(&data_text);
    }
    assert_eq!(left, 0, "workers outlived their server");
}
