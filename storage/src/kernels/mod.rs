//! Block kernels shared by the linear-algebra and relational operators.
//!
//! Free functions named by their verb, over [`Block`](crate::Block)s of either format:
//!
//! | kernel | what |
//! |---|---|
//! | [`matmul`], [`matmul_into`] | `a b`; `acc += a b` (the `cpmm` aggregation) |
//! | [`add_into`] | `acc += b`: `SUM` over a block column, and summing partial products |
//! | [`tsmm`] | `t(x) x`, one triangle computed |
//! | [`mmchain`] | `t(x) (x v)` in one pass over `x` |
//! | [`transpose`] | `t(a)` |
//! | [`elementwise`], [`scalar_elementwise_left`], [`unary`], [`pow`] | cell by cell, with broadcasting |
//! | [`sum`], [`row_sums`], [`col_sums`], [`row_means`], [`col_means`], [`min`], [`max`], [`nnz`] | reductions |
//!
//! Kernels are pure functions. Dense GEMM is `faer`'s (AVX2 / AVX-512 chosen at run
//! time); the hand-written loops are compiled for several instruction sets and picked
//! at run time too.
//!
//! # Threads
//!
//! Kernels that parallelize ([`matmul`], [`matmul_into`], [`tsmm`], [`mmchain`]) do so
//! only inside [`cpu_pool`], never on tokio threads or rayon's global pool, and only when
//! the call does at least [`PARALLEL_MIN_FLOPS`]; smaller calls run on the calling thread.
//! Each has a `_seq` twin ([`matmul_seq`], [`matmul_into_seq`], [`tsmm_seq`],
//! [`mmchain_seq`]) that always runs on the calling thread: use it when you already run
//! many blocks in parallel (in the CPU pool), so cores are not oversubscribed.
//!
//! ```
//! use rayon::prelude::*;
//! use tessera_storage::{Block, DenseBlock};
//! use tessera_storage::kernels::{cpu_pool, matmul_into_seq, DenseAccumulator};
//!
//! // C = A B for A cut into 1 x 2 blocks and B into 2 x 1 (the cpmm pattern): each output
//! // block sums its products single-threaded; output blocks run in parallel in the pool.
//! let a = [Block::Dense(DenseBlock::new(1, 1, vec![2.0]).unwrap()),
//!          Block::Dense(DenseBlock::new(1, 1, vec![3.0]).unwrap())];
//! let b = [Block::Dense(DenseBlock::new(1, 1, vec![4.0]).unwrap()),
//!          Block::Dense(DenseBlock::new(1, 1, vec![5.0]).unwrap())];
//! let c: Vec<DenseAccumulator> = cpu_pool().install(|| {
//!     (0..1).into_par_iter().map(|_| {
//!         let mut acc = DenseAccumulator::zeros(1, 1).unwrap();
//!         for k in 0..2 {
//!             matmul_into_seq(&mut acc, &a[k], &b[k]).unwrap();
//!         }
//!         acc
//!     }).collect()
//! });
//! assert_eq!(c[0].values(), &[2.0 * 4.0 + 3.0 * 5.0]);
//! ```

mod accumulator;
mod elementwise;
mod fused;
mod fused_elementwise;
mod gemm;
mod pool;
mod reduce;
mod rows;
mod simd;
mod sparse;
mod syrk;
#[cfg(test)]
mod testing;
mod transpose;

pub use accumulator::{DenseAccumulator, add_into};
pub use elementwise::{
    BinaryOp, Operand, UnaryOp, elementwise, pow, scalar_elementwise_left, unary,
};
pub use fused::{mmchain, mmchain_seq, tsmm, tsmm_seq};
pub use fused_elementwise::{FUSED_CHUNK, Step, fused_dense};
pub use gemm::{matmul, matmul_into, matmul_into_seq, matmul_seq};
pub use pool::{PARALLEL_MIN_FLOPS, cpu_pool};
pub use reduce::{col_means, col_sums, max, min, nnz, row_means, row_sums, sum};
pub use rows::{chain_rows_add, matvec_add, sub_row, tmatvec_add};
pub use transpose::transpose;
