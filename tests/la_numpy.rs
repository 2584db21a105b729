//! Linear algebra through the SQL front door, checked by NumPy and SciPy: NumPy writes
//! the inputs, Tessera loads them with `COPY`, computes every function (and every
//! matmul strategy, forced in turn) with `CREATE MATRIX ... AS SELECT * FROM f(...)`
//! and writes each result back out with `COPY ... TO '.npy'`; NumPy then recomputes
//! each result its own way and names every one that differs.

use std::path::Path;

use tessera_server::{Database, DatabaseOptions};

use crate::python;

/// The inputs, written by NumPy. Shapes are not multiples of the block sizes given
/// below, so every edge block is partial.
const INPUTS: &str = r#"
import numpy as np, scipy.sparse, scipy.io
rng = np.random.default_rng(2026)
a = rng.standard_normal((53, 41))
b = rng.standard_normal((41, 29))
s = scipy.sparse.random(60, 45, density=0.08, random_state=1, format='coo') * 10
u = scipy.sparse.random(45, 31, density=0.1, random_state=2, format='coo') * 10
x = rng.standard_normal((700, 12))
w = rng.standard_normal((12, 1))
r = rng.standard_normal((1, 41))
c = rng.standard_normal((53, 1)) + 3.0
y = rng.standard_normal((12, 2))
np.save('a.npy', a); np.save('b.npy', b); np.save('x.npy', x); np.save('w.npy', w)
np.save('r.npy', r); np.save('c.npy', c); np.save('y.npy', y)
scipy.io.mmwrite('s.mtx', s); scipy.io.mmwrite('u.mtx', u)
"#;

/// `(name, shape, SQL)` of every result Tessera computes; the checker below has the
/// NumPy expression for each name.
fn cases() -> Vec<(String, (u64, u64), String)> {
    let mut cases = Vec::new();
    let mut add = |name: &str, shape: (u64, u64), sql: &str| {
        cases.push((name.to_string(), shape, sql.to_string()));
    };
    // Products, dense and sparse; every strategy is forced in turn further down.
    add("ab", (53, 29), "matmul(a, b)");
    add("su", (60, 31), "matmul(s, u)");
    add("as_t", (53, 60), "matmul(a, t(slice(s, 0, 60, 0, 41)))");
    add("tsmm", (12, 12), "matmul(t(x), x)");
    add("mmchain", (12, 1), "matmul(t(x), matmul(x, w))");
    add(
        "chain",
        (53, 1),
        "matmul(matmul(a, b), matmul(t(b), slice(b, 0, 41, 0, 1)))",
    );
    // Solvers on a symmetric positive definite system built in SQL.
    let spd = "add(matmul(t(x), x), scale(eye(12), 0.5))";
    add("solve", (12, 2), &format!("solve({spd}, y)"));
    add("inv", (12, 12), &format!("inv({spd})"));
    add("chol", (12, 12), &format!("cholesky({spd})"));
    // Aggregates.
    add("rowsums", (53, 1), "rowsums(a)");
    add("colsums", (1, 41), "colsums(a)");
    add("rowmeans", (60, 1), "rowmeans(s)");
    add("colmeans", (1, 45), "colmeans(s)");
    add("sum", (1, 1), "sum(a)");
    add("min", (1, 1), "min(a)");
    add("max", (1, 1), "max(s)");
    add("nnz", (1, 1), "nnz(s)");
    // Elementwise, with row- and column-vector broadcasting, and fused chains.
    add("add_row", (53, 41), "add(a, r)");
    add("sub_col", (53, 41), "sub(a, c)");
    add("mul_row", (53, 41), "mul(r, a)");
    add("div_col", (53, 41), "div(a, c)");
    add(
        "fused",
        (53, 41),
        "sqrt(abs(add(scale(exp(scale(a, 0.1)), 2), pow(a, 2))))",
    );
    add("log_col", (53, 1), "log(c)");
    // Reshaping.
    add("t_s", (45, 60), "t(s)");
    add("slice", (20, 11), "slice(a, 7, 27, 30, 41)");
    add("cbind", (53, 82), "cbind(a, a)");
    add("rbind", (82, 41), "rbind(a, t(b))");
    add("diag", (41, 1), "diag(slice(a, 0, 41, 0, 41))");
    add("diag_v", (53, 53), "diag(c)");
    cases
}

/// Matmul strategies forced in turn on the dense and the sparse product.
const STRATEGIES: &[&str] = &[
    "local",
    "broadcast",
    "broadcast_left",
    "repartition",
    "replication",
];

