//! Unit tests of every tier's SIMD primitives against plain scalar code.

use super::{exp2, tanh, Simd, SimdOp};
use crate::tier::Tier;

/// Runs `f::<S>()` on every available tier.
fn each_tier<O: SimdOp + Clone>(op: O) -> Vec<(Tier, O::Out)> {
    let mut res = Vec::new();
    for t in Tier::available() {
        let o = op.clone();
        // SAFETY: `t` is available on this CPU.
        let out = unsafe { super::with_tier(t, o) };
        res.push((t, out));
    }
    res
}

fn ulp_diff(a: f32, b: f64) -> f64 {
    let b32 = b as f32;
    let ulp = (f32::from_bits(b32.to_bits() + 1) - b32).abs() as f64;
    (a as f64 - b).abs() / ulp
}

/// A vector function under test.
#[derive(Clone, Copy)]
enum Func {
    Exp2,
    Tanh,
}

/// Applies `Func` to every input, `LANES` at a time.
#[derive(Clone)]
struct Sweep(Func, Vec<f32>);
impl SimdOp for Sweep {
    type Out = Vec<f32>;
    unsafe fn run<S: Simd>(self) -> Vec<f32> {
        let mut out = vec![0f32; self.1.len()];
        for (i, chunk) in self.1.chunks(S::LANES).enumerate() {
            let mut tmp = vec![0f32; S::LANES];
            tmp[..chunk.len()].copy_from_slice(chunk);
            let mut res = vec![0f32; S::LANES];
            // SAFETY: `tmp` and `res` hold LANES floats.
            unsafe {
                let x = S::load(tmp.as_ptr());
                let y = match self.0 {
                    Func::Exp2 => exp2::<S>(x),
                    Func::Tanh => tanh::<S>(x),
                };
                S::store(res.as_mut_ptr(), y);
            }
            out[i * S::LANES..i * S::LANES + chunk.len()].copy_from_slice(&res[..chunk.len()]);
        }
        out
    }
}

#[test]
fn exp2_error_bound_on_every_tier() {
    let mut xs: Vec<f32> = (0..=200_000)
        .map(|i| -126.0 + 253.0 * i as f32 / 200_000.0)
        .collect();
    xs.extend([0.0, -0.5, 0.5, -1.0, 1.0, -126.0, 127.0, -1e-9, 1e-9]);
    for (tier, got) in each_tier(Sweep(Func::Exp2, xs.clone())) {
        for (x, y) in xs.iter().zip(&got) {
            let want = (*x as f64).exp2();
            let e = ulp_diff(*y, want);
            assert!(e <= 2.0, "{tier}: exp2({x}) = {y}, want {want} ({e} ulp)");
        }
    }
}

#[test]
fn exp2_special_inputs() {
    let xs = vec![f32::NEG_INFINITY, -127.0, -1000.0, -1e30, f32::NAN, 200.0];
    for (tier, got) in each_tier(Sweep(Func::Exp2, xs.clone())) {
        assert_eq!(got[0], 0.0, "{tier}: exp2(-inf)");
        assert_eq!(got[1], 0.0, "{tier}: exp2(-127)");
        assert_eq!(got[2], 0.0, "{tier}: exp2(-1000)");
        assert_eq!(got[3], 0.0, "{tier}: exp2(-1e30)");
        assert!(got[4].is_nan(), "{tier}: exp2(NaN) = {}", got[4]);
        assert!(
            got[5].is_finite() && got[5] > 1e38,
            "{tier}: exp2(200) saturates, got {}",
            got[5]
        );
    }
}

#[derive(Clone)]
struct TransposeSum(Vec<f32>);
impl SimdOp for TransposeSum {
    type Out = (usize, Vec<f32>);
    unsafe fn run<S: Simd>(self) -> (usize, Vec<f32>) {
        let mut res = vec![0f32; S::LANES];
        // SAFETY: the input holds 16*16 >= LANES*LANES floats.
        unsafe {
            let mut v = [S::zero(); 16];
            for (i, x) in v.iter_mut().enumerate().take(S::LANES) {
                *x = S::load(self.0.as_ptr().add(i * S::LANES));
            }
            S::store(res.as_mut_ptr(), S::transpose_sum(&v));
        }
        (S::LANES, res)
    }
}

