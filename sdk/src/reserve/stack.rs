//! Memory made resident up front: the calling thread's stack and heap
//! buffers touched before memory runs out.
//!
//! Split from [`super`] because these answer "what does the handler touch
//! later without a page fault?", not "which protections did it get?".

use rustix::process::Resource;

use super::MAX_STACK_PREFAULT;

const FRAME: usize = 4096;

#[inline(never)]
fn touch_frames(frames: usize) -> u8 {
    let mut frame = [0u8; FRAME];
    std::hint::black_box(&mut frame);
    let below = if frames > 1 {
        touch_frames(frames - 1)
    } else {
        0
    };
    frame[usize::from(below)] = below.wrapping_add(1);
    std::hint::black_box(&frame)[usize::from(below)]
}

/// Bytes of stack left below the current frame of the calling thread,
/// from the mapping that holds it in `/proc/thread-self/maps` (the main
/// thread's `[stack]` may grow to `RLIMIT_STACK`). `None` if not found.
fn stack_room() -> Option<usize> {
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let maps = std::fs::read("/proc/thread-self/maps").ok()?;
    for line in maps.split(|b| *b == b'\n') {
        let mut f = line.split(|b| *b == b' ').filter(|x| !x.is_empty());
        let range = f.next()?;
        let dash = range.iter().position(|b| *b == b'-')?;
        let hex = |s: &[u8]| usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
        let (start, end) = (hex(&range[..dash])?, hex(&range[dash + 1..])?);
        if (start..end).contains(&sp) {
            let is_main_stack = line.ends_with(b"[stack]");
            return Some(if is_main_stack {
                let limit = rustix::process::getrlimit(Resource::Stack)
                    .current
                    .map_or(MAX_STACK_PREFAULT, |v| {
                        usize::try_from(v).unwrap_or(usize::MAX)
                    });
                limit.saturating_sub(end - sp)
            } else {
                sp - start
            });
        }
    }
    None
}

/// Touches about `bytes` of the calling thread's stack below the current
/// frame, so those pages are resident (and, after `mlockall`, locked)
/// before memory runs out. Safe code: a recursion of 4 KiB frames.
///
/// Capped at [`MAX_STACK_PREFAULT`] and at the room the calling thread's
/// stack has left (found in `/proc/thread-self/maps`) minus a 64 KiB
/// margin; if that cannot be found, at 64 KiB. Returns the bytes touched.
pub fn prefault_stack(bytes: usize) -> usize {
    let room = stack_room().map_or(64 << 10, |r| r.saturating_sub(64 << 10));
    let n = bytes.min(MAX_STACK_PREFAULT).min(room) / FRAME;
    if n > 0 {
        std::hint::black_box(touch_frames(n));
    }
    n * FRAME
}

/// A heap buffer allocated and touched up front, so using it later needs
/// no allocation and no page fault (resident; locked after `mlockall`).
#[derive(Debug)]
pub struct ReservedBuffer {
    buf: Box<[u8]>,
}

impl ReservedBuffer {
    /// Allocates `size` bytes and writes to every page.
    pub fn new(size: usize) -> Self {
        let mut buf = vec![0u8; size].into_boxed_slice();
        let page = rustix::param::page_size();
        let b = std::hint::black_box(&mut buf[..]);
        let mut i = 0;
        while i < b.len() {
            b[i] = 0x5a;
            i += page;
        }
        std::hint::black_box(&buf);
        ReservedBuffer { buf }
    }

    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}
