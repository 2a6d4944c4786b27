//! x86_64: PVH boot under QEMU (`-kernel`, q35 with SeaBIOS or microvm
//! with qboot), COM1 console, machine facts from ACPI, ACPI power-off, the
//! virtio socket device on virtio-mmio (microvm) or PCI (q35).

use core::arch::global_asm;

mod clock;
pub mod console;
mod power;
mod pvh;
mod virtio;

pub use clock::now_us;
pub use power::{exit_failure, power_off};
pub use virtio::{DiscoveryError, VirtioTransport, find_vsock};

use crate::layout;
use crate::parse::acpi::{self, Acpi, PhysMem};

/// Architecture name as Rust spells it.
pub const NAME: &str = "x86_64";

/// End of the identity map that `boot.s` builds (4 GiB).
pub const IDENTITY_MAP_END: u64 = 1 << 32;

global_asm!(
    include_str!("boot.s"),
    STACK_SIZE = const layout::STACK_SIZE,
    options(att_syntax)
);

static ACPI: spin::Once<Option<Acpi>> = spin::Once::new();

/// What the ACPI tables said (`None` without tables), once `rust_start`
/// has read them.
fn acpi() -> Option<&'static Acpi> {
    ACPI.get().and_then(Option::as_ref)
}

/// The tables' memory, read through the identity map that `boot.s` built.
///
/// Only made in [`rust_start`], whose caller (the VMM) promises that the
/// ACPI tables are RAM that nothing writes while they are read.
struct IdentityMem(());

impl PhysMem for IdentityMem {
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let end = paddr.checked_add(u64::try_from(len).ok()?)?;
        if paddr == 0 || end > IDENTITY_MAP_END {
            return None;
        }
        // SAFETY: the range is inside the identity map (checked above),
        // which is readable, and the VMM's tables there are not written
        // while the parser reads them (see `IdentityMem`); the slice lives
        // no longer than `self`, which lives only during `rust_start`'s
        // parse.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

/// Called by `boot.s` in 64-bit mode with the stack set up.
///
/// `start_info` is the physical address of PVH's `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn rust_start(start_info: u64) -> ! {
    // SAFETY: the PVH boot protocol passes the address of a valid
    // `hvm_start_info` in EBX, which boot.s forwards unchanged; the memory
    // it describes (below the image, identity-mapped) is never written.
    let (boot, rsdp) = unsafe { pvh::boot_info(start_info) };
    // `rsdp` is the RSDP the VMM's PVH start-of-day code found (QEMU's pvh
    // option ROM searches the EBDA and the BIOS area); the tables are
    // identity-mapped RAM, read here before the heap (which may cover
    // them) exists. The parser checks every address and length in them.
    let acpi = ACPI.call_once(|| acpi::read(&IdentityMem(()), rsdp));
    clock::init(acpi.as_ref().map_or(clock::Q35_PM_TIMER, |a| a.pm_timer));
    crate::entry::start(boot)
}
