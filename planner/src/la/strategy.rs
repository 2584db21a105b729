//! The matmul strategies and the one cost model that picks among them.
//!
//! A product `A B` is a join of `A`'s blocks with `B`'s on the shared dimension `k`,
//! then a sum per output block. The strategies differ in what moves between
//! partitions:
//!
//! | strategy | moves |
//! |---|---|
//! | `local` (mm) | everything to one task |
//! | `broadcast` (mapmm) | the small side to every partition; partial sums by `(i, j)` unless the big side is partitioned by its output dimension |
//! | `copartitioned` (zipmm) | nothing before the join (both sides already partitioned on `k`); partial sums by `(i, j)` |
//! | `repartition` (cpmm) | both sides by `k`; partial sums by `(i, j)` |
//! | `replication` (rmm) | every block to each output block it feeds; no partial sums |
//! | `tsmm`, `mmchain` | nothing but one small partial result per partition |
//!
//! The cost is estimated time: flops over the cores the strategy can use, plus bytes
//! moved over a copy rate. A strategy whose broadcast or single-task side exceeds the
//! broadcast budget is not a candidate.

use std::fmt;

use datafusion::common::Result;

use super::expr::Estimate;
use super::matrix::{KeyFn, Layout};
use crate::error::{ErrorKind, tessera_error};

/// A physical matmul strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Everything in one task (SystemML `mm`).
    Local,
    /// Broadcast the right operand to the left's partitions (`mapmm`).
    BroadcastRight,
    /// Broadcast the left operand to the right's partitions (`mapmm`, mirrored).
    BroadcastLeft,
    /// Join co-partitioned operands in place (`zipmm`).
    CoPartitioned,
    /// Repartition both operands on the shared dimension (`cpmm`).
    Repartition,
    /// Replicate blocks to the output blocks they feed (`rmm`).
    Replication,
    /// Fused `t(X) X`, one partial per partition.
    Tsmm,
    /// Fused `t(X) (X v)`, one pass over `X`.
    MMChain,
}

impl Strategy {
    /// Every strategy, in tie-break order.
    pub const ALL: [Strategy; 8] = [
        Strategy::Tsmm,
        Strategy::MMChain,
        Strategy::CoPartitioned,
        Strategy::Local,
        Strategy::BroadcastRight,
        Strategy::BroadcastLeft,
        Strategy::Repartition,
        Strategy::Replication,
    ];

    /// The name used in EXPLAIN and in `SET tessera.matmul_strategy`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Local => "local",
            Strategy::BroadcastRight => "broadcast",
            Strategy::BroadcastLeft => "broadcast_left",
            Strategy::CoPartitioned => "copartitioned",
            Strategy::Repartition => "repartition",
            Strategy::Replication => "replication",
            Strategy::Tsmm => "tsmm",
            Strategy::MMChain => "mmchain",
        }
    }

    /// SystemML's name.
    pub fn systemml(self) -> &'static str {
        match self {
            Strategy::Local => "mm",
            Strategy::BroadcastRight | Strategy::BroadcastLeft => "mapmm",
            Strategy::CoPartitioned => "zipmm",
            Strategy::Repartition => "cpmm",
            Strategy::Replication => "rmm",
            Strategy::Tsmm => "tsmm",
            Strategy::MMChain => "mmchain",
        }
    }

    /// Parses a setting value: our names or SystemML's.
    pub fn parse(s: &str) -> Option<Strategy> {
        let s = s.trim().to_ascii_lowercase();
        Some(match s.as_str() {
            "local" | "mm" => Strategy::Local,
            "broadcast" | "mapmm" | "broadcast_right" => Strategy::BroadcastRight,
            "broadcast_left" => Strategy::BroadcastLeft,
            "copartitioned" | "co-partitioned" | "zipmm" => Strategy::CoPartitioned,
            "repartition" | "shuffle" | "cpmm" => Strategy::Repartition,
            "replication" | "rmm" => Strategy::Replication,
            "tsmm" => Strategy::Tsmm,
            "mmchain" => Strategy::MMChain,
            _ => return None,
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.systemml())
    }
}

/// What the planner knows about an operand: its size, blocking and where its blocks are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    /// Size estimate.
    pub est: Estimate,
    /// Block size.
    pub block: (u64, u64),
    /// Placement.
    pub layout: Layout,
    /// Partitions.
    pub parts: usize,
}

impl Operand {
    fn grid(&self) -> (f64, f64) {
        (
            (self.est.rows / self.block.0 as f64).ceil().max(1.0),
            (self.est.cols / self.block.1 as f64).ceil().max(1.0),
        )
    }
}

