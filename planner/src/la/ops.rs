//! The block-level work of each linear-algebra operator, strategies included. Every
//! function here is synchronous CPU work, run inside the kernel pool; the operator
//! (`LaExec`) moves it off the async runtime.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use rayon::prelude::*;
use tessera_storage::kernels::{self, BinaryOp, DenseAccumulator, Operand, UnaryOp, cpu_pool};
use tessera_storage::{Block, CooBuilder, DenseBlock, Duplicates, Partitioning, Snapshot};

use super::expr::{Broadcast, Reduction, Step, broadcast};
use super::matrix::{
    BlockMatrix, CellSink, KeyFn, Layout, Tile, TileSink, block_bytes, check_shape, for_each_cell,
    zero_block,
};
use super::strategy::Strategy;
use crate::error::{ErrorKind, tessera_error};
use crate::partitioning::hash_placement_is_live;

fn storage(e: tessera_storage::StorageError) -> DataFusionError {
    crate::error::storage_error(e)
}

/// What an operator did, for EXPLAIN ANALYZE, and where its finished blocks may go.
#[derive(Default)]
pub(crate) struct Work {
    /// Bytes of blocks that changed partition (shuffles, broadcasts, partial sums).
    pub bytes_moved: u64,
    /// Takes output blocks as they are finished, if the operator can tell (a product
    /// computed one output block per task).
    pub sink: Option<Arc<dyn TileSink>>,
}

/// Runs `f` over `items` in the kernel pool, in parallel.
fn par_map<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync + Send,
) -> Result<Vec<R>> {
    cpu_pool().install(|| items.into_par_iter().map(f).collect())
}

/// True when tasks alone keep every core busy, so kernels should stay single-threaded.
fn tasks_fill_cores(tasks: usize) -> bool {
    tasks >= rayon::current_num_threads().max(cpu_pool().current_num_threads())
}

// ---------------------------------------------------------------------------------
// Leaves

/// Reads every block of a pinned matrix version, one partition per shard. (The planner
/// makes every stored matrix a `BlockScanExec`; this serves an `LaExec` built by hand.)
pub(crate) fn scan(snapshot: &Snapshot) -> Result<BlockMatrix> {
    let snapshot = &snapshot.reader();
    let info = snapshot.info();
    let schema = &info.schema;
    if !schema.is_matrix() {
        return plan_err!(
            "array '{}' is not a matrix: linear algebra takes 2-d arrays with one attribute",
            info.name
        );
    }
    let (rows, cols) = schema.shape2();
    let d = schema.dimensions();
    let (br, bc) = (d[0].block_len, d[1].block_len);
    let shards = info.partitioning.shard_count().max(1) as usize;
    let layout = match info.partitioning {
        // Blocks placed by another hash are where Layout::Hash2 would not look for them.
        Partitioning::Hash { .. } if hash_placement_is_live(info) => Layout::Hash2,
        Partitioning::Hash { .. } => Layout::Other,
        Partitioning::RowBlock { .. } => Layout::Rows(KeyFn::Range {
            blocks: rows.div_ceil(br),
        }),
        Partitioning::Grid { .. } => Layout::Other,
    };
    let parts = par_map((0..shards as u32).collect(), |s| {
        let blocks = snapshot.read_shard(s).map_err(storage)?;
        Ok(blocks
            .into_iter()
            .filter_map(|(key, mut attrs)| {
                let b = attrs.drain(..).next()?;
                Some((key.0[0] as u64, key.0[1] as u64, Arc::new(b)))
            })
            .collect::<Vec<Tile>>())
    })?;
    let mut m = BlockMatrix::empty(rows, cols, br, bc, shards, layout);
    m.parts = parts;
    Ok(m)
}

/// `eye(n)`.
pub(crate) fn eye(n: u64, parts: usize) -> Result<BlockMatrix> {
    let (br, bc) = super::auto_block(n, n);
    check_shape("eye", n, n, br, bc)?;
    let mut sink = CellSink::new(n, n, br, bc);
    for i in 0..n {
        sink.push(i, i, 1.0)?;
    }
    Ok(sink.finish(parts))
}

/// SplitMix64: a small, well-mixed generator; one stream per block.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `rand(rows, cols, density, seed, min, max)`: each cell non-zero with probability
/// `density`, uniform in `[min, max)`. The same arguments give the same matrix,
/// whatever the block size or partition count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rand(
    rows: u64,
    cols: u64,
    density: f64,
    seed: u64,
    min: f64,
    max: f64,
    parts: usize,
) -> Result<BlockMatrix> {
    let (br, bc) = super::auto_block(rows, cols);
    check_shape("rand", rows, cols, br, bc)?;
    if density.is_nan() || density <= 0.0 {
        return Ok(BlockMatrix::empty(rows, cols, br, bc, parts, Layout::Hash2));
    }
    let keys: Vec<(u64, u64)> = (0..rows.div_ceil(br))
        .flat_map(|i| (0..cols.div_ceil(bc)).map(move |j| (i, j)))
        .collect();
    let draw = Draw {
        density,
        seed,
        min,
        max,
    };
    let tiles = par_map(keys, |key| {
        Ok(rand_block((rows, cols), (br, bc), key, draw)?.map(|b| (key.0, key.1, Arc::new(b))))
    })?;
    Ok(BlockMatrix::from_tiles(
        (rows, cols),
        (br, bc),
        tiles.into_iter().flatten(),
        parts,
        Layout::Hash2,
    ))
}

/// What `rand` draws: the fraction of non-zero cells, the seed and the value range.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Draw {
    /// Fraction of non-zero cells.
    pub density: f64,
    /// The same seed draws the same matrix.
    pub seed: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value (exclusive).
    pub max: f64,
}

/// Block `(bi, bj)` of `rand` of `shape` in blocks of `block`, drawn without the other
/// blocks (`None` when it has no non-zero cell).
pub(crate) fn rand_block(
    (rows, cols): (u64, u64),
    (br, bc): (u64, u64),
    (bi, bj): (u64, u64),
    Draw {
        density,
        seed,
        min,
        max,
    }: Draw,
) -> Result<Option<Block>> {
    if density.is_nan() || density <= 0.0 {
        return Ok(None);
    }
    let value = |rng: &mut SplitMix| min + (max - min) * rng.unit();
    let r = br.min(rows - bi * br) as usize;
    let c = bc.min(cols - bj * bc) as usize;
    let mut sink = CellSink::new(r as u64, c as u64, r as u64, c as u64);
    // One stream per (row, block column), so a block is drawn without the others;
    // non-zero positions are drawn as geometric gaps, so the work is O(non-zeros).
    let ln_miss = (1.0 - density).ln();
    for lr in 0..r {
        let g = bi * br + lr as u64;
        let mut rng = SplitMix(
            seed ^ g.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ bj.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7),
        );
        let mut lc = 0usize;
        loop {
            if density < 1.0 {
                let gap = ((1.0 - rng.unit()).ln() / ln_miss).floor();
                if gap.is_nan() || gap >= c as f64 {
                    break;
                }
                lc += gap as usize;
            }
            if lc >= c {
                break;
            }
            let v = value(&mut rng);
            if v != 0.0 {
                sink.push(lr as u64, lc as u64, v)?;
            }
            lc += 1;
        }
    }
    let m = sink.finish(1);
    Ok(m.parts
        .into_iter()
        .flatten()
        .next()
        .map(|(_, _, b)| Arc::unwrap_or_clone(b)))
}

