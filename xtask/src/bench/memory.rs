//! The smallest guest RAM with which an 8 MiB reverse works.

use svmc_host::{Attach, Session, SessionConfig, VmConfig};
use vsock_transport::Timeouts;

use super::{MEM_PAYLOAD, STEP, payload};

/// Range of the memory search, MiB.
const MEM_RANGE: (u32, u32) = (8, 128);

fn open(cfg: &VmConfig) -> svmc_host::Result<Session> {
    let mut s = SessionConfig::new(Attach::Launch(Box::new(cfg.clone())));
    s.timeouts = Timeouts::uniform(STEP);
    s.boot_timeout = STEP;
    Session::open(&s)
}

/// Does an 8 MiB reverse work with `mib` of guest RAM?
fn works_with(base: &VmConfig, mib: u32) -> bool {
    let mut cfg = base.clone();
    cfg.memory_mib = mib;
    let Ok(mut s) = open(&cfg) else {
        return false;
    };
    let data = payload(MEM_PAYLOAD);
    let mut expect = data.clone();
    expect.reverse();
    let ok = s.reverse(data).is_ok_and(|r| r == expect);
    eprintln!(
        "bench:   -m {mib}: {}",
        if ok { "works" } else { "does not work" }
    );
    ok
}

/// Smallest guest RAM (MiB, in [`MEM_RANGE`]) for an 8 MiB reverse, by
/// binary search (assumes that more memory never hurts); `None` if even
/// the top of the range does not do.
pub fn min_memory(base: &VmConfig) -> Option<u32> {
    let (mut lo, mut hi) = MEM_RANGE;
    if !works_with(base, hi) {
        return None;
    }
    if works_with(base, lo) {
        return Some(lo);
    }
    // Invariant: lo fails, hi works.
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if works_with(base, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}
