//! `t(x) x` for a dense row-major `x` with register-tiled AVX-512 and AVX2/FMA
//! micro-kernels.
//!
//! The rest of the kernels leave vectorization to the compiler (see [`super::simd`]); this
//! one does not, because `t(X) X` of a tall, skinny `X` (a million rows, a hundred
//! columns) is where a Gram matrix is spent, and there the compiler's code and faer's
//! triangular GEMM both stop well short of the FMA units' peak: with 12 accumulators,
//! 3 operand vectors and a broadcast, the 16 AVX2 registers are one short of what LLVM
//! allocates, and the spill it adds sits on an accumulator's dependency chain.
//!
//! The method, per chunk of [`KC`] rows of `x`, for vectors of `L` doubles (8 with
//! AVX-512, 4 with AVX2):
//! - the rows are packed into panels of `L` columns, each panel `rows x L` contiguous (the
//!   last one zero-padded), so every operand the micro-kernel reads is a sequential
//!   stream that stays in L1/L2;
//! - the upper triangle of the (padded) `n x n` result is covered by tiles `L` rows high
//!   and 3 panels wide that start on the diagonal: a tile broadcasts the `L` entries of
//!   panel `i` in turn and multiplies them with the `3L` entries of panels `j..j + 3`
//!   (`j >= i`), keeping the `L x 3L` sums in registers for the whole chunk (24 of the 32
//!   AVX-512 registers; 12 of the 16 AVX2 ones). Only the `L x L` block on the diagonal is
//!   partly wasted;
//! - a row of tiles that does not end on a multiple of 3 panels ends with a tile 1 or 2
//!   panels wide;
//! - while the tiles run, they prefetch the next chunk of `x` into L2, a line per row
//!   they multiply, so packing it reads from L2 rather than from memory.
//!
//! On the 2-core AVX-512 machine this was written on, 1e6 x 100 in blocks of 10,000 rows
//! takes 0.094 s on 2 threads (about 107 useful GFLOP/s, 60 % of the FMA peak counting
//! the wasted diagonal and padding products); the AVX2 kernel 0.16 s.
//!
//! The AVX-512 tiles are intrinsics: with 32 registers the compiler keeps all 28 values
//! in registers. The AVX2 4 x 12 tile is assembly, so that it uses exactly the 16.
//!
//! The caller owns the result: [`Syrk::gram_upper`] adds into a padded `np x np`
//! accumulator ([`Syrk::padded`]), so partial sums over row ranges can be added up before
//! [`Syrk::upper_to_lower`] moves the triangle into an `n x n` block.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::simd::{Isa, Level};

/// Rows of `x` packed and multiplied at a time: a tile streams 4 panels of `KC` rows
/// (32 KiB with AVX2, 64 KiB with AVX-512) from L1/L2, and the whole packed chunk (200 KiB
/// for 100 columns) stays in L2. (128 to 512 measured the same.)
const KC: usize = 256;

/// Doubles in a 64-byte cache line. The packed panels start on a line, and each is one
/// line longer than its rows need: panels `rows x L` long would lie a multiple of 4 KiB
/// apart, so the 13 to 25 of them that packing writes row by row would fall in the same
/// L1 sets and evict each other (packing took a third of the time that way).
const LINE: usize = 8;

/// Values from one panel to the next for `rows` rows of `lanes` doubles.
fn panel_stride(rows: usize, lanes: usize) -> usize {
    rows * lanes + LINE
}

/// A micro-kernel the CPU can run; made only from an [`Isa`], which proves the support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syrk {
    /// 4 x 12 tiles of 256-bit vectors (AVX2 and FMA).
    Avx2,
    /// 8 x 24 tiles of 512-bit vectors (AVX-512F).
    Avx512,
}

impl Syrk {
    /// The widest kernel this CPU runs, or `None` where there is none (not x86-64, or no
    /// AVX2 and FMA).
    pub(crate) fn detect() -> Option<Syrk> {
        Self::for_isa(Isa::best())
    }

