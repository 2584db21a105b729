//! End-to-end checks of the matrix functions through SQL against naive dense
//! arithmetic written out here.

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, ListArray, RecordBatch};
use datafusion::common::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use tessera_storage::{ArraySchema, Block, BlockKey, DenseBlock, Partitioning, Store, WriteMode};

use super::expr::{MatExpr, Op, optimize, push_transposes};
use super::strategy::Strategy;

/// A dense row-major matrix for reference arithmetic.
#[derive(Debug, Clone, PartialEq)]
struct M {
    r: usize,
    c: usize,
    v: Vec<f64>,
}

impl M {
    fn new(r: usize, c: usize, mut f: impl FnMut(usize, usize) -> f64) -> M {
        let mut v = Vec::with_capacity(r * c);
        for i in 0..r {
            for j in 0..c {
                v.push(f(i, j));
            }
        }
        M { r, c, v }
    }
    /// Pseudo-random with about `density` non-zeros, deterministic in `seed`.
    fn random(r: usize, c: usize, density: f64, seed: u64) -> M {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        M::new(r, c, |_, _| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = (s >> 11) as f64 / (1u64 << 53) as f64;
            if u < density {
                (w * 20.0 - 10.0).round() / 4.0
            } else {
                0.0
            }
        })
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.c + j]
    }
    fn mm(&self, o: &M) -> M {
        M::new(self.r, o.c, |i, j| {
            (0..self.c).map(|k| self.at(i, k) * o.at(k, j)).sum()
        })
    }
    fn t(&self) -> M {
        M::new(self.c, self.r, |i, j| self.at(j, i))
    }
    fn map2(&self, o: &M, f: impl Fn(f64, f64) -> f64) -> M {
        M::new(self.r, self.c, |i, j| {
            let b = match (o.r, o.c) {
                (1, 1) => o.at(0, 0),
                (1, _) => o.at(0, j),
                (_, 1) if self.c != 1 || o.r == self.r => o.at(i, 0),
                _ => o.at(i, j),
            };
            f(self.at(i, j), b)
        })
    }
    fn assert_close(&self, other: &M, what: &str) {
        assert_eq!((self.r, self.c), (other.r, other.c), "{what}: shape");
        for (k, (a, b)) in self.v.iter().zip(&other.v).enumerate() {
            let tol = 1e-9 * (1.0 + a.abs().max(b.abs()));
            assert!(
                (a - b).abs() <= tol || (a.is_nan() && b.is_nan()),
                "{what}: cell ({}, {}) is {a}, expected {b}",
                k / self.c,
                k % self.c
            );
        }
    }
}

fn session(store: &Store, memory: Option<usize>) -> SessionContext {
    let config = super::session_config(SessionConfig::new().with_target_partitions(2));
    let mut builder = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config);
    if let Some(bytes) = memory {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(bytes)))
            .build_arc()
            .unwrap();
        builder = builder.with_runtime_env(runtime);
    }
    SessionContext::new_with_state(super::install(builder, store.clone()).build())
}

fn put(store: &Store, name: &str, m: &M, block: (u64, u64), partitioning: Partitioning) {
    let schema = ArraySchema::matrix(m.r as u64, m.c as u64, block.0, block.1).unwrap();
    store
        .create_array(name, schema, Some(partitioning), None)
        .unwrap();
    let mut w = store.writer(name, WriteMode::Replace).unwrap();
    for bi in 0..(m.r as u64).div_ceil(block.0) {
        for bj in 0..(m.c as u64).div_ceil(block.1) {
            let (r0, c0) = ((bi * block.0) as usize, (bj * block.1) as usize);
            let (r, c) = (
                (block.0 as usize).min(m.r - r0),
                (block.1 as usize).min(m.c - c0),
            );
            let d = DenseBlock::from_fn(r, c, |i, j| m.at(r0 + i, c0 + j));
            let b = Block::Dense(d).into_preferred_format();
            if b.nnz() > 0 {
                w.put_block(BlockKey::matrix(bi as i64, bj as i64), b)
                    .unwrap();
            }
        }
    }
    w.commit().unwrap();
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

/// The `(i, j, v)` result of `sql` as an `r x c` dense matrix.
async fn matrix(ctx: &SessionContext, sql: &str, r: usize, c: usize) -> M {
    let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut m = M::new(r, c, |_, _| 0.0);
    let mut seen = std::collections::HashSet::new();
    for b in batches {
        let i = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let j = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let v = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        for k in 0..b.num_rows() {
            let (i, j) = (i.value(k) as usize, j.value(k) as usize);
            assert!(i < r && j < c, "{sql}: cell ({i}, {j}) outside {r}x{c}");
            assert!(seen.insert((i, j)), "{sql}: cell ({i}, {j}) twice");
            m.v[i * c + j] = v.value(k);
        }
    }
    m
}

async fn error(ctx: &SessionContext, sql: &str) -> String {
    match run(ctx, sql).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(e) => e.to_string(),
    }
}

const STRATEGIES: [&str; 8] = [
    "auto",
    "local",
    "broadcast",
    "broadcast_left",
    "copartitioned",
    "repartition",
    "replication",
    "tsmm",
];

#[tokio::test]
async fn matmul_matches_naive_for_every_strategy_and_blocking() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    // Dense, sparse and mixed, blocks that do not divide the shape, non-square.
    let a = M::random(37, 23, 0.9, 1);
    let b = M::random(23, 19, 0.9, 2);
    let s = M::random(37, 23, 0.05, 3);
    let u = M::random(23, 19, 0.1, 4);
    put(&store, "a", &a, (10, 7), Partitioning::Hash { shards: 2 });
    put(&store, "b", &b, (5, 8), Partitioning::Hash { shards: 3 });
    put(
        &store,
        "s",
        &s,
        (16, 16),
        Partitioning::RowBlock { shards: 2 },
    );
    put(&store, "u", &u, (7, 4), Partitioning::Hash { shards: 1 });
    for strategy in STRATEGIES {
        run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        // None of these operands is stored co-partitioned with the other, and only
        // t(a) a is a tsmm: a forced strategy that cannot run a product is an error.
        let applies = |sql: &str| match strategy {
            "copartitioned" => false,
            "tsmm" => sql.ends_with("matmul(t(a), a)"),
            _ => true,
        };
        for (x, y, mx, my) in [
            ("a", "b", &a, &b),
            ("s", "b", &s, &b),
            ("a", "u", &a, &u),
            ("s", "u", &s, &u),
        ] {
            let sql = format!("SELECT * FROM matmul({x}, {y})");
            if !applies(&sql) {
                let e = error(&ctx, &sql).await;
                assert!(
                    e.contains(&format!("'{strategy}' cannot run this product")),
                    "{e}"
                );
                continue;
            }
            let got = matrix(&ctx, &sql, mx.r, my.c).await;
            got.assert_close(&mx.mm(my), &format!("matmul({x}, {y}) with {strategy}"));
        }
        // Transposed operands: t(a) is 23 x 37.
        for (sql, want) in [
            ("SELECT * FROM matmul(t(s), a)", s.t().mm(&a)),
            ("SELECT * FROM matmul(t(a), a)", a.t().mm(&a)),
        ] {
            if applies(sql) {
                let got = matrix(&ctx, sql, 23, 23).await;
                got.assert_close(&want, &format!("{sql} with {strategy}"));
            } else {
                let e = error(&ctx, sql).await;
                assert!(
                    e.contains("cannot run this product"),
                    "{sql} with {strategy}: {e}"
                );
            }
        }
    }
}

/// What a sink is opened with: the matrix's shape and block size.
type Opening = ((u64, u64), (u64, u64));

/// Records what a product hands to its sink.
#[derive(Default)]
struct RecordingSink {
    opened: std::sync::Mutex<Vec<Opening>>,
    tiles: std::sync::Mutex<Vec<super::Tile>>,
}

impl super::TileSink for RecordingSink {
    fn open(&self, shape: (u64, u64), block: (u64, u64)) -> Result<bool> {
        self.opened.lock().unwrap().push((shape, block));
        Ok(true)
    }
    fn put(&self, tile: &super::Tile) -> Result<()> {
        self.tiles.lock().unwrap().push(tile.clone());
        Ok(())
    }
}

/// The blocks of `m` as a dense `r x c` matrix.
fn dense_of(tiles: &[super::Tile], block: (u64, u64), r: usize, c: usize) -> M {
    let mut m = M::new(r, c, |_, _| 0.0);
    for (bi, bj, b) in tiles {
        let (r0, c0) = ((bi * block.0) as usize, (bj * block.1) as usize);
        b.for_each_nonzero(|i, j, v| m.v[(r0 + i) * c + c0 + j] = v);
    }
    m
}