/// Settings the cost model uses.
#[derive(Debug, Clone, Copy)]
pub struct CostContext {
    /// Partitions of the plan (DataFusion's target partitions).
    pub parts: usize,
    /// Cores that run kernels.
    pub cores: usize,
    /// Largest operand broadcast to every partition or held by one task, in bytes.
    pub broadcast_budget: f64,
}

/// Assumed kernel speed per core, flop/s.
const FLOP_RATE: f64 = 20e9;
/// Assumed speed of moving a block between partitions, bytes/s.
const MOVE_RATE: f64 = 2e9;

/// One costed candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The strategy.
    pub strategy: Strategy,
    /// Multiply-add flops.
    pub flops: f64,
    /// Bytes moved between partitions.
    pub bytes_moved: f64,
    /// Parallel tasks.
    pub tasks: f64,
    /// Estimated seconds.
    pub cost: f64,
}

/// The chosen strategy with its estimates and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The winner.
    pub chosen: Candidate,
    /// Why (forced, cheapest, or the only candidate).
    pub why: String,
    /// Every candidate considered, cheapest first.
    pub candidates: Vec<Candidate>,
}

/// Which fused forms apply to a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// A plain `A B`.
    Plain,
    /// `t(X) X`: `a` is `t(X)`, `b` is `X`.
    Tsmm,
    /// `t(X) (X v)`: `a` is `X`, `b` is `v`.
    MMChain,
}

/// True when `a`'s blocks are partitioned by its block column and `b`'s by its block
/// row with the same function: partition p holds the same `k` on both sides.
pub(crate) fn co_partitioned(a: &Operand, b: &Operand) -> bool {
    match (a.layout, b.layout) {
        (Layout::Cols(f), Layout::Rows(g)) => f == g && a.parts == b.parts,
        (Layout::Single, Layout::Single) => true,
        _ => false,
    }
}

