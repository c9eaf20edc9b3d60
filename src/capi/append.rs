//! The entry that writes new tokens into a cache.

use super::*;

/// Writes new tokens into `cache` (its `data` and, for int8, `scales`):
/// token `i` of sequence `b` at position `positions[b] + i` (see
/// [`crate::append`]). `n_seqs` is the number of sequences.
///
/// # Safety
/// Every pointer is valid for its length; K's and V's buffers do not
/// overlap (checked) and nothing else uses them during the call.
#[no_mangle]
pub unsafe extern "C" fn gqa_append(
    cache: *const gqa_cache,
    new: *const gqa_new_kv,
    positions: *const usize,
    n_seqs: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract on every pointer.
        unsafe {
            let c = read_struct_since("cache", cache, std::mem::offset_of!(gqa_cache, latent))?;
            if c.latent != 0 {
                return Err(invalid(
                    "`cache.latent` is set: gqa_append does not write latent caches (it writes K and V rows separately)".into(),
                ));
            }
            let n = read_struct("new", new)?;
            // Mutable views of K and V must not overlap (they would alias).
            let (ks, vs) = (spans(&c.k), spans(&c.v));
            for a in ks {
                for b in vs {
                    if a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1 {
                        return Err(invalid(
                            "`cache.k` and `cache.v` buffers overlap: append writes both".into(),
                        ));
                    }
                }
            }
            if ks[0].0 < ks[0].1 && ks[1].0 < ks[1].1 && ks[0].0 < ks[1].1 && ks[1].0 < ks[0].1 {
                return Err(invalid(
                    "`cache.k.data` and `cache.k.scales` overlap".into(),
                ));
            }
            if vs[0].0 < vs[0].1 && vs[1].0 < vs[1].1 && vs[0].0 < vs[1].1 && vs[1].0 < vs[0].1 {
                return Err(invalid(
                    "`cache.v.data` and `cache.v.scales` overlap".into(),
                ));
            }
            let positions = slice("positions", positions, n_seqs)?;
            let t = dtype("new.dtype", n.dtype)?;
            let src = |arg: &str, p: *const c_void, len: usize| -> R<KvData<'_>> {
                Ok(match t {
                    Dtype::F32 => KvData::F32(slice(arg, p.cast::<f32>(), len)?),
                    Dtype::F16 => KvData::F16(slice(arg, p.cast::<f16>(), len)?),
                    Dtype::Bf16 => KvData::Bf16(slice(arg, p.cast::<bf16>(), len)?),
                    other => {
                        return Err(Error::UnsupportedDtype {
                            arg: "new.dtype",
                            dtype: other,
                            reason: "new rows are given as f32, f16 or bf16",
                        }
                        .into())
                    }
                })
            };
            let new = NewKv {
                k: src("new.k", n.k, n.k_len)?,
                v: src("new.v", n.v, n.v_len)?,
                offsets: slice("new.offsets", n.offsets, n.offsets_len)?,
                kv_heads: n.kv_heads,
                head_dim_k: n.head_dim_k,
                head_dim_v: n.head_dim_v,
            };
            let (k, v) = (kv_data_mut("cache.k", &c.k)?, kv_data_mut("cache.v", &c.v)?);
            let t = |d, kv: &gqa_kv| {
                KvTensorMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let p = |d, kv: &gqa_kv| {
                KvPagesMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let mut m = match c.layout {
                GQA_LAYOUT_STRIDED => KvCacheMut::Strided {
                    k: t(k, &c.k),
                    v: t(v, &c.v),
                    capacity: c.capacity,
                },
                GQA_LAYOUT_PAGED => KvCacheMut::Paged {
                    k: p(k, &c.k),
                    v: p(v, &c.v),
                    page_size: c.page_size,
                    block_table: slice("cache.block_table", c.block_table, c.block_table_len)?,
                    blocks_per_seq: c.blocks_per_seq,
                },
                GQA_LAYOUT_RING => KvCacheMut::Ring {
                    k: t(k, &c.k),
                    v: t(v, &c.v),
                    capacity: c.capacity,
                },
                other => {
                    return Err(invalid(format!(
                        "`cache.layout` = {other} is not a GQA_LAYOUT_ value"
                    )))
                }
            };
            crate::append(&mut m, &new, positions)?;
        }
        Ok(())
    })
}
