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
use std::sync::{Arc, Mutex};

/// Memory aligned to (and sized in multiples of) the 4 KiB block: a heap allocation of
/// its own, or a slot of a shard's [`BufferArena`] (returned to it on drop).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    home: Option<(Arc<BufferArena>, Slot)>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Buffer(u32),
    Block(u32),
}

/// One shard's registered memory: `buffers` log buffers of [`crate::log::BUF_SIZE`]
/// bytes and `blocks` 4 KiB blocks (bounce copies, headers, footers) in one allocation,
/// which the io_uring backend registers as a fixed buffer, so writes from it need no
/// page pinning per operation (`WRITE_FIXED` / `WRITEV_FIXED`). When it runs out,
/// logs fall back to heap memory and plain writes.
pub struct BufferArena {
    base: NonNull<u8>,
    len: usize,
    buffer_size: usize,
    buffers: u32,
    free: Mutex<(Vec<u32>, Vec<u32>)>,
    /// Heap buffers of other sizes that logs gave back ([`BufferArena::keep`]), for the
    /// next log that asks for one: a new log's first buffers then cost no allocation,
    /// zeroing or page faults. At most [`SPARE_BYTES`] of them.
    spares: Mutex<Vec<AlignedBuf>>,
}

/// Heap buffers a shard keeps for reuse, at most (see [`BufferArena::keep`]).
pub const SPARE_BYTES: usize = 4 << 20;

// SAFETY: the arena owns its allocation; slots are handed out to one owner at a time
// through the mutex-guarded free lists.
unsafe impl Send for BufferArena {}
// SAFETY: as above; shared references only touch the free lists (under the mutex).
unsafe impl Sync for BufferArena {}

impl BufferArena {
    /// An arena of `buffers` buffers of `buffer_size` bytes and `blocks` 4 KiB blocks.
    pub fn new(buffers: u32, buffer_size: usize, blocks: u32) -> Arc<BufferArena> {
        assert!(buffer_size.is_multiple_of(BLOCK) && buffer_size > 0);
        let len = buffers as usize * buffer_size + blocks as usize * BLOCK;
        let layout = Layout::from_size_align(len.max(BLOCK), BLOCK).expect("arena layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        Arc::new(BufferArena {
            base,
            len,
            buffer_size,
            buffers,
            free: Mutex::new(((0..buffers).rev().collect(), (0..blocks).rev().collect())),
            spares: Mutex::new(Vec::new()),
        })
    }

    /// The whole region, for registration: (address, length).
    pub fn region(&self) -> (*const u8, usize) {
        (self.base.as_ptr(), self.len)
    }

    /// True when `[ptr, ptr + len)` lies inside the arena.
    pub fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let (b, p) = (self.base.as_ptr() as usize, ptr as usize);
        p >= b && p + len <= b + self.len
    }

    /// A buffer of `size` bytes from the arena, if it has that size class and a free
    /// slot. Buffers come with stale contents, blocks zeroed (as `AlignedBuf::zeroed`).
    pub fn take(self: &Arc<Self>, size: usize) -> Option<AlignedBuf> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, off) = if size == self.buffer_size {
            let i = free.0.pop()?;
            (Slot::Buffer(i), i as usize * self.buffer_size)
        } else if size == BLOCK {
            let i = free.1.pop()?;
            (
                Slot::Block(i),
                self.buffers as usize * self.buffer_size + i as usize * BLOCK,
            )
        } else {
            drop(free);
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let i = spares.iter().rposition(|b| b.len == size)?;
            return Some(spares.swap_remove(i));
        };
        drop(free);
        // SAFETY: `off + size` is within the allocation (slot arithmetic above).
        let ptr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(off)) };
        if let Slot::Block(_) = slot {
            // SAFETY: the slot is ours alone until it is returned.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
        }
        Some(AlignedBuf {
            ptr,
            len: size,
            home: Some((self.clone(), slot)),
        })
    }

    /// Takes a log buffer its log no longer needs: a heap buffer is kept for the next
    /// [`BufferArena::take`] of its size while the spares stay within [`SPARE_BYTES`]
    /// (stale contents, as every log buffer has); anything else is dropped (an arena
    /// slot returns to its free list).
    pub fn keep(&self, buf: AlignedBuf) {
        if buf.home.is_some() {
            return;
        }
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = spares.iter().map(|b| b.len).sum();
        if held + buf.len <= SPARE_BYTES {
            spares.push(buf);
        }
    }

    fn give_back(&self, slot: Slot) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match slot {
            Slot::Buffer(i) => free.0.push(i),
            Slot::Block(i) => free.1.push(i),
        }
    }
}

impl Drop for BufferArena {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(BLOCK), BLOCK).expect("arena layout");
        // SAFETY: allocated in `new` with this layout; every slot's `AlignedBuf` holds an
        // `Arc` to the arena, so none is alive now.
        unsafe { alloc::dealloc(self.base.as_ptr(), layout) };
    }
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
        AlignedBuf {
            ptr,
            len,
            home: None,
        }
    }

    /// A zeroed block from `arena` if it has one free, else from the heap.
    pub fn zeroed_block(arena: Option<&Arc<BufferArena>>) -> AlignedBuf {
        arena
            .and_then(|a| a.take(BLOCK))
            .unwrap_or_else(|| AlignedBuf::zeroed(BLOCK))
    }

    /// Where the bytes start (to tell whether they lie in a registered arena).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
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

    /// Borrows `[off, off + len)` for writing in place.
    ///
    /// # Safety
    /// No other thread may read or write the range, and no other slice of it may
    /// exist, while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len, "slice past buffer end");
        // SAFETY: in bounds; exclusive access to the range is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
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
        if let Some((arena, slot)) = self.home.take() {
            arena.give_back(slot);
            return;
        }
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

/// Largest zero-writing step of segment preparation (the shared zero chunk's size),
/// used when an append is, or soon will be, waiting for the file (the pace of smaller
/// steps is `log/zero_pace.rs`'s).
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

    #[test]
    fn arena_slots_are_aligned_zeroed_blocks_and_come_back_on_drop() {
        let a = BufferArena::new(2, 2 * BLOCK, 2);
        let b1 = a.take(2 * BLOCK).unwrap();
        let b2 = a.take(2 * BLOCK).unwrap();
        assert!(a.take(2 * BLOCK).is_none(), "two buffers only");
        assert!(a.take(3 * BLOCK).is_none(), "no such size class");
        assert_ne!(b1.as_ptr(), b2.as_ptr());
        assert!(a.contains(b1.as_ptr(), 2 * BLOCK) && a.contains(b2.as_ptr(), 2 * BLOCK));
        let k = a.take(BLOCK).unwrap();
        // SAFETY: single-threaded test.
        unsafe { k.write(0, b"dirty") };
        drop(k);
        let k = AlignedBuf::zeroed_block(Some(&a));
        assert!(a.contains(k.as_ptr(), BLOCK));
        assert_eq!(k.as_ptr() as usize % BLOCK, 0);
        // SAFETY: single-threaded test.
        assert!(
            unsafe { k.slice(0, BLOCK) }.iter().all(|&x| x == 0),
            "blocks come zeroed"
        );
        drop(b1);
        assert!(
            a.take(2 * BLOCK).is_some(),
            "a dropped buffer returns to the arena"
        );
        let heap = AlignedBuf::zeroed(BLOCK);
        assert!(!a.contains(heap.as_ptr(), BLOCK));
    }
}
