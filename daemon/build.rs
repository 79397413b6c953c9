//! Links the `oomkit` binary with `cold.ld`, which gathers the code that never runs between an
//! event and its kill (command line, configuration, metrics encoding) into a section of its
//! own that reserve mode leaves unlocked; the reasoning is in that file. Only for Linux ELF
//! targets: elsewhere there is no reserve mode and the binary links as before.

fn main() {
    println!("cargo:rerun-if-changed=cold.ld");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if let (true, Ok(dir)) = (linux, std::env::var("CARGO_MANIFEST_DIR")) {
        // `-T` and the path as two arguments of the compiler driver: a comma in the path would
        // split a `-Wl,` list.
        println!("cargo:rustc-link-arg-bins=-T");
        println!("cargo:rustc-link-arg-bins={dir}/cold.ld");
    }
}
