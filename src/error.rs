//! The error type of every fallible entry point.

use crate::formats::Dtype;
use crate::tier::{Tier, Unit};

/// What went wrong, naming the offending argument and its value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A dimension is zero or outside the supported range.
    InvalidDim {
        /// The argument (`heads`, `kv_heads`, `head_dim_k`, …).
        arg: &'static str,
        /// Its value.
        value: usize,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// `heads` is not a multiple of `kv_heads`.
    HeadsNotDivisible {
        /// Query heads `H`.
        heads: usize,
        /// KV heads `G`.
        kv_heads: usize,
    },
    /// A buffer or array has the wrong number of elements.
    LengthMismatch {
        /// The argument (`q`, `out`, `lse`, `seq_lens`).
        arg: &'static str,
        /// Elements the shape requires.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// A strided view reaches past the end of its buffer.
    OutOfBounds {
        /// `k` or `v`.
        arg: &'static str,
        /// The sequence whose view reaches outside.
        seq: usize,
        /// One past the last element index the view would read.
        needed: usize,
        /// Elements in the buffer.
        len: usize,
    },
    /// `stride × length` (or a sum of such terms) overflows `usize`.
    Overflow {
        /// The argument whose extent overflows.
        arg: &'static str,
        /// The sequence concerned (0 for shape products).
        seq: usize,
    },
    /// The attention scale is not finite and positive.
    InvalidScale {
        /// The value given.
        value: f32,
    },
    /// A cache's element type differs from the one the plan was made for.
    DtypeMismatch {
        /// `k` or `v`.
        arg: &'static str,
        /// The plan's dtype.
        expected: Dtype,
        /// The buffer's dtype.
        actual: Dtype,
    },
    /// `GQA_KERNELS_ISA` (or a tier name) names no tier.
    UnknownTier {
        /// The name given.
        name: String,
    },
    /// A forced tier is not supported by this CPU or build target.
    TierUnavailable {
        /// The tier.
        tier: Tier,
    },
    /// A unit forced by [`crate::Options::unit`] cannot be used in this
    /// process (the CPU lacks it, or the operating system refused its
    /// state).
    UnitUnavailable {
        /// The unit.
        unit: Unit,
        /// Why.
        reason: &'static str,
    },
    /// A unit forced by [`crate::Options::unit`] has no kernels for the
    /// plan's K and V types on its tier ([`Unit::runs`]).
    UnitUnsupported {
        /// The unit.
        unit: Unit,
        /// The plan's tier.
        tier: Tier,
        /// K element type.
        k: Dtype,
        /// V element type.
        v: Dtype,
    },
    /// A paged cache's block table names a page outside its pool.
    PageOutOfRange {
        /// `k_pages` or `v_pages`.
        arg: &'static str,
        /// The sequence.
        seq: usize,
        /// The block (entry of the sequence's block-table row).
        block: usize,
        /// The page index found there.
        page: u32,
        /// Pages the pool holds (for the slots this block uses).
        pages: usize,
    },
    /// A sequence needs more blocks than its block-table row holds.
    BlockTableTooShort {
        /// The sequence.
        seq: usize,
        /// Blocks its length needs.
        needed: usize,
        /// Blocks available (`blocks_per_seq`, or what the table's length
        /// leaves for this row).
        available: usize,
    },
    /// `q_offsets` is not `B + 1` non-decreasing offsets from 0 within the
    /// plan's `q_len` per sequence.
    InvalidQOffsets {
        /// The offending index.
        index: usize,
        /// Its value.
        value: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// `tree_mask` is not a draft tree: a token's word must have its own
    /// bit set and no bit above it (ancestors come first).
    InvalidTreeMask {
        /// The offending word (the batch's query token).
        token: usize,
        /// Its value.
        value: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// `positions.offsets` ([`crate::Positions`]) is not non-decreasing
    /// offsets from 0 within `positions`.
    InvalidPositionOffsets {
        /// The offending index.
        index: usize,
        /// Its value.
        value: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A sparse position list ([`crate::Positions`]) is not sorted, repeats
    /// a position, or names one at or past its sequence's length.
    InvalidPositions {
        /// The list: its sequence, or `b · G + g` for per-KV-head lists.
        list: usize,
        /// The entry's index in `positions`.
        index: usize,
        /// The entry.
        value: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// Shared-prefix groups ([`crate::PrefixGroups`]) are malformed: offsets
    /// not strictly increasing from 0, a member outside the batch or in two
    /// groups, a prefix reaching a member's new tokens, or groups where the
    /// plan or the batch cannot take them.
    InvalidPrefixGroups {
        /// `prefix.offsets`, `prefix.members`, `prefix.lens`, or `prefix`.
        arg: &'static str,
        /// The offending index in that array (0 for `prefix`).
        index: usize,
        /// Its value.
        value: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A sequence has more query tokens than cached positions.
    QLenExceedsKvLen {
        /// The sequence.
        seq: usize,
        /// Its query tokens.
        q_len: usize,
        /// Its `L_b`.
        kv_len: usize,
    },
    /// A sequence is longer than the plan allows.
    KvLenExceedsPlan {
        /// The sequence.
        seq: usize,
        /// Its `L_b`.
        kv_len: usize,
        /// The plan's `max_kv_len`.
        max_kv_len: usize,
    },
    /// A ring buffer is smaller than the positions it must hold.
    RingTooSmall {
        /// The sequence.
        seq: usize,
        /// Its `L_b`.
        kv_len: usize,
        /// The ring's `capacity`.
        capacity: usize,
    },
    /// A caller-provided buffer is smaller than the plan needs.
    BufferTooSmall {
        /// `workspace`, `states` or `scratch`.
        arg: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        len: usize,
    },
    /// A real-valued parameter is out of its domain.
    InvalidParam {
        /// The parameter (`softcap`, …).
        arg: &'static str,
        /// Its value.
        value: f32,
        /// Its domain.
        reason: &'static str,
    },
    /// A parameter array holds a NaN or an infinity.
    NonFinite {
        /// The array (`sinks`, …).
        arg: &'static str,
        /// The index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A valid request this version does not implement yet.
    Unsupported {
        /// The argument.
        arg: &'static str,
        /// Its value.
        value: usize,
        /// What is missing.
        reason: &'static str,
    },
    /// An argument of a type the call does not take (new rows for
    /// [`append`](crate::append()) must be f32, f16 or bf16).
    UnsupportedDtype {
        /// The argument.
        arg: &'static str,
        /// Its type.
        dtype: Dtype,
        /// What the call takes.
        reason: &'static str,
    },
    /// [`append`](crate::append()) of `new_tokens` tokens at `position` would
    /// pass sequence `seq`'s capacity (positions of a strided cache, block
    /// table row of a paged one, slots of a ring).
    AppendBeyondCapacity {
        /// The sequence.
        seq: usize,
        /// Its first new position.
        position: usize,
        /// Its new tokens.
        new_tokens: usize,
        /// Its capacity.
        capacity: usize,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidDim { arg, value, reason } => {
                write!(f, "invalid `{arg}` = {value}: {reason}")
            }
            Error::HeadsNotDivisible { heads, kv_heads } => write!(
                f,
                "`heads` = {heads} is not a multiple of `kv_heads` = {kv_heads}"
            ),
            Error::LengthMismatch { arg, expected, actual } => write!(
                f,
                "`{arg}` has {actual} elements, the shape requires {expected}"
            ),
            Error::OutOfBounds { arg, seq, needed, len } => write!(
                f,
                "`{arg}` view of sequence {seq} reads up to element {needed} but the buffer has {len}"
            ),
            Error::Overflow { arg, seq } => {
                write!(f, "`{arg}` extent of sequence {seq} overflows usize (stride × length)")
            }
            Error::InvalidScale { value } => {
                write!(f, "invalid `scale` = {value}: must be finite and > 0")
            }
            Error::DtypeMismatch { arg, expected, actual } => write!(
                f,
                "`{arg}` holds {actual} elements but the plan was made for {expected}"
            ),
            Error::UnknownTier { name } => {
                let names: Vec<&str> = Tier::ALL.iter().map(|t| t.name()).collect();
                write!(
                    f,
                    "unknown tier `{name}` (expected one of {})",
                    names.join(", ")
                )
            }
            Error::TierUnavailable { tier } => {
                write!(f, "tier `{tier}` is not supported by this CPU or build target")
            }
            Error::UnitUnavailable { unit, reason } => {
                write!(f, "`unit` {} is not available: {reason}", unit.name())
            }
            Error::UnitUnsupported { unit, tier, k, v } => write!(
                f,
                "`unit` {} has no kernels for K {k} and V {v} on tier `{tier}`",
                unit.name()
            ),
            Error::PageOutOfRange { arg, seq, block, page, pages } => write!(
                f,
                "`block_table` entry {block} of sequence {seq} is page {page}, but `{arg}` holds {pages} pages"
            ),
            Error::BlockTableTooShort { seq, needed, available } => write!(
                f,
                "`block_table` row of sequence {seq} has {available} blocks, its length needs {needed}"
            ),
            Error::InvalidQOffsets { index, value, reason } => {
                write!(f, "invalid `q_offsets[{index}]` = {value}: {reason}")
            }
            Error::InvalidTreeMask { token, value, reason } => {
                write!(f, "invalid `tree_mask[{token}]` = {value:#x}: {reason}")
            }
            Error::InvalidPositionOffsets {
                index,
                value,
                reason,
            } => write!(
                f,
                "invalid `positions.offsets[{index}]` = {value}: {reason}"
            ),
            Error::InvalidPositions {
                list,
                index,
                value,
                reason,
            } => write!(
                f,
                "invalid `positions[{index}]` = {value} (list {list}): {reason}"
            ),
            Error::InvalidPrefixGroups {
                arg,
                index,
                value,
                reason,
            } if *arg == "prefix" => write!(f, "invalid `prefix`: {reason}"),
            Error::InvalidPrefixGroups {
                arg,
                index,
                value,
                reason,
            } => write!(f, "invalid `{arg}[{index}]` = {value}: {reason}"),
            Error::QLenExceedsKvLen { seq, q_len, kv_len } => write!(
                f,
                "sequence {seq} has {q_len} query tokens but `seq_lens[{seq}]` = {kv_len} (need q_len <= L)"
            ),
            Error::KvLenExceedsPlan { seq, kv_len, max_kv_len } => write!(
                f,
                "`seq_lens[{seq}]` = {kv_len} exceeds the plan's `max_kv_len` = {max_kv_len}"
            ),
            Error::RingTooSmall { seq, kv_len, capacity } => write!(
                f,
                "`seq_lens[{seq}]` = {kv_len} positions do not fit the ring's `capacity` = {capacity}"
            ),
            Error::BufferTooSmall { arg, needed, len } => {
                write!(f, "`{arg}` has {len} bytes, the plan needs {needed}")
            }
            Error::InvalidParam { arg, value, reason } => {
                write!(f, "invalid `{arg}` = {value}: {reason}")
            }
            Error::NonFinite { arg, index, value } => {
                write!(f, "`{arg}[{index}]` = {value} is not finite")
            }
            Error::Unsupported { arg, value, reason } => {
                write!(f, "unsupported `{arg}` = {value}: {reason}")
            }
            Error::UnsupportedDtype { arg, dtype, reason } => {
                write!(f, "`{arg}` is {dtype}: {reason}")
            }
            Error::AppendBeyondCapacity {
                seq,
                position,
                new_tokens,
                capacity,
            } => write!(
                f,
                "appending {new_tokens} tokens at `positions[{seq}]` = {position} passes the sequence's capacity of {capacity}"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