    /// The kernel for `isa`, if there is one.
    pub(crate) fn for_isa(isa: Isa) -> Option<Syrk> {
        match isa.level() {
            Level::Baseline => None,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Some(Syrk::Avx2),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Some(Syrk::Avx512),
        }
    }

    /// Doubles per vector: the width of a panel.
    fn lanes(self) -> usize {
        match self {
            Syrk::Avx2 => 4,
            Syrk::Avx512 => 8,
        }
    }

    /// The padded width of the accumulator for `n` columns: `n` rounded up to a panel.
    pub(crate) fn padded(self, n: usize) -> usize {
        n.div_ceil(self.lanes()) * self.lanes()
    }

    /// Adds the upper triangle (and the diagonal panel blocks whole) of `t(x) x` into
    /// `acc`, a row-major `np x np` matrix with `np = self.padded(n)`, for the row-major
    /// `rows x n` `x`.
    pub(crate) fn gram_upper(self, x: &[f64], n: usize, acc: &mut [f64]) {
        let np = self.padded(n);
        assert!(
            n > 0 && x.len().is_multiple_of(n),
            "x is not whole rows of {n} columns"
        );
        assert_eq!(acc.len(), np * np, "the accumulator is not {np} x {np}");
        let panels = np / self.lanes();
        let most_rows = KC.min(x.len() / n);
        let mut buf = vec![0.0f64; panels * panel_stride(most_rows, self.lanes()) + LINE];
        // The tiles load the panels with aligned loads (`vmovapd`), which the dev profile
        // runs without the checks `loadu` carries there.
        let line_start = buf.as_ptr().align_offset(64);
        assert!(
            line_start < LINE,
            "an f64 lies within 7 values of a cache line"
        );
        let pack = &mut buf[line_start..];
        let step = KC * n;
        let mut start = 0;
        while start < x.len() {
            let end = (start + step).min(x.len());
            // The chunk after this one is prefetched into L2 while this one is multiplied.
            let (chunk, next) = (&x[start..end], &x[end..(end + step).min(x.len())]);
            // SAFETY: a `Syrk` is made only from an `Isa` at its level, which proves the CPU
            // has its instructions; `chunk` is whole rows of `n` columns, `pack` holds
            // `panels` panels for up to `KC` rows, and `acc` is `np x np` (checked above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match self {
                    Syrk::Avx2 => avx2_chunk(chunk, next, n, pack, acc),
                    Syrk::Avx512 => avx512_chunk(chunk, next, n, pack, acc),
                }
            }
            start = end;
        }
    }

    /// Writes the upper triangle of the padded `acc` into the lower triangle of the
    /// row-major `n x n` `out` (`out[q][p] = acc[p][q]` for `p <= q < n`).
    pub(crate) fn upper_to_lower(self, acc: &[f64], n: usize, out: &mut [f64]) {
        let np = self.padded(n);
        for p in 0..n {
            for q in p..n {
                out[q * n + p] = acc[p * np + q];
            }
        }
    }
}

/// Packs the row-major `rows x n` `x` into panels of `L` columns, `stride` values apart:
/// panel `j` holds columns `L j..L j + L` of every row, row after row, zero beyond `n`.
/// Inlined into the callers' `target_feature` functions, so each whole panel row is one
/// vector load and store.
///
/// # Safety
/// `x.len()` is a multiple of `n > 0`, `stride >= rows * L`, and `pack` holds
/// `n.div_ceil(L)` panels of `stride` values.
#[inline(always)]
unsafe fn pack_panels<const L: usize>(x: &[f64], n: usize, stride: usize, pack: &mut [f64]) {
    let rows = x.len() / n;
    let (full, rem) = (n / L, n % L);
    debug_assert!(stride >= rows * L && pack.len() >= stride * n.div_ceil(L));
    let (src, dst) = (x.as_ptr(), pack.as_mut_ptr());
    // SAFETY: row `r < rows` of `x` is `src[r n..r n + n]`; panel `j <= full` row `r` is
    // `dst[j stride + L r..][..L]`, inside `pack` by the caller's contract.
    unsafe {
        for r in 0..rows {
            let row = src.add(r * n);
            for j in 0..full {
                std::ptr::copy_nonoverlapping(row.add(L * j), dst.add(j * stride + L * r), L);
            }
            if rem > 0 {
                let d = dst.add(full * stride + L * r);
                for k in 0..L {
                    *d.add(k) = if k < rem { *row.add(full * L + k) } else { 0.0 };
                }
            }
        }
    }
}

