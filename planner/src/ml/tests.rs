//! Builtins through SQL, checked against reference arithmetic written out here (naive
//! normal equations, definitions of covariance and ranks, optimality conditions).

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use tessera_storage::{ArraySchema, Block, BlockKey, DenseBlock, Partitioning, Store, WriteMode};

use crate::catalog::{DEFAULT_CATALOG, DEFAULT_SCHEMA};
use crate::error::{ErrorKind, TesseraError};
use datafusion::common::config::Dialect;

type M = Vec<Vec<f64>>;

/// A session as the server builds one: PostgreSQL's dialect, and a catalog in which
/// the stored arrays are tables (`SELECT i, j, v FROM x`).
fn session(store: &Store) -> SessionContext {
    session_with_pool(store, None)
}

/// [`session`] with a memory pool of `limit` bytes.
fn session_with_pool(store: &Store, limit: Option<usize>) -> SessionContext {
    let catalog = crate::TesseraCatalog::in_memory(store.clone());
    let mut options = SessionConfig::new()
        .with_target_partitions(2)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA);
    options.options_mut().sql_parser.dialect = Dialect::PostgreSQL;
    let config = crate::la::session_config(options);
    let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if let Some(limit) = limit {
        runtime = runtime.with_memory_limit(limit, 1.0);
    }
    let builder = SessionStateBuilder::new()
        .with_runtime_env(std::sync::Arc::new(runtime.build().unwrap()))
        .with_config(config)
        .with_catalog_list(catalog.catalog_list().unwrap())
        .with_default_features();
    SessionContext::new_with_state(crate::la::install(builder, store.clone()).build())
}

fn put(store: &Store, name: &str, m: &M, block: (u64, u64)) {
    let (r, c) = (m.len(), m[0].len());
    let schema = ArraySchema::matrix(r as u64, c as u64, block.0, block.1).unwrap();
    store
        .create_array(name, schema, Some(Partitioning::default()), None)
        .unwrap();
    let mut w = store.writer(name, WriteMode::Replace).unwrap();
    for bi in 0..(r as u64).div_ceil(block.0) {
        for bj in 0..(c as u64).div_ceil(block.1) {
            let (r0, c0) = ((bi * block.0) as usize, (bj * block.1) as usize);
            let (br, bc) = (
                (block.0 as usize).min(r - r0),
                (block.1 as usize).min(c - c0),
            );
            let d = DenseBlock::from_fn(br, bc, |i, j| m[r0 + i][c0 + j]);
            let b = Block::Dense(d).into_preferred_format();
            if b.nnz() > 0 {
                w.put_block(BlockKey::matrix(bi as i64, bj as i64), b)
                    .unwrap();
            }
        }
    }
    w.commit().unwrap();
}

/// Pseudo-random values in [-5, 5), deterministic in `seed`.
fn data(r: usize, c: usize, seed: u64) -> M {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..r)
        .map(|_| {
            (0..c)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 11) as f64 / (1u64 << 53) as f64 * 10.0 - 5.0
                })
                .collect()
        })
        .collect()
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

/// The result of `sql` (an EXPLAIN) as the text a client sees.
async fn text_of(ctx: &SessionContext, sql: &str) -> Result<String> {
    let batches = run(ctx, sql).await?;
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
}

/// A metric `name` of an EXPLAIN ANALYZE's text, summed over every place it shows
/// (the workers of a parfor run, say).
fn metric_sum(text: &str, name: &str) -> usize {
    text.split(&format!("{name}="))
        .skip(1)
        .filter_map(|count| {
            count
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<usize>()
                .ok()
        })
        .sum()
}

async fn matrix(ctx: &SessionContext, sql: &str, r: usize, c: usize) -> M {
    let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut m = vec![vec![0.0; c]; r];
    for b in batches {
        let i = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let j = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let v = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        for k in 0..b.num_rows() {
            m[i.value(k) as usize][j.value(k) as usize] = v.value(k);
        }
    }
    m
}

async fn error(ctx: &SessionContext, sql: &str) -> DataFusionError {
    match run(ctx, sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => e,
    }
}

fn kind(e: &DataFusionError) -> Option<ErrorKind> {
    TesseraError::find(e).map(TesseraError::kind)
}

fn close(got: &M, want: &M, tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()) || (a.is_nan() && b.is_nan()),
                "{what}: ({i}, {j}) is {a}, expected {b}"
            );
        }
    }
}

fn t(a: &M) -> M {
    (0..a[0].len())
        .map(|j| a.iter().map(|r| r[j]).collect())
        .collect()
}

fn mm(a: &M, b: &M) -> M {
    a.iter()
        .map(|r| {
            (0..b[0].len())
                .map(|j| r.iter().zip(b).map(|(x, br)| x * br[j]).sum())
                .collect()
        })
        .collect()
}

/// Gaussian elimination with partial pivoting.
fn naive_solve(a: &M, b: &[f64]) -> Vec<f64> {
    let n = a.len();
    let mut m: M = a
        .iter()
        .zip(b)
        .map(|(r, v)| [r.clone(), vec![*v]].concat())
        .collect();
    for k in 0..n {
        let p = (k..n)
            .max_by(|&x, &y| m[x][k].abs().total_cmp(&m[y][k].abs()))
            .unwrap();
        m.swap(k, p);
        for i in k + 1..n {
            let f = m[i][k] / m[k][k];
            let (above, below) = m.split_at_mut(i);
            for (x, y) in below[0][k..].iter_mut().zip(&above[k][k..]) {
                *x -= f * y;
            }
        }
    }
    let mut x = vec![0.0; n];
    for k in (0..n).rev() {
        x[k] = (m[k][n] - (k + 1..n).map(|j| m[k][j] * x[j]).sum::<f64>()) / m[k][k];
    }
    x
}

fn with_ones(x: &M) -> M {
    x.iter().map(|r| [r.clone(), vec![1.0]].concat()).collect()
}