/// Block `(bi, bj)` of `eye(n)` in blocks of `block`: the diagonal cells it holds
/// (`None` when the diagonal misses it).
pub(crate) fn eye_block(
    n: u64,
    (br, bc): (u64, u64),
    (bi, bj): (u64, u64),
) -> Result<Option<Block>> {
    let (r0, c0) = (bi * br, bj * bc);
    let (r1, c1) = ((r0 + br).min(n), (c0 + bc).min(n));
    let (from, to) = (r0.max(c0), r1.min(c1));
    if from >= to {
        return Ok(None);
    }
    let mut cells = CooBuilder::new((r1 - r0) as usize, (c1 - c0) as usize, Duplicates::Last);
    for t in from..to {
        cells
            .push((t - r0) as usize, (t - c0) as usize, 1.0)
            .map_err(storage)?;
    }
    Ok(Some(cells.build()))
}

// ---------------------------------------------------------------------------------
// Shapes

fn dims(s: (u64, u64)) -> String {
    format!("{}x{}", s.0, s.1)
}

/// Grows a subquery operand whose shape was inferred from its largest coordinates
/// (trailing all-zero rows or columns leave no trace) to `rows x cols`.
fn grow(m: &mut BlockMatrix, rows: u64, cols: u64) {
    if m.inferred {
        m.rows = m.rows.max(rows);
        m.cols = m.cols.max(cols);
    }
}

// ---------------------------------------------------------------------------------
// Products

/// A partial sum of products for one output block.
pub(crate) enum Acc {
    Dense(DenseAccumulator),
    Sparse(Block),
}

impl Acc {
    pub(crate) fn add_product(
        slot: &mut Option<Acc>,
        a: &Block,
        b: &Block,
        seq: bool,
    ) -> Result<()> {
        match slot {
            Some(Acc::Dense(acc)) => if seq {
                kernels::matmul_into_seq(acc, a, b)
            } else {
                kernels::matmul_into(acc, a, b)
            }
            .map_err(storage),
            _ => {
                let p = if seq {
                    kernels::matmul_seq(a, b)
                } else {
                    kernels::matmul(a, b)
                }
                .map_err(storage)?;
                Acc::add_block(slot, p)
            }
        }
    }

    pub(crate) fn add_block(slot: &mut Option<Acc>, p: Block) -> Result<()> {
        *slot = Some(match slot.take() {
            None => Acc::wrap(p),
            Some(Acc::Dense(mut acc)) => {
                kernels::add_into(&mut acc, &p).map_err(storage)?;
                Acc::Dense(acc)
            }
            Some(Acc::Sparse(s)) => {
                let sum =
                    kernels::elementwise(BinaryOp::Add, &s, Operand::Block(&p)).map_err(storage)?;
                Acc::wrap(sum)
            }
        });
        Ok(())
    }

    pub(crate) fn merge(slot: &mut Option<Acc>, other: Acc) -> Result<()> {
        match (slot.as_mut(), other) {
            (Some(Acc::Dense(a)), Acc::Dense(b)) => a.merge(&b).map_err(storage),
            (_, Acc::Dense(b)) => Acc::add_block(slot, b.into_block()),
            (_, Acc::Sparse(b)) => Acc::add_block(slot, b),
        }
    }

    pub(crate) fn wrap(p: Block) -> Acc {
        match p {
            d @ Block::Dense(_) => Acc::Dense(DenseAccumulator::from_block(d)),
            s => Acc::Sparse(s),
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Acc::Dense(a) => (a.values().len() * 8) as u64,
            Acc::Sparse(b) => block_bytes(b),
        }
    }

    pub(crate) fn into_block(self) -> Block {
        match self {
            Acc::Dense(a) => a.into_block(),
            Acc::Sparse(b) => b,
        }
    }
}

type Partials = HashMap<(u64, u64), Acc>;

/// Products of the `a` tiles with the `b` tiles indexed by block row `k`.
fn products<'t>(
    a: impl IntoIterator<Item = &'t Tile>,
    b_by_k: &HashMap<u64, Vec<&Tile>>,
    seq: bool,
) -> Result<Partials> {
    let mut out: HashMap<(u64, u64), Option<Acc>> = HashMap::new();
    for (i, k, ab) in a {
        for (_, j, bb) in b_by_k.get(k).into_iter().flatten() {
            Acc::add_product(out.entry((*i, *j)).or_default(), ab, bb, seq)?;
        }
    }
    Ok(out
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

fn by_row<'t>(tiles: impl IntoIterator<Item = &'t Tile>) -> HashMap<u64, Vec<&'t Tile>> {
    let mut m: HashMap<u64, Vec<&Tile>> = HashMap::new();
    for t in tiles {
        m.entry(t.0).or_default().push(t);
    }
    m
}

/// Sums per-partition partial products by output block, each output block going to
/// the partition `hash(i, j)` names; counts the bytes of partials that moved.
fn aggregate(
    partials: Vec<Partials>,
    shape: (u64, u64),
    block: (u64, u64),
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    let mut targets: Vec<Vec<((u64, u64), Acc)>> = (0..n).map(|_| Vec::new()).collect();
    for (from, p) in partials.into_iter().enumerate() {
        for (key, acc) in p {
            let to = Layout::Hash2.part_of(key.0, key.1, n);
            if to != from {
                work.bytes_moved += acc.bytes();
            }
            targets[to].push((key, acc));
        }
    }
    let parts = par_map(targets, |items| {
        let mut sums: HashMap<(u64, u64), Option<Acc>> = HashMap::new();
        for (key, acc) in items {
            Acc::merge(sums.entry(key).or_default(), acc)?;
        }
        Ok(sums
            .into_iter()
            .filter_map(|((i, j), a)| a.map(|a| (i, j, Arc::new(a.into_block()))))
            .filter(|t| t.2.nnz() > 0)
            .collect::<Vec<Tile>>())
    })?;
    let mut m = BlockMatrix::empty(shape.0, shape.1, block.0, block.1, n, Layout::Hash2);
    m.parts = parts;
    Ok(m)
}

