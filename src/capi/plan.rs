//! Entries about the library and a plan: version, tiers, creating and configuring a plan, its queries.

use super::*;

/// The message of the last failed call on this thread ("" after a
/// success). Valid until the next call on this thread.
#[no_mangle]
pub extern "C" fn gqa_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version (`"0.1.0"`), static.
#[no_mangle]
pub extern "C" fn gqa_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// `sizeof` of the library's struct number `id` (0 `gqa_shape`,
/// 1 `gqa_options`, 2 `gqa_kv`, 3 `gqa_cache`, 4 `gqa_batch`,
/// 5 `gqa_new_kv`), or 0 for an unknown id: lets a host check that its
/// header and the library agree.
#[no_mangle]
pub extern "C" fn gqa_sizeof(id: i32) -> usize {
    usize::try_from(id)
        .ok()
        .and_then(|i| STRUCTS.get(i))
        .map_or(0, |s| s.1)
}

/// The name of a tier (`"avx512"`, …), static; NULL for an unknown code.
#[no_mangle]
pub extern "C" fn gqa_tier_name(tier: i32) -> *const c_char {
    match tier_of(tier) {
        Ok(t) => t.c_name().as_ptr(),
        Err(_) => std::ptr::null(),
    }
}

/// Whether the CPU runs tier `tier` (1) or not (0, also for unknown codes).
#[no_mangle]
pub extern "C" fn gqa_tier_available(tier: i32) -> i32 {
    tier_of(tier).is_ok_and(|t| t.is_available()) as i32
}

/// The tier plans use by default (`GQA_KERNELS_ISA` or the best).
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_active_tier(out: *mut i32) -> i32 {
    guard(|| {
        let t = crate::active_tier()?;
        // SAFETY: the caller's contract.
        unsafe { put("out", out, tier_code(t)) }
    })
}

/// Makes a plan for `shape` (`options` may be NULL for the defaults) and
/// stores its handle in `*out` (free it with [`gqa_plan_destroy`]).
///
/// # Safety
/// Pointers are null or valid (structs for their `struct_size`).
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_create(
    shape: *const gqa_shape,
    options: *const gqa_options,
    out: *mut *mut gqa_plan,
) -> i32 {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { read_struct("shape", shape)? };
        let o = if options.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe {
                read_struct_since("options", options, std::mem::offset_of!(gqa_options, unit))?
            })
        };
        let sh = Shape::new(s.batch, s.heads, s.kv_heads, s.head_dim_k, Dtype::F32)
            .with_head_dims(s.head_dim_k, s.head_dim_v)
            .with_dtypes(
                dtype("shape.k_dtype", s.k_dtype)?,
                dtype("shape.v_dtype", s.v_dtype)?,
            )
            .with_q_len(s.q_len.max(1))
            .with_max_kv_len(s.max_kv_len);
        let mut opts = Options::default();
        if let Some(o) = o {
            if o.scale != 0.0 {
                opts.scale = Some(o.scale);
            }
            if o.tier != GQA_TIER_AUTO {
                opts.tier = Some(tier_of(o.tier)?);
            }
            opts.threads = o.threads;
            opts.window = (o.window > 0).then_some(o.window);
            opts.softcap = (o.softcap != 0.0).then_some(o.softcap);
            opts.unit = unit_of(o.unit)?;
            opts.precision = precision_of(o.precision)?;
            opts.cascade = match o.cascade {
                0 => false,
                1 => true,
                x => return Err(invalid(format!("`options.cascade` = {x} is not 0 or 1"))),
            };
        }
        let plan = Plan::new(&sh, &opts)?;
        // SAFETY: `out` is non-null and valid for a write.
        unsafe { out.write(Box::into_raw(Box::new(gqa_plan { plan }))) };
        Ok(())
    })
}

/// Frees a plan (NULL is a no-op).
///
/// # Safety
/// `plan` is null or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_destroy(plan: *mut gqa_plan) {
    if !plan.is_null() {
        // SAFETY: a live handle from `gqa_plan_create`, dropped once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(plan) })));
    }
}

