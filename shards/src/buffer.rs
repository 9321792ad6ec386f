//! Block-aligned memory for O_DIRECT writes.
//!
//! A log's buffers are shared between appenders, which copy frames in under the log
//! lock, and the shard, which writes finished ranges to disk outside it. The rule that
//! makes this sound: appenders only ever write at or past the append end, and the shard
//! only reads bytes below the append end it snapshotted under the lock. The partly
//! filled last block is never written from here: it is copied into a separate bounce
//! block first, so no write reads memory an appender may still be filling.

use crate::format::BLOCK;
use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// A heap allocation aligned to (and sized in multiples of) the 4 KiB block.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation; concurrent access is governed by the range
// discipline in the module docs, enforced by the callers of the unsafe accessors.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: shared references only hand out raw access through unsafe methods.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (`len` is rounded up to a whole block).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let len = len.max(1).div_ceil(BLOCK) * BLOCK;
        let layout = Layout::from_size_align(len, BLOCK).expect("buffer layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers hold at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `src` to `off`.
    ///
    /// # Safety
    /// No other thread may read or write `[off, off + src.len())` during the call.
    pub unsafe fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len, "write past buffer end");
        // SAFETY: in bounds (asserted); exclusive access to the range is the caller's promise.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        };
    }

    /// Borrows `[off, off + len)`.
    ///
    /// # Safety
    /// No thread may write the range while the slice lives.
    pub unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len, "slice past buffer end");
        // SAFETY: in bounds; the caller promises no concurrent writes to the range.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK).expect("buffer layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// One block of zeros, shared by every segment preparation.
pub fn zero_chunk() -> &'static AlignedBuf {
    static ZEROS: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| AlignedBuf::zeroed(PREP_CHUNK))
}

/// Size of one zero-writing step of segment preparation.
pub const PREP_CHUNK: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_block_aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(10);
        assert_eq!(b.len(), BLOCK);
        // SAFETY: single-threaded test.
        let s = unsafe { b.slice(0, BLOCK) };
        assert_eq!(s.as_ptr() as usize % BLOCK, 0);
        assert!(s.iter().all(|&x| x == 0));
        // SAFETY: single-threaded test.
        unsafe { b.write(100, b"abc") };
        // SAFETY: single-threaded test.
        assert_eq!(unsafe { b.slice(100, 3) }, b"abc");
    }
}
