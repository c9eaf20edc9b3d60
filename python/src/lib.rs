//! `gqa_kernels._native`: the native half of the Python package
//! `gqa_kernels` (the pure-Python half, `gqa_kernels/__init__.py`, turns
//! layouts and keyword arguments into the calls here).
//!
//! Every cache arrives as a 4-D numpy array in the canonical order
//! `[outer, position, kv_head, unit]` (`[B, L, G, D]` for a strided or
//! ring cache, `[P, page, G, D]` for a page pool; the Python side
//! transposes other layouts, which costs no copy). Its strides are read
//! from the array, checked (non-negative, whole items, the last axis
//! contiguous) and handed to the library, which checks every position a
//! step reads against the buffer before any load. The arrays are borrowed
//! through rust-numpy's borrow checking, never copied, and the GIL is
//! released while the kernels run.

use std::sync::Mutex;

use gqa_kernels::quant::Fp8;
use gqa_kernels::{
    Batch, Bias, Blocks, BlocksMut, Dtype, Error, KvCache, KvCacheMut, KvData, KvDataMut, KvPages,
    KvPagesMut, KvTensor, KvTensorMut, LatentCacheMut, NewKv, Options, PagedKv, Plan, Positions,
    Precision, PrefixGroups, RingKv, Shape, Tier, Unit,
};
use half::{bf16, f16};
use numpy::{
    Element, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    gqa_kernels,
    GqaError,
    PyValueError,
    "An argument the library rejected; the message names the argument."
);

/// The library's error as a Python exception: a dtype mismatch is a
/// `TypeError`, everything else a `GqaError` (a `ValueError`).
fn lib_err(e: Error) -> PyErr {
    match e {
        Error::DtypeMismatch { .. } | Error::UnsupportedDtype { .. } => {
            PyTypeError::new_err(e.to_string())
        }
        _ => GqaError::new_err(e.to_string()),
    }
}

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// The item of `all` called `name`, or a `ValueError` naming `arg` and
/// listing the names (dtypes, units).
fn by_name<T: Copy>(
    arg: &str,
    what: &str,
    name: &str,
    all: &[T],
    name_of: fn(T) -> &'static str,
) -> PyResult<T> {
    all.iter()
        .copied()
        .find(|&x| name_of(x) == name)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&x| name_of(x)).collect();
            value_err(format!(
                "{arg}: unknown {what} {name:?} (one of {})",
                names.join(", ")
            ))
        })
}

fn parse_dtype(arg: &str, name: &str) -> PyResult<Dtype> {
    by_name(arg, "dtype", name, &Dtype::ALL, Dtype::name)
}

/// A unit by its name (`f32-fma`, `bf16-dot`, `int8-dot`, `amx-bf16`,
/// `amx-int8`).
fn parse_unit(name: &str) -> PyResult<Unit> {
    by_name("unit", "unit", name, &Unit::ALL, Unit::name)
}

/// The numpy type a cache of `dtype` is stored in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    F32,
    F16,
    U16,
    I8,
    U8,
}

impl Store {
    fn of(dtype: Dtype) -> Store {
        match dtype {
            Dtype::F32 => Store::F32,
            Dtype::F16 => Store::F16,
            Dtype::Bf16 => Store::U16,
            Dtype::Int8 => Store::I8,
            _ => Store::U8,
        }
    }

    fn numpy_name(self) -> &'static str {
        match self {
            Store::F32 => "float32",
            Store::F16 => "float16",
            Store::U16 => "uint16 (bfloat16 bits)",
            Store::I8 => "int8",
            Store::U8 => "uint8",
        }
    }
}

/// `(bytes, values)` of one storage unit: 1 item per value, or one block
/// of 32 values (576 for an fp8_ds_mla row) in `bytes` bytes.
fn unit(dtype: Dtype) -> (usize, usize) {
    match dtype.block() {
        Some(info) => (info.bytes, info.len),
        None => (1, 1),
    }
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.getattr("dtype") {
        Ok(dt) => format!("an array of {dt}"),
        Err(_) => match obj.get_type().name() {
            Ok(n) => format!("a {n}"),
            Err(_) => "another type".to_string(),
        },
    }
}

