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
                bytes.reverse();
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
