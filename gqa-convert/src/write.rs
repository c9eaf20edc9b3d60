//! Writing an output file: tensors copied or pooled when the writer asks
//! for their bytes (so one pooled tensor at a time is in memory), and
//! files staged under temporary names until everything succeeded.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use gqa_convert::{pool_heads_le, Pooling, ProjShape};
use gqa_kernels::Dtype;
use indicatif::ProgressBar;
use safetensors::tensor::View;

use crate::Res;

/// A tensor of the output: the input's bytes, copied or pooled when the
/// writer asks for them (so at most one pooled tensor is in memory).
pub(crate) struct OutTensor<'a> {
    pub(crate) dtype: safetensors::Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) src: &'a [u8],
    /// `Some` for a K/V projection: its layout and type.
    pub(crate) pool: Option<Pool>,
    pub(crate) len: usize,
    pub(crate) ctx: &'a WriteCtx<'a>,
}

/// How a K/V projection is pooled: its layout and type.
pub(crate) type Pool = (ProjShape, Dtype);

/// What the tensors of one output file share while it is written.
pub(crate) struct WriteCtx<'a> {
    pub(crate) bar: &'a ProgressBar,
    pub(crate) map: &'a memmap2::Mmap,
    pub(crate) groups: usize,
    pub(crate) how: Pooling,
    /// The source range of the tensor written last: released from memory
    /// when the next one is asked for (its bytes are in the file by then).
    pub(crate) last: Cell<Option<(usize, usize)>>,
    pub(crate) error: RefCell<Option<String>>,
}

impl WriteCtx<'_> {
    /// Drops the pages of the previous tensor's source range from this
    /// process's memory (they are read back from the file if touched
    /// again), so that resident memory stays near one tensor, not the
    /// checkpoint.
    pub(crate) fn release_last(&self) {
        if let Some((off, len)) = self.last.take() {
            // SAFETY: `map` is a read-only shared mapping of the input file:
            // MADV_DONTNEED only drops clean pages, and any later read of the
            // range faults the file's unchanged contents back in, so no
            // reference into it observes a change.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len)
            };
        }
    }
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // The writer asks for each tensor's bytes once, just before writing
        // them, and has finished writing the previous tensor's.
        let ctx = self.ctx;
        ctx.release_last();
        ctx.bar.inc(self.len as u64);
        let off = self.src.as_ptr() as usize - ctx.map.as_ptr() as usize;
        ctx.last.set(Some((off, self.src.len())));
        match self.pool {
            None => Cow::Borrowed(self.src),
            Some((ps, dtype)) => match pool_heads_le(dtype, self.src, ps, ctx.groups, ctx.how) {
                Ok(v) => Cow::Owned(v),
                Err(e) => {
                    // Checked before writing; kept as an error, not a panic.
                    ctx.error.borrow_mut().get_or_insert(e.to_string());
                    Cow::Owned(vec![0; self.len])
                }
            },
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Files written so far (temporary names), removed unless committed.
pub(crate) struct Staged {
    pub(crate) files: Vec<(PathBuf, PathBuf)>,
    pub(crate) created_dir: Option<PathBuf>,
    pub(crate) committed: bool,
}

impl Staged {
    pub(crate) fn tmp_for(&mut self, dest: &Path) -> PathBuf {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        self.files.push((tmp.clone(), dest.to_path_buf()));
        tmp
    }

    pub(crate) fn commit(mut self) -> Res<()> {
        for (tmp, dest) in &self.files {
            std::fs::rename(tmp, dest)
                .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), dest.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
            if let Some(d) = &self.created_dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