fn finish(
    partials: Vec<Partials>,
    shape: (u64, u64),
    block: (u64, u64),
    layout: Layout,
) -> BlockMatrix {
    let n = partials.len();
    let mut m = BlockMatrix::empty(shape.0, shape.1, block.0, block.1, n, layout);
    m.parts = partials
        .into_iter()
        .map(|p| {
            p.into_iter()
                .map(|((i, j), a)| (i, j, Arc::new(a.into_block())))
                .filter(|t| t.2.nnz() > 0)
                .collect()
        })
        .collect();
    m
}

/// `a b` with `strategy`, over `n` partitions.
pub(crate) fn matmul(
    mut a: BlockMatrix,
    mut b: BlockMatrix,
    strategy: Strategy,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    grow(&mut a, 0, b.rows);
    grow(&mut b, a.cols, 0);
    check_shape("matmul", a.rows, a.cols, a.br, a.bc)?;
    check_shape("matmul", b.rows, b.cols, b.br, b.bc)?;
    check_shape("matmul", a.rows, b.cols, a.br, b.bc)?;
    if a.cols != b.rows {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "matmul: shapes do not conform: {} times {} (inner dimensions {} and {} differ)",
                dims(a.shape()),
                dims(b.shape()),
                a.cols,
                b.rows
            ),
        ));
    }
    if a.bc != b.br {
        // Cut b's rows like a's columns so block k meets block k.
        b = b.reblock(a.bc, b.bc, n)?;
        work.bytes_moved += b.bytes();
    }
    let shape = (a.rows, b.cols);
    let block = (a.br, b.bc);
    let n = n.max(1);
    match strategy {
        Strategy::Local => {
            work.bytes_moved += a
                .parts
                .iter()
                .skip(1)
                .flatten()
                .map(|t| block_bytes(&t.2))
                .sum::<u64>()
                + b.parts
                    .iter()
                    .skip(1)
                    .flatten()
                    .map(|t| block_bytes(&t.2))
                    .sum::<u64>();
            let a_by_i = by_row(a.tiles());
            let b_by_k = by_row(b.tiles());
            let (gi, _) = a.grid();
            let (_, gj) = b.grid();
            let keys: Vec<(u64, u64)> =
                (0..gi).flat_map(|i| (0..gj).map(move |j| (i, j))).collect();
            let seq = tasks_fill_cores(keys.len());
            // Each task finishes one output block, so a sink can take it at once.
            let sink = match work.sink.take() {
                Some(s) if s.open(shape, block)? => Some(s),
                _ => None,
            };
            let tiles = par_map(keys, |(i, j)| {
                let mut acc = None;
                for (_, k, ab) in a_by_i.get(&i).into_iter().flatten() {
                    if let Some(bb) = b_by_k.get(k).and_then(|v| v.iter().find(|t| t.1 == j)) {
                        Acc::add_product(&mut acc, ab, &bb.2, seq)?;
                    }
                }
                let tile = acc.map(|a| (i, j, Arc::new(a.into_block())));
                if let (Some(sink), Some(tile)) = (&sink, &tile) {
                    sink.put(tile)?;
                }
                Ok(tile)
            })?;
            Ok(BlockMatrix::from_tiles(
                shape,
                block,
                tiles.into_iter().flatten(),
                n,
                Layout::Single,
            ))
        }
        Strategy::BroadcastRight => {
            let tasks = a.parts.iter().filter(|p| !p.is_empty()).count();
            work.bytes_moved += b.bytes() * tasks.saturating_sub(1) as u64;
            let b_by_k = by_row(b.tiles());
            let seq = tasks_fill_cores(tasks);
            let partials = par_map(a.parts.iter().collect(), |p| {
                products(p.iter(), &b_by_k, seq)
            })?;
            if matches!(a.layout, Layout::Rows(_) | Layout::Single) {
                Ok(finish(partials, shape, block, a.layout))
            } else {
                aggregate(partials, shape, block, n, work)
            }
        }
        Strategy::BroadcastLeft => {
            let tasks = b.parts.iter().filter(|p| !p.is_empty()).count();
            work.bytes_moved += a.bytes() * tasks.saturating_sub(1) as u64;
            let mut a_by_k: HashMap<u64, Vec<&Tile>> = HashMap::new();
            for t in a.tiles() {
                a_by_k.entry(t.1).or_default().push(t);
            }
            let seq = tasks_fill_cores(tasks);
            let partials = par_map(b.parts.iter().collect(), |p| {
                let mut out: HashMap<(u64, u64), Option<Acc>> = HashMap::new();
                for (k, j, bb) in p {
                    for (i, _, ab) in a_by_k.get(k).into_iter().flatten() {
                        Acc::add_product(out.entry((*i, *j)).or_default(), ab, bb, seq)?;
                    }
                }
                Ok(out
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect::<Partials>())
            })?;
            if matches!(b.layout, Layout::Cols(_) | Layout::Single) {
                Ok(finish(partials, shape, block, b.layout))
            } else {
                aggregate(partials, shape, block, n, work)
            }
        }
        Strategy::CoPartitioned | Strategy::Repartition => {
            let co = match (a.layout, b.layout) {
                (Layout::Cols(f), Layout::Rows(g)) => f == g && a.parts.len() == b.parts.len(),
                _ => false,
            };
            if strategy == Strategy::CoPartitioned && !co {
                // Never relabel: the planner offers zipmm only where the placement holds.
                return exec_err!(
                    "internal: copartitioned (zipmm) was planned for operands that are not placed alike on k"
                );
            }
            if strategy == Strategy::Repartition {
                work.bytes_moved += a.repartition(Layout::Cols(KeyFn::Hash), n);
                work.bytes_moved += b.repartition(Layout::Rows(KeyFn::Hash), n);
            }
            let tasks = a.parts.len();
            let seq = tasks_fill_cores(tasks);
            let pairs: Vec<(&Vec<Tile>, &Vec<Tile>)> = a.parts.iter().zip(&b.parts).collect();
            let partials = par_map(pairs, |(pa, pb)| {
                products(pa.iter(), &by_row(pb.iter()), seq)
            })?;
            aggregate(partials, shape, block, n, work)
        }
        Strategy::Replication => {
            let (gi, _) = a.grid();
            let (_, gj) = b.grid();
            let part = |i: u64, j: u64| Layout::Hash2.part_of(i, j, n);
            // Inputs of each partition: every a(i, k) for the j's of row i it owns, every
            // b(k, j) for the i's it owns.
            let mut inputs: Vec<(Vec<&Tile>, Vec<&Tile>)> =
                (0..n).map(|_| (vec![], vec![])).collect();
            for (from, p) in a.parts.iter().enumerate() {
                for t in p {
                    let targets: HashSet<usize> = (0..gj).map(|j| part(t.0, j)).collect();
                    for to in targets {
                        if to != from {
                            work.bytes_moved += block_bytes(&t.2);
                        }
                        inputs[to].0.push(t);
                    }
                }
            }
            for (from, p) in b.parts.iter().enumerate() {
                for t in p {
                    let targets: HashSet<usize> = (0..gi).map(|i| part(i, t.1)).collect();
                    for to in targets {
                        if to != from {
                            work.bytes_moved += block_bytes(&t.2);
                        }
                        inputs[to].1.push(t);
                    }
                }
            }
            let seq = tasks_fill_cores(n);
            let parts = par_map(inputs.into_iter().enumerate().collect(), |(p, (ta, tb))| {
                let b_by_k = by_row(tb);
                let mut out: HashMap<(u64, u64), Option<Acc>> = HashMap::new();
                for (i, k, ab) in ta {
                    for (_, j, bb) in b_by_k.get(k).into_iter().flatten() {
                        if part(*i, *j) == p {
                            Acc::add_product(out.entry((*i, *j)).or_default(), ab, bb, seq)?;
                        }
                    }
                }
                Ok(out
                    .into_iter()
                    .filter_map(|((i, j), a)| a.map(|a| (i, j, Arc::new(a.into_block()))))
                    .filter(|t| t.2.nnz() > 0)
                    .collect::<Vec<Tile>>())
            })?;
            let mut m = BlockMatrix::empty(shape.0, shape.1, block.0, block.1, n, Layout::Hash2);
            m.parts = parts;
            Ok(m)
        }
        Strategy::Tsmm | Strategy::MMChain => exec_err!(
            "internal: the {} strategy is not a general product",
            strategy.name()
        ),
    }
}