/// Costs every applicable strategy for `a b` and picks the cheapest, or the forced one
/// when it applies.
pub(crate) fn choose(
    a: &Operand,
    b: &Operand,
    pattern: Pattern,
    ctx: &CostContext,
    forced: Option<Strategy>,
) -> Result<Choice> {
    let n = ctx.parts.max(1) as f64;
    let cores = ctx.cores.max(1) as f64;
    let (ga, gb) = (a.grid(), b.grid());
    let (i_blocks, k_blocks, j_blocks) = (ga.0, ga.1, gb.1);
    let (size_a, size_b) = (a.est.bytes(), b.est.bytes());
    let out = product(a, b, pattern);
    let flops = match pattern {
        Pattern::Plain | Pattern::Tsmm => super::expr::product_flops(&a.est, &b.est),
        Pattern::MMChain => 4.0 * a.est.nnz * b.est.cols,
    };
    let spread = (n - 1.0) / n;
    // Partial products summed by (i, j): each partition holding some k makes a partial
    // of the output blocks its k's touch.
    let partials = out.bytes() * k_blocks.min(n) * spread;
    let mut candidates = Vec::new();
    let mut add = |strategy: Strategy, flops: f64, bytes: f64, tasks: f64| {
        let tasks = tasks.max(1.0);
        let cost = flops / (FLOP_RATE * tasks.min(cores)) + bytes / MOVE_RATE;
        candidates.push(Candidate {
            strategy,
            flops,
            bytes_moved: bytes,
            tasks,
            cost,
        });
    };
    let (plain_a, plain_b) = match pattern {
        // The plain strategies see the operands of the product as written.
        Pattern::MMChain => (None, None),
        _ => (Some(a), Some(b)),
    };
    if let (Some(a), Some(b)) = (plain_a, plain_b) {
        if size_a + size_b <= ctx.broadcast_budget {
            add(
                Strategy::Local,
                flops,
                (size_a + size_b) * spread,
                i_blocks * j_blocks,
            );
        }
        if size_b <= ctx.broadcast_budget {
            let by_rows = matches!(a.layout, Layout::Rows(_) | Layout::Single);
            let agg = if by_rows { 0.0 } else { partials };
            add(
                Strategy::BroadcastRight,
                flops,
                size_b * (n - 1.0) + agg,
                n.min(i_blocks * k_blocks),
            );
        }
        if size_a <= ctx.broadcast_budget {
            let by_cols = matches!(b.layout, Layout::Cols(_) | Layout::Single);
            let agg = if by_cols { 0.0 } else { partials };
            add(
                Strategy::BroadcastLeft,
                flops,
                size_a * (n - 1.0) + agg,
                n.min(k_blocks * j_blocks),
            );
        }
        if co_partitioned(a, b) {
            add(Strategy::CoPartitioned, flops, partials, n.min(k_blocks));
        }
        let move_a = if matches!(a.layout, Layout::Cols(KeyFn::Hash)) && a.parts == ctx.parts {
            0.0
        } else {
            size_a * spread
        };
        let move_b = if matches!(b.layout, Layout::Rows(KeyFn::Hash)) && b.parts == ctx.parts {
            0.0
        } else {
            size_b * spread
        };
        add(
            Strategy::Repartition,
            flops,
            move_a + move_b + partials,
            n.min(k_blocks),
        );
        add(
            Strategy::Replication,
            flops,
            size_a * j_blocks.min(n) * spread + size_b * i_blocks.min(n) * spread,
            n.min(i_blocks * j_blocks),
        );
    }
    match pattern {
        Pattern::Tsmm => {
            // One triangle of flops; partitions each send one cols x cols partial.
            add(
                Strategy::Tsmm,
                flops / 2.0,
                out.bytes() * (n - 1.0),
                n.min(ga.1.max(gb.0)),
            );
        }
        Pattern::MMChain => {
            let (gx, _) = (a.grid(), ());
            add(
                Strategy::MMChain,
                flops,
                size_b * (n - 1.0) + out.bytes() * (n - 1.0),
                n.min(gx.0),
            );
        }
        Pattern::Plain => {}
    }
    candidates.sort_by(|x, y| {
        x.cost
            .total_cmp(&y.cost)
            .then_with(|| rank(x.strategy).cmp(&rank(y.strategy)))
    });
    if let Some(f) = forced {
        if let Some(c) = candidates.iter().find(|c| c.strategy == f).copied() {
            return Ok(Choice {
                chosen: c,
                why: format!("forced by tessera.matmul_strategy = '{}'", f.name()),
                candidates,
            });
        }
        if let Some(c) = forced_anyway(f, a, b, pattern, flops, n) {
            return Ok(Choice {
                chosen: c,
                why: format!(
                    "forced by tessera.matmul_strategy = '{}' (outside the cost model's limits)",
                    f.name()
                ),
                candidates,
            });
        }
        // Never relabel: a forced strategy that cannot run this product is an error.
        return Err(tessera_error(
            ErrorKind::InvalidParameterValue,
            format!(
                "tessera.matmul_strategy = '{}' cannot run this product ({} times {}): {}; \
                 set it to 'auto' or to a strategy that applies",
                f.name(),
                dims(a),
                dims(b),
                not_applicable(f, a, b, ctx.parts)
            ),
        ));
    }
    let chosen = candidates[0];
    let why = match candidates.get(1) {
        Some(next) => format!(
            "cheapest of {} (next: {} at {:.3} s)",
            candidates.len(),
            next.strategy.name(),
            next.cost
        ),
        None => "only candidate".into(),
    };
    Ok(Choice {
        chosen,
        why,
        candidates,
    })
}

fn dims(x: &Operand) -> String {
    format!("{}x{}", x.est.rows, x.est.cols)
}

/// Why the forced strategy `f` cannot run `a b`.
fn not_applicable(f: Strategy, a: &Operand, b: &Operand, parts: usize) -> String {
    match f {
        Strategy::CoPartitioned => format!(
            "copartitioned (zipmm) joins the blocks where they are, which needs the left \
             operand partitioned by block column and the right by block row, by the same \
             function over the same partitions; the left is partitioned {} and the right {}",
            a.layout.describe(a.parts.max(1)),
            b.layout.describe(b.parts.max(1))
        ),
        Strategy::Tsmm => "tsmm computes t(X) X, and this product is not of that form".into(),
        Strategy::MMChain => {
            "mmchain computes t(X) (X v), and this product is not of that form".into()
        }
        other => format!(
            "{} does not apply to this product over {parts} partitions",
            other.name()
        ),
    }
}

/// A forced strategy that the budget ruled out still runs when it can (the user asked
/// for it); `copartitioned` on operands that are not co-partitioned and the fused
/// forms on plain products cannot.
fn forced_anyway(
    f: Strategy,
    _a: &Operand,
    _b: &Operand,
    pattern: Pattern,
    flops: f64,
    n: f64,
) -> Option<Candidate> {
    let ok = match f {
        Strategy::Local | Strategy::BroadcastLeft | Strategy::BroadcastRight => {
            pattern != Pattern::MMChain
        }
        _ => false,
    };
    ok.then_some(Candidate {
        strategy: f,
        flops,
        bytes_moved: 0.0,
        tasks: n,
        cost: f64::INFINITY,
    })
}

