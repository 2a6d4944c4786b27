//! What the service VM reports about itself; the request handler is
//! `svmc::server::Service`, shared with the Linux guest's
//! service and the test doubles.

use alloc::string::ToString;

use svmc::{GuestInfo, HeapStats, ServiceVm};
use svmc_comm::Protocol;

/// Name reported in [`GuestInfo::firmware`].
pub const FIRMWARE: &str = "svmc-guest";

/// The answer to `Info`: this firmware, accepting requests of up to
/// `max_body` bytes, with the heap figures of now.
pub fn info(max_body: u32) -> GuestInfo {
    let heap = svmc_runtime::heap::stats();
    GuestInfo {
        firmware: FIRMWARE.to_string(),
        firmware_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: ServiceVm::VERSION,
        arch: svmc_runtime::ARCH.to_string(),
        max_body,
        heap: Some(HeapStats {
            size: heap.size,
            used: heap.used,
            peak: heap.peak,
        }),
    }
}
