//! Merging attention states computed over disjoint KV ranges.

use crate::error::{Error, Result};

/// Merges the attention state `(other_out, other_lse)` into `(out, lse)`,
/// where both were computed for the same query rows over **disjoint** sets
/// of KV positions (a shared prefix and a per-sequence suffix, cascade
/// attention, KV split across devices).
///
/// Rows are `lse.len()`; `out` and `other_out` hold `head_dim_v` floats per
/// row. A state with `lse = -inf` (its range had no visible position)
/// merges as a no-op; `lse` is the natural-log log-sum-exp that
/// [`crate::Plan::run`] returns. The result equals attention over the union
/// of the ranges up to f32 rounding.
pub fn merge_states(
    out: &mut [f32],
    lse: &mut [f32],
    other_out: &[f32],
    other_lse: &[f32],
    head_dim_v: usize,
) -> Result<()> {
    if head_dim_v == 0 {
        return Err(Error::InvalidDim {
            arg: "head_dim_v",
            value: 0,
            reason: "must be at least 1",
        });
    }
    let rows = lse.len();
    let expect = |arg, expected: Option<usize>, actual: usize| match expected {
        Some(e) if e == actual => Ok(()),
        Some(e) => Err(Error::LengthMismatch {
            arg,
            expected: e,
            actual,
        }),
        None => Err(Error::Overflow { arg, seq: 0 }),
    };
    expect("other_lse", Some(rows), other_lse.len())?;
    expect("out", rows.checked_mul(head_dim_v), out.len())?;
    expect("other_out", rows.checked_mul(head_dim_v), other_out.len())?;
    for (row, (o, oo)) in out
        .chunks_mut(head_dim_v)
        .zip(other_out.chunks(head_dim_v))
        .enumerate()
    {
        let (a, b) = (lse[row], other_lse[row]);
        if b == f32::NEG_INFINITY {
            continue;
        }
        if a == f32::NEG_INFINITY {
            o.copy_from_slice(oo);
            lse[row] = b;
            continue;
        }
        let m = a.max(b);
        let (wa, wb) = ((a - m).exp(), (b - m).exp());
        let inv = 1.0 / (wa + wb);
        let (wa, wb) = (wa * inv, wb * inv);
        for (x, y) in o.iter_mut().zip(oo) {
            *x = *x * wa + *y * wb;
        }
        lse[row] = m + (wa + wb).ln() - inv.ln();
    }
    Ok(())
}
