//! `cargo xtask setup`: installs what the project needs on a fresh machine.
//!
//! - the bare-metal Rust targets (`rustup target add`; rustup does not add
//!   the targets of `rust-toolchain.toml` to an installed toolchain),
//! - QEMU from Debian's packages (`apt-get`),
//! - `vhost-device-vsock` 0.3.0 from crates.io into the project's tool
//!   directory `.tools/` (`cargo install --locked --root`),
//! - the `cddl` 0.10.7 CLI the same way: the independent validator the
//!   tests run on `comm/svmc.cddl` (`tests/tests/cddl.rs`, the conformance
//!   suite),
//! - QEMU 10.0 from bookworm-backports unpacked into `.tools/qemu-10.0/`
//!   next to the distribution's (see [`qemu_backports`]), for the test
//!   matrix's second QEMU (`tests::suites::Qemu::Backports`).
//!
//! Each step is skipped when its tool is already there; when a step cannot
//! run, the error says exactly what to run by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use svmc_host::Arch;
use tests::suites::{QEMU_BACKPORTS, QEMU_BACKPORTS_VERSION};

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
    // Only the matrix's QEMU 10.0 legs need it: without the network the
    // rest (demo, the 7.2 legs) still runs, and those legs fail saying why.
    if let Err(e) = qemu_backports() {
        eprintln!("xtask: warning: QEMU 10.0 is not unpacked: {e}");
    }
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
        .filter(|a| {
            svmc_host::tools::find_tool(svmc_host::tools::qemu_binary(*a), svmc_host::env::QEMU)
                .is_err()
        })
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
        svmc_host::tools::DAEMON,
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

/// The packages unpacked for QEMU 10.0: the emulators, their shared files
/// and ROMs, and SeaBIOS of the same suite (10.0 wants 1.16.3; bookworm
/// has 1.16.2). Their library dependencies are all in bookworm and come
/// with the distribution's QEMU.
const BACKPORTS_PACKAGES: [&str; 4] = [
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-system-data",
    "qemu-system-common",
];

/// The SeaBIOS of bookworm-backports.
const BACKPORTS_SEABIOS: &str = "seabios=1.16.3-2~bpo12+1";

/// `.tools/qemu-10.0`.
fn backports_dir() -> PathBuf {
    root().join(".tools").join(QEMU_BACKPORTS)
}

/// The QEMU 10.0 system emulator for `arch` that [`qemu_backports`]
/// unpacks: a wrapper that runs the unpacked binary with `-L` its own data
/// directory (its ROMs, not the distribution's 7.2 ones).
pub fn backports_qemu(arch: Arch) -> PathBuf {
    backports_dir()
        .join("bin")
        .join(svmc_host::tools::qemu_binary(arch))
}

/// Unpacks QEMU 10.0 from bookworm-backports into `.tools/qemu-10.0/`
/// without installing it and without touching the machine's apt
/// configuration: `apt-get update` and `apt-get download` with a private
/// source list, package lists and cache (`-o Dir::...`), then `dpkg -x`.
/// Skipped when the wrappers are there and report 10.0.
fn qemu_backports() -> Result<()> {
    let ready = Arch::ALL.iter().all(|a| {
        output(Command::new(backports_qemu(*a)).arg("--version"))
            .is_some_and(|v| v.contains("10.0"))
    });
    if ready {
        return Ok(());
    }
    let dir = backports_dir();
    eprintln!(
        "xtask: unpacking QEMU {QEMU_BACKPORTS_VERSION} (bookworm-backports) into {}",
        dir.display()
    );
    let apt = dir.join("apt");
    let debs = dir.join("debs");
    let unpacked = dir.join("root");
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&unpacked);
    for d in [
        apt.join("lists/partial"),
        apt.join("cache/archives/partial"),
        debs.clone(),
        unpacked.clone(),
        dir.join("bin"),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(
        &sources,
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
         http://deb.debian.org/debian bookworm-backports main\n",
    )
    .map_err(|e| format!("writing {}: {e}", sources.display()))?;
    let apt_get = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent", "-o"])
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .args(["-o", "Debug::NoLocking=1", "-q"])
            .args(args)
            .current_dir(&debs);
        c
    };
    let hint = "QEMU 10.0 is fetched from bookworm-backports (deb.debian.org) with apt-get \
                download; it needs the network and Debian's archive keyring";
    run(&mut apt_get(&["update"])).map_err(|e| format!("{e}\n{hint}"))?;
    let mut wanted: Vec<String> = BACKPORTS_PACKAGES
        .iter()
        .map(|p| format!("{p}={QEMU_BACKPORTS_VERSION}"))
        .collect();
    wanted.push(BACKPORTS_SEABIOS.into());
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    run(&mut apt_get(&[&["download"][..], &wanted].concat()))
        .map_err(|e| format!("{e}\n{hint}"))?;
    let entries =
        std::fs::read_dir(&debs).map_err(|e| format!("reading {}: {e}", debs.display()))?;
    for deb in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let _ = std::fs::remove_dir_all(&debs);
    // One data directory: QEMU's shared files and the SeaBIOS images
    // (Debian's build finds the latter in /usr/share/seabios, which would
    // be bookworm's).
    let share = dir.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).map_err(|e| format!("creating {}: {e}", share.display()))?;
    for from in ["usr/share/qemu", "usr/share/seabios"] {
        copy_files(&unpacked.join(from), &share)?;
    }
    for arch in Arch::ALL {
        let bin = unpacked
            .join("usr/bin")
            .join(svmc_host::tools::qemu_binary(arch));
        let wrapper = backports_qemu(arch);
        let script = format!(
            "#!/bin/sh\n# QEMU {QEMU_BACKPORTS_VERSION} unpacked by `cargo xtask setup`, with its own ROMs.\nexec {} -L {} \"$@\"\n",
            sh_quote(&bin),
            sh_quote(&share)
        );
        std::fs::write(&wrapper, script)
            .map_err(|e| format!("writing {}: {e}", wrapper.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", wrapper.display()))?;
        let version = output(Command::new(&wrapper).arg("--version"))
            .ok_or_else(|| format!("{} does not run", wrapper.display()))?;
        if !version.contains("10.0") {
            return Err(format!("{} reports {version:?}", wrapper.display()));
        }
    }
    Ok(())
}

/// Copies the files and directories of `from` into `to` (links followed;
/// a name already in `to` is kept).
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let dest = to.join(e.file_name());
        if dest.exists() {
            continue;
        }
        let src = e.path();
        if src.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            copy_files(&src, &dest)?;
        } else if src.exists() {
            std::fs::copy(&src, &dest).map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// `p` quoted for sh.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}
