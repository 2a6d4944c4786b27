//! Hands the final link of a bare-metal image the runtime's linker script
//! (`src/arch/<arch>/linker.ld`), so that a service crate needs no build
//! script, linker flags or `.cargo/config.toml` of its own.
//!
//! Cargo passes `rustc-link-arg` only to the package's own binaries, so
//! the script goes through the one channel a library has to its
//! dependents' link: a native library. `+verbatim` makes rustc pass the
//! file by its name (`-l:svmc-runtime.ld`), and lld reads an input file
//! that is not an object or archive as a linker script, exactly as `-T`
//! (lld's `LinkerDriver::addFile`). `-bundle` keeps rustc from packing
//! it into the rlib. On other targets (the host's `cargo test`) nothing
//! is linked.

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if os != "none" {
        return;
    }
    let script = format!("{dir}/src/arch/{arch}/linker.ld");
    println!("cargo:rerun-if-changed={script}");
    let copy = format!("{out}/svmc-runtime.ld");
    if let Err(e) = std::fs::copy(&script, &copy) {
        panic!("copying {script} to {copy}: {e}");
    }
    println!("cargo:rustc-link-search=native={out}");
    println!("cargo:rustc-link-lib=static:-bundle,+verbatim=svmc-runtime.ld");
}
