//! The `oomkit` binary as linked with `cold.ld`: its `.text.oomkit_cold` section exists, starts
//! and ends on a page boundary, holds the start-up crates' code, and holds none of the kill
//! path's (the engine, the kill, the handlers, tracing, the JSON serializer), which reserve mode
//! must keep locked. Read from the ELF section headers and symbol table of the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

const COLD: &[u8] = b".text.oomkit_cold";
const PAGE: u64 = 4096;

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
}
fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn cstr(b: &[u8], at: usize) -> &[u8] {
    b[at..].split(|c| *c == 0).next().unwrap()
}

struct Section<'a> {
    name: &'a [u8],
    kind: u32,
    addr: u64,
    body: &'a [u8],
    link: usize,
}

fn sections(elf: &[u8]) -> Vec<Section<'_>> {
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "a 64-bit little-endian ELF file"
    );
    let (shoff, entsize) = (u64_at(elf, 0x28) as usize, u16_at(elf, 0x3a));
    let (count, names_at) = (u16_at(elf, 0x3c), u16_at(elf, 0x3e));
    let header = |i: usize| &elf[shoff + i * entsize..shoff + (i + 1) * entsize];
    let body = |h: &[u8]| {
        let (off, size) = (u64_at(h, 0x18) as usize, u64_at(h, 0x20) as usize);
        if u32_at(h, 4) == 8 {
            &elf[0..0]
        } else {
            &elf[off..off + size]
        }
    };
    let names = body(header(names_at));
    (0..count)
        .map(|i| {
            let h = header(i);
            Section {
                name: cstr(names, u32_at(h, 0)),
                kind: u32_at(h, 4) as u32,
                addr: u64_at(h, 0x10),
                body: body(h),
                link: u32_at(h, 0x28),
            }
        })
        .collect()
}

/// The names of the symbols defined in section `index`.
fn symbols_in(secs: &[Section<'_>], index: usize) -> Vec<String> {
    // SHT_SYMTAB; a stripped binary has none, and the test binary's `oomkit` is not stripped.
    let symtab = secs.iter().find(|s| s.kind == 2).expect("a symbol table");
    let strtab = secs[symtab.link].body;
    symtab
        .body
        .chunks_exact(24)
        .filter(|e| u16_at(e, 6) == index)
        .map(|e| String::from_utf8_lossy(cstr(strtab, u32_at(e, 0))).into_owned())
        .collect()
}

#[test]
fn start_up_code_is_in_its_own_page_aligned_section_and_the_kill_path_is_not() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_oomkit")).unwrap();
    let secs = sections(&elf);
    let (index, cold) = secs
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == COLD)
        .expect("the binary has no .text.oomkit_cold: was it linked with cold.ld?");
    assert_eq!(cold.addr % PAGE, 0, "section start not page-aligned");
    assert_eq!(
        cold.body.len() as u64 % PAGE,
        0,
        "section end not page-aligned"
    );
    let names = symbols_in(&secs, index);
    for start_up in ["clap_builder", "toml", "Config$GT$5parse"] {
        assert!(
            names.iter().any(|n| n.contains(start_up)),
            "no {start_up} code in the cold section"
        );
    }
    // What runs between event and kill, by the crate or module that defines it. Deserialize
    // impls derived inside these modules are start-up code (they carry serde's path).
    let hot = [
        "_ZN6oomkit6engine",
        "_ZN6oomkit4kill",
        "_ZN6oomkit6events",
        "_ZN6oomkit6cgroup",
        "_ZN15oomkit_handlers",
        "_ZN7tracing",
        "_ZN10serde_json3ser",
        "_ZN17prometheus_client7metrics",
    ];
    let wrong: Vec<&String> = names
        .iter()
        .filter(|n| hot.iter().any(|h| n.starts_with(h)))
        .filter(|n| !n.contains("serde_core..de..") && !n.contains("Deserializ"))
        .collect();
    assert!(
        wrong.is_empty(),
        "kill-path code in the cold section: {wrong:?}"
    );
}