/// The memory an array addresses, in items: the extent from its first
/// element to one past its last (strides in items, each checked).
struct Span {
    len: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl Span {
    fn of<T: Element>(arg: &str, a: &Bound<'_, PyArrayDyn<T>>) -> PyResult<Span> {
        let item = std::mem::size_of::<T>();
        let shape = a.shape().to_vec();
        // `None`: an axis of one element whose stride numpy leaves
        // unusable (negative or not whole items); it gets the span's
        // length below, so that an index past it is out of bounds for
        // the library rather than an alias of index 0.
        let mut strides = Vec::with_capacity(shape.len());
        for (axis, (&s, &n)) in a.strides().iter().zip(&shape).enumerate() {
            let valid = s >= 0 && (s as usize).is_multiple_of(item);
            if !valid && n > 1 {
                return Err(value_err(format!(
                    "{arg}: stride {s} bytes on axis {axis} is negative or not a multiple of the \
                     item size ({item} bytes); pass a copy (numpy.ascontiguousarray)"
                )));
            }
            strides.push(valid.then(|| s as usize / item));
        }
        let len = if shape.contains(&0) {
            0
        } else {
            shape
                .iter()
                .zip(&strides)
                .try_fold(1usize, |acc, (&n, &s)| {
                    (n - 1)
                        .checked_mul(s.unwrap_or(0))
                        .and_then(|x| x.checked_add(acc))
                })
                .ok_or_else(|| value_err(format!("{arg}: strides overflow")))?
        };
        let strides: Vec<usize> = strides.into_iter().map(|s| s.unwrap_or(len)).collect();
        if len > 0 && !(a.data() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(value_err(format!(
                "{arg}: the array's data is not aligned to its item size; pass a copy \
                 (numpy.ascontiguousarray)"
            )));
        }
        Ok(Span {
            len,
            shape,
            strides,
        })
    }

    /// Whether every item of the span is exactly one element of the array
    /// (contiguous in some order of the axes: no gap, no alias).
    fn dense(&self) -> bool {
        let mut axes: Vec<(usize, usize)> = self
            .strides
            .iter()
            .zip(&self.shape)
            .filter(|(_, &n)| n > 1)
            .map(|(&s, &n)| (s, n))
            .collect();
        axes.sort_unstable();
        let mut expected = 1usize;
        for (s, n) in axes {
            if s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}

/// The items a read-only borrow spans.
fn ro_items<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, span: &Span) -> &'a [T] {
    if span.len == 0 {
        return &[];
    }
    // SAFETY: `span` was computed by `Span::of` from this array's shape and
    // strides (non-negative, whole items, checked for overflow) and its
    // pointer was checked for alignment: the `span.len` items from the
    // array's first element to its last lie in the one allocation the array
    // views (an array's elements, and everything between them, are in its
    // base buffer). The read-only borrow `a`, registered with rust-numpy's
    // borrow checking, outlives the slice, so no Rust code writes the
    // array's elements meanwhile; items between elements of a strided view
    // are never read by the library, which reads only the positions the
    // view's strides address.
    unsafe { std::slice::from_raw_parts(a.data() as *const T, span.len) }
}

/// Borrows `obj` read-only as an array of `T`, or a `TypeError`.
fn borrow_ro<'py, T: Element>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
    want: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let a = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{arg}: expected a numpy array of {want}, got {}",
            describe(obj)
        ))
    })?;
    a.try_readonly()
        .map_err(|e| value_err(format!("{arg}: cannot be borrowed for reading ({e})")))
}

fn borrow_rw<'py, T: Element>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
    want: &str,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    let a = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{arg}: expected a numpy array of {want}, got {}",
            describe(obj)
        ))
    })?;
    a.try_readwrite().map_err(|e| {
        value_err(format!(
            "{arg}: cannot be borrowed for writing (read-only, or shares memory with another \
             argument: {e})"
        ))
    })
}

/// A contiguous float32 array, read-only.
fn f32_slice<'a>(arg: &str, a: &'a PyReadonlyArrayDyn<'_, f32>) -> PyResult<&'a [f32]> {
    a.as_slice()
        .map_err(|_| value_err(format!("{arg}: must be a C-contiguous float32 array")))
}

fn f32_slice_mut<'a>(
    arg: &str,
    a: &'a mut PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<&'a mut [f32]> {
    a.as_slice_mut()
        .map_err(|_| value_err(format!("{arg}: must be a C-contiguous float32 array")))
}