#[test]
fn transpose_sum_on_every_tier() {
    let data: Vec<f32> = (0..256)
        .map(|i| ((i * 37 % 101) as f32) - 50.0 + (i as f32) * 0.25)
        .collect();
    for (tier, (lanes, got)) in each_tier(TransposeSum(data.clone())) {
        for (v, g) in got.iter().enumerate() {
            let want: f32 = data[v * lanes..(v + 1) * lanes].iter().sum();
            assert!(
                (g - want).abs() <= 1e-3,
                "{tier}: vector {v}: {g} vs {want}"
            );
        }
    }
}

#[derive(Clone)]
struct Loads {
    f: Vec<f32>,
    h: Vec<u16>,
    b: Vec<u16>,
}
impl SimdOp for Loads {
    type Out = Vec<(usize, Vec<f32>, Vec<f32>, Vec<f32>)>;
    unsafe fn run<S: Simd>(self) -> Self::Out {
        let mut res = Vec::new();
        for valid in 0..=S::LANES + 1 {
            // Exactly `valid` elements, at the end of their allocation, so a
            // read past them would be caught by Miri / ASan.
            let n = valid.min(S::LANES);
            let f: Vec<f32> = self.f[..n].to_vec();
            let h: Vec<u16> = self.h[..n].to_vec();
            let b: Vec<u16> = self.b[..n].to_vec();
            let mut of = vec![0f32; S::LANES];
            let mut oh = vec![0f32; S::LANES];
            let mut ob = vec![0f32; S::LANES];
            // SAFETY: each source holds `n = min(valid, LANES)` elements.
            unsafe {
                S::store(of.as_mut_ptr(), S::load_f32(f.as_ptr(), valid));
                S::store(oh.as_mut_ptr(), S::load_f16(h.as_ptr(), valid));
                S::store(ob.as_mut_ptr(), S::load_bf16(b.as_ptr(), valid));
            }
            res.push((valid, of, oh, ob));
        }
        res
    }
}

#[test]
fn converting_loads_on_every_tier() {
    let f: Vec<f32> = (0..16).map(|i| i as f32 * 1.5 - 7.0).collect();
    let h: Vec<u16> = f
        .iter()
        .map(|x| half::f16::from_f32(*x).to_bits())
        .collect();
    let b: Vec<u16> = f
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect();
    // An f16 subnormal and bf16 extremes widen exactly too.
    let mut h2 = h.clone();
    h2[1] = 0x0001; // smallest f16 subnormal
    let mut b2 = b.clone();
    b2[2] = half::bf16::MAX.to_bits();
    for (tier, rows) in each_tier(Loads {
        f: f.clone(),
        h: h2.clone(),
        b: b2.clone(),
    }) {
        for (valid, of, oh, ob) in rows {
            for i in 0..of.len() {
                let (wf, wh, wb) = if i < valid {
                    (
                        f[i],
                        half::f16::from_bits(h2[i]).to_f32(),
                        half::bf16::from_bits(b2[i]).to_f32(),
                    )
                } else {
                    (0.0, 0.0, 0.0)
                };
                assert_eq!(of[i], wf, "{tier} f32 lane {i} valid {valid}");
                assert_eq!(oh[i], wh, "{tier} f16 lane {i} valid {valid}");
                assert_eq!(ob[i], wb, "{tier} bf16 lane {i} valid {valid}");
            }
        }
    }
}

#[test]
fn tanh_error_bound_on_every_tier() {
    let mut xs: Vec<f32> = (0..=200_000)
        .map(|i| -25.0 + 50.0 * i as f32 / 200_000.0)
        .collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        -1e-8,
        1e-4,
        0.3,
        -0.7,
        44.0,
        -44.0,
        100.0,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for (tier, got) in each_tier(Sweep(Func::Tanh, xs.clone())) {
        for (x, y) in xs.iter().zip(&got) {
            let want = (*x as f64).tanh();
            let e = (*y as f64 - want).abs();
            assert!(
                e <= 3e-7,
                "{tier}: tanh({x}) = {y}, want {want} (error {e:e})"
            );
            // Odd, and never above 1 in magnitude.
            assert!(y.abs() <= 1.0 && (y.signum() == x.signum() || *y == 0.0));
        }
    }
}

