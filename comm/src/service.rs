//! The messages of this project's service VM: one instance of [`Protocol`].

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use serde::{Deserialize, Serialize};

use crate::envelope::{self, RequestId};
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

/// [`Request::Reverse`] borrowing its payload from the body.
#[derive(Deserialize)]
enum ReverseRef<'a> {
    #[serde(rename = "rev")]
    Reverse(&'a [u8]),
}

/// If `body` (a `REQUEST` body `[id, request]`) is a well-formed
/// [`Request::Reverse`] whose payload lies in one piece in `body` (a
/// definite-length byte string, which is what every encoder here writes),
/// its id and where its payload is: a server can reverse it where it lies
/// and answer with [`reverse_response_head`] and that range, without
/// decoding it into a [`Request`]. `None` for anything else (decode it as a
/// [`Request`] then: errors are reported the usual way).
///
/// ```
/// use svmc_comm::envelope::{self, RequestId};
/// use svmc_comm::frame::HEADER_LEN;
/// use svmc_comm::service::{self, Request, Response};
///
/// let mut wire = Vec::new();
/// envelope::encode_request_into(RequestId(3), &Request::Reverse(b"abc".to_vec()), 100, &mut wire)?;
/// let body = &mut wire[HEADER_LEN..];
/// let (id, payload) = service::reverse_payload(body).unwrap();
/// body[payload.clone()].reverse();
/// let mut answer = Vec::new();
/// service::reverse_response_head(id, payload.len(), &mut answer);
/// answer.extend_from_slice(&body[payload]);
/// assert_eq!(envelope::decode::<Response>(&answer), (Some(id), Ok(Response::Reverse(b"cba".to_vec()))));
/// # Ok::<(), svmc_comm::Error>(())
/// ```
pub fn reverse_payload(body: &[u8]) -> Option<(RequestId, Range<usize>)> {
    // A cheap look first: anything but `[id, {"rev": ...}]` goes the typed
    // way without a failed decode (and its error message) here.
    if !body.windows(4).take(8).any(|w| w == b"\x63rev") {
        return None;
    }
    let (id, request) = envelope::decode::<ReverseRef<'_>>(body);
    let (Some(id), Ok(ReverseRef::Reverse(payload))) = (id, request) else {
        return None;
    };
    let start = (payload.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    Some((id, start..start + payload.len()))
}

/// Appends to `out` the bytes of the `RESPONSE` body `[id, {"rev":
/// bytes}]` that come before a payload of `len` bytes: the body is these
/// bytes and the payload (at most [`REVERSE_OVERHEAD`] bytes of them).
/// They are what encoding [`Response::Reverse`] writes.
pub fn reverse_response_head(id: RequestId, len: usize, out: &mut Vec<u8>) {
    use ciborium_ll::{Encoder, Header};
    let mut enc = Encoder::from(out);
    // Writing to a `Vec` cannot fail.
    let _ = enc.push(Header::Array(Some(2)));
    let _ = enc.push(Header::Positive(id.0.into()));
    let _ = enc.push(Header::Map(Some(1)));
    let _ = enc.text("rev", None);
    let _ = enc.push(Header::Bytes(Some(len)));
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::frame::HEADER_LEN;

    #[test]
    fn the_reverse_head_is_what_the_encoder_writes() {
        for (id, len) in [
            (0u32, 0usize),
            (23, 23),
            (24, 24),
            (u32::MAX, 70_000),
            (7, 1 << 20),
        ] {
            let payload = vec![5u8; len];
            let mut want = Vec::new();
            envelope::encode_response_into(
                RequestId(id),
                &Response::Reverse(payload.clone()),
                u32::MAX,
                &mut want,
            )
            .unwrap();
            let mut got = Vec::new();
            reverse_response_head(RequestId(id), len, &mut got);
            assert!(got.len() <= REVERSE_OVERHEAD as usize);
            got.extend_from_slice(&payload);
            assert_eq!(got, want[HEADER_LEN..], "id {id} len {len}");
        }
    }

    #[test]
    fn only_a_reverse_in_one_piece_is_found() {
        let mut wire = Vec::new();
        envelope::encode_request_into(
            RequestId(9),
            &Request::Reverse(b"hello".to_vec()),
            100,
            &mut wire,
        )
        .unwrap();
        let body = &wire[HEADER_LEN..];
        let (id, range) = reverse_payload(body).unwrap();
        assert_eq!((id, &body[range]), (RequestId(9), &b"hello"[..]));
        wire.clear();
        envelope::encode_request_into(RequestId(9), &Request::Info, 100, &mut wire).unwrap();
        assert_eq!(reverse_payload(&wire[HEADER_LEN..]), None);
        // Indefinite-length payload, trailing bytes, no id: the typed way.
        assert_eq!(reverse_payload(b"\x82\x01\xa1\x63rev\x5f\x41a\xff"), None);
        assert_eq!(reverse_payload(b"\x82\x01\xa1\x63rev\x41a\x00"), None);
        assert_eq!(reverse_payload(b"\x82\x20\xa1\x63rev\x41a"), None);
        assert_eq!(
            reverse_payload(b"\x82\x01\xa1\x63rev\x41a").map(|(i, r)| (i.0, r)),
            Some((1, 8..9))
        );
    }
}