enum Ro<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    U16(PyReadonlyArrayDyn<'py, u16>),
    I8(PyReadonlyArrayDyn<'py, i8>),
    U8(PyReadonlyArrayDyn<'py, u8>),
}

enum Rw<'py> {
    F32(PyReadwriteArrayDyn<'py, f32>),
    F16(PyReadwriteArrayDyn<'py, f16>),
    U16(PyReadwriteArrayDyn<'py, u16>),
    I8(PyReadwriteArrayDyn<'py, i8>),
    U8(PyReadwriteArrayDyn<'py, u8>),
}

/// What a 4-D cache array gives the library: its extents and strides in
/// values (`[outer, position, kv_head]`).
struct Layout {
    dims: [usize; 3],
    strides: [usize; 3],
}

/// Checks a 4-D cache array of `dtype` (`[outer, position, kv_head,
/// unit]`): the last axis holds one row of `head_dim` values, contiguous;
/// the other strides become strides in values.
fn layout(
    arg: &str,
    span: &Span,
    dtype: Dtype,
    head_dim: usize,
    kv_heads: usize,
) -> PyResult<Layout> {
    if span.shape.len() != 4 {
        return Err(value_err(format!(
            "{arg}: expected a 4-D cache array, got {} dimensions",
            span.shape.len()
        )));
    }
    let (bytes, values) = unit(dtype);
    if !dtype.fits_head_dim(head_dim) {
        return Err(value_err(format!(
            "{arg}: head dim {head_dim} does not fit the {values}-value blocks of {}",
            dtype.name()
        )));
    }
    // Whole blocks: an fp8_ds_mla row is one 656-byte block whatever the
    // head dim reads of it.
    let row = head_dim.div_ceil(values) * bytes;
    let last = span.shape[3];
    if last != row {
        return Err(value_err(format!(
            "{arg}: the last axis has {last} items, a row of {head_dim} {} values takes {row}",
            dtype.name()
        )));
    }
    if last > 1 && span.len > 0 && span.strides[3] != 1 {
        return Err(value_err(format!(
            "{arg}: the last axis must be contiguous (stride {} items); pass a copy \
             (numpy.ascontiguousarray)",
            span.strides[3]
        )));
    }
    if span.shape[2] != kv_heads {
        return Err(value_err(format!(
            "{arg}: the KV-head axis has {} heads, the plan has kv_heads = {kv_heads}",
            span.shape[2]
        )));
    }
    let mut strides = [0; 3];
    for (i, s) in strides.iter_mut().enumerate() {
        let st = span.strides[i];
        if !st.is_multiple_of(bytes) {
            return Err(value_err(format!(
                "{arg}: stride {st} bytes on axis {i} is not a whole number of {bytes}-byte {} \
                 blocks",
                dtype.name()
            )));
        }
        *s = st / bytes * values;
    }
    Ok(Layout {
        dims: [span.shape[0], span.shape[1], span.shape[2]],
        strides,
    })
}

/// int8 scales `[outer, position, kv_head]` (float32) matching the values'
/// layout: scale of the row at value offset `o` is item `o / head_dim`.
fn check_int8_scales(arg: &str, span: &Span, values: &Layout, head_dim: usize) -> PyResult<()> {
    if span.shape.as_slice() != values.dims.as_slice() {
        return Err(value_err(format!(
            "{arg}: shape {:?} (in the cache's layout) is not the cache's leading shape {:?}",
            span.shape, values.dims
        )));
    }
    for i in 0..3 {
        if span.shape[i] > 1 && span.strides[i] * head_dim != values.strides[i] {
            return Err(value_err(format!(
                "{arg}: its strides must be the cache's strides divided by the head dim (one \
                 scale per row, in the rows' order); axis {i} has {} items, the cache {} values",
                span.strides[i], values.strides[i]
            )));
        }
    }
    Ok(())
}

/// Whether the type stores one float32 scale per row (int8,
/// fp8e4m3_row), laid out as [`check_int8_scales`] says.
fn row_scaled(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::Int8 | Dtype::Fp8E4M3Row)
}

fn fp8_format(dtype: Dtype) -> Option<Fp8> {
    match dtype {
        Dtype::Fp8E4M3 => Some(Fp8::E4M3),
        Dtype::Fp8E5M2 => Some(Fp8::E5M2),
        _ => None,
    }
}

/// fp8 scales: one float32 per KV head or one for the tensor (copied: at
/// most `G` values).
fn fp8_scales(arg: &str, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<f32>> {
    let obj = obj.ok_or_else(|| {
        value_err(format!(
            "{arg}: an fp8 cache needs its scales (one float32 per KV head, or one)"
        ))
    })?;
    let a = borrow_ro::<f32>(arg, obj, "float32")?;
    let s = a.as_array();
    if s.ndim() != 1 {
        return Err(value_err(format!("{arg}: must be 1-D (G entries or one)")));
    }
    Ok(s.iter().copied().collect())
}

/// A cache array borrowed as its storage type (`$borrow`: read-only or
/// writable) into the matching variant of `$wrap`, with its span.
macro_rules! borrow_store {
    ($borrow:ident, $wrap:ident, $store:expr, $arg:expr, $obj:expr) => {{
        let store = $store;
        let want = store.numpy_name();
        match store {
            Store::F32 => {
                let a = $borrow::<f32>($arg, $obj, want)?;
                (Span::of($arg, &a)?, $wrap::F32(a))
            }
            Store::F16 => {
                let a = $borrow::<f16>($arg, $obj, want)?;
                (Span::of($arg, &a)?, $wrap::F16(a))
            }
            Store::U16 => {
                let a = $borrow::<u16>($arg, $obj, want)?;
                (Span::of($arg, &a)?, $wrap::U16(a))
            }
            Store::I8 => {
                let a = $borrow::<i8>($arg, $obj, want)?;
                (Span::of($arg, &a)?, $wrap::I8(a))
            }
            Store::U8 => {
                let a = $borrow::<u8>($arg, $obj, want)?;
                (Span::of($arg, &a)?, $wrap::U8(a))
            }
        }
    }};
}

/// A cache's borrowed row scales (int8, fp8e4m3_row) and its fp8
/// per-head scales.
type Scales<A> = (Option<(A, Span)>, Vec<f32>);

/// A cache's scales argument, by its type: int8 and fp8e4m3_row rows
/// need their row scales (borrowed by `borrow` and checked against the
/// cache's rows), fp8 takes optional per-head scales, and no other type
/// takes any.
fn cache_scales<'py, A>(
    scales_arg: &'static str,
    scales: Option<&Bound<'py, PyAny>>,
    dtype: Dtype,
    layout: &Layout,
    head_dim: usize,
    borrow: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<(A, Span)>,
) -> PyResult<Scales<A>> {
    if row_scaled(dtype) {
        let obj = scales.ok_or_else(|| {
            value_err(format!(
                "{scales_arg}: a {} cache needs its scales (float32, one per row)",
                dtype.name()
            ))
        })?;
        let (a, s) = borrow(obj)?;
        check_int8_scales(scales_arg, &s, layout, head_dim)?;
        Ok((Some((a, s)), Vec::new()))
    } else if fp8_format(dtype).is_some() {
        Ok((None, fp8_scales(scales_arg, scales)?))
    } else if scales.is_some() {
        Err(value_err(format!(
            "{scales_arg}: only int8, fp8 and fp8e4m3_row caches take scales ({} does not)",
            dtype.name()
        )))
    } else {
        Ok((None, Vec::new()))
    }
}

/// A cache array borrowed read-only, with its scales.
struct RoCache<'py> {
    arr: Ro<'py>,
    span: Span,
    dtype: Dtype,
    layout: Layout,
    int8_scales: Option<(PyReadonlyArrayDyn<'py, f32>, Span)>,
    fp8_scales: Vec<f32>,
}

impl<'py> RoCache<'py> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
        dtype: Dtype,
        head_dim: usize,
        kv_heads: usize,
        scales_arg: &'static str,
        scales: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<RoCache<'py>> {
        let (span, arr) = borrow_store!(borrow_ro, Ro, Store::of(dtype), arg, obj);
        let layout = layout(arg, &span, dtype, head_dim, kv_heads)?;
        let (int8_scales, fp8) =
            cache_scales(scales_arg, scales, dtype, &layout, head_dim, |obj| {
                let a = borrow_ro::<f32>(scales_arg, obj, "float32")?;
                let s = Span::of(scales_arg, &a)?;
                Ok((a, s))
            })?;
        Ok(RoCache {
            arr,
            span,
            dtype,
            layout,
            int8_scales,
            fp8_scales: fp8,
        })
    }

    fn data(&self) -> PyResult<KvData<'_>> {
        let sp = &self.span;
        Ok(match (&self.arr, self.dtype) {
            (Ro::F32(a), _) => KvData::F32(ro_items(a, sp)),
            (Ro::F16(a), _) => KvData::F16(ro_items(a, sp)),
            (Ro::U16(a), _) => KvData::Bf16(bytemuck::cast_slice::<u16, bf16>(ro_items(a, sp))),
            (Ro::I8(a), _) => {
                let scales = match &self.int8_scales {
                    Some((s, span)) => ro_items(s, span),
                    None => &[],
                };
                KvData::int8(ro_items(a, sp), scales)
            }
            (Ro::U8(a), Dtype::Fp8E4M3Row) => {
                let scales = match &self.int8_scales {
                    Some((s, span)) => ro_items(s, span),
                    None => &[],
                };
                KvData::fp8_row(ro_items(a, sp), scales)
            }
            (Ro::U8(a), d) => match fp8_format(d) {
                Some(f) => KvData::fp8(f, ro_items(a, sp), &self.fp8_scales),
                None => KvData::Blocks(Blocks::new(d, ro_items(a, sp)).map_err(lib_err)?),
            },
        })
    }

    fn tensor(&self) -> PyResult<KvTensor<'_>> {
        let [a, b, c] = self.layout.strides;
        Ok(KvTensor::new(self.data()?, a, b, c))
    }

    fn pages(&self) -> PyResult<KvPages<'_>> {
        let [a, b, c] = self.layout.strides;
        Ok(KvPages::new(self.data()?, a, b, c))
    }
}