/// Every byte through the byte loads (int8, E5M2, E4M3), `LANES` at a
/// time from each offset, with every tail length; and every f16 through
/// `splat_f16`.
#[derive(Clone)]
struct ByteLoads(Vec<u8>);
impl SimdOp for ByteLoads {
    /// (start, valid, int8 lanes, e5m2 lanes, e4m3 lanes)
    type Out = Vec<(usize, usize, Vec<f32>, Vec<f32>, Vec<f32>)>;
    unsafe fn run<S: Simd>(self) -> Self::Out {
        let mut res = Vec::new();
        let bytes = &self.0;
        let mut start = 0;
        while start < bytes.len() {
            for valid in [S::LANES, S::LANES + 3, 1, S::LANES.saturating_sub(1), 0] {
                let n = valid.min(S::LANES).min(bytes.len() - start);
                // Exactly `n` bytes, at the end of their allocation.
                let src: Vec<u8> = bytes[start..start + n].to_vec();
                let mut out = [
                    vec![0f32; S::LANES],
                    vec![0f32; S::LANES],
                    vec![0f32; S::LANES],
                ];
                // SAFETY: `src` holds `n` bytes and each load reads at most
                // `min(n, LANES)` of them (`valid` is capped at `n`).
                unsafe {
                    S::store(out[0].as_mut_ptr(), S::load_i8(src.as_ptr().cast(), n));
                    S::store(out[1].as_mut_ptr(), S::load_e5m2(src.as_ptr(), n));
                    S::store(out[2].as_mut_ptr(), S::load_e4m3(src.as_ptr(), n));
                }
                let [a, b, c] = out;
                res.push((start, n, a, b, c));
            }
            start += S::LANES;
        }
        res
    }
}

#[test]
fn byte_loads_widen_every_byte_exactly_on_every_tier() {
    use crate::formats::Fp8;
    let bytes: Vec<u8> = (0..=255u8).collect();
    for (tier, rows) in each_tier(ByteLoads(bytes.clone())) {
        for (start, n, i8s, e5, e4) in rows {
            for lane in 0..i8s.len() {
                if lane >= n {
                    assert_eq!(
                        (i8s[lane], e5[lane], e4[lane]),
                        (0.0, 0.0, 0.0),
                        "{tier}: lane {lane} past {n}"
                    );
                    continue;
                }
                let b = bytes[start + lane];
                assert_eq!(i8s[lane], f32::from(b as i8), "{tier}: int8 {b:#04x}");
                let w5 = Fp8::E5M2.decode(b);
                assert!(
                    e5[lane] == w5 || (w5.is_nan() && e5[lane].is_nan()),
                    "{tier}: e5m2 {b:#04x} = {}, want {w5}",
                    e5[lane]
                );
                // E4M3 reads as x / 256; its NaN bytes as ±480 / 256.
                let w4 = match Fp8::E4M3.decode(b) {
                    x if x.is_nan() => 480.0f32.copysign(if b & 0x80 != 0 { -1.0 } else { 1.0 }),
                    x => x,
                };
                assert_eq!(e4[lane] * 256.0, w4, "{tier}: e4m3 {b:#04x}");
                assert_eq!(
                    e4[lane].is_sign_negative(),
                    b & 0x80 != 0,
                    "{tier}: e4m3 sign of {b:#04x}"
                );
            }
        }
    }
}

/// A row of bytes read vector by vector through the `Elem` loads of
/// `E4M3` and of `E4M3Row` (fp8e4m3_row).
#[derive(Clone)]
struct RowLoads(Vec<u8>);
impl SimdOp for RowLoads {
    /// Per vector: (E4M3 lanes, E4M3Row lanes).
    type Out = Vec<(Vec<f32>, Vec<f32>)>;
    unsafe fn run<S: Simd>(self) -> Self::Out {
        use super::{E4M3Row, Elem, E4M3};
        let d = self.0.len();
        let a: Vec<E4M3> = self.0.iter().map(|&b| E4M3(b)).collect();
        let r: Vec<E4M3Row> = self.0.iter().map(|&b| E4M3Row(b)).collect();
        (0..d.div_ceil(S::LANES))
            .map(|c| {
                let (mut x, mut y) = (vec![0f32; S::LANES], vec![0f32; S::LANES]);
                // SAFETY: both rows hold `d` values and vector `c` of a row
                // of `d` reads inside it; `x` and `y` hold `LANES` floats.
                unsafe {
                    S::store(x.as_mut_ptr(), E4M3::load::<S>(a.as_ptr(), c, d));
                    S::store(y.as_mut_ptr(), E4M3Row::load::<S>(r.as_ptr(), c, d));
                }
                (x, y)
            })
            .collect()
    }
}

