//! `cargo xtask run-e2e` and `cargo xtask soak`: build the guest image and
//! `host-cli`, then run the end-to-end suite (`tests/tests/e2e.rs`) and the
//! robustness suites (`faults.rs`, `hostile_host.rs`, `hostile_guest.rs`,
//! `soak.rs`) against real QEMU and the real vsock device daemon.

use host_cli::Arch;

use crate::image;
use crate::util::{self, Result, cargo};

/// Architectures whose guest passes the suite.
pub const SUPPORTED: &[Arch] = &[Arch::X86_64];

/// The suites `run` runs, in order: the end-to-end suite, then the
/// robustness suites of issue 4 (faults, a hostile host, soak at CI sizes).
pub const SUITES: &[&str] = &["e2e", "faults", "hostile_host", "hostile_guest", "soak"];

/// Soak sizes for CI (the defaults of `tests/tests/soak.rs`).
const SOAK_CI: &[(&str, &str)] = &[
    ("SVMC_SOAK_CYCLES", "20"),
    ("SVMC_SOAK_REQUESTS", "10000"),
    ("SVMC_SOAK_VMS", "3"),
    ("SVMC_SOAK_VM_REQUESTS", "500"),
];

/// Soak sizes for `cargo xtask soak`.
const SOAK_FULL: &[(&str, &str)] = &[
    ("SVMC_SOAK_CYCLES", "200"),
    ("SVMC_SOAK_REQUESTS", "100000"),
    ("SVMC_SOAK_VMS", "4"),
    ("SVMC_SOAK_VM_REQUESTS", "5000"),
];

/// Runs the suites for `arch`, optionally only the tests whose names
/// contain `filter`.
pub fn run(arch: Arch, filter: Option<&str>) -> Result<()> {
    run_suites(arch, SUITES, SOAK_CI, filter)
}

/// `cargo xtask soak`: the soak suite with the full counts. Sizes already
/// set in the environment win.
pub fn soak(arch: Arch, filter: Option<&str>) -> Result<()> {
    run_suites(arch, &["soak"], SOAK_FULL, filter)
}

fn run_suites(
    arch: Arch,
    suites: &[&str],
    sizes: &[(&str, &str)],
    filter: Option<&str>,
) -> Result<()> {
    // The misbehaving firmware for `hostile_guest.rs`, in its own file;
    // built first, so that `guest` is the default image afterwards.
    let hostile_image = image::build_variant(arch, "hostile")?;
    let image = image::build(arch, &[])?;
    // The suites also run the `host-cli` binary.
    util::run(cargo().args(["build", "--release", "-p", "host-cli"]))?;
    let host_cli = image::target_dir().join("release").join("host-cli");
    let mut cmd = cargo();
    // Every suite runs and reports even if an earlier one failed.
    cmd.args(["test", "--release", "--no-fail-fast", "-p", "tests"]);
    for s in suites {
        cmd.args(["--test", s]);
    }
    cmd.arg("--")
        .env("SVMC_E2E_ARCH", arch.name())
        .env("SVMC_E2E_IMAGE", &image)
        .env("SVMC_E2E_HOSTILE_IMAGE", &hostile_image)
        .env("SVMC_E2E_HOST_CLI", &host_cli);
    for (k, v) in sizes {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    if let Some(f) = filter {
        cmd.arg(f);
    }
    util::run(&mut cmd)
}
