//! `cargo xtask build-image`: builds the guest firmware for an architecture.

use std::path::PathBuf;

use svmc_host::Arch;

use crate::util::{Result, cargo, root, run};

/// Cargo profile of the guest image (root `Cargo.toml`).
pub const PROFILE: &str = "guest";

/// Builds the guest for `arch` with extra cargo `features` and returns the
/// ELF's path.
pub fn build(arch: Arch, features: &[&str]) -> Result<PathBuf> {
    build_with(arch, features, true)
}

/// [`build`], optionally without the guest's default features.
fn build_with(arch: Arch, features: &[&str], default_features: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "guest",
        "--target",
        arch.target_triple(),
        "--profile",
        PROFILE,
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    if !default_features {
        cmd.arg("--no-default-features");
    }
    run(&mut cmd)?;
    let path = target_dir()
        .join(arch.target_triple())
        .join(PROFILE)
        .join("guest");
    if !path.is_file() {
        return Err(format!(
            "the build succeeded but {} is missing",
            path.display()
        ));
    }
    Ok(path)
}

/// Builds the guest for `arch` with cargo feature `feature` and copies it to
/// `guest-<feature>` next to the default image, whose path it returns
/// (e.g. `target/x86_64-unknown-none/guest/guest-hostile`). The default
/// image is rebuilt afterwards (a re-link: cargo keeps the artifacts of
/// each feature set apart), so `guest` is never the variant.
pub fn build_variant(arch: Arch, feature: &str) -> Result<PathBuf> {
    let built = build(arch, &[feature])?;
    let variant = built.with_file_name(format!("guest-{feature}"));
    std::fs::copy(&built, &variant)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), variant.display()))?;
    build(arch, &[])?;
    Ok(variant)
}

/// Builds the guest for `arch` without its default `quiet` feature (debug
/// and trace logs compiled in), copies it to `guest-verbose` next to the
/// default image and returns that path; the default image is rebuilt
/// afterwards, as in [`build_variant`].
pub fn build_verbose(arch: Arch) -> Result<PathBuf> {
    let built = build_with(arch, &[], false)?;
    let variant = built.with_file_name("guest-verbose");
    std::fs::copy(&built, &variant)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), variant.display()))?;
    build(arch, &[])?;
    Ok(variant)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}
