//! Tessera's block kernels against NumPy / SciPy on the same machine, in the same run.
//!
//! Run with `cargo bench -p tessera-storage --bench kernels` (add workload names after
//! `--` to run only those: `gemm`, `tsmm`, `mmchain`, `spmm`). The NumPy side is
//! `kernels.py` beside this file, one `python3` process kept alive for the whole run. For
//! each workload the two sides take turns for [`ROUNDS`] rounds of a few runs each (never
//! running at the same time), and each side reports its best run, so a burst of other
//! load on the machine hurts neither side more than the other.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark binary"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use rayon::prelude::*;
use tessera_storage::kernels::{
    DenseAccumulator, add_into, cpu_pool, matmul, matmul_into_seq, mmchain_seq, tsmm_seq,
};
use tessera_storage::{Block, CsrBlock, DenseBlock};

const COMMAND: &str = "cargo bench -p tessera-storage --bench kernels";

/// Turns each side gets per workload.
const ROUNDS: usize = 3;

/// The NumPy side: `kernels.py`, kept alive so its data is built once.
struct NumPy {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    versions: String,
}

impl NumPy {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/kernels.py");

    fn start() -> NumPy {
        let mut child = Command::new("python3")
            .arg(Self::SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run python3");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut np = NumPy {
            child,
            stdin,
            stdout,
            versions: String::new(),
        };
        let v = np.read();
        np.versions = format!(
            "NumPy {} / SciPy {}",
            v["numpy"].as_str().unwrap(),
            v["scipy"].as_str().unwrap()
        );
        np
    }

    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("kernels.py said {line:?}: {e}"))
    }

    /// Best of `runs` runs of `workload`, in seconds.
    fn time(&mut self, workload: &str, runs: usize) -> f64 {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{workload} {runs}").unwrap();
        stdin.flush().unwrap();
        self.read()["seconds"].as_f64().unwrap()
    }
}