/// Calls `tile(a, b, c, width, pf)` for every tile of the upper triangle of a chunk of
/// `rows` rows packed in `panels` panels of `stride` values, `width` panels at a time (3,
/// then 1 or 2 at the end of a row); `a` and `b` point at panels `i` and `j`, `c` at the
/// accumulator's entry `(L i, L j)`. A tile prefetches one cache line per row it
/// multiplies, from `pf` on: the tiles take `next` (the chunk to be packed next) in turn,
/// and once it is covered they get a line they already read.
///
/// # Safety
/// `pk` holds `panels * stride` values and `cp` an `np x np` matrix, `np = L * panels`.
#[inline(always)]
unsafe fn for_each_tile(
    pk: *const f64,
    cp: *mut f64,
    (lanes, panels, stride, rows): (usize, usize, usize, usize),
    next: &[f64],
    mut tile: impl FnMut(*const f64, *const f64, *mut f64, usize, *const f64),
) {
    let np = lanes * panels;
    let mut prefetched = 0;
    for i in 0..panels {
        let mut j = i;
        while j < panels {
            let width = (panels - j).min(3);
            // SAFETY: `i <= j < j + width <= panels`, so both panels lie in `pk`, and the
            // tile's rows `L i..L i + L` and columns `L j..L (j + width)` in `cp`.
            unsafe {
                let a = pk.add(i * stride);
                let pf = next.get(prefetched..).map_or(a, <[f64]>::as_ptr);
                tile(
                    a,
                    pk.add(j * stride),
                    cp.add(lanes * i * np + lanes * j),
                    width,
                    pf,
                )
            };
            prefetched += rows * LINE;
            j += width;
        }
    }
}

/// One chunk of at most [`KC`] rows with AVX2: pack, then every tile.
///
/// # Safety
/// The CPU has AVX2 and FMA; `x.len()` is a multiple of `n` and at most `KC * n`; `pack`
/// starts on a cache line and holds `n.div_ceil(4)` panels of `panel_stride(rows, 4)`
/// values; `acc.len() == padded(n)^2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_chunk(x: &[f64], next: &[f64], n: usize, pack: &mut [f64], acc: &mut [f64]) {
    let rows = x.len() / n;
    let panels = n.div_ceil(4);
    let stride = panel_stride(rows, 4);
    let ldc = panels * 4;
    // SAFETY: the caller's contract, as packing, `for_each_tile` and the tiles need it.
    unsafe {
        pack_panels::<4>(x, n, stride, pack);
        for_each_tile(
            pack.as_ptr(),
            acc.as_mut_ptr(),
            (4, panels, stride, rows),
            next,
            |a, b, c, w, pf| match w {
                3 => tile_4x12(a, b, stride, rows, c, ldc, pf),
                2 => tile_4xv::<2>(a, b, stride, rows, c, ldc, pf),
                _ => tile_4xv::<1>(a, b, stride, rows, c, ldc, pf),
            },
        )
    };
}

