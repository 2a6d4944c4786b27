//! The svmc service VM's protocol: its messages, a fast codec for them and,
//! with the `server` feature, its request handler.
//!
//! svmc's service reverses byte strings, describes itself and powers off
//! when asked. It is one [`Protocol`] on the generic machinery of
//! [`svmc_comm`] (frames, the `[id, message]` envelope, the `HELLO`
//! check) and, for the handler, of `vsock-transport`'s request/response
//! loop. Another service VM writes its own protocol type the same way and
//! needs nothing from here.
//!
//! - [`ServiceVm`]: the protocol (`NAME` `"svmc"`, `VERSION` 2), with
//!   [`Request`], [`Response`], [`GuestInfo`], [`HeapStats`] and the typed
//!   failures [`ServiceError`].
//! - The fast codec: [`encode_request_parts`], [`encode_response_parts`],
//!   [`decode_request`], [`decode_response`] and, for a server that
//!   answers a `Reverse` where it lies, [`reverse_payload`] and
//!   [`reverse_response_head`]. The same bytes and values as the generic
//!   serde path (`svmc_comm::envelope`), without copying payloads through
//!   serde.
//! - `server` (feature `server`): `server::Service`, the handler the
//!   firmware and the Linux guest's service serve with.
//!
//! The ports ([`HOST_PORT`], [`SERVICE_PORT`]) are the platform's
//! defaults, re-exported from [`svmc_comm`]. The wire format, these
//! messages' CDDL included, is specified in `svmc-comm`'s `WIRE.md`.
//! `no_std` + `alloc`; the `std` feature adds `std::error::Error` impls
//! and never changes the wire.
//!
//! ```
//! use svmc::{Request, Response, ServiceVm};
//! use svmc_comm::Protocol;
//! use svmc_comm::envelope::RequestId;
//! use svmc_comm::frame::{DEFAULT_MAX_BODY, HEADER_LEN};
//!
//! // Client: a REQUEST frame, body `[id, request]` (the payload is the tail).
//! let request = Request::Reverse(b"abc".to_vec());
//! let mut wire = Vec::new();
//! let tail = ServiceVm::encode_request(RequestId(1), &request, DEFAULT_MAX_BODY, &mut wire)?;
//! wire.extend_from_slice(tail);
//! // Server: read the id and the request, answer with the same id.
//! let (id, req) = ServiceVm::decode_request(&wire[HEADER_LEN..]);
//! let Request::Reverse(mut bytes) = req? else { unreachable!() };
//! bytes.reverse();
//! let response = Response::Reverse(bytes);
//! let mut answer = Vec::new();
//! let tail = ServiceVm::encode_response(id.unwrap(), &response, DEFAULT_MAX_BODY, &mut answer)?;
//! answer.extend_from_slice(tail);
//! assert_eq!(
//!     ServiceVm::decode_response(&answer[HEADER_LEN..]),
//!     (Some(RequestId(1)), Ok(Response::Reverse(b"cba".to_vec())))
//! );
//! # Ok::<(), svmc_comm::Error>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

extern crate alloc;

#[cfg(feature = "server")]
pub mod server;

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use serde::{Deserialize, Serialize};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::FrameKind;
use svmc_comm::head::{push_head, read_head};
use svmc_comm::{Protocol, Result};

