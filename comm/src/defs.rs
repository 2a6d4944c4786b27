//! The vocabulary every other module shares: request ids, frame kinds,
//! the `ERROR` body and its codes, and the limits (`WIRE.md` §2, §3, §8,
//! §10). It is the bottom layer of the crate and imports nothing from it, so
//! that [`crate::error`] can name these types without depending on the
//! modules above it. Each item is re-exported from its public home
//! ([`crate::frame`], [`crate::envelope`], [`crate::ext`]).

use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};

/// Length of the frame header: one kind byte and a big-endian `u32` length.
pub const HEADER_LEN: usize = 5;

/// Default maximum body length a receiver accepts: 16 MiB plus room for the
/// message envelope, so a 16 MiB payload fits.
pub const DEFAULT_MAX_BODY: u32 = 16 * 1024 * 1024 + 64;

/// Maximum body length of a [`FrameKind::Hello`] frame. It is fixed because
/// it is read before the peer's own maximum is known.
pub const HELLO_MAX_BODY: u32 = 256;

/// Deepest nesting of arrays, maps and enums a receiver accepts in a body;
/// deeper bodies are [`Error::Malformed`](crate::Error::Malformed). Bounds stack use on the guest.
pub const RECURSION_LIMIT: usize = 128;

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
            Self::Cancel => CANCEL_MAX_BODY,
            Self::Chunk => CHUNK_MAX_BODY,
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

/// The id a client gives a request; its answer carries the same id.
///
/// Chosen by the client; on the wire `uint .size 4`. A client does not
/// reuse an id while a request with that id is in flight or abandoned and
/// still unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u32);

impl RequestId {
    /// The id after this one (wrapping after `u32::MAX`).
    pub fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Most data bytes in one `CHUNK`.
pub const CHUNK_MAX_DATA: usize = 64 * 1024;

/// Largest `CHUNK` body: [`CHUNK_MAX_DATA`] and its envelope
/// (`[id, bytes]`: 1 + 5 + 5 bytes of heads).
pub const CHUNK_MAX_BODY: u32 = CHUNK_MAX_DATA as u32 + 16;

/// Largest `CANCEL` body (`{"id": uint .size 4}` takes at most 9 bytes).
pub const CANCEL_MAX_BODY: u32 = 64;
