//! A monotonic clock from the generic timer's virtual counter
//! (`CNTVCT_EL0`, at the rate `CNTFRQ_EL0` gives: 62.5 MHz on QEMU).

use core::arch::asm;

/// Microseconds since the counter started (it is 64 bits wide and never
/// wraps in practice).
pub fn now_us() -> u64 {
    let ticks: u64;
    let hz: u64;
    // SAFETY: reading the counter and its frequency has no side effects
    // and is allowed at EL1 (CNTKCTL_EL1 only restricts EL0). The ISB keeps
    // the read from being done early.
    unsafe {
        asm!(
            "isb",
            "mrs {ticks}, cntvct_el0",
            "mrs {hz}, cntfrq_el0",
            ticks = out(reg) ticks,
            hz = out(reg) hz,
            options(nomem, nostack, preserves_flags)
        );
    }
    if hz == 0 {
        return 0;
    }
    // In u64: whole seconds, then the remainder (< hz, so `rem * 1e6`
    // fits for any rate up to 18 THz; CNTFRQ is 1 GHz at most in
    // practice). A u128 division is a library call (~800 bytes of
    // compiler-builtins) on every clock read.
    let (secs, rem) = (ticks / hz, ticks % hz);
    let sub_us = match rem.checked_mul(1_000_000) {
        Some(r) => r / hz,
        None => rem / (hz / 1_000_000),
    };
    secs.saturating_mul(1_000_000).saturating_add(sub_us)
}
