//! aarch64: QEMU `virt` with `-kernel` (an ELF image entered at EL1 with
//! the MMU off), devices from the device tree, PL011 console, PSCI
//! power-off, pvpanic for failure exits, virtio socket device on
//! virtio-mmio (or PCI).

use core::arch::{asm, global_asm};
use core::fmt::Write;

mod clock;
pub mod console;
mod devicetree;
mod memcpy;
mod mmu;
mod power;
mod virtio;

pub use clock::now_us;
pub use mmu::IDENTITY_MAP_END;
pub use power::{exit_failure, power_off};
pub use virtio::{DiscoveryError, VirtioTransport, find_vsock};

use crate::arch::BootInfo;
use crate::layout;
use crate::parse::fdt::Platform;

/// Architecture name as Rust spells it.
pub const NAME: &str = "aarch64";

/// Size of the stack the exception vectors switch to.
const EXCEPTION_STACK_SIZE: usize = 16 * 1024;

/// Heap size used when the device tree has no RAM region around the image.
const FALLBACK_HEAP_SIZE: usize = 16 << 20;

global_asm!(
    include_str!("boot.s"),
    MAIR = const mmu::MAIR_EL1,
    TCR = const mmu::TCR_EL1,
    SCTLR_SET = const mmu::SCTLR_SET,
    SCTLR_CLR = const mmu::SCTLR_CLEAR,
    DEVICE_BLOCK = const mmu::DEVICE_BLOCK,
    NORMAL_BLOCK = const mmu::NORMAL_BLOCK,
    RAM_FIRST = const mmu::RAM_FIRST_BLOCK,
    RAM_SPAN = const mmu::RAM_LAST_BLOCK - mmu::RAM_FIRST_BLOCK,
    STACK_SIZE = const layout::STACK_SIZE,
    EXCEPTION_STACK_SIZE = const EXCEPTION_STACK_SIZE,
);

static PLATFORM: spin::Once<Platform<'static>> = spin::Once::new();

/// The platform from the device tree, once `rust_start` has read it.
fn platform() -> Option<&'static Platform<'static>> {
    PLATFORM.get()
}

/// Called by `boot.s` with the MMU and caches on and the stack set up.
///
/// `x0` is what the loader passed in x0: 0 for an ELF image on QEMU, in
/// which case the device tree is at the base of RAM.
#[unsafe(no_mangle)]
extern "C" fn rust_start(x0: usize) -> ! {
    let dtb = if x0 != 0 { x0 } else { devicetree::DTB_ADDRESS };
    // SAFETY: QEMU put the device tree at `dtb`, RAM below the image that
    // nothing writes (the heap starts above the image); `parse` checks the
    // magic and that the blob ends below the image.
    let platform = match unsafe { devicetree::parse(dtb) } {
        Ok(p) => PLATFORM.call_once(|| p),
        Err(e) => panic!("device tree at {dtb:#x}: {e}"),
    };
    let blob = dtb..dtb + platform.blob_len;
    let image = layout::image_range();
    let boot = match &platform.ram {
        Some(ram) => BootInfo {
            cmdline: platform.bootargs,
            heap: image.end..ram.end.min(IDENTITY_MAP_END as usize),
            heap_from_memmap: true,
            heap_low: below_image(ram, &blob, &image),
        },
        None => BootInfo {
            cmdline: platform.bootargs,
            heap: image.end..image.end + FALLBACK_HEAP_SIZE,
            heap_from_memmap: false,
            heap_low: 0..0,
        },
    };
    crate::entry::start(boot)
}

/// The RAM between the end of the device tree (`blob`, kept: the command
/// line points into it) and the image, page-aligned, when the device tree
/// is in the RAM region below the image (QEMU: 1 MiB of blob at the base
/// of RAM, the image at +2 MiB, so 1 MiB that nothing else uses); empty
/// otherwise.
fn below_image(
    ram: &core::ops::Range<usize>,
    blob: &core::ops::Range<usize>,
    image: &core::ops::Range<usize>,
) -> core::ops::Range<usize> {
    const PAGE: usize = 4096;
    let start = blob.end.next_multiple_of(PAGE);
    if ram.start <= blob.start && start < image.start && image.start <= ram.end {
        start..image.start
    } else {
        0..0
    }
}

/// Names of the vector table's entries, by index (see `boot.s`).
const VECTOR_NAMES: [&str; 16] = [
    "synchronous (current EL, SP_EL0)",
    "IRQ (current EL, SP_EL0)",
    "FIQ (current EL, SP_EL0)",
    "SError (current EL, SP_EL0)",
    "synchronous",
    "IRQ",
    "FIQ",
    "SError",
    "synchronous (lower EL, AArch64)",
    "IRQ (lower EL, AArch64)",
    "FIQ (lower EL, AArch64)",
    "SError (lower EL, AArch64)",
    "synchronous (lower EL, AArch32)",
    "IRQ (lower EL, AArch32)",
    "FIQ (lower EL, AArch32)",
    "SError (lower EL, AArch32)",
];

/// Called by every entry of the exception vectors (on the exception
/// stack): prints what happened and exits with a failure status.
#[unsafe(no_mangle)]
extern "C" fn exception_handler(index: usize) -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reading the syndrome, link and fault-address registers at
    // EL1 has no side effects.
    unsafe {
        asm!(
            "mrs {esr}, esr_el1",
            "mrs {elr}, elr_el1",
            "mrs {far}, far_el1",
            esr = out(reg) esr,
            elr = out(reg) elr,
            far = out(reg) far,
            options(nomem, nostack, preserves_flags)
        );
    }
    let mut console = console::panic_writer();
    let _ = writeln!(
        console,
        "[EXCEPTION] {}: ESR_EL1 {esr:#x} (class {:#x}), ELR_EL1 {elr:#x}, FAR_EL1 {far:#x}",
        VECTOR_NAMES.get(index).copied().unwrap_or("unknown"),
        esr >> 26
    );
    exit_failure()
}