/// The K and V views of a paged or ring cache (`view` of each), V being
/// K's own rows for a latent cache (`vc` `None`); V must have K's
/// positions per page or ring (`dims[1]`), else a `ValueError` naming
/// `v_arg` (`"{v_arg}: {what} {n} positions, {k_arg} has {m}"`).
fn k_and_v<'c, T: Copy>(
    kc: &'c RoCache<'_>,
    vc: Option<&'c RoCache<'_>>,
    v_arg: &str,
    what: &str,
    k_arg: &str,
    view: impl Fn(&'c RoCache<'_>) -> PyResult<T>,
) -> PyResult<(T, T)> {
    let k = view(kc)?;
    let Some(vc) = vc else { return Ok((k, k)) };
    let (n, m) = (vc.layout.dims[1], kc.layout.dims[1]);
    if n != m {
        return Err(value_err(format!(
            "{v_arg}: {what} {n} positions, {k_arg} has {m}"
        )));
    }
    Ok((k, view(vc)?))
}

/// A cache array borrowed for writing (dense: contiguous in some order).
struct RwCache<'py> {
    arr: Rw<'py>,
    span: Span,
    dtype: Dtype,
    layout: Layout,
    int8_scales: Option<(PyReadwriteArrayDyn<'py, f32>, Span)>,
    fp8_scales: Vec<f32>,
}

/// The items a dense read-write borrow holds.
fn rw_items<'a, T: Element>(a: &'a mut PyReadwriteArrayDyn<'_, T>, span: &Span) -> &'a mut [T] {
    if span.len == 0 {
        return &mut [];
    }
    debug_assert!(span.dense());
    // SAFETY: `span` comes from `Span::of` on this array (non-negative
    // strides in whole items, no overflow, aligned pointer) and
    // `RwCache::new` checked it is dense: its `span.len` items are exactly
    // the array's elements, each once. The read-write borrow `a`, registered
    // with rust-numpy's borrow checking (which refuses any other borrow of
    // overlapping memory while it lives), is held mutably for the slice's
    // lifetime, so the slice is the only reference to those items.
    unsafe { std::slice::from_raw_parts_mut(a.data(), span.len) }
}

impl<'py> RwCache<'py> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        arg: &'static str,
        obj: &Bound<'py, PyAny>,
        dtype: Dtype,
        head_dim: usize,
        kv_heads: usize,
        scales_arg: &'static str,
        scales: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<RwCache<'py>> {
        let (span, arr) = borrow_store!(borrow_rw, Rw, Store::of(dtype), arg, obj);
        if !span.dense() {
            return Err(value_err(format!(
                "{arg}: a cache written by append must be contiguous in some order of its axes \
                 (no gaps, no repeated elements)"
            )));
        }
        let layout = layout(arg, &span, dtype, head_dim, kv_heads)?;
        let (int8_scales, fp8) =
            cache_scales(scales_arg, scales, dtype, &layout, head_dim, |obj| {
                let a = borrow_rw::<f32>(scales_arg, obj, "float32")?;
                let s = Span::of(scales_arg, &a)?;
                if !s.dense() {
                    return Err(value_err(format!(
                        "{scales_arg}: must be contiguous in some order of its axes"
                    )));
                }
                Ok((a, s))
            })?;
        Ok(RwCache {
            arr,
            span,
            dtype,
            layout,
            int8_scales,
            fp8_scales: fp8,
        })
    }

    fn data_mut(&mut self) -> PyResult<KvDataMut<'_>> {
        let sp = &self.span;
        Ok(match (&mut self.arr, self.dtype) {
            (Rw::F32(a), _) => KvDataMut::F32(rw_items(a, sp)),
            (Rw::F16(a), _) => KvDataMut::F16(rw_items(a, sp)),
            (Rw::U16(a), _) => {
                KvDataMut::Bf16(bytemuck::cast_slice_mut::<u16, bf16>(rw_items(a, sp)))
            }
            (Rw::I8(a), _) => {
                let scales: &mut [f32] = match &mut self.int8_scales {
                    Some((s, span)) => rw_items(s, span),
                    None => &mut [],
                };
                KvDataMut::int8(rw_items(a, sp), scales)
            }
            (Rw::U8(a), Dtype::Fp8E4M3Row) => {
                let scales: &mut [f32] = match &mut self.int8_scales {
                    Some((s, span)) => rw_items(s, span),
                    None => &mut [],
                };
                KvDataMut::fp8_row(rw_items(a, sp), scales)
            }
            (Rw::U8(a), d) => match fp8_format(d) {
                Some(f) => KvDataMut::fp8(f, rw_items(a, sp), &self.fp8_scales),
                None => KvDataMut::Blocks(BlocksMut::new(d, rw_items(a, sp)).map_err(lib_err)?),
            },
        })
    }

    fn tensor_mut(&mut self) -> PyResult<KvTensorMut<'_>> {
        let [a, b, c] = self.layout.strides;
        Ok(KvTensorMut::new(self.data_mut()?, a, b, c))
    }

    fn pages_mut(&mut self) -> PyResult<KvPagesMut<'_>> {
        let [a, b, c] = self.layout.strides;
        Ok(KvPagesMut::new(self.data_mut()?, a, b, c))
    }
}