/// fp8e4m3_row's element reads every byte exactly as E4M3's (`x / 256`:
/// the driver's `2^8` serves both), tails included, and is the one of the
/// two with a row scale.
#[test]
fn e4m3_row_loads_as_e4m3_on_every_tier() {
    use super::{E4M3Row, Elem, E4M3};
    const { assert!(<E4M3Row as Elem>::ROW_SCALE && !<E4M3 as Elem>::ROW_SCALE) };
    // 301 values: every byte, and a tail on every tier.
    let bytes: Vec<u8> = (0..=255u8).chain(0..45).collect();
    for (tier, rows) in each_tier(RowLoads(bytes)) {
        for (c, (x, y)) in rows.iter().enumerate() {
            let bits = |v: &Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(x), bits(y), "{tier}: vector {c}");
        }
    }
}

#[derive(Clone)]
struct Splats(Vec<u16>);
impl SimdOp for Splats {
    type Out = Vec<Vec<f32>>;
    unsafe fn run<S: Simd>(self) -> Self::Out {
        self.0
            .iter()
            .map(|&h| {
                let mut out = vec![0f32; S::LANES];
                // SAFETY: `out` holds LANES floats.
                unsafe { S::store(out.as_mut_ptr(), S::splat_f16(h)) };
                out
            })
            .collect()
    }
}

#[test]
fn splat_f16_widens_every_f16_on_every_tier() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for (tier, rows) in each_tier(Splats(all.clone())) {
        for (h, lanes) in all.iter().zip(&rows) {
            let want = half::f16::from_bits(*h).to_f32();
            for x in lanes {
                assert!(
                    x.to_bits() == want.to_bits() || (want.is_nan() && x.is_nan()),
                    "{tier}: splat_f16({h:#06x}) = {x}, want {want}"
                );
            }
        }
    }
}

/// A span handed out in ticks: each tick takes its lines in order, ticks
/// past the end take nothing, `finish` takes the rest, and the shares of a
/// span tile it without gaps or overlaps.
#[test]
fn ahead_hands_out_every_line_once() {
    use super::{Ahead, Span};
    let base = 4096usize as *const u8;
    // 10 lines in 4 ticks: 3 lines per tick.
    let a = Ahead::new(
        Span {
            ptr: base,
            bytes: 640,
        },
        4,
    );
    assert_eq!(a.left(), 10);
    a.tick(1);
    assert_eq!(a.left(), 7);
    a.tick(2);
    assert_eq!(a.left(), 1);
    a.tick(5);
    assert_eq!(a.left(), 0);
    a.finish();
    assert_eq!(a.left(), 0);
    // An unaligned start counts the line it starts in; `finish` takes all.
    let b = Ahead::new(
        Span {
            ptr: base.wrapping_add(60),
            bytes: 10,
        },
        16,
    );
    assert_eq!(b.left(), 2);
    b.finish();
    assert_eq!(b.left(), 0);
    // No lines: ticks are no-ops.
    let c = Ahead::new(Span::default(), 0);
    c.tick(3);
    assert_eq!(c.left(), 0);
    // Shares tile the span.
    for (bytes, n) in [(1000usize, 7usize), (64, 8), (0, 3), (4096, 1)] {
        let s = Span { ptr: base, bytes };
        let mut at = base;
        for i in 0..n {
            let p = s.share(i, n);
            assert_eq!(p.ptr, at, "share {i} of {n} of {bytes} bytes");
            at = at.wrapping_add(p.bytes);
        }
        assert_eq!(at, base.wrapping_add(bytes));
    }
}

