//! x86_64: PVH boot under QEMU (`-kernel`, q35 with SeaBIOS or microvm),
//! COM1 console, ACPI power-off, virtio socket device on PCI.

use core::arch::global_asm;

mod clock;
pub mod console;
mod pci;
mod power;
mod pvh;

pub use clock::now_us;
pub use pci::{DiscoveryError, VirtioTransport, find_vsock};
pub use power::{exit_failure, power_off};

use crate::layout;

/// Architecture name as Rust spells it.
pub const NAME: &str = "x86_64";

/// End of the identity map that `boot.s` builds (4 GiB).
pub const IDENTITY_MAP_END: u64 = 1 << 32;

global_asm!(
    include_str!("boot.s"),
    STACK_SIZE = const layout::STACK_SIZE,
    options(att_syntax)
);

/// Called by `boot.s` in 64-bit mode with the stack set up.
///
/// `start_info` is the physical address of PVH's `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn rust_start(start_info: u64) -> ! {
    // SAFETY: the PVH boot protocol passes the address of a valid
    // `hvm_start_info` in EBX, which boot.s forwards unchanged; the memory
    // it describes (below the image, identity-mapped) is never written.
    let boot = unsafe { pvh::boot_info(start_info) };
    crate::start(boot)
}