/// New K or V rows `[T, G, D]`: contiguous float32, float16 or uint16
/// (bfloat16 bits).
enum NewRows<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F16(PyReadonlyArrayDyn<'py, f16>),
    U16(PyReadonlyArrayDyn<'py, u16>),
}

impl<'py> NewRows<'py> {
    fn new(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<(NewRows<'py>, [usize; 3])> {
        let want = "float32, float16 or uint16 (bfloat16 bits)";
        let rows = if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
            NewRows::F32(try_ro(arg, a)?)
        } else if let Ok(a) = obj.cast::<PyArrayDyn<f16>>() {
            NewRows::F16(try_ro(arg, a)?)
        } else if let Ok(a) = obj.cast::<PyArrayDyn<u16>>() {
            NewRows::U16(try_ro(arg, a)?)
        } else {
            return Err(PyTypeError::new_err(format!(
                "{arg}: expected a numpy array of {want}, got {}",
                describe(obj)
            )));
        };
        let shape = match &rows {
            NewRows::F32(a) => a.shape().to_vec(),
            NewRows::F16(a) => a.shape().to_vec(),
            NewRows::U16(a) => a.shape().to_vec(),
        };
        if shape.len() != 3 {
            return Err(value_err(format!(
                "{arg}: expected [tokens, kv_heads, head_dim], got {} dimensions",
                shape.len()
            )));
        }
        Ok((rows, [shape[0], shape[1], shape[2]]))
    }

    fn data(&self, arg: &str) -> PyResult<KvData<'_>> {
        let err = || value_err(format!("{arg}: must be C-contiguous"));
        Ok(match self {
            NewRows::F32(a) => KvData::F32(a.as_slice().map_err(|_| err())?),
            NewRows::F16(a) => KvData::F16(a.as_slice().map_err(|_| err())?),
            NewRows::U16(a) => KvData::Bf16(bytemuck::cast_slice::<u16, bf16>(
                a.as_slice().map_err(|_| err())?,
            )),
        })
    }
}

fn try_ro<'py, T: Element>(
    arg: &str,
    a: &Bound<'py, PyArrayDyn<T>>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    a.try_readonly()
        .map_err(|e| value_err(format!("{arg}: cannot be borrowed for reading ({e})")))
}

/// A decode plan (see `gqa_kernels.Plan`, which wraps this class).
#[pyclass(frozen, name = "Plan", module = "gqa_kernels._native")]
struct NativePlan {
    plan: Plan,
    /// Workspaces of finished calls, reused by the next ones (one per
    /// concurrent call at most).
    workspaces: Mutex<Vec<Vec<u8>>>,
}

impl NativePlan {
    /// A spare workspace, or a new one; an allocation the system refuses
    /// is a `MemoryError` (a plan's shape may ask for more than there is).
    fn take_workspace(&self) -> PyResult<Vec<u8>> {
        let spare = self
            .workspaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if let Some(ws) = spare {
            return Ok(ws);
        }
        let n = self.plan.workspace_bytes();
        let mut ws = Vec::new();
        ws.try_reserve_exact(n).map_err(|_| {
            PyMemoryError::new_err(format!(
                "workspace: cannot allocate the plan's {n} bytes (batch, heads, q_len or \
                 max_kv_len too large for this machine)"
            ))
        })?;
        ws.resize(n, 0);
        Ok(ws)
    }

    fn return_workspace(&self, ws: Vec<u8>) {
        let mut pool = self.workspaces.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 16 {
            pool.push(ws);
        }
    }
}

