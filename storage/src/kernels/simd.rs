//! Runtime instruction-set dispatch for the hand-written loops.
//!
//! The loops are plain Rust over slices; [`multiversion!`] compiles each one three times
//! (baseline x86-64, AVX2 and AVX-512) and picks the widest the CPU has at run time, so a
//! portable release build still vectorizes with AVX on the machines that have it. No
//! intrinsics: the compiler vectorizes the same source for every target, and a test runs
//! every available version against the baseline one.

use std::sync::OnceLock;

/// An instruction set a multiversioned loop can run with. Only [`Isa::best`] and
/// [`Isa::available`] make values, so holding one proves the CPU supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa(Level);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU supports (detected once).
    pub(crate) fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Self::available()
                .last()
                .copied()
                .unwrap_or(Isa(Level::Baseline))
        })
    }

    /// Every instruction set this CPU supports, narrowest first.
    pub(crate) fn available() -> Vec<Isa> {
        #[allow(unused_mut, reason = "only x86-64 has more than the baseline")]
        let mut out = vec![Isa(Level::Baseline)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                out.push(Isa(Level::Avx2));
                if std::arch::is_x86_feature_detected!("avx512f") {
                    out.push(Isa(Level::Avx512));
                }
            }
        }
        out
    }

    /// The level, for the dispatch in [`multiversion!`].
    pub(crate) fn level(self) -> Level {
        self.0
    }
}

/// Defines `fn $name(isa: Isa, args..)` that runs `$body` compiled for `isa`.
///
/// Helpers that the body calls must be `#[inline(always)]`, or they run at baseline.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::kernels::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn avx512($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }

            match isa.level() {
                $crate::kernels::simd::Level::Baseline => imp($($arg),*),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` at this level exists only when the CPU has AVX2 and FMA.
                $crate::kernels::simd::Level::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` at this level exists only when the CPU has AVX-512F.
                $crate::kernels::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}

pub(crate) use multiversion;

/// Dot product with eight independent accumulators, so it vectorizes.
#[inline(always)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += alpha * x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `y += x`.
#[inline(always)]
pub(crate) fn add_assign(y: &mut [f64], x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += x;
    }
}