/// Sets one attention-sink logit per query head (`n == heads`).
///
/// # Safety
/// `plan` is a live handle; `sinks` is valid for `n` floats.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_sinks(
    plan: *mut gqa_plan,
    sinks: *const f32,
    n: usize,
) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { slice("sinks", sinks, n)? };
        // SAFETY: a live handle, not shared during this call.
        unsafe { (*plan).plan.set_sinks(s)? };
        Ok(())
    })
}

/// Sets one ALiBi slope per query head (`n == heads`).
///
/// # Safety
/// `plan` is a live handle; `slopes` is valid for `n` floats.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_alibi(
    plan: *mut gqa_plan,
    slopes: *const f32,
    n: usize,
) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: the caller's contract.
        let s = unsafe { slice("slopes", slopes, n)? };
        // SAFETY: a live handle, not shared during this call.
        unsafe { (*plan).plan.set_alibi(s)? };
        Ok(())
    })
}

/// Sets ALiBi slopes from `max_bias` by the standard formula.
///
/// # Safety
/// `plan` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_set_alibi_max_bias(plan: *mut gqa_plan, max_bias: f32) -> i32 {
    guard(|| {
        if plan.is_null() {
            return Err(null("plan"));
        }
        // SAFETY: a live handle, not shared during this call.
        let p = unsafe { &mut (*plan).plan };
        let slopes = crate::alibi_slopes(p.shape().heads, max_bias)?;
        p.set_alibi(&slopes)?;
        Ok(())
    })
}

/// Bytes of workspace `gqa_run` needs (exact; any alignment).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_workspace_bytes(plan: *const gqa_plan, out: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, p.workspace_bytes()) }
    })
}

/// The plan's tier (`GQA_TIER_…`).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_tier(plan: *const gqa_plan, out: *mut i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, tier_code(p.tier())) }
    })
}

/// The multiply-add unit of the plan's kernels (`GQA_UNIT_…`, never
/// `GQA_UNIT_AUTO`).
///
/// # Safety
/// `plan` is a live handle; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_unit(plan: *const gqa_plan, out: *mut i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { plan_ref(plan)? };
        // SAFETY: the caller's contract.
        unsafe { put("out", out, unit_code(p.unit())) }
    })
}

/// `"f32-fma"`, `"bf16-dot"`, `"int8-dot"`, `"amx-bf16"`, `"amx-int8"`,
/// or NULL for `GQA_UNIT_AUTO` and unknown codes.
#[no_mangle]
pub extern "C" fn gqa_unit_name(unit: i32) -> *const c_char {
    match unit_of(unit) {
        Ok(Some(Unit::F32Fma)) => c"f32-fma".as_ptr(),
        Ok(Some(Unit::Bf16Dot)) => c"bf16-dot".as_ptr(),
        Ok(Some(Unit::Int8Dot)) => c"int8-dot".as_ptr(),
        Ok(Some(Unit::AmxBf16)) => c"amx-bf16".as_ptr(),
        Ok(Some(Unit::AmxInt8)) => c"amx-int8".as_ptr(),
        _ => std::ptr::null(),
    }
}

/// The name of the plan's kernel instance for one query token
/// (`"decode_f16_d128_r4__avx512"`), static; NULL for a NULL plan.
///
/// # Safety
/// `plan` is null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn gqa_plan_kernel_name(plan: *const gqa_plan) -> *const c_char {
    if plan.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a live handle.
    let name = unsafe { (*plan).plan.kernel_name() };
    // Kernel names are static and ASCII; a static NUL-terminated copy per
    // name is kept in a table the first time one is asked for.
    static NAMES: std::sync::Mutex<Vec<(&'static str, &'static std::ffi::CStr)>> =
        std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = names.iter().find(|(n, _)| *n == name) {
        return c.as_ptr();
    }
    let c: &'static std::ffi::CStr =
        Box::leak(CString::new(name).unwrap_or_default().into_boxed_c_str());
    names.push((name, c));
    c.as_ptr()
}
