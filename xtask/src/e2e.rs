//! `cargo xtask run-e2e`: builds the guest image and `host-cli`, then runs
//! the end-to-end suite (`tests/tests/e2e.rs`) against real QEMU and the
//! real vsock device daemon.

use host_cli::Arch;

use crate::image;
use crate::util::{self, Result, cargo};

/// Architectures whose guest passes the suite.
pub const SUPPORTED: &[Arch] = &[Arch::X86_64];

/// Runs the suite for `arch`, optionally only the tests whose names contain
/// `filter`.
pub fn run(arch: Arch, filter: Option<&str>) -> Result<()> {
    let image = image::build(arch, &[])?;
    // The suite also runs the `host-cli` binary.
    util::run(cargo().args(["build", "--release", "-p", "host-cli"]))?;
    let host_cli = image::target_dir().join("release").join("host-cli");
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "tests", "--test", "e2e", "--"])
        .env("SVMC_E2E_ARCH", arch.name())
        .env("SVMC_E2E_IMAGE", &image)
        .env("SVMC_E2E_HOST_CLI", &host_cli);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    util::run(&mut cmd)
}