pub use svmc_comm::{HOST_PORT, SERVICE_PORT};

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

    fn encode_request<'a>(
        id: RequestId,
        request: &'a Request,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        encode_request_parts(id, request, max, out)
    }

    fn encode_response<'a>(
        id: RequestId,
        response: &'a Response,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        encode_response_parts(id, response, max, out)
    }

    fn decode_request(body: &[u8]) -> (Option<RequestId>, Result<Request>) {
        decode_request(body)
    }

    fn decode_response(body: &[u8]) -> (Option<RequestId>, Result<Response>) {
        decode_response(body)
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
    /// Keep the guest's CPU busy for this many milliseconds: long work, for
    /// tests and benchmarks of deadlines and cancellation. Stops early
    /// when the client cancels it (`svmc_comm::ext`'s `cancel`) or its deadline
    /// passes. Answered by [`Response::Spin`] with the milliseconds spent.
    #[serde(rename = "spin")]
    Spin(u32),
    /// The SHA-256 of the request's data, sent as a request stream
    /// (`svmc_comm::ext`'s `stream`: any length, in bounded memory). Sent
    /// without a stream, the data is empty. Answered by
    /// [`Response::Sha256`].
    #[serde(rename = "sha256")]
    Sha256,
    /// `len` bytes of the xorshift64 sequence from `seed` ([`prng_fill`]),
    /// as an answer stream (`svmc_comm::ext`'s `stream`: any length, in bounded
    /// memory), then [`Response::Prng`]. Without an answer stream:
    /// [`ServiceError::Unsupported`].
    #[serde(rename = "prng")]
    Prng {
        /// The generator's seed (0 counts as 1).
        seed: u64,
        /// Bytes to produce.
        len: u64,
    },
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
    /// Milliseconds spun ([`Request::Spin`]): less than asked if it was
    /// cancelled or its deadline passed.
    #[serde(rename = "spin")]
    Spin(u32),
    /// The SHA-256 digest of the request stream's data (32 bytes).
    #[serde(rename = "sha256")]
    Sha256(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end of a [`Request::Prng`] answer stream: the bytes sent.
    #[serde(rename = "prng")]
    Prng(u64),
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
    /// The guest had no memory now for the request or for its answer (its
    /// other connections, or this client's unread answers, hold it; WIRE.md
    /// R-REQ-6, R-FLOW-2). The request was not carried out: send it again
    /// later, after reading earlier answers.
    #[error("guest out of memory for a request of {requested} bytes (not carried out; try again)")]
    OutOfMemory {
        /// The request's body length in bytes (what the guest needed room
        /// for).
        requested: u64,
    },
    /// The guest does not support this request.
    #[error("request not supported by this guest")]
    Unsupported,
    /// Anything else, with an explanation.
    #[error("guest internal error: {0}")]
    Internal(String),
}

/// If `body` (a `REQUEST` body `[id, request]`) is a [`Request::Reverse`]
/// in the form this crate's encoder writes it (definite lengths, no tags;
/// heads of any width are fine), its id and where its payload is: a
/// server can reverse it where it lies and answer with
/// [`reverse_response_head`] and that range, without decoding it into a
/// [`Request`]. `None` for anything else (decode it as a [`Request`] then:
/// it may still be a `Reverse`, e.g. with a tagged id or a chunked payload,
/// and errors are reported the usual way).
///
/// ```
/// use svmc_comm::envelope::{self, RequestId};
/// use svmc_comm::frame::HEADER_LEN;
/// use svmc::{Request, Response};
///
/// let mut wire = Vec::new();
/// envelope::encode_request_into(RequestId(3), &Request::Reverse(b"abc".to_vec()), 100, &mut wire)?;
/// let body = &mut wire[HEADER_LEN..];
/// let (id, payload) = svmc::reverse_payload(body).unwrap();
/// body[payload.clone()].reverse();
/// let mut answer = Vec::new();
/// svmc::reverse_response_head(id, payload.len(), &mut answer);
/// answer.extend_from_slice(&body[payload]);
/// assert_eq!(envelope::decode::<Response>(&answer), (Some(id), Ok(Response::Reverse(b"cba".to_vec()))));
/// # Ok::<(), svmc_comm::Error>(())
/// ```
// A hint across the crate boundary, measured: the firmware images are
// smaller with it (they grew when this moved out of `svmc-comm` without
// it). Code layout moves these figures; measure again when it changes.
#[inline]
pub fn reverse_payload(body: &[u8]) -> Option<(RequestId, Range<usize>)> {
    let (id, mut pos) = id_at(body)?;
    let (5, 1) = read_head(body, &mut pos)? else {
        return None;
    };
    if !text_at(body, &mut pos, b"rev") {
        return None;
    }
    let (2, len) = read_head(body, &mut pos)? else {
        return None;
    };
    // Exactly the rest of the body: a longer length is cut short, a
    // shorter one leaves trailing bytes; both are the typed path's errors.
    (len == (body.len() - pos) as u64).then_some((id, pos..body.len()))
}

/// `[id, ` at the start of a body: the id and the offset after it.
fn id_at(body: &[u8]) -> Option<(RequestId, usize)> {
    let mut pos = 0;
    let (4, 2) = read_head(body, &mut pos)? else {
        return None;
    };
    let (0, id) = read_head(body, &mut pos)? else {
        return None;
    };
    Some((RequestId(u32::try_from(id).ok()?), pos))
}

/// Whether the definite text string `name` is at `body[*pos..]`; if so,
/// moves `pos` past it.
fn text_at(body: &[u8], pos: &mut usize, name: &[u8]) -> bool {
    let mut p = *pos;
    match read_head(body, &mut p) {
        Some((3, len)) if len == name.len() as u64 && body.get(p..p + name.len()) == Some(name) => {
            *pos = p + name.len();
            true
        }
        _ => false,
    }
}

/// Which of `names` the text string `body[pos..]` (the whole rest of the
/// body) is, if any.
fn unit_at(body: &[u8], pos: usize, names: &[&[u8]]) -> Option<usize> {
    names.iter().position(|n| {
        let mut p = pos;
        text_at(body, &mut p, n) && p == body.len()
    })
}

/// Appends to `out` the bytes of the `RESPONSE` body `[id, {"rev":
/// bytes}]` that come before a payload of `len` bytes: the body is these
/// bytes and the payload (at most [`REVERSE_OVERHEAD`] bytes of them).
/// They are what encoding [`Response::Reverse`] writes.
pub fn reverse_response_head(id: RequestId, len: usize, out: &mut Vec<u8>) {
    out.push(0x82);
    push_head(out, 0, id.0.into());
    reverse_head(len, out);
}

/// `{"rev": ` and the head of a byte string of `len` bytes.
fn reverse_head(len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\xa1\x63rev");
    push_head(out, 2, len as u64);
}

/// [`envelope::encode_request_into`] for a [`Request`], except that a
/// `Reverse` payload is not copied: it is returned, and the frame is the
/// bytes appended to `out` followed by it (a sender may write both with
/// one vectored write). Other requests are appended whole and the tail is empty. The
/// bytes and errors are [`envelope::encode_request_into`]'s.
///
/// ```
/// use svmc_comm::envelope::{self, RequestId};
/// use svmc::Request;
///
/// let request = Request::Reverse(b"abc".to_vec());
/// let mut head = Vec::new();
/// let tail = svmc::encode_request_parts(RequestId(1), &request, 100, &mut head)?;
/// let mut whole = Vec::new();
/// envelope::encode_request_into(RequestId(1), &request, 100, &mut whole)?;
/// assert_eq!([&head[..], tail].concat(), whole);
/// # Ok::<(), svmc_comm::Error>(())
/// ```
// Pays (`fast_paths` bench, against `envelope::encode_request_into`): a
// 4 KiB `Reverse` head in 18 ns against 106 ns for the whole frame.
pub fn encode_request_parts<'a>(
    id: RequestId,
    request: &'a Request,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<&'a [u8]> {
    match request {
        Request::Reverse(payload) => {
            let head = |o: &mut Vec<u8>| reverse_head(payload.len(), o);
            envelope::push_frame_head(FrameKind::Request, id, head, payload.len(), max, out)?;
            Ok(payload)
        }
        other => envelope::encode_request_into(id, other, max, out).map(|()| &[][..]),
    }
}

/// [`encode_request_parts`] for a [`Response`]: a `Reverse` payload is the
/// tail, anything else is appended whole.
pub fn encode_response_parts<'a>(
    id: RequestId,
    response: &'a Response,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<&'a [u8]> {
    match response {
        Response::Reverse(payload) => {
            let head = |o: &mut Vec<u8>| reverse_head(payload.len(), o);
            envelope::push_frame_head(FrameKind::Response, id, head, payload.len(), max, out)?;
            Ok(payload)
        }
        other => envelope::encode_response_into(id, other, max, out).map(|()| &[][..]),
    }
}

/// [`envelope::decode`]`::<Request>`, with the same result for every input,
/// faster for the requests this crate's encoder writes: a `Reverse` is
/// read without serde (its payload copied once into a `Vec` of exactly its
/// length), `info` and `off` by name. Anything else goes the generic way.
// Pays (svmc-comm's `fast_paths` bench, against `envelope::decode`,
// x86_64, a loaded 2-core host): `info` 22 ns against 108 ns, a 16-byte
// `Reverse` 37 ns against 192 ns, a 4 KiB one 149 ns against 235 ns.
pub fn decode_request(body: &[u8]) -> (Option<RequestId>, Result<Request>) {
    if let Some((id, payload)) = reverse_payload(body) {
        return (Some(id), Ok(Request::Reverse(body[payload].to_vec())));
    }
    if let Some((id, pos)) = id_at(body) {
        match unit_at(body, pos, &[b"info", b"off"]) {
            Some(0) => return (Some(id), Ok(Request::Info)),
            Some(_) => return (Some(id), Ok(Request::PowerOff)),
            None => {}
        }
    }
    envelope::decode(body)
}

/// [`decode_request`] for a [`Response`]: `Reverse` and `off` directly,
/// anything else the generic way.
// Pays (`fast_paths` bench, as above): `off` 31 ns against 206 ns.
pub fn decode_response(body: &[u8]) -> (Option<RequestId>, Result<Response>) {
    // A response body has the shape of a request body.
    if let Some((id, payload)) = reverse_payload(body) {
        return (Some(id), Ok(Response::Reverse(body[payload].to_vec())));
    }
    if let Some((id, pos)) = id_at(body)
        && unit_at(body, pos, &[b"off"]).is_some()
    {
        return (Some(id), Ok(Response::PowerOff));
    }
    envelope::decode(body)
}

/// The [`Request::Prng`] sequence: fills `buf` with the next bytes of the
/// xorshift64 (13, 7, 17) generator whose state is `state` (the bytes of
/// each new state, little-endian; a partial word at the end of `buf` is
/// cut, and the next call starts a new word). A seed of 0 is taken as 1.
///
/// ```
/// let mut state = 1;
/// let mut a = [0u8; 16];
/// svmc::prng_fill(&mut state, &mut a);
/// assert_eq!(a[..8], 0x0000_0000_4082_2041u64.to_le_bytes());
/// ```
pub fn prng_fill(state: &mut u64, buf: &mut [u8]) {
    if *state == 0 {
        *state = 1;
    }
    for w in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use svmc_comm::frame::HEADER_LEN;

    use super::*;

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