/// Cuts `x` into one block column (the fused kernels see whole rows).
fn one_block_column(x: BlockMatrix, n: usize, work: &mut Work) -> Result<BlockMatrix> {
    if x.grid().1 <= 1 {
        return Ok(x);
    }
    let out = x.reblock(x.br, x.cols, n)?;
    work.bytes_moved += out.bytes();
    Ok(out)
}

/// `t(x) x` with the fused kernel: each partition sums `t(Xp) Xp` over its blocks, then
/// the partials are added up in one place.
pub(crate) fn tsmm(x: BlockMatrix, n: usize, work: &mut Work) -> Result<BlockMatrix> {
    let x = one_block_column(x, n, work)?;
    let cols = x.cols as usize;
    let seq = tasks_fill_cores(x.block_count());
    let total = sum_per_partition(&x, (cols, cols), work, |b| {
        if seq {
            kernels::tsmm_seq(b)
        } else {
            kernels::tsmm(b)
        }
    })?;
    let (br, bc) = super::auto_block(x.cols, x.cols);
    Ok(BlockMatrix::from_dense(&total, br, bc, n))
}

/// Runs a fused kernel over every block of `x` and sums its `shape` results: each
/// partition makes one partial sum, and the partials meet in one place (counted as
/// moved).
///
/// In one process the blocks, not the partitions, are the unit of work: the kernel
/// pool's threads take blocks as they free up and each keeps one running sum, so a
/// partition that happens to hold more blocks (hash placement is uneven) does not leave
/// a core idle.
fn sum_per_partition(
    x: &BlockMatrix,
    shape: (usize, usize),
    work: &mut Work,
    kernel: impl Fn(&Block) -> tessera_storage::Result<DenseBlock> + Sync + Send,
) -> Result<DenseBlock> {
    let zeros = || DenseAccumulator::zeros(shape.0, shape.1).map_err(storage);
    let blocks: Vec<&Block> = x.tiles().map(|t| t.2.as_ref()).collect();
    let total = cpu_pool().install(|| {
        blocks
            .into_par_iter()
            .with_max_len(1)
            .fold(zeros, |acc, b| {
                let mut acc = acc?;
                let r = kernel(b).map_err(storage)?;
                kernels::add_into(&mut acc, &Block::Dense(r)).map_err(storage)?;
                Ok(acc)
            })
            .reduce_with(|a, b| {
                let mut a = a?;
                a.merge(&b?).map_err(storage)?;
                Ok(a)
            })
    });
    let total = match total {
        Some(t) => t?,
        None => zeros()?,
    };
    let partitions = x.parts.iter().filter(|p| !p.is_empty()).count();
    work.bytes_moved += (shape.0 * shape.1 * 8 * partitions.saturating_sub(1)) as u64;
    Ok(total.into_dense())
}

/// `t(x) (x v)` with the fused kernel: one pass over `x`, `v` broadcast.
pub(crate) fn mmchain(
    x: BlockMatrix,
    mut v: BlockMatrix,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    grow(&mut v, x.cols, 0);
    if x.cols != v.rows {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "matmul: shapes do not conform: {} times {} (inner dimensions {} and {} differ)",
                dims(x.shape()),
                dims(v.shape()),
                x.cols,
                v.rows
            ),
        ));
    }
    let x = one_block_column(x, n, work)?;
    let vd = v.to_dense()?;
    let partitions = x.parts.iter().filter(|p| !p.is_empty()).count();
    work.bytes_moved += v.bytes() * partitions.saturating_sub(1) as u64;
    let seq = tasks_fill_cores(x.block_count());
    let (cols, k) = (x.cols as usize, vd.cols());
    let total = sum_per_partition(&x, (cols, k), work, |b| {
        if seq {
            kernels::mmchain_seq(b, &vd)
        } else {
            kernels::mmchain(b, &vd)
        }
    })?;
    let (br, bc) = super::auto_block(x.cols, k as u64);
    Ok(BlockMatrix::from_dense(&total, br, bc, n))
}

// ---------------------------------------------------------------------------------
// Cell by cell

/// `t(a)`: blocks transposed in place, keys swapped.
pub(crate) fn transpose(a: BlockMatrix) -> Result<BlockMatrix> {
    let parts = par_map(a.parts, |p| {
        Ok(p.into_iter()
            .map(|(i, j, b)| (j, i, Arc::new(kernels::transpose(&b))))
            .collect::<Vec<Tile>>())
    })?;
    Ok(BlockMatrix {
        rows: a.cols,
        cols: a.rows,
        br: a.bc,
        bc: a.br,
        parts,
        layout: a.layout.transposed(),
        inferred: a.inferred,
        reservation: None,
    })
}

/// Adds all-zero blocks for every missing key, so operations that map zero to non-zero
/// see every cell.
fn fill_missing(m: &mut BlockMatrix) {
    let present: HashSet<(u64, u64)> = m.tiles().map(|t| (t.0, t.1)).collect();
    let (gi, gj) = m.grid();
    let n = m.parts.len();
    let layout = if m.layout == Layout::Other {
        Layout::Hash2
    } else {
        m.layout
    };
    for i in 0..gi {
        for j in 0..gj {
            if !present.contains(&(i, j)) {
                let (r, c) = m.block_shape(i, j);
                m.parts[layout.part_of(i, j, n)].push((i, j, Arc::new(zero_block(r, c))));
            }
        }
    }
}

