//! `cargo xtask setup`: installs what the project needs on a fresh machine.
//!
//! - the bare-metal Rust targets (`rustup target add`; rustup does not add
//!   the targets of `rust-toolchain.toml` to an installed toolchain),
//! - QEMU from Debian's packages (`apt-get`),
//! - `vhost-device-vsock` 0.3.0 from crates.io into the project's tool
//!   directory `.tools/` (`cargo install --locked --root`).
//!
//! Each step is skipped when its tool is already there; when a step cannot
//! run, the error says exactly what to run by hand.

use std::process::Command;

use host::Arch;

use crate::util::{Result, output, root, run, show};

/// The vsock device daemon version we test with.
pub const DAEMON_VERSION: &str = "0.3.0";

/// Debian packages providing the QEMU system emulators.
const QEMU_PACKAGES: [&str; 2] = ["qemu-system-x86", "qemu-system-arm"];

/// Installs whatever is missing.
pub fn setup() -> Result<()> {
    targets()?;
    qemu()?;
    daemon()?;
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
    let tools = root().join(".tools");
    let bin = tools.join("bin").join(host::tools::DAEMON);
    if bin.is_file()
        && output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(DAEMON_VERSION))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: building vhost-device-vsock {DAEMON_VERSION} into {}",
        tools.display()
    );
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "vhost-device-vsock",
        "--version",
        DAEMON_VERSION,
        "--locked",
        "--root",
    ])
    .arg(&tools)
    .current_dir(root());
    run(&mut cmd).map_err(|e| {
        format!(
            "{e}\nCould not build vhost-device-vsock; it needs crates.io and a C compiler. Run by hand: {}",
            show(&cmd)
        )
    })
}