#[tokio::test]
async fn a_local_product_hands_every_block_to_the_sink_as_it_finishes() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    let a = M::random(37, 23, 0.9, 1);
    let b = M::random(23, 19, 0.9, 2);
    put(&store, "a", &a, (10, 7), Partitioning::Hash { shards: 2 });
    put(&store, "b", &b, (7, 8), Partitioning::Hash { shards: 3 });
    let compute = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let sink = Arc::new(RecordingSink::default());
            let plan = ctx.sql(sql).await?.create_physical_plan().await?;
            let m = super::compute_blocks(&plan, ctx.task_ctx(), Some(sink.clone()))
                .await?
                .expect("a matrix expression");
            Ok::<_, datafusion::common::DataFusionError>((m, sink))
        }
    };
    for strategy in STRATEGIES {
        run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        if matches!(strategy, "copartitioned" | "tsmm") {
            // Cannot run a plain product of these operands (see the test above).
            assert!(compute("SELECT * FROM matmul(a, b)").await.is_err());
            continue;
        }
        let (m, sink) = compute("SELECT * FROM matmul(a, b)").await.unwrap();
        let opened = sink.opened.lock().unwrap().clone();
        let tiles = sink.tiles.lock().unwrap().clone();
        let all: Vec<super::Tile> = m.tiles().cloned().collect();
        // Whatever the sink saw, the returned matrix is the product.
        dense_of(&all, (10, 8), 37, 19).assert_close(&a.mm(&b), strategy);
        if strategy == "local" {
            assert_eq!(opened, vec![((37, 19), (10, 8))]);
            assert_eq!(tiles.len(), all.len(), "every block once");
            dense_of(&tiles, (10, 8), 37, 19).assert_close(&a.mm(&b), "blocks put");
        } else if opened.is_empty() {
            assert!(tiles.is_empty(), "{strategy}: blocks put without open");
        }
    }
    // Only the product at the top is offered: an mmchain forced into two products
    // never opens the sink for its intermediate `x v`.
    run(&ctx, "SET tessera.matmul_strategy = 'local'")
        .await
        .unwrap();
    let v = M::random(23, 1, 1.0, 5);
    put(&store, "v", &v, (7, 1), Partitioning::Hash { shards: 1 });
    let (m, sink) = compute("SELECT * FROM matmul(t(a), matmul(a, v))")
        .await
        .unwrap();
    assert_eq!(m.shape(), (23, 1));
    assert!(
        sink.opened
            .lock()
            .unwrap()
            .iter()
            .all(|(shape, _)| *shape == (23, 1))
    );
}

#[tokio::test]
async fn fused_products_and_chains_match_naive() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    let x = M::random(200, 12, 0.8, 5);
    let v = M::random(12, 1, 1.0, 6);
    let w = M::random(12, 30, 0.5, 7);
    let z = M::random(30, 2, 1.0, 8);
    put(&store, "x", &x, (64, 12), Partitioning::Hash { shards: 2 });
    put(&store, "v", &v, (12, 1), Partitioning::Hash { shards: 1 });
    put(&store, "w", &w, (5, 6), Partitioning::Hash { shards: 2 });
    put(&store, "z", &z, (30, 2), Partitioning::Hash { shards: 1 });
    for strategy in ["auto", "repartition", "local"] {
        run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        let got = matrix(&ctx, "SELECT * FROM matmul(t(x), x)", 12, 12).await;
        got.assert_close(&x.t().mm(&x), "tsmm");
        let got = matrix(&ctx, "SELECT * FROM matmul(t(x), matmul(x, v))", 12, 1).await;
        got.assert_close(&x.t().mm(&x.mm(&v)), "mmchain");
        let got = matrix(&ctx, "SELECT * FROM matmul(matmul(x, w), z)", 200, 2).await;
        got.assert_close(&x.mm(&w).mm(&z), "chain");
        let got = matrix(&ctx, "SELECT * FROM t(matmul(x, w))", 30, 200).await;
        got.assert_close(&x.mm(&w).t(), "transpose push-down");
    }
    run(&ctx, "SET tessera.matmul_strategy = 'auto'")
        .await
        .unwrap();
    let plan = explain(&ctx, "SELECT * FROM matmul(t(x), x)").await;
    assert!(plan.contains("strategy=tsmm"), "{plan}");
    let plan = explain(&ctx, "SELECT * FROM matmul(t(x), matmul(x, v))").await;
    assert!(plan.contains("strategy=mmchain"), "{plan}");
    let plan = explain(&ctx, "SELECT * FROM matmul(matmul(x, w), z)").await;
    assert!(
        plan.contains("matmul(x, matmul(w, z))"),
        "chain reordered: {plan}"
    );
    run(&ctx, "SET tessera.matmul_strategy = 'replication'")
        .await
        .unwrap();
    let plan = explain(&ctx, "SELECT * FROM matmul(t(x), x)").await;
    assert!(
        plan.contains("strategy=replication") && plan.contains("forced"),
        "{plan}"
    );
}

async fn explain(ctx: &SessionContext, sql: &str) -> String {
    let batches = run(ctx, &format!("EXPLAIN {sql}")).await.unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn elementwise_reductions_and_reshaping_match_naive() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    let a = M::random(21, 13, 0.7, 9);
    let b = M::random(21, 13, 0.2, 10);
    let r = M::random(1, 13, 1.0, 11);
    let c = M::random(21, 1, 1.0, 12);
    put(&store, "a", &a, (8, 5), Partitioning::Hash { shards: 2 });
    put(&store, "b", &b, (6, 6), Partitioning::Hash { shards: 2 });
    put(&store, "r", &r, (1, 4), Partitioning::Hash { shards: 1 });
    put(&store, "c", &c, (10, 1), Partitioning::Hash { shards: 2 });
    let check = |sql: &'static str, rows: usize, cols: usize, want: M| {
        let ctx = ctx.clone();
        async move {
            matrix(&ctx, sql, rows, cols).await.assert_close(&want, sql);
        }
    };
    check("SELECT * FROM add(a, b)", 21, 13, a.map2(&b, |x, y| x + y)).await;
    check("SELECT * FROM sub(a, r)", 21, 13, a.map2(&r, |x, y| x - y)).await;
    check("SELECT * FROM mul(a, c)", 21, 13, a.map2(&c, |x, y| x * y)).await;
    check(
        "SELECT * FROM div(a, add(c, 100))",
        21,
        13,
        a.map2(&c, |x, y| x / (y + 100.0)),
    )
    .await;
    check("SELECT * FROM max(a, b)", 21, 13, a.map2(&b, f64::max)).await;
    check(
        "SELECT * FROM scale(a, -2.5)",
        21,
        13,
        a.map2(&a, |x, _| x * -2.5),
    )
    .await;
    check("SELECT * FROM pow(a, 2)", 21, 13, a.map2(&a, |x, _| x * x)).await;
    check(
        "SELECT * FROM exp(scale(b, 0.1))",
        21,
        13,
        b.map2(&b, |x, _| (x * 0.1).exp()),
    )
    .await;
    check(
        "SELECT * FROM sqrt(abs(sub(a, b)))",
        21,
        13,
        a.map2(&b, |x, y| (x - y).abs().sqrt()),
    )
    .await;
    check("SELECT * FROM add(r, a)", 21, 13, a.map2(&r, |x, y| y + x)).await;
    // One fused program over the blocks, `b` (6 x 6 blocks) reblocked to `a`'s 8 x 5.
    let plan = explain(&ctx, "SELECT * FROM sqrt(abs(sub(a, b)))").await;
    assert!(
        plan.contains("BlockElementwiseExec: 3 steps over 2 inputs")
            && plan.contains("BlockAssembleExec: 8x5 blocks")
            && plan.contains("pieces of 6x6 blocks"),
        "{plan}"
    );
    let rowsums = M::new(21, 1, |i, _| (0..13).map(|j| a.at(i, j)).sum());
    check("SELECT * FROM rowsums(a)", 21, 1, rowsums.clone()).await;
    check(
        "SELECT * FROM rowmeans(a)",
        21,
        1,
        M::new(21, 1, |i, _| rowsums.at(i, 0) / 13.0),
    )
    .await;
    check(
        "SELECT * FROM colsums(b)",
        1,
        13,
        M::new(1, 13, |_, j| (0..21).map(|i| b.at(i, j)).sum()),
    )
    .await;
    check(
        "SELECT * FROM colmeans(b)",
        1,
        13,
        M::new(1, 13, |_, j| {
            (0..21).map(|i| b.at(i, j)).sum::<f64>() / 21.0
        }),
    )
    .await;
    let total: f64 = a.v.iter().sum();
    check("SELECT * FROM sum(a)", 1, 1, M::new(1, 1, |_, _| total)).await;
    let nnz = b.v.iter().filter(|x| **x != 0.0).count() as f64;
    check("SELECT * FROM nnz(b)", 1, 1, M::new(1, 1, |_, _| nnz)).await;
    let lo = b.v.iter().copied().fold(f64::INFINITY, f64::min);
    check("SELECT * FROM min(b)", 1, 1, M::new(1, 1, |_, _| lo)).await;
    // A zero scalar result still has its row.
    let rows = run(&ctx, "SELECT * FROM sum(sub(a, a))").await.unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    check(
        "SELECT * FROM slice(a, 3, 17, 2, 11)",
        14,
        9,
        M::new(14, 9, |i, j| a.at(i + 3, j + 2)),
    )
    .await;
    check(
        "SELECT * FROM cbind(a, c)",
        21,
        14,
        M::new(21, 14, |i, j| if j < 13 { a.at(i, j) } else { c.at(i, 0) }),
    )
    .await;
    check(
        "SELECT * FROM rbind(a, b)",
        42,
        13,
        M::new(
            42,
            13,
            |i, j| if i < 21 { a.at(i, j) } else { b.at(i - 21, j) },
        ),
    )
    .await;
    check(
        "SELECT * FROM diag(c)",
        21,
        21,
        M::new(21, 21, |i, j| if i == j { c.at(i, 0) } else { 0.0 }),
    )
    .await;
    check(
        "SELECT * FROM diag(matmul(t(a), a))",
        13,
        1,
        M::new(13, 1, |i, _| a.t().mm(&a).at(i, i)),
    )
    .await;
    check(
        "SELECT * FROM eye(7)",
        7,
        7,
        M::new(7, 7, |i, j| f64::from(u8::from(i == j))),
    )
    .await;
    // Subquery arguments: any (i, j, v) relation, the shape taken from the data.
    check(
        "SELECT * FROM matmul((SELECT i, j, v * 2 FROM (VALUES (0, 0, 1.0), (1, 2, 3.0)) AS t(i, j, v)), eye(3))",
        2,
        3,
        M::new(2, 3, |i, j| match (i, j) { (0, 0) => 2.0, (1, 2) => 6.0, _ => 0.0 }),
    )
    .await;
}

