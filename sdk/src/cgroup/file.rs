//! One control file kept open (a [`CgroupFile`]) for repeated reads and writes without a
//! path lookup each time: the event sources re-read `memory.events` through one.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::*;

impl CgroupFile {
    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file from offset 0 into `buf` (no allocation).
    pub fn read_into<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        match fs::pread_all(&self.fd, buf) {
            Ok(n) => Ok(&buf[..n]),
            Err(ReadError::TooLarge) => Err(Error::Parse {
                path: self.path.clone(),
                source: ParseError::new(1, ParseErrorKind::TooLarge),
            }),
            Err(ReadError::Os(e)) => Err(self.err(Op::Read, e)),
        }
    }

    /// Writes `data` in one `write(2)` (PSI trigger registration).
    pub fn write(&self, data: &[u8]) -> Result<()> {
        let n = rustix::io::write(&self.fd, data).map_err(|e| {
            fs::cgroup_errno(&self.path, e, |e| Error::Write {
                path: self.path.clone(),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(e),
            })
        })?;
        if n != data.len() {
            return Err(Error::Write {
                path: self.path.clone(),
                data: String::from_utf8_lossy(data).into_owned(),
                source: io_err(Errno::IO),
            });
        }
        Ok(())
    }

    fn err(&self, op: Op, e: Errno) -> Error {
        fs::cgroup_errno(&self.path, e, |e| Error::io(&*self.path, op, io_err(e)))
    }

    /// Opens a file that is not a cgroup control file (`/proc/pressure/memory`).
    pub fn open_path(path: impl AsRef<Path>, write: bool) -> Result<Self> {
        let path = path.as_ref();
        let flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::Unsupported {
                path: path.to_owned(),
            },
            e => Error::io(path, Op::Open, io_err(e)),
        })?;
        Ok(CgroupFile {
            fd,
            path: path.to_owned(),
        })
    }
}

impl AsFd for CgroupFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