#[tokio::test]
async fn lm_matches_the_normal_equations_solved_naively() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let x = data(60, 4, 1);
    let y = data(60, 1, 2);
    put(&store, "x", &x, (16, 3));
    put(&store, "y", &y, (16, 1));
    // The same x in blocks as wide as x: CG reads each block row as one block.
    put(&store, "xw", &x, (16, 4));
    for (lambda, intercept) in [(0.0, false), (0.3, false), (0.0, true), (0.3, true)] {
        let xa = if intercept { with_ones(&x) } else { x.clone() };
        let mut a = mm(&t(&xa), &xa);
        for (k, row) in a.iter_mut().enumerate().take(4) {
            row[k] += lambda;
        }
        let b: Vec<f64> = mm(&t(&xa), &y).iter().map(|r| r[0]).collect();
        let want: M = naive_solve(&a, &b).into_iter().map(|v| vec![v]).collect();
        let rows = want.len();
        let i = u8::from(intercept);
        for sql in [
            format!("SELECT * FROM lm(x, y, {lambda}, {i})"),
            format!(
                "SELECT * FROM lm(x, y, lambda => {lambda}, intercept => {i}, solver => 'cg', tol => 1e-13)"
            ),
            format!(
                "SELECT * FROM lm(xw, y, lambda => {lambda}, intercept => {i}, solver => 'cg', tol => 1e-13)"
            ),
            format!("SELECT * FROM lm((SELECT i, j, v FROM x), (SELECT * FROM y), {lambda}, {i})"),
        ] {
            close(&matrix(&ctx, &sql, rows, 1).await, &want, 1e-8, &sql);
        }
        // Predictions: X beta (+ intercept), naively.
        let pred = mm(&xa, &want);
        let sql = format!("SELECT * FROM lm_predict(x, lm(x, y, {lambda}, {i}))");
        close(&matrix(&ctx, &sql, 60, 1).await, &pred, 1e-8, &sql);
    }
}

fn naive_cov(x: &M) -> M {
    let n = x.len() as f64;
    let p = x[0].len();
    let m: Vec<f64> = (0..p)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    (0..p)
        .map(|a| {
            (0..p)
                .map(|b| x.iter().map(|r| (r[a] - m[a]) * (r[b] - m[b])).sum::<f64>() / (n - 1.0))
                .collect()
        })
        .collect()
}

fn naive_cor(x: &M) -> M {
    let c = naive_cov(x);
    (0..c.len())
        .map(|a| {
            (0..c.len())
                .map(|b| c[a][b] / (c[a][a] * c[b][b]).sqrt())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn cov_and_cor_match_their_definitions() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let mut x = data(45, 5, 3);
    // Column 4 is constant: its correlations are NaN (as numpy.corrcoef gives).
    for r in &mut x {
        r[4] = 2.0;
        r[1] += 100.0;
    }
    put(&store, "x", &x, (10, 2));
    close(
        &matrix(&ctx, "SELECT * FROM cov(x)", 5, 5).await,
        &naive_cov(&x),
        1e-10,
        "cov",
    );
    let cor = matrix(&ctx, "SELECT * FROM cor(x)", 5, 5).await;
    close(&cor, &naive_cor(&x), 1e-10, "cor");
    assert!(cor[4][4].is_nan() && cor[0][4].is_nan());
    // From a subquery: the shape is known only when it has run.
    let sub = matrix(&ctx, "SELECT * FROM cov((SELECT i, j, v FROM x))", 5, 5).await;
    close(&sub, &naive_cov(&x), 1e-10, "cov of a subquery");
}

#[tokio::test]
async fn spearman_is_pearson_of_average_ranks() {
    let store = Store::in_memory();
    let ctx = session(&store);
    // Rounded values: many ties.
    let x: M = data(40, 3, 4)
        .into_iter()
        .map(|r| r.into_iter().map(|v| v.round()).collect())
        .collect();
    put(&store, "x", &x, (16, 3));
    let ranks: M = {
        let cols: Vec<Vec<f64>> = (0..3)
            .map(|j| {
                x.iter()
                    .map(|r| {
                        let less = x.iter().filter(|o| o[j] < r[j]).count() as f64;
                        let equal = x.iter().filter(|o| o[j] == r[j]).count() as f64;
                        less + (equal + 1.0) / 2.0
                    })
                    .collect()
            })
            .collect();
        t(&cols)
    };
    let got = matrix(&ctx, "SELECT * FROM cor(x, method => 'spearman')", 3, 3).await;
    close(&got, &naive_cor(&ranks), 1e-10, "spearman");
}

#[tokio::test]
async fn pca_components_satisfy_the_eigen_equation() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let x = data(80, 4, 5);
    put(&store, "x", &x, (32, 4));
    let c = naive_cov(&x);
    let v = matrix(&ctx, "SELECT * FROM pca_components(x, 3)", 4, 3).await;
    let var = matrix(&ctx, "SELECT * FROM pca_variance(x, 3)", 3, 2).await;
    let total: f64 = (0..4).map(|k| c[k][k]).sum();
    let cv = mm(&c, &v);
    for k in 0..3 {
        for i in 0..4 {
            assert!(
                (cv[i][k] - var[k][0] * v[i][k]).abs() < 1e-9,
                "C v = lambda v"
            );
        }
        assert!((var[k][1] - var[k][0] / total).abs() < 1e-12, "ratio");
        if k > 0 {
            assert!(var[k][0] <= var[k - 1][0], "descending");
        }
    }
    close(
        &mm(&t(&v), &v),
        &vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ],
        1e-10,
        "orthonormal",
    );
    let means: Vec<f64> = (0..4)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / 80.0)
        .collect();
    let centred: M = x
        .iter()
        .map(|r| r.iter().zip(&means).map(|(a, m)| a - m).collect())
        .collect();
    close(
        &matrix(&ctx, "SELECT * FROM pca(x, 3)", 80, 3).await,
        &mm(&centred, &v),
        1e-9,
        "projection",
    );
}

/// Three far-apart blobs of 30 rows each, interleaved.
fn blobs() -> (M, Vec<usize>) {
    let noise = data(90, 2, 6);
    let centres = [(0.0, 0.0), (100.0, 0.0), (0.0, 100.0)];
    let truth: Vec<usize> = (0..90).map(|i| i % 3).collect();
    let x = truth
        .iter()
        .zip(&noise)
        .map(|(&g, n)| vec![centres[g].0 + n[0], centres[g].1 + n[1]])
        .collect();
    (x, truth)
}

