//! Linear algebra through SQL against NumPy (and the relational matmul against DuckDB
//! when the `duckdb` Python package is installed), measured side by side in one run.
//!
//! ```text
//! cargo bench --profile dev -p tessera-server --bench sql          # full sizes
//! TESSERA_BENCH_SMALL=1 cargo bench --profile dev -p tessera-server --bench sql
//! ```
//!
//! Each side is timed best of 3; the two sides never run at once. Prints a table.

#![allow(clippy::expect_used, clippy::panic)] // a benchmark: failing loudly is the point

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_server::Database;

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

fn main() {
    let small = std::env::var_os("TESSERA_BENCH_SMALL").is_some();
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
    sql(&format!(
        "CREATE MATRIX a AS SELECT * FROM rand({n}, {n}, 1.0, 1, 0, 1)"
    ));
    sql(&format!(
        "CREATE MATRIX b AS SELECT * FROM rand({n}, {n}, 1.0, 2, 0, 1)"
    ));
    sql(&format!("COPY a TO '{}' WITH (FORMAT npy)", p(&npy("a"))));
    sql(&format!("COPY b TO '{}' WITH (FORMAT npy)", p(&npy("b"))));
    // Neither side's timing includes removing the previous run's result.
    let ours = (0..3)
        .map(|_| {
            sql("DROP MATRIX IF EXISTS c");
            let t = Instant::now();
            sql("CREATE MATRIX c AS SELECT * FROM matmul(a, b)");
            t.elapsed()
        })
        .min()
        .unwrap_or_default();
    let numpy = python(&format!(
        "import numpy as np, time, os\na=np.load('{a}'); b=np.load('{b}')\nbest=1e9\nfor _ in range(3):\n os.path.exists('{c}') and os.remove('{c}')\n t=time.perf_counter(); c=a@b; np.save('{c}', c); best=min(best, time.perf_counter()-t)\nprint(best)",
        a = p(&npy("a")),
        b = p(&npy("b")),
        c = p(&npy("c_numpy"))
    ));
    table.push((
        format!("CREATE MATRIX c AS matmul(a, b), {n}x{n} dense vs a @ b + np.save"),
        ours,
        numpy,
        0.8,
    ));

    // 2. tsmm of a rows x 100 dense matrix through SQL vs x.T @ x.
    sql(&format!(
        "CREATE MATRIX x AS SELECT * FROM rand({rows}, 100, 1.0, 3, 0, 1)"
    ));
    sql(&format!("COPY x TO '{}' WITH (FORMAT npy)", p(&npy("x"))));
    let ours = best_of(3, || sql("SELECT * FROM matmul(t(x), x)"));
    let numpy = python(&format!(
        "import numpy as np, time\nx=np.load('{x}')\nbest=1e9\nfor _ in range(3):\n t=time.perf_counter(); g=x.T@x; best=min(best, time.perf_counter()-t)\nprint(best)",
        x = p(&npy("x"))
    ));
    table.push((
        format!("SELECT * FROM matmul(t(x), x), x {rows}x100 dense vs x.T @ x"),
        ours,
        numpy,
        1.5,
    ));

    // 3. Relational matmul on 512 x 512 in DuckDB vs Tessera's matmul.
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
