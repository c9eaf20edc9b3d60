//! The L2 hints of a walk: where the rows of a later window lie
//! ([`Pieces`]), and the spans each kernel call hints while it works
//! (a head's next rows in a head-major stream, a window's share ahead in a
//! token-major cache or a page).

use std::ops::Range;

use super::layout::{for_runs, head_strides, token_strides};
use super::walk::Job;
use crate::arch::Span;
use crate::views::KvData;

/// Where a window's K (or V) rows lie for all KV heads: `count` pieces of
/// `len` bytes, `stride` bytes apart (one piece for a token-major cache,
/// one per head for a page).
#[derive(Clone, Copy)]
pub(super) struct Pieces {
    ptr: *const u8,
    count: usize,
    len: usize,
    stride: usize,
}

impl Pieces {
    /// The rows of all `heads` KV heads for `n >= 1` positions from value
    /// offset `o` of `data` (token stride `t`, head stride `h`, head dim
    /// `d`, in values): one piece where the heads interleave, one per head
    /// where each head's rows are contiguous. `None` where the rows fill
    /// under half of their pieces (strides padded far beyond the rows).
    fn of(
        data: &KvData<'_>,
        o: usize,
        n: usize,
        t: usize,
        h: usize,
        d: usize,
        heads: usize,
    ) -> Option<Pieces> {
        let bytes = |e: usize| value_bytes(data, d, e);
        let rows = n * heads * bytes(d);
        let (count, len) = if h < t {
            (1, bytes((n - 1) * t + (heads - 1) * h + d))
        } else {
            (heads, bytes((n - 1) * t + d))
        };
        (count * len <= 2 * rows).then(|| Pieces {
            ptr: data.kernel_rows(o, t, d).ptr,
            count,
            len,
            stride: bytes(h),
        })
    }

    /// Part `i` of `n` of the pieces' bytes in order: the span the kernel
    /// hints while it works where the part lies in one piece; otherwise
    /// the part is hinted now and the span is empty.
    pub(super) fn share(self, i: usize, n: usize) -> Span {
        // The two common cases without the divisions by `len` below (they
        // were a quarter of the driver's time per call with 16-position
        // windows): a token-major window is one piece, and a page of the
        // `[G, page, D]` kind is one piece per head.
        if self.count == n {
            return Span {
                ptr: self.ptr.wrapping_add(i * self.stride),
                bytes: self.len,
            };
        }
        let total = self.count * self.len;
        let (mut x, x1) = (total * i / n, total * (i + 1) / n);
        if self.count == 1 {
            return Span {
                ptr: self.ptr.wrapping_add(x),
                bytes: x1 - x,
            };
        }
        let at = |x: usize| {
            self.ptr
                .wrapping_add(x / self.len * self.stride + x % self.len)
        };
        if x < x1 && x / self.len == (x1 - 1) / self.len {
            return Span {
                ptr: at(x),
                bytes: x1 - x,
            };
        }
        while x < x1 {
            let n = (self.len - x % self.len).min(x1 - x);
            crate::arch::prefetch_span(at(x), n);
            x += n;
        }
        Span::default()
    }

    /// What call `i` of the `n` calls over a window hints of a later
    /// window's K pieces `k` and V pieces `v`: where each is one piece
    /// (a token-major window, a `[page, G, D]` page), the first
    /// `n.div_ceil(2)` calls hint K and the others V, so each stream is
    /// fetched in runs of several calls' shares; otherwise share `i` of
    /// each. Interleaving K and V share by share (4 KiB of each in turn,
    /// Llama-3-8B f16) cost the token-major step 3-6 % cold where the two
    /// buffers lie at the same offset modulo 4 KiB, as separate page-aligned
    /// allocations do: on an AMD Zen 3 core, L 32768, 1 thread, the
    /// per-pair median of the step with K then V over the step with them
    /// interleaved was 0.944-0.972 in four runs, 0.99-1.00 with V moved by
    /// 1 KiB against K.
    pub(super) fn kv_share(k: Pieces, v: Pieces, i: usize, n: usize) -> [Span; 2] {
        if n < 2 || k.count != 1 || v.count != 1 {
            return [k.share(i, n), v.share(i, n)];
        }
        let h = n.div_ceil(2);
        let (x, i, m) = if i < h { (k, i, h) } else { (v, i - h, n - h) };
        [x.share(2 * i, 2 * m), x.share(2 * i + 1, 2 * m)]
    }
}

/// Bytes of `e` values of `data` in a cache of head dim `d` (strides of
/// q8_0 are whole blocks).
fn value_bytes(data: &KvData<'_>, d: usize, e: usize) -> usize {
    data.dtype().row_bytes(d) * e / d
}