/// One chunk of at most [`KC`] rows with AVX-512: pack, then every tile.
///
/// # Safety
/// As [`avx2_chunk`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_chunk(x: &[f64], next: &[f64], n: usize, pack: &mut [f64], acc: &mut [f64]) {
    let rows = x.len() / n;
    let panels = n.div_ceil(8);
    let stride = panel_stride(rows, 8);
    let ldc = panels * 8;
    // SAFETY: the caller's contract, as packing, `for_each_tile` and the tiles need it.
    unsafe {
        pack_panels::<8>(x, n, stride, pack);
        for_each_tile(
            pack.as_ptr(),
            acc.as_mut_ptr(),
            (8, panels, stride, rows),
            next,
            |a, b, c, w, pf| match w {
                3 => tile_8xv::<3>(a, b, stride, rows, c, ldc, pf),
                2 => tile_8xv::<2>(a, b, stride, rows, c, ldc, pf),
                _ => tile_8xv::<1>(a, b, stride, rows, c, ldc, pf),
            },
        )
    };
}

/// `c[r][0..8V] += sum_k a[k][r] * (b0 | .. | b(V-1))[k][0..8]` for `r < 8`, where `a` and
/// `bv = b + v stride` are packed `rows x 8` panels and `c` is a row-major block with `ldc`
/// values per row: `8V` sums in registers (24 for `V = 3`), `V` loads and 8 broadcasts
/// per row of the panels. Prefetches the line at `pf + 8 k` into L2 for each row `k` (a
/// hint: `pf` may point anywhere).
///
/// # Safety
/// The CPU has AVX-512F; `a` and the `V` panels of `b` hold `rows x 8` values, each from
/// a 64-byte boundary; `c` points at 8 rows of at least `8V` values, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_8xv<const V: usize>(
    a: *const f64,
    b: *const f64,
    stride: usize,
    rows: usize,
    c: *mut f64,
    ldc: usize,
    pf: *const f64,
) {
    let mut sums = [[_mm512_setzero_pd(); V]; 8];
    // The loop moves pointers rather than computing offsets, and loads with aligned
    // intrinsics only, so that the dev profile's overflow and pointer checks stay out of it
    // (with them it ran at 60 % of the speed).
    let (mut a, mut pf) = (a, pf);
    let mut bp = [b; V];
    for (v, bp) in bp.iter_mut().enumerate() {
        *bp = b.wrapping_add(v * stride);
    }
    // SAFETY: the caller's contract: `a` and each `bp` move through `rows` rows of 8
    // values of their panels; prefetching reads nothing.
    unsafe {
        for _ in 0..rows {
            let mut bv = [_mm512_setzero_pd(); V];
            for (bv, bp) in bv.iter_mut().zip(bp.iter_mut()) {
                *bv = _mm512_load_pd(*bp);
                *bp = bp.wrapping_add(8);
            }
            _mm_prefetch::<_MM_HINT_T1>(pf as *const i8);
            pf = pf.wrapping_add(8);
            for (r, sums) in sums.iter_mut().enumerate() {
                let av = _mm512_broadcastsd_pd(_mm_load_sd(a.wrapping_add(r)));
                for (s, bv) in sums.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_pd(av, *bv, *s);
                }
            }
            a = a.wrapping_add(8);
        }
        for (r, sums) in sums.iter().enumerate() {
            for (v, s) in sums.iter().enumerate() {
                let p = c.add(r * ldc + 8 * v);
                _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), *s));
            }
        }
    }
}

