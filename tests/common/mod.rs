//! Shared test helpers: deterministic case generation and the comparison of
//! a tier's output with the f64 reference under the documented tolerance.
#![allow(dead_code)]

use gqa_kernels::reference::{self, tolerance};
use gqa_kernels::{bf16, f16, Dtype, KvData, KvTensor, Options, Plan, Shape, Tier};

/// SplitMix64: a tiny deterministic generator for test data.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Owned cache storage of one dtype.
#[derive(Clone, Debug)]
pub enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Store {
    pub fn from_f32(dtype: Dtype, x: &[f32]) -> Store {
        match dtype {
            Dtype::F32 => Store::F32(x.to_vec()),
            Dtype::F16 => Store::F16(x.iter().map(|v| f16::from_f32(*v)).collect()),
            Dtype::Bf16 => Store::Bf16(x.iter().map(|v| bf16::from_f32(*v)).collect()),
        }
    }
    /// The elements starting at `offset` (to test misaligned base pointers).
    pub fn data(&self, offset: usize) -> KvData<'_> {
        match self {
            Store::F32(v) => KvData::F32(&v[offset..]),
            Store::F16(v) => KvData::F16(&v[offset..]),
            Store::Bf16(v) => KvData::Bf16(&v[offset..]),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Store::F32(v) => v.len(),
            Store::F16(v) => v.len(),
            Store::Bf16(v) => v.len(),
        }
    }
}

/// How a case lays its cache out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// `[B, L, G, D]`.
    Blgd,
    /// `[B, G, L, D]`.
    Bgld,
    /// `[B, L, G, D]` with padding after every row, head and sequence.
    Padded,
}

/// A complete decode problem with owned buffers.
#[derive(Clone, Debug)]
pub struct Case {
    pub shape: Shape,
    pub scale: Option<f32>,
    pub seq_lens: Vec<usize>,
    pub q: Vec<f32>,
    pub k: Store,
    pub v: Store,
    /// (seq, token, head) strides of K and V, and the element offset of
    /// their base (misalignment).
    pub k_strides: (usize, usize, usize),
    pub v_strides: (usize, usize, usize),
    pub offset: usize,
}

fn strides(layout: Layout, max_len: usize, g: usize, d: usize) -> (usize, usize, usize) {
    match layout {
        Layout::Blgd => (max_len * g * d, g * d, d),
        Layout::Bgld => (g * max_len * d, d, max_len * d),
        Layout::Padded => {
            let hs = d + 3;
            let ts = g * hs + 5;
            (max_len * ts + 7, ts, hs)
        }
    }
}

/// Everything needed to build a case.
#[derive(Clone, Debug)]
pub struct Spec {
    pub shape: Shape,
    pub seq_lens: Vec<usize>,
    pub layout: Layout,
    pub scale: Option<f32>,
    pub offset: usize,
    pub seed: u64,
    /// Range of the uniform values of q, k and v.
    pub qk_range: f32,
    /// Value stored in cache slots no sequence may read (beyond `L_b`).
    pub fill: f32,
}

impl Spec {
    pub fn new(shape: Shape, seq_lens: Vec<usize>) -> Spec {
        Spec {
            shape,
            seq_lens,
            layout: Layout::Blgd,
            scale: None,
            offset: 0,
            seed: 1,
            qk_range: 1.0,
            fill: f32::NAN,
        }
    }

    pub fn build(&self) -> Case {
        let s = self.shape;
        let mut rng = Rng(self.seed);
        let max_len = self.seq_lens.iter().copied().max().unwrap_or(0).max(1);
        let ks = strides(self.layout, max_len, s.kv_heads, s.head_dim_k);
        let vs = strides(self.layout, max_len, s.kv_heads, s.head_dim_v);
        let fill_cache = |rng: &mut Rng, st: (usize, usize, usize), d: usize, range: f32| {
            let n = self.offset + s.batch.max(1) * st.0 + 8;
            // Unread slots hold `fill` (NaN by default): a kernel that reads
            // past a row, a length or a sequence produces NaN and fails.
            let mut x = vec![self.fill; n];
            for b in 0..s.batch {
                for j in 0..self.seq_lens[b] {
                    for g in 0..s.kv_heads {
                        for e in 0..d {
                            x[self.offset + b * st.0 + j * st.1 + g * st.2 + e] =
                                rng.uniform(-range, range);
                        }
                    }
                }
            }
            x
        };
        let k = fill_cache(&mut rng, ks, s.head_dim_k, self.qk_range);
        let v = fill_cache(&mut rng, vs, s.head_dim_v, 1.0);
        let q = (0..s.q_elems())
            .map(|_| rng.uniform(-self.qk_range, self.qk_range))
            .collect();
        Case {
            shape: s,
            scale: self.scale,
            seq_lens: self.seq_lens.clone(),
            q,
            k: Store::from_f32(s.k_dtype, &k),
            v: Store::from_f32(s.v_dtype, &v),
            k_strides: ks,
            v_strides: vs,
            offset: self.offset,
        }
    }
}

