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

/// Maps an errno to `std::io::Error` (rustix's `Errno` converts losslessly).
pub(crate) fn io_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_edge_values() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u64(&mut b, 0), b"0");
        assert_eq!(fmt_u64(&mut b, 7), b"7");
        assert_eq!(fmt_u64(&mut b, 1_048_576), b"1048576");
        assert_eq!(fmt_u64(&mut b, u64::MAX), b"18446744073709551615");
    }
}