impl Drop for NumPy {
    fn drop(&mut self) {
        // Closing stdin ends the script's read loop.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Both sides' best times over [`ROUNDS`] turns of `runs` runs each.
fn race(np: &mut NumPy, key: &str, runs: usize, mut tessera: impl FnMut()) -> (f64, f64) {
    let (mut ours, mut theirs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        ours = ours.min(best_of(runs, &mut tessera));
        theirs = theirs.min(np.time(key, runs));
    }
    (ours, theirs)
}

/// One row of the table.
struct Row {
    workload: &'static str,
    flops: f64,
    seconds: f64,
    numpy: f64,
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
    let mut np = NumPy::start();
    println!(
        "machine: {} threads in the tessera-cpu pool; AVX2 {}, AVX-512F {}; reference {} ({})",
        cpu_pool().current_num_threads(),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("avx512f"),
        np.versions,
        NumPy::SCRIPT,
    );
    println!(
        "each side: best of {ROUNDS} turns x a few runs; GFLOP/s count the unfused product's flops \
         on both sides (tsmm 2mn^2, mmchain 4mn)"
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows: Vec<Row> = Vec::new();

    if wanted("gemm") {
        let n = 4096;
        let a = Block::Dense(dense(&mut rng, n, n));
        let b = Block::Dense(dense(&mut rng, n, n));
        let flops = 2.0 * (n as f64).powi(3);
        let mut one = None;
        let (seconds, numpy) = race(&mut np, "gemm", 2, || one = Some(matmul(&a, &b).unwrap()));
        let workload = "dense GEMM 4096x4096, one block";
        rows.push(Row {
            workload,
            flops,
            seconds,
            numpy,
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
        let (seconds, numpy) = race(&mut np, "gemm", 2, || {
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
        let mut worst = 0.0f64;
        for (ij, c) in grid.iter().enumerate() {
            let (i, j) = (ij / g, ij % g);
            for r in (0..bs).step_by(97) {
                worst = worst.max((c.get(r, r) - one.get(i * bs + r, j * bs + r)).abs());
            }
        }
        assert!(worst < 1e-8, "grid and one-block GEMM differ by {worst}");
        let workload = "dense GEMM 4096x4096, 4x4 grid of 1024";
        rows.push(Row {
            workload,
            flops,
            seconds,
            numpy,
            target: 0.9,
        });
    }

    if wanted("tsmm") || wanted("mmchain") {
        // 1,000,000 x 100 as 100 row blocks of 10,000 x 100; per-block partials run in
        // parallel in the CPU pool (one accumulator per rayon fold), then are summed.
        let (m, n, per) = (1_000_000usize, 100usize, 10_000usize);
        let blocks: Vec<Block> = (0..m / per)
            .map(|_| Block::Dense(dense(&mut rng, per, n)))
            .collect();
        let sum_blocks = |f: &(dyn Fn(&Block) -> DenseBlock + Sync), shape: (usize, usize)| {
            cpu_pool().install(|| {
                blocks
                    .par_iter()
                    .fold(
                        || DenseAccumulator::zeros(shape.0, shape.1).unwrap(),
                        |mut acc, x| {
                            add_into(&mut acc, &Block::Dense(f(x))).unwrap();
                            acc
                        },
                    )
                    .reduce(
                        || DenseAccumulator::zeros(shape.0, shape.1).unwrap(),
                        |mut a, b| {
                            a.merge(&b).unwrap();
                            a
                        },
                    )
            })
        };
        if wanted("tsmm") {
            let mut out = None;
            let (seconds, numpy) = race(&mut np, "tsmm", 3, || {
                out = Some(sum_blocks(&|x| tsmm_seq(x).unwrap(), (n, n)));
            });
            // Sanity: the corner of t(X) X is the sum of squares of column 0.
            let d0: f64 = blocks
                .iter()
                .map(|b| (0..per).map(|r| b.get(r, 0).powi(2)).sum::<f64>())
                .sum();
            let got = out.unwrap().values()[0];
            assert!((got - d0).abs() < 1e-6 * d0, "tsmm corner {got}, want {d0}");
            let flops = 2.0 * m as f64 * (n * n) as f64;
            let workload = "tsmm t(X)X, X 1e6x100 in 100 blocks";
            rows.push(Row {
                workload,
                flops,
                seconds,
                numpy,
                target: 2.0,
            });
        }
        if wanted("mmchain") {
            let v = dense(&mut rng, n, 1);
            let (seconds, numpy) = race(&mut np, "mmchain", 3, || {
                std::hint::black_box(sum_blocks(&|x| mmchain_seq(x, &v).unwrap(), (n, 1)));
            });
            let flops = 4.0 * m as f64 * n as f64;
            let workload = "mmchain t(X)(Xv), same X, v 100x1";
            rows.push(Row {
                workload,
                flops,
                seconds,
                numpy,
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
        let (seconds, numpy) = race(&mut np, "spmm", 3, || {
            std::hint::black_box(matmul(&a, &b).unwrap());
        });
        let flops = 2.0 * nnz as f64 * k as f64;
        let workload = "CSR 1e5x1e5 d=0.001 x dense 1e5x16";
        rows.push(Row {
            workload,
            flops,
            seconds,
            numpy,
            target: 1.4,
        });
    }

    println!();
    println!(
        "| {:<40} | {:>9} | {:>7} | {:>9} | {:>7} | {:>6} | {:>6} | {:<4} |",
        "workload", "Tessera s", "GFLOP/s", "NumPy s", "GFLOP/s", "ratio", "target", "met"
    );
    println!(
        "|{:-<42}|{:->11}|{:->9}|{:->11}|{:->9}|{:->8}|{:->8}|{:-<6}|",
        "", "", "", "", "", "", "", ""
    );
    for r in &rows {
        let ratio = r.numpy / r.seconds;
        println!(
            "| {:<40} | {:>9.4} | {:>7.1} | {:>9.4} | {:>7.1} | {:>5.2}x | {:>5.1}x | {:<4} |",
            r.workload,
            r.seconds,
            r.flops / r.seconds / 1e9,
            r.numpy,
            r.flops / r.numpy / 1e9,
            ratio,
            r.target,
            if ratio >= r.target { "yes" } else { "no" },
        );
    }
}
