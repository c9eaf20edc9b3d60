//! The quantized formats: stated round-trip bounds, the q8_0 block layout,
//! exhaustive fp8 round trips, saturation and rejected input.

use gqa_kernels::quant::{
    dequantize_fp8, dequantize_int8_row, dequantize_q8_0, quantize_fp8, quantize_int8_row,
    quantize_q8_0, BlockQ8_0, Fp8, QK8_0,
};
use gqa_kernels::{f16, Error};
use proptest::prelude::*;

fn values() -> impl Strategy<Value = Vec<f32>> {
    (1usize..5, -8i32..8).prop_flat_map(|(blocks, exp)| {
        let m = 2f32.powi(exp);
        proptest::collection::vec(-m..m, blocks * QK8_0)
    })
}

/// The stated bound of `quantize_int8_row`: the nearest level, then the f32
/// rounding of `scale · q`. (`x − y` is exact: the two are within a factor 2.)
fn int8_within_bound(x: f32, y: f32, scale: f32) -> bool {
    (x - y).abs() <= scale * 0.5 + y.abs() * 2f32.powi(-24)
}

/// A value a hair past the midpoint between two levels: multiplying by an
/// f32 reciprocal of the scale rounded it to the farther level (found by the
/// property test below in CI).
#[test]
fn int8_rows_pick_the_nearest_level_next_to_a_midpoint() {
    let xs = [0.0, -0.055927906, -0.062033568, 0.0];
    let mut q = [0i8; 4];
    let scale = quantize_int8_row(&xs, &mut q).unwrap();
    assert_eq!(q[2], -127);
    let mut back = [0f32; 4];
    dequantize_int8_row(&q, scale, &mut back).unwrap();
    for (x, y) in xs.iter().zip(&back) {
        assert!(int8_within_bound(*x, *y, scale), "{x} -> {y}");
    }
    // The level it must pick, from the exact quotient.
    let exact = f64::from(xs[1]) / f64::from(scale);
    assert_eq!(f64::from(q[1]), exact.round_ties_even(), "quotient {exact}");
}

proptest! {
    #[test]
    fn int8_rows_round_trip_within_half_a_step(xs in values()) {
        let mut q = vec![0i8; xs.len()];
        let scale = quantize_int8_row(&xs, &mut q).unwrap();
        let absmax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
        prop_assert_eq!(scale, absmax / 127.0);
        // The largest element maps to ±127 exactly.
        prop_assert!(q.iter().any(|&v| v.abs() == 127) || absmax == 0.0);
        let mut back = vec![0f32; xs.len()];
        dequantize_int8_row(&q, scale, &mut back).unwrap();
        for (x, y) in xs.iter().zip(&back) {
            prop_assert!(int8_within_bound(*x, *y, scale), "{} -> {}", x, y);
        }
    }

    #[test]
    fn q8_0_blocks_round_trip_within_the_stated_bound(xs in values()) {
        let mut blocks = vec![BlockQ8_0::default(); xs.len() / QK8_0];
        quantize_q8_0(&xs, &mut blocks).unwrap();
        let mut back = vec![0f32; xs.len()];
        dequantize_q8_0(&blocks, &mut back).unwrap();
        for (b, (xs, ys)) in blocks.iter().zip(xs.chunks(QK8_0).zip(back.chunks(QK8_0))) {
            let d = b.d.to_f32();
            let absmax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
            prop_assert_eq!(b.d, f16::from_f32(absmax / 127.0));
            for (x, y) in xs.iter().zip(ys) {
                let bound = d * 0.5 + absmax * 2f32.powi(-10);
                prop_assert!((x - y).abs() <= bound, "{} -> {} (d {})", x, y, d);
            }
        }
    }

    #[test]
    fn fp8_round_trips_within_the_stated_bounds(xs in values(), scale_exp in -4i32..4) {
        let scale = 2f32.powi(scale_exp) * 1.37;
        for (format, rel, sub_min, sub_abs) in [
            (Fp8::E4M3, 2f32.powi(-4), 2f32.powi(-6), 2f32.powi(-10)),
            (Fp8::E5M2, 2f32.powi(-3), 2f32.powi(-14), 2f32.powi(-17)),
        ] {
            let mut bytes = vec![0u8; xs.len()];
            quantize_fp8(&xs, scale, format, &mut bytes).unwrap();
            let mut back = vec![0f32; xs.len()];
            dequantize_fp8(&bytes, scale, format, &mut back).unwrap();
            for (x, y) in xs.iter().zip(&back) {
                let u = (x / scale).abs();
                if u > format.max() {
                    prop_assert_eq!(y.abs(), format.max() * scale);
                } else if u >= sub_min {
                    prop_assert!((x - y).abs() <= rel * x.abs() * (1.0 + 1e-6), "{:?} {} -> {}", format, x, y);
                } else {
                    prop_assert!((x - y).abs() <= sub_abs * scale * (1.0 + 1e-6), "{:?} {} -> {}", format, x, y);
                }
            }
        }
    }
}

