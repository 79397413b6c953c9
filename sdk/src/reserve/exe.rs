//! Which parts of the program's own file [`MlockMode::Resident`](super::MlockMode::Resident)
//! leaves unlocked: the sections read only at start-up or while a panic unwinds.
//!
//! The program's code and read-only data are locked whole, because a warm-up cannot reach every
//! line of the kill path and a page read back from disk during an OOM is the stall reserve mode
//! exists to prevent. But the read-only segment of a Rust binary also holds the unwind tables
//! (`.eh_frame`, `.eh_frame_hdr`, `.gcc_except_table`: read only when a panic unwinds or a
//! backtrace is taken) and what the dynamic loader or a static-PIE start-up reads once
//! (`.rela.dyn`, `.dynsym`, …): together about as much as `.rodata` itself. Those sections are
//! found in the ELF section headers of `/proc/self/exe` (plain reads, no parsing library) and
//! their whole pages are left out of the lock. A program may also gather the code it runs only at
//! start-up into a section of its own, `.text.oomkit_cold` (the daemon does, with a linker
//! script: `daemon/cold.ld` says what goes there and why none of it runs between event and
//! kill); its whole pages are left out too.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Sections no decision reads: unwinding, the start-up relocation and symbol tables, and a
/// program's own start-up code if it gathered it into `.text.oomkit_cold`.
const COLD_SECTIONS: &[&[u8]] = &[
    b".eh_frame",
    b".eh_frame_hdr",
    b".gcc_except_table",
    b".rela.dyn",
    b".rela.plt",
    b".dynsym",
    b".dynstr",
    b".gnu.hash",
    b".hash",
    b".gnu.version",
    b".gnu.version_r",
    b".debug_gdb_scripts",
    // Code that never runs between an event and its kill, gathered at link time by a binary
    // that asks for it (the daemon's `cold.ld`: command line, configuration, metrics encoding).
    b".text.oomkit_cold",
];

/// `SHT_NOBITS`: a section with no bytes in the file (`.bss`).
const SHT_NOBITS: u32 = 8;
/// Section headers read at most (a Rust binary has a few dozen).
const MAX_SECTIONS: usize = 4096;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_at(f: &File, off: u64, len: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)
        .map_err(|e| format!("/proc/self/exe: reading {what} ({len} bytes at {off}): {e}"))?;
    Ok(buf)
}

/// The file-offset ranges `[start, end)` of the [`COLD_SECTIONS`] of the 64-bit little-endian
/// ELF file `exe`, sorted. An ELF file of another class or byte order has none (everything is
/// locked, as before).
pub(super) fn cold_ranges(exe: &File) -> Result<Vec<(u64, u64)>, String> {
    let eh = read_at(exe, 0, 64, "the ELF header")?;
    // ELFCLASS64, ELFDATA2LSB.
    if eh.get(..4) != Some(b"\x7fELF".as_slice()) || eh[4] != 2 || eh[5] != 1 {
        return Ok(Vec::new());
    }
    let bad = || "/proc/self/exe: malformed ELF header".to_string();
    let shoff = u64_at(&eh, 0x28).ok_or_else(bad)?;
    let shentsize = u16_at(&eh, 0x3a).ok_or_else(bad)?;
    let shnum = u16_at(&eh, 0x3c).ok_or_else(bad)?;
    let shstrndx = u16_at(&eh, 0x3e).ok_or_else(bad)?;
    if shentsize < 64 || shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Ok(Vec::new());
    }
    let table = read_at(exe, shoff, shentsize * shnum, "the section headers")?;
    let header = |i: usize| table.get(i * shentsize..i * shentsize + 64);
    let names = header(shstrndx).ok_or_else(bad)?;
    let (names_off, names_len) = (
        u64_at(names, 0x18).ok_or_else(bad)?,
        u64_at(names, 0x20).ok_or_else(bad)?,
    );
    let names_len = usize::try_from(names_len)
        .ok()
        .filter(|n| *n <= 1 << 20)
        .ok_or_else(|| format!("/proc/self/exe: section name table of {names_len} bytes"))?;
    let strtab = read_at(exe, names_off, names_len, "the section names")?;
    let mut out = Vec::new();
    for h in (0..shnum).filter_map(header) {
        let name_at = u32_at(h, 0).ok_or_else(bad)? as usize;
        let name = strtab
            .get(name_at..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .unwrap_or_default();
        let (kind, off, size) = (
            u32_at(h, 4).ok_or_else(bad)?,
            u64_at(h, 0x18).ok_or_else(bad)?,
            u64_at(h, 0x20).ok_or_else(bad)?,
        );
        if kind != SHT_NOBITS && size > 0 && COLD_SECTIONS.contains(&name) {
            out.push((off, off.saturating_add(size)));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The parts of a mapping `start..end` of the file at offset `offset` that hold no whole page
/// of a `cold` file range (sorted, as [`cold_ranges`] returns them): what to lock.
pub(super) fn hot_parts(
    start: usize,
    end: usize,
    offset: u64,
    cold: &[(u64, u64)],
    page: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    let len = (end - start) as u64;
    for &(a, b) in cold {
        // The cold range inside this mapping, as addresses, shrunk to whole pages.
        let Some(b) = b.checked_sub(offset) else {
            continue;
        };
        let a = a.saturating_sub(offset);
        let (a, b) = (a.min(len) as usize + start, b.min(len) as usize + start);
        let (a, b) = (a.next_multiple_of(page), b / page * page);
        if b <= a || b <= at {
            continue;
        }
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 4096;

    #[test]
    fn cold_pages_are_cut_out_whole() {
        // Mapping of file offsets 0..0x10000 at 0x1000_0000.
        let base = 0x1000_0000;
        let cold = [(0x1800, 0x4100), (0x9000, 0xa000)];
        assert_eq!(
            hot_parts(base, base + 0x10000, 0, &cold, P),
            vec![
                (base, base + 0x2000),
                (base + 0x4000, base + 0x9000),
                (base + 0xa000, base + 0x10000)
            ]
        );
    }

    #[test]
    fn ranges_outside_or_smaller_than_a_page_change_nothing() {
        let base = 0x2000_0000;
        // The mapping covers file offsets 0x5000..0x8000.
        let cold = [(0x0, 0x4000), (0x5100, 0x5f00), (0x9000, 0xb000)];
        assert_eq!(
            hot_parts(base, base + 0x3000, 0x5000, &cold, P),
            vec![(base, base + 0x3000)]
        );
    }

    #[test]
    fn a_wholly_cold_mapping_locks_nothing() {
        let base = 0x3000_0000;
        assert_eq!(
            hot_parts(base, base + 0x2000, 0x1000, &[(0x0, 0x8000)], P),
            vec![]
        );
    }

    #[test]
    fn this_test_binary_has_cold_sections() {
        let exe = File::open("/proc/self/exe").unwrap();
        let cold = cold_ranges(&exe).unwrap();
        assert!(
            !cold.is_empty(),
            "no .eh_frame or relocation sections found"
        );
        assert!(cold.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_file_that_is_not_elf_has_none() {
        let f = tempfile_with(
            b"#!/bin/sh\necho not an ELF file at all, but long enough for a header\n",
        );
        assert_eq!(cold_ranges(&f).unwrap(), vec![]);
    }

    #[test]
    fn a_truncated_elf_file_is_an_error_naming_it() {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x28..0x30].copy_from_slice(&4096u64.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        let e = cold_ranges(&tempfile_with(&b)).unwrap_err();
        assert!(
            e.contains("/proc/self/exe") && e.contains("section headers"),
            "{e}"
        );
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }
}
