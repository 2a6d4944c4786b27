//! The request handler: what the service VM does.

use alloc::string::ToString;

use comm::Protocol;
use comm::service::{GuestInfo, Request, Response, ServiceError, ServiceVm};
use vsock_transport::rpc::{Handler, Then};

use crate::cmdline::Mode;
use crate::{arch, heap};

/// Name reported in [`GuestInfo::firmware`].
pub const FIRMWARE: &str = "svmc-guest";

/// Answers [`ServiceVm`] requests.
pub struct Service {
    max_body: u32,
    power_off: bool,
    mode: Mode,
}

impl Service {
    /// A handler that reports `max_body` as the largest request it
    /// accepts; in [`Mode::Echo`] connections are echoed instead.
    pub fn new(max_body: u32, mode: Mode) -> Self {
        Self {
            max_body,
            power_off: false,
            mode,
        }
    }

    /// What connections get.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether a `PowerOff` request was answered.
    pub fn power_off_requested(&self) -> bool {
        self.power_off
    }

    fn info(&self) -> GuestInfo {
        GuestInfo {
            firmware: FIRMWARE.to_string(),
            firmware_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: ServiceVm::VERSION,
            arch: arch::NAME.to_string(),
            max_body: self.max_body,
            heap: Some(heap::stats()),
        }
    }
}

impl Handler<ServiceVm> for Service {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut bytes) => {
                // In place: no allocation, so no out-of-memory case here;
                // the request's buffer becomes the response's.
                reverse(&mut bytes);
                (Response::Reverse(bytes), Then::Continue)
            }
            Request::Info => (Response::Info(self.info()), Then::Continue),
            Request::PowerOff => {
                self.power_off = true;
                (Response::PowerOff, Then::Stop)
            }
            _ => (Response::Err(ServiceError::Unsupported), Then::Continue),
        }
    }
}

/// Reverses `bytes` in place, eight bytes from each end per step (a
/// byte swap of two words). Same result as `<[u8]>::reverse`, which at the
/// guest's `opt-level = "s"` swaps one byte pair per step: under TCG the
/// 8 MiB `Reverse` spent more time in that loop than on the wire.
fn reverse(bytes: &mut [u8]) {
    let (mut i, mut j) = (0, bytes.len());
    while j - i >= 16 {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[i..i + 8]);
        b.copy_from_slice(&bytes[j - 8..j]);
        bytes[i..i + 8].copy_from_slice(&u64::from_le_bytes(b).swap_bytes().to_le_bytes());
        bytes[j - 8..j].copy_from_slice(&u64::from_le_bytes(a).swap_bytes().to_le_bytes());
        i += 8;
        j -= 8;
    }
    bytes[i..j].reverse();
}