fn map_tiles(
    mut a: BlockMatrix,
    zero_maps_to_zero: bool,
    f: impl Fn(&Block) -> Result<Block> + Sync + Send,
) -> Result<BlockMatrix> {
    if !zero_maps_to_zero {
        fill_missing(&mut a);
    }
    let parts = par_map(std::mem::take(&mut a.parts), |p| {
        p.into_iter()
            .map(|(i, j, b)| Ok((i, j, Arc::new(f(&b)?))))
            .filter(|t| !matches!(t, Ok((_, _, b)) if b.nnz() == 0))
            .collect::<Result<Vec<Tile>>>()
    })?;
    a.parts = parts;
    Ok(a)
}

/// `op(a, value)` or `op(value, a)`.
pub(crate) fn scalar(a: BlockMatrix, op: BinaryOp, value: f64, left: bool) -> Result<BlockMatrix> {
    let zero = if left {
        op.apply(value, 0.0)
    } else {
        op.apply(0.0, value)
    };
    map_tiles(a, zero == 0.0, |b| {
        if left {
            Ok(kernels::scalar_elementwise_left(op, value, b))
        } else if op == BinaryOp::Pow {
            Ok(kernels::pow(b, value))
        } else {
            kernels::elementwise(op, b, Operand::Scalar(value)).map_err(storage)
        }
    })
}

/// `op(a)`.
pub(crate) fn unary(a: BlockMatrix, op: UnaryOp) -> Result<BlockMatrix> {
    map_tiles(a, op.apply(0.0) == 0.0, |b| Ok(kernels::unary(op, b)))
}

/// Brings `b` to `a`'s blocking and placement.
fn align(a: &mut BlockMatrix, b: BlockMatrix, n: usize, work: &mut Work) -> Result<BlockMatrix> {
    if matches!(a.layout, Layout::Other | Layout::Single) {
        work.bytes_moved += a.repartition(Layout::Hash2, n);
    }
    let mut b = if (b.br, b.bc) != (a.br, a.bc) {
        let r = b.reblock(a.br, a.bc, a.parts.len())?;
        work.bytes_moved += r.bytes();
        r
    } else {
        b
    };
    work.bytes_moved += b.repartition(a.layout, a.parts.len());
    Ok(b)
}

/// A vector operand as one dense slice.
fn vector(b: &BlockMatrix) -> Result<Vec<f64>> {
    Ok(b.to_dense()?.into_vec())
}

/// Elementwise `op(a, b)` with `b` broadcast when it is a row vector, a column vector
/// or 1 x 1 (and `a` broadcast the same way when it is the vector).
pub(crate) fn binary(
    mut a: BlockMatrix,
    mut b: BlockMatrix,
    op: BinaryOp,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    let name = op.name();
    if a.shape() != b.shape() && (a.inferred || b.inferred) {
        let (r, c) = (a.rows.max(b.rows), a.cols.max(b.cols));
        if broadcast(name, a.shape(), b.shape()).is_err()
            && broadcast(name, b.shape(), a.shape()).is_err()
        {
            grow(&mut a, r, c);
            grow(&mut b, r, c);
        }
    }
    let kind = match broadcast(name, a.shape(), b.shape()) {
        Ok(k) => k,
        Err(e) => {
            // A vector on the left broadcasts over a matrix on the right.
            if broadcast(name, b.shape(), a.shape()).is_ok() {
                a = expand(&a, b.shape(), (b.br, b.bc), n)?;
                work.bytes_moved += a.bytes();
                Broadcast::None
            } else {
                return Err(e);
            }
        }
    };
    match kind {
        Broadcast::None => {
            let b = align(&mut a, b, n, work)?;
            let dense_zero = op.apply(0.0, 0.0) != 0.0;
            let (rows, cols, br, bc) = (a.rows, a.cols, a.br, a.bc);
            let (gi, gj) = a.grid();
            let layout = a.layout;
            let nparts = a.parts.len();
            let pairs: Vec<(usize, Vec<Tile>, Vec<Tile>)> = a
                .parts
                .into_iter()
                .zip(b.parts)
                .enumerate()
                .map(|(p, (x, y))| (p, x, y))
                .collect();
            let shape_of = |i: u64, j: u64| {
                let r = br.min(rows - i * br) as usize;
                let c = bc.min(cols - j * bc) as usize;
                (r, c)
            };
            let parts = par_map(pairs, |(p, ta, tb)| {
                let mut xa: HashMap<(u64, u64), Arc<Block>> =
                    ta.into_iter().map(|(i, j, b)| ((i, j), b)).collect();
                let mut xb: HashMap<(u64, u64), Arc<Block>> =
                    tb.into_iter().map(|(i, j, b)| ((i, j), b)).collect();
                let mut keys: Vec<(u64, u64)> = if dense_zero {
                    (0..gi)
                        .flat_map(|i| (0..gj).map(move |j| (i, j)))
                        .filter(|&(i, j)| layout.part_of(i, j, nparts) == p)
                        .collect()
                } else {
                    xa.keys()
                        .chain(xb.keys())
                        .copied()
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect()
                };
                keys.sort_unstable();
                let mut out = Vec::with_capacity(keys.len());
                for (i, j) in keys {
                    let (r, c) = shape_of(i, j);
                    let x = xa
                        .remove(&(i, j))
                        .unwrap_or_else(|| Arc::new(zero_block(r, c)));
                    let y = xb
                        .remove(&(i, j))
                        .unwrap_or_else(|| Arc::new(zero_block(r, c)));
                    let z = kernels::elementwise(op, &x, Operand::Block(&y)).map_err(storage)?;
                    if z.nnz() > 0 {
                        out.push((i, j, Arc::new(z)));
                    }
                }
                Ok(out)
            })?;
            let mut m = BlockMatrix::empty(rows, cols, br, bc, nparts, layout);
            m.parts = parts;
            Ok(m)
        }
        Broadcast::Scalar => {
            let v = vector(&b)?.first().copied().unwrap_or(0.0);
            scalar(a, op, v, false)
        }
        Broadcast::Row | Broadcast::Col => {
            let v = vector(&b)?;
            work.bytes_moved += b.bytes() * a.parts.len().saturating_sub(1) as u64;
            let zero_stays = v.iter().all(|&x| op.apply(0.0, x) == 0.0);
            let (br, bc) = (a.br as usize, a.bc as usize);
            let rowwise = kind == Broadcast::Row;
            if !zero_stays {
                fill_missing(&mut a);
            }
            let parts = par_map(std::mem::take(&mut a.parts), |p| {
                p.into_iter()
                    .map(|(i, j, blk)| {
                        let (r, c) = blk.shape();
                        let operand = if rowwise {
                            Operand::RowVector(&v[j as usize * bc..j as usize * bc + c])
                        } else {
                            Operand::ColVector(&v[i as usize * br..i as usize * br + r])
                        };
                        Ok((
                            i,
                            j,
                            Arc::new(kernels::elementwise(op, &blk, operand).map_err(storage)?),
                        ))
                    })
                    .filter(|t| !matches!(t, Ok((_, _, b)) if b.nnz() == 0))
                    .collect::<Result<Vec<Tile>>>()
            })?;
            a.parts = parts;
            Ok(a)
        }
    }
}

