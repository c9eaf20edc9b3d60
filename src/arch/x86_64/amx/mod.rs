//! AMX, the tile unit of Intel Xeon (Sapphire Rapids and later): eight tile
//! registers of up to 16 rows × 64 bytes and `tdpbf16ps`, which multiplies
//! a 16 × 32 bf16 tile by a 32 × 16 one (stored as 16 rows of bf16 pairs)
//! into 16 × 16 f32, 8192 multiply-adds per instruction.
//!
//! The decode kernel here serves bf16 K and V caches (any layout whose rows
//! are contiguous, any group size, every variant), one 16-position block at
//! a time, the same blocks and online softmax as [`super::super::kernel`]:
//!
//! 1. **Scores** `Sᵀ = K · Qᵀ`: sixteen K rows are read in place from the
//!    cache as one A tile per 32 values of `Dk` (a copy with zero padding
//!    only for the last, partial block and for `Dk` that is not a multiple
//!    of 32); `Qᵀ` is packed once per call as B tiles of 16 query rows.
//!    Each 16 × 16 result tile is transposed in registers into the score
//!    rows the softmax reads.
//! 2. **Transforms and online softmax**: the f32 code every tier runs.
//! 3. **P · V**: the block's weights of 16 query rows are one A tile; V's
//!    16 rows are rearranged in L1 into bf16 pairs of consecutive positions
//!    (the B tile layout); the accumulator tiles are read from and written
//!    back to the f32 state.
//!
//! **Precision.** K and V are bf16, so a product with a bf16 operand is
//! exact in f32. `Exact` splits each f32 q value into three bf16 parts
//! (`hi + mid + lo` holds all 24 significant bits), so the scores are the
//! exact products summed in f32, like the f32 kernels: three tile products.
//! It splits P into `hi + lo` (the rest is below 2⁻¹⁶ of each weight) and
//! runs P·V as one product of 32 pairs (`[P_hi | P_lo]` against V stacked
//! twice). `Fast` rounds q and P to bf16 (2⁻⁸ relative each). The property
//! tests hold both to their bounds against the f64 reference.
//!
//! **Permission.** Linux hands out the 8 KiB of tile state only to a
//! process that asked for it (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); [`status`] asks once and remembers the answer.
//!
//! The instructions are written with `asm!`: Rust's AMX intrinsics and
//! feature detection are not stable yet. Tile registers are not visible to
//! the compiler, so every kernel call configures them (`ldtilecfg`) and
//! releases them (`tilerelease`) itself, and nothing between those two
//! points calls code that could use them.

// The tile helpers take the kernel's raw pointers and sizes explicitly.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use core::arch::asm;
use core::arch::x86_64::*;
use std::sync::OnceLock;

/// Why the tile unit cannot be used here, or `Ok` once this process may
/// use it. Checks the CPU (AMX-TILE, AMX-BF16, and the AVX-512 features
/// the kernel runs around the tiles), then asks Linux for the tile state,
/// once per process.
pub(crate) fn status() -> Result<(), &'static str> {
    static STATUS: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *STATUS.get_or_init(|| {
        if !cpu_has_tiles() {
            return Err("this CPU has no AMX-TILE / AMX-BF16");
        }
        if !(std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16"))
        {
            return Err("this CPU lacks AVX512-BF16, which the tile kernels use around the tiles");
        }
        request_tile_state()
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
pub(crate) fn cpu_has_tiles() -> bool {
    let max = __cpuid(0).eax;
    max >= 7 && {
        let l7 = __cpuid_count(7, 0);
        (l7.edx >> 22) & 1 == 1 && (l7.edx >> 24) & 1 == 1
    }
}

/// CPUID leaf 7: AMX-INT8 (EDX bit 25), for the int8 tile probe.
fn cpu_has_int8_tiles() -> bool {
    cpu_has_tiles() && (__cpuid_count(7, 0).edx >> 25) & 1 == 1
}

/// [`status`] for the int8 tile instructions.
pub(crate) fn int8_status() -> Result<(), &'static str> {
    status()?;
    if cpu_has_int8_tiles() {
        Ok(())
    } else {
        Err("this CPU has no AMX-INT8")
    }
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> Result<(), &'static str> {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` only
    // widens the set of register state this process may use; it reads and
    // writes no memory of ours. The `syscall` instruction clobbers rcx and
    // r11, declared here.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret == 0 {
        Ok(())
    } else {
        Err("Linux refused the tile state (arch_prctl ARCH_REQ_XCOMP_PERM; needs Linux 5.16 or later)")
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> Result<(), &'static str> {
    Err("tile state is only requested on Linux")
}

/// The 64-byte operand of `ldtilecfg` (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Every one of the eight tiles `rows[t]` × `colsb[t]` bytes.
    fn new(shapes: [(u8, u16); 8]) -> TileConfig {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for (t, (r, b)) in shapes.into_iter().enumerate() {
            c.rows[t] = r;
            c.colsb[t] = b;
        }
        c
    }

    /// Loads the configuration.
    ///
    /// # Safety
    /// [`status`] returned `Ok` (the CPU has tiles and the process may use
    /// them).
    #[inline(always)]
    unsafe fn load(&self) {
        // SAFETY: `self` is a valid 64-byte palette-1 configuration (rows
        // ≤ 16, colsb ≤ 64); tiles are usable by the caller's contract.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) self as *const TileConfig, options(nostack, readonly))
        }
    }
}