/// Each tier's entry points are compiled for exactly the features the tier
/// table names (`Tier::features`, which detection checks): the
/// `#[target_feature]` strings of its file are the table's list joined by
/// commas. The sources are read as text, so every tier is checked on any
/// build target.
#[test]
fn entry_points_carry_the_table_features() {
    for tier in Tier::ALL.into_iter().filter(|&t| t != Tier::Scalar) {
        let path = format!(
            "{}/src/arch/{}.rs",
            env!("CARGO_MANIFEST_DIR"),
            tier.module()
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            !tier.features().is_empty(),
            "{tier}: no features in the table"
        );
        let want = format!(
            "#[target_feature(enable = \"{}\")]",
            tier.features().join(",")
        );
        // The two entry points: the kernel's and the primitives' (`with`).
        let n = text.matches(want.as_str()).count();
        assert!(n >= 2, "{tier}: {n} entry points carry {want}");
        // Helpers may enable less, never a feature outside the table.
        for line in text
            .lines()
            .filter(|l| l.contains("#[target_feature(enable"))
        {
            let list = line.split('"').nth(1).expect("a quoted feature list");
            for f in list.split(',') {
                assert!(
                    tier.features().contains(&f),
                    "{tier}: `{line}` enables {f}, which the table does not name"
                );
            }
        }
    }
    assert!(Tier::Scalar.features().is_empty());
}

/// Every byte through `load_nibbles` (both halves, a non-linear table,
/// every tail length) and bit patterns through `bits`.
#[derive(Clone)]
struct NibbleLoads(Vec<u8>, Vec<u32>);
impl SimdOp for NibbleLoads {
    /// (start, valid, high, lanes) for the loads; (bits, lanes) for `bits`.
    type Out = (Vec<(usize, usize, bool, Vec<f32>)>, Vec<(u32, Vec<f32>)>);
    unsafe fn run<S: Simd>(self) -> Self::Out {
        let lut = crate::formats::IQ4_NL_LEVELS;
        let (bytes, mut loads) = (&self.0, Vec::new());
        let mut start = 0;
        while start < bytes.len() {
            for valid in [S::LANES, S::LANES + 3, 1, S::LANES.saturating_sub(1), 0] {
                let n = valid.min(S::LANES).min(bytes.len() - start);
                // Exactly `n` bytes, at the end of their allocation.
                let src: Vec<u8> = bytes[start..start + n].to_vec();
                for high in [false, true] {
                    let mut out = vec![0f32; S::LANES];
                    // SAFETY: `src` holds `n` bytes and the load reads at
                    // most `min(n, LANES)` of them; `out` holds LANES floats.
                    unsafe {
                        S::store(
                            out.as_mut_ptr(),
                            S::load_nibbles(src.as_ptr(), high, &lut, n),
                        )
                    };
                    loads.push((start, n, high, out));
                }
            }
            start += S::LANES;
        }
        let bits = self
            .1
            .iter()
            .map(|&b| {
                let mut out = vec![0f32; S::LANES];
                // SAFETY: `out` holds LANES floats.
                unsafe { S::store(out.as_mut_ptr(), S::bits(b)) };
                (b, out)
            })
            .collect();
        (loads, bits)
    }
}

#[test]
fn nibble_loads_and_bits_match_scalar_code_on_every_tier() {
    let lut = crate::formats::IQ4_NL_LEVELS;
    let bytes: Vec<u8> = (0..=255u8)
        .map(|b| b.wrapping_mul(77).wrapping_add(3))
        .collect();
    let patterns = vec![
        0,
        u32::MAX,
        0x8000_0001,
        0xF0F0_5A5A,
        0x1234_5678,
        1 << 15,
        0xFFFF_0000,
    ];
    for (tier, (loads, bits)) in each_tier(NibbleLoads(bytes.clone(), patterns)) {
        for (start, n, high, lanes) in loads {
            for (l, &got) in lanes.iter().enumerate() {
                let want = if l < n {
                    let b = bytes[start + l];
                    f32::from(lut[usize::from(if high { b >> 4 } else { b & 0x0F })])
                } else {
                    0.0
                };
                assert_eq!(got, want, "{tier}: byte {start}+{l} of {n}, high {high}");
            }
        }
        for (b, lanes) in bits {
            for (l, &got) in lanes.iter().enumerate() {
                assert_eq!(
                    got,
                    f32::from((b >> l & 1) as u8),
                    "{tier}: bit {l} of {b:#x}"
                );
            }
        }
    }
}