#[pymethods]
impl NativePlan {
    #[new]
    #[pyo3(signature = (batch, heads, kv_heads, head_dim, dtype, head_dim_v, v_dtype, q_len,
        max_kv_len, threads, precision, window, softcap, alibi_slopes, alibi_max_bias, sinks,
        scale, tier, cascade, unit=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        batch: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: &str,
        head_dim_v: Option<usize>,
        v_dtype: Option<&str>,
        q_len: usize,
        max_kv_len: usize,
        threads: usize,
        precision: &str,
        window: Option<usize>,
        softcap: Option<f32>,
        alibi_slopes: Option<Vec<f32>>,
        alibi_max_bias: Option<f32>,
        sinks: Option<Vec<f32>>,
        scale: Option<f32>,
        tier: Option<&str>,
        cascade: bool,
        unit: Option<&str>,
    ) -> PyResult<NativePlan> {
        let k_dtype = parse_dtype("dtype", dtype)?;
        let v_dtype = match v_dtype {
            Some(v) => parse_dtype("v_dtype", v)?,
            None => k_dtype,
        };
        let shape = Shape::new(batch, heads, kv_heads, head_dim, k_dtype)
            .with_head_dims(head_dim, head_dim_v.unwrap_or(head_dim))
            .with_dtypes(k_dtype, v_dtype)
            .with_q_len(q_len)
            .with_max_kv_len(max_kv_len);
        let mut options = Options::default().with_threads(threads);
        options.precision = match precision {
            "exact" => Precision::Exact,
            "fast" => Precision::Fast,
            other => {
                return Err(value_err(format!(
                    "precision: {other:?} is not \"exact\" or \"fast\""
                )))
            }
        };
        options.window = window;
        options.softcap = softcap;
        options.scale = scale;
        options.cascade = cascade;
        if let Some(t) = tier {
            options.tier = Some(t.parse::<Tier>().map_err(lib_err)?);
        }
        if let Some(u) = unit {
            options.unit = Some(parse_unit(u)?);
        }
        let mut plan = Plan::new(&shape, &options).map_err(lib_err)?;
        if let Some(s) = alibi_slopes {
            plan = plan.with_alibi(&s).map_err(lib_err)?;
        }
        if let Some(m) = alibi_max_bias {
            plan = plan.with_alibi_max_bias(m).map_err(lib_err)?;
        }
        if let Some(s) = sinks {
            plan = plan.with_sinks(&s).map_err(lib_err)?;
        }
        Ok(NativePlan {
            plan,
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// (batch, heads, kv_heads, head_dim_k, head_dim_v, q_len, max_kv_len, k dtype, v dtype)
    #[getter]
    fn shape(
        &self,
    ) -> (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        String,
        String,
    ) {
        let s = self.plan.shape();
        (
            s.batch,
            s.heads,
            s.kv_heads,
            s.head_dim_k,
            s.head_dim_v,
            s.q_len,
            s.max_kv_len,
            s.k_dtype.name().to_string(),
            s.v_dtype.name().to_string(),
        )
    }

    #[getter]
    fn tier(&self) -> &'static str {
        self.plan.tier().name()
    }

    #[getter]
    fn unit(&self) -> &'static str {
        self.plan.unit().name()
    }

    #[getter]
    fn precision(&self) -> &'static str {
        self.plan.precision().name()
    }

    #[getter]
    fn kernel_name(&self) -> &'static str {
        self.plan.kernel_name()
    }

    #[getter]
    fn threads(&self) -> usize {
        self.plan.threads()
    }

    #[getter]
    fn scale(&self) -> f32 {
        self.plan.scale()
    }

    #[getter]
    fn workspace_bytes(&self) -> usize {
        self.plan.workspace_bytes()
    }

    /// One step; see `gqa_kernels.Plan.run`. `k`/`v` are 4-D arrays in the
    /// canonical order, `cache` is "strided", "paged" or "ring".
    #[pyo3(signature = (q, k, v, seq_lens, out, lse, cache, k_scales=None, v_scales=None,
        block_table=None, blocks_per_seq=0, first_pos=None, q_offsets=None, positions=None,
        position_offsets=None, per_kv_head=false, tree_mask=None, prefix=None, bias=None))]
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: Option<&Bound<'py, PyAny>>,
        seq_lens: Vec<usize>,
        out: &Bound<'py, PyAny>,
        lse: Option<&Bound<'py, PyAny>>,
        cache: &str,
        k_scales: Option<&Bound<'py, PyAny>>,
        v_scales: Option<&Bound<'py, PyAny>>,
        block_table: Option<Vec<u32>>,
        blocks_per_seq: usize,
        first_pos: Option<Vec<usize>>,
        q_offsets: Option<Vec<usize>>,
        positions: Option<Vec<u32>>,
        position_offsets: Option<Vec<usize>>,
        per_kv_head: bool,
        tree_mask: Option<Vec<u64>>,
        prefix: Option<(Vec<usize>, Vec<usize>, Vec<usize>)>,
        bias: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let shape = *self.plan.shape();
        let qa = borrow_ro::<f32>("q", q, "float32")?;
        let q_s = f32_slice("q", &qa)?;
        let kc = RoCache::new(
            "k",
            k,
            shape.k_dtype,
            shape.head_dim_k,
            shape.kv_heads,
            "k_scales",
            k_scales,
        )?;
        let vc = match v {
            Some(v) => Some(RoCache::new(
                "v",
                v,
                shape.v_dtype,
                shape.head_dim_v,
                shape.kv_heads,
                "v_scales",
                v_scales,
            )?),
            None => {
                if v_scales.is_some() {
                    return Err(value_err(
                        "v_scales: a latent cache has no V array (its scales are k_scales)"
                            .to_string(),
                    ));
                }
                if shape.v_dtype != shape.k_dtype {
                    return Err(PyTypeError::new_err(format!(
                        "v_dtype: a latent cache reads V from K ({}), the plan's v_dtype is {}",
                        shape.k_dtype.name(),
                        shape.v_dtype.name()
                    )));
                }
                None
            }
        };
        let longest = seq_lens.iter().copied().max().unwrap_or(0);
        let kv_cache = match cache {
            "strided" => {
                for c in std::iter::once(&kc).chain(vc.as_ref()) {
                    if c.layout.dims[1] < longest {
                        return Err(value_err(format!(
                            "seq_lens: a sequence of {longest} positions does not fit the \
                             cache's {} positions",
                            c.layout.dims[1]
                        )));
                    }
                }
                match &vc {
                    Some(vc) => KvCache::strided(kc.tensor()?, vc.tensor()?),
                    None => KvCache::latent(kc.tensor()?),
                }
            }
            "paged" => {
                let table = block_table.as_deref().ok_or_else(|| {
                    value_err("block_table: a paged cache needs its block table".to_string())
                })?;
                let page_size = kc.layout.dims[1];
                let (kp, vp) = k_and_v(&kc, vc.as_ref(), "v_pages", "pages of", "k_pages", |c| {
                    c.pages()
                })?;
                KvCache::Paged(PagedKv {
                    k: kp,
                    v: vp,
                    page_size,
                    block_table: table,
                    blocks_per_seq,
                })
            }
            "ring" => {
                let first = first_pos.as_deref().ok_or_else(|| {
                    value_err("first_pos: a ring cache needs each sequence's first position".into())
                })?;
                let capacity = kc.layout.dims[1];
                let (kt, vt) = k_and_v(&kc, vc.as_ref(), "v", "a ring of", "k", |c| c.tensor())?;
                KvCache::Ring(RingKv {
                    k: kt,
                    v: vt,
                    capacity,
                    first_pos: first,
                })
            }
            other => {
                return Err(value_err(format!(
                    "cache: {other:?} is not \"strided\", \"paged\" or \"ring\""
                )))
            }
        };
        let mut batch = Batch::new(q_s, kv_cache, &seq_lens);
        if let Some(o) = q_offsets.as_deref() {
            batch = batch.with_q_offsets(o);
        }
        match (positions.as_deref(), position_offsets.as_deref()) {
            (Some(p), Some(o)) => {
                batch = batch.with_positions(Positions {
                    positions: p,
                    offsets: o,
                    per_kv_head,
                })
            }
            (None, None) => {}
            _ => {
                return Err(value_err(
                    "positions: give both the lists and their offsets".to_string(),
                ))
            }
        }
        if let Some(m) = tree_mask.as_deref() {
            batch = batch.with_tree_mask(m);
        }
        if let Some((lens, offsets, members)) = &prefix {
            batch = batch.with_prefix_groups(PrefixGroups::new(lens, offsets, members));
        }
        let bias_a = match bias {
            Some(b) => Some(borrow_ro::<f32>("bias", b, "float32")?),
            None => None,
        };
        let bias_span = match &bias_a {
            Some(a) => {
                let sp = Span::of("bias", a)?;
                if sp.shape.len() != 4 {
                    return Err(value_err(format!(
                        "bias: expected [batch, tokens, heads (or 1), positions], got {} \
                         dimensions",
                        sp.shape.len()
                    )));
                }
                if sp.shape[3] > 1 && sp.strides[3] != 1 {
                    return Err(value_err(
                        "bias: the position axis must be contiguous".to_string(),
                    ));
                }
                Some(sp)
            }
            None => None,
        };
        if let (Some(a), Some(sp)) = (&bias_a, &bias_span) {
            batch = batch.with_bias(Bias {
                data: ro_items(a, sp),
                seq_stride: sp.strides[0],
                token_stride: sp.strides[1],
                head_stride: sp.strides[2],
            });
        }
        let mut out_a = borrow_rw::<f32>("out", out, "float32")?;
        let out_s = f32_slice_mut("out", &mut out_a)?;
        let mut lse_a = match lse {
            Some(l) => Some(borrow_rw::<f32>("lse", l, "float32")?),
            None => None,
        };
        let lse_s = match &mut lse_a {
            Some(l) => Some(f32_slice_mut("lse", l)?),
            None => None,
        };
        let mut ws = self.take_workspace()?;
        let plan = &self.plan;
        let result = py.detach(|| plan.run(&batch, out_s, lse_s, &mut ws));
        self.return_workspace(ws);
        result.map_err(lib_err)
    }
}

