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

/// Random nested matrix expressions, each with its NumPy twin: shapes chosen to fit,
/// dense and sparse leaves (sliced to the shape wanted), every matmul strategy setting
/// and exact sums on or off from case to case. Tessera stores each result and writes
/// it out as `.npy`; NumPy evaluates the twin and names every case that differs.
struct Expressions {
    state: u64,
}

impl Expressions {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A leaf of `shape`: a slice of the 60 x 50 dense `g` or sparse `h` (or of their
    /// transposes), or the whole of one when the shape is theirs.
    fn leaf(&mut self, (r, c): (u64, u64)) -> (String, String) {
        let (name, np) = if self.chance(50) {
            ("g", "g")
        } else {
            ("h", "h")
        };
        let transposed = r <= 50 && c <= 50 && self.chance(30);
        let (src, py, (rows, cols)) = if transposed {
            (format!("t({name})"), format!("{np}.T"), (50, 60))
        } else {
            (name.to_string(), np.to_string(), (60, 50))
        };
        if (r, c) == (rows, cols) {
            return (src, py);
        }
        let r0 = self.below(rows - r + 1);
        let c0 = self.below(cols - c + 1);
        (
            format!("slice({src}, {r0}, {}, {c0}, {})", r0 + r, c0 + c),
            format!("({py})[{r0}:{}, {c0}:{}]", r0 + r, c0 + c),
        )
    }

    /// An expression of `shape` at most `depth` deep: `(SQL, NumPy)`.
    fn expr(&mut self, shape: (u64, u64), depth: u32) -> (String, String) {
        let (r, c) = shape;
        if depth == 0 || self.chance(20) {
            return self.leaf(shape);
        }
        let d = depth - 1;
        loop {
            match self.below(13) {
                0 | 1 => {
                    let k = 1 + self.below(40);
                    let (a, pa) = self.expr((r, k), d);
                    let (b, pb) = self.expr((k, c), d);
                    return (format!("matmul({a}, {b})"), format!("(({pa}) @ ({pb}))"));
                }
                2 => {
                    let (a, pa) = self.expr((r, c), d);
                    let (b, pb) = self.expr((r, c), d);
                    return (format!("add({a}, {b})"), format!("(({pa}) + ({pb}))"));
                }
                3 => {
                    let (a, pa) = self.expr((r, c), d);
                    let (b, pb) = self.expr((r, c), d);
                    return (format!("sub({a}, {b})"), format!("(({pa}) - ({pb}))"));
                }
                4 => {
                    let (a, pa) = self.expr((r, c), d);
                    let (b, pb) = self.expr((r, c), d);
                    return (format!("mul({a}, {b})"), format!("(({pa}) * ({pb}))"));
                }
                5 => {
                    let s = [0.5, -2.0, 3.0][self.below(3) as usize];
                    let (a, pa) = self.expr((r, c), d);
                    return (format!("scale({a}, {s})"), format!("(({pa}) * {s})"));
                }
                6 => {
                    let (a, pa) = self.expr((c, r), d);
                    return (format!("t({a})"), format!("(({pa}).T)"));
                }
                7 if r >= 2 => {
                    let top = 1 + self.below(r - 1);
                    let (a, pa) = self.expr((top, c), d);
                    let (b, pb) = self.expr((r - top, c), d);
                    return (
                        format!("rbind({a}, {b})"),
                        format!("np.vstack([{pa}, {pb}])"),
                    );
                }
                8 if c >= 2 => {
                    let left = 1 + self.below(c - 1);
                    let (a, pa) = self.expr((r, left), d);
                    let (b, pb) = self.expr((r, c - left), d);
                    return (
                        format!("cbind({a}, {b})"),
                        format!("np.hstack([{pa}, {pb}])"),
                    );
                }
                9 => {
                    // A vector (or a 1 x 1) broadcast over a matrix.
                    let (a, pa) = self.expr((r, c), d);
                    let vshape = match self.below(3) {
                        0 => (1, c),
                        1 => (r, 1),
                        _ => (1, 1),
                    };
                    let (v, pv) = self.expr(vshape, d);
                    return (format!("sub({a}, {v})"), format!("(({pa}) - ({pv}))"));
                }
                10 if c == 1 => {
                    let k = 1 + self.below(40);
                    let (a, pa) = self.expr((r, k), d);
                    let (f, pf) = if self.chance(50) {
                        ("rowsums", "sum")
                    } else {
                        ("rowmeans", "mean")
                    };
                    return (
                        format!("{f}({a})"),
                        format!("(({pa}).{pf}(axis=1, keepdims=True))"),
                    );
                }
                10 if r == 1 => {
                    let k = 1 + self.below(40);
                    let (a, pa) = self.expr((k, c), d);
                    let (f, pf) = if self.chance(50) {
                        ("colsums", "sum")
                    } else {
                        ("colmeans", "mean")
                    };
                    return (
                        format!("{f}({a})"),
                        format!("(({pa}).{pf}(axis=0, keepdims=True))"),
                    );
                }
                11 if (r, c) == (1, 1) => {
                    let inner = (1 + self.below(30), 1 + self.below(30));
                    let (a, pa) = self.expr(inner, d);
                    let f = ["sum", "min", "max"][self.below(3) as usize];
                    return (format!("{f}({a})"), format!("np.array([[({pa}).{f}()]])"));
                }
                11 if c == 1 && r >= 2 => {
                    let (a, pa) = self.expr((r, r), d);
                    return (
                        format!("diag({a})"),
                        format!("np.diag({pa}).reshape(-1, 1)"),
                    );
                }
                11 if r == c && r >= 2 => {
                    let (v, pv) = self.expr((r, 1), d);
                    return (format!("diag({v})"), format!("np.diag(({pv})[:, 0])"));
                }
                12 => {
                    // A slice of a larger expression (shapes stay within 50 x 50, so
                    // every leaf can be cut from g, h or their transposes).
                    let er = (r + self.below(8)).min(50).max(r);
                    let ec = (c + self.below(8)).min(50).max(c);
                    let (a, pa) = self.expr((er, ec), d);
                    let (r0, c0) = (self.below(er - r + 1), self.below(ec - c + 1));
                    return (
                        format!("slice({a}, {r0}, {}, {c0}, {})", r0 + r, c0 + c),
                        format!("(({pa})[{r0}:{}, {c0}:{}])", r0 + r, c0 + c),
                    );
                }
                _ => continue,
            }
        }
    }
}

/// How many random expressions [`generated_expressions_match_numpy`] checks.
const GENERATED: usize = 400;

#[test]
fn generated_expressions_match_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    python::run(
        d,
        r#"
import numpy as np, scipy.sparse, scipy.io
rng = np.random.default_rng(17)
np.save('g.npy', rng.standard_normal((60, 50)))
scipy.io.mmwrite('h.mtx', scipy.sparse.random(60, 50, density=0.1, random_state=3, format='coo') * 4)
"#,
    );
    let p = |f: &str| d.join(f).display().to_string();
    let mut script = format!(
        "CREATE MATRIX g (60, 50) BLOCK (16, 12); COPY g FROM '{}' WITH (FORMAT npy);\n\
         CREATE MATRIX h (60, 50) BLOCK (9, 20) SPARSE; COPY h FROM '{}' WITH (FORMAT mtx);\n",
        p("g.npy"),
        p("h.mtx")
    );
    let mut twins = String::from("want = {}\n");
    let strategies = [
        "auto",
        "local",
        "broadcast",
        "broadcast_left",
        "repartition",
        "replication",
    ];
    let mut exprs = Expressions {
        state: 0x5EED_2026_1207,
    };
    for n in 0..GENERATED {
        let shape = (1 + exprs.below(30), 1 + exprs.below(30));
        let (sql, py) = exprs.expr(shape, 3);
        let strategy = strategies[exprs.below(strategies.len() as u64) as usize];
        let exact = exprs.chance(30);
        script.push_str(&format!(
            "SET tessera.matmul_strategy = '{strategy}'; SET tessera.exact_sums = {exact};\n\
             CREATE MATRIX e{n} ({}, {}) AS SELECT * FROM {sql};\n\
             COPY e{n} TO '{}' WITH (FORMAT npy);\n",
            shape.0,
            shape.1,
            p(&format!("e{n}.npy"))
        ));
        twins.push_str(&format!(
            "want['e{n}'] = ({py}, {sql:?}, '{strategy}, exact {exact}')\n"
        ));
    }
    std::fs::write(d.join("twins.py"), twins).unwrap();
    run_script(&d.join("db"), &script);
    let verdict = python::run(
        d,
        r#"
import numpy as np, scipy.io
g = np.load('g.npy'); h = scipy.io.mmread('h.mtx').toarray()
exec(open('twins.py').read())
bad = []
for name, (expected, sql, setting) in want.items():
    got = np.load(name + '.npy')
    scale = max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-9, atol=1e-9 * scale):
        err = np.abs(got - expected).max() if got.shape == expected.shape else 'shape'
        bad.append(f'{name} ({setting}): {sql}: got {got.shape}, want {expected.shape}, max error {err}')
print(f'{len(want)} cases'); print('\n'.join(bad) or 'ok')
"#,
    );
    assert_eq!(
        verdict.trim(),
        format!("{GENERATED} cases\nok"),
        "generated expressions that differ from NumPy"
    );
}
