//! Frames: how messages are delimited on a byte stream.
//!
//! ```text
//! +--------+---------------------+---------------------------+
//! | kind   | body length (u32 BE)| body: one CBOR data item  |
//! | 1 byte | 4 bytes             | `length` bytes            |
//! +--------+---------------------+---------------------------+
//! ```
//!
//! The receiver reads the 5-byte header first, so it knows the size of the
//! body before it allocates anything, refuses a body over its maximum with
//! [`Error::TooLarge`], and tells a stream that ended early
//! ([`Error::Truncated`]) from a complete frame. The full grammar and
//! annotated examples are in `WIRE.md` at the root of this crate.

use alloc::string::ToString;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::de::{DeError, Deserializer};
pub use crate::defs::{
    DEFAULT_MAX_BODY, ERROR_MAX_BODY, ERROR_MAX_DETAIL, FrameKind, HEADER_LEN, HELLO_MAX_BODY,
    ProtocolError, ProtocolErrorCode, RECURSION_LIMIT,
};
use crate::error::{Error, Result};

impl FrameKind {
    /// The kind with header byte `b`.
    pub fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            0x01 => Self::Hello,
            0x02 => Self::Request,
            0x03 => Self::Response,
            0x04 => Self::Error,
            0x05 => Self::Goodbye,
            0x06 => Self::Cancel,
            0x07 => Self::Chunk,
            other => return Err(Error::UnknownFrameKind(other)),
        })
    }
}

/// A parsed and validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The kind of the frame.
    pub kind: FrameKind,
    /// The length of the body that follows, already checked against the
    /// receiver's maximum.
    pub len: u32,
}

impl Header {
    /// Parses a header and checks it before any body byte is read: a known
    /// kind, a body no larger than `max` (or the fixed limit of the kind),
    /// non-empty for kinds that carry a body.
    ///
    /// ```
    /// use svmc_comm::frame::{FrameKind, Header};
    /// let h = Header::parse([0x02, 0, 0, 0, 9], 1024).unwrap();
    /// assert_eq!((h.kind, h.len), (FrameKind::Request, 9));
    /// assert!(Header::parse([0x02, 0, 0, 4, 1], 1024).is_err()); // 1025 > 1024
    /// ```
    pub fn parse(bytes: [u8; HEADER_LEN], max: u32) -> Result<Self> {
        let kind = FrameKind::from_u8(bytes[0])?;
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let limit = kind.max_body(max);
        if kind.has_body() && len == 0 {
            return Err(Error::Empty { kind });
        }
        if len > limit {
            // A `GOODBYE` with a length too: its limit is 0 (`WIRE.md`
            // R-FRAME-5), and the stream cannot be resynchronised.
            return Err(Error::TooLarge {
                len: len.into(),
                max: limit,
            });
        }
        Ok(Self { kind, len })
    }

