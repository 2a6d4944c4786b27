//! Leaving the VM: PSCI `SYSTEM_OFF` (QEMU exits with status 0), and on
//! failure QEMU's `pvpanic-pci` device, which with `-action
//! panic=exit-failure` makes QEMU exit with status 1.
//!
//! Why pvpanic: QEMU's `virt` machine has no `isa-debug-exit`, and the
//! other way to exit with a chosen status, semihosting `SYS_EXIT`, would
//! also give the guest semihosting's file access on the host. Without the
//! pvpanic device (another VMM, or a QEMU command line without it) the
//! guest falls back to PSCI `SYSTEM_RESET`: with `-no-reboot` QEMU then
//! exits too, but with status 0, so the failure shows only in the serial
//! log.

use core::sync::atomic::{AtomicBool, Ordering};

use smccc::psci;
use smccc::{Hvc, Smc};

use crate::parse::fdt::Conduit;

/// pvpanic event bit: the guest panicked (QEMU `include/hw/misc/pvpanic.h`,
/// `PVPANIC_PANICKED`).
const PVPANIC_PANICKED: u8 = 1 << 0;

/// How long to wait for the power-off to happen.
const POWER_OFF_WAIT_US: u64 = 1_000_000;

/// Set once the failure exit has started: a fault while it looks for the
/// pvpanic device must not look again.
static EXITING: AtomicBool = AtomicBool::new(false);

/// The pvpanic device's event register (its BAR 0, which this assigns),
/// looked for on PCI bus 0 on the first failure exit only.
fn pvpanic() -> Option<usize> {
    if EXITING.swap(true, Ordering::Relaxed) {
        return None;
    }
    let host = super::platform()?.pci.as_ref()?;
    super::virtio::find_pvpanic(host)
}

fn conduit() -> Conduit {
    super::platform()
        .and_then(|p| p.psci)
        .unwrap_or(Conduit::Hvc)
}

/// Powers the VM off through PSCI; QEMU exits with status 0. If that does
/// not work, exits with a failure status instead.
pub fn power_off() -> ! {
    let result = match conduit() {
        Conduit::Hvc => psci::system_off::<Hvc>(),
        Conduit::Smc => psci::system_off::<Smc>(),
    };
    // SYSTEM_OFF does not return on success; QEMU may take a moment.
    let start = super::now_us();
    while super::now_us() - start < POWER_OFF_WAIT_US {
        core::hint::spin_loop();
    }
    log::error!("PSCI SYSTEM_OFF did not take effect: {result:?}");
    exit_failure()
}

/// Makes QEMU exit with a failure status through pvpanic; without it,
/// resets through PSCI (QEMU with `-no-reboot` exits with status 0), and
/// if even that fails, waits for interrupts for ever.
pub fn exit_failure() -> ! {
    if let Some(pvpanic) = pvpanic() {
        // SAFETY: `pvpanic` is the event register of the pvpanic PCI
        // device, whose BAR we assigned inside the bridge's window, mapped
        // as device memory; writing the event only tells QEMU we panicked.
        unsafe { core::ptr::write_volatile(pvpanic as *mut u8, PVPANIC_PANICKED) };
    }
    let _ = match conduit() {
        Conduit::Hvc => psci::system_reset::<Hvc>(),
        Conduit::Smc => psci::system_reset::<Smc>(),
    };
    loop {
        // SAFETY: `wfi` only waits; interrupts are masked, so this stops
        // the CPU until the VMM ends the VM.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}