#[tokio::test]
async fn kmeans_finds_separated_blobs_under_every_scheme() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let (x, truth) = blobs();
    put(&store, "b", &x, (25, 2));
    let auto = matrix(&ctx, "SELECT * FROM kmeans(b, 3, 6, 50, 1)", 3, 2).await;
    for scheme in ["naive", "static", "fixed", "factoring"] {
        run(&ctx, &format!("SET parfor.scheme = '{scheme}'"))
            .await
            .unwrap();
        let got = matrix(&ctx, "SELECT * FROM kmeans(b, 3, 6, 50, 1)", 3, 2).await;
        close(&got, &auto, 0.0, scheme);
    }
    // Block rows of two column blocks are read through a copy of the row; the answer is
    // the same.
    put(&store, "b_split", &x, (25, 1));
    run(&ctx, "SET parfor.scheme = 'auto'").await.unwrap();
    let split = matrix(&ctx, "SELECT * FROM kmeans(b_split, 3, 6, 50, 1)", 3, 2).await;
    close(&split, &auto, 1e-12, "two column blocks");
    let batches = run(
        &ctx,
        "SELECT i, cluster FROM kmeans_predict(b, kmeans(b, 3, 6, 50, 1))",
    )
    .await
    .unwrap();
    let mut map = std::collections::HashMap::new();
    for b in batches {
        let i = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let c = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        for k in 0..b.num_rows() {
            let g = truth[i.value(k) as usize];
            assert_eq!(
                *map.entry(g).or_insert(c.value(k)),
                c.value(k),
                "row {}",
                i.value(k)
            );
        }
    }
    assert_eq!(map.len(), 3);
    let mut labels: Vec<i64> = map.into_values().collect();
    labels.sort();
    assert_eq!(labels, vec![0, 1, 2], "one cluster per blob");
    // EXPLAIN shows the scheme, the workers and the chunk sizes.
    run(&ctx, "SET parfor.scheme = 'factoring'").await.unwrap();
    run(&ctx, "SET parfor.workers = 4").await.unwrap();
    let text = text_of(&ctx, "EXPLAIN SELECT * FROM kmeans(b, 3, 101, 5, 1)")
        .await
        .unwrap();
    assert!(
        text.contains(
            "scheme=factoring workers=4 (set) threads/task=1 tasks=101 chunks=[13,13,13,13,7,7,7,7,3,3,3,3,2,2,2,2,1]"
        ),
        "{text}"
    );
    // `tessera.parfor_scheme` forces a scheme over `parfor.scheme`: static is 4 chunks
    // of ceil(101 / 4) = 26 (the last 23).
    run(&ctx, "SET tessera.parfor_scheme = 'static'")
        .await
        .unwrap();
    let text = text_of(&ctx, "EXPLAIN SELECT * FROM kmeans(b, 3, 101, 5, 1)")
        .await
        .unwrap();
    assert!(
        text.contains(
            "scheme=static workers=4 (set) threads/task=1 tasks=101 chunks=[26,26,26,23]"
        ),
        "{text}"
    );
    // Left to the optimizer: 101 runs of 5 Lloyd passes over x (90 x 2) are about 1e6
    // operations in all, too few to spread: one worker, one chunk.
    run(&ctx, "SET tessera.parfor_scheme = ''").await.unwrap();
    run(&ctx, "SET parfor.scheme = 'auto'").await.unwrap();
    run(&ctx, "SET parfor.workers = 0").await.unwrap();
    let text = text_of(&ctx, "EXPLAIN SELECT * FROM kmeans(b, 3, 101, 5, 1)")
        .await
        .unwrap();
    assert!(
        text.contains("scheme=static workers=1 (tiny) threads/task=1 tasks=101 chunks=[101]"),
        "{text}"
    );
    // With up to 500 passes a run is worth a core: every core, in equal chunks (alike
    // runs); EXPLAIN ANALYZE shows the plan that ran.
    let cores = tessera_storage::kernels::cpu_pool().current_num_threads();
    let chunks: Vec<String> = crate::ml::parfor::Scheme::Static
        .chunks(101, cores)
        .iter()
        .map(usize::to_string)
        .collect();
    let want = format!(
        "scheme=static workers={cores} (cores) threads/task=1 tasks=101 chunks=[{}]",
        chunks.join(",")
    );
    let text = text_of(
        &ctx,
        "EXPLAIN ANALYZE SELECT * FROM kmeans(b, 3, 101, 500, 1)",
    )
    .await
    .unwrap();
    assert!(
        text.contains(&format!("parfor: {want} local ran: {want}")),
        "{want}\n{text}"
    );
}

/// `EXPLAIN ANALYZE` of a k-means sweep over three rows, x 2000 x 2, in a session
/// whose memory pool holds `limit` bytes.
async fn sweep_in_pool(limit: usize) -> Result<String> {
    let store = Store::in_memory();
    put(&store, "x", &data(2000, 2, 31), (500, 2));
    let ctx = session_with_pool(&store, Some(limit));
    let sql = "EXPLAIN ANALYZE SELECT p.k, m.i FROM (VALUES (2), (3), (4)) AS p(k), \
               LATERAL kmeans(x, p.k, 1, 200, 5) m";
    text_of(&ctx, sql).await
}

#[tokio::test]
async fn concurrent_tasks_are_charged_to_the_memory_pool() {
    // A k-means row holds about 2000 * 16 (labels, distances) + 32 = 32032 bytes while
    // it runs.
    let cores = tessera_storage::kernels::cpu_pool().current_num_threads();
    // Plenty of memory: rows side by side, one per core.
    let text = sweep_in_pool(64 << 20).await.unwrap();
    let workers = cores.min(3);
    let why = if workers < cores { "tasks" } else { "cores" };
    assert!(
        text.contains("ran: scheme=") && text.contains(&format!("workers={workers} ({why})")),
        "{text}"
    );
    // While the rows run the pool holds the job's blocks (about 167 KB, as the block
    // dataflow charges them) and its dense copy of x (32000 bytes): with 255 KB in
    // all there is room for one row's task (32032 bytes), not two: one worker.
    if cores >= 2 {
        let text = sweep_in_pool(255_000).await.unwrap();
        assert!(
            text.contains("ran: scheme=factoring workers=1 (memory)"),
            "{text}"
        );
    }
    // With 215 KB not even one fits: 53200 before any row runs.
    let e = sweep_in_pool(215_000).await.unwrap_err();
    assert!(
        matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("1 concurrent tasks of about 32032 bytes"),
        "{e}"
    );
}

