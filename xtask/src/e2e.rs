//! `cargo xtask run-e2e` and `cargo xtask soak`: build the guest image and
//! `host-cli`, then run the QEMU suites (`tests::suites::SUITES`: the
//! end-to-end suite, then the robustness suites) against real QEMU and the
//! real vsock device daemon. The suite list, the test matrix, the soak sizes
//! and the variable names come from `tests::suites`, which the suites read
//! too.

use svmc_host::{Arch, Guest};
use tests::suites::{Qemu, SOAK, SUITES, Target, vars};

use crate::image;
use crate::util::{self, Result, cargo};

/// The soak sizes to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// CI sizes (`cargo xtask test`, `run-e2e`).
    Ci,
    /// Full sizes (`cargo xtask soak`).
    Full,
}

/// Every suite name.
pub fn all_suites() -> Vec<&'static str> {
    SUITES.iter().map(|s| s.name).collect()
}

/// Runs the suites of `target` (or only `only`, if not empty) at CI
/// sizes, optionally only the cases whose names contain `filter`.
pub fn run(target: &Target, only: &[String], filter: Option<&str>) -> Result<()> {
    let mut names: Vec<&str> = target.suites.map_or_else(all_suites, <[_]>::to_vec);
    if !only.is_empty() {
        names.retain(|n| only.iter().any(|o| o == n));
    }
    run_suites(target, &names, Size::Ci, filter)
}

/// `cargo xtask soak`: the soak suite with the full counts. Sizes already
/// set in the environment win.
pub fn soak(arch: Arch, filter: Option<&str>) -> Result<()> {
    let target = Target {
        arch,
        machine: None,
        suites: None,
        qemu: Qemu::System,
    };
    run_suites(&target, &["soak"], Size::Full, filter)
}

/// `cargo test` arguments that select the suites `names`.
pub fn test_args(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| ["--test".into(), n.to_string()])
        .collect()
}

fn host_cli() -> Result<std::path::PathBuf> {
    util::run(cargo().args(["build", "--release", "-p", "host-cli"]))?;
    Ok(image::target_dir().join("release").join("host-cli"))
}

fn run_suites(target: &Target, names: &[&str], size: Size, filter: Option<&str>) -> Result<()> {
    if names.is_empty() {
        return Err("no suite to run".into());
    }
    let arch = target.arch;
    let mut cmd = cargo();
    // The misbehaving firmware for `hostile_guest.rs`, in its own file;
    // built first, so that `guest` is the default image afterwards.
    if names.contains(&"hostile_guest") {
        cmd.env(
            vars::HOSTILE_IMAGE,
            image::build_variant(arch, crate::ci::HOSTILE_FEATURE)?,
        );
    }
    let image = image::build(arch, &[])?;
    // The suites also run the `host-cli` binary.
    let host_cli = host_cli()?;
    // Every suite runs and reports even if an earlier one failed.
    cmd.args(["test", "--release", "--no-fail-fast", "-p", "tests"]);
    cmd.args(test_args(names));
    cmd.arg("--")
        .env(vars::ARCH, arch.name())
        .env(vars::IMAGE, &image)
        .env(vars::HOST_CLI, &host_cli);
    match target.machine {
        Some(m) => cmd.env(vars::MACHINE, m),
        None => cmd.env_remove(vars::MACHINE),
    };
    match target.qemu {
        Qemu::System => {}
        Qemu::Backports => {
            let qemu = crate::setup::backports_qemu(arch);
            if !qemu.is_file() {
                return Err(format!(
                    "{} is missing: `cargo xtask setup` unpacks QEMU 10.0 (it needs the network)",
                    qemu.display()
                ));
            }
            eprintln!("xtask: with {}", qemu.display());
            cmd.env(svmc_host::env::QEMU, qemu);
        }
    }
    for s in SOAK {
        if std::env::var_os(s.var).is_none() {
            let v = match size {
                Size::Ci => s.ci,
                Size::Full => s.full,
            };
            cmd.env(s.var, v.to_string());
        }
    }
    if let Some(f) = filter {
        cmd.arg(f);
    }
    util::run(&mut cmd)
}

/// `cargo xtask run-e2e --guest linux`: builds the Linux test VM and runs
/// the suites that apply to it (`SVMC_E2E_GUEST=linux`; each suite says
/// why if not), then `vsock-transport`'s AF_VSOCK tests inside it. With a
/// `filter`, only the cases that match (and the in-VM tests if
/// `host_vsock` matches).
pub fn run_linux(only: &[String], filter: Option<&str>) -> Result<()> {
    let vm = crate::linux::build()?;
    let host_cli = host_cli()?;
    let mut names = Vec::new();
    for s in SUITES {
        if !only.is_empty() && !only.iter().any(|o| o == s.name) {
            continue;
        }
        match s.not_for_linux {
            None => names.push(s.name),
            Some(why) => println!(
                "suite {} ... not applicable to the Linux guest: {why}",
                s.name
            ),
        }
    }
    let suites = if names.is_empty() {
        Ok(())
    } else {
        let mut cmd = cargo();
        cmd.args(["test", "--release", "--no-fail-fast", "-p", "tests"])
            .args(test_args(&names))
            .arg("--")
            .env(vars::ARCH, Arch::X86_64.name())
            .env_remove(vars::MACHINE)
            .env(vars::GUEST, Guest::Linux.name())
            .env(vars::IMAGE, &vm.kernel)
            .env(vars::INITRD, &vm.initrd)
            .env(vars::HOST_CLI, &host_cli);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        util::run(&mut cmd)
    };
    let vsock = if filter.is_none_or(|f| "host_vsock".contains(f)) {
        crate::linux::run_vsock_tests(&vm)
    } else {
        Ok(())
    };
    suites.and(vsock)
}