#[test]
fn q8_0_blocks_have_the_gguf_layout() {
    assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
    assert_eq!(std::mem::align_of::<BlockQ8_0>(), 2);
    // A block as a GGUF file stores it: little-endian f16 scale, 32 bytes.
    let mut bytes = [0u8; 34];
    bytes[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    for i in 0..32 {
        bytes[2 + i] = (i as i8 - 16) as u8;
    }
    let block: &BlockQ8_0 = bytemuck::from_bytes(&bytes);
    let mut out = [0f32; 32];
    dequantize_q8_0(std::slice::from_ref(block), &mut out).unwrap();
    for (i, y) in out.iter().enumerate() {
        assert_eq!(*y, 0.5 * (i as f32 - 16.0));
    }
}

#[test]
fn every_fp8_code_round_trips_exactly() {
    for format in [Fp8::E4M3, Fp8::E5M2] {
        let mut finite = 0;
        for b in 0..=255u8 {
            let x = format.decode(b);
            if x.is_nan() {
                continue;
            }
            if x.is_infinite() {
                // E5M2's infinities are never produced by the encoder
                // (finite inputs saturate; non-finite ones are rejected).
                assert_eq!(format, Fp8::E5M2);
                continue;
            }
            finite += 1;
            let back = format.encode(x);
            // +0 and -0 are distinct codes of the same value.
            assert_eq!(format.decode(back), x, "{format:?} code {b:#04x}");
            if x != 0.0 {
                assert_eq!(back, b, "{format:?} code {b:#04x}");
            }
        }
        let expected = match format {
            Fp8::E4M3 => 254, // 256 minus the two NaNs
            Fp8::E5M2 => 248, // 256 minus 6 NaNs and 2 infinities
        };
        assert_eq!(finite, expected, "{format:?}");
    }
}

#[test]
fn fp8_saturates_finite_values_beyond_its_range() {
    for format in [Fp8::E4M3, Fp8::E5M2] {
        let xs = [1e9f32, -1e9, format.max() * 1.01, -format.max() * 1.01];
        let mut bytes = [0u8; 4];
        quantize_fp8(&xs, 1.0, format, &mut bytes).unwrap();
        let got: Vec<f32> = bytes.iter().map(|&b| format.decode(b)).collect();
        let m = format.max();
        assert_eq!(got, vec![m, -m, m, -m], "{format:?}");
    }
}

#[test]
fn bad_input_is_rejected() {
    let mut q = [0i8; 3];
    assert!(matches!(
        quantize_int8_row(&[1.0, f32::NAN, 2.0], &mut q),
        Err(Error::NonFinite { arg: "src", index: 1, value }) if value.is_nan()
    ));
    assert!(matches!(
        quantize_int8_row(&[1.0, f32::INFINITY, 2.0], &mut q),
        Err(Error::NonFinite {
            arg: "src",
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        quantize_int8_row(&[1.0; 4], &mut q),
        Err(Error::LengthMismatch {
            arg: "dst",
            expected: 4,
            actual: 3
        })
    ));
    let mut blocks = [BlockQ8_0::default(); 2];
    assert!(matches!(
        quantize_q8_0(&[1.0; 48], &mut blocks),
        Err(Error::InvalidDim {
            arg: "head_dim",
            value: 48,
            ..
        })
    ));
    assert!(matches!(
        quantize_q8_0(&[1.0; 96], &mut blocks),
        Err(Error::LengthMismatch {
            arg: "dst",
            expected: 3,
            actual: 2
        })
    ));
    let mut bytes = [0u8; 2];
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            quantize_fp8(&[1.0, 2.0], scale, Fp8::E4M3, &mut bytes),
            Err(Error::InvalidScale { .. })
        ));
    }
    assert!(matches!(
        quantize_fp8(&[1.0, f32::NEG_INFINITY], 1.0, Fp8::E5M2, &mut bytes),
        Err(Error::NonFinite {
            arg: "src",
            index: 1,
            ..
        })
    ));
}

#[test]
fn an_all_zero_row_has_scale_zero_and_decodes_to_zeros() {
    let mut q = [5i8; 4];
    assert_eq!(quantize_int8_row(&[0.0; 4], &mut q).unwrap(), 0.0);
    assert_eq!(q, [0; 4]);
    let mut blocks = [BlockQ8_0::default()];
    quantize_q8_0(&[0.0; 32], &mut blocks).unwrap();
    let mut out = [1f32; 32];
    dequantize_q8_0(&blocks, &mut out).unwrap();
    assert!(out.iter().all(|&y| y == 0.0));
}
