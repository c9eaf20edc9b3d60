//! The entry that writes new tokens into a cache.

use super::*;

/// Writes new tokens into `cache` (its `data` and, for int8 and
/// fp8e4m3_row, `scales`):
/// token `i` of sequence `b` at position `positions[b] + i` (see
/// [`crate::append`]). `n_seqs` is the number of sequences. A latent
/// cache (`cache.latent` = 1) gets each token's row once, from `new.k`,
/// into `cache.k` ([`crate::append_latent`]): `new.v` must be empty
/// (`v_len` 0) and `cache.v` is not read.
///
/// # Safety
/// Every pointer is valid for its length; K's and V's buffers do not
/// overlap (checked; only K's is read for a latent cache) and nothing
/// else uses them during the call.
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
            let latent = match c.latent {
                0 => false,
                1 => true,
                x => return Err(invalid(format!("`cache.latent` = {x} is not 0 or 1"))),
            };
            let n = read_struct("new", new)?;
            // Mutable views must not overlap (they would alias): K's and
            // V's buffers, unless the cache is latent (`cache.v` is not
            // read), and each buffer's values and scales.
            let (ks, vs) = (spans(&c.k), spans(&c.v));
            let overlap = |a: (usize, usize), b: (usize, usize)| {
                a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
            };
            if !latent && ks.iter().any(|&a| vs.iter().any(|&b| overlap(a, b))) {
                return Err(invalid(
                    "`cache.k` and `cache.v` buffers overlap: append writes both".into(),
                ));
            }
            if overlap(ks[0], ks[1]) {
                return Err(invalid(
                    "`cache.k.data` and `cache.k.scales` overlap".into(),
                ));
            }
            if !latent && overlap(vs[0], vs[1]) {
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
            let t = |d, kv: &gqa_kv| {
                KvTensorMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let p = |d, kv: &gqa_kv| {
                KvPagesMut::new(d, kv.outer_stride, kv.token_stride, kv.head_stride)
            };
            let bad_layout = |other| {
                invalid(format!(
                    "`cache.layout` = {other} is not a GQA_LAYOUT_ value"
                ))
            };
            if latent {
                // One pool of rows, written once as K; `cache.v` is not read.
                let kv = kv_data_mut("cache.k", &c.k)?;
                let mut m = match c.layout {
                    GQA_LAYOUT_STRIDED => LatentCacheMut::Strided {
                        kv: t(kv, &c.k),
                        capacity: c.capacity,
                    },
                    GQA_LAYOUT_PAGED => LatentCacheMut::Paged {
                        kv: p(kv, &c.k),
                        page_size: c.page_size,
                        block_table: slice("cache.block_table", c.block_table, c.block_table_len)?,
                        blocks_per_seq: c.blocks_per_seq,
                    },
                    GQA_LAYOUT_RING => LatentCacheMut::Ring {
                        kv: t(kv, &c.k),
                        capacity: c.capacity,
                    },
                    other => return Err(bad_layout(other)),
                };
                crate::append_latent(&mut m, &new, positions)?;
                return Ok(());
            }
            let (k, v) = (kv_data_mut("cache.k", &c.k)?, kv_data_mut("cache.v", &c.v)?);
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
                other => return Err(bad_layout(other)),
            };
            crate::append(&mut m, &new, positions)?;
        }
        Ok(())
    })
}
