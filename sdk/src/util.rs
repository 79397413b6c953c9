//! Small allocation-free helpers shared by the file layer and the hot path.

/// Formats `v` in decimal into `buf` and returns the used tail, without
/// allocating (the hot path writes limits and PIDs).
pub(crate) fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The longest name of a directory entry (`NAME_MAX`).
pub(crate) const NAME_MAX: usize = 255;

/// `PATH_MAX`: the longest path `openat(2)` takes, NUL included.
pub(crate) const PATH_MAX: usize = 4096;

/// `bytes` with a NUL after it, in `buf`, as a C string for a syscall
/// without allocating; `None` if it does not fit or holds a NUL.
pub(crate) fn stack_cstr<'b>(buf: &'b mut [u8], bytes: &[u8]) -> Option<&'b std::ffi::CStr> {
    let out = buf.get_mut(..bytes.len() + 1)?;
    out[..bytes.len()].copy_from_slice(bytes);
    out[bytes.len()] = 0;
    std::ffi::CStr::from_bytes_with_nul(out).ok()
}

/// Maps an errno to `std::io::Error` (rustix's `Errno` converts losslessly).
pub(crate) fn io_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// Whether `b` is a path as [`Path::components`](std::path::Path::components)
/// would write it back: `/`, or names (none empty, none `.`) joined by `/`,
/// with or without a leading `/`. Every path the runner builds is.
pub(crate) fn is_canonical_path(b: &[u8]) -> bool {
    if b == b"/" {
        return true;
    }
    let body = b.strip_prefix(b"/").unwrap_or(b);
    !body.is_empty()
        && body
            .split(|&c| c == b'/')
            .all(|s| !s.is_empty() && s != b".")
}

/// [`Path::parent`](std::path::Path::parent), found by the last `/` when
/// the path is canonical ([`is_canonical_path`]), else by `Path::parent`
/// itself. Issue 12: `Path::parent` parses components from the back, and
/// attaching one cgroup asked for a parent about eight times.
pub(crate) fn path_parent(p: &std::path::Path) -> Option<&std::path::Path> {
    use std::os::unix::ffi::OsStrExt;
    let b = p.as_os_str().as_bytes();
    if !is_canonical_path(b) || b == b"/" {
        return p.parent();
    }
    let cut = match b.iter().rposition(|&c| c == b'/') {
        Some(0) => 1,
        Some(i) => i,
        // One relative name: its parent is the empty path.
        None => 0,
    };
    Some(std::path::Path::new(std::ffi::OsStr::from_bytes(&b[..cut])))
}

/// [`Path::file_name`](std::path::Path::file_name) by the last `/` when the
/// path is canonical (see [`path_parent`]).
pub(crate) fn path_file_name(p: &std::path::Path) -> Option<&std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let b = p.as_os_str().as_bytes();
    if !is_canonical_path(b) || b == b"/" || b.split(|&c| c == b'/').any(|s| s == b"..") {
        return p.file_name();
    }
    let start = b.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    Some(std::ffi::OsStr::from_bytes(&b[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast paths answer as `Path` does, canonical or not.
    #[test]
    fn parents_and_names_as_path_gives_them() {
        use std::path::Path;
        for p in [
            "/", "/a", "/a/b", "/a/b/c", "a", "a/b", "", "/a/", "/a//b", "/a/./b", "/a/.", "./a",
            "/..", "/a/..", "..", "a/..", "//", "/a/b/",
        ] {
            let p = Path::new(p);
            assert_eq!(path_parent(p), p.parent(), "parent of {p:?}");
            assert_eq!(path_file_name(p), p.file_name(), "file name of {p:?}");
        }
    }

    #[test]
    fn formats_edge_values() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u64(&mut b, 0), b"0");
        assert_eq!(fmt_u64(&mut b, 7), b"7");
        assert_eq!(fmt_u64(&mut b, 1_048_576), b"1048576");
        assert_eq!(fmt_u64(&mut b, u64::MAX), b"18446744073709551615");
    }
}
