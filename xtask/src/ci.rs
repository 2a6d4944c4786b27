//! `cargo xtask lint`: formatting, clippy and docs, as CI runs them
//! (`.ci/run` calls it before `cargo xtask test`). The feature sets and the
//! suite list are the same constants that `cargo xtask test` uses.

use svmc_host::Arch;

use crate::e2e;
use crate::util::{self, Result, cargo};

/// `vsock-transport`'s guest backend.
pub const TRANSPORT_GUEST_FEATURE: &str = "guest";
/// The package name of `comm` (the folder): `comm` is taken on crates.io.
pub const COMM_PACKAGE: &str = "svmc-comm";
/// svmc's own protocol (`comm/svmc`): messages, fast codec and, with
/// [`SVMC_SERVER_FEATURE`], the handler.
pub const SVMC_PACKAGE: &str = "svmc-proto";
/// `svmc-proto`'s handler on vsock-transport.
pub const SVMC_SERVER_FEATURE: &str = "server";
/// The crates published on crates.io (package names).
pub const LIBRARY_PACKAGES: [&str; 5] = [
    COMM_PACKAGE,
    SVMC_PACKAGE,
    "vsock-transport",
    RUNTIME_PACKAGE,
    "svmc-host",
];

/// The bare-metal runtime (`guest/runtime`).
pub const RUNTIME_PACKAGE: &str = "svmc-runtime";
/// The guest's test variant that misbehaves on purpose.
pub const HOSTILE_FEATURE: &str = "hostile";
/// The guest feature of the benchmark floors' image (`svmc.mode=echo`,
/// `raw-reverse`).
pub const FLOORS_FEATURE: &str = "floors";

/// `-p <package>` for each of [`LIBRARY_PACKAGES`].
pub fn library_packages() -> Vec<&'static str> {
    LIBRARY_PACKAGES.iter().flat_map(|p| ["-p", p]).collect()
}

/// Removes cargo's unpacked copies of [`LIBRARY_PACKAGES`] from
/// `$CARGO_HOME/registry/src`. `cargo package` verifies each crate against
/// its siblings' `.crate` files through a local registry, and cargo unpacks
/// a registry crate once per registry path and version: it never unpacks
/// it again when the `.crate` changes. A second `cargo xtask lint` in the
/// same directory, after a change to `svmc-comm`'s API, would verify
/// `vsock-transport` against the old `svmc-comm` and fail. An unpacked
/// copy is only a cache (cargo unpacks it again from the `.crate`), so
/// removing it is always safe.
fn forget_packaged_sources() -> Result<()> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(h) => std::path::PathBuf::from(h),
        None => match std::env::var_os("HOME") {
            Some(h) => std::path::PathBuf::from(h).join(".cargo"),
            None => return Ok(()),
        },
    };
    let Ok(registries) = std::fs::read_dir(home.join("registry").join("src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        let Ok(crates) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for krate in crates.flatten() {
            let name = krate.file_name();
            let name = name.to_string_lossy();
            let ours = LIBRARY_PACKAGES.iter().any(|p| {
                name.strip_prefix(p)
                    .and_then(|v| v.strip_prefix('-'))
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            });
            if ours {
                std::fs::remove_dir_all(krate.path())
                    .map_err(|e| format!("{}: {e}", krate.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Runs every formatting, lint and doc check of CI.
pub fn lint() -> Result<()> {
    let deny = ["--", "-D", "warnings"];
    util::run(cargo().args(["fmt", "--all", "--check"]))?;
    util::run(cargo().args(["clippy", "--all-targets"]).args(deny))?;
    // Features are additive: every backend at once, as docs.rs builds it.
    util::run(
        cargo()
            .arg("clippy")
            .args(library_packages())
            .args(["--all-targets", "--all-features"])
            .args(deny),
    )?;
    util::run(
        cargo()
            .arg("doc")
            .args(library_packages())
            .args(["--all-features", "--no-deps", "--quiet"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // The published crates package and build from their .crate files.
    // Together, so that cargo resolves each sibling from its local
    // packaging registry (alone, vsock-transport and svmc-host need
    // svmc-comm on crates.io first). --allow-dirty: also before a commit.
    //
    // Cargo takes a registry crate's build as fresh by name and version,
    // whatever its content: verifying against siblings packaged earlier
    // would reuse their old builds. So the packaging has a target
    // directory of its own in which the three are always rebuilt.
    forget_packaged_sources()?;
    let package_dir = crate::image::target_dir().join("package-check");
    util::run(
        cargo()
            .arg("clean")
            .args(library_packages())
            .arg("--target-dir")
            .arg(&package_dir)
            .arg("--quiet"),
    )?;
    util::run(
        cargo()
            .arg("package")
            .args(library_packages())
            .args(["--allow-dirty", "--quiet", "--target-dir"])
            .arg(&package_dir),
    )?;
    // The QEMU suites have `test = false` (xtask runs them), so
    // --all-targets skips them.
    util::run(
        cargo()
            .args(["clippy", "-p", "tests"])
            .args(e2e::test_args(&e2e::all_suites()))
            .args(deny),
    )?;
    for arch in Arch::ALL {
        let target = arch.target_triple();
        util::run(
            cargo()
                .args([
                    "clippy",
                    "-p",
                    COMM_PACKAGE,
                    "-p",
                    SVMC_PACKAGE,
                    "-p",
                    "vsock-transport",
                    "--features",
                ])
                .arg(format!(
                    "vsock-transport/{TRANSPORT_GUEST_FEATURE},{SVMC_PACKAGE}/{SVMC_SERVER_FEATURE}"
                ))
                .args(["--target", target])
                .args(deny),
        )?;
        for features in [None, Some(HOSTILE_FEATURE), Some(FLOORS_FEATURE)] {
            let mut c = cargo();
            c.args([
                "clippy",
                "-p",
                "guest",
                "-p",
                RUNTIME_PACKAGE,
                "--target",
                target,
            ])
            .arg("--profile")
            .arg(crate::image::PROFILE);
            if let Some(f) = features {
                c.args(["--features", f]);
            }
            util::run(c.args(deny))?;
        }
    }
    // The guest is not a default member, so the workspace docs build
    // (`cargo xtask test`) skips it.
    for arch in Arch::ALL {
        util::run(
            cargo()
                .args(["doc", "-p", "guest", "-p", RUNTIME_PACKAGE])
                .args(["--target", arch.target_triple()])
                .args(["--no-deps", "--quiet"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    Ok(())
}