#[test]
fn a_task_that_does_not_fit_fails_with_53200_before_it_runs() {
    use crate::ml::parfor::{RunPlan, Scheme, TaskCost};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    let pool: std::sync::Arc<dyn MemoryPool> = std::sync::Arc::new(GreedyMemoryPool::new(1000));
    let reservation = MemoryConsumer::new("test").register(&pool);
    let cost = TaskCost {
        memory: Some(600),
        ..TaskCost::default()
    };
    let plan = |workers| RunPlan {
        scheme: Scheme::Naive,
        workers,
        threads: 1,
        why: "set",
    };
    let e = crate::ml::exec::charge_tasks(&reservation, &plan(2), &cost, "kmeans").unwrap_err();
    assert!(matches!(e, DataFusionError::ResourcesExhausted(_)), "{e}");
    assert!(
        e.to_string()
            .contains("kmeans: 2 concurrent tasks of about 600 bytes"),
        "{e}"
    );
    assert_eq!(reservation.size(), 0);
    crate::ml::exec::charge_tasks(&reservation, &plan(1), &cost, "kmeans").unwrap();
    assert_eq!(pool.reserved(), 600);
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test]
async fn logreg_and_l2svm_reach_their_optimum() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let x = data(120, 3, 7);
    // Noisy labels from a linear rule, so neither problem is separable.
    let noise = data(120, 1, 8);
    let y: M = x
        .iter()
        .zip(&noise)
        .map(|(r, n)| vec![f64::from(u8::from(r[0] - 0.5 * r[1] + 2.0 * n[0] > 0.3))])
        .collect();
    put(&store, "x", &x, (50, 3));
    put(&store, "y", &y, (50, 1));
    // The same x in blocks narrower than x: two blocks per block row.
    put(&store, "xn", &x, (32, 2));
    let xa = with_ones(&x);
    let lambda = 0.7;
    // logreg: gradient t(Xa) (sigmoid(Xa w) - y) + lambda [w; 0] vanishes.
    for from in ["x", "xn"] {
        let sql = format!("SELECT * FROM logreg({from}, y, lambda => 0.7)");
        let model = matrix(&ctx, &sql, 5, 2).await;
        assert_eq!((model[4][0], model[4][1]), (0.0, 1.0), "labels row");
        let w: Vec<f64> = (0..4).map(|k| model[k][1]).collect();
        for j in 0..4 {
            let g: f64 = xa
                .iter()
                .zip(&y)
                .map(|(r, t)| (sigmoid(r.iter().zip(&w).map(|(a, b)| a * b).sum()) - t[0]) * r[j])
                .sum::<f64>()
                + if j < 3 { lambda * w[j] } else { 0.0 };
            assert!(g.abs() < 1e-6, "{sql}: gradient {j}: {g}");
        }
    }
    // l2svm: lambda w - 2 sum over margin violators of y (1 - y x.w) x vanishes.
    let model = matrix(&ctx, "SELECT * FROM l2svm(x, y, lambda => 0.7)", 5, 2).await;
    let w: Vec<f64> = (0..4).map(|k| model[k][1]).collect();
    for j in 0..4 {
        let mut g = lambda * w[j];
        for (r, t) in xa.iter().zip(&y) {
            let s = if t[0] > 0.5 { 1.0 } else { -1.0 };
            let m = 1.0 - s * r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
            if m > 0.0 {
                g -= 2.0 * s * m * r[j];
            }
        }
        assert!(g.abs() < 1e-6, "l2svm gradient {j}: {g}");
    }
    // Three classes (labels 2, 5, 9): multinomial logreg's gradient for every class,
    // t(Xa) (softmax(Xa W)_c - [y = c]) + lambda [w_c; 0], vanishes; so does each
    // one-vs-rest SVM's. Over x in one block per block row and in two.
    let y3: M = x
        .iter()
        .zip(&noise)
        .map(|(r, n)| {
            let s = r[0] - 0.5 * r[1] + 2.0 * n[0];
            vec![if s < -1.0 {
                2.0
            } else if s < 1.5 {
                5.0
            } else {
                9.0
            }]
        })
        .collect();
    put(&store, "y3", &y3, (50, 1));
    let labels = [2.0, 5.0, 9.0];
    let dot = |r: &Vec<f64>, w: &[f64]| -> f64 { r.iter().zip(w).map(|(a, b)| a * b).sum() };
    for from in ["x", "xn"] {
        let sql = format!("SELECT * FROM logreg({from}, y3, lambda => 0.7, tol => 1e-12)");
        let model = matrix(&ctx, &sql, 5, 3).await;
        assert_eq!(model[4], labels.to_vec(), "{sql}: labels row");
        let ws: Vec<Vec<f64>> = (0..3)
            .map(|c| (0..4).map(|k| model[k][c]).collect())
            .collect();
        for c in 0..3 {
            for j in 0..4 {
                let mut g = if j < 3 { lambda * ws[c][j] } else { 0.0 };
                for (r, t) in xa.iter().zip(&y3) {
                    let z: Vec<f64> = ws.iter().map(|w| dot(r, w)).collect();
                    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
                    let p = (z[c] - m).exp() / s;
                    g += (p - f64::from(u8::from(t[0] == labels[c]))) * r[j];
                }
                assert!(g.abs() < 1e-6, "{sql}: class {c}, gradient {j}: {g}");
            }
        }
        let sql = format!("SELECT * FROM l2svm({from}, y3, lambda => 0.7, tol => 1e-12)");
        let model = matrix(&ctx, &sql, 5, 3).await;
        assert_eq!(model[4], labels.to_vec(), "{sql}: labels row");
        for c in 0..3 {
            let w: Vec<f64> = (0..4).map(|k| model[k][c]).collect();
            for j in 0..4 {
                let mut g = lambda * w[j];
                for (r, t) in xa.iter().zip(&y3) {
                    let s = if t[0] == labels[c] { 1.0 } else { -1.0 };
                    let m = 1.0 - s * dot(r, &w);
                    if m > 0.0 {
                        g -= 2.0 * s * m * r[j];
                    }
                }
                assert!(g.abs() < 1e-6, "{sql}: class {c}, gradient {j}: {g}");
            }
        }
    }
    // Predictions: the label of the best column.
    let batches = run(
        &ctx,
        "SELECT i, label, score FROM l2svm_predict(x, l2svm(x, y, 0.7))",
    )
    .await
    .unwrap();
    for b in batches {
        let i = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let l = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        for k in 0..b.num_rows() {
            let s: f64 = xa[i.value(k) as usize]
                .iter()
                .zip(&w)
                .map(|(a, b)| a * b)
                .sum();
            assert_eq!(l.value(k), if s > 0.0 { 1.0 } else { 0.0 });
        }
    }
}

