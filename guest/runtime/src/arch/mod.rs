//! Architecture-specific code, behind one interface that the rest of the
//! runtime uses. Each architecture module provides:
//!
//! - its entry point (boot assembly and a `rust_start` that builds a
//!   [`BootInfo`] and calls `crate::entry::start`);
//! - `NAME`: the architecture as Rust names it (`x86_64`, `aarch64`);
//! - `IDENTITY_MAP_END`: end of the identity-mapped physical range;
//! - `console`: `init()` and `with(|w: &mut dyn fmt::Write| ..)`, plus
//!   `panic_writer()` for the panic handler;
//! - `now_us()`: a monotonic clock in microseconds;
//! - `power_off() -> !` (the VMM exits with status 0) and
//!   `exit_failure() -> !` (the VMM exits with a failure status);
//! - `VirtioTransport` and `find_vsock()`: finding the virtio socket device
//!   (PCI on x86_64 q35; virtio-mmio or PCI on aarch64 `virt`).

use core::ops::Range;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the guest firmware supports x86_64 and aarch64 only");

/// What the boot code learnt from the VMM.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// The kernel command line (empty if none).
    pub cmdline: &'static str,
    /// RAM for the heap: the rest of the RAM region holding the image.
    pub heap: Range<usize>,
    /// Whether `heap` came from the VMM's memory map (else a fixed size).
    pub heap_from_memmap: bool,
    /// More RAM for the heap below the image, if any (empty if none): on
    /// aarch64 `virt`, what lies between the device tree and the image.
    pub heap_low: Range<usize>,
}
