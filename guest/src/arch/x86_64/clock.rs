//! A monotonic clock from the ACPI PM timer: 3.579545 MHz, 24 bits wide
//! (QEMU's ICH9 and PIIX4), at PM base + 8 (0x608 on q35 as SeaBIOS sets it
//! up, see `power.rs`). Free of calibration, unlike the TSC.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// `PM_TMR` on q35.
const PM_TIMER: u16 = 0x608;

/// Ticks per second (ACPI specification, section 4.8.3.3).
const PM_TIMER_HZ: u64 = 3_579_545;

/// The counter's width mask.
const MASK: u32 = 0x00ff_ffff;

static LAST: AtomicU32 = AtomicU32::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the first call. Must be called at least every 4.6 s
/// (one wrap of the 24-bit counter) to stay monotonic, which every wait in
/// the firmware does while it polls.
pub fn now_us() -> u64 {
    // SAFETY: reading the PM timer has no side effects.
    let raw = unsafe { Port::<u32>::new(PM_TIMER).read() } & MASK;
    let last = LAST.swap(raw, Ordering::Relaxed);
    let ticks = if TICKS.load(Ordering::Relaxed) == 0 && last == 0 {
        // First call: start from zero.
        1
    } else {
        u64::from(raw.wrapping_sub(last) & MASK)
    };
    let total = TICKS.fetch_add(ticks, Ordering::Relaxed) + ticks;
    total * 1_000_000 / PM_TIMER_HZ
}