#[tokio::test]
async fn bad_input_gives_clear_errors() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let mut x = data(20, 3, 9);
    for r in &mut x {
        r[2] = 2.0 * r[0];
    }
    put(&store, "x", &x, (8, 3));
    put(&store, "y", &data(20, 1, 10), (8, 1));
    put(&store, "one", &vec![vec![1.0]; 20], (8, 1));
    let e = error(&ctx, "SELECT * FROM lm(x, y)").await;
    assert_eq!(kind(&e), Some(ErrorKind::SingularMatrix), "{e}");
    assert!(e.to_string().contains("lambda > 0"), "{e}");
    // A penalty makes it solvable.
    run(&ctx, "SELECT * FROM lm(x, y, 0.1)").await.unwrap();
    let e = error(&ctx, "SELECT * FROM logreg(x, one)").await;
    assert!(e.to_string().contains("one class"), "{e}");
    assert_eq!(kind(&e), Some(ErrorKind::DataException));
    let e = error(&ctx, "SELECT * FROM kmeans(x, 21, 2, 10, 1)").await;
    assert_eq!(kind(&e), Some(ErrorKind::InvalidParameterValue), "{e}");
    assert!(
        e.to_string().contains("larger than the number of rows"),
        "{e}"
    );
    let e = error(
        &ctx,
        "SELECT * FROM kmeans((SELECT * FROM x), 21, 2, 10, 1)",
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::InvalidParameterValue), "{e}");
    let e = error(
        &ctx,
        "SELECT * FROM cov((SELECT i, j, CASE WHEN i = 3 THEN NULL ELSE v END AS v FROM x))",
    )
    .await;
    assert!(e.to_string().contains("NULL"), "{e}");
    let e = error(
        &ctx,
        "SELECT * FROM kmeans((SELECT i, j, CASE WHEN i = 3 THEN 'NaN'::double ELSE v END AS v FROM x), 2, 1, 5, 1)",
    )
    .await;
    assert!(e.to_string().contains("NaN value at (3, "), "{e}");
    let e = error(
        &ctx,
        "SELECT * FROM cor((SELECT i, j, CASE WHEN i = 3 THEN 'NaN'::double ELSE v END AS v FROM x))",
    )
    .await;
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = error(&ctx, "SELECT * FROM pca_variance(x, 4)").await;
    assert_eq!(kind(&e), Some(ErrorKind::InvalidParameterValue), "{e}");
    let e = error(&ctx, "SELECT * FROM l2svm(x, y, lambda => 0)").await;
    assert_eq!(kind(&e), Some(ErrorKind::InvalidParameterValue), "{e}");
    let e = error(&ctx, "SELECT * FROM lm(x, y, penalty => 1)").await;
    assert!(
        e.to_string().contains("no parameter named 'penalty'"),
        "{e}"
    );
    let e = error(&ctx, "SELECT * FROM lm(x, slice(x, 0, 20, 0, 2))").await;
    assert!(e.to_string().contains("y must be 20x1"), "{e}");
    let e = error(&ctx, "SELECT * FROM cor(x, method => 'kendall')").await;
    assert!(e.to_string().contains("'pearson' or 'spearman'"), "{e}");
    let e = error(
        &ctx,
        "SELECT * FROM matmul(x, kmeans_predict(x, kmeans(x, 2, 1, 5, 1)))",
    )
    .await;
    assert!(e.to_string().contains("returns a table"), "{e}");
    let e = error(&ctx, "SELECT * FROM lm_predict(x, y)").await;
    assert!(e.to_string().contains("beta must be 3x1"), "{e}");
    run(&ctx, "SET parfor.scheme = 'guided'").await.unwrap();
    let e = error(&ctx, "SELECT * FROM kmeans(x, 2, 2, 5, 1)").await;
    assert!(e.to_string().contains("unknown parfor.scheme"), "{e}");
}

/// `(k, lambda, intercept)` rows as a `VALUES` relation named `p`.
fn params(rows: &[(i64, &str, &str)]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|(k, l, i)| format!("({k}, {l}, {i})"))
        .collect();
    format!("(VALUES {}) AS p(k, lambda, icpt)", rows.join(", "))
}

#[tokio::test]
async fn lateral_lm_fits_one_model_per_row() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let x = data(60, 4, 11);
    let y = data(60, 1, 12);
    put(&store, "x", &x, (16, 3));
    put(&store, "y", &y, (16, 1));
    let grid = [
        (0.0, false),
        (0.3, false),
        (0.0, true),
        (2.5, true),
        (0.3, true),
    ];
    let rows: Vec<(i64, String, String)> = grid
        .iter()
        .enumerate()
        .map(|(k, (l, i))| (k as i64, format!("{l:.1}"), u8::from(*i).to_string()))
        .collect();
    let rows: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|(k, l, i)| (*k, l.as_str(), i.as_str()))
        .collect();
    let from = params(&rows);
    let sql = format!(
        "SELECT p.k, m.i, m.v FROM {from}, LATERAL lm(x, y, lambda => p.lambda, intercept => p.icpt) m ORDER BY p.k, m.i"
    );
    for scheme in ["auto", "naive", "static", "factoring"] {
        run(&ctx, &format!("SET parfor.scheme = '{scheme}'"))
            .await
            .unwrap();
        // Coefficients by row, as (k, i) -> v.
        let got = matrix(&ctx, &sql, grid.len(), 5).await;
        for (k, (lambda, intercept)) in grid.iter().enumerate() {
            let xa = if *intercept { with_ones(&x) } else { x.clone() };
            let mut a = mm(&t(&xa), &xa);
            for (d, row) in a.iter_mut().enumerate().take(4) {
                row[d] += lambda;
            }
            let b: Vec<f64> = mm(&t(&xa), &y).iter().map(|r| r[0]).collect();
            let mut want = naive_solve(&a, &b);
            want.resize(5, 0.0);
            close(
                &vec![got[k].clone()],
                &vec![want],
                1e-8,
                &format!("{scheme}: row {k}"),
            );
        }
    }
    run(&ctx, "SET parfor.scheme = 'auto'").await.unwrap();
    // The outer row's columns come first, once per output row; a WHERE on them holds.
    let batches = run(
        &ctx,
        &format!(
            "SELECT p.lambda, count(*) AS n FROM {from}, LATERAL lm(x, y, lambda => p.lambda * 2) m WHERE p.icpt = 1 GROUP BY p.lambda ORDER BY p.lambda"
        ),
    )
    .await
    .unwrap();
    let b = &batches[0];
    let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(b.num_rows(), 3);
    assert!((0..3).all(|r| n.value(r) == 4), "{b:?}");
    // EXPLAIN names the per-row arguments, the shared jobs and the scheduling.
    let text = text_of(&ctx, &format!("EXPLAIN {sql}")).await.unwrap();
    assert!(
        text.contains("LateralBuiltinExec: lm(x, y, lambda => p.lambda, intercept => p.icpt) per row: lambda = p.lambda, intercept = p.icpt jobs=[tsmm(x)"),
        "{text}"
    );
    // Five alike rows (their jobs shared) in equal chunks, over at most 5 workers.
    assert!(
        text.contains("parfor: scheme=") && text.contains("tasks=5 chunks="),
        "{text}"
    );
    // The scheduler really ran one task per row: the workers' task counts (shown
    // summed over the workers) add up to the rows.
    let text = text_of(&ctx, &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap();
    let tasks = metric_sum(&text, "parfor_tasks");
    assert_eq!(tasks, grid.len(), "{text}");
}

