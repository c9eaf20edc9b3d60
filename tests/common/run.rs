//! Running a case: its views and batch, each tier and unit on it, and the comparison with the f64 reference.

use super::*;

impl Case {
    /// Element index (before `offset`) of the K or V row of position `j`
    /// of sequence `b`, head `g`.
    pub fn row_index(&self, v: bool, b: usize, g: usize, j: usize) -> usize {
        let st = if v { self.v_strides } else { self.k_strides };
        match self.layout {
            Layout::Paged { page, .. } => {
                let p = self.block_table[b * self.blocks_per_seq + j / page] as usize;
                p * st.0 + (j % page) * st.1 + g * st.2
            }
            Layout::Ring { .. } => {
                let slot = (self.first_pos[b] + j) % self.capacity;
                b * st.0 + slot * st.1 + g * st.2
            }
            _ => b * st.0 + j * st.1 + g * st.2,
        }
    }

    pub fn k_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.k_strides;
        KvTensor::new(self.k.data(self.k_off), a, b, c)
    }
    pub fn v_view(&self) -> KvTensor<'_> {
        let (a, b, c) = self.v_strides;
        KvTensor::new(self.v_store().data(self.v_off), a, b, c)
    }

    /// V's store: K's for a latent case (one buffer, so that the views
    /// declare the cache latent), else its own.
    fn v_store(&self) -> &Store {
        if self.latent {
            &self.k
        } else {
            &self.v
        }
    }

    pub fn cache(&self) -> KvCache<'_> {
        match self.layout {
            Layout::Paged { page, .. } => {
                let (ka, kb, kc) = self.k_strides;
                let (va, vb, vc) = self.v_strides;
                KvCache::Paged(PagedKv {
                    k: KvPages::new(self.k.data(self.k_off), ka, kb, kc),
                    v: KvPages::new(self.v_store().data(self.v_off), va, vb, vc),
                    page_size: page,
                    block_table: &self.block_table,
                    blocks_per_seq: self.blocks_per_seq,
                })
            }
            Layout::Ring { .. } => KvCache::Ring(RingKv {
                k: self.k_view(),
                v: self.v_view(),
                capacity: self.capacity,
                first_pos: &self.first_pos,
            }),
            _ => KvCache::strided(self.k_view(), self.v_view()),
        }
    }

    pub fn batch(&self) -> Batch<'_> {
        let mut b = Batch::new(&self.q, self.cache(), &self.seq_lens);
        if let Some((data, (ss, ts, hs))) = &self.bias {
            b = b.with_bias(Bias {
                data,
                seq_stride: *ss,
                token_stride: *ts,
                head_stride: *hs,
            });
        }
        if let Some(tree) = &self.tree {
            b = b.with_tree_mask(tree);
        }
        if let Some((positions, offsets, per_kv_head)) = &self.positions {
            b = b.with_positions(Positions {
                positions,
                offsets,
                per_kv_head: *per_kv_head,
            });
        }
        if let Some((lens, offsets, members)) = &self.prefix {
            b = b.with_prefix_groups(PrefixGroups::new(lens, offsets, members));
        }
        match &self.q_offsets {
            Some(o) => b.with_q_offsets(o),
            None => b,
        }
    }

    /// Query tokens of the batch.
    pub fn tokens(&self) -> usize {
        self.q.len() / (self.shape.heads * self.shape.head_dim_k)
    }

    pub fn reference(&self) -> reference::Reference {
        let variant = reference::Variant {
            scale: self.scale,
            window: self.window,
            sinks: self.sinks.as_deref(),
            softcap: self.softcap,
            alibi: self.alibi.as_deref(),
        };
        reference::decode_variant(&self.shape, &variant, &self.batch())
            .expect("reference accepts the case")
    }

    /// Runs the case on `tier` with `threads` through the public API
    /// (`Plan::run` in a caller workspace).
    pub fn run(
        &self,
        tier: Tier,
        threads: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, &'static str), String> {
        self.run_on(tier, Unit::F32Fma, Precision::Exact, threads)
    }

    /// [`Case::run`] on `unit` with precision class `precision`.
    pub fn run_on(
        &self,
        tier: Tier,
        unit: Unit,
        precision: Precision,
        threads: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, &'static str), String> {
        let opts = Options {
            scale: self.scale,
            tier: Some(tier),
            threads,
            window: self.window,
            softcap: self.softcap,
            unit: Some(unit),
            precision,
            cascade: self.prefix.is_some(),
        };
        let mut plan = Plan::new(&self.shape, &opts).map_err(|e| format!("plan: {e}"))?;
        if let Some(sk) = &self.sinks {
            plan = plan.with_sinks(sk).map_err(|e| format!("sinks: {e}"))?;
        }
        if let Some(al) = &self.alibi {
            plan = plan.with_alibi(al).map_err(|e| format!("alibi: {e}"))?;
        }
        let name = plan.kernel_name();
        if !name.ends_with(&format!("__{}", tier.name())) || plan.tier() != tier {
            return Err(format!("asked for {tier}, plan picked {name}"));
        }
        let rows = self.tokens() * self.shape.heads;
        let mut out = vec![f32::NAN; rows * self.shape.head_dim_v];
        let mut lse = vec![f32::NAN; rows];
        let mut ws = plan.alloc_workspace();
        // Garbage in the workspace must not matter.
        ws.fill(0xA5);
        plan.run(&self.batch(), &mut out, Some(&mut lse), &mut ws)
            .map_err(|e| format!("{name}: run: {e}"))?;
        Ok((out, lse, name))
    }

    /// Runs the case on `tier` and compares with the reference; the error
    /// names the kernel instance, the element and the case.
    pub fn check(&self, tier: Tier) -> Result<(), String> {
        self.check_against(tier, &self.reference())
    }

    pub fn check_against(&self, tier: Tier, want: &reference::Reference) -> Result<(), String> {
        let (out, lse, name) = self.run(tier, 1)?;
        self.compare(name, &out, &lse, want)
    }

    /// Runs the case on a dot-product or tile unit and compares with the
    /// reference under that precision class's bound.
    pub fn check_unit(
        &self,
        tier: Tier,
        unit: Unit,
        precision: Precision,
        want: &reference::Reference,
    ) -> Result<(), String> {
        let (out, lse, name) = self.run_on(tier, unit, precision, 1)?;
        self.compare_within(name, &out, &lse, want, self.unit_tolerance(unit, precision))
    }

    /// The bound of a precision class on this case: the documented
    /// tolerance for `Exact`; for `Fast` that plus what the unit's
    /// roundings can do. A score moves by at most `delta = scale ·
    /// max_row Σ_d |Δq_d| · max |k|`, where the rounding of q is 2^-8
    /// relative per element on the bf16 units (`Σ_d |Δq_d| ≤ 2^-8 Σ_d
    /// |q_d|`) and half a step of `max_d |q_d| / (127 · 128)` on int8-dot
    /// (two int8 parts); so every
    /// normalised weight moves by a factor within `e^(±2 delta)` and the
    /// output by `(e^(2 delta) − 1) · max |v|`. Where the unit rounds the
    /// weights P to bf16 too (the tile unit; bf16-dot with bf16 V), their
    /// rounding against the unrounded sum moves it by `2^-8 · max |v|`
    /// more. `lse` moves by `delta`.
    pub fn unit_tolerance(&self, unit: Unit, precision: Precision) -> (Tolerance, Tolerance) {
        let (mut o, mut l) = tolerance(self.shape.k_dtype, self.shape.v_dtype);
        if precision == Precision::Fast {
            let s = &self.shape;
            let scale = f64::from(self.scale.unwrap_or(1.0 / (s.head_dim_k as f32).sqrt()));
            let rows = self.q.chunks(s.head_dim_k.max(1));
            let dq = if unit == Unit::Int8Dot {
                // Two parts: the remainder's step is `max|q| / (127 · 128)`.
                rows.map(|r| {
                    let m = r.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
                    m / (254.0 * 128.0) * r.len() as f64
                })
                .fold(0.0, f64::max)
            } else {
                2f64.powi(-8)
                    * rows
                        .map(|r| r.iter().map(|x| f64::from(x.abs())).sum::<f64>())
                        .fold(0.0, f64::max)
            };
            let delta = scale * dq * self.k_max();
            let rounds_p = unit == Unit::AmxBf16
                || (unit == Unit::Bf16Dot && s.v_dtype == gqa_kernels::Dtype::Bf16);
            o.atol += (2.0 * delta).exp_m1() + if rounds_p { 2f64.powi(-8) } else { 0.0 };
            l.atol += delta;
        }
        (o, l)
    }

    /// Largest `|K|` element any sequence may read (0 for an empty cache).
    pub fn k_max(&self) -> f64 {
        let data = self.k.data(self.k_off);
        let mut m = 0.0f64;
        for b in 0..self.shape.batch {
            for j in 0..self.seq_lens[b] {
                for g in 0..self.shape.kv_heads {
                    let base = self.row_index(false, b, g, j);
                    for d in 0..self.shape.head_dim_k {
                        m = m.max(data.value_f64(base + d, g, self.shape.head_dim_k).abs());
                    }
                }
            }
        }
        m
    }

    /// Compares a result with the reference under the documented tolerance.
    pub fn compare(
        &self,
        name: &str,
        out: &[f32],
        lse: &[f32],
        want: &reference::Reference,
    ) -> Result<(), String> {
        let tol = tolerance(self.shape.k_dtype, self.shape.v_dtype);
        self.compare_within(name, out, lse, want, tol)
    }

    /// Compares a result with the reference under `(output, lse)` bounds.
    pub fn compare_within(
        &self,
        name: &str,
        out: &[f32],
        lse: &[f32],
        want: &reference::Reference,
        (tol_o, tol_l): (Tolerance, Tolerance),
    ) -> Result<(), String> {
        let vmax = self.v_max();
        let s = &self.shape;
        let ctx = || {
            format!(
                "shape {s:?}, lens {:?}, layout {:?}, q_offsets {:?}, window {:?}, sinks {}, softcap {:?}, alibi {}, bias {}, tree {:x?}, latent {}, sparse {:?}",
                self.seq_lens,
                self.layout,
                self.q_offsets,
                self.window,
                self.sinks.is_some(),
                self.softcap,
                self.alibi.is_some(),
                self.bias.is_some(),
                self.tree,
                self.latent,
                self.positions.as_ref().map(|p| (p.0.len(), p.2))
            )
        };
        if out.len() != want.out.len() || lse.len() != want.lse.len() {
            return Err(format!("{name}: output lengths differ ({})", ctx()));
        }
        for (i, (g, w)) in out.iter().zip(&want.out).enumerate() {
            if !tol_o.accepts(f64::from(*g), *w, vmax) {
                let row = i / s.head_dim_v;
                return Err(format!(
                    "{name}: out[token={}, h={}, d={}] = {g}, reference {w} ({})",
                    row / s.heads,
                    row % s.heads,
                    i % s.head_dim_v,
                    ctx()
                ));
            }
        }
        for (i, (g, w)) in lse.iter().zip(&want.lse).enumerate() {
            if !tol_l.accepts(f64::from(*g), *w, 1.0) {
                return Err(format!(
                    "{name}: lse[token={}, h={}] = {g}, reference {w} ({})",
                    i / s.heads,
                    i % s.heads,
                    ctx()
                ));
            }
        }
        Ok(())
    }

    /// Largest `|V|` element any sequence may read (1 for an empty cache).
    pub fn v_max(&self) -> f64 {
        // A latent case's V rows are K rows (int8: one scale per Dk values).
        let (data, dh) = if self.latent {
            (self.k.data(self.k_off), self.shape.head_dim_k)
        } else {
            (self.v.data(self.v_off), self.shape.head_dim_v)
        };
        let mut m = 0.0f64;
        for b in 0..self.shape.batch {
            for j in 0..self.seq_lens[b] {
                for g in 0..self.shape.kv_heads {
                    let base = self.row_index(true, b, g, j);
                    for d in 0..self.shape.head_dim_v {
                        m = m.max(data.value_f64(base + d, g, dh).abs());
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