/// Writes new rows into a cache; see `gqa_kernels.append`.
#[pyfunction]
#[pyo3(signature = (k, v, new_k, new_v, offsets, positions, dtype, v_dtype, cache,
    k_scales=None, v_scales=None, block_table=None, blocks_per_seq=0))]
#[allow(clippy::too_many_arguments)]
fn append<'py>(
    py: Python<'py>,
    k: &Bound<'py, PyAny>,
    v: Option<&Bound<'py, PyAny>>,
    new_k: &Bound<'py, PyAny>,
    new_v: Option<&Bound<'py, PyAny>>,
    offsets: Vec<usize>,
    positions: Vec<usize>,
    dtype: &str,
    v_dtype: Option<&str>,
    cache: &str,
    k_scales: Option<&Bound<'py, PyAny>>,
    v_scales: Option<&Bound<'py, PyAny>>,
    block_table: Option<Vec<u32>>,
    blocks_per_seq: usize,
) -> PyResult<()> {
    let k_dtype = parse_dtype("dtype", dtype)?;
    let v_dtype = match v_dtype {
        Some(d) => parse_dtype("v_dtype", d)?,
        None => k_dtype,
    };
    let (nk, [_, g, dk]) = NewRows::new("new_k", new_k)?;
    let nv = match new_v {
        Some(nv) => Some(NewRows::new("new_v", nv)?),
        None => None,
    };
    let dv = nv.as_ref().map_or(0, |(_, s)| s[2]);
    let mut kc = RwCache::new("k", k, k_dtype, dk, g, "k_scales", k_scales)?;
    let table = || {
        block_table
            .as_deref()
            .ok_or_else(|| value_err("block_table: a paged cache needs its block table".into()))
    };
    match (v, &nv) {
        (Some(v), Some((nv_rows, _))) => {
            let mut vc = RwCache::new("v", v, v_dtype, dv, g, "v_scales", v_scales)?;
            let new = NewKv {
                k: nk.data("new_k")?,
                v: nv_rows.data("new_v")?,
                offsets: &offsets,
                kv_heads: g,
                head_dim_k: dk,
                head_dim_v: dv,
            };
            let (kd, vd) = (kc.layout.dims[1], vc.layout.dims[1]);
            if kd != vd {
                return Err(value_err(format!(
                    "v: the position axis has {vd} entries, k has {kd}"
                )));
            }
            let mut c = match cache {
                "strided" => KvCacheMut::Strided {
                    k: kc.tensor_mut()?,
                    v: vc.tensor_mut()?,
                    capacity: kd,
                },
                "ring" => KvCacheMut::Ring {
                    k: kc.tensor_mut()?,
                    v: vc.tensor_mut()?,
                    capacity: kd,
                },
                "paged" => KvCacheMut::Paged {
                    k: kc.pages_mut()?,
                    v: vc.pages_mut()?,
                    page_size: kd,
                    block_table: table()?,
                    blocks_per_seq,
                },
                other => {
                    return Err(value_err(format!(
                        "cache: {other:?} is not \"strided\", \"paged\" or \"ring\""
                    )))
                }
            };
            py.detach(|| gqa_kernels::append(&mut c, &new, &positions))
                .map_err(lib_err)
        }
        (None, None) => {
            if v_scales.is_some() {
                return Err(value_err(
                    "v_scales: a latent cache has no V array".to_string(),
                ));
            }
            let new = NewKv {
                k: nk.data("new_k")?,
                v: KvData::F32(&[]),
                offsets: &offsets,
                kv_heads: g,
                head_dim_k: dk,
                head_dim_v: dk,
            };
            let kd = kc.layout.dims[1];
            let mut c = match cache {
                "strided" => LatentCacheMut::Strided {
                    kv: kc.tensor_mut()?,
                    capacity: kd,
                },
                "ring" => LatentCacheMut::Ring {
                    kv: kc.tensor_mut()?,
                    capacity: kd,
                },
                "paged" => LatentCacheMut::Paged {
                    kv: kc.pages_mut()?,
                    page_size: kd,
                    block_table: table()?,
                    blocks_per_seq,
                },
                other => {
                    return Err(value_err(format!(
                        "cache: {other:?} is not \"strided\", \"paged\" or \"ring\""
                    )))
                }
            };
            py.detach(|| gqa_kernels::append_latent(&mut c, &new, &positions))
                .map_err(lib_err)
        }
        (Some(_), None) => Err(value_err(
            "new_v: the cache has a V array, give new_v".into(),
        )),
        (None, Some(_)) => Err(value_err(
            "v: new_v given but no V cache (a latent cache takes new_k only)".into(),
        )),
    }
}