#[tokio::test]
async fn lateral_calls_refuse_what_they_cannot_run() {
    let store = Store::in_memory();
    let ctx = session(&store);
    put(&store, "x", &data(20, 3, 13), (8, 3));
    put(&store, "y", &data(20, 1, 14), (8, 1));
    // A NULL or a bad value names its row.
    let from = params(&[(0, "0.5", "0"), (1, "CAST(NULL AS DOUBLE)", "0")]);
    let e = error(
        &ctx,
        &format!("SELECT * FROM {from}, LATERAL lm(x, y, lambda => p.lambda) m"),
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::DataException), "{e}");
    assert!(
        e.to_string().contains("row 1: lambda => p.lambda is NULL"),
        "{e}"
    );
    let from = params(&[(0, "0.5", "0"), (1, "0.5", "7")]);
    let e = error(
        &ctx,
        &format!("SELECT * FROM {from}, LATERAL lm(x, y, intercept => p.icpt) m"),
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::InvalidParameterValue), "{e}");
    assert!(e.to_string().contains("row 1 (intercept = 7)"), "{e}");
    // Only a plain join with the relation before it.
    let e = error(
        &ctx,
        &format!("SELECT * FROM {from} LEFT JOIN LATERAL lm(x, y, lambda => p.lambda) m ON true"),
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::FeatureNotSupported), "{e}");
    // Matrix functions take no per-row arguments.
    let e = error(
        &ctx,
        &format!("SELECT * FROM {from}, LATERAL slice(x, 0, p.k + 1, 0, 3) m"),
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::FeatureNotSupported), "{e}");
    // Without per-row arguments LATERAL is an ordinary call, joined to every row.
    let batches = run(
        &ctx,
        &format!("SELECT count(*) FROM {from}, LATERAL lm(x, y, lambda => 0.5) m"),
    )
    .await
    .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(n.value(0), 6);
}

