//! Tessera's block kernels against NumPy / SciPy on the same machine, in the same run.
//!
//! Run with `cargo bench -p tessera-storage --bench kernels` (add workload names after
//! `--` to run only those: `gemm`, `tsmm`, `mmchain`, `spmm`). Each side takes the best of
//! a few runs; the Python side is `kernels.py` beside this file, run with `python3` after
//! the Rust side has finished so the two never compete for cores.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark binary"
)]

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use tessera_storage::kernels::{
    DenseAccumulator, add_into, cpu_pool, matmul, matmul_into_seq, mmchain_seq, tsmm_seq,
};
use tessera_storage::{Block, CsrBlock, DenseBlock};

const COMMAND: &str = "cargo bench -p tessera-storage --bench kernels";

/// One row of the table.
struct Row {
    workload: &'static str,
    key: &'static str,
    flops: f64,
    seconds: f64,
    target: f64,
}

/// A small deterministic generator (xorshift64*), so no `rand` dependency is needed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn value(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn dense(rng: &mut Rng, rows: usize, cols: usize) -> DenseBlock {
    let v: Vec<f64> = (0..rows * cols).map(|_| rng.value()).collect();
    DenseBlock::new(rows, cols, v).unwrap()
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |w: &str| filters.is_empty() || filters.iter().any(|f| f == w);
    println!("command: {COMMAND}");
    println!(
        "machine: {} threads in the tessera-cpu pool; AVX2 {}, AVX-512F {}",
        cpu_pool().current_num_threads(),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f"),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows: Vec<Row> = Vec::new();

    if wanted("gemm") {
        let n = 4096;
        let a = Block::Dense(dense(&mut rng, n, n));
        let b = Block::Dense(dense(&mut rng, n, n));
        let flops = 2.0 * (n as f64).powi(3);
        let mut one = None;
        let seconds = best_of(3, || one = Some(matmul(&a, &b).unwrap()));
        rows.push(Row {
            workload: "dense GEMM 4096x4096, one block",
            key: "gemm",
            flops,
            seconds,
            target: 0.9,
        });

        // The same product as a 4x4 grid of 1024x1024 blocks: the 16 output blocks run in
        // parallel in the CPU pool, each summing its 4 products single-threaded.
        let g = 4;
        let bs = n / g;
        let (ad, bd) = (a.to_dense(), b.to_dense());
        let tile = |m: &DenseBlock, bi: usize, bj: usize| {
            Block::Dense(DenseBlock::from_fn(bs, bs, |i, j| {
                m.get(bi * bs + i, bj * bs + j)
            }))
        };
        let ag: Vec<Vec<Block>> = (0..g)
            .map(|i| (0..g).map(|k| tile(&ad, i, k)).collect())
            .collect();
        let bg: Vec<Vec<Block>> = (0..g)
            .map(|k| (0..g).map(|j| tile(&bd, k, j)).collect())
            .collect();
        drop((a, b, ad, bd));
        let mut grid = Vec::new();
        let seconds = best_of(3, || {
            grid = cpu_pool().install(|| {
                (0..g * g)
                    .into_par_iter()
                    .map(|ij| {
                        let (i, j) = (ij / g, ij % g);
                        let mut acc = DenseAccumulator::zeros(bs, bs).unwrap();
                        for k in 0..g {
                            matmul_into_seq(&mut acc, &ag[i][k], &bg[k][j]).unwrap();
                        }
                        acc.into_dense()
                    })
                    .collect::<Vec<_>>()
            });
        });
        // Sanity: the grid agrees with the one-block product.
        let one = one.unwrap();
        let worst = (0..g * g)
            .flat_map(|ij| {
                let (i, j, c) = (ij / g, ij % g, &grid[ij]);
                let one = &one;
                (0..bs)
                    .step_by(97)
                    .map(move |r| (c.get(r, r) - one.get(i * bs + r, j * bs + r)).abs())
            })
            .fold(0.0, f64::max);
        assert!(worst < 1e-8, "grid and one-block GEMM differ by {worst}");
        rows.push(Row {
            workload: "dense GEMM 4096x4096, 4x4 grid of 1024",
            key: "gemm",
            flops,
            seconds,
            target: 0.9,
        });
    }

    if wanted("tsmm") || wanted("mmchain") {
        // 1,000,000 x 100 as 100 row blocks of 10,000 x 100.
        let (m, n, per) = (1_000_000usize, 100usize, 10_000usize);
        let blocks: Vec<Block> = (0..m / per)
            .map(|_| Block::Dense(dense(&mut rng, per, n)))
            .collect();
        if wanted("tsmm") {
            let mut out = None;
            let seconds = best_of(5, || {
                out = Some(cpu_pool().install(|| {
                    blocks
                        .par_iter()
                        .fold(
                            || DenseAccumulator::zeros(n, n).unwrap(),
                            |mut acc, x| {
                                add_into(&mut acc, &Block::Dense(tsmm_seq(x).unwrap())).unwrap();
                                acc
                            },
                        )
                        .reduce(
                            || DenseAccumulator::zeros(n, n).unwrap(),
                            |mut a, b| {
                                a.merge(&b).unwrap();
                                a
                            },
                        )
                }));
            });
            // Sanity: the diagonal of t(X) X is the column sums of squares.
            let out = out.unwrap();
            let d0: f64 = blocks
                .iter()
                .map(|b| (0..per).map(|r| b.get(r, 0).powi(2)).sum::<f64>())
                .sum();
            assert!(
                (out.values()[0] - d0).abs() < 1e-6 * d0,
                "tsmm diagonal is wrong"
            );
            let flops = 2.0 * m as f64 * (n * n) as f64;
            rows.push(Row {
                workload: "tsmm t(X)X, X 1e6x100 in 100 blocks",
                key: "tsmm",
                flops,
                seconds,
                target: 2.0,
            });
        }
        if wanted("mmchain") {
            let v = dense(&mut rng, n, 1);
            let seconds = best_of(5, || {
                let out = cpu_pool().install(|| {
                    blocks
                        .par_iter()
                        .fold(
                            || DenseAccumulator::zeros(n, 1).unwrap(),
                            |mut acc, x| {
                                add_into(&mut acc, &Block::Dense(mmchain_seq(x, &v).unwrap()))
                                    .unwrap();
                                acc
                            },
                        )
                        .reduce(
                            || DenseAccumulator::zeros(n, 1).unwrap(),
                            |mut a, b| {
                                a.merge(&b).unwrap();
                                a
                            },
                        )
                });
                std::hint::black_box(out);
            });
            let flops = 4.0 * m as f64 * n as f64;
            rows.push(Row {
                workload: "mmchain t(X)(Xv), same X, v 100x1",
                key: "mmchain",
                flops,
                seconds,
                target: 1.5,
            });
        }
    }

    if wanted("spmm") {
        let (n, k, per_row) = (100_000usize, 16usize, 100usize);
        let mut indptr = Vec::with_capacity(n + 1);
        let mut indices = Vec::with_capacity(n * per_row);
        indptr.push(0);
        let mut row = Vec::with_capacity(per_row);
        for _ in 0..n {
            row.clear();
            row.extend((0..per_row).map(|_| rng.below(n)));
            row.sort_unstable();
            row.dedup();
            indices.extend_from_slice(&row);
            indptr.push(indices.len());
        }
        let data: Vec<f64> = (0..indices.len()).map(|_| rng.value()).collect();
        let nnz = data.len();
        let a = Block::Sparse(CsrBlock::from_parts(n, n, indptr, indices, data).unwrap());
        let b = Block::Dense(dense(&mut rng, n, k));
        let seconds = best_of(5, || {
            std::hint::black_box(matmul(&a, &b).unwrap());
        });
        let flops = 2.0 * nnz as f64 * k as f64;
        rows.push(Row {
            workload: "CSR 1e5x1e5 d=0.001 x dense 1e5x16",
            key: "spmm",
            flops,
            seconds,
            target: 1.4,
        });
    }

    // The Python side, after ours, so the two never share the cores.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/kernels.py");
    let keys: Vec<&str> = {
        let mut k: Vec<&str> = rows.iter().map(|r| r.key).collect();
        k.dedup();
        k
    };
    let output = Command::new("python3")
        .arg(script)
        .args(&keys)
        .output()
        .expect("cannot run python3");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut numpy: HashMap<String, f64> = HashMap::new();
    let mut versions = String::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).expect("kernels.py printed a line that is not JSON");
        if let (Some(w), Some(s)) = (v["workload"].as_str(), v["seconds"].as_f64()) {
            numpy.insert(w.to_string(), s);
        } else {
            versions = format!(
                "NumPy {} / SciPy {}",
                v["numpy"].as_str().unwrap_or("?"),
                v["scipy"].as_str().unwrap_or("?")
            );
        }
    }
    println!("reference: {versions} ({script})");
    println!("GFLOP/s count the unfused product's flops on both sides (tsmm 2mn^2, mmchain 4mn).");
    println!();
    println!(
        "| {:<40} | {:>9} | {:>7} | {:>9} | {:>7} | {:>6} | {:>6} |",
        "workload", "Tessera s", "GFLOP/s", "NumPy s", "GFLOP/s", "ratio", "target"
    );
    println!(
        "|{:-<42}|{:->11}|{:->9}|{:->11}|{:->9}|{:->8}|{:->8}|",
        "", "", "", "", "", "", ""
    );
    for r in &rows {
        let np = numpy.get(r.key).copied().unwrap_or(f64::NAN);
        let ratio = np / r.seconds;
        println!(
            "| {:<40} | {:>9.4} | {:>7.1} | {:>9.4} | {:>7.1} | {:>5.2}x | {:>5.1}x{} |",
            r.workload,
            r.seconds,
            r.flops / r.seconds / 1e9,
            np,
            r.flops / np / 1e9,
            ratio,
            r.target,
            if ratio >= r.target { " " } else { "!" },
        );
    }
}
