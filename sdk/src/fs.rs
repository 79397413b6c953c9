//! The one whole-file read layer under `cgroup`, `proc` and `events`.
//!
//! Kernel files are small and regenerated on each read, so a reading is
//! "the whole file, from the start, into a buffer the caller owns": no
//! allocation, `EINTR` retried, and a file that fills the buffer is
//! reported as too large rather than silently cut. The three readers
//! below differ only in how they get there (`pread` at offset 0 for fds
//! kept open and re-read, `read` for seq files opened once, `read` to the
//! end into a `Vec` where the size is unknown).
//!
//! The same `ENOENT` means "file not provided" in a live cgroup, "cgroup
//! gone" for a kept fd or a directory, and "process gone" under `/proc/PID`.
//! [`cgroup_errno`] is the one mapping to [`Error`] for cgroup directories
//! and files (only "file not provided" is decided before it, by `Cgroup`,
//! which can look at `cgroup.procs`), and [`proc_errno`] the one for
//! `/proc/PID`. Not here: the event sources' allocation-free `ReadFail`
//! (`events/mod.rs`), the directory watch's own inotify errors
//! (`events/dir.rs`), and `unlinkat`/`fgetxattr` on a cgroup's directory fd,
//! where `ENOENT` names a child, not the cgroup.

use std::os::fd::AsFd;
use std::path::Path;

use rustix::io::Errno;

use crate::error::Error;

/// The one errno → [`Error`] mapping for a cgroup's directory or files: a
/// removed cgroup's kept fds answer `ENODEV` and a path into it `ENOENT`,
/// both [`Error::CgroupGone`] for `cgroup`; any other errno is `other(e)`
/// (an I/O error naming the file and the operation, a failed write with its
/// data, or what that call's errno means, e.g. PSI's `EOPNOTSUPP`).
pub(crate) fn cgroup_errno(cgroup: &Path, e: Errno, other: impl FnOnce(Errno) -> Error) -> Error {
    match e {
        Errno::NODEV | Errno::NOENT => Error::CgroupGone {
            path: cgroup.to_owned(),
        },
        e => other(e),
    }
}

/// The same for `/proc/PID` (`pid` `None`: `/proc/self`, which cannot be gone): `ENOENT` and
/// `ESRCH` are [`Error::ProcessGone`]; any other errno is `other(e)`.
pub(crate) fn proc_errno(pid: Option<i32>, e: Errno, other: impl FnOnce(Errno) -> Error) -> Error {
    match (e, pid) {
        (Errno::NOENT | Errno::SRCH, Some(pid)) => Error::ProcessGone { pid },
        (e, _) => other(e),
    }
}

/// Why a whole-file read into a fixed buffer gave no reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The file filled the buffer: it is (or may be) larger.
    TooLarge,
    /// The system call failed.
    Os(Errno),
}

/// Reads the whole file behind `fd` from offset 0 with `pread(2)`; the
/// length read.
pub(crate) fn pread_all(fd: impl AsFd, buf: &mut [u8]) -> Result<usize, ReadError> {
    let fd = fd.as_fd();
    let mut filled = 0;
    loop {
        let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) else {
            return Err(ReadError::TooLarge);
        };
        match rustix::io::pread(fd, rest, filled as u64) {
            Ok(0) => return Ok(filled),
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(ReadError::Os(e)),
        }
    }
}

/// Reads the whole file behind `fd` with one `pread(2)` at offset 0, for a
/// file the kernel generates in one piece: a cgroup control file without a
/// list (`memory.events.local`, one `seq_file` record), whose first read
/// returns all of it when the buffer has room. A read that fills the
/// buffer is [`ReadError::TooLarge`]. One system call instead of two
/// ([`pread_all`] reads again to see the end): issue 12, start-up reads
/// this file of every cgroup. Not for lists (`cgroup.procs`) or `/proc`
/// files, which may come in several pieces.
pub(crate) fn pread_one_piece(fd: impl AsFd, buf: &mut [u8]) -> Result<usize, ReadError> {
    let fd = fd.as_fd();
    let len = buf.len();
    loop {
        match rustix::io::pread(fd, &mut *buf, 0) {
            Ok(n) if n < len => return Ok(n),
            Ok(_) => return Err(ReadError::TooLarge),
            Err(Errno::INTR) => {}
            Err(e) => return Err(ReadError::Os(e)),
        }
    }
}

/// Reads from the current offset with `read(2)` until the end of the file
/// or a full `buf`; the length read and whether `buf` filled up.
pub(crate) fn read_prefix(fd: impl AsFd, buf: &mut [u8]) -> Result<(usize, bool), Errno> {
    let fd = fd.as_fd();
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match rustix::io::read(fd, rest) {
            Ok(0) => return Ok((filled, false)),
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, true))
}

/// Reads from the current offset to the end of the file, appending to
/// `out` (allocates).
pub(crate) fn read_to_end(fd: impl AsFd, out: &mut Vec<u8>) -> Result<(), Errno> {
    let fd = fd.as_fd();
    let mut chunk = [0u8; 4096];
    loop {
        match rustix::io::read(fd, &mut chunk[..]) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap_or_else(|e| panic!("tempfile: {e}"));
        std::io::Write::write_all(&mut f, data).unwrap_or_else(|e| panic!("write: {e}"));
        f
    }

    #[test]
    fn pread_one_piece_reads_the_whole_small_file_and_refuses_a_full_buffer() {
        let f = file(b"low 0\nhigh 3\n");
        let mut buf = [0u8; 64];
        assert_eq!(pread_one_piece(&f, &mut buf), Ok(13));
        assert_eq!(&buf[..13], b"low 0\nhigh 3\n");
        assert_eq!(
            pread_one_piece(&f, &mut buf),
            Ok(13),
            "again, from offset 0"
        );
        let mut exact = [0u8; 13];
        assert_eq!(pread_one_piece(&f, &mut exact), Err(ReadError::TooLarge));
    }

    #[test]
    fn pread_all_reads_from_the_start_and_refuses_a_full_buffer() {
        let f = file(b"some 1\nfull 2\n");
        let mut buf = [0u8; 64];
        assert_eq!(pread_all(&f, &mut buf), Ok(14));
        assert_eq!(pread_all(&f, &mut buf), Ok(14), "again, from offset 0");
        let mut small = [0u8; 14];
        assert_eq!(pread_all(&f, &mut small), Err(ReadError::TooLarge));
    }

    #[test]
    fn read_prefix_and_read_to_end_read_from_the_offset() {
        let mut f = file(b"0123456789");
        std::io::Seek::rewind(&mut f).unwrap_or_else(|e| panic!("seek: {e}"));
        let mut buf = [0u8; 4];
        assert_eq!(read_prefix(&f, &mut buf), Ok((4, true)));
        let mut rest = Vec::new();
        assert_eq!(read_to_end(&f, &mut rest), Ok(()));
        assert_eq!(rest, b"456789");
        let mut buf = [0u8; 4];
        assert_eq!(read_prefix(&f, &mut buf), Ok((0, false)));
    }
}
