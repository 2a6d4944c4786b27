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

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::de::{DeError, Deserializer};
use crate::envelope::RequestId;
use crate::error::{Error, Result};

/// Length of the frame header: one kind byte and a big-endian `u32` length.
pub const HEADER_LEN: usize = 5;

/// Default maximum body length a receiver accepts: 16 MiB plus room for the
/// message envelope, so a 16 MiB payload fits.
pub const DEFAULT_MAX_BODY: u32 = 16 * 1024 * 1024 + 64;

/// Maximum body length of a [`FrameKind::Hello`] frame. It is fixed because
/// it is read before the peer's own maximum is known.
pub const HELLO_MAX_BODY: u32 = 256;

/// Deepest nesting of arrays, maps and enums a receiver accepts in a body;
/// deeper bodies are [`Error::Malformed`]. Bounds stack use on the guest.
pub const RECURSION_LIMIT: usize = crate::de::RECURSION_LIMIT;

/// Maximum body length of a [`FrameKind::Error`] frame.
pub const ERROR_MAX_BODY: u32 = 1024;

/// Longest [`ProtocolError::detail`] a sender writes, in bytes (`WIRE.md`
/// R-ERR-7): [`ProtocolError::new`] cuts a longer one at a character
/// boundary, so an `ERROR` always fits [`ERROR_MAX_BODY`].
pub const ERROR_MAX_DETAIL: usize = 512;

/// The kind of a frame: the first byte of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Sent by both sides first on every connection: protocol name, version,
    /// maximum body length ([`crate::Hello`]).
    Hello = 0x01,
    /// A request, client to server.
    Request = 0x02,
    /// A response, server to client: exactly one per request, in order.
    Response = 0x03,
    /// A protocol-level error ([`ProtocolError`]): the frame before it could
    /// not be processed at all. Distinct from a service's own error response.
    Error = 0x04,
    /// The client ends the connection. Body length is 0.
    Goodbye = 0x05,
    /// The client no longer wants a request's answer
    /// ([`crate::ext::Cancel`]); only where the `cancel` extension is on
    /// (`WIRE.md` §10), an unknown kind anywhere else.
    Cancel = 0x06,
    /// A piece of a request's data ([`crate::ext::encode_chunk_into`]);
    /// only where the `stream` extension is on (`WIRE.md` §10), an unknown
    /// kind anywhere else.
    Chunk = 0x07,
}

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

    /// Whether frames of this kind carry a CBOR body.
    pub fn has_body(self) -> bool {
        !matches!(self, Self::Goodbye)
    }

    /// The largest body this kind may have, given the receiver's maximum for
    /// requests and responses.
    pub fn max_body(self, max: u32) -> u32 {
        match self {
            Self::Hello => HELLO_MAX_BODY,
            Self::Error => ERROR_MAX_BODY,
            Self::Goodbye => 0,
            Self::Cancel => crate::ext::CANCEL_MAX_BODY,
            Self::Chunk => crate::ext::CHUNK_MAX_BODY,
            Self::Request | Self::Response => max,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hello => "HELLO",
            Self::Request => "REQUEST",
            Self::Response => "RESPONSE",
            Self::Error => "ERROR",
            Self::Goodbye => "GOODBYE",
            Self::Cancel => "CANCEL",
            Self::Chunk => "CHUNK",
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
/// `REQUEST` and `RESPONSE` bodies are `[id, message]`: write them with
/// [`crate::envelope`].
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

/// One complete frame of `kind` holding `msg`, checked against `max`.
///
/// ```
/// use svmc_comm::frame::{self, FrameKind, DEFAULT_MAX_BODY};
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// enum Request {
///     #[serde(rename = "info")]
///     Info,
/// }
/// let f = frame::encode(FrameKind::Request, &Request::Info, DEFAULT_MAX_BODY).unwrap();
/// assert_eq!(f, [0x02, 0, 0, 0, 5, 0x64, b'i', b'n', b'f', b'o']);
/// let back: Request = frame::decode(&f, FrameKind::Request, DEFAULT_MAX_BODY).unwrap();
/// assert_eq!(back, Request::Info);
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
        DeError::Custom(msg) if msg.starts_with("unknown variant") => Error::UnknownVariant(msg),
        DeError::Custom(msg) => Error::Malformed(msg),
        DeError::TooDeep => Error::Malformed("nesting too deep".into()),
    }
}

/// Decodes one complete frame held in `frame` (header and body, nothing
/// else), expecting kind `expected`.
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

