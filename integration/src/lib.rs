//! Privileged oomkit tests that run inside a qemu guest.
//!
//! The development hosts run the memory controller on cgroup v1, and the behaviour oomkit exists
//! for — `memory.events` notifications, PSI triggers, OOM kills, `cgroup.kill`,
//! `process_mrelease` — differs between kernel versions. So these tests run as root inside VMs
//! booted by `cargo xtask vmtest`, one per pinned Debian kernel, each with cgroup2 mounted at
//! `/sys/fs/cgroup` and the memory and pids controllers enabled.
//!
//! One static binary, `oomkit-guest`, is the whole guest userland besides busybox. Run by the
//! VM's `/init`, it reads its mode from the kernel command line (`oomkit.mode=run|fixtures|probe`)
//! and reports on the second serial port in the protocol described in the xtask's `report`
//! module. It re-executes itself for everything else:
//!
//! * `oomkit-guest test <name>`: one test, in its own process and process group so a crash, a
//!   hang or an OOM kill of the test is contained and reported as that test's failure;
//! * `oomkit-guest workload <hog|forkstorm|sleep|…> …`: helper processes tests start inside their
//!   cgroups ([`workload`]), so no other binaries are needed in the guest — except the three that
//!   the end-to-end and runtime scenarios run for real: the `oomkit` daemon, the `heap_victim`
//!   demo and the `supervise` example, packed static into the initramfs as `/bin/oomkit`,
//!   `/bin/heap_victim` and `/bin/supervise`.
//!
//! Nothing here runs on the host except the unit tests of pure helpers.

pub mod bench;
pub mod bench_machine;
pub mod cmdline;
pub mod fixtures;
pub mod harness;
pub mod kmsg;
pub mod proto;
pub mod runner;
pub mod scenario;
pub mod tests;
pub mod workload;