    /// The header's wire form.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let l = self.len.to_be_bytes();
        [self.kind as u8, l[0], l[1], l[2], l[3]]
    }

    /// Total frame length: header plus body.
    pub fn frame_len(self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Length in bytes of the CBOR encoding of `msg` (it is encoded into a
/// scratch `Vec` to find out).
pub fn encoded_len<T: Serialize + ?Sized>(msg: &T) -> Result<usize> {
    let mut v = Vec::new();
    ciborium::into_writer(msg, &mut v).map_err(|e| Error::Encode(e.to_string()))?;
    Ok(v.len())
}

/// Appends the CBOR encoding of `msg` (one data item, no frame header) to
/// `out`.
pub fn encode_item<T: Serialize + ?Sized>(msg: &T, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    ciborium::into_writer(msg, &mut *out).map_err(|e| {
        out.truncate(start);
        Error::Encode(e.to_string())
    })
}

/// Appends one complete frame (header and CBOR body) of `kind` holding `msg`
/// to `out`. Fails with [`Error::TooLargeToSend`] if the body would exceed
/// `max` (or the fixed limit of the kind), leaving `out` unchanged.
///
/// The body is `msg` itself, as for [`encode`]: `REQUEST` and `RESPONSE`
/// bodies are `[id, message]`, so write them with [`crate::envelope`].
pub fn encode_into<T: Serialize + ?Sized>(
    kind: FrameKind,
    msg: &T,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let limit = kind.max_body(max);
    let start = out.len();
    // One pass: a placeholder header, the body straight after it, then the
    // real length. (`&mut Vec<u8>` is a ciborium writer with or without
    // `ciborium-io/std`, which another crate in the build may switch on.)
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = ciborium::into_writer(msg, &mut *out) {
        out.truncate(start);
        return Err(Error::Encode(e.to_string()));
    }
    let len = out.len() - start - HEADER_LEN;
    if len as u64 > u64::from(limit) {
        out.truncate(start);
        return Err(Error::TooLargeToSend {
            len: len as u64,
            max: limit,
        });
    }
    if len == 0 {
        out.truncate(start);
        return Err(Error::Empty { kind });
    }
    let header = Header {
        kind,
        len: len as u32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// One complete frame of `kind` whose whole body is `msg`, checked
/// against `max`.
///
/// The body is `msg` itself, which is right for `HELLO`, `ERROR` and
/// `CANCEL` frames. A `REQUEST` or `RESPONSE` body is `[id, message]`
/// (`WIRE.md` §3) and a version 2 peer refuses a bare message: write those
/// with [`crate::envelope::encode_request_into`] and
/// [`crate::envelope::encode_response_into`] (or a protocol's own
/// [`crate::Protocol::encode_request`]).
///
/// ```
/// use svmc_comm::frame::{self, ERROR_MAX_BODY, FrameKind, ProtocolError, ProtocolErrorCode};
///
/// let busy = ProtocolError::new(ProtocolErrorCode::Busy, true, "busy");
/// let f = frame::encode(FrameKind::Error, &busy, ERROR_MAX_BODY)?;
/// // `{"code": 7, "fatal": true, "detail": "busy"}`
/// assert_eq!(&f[..6], [0x04, 0, 0, 0, 26, 0xa3]);
/// let back: ProtocolError = frame::decode(&f, FrameKind::Error, ERROR_MAX_BODY)?;
/// assert_eq!(back, busy);
/// # Ok::<(), svmc_comm::Error>(())
/// ```
pub fn encode<T: Serialize + ?Sized>(kind: FrameKind, msg: &T, max: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(kind, msg, max, &mut out)?;
    Ok(out)
}

/// The `GOODBYE` frame: a header with a zero length.
pub fn goodbye() -> [u8; HEADER_LEN] {
    Header {
        kind: FrameKind::Goodbye,
        len: 0,
    }
    .to_bytes()
}

/// Decodes a frame body: exactly one CBOR data item of type `T`, nothing after it.
///
/// Byte and text strings are borrowed from `body` while decoding (see
/// `WIRE.md`, "Decoder"), so a `serde_bytes` payload is copied once.
#[inline(never)]
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    decode_body_borrowed(body)
}

/// [`decode_body`] for a message that may borrow from the body, e.g. a
/// `#[serde(borrow)] &[u8]` payload that is not copied at all.
///
/// ```
/// #[derive(serde::Deserialize)]
/// enum Req<'a> { #[serde(rename = "rev")] Reverse(#[serde(borrow)] &'a [u8]) }
/// let body = [0xa1, 0x63, b'r', b'e', b'v', 0x43, b'a', b'b', b'c'];
/// let Req::Reverse(bytes) = svmc_comm::frame::decode_body_borrowed(&body)?;
/// assert_eq!(bytes, b"abc");
/// # Ok::<(), svmc_comm::Error>(())
/// ```
pub fn decode_body_borrowed<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    let mut de = Deserializer::new(body);
    let value = T::deserialize(&mut de).map_err(|e| classify(e, body.len()))?;
    if de.position() != body.len() {
        return Err(Error::TrailingBytes {
            extra: body.len() - de.position(),
        });
    }
    Ok(value)
}

pub(crate) fn classify(e: DeError, body_len: usize) -> Error {
    match e {
        DeError::Eof => Error::InvalidCbor { offset: body_len },
        DeError::Syntax(offset) => Error::InvalidCbor { offset },
        DeError::UnknownVariant(msg) => Error::UnknownVariant(msg.into()),
        DeError::Custom(msg) => Error::Malformed(msg),
        DeError::TooDeep => Error::Malformed("nesting too deep".into()),
    }
}

/// Decodes one complete frame held in `frame` (header and body, nothing
/// else), expecting kind `expected`. Its whole body is a `T`: for a
/// `REQUEST` or `RESPONSE` that is the `[id, message]` pair (or decode the
/// body with [`crate::envelope::decode`]).
///
/// A frame of kind [`FrameKind::Error`] decodes to [`Error::Remote`].
pub fn decode<T: DeserializeOwned>(frame: &[u8], expected: FrameKind, max: u32) -> Result<T> {
    let Some(head) = frame.get(..HEADER_LEN) else {
        if frame.is_empty() {
            return Err(Error::Truncated {
                expected: HEADER_LEN,
                got: 0,
            });
        }
        return Err(Error::Truncated {
            expected: HEADER_LEN,
            got: frame.len(),
        });
    };
    let mut h = [0; HEADER_LEN];
    h.copy_from_slice(head);
    let header = Header::parse(h, max)?;
    let body = &frame[HEADER_LEN..];
    if body.len() < header.len as usize {
        return Err(Error::Truncated {
            expected: header.frame_len(),
            got: frame.len(),
        });
    }
    if body.len() > header.len as usize {
        return Err(Error::TrailingBytes {
            extra: body.len() - header.len as usize,
        });
    }
    check_kind(header.kind, expected, body)?;
    decode_body(body)
}

/// Checks that a frame of kind `got` is what the receiver `expected`; an
/// `ERROR` frame becomes [`Error::Remote`] with its decoded body.
pub fn check_kind(got: FrameKind, expected: FrameKind, body: &[u8]) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    if got == FrameKind::Error {
        return Err(match decode_body::<ProtocolError>(body) {
            Ok(e) => Error::Remote(e),
            Err(e) => e,
        });
    }
    Err(Error::UnexpectedFrame { expected, got })
}

impl ProtocolError {
    /// The error frame a receiver sends back for a local decoding error, or
    /// `None` if the error is not about a frame the peer sent.
    pub fn from_error(e: &Error) -> Option<Self> {
        let (code, fatal) = match e {
            Error::TooLarge { .. } => (ProtocolErrorCode::TooLarge, true),
            Error::Truncated { .. } | Error::UnknownFrameKind(_) => {
                (ProtocolErrorCode::BadFrame, true)
            }
            Error::Empty { .. } | Error::InvalidCbor { .. } | Error::Malformed(_) => {
                (ProtocolErrorCode::BadMessage, false)
            }
            Error::TrailingBytes { .. } => (ProtocolErrorCode::BadMessage, false),
            Error::UnknownVariant(_) => (ProtocolErrorCode::UnknownVariant, false),
            Error::UnexpectedFrame { .. } => (ProtocolErrorCode::UnexpectedFrame, false),
            Error::ProtocolMismatch { .. } | Error::VersionMismatch { .. } => {
                (ProtocolErrorCode::VersionMismatch, true)
            }
            Error::Remote(_)
            | Error::Encode(_)
            | Error::TooLargeToSend { .. }
            | Error::UnexpectedId(_)
            | Error::InvalidName { .. } => return None,
        };
        Some(Self::new(code, fatal, e.to_string()))
    }
}
