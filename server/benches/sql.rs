//! Linear algebra through SQL against NumPy (and the relational matmul against DuckDB
//! when the `duckdb` Python package is installed), measured side by side in one run.
//!
//! ```text
//! cargo bench --profile dev --workspace --bench sql          # full sizes
//! TESSERA_BENCH_SMALL=1 cargo bench --profile dev --workspace --bench sql
//! TESSERA_BENCH_ONLY=tsmm cargo bench --profile dev --workspace --bench sql  # one workload
//! ```
//!
//! Each side is timed best of 5 rounds, the two sides taking turns (never at once), so
//! load elsewhere on the machine falls on both. Prints a table.

#![allow(clippy::expect_used, clippy::panic)] // a benchmark: failing loudly is the point

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_server::Database;

/// The sum of every `name<number>` in EXPLAIN ANALYZE text (numbers may carry a unit
/// such as `K` or `M`, after a space, as DataFusion prints counts: `16.78 M`).
fn metric_sum(text: &str, name: &str) -> String {
    let mut total = 0.0f64;
    for part in text.split(name).skip(1) {
        let number: String = part
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let scale = match part[number.len()..].trim_start_matches(' ').chars().next() {
            Some('K') => 1e3,
            Some('M') => 1e6,
            Some('G') => 1e9,
            _ => 1.0,
        };
        total += number.parse::<f64>().unwrap_or(0.0) * scale;
    }
    format!("{:.1} MB", total / 1e6)
}

/// The sum of every `bytes_transferred=<number> <unit>` in a distributed EXPLAIN
/// ANALYZE (the library prints `20.1 KB`, `3.5 MB`).
fn network_bytes(text: &str) -> String {
    let mut total = 0.0f64;
    for part in text.split("bytes_transferred=").skip(1) {
        let number: String = part
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let unit = part[number.len()..].trim_start();
        let scale = match unit.chars().next() {
            Some('K') => 1e3,
            Some('M') => 1e6,
            Some('G') => 1e9,
            _ => 1.0,
        };
        total += number.parse::<f64>().unwrap_or(0.0) * scale;
    }
    format!("{:.1} MB", total / 1e6)
}

fn best_of<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Runs a Python snippet that prints one number (seconds); `None` if it fails.
fn python(script: &str) -> Option<f64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Rounds of each side in [`alternate`].
const ROUNDS: usize = 5;