/// Releases the tile state (back to the init state; cheap for the OS to
/// save on a context switch).
///
/// # Safety
/// Tiles are usable ([`status`] returned `Ok`).
#[inline(always)]
unsafe fn release() {
    // SAFETY: by the caller's contract.
    unsafe { asm!("tilerelease", options(nostack, nomem)) }
}

/// `tileloadd tmm$t, [p + s]`: rows of the configured shape from `p`,
/// `s` bytes apart. The caller guarantees every row is readable.
macro_rules! tload {
    ($t:literal, $p:expr, $s:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
             p = in(reg) $p, s = in(reg) $s, options(nostack, readonly))
    };
}

/// `tilestored [p + s], tmm$t`. The caller guarantees every row is
/// writable.
macro_rules! tstore {
    ($t:literal, $p:expr, $s:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", $t),
             p = in(reg) $p, s = in(reg) $s, options(nostack))
    };
}

/// `tilezero tmm$t`.
macro_rules! tzero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
}

/// `tdpbf16ps tmm$c, tmm$a, tmm$b`: C += A · B.
macro_rules! tdp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}

/// `tdpbssd tmm$c, tmm$a, tmm$b`: C += A · B on signed int8 quadruples.
macro_rules! tdpi8 {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}

/// Tile probe: the multiply-add rate of `tdpbf16ps` (`int8`: `tdpbssd`)
/// from registers, four independent accumulator tiles; returns the FLOPs
/// (integer operations) done, or `None` where the unit is not usable.
pub(crate) fn tile_ops(int8: bool, iters: usize) -> Option<f64> {
    if status().is_err() || (int8 && !cpu_has_int8_tiles()) {
        return None;
    }
    let full = (16u8, 64u16);
    let cfg = TileConfig::new([full; 8]);
    let src = [0x0101_0101u32; 256];
    let mut out = [0f32; 256];
    // SAFETY: tiles are usable (checked above, AMX-INT8 too where used);
    // every load reads 16 rows of 64 bytes of `src` (1 KiB) and the store
    // writes 16 × 64 bytes of `out`.
    unsafe {
        cfg.load();
        let p = src.as_ptr();
        tload!(4, p, 64usize);
        tload!(5, p, 64usize);
        tload!(6, p, 64usize);
        tload!(7, p, 64usize);
        tzero!(0);
        tzero!(1);
        tzero!(2);
        tzero!(3);
        for _ in 0..iters {
            if int8 {
                tdpi8!(0, 4, 5);
                tdpi8!(1, 4, 7);
                tdpi8!(2, 6, 5);
                tdpi8!(3, 6, 7);
            } else {
                tdp!(0, 4, 5);
                tdp!(1, 4, 7);
                tdp!(2, 6, 5);
                tdp!(3, 6, 7);
            }
        }
        tstore!(0, out.as_mut_ptr(), 64usize);
        release();
    }
    std::hint::black_box(&out);
    // Each instruction: 16 × 16 outputs of 32 bf16 (64 int8) products.
    let per = if int8 {
        16 * 16 * 64 * 2
    } else {
        16 * 16 * 32 * 2
    };
    Some((iters * 4 * per) as f64)
}

/// Transposes a 16 × 16 matrix of 32-bit values held one row per register.
#[inline(always)]
pub(super) unsafe fn transpose16(r: &mut [__m512; 16]) {
    // SAFETY: register-only AVX-512F shuffles; the caller runs with
    // avx512f enabled.
    unsafe {
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        for k in 0..4 {
            let b = 4 * k;
            r[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
            r[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
            r[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
        }
        for k in 0..4 {
            t[k] = _mm512_shuffle_f32x4::<0x88>(r[k], r[k + 4]);
            t[k + 4] = _mm512_shuffle_f32x4::<0xDD>(r[k], r[k + 4]);
            t[k + 8] = _mm512_shuffle_f32x4::<0x88>(r[k + 8], r[k + 12]);
            t[k + 12] = _mm512_shuffle_f32x4::<0xDD>(r[k + 8], r[k + 12]);
        }
        for k in 0..8 {
            r[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[k + 8]);
            r[k + 8] = _mm512_shuffle_f32x4::<0xDD>(t[k], t[k + 8]);
        }
    }
}

/// Mask of the first `n` of 32 lanes (the dot-product units use it too).
#[inline(always)]
pub(super) fn mask32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

// After the tile macros above, which the kernel uses.
mod kernel;

pub(crate) use kernel::{decode, pack_v, scratch_len};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no avx512f");
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn run() {
            let m: Vec<f32> = (0..256).map(|x| x as f32).collect();
            let mut r = [_mm512_setzero_ps(); 16];
            // SAFETY: `m` has 256 f32; avx512f is enabled.
            unsafe {
                for i in 0..16 {
                    r[i] = _mm512_loadu_ps(m.as_ptr().add(i * 16));
                }
                transpose16(&mut r);
                let mut out = [0f32; 256];
                for i in 0..16 {
                    _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), r[i]);
                }
                for i in 0..16 {
                    for j in 0..16 {
                        assert_eq!(out[i * 16 + j], m[j * 16 + i], "({i}, {j})");
                    }
                }
            }
        }
        // SAFETY: avx512f was detected.
        unsafe { run() }
    }
}
