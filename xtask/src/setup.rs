//! `cargo xtask setup`: installs what the project needs on a fresh machine.
//!
//! - the bare-metal Rust targets (`rustup target add`; rustup does not add
//!   the targets of `rust-toolchain.toml` to an installed toolchain),
//! - QEMU from Debian's packages (`apt-get`),
//! - `vhost-device-vsock` 0.3.0 from crates.io into the project's tool
//!   directory `.tools/` (`cargo install --locked --root`),
//! - the `cddl` 0.10.7 CLI the same way: the independent validator the
//!   tests run on `comm/svmc.cddl` (`tests/tests/cddl.rs`, the conformance
//!   suite).
//!
//! Each step is skipped when its tool is already there; when a step cannot
//! run, the error says exactly what to run by hand.

use std::process::Command;

use host::Arch;

use crate::util::{Result, output, root, run, show};

/// The vsock device daemon version we test with.
pub const DAEMON_VERSION: &str = "0.3.0";

/// The `cddl` CLI version the tests validate with (`tests::cddl::VERSION`).
pub const CDDL_VERSION: &str = "0.10.7";

/// Debian packages providing the QEMU system emulators.
const QEMU_PACKAGES: [&str; 2] = ["qemu-system-x86", "qemu-system-arm"];

/// Installs whatever is missing.
pub fn setup() -> Result<()> {
    targets()?;
    qemu()?;
    daemon()?;
    cddl()?;
    Ok(())
}

fn targets() -> Result<()> {
    let installed = output(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(root()),
    )
    .ok_or("could not run `rustup target list --installed`; is rustup installed?")?;
    let missing: Vec<&str> = Arch::ALL
        .iter()
        .map(|a| a.target_triple())
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"])
        .args(&missing)
        .current_dir(root());
    run(&mut cmd).map_err(|e| format!("{e}\nInstall the targets by hand: {}", show(&cmd)))
}

fn qemu() -> Result<()> {
    let missing: Vec<Arch> = Arch::ALL
        .into_iter()
        .filter(|a| host::tools::find_tool(host::tools::qemu_binary(*a), host::env::QEMU).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let hint = format!(
        "run as root: apt-get update && apt-get install -y --no-install-recommends {}",
        QEMU_PACKAGES.join(" ")
    );
    // The owner of /proc/self is the effective user.
    let root_user = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| format!("reading /proc/self: {e}"))?,
    ) == 0;
    if !root_user {
        return Err(format!(
            "QEMU is missing ({missing:?}) and we are not root; {hint}"
        ));
    }
    eprintln!("xtask: installing QEMU from Debian's packages");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    run(Command::new("apt-get").arg("update").envs(env))
        .and_then(|()| {
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(QEMU_PACKAGES)
                .envs(env))
        })
        .map_err(|e| format!("{e}\nCould not install QEMU; {hint}"))
}

fn daemon() -> Result<()> {
    cargo_install(
        "vhost-device-vsock",
        host::tools::DAEMON,
        DAEMON_VERSION,
        "it needs crates.io and a C compiler",
    )
}

fn cddl() -> Result<()> {
    cargo_install("cddl", "cddl", CDDL_VERSION, "it needs crates.io")
}

/// `cargo install --locked` of `krate` at `version` into `.tools/`,
/// unless `.tools/bin/<bin>` already reports that version; `needs` says
/// what the build needs, for the error.
fn cargo_install(krate: &str, bin: &str, version: &str, needs: &str) -> Result<()> {
    let tools = root().join(".tools");
    let path = tools.join("bin").join(bin);
    if path.is_file()
        && output(Command::new(&path).arg("--version")).is_some_and(|v| v.contains(version))
    {
        return Ok(());
    }
    eprintln!("xtask: building {krate} {version} into {}", tools.display());
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["install", krate, "--version", version, "--locked", "--root"])
        .arg(&tools)
        .current_dir(root());
    run(&mut cmd).map_err(|e| {
        format!(
            "{e}\nCould not build {krate}; {needs}. Run by hand: {}",
            show(&cmd)
        )
    })
}