/// A Python process holding its inputs in memory that times `run()` (after an untimed
/// `setup()`) each time it reads a line, and prints the seconds.
struct NumPy {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl NumPy {
    fn start(prelude: &str) -> NumPy {
        let script = format!(
            "{prelude}\nimport sys, time\nfor _ in sys.stdin:\n setup(); t = time.perf_counter(); run(); print(time.perf_counter() - t, flush=True)\n"
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("python's stdout");
        NumPy {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// One timed run, `None` if Python failed (its error is on stderr).
    fn run(&mut self) -> Option<f64> {
        let stdin = self.child.stdin.as_mut()?;
        writeln!(stdin, "go").ok()?;
        self.lines.next()?.ok()?.trim().parse().ok()
    }
}

impl Drop for NumPy {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Best of [`ROUNDS`] for each side, the sides taking turns.
fn alternate(ours: impl FnMut() -> Duration, numpy: &mut NumPy) -> (Duration, Option<f64>) {
    alternate_n(ROUNDS, ours, numpy)
}

fn main() {
    let small = std::env::var_os("TESSERA_BENCH_SMALL").is_some();
    // TESSERA_BENCH_ONLY=matmul|tsmm|relational|aggregates|strategies|distributed|ml runs one.
    let only = std::env::var("TESSERA_BENCH_ONLY").ok();
    let runs = |what: &str| only.as_deref().is_none_or(|o| o == what);
    let (n, rows) = if small {
        (1024, 100_000)
    } else {
        (4096, 1_000_000)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::open(dir.path().join("data")).expect("database");
    let sql = |q: &str| {
        rt.block_on(db.sql(q))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    };
    let npy = |name: &str| dir.path().join(format!("{name}.npy"));
    let p = |path: &Path| path.display().to_string();
    let mut table = Vec::new();

    // 1. CREATE MATRIX c AS matmul(a, b), n x n dense, vs a @ b + numpy.save.
    if runs("matmul") {
        sql(&format!(
            "CREATE MATRIX a AS SELECT * FROM rand({n}, {n}, 1.0, 1, 0, 1)"
        ));
        sql(&format!(
            "CREATE MATRIX b AS SELECT * FROM rand({n}, {n}, 1.0, 2, 0, 1)"
        ));
        sql(&format!("COPY a TO '{}' WITH (FORMAT npy)", p(&npy("a"))));
        sql(&format!("COPY b TO '{}' WITH (FORMAT npy)", p(&npy("b"))));
        // Rounds alternate the two sides, so a burst of load elsewhere on the machine
        // hits both; neither side's timing includes removing the previous result.
        let mut numpy = NumPy::start(&format!(
            "import numpy as np, os\na=np.load('{a}'); b=np.load('{b}')\ndef setup():\n os.path.exists('{c}') and os.remove('{c}')\ndef run():\n np.save('{c}', a @ b)",
            a = p(&npy("a")),
            b = p(&npy("b")),
            c = p(&npy("c_numpy"))
        ));
        let (ours, numpy) = alternate(
            || {
                sql("DROP MATRIX IF EXISTS c");
                let t = Instant::now();
                sql("CREATE MATRIX c AS SELECT * FROM matmul(a, b)");
                t.elapsed()
            },
            &mut numpy,
        );
        table.push((
            format!("CREATE MATRIX c AS matmul(a, b), {n}x{n} dense vs a @ b + np.save"),
            ours,
            numpy,
            0.8,
        ));
    }

    // 2. tsmm of a rows x 100 dense matrix through SQL vs x.T @ x.
    if runs("tsmm") {
        sql(&format!(
            "CREATE MATRIX x AS SELECT * FROM rand({rows}, 100, 1.0, 3, 0, 1)"
        ));
        sql(&format!("COPY x TO '{}' WITH (FORMAT npy)", p(&npy("x"))));
        let mut numpy = NumPy::start(&format!(
            "import numpy as np\nx=np.load('{x}')\ndef setup(): pass\ndef run(): x.T @ x",
            x = p(&npy("x"))
        ));
        let (ours, numpy) = alternate(
            || {
                let t = Instant::now();
                sql("SELECT * FROM matmul(t(x), x)");
                t.elapsed()
            },
            &mut numpy,
        );
        table.push((
            format!("SELECT * FROM matmul(t(x), x), x {rows}x100 dense vs x.T @ x"),
            ours,
            numpy,
            1.5,
        ));
    }

    // 3. Relational matmul on 512 x 512 in DuckDB vs Tessera's matmul.
    if runs("relational") {
        sql("CREATE MATRIX p AS SELECT * FROM rand(512, 512, 1.0, 4, 0, 1)");
        sql("CREATE MATRIX q AS SELECT * FROM rand(512, 512, 1.0, 5, 0, 1)");
        let ours = best_of(3, || sql("SELECT * FROM matmul(p, q)"));
        let relational = best_of(1, || {
            sql("SELECT p.i, q.j, sum(p.v * q.v) AS v FROM p JOIN q ON p.j = q.i GROUP BY p.i, q.j")
        });
        let duckdb = python(
            "import duckdb, numpy as np, time\ncon=duckdb.connect()\nr=np.random.default_rng(0)\nfor n in ['a','b']:\n m=r.random((512,512)); i,j=np.indices(m.shape)\n con.execute(f'CREATE TABLE {n} AS SELECT * FROM (SELECT unnest($1) AS i, unnest($2) AS j, unnest($3) AS v)', [i.ravel().tolist(), j.ravel().tolist(), m.ravel().tolist()])\nt=time.perf_counter(); con.execute('SELECT a.i, b.j, sum(a.v*b.v) FROM a JOIN b ON a.j=b.i GROUP BY a.i, b.j').fetchall(); print(time.perf_counter()-t)",
        );
        table.push((
            "matmul(p, q) 512x512 vs DuckDB's relational join + GROUP BY".into(),
            ours,
            duckdb,
            100.0,
        ));
        table.push((
            "matmul(p, q) 512x512 vs Tessera's own relational join + GROUP BY".into(),
            ours,
            Some(relational.as_secs_f64()),
            100.0,
        ));
    }

    // 4. SQL aggregates over matrix expressions, folded from blocks: the sum of a sparse
    //    times dense product vs SciPy's (S @ D).sum(), and of an elementwise chain vs
    //    NumPy's (A * B + A).sum(). Both sides read the same matrices.
    if runs("aggregates") {
        let sn = if small { 20_000 } else { 100_000 };
        sql(&format!(
            "CREATE MATRIX s AS SELECT * FROM rand({sn}, {sn}, 0.001, 6, 0, 1)"
        ));
        sql(&format!(
            "CREATE MATRIX dn AS SELECT * FROM rand({sn}, 16, 1.0, 7, 0, 1)"
        ));
        let cells = dir.path().join("s.parquet");
        sql(&format!("COPY s TO '{}' WITH (FORMAT parquet)", p(&cells)));
        sql(&format!("COPY dn TO '{}' WITH (FORMAT npy)", p(&npy("dn"))));
        let mut scipy = NumPy::start(&format!(
            "import numpy as np, scipy.sparse as sp, pyarrow.parquet as pq\nt=pq.read_table('{cells}')\nS=sp.csr_matrix((t['v'].to_numpy(), (t['i'].to_numpy(), t['j'].to_numpy())), shape=({sn}, {sn}))\nD=np.load('{dn}')\ndef setup(): pass\ndef run(): (S @ D).sum()",
            cells = p(&cells),
            dn = p(&npy("dn"))
        ));
        let (ours, theirs) = alternate(
            || {
                let t = Instant::now();
                sql("SELECT sum(v) FROM matmul(s, dn)");
                t.elapsed()
            },
            &mut scipy,
        );
        table.push((
            format!("SELECT sum(v) FROM matmul(s, dn), s {sn}^2 with 0.1% non-zeros, dn {sn}x16 vs (S @ D).sum()"),
            ours,
            theirs,
            1.4,
        ));

        sql(&format!(
            "CREATE MATRIX ea AS SELECT * FROM rand({n}, {n}, 1.0, 8, 0, 1)"
        ));
        sql(&format!(
            "CREATE MATRIX eb AS SELECT * FROM rand({n}, {n}, 1.0, 9, 0, 1)"
        ));
        sql(&format!("COPY ea TO '{}' WITH (FORMAT npy)", p(&npy("ea"))));
        sql(&format!("COPY eb TO '{}' WITH (FORMAT npy)", p(&npy("eb"))));
        let mut numpy = NumPy::start(&format!(
            "import numpy as np\nA=np.load('{a}'); B=np.load('{b}')\ndef setup(): pass\ndef run(): (A * B + A).sum()",
            a = p(&npy("ea")),
            b = p(&npy("eb"))
        ));
        let (ours, theirs) = alternate(
            || {
                let t = Instant::now();
                sql("SELECT sum(v) FROM add(mul(ea, eb), ea)");
                t.elapsed()
            },
            &mut numpy,
        );
        table.push((
            format!("SELECT sum(v) FROM add(mul(a, b), a), {n}x{n} dense vs (A * B + A).sum()"),
            ours,
            theirs,
            1.5,
        ));
    }

    // 5. Every matmul strategy forced in turn on n x n dense (and t(x) x, t(x) (x v) for
    //    the fused forms): time, and the bytes through exchanges EXPLAIN ANALYZE reports.
    if runs("strategies") {
        let shards = 4;
        for (name, seed) in [("sa", 10), ("sb", 11)] {
            sql(&format!(
                "CREATE MATRIX {name} BLOCK (1024, 1024) WITH (partitioning = 'rows', shards = {shards}) AS SELECT * FROM rand({n}, {n}, 1.0, {seed}, 0, 1)"
            ));
        }
        sql(&format!(
            "CREATE MATRIX sx BLOCK (8192, 100) AS SELECT * FROM rand({rows}, 100, 1.0, 12, 0, 1)"
        ));
        sql("CREATE MATRIX sv BLOCK (100, 1) AS SELECT * FROM rand(100, 1, 1.0, 13, 0, 1)");
        let mut rows_out = Vec::new();
        // The last two again with exact sums (what distributed statements run with):
        // one partial per product, single-threaded kernels.
        for (strategy, query, exact) in [
            ("local", "matmul(sa, sb)", false),
            ("broadcast", "matmul(sa, sb)", false),
            ("broadcast_left", "matmul(sa, sb)", false),
            ("repartition", "matmul(sa, sb)", false),
            ("replication", "matmul(sa, sb)", false),
            ("copartitioned", "matmul(t(sa), sb)", false),
            ("tsmm", "matmul(t(sx), sx)", false),
            ("mmchain", "matmul(t(sx), matmul(sx, sv))", false),
            ("repartition", "matmul(sa, sb)", true),
            ("tsmm", "matmul(t(sx), sx)", true),
        ] {
            sql(&format!("SET tessera.matmul_strategy = '{strategy}'"));
            sql(&format!("SET tessera.exact_sums = {exact}"));
            let strategy = if exact {
                format!("{strategy}, exact sums")
            } else {
                strategy.to_string()
            };
            let q = format!("SELECT sum(v) FROM {query}");
            let time = best_of(3, || sql(&q));
            let analyzed = rt
                .block_on(db.sql(&format!("EXPLAIN ANALYZE {q}")))
                .unwrap_or_else(|e| panic!("{q}: {e}"));
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&analyzed)
                .expect("explain text")
                .to_string();
            rows_out.push((strategy, query, time, metric_sum(&text, "bytes_moved=")));
        }
        sql("SET tessera.matmul_strategy = 'auto'");
        sql("SET tessera.exact_sums = false");
        println!("| strategy | SELECT sum(v) FROM ... | s | bytes through exchanges |");
        println!("|---|---|---|---|");
        for (strategy, query, time, bytes) in rows_out {
            println!(
                "| {strategy} | {query} | {:.3} | {bytes} |",
                time.as_secs_f64()
            );
        }
        println!(
            "(sa, sb: {n}x{n} dense in 1024x1024 blocks, stored by row over {shards} shards; sx: {rows}x100 dense, sv: 100x1)\n"
        );
    }

    // 6. Two workers of this build on loopback against this process alone, on the same
    //    data and the same two cores: time ratio and the bytes through network
    //    exchanges (EXPLAIN ANALYZE's bytes_transferred).
    if runs("distributed") {
        let data = dir.path().join("cluster");
        std::fs::create_dir_all(&data).expect("cluster dir");
        let secret = "bench";
        let mut workers: Vec<Child> = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..2 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["worker", "--listen", "127.0.0.1:0", "--exit-with-stdin"])
                .arg("--data-dir")
                .arg(&data)
                .env("TESSERA_CLUSTER_SECRET", secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("tessera worker");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("worker banner");
            let url = line
                .split_whitespace()
                .nth(4)
                .expect("worker url")
                .to_string();
            urls.push(url.parse().expect("url"));
            workers.push(child);
        }
        let cluster = rt
            .block_on(async {
                Database::open_with(
                    &data,
                    tessera_server::DatabaseOptions {
                        workers: urls,
                        cluster_secret: Some(secret.into()),
                        ..Default::default()
                    },
                )
            })
            .expect("coordinator");
        let csql = |q: &str| {
            rt.block_on(cluster.sql(q))
                .unwrap_or_else(|e| panic!("{q}: {e}"))
        };
        csql(&format!(
            "CREATE MATRIX da BLOCK (1024, 1024) WITH (shards = 4) AS SELECT * FROM rand({n}, {n}, 1.0, 21, 0, 1)"
        ));
        csql(&format!(
            "CREATE MATRIX db BLOCK (1024, 1024) WITH (shards = 4) AS SELECT * FROM rand({n}, {n}, 1.0, 22, 0, 1)"
        ));
        csql(&format!(
            "CREATE MATRIX dx BLOCK (8192, 100) WITH (shards = 4) AS SELECT * FROM rand({rows}, 100, 1.0, 23, 0, 1)"
        ));
        let mut rows_out = Vec::new();
        for (strategy, query) in [
            ("repartition", "matmul(da, db)"),
            ("broadcast", "matmul(da, db)"),
            ("replication", "matmul(da, db)"),
            ("tsmm", "matmul(t(dx), dx)"),
        ] {
            csql(&format!("SET tessera.matmul_strategy = '{strategy}'"));
            let q = format!("SELECT sum(v) FROM {query}");
            let mut one = Duration::MAX;
            let mut two = Duration::MAX;
            for _ in 0..3 {
                csql("SET tessera.distributed = false");
                let t = Instant::now();
                csql(&q);
                one = one.min(t.elapsed());
                csql("SET tessera.distributed = true");
                let t = Instant::now();
                csql(&q);
                two = two.min(t.elapsed());
            }
            let analyzed = csql(&format!("EXPLAIN ANALYZE {q}"));
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&analyzed)
                .expect("explain text")
                .to_string();
            assert!(
                text.contains("NetworkShuffleExec")
                    || text.contains("NetworkCoalesceExec")
                    || text.contains("NetworkBroadcastExec"),
                "{strategy} did not run on the workers:\n{text}"
            );
            rows_out.push((strategy, query, one, two, network_bytes(&text)));
        }
        println!(
            "| strategy | SELECT sum(v) FROM ... | one process s | 2 workers s | ratio (2 workers / one) | bytes over the network |"
        );
        println!("|---|---|---|---|---|---|");
        for (strategy, query, one, two, bytes) in rows_out {
            println!(
                "| {strategy} | {query} | {:.3} | {:.3} | {:.2}x | {bytes} |",
                one.as_secs_f64(),
                two.as_secs_f64(),
                two.as_secs_f64() / one.as_secs_f64()
            );
        }
        println!(
            "(da, db: {n}x{n} dense in 1024x1024 blocks over 4 shards; dx: {rows}x100 dense over 4 shards; workers and coordinator share this machine's cores)\n"
        );
        drop(cluster);
        for mut w in workers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    // 6. The ML builtins through SQL against NumPy / scikit-learn on the same data.
    if runs("ml") {
        ml(&rt, &db, dir.path(), rows, &mut table);
    }

    println!("| workload | Tessera s | other s | speed ratio (other / Tessera) | target |");
    println!("|---|---|---|---|---|");
    for (what, ours, other, target) in table {
        let ours = ours.as_secs_f64();
        match other {
            Some(o) => println!(
                "| {what} | {ours:.3} | {o:.3} | {:.2}x | {target}x |",
                o / ours
            ),
            None => println!("| {what} | {ours:.3} | (not available) | - | {target}x |"),
        }
    }
}

/// A row of the summary table: what ran, Tessera's time, the other side's, the target.
type Row = (String, Duration, Option<f64>, f64);

/// Best of `rounds` for each side, the sides taking turns.
fn alternate_n(
    rounds: usize,
    mut ours: impl FnMut() -> Duration,
    other: &mut NumPy,
) -> (Duration, Option<f64>) {
    let mut best = (Duration::MAX, None::<f64>);
    for _ in 0..rounds {
        best.0 = best.0.min(ours());
        if let Some(t) = other.run() {
            best.1 = Some(best.1.map_or(t, |b| b.min(t)));
        }
    }
    best
}

/// The ML workloads of issue 19: `lm` closed form and by CG, ten `lm` fits as
/// independent tasks (a `LATERAL` sweep; each scheduling scheme forced in turn), `cor`,
/// k-means and logistic regression. The data is drawn by NumPy and loaded with `COPY`.
fn ml(rt: &tokio::runtime::Runtime, db: &Database, dir: &Path, rows: usize, table: &mut Vec<Row>) {
    let sql = |q: &str| {
        rt.block_on(db.sql(q))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
    };
    let timed = |q: &str| {
        let t = Instant::now();
        sql(q);
        t.elapsed()
    };
    let path = |name: &str| dir.join(format!("ml_{name}.npy")).display().to_string();
    let cor_rows = rows / 10;
    let made = python(&format!(
        "import numpy as np\n\
         r = np.random.default_rng(7)\n\
         x = r.standard_normal(({rows}, 100)); np.save('{x}', x)\n\
         y = x @ r.standard_normal((100, 1)) + 0.1 * r.standard_normal(({rows}, 1)); np.save('{y}', y)\n\
         np.save('{c}', (x[:, :1] + x[:, 1:2] + 0.5 * r.standard_normal(({rows}, 1)) > 0).astype(float))\n\
         np.save('{w}', r.standard_normal(({cor_rows}, 200)))\n\
         centres = 4 * r.standard_normal((10, 20))\n\
         np.save('{k}', centres[r.integers(0, 10, {rows})] + r.standard_normal(({rows}, 20)))\n\
         print(0)",
        x = path("x"),
        y = path("y"),
        c = path("c"),
        w = path("w"),
        k = path("k"),
    ));
    if made.is_none() {
        eprintln!("ml: NumPy could not write the data; skipped");
        return;
    }
    for (name, shape) in [
        ("mx", format!("({rows}, 100) BLOCK (10000, 100)")),
        ("my", format!("({rows}, 1) BLOCK (10000, 1)")),
        ("mc", format!("({rows}, 1) BLOCK (10000, 1)")),
        ("mw", format!("({cor_rows}, 200)")),
        ("mk", format!("({rows}, 20) BLOCK (10000, 20)")),
    ] {
        let file = path(&name[1..]);
        sql(&format!(
            "CREATE MATRIX {name} {shape}; COPY {name} FROM '{file}' WITH (FORMAT npy)"
        ));
    }
    let prelude = format!(
        "import numpy as np\nx = np.load('{x}'); y = np.load('{y}'); c = np.load('{c}').ravel(); w = np.load('{w}'); k = np.load('{k}')\ndef setup(): pass\n",
        x = path("x"),
        y = path("y"),
        c = path("c"),
        w = path("w"),
        k = path("k"),
    );
    let numpy = |run: &str| NumPy::start(&format!("{prelude}{run}"));
    // Every timed call computes its jobs: the lineage cache would serve t(X) X from
    // the second call on (its own row below measures that).
    sql("SET tessera.reuse = false");

    // lm, closed form: the builtin, and the same in matrix functions.
    let mut other = numpy("def run(): np.linalg.solve(x.T @ x + 0.001 * np.eye(100), x.T @ y)");
    let (ours, theirs) = alternate_n(
        5,
        || timed("SELECT * FROM lm(mx, my, lambda => 0.001)"),
        &mut other,
    );
    table.push((
        format!(
            "lm(x, y, lambda => 0.001), x {rows}x100 vs np.linalg.solve(x.T @ x + 0.001 I, x.T @ y)"
        ),
        ours,
        theirs,
        1.5,
    ));
    let (ours, theirs) = alternate_n(
        5,
        || {
            timed(
                "SELECT * FROM solve(add(matmul(t(mx), mx), scale(eye(100), 0.001)), matmul(t(mx), my))",
            )
        },
        &mut other,
    );
    table.push((
        "the same as solve(add(matmul(t(x), x), scale(eye(100), 0.001)), matmul(t(x), y))".into(),
        ours,
        theirs,
        1.5,
    ));
    // A sweep written as separate statements: with reuse, the first one computes
    // t(X) X and t(X) y into the lineage cache and the others take them from there.
    sql("SET tessera.reuse = true");
    sql("SELECT * FROM lm(mx, my, lambda => 0.5)");
    let (ours, theirs) = alternate_n(
        5,
        || timed("SELECT * FROM lm(mx, my, lambda => 0.001)"),
        &mut other,
    );
    table.push((
        "lm(x, y, lambda => 0.001) after an lm over the same x and y (SET tessera.reuse = true: jobs from the lineage cache) vs np.linalg.solve".into(),
        ours,
        theirs,
        1.5,
    ));
    sql("SET tessera.reuse = false");
    drop(other);

    // lm by conjugate gradient, 20 iterations on both sides.
    let mut other = numpy(
        "def run():\n b = x.T @ y; v = np.zeros((100, 1)); r = b.copy(); p = r.copy(); rs = float((r * r).sum())\n for _ in range(20):\n  q = x.T @ (x @ p) + 0.001 * p; a = rs / float((p * q).sum()); v += a * p; r -= a * q; rn = float((r * r).sum()); p = r + (rn / rs) * p; rs = rn",
    );
    let (ours, theirs) = alternate_n(
        3,
        || {
            timed(
                "SELECT * FROM lm(mx, my, lambda => 0.001, solver => 'cg', max_iter => 20, tol => 0)",
            )
        },
        &mut other,
    );
    table.push((
        format!("lm by CG, 20 iterations, x {rows}x100 vs the same loop in NumPy"),
        ours,
        theirs,
        2.0,
    ));
    drop(other);

    // Ten lm fits as independent tasks: NumPy fits each from scratch.
    sql("CREATE TABLE IF NOT EXISTS ml_sweep (lambda DOUBLE PRECISION)");
    sql(
        "INSERT INTO ml_sweep VALUES (0.001), (0.01), (0.1), (1), (2), (5), (10), (20), (50), (100)",
    );
    let mut other = numpy(
        "def run():\n for l in [0.001, 0.01, 0.1, 1, 2, 5, 10, 20, 50, 100]: np.linalg.solve(x.T @ x + l * np.eye(100), x.T @ y)",
    );
    let sweep =
        "SELECT s.lambda, m.i, m.v FROM ml_sweep s, LATERAL lm(mx, my, lambda => s.lambda) m";
    for scheme in ["auto", "naive", "static", "fixed", "factoring"] {
        sql(&format!("SET parfor.scheme = '{scheme}'"));
        let (ours, theirs) = alternate_n(3, || timed(sweep), &mut other);
        table.push((format!("ten lm fits, LATERAL over 10 lambdas, parfor.scheme = {scheme}, vs ten np.linalg.solve"), ours, theirs, 1.8));
    }
    sql("SET parfor.scheme = 'auto'");
    drop(other);

    // cor of 200 columns.
    let mut other = numpy("def run(): np.corrcoef(w, rowvar=False)");
    let (ours, theirs) = alternate_n(5, || timed("SELECT * FROM cor(mw)"), &mut other);
    table.push((
        format!("cor(w), w {cor_rows}x200 vs np.corrcoef"),
        ours,
        theirs,
        1.0,
    ));
    drop(other);

    // k-means, one run of at most 20 Lloyd steps, and logistic regression.
    let mut other = numpy(
        "from sklearn.cluster import KMeans\ndef run(): KMeans(n_clusters=10, n_init=1, max_iter=20, algorithm='lloyd', random_state=0).fit(k)",
    );
    let (ours, theirs) = alternate_n(
        2,
        || timed("SELECT * FROM kmeans(mk, 10, runs => 1, max_iter => 20)"),
        &mut other,
    );
    table.push((format!("kmeans(k, 10, runs => 1, max_iter => 20), k {rows}x20 vs scikit-learn KMeans(n_init=1, max_iter=20)"), ours, theirs, 1.0));
    drop(other);
    let mut other = numpy(
        "from sklearn.linear_model import LogisticRegression\ndef run(): LogisticRegression(C=1.0, tol=1e-6, max_iter=1000).fit(x, c)",
    );
    let (ours, theirs) = alternate_n(
        2,
        || timed("SELECT * FROM logreg(mx, mc, lambda => 1, tol => 1e-6)"),
        &mut other,
    );
    table.push((format!("logreg(x, c, lambda => 1), x {rows}x100, two classes vs scikit-learn LogisticRegression(C=1)"), ours, theirs, 1.0));
    drop(other);
}