/// Why a peer could not process a frame at all. The body of an `ERROR` frame.
///
/// After an error with [`ProtocolError::fatal`] set, the sender closes the
/// connection; otherwise the connection stays usable (the bad frame's
/// boundaries were intact, only its content was wrong).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// What went wrong.
    pub code: ProtocolErrorCode,
    /// Whether the sender closes the connection after this frame.
    pub fatal: bool,
    /// A human-readable explanation, at most [`ERROR_MAX_DETAIL`] bytes
    /// when sent ([`ProtocolError::new`] cuts a longer one); a received one
    /// may be longer, within the frame's limit.
    pub detail: String,
    /// The id of the `REQUEST` this error is about, when the sender could
    /// read it (protocol version 2; omitted on the wire when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)?;
        if let Some(id) = self.id {
            write!(f, " (request {id})")?;
        }
        if self.fatal {
            f.write_str(" (connection closed)")?;
        }
        Ok(())
    }
}

impl ProtocolError {
    /// An error about no request in particular. A `detail` over
    /// [`ERROR_MAX_DETAIL`] bytes is cut to that length (at a character
    /// boundary).
    pub fn new(code: ProtocolErrorCode, fatal: bool, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        truncate_utf8(&mut detail, ERROR_MAX_DETAIL);
        Self {
            code,
            fatal,
            detail,
            id: None,
        }
    }

    /// The same error about the request `id`.
    pub fn with_id(mut self, id: Option<RequestId>) -> Self {
        self.id = id;
        self
    }

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

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// The reason code of a [`ProtocolError`]. Unknown codes from newer peers are
/// kept as [`ProtocolErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u32", into = "u32")]
#[non_exhaustive]
pub enum ProtocolErrorCode {
    /// The frame header was invalid (unknown kind) or the frame was cut short.
    BadFrame,
    /// The frame body exceeded the receiver's maximum.
    TooLarge,
    /// The body was empty, not CBOR, malformed, or had trailing bytes.
    BadMessage,
    /// The body named a message variant the receiver does not know.
    UnknownVariant,
    /// A frame of the wrong kind for this point of the conversation.
    UnexpectedFrame,
    /// The protocol name or version in the peer's `HELLO` did not match.
    VersionMismatch,
    /// The server is at its connection limit: sent instead of its `HELLO`,
    /// then the server closes (always fatal).
    Busy,
    /// The request's deadline passed before the server started it (the
    /// `meta` extension): not carried out. Not fatal; carries the id.
    DeadlineExceeded,
    /// The client cancelled the request before its answer was queued (the
    /// `cancel` extension): not carried out, or stopped. Not fatal;
    /// carries the id.
    Cancelled,
    /// A code this version does not know.
    Other(u32),
}

impl From<u32> for ProtocolErrorCode {
    fn from(v: u32) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::TooLarge,
            3 => Self::BadMessage,
            4 => Self::UnknownVariant,
            5 => Self::UnexpectedFrame,
            6 => Self::VersionMismatch,
            7 => Self::Busy,
            8 => Self::DeadlineExceeded,
            9 => Self::Cancelled,
            other => Self::Other(other),
        }
    }
}

impl From<ProtocolErrorCode> for u32 {
    fn from(c: ProtocolErrorCode) -> u32 {
        match c {
            ProtocolErrorCode::BadFrame => 1,
            ProtocolErrorCode::TooLarge => 2,
            ProtocolErrorCode::BadMessage => 3,
            ProtocolErrorCode::UnknownVariant => 4,
            ProtocolErrorCode::UnexpectedFrame => 5,
            ProtocolErrorCode::VersionMismatch => 6,
            ProtocolErrorCode::Busy => 7,
            ProtocolErrorCode::DeadlineExceeded => 8,
            ProtocolErrorCode::Cancelled => 9,
            ProtocolErrorCode::Other(v) => v,
        }
    }
}

impl fmt::Display for ProtocolErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFrame => f.write_str("bad frame"),
            Self::TooLarge => f.write_str("frame too large"),
            Self::BadMessage => f.write_str("bad message"),
            Self::UnknownVariant => f.write_str("unknown message variant"),
            Self::UnexpectedFrame => f.write_str("unexpected frame"),
            Self::VersionMismatch => f.write_str("protocol or version mismatch"),
            Self::Busy => f.write_str("server busy: at its connection limit"),
            Self::DeadlineExceeded => f.write_str("deadline passed before the request started"),
            Self::Cancelled => f.write_str("request cancelled"),
            Self::Other(v) => write!(f, "error code {v}"),
        }
    }
}
