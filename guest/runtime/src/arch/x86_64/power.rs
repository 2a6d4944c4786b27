//! Leaving the VM: ACPI power-off (exit status 0) and QEMU's
//! `isa-debug-exit` device (failure status).
//!
//! Power-off is the ACPI soft-off (S5) request the machine has:
//!
//! - a hardware-reduced machine (QEMU `microvm`): the FADT's sleep control
//!   register, which QEMU's Generic Event Device implements at
//!   0xFEA0_0200;
//! - a PC (q35): the PM1a control block (the FADT's `PM1a_CNT_BLK`, 0x604
//!   as SeaBIOS programs the ICH9 PM base).

use x86_64::instructions::port::Port;

/// PM1a control block on q35 when there are no ACPI tables: the ICH9 LPC
/// power-management base that SeaBIOS programs (0x600, QEMU's
/// `ICH9_PMIO_BASE` default) + 4 (`ICH9_PMIO_PM1_CNT`).
const Q35_PM1A_CNT: u16 = 0x604;

/// PM1 control value: SLP_EN (bit 13) with SLP_TYP 0, which QEMU's q35 DSDT
/// gives for S5 (`_S5 = Package { 0, 0, 0, 0 }`): soft-off.
const PM1_SLP_EN_S5: u16 = 1 << 13;

/// Sleep control register value (ACPI 6.4, 4.8.3.7): SLP_EN (bit 5) with
/// SLP_TYPx (bits 4:2) = 5, the S5 type of QEMU's GED
/// (`ACPI_GED_SLP_TYP_S5` in `include/hw/acpi/generic_event_device.h`,
/// and the `_S5` package of its DSDT).
const SLEEP_CONTROL_S5: u8 = (1 << 5) | (5 << 2);

/// `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: writing v makes QEMU
/// exit with status (v << 1) | 1.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How long to wait for the power-off to happen.
const POWER_OFF_WAIT_US: u64 = 1_000_000;

/// Value written on failure: exit status 3.
const FAILURE_VALUE: u32 = 1;

/// Powers the VM off through ACPI; QEMU exits with status 0. If that does
/// not work, exits with a failure status instead.
pub fn power_off() -> ! {
    match super::acpi() {
        Some(a) if a.hw_reduced && a.sleep_control != 0 => {
            // SAFETY: the FADT's sleep control register, in the identity
            // map; writing SLP_EN|S5 only requests the power-off.
            unsafe { core::ptr::write_volatile(a.sleep_control as *mut u8, SLEEP_CONTROL_S5) };
        }
        acpi => {
            let port = acpi
                .map(|a| a.pm1a_cnt)
                .filter(|&p| p != 0)
                .unwrap_or(Q35_PM1A_CNT);
            // SAFETY: PM1a_CNT is the chipset's ACPI PM1 control register;
            // writing SLP_EN|S5 only requests the power-off.
            unsafe { Port::<u16>::new(port).write(PM1_SLP_EN_S5) };
        }
    }
    // QEMU acts on the request from its main loop, not at once: give it
    // time before calling it a failure (and exiting with another status).
    let start = super::now_us();
    while super::now_us() - start < POWER_OFF_WAIT_US {
        core::hint::spin_loop();
    }
    log::error!("ACPI power-off did not take effect");
    exit_failure()
}

/// Makes QEMU exit with status 3 through `isa-debug-exit`. Without that
/// device there is nothing else to report failure with: halts.
pub fn exit_failure() -> ! {
    // SAFETY: writing to the isa-debug-exit port only asks QEMU to exit;
    // without the device the write is ignored.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(FAILURE_VALUE) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
