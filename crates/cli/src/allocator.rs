//! The global allocator: mimalloc, built without transparent huge pages
//! (the workspace's `no_thp`: with them its arenas were backed in 2 MiB
//! pages, and resident memory, idle and per open stream, was about twice
//! what is in use).
//!
//! Called through its C interface rather than the `mimalloc` crate, which
//! asks for every block through `mi_malloc_aligned`: that entry point takes
//! its fast path only for blocks up to 1 KiB, and sends larger ones (read
//! buffers, boxed futures, header tables) through extra checks first, where
//! one whose size is not a power of two is over-allocated by its alignment
//! less one and aligned within, possibly in a larger size class; about
//! twice what `mi_malloc` spends on it. Every block mimalloc hands out is aligned to at
//! least a machine word (its size classes are whole words), so a layout
//! asking for no more is served by the plain entry points; a larger
//! alignment goes to the aligned ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

// SAFETY: each method hands the layout's size (and, past a word, its
// alignment) to the mimalloc function made for it, and frees only what
// mimalloc allocated: every block this allocator hands out is mimalloc's,
// and `mi_free` takes blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { by_alignment(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { by_alignment(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; the block keeps its alignment.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// A block for `layout` from `plain` when a word's alignment is enough,
/// else from `aligned`. Inlined, so each call site calls its two functions
/// directly.
///
/// # Safety
/// `plain` and `aligned` must be mimalloc's allocation functions of one kind.
#[inline(always)]
unsafe fn by_alignment(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: the caller's.
    unsafe {
        if layout.align() <= WORD {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to a few pages, at every alignment a Rust type can ask
    /// for here: the block is aligned, writable to its end, and freed.
    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let allocator = Mimalloc;
        let mut held = Vec::new();
        for size in (1..=4096).chain([8192, 65_536, 1 << 20, (1 << 22) + 24]) {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a layout of non-zero size.
                let block = unsafe { allocator.alloc(layout) };
                assert!(!block.is_null(), "{size} bytes at {align}");
                assert_eq!(block as usize % align, 0, "{size} bytes at {align}");
                // SAFETY: the block is `size` bytes long.
                unsafe { block.write_bytes(0xA5, size) };
                held.push((block, layout));
            }
            // Keep a few blocks of each size alive while the next are
            // taken, so that blocks come from pages already in use too.
            if held.len() > 64 {
                for (block, layout) in held.drain(..) {
                    // SAFETY: allocated above with this layout.
                    unsafe { allocator.dealloc(block, layout) };
                }
            }
        }
        for (block, layout) in held {
            // SAFETY: allocated above with this layout.
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_and_aligned() {
        let allocator = Mimalloc;
        for (size, align) in [(24, 8), (24, 16), (3000, 8), (3000, 64), (1 << 20, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a layout of non-zero size.
            let block = unsafe { allocator.alloc_zeroed(layout) };
            assert_eq!(block as usize % align, 0);
            // SAFETY: the block is `size` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(block, size) };
            assert!(bytes.iter().all(|&byte| byte == 0));
            // SAFETY: allocated above with this layout.
            unsafe { allocator.dealloc(block, layout) };
        }
    }

    /// Growing and shrinking keeps the bytes and the alignment.
    #[test]
    fn realloc_keeps_contents_and_alignment() {
        let allocator = Mimalloc;
        for align in [1, 8, 16, 64] {
            let mut layout = Layout::from_size_align(40, align).unwrap();
            // SAFETY: a layout of non-zero size.
            let mut block = unsafe { allocator.alloc(layout) };
            for (index, byte) in (0..40u8).enumerate() {
                // SAFETY: within the block's 40 bytes.
                unsafe { block.add(index).write(byte) };
            }
            for new_size in [3000, 100_000, 17] {
                // SAFETY: `block` was allocated with `layout`.
                block = unsafe { allocator.realloc(block, layout, new_size) };
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0, "{new_size} at {align}");
                let kept = new_size.min(40);
                // SAFETY: the block holds at least `kept` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(block, kept) };
                assert!(bytes.iter().copied().eq(0..kept as u8));
                layout = Layout::from_size_align(new_size, align).unwrap();
            }
            // SAFETY: allocated (last resized) with this layout.
            unsafe { allocator.dealloc(block, layout) };
        }
    }
}
