//! The one error type of this crate.

use alloc::string::String;
use core::fmt;

use crate::defs::{FrameKind, ProtocolError, RequestId};

/// Everything that can be wrong with a frame, a message or a handshake.
///
/// Every variant says what was received, so a log line is enough to tell a
/// truncated stream from a hostile peer from a version skew.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header announced a body of `len` bytes but the stream ended after
    /// `got` bytes of the header and body together.
    #[error("truncated frame: expected {expected} bytes, the stream ended after {got}")]
    Truncated {
        /// Bytes the frame should have had (header + announced body).
        expected: usize,
        /// Bytes actually received before the end of the stream.
        got: usize,
    },
    /// The header announced a body larger than the receiver accepts. Nothing
    /// was allocated for it.
    #[error("frame too large: body of {len} bytes, maximum is {max}")]
    TooLarge {
        /// Announced (or, when encoding, actual) body length.
        len: u64,
        /// The configured maximum.
        max: u32,
    },
    /// A frame kind that needs a body arrived with a zero-length body.
    #[error("empty {kind} frame: this kind of frame needs a body")]
    Empty {
        /// The kind of the empty frame.
        kind: FrameKind,
    },
    /// The first header byte is not a known frame kind.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownFrameKind(u8),
    /// A well-formed frame arrived where another kind was expected.
    #[error("unexpected {got} frame, expected {expected}")]
    UnexpectedFrame {
        /// What the receiver was waiting for.
        expected: FrameKind,
        /// What arrived.
        got: FrameKind,
    },
    /// The body is not well-formed CBOR (or is cut short inside the body).
    #[error("invalid CBOR at byte {offset} of the frame body")]
    InvalidCbor {
        /// Offset into the body where the decoder gave up.
        offset: usize,
    },
    /// The body is well-formed CBOR naming a message variant this side does
    /// not know (a newer peer, or garbage that happens to parse). The text
    /// is serde's: the name received and the names known. The decoder
    /// reports it as its own case (serde's `unknown_variant`), so a
    /// receiver answers it with `ERROR` code 4
    /// ([`ProtocolErrorCode::UnknownVariant`](crate::frame::ProtocolErrorCode::UnknownVariant)),
    /// whatever the wording of other errors.
    #[error("unknown message variant: {0}")]
    UnknownVariant(String),
    /// The body is well-formed CBOR but does not have the shape of the
    /// expected message (wrong types, missing fields, nesting too deep).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The body holds one complete message followed by `extra` more bytes.
    #[error("{extra} trailing bytes after the message in the frame body")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// The peer speaks another protocol over this port.
    #[error(
        "protocol mismatch: we speak {}, the peer speaks {}",
        Quoted(ours),
        Quoted(theirs)
    )]
    ProtocolMismatch {
        /// Our protocol name.
        ours: &'static str,
        /// The peer's protocol name.
        theirs: String,
    },
    /// The peer speaks another version of the protocol.
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer reported a protocol-level error (an `ERROR` frame) and will
    /// close the connection if the error is fatal.
    #[error("peer reported a protocol error: {0}")]
    Remote(ProtocolError),
    /// A message could not be encoded (a `Serialize` impl failed). Nothing
    /// was sent.
    #[error("could not encode message: {0}")]
    Encode(String),
    /// A message we were about to send encodes to a body larger than the
    /// receiver accepts (`max`). Nothing was sent: the connection is still
    /// usable. (The receiving side's counterpart is [`Error::TooLarge`].)
    #[error("message of {len} bytes is over the receiver's limit of {max} bytes; nothing was sent")]
    TooLargeToSend {
        /// The body length the message would have.
        len: u64,
        /// The receiver's maximum.
        max: u32,
    },
    /// Our [`Protocol::NAME`](crate::Protocol::NAME) is empty or longer
    /// than [`MAX_NAME_LEN`](crate::handshake::MAX_NAME_LEN) bytes, so no
    /// `HELLO` can carry it (the peer would refuse the frame). Nothing was
    /// sent; fix the protocol's name.
    #[error(
        "protocol name {} is {len} bytes, but a HELLO carries 1 to {max} bytes (Protocol::NAME)",
        Quoted(name)
    )]
    InvalidName {
        /// The name.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_NAME_LEN`](crate::handshake::MAX_NAME_LEN).
        max: usize,
    },
    /// A `RESPONSE` or `ERROR` carries a request id that has no request in
    /// flight: one the client never sent, or one already answered. The
    /// stream is out of step (fatal).
    #[error("answer with request id {0} that has no request in flight")]
    UnexpectedId(RequestId),
}

impl Error {
    /// Whether the connection cannot be used any more after this error.
    ///
    /// For an error found in a received frame: `true` when the stream
    /// cannot be resynchronised (unknown kind, truncated, a body over the
    /// limit, an answer to no request) or the peers cannot talk (protocol or
    /// version mismatch), or the peer's `ERROR` says it closes. `false` when
    /// the frame's boundaries were intact and only its content was wrong,
    /// and for local encoding failures (nothing was sent).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Truncated { .. }
            | Self::TooLarge { .. }
            | Self::UnknownFrameKind(_)
            | Self::ProtocolMismatch { .. }
            | Self::VersionMismatch { .. }
            | Self::UnexpectedId(_) => true,
            Self::Remote(pe) => pe.fatal,
            Self::Empty { .. }
            | Self::UnexpectedFrame { .. }
            | Self::InvalidCbor { .. }
            | Self::UnknownVariant(_)
            | Self::Malformed(_)
            | Self::TrailingBytes { .. }
            | Self::Encode(_)
            | Self::TooLargeToSend { .. }
            | Self::InvalidName { .. } => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// A string in double quotes with `"`, `\` and every character outside
/// printable ASCII escaped (`\n`, `\r`, `\t`, `\0`, else `\u{hex}`): what
/// `{:?}` prints for ASCII text, without the Unicode tables `{:?}` pulls
/// into the guest image (~7 KiB with its formatting code). For strings
/// from the peer in error messages: they cannot break a log line.
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        f.write_char('"')?;
        // No slicing that can panic: the panic path alone pulls `{:?}` for
        // `char` and its tables back in.
        let s = self.0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if (' '..='~').contains(&c) && c != '"' && c != '\\' {
                continue;
            }
            f.write_str(s.get(start..i).unwrap_or_default())?;
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                _ => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            start = i + c.len_utf8();
        }
        f.write_str(s.get(start..).unwrap_or_default())?;
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;

    use super::Quoted;

    #[test]
    fn quoted_matches_debug_for_ascii_and_escapes_the_rest() {
        for s in ["svmc", "", "a\"b\\c", "x\n\r\ty", "\u{7f}\u{0}"] {
            assert_eq!(format!("{}", Quoted(s)), format!("{s:?}"), "{s:?}");
        }
        assert_eq!(format!("{}", Quoted("é\u{1b}[2J")), "\"\\u{e9}\\u{1b}[2J\"");
    }
}
