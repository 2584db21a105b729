//! Machine-learning builtins callable from SQL (`lm`, `cor`, `pca`, `kmeans`,
//! `logreg`, `l2svm`, ...) and the parfor task scheduler they run independent tasks on.
//!
//! ```text
//! FROM lm(x, y, lambda => 0.1)     table function in FROM (planned by MatrixFunctions)
//!   -> call::plan_builtin          arguments read; jobs: matrix expressions such as
//!                                  tsmm(x), matmul(t(x), y), colsums(x)
//!   -> BuiltinTable                a relation; its scan plans each job with the
//!                                  session's planner (block dataflows, LaExec)
//!   -> BuiltinExec                 runs the jobs, then the small dense step (a solve,
//!                                  an eigen-decomposition, Newton's method) in the CPU
//!                                  pool; independent tasks go through `parfor`
//!
//! FROM p, LATERAL lm(x, y, lambda => p.lambda)
//!   -> lateral::LateralNode        the call over p's rows (an analyzer rule turns the
//!                                  cross join into it)
//!   -> LateralBuiltinExec          the jobs once, then one parfor task per row of p
//!
//! FROM g, LATERAL lm((SELECT i, j, v FROM obs WHERE obs.grp = g.grp), ...)
//!   -> LateralBuiltinPerRowExec    one parfor task per row of g: the row's values bound
//!                                  in the subqueries, the call planned and its jobs
//!                                  computed in the task (BuiltinTable::for_row)
//!
//! SELECT g, lm_fit(y, ARRAY[x1, x2]) FROM t GROUP BY g
//!   -> fit::LmFit                  an aggregate: the normal equations' sums per group,
//!                                  one solve per group in the final aggregate
//! ```
//!
//! `docs/ml.md` lists every builtin with its arguments, outputs and errors.

mod call;
mod classify;
mod dense;
mod exec;
mod fit;
mod kmeans;
mod lateral;
mod linear;
mod panels;
pub mod parfor;
mod stats;

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

pub(crate) use call::plan_call;
pub(crate) use call::plan_nested_builtin;
pub use call::{BUILTINS, is_builtin, plan_builtin, returns_matrix};
pub use classify::FitParams;
pub use exec::{BuiltinExec, ParforSettings};
pub use fit::lm_fit_udaf;
pub use kmeans::KmeansParams;
pub(crate) use lateral::plan_lateral;
pub use lateral::{LateralBuiltinExec, LateralCalls, LateralNode};
pub use linear::{LM_DIRECT_MAX_COLS, LmParams, LmSolver};

extensions_options! {
    /// Scheduling of the builtins' independent tasks (`SET parfor.<name> = ...`).
    pub struct ParforConfig {
        /// Task-partitioning scheme: `auto` (factoring, or naive when there are no
        /// more tasks than workers), `naive`, `static`, `fixed` or `factoring`.
        pub scheme: String, default = "auto".to_string()
        /// Worker threads; 0 means one per core of the CPU pool.
        pub workers: usize, default = 0
        /// Tasks per chunk for the `fixed` scheme.
        pub task_size: usize, default = 2
    }
}

impl ConfigExtension for ParforConfig {
    const PREFIX: &'static str = "parfor";
}

#[cfg(test)]
mod tests;
