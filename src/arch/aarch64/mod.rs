//! aarch64 tiers, and the dot-product unit of the `neon` tier.

pub(crate) mod dot;
pub(crate) mod neon;