/// A vector (or 1 x 1) repeated to `shape`.
fn expand(v: &BlockMatrix, shape: (u64, u64), block: (u64, u64), n: usize) -> Result<BlockMatrix> {
    let values = vector(v)?;
    let (rows, cols) = shape;
    let d = DenseBlock::from_fn(rows as usize, cols as usize, |i, j| {
        match (v.rows, v.cols) {
            (1, 1) => values[0],
            (1, _) => values[j],
            _ => values[i],
        }
    });
    Ok(BlockMatrix::from_dense(&d, block.0, block.1, n))
}

/// A fused elementwise program's result for one block key, handed to the consumer of
/// [`fused_each`].
pub(crate) enum FusedBlock<'a> {
    /// Computed by the block kernels step by step (a sparse leaf is involved).
    Block(Block),
    /// Every leaf dense here: the consumer runs the program over `leaves` with
    /// [`kernels::fused_dense`], in one pass without intermediates.
    Dense {
        /// The block's `(rows, cols)`.
        shape: (usize, usize),
        /// The leaves' row-major values (zeros for a leaf without this block).
        leaves: Vec<&'a [f64]>,
    },
}

/// An elementwise program over `leaves`, fused: each output block in one pass.
pub(crate) fn fused(
    steps: &[Step],
    leaves: Vec<BlockMatrix>,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    let (geometry, parts) = fused_each(steps, leaves, n, work, |i, j, block| {
        let block = fused_block(steps, block)?;
        Ok((block.nnz() > 0).then(|| (i, j, Arc::new(block))))
    })?;
    let (rows, cols, br, bc, layout) = geometry;
    let mut m = BlockMatrix::empty(rows, cols, br, bc, parts.len(), layout);
    m.parts = parts;
    Ok(m)
}

/// The geometry of a fused program's result: rows, columns, block rows, block columns
/// and layout.
pub(crate) type FusedGeometry = (u64, u64, u64, u64, Layout);