/// Merges `(other_out, other_lse)` into `(out, lse)`; see
/// `gqa_kernels.merge_states`.
#[pyfunction]
fn merge_states<'py>(
    py: Python<'py>,
    out: &Bound<'py, PyAny>,
    lse: &Bound<'py, PyAny>,
    other_out: &Bound<'py, PyAny>,
    other_lse: &Bound<'py, PyAny>,
    head_dim_v: usize,
) -> PyResult<()> {
    let oa = borrow_ro::<f32>("other_out", other_out, "float32")?;
    let la = borrow_ro::<f32>("other_lse", other_lse, "float32")?;
    let (oo, ol) = (f32_slice("other_out", &oa)?, f32_slice("other_lse", &la)?);
    let mut out_a = borrow_rw::<f32>("out", out, "float32")?;
    let mut lse_a = borrow_rw::<f32>("lse", lse, "float32")?;
    let out_s = f32_slice_mut("out", &mut out_a)?;
    let lse_s = f32_slice_mut("lse", &mut lse_a)?;
    py.detach(|| gqa_kernels::merge_states(out_s, lse_s, oo, ol, head_dim_v))
        .map_err(lib_err)
}

/// Pools the heads of a K or V projection; see `gqa_kernels.pool_heads`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn pool_heads<'py>(
    py: Python<'py>,
    src: &Bound<'py, PyAny>,
    dtype: &str,
    heads: usize,
    head_dim: usize,
    cols: usize,
    groups: usize,
    how: &str,
) -> PyResult<Bound<'py, PyAny>> {
    use gqa_convert::{Pooling, ProjShape};
    let how = match how {
        "mean" => Pooling::Mean,
        "first" => Pooling::First,
        other => {
            return Err(value_err(format!(
                "how: {other:?} is not \"mean\" or \"first\""
            )))
        }
    };
    let shape = ProjShape {
        heads,
        head_dim,
        cols,
    };
    let contiguous = |_| value_err("weights: must be C-contiguous".to_string());
    Ok(match parse_dtype("dtype", dtype)? {
        Dtype::F32 => {
            let a = borrow_ro::<f32>("weights", src, "float32")?;
            let s = a.as_slice().map_err(contiguous)?;
            let out = gqa_convert::pool_heads(s, shape, groups, how).map_err(lib_err)?;
            PyArray1::from_vec(py, out).into_any()
        }
        Dtype::F16 => {
            let a = borrow_ro::<f16>("weights", src, "float16")?;
            let s = a.as_slice().map_err(contiguous)?;
            let out = gqa_convert::pool_heads(s, shape, groups, how).map_err(lib_err)?;
            PyArray1::from_vec(py, out).into_any()
        }
        Dtype::Bf16 => {
            let a = borrow_ro::<u16>("weights", src, "uint16 (bfloat16 bits)")?;
            let s = bytemuck::cast_slice::<u16, bf16>(a.as_slice().map_err(contiguous)?);
            let out = gqa_convert::pool_heads(s, shape, groups, how).map_err(lib_err)?;
            let bits: Vec<u16> = out.iter().map(|x| x.to_bits()).collect();
            PyArray1::from_vec(py, bits).into_any()
        }
        other => {
            return Err(PyTypeError::new_err(format!(
                "dtype: weights are f32, f16 or bf16, not {}",
                other.name()
            )))
        }
    })
}

/// The tier the dispatcher picks on this CPU (`GQA_KERNELS_ISA` may force
/// one).
#[pyfunction]
fn active_tier() -> PyResult<&'static str> {
    gqa_kernels::active_tier()
        .map(|t| t.name())
        .map_err(lib_err)
}

/// The names of every dtype the library knows.
#[pyfunction]
fn dtypes() -> Vec<&'static str> {
    Dtype::ALL.iter().map(|d| d.name()).collect()
}

/// Every multiply-add unit by name, with `None` where this process can
/// use it and the reason where it cannot.
#[pyfunction]
fn units() -> Vec<(&'static str, Option<&'static str>)> {
    Unit::ALL
        .iter()
        .map(|u| (u.name(), u.unavailable_reason()))
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativePlan>()?;
    m.add_function(wrap_pyfunction!(append, m)?)?;
    m.add_function(wrap_pyfunction!(merge_states, m)?)?;
    m.add_function(wrap_pyfunction!(pool_heads, m)?)?;
    m.add_function(wrap_pyfunction!(active_tier, m)?)?;
    m.add_function(wrap_pyfunction!(dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(units, m)?)?;
    m.add("GqaError", m.py().get_type::<GqaError>())?;
    Ok(())
}