/// The checker: NumPy's value of every case, compared with Tessera's `.npy` output.
const CHECK: &str = r#"
import numpy as np, scipy.io, sys
a = np.load('a.npy'); b = np.load('b.npy'); x = np.load('x.npy'); w = np.load('w.npy')
r = np.load('r.npy'); c = np.load('c.npy'); y = np.load('y.npy')
s = scipy.io.mmread('s.mtx').toarray(); u = scipy.io.mmread('u.mtx').toarray()
spd = x.T @ x + 0.5 * np.eye(12)
want = {
    'ab': a @ b, 'su': s @ u, 'as_t': a @ s[:, :41].T, 'tsmm': x.T @ x,
    'mmchain': x.T @ (x @ w), 'chain': (a @ b) @ (b.T @ b[:, :1]),
    'solve': np.linalg.solve(spd, y), 'inv': np.linalg.inv(spd),
    'chol': np.linalg.cholesky(spd),
    'rowsums': a.sum(axis=1, keepdims=True), 'colsums': a.sum(axis=0, keepdims=True),
    'rowmeans': s.mean(axis=1, keepdims=True), 'colmeans': s.mean(axis=0, keepdims=True),
    'sum': np.array([[a.sum()]]), 'min': np.array([[a.min()]]), 'max': np.array([[s.max()]]),
    'nnz': np.array([[np.count_nonzero(s)]], dtype=float),
    'add_row': a + r, 'sub_col': a - c, 'mul_row': r * a, 'div_col': a / c,
    'fused': np.sqrt(np.abs(np.exp(a * 0.1) * 2 + a ** 2)), 'log_col': np.log(c),
    't_s': s.T, 'slice': a[7:27, 30:41], 'cbind': np.hstack([a, a]),
    'rbind': np.vstack([a, b.T]), 'diag': np.diag(a[:41, :41]).reshape(-1, 1),
    'diag_v': np.diag(c[:, 0]),
}
for st in sys.argv[1].split(','):
    want['ab_' + st] = a @ b
    want['su_' + st] = s @ u
    want['tsmm_' + st] = x.T @ x
bad = []
for name, expected in want.items():
    got = np.load(name + '_out.npy')
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-9, atol=1e-9):
        err = np.abs(got - expected).max() if got.shape == expected.shape else 'shape'
        bad.append(f'{name}: got shape {got.shape}, want {expected.shape}, max error {err}')
print('\n'.join(bad) or 'ok')
"#;

#[test]
fn every_function_and_strategy_matches_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(d, INPUTS);
    let p = |f: &str| d.join(f).display().to_string();

    let mut script = String::new();
    let load = [
        ("a", "(53, 41) BLOCK (10, 8)", "a.npy", "npy"),
        ("b", "(41, 29) BLOCK (8, 7)", "b.npy", "npy"),
        ("s", "(60, 45) BLOCK (16, 10) SPARSE", "s.mtx", "mtx"),
        ("u", "(45, 31) BLOCK (10, 9)", "u.mtx", "mtx"),
        ("x", "(700, 12) BLOCK (64, 12)", "x.npy", "npy"),
        ("w", "(12, 1)", "w.npy", "npy"),
        ("r", "(1, 41) BLOCK (1, 8)", "r.npy", "npy"),
        ("c", "(53, 1) BLOCK (10, 1)", "c.npy", "npy"),
        ("y", "(12, 2)", "y.npy", "npy"),
    ];
    for (name, shape, file, format) in load {
        script.push_str(&format!(
            "CREATE MATRIX {name} {shape}; COPY {name} FROM '{}' WITH (FORMAT {format});\n",
            p(file)
        ));
    }
    let out = |name: &str, shape: (u64, u64), sql: &str| {
        format!(
            "CREATE MATRIX {name}_out ({}, {}) AS SELECT * FROM {sql};\n\
             COPY {name}_out TO '{}' WITH (FORMAT npy);\n",
            shape.0,
            shape.1,
            p(&format!("{name}_out.npy"))
        )
    };
    for (name, shape, sql) in cases() {
        script.push_str(&out(&name, shape, &sql));
    }
    for st in STRATEGIES {
        script.push_str(&format!("SET tessera.matmul_strategy = '{st}';\n"));
        script.push_str(&out(&format!("ab_{st}"), (53, 29), "matmul(a, b)"));
        script.push_str(&out(&format!("su_{st}"), (60, 31), "matmul(s, u)"));
        script.push_str(&out(&format!("tsmm_{st}"), (12, 12), "matmul(t(x), x)"));
    }

    run_script(&d.join("db"), &script);
    let verdict = python::run_args(d, CHECK, &[&STRATEGIES.join(",")]);
    assert_eq!(verdict.trim(), "ok", "results that differ from NumPy");
}

/// Runs `script` on a four-partition database in `dir`, so that every strategy really
/// splits its work.
fn run_script(dir: &Path, script: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = DatabaseOptions {
            target_partitions: Some(4),
            ..DatabaseOptions::default()
        };
        let db = Database::open_with(dir, options).unwrap();
        db.sql(script).await.unwrap_or_else(|e| panic!("{e}"));
    });
}
