//! What every fuzz target shares: the allocation bound.
//!
//! Each target (`fuzz_targets/NAME.rs`) feeds libFuzzer's input to the
//! check of the same name in `snapsync::fuzzing`, which holds the
//! properties (they are shared with the regression test that replays the
//! corpus in the normal suite).
//!
//! libFuzzer's `-malloc_limit_mb` needs a sanitizer's allocator hooks, and
//! these targets run without a sanitizer; [`BoundedAlloc`] enforces the
//! bound instead: a single allocation over [`MAX_ALLOCATION`] aborts the
//! run, which libFuzzer reports as a crash and saves the input. Whole-process
//! memory is bounded by `-rss_limit_mb` (zstd's C allocations included).

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation a decoder may make for one input. Inputs are
/// at most a few KiB; the largest legitimate buffer is a chunk's 256 KiB
/// (`chunk::MAX_SIZE`) and postcard's preallocation, which serde caps at
/// 1 MiB.
pub const MAX_ALLOCATION: usize = 16 << 20;

/// The system allocator, refusing allocations over [`MAX_ALLOCATION`].
pub struct BoundedAlloc;

impl BoundedAlloc {
    fn check(layout: Layout) {
        if layout.size() > MAX_ALLOCATION {
            // No panic: unwinding would allocate. libFuzzer catches the
            // abort's SIGABRT and saves the input as a crash.
            eprintln!("allocation of {} bytes is over the {MAX_ALLOCATION}-byte bound", layout.size());
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout);
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(Layout::from_size_align(new_size, layout.align()).unwrap_or(layout));
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