fn rank(s: Strategy) -> usize {
    Strategy::ALL
        .iter()
        .position(|x| *x == s)
        .unwrap_or(usize::MAX)
}

fn product(a: &Operand, b: &Operand, pattern: Pattern) -> Estimate {
    match pattern {
        Pattern::Plain | Pattern::Tsmm => Estimate {
            rows: a.est.rows,
            cols: b.est.cols,
            nnz: a.est.rows * b.est.cols,
            exact: a.est.exact && b.est.exact,
        },
        Pattern::MMChain => Estimate {
            rows: a.est.cols,
            cols: b.est.cols,
            nnz: a.est.cols * b.est.cols,
            exact: a.est.exact && b.est.exact,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(rows: f64, cols: f64, block: u64, layout: Layout) -> Operand {
        Operand {
            est: Estimate {
                rows,
                cols,
                nnz: rows * cols,
                exact: true,
            },
            block: (block, block),
            layout,
            parts: 2,
        }
    }

    fn ctx() -> CostContext {
        CostContext {
            parts: 2,
            cores: 2,
            broadcast_budget: 256.0 * 1024.0 * 1024.0,
        }
    }

    #[test]
    fn small_times_small_runs_in_one_task_or_broadcasts() {
        let a = dense(100.0, 100.0, 100, Layout::Hash2);
        let c = choose(&a, &a, Pattern::Plain, &ctx(), None).unwrap();
        assert!(matches!(
            c.chosen.strategy,
            Strategy::Local | Strategy::BroadcastRight | Strategy::BroadcastLeft
        ));
    }

    #[test]
    fn big_times_vector_broadcasts_the_vector() {
        let x = dense(1e7, 1000.0, 1000, Layout::Hash2);
        let v = dense(1000.0, 1.0, 1000, Layout::Hash2);
        let c = choose(&x, &v, Pattern::Plain, &ctx(), None).unwrap();
        assert_eq!(c.chosen.strategy, Strategy::BroadcastRight, "{c:?}");
    }

    #[test]
    fn two_big_operands_do_not_broadcast() {
        let a = dense(50_000.0, 50_000.0, 1000, Layout::Hash2);
        let c = choose(&a, &a, Pattern::Plain, &ctx(), None).unwrap();
        assert!(
            matches!(
                c.chosen.strategy,
                Strategy::Repartition | Strategy::Replication
            ),
            "{c:?}"
        );
        assert!(c.candidates.iter().all(|x| x.strategy != Strategy::Local));
    }

    #[test]
    fn co_partitioned_operands_join_in_place() {
        let f = KeyFn::Range { blocks: 100 };
        let a = dense(1000.0, 100_000.0, 1000, Layout::Cols(f));
        let b = dense(100_000.0, 1000.0, 1000, Layout::Rows(f));
        let c = choose(
            &a,
            &b,
            Pattern::Plain,
            &CostContext {
                broadcast_budget: 1e6,
                ..ctx()
            },
            None,
        )
        .unwrap();
        assert_eq!(c.chosen.strategy, Strategy::CoPartitioned, "{c:?}");
    }

    #[test]
    fn tsmm_wins_for_tall_skinny() {
        let x = dense(1e6, 100.0, 100, Layout::Hash2);
        let xt = Operand {
            est: Estimate {
                rows: 100.0,
                cols: 1e6,
                ..x.est
            },
            block: (100, 10_000),
            layout: Layout::Other,
            ..x
        };
        let c = choose(&xt, &x, Pattern::Tsmm, &ctx(), None).unwrap();
        assert_eq!(c.chosen.strategy, Strategy::Tsmm, "{c:?}");
    }

    #[test]
    fn forcing_picks_the_forced_strategy() {
        let a = dense(100.0, 100.0, 100, Layout::Hash2);
        for s in [
            Strategy::Repartition,
            Strategy::Replication,
            Strategy::Local,
        ] {
            let c = choose(&a, &a, Pattern::Plain, &ctx(), Some(s)).unwrap();
            assert_eq!(c.chosen.strategy, s);
            assert!(c.why.contains("forced"));
        }
        let e = choose(
            &a,
            &a,
            Pattern::Plain,
            &ctx(),
            Some(Strategy::CoPartitioned),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("'copartitioned' cannot run this product (100x100 times 100x100)")
                && e.contains("the left is partitioned hash(bi, bj)"),
            "{e}"
        );
        let e = choose(&a, &a, Pattern::Plain, &ctx(), Some(Strategy::Tsmm))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tsmm computes t(X) X"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.name()), Some(s));
            assert_eq!(
                Strategy::parse(s.systemml()).map(|x| x.systemml()),
                Some(s.systemml())
            );
        }
    }
}