#[tokio::test]
async fn rows_returns_dense_rows() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    let a = M::random(9, 5, 0.5, 13);
    put(&store, "a", &a, (4, 2), Partitioning::Hash { shards: 2 });
    let batches = run(&ctx, "SELECT * FROM rows(a) ORDER BY i").await.unwrap();
    let mut seen = 0;
    for b in batches {
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let rows = b.column(1).as_any().downcast_ref::<ListArray>().unwrap();
        for k in 0..b.num_rows() {
            let row = rows.value(k);
            let row = row.as_any().downcast_ref::<Float64Array>().unwrap();
            let i = ids.value(k) as usize;
            assert_eq!(i, seen);
            assert_eq!(row.values().to_vec(), a.v[i * 5..(i + 1) * 5].to_vec());
            seen += 1;
        }
    }
    assert_eq!(seen, 9);
}

#[tokio::test]
async fn solvers_match_hand_worked_examples() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    // a = [[4, 2], [2, 3]]: inverse [[3, -2], [-2, 4]] / 8; cholesky [[2, 0], [1, sqrt 2]].
    let a = M {
        r: 2,
        c: 2,
        v: vec![4.0, 2.0, 2.0, 3.0],
    };
    let b = M {
        r: 2,
        c: 1,
        v: vec![2.0, 1.0],
    };
    put(&store, "a", &a, (1, 2), Partitioning::Hash { shards: 2 });
    put(&store, "b", &b, (2, 1), Partitioning::Hash { shards: 1 });
    let inv = M {
        r: 2,
        c: 2,
        v: vec![0.375, -0.25, -0.25, 0.5],
    };
    matrix(&ctx, "SELECT * FROM inv(a)", 2, 2)
        .await
        .assert_close(&inv, "inv");
    // x = inv(a) b = [0.5, 0].
    matrix(&ctx, "SELECT * FROM solve(a, b)", 2, 1)
        .await
        .assert_close(
            &M {
                r: 2,
                c: 1,
                v: vec![0.5, 0.0],
            },
            "solve",
        );
    matrix(&ctx, "SELECT * FROM cholesky(a)", 2, 2)
        .await
        .assert_close(
            &M {
                r: 2,
                c: 2,
                v: vec![2.0, 0.0, 1.0, 2f64.sqrt()],
            },
            "cholesky",
        );
    // Ridge regression in one statement: solve(t(x) x + 0.5 I, t(x) y).
    let x = M::random(50, 4, 1.0, 14);
    let y = M::random(50, 1, 1.0, 15);
    put(&store, "x", &x, (16, 4), Partitioning::Hash { shards: 2 });
    put(&store, "y", &y, (16, 1), Partitioning::Hash { shards: 2 });
    let got = matrix(
        &ctx,
        "SELECT * FROM solve(add(matmul(t(x), x), scale(eye(4), 0.5)), matmul(t(x), y))",
        4,
        1,
    )
    .await;
    let g = x.t().mm(&x).map2(
        &M::new(4, 4, |i, j| if i == j { 0.5 } else { 0.0 }),
        |p, q| p + q,
    );
    // Check g got = t(x) y instead of inverting by hand.
    g.mm(&got)
        .assert_close(&x.t().mm(&y), "ridge normal equations");
    // One dataflow: the solve's operands (a tsmm, a product) gathered into one
    // partition by a block operator; nothing computes a matrix whole.
    let plan = explain(
        &ctx,
        "SELECT * FROM solve(add(matmul(t(x), x), scale(eye(4), 0.5)), matmul(t(x), y))",
    )
    .await;
    assert!(
        whole_matrix_operators(&plan).is_empty()
            && plan.contains("BlockGatherExec: solve of the gathered operands (faer), 4x1"),
        "{plan}"
    );
    // inv and cholesky likewise, and their errors keep their kind.
    for (sql, op) in [("inv(a)", "inv"), ("cholesky(a)", "cholesky")] {
        let plan = explain(&ctx, &format!("SELECT * FROM {sql}")).await;
        assert!(
            plan.contains(&format!("BlockGatherExec: {op} of the gathered operands")),
            "{plan}"
        );
    }
    let singular = run(&ctx, "SELECT * FROM inv(sub(a, a))").await.unwrap_err();
    assert_eq!(
        crate::TesseraError::find(&singular).map(|e| e.kind()),
        Some(crate::ErrorKind::SingularMatrix),
        "{singular}"
    );
    assert!(singular.to_string().contains("singular"), "{singular}");
    let msg = error(&ctx, "SELECT * FROM cholesky(scale(a, -1))").await;
    assert!(msg.contains("positive definite"), "{msg}");
    // A product computed whole that fails (1x1 times the 2x2 the subquery's cells
    // span) over a dataflow with an exchange, in several partitions: each partition
    // gets the one error, and the dataflow runs once (a second run of its exchange
    // would panic).
    let config = super::session_config(SessionConfig::new().with_target_partitions(3));
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config);
    let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
    let sql = "SELECT * FROM matmul(colmeans(t(eye(1))), \
               (SELECT * FROM (VALUES (0, 0, 1.0), (1, 1, 2.0)) t(i, j, v)))";
    let plan = explain(&ctx, sql).await;
    assert!(plan.contains("RepartitionExec"), "{plan}");
    let msg = error(&ctx, sql).await;
    assert!(msg.contains("1x1") && msg.contains("2x2"), "{msg}");
}

#[tokio::test]
async fn rand_is_deterministic_and_honours_its_arguments() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    let one = matrix(&ctx, "SELECT * FROM rand(300, 40, 0.1, 7, -1, 1)", 300, 40).await;
    let two = matrix(&ctx, "SELECT * FROM rand(300, 40, 0.1, 7, -1, 1)", 300, 40).await;
    assert_eq!(one, two);
    let other = matrix(&ctx, "SELECT * FROM rand(300, 40, 0.1, 8, -1, 1)", 300, 40).await;
    assert_ne!(one, other);
    let nnz = one.v.iter().filter(|x| **x != 0.0).count() as f64;
    assert!(
        (nnz / 12_000.0 - 0.1).abs() < 0.02,
        "density {}",
        nnz / 12_000.0
    );
    assert!(one.v.iter().all(|x| (-1.0..1.0).contains(x)));
    let dense = matrix(
        &ctx,
        "SELECT * FROM rand(rows => 20, cols => 3, seed => 1)",
        20,
        3,
    )
    .await;
    assert!(dense.v.iter().all(|x| (0.0..1.0).contains(x) && *x != 0.0));
}

