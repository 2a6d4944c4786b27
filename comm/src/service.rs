//! The messages of this project's service VM: one instance of [`Protocol`].

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::handshake::Protocol;

/// vsock port on the host (CID 2) that the guest connects to at boot. Its
/// connection is the host's readiness signal.
pub const HOST_PORT: u32 = 7000;

/// vsock port on which the guest listens for host-initiated connections.
pub const SERVICE_PORT: u32 = 7001;

/// Body bytes a `Reverse` request or response adds to its payload, at
/// most: the `[id, message]` array header (1) and id (1 to 5), the map
/// header (1), the variant name (4) and the byte-string header (1 to 5).
pub const REVERSE_OVERHEAD: u32 = 16;

/// The service VM protocol.
#[derive(Debug, Clone, Copy)]
pub struct ServiceVm;

impl Protocol for ServiceVm {
    const NAME: &'static str = "svmc";
    const VERSION: u32 = 2;
    type Request = Request;
    type Response = Response;

    fn response_too_large(len: u64, max: u32) -> Option<Response> {
        Some(Response::Err(ServiceError::PayloadTooLarge {
            len,
            max: max.into(),
        }))
    }

    fn out_of_memory(requested: u64) -> Option<Response> {
        Some(Response::Err(ServiceError::OutOfMemory { requested }))
    }
}

/// A request to the service VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Reverse these bytes. Answered by [`Response::Reverse`].
    #[serde(rename = "rev")]
    Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Describe the guest. Answered by [`Response::Info`].
    #[serde(rename = "info")]
    Info,
    /// Power the VM off after answering with [`Response::PowerOff`].
    #[serde(rename = "off")]
    PowerOff,
}

/// A response from the service VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The reversed bytes.
    #[serde(rename = "rev")]
    Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
    /// What the guest is.
    #[serde(rename = "info")]
    Info(GuestInfo),
    /// The guest powers off after sending this.
    #[serde(rename = "off")]
    PowerOff,
    /// The request was understood but could not be processed.
    #[serde(rename = "err")]
    Err(ServiceError),
}

/// What the guest reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Name of the firmware or service implementation, e.g. `svmc-guest`.
    pub firmware: String,
    /// Its version (semver).
    pub firmware_version: String,
    /// [`Protocol::VERSION`] it speaks.
    pub protocol_version: u32,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Largest request body it accepts.
    pub max_body: u32,
    /// Heap statistics, if the guest tracks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<HeapStats>,
}

/// Guest heap figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapStats {
    /// Size of the heap.
    pub size: u64,
    /// Bytes allocated now.
    pub used: u64,
    /// Most bytes ever allocated at once.
    pub peak: u64,
}

/// Why the guest could not process a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServiceError {
    /// The answer (or the request) is larger than its receiver accepts.
    /// As a `RESPONSE` to a request whose answer would not fit the client's
    /// `max_body`: `len` is the body length the `RESPONSE` would have had,
    /// `max` the client's `max_body` (both body sizes in bytes, `WIRE.md`
    /// R-REQ-7).
    #[error("message body of {len} bytes is larger than the limit of {max}")]
    PayloadTooLarge {
        /// Body length in bytes.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
    /// The guest could not allocate memory for the request.
    #[error("guest out of memory allocating {requested} bytes")]
    OutOfMemory {
        /// Bytes requested.
        requested: u64,
    },
    /// The guest does not support this request.
    #[error("request not supported by this guest")]
    Unsupported,
    /// Anything else, with an explanation.
    #[error("guest internal error: {0}")]
    Internal(String),
}