/// Runs the elementwise program `steps` over `leaves` (aligned block for block first),
/// partition by partition in the kernel pool, and hands every output block key that
/// needs computing to `each`; returns what `each` kept, by partition.
pub(crate) fn fused_each<T: Send>(
    steps: &[Step],
    leaves: Vec<BlockMatrix>,
    n: usize,
    work: &mut Work,
    each: impl Fn(u64, u64, FusedBlock<'_>) -> Result<Option<T>> + Sync,
) -> Result<(FusedGeometry, Vec<Vec<T>>)> {
    let mut leaves = leaves.into_iter();
    let Some(mut first) = leaves.next() else {
        return exec_err!("internal: a fused operation without inputs");
    };
    let mut others = Vec::new();
    for l in leaves {
        if l.shape() != first.shape() {
            return Err(crate::error::tessera_error(
                crate::error::ErrorKind::DataException,
                format!(
                    "elementwise: shapes do not conform: {} and {}",
                    dims(first.shape()),
                    dims(l.shape())
                ),
            ));
        }
        others.push(align(&mut first, l, n, work)?);
    }
    // Zero in every leaf gives zero out: only blocks some leaf stores need computing.
    let sparse_safe = fused_sparse_safe(steps, 1 + others.len());
    if !sparse_safe {
        fill_missing(&mut first);
    }
    let (rows, cols, br, bc) = (first.rows, first.cols, first.br, first.bc);
    let layout = first.layout;
    let nparts = first.parts.len();
    let mut inputs: Vec<Vec<Vec<Tile>>> = vec![std::mem::take(&mut first.parts)];
    inputs.extend(others.into_iter().map(|o| o.parts));
    let per_part: Vec<Vec<Vec<Tile>>> = (0..nparts)
        .map(|p| {
            inputs
                .iter_mut()
                .map(|l| std::mem::take(&mut l[p]))
                .collect()
        })
        .collect();
    let parts = par_map(per_part, |leaves| {
        let maps: Vec<HashMap<(u64, u64), Arc<Block>>> = leaves
            .into_iter()
            .map(|t| t.into_iter().map(|(i, j, b)| ((i, j), b)).collect())
            .collect();
        let mut keys: Vec<(u64, u64)> = maps
            .iter()
            .flat_map(|m| m.keys().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        keys.sort_unstable();
        let mut zero_values: Vec<f64> = Vec::new();
        let mut out = Vec::new();
        for (i, j) in keys {
            let r = br.min(rows - i * br) as usize;
            let c = bc.min(cols - j * bc) as usize;
            if zero_values.len() < r * c {
                zero_values.resize(r * c, 0.0);
            }
            let present: Vec<Option<&Arc<Block>>> = maps.iter().map(|m| m.get(&(i, j))).collect();
            out.extend(each(
                i,
                j,
                fused_key(steps, (r, c), &present, &zero_values)?,
            )?);
        }
        Ok(out)
    })?;
    Ok(((rows, cols, br, bc, layout), parts))
}

/// The fused program `steps` on one block key of shape `(r, c)`, whose leaves hold the
/// blocks `present` there (`None` for a leaf without a block at this key, read as
/// zeros). `zeros` holds at least `r * c` zeros.
pub(crate) fn fused_key<'a>(
    steps: &[Step],
    (r, c): (usize, usize),
    present: &[Option<&'a Arc<Block>>],
    zeros: &'a [f64],
) -> Result<FusedBlock<'a>> {
    let all_dense = present
        .iter()
        .all(|b| b.is_none_or(|b| matches!(b.as_ref(), Block::Dense(_))));
    if all_dense {
        let leaves = present
            .iter()
            .map(|b| match b.map(|b| b.as_ref()) {
                Some(Block::Dense(d)) => d.values(),
                _ => &zeros[..r * c],
            })
            .collect();
        return Ok(FusedBlock::Dense {
            shape: (r, c),
            leaves,
        });
    }
    let mut slots: Vec<Arc<Block>> = present
        .iter()
        .map(|b| b.cloned().unwrap_or_else(|| Arc::new(zero_block(r, c))))
        .collect();
    for st in steps {
        let z = match st {
            Step::Binary(op, x, y) => {
                kernels::elementwise(*op, &slots[*x], Operand::Block(&slots[*y]))
                    .map_err(storage)?
            }
            Step::Scalar { op, value, left, x } => {
                if *left {
                    kernels::scalar_elementwise_left(*op, *value, &slots[*x])
                } else if *op == BinaryOp::Pow {
                    kernels::pow(&slots[*x], *value)
                } else {
                    kernels::elementwise(*op, &slots[*x], Operand::Scalar(*value))
                        .map_err(storage)?
                }
            }
            Step::Unary(op, x) => kernels::unary(*op, &slots[*x]),
        };
        slots.push(Arc::new(z));
    }
    match slots.pop() {
        Some(z) if !steps.is_empty() => Ok(FusedBlock::Block(
            Arc::try_unwrap(z).unwrap_or_else(|shared| shared.as_ref().clone()),
        )),
        _ => exec_err!("internal: a fused elementwise program without steps"),
    }
}

/// A fused program's result for one block key as a block, in the format the block
/// kernels would have given it.
pub(crate) fn fused_block(steps: &[Step], block: FusedBlock<'_>) -> Result<Block> {
    Ok(match block {
        FusedBlock::Block(b) => b,
        FusedBlock::Dense { shape, leaves } => {
            let mut values = Vec::with_capacity(shape.0 * shape.1);
            kernels::fused_dense(steps, &leaves, |_, chunk| values.extend_from_slice(chunk));
            Block::Dense(
                tessera_storage::DenseBlock::new(shape.0, shape.1, values).map_err(storage)?,
            )
            .into_preferred_format()
        }
    })
}

/// True when the program `steps` over `leaves` leaves gives zero where every leaf is
/// zero, so only the blocks some leaf stores need computing.
pub(crate) fn fused_sparse_safe(steps: &[Step], leaves: usize) -> bool {
    eval_scalar(steps, &vec![0.0; leaves]) == 0.0
}

/// The fused program on one cell.
fn eval_scalar(steps: &[Step], leaves: &[f64]) -> f64 {
    let mut slots = leaves.to_vec();
    for st in steps {
        let z = match st {
            Step::Binary(op, x, y) => op.apply(slots[*x], slots[*y]),
            Step::Scalar { op, value, left, x } => {
                if *left {
                    op.apply(*value, slots[*x])
                } else {
                    op.apply(slots[*x], *value)
                }
            }
            Step::Unary(op, x) => op.apply(slots[*x]),
        };
        slots.push(z);
    }
    slots.pop().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------
// Reductions and reshaping

/// The larger (`max`) or smaller of `x` and `y`, NaN if either is: how `min` and `max`
/// of a matrix combine cells and partials.
pub(crate) fn extreme(x: f64, y: f64, max: bool) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if max {
        x.max(y)
    } else {
        x.min(y)
    }
}

/// A reduction; the result is collected in partition 0.
pub(crate) fn reduce(
    a: BlockMatrix,
    r: Reduction,
    n: usize,
    work: &mut Work,
) -> Result<BlockMatrix> {
    let (rows, cols) = a.shape();
    let cells = rows as f64 * cols as f64;
    let stored_cells: u64 = a.tiles().map(|t| (t.2.rows() * t.2.cols()) as u64).sum();
    let has_implicit_zeros = stored_cells < rows * cols;
    let moved: u64 = a.parts.iter().skip(1).map(|p| p.len() as u64 * 16).sum();
    work.bytes_moved += moved;
    let one = |v: f64| -> Result<BlockMatrix> {
        let d = DenseBlock::new(1, 1, vec![v]).map_err(storage)?;
        Ok(BlockMatrix::from_tiles(
            (1, 1),
            (1, 1),
            [(0, 0, Arc::new(Block::Dense(d)))],
            n,
            Layout::Single,
        ))
    };
    match r {
        Reduction::Sum => one(a
            .tiles()
            .map(|t| kernels::sum(&t.2))
            .fold(0.0, |x, y| x + y)),
        Reduction::Nnz => one(a.nnz() as f64),
        Reduction::Min | Reduction::Max => {
            let pick = |x: f64, y: f64| extreme(x, y, r == Reduction::Max);
            let mut acc: Option<f64> = if has_implicit_zeros && cells > 0.0 {
                Some(0.0)
            } else {
                None
            };
            for t in a.tiles() {
                let v = if r == Reduction::Min {
                    kernels::min(&t.2)
                } else {
                    kernels::max(&t.2)
                };
                if let Some(v) = v {
                    acc = Some(acc.map_or(v, |a| pick(a, v)));
                }
            }
            one(acc.unwrap_or(f64::NAN))
        }
        Reduction::RowSums | Reduction::RowMeans => {
            let mut sums = vec![0.0; rows as usize];
            for (i, _, b) in a.tiles() {
                let r0 = (i * a.br) as usize;
                for (k, s) in kernels::row_sums(b).into_iter().enumerate() {
                    sums[r0 + k] += s;
                }
            }
            if r == Reduction::RowMeans {
                sums.iter_mut().for_each(|s| *s /= cols as f64);
            }
            let d = DenseBlock::new(rows as usize, 1, sums).map_err(storage)?;
            Ok(BlockMatrix::from_dense(&d, a.br, 1, n))
        }
        Reduction::ColSums | Reduction::ColMeans => {
            let mut sums = vec![0.0; cols as usize];
            for (_, j, b) in a.tiles() {
                let c0 = (j * a.bc) as usize;
                for (k, s) in kernels::col_sums(b).into_iter().enumerate() {
                    sums[c0 + k] += s;
                }
            }
            if r == Reduction::ColMeans {
                sums.iter_mut().for_each(|s| *s /= rows as f64);
            }
            let d = DenseBlock::new(1, cols as usize, sums).map_err(storage)?;
            Ok(BlockMatrix::from_dense(&d, 1, a.bc, n))
        }
    }
}

/// `diag(a)`.
pub(crate) fn diag(a: BlockMatrix, n: usize) -> Result<BlockMatrix> {
    let (rows, cols) = a.shape();
    if rows == 1 || cols == 1 {
        let len = rows.max(cols);
        let b = if cols == 1 { a.br } else { a.bc };
        let mut sink = CellSink::new(len, len, b, b);
        for_each_cell(&a, |i, j, v| sink.push(i.max(j), i.max(j), v))?;
        return Ok(sink.finish(n));
    }
    if rows != cols {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "diag: the matrix must be square or a vector, it is {}",
                dims(a.shape())
            ),
        ));
    }
    let mut sink = CellSink::new(rows, 1, a.br, 1);
    for_each_cell(
        &a,
        |i, j, v| if i == j { sink.push(i, 0, v) } else { Ok(()) },
    )?;
    Ok(sink.finish(n))
}

