//! Passes the linker script for bare-metal targets only, so that host-side
//! tools (`cargo clippy` on the workspace, rust-analyzer) are unaffected.

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    if os == "none" {
        let script = format!("{dir}/src/arch/{arch}/linker.ld");
        println!("cargo:rerun-if-changed={script}");
        println!("cargo:rustc-link-arg-bins=-T{script}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
