//! The environment variables the host library reads, named once. The
//! tests' and xtask's own variables are in the tests crate
//! (`tests::suites::vars`).

/// Accelerator for [`crate::Accel::Auto`]: `kvm` or `tcg` (`auto` probes).
pub const ACCEL: &str = "SVMC_ACCEL";
/// The QEMU binary, instead of looking it up.
pub const QEMU: &str = "SVMC_QEMU";
/// The `vhost-device-vsock` binary, instead of looking it up.
pub const DAEMON: &str = "SVMC_VHOST_DEVICE_VSOCK";
/// The project-local tool directory (its `bin/` is searched before `PATH`).
pub const TOOLS_DIR: &str = "SVMC_TOOLS_DIR";
/// The default firmware image.
pub const IMAGE: &str = "SVMC_IMAGE";
/// The default Linux guest kernel.
pub const LINUX_KERNEL: &str = "SVMC_LINUX_KERNEL";
/// The default Linux guest initramfs.
pub const LINUX_INITRD: &str = "SVMC_LINUX_INITRD";
