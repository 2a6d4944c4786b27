//! A monotonic clock from the generic timer's virtual counter
//! (`CNTVCT_EL0`, at the rate `CNTFRQ_EL0` gives: 62.5 MHz on QEMU).

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Microseconds per counter tick times 2^32, from `CNTFRQ_EL0` on the first
/// read (0 before). A multiplication per read, not a division: the loops
/// poll the clock, and a 128-bit division is a call to `__udivti3` (5% of
/// the raw reverse's time on aarch64 in `cargo xtask profile`).
static US_PER_TICK_2_32: AtomicU64 = AtomicU64::new(0);

/// Microseconds since the counter started (it is 64 bits wide and never
/// wraps in practice).
pub fn now_us() -> u64 {
    let ticks: u64;
    // SAFETY: reading the counter has no side effects and is allowed at
    // EL1 (CNTKCTL_EL1 only restricts EL0). The ISB keeps the read from
    // being done early.
    unsafe {
        asm!(
            "isb",
            "mrs {ticks}, cntvct_el0",
            ticks = out(reg) ticks,
            options(nomem, nostack, preserves_flags)
        );
    }
    let mut scale = US_PER_TICK_2_32.load(Ordering::Relaxed);
    if scale == 0 {
        scale = scale_from_frequency();
        if scale == 0 {
            return 0;
        }
        US_PER_TICK_2_32.store(scale, Ordering::Relaxed);
    }
    ((u128::from(ticks) * u128::from(scale)) >> 32) as u64
}

/// 10^6 / `CNTFRQ_EL0`, times 2^32 (0 if the frequency is 0).
fn scale_from_frequency() -> u64 {
    let hz: u64;
    // SAFETY: reading the counter's frequency has no side effects and is
    // allowed at EL1.
    unsafe {
        asm!(
            "mrs {hz}, cntfrq_el0",
            hz = out(reg) hz,
            options(nomem, nostack, preserves_flags)
        );
    }
    // 10^6 << 32 is about 4.3e15, so the quotient fits in u64 for any
    // rate, and a u64 division needs no `__udivti3`.
    (1_000_000u64 << 32).checked_div(hz).unwrap_or(0)
}
