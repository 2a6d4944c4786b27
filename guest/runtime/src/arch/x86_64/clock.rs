//! A monotonic clock, free of calibration: the ACPI PM timer where the
//! machine has one (q35: 3.579545 MHz, 24 bits, at the FADT's
//! `PM_TMR_BLK`, 0x608), else channel 0 of the 8254 PIT (1.193182 MHz,
//! 16 bits: QEMU `microvm` is hardware-reduced ACPI, without a PM timer or
//! HPET, but has the PIT).
//!
//! Both counters are read on every call and the ticks since the previous
//! call are added up, so the clock must be read at least once per wrap of
//! the counter (4.6 s for the PM timer, 54.9 ms for the PIT), which every
//! wait in the firmware does while it polls. Time between two reads longer
//! than a wrap is undercounted: a timeout can only last longer, never
//! shorter. The PIT is only read for the first few milliseconds: it
//! calibrates the TSC, which then takes over (see [`now_us`]).

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// `PM_TMR` on q35 (used when there are no ACPI tables to say).
pub const Q35_PM_TIMER: u16 = 0x608;

/// PM timer ticks per second (ACPI specification, section 4.8.3.3).
const PM_TIMER_HZ: u64 = 3_579_545;

/// The PM timer's width mask.
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// PIT input clock (Intel 8254 data sheet; the PC's 14.31818 MHz / 12).
const PIT_HZ: u64 = 1_193_182;

/// PIT channel 0 data port and the mode/command port.
const PIT_CHANNEL0: u16 = 0x40;
const PIT_COMMAND: u16 = 0x43;

/// PIT command: channel 0 (bits 7:6 = 00), lobyte/hibyte access (5:4 =
/// 11), mode 2 rate generator (3:1 = 010: counts down by one per tick and
/// reloads), binary (0 = 0).
const PIT_MODE2: u8 = 0x34;

/// PIT command: latch channel 0's count (bits 5:4 = 00).
const PIT_LATCH0: u8 = 0x00;

/// The PM timer port, or 0 to use the PIT.
static PM_TIMER: AtomicU16 = AtomicU16::new(0);

static LAST: AtomicU32 = AtomicU32::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Chooses the counter: the PM timer at `pm_timer`, or the PIT if 0
/// (programmed here to count through all 65536 values). Called once,
/// before the first [`now_us`].
pub fn init(pm_timer: u16) {
    PM_TIMER.store(pm_timer, Ordering::Relaxed);
    if pm_timer == 0 {
        // Reprogramming channel 0 only changes when IRQ 0 would fire, and
        // interrupts are off. A reload value of 0 means 65536.
        pit_write(PIT_COMMAND, PIT_MODE2);
        pit_write(PIT_CHANNEL0, 0);
        pit_write(PIT_CHANNEL0, 0);
    }
    TSC_AT_INIT.store(tsc(), Ordering::Relaxed);
    LAST.store(read_counter(), Ordering::Relaxed);
}

/// The counter's current value, counting up.
fn read_counter() -> u32 {
    match PM_TIMER.load(Ordering::Relaxed) {
        0 => {
            // Latching and reading PIT channel 0 has no other effect.
            pit_write(PIT_COMMAND, PIT_LATCH0);
            let lo = pit_read(PIT_CHANNEL0);
            let hi = pit_read(PIT_CHANNEL0);
            // The PIT counts down; invert so that the value goes up.
            u32::from(!u16::from_le_bytes([lo, hi]))
        }
        // SAFETY: reading the PM timer has no side effects.
        port => unsafe { Port::<u32>::new(port).read() & PM_TIMER_MASK },
    }
}

/// Writes a PIT port (0x40..=0x43).
fn pit_write(port: u16, value: u8) {
    debug_assert!((PIT_CHANNEL0..=PIT_COMMAND).contains(&port));
    // SAFETY: the 8254 PIT's ports: writes program or latch its counters,
    // which nothing else in the firmware uses (interrupts are off).
    unsafe { Port::<u8>::new(port).write(value) };
}

/// Reads a PIT port (0x40..=0x42).
fn pit_read(port: u16) -> u8 {
    debug_assert!((PIT_CHANNEL0..PIT_COMMAND).contains(&port));
    // SAFETY: reading a PIT counter port returns (part of) its count and
    // has no other effect.
    unsafe { Port::<u8>::new(port).read() }
}

/// How long the PIT is read before the clock switches to the TSC.
const CALIBRATION_US: u64 = 5_000;

/// Microseconds per TSC tick times 2^32 once calibrated (0 before), the
/// TSC and the clock's microseconds at the switch. A multiplication, not a
/// division: the loops poll the clock, and a 128-bit division is a call
/// to `__udivti3` (half the clock's cost in `cargo xtask profile`).
static US_PER_TSC_2_32: AtomicU64 = AtomicU64::new(0);
static TSC_AT_SWITCH: AtomicU64 = AtomicU64::new(0);
static US_AT_SWITCH: AtomicU64 = AtomicU64::new(0);
/// The TSC at [`init`].
static TSC_AT_INIT: AtomicU64 = AtomicU64::new(0);

fn tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear:
    // allowed at any privilege level, and this runs at ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Microseconds since `init`.
///
/// Without a PM timer, reading the PIT is three port accesses, each an
/// exit to the VMM that takes its big lock; polled in every wait, that
/// made the 16-byte round trip on `microvm` 3x slower than the echo.
/// So the PIT is read only for the first `CALIBRATION_US`, long enough
/// to measure the TSC's rate to about 0.2 %, and the TSC (read without an
/// exit under TCG and KVM) from then on.
pub fn now_us() -> u64 {
    if PM_TIMER.load(Ordering::Relaxed) == 0 {
        let scale = US_PER_TSC_2_32.load(Ordering::Relaxed);
        if scale != 0 {
            let ticks = tsc().wrapping_sub(TSC_AT_SWITCH.load(Ordering::Relaxed));
            let us = ((u128::from(ticks) * u128::from(scale)) >> 32) as u64;
            return US_AT_SWITCH.load(Ordering::Relaxed) + us;
        }
        let now = tsc();
        let us = counter_us();
        if us >= CALIBRATION_US {
            let ticks = now.wrapping_sub(TSC_AT_INIT.load(Ordering::Relaxed));
            // us / ticks, times 2^32 (0 if the TSC did not move, which
            // keeps the counter; capped for a TSC slower than 1 MHz).
            let scale = (u128::from(us) << 32)
                .checked_div(u128::from(ticks))
                .map_or(0, |s| u64::try_from(s).unwrap_or(u64::MAX));
            if scale != 0 {
                TSC_AT_SWITCH.store(now, Ordering::Relaxed);
                US_AT_SWITCH.store(us, Ordering::Relaxed);
                US_PER_TSC_2_32.store(scale, Ordering::Relaxed);
            }
        }
        return us;
    }
    counter_us()
}

/// Microseconds since [`init`] by the counter.
fn counter_us() -> u64 {
    let (mask, hz) = if PM_TIMER.load(Ordering::Relaxed) == 0 {
        (0xffff, PIT_HZ)
    } else {
        (PM_TIMER_MASK, PM_TIMER_HZ)
    };
    let raw = read_counter();
    let last = LAST.swap(raw, Ordering::Relaxed);
    let ticks = u64::from(raw.wrapping_sub(last) & mask);
    let total = TICKS.fetch_add(ticks, Ordering::Relaxed) + ticks;
    total * 1_000_000 / hz
}
