//! Request ids: the `[id, message]` envelope of `REQUEST` and `RESPONSE`
//! bodies (protocol version 2, `WIRE.md` §3).
//!
//! A client gives every request a [`RequestId`]; the server's `RESPONSE`
//! (and a non-fatal `ERROR` about that request) carries the same id, so an
//! answer can never be taken for the answer to another request. The
//! envelope belongs to the frame layer, not to a [`Protocol`](crate::Protocol): every
//! protocol carried by these frames gets ids.
//!
//! Encoding writes the envelope straight into the caller's buffer (no
//! intermediate allocation). Decoding borrows from the body like
//! [`crate::frame::decode_body_borrowed`] and returns the id even when the
//! message inside is bad, so a server can name the request in its `ERROR`:
//!
//! ```
//! use svmc_comm::envelope::{self, RequestId};
//! use svmc_comm::frame::{DEFAULT_MAX_BODY, HEADER_LEN};
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! enum Request {
//!     #[serde(rename = "info")]
//!     Info,
//! }
//!
//! let mut wire = Vec::new();
//! envelope::encode_request_into(RequestId(7), &Request::Info, DEFAULT_MAX_BODY, &mut wire)?;
//! assert_eq!(wire, [0x02, 0, 0, 0, 7, 0x82, 0x07, 0x64, b'i', b'n', b'f', b'o']);
//! let (id, request) = envelope::decode::<Request>(&wire[HEADER_LEN..]);
//! assert_eq!((id, request?), (Some(RequestId(7)), Request::Info));
//!
//! // `[7, "sum"]`: the id is read although the request is unknown.
//! let (id, request) = envelope::decode::<Request>(b"\x82\x07\x63sum");
//! assert_eq!(id, Some(RequestId(7)));
//! assert!(matches!(request, Err(svmc_comm::Error::UnknownVariant(_))));
//! # Ok::<(), svmc_comm::Error>(())
//! ```
//!
//! Nesting: the envelope array is the outermost item of the body and
//! counts as the first of the [`crate::frame::RECURSION_LIMIT`] levels.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::de::Deserializer;
pub use crate::defs::RequestId;
// The building blocks of a protocol's direct codec, at their old home.
use crate::error::{Error, Result};
use crate::frame::{self, FrameKind};
pub use crate::head::{push_head, read_head};

/// Appends a `REQUEST` frame with body `[id, request]` to `out`.
///
/// Fails with [`Error::TooLargeToSend`] if the body would exceed `max` (the
/// server's `max_body`), leaving `out` unchanged.
pub fn encode_request_into<T: Serialize + ?Sized>(
    id: RequestId,
    request: &T,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    frame::encode_into(FrameKind::Request, &(id, request), max, out)
}

/// Appends a `RESPONSE` frame with body `[id, response]` to `out`.
///
/// Fails with [`Error::TooLargeToSend`] if the body would exceed `max` (the
/// client's `max_body`), leaving `out` unchanged; [`Protocol`](crate::Protocol) implementors
/// say what to answer instead (`Protocol::response_too_large`).
pub fn encode_response_into<T: Serialize + ?Sized>(
    id: RequestId,
    response: &T,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    frame::encode_into(FrameKind::Response, &(id, response), max, out)
}

/// Length of the body `[id, msg]` would have (encoded into a scratch `Vec`
/// to find out).
pub fn body_len<T: Serialize + ?Sized>(id: RequestId, msg: &T) -> Result<usize> {
    frame::encoded_len(&(id, msg))
}

/// Decodes a `REQUEST` or `RESPONSE` body `[id, message]`.
///
/// The id is `Some` whenever the body is an array whose first item is a
/// `uint .size 4`, even if the message after it is bad (then the result is
/// the error). It is `None` when no id could be read, and then the result
/// is always an error. Strings are borrowed from `body` where `T` allows it.
#[inline(never)]
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> (Option<RequestId>, Result<T>) {
    let mut de = Deserializer::new(body);
    let (id, msg) = de.envelope::<T>();
    let msg = match msg {
        Err(e) => Err(frame::classify(e, body.len())),
        Ok(_) if de.position() != body.len() => Err(Error::TrailingBytes {
            extra: body.len() - de.position(),
        }),
        Ok(v) => Ok(v),
    };
    (id.map(RequestId), msg)
}

/// Writes the frame header of `kind` and the body head `[id, ` (then
/// `msg_head`, e.g. a variant name and a byte-string head) for a body whose
/// remaining `tail` bytes the caller sends after `out`. Checks the body
/// length against `max` (or the fixed limit of `kind`) like
/// [`frame::encode_into`], leaving `out` unchanged on error.
pub fn push_frame_head(
    kind: FrameKind,
    id: RequestId,
    msg_head: impl FnOnce(&mut Vec<u8>),
    tail: usize,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; frame::HEADER_LEN]);
    out.push(0x82);
    push_head(out, 0, id.0.into());
    msg_head(out);
    let len = (out.len() - start - frame::HEADER_LEN) as u64 + tail as u64;
    let limit = kind.max_body(max);
    if len > u64::from(limit) {
        out.truncate(start);
        return Err(Error::TooLargeToSend { len, max: limit });
    }
    let header = frame::Header {
        kind,
        len: len as u32,
    };
    out[start..start + frame::HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::frame::HEADER_LEN;

    /// Messages in the shape of a service's: a byte string and unit
    /// variants.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Request {
        #[serde(rename = "rev")]
        Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
        #[serde(rename = "info")]
        Info,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Response {
        #[serde(rename = "off")]
        PowerOff,
    }

    #[test]
    fn request_and_response_round_trip() {
        let mut out = vec![];
        encode_request_into(
            RequestId(u32::MAX),
            &Request::Reverse(b"ab".to_vec()),
            100,
            &mut out,
        )
        .unwrap();
        let (id, r) = decode::<Request>(&out[HEADER_LEN..]);
        assert_eq!(id, Some(RequestId(u32::MAX)));
        assert_eq!(r, Ok(Request::Reverse(b"ab".to_vec())));
        out.clear();
        encode_response_into(RequestId(0), &Response::PowerOff, 100, &mut out).unwrap();
        assert_eq!(out, [3, 0, 0, 0, 6, 0x82, 0, 0x63, b'o', b'f', b'f']);
        assert_eq!(
            body_len(RequestId(0), &Response::PowerOff),
            Ok(out.len() - HEADER_LEN)
        );
    }

    #[test]
    fn too_large_leaves_the_buffer_alone() {
        let mut out = b"keep".to_vec();
        let r = encode_request_into(RequestId(1), &Request::Reverse(vec![0; 20]), 10, &mut out);
        assert_eq!(r, Err(Error::TooLargeToSend { len: 28, max: 10 }));
        assert_eq!(out, b"keep");
    }

    #[test]
    fn the_id_is_read_even_when_the_message_is_bad() {
        let cases: &[(&[u8], Option<u32>)] = &[
            (b"\x82\x05\x63sum", Some(5)),         // unknown variant
            (b"\x82\x05\xa1\x63rev\x01", Some(5)), // wrong type
            (b"\x82\x05\xff", Some(5)),            // not CBOR after the id
            (b"\x81\x05", Some(5)),                // no message
            (b"\x83\x05\x64info\x00", Some(5)),    // one item too many
            (b"\x9f\x05\x64info\x00\xff", Some(5)),
            (b"\x82\x05\x64info\x00", Some(5)), // trailing bytes
            (b"\x82\x20\x64info", None),        // negative id
            (b"\x82\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info", None), // over u32
            (b"\x82\x61a\x64info", None),       // text id
            (b"\x64info", None),                // a v1 body, no envelope
            (b"\x80", None),
            (b"\x9f\xff", None),
            (b"\xff", None),
            (b"", None),
        ];
        for (body, want) in cases {
            let (id, r) = decode::<Request>(body);
            assert_eq!(id.map(|i| i.0), *want, "{body:02x?}");
            assert!(r.is_err(), "{body:02x?}: {r:?}");
        }
        // Indefinite-length envelope, tagged and non-shortest id: fine.
        let (id, r) = decode::<Request>(b"\x9f\xd8\x20\x1a\x00\x00\x00\x09\x64info\xff");
        assert_eq!((id, r), (Some(RequestId(9)), Ok(Request::Info)));
    }

    #[test]
    fn the_envelope_counts_as_one_level() {
        // 1 envelope + 127 arrays: accepted; one more: refused.
        let ok = |levels: usize| {
            let mut b = vec![0x82, 0x01];
            b.extend(core::iter::repeat_n(0x81, levels - 2));
            b.push(0x80);
            decode::<serde::de::IgnoredAny>(&b).1.is_ok()
        };
        assert!(ok(crate::frame::RECURSION_LIMIT));
        assert!(!ok(crate::frame::RECURSION_LIMIT + 1));
    }
}