#[tokio::test]
async fn mistakes_are_clear_errors() {
    let store = Store::in_memory();
    let ctx = session(&store, None);
    put(
        &store,
        "a",
        &M::random(3, 4, 1.0, 1),
        (2, 2),
        Partitioning::Hash { shards: 1 },
    );
    put(
        &store,
        "b",
        &M::random(5, 2, 1.0, 2),
        (2, 2),
        Partitioning::Hash { shards: 1 },
    );
    let msg = error(&ctx, "SELECT * FROM matmul(a, b)").await;
    assert!(msg.contains("3x4") && msg.contains("5x2"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM add(a, b)").await;
    assert!(msg.contains("3x4") && msg.contains("5x2"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM matmul(a, nosuch)").await;
    assert!(msg.contains("unknown array or table 'nosuch'"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM matmul(a)").await;
    assert!(msg.contains("matmul takes 2 argument"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM matmul(a, b, a)").await;
    assert!(msg.contains("matmul takes 2 argument"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM t(frobnicate(a))").await;
    assert!(
        msg.contains("unknown matrix function 'frobnicate'"),
        "{msg}"
    );
    let msg = error(&ctx, "SELECT * FROM scale(a, b)").await;
    assert!(msg.contains("must be a number"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM slice(a, 0, 9, 0, 1)").await;
    assert!(msg.contains("3x4"), "{msg}");
    let msg = error(&ctx, "SELECT * FROM matmul(a, (SELECT 1, 2))").await;
    assert!(msg.contains("three columns"), "{msg}");
    run(&ctx, "SET tessera.matmul_strategy = 'fastest'")
        .await
        .unwrap();
    let msg = error(&ctx, "SELECT * FROM matmul(t(a), a)").await;
    assert!(msg.contains("unknown tessera.matmul_strategy"), "{msg}");
}

#[tokio::test]
async fn memory_budget_fails_cleanly() {
    let store = Store::in_memory();
    // 1 MiB for the session: a 2000 x 2000 dense product (32 MB) cannot fit.
    let ctx = session(&store, Some(1 << 20));
    let msg = error(&ctx, "SELECT count(*) FROM matmul(rand(2000, 2000, 1.0, 1, 0, 1), rand(2000, 2000, 1.0, 2, 0, 1))").await;
    assert!(
        msg.contains("Resources exhausted") || msg.contains("memory"),
        "{msg}"
    );
}

#[test]
fn rewrites_remove_double_transposes_and_push_transposes_down() {
    let leaf = |k| MatExpr::leaf(Op::Eye(k));
    assert_eq!(push_transposes(leaf(3).t().t()), leaf(3));
    let x = MatExpr::leaf(Op::Input(0));
    let y = MatExpr::leaf(Op::Input(1));
    let prod = MatExpr::new(Op::MatMul, vec![x.clone(), y.clone()]);
    assert_eq!(
        push_transposes(prod.t()),
        MatExpr::new(Op::MatMul, vec![y.clone().t(), x.clone().t()])
    );
    // t(t(x)) = x, so the product stays plain.
    let e = optimize(MatExpr::new(Op::MatMul, vec![x.clone().t().t(), x.clone()]));
    assert_eq!(e, MatExpr::new(Op::MatMul, vec![x.clone(), x.clone()]));
    let e = optimize(MatExpr::new(Op::MatMul, vec![x.clone().t(), x.clone()]));
    assert_eq!(e.op, Op::Tsmm);
    assert_eq!(Strategy::parse("cpmm"), Some(Strategy::Repartition));
}

/// The block products a stored `a b` needs: for each `k`, the stored (non-zero) blocks
/// of block column `k` of `a` times those of block row `k` of `b`.
fn block_products_needed(a: &M, ab: (u64, u64), b: &M, bb: (u64, u64)) -> u64 {
    let nonzero = |m: &M, (br, bc): (u64, u64), bi: usize, bj: usize| {
        let (br, bc) = (br as usize, bc as usize);
        (bi * br..((bi + 1) * br).min(m.r))
            .any(|i| (bj * bc..((bj + 1) * bc).min(m.c)).any(|j| m.at(i, j) != 0.0))
    };
    let k_blocks = a.c.div_ceil(ab.1 as usize);
    (0..k_blocks)
        .map(|k| {
            let left = (0..a.r.div_ceil(ab.0 as usize))
                .filter(|&i| nonzero(a, ab, i, k))
                .count() as u64;
            let right = (0..b.c.div_ceil(bb.1 as usize))
                .filter(|&j| nonzero(b, bb, k, j))
                .count() as u64;
            left * right
        })
        .sum()
}

/// The plan's operators named `name`, depth first.
fn operators<'p>(
    plan: &'p Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    name: &str,
    out: &mut Vec<&'p Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
) {
    if plan.name() == name {
        out.push(plan);
    }
    for child in plan.children() {
        operators(child, name, out);
    }
}

/// Per-partition values of the counter `metric` summed over the operators named `name`.
fn counter_by_partition(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    name: &str,
    metric: &str,
) -> std::collections::BTreeMap<usize, usize> {
    let mut found = Vec::new();
    operators(plan, name, &mut found);
    let mut by_partition = std::collections::BTreeMap::new();
    for op in found {
        for m in op.metrics().unwrap().iter() {
            if m.value().name() == metric {
                *by_partition.entry(m.partition().unwrap_or(0)).or_default() +=
                    m.value().as_usize();
            }
        }
    }
    by_partition
}

/// Products of stored matrices whose blocks meet run as a dataflow: block scans,
/// DataFusion's hash join and the exchanges DataFusion plans, block products and a
/// block sum. For each strategy, the plan has its shape (and no exchange where none
/// belongs), the result matches the naive product for 1 to 16 partitions over dense,
/// sparse and mixed operands, and each needed block product is computed exactly once
/// across the partitions.
#[tokio::test]
async fn dataflow_strategies_have_their_shape_match_naive_and_share_the_work() {
    let store = Store::in_memory();
    let a = M::random(37, 23, 0.9, 11);
    let s = M::random(37, 23, 0.06, 12);
    let b = M::random(23, 19, 0.9, 13);
    let u = M::random(23, 19, 0.1, 14);
    // 23 columns in blocks of 3: eight values of the shared block index k.
    put(&store, "a", &a, (10, 3), Partitioning::Hash { shards: 3 });
    put(&store, "s", &s, (10, 3), Partitioning::Hash { shards: 2 });
    // One shard: a single partition satisfies any key partitioning.
    put(&store, "b", &b, (3, 8), Partitioning::Hash { shards: 1 });
    put(
        &store,
        "u",
        &u,
        (3, 5),
        Partitioning::RowBlock { shards: 2 },
    );
    let cases = [
        ("a", "b", &a, &b, (3u64, 8u64)),
        ("s", "b", &s, &b, (3, 8)),
        ("a", "u", &a, &u, (3, 5)),
        ("s", "u", &s, &u, (3, 5)),
    ];
    for partitions in [1usize, 2, 3, 7, 16] {
        let config = super::session_config(SessionConfig::new().with_target_partitions(partitions));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
        for strategy in [
            "repartition",
            "broadcast",
            "broadcast_left",
            "local",
            "replication",
        ] {
            run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
                .await
                .unwrap();
            for (x, y, mx, my, yb) in cases {
                let what = format!("matmul({x}, {y}) with {strategy} over {partitions} partitions");
                let sql = format!("SELECT * FROM matmul({x}, {y})");
                let plan = ctx
                    .sql(&sql)
                    .await
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let shape = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(false)
                    .to_string();
                for op in ["BlockScanExec", "BlockProductExec", "BlockSumExec"] {
                    assert!(shape.contains(op), "{what}: no {op} in\n{shape}");
                }
                let k_exchange = shape.contains("RepartitionExec: partitioning=Hash([bj@1]")
                    || shape.contains("RepartitionExec: partitioning=Hash([bi@0], ");
                match strategy {
                    "repartition" => {
                        assert!(
                            shape.contains("HashJoinExec: mode=Partitioned"),
                            "{what}:\n{shape}"
                        );
                        if partitions > 1 {
                            assert!(
                                shape.contains("RepartitionExec: partitioning=Hash([bj@1]")
                                    && shape.contains("RepartitionExec: partitioning=Hash([bi@0]"),
                                "{what}: both sides are repartitioned on k\n{shape}"
                            );
                        }
                    }
                    "local" => {
                        assert!(
                            shape.contains("BlockSumExec: sum by (bi, bj) in one partition")
                                && shape.contains("partial sums by (i, j), in one partition")
                                && shape.contains("HashJoinExec: mode=CollectLeft")
                                && !k_exchange
                                && !shape.contains("RepartitionExec: partitioning=Hash"),
                            "{what}: one task, no hash repartition\n{shape}"
                        );
                    }
                    "replication" => {
                        assert!(
                            shape.contains("HashJoinExec: mode=Partitioned")
                                && shape.contains("filter=")
                                && shape.contains("to the")
                                && !k_exchange
                                && !shape
                                    .contains("RepartitionExec: partitioning=Hash([bi@0, bj@1]"),
                            "{what}: fan-out, one exchange on (i, j), no aggregation exchange\n{shape}"
                        );
                        if partitions > 1 {
                            assert!(
                                shape.contains("RepartitionExec: partitioning=Hash([bi@1, oj@0]")
                                    && shape.contains(
                                        "RepartitionExec: partitioning=Hash([oi@0, bj@2]"
                                    ),
                                "{what}: both sides sent to their output blocks\n{shape}"
                            );
                        }
                    }
                    _ => {
                        assert!(
                            shape.contains("HashJoinExec: mode=CollectLeft"),
                            "{what}:\n{shape}"
                        );
                        assert!(
                            !k_exchange,
                            "{what}: a broadcast repartitions on k\n{shape}"
                        );
                    }
                }
                let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let got = cells_of(&batches, mx.r, my.c);
                got.assert_close(&mx.mm(my), &what);
                let products = counter_by_partition(&plan, "BlockProductExec", "block_products");
                let needed = block_products_needed(mx, (10, 3), my, yb);
                assert_eq!(
                    products.values().sum::<usize>() as u64,
                    needed,
                    "{what}: block products computed, by partition {products:?}"
                );
                if strategy == "local" {
                    assert!(
                        products.len() <= 1,
                        "{what}: local runs in one task: {products:?}"
                    );
                }
                if matches!(strategy, "repartition" | "replication") && partitions > 1 {
                    let busiest = products.values().max().copied().unwrap_or(0) as u64;
                    assert!(
                        busiest < needed,
                        "{what}: one partition computed every product: {products:?}"
                    );
                }
                if partitions > 1 {
                    let moved = counter_by_partition(&plan, "ExchangeMeterExec", "bytes_moved");
                    assert!(
                        moved.values().sum::<usize>() > 0,
                        "{what}: no bytes through any exchange\n{shape}"
                    );
                }
            }
        }
    }
}

/// The cells of a plan's `(i, j, v)` batches as an `r x c` matrix.
fn cells_of(batches: &[RecordBatch], r: usize, c: usize) -> M {
    let mut got = M::new(r, c, |_, _| 0.0);
    for batch in batches {
        let i = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let j = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let v = batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        for k in 0..batch.num_rows() {
            got.v[i.value(k) as usize * c + j.value(k) as usize] += v.value(k);
        }
    }
    got
}

/// zipmm, tsmm and mmchain as dataflows: `t(a) b` for two matrices stored by row alike
/// joins partition p with partition p (no exchange before the join) and is refused for
/// matrices stored otherwise; `t(x) x` and `t(x) (x v)` make one partial per partition
/// and move `x` only when its partitions do not hold whole block rows. Each result is
/// checked against the naive product, and each block product is made once.
#[tokio::test]
async fn zipmm_tsmm_and_mmchain_run_as_dataflows() {
    let store = Store::in_memory();
    let a = M::random(40, 12, 0.9, 21);
    let s = M::random(40, 9, 0.08, 22);
    let b = M::random(40, 9, 0.9, 23);
    let x = M::random(50, 7, 0.9, 24);
    let w = M::random(50, 11, 0.3, 25);
    let v = M::random(7, 1, 1.0, 26);
    let vw = M::random(11, 2, 1.0, 27);
    // a, s and b: 8 block rows of 5, by row over 3 shards: placed alike on k.
    put(
        &store,
        "a",
        &a,
        (5, 4),
        Partitioning::RowBlock { shards: 3 },
    );
    put(
        &store,
        "s",
        &s,
        (5, 3),
        Partitioning::RowBlock { shards: 3 },
    );
    put(
        &store,
        "b",
        &b,
        (5, 3),
        Partitioning::RowBlock { shards: 3 },
    );
    // c: the same blocks over 2 shards, not placed like a.
    put(
        &store,
        "c",
        &b,
        (5, 3),
        Partitioning::RowBlock { shards: 2 },
    );
    // x: one block column (each block a whole block row); w: three block columns,
    // hash-placed, so its block rows are gathered by bi first.
    put(&store, "x", &x, (8, 7), Partitioning::Hash { shards: 3 });
    put(&store, "w", &w, (8, 4), Partitioning::Hash { shards: 2 });
    put(&store, "v", &v, (7, 1), Partitioning::Hash { shards: 1 });
    put(&store, "vw", &vw, (4, 2), Partitioning::Hash { shards: 2 });
    for partitions in [1usize, 2, 5, 16] {
        let config = super::session_config(SessionConfig::new().with_target_partitions(partitions));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
        let plan_of = |sql: String| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx.sql(&sql).await?.create_physical_plan().await?;
                let shape = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(false)
                    .to_string();
                let batches =
                    datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await?;
                Ok::<_, datafusion::common::DataFusionError>((plan, shape, batches))
            }
        };

        run(&ctx, "SET tessera.matmul_strategy = 'copartitioned'")
            .await
            .unwrap();
        for (y, my, cols) in [("b", &b, 9usize), ("s", &s, 9)] {
            for (lhs, ml) in [("a", &a), ("s", &s)] {
                let what = format!("t({lhs}) {y} zipmm over {partitions} partitions");
                let (plan, shape, batches) =
                    plan_of(format!("SELECT * FROM matmul(t({lhs}), {y})"))
                        .await
                        .unwrap();
                assert!(
                    shape.contains("BlockZipJoinExec")
                        && shape.contains("BlockMapExec: transpose")
                        && !shape.contains("RepartitionExec: partitioning=Hash([bj@1]")
                        && !shape.contains("RepartitionExec: partitioning=Hash([bi@0], "),
                    "{what}: no exchange before the join\n{shape}"
                );
                cells_of(&batches, ml.c, cols).assert_close(&ml.t().mm(my), &what);
                let (lb, yb) = (if lhs == "a" { (4, 5) } else { (3, 5) }, (5, 3));
                let needed = block_products_needed(&ml.t(), lb, my, yb);
                let products = counter_by_partition(&plan, "BlockProductExec", "block_products");
                assert_eq!(products.values().sum::<usize>() as u64, needed, "{what}");
            }
        }
        let e = error(&ctx, "SELECT * FROM matmul(t(a), c)").await;
        assert!(e.contains("'copartitioned' cannot run this product"), "{e}");
        let e = error(&ctx, "SELECT * FROM matmul(a, t(a))").await;
        assert!(e.contains("'copartitioned' cannot run this product"), "{e}");

        run(&ctx, "SET tessera.matmul_strategy = 'tsmm'")
            .await
            .unwrap();
        for (name, m, bc, gathered) in [("x", &x, 7usize, false), ("w", &w, 4, true)] {
            let what = format!("t({name}) {name} tsmm over {partitions} partitions");
            let (plan, shape, batches) =
                plan_of(format!("SELECT * FROM matmul(t({name}), {name})"))
                    .await
                    .unwrap();
            assert!(
                shape.contains("FusedPartialExec: tsmm")
                    && shape.contains("BlockSumExec: sum by (bi, bj) in one partition"),
                "{what}\n{shape}"
            );
            assert_eq!(
                shape.contains("RepartitionExec: partitioning=Hash([bi@0], "),
                gathered,
                "{what}: x moves only when its partitions lack whole block rows\n{shape}"
            );
            cells_of(&batches, m.c, m.c).assert_close(&m.t().mm(m), &what);
            // Per block row of nb blocks: nb diagonal products and nb (nb - 1) / 2 others.
            let nb = m.c.div_ceil(bc) as u64;
            let rows = m.r.div_ceil(8) as u64;
            let products = counter_by_partition(&plan, "FusedPartialExec", "block_products");
            assert_eq!(
                products.values().sum::<usize>() as u64,
                rows * (nb + nb * (nb - 1) / 2),
                "{what}: {products:?}"
            );
            // The scatter matrix of cov and cor: x's blocks are centred as they are
            // read, not broadcast into a centred copy of x first.
            let what = format!("centred t({name}) {name} over {partitions} partitions");
            let c = format!("sub({name}, colmeans({name}))");
            let (_, shape, batches) = plan_of(format!("SELECT * FROM matmul(t({c}), {c})"))
                .await
                .unwrap();
            assert!(
                shape.contains("FusedPartialExec: centred tsmm")
                    && !shape.contains("BlockMapExec: broadcast"),
                "{what}\n{shape}"
            );
            let means: Vec<f64> = (0..m.c)
                .map(|j| (0..m.r).map(|i| m.at(i, j)).sum::<f64>() / m.r as f64)
                .collect();
            let centred = M::new(m.r, m.c, |i, j| m.at(i, j) - means[j]);
            cells_of(&batches, m.c, m.c).assert_close(&centred.t().mm(&centred), &what);
        }

        run(&ctx, "SET tessera.matmul_strategy = 'mmchain'")
            .await
            .unwrap();
        for (name, m, vec, mv) in [("x", &x, "v", &v), ("w", &w, "vw", &vw)] {
            let what = format!("t({name}) ({name} {vec}) mmchain over {partitions} partitions");
            let (_, shape, batches) = plan_of(format!(
                "SELECT * FROM matmul(t({name}), matmul({name}, {vec}))"
            ))
            .await
            .unwrap();
            assert!(
                shape.contains("FusedPartialExec: mmchain")
                    && shape.contains("BlockSumExec: sum by (bi, bj) in one partition"),
                "{what}\n{shape}"
            );
            cells_of(&batches, m.c, mv.c).assert_close(&m.t().mm(&m.mm(mv)), &what);
        }
    }
}

/// The non-zero cells' `(count, sum, min, max)` of `m` per group key (`0` for all).
fn naive_folds(m: &M, key: impl Fn(usize, usize) -> i64) -> Vec<(i64, u64, f64, f64, f64)> {
    let mut folds = std::collections::BTreeMap::<i64, (u64, f64, f64, f64)>::new();
    for i in 0..m.r {
        for j in 0..m.c {
            let v = m.at(i, j);
            if v != 0.0 {
                let e =
                    folds
                        .entry(key(i, j))
                        .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
                *e = (e.0 + 1, e.1 + v, e.2.min(v), e.3.max(v));
            }
        }
    }
    folds
        .into_iter()
        .map(|(k, (n, s, lo, hi))| (k, n, s, lo, hi))
        .collect()
}

/// The rows of `sql`, whose columns are `key, count, sum, min, max, avg` (the key only
/// when `keyed`), as `(key, count, sum, min, max)` after checking `avg`.
async fn folds_of(ctx: &SessionContext, sql: &str, keyed: bool) -> Vec<(i64, u64, f64, f64, f64)> {
    let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for b in batches {
        let at = usize::from(keyed);
        let f = |k: usize| {
            b.column(at + k)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone()
        };
        let count = b.column(at).as_any().downcast_ref::<Int64Array>().unwrap();
        let (sum, min, max, avg) = (f(1), f(2), f(3), f(4));
        for r in 0..b.num_rows() {
            let key = if keyed {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(r)
            } else {
                0
            };
            let n = count.value(r) as u64;
            if n == 0 {
                assert!(
                    sum.is_null(r) && min.is_null(r) && max.is_null(r) && avg.is_null(r),
                    "{sql}: no cells, not NULL"
                );
                continue;
            }
            assert!(
                (avg.value(r) - sum.value(r) / n as f64).abs() < 1e-9,
                "{sql}: avg"
            );
            out.push((key, n, sum.value(r), min.value(r), max.value(r)));
        }
    }
    out
}

fn assert_folds(got: &[(i64, u64, f64, f64, f64)], want: &[(i64, u64, f64, f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: groups");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0, g.1), (w.0, w.1), "{what}: key and count");
        assert!(
            (g.2 - w.2).abs() < 1e-9 * (1.0 + w.2.abs()),
            "{what}: sum {} vs {}",
            g.2,
            w.2
        );
        assert_eq!((g.3, g.4), (w.3, w.4), "{what}: min and max");
    }
}

#[tokio::test]
async fn aggregates_of_matrix_expressions_fold_blocks_and_match_naive() {
    let store = Store::in_memory();
    let a = M::random(37, 23, 0.3, 11);
    let b = M::random(23, 29, 0.5, 12);
    let z = M::new(23, 29, |_, _| 0.0);
    put(&store, "a", &a, (8, 8), Partitioning::Hash { shards: 3 });
    put(&store, "b", &b, (8, 8), Partitioning::Hash { shards: 3 });
    put(&store, "z", &z, (8, 8), Partitioning::Hash { shards: 3 });
    let ctx = session(&store, None);
    let ab = a.mm(&b);
    let all = " count(*), sum(v), min(v), max(v), avg(v) ";
    for strategy in ["auto", "broadcast", "repartition", "local"] {
        run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        let sql = format!("SELECT{all}FROM matmul(a, b)");
        let plan = explain(&ctx, &sql).await;
        assert!(plan.contains("BlockAggregateExec"), "{strategy}: {plan}");
        assert!(!plan.contains("AggregateExec: mode"), "{strategy}: {plan}");
        let want = naive_folds(&ab, |_, _| 0);
        assert_folds(&folds_of(&ctx, &sql, false).await, &want, &sql);

        let sql = format!("SELECT i,{all}FROM matmul(a, b) GROUP BY i ORDER BY i");
        assert!(
            explain(&ctx, &sql)
                .await
                .contains("BlockAggregateExec: aggr=[count, sum, min, max, avg], by=i")
        );
        let want = naive_folds(&ab, |i, _| i as i64);
        assert_folds(&folds_of(&ctx, &sql, true).await, &want, &sql);

        // Grouped by column, the group column named after the aggregates.
        let sql = format!("SELECT j,{all}FROM matmul(a, b) GROUP BY j ORDER BY j");
        let want = naive_folds(&ab, |_, j| j as i64);
        assert_folds(&folds_of(&ctx, &sql, true).await, &want, &sql);
    }
    run(&ctx, "SET tessera.matmul_strategy = 'auto'")
        .await
        .unwrap();

    // Elementwise chains too.
    let sql = format!("SELECT{all}FROM add(mul(b, b), b)");
    let bb = b.map2(&b, |x, y| x * y).map2(&b, |x, y| x + y);
    assert!(explain(&ctx, &sql).await.contains("BlockAggregateExec"));
    assert_folds(
        &folds_of(&ctx, &sql, false).await,
        &naive_folds(&bb, |_, _| 0),
        &sql,
    );

    // No non-zero cell: one row, count 0 and NULLs, as over rows.
    let sql = format!("SELECT{all}FROM matmul(a, z)");
    assert!(explain(&ctx, &sql).await.contains("BlockAggregateExec"));
    let batches = run(&ctx, &sql).await.unwrap();
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    assert!(folds_of(&ctx, &sql, false).await.is_empty());

    // What blocks cannot answer stays a relational aggregate, and is still right.
    let sql = "SELECT count(*), sum(v), min(v), max(v), avg(v) FROM matmul(a, b) WHERE i < 20";
    let plan = explain(&ctx, sql).await;
    assert!(!plan.contains("BlockAggregateExec"), "{plan}");
    let want = naive_folds(&ab, |i, _| if i < 20 { 0 } else { 1 });
    assert_folds(&folds_of(&ctx, sql, false).await, &want[..1], sql);
    let sql = "SELECT sum(i) FROM matmul(a, b)";
    assert!(!explain(&ctx, sql).await.contains("BlockAggregateExec"));
    let batches = run(&ctx, sql).await.unwrap();
    let got = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let want: i64 = (0..ab.r)
        .flat_map(|i| (0..ab.c).map(move |j| (i, j)))
        .filter(|&(i, j)| ab.at(i, j) != 0.0)
        .map(|(i, _)| i as i64)
        .sum();
    assert_eq!(got, want);
}

/// A small deterministic generator for the generated-expression test.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Dimensions the generated expressions use: one, a prime, and sizes that do and do
/// not divide the block sizes the leaves are stored with.
const DIMS: [usize; 4] = [1, 7, 13, 24];

/// A random matrix expression of shape `r x c` over the stored leaves `g_<r>_<c>_<d|s>`
/// (dense or sparse), as SQL and as its naive value.
fn generate(
    rng: &mut Lcg,
    leaves: &std::collections::HashMap<String, M>,
    r: usize,
    c: usize,
    depth: usize,
) -> (String, M) {
    let leaf = |rng: &mut Lcg| {
        let kind = if rng.below(2) == 0 { "d" } else { "s" };
        let name = format!("g_{r}_{c}_{kind}");
        let m = leaves[&name].clone();
        (name, m)
    };
    if depth == 0 || rng.below(10) < 3 {
        return leaf(rng);
    }
    match rng.below(6) {
        0 | 1 => {
            let k = DIMS[rng.below(DIMS.len())];
            let (x, xm) = generate(rng, leaves, r, k, depth - 1);
            let (y, ym) = generate(rng, leaves, k, c, depth - 1);
            (format!("matmul({x}, {y})"), xm.mm(&ym))
        }
        2 => {
            let (x, xm) = generate(rng, leaves, c, r, depth - 1);
            (format!("t({x})"), xm.t())
        }
        3 => {
            let (x, xm) = generate(rng, leaves, r, c, depth - 1);
            let f = [2.0, -0.5][rng.below(2)];
            (
                format!("scale({x}, {f})"),
                xm.map2(&M::new(1, 1, |_, _| f), |a, b| a * b),
            )
        }
        op => {
            let (x, xm) = generate(rng, leaves, r, c, depth - 1);
            let (y, ym) = generate(rng, leaves, r, c, depth - 1);
            let (name, f): (&str, fn(f64, f64) -> f64) = match (op, rng.below(3)) {
                (_, 0) => ("add", |a, b| a + b),
                (_, 1) => ("sub", |a, b| a - b),
                _ => ("mul", |a, b| a * b),
            };
            (format!("{name}({x}, {y})"), xm.map2(&ym, f))
        }
    }
}

/// Random nested expressions over dense and sparse leaves, each strategy setting in
/// turn, against naive arithmetic: the cells, and the block-folded aggregates.
#[tokio::test]
async fn generated_expressions_match_naive_under_every_strategy() {
    let store = Store::in_memory();
    let mut leaves = std::collections::HashMap::new();
    let mut seed = 100;
    for &r in &DIMS {
        for &c in &DIMS {
            for (kind, density) in [("d", 0.9), ("s", 0.15)] {
                seed += 1;
                let m = M::random(r, c, density, seed);
                let name = format!("g_{r}_{c}_{kind}");
                let shards = 1 + (seed % 3) as u32;
                let partitioning = if seed % 2 == 0 {
                    Partitioning::Hash { shards }
                } else {
                    Partitioning::RowBlock { shards }
                };
                put(&store, &name, &m, (5, 6), partitioning);
                leaves.insert(name, m);
            }
        }
    }
    let ctx = session(&store, None);
    let strategies = [
        "auto",
        "local",
        "broadcast",
        "broadcast_left",
        "repartition",
        "replication",
    ];
    let mut rng = Lcg(2026);
    let cases = 3000;
    for case in 0..cases {
        let strategy = strategies[case % strategies.len()];
        run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
            .await
            .unwrap();
        let (r, c) = (DIMS[rng.below(DIMS.len())], DIMS[rng.below(DIMS.len())]);
        let depth = 1 + rng.below(3);
        let (expr, want) = generate(&mut rng, &leaves, r, c, depth);
        // A bare leaf is read through a matrix function (this session has no catalog).
        let expr = if expr.starts_with("g_") {
            format!("scale({expr}, 1)")
        } else {
            expr
        };
        let what = format!("case {case} [{strategy}] {expr}");
        let got = matrix(&ctx, &format!("SELECT * FROM {expr}"), r, c).await;
        got.assert_close(&want, &what);
        if case % 4 == 0 {
            let sql = format!("SELECT count(*), sum(v), min(v), max(v), avg(v) FROM {expr}");
            let naive = naive_folds(&want, |_, _| 0);
            let got = folds_of(&ctx, &sql, false).await;
            assert_eq!(got.len(), naive.len(), "{what}: groups");
            for (g, w) in got.iter().zip(&naive) {
                assert_eq!(g.1, w.1, "{what}: count");
                assert!(
                    (g.2 - w.2).abs() <= 1e-9 * (1.0 + w.2.abs()) * (g.1 as f64),
                    "{what}: sum {} vs {}",
                    g.2,
                    w.2
                );
                assert!((g.3 - w.3).abs() <= 1e-9 * (1.0 + w.3.abs()), "{what}: min");
                assert!((g.4 - w.4).abs() <= 1e-9 * (1.0 + w.4.abs()), "{what}: max");
            }
        }
    }
}

/// The names of the operators that compute a matrix whole (`LaExec`) in `plan`'s
/// EXPLAIN text.
fn whole_matrix_operators(plan: &str) -> Vec<&'static str> {
    [
        "MatMulExec",
        "MatrixExec",
        "ArrayScanExec",
        "FusedElementwiseExec",
    ]
    .into_iter()
    .filter(|name| plan.contains(&format!("{name}: ")))
    .collect()
}

/// Expressions whose operands are themselves expressions run as one dataflow: a
/// product of a product, elementwise programs over products and transposes (zeros that
/// stay zeros mapped block by block, others met on `(i, j)` with the missing blocks
/// made where the hash puts them), a solve whose operands are gathered into one
/// partition by a `BlockGatherExec` in the dataflow, and operands blocked unlike the
/// ones they meet, reblocked by pieces and an assemble. Each result matches naive
/// arithmetic, for 1 to 5 partitions, and no plan has an operator computing a matrix
/// whole.
#[tokio::test]
async fn nested_expressions_run_as_one_dataflow_and_match_naive() {
    let store = Store::in_memory();
    let a = M::random(29, 17, 0.9, 31);
    let b = M::random(17, 23, 0.8, 32);
    let c = M::random(23, 11, 0.9, 33);
    let d = M::random(29, 23, 0.9, 34);
    let s = M::random(29, 23, 0.05, 35);
    let k = M::new(17, 17, |i, j| {
        if i == j {
            4.0
        } else {
            1.0 / (1 + i + j) as f64
        }
    });
    put(&store, "a", &a, (8, 5), Partitioning::Hash { shards: 3 });
    put(&store, "b", &b, (5, 6), Partitioning::Hash { shards: 2 });
    put(&store, "c", &c, (6, 4), Partitioning::Hash { shards: 2 });
    // Stored in the product's blocking, so the elementwise programs meet it.
    put(&store, "d", &d, (8, 6), Partitioning::Hash { shards: 2 });
    put(&store, "s", &s, (8, 6), Partitioning::Hash { shards: 3 });
    put(&store, "k", &k, (5, 5), Partitioning::Hash { shards: 1 });
    let e = M::random(32, 12, 0.7, 36);
    let f = M::random(16, 12, 0.7, 37);
    let g = M::random(32, 7, 0.7, 38);
    put(&store, "e", &e, (8, 6), Partitioning::Hash { shards: 2 });
    put(&store, "f", &f, (8, 6), Partitioning::Hash { shards: 3 });
    put(&store, "g", &g, (8, 6), Partitioning::Hash { shards: 1 });
    // Blocked unlike the operands they meet: reblocked on the way in.
    let h = M::random(17, 9, 0.9, 39);
    let p = M::random(29, 23, 0.9, 40);
    let sp = M::random(29, 23, 0.08, 41);
    let q = M::random(13, 12, 0.7, 42);
    let r = M::random(32, 5, 0.7, 43);
    put(&store, "h", &h, (7, 4), Partitioning::Hash { shards: 2 });
    put(&store, "p", &p, (10, 7), Partitioning::Hash { shards: 3 });
    put(&store, "sp", &sp, (7, 9), Partitioning::Hash { shards: 2 });
    put(&store, "q", &q, (8, 6), Partitioning::Hash { shards: 2 });
    put(&store, "r", &r, (5, 5), Partitioning::Hash { shards: 1 });
    // solve(k, b) by hand: Gaussian elimination with partial pivoting.
    let solve = |k: &M, b: &M| {
        let n = k.r;
        let mut aug: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut row: Vec<f64> = (0..n).map(|j| k.at(i, j)).collect();
                row.extend((0..b.c).map(|j| b.at(i, j)));
                row
            })
            .collect();
        for col in 0..n {
            let p = (col..n)
                .max_by(|&x, &y| aug[x][col].abs().total_cmp(&aug[y][col].abs()))
                .unwrap();
            aug.swap(col, p);
            for r in 0..n {
                if r != col {
                    let f = aug[r][col] / aug[col][col];
                    let pivot = aug[col].clone();
                    for (x, y) in aug[r].iter_mut().zip(&pivot) {
                        *x -= f * y;
                    }
                }
            }
        }
        M::new(n, b.c, |i, j| aug[i][n + j] / aug[i][i])
    };
    let ab = a.mm(&b);
    let col_means: Vec<f64> = (0..d.c)
        .map(|j| (0..d.r).map(|i| d.at(i, j)).sum::<f64>() / d.r as f64)
        .collect();
    let row_sums: Vec<f64> = (0..d.r)
        .map(|i| (0..d.c).map(|j| d.at(i, j)).sum())
        .collect();
    let s_total: f64 = (0..s.r)
        .flat_map(|i| (0..s.c).map(move |j| (i, j)))
        .map(|(i, j)| s.at(i, j))
        .sum();
    let cases: Vec<(&str, M, bool)> = vec![
        ("matmul(matmul(a, b), c)", ab.mm(&c), false),
        ("add(matmul(a, b), d)", ab.map2(&d, |x, y| x + y), false),
        (
            "sub(mul(matmul(a, b), d), s)",
            ab.map2(&d, |x, y| x * y).map2(&s, |x, y| x - y),
            false,
        ),
        (
            "scale(t(matmul(a, b)), 2)",
            ab.t().map2(&M::new(1, 1, |_, _| 2.0), |x, y| x * y),
            false,
        ),
        ("exp(s)", M::new(s.r, s.c, |i, j| s.at(i, j).exp()), false),
        (
            "add(s, 1)",
            M::new(s.r, s.c, |i, j| s.at(i, j) + 1.0),
            false,
        ),
        ("matmul(t(matmul(a, b)), a)", ab.t().mm(&a), false),
        ("matmul(a, solve(k, b))", a.mm(&solve(&k, &b)), true),
        (
            "rowsums(matmul(a, b))",
            M::new(ab.r, 1, |i, _| (0..ab.c).map(|j| ab.at(i, j)).sum()),
            false,
        ),
        (
            "colmeans(d)",
            M::new(1, d.c, |_, j| {
                (0..d.r).map(|i| d.at(i, j)).sum::<f64>() / d.r as f64
            }),
            false,
        ),
        (
            "rbind(e, f)",
            M::new(
                48,
                12,
                |i, j| if i < 32 { e.at(i, j) } else { f.at(i - 32, j) },
            ),
            false,
        ),
        (
            "cbind(e, g)",
            M::new(
                32,
                19,
                |i, j| if j < 12 { e.at(i, j) } else { g.at(i, j - 12) },
            ),
            false,
        ),
        // Reblocks: a product whose inner blocks differ (5 against 7), elementwise
        // operands blocked 8 x 6 against 10 x 7 (dense) and 7 x 9 (sparse), an rbind
        // whose first operand ends inside a block (13 rows in blocks of 8), a cbind of
        // operands blocked differently.
        ("matmul(a, h)", a.mm(&h), false),
        ("add(d, p)", d.map2(&p, |x, y| x + y), false),
        ("sub(s, sp)", s.map2(&sp, |x, y| x - y), false),
        ("matmul(matmul(a, b), t(sp))", ab.mm(&sp.t()), false),
        (
            "rbind(q, e)",
            M::new(
                45,
                12,
                |i, j| if i < 13 { q.at(i, j) } else { e.at(i - 13, j) },
            ),
            false,
        ),
        (
            "cbind(e, r)",
            M::new(
                32,
                17,
                |i, j| if j < 12 { e.at(i, j) } else { r.at(i, j - 12) },
            ),
            false,
        ),
        // Vectors broadcast: a row vector, a column vector, a 1 x 1 matrix.
        (
            "sub(d, colmeans(d))",
            M::new(d.r, d.c, |i, j| d.at(i, j) - col_means[j]),
            false,
        ),
        (
            "add(d, rowsums(d))",
            M::new(d.r, d.c, |i, j| d.at(i, j) + row_sums[i]),
            false,
        ),
        (
            "add(s, colsums(rowsums(s)))",
            M::new(s.r, s.c, |i, j| s.at(i, j) + s_total),
            false,
        ),
        // Slices: starting on a block boundary (each block cut where it is) and not
        // (pieces assembled), dense and sparse, of a stored matrix and of a product.
        (
            "slice(a, 8, 24, 5, 15)",
            M::new(16, 10, |i, j| a.at(i + 8, j + 5)),
            false,
        ),
        (
            "slice(a, 3, 29, 2, 17)",
            M::new(26, 15, |i, j| a.at(i + 3, j + 2)),
            false,
        ),
        (
            "slice(matmul(a, b), 5, 20, 7, 23)",
            M::new(15, 16, |i, j| ab.at(i + 5, j + 7)),
            false,
        ),
        (
            "slice(sp, 0, 4, 9, 23)",
            M::new(4, 14, |i, j| sp.at(i, j + 9)),
            false,
        ),
        (
            "slice(sp, 6, 22, 1, 20)",
            M::new(16, 19, |i, j| sp.at(i + 6, j + 1)),
            false,
        ),
        // Scalar reductions: a 1 x 1 partial per block, summed.
        ("sum(s)", M::new(1, 1, |_, _| s_total), false),
        (
            "sum(matmul(a, b))",
            M::new(1, 1, |_, _| ab.v.iter().sum()),
            false,
        ),
        (
            "nnz(sp)",
            M::new(1, 1, |_, _| {
                sp.v.iter().filter(|x| **x != 0.0).count() as f64
            }),
            false,
        ),
        // diag: of a square matrix in square blocks, of one in blocks of 8 x 5
        // (reblocked to 8 x 8), of a column and of a row vector.
        ("diag(k)", M::new(17, 1, |i, _| k.at(i, i)), false),
        (
            "diag(slice(a, 0, 17, 0, 17))",
            M::new(17, 1, |i, _| a.at(i, i)),
            false,
        ),
        (
            "diag(rowsums(d))",
            M::new(d.r, d.r, |i, j| if i == j { row_sums[i] } else { 0.0 }),
            false,
        ),
        (
            "diag(colmeans(d))",
            M::new(d.c, d.c, |i, j| if i == j { col_means[i] } else { 0.0 }),
            false,
        ),
        // Generated: eye in an elementwise sum and as a product's operand.
        (
            "add(k, eye(17))",
            M::new(17, 17, |i, j| k.at(i, j) + if i == j { 1.0 } else { 0.0 }),
            false,
        ),
        (
            "matmul(a, eye(17))",
            M::new(a.r, a.c, |i, j| a.at(i, j)),
            false,
        ),
        // min and max count the zeros of sparse blocks and of blocks not stored.
        (
            "max(a)",
            M::new(1, 1, |_, _| a.v.iter().copied().fold(0.0, f64::max)),
            false,
        ),
        (
            "min(scale(sp, -1))",
            M::new(1, 1, |_, _| -sp.v.iter().copied().fold(0.0, f64::max)),
            false,
        ),
        (
            "min(k)",
            M::new(1, 1, |_, _| {
                k.v.iter().copied().fold(f64::INFINITY, f64::min)
            }),
            false,
        ),
        (
            "max(sub(s, 5))",
            M::new(1, 1, |_, _| {
                s.v.iter()
                    .map(|x| x - 5.0)
                    .fold(f64::NEG_INFINITY, f64::max)
            }),
            false,
        ),
    ];
    let mut draws = Vec::new();
    for parts in [1, 2, 5] {
        let config = super::session_config(SessionConfig::new().with_target_partitions(parts));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
        for (sql, want, gathered) in &cases {
            let plan = explain(&ctx, &format!("SELECT * FROM {sql}")).await;
            let whole = whole_matrix_operators(&plan);
            assert!(
                whole.is_empty(),
                "{sql}: computed whole by {whole:?}\n{plan}"
            );
            if *gathered {
                assert!(
                    plan.contains("BlockGatherExec: solve of the gathered operands"),
                    "{sql}: the solve is not gathered in the dataflow\n{plan}"
                );
            }
            let got = matrix(&ctx, &format!("SELECT * FROM {sql}"), want.r, want.c).await;
            got.assert_close(want, &format!("{sql} with {parts} partitions\n{plan}"));
        }
        // A slice of a stored matrix reads only the blocks it touches: rows 8..24 and
        // columns 5..15 in blocks of 8 x 5 are block rows 1..3 and columns 1..3.
        let plan = explain(&ctx, "SELECT * FROM slice(a, 8, 24, 5, 15)").await;
        assert!(
            plan.contains("block rows 1..3 and columns 1..3 only"),
            "{plan}"
        );
        // rand is made block by block where the blocks land, and draws the same
        // matrix whatever the partitions (checked after the loop).
        // In blocks of 1000 x 1000: six blocks, spread over the partitions.
        let sql = "SELECT * FROM rand(2500, 1200, density => 0.002, seed => 7, min => 1, max => 2)";
        assert!(whole_matrix_operators(&explain(&ctx, sql).await).is_empty());
        draws.push(matrix(&ctx, sql, 2500, 1200).await);
        // A scalar reduction is one row even when it is zero, as SQL's sum is.
        for sql in [
            "SELECT * FROM sum(sub(s, s))",
            "SELECT * FROM max(scale(s, 0))",
        ] {
            let batches = run(&ctx, sql).await.unwrap();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 1, "{sql}");
            let v = batches.iter().find(|b| b.num_rows() > 0).unwrap().column(2);
            let v = v.as_any().downcast_ref::<Float64Array>().unwrap().value(0);
            assert_eq!(v, 0.0, "{sql}");
        }
        // Aggregates over an elementwise program fold its leaves without its blocks.
        let sql = "SELECT sum(v), count(*) FROM add(mul(matmul(a, b), d), d)";
        let batches = run(&ctx, sql).await.unwrap();
        let sum = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        let want = ab.map2(&d, |x, y| x * y + y);
        let want_sum: f64 = want.v.iter().sum();
        assert!(
            (sum - want_sum).abs() <= 1e-9 * (1.0 + want_sum.abs()),
            "{sql}: {sum} against {want_sum}"
        );
    }
    // The same cells in every run, about 0.2% of them, each in [1, 2).
    for d in &draws[1..] {
        assert_eq!(d.v, draws[0].v, "rand depends on the partitions");
    }
    let nnz = draws[0].v.iter().filter(|v| **v != 0.0).count() as f64;
    let (n, p): (f64, f64) = (2500.0 * 1200.0, 0.002);
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!(
        (nnz - n * p).abs() < 5.0 * sd,
        "{nnz} non-zeros of 3e6 at density 0.002"
    );
    assert!(
        draws[0]
            .v
            .iter()
            .all(|v| *v == 0.0 || (1.0..2.0).contains(v))
    );
}

/// With `tessera.exact_sums` (what every distributed statement is planned with), a
/// product's result is the same to the bit whatever the partitions and whichever
/// strategy spreads its `k` over them, and `t(X) X`'s whatever the partitions: each
/// product is a partial of its own and the block sums add them in `k` (block row)
/// order. The values span 1e16, so a different order of additions shows in the bits.
#[tokio::test]
async fn exact_sums_give_the_same_bits_for_every_partition_count_and_strategy() {
    let store = Store::in_memory();
    let wild = |i: usize, j: usize| match (i * 7 + j * 3) % 5 {
        0 => 1e16,
        1 => 1.0 + (i as f64) / 8.0,
        2 => -1e16,
        3 => 0.0,
        _ => 3.0 - (j as f64) / 16.0,
    };
    let a = M::new(12, 40, wild);
    let b = M::new(40, 9, |i, j| wild(j + 1, i));
    let x = M::new(60, 6, |i, j| wild(i, j + 2));
    put(&store, "a", &a, (4, 5), Partitioning::Hash { shards: 3 });
    put(&store, "b", &b, (5, 3), Partitioning::Hash { shards: 2 });
    put(&store, "x", &x, (5, 3), Partitioning::Hash { shards: 3 });
    let bits = |m: &M| m.v.iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
    let mut product: Option<Vec<u64>> = None;
    let mut gram: Option<Vec<u64>> = None;
    for parts in [1, 2, 3, 7] {
        let config = super::session_config(SessionConfig::new().with_target_partitions(parts));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config);
        let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
        run(&ctx, "SET tessera.exact_sums = true").await.unwrap();
        for strategy in [
            "local",
            "repartition",
            "broadcast",
            "broadcast_left",
            "replication",
        ] {
            run(&ctx, &format!("SET tessera.matmul_strategy = '{strategy}'"))
                .await
                .unwrap();
            let sql = "SELECT * FROM matmul(a, b)";
            let plan = explain(&ctx, sql).await;
            assert!(plan.contains("each product a partial (exact)"), "{plan}");
            let got = matrix(&ctx, sql, 12, 9).await;
            match &product {
                None => product = Some(bits(&got)),
                Some(first) => assert!(
                    *first == bits(&got),
                    "{strategy} with {parts} partitions differs from the first run"
                ),
            }
        }
        run(&ctx, "SET tessera.matmul_strategy = 'tsmm'")
            .await
            .unwrap();
        let sql = "SELECT * FROM matmul(t(x), x)";
        let plan = explain(&ctx, sql).await;
        assert!(plan.contains("per block row (exact)"), "{plan}");
        let got = matrix(&ctx, sql, 6, 6).await;
        match &gram {
            None => gram = Some(bits(&got)),
            Some(first) => assert!(*first == bits(&got), "tsmm with {parts} partitions"),
        }
    }
    // And the bits are a sum in k order: the product of well-behaved matrices matches
    // a naive triple loop.
    let c = M::random(12, 40, 0.7, 51);
    let d = M::random(40, 9, 0.7, 52);
    put(&store, "c", &c, (4, 5), Partitioning::Hash { shards: 3 });
    put(&store, "d", &d, (5, 3), Partitioning::Hash { shards: 2 });
    let config = super::session_config(SessionConfig::new().with_target_partitions(3));
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config);
    let ctx = SessionContext::new_with_state(super::install(state, store.clone()).build());
    run(&ctx, "SET tessera.exact_sums = true").await.unwrap();
    let got = matrix(&ctx, "SELECT * FROM matmul(c, d)", 12, 9).await;
    got.assert_close(&c.mm(&d), "exact matmul(c, d)");
}