impl Case {
    pub fn k_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.k_strides;
        KvTensor::new(self.k.data(self.offset), a, b, c)
    }
    pub fn v_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.v_strides;
        KvTensor::new(self.v.data(self.offset), a, b, c)
    }

    /// Runs the case on `tier` through the public API.
    pub fn run(
        &self,
        tier: Tier,
        threads: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, &'static str), String> {
        let opts = Options {
            scale: self.scale,
            tier: Some(tier),
            threads,
        };
        let plan = Plan::new(&self.shape, &opts).map_err(|e| format!("plan: {e}"))?;
        let name = plan.kernel_name();
        if !name.ends_with(&format!("__{}", tier.name())) || plan.tier() != tier {
            return Err(format!("asked for {tier}, plan picked {name}"));
        }
        let mut out = vec![f32::NAN; self.shape.out_elems()];
        let mut lse = vec![f32::NAN; self.shape.lse_elems()];
        plan.decode(
            &self.q,
            &self.k_view(),
            &self.v_view(),
            &self.seq_lens,
            &mut out,
            Some(&mut lse),
        )
        .map_err(|e| format!("{name}: run: {e}"))?;
        Ok((out, lse, name))
    }

    /// Runs the case on `tier` and compares with the reference; the error
    /// names the kernel instance, the element and the case.
    pub fn check(&self, tier: Tier) -> Result<(), String> {
        let want = reference::decode(
            &self.shape,
            self.scale,
            &self.q,
            &self.k_view(),
            &self.v_view(),
            &self.seq_lens,
        )
        .map_err(|e| format!("reference: {e}"))?;
        self.check_against(tier, &want)
    }

    pub fn check_against(&self, tier: Tier, want: &reference::Reference) -> Result<(), String> {
        let (out, lse, name) = self.run(tier, 1)?;
        let (tol_o, tol_l) = tolerance(self.shape.k_dtype, self.shape.v_dtype);
        let vmax = self.v_max();
        let s = &self.shape;
        for (i, (g, w)) in out.iter().zip(&want.out).enumerate() {
            if !tol_o.accepts(f64::from(*g), *w, vmax) {
                let row = i / s.head_dim_v;
                return Err(format!(
                    "{name}: out[b={}, h={}, d={}] = {g}, reference {w} (shape {s:?}, lens {:?})",
                    row / s.heads,
                    row % s.heads,
                    i % s.head_dim_v,
                    self.seq_lens
                ));
            }
        }
        for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
            if !tol_l.accepts(f64::from(*g), *w, 1.0) {
                return Err(format!(
                    "{name}: lse[b={}, h={}] = {g}, reference {w} (shape {s:?}, lens {:?})",
                    i / s.heads,
                    i % s.heads,
                    self.seq_lens
                ));
            }
        }
        Ok(())
    }

    /// Largest `|V|` element any sequence may read (1 for an empty cache).
    pub fn v_max(&self) -> f64 {
        let v = self.v_view();
        let mut m = 0.0f64;
        for b in 0..self.shape.batch {
            for j in 0..self.seq_lens[b] {
                for g in 0..self.shape.kv_heads {
                    for d in 0..self.shape.head_dim_v {
                        let x = v
                            .data
                            .get_f64(b * v.seq_stride + j * v.token_stride + g * v.head_stride + d);
                        m = m.max(x.abs());
                    }
                }
            }
        }
        if m == 0.0 {
            1.0
        } else {
            m
        }
    }
}

/// The tiers every test covers: all this CPU supports. Fails (panics) when
/// `GQA_KERNELS_REQUIRE` names a tier that is not among them.
pub fn tiers() -> Vec<Tier> {
    let have = Tier::available();
    if let Ok(req) = std::env::var("GQA_KERNELS_REQUIRE") {
        for name in req.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t: Tier = name
                .parse()
                .unwrap_or_else(|e| panic!("GQA_KERNELS_REQUIRE: {e}"));
            assert!(
                have.contains(&t),
                "GQA_KERNELS_REQUIRE names {t}, which this CPU lacks (have {have:?})"
            );
        }
    }
    have
}

/// Checks a case on every tier; panics with every failure.
pub fn check_all(case: &Case) {
    let want = reference::decode(
        &case.shape,
        case.scale,
        &case.q,
        &case.k_view(),
        &case.v_view(),
        &case.seq_lens,
    )
    .expect("reference accepts the case");
    let errs: Vec<String> = tiers()
        .into_iter()
        .filter_map(|t| case.check_against(t, &want).err())
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
