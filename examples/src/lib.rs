//! Runnable examples of the oomkit SDK (`examples/examples/`) and the
//! `heap_victim` demo binary for the heap-profile handler
//! (`examples/src/bin/heap_victim.rs`).
//!
//! They live in their own crate so the SDK's dependency tree stays small:
//! the demo victim links jemalloc (a C build) only here.