/// `slice(a, r0, r1, c0, c1)`, half-open ranges.
pub(crate) fn slice(
    a: BlockMatrix,
    (r0, r1, c0, c1): (u64, u64, u64, u64),
    n: usize,
) -> Result<BlockMatrix> {
    if r0 >= r1 || c0 >= c1 || r1 > a.rows || c1 > a.cols {
        return plan_err!(
            "slice: rows {r0}:{r1} and columns {c0}:{c1} are not a non-empty part of a {} matrix (ranges are half-open, from 0)",
            dims(a.shape())
        );
    }
    let mut sink = CellSink::new(r1 - r0, c1 - c0, a.br, a.bc);
    for (bi, bj, b) in a.tiles() {
        let (g0, h0) = (bi * a.br, bj * a.bc);
        let (g1, h1) = (g0 + b.rows() as u64, h0 + b.cols() as u64);
        if g1 <= r0 || g0 >= r1 || h1 <= c0 || h0 >= c1 {
            continue;
        }
        b.try_for_each_nonzero_at((g0, h0), |i, j, v| {
            if (r0..r1).contains(&i) && (c0..c1).contains(&j) {
                sink.push(i - r0, j - c0, v)
            } else {
                Ok(())
            }
        })?;
    }
    Ok(sink.finish(n))
}

/// `cbind(a, b)` (`rows = false`) or `rbind(a, b)`.
pub(crate) fn bind(
    mut a: BlockMatrix,
    mut b: BlockMatrix,
    rbind: bool,
    n: usize,
) -> Result<BlockMatrix> {
    let name = if rbind { "rbind" } else { "cbind" };
    if rbind {
        grow(&mut a, 0, b.cols);
        grow(&mut b, 0, a.cols);
    } else {
        grow(&mut a, b.rows, 0);
        grow(&mut b, a.rows, 0);
    }
    let conform = if rbind {
        a.cols == b.cols
    } else {
        a.rows == b.rows
    };
    if !conform {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "{name}: shapes do not conform: {} and {} ({} counts differ)",
                dims(a.shape()),
                dims(b.shape()),
                if rbind { "column" } else { "row" }
            ),
        ));
    }
    let (rows, cols) = if rbind {
        (a.rows + b.rows, a.cols)
    } else {
        (a.rows, a.cols + b.cols)
    };
    let aligned = (a.br, a.bc) == (b.br, b.bc)
        && if rbind {
            a.rows.is_multiple_of(a.br)
        } else {
            a.cols.is_multiple_of(a.bc)
        };
    if aligned {
        // Whole blocks: b's keys shift by a's block count.
        let shift = if rbind { a.rows / a.br } else { a.cols / a.bc };
        let tiles = a.tiles().cloned().chain(b.tiles().map(|(i, j, blk)| {
            if rbind {
                (i + shift, *j, blk.clone())
            } else {
                (*i, j + shift, blk.clone())
            }
        }));
        return Ok(BlockMatrix::from_tiles(
            (rows, cols),
            (a.br, a.bc),
            tiles.collect::<Vec<_>>(),
            n,
            Layout::Hash2,
        ));
    }
    let mut sink = CellSink::new(rows, cols, a.br, a.bc);
    for_each_cell(&a, |i, j, v| sink.push(i, j, v))?;
    let (dr, dc) = if rbind { (a.rows, 0) } else { (0, a.cols) };
    for_each_cell(&b, |i, j, v| sink.push(i + dr, j + dc, v))?;
    Ok(sink.finish(n))
}

// ---------------------------------------------------------------------------------
// Dense solvers (faer), on one task

fn faer_of(d: &DenseBlock) -> faer::MatRef<'_, f64> {
    faer::MatRef::from_row_major_slice(d.values(), d.rows(), d.cols())
}

fn from_faer(m: faer::MatRef<'_, f64>, n: usize) -> BlockMatrix {
    let d = DenseBlock::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)]);
    let (br, bc) = super::auto_block(m.nrows() as u64, m.ncols() as u64);
    BlockMatrix::from_dense(&d, br, bc, n)
}

fn square(name: &str, a: &BlockMatrix) -> Result<()> {
    if a.rows != a.cols {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "{name}: the matrix must be square, it is {}",
                dims(a.shape())
            ),
        ));
    }
    Ok(())
}

fn lu_checked(name: &str, a: &DenseBlock) -> Result<faer::linalg::solvers::PartialPivLu<f64>> {
    let lu = faer_of(a).partial_piv_lu();
    let u = lu.U();
    let scale = (0..u.nrows()).map(|i| u[(i, i)].abs()).fold(0.0, f64::max);
    let singular = (0..u.nrows()).any(|i| {
        let x = u[(i, i)].abs();
        !x.is_finite() || x <= scale * f64::EPSILON * u.nrows() as f64
    });
    if singular || scale == 0.0 {
        return Err(tessera_error(
            ErrorKind::SingularMatrix,
            format!("{name}: the matrix is singular (or numerically singular)"),
        ));
    }
    Ok(lu)
}

/// `solve(a, b)`.
pub(crate) fn solve(a: BlockMatrix, mut b: BlockMatrix, n: usize) -> Result<BlockMatrix> {
    square("solve", &a)?;
    grow(&mut b, a.rows, 0);
    if a.rows != b.rows {
        return Err(crate::error::tessera_error(
            crate::error::ErrorKind::DataException,
            format!(
                "solve: shapes do not conform: {} and {} (row counts differ)",
                dims(a.shape()),
                dims(b.shape())
            ),
        ));
    }
    use faer::linalg::solvers::Solve;
    let (ad, bd) = (a.to_dense()?, b.to_dense()?);
    let lu = lu_checked("solve", &ad)?;
    let x = lu.solve(faer_of(&bd));
    Ok(from_faer(x.as_ref(), n))
}

/// `inv(a)`.
pub(crate) fn inv(a: BlockMatrix, n: usize) -> Result<BlockMatrix> {
    square("inv", &a)?;
    use faer::linalg::solvers::DenseSolveCore;
    let ad = a.to_dense()?;
    let lu = lu_checked("inv", &ad)?;
    Ok(from_faer(lu.inverse().as_ref(), n))
}

/// `cholesky(a)`: lower-triangular `l` with `l t(l) = a`.
pub(crate) fn cholesky(a: BlockMatrix, n: usize) -> Result<BlockMatrix> {
    square("cholesky", &a)?;
    let ad = a.to_dense()?;
    let m = ad.rows();
    let tol = 1e-10 * ad.values().iter().fold(0.0f64, |x, y| x.max(y.abs()));
    for i in 0..m {
        for j in 0..i {
            if (ad.get(i, j) - ad.get(j, i)).abs() > tol {
                return Err(crate::error::tessera_error(
                    crate::error::ErrorKind::DataException,
                    format!(
                        "cholesky: the matrix is not symmetric (cell ({i}, {j}) is {} but ({j}, {i}) is {})",
                        ad.get(i, j),
                        ad.get(j, i)
                    ),
                ));
            }
        }
    }
    match faer_of(&ad).llt(faer::Side::Lower) {
        Ok(llt) => Ok(from_faer(llt.L(), n)),
        Err(_) => Err(tessera_error(
            ErrorKind::SingularMatrix,
            "cholesky: the matrix is not positive definite",
        )),
    }
}
