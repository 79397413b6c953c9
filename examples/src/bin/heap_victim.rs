//! A demo victim for the heap-profile handler: grows its heap steadily and
//! writes a jemalloc heap profile when asked by signal.
//!
//! The heap-profile handler sends a signal (SIGUSR2 by default) before it
//! kills, gives the victim a little headroom, and waits for a new file in
//! its diagnostics folder. This program is the other half of that contract,
//! the way a real service would do it:
//!
//! - jemalloc is the global allocator, built with profiling and switched on
//!   from the first allocation (the `malloc_conf` symbol below; the
//!   `_RJEM_MALLOC_CONF` environment variable overrides it);
//! - the signal only sets a flag (`signal-hook`); the main loop notices it
//!   and calls `prof.dump` outside the signal handler, where allocating and
//!   file I/O are allowed;
//! - the profile is written under a hidden temporary name and renamed into
//!   place, so a watcher never sees a half-written file;
//! - after dumping it keeps running (and growing): killing is the daemon's call.
//!
//! ```text
//! heap_victim [--dir DIR] [--step-mib N] [--interval-ms MS] [--max-mib N] [--signal USR2]
//! ```
//! `--dir` defaults to `$OOMKIT_DIAGNOSTICS_DIR`, then the current directory.
//! Read a profile with `jeprof --text heap_victim DIR/heap_victim.PID.N.heap`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads this weak symbol (prefixed `_rjem_` by tikv-jemalloc-sys on
/// Linux) before the first allocation: profiling on, active, and one sample
/// per 512 KiB allocated on average (`lg_prof_sample:19`), cheap enough to
/// leave on in production.
// SAFETY: jemalloc declares `const char *malloc_conf` as a weak symbol and
// only reads it; `Option<&u8>` has the layout of a nullable `const char *`,
// and the bytes are a NUL-terminated `'static` string.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: Option<&'static u8> =
    Some(&b"prof:true,prof_active:true,lg_prof_sample:19\0"[0]);

struct Args {
    dir: PathBuf,
    step: usize,
    interval: Duration,
    max: Option<usize>,
    signal: i32,
}

fn usage() -> ! {
    eprintln!(
        "usage: heap_victim [--dir DIR] [--step-mib N] [--interval-ms MS] [--max-mib N] [--signal USR2|USR1|N]"
    );
    std::process::exit(2)
}

fn parse_signal(s: &str) -> Option<i32> {
    let name = s.trim_start_matches("SIG");
    match name {
        "USR1" => Some(libc::SIGUSR1),
        "USR2" => Some(libc::SIGUSR2),
        "HUP" => Some(libc::SIGHUP),
        "QUIT" => Some(libc::SIGQUIT),
        n => n.parse().ok(),
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: std::env::var_os("OOMKIT_DIAGNOSTICS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
        step: 8 << 20,
        interval: Duration::from_millis(200),
        max: None,
        signal: libc::SIGUSR2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else { usage() };
        let num = || v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(&v),
            "--step-mib" => a.step = (num() as usize) << 20,
            "--interval-ms" => a.interval = Duration::from_millis(num()),
            "--max-mib" => a.max = Some((num() as usize) << 20),
            "--signal" => a.signal = parse_signal(&v).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    a
}

/// Writes a heap profile into `dir` through `prof.dump`; returns its path.
fn dump_profile(dir: &Path, seq: u32) -> Result<PathBuf, String> {
    let pid = std::process::id();
    let tmp = dir.join(format!(".heap_victim.{pid}.{seq}.tmp"));
    let done = dir.join(format!("heap_victim.{pid}.{seq}.heap"));
    let c = CString::new(tmp.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `prof.dump` takes a `const char *` naming the output file; `c`
    // is NUL-terminated and outlives the call, and jemalloc does not keep
    // the pointer afterwards.
    unsafe { tikv_jemalloc_ctl::raw::write(b"prof.dump\0", c.as_ptr()) }
        .map_err(|e| format!("prof.dump: {e} (is profiling on? see _RJEM_MALLOC_CONF)"))?;
    std::fs::rename(&tmp, &done).map_err(|e| format!("rename: {e}"))?;
    Ok(done)
}

fn main() {
    let args = parse_args();
    let wanted = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(args.signal, Arc::clone(&wanted)) {
        eprintln!("heap_victim: cannot handle signal {}: {e}", args.signal);
        std::process::exit(1);
    }
    let prof = tikv_jemalloc_ctl::profiling::prof::read().unwrap_or(false);
    eprintln!(
        "heap_victim: pid {}, profiling {}, dumps to {} on signal {}",
        std::process::id(),
        if prof { "on" } else { "OFF" },
        args.dir.display(),
        args.signal
    );

    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut seq = 0u32;
    loop {
        if wanted.swap(false, Ordering::Relaxed) {
            match dump_profile(&args.dir, seq) {
                Ok(p) => eprintln!("heap_victim: heap profile written to {}", p.display()),
                Err(e) => eprintln!("heap_victim: heap profile failed: {e}"),
            }
            seq += 1;
        }
        if args.max.is_none_or(|m| total + args.step <= m) {
            grow(&mut held, args.step);
            total += args.step;
        }
        std::thread::sleep(args.interval);
    }
}

/// Allocates `bytes` and touches every page so it counts as resident.
#[inline(never)]
fn grow(held: &mut Vec<Vec<u8>>, bytes: usize) {
    let mut chunk = vec![0u8; bytes];
    for i in (0..chunk.len()).step_by(4096) {
        chunk[i] = 1;
    }
    held.push(chunk);
}
