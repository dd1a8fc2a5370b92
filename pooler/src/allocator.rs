//! The process's memory allocator: mimalloc, asked for alignment only when a type needs more
//! than every mimalloc block already has.
//!
//! Buffers and futures come and go with every transaction. glibc's malloc serves each
//! multi-kilobyte request by first consolidating its fast bins; mimalloc serves it from a
//! thread-local free list. But its aligned entry point (`mi_malloc_aligned`, which the
//! `mimalloc` crate calls for every allocation) takes that fast path only for blocks up to
//! 1 KiB: a 16 KiB read buffer or a 1.5 KB future with an alignment of 1 or 8 goes through
//! its over-allocating fallback, several hundred instructions per allocation. Every mimalloc
//! block is aligned to at least a machine word, so for those alignments plain `mi_malloc` is
//! the same allocation by its fast path.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has, whatever its size: blocks are whole words, and
/// pages start at least 16-byte aligned.
const WORD_ALIGNED: usize = std::mem::size_of::<usize>();

/// mimalloc, through its unaligned entry points wherever the alignment allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

// SAFETY: every method hands mimalloc's own pointers back to mimalloc; where the layout asks
// for more than word alignment, mimalloc's aligned calls provide it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; a null return is the allocation failure GlobalAlloc expects.
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`'s alignment, which the new
        // block keeps.
        unsafe {
            if layout.align() <= WORD_ALIGNED {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Keeps the process's memory on the kernel's small (4 KiB) pages, unless
/// `MIMALLOC_ALLOW_THP` in the environment says otherwise (mimalloc then does what it says).
///
/// mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`), so the heap
/// becomes resident, and is charged to the pod's memory, a whole 2 MiB page at a time,
/// however little of the page is in use: with 10,000 idle clients weir's resident memory was
/// 36.4, 38.4 or 40.4 MiB from one run to the next, the same clients 1.64–2.25 KiB each.
/// The process-wide switch (`PR_SET_THP_DISABLE`, inherited by a daemonised child) takes
/// effect for every page faulted in after it, so it is set first thing in `main`.
pub fn keep_small_pages() -> nix::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    nix::sys::prctl::set_thp_disable(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `size` at `align`: aligned, writable, zeroed when asked, and keeping its
    /// bytes through growing and shrinking.
    fn check(size: usize, align: usize) {
        let at = |p: *mut u8| p as usize % align == 0;
        let layout = Layout::from_size_align(size, align).unwrap();
        let grown = Layout::from_size_align(size * 3, align).unwrap();
        let half = size.div_ceil(2);
        // SAFETY: non-zero sizes; every block is freed once, with the layout it has.
        unsafe {
            let zeroed = Allocator.alloc_zeroed(layout);
            assert!(at(zeroed), "zeroed: size {size}, align {align}");
            assert!(std::slice::from_raw_parts(zeroed, size)
                .iter()
                .all(|&b| b == 0));
            Allocator.dealloc(zeroed, layout);

            let p = Allocator.alloc(layout);
            assert!(at(p), "size {size}, align {align}");
            std::ptr::write_bytes(p, 0xA5, size);
            let p = Allocator.realloc(p, layout, grown.size());
            assert!(at(p), "grown: size {size}, align {align}");
            assert!(std::slice::from_raw_parts(p, size)
                .iter()
                .all(|&b| b == 0xA5));
            let p = Allocator.realloc(p, grown, half);
            assert!(at(p), "shrunk: size {size}, align {align}");
            assert!(std::slice::from_raw_parts(p, half)
                .iter()
                .all(|&b| b == 0xA5));
            Allocator.dealloc(p, Layout::from_size_align(half, align).unwrap());
        }
    }

    /// Sizes from a byte to past mimalloc's small and medium blocks, at alignments from 1 to
    /// a page: below and above the word alignment that takes the unaligned calls.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        for size in [
            1,
            3,
            8,
            24,
            40,
            1000,
            1025,
            1536,
            4096,
            5000,
            16 << 10,
            300_000,
        ] {
            for align in [1, 2, 8, 16, 64, 4096] {
                check(size, align);
            }
        }
    }
}