impl Job<'_, '_> {
    /// The K and V rows of positions `w` of sequence `b`, KV head `g`, as
    /// spans for the kernel to hint into L2 while it reads earlier rows of
    /// the same head ([`Plan::stream_prefetch`]): the first run of
    /// positions only (a page boundary ends it), and only where the rows
    /// fill at least half of their span.
    pub(super) fn stream_hints(&self, b: usize, g: usize, w: Range<usize>) -> [Span; 2] {
        // An empty `w` has no runs: both spans stay empty.
        let (cache, s) = (&self.batch.cache, &self.plan.shape);
        let (dk, dv) = (s.head_dim_k, s.head_dim_v);
        let ((kdata, vdata), (kt, vt)) = (cache.data(), token_strides(cache));
        let latent = self.latent;
        let (mut out, mut first) = ([Span::default(); 2], true);
        for_runs(cache, b, g, w.start, w.end, |run| {
            if !std::mem::take(&mut first) {
                return;
            }
            let span = |data: &KvData<'_>, o: usize, t: usize, d: usize| {
                if t > 2 * d {
                    return Span::default();
                }
                Span {
                    ptr: data.kernel_rows(o, t, d).ptr,
                    bytes: value_bytes(data, d, (run.n - 1) * t + d),
                }
            };
            // A latent cache's V rows lie in its K rows.
            out = [
                span(&kdata, run.k, kt, dk),
                if latent {
                    Span::default()
                } else {
                    span(&vdata, run.v, vt, dv)
                },
            ];
        });
        out
    }

    /// Share `part` of `parts` of the memory that positions `w` of
    /// sequence `b` take for all KV heads, to hint into L2
    /// ([`crate::arch::prefetch_span`]): each head's pass over a window
    /// prefetches its share of a later window, so the window arrives as
    /// contiguous spans in address order, spread over the heads' passes (on
    /// an AMD Zen 4 core ~8 % faster than each head prefetching its own
    /// rows). Where the heads' rows are sparse in their span (strides padded
    /// far beyond the rows), KV head `g`'s own rows instead. The first
    /// contiguous K and V pieces are returned for the kernel to hint while
    /// it works ([`crate::arch::Ahead`]); anything else is hinted now.
    pub(super) fn prefetch_window(
        &self,
        b: usize,
        g: usize,
        w: Range<usize>,
        part: usize,
        parts: usize,
    ) -> [Span; 2] {
        let mut out = [Span::default(); 2];
        if w.is_empty() {
            return out;
        }
        let s = &self.plan.shape;
        let cache = &self.batch.cache;
        let (kdata, vdata) = cache.data();
        let (kt, vt) = token_strides(cache);
        let (kh, vh) = head_strides(cache);
        let latent = self.latent;
        for_runs(cache, b, 0, w.start, w.end, |run| {
            let mut hint =
                |kind: usize, data: &KvData<'_>, o: usize, t: usize, h: usize, d: usize| {
                    match Pieces::of(data, o, run.n, t, h, d, s.kv_heads) {
                        Some(p) => {
                            let span = p.share(part, parts);
                            if out[kind].bytes == 0 {
                                out[kind] = span;
                            } else {
                                crate::arch::prefetch_span(span.ptr, span.bytes);
                            }
                        }
                        None => {
                            let p = data.kernel_rows(o, t, d).ptr.wrapping_add(value_bytes(
                                data,
                                d,
                                g * h,
                            ));
                            for j in 0..run.n {
                                let row = p.wrapping_add(value_bytes(data, d, j * t));
                                crate::arch::prefetch_span(row, value_bytes(data, d, d));
                            }
                        }
                    }
                };
            hint(0, &kdata, run.k, kt, kh, s.head_dim_k);
            if !latent {
                hint(1, &vdata, run.v, vt, vh, s.head_dim_v);
            }
        });
        out
    }

    /// The memory positions `w` of sequence `b` take for all KV
    /// heads, K and V, as [`Pieces`], when they are one run of positions
    /// whose heads' rows fill their pieces (else `None`, and
    /// [`Job::prefetch_window`] hints per item).
    pub(super) fn window_pieces(&self, b: usize, w: Range<usize>) -> Option<[Pieces; 2]> {
        let s = &self.plan.shape;
        let cache = &self.batch.cache;
        let (kdata, vdata) = cache.data();
        let (kt, vt) = token_strides(cache);
        let (kh, vh) = head_strides(cache);
        let mut out = None;
        let mut runs = 0;
        for_runs(cache, b, 0, w.start, w.end, |run| {
            runs += 1;
            let pieces = |data: &KvData<'_>, o: usize, t: usize, h: usize, d: usize| {
                Pieces::of(data, o, run.n, t, h, d, s.kv_heads)
            };
            out = pieces(&kdata, run.k, kt, kh, s.head_dim_k)
                .zip(pieces(&vdata, run.v, vt, vh, s.head_dim_v))
                .map(|(k, v)| [k, v]);
        });
        out.filter(|_| runs == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Pieces;

    /// Shares of pieces that coincide with whole pieces (one per head of a
    /// page) or fall inside one piece come back as spans to hint later;
    /// shares that straddle two pieces are hinted at once (empty span).
    #[test]
    fn shares_of_pieces() {
        let base = 1usize << 20;
        let p = Pieces {
            ptr: base as *const u8,
            count: 8,
            len: 4096,
            stride: 8192,
        };
        for i in 0..8 {
            let s = p.share(i, 8);
            assert_eq!((s.ptr as usize, s.bytes), (base + i * 8192, 4096));
        }
        // Two parts per piece: halves of each piece.
        let s = p.share(3, 16);
        assert_eq!((s.ptr as usize, s.bytes), (base + 8192 + 2048, 2048));
        // Three parts over 8 pieces straddle piece boundaries.
        assert_eq!(p.share(1, 3).bytes, 0);
        // One piece (token-major): contiguous shares.
        let one = Pieces {
            count: 1,
            len: 65536,
            ..p
        };
        let s = one.share(5, 8);
        assert_eq!((s.ptr as usize, s.bytes), (base + 5 * 8192, 8192));
    }
}