/// `c[r][0..12] += sum_k a[k][r] * (b0 | b1 | b2)[k][0..4]` for `r < 4`, where `a` and
/// `b0 = b`, `b1 = b + stride`, `b2 = b + 2 stride` are packed `rows x 4` panels and `c`
/// is a row-major block with `ldc` values per row. Written in assembly so that the 12
/// sums, the 3 `b` vectors and the broadcast use exactly the 16 registers. Prefetches
/// the line at `pf + 8 k` into L2 for each row `k`, as [`tile_8xv`] does.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` and the three `b` panels hold `rows x 4` values; `c`
/// points at 4 rows of at least 12 values, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_4x12(
    a: *const f64,
    b: *const f64,
    stride: usize,
    rows: usize,
    c: *mut f64,
    ldc: usize,
    pf: *const f64,
) {
    if rows == 0 {
        return;
    }
    // SAFETY: the caller's contract; the loop reads `rows` 32-byte steps of `a` and of the
    // three `b` panels, then adds into and stores 4 rows of 12 values of `c`.
    unsafe {
        std::arch::asm!(
            "vxorpd ymm0, ymm0, ymm0",
            "vxorpd ymm1, ymm1, ymm1",
            "vxorpd ymm2, ymm2, ymm2",
            "vxorpd ymm3, ymm3, ymm3",
            "vxorpd ymm4, ymm4, ymm4",
            "vxorpd ymm5, ymm5, ymm5",
            "vxorpd ymm6, ymm6, ymm6",
            "vxorpd ymm7, ymm7, ymm7",
            "vxorpd ymm8, ymm8, ymm8",
            "vxorpd ymm9, ymm9, ymm9",
            "vxorpd ymm10, ymm10, ymm10",
            "vxorpd ymm11, ymm11, ymm11",
            "2:",
            "vmovupd ymm12, [{b}]",
            "vmovupd ymm13, [{b} + {bs}]",
            "vmovupd ymm14, [{b} + {bs}*2]",
            "vbroadcastsd ymm15, [{a}]",
            "vfmadd231pd ymm0, ymm15, ymm12",
            "vfmadd231pd ymm1, ymm15, ymm13",
            "vfmadd231pd ymm2, ymm15, ymm14",
            "vbroadcastsd ymm15, [{a} + 8]",
            "vfmadd231pd ymm3, ymm15, ymm12",
            "vfmadd231pd ymm4, ymm15, ymm13",
            "vfmadd231pd ymm5, ymm15, ymm14",
            "vbroadcastsd ymm15, [{a} + 16]",
            "vfmadd231pd ymm6, ymm15, ymm12",
            "vfmadd231pd ymm7, ymm15, ymm13",
            "vfmadd231pd ymm8, ymm15, ymm14",
            "vbroadcastsd ymm15, [{a} + 24]",
            "vfmadd231pd ymm9, ymm15, ymm12",
            "vfmadd231pd ymm10, ymm15, ymm13",
            "vfmadd231pd ymm11, ymm15, ymm14",
            "prefetcht1 [{pf}]",
            "add {pf}, 64",
            "add {a}, 32",
            "add {b}, 32",
            "dec {k}",
            "jnz 2b",
            "vaddpd ymm0, ymm0, [{c}]",
            "vmovupd [{c}], ymm0",
            "vaddpd ymm1, ymm1, [{c} + 32]",
            "vmovupd [{c} + 32], ymm1",
            "vaddpd ymm2, ymm2, [{c} + 64]",
            "vmovupd [{c} + 64], ymm2",
            "add {c}, {ldc}",
            "vaddpd ymm3, ymm3, [{c}]",
            "vmovupd [{c}], ymm3",
            "vaddpd ymm4, ymm4, [{c} + 32]",
            "vmovupd [{c} + 32], ymm4",
            "vaddpd ymm5, ymm5, [{c} + 64]",
            "vmovupd [{c} + 64], ymm5",
            "add {c}, {ldc}",
            "vaddpd ymm6, ymm6, [{c}]",
            "vmovupd [{c}], ymm6",
            "vaddpd ymm7, ymm7, [{c} + 32]",
            "vmovupd [{c} + 32], ymm7",
            "vaddpd ymm8, ymm8, [{c} + 64]",
            "vmovupd [{c} + 64], ymm8",
            "add {c}, {ldc}",
            "vaddpd ymm9, ymm9, [{c}]",
            "vmovupd [{c}], ymm9",
            "vaddpd ymm10, ymm10, [{c} + 32]",
            "vmovupd [{c} + 32], ymm10",
            "vaddpd ymm11, ymm11, [{c} + 64]",
            "vmovupd [{c} + 64], ymm11",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            bs = in(reg) stride * 8,
            k = inout(reg) rows => _,
            pf = inout(reg) pf => _,
            c = inout(reg) c => _,
            ldc = in(reg) ldc * 8,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// [`tile_4x12`] for the last `4 x 4V` tile of a row (`V` is 1 or 2).
///
/// # Safety
/// As [`tile_4x12`], with `V` panels of `b` and rows of at least `4V` values in `c`, and
/// the panels starting on 32-byte boundaries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_4xv<const V: usize>(
    a: *const f64,
    b: *const f64,
    stride: usize,
    rows: usize,
    c: *mut f64,
    ldc: usize,
    pf: *const f64,
) {
    let mut sums = [[_mm256_setzero_pd(); V]; 4];
    // Moving pointers, as in [`tile_8xv`].
    let (mut a, mut pf) = (a, pf);
    let mut bp = [b; V];
    for (v, bp) in bp.iter_mut().enumerate() {
        *bp = b.wrapping_add(v * stride);
    }
    // SAFETY: the caller's contract: `a` and each `bp` move through `rows` rows of 4
    // values of their panels; prefetching reads nothing.
    unsafe {
        for _ in 0..rows {
            let mut bv = [_mm256_setzero_pd(); V];
            for (bv, bp) in bv.iter_mut().zip(bp.iter_mut()) {
                *bv = _mm256_load_pd(*bp);
                *bp = bp.wrapping_add(4);
            }
            _mm_prefetch::<_MM_HINT_T1>(pf as *const i8);
            pf = pf.wrapping_add(8);
            for (r, sums) in sums.iter_mut().enumerate() {
                let av = _mm256_broadcastsd_pd(_mm_load_sd(a.wrapping_add(r)));
                for (s, bv) in sums.iter_mut().zip(&bv) {
                    *s = _mm256_fmadd_pd(av, *bv, *s);
                }
            }
            a = a.wrapping_add(4);
        }
        for (r, sums) in sums.iter().enumerate() {
            for (v, s) in sums.iter().enumerate() {
                let p = c.add(r * ldc + 4 * v);
                _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), *s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sum_k x[k][p] x[k][q]`, one product at a time.
    fn naive_gram(x: &[f64], n: usize) -> Vec<f64> {
        let mut g = vec![0.0; n * n];
        for row in x.chunks_exact(n) {
            for p in 0..n {
                for q in 0..n {
                    g[p * n + q] += row[p] * row[q];
                }
            }
        }
        g
    }

    #[test]
    fn every_micro_kernel_matches_a_naive_gram_matrix_for_every_edge() {
        let kernels: Vec<Syrk> = Isa::available()
            .into_iter()
            .filter_map(Syrk::for_isa)
            .collect();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        for syrk in kernels {
            // Widths around the panels (4 and 8 columns) and the 3-panel tiles; row counts
            // around the chunk of KC rows, and none.
            for n in [
                1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 16, 17, 23, 24, 25, 33, 100, 101,
            ] {
                for m in [0, 1, 3, KC - 1, KC, KC + 1, 2 * KC + 7] {
                    let x: Vec<f64> = (0..m * n)
                        .map(|t| ((t * 7919 % 1013) as f64 - 506.0) / 97.0)
                        .collect();
                    let np = syrk.padded(n);
                    let mut acc = vec![0.0; np * np];
                    syrk.gram_upper(&x, n, &mut acc);
                    // A second call adds to the first.
                    syrk.gram_upper(&x, n, &mut acc);
                    let mut got = vec![f64::NAN; n * n];
                    syrk.upper_to_lower(&acc, n, &mut got);
                    let want = naive_gram(&x, n);
                    for q in 0..n {
                        for p in 0..=q {
                            let (g, w) = (got[q * n + p], 2.0 * want[q * n + p]);
                            assert!(
                                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                                "{syrk:?}: n {n} m {m} at ({q}, {p}): {g} != {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
