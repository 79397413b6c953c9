//! A counting global allocator for the allocation-free tests (`#[path]`-included
//! by `sdk/tests/*_alloc.rs` and `handlers/tests/no_alloc.rs`).
//!
//! It counts only allocations made by the measuring thread while
//! [`count`] runs `f`: the test harness's own threads may allocate
//! meanwhile (a process-wide counter flaked for that reason). Set
//! `OOMKIT_ALLOC_TRAP=1` to panic at the first counted allocation and see
//! where it comes from in the backtrace.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Install with `#[global_allocator] static A: Counting = Counting;`.
pub struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

static TRAP: AtomicBool = AtomicBool::new(false);

fn note(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; a const
    // thread-local without a destructor never allocates to be accessed.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        if TRAP.load(Ordering::Relaxed) {
            COUNTING.set(false);
            panic!("allocation of {size} bytes while counting");
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees (and the caller's obligations) carry
// over exactly; counting touches only const-initialised thread-local cells
// and a relaxed atomic, which neither allocate nor re-enter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System`
        // (through this allocator) with `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` was allocated by `System`
        // (through this allocator) with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the number of heap allocations
/// (and reallocations) this thread made meanwhile.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
    TRAP.store(
        std::env::var_os("OOMKIT_ALLOC_TRAP").is_some(),
        Ordering::Relaxed,
    );
    let before = ALLOCS.with(Cell::get);
    COUNTING.set(true);
    let r = f();
    COUNTING.set(false);
    (r, ALLOCS.with(Cell::get) - before)
}