#[tokio::test]
async fn lateral_calls_with_subqueries_over_the_row_fit_one_model_per_group() {
    let store = Store::in_memory();
    let ctx = session(&store);
    // Groups of different sizes, each with its own rows 0..n_g of x (3 columns) and y.
    let sizes = [14usize, 25, 9, 18];
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let (mut x_cells, mut y_cells) = (Vec::new(), Vec::new());
    for (g, &n) in sizes.iter().enumerate() {
        let x = data(n, 3, 40 + g as u64);
        let y = data(n, 1, 50 + g as u64);
        for (r, (xr, yr)) in x.iter().zip(&y).enumerate() {
            for (c, v) in xr.iter().enumerate() {
                x_cells.push(format!("({g}, {r}, {c}, {v})"));
            }
            y_cells.push(format!("({g}, {r}, 0, {})", yr[0]));
        }
        xs.push(x);
        ys.push(y);
    }
    let with = format!(
        "WITH obs(g, i, j, v) AS (VALUES {}), resp(g, i, j, v) AS (VALUES {})",
        x_cells.join(", "),
        y_cells.join(", ")
    );
    // The lambda comes from the row too: 0.5 times the group number.
    let sql = format!(
        "{with} SELECT p.g, m.i, m.v FROM (VALUES (0), (1), (2), (3)) AS p(g), \
         LATERAL lm((SELECT i, j, v FROM obs WHERE obs.g = p.g), \
                    (SELECT i, j, v FROM resp WHERE resp.g = p.g), \
                    lambda => p.g * 0.5, intercept => 1) m ORDER BY p.g, m.i"
    );
    for (scheme, workers) in [("auto", 2), ("naive", 2), ("factoring", 3), ("auto", 1)] {
        run(&ctx, &format!("SET parfor.scheme = '{scheme}'"))
            .await
            .unwrap();
        run(&ctx, &format!("SET parfor.workers = {workers}"))
            .await
            .unwrap();
        let got = matrix(&ctx, &sql, sizes.len(), 4).await;
        for g in 0..sizes.len() {
            let xa = with_ones(&xs[g]);
            let mut a = mm(&t(&xa), &xa);
            for (d, row) in a.iter_mut().enumerate().take(3) {
                row[d] += 0.5 * g as f64;
            }
            let b: Vec<f64> = mm(&t(&xa), &ys[g]).iter().map(|r| r[0]).collect();
            close(
                &vec![got[g].clone()],
                &vec![naive_solve(&a, &b)],
                1e-8,
                &format!("{scheme}/{workers}: group {g}"),
            );
        }
    }
    run(&ctx, "SET parfor.scheme = 'auto'").await.unwrap();
    run(&ctx, "SET parfor.workers = 2").await.unwrap();
    // EXPLAIN says the call is planned per row, over which outer column.
    let text = text_of(&ctx, &format!("EXPLAIN {sql}")).await.unwrap();
    assert!(
        text.contains("LateralBuiltinPerRowExec: lm(")
            && text.contains("per row: lambda = p.g * Float64(0.5), subqueries over p.g jobs planned and computed per row"),
        "{text}"
    );
    // One parfor task per group.
    let text = text_of(&ctx, &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap();
    let tasks = metric_sum(&text, "parfor_tasks");
    assert_eq!(tasks, sizes.len(), "{text}");
    // A group with no rows fails the statement, naming its row and value.
    let e = error(
        &ctx,
        &format!(
            "{with} SELECT * FROM (VALUES (1), (7)) AS p(g), \
             LATERAL lm((SELECT i, j, v FROM obs WHERE obs.g = p.g), \
                        (SELECT i, j, v FROM resp WHERE resp.g = p.g)) m"
        ),
    )
    .await;
    assert!(e.to_string().contains("row 1 (p.g = 7)"), "{e}");
    assert!(e.to_string().contains("lm: x has no rows"), "{e}");
    assert_eq!(kind(&e), Some(ErrorKind::DataException), "{e}");
    // k-means per group, k from the row: group g's g + 1 centroids; with k = 1 the
    // centroid is the group's column means.
    let sql = format!(
        "{with} SELECT p.g, m.i, m.j, m.v FROM (VALUES (0), (1), (2)) AS p(g), \
         LATERAL kmeans((SELECT i, j, v FROM obs WHERE obs.g = p.g), p.g + 1, seed => 3) m \
         ORDER BY p.g, m.i, m.j"
    );
    let batches = run(&ctx, &sql).await.unwrap();
    let mut centroids = vec![Vec::<Vec<f64>>::new(); 3];
    for b in &batches {
        let g = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let i = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let v = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        for r in 0..b.num_rows() {
            let c = &mut centroids[g.value(r) as usize];
            let i = i.value(r) as usize;
            if c.len() <= i {
                c.resize(i + 1, Vec::new());
            }
            c[i].push(v.value(r));
        }
    }
    for (g, c) in centroids.iter().enumerate() {
        assert_eq!(c.len(), g + 1, "group {g}: {c:?}");
    }
    let n0 = sizes[0] as f64;
    let mean: Vec<f64> = (0..3)
        .map(|j| xs[0].iter().map(|r| r[j]).sum::<f64>() / n0)
        .collect();
    close(&centroids[0], &vec![mean], 1e-10, "k = 1 centroid");
    // A call nested in the LATERAL one reads the row too: each group's rows assigned
    // to that group's own two centroids.
    let batches = run(
        &ctx,
        &format!(
            "{with} SELECT p.g, count(*) AS n, count(DISTINCT m.cluster) AS k \
             FROM (VALUES (0), (1), (2)) AS p(g), \
             LATERAL kmeans_predict((SELECT i, j, v FROM obs WHERE obs.g = p.g), \
                 kmeans((SELECT i, j, v FROM obs WHERE obs.g = p.g), 2, seed => 3)) m \
             GROUP BY p.g ORDER BY p.g"
        ),
    )
    .await
    .unwrap();
    let b = &batches[0];
    let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let k = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    for (g, size) in sizes.iter().take(3).enumerate() {
        assert_eq!(n.value(g) as usize, *size, "{b:?}");
        assert_eq!(k.value(g), 2, "{b:?}");
    }
    // The same call outside LATERAL cannot see the row.
    let e = error(
        &ctx,
        &format!(
            "{with} SELECT * FROM (VALUES (1)) AS p(g) \
             WHERE p.g IN (SELECT m.i FROM kmeans((SELECT i, j, v FROM obs WHERE obs.g = p.g), 2) m)"
        ),
    )
    .await;
    assert_eq!(kind(&e), Some(ErrorKind::FeatureNotSupported), "{e}");
    assert!(e.to_string().contains("write the call as LATERAL"), "{e}");
}

/// `(VALUES ...)` rows `(g, y, x1, x2, x3)` for `rows`, the group of row r being `r % groups`.
fn group_rows(x: &M, y: &M, rows: std::ops::Range<usize>, groups: usize) -> String {
    let rows: Vec<String> = rows
        .map(|r| {
            format!(
                "({}, {}, {}, {}, {})",
                r % groups,
                y[r][0],
                x[r][0],
                x[r][1],
                x[r][2]
            )
        })
        .collect();
    rows.join(", ")
}

/// The coefficients per group of `SELECT g, <call> ... GROUP BY g ORDER BY g`: a
/// NULL list is None.
async fn fits(ctx: &SessionContext, sql: &str) -> Vec<(i64, Option<Vec<f64>>)> {
    let mut out = Vec::new();
    for b in run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        let g = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let l = b
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::ListArray>()
            .unwrap();
        for r in 0..b.num_rows() {
            let coef = (!l.is_null(r)).then(|| {
                let v = l.value(r);
                let v = v.as_any().downcast_ref::<Float64Array>().unwrap();
                v.values().to_vec()
            });
            out.push((g.value(r), coef));
        }
    }
    out
}

#[tokio::test]
async fn lm_fit_fits_one_model_per_group() {
    let store = Store::in_memory();
    let ctx = session(&store);
    let (n, groups) = (90, 3);
    let x = data(n, 3, 21);
    let y = data(n, 1, 22);
    // Two halves in a UNION ALL: two partitions, so each group's partial sums from
    // both are merged before its solve. Rows with a NULL are skipped; group 7 has one
    // row only, too few for a fit with an intercept.
    let from = format!(
        "(SELECT * FROM (VALUES {}) AS a(g, y, x1, x2, x3) UNION ALL \
          SELECT * FROM (VALUES {}, (0, NULL, 1.0, 2.0, 3.0), (1, 5.0, NULL, 2.0, 3.0), \
          (7, 1.0, 2.0, 3.0, 4.0)) AS b(g, y, x1, x2, x3)) AS t",
        group_rows(&x, &y, 0..n / 2, groups),
        group_rows(&x, &y, n / 2..n, groups),
    );
    let naive = |g: usize, cols: usize, lambda: f64, intercept: bool| -> Vec<f64> {
        let rows: Vec<usize> = (0..n).filter(|r| r % groups == g).collect();
        let xg: M = rows.iter().map(|&r| x[r][..cols].to_vec()).collect();
        let yg: M = rows.iter().map(|&r| y[r].clone()).collect();
        let xa = if intercept { with_ones(&xg) } else { xg };
        let mut a = mm(&t(&xa), &xa);
        for (d, row) in a.iter_mut().enumerate().take(cols) {
            row[d] += lambda;
        }
        let b: Vec<f64> = mm(&t(&xa), &yg).iter().map(|r| r[0]).collect();
        naive_solve(&a, &b)
    };
    let cases = [
        ("lm_fit(y, ARRAY[x1, x2, x3])", 3, 0.0, true),
        ("lm_fit(y, ARRAY[x1, x2, x3], 0.3, false)", 3, 0.3, false),
        ("lm_fit(y, [x1, x2, x3], lambda => 2.5)", 3, 2.5, true),
        (
            "lm_fit(y, ARRAY[x1, x2], lambda => 0, intercept => false)",
            2,
            0.0,
            false,
        ),
        ("lm_fit(y, x1)", 1, 0.0, true),
    ];
    for (call, cols, lambda, intercept) in cases {
        let sql = format!("SELECT g, {call} FROM {from} GROUP BY g ORDER BY g");
        let got = fits(&ctx, &sql).await;
        assert_eq!(
            got.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            [0, 1, 2, 7],
            "{sql}"
        );
        for (g, coef) in &got[..3] {
            let want = naive(*g as usize, cols, lambda, intercept);
            let got = coef
                .clone()
                .unwrap_or_else(|| panic!("{sql}: group {g} is NULL"));
            close(&vec![got], &vec![want], 1e-9, &format!("{sql}, group {g}"));
        }
        // One row: a rank-one system, singular (NULL) unless it has one unknown or a
        // ridge; with a ridge the weights are 0 and the intercept is that row's y.
        let unknowns = cols + usize::from(intercept);
        match &got[3].1 {
            None => assert!(lambda == 0.0 && unknowns > 1, "{sql}: group 7 is NULL"),
            Some(c) => {
                assert!(lambda > 0.0 || unknowns == 1, "{sql}: group 7 gave {c:?}");
                assert_eq!(c.len(), unknowns, "{sql}: group 7");
                if intercept {
                    close(
                        &vec![c.clone()],
                        &vec![[vec![0.0; cols], vec![1.0]].concat()],
                        1e-9,
                        &sql,
                    );
                }
            }
        }
    }
    // The coefficients as rows, unnested, as a client would read them.
    let sql = format!(
        "SELECT g, unnest(lm_fit(y, ARRAY[x1, x2, x3])) AS b FROM {from} WHERE g = 1 GROUP BY g"
    );
    let rows = run(&ctx, &sql).await.unwrap();
    let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(count, 4, "{sql}: three coefficients and the intercept");

    // Bad calls.
    for (call, want) in [
        (
            "lm_fit(y, ARRAY[x1, x2], lambda => -1)",
            ErrorKind::InvalidParameterValue,
        ),
        ("lm_fit(y, 'a')", ErrorKind::DatatypeMismatch),
        ("lm_fit(y, x1, x2)", ErrorKind::FeatureNotSupported),
        (
            "lm_fit(y, CASE WHEN x1 > 0 THEN ARRAY[x1] ELSE ARRAY[x1, x2] END)",
            ErrorKind::DataException,
        ),
        ("lm_fit(y / 0.0, x1)", ErrorKind::DataException),
    ] {
        let sql = format!("SELECT g, {call} FROM {from} GROUP BY g");
        let e = error(&ctx, &sql).await;
        assert_eq!(kind(&e), Some(want), "{sql}: {e}");
    }
}

