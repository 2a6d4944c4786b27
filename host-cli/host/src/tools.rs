//! Finding QEMU, the vsock device daemon and the guest image.

use std::env;
use std::path::{Path, PathBuf};

use crate::{Arch, Error, Result};

/// Name of the vhost-user vsock device daemon binary.
pub const DAEMON: &str = "vhost-device-vsock";

/// Environment variable naming the project-local tool directory (its `bin/`
/// is searched before `PATH`).
pub const TOOLS_DIR_ENV: &str = crate::env::TOOLS_DIR;

/// The root of the source tree this binary was built from (where the
/// workspace `Cargo.toml` is), if it still exists.
pub fn workspace_root() -> Option<PathBuf> {
    // The first ancestor of this crate whose `Cargo.toml` declares the
    // workspace (this crate is nested in `host-cli/`).
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .skip(1)
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// The project-local tool directory: `$SVMC_TOOLS_DIR`, else `.tools` in
/// the workspace.
pub fn tools_dir() -> Option<PathBuf> {
    if let Some(d) = env::var_os(TOOLS_DIR_ENV) {
        return Some(PathBuf::from(d));
    }
    workspace_root().map(|r| r.join(".tools"))
}

/// The QEMU system emulator for `arch`.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    }
}

/// Looks for `name`: `$env_override` if set, then the tool directory's
/// `bin/`, then `PATH`.
pub fn find_tool(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(p) = env::var_os(env_override) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(Error::ToolMissing {
            tool: name.into(),
            searched: format!("${env_override}={}", p.display()),
        });
    }
    let mut searched = Vec::new();
    if let Some(d) = tools_dir() {
        let p = d.join("bin").join(name);
        if is_executable(&p) {
            return Ok(p);
        }
        searched.push(d.join("bin").display().to_string());
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    searched.push("PATH".into());
    Err(Error::ToolMissing {
        tool: name.into(),
        searched: searched.join(", "),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The programs a VM needs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `qemu-system-<arch>`.
    pub qemu: PathBuf,
    /// `vhost-device-vsock`.
    pub daemon: PathBuf,
}

impl Tools {
    /// Finds both tools for `arch` (overrides: `$SVMC_QEMU`,
    /// `$SVMC_VHOST_DEVICE_VSOCK`).
    pub fn find(arch: Arch) -> Result<Self> {
        Ok(Self {
            qemu: find_tool(qemu_binary(arch), crate::env::QEMU)?,
            daemon: find_tool(DAEMON, crate::env::DAEMON)?,
        })
    }
}

/// Where `cargo xtask build-image --guest linux` puts the Linux test VM:
/// `(kernel, initramfs)` in `<target dir>/linux/` (`$SVMC_LINUX_KERNEL`
/// and `$SVMC_LINUX_INITRD` override). Its initramfs for the in-VM AF_VSOCK
/// tests is [`linux_tests_initrd`].
pub fn default_linux() -> Option<(PathBuf, PathBuf)> {
    let dir = linux_dir();
    let kernel = env::var_os(crate::env::LINUX_KERNEL)
        .map(PathBuf::from)
        .or_else(|| dir.as_ref().map(|d| d.join("vmlinuz")))?;
    let initrd = env::var_os(crate::env::LINUX_INITRD)
        .map(PathBuf::from)
        .or_else(|| dir.as_ref().map(|d| d.join("initramfs.cpio")))?;
    Some((kernel, initrd))
}

/// The initramfs that runs `vsock-transport`'s AF_VSOCK tests in the Linux
/// test VM (`svmc.mode=vsock-tests`), next to [`default_linux`]'s.
pub fn linux_tests_initrd() -> Option<PathBuf> {
    linux_dir().map(|d| d.join("initramfs-vsock-tests.cpio"))
}

/// `<target dir>/linux`.
fn linux_dir() -> Option<PathBuf> {
    let root = workspace_root()?;
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Some(target_dir.join("linux"))
}

/// Where `cargo xtask build-image` puts the image for `arch`.
pub fn default_image(arch: Arch) -> Option<PathBuf> {
    if let Some(p) = env::var_os(crate::env::IMAGE) {
        return Some(PathBuf::from(p));
    }
    let root = workspace_root()?;
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Some(
        target_dir
            .join(arch.target_triple())
            .join("guest")
            .join("guest"),
    )
}