/// Replaces every block of stored matrix `name` with `m`'s (a new version).
fn rewrite(store: &Store, name: &str, m: &M, block: (u64, u64)) {
    let mut w = store.writer(name, WriteMode::Replace).unwrap();
    for bi in 0..(m.len() as u64).div_ceil(block.0) {
        for bj in 0..(m[0].len() as u64).div_ceil(block.1) {
            let (r0, c0) = ((bi * block.0) as usize, (bj * block.1) as usize);
            let br = (block.0 as usize).min(m.len() - r0);
            let bc = (block.1 as usize).min(m[0].len() - c0);
            let d = DenseBlock::from_fn(br, bc, |i, j| m[r0 + i][c0 + j]);
            w.put_block(BlockKey::matrix(bi as i64, bj as i64), Block::Dense(d))
                .unwrap();
        }
    }
    w.commit().unwrap();
}

/// `(lineage_hits, lineage_misses)` of a statement, from its EXPLAIN ANALYZE.
async fn reuse_counts(ctx: &SessionContext, sql: &str) -> (usize, usize) {
    let text = text_of(ctx, &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap();
    (
        metric_sum(&text, "lineage_hits"),
        metric_sum(&text, "lineage_misses"),
    )
}

#[tokio::test]
async fn lineage_cache_reuses_intermediates_until_an_array_changes() {
    let store = Store::in_memory();
    store.set_block_cache(64 << 20, std::sync::Arc::new(tessera_storage::Unlimited));
    let ctx = session(&store);
    let ridge = |x: &M, y: &M, lambda: f64| -> M {
        let mut a = mm(&t(x), x);
        for (k, row) in a.iter_mut().enumerate() {
            row[k] += lambda;
        }
        let b: Vec<f64> = mm(&t(x), y).iter().map(|r| r[0]).collect();
        naive_solve(&a, &b).into_iter().map(|v| vec![v]).collect()
    };
    let x = data(60, 4, 11);
    let y = data(60, 1, 12);
    put(&store, "x", &x, (16, 3));
    put(&store, "y", &y, (16, 1));

    // The first call computes t(x) x and t(x) y; later calls over the same versions
    // take both from the cache, whatever their lambda.
    let fit = |lambda: f64| format!("SELECT * FROM lm(x, y, lambda => {lambda})");
    assert_eq!(reuse_counts(&ctx, &fit(0.3)).await, (0, 2));
    close(
        &matrix(&ctx, &fit(0.7), 4, 1).await,
        &ridge(&x, &y, 0.7),
        1e-9,
        "reused",
    );
    assert_eq!(reuse_counts(&ctx, &fit(1.5)).await, (2, 0));
    // So does cov, which shares none of them.
    assert_eq!(reuse_counts(&ctx, "SELECT * FROM cov(x)").await, (0, 1));
    assert_eq!(store.lineage_stats().unwrap().entries, 3);

    // A new version of x: nothing computed from the old one is served (or kept).
    let x2 = data(60, 4, 13);
    rewrite(&store, "x", &x2, (16, 3));
    assert_eq!(store.lineage_stats().unwrap().entries, 0);
    assert_eq!(reuse_counts(&ctx, &fit(0.3)).await, (0, 2));
    close(
        &matrix(&ctx, &fit(0.3), 4, 1).await,
        &ridge(&x2, &y, 0.3),
        1e-9,
        "new x",
    );

    // Dropping y forgets t(x) y but keeps t(x) x, which never read y.
    store.drop_array("y").unwrap();
    assert_eq!(store.lineage_stats().unwrap().entries, 1);

    // A session that turns reuse off neither takes nor keeps.
    put(&store, "y", &y, (16, 1));
    run(&ctx, "SET tessera.reuse = false").await.unwrap();
    assert_eq!(reuse_counts(&ctx, &fit(0.3)).await, (0, 0));
    close(
        &matrix(&ctx, &fit(0.3), 4, 1).await,
        &ridge(&x2, &y, 0.3),
        1e-9,
        "no reuse",
    );
    assert_eq!(store.lineage_stats().unwrap().entries, 1);
}
