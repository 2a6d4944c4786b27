//! Extensions of protocol version 2, negotiated in `HELLO` (`WIRE.md` §10).
//!
//! A peer lists the extensions it supports in its `HELLO`'s `"ext"` array;
//! an extension is *on* for a connection when both `HELLO`s list it, and
//! then both sides may use what it adds. A v2 peer without `"ext"` (or one
//! that lists none in common) sees exactly protocol version 2: nothing here
//! is ever sent to it, so old and new peers keep working together.
//!
//! - [`META`]: a `REQUEST` body may be `[id, meta, request]`
//!   ([`RequestMeta`]: a relative deadline, a W3C trace context, asking
//!   for the server's timings and the connection's statistics), and a
//!   `RESPONSE` body `[id, meta, response]` ([`ResponseMeta`]). A request
//!   whose deadline passed before the server started it is answered with a
//!   non-fatal `ERROR` code 8 ([`crate::frame::ProtocolErrorCode::DeadlineExceeded`]).
//! - [`CANCEL`]: a client may send a `CANCEL` frame (kind 0x06, body
//!   [`Cancel`]) for a request it no longer wants; a server that had not
//!   answered it yet answers a non-fatal `ERROR` code 9
//!   ([`crate::frame::ProtocolErrorCode::Cancelled`]) instead.
//! - [`STREAM`] (with `meta`): a request whose meta says
//!   [`RequestMeta::stream`] is followed by its data in `CHUNK` frames
//!   (kind 0x07, body `[id, bytes]`, at most [`CHUNK_MAX_DATA`] bytes
//!   each) and a last `CHUNK` `[id, null]`, then answered once: a service
//!   takes more than `max_body`, and more than its RAM, in bounded memory
//!   ([`encode_chunk_into`], [`decode_chunk`]). The other way, a request
//!   whose meta says [`RequestMeta::stream_answer`] may be answered with
//!   `CHUNK`s of its id before its `RESPONSE`: a service produces more
//!   than `max_body` and more than its RAM.
//!
//! The meta item sits between the id and the message so that a receiver
//! reads it before the message and hands a plain `[id, message]` to the
//! protocol's decoder ([`split_meta`] rewrites the array head in place, a
//! few bytes, whatever the message's size); [`insert_meta`] turns an
//! encoded `[id, message]` frame into the `[id, meta, message]` one.
//!
//! ```
//! use svmc_comm::envelope::RequestId;
//! use svmc_comm::ext::{self, RequestMeta};
//! use svmc_comm::frame::{DEFAULT_MAX_BODY, HEADER_LEN};
//!
//! // `[7, "info"]` ...
//! let mut wire = Vec::new();
//! svmc_comm::envelope::encode_request_into(RequestId(7), &"info", DEFAULT_MAX_BODY, &mut wire)?;
//! // ... becomes `[7, {"deadline_ms": 250}, "info"]`.
//! let meta = RequestMeta { deadline_ms: Some(250), ..Default::default() };
//! ext::insert_meta(&mut wire, 0, 0, &meta, DEFAULT_MAX_BODY)?;
//! assert_eq!(wire[HEADER_LEN], 0x83);
//!
//! // The receiver reads the meta and gets `[7, "info"]` back.
//! let body = &mut wire[HEADER_LEN..];
//! let (start, got) = ext::split_meta::<RequestMeta>(body).map_err(|(_, e)| e)?;
//! assert_eq!(got, Some(meta));
//! let (id, msg) = svmc_comm::envelope::decode::<String>(&body[start..]);
//! assert_eq!((id, msg?), (Some(RequestId(7)), "info".to_string()));
//! # Ok::<(), svmc_comm::Error>(())
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::de::Deserializer;
use crate::envelope::RequestId;
use crate::error::{Error, Result};
use crate::frame::{self, HEADER_LEN};
use crate::head::{push_head, read_head};

/// The extension that adds the meta item to request and response bodies.
pub const META: &str = "meta";
/// The extension that adds the `CANCEL` frame.
pub const CANCEL: &str = "cancel";
/// The extension that adds request streams (`CHUNK` frames).
pub const STREAM: &str = "stream";

pub use crate::defs::{CANCEL_MAX_BODY, CHUNK_MAX_BODY, CHUNK_MAX_DATA};

/// Longest `traceparent` a receiver keeps (W3C Trace Context version 00 is
/// 55 characters; later versions may append fields).
pub const MAX_TRACEPARENT: usize = 256;

/// A set of extensions: ours, a peer's, or those on for a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// [`META`].
    pub meta: bool,
    /// [`CANCEL`].
    pub cancel: bool,
    /// [`STREAM`].
    pub stream: bool,
}

impl Extensions {
    /// None: a plain protocol version 2 peer.
    pub const NONE: Self = Self {
        meta: false,
        cancel: false,
        stream: false,
    };
    /// Every extension this crate knows.
    pub const ALL: Self = Self {
        meta: true,
        cancel: true,
        stream: true,
    };

    /// The names to list in a `HELLO`'s `"ext"`, in a fixed order.
    pub fn names(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.meta {
            v.push(META.into());
        }
        if self.cancel {
            v.push(CANCEL.into());
        }
        if self.stream {
            v.push(STREAM.into());
        }
        v
    }

    /// The extensions named in a peer's `"ext"`; names this crate does not
    /// know are ignored (a newer peer's).
    pub fn from_names(names: &[String]) -> Self {
        Self {
            meta: names.iter().any(|n| n == META),
            cancel: names.iter().any(|n| n == CANCEL),
            stream: names.iter().any(|n| n == STREAM),
        }
    }

    /// What both `self` and `other` support: the extensions on for a
    /// connection.
    pub fn both(self, other: Self) -> Self {
        Self {
            meta: self.meta && other.meta,
            cancel: self.cancel && other.cancel,
            // Streams need the meta item that opens them.
            stream: self.stream && other.stream && self.meta && other.meta,
        }
    }

    /// Whether none is on.
    pub fn is_empty(self) -> bool {
        self == Self::NONE
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The meta item of a `REQUEST` (`WIRE.md` §10.2). Every field is
/// optional; unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// The server answers `ERROR` code 8 instead of starting the request
    /// if it has not started it this many milliseconds after it read the
    /// request's first byte (0: it never starts it). Relative, so that the
    /// clocks need not agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u32>,
    /// A W3C Trace Context `traceparent` (`00-<trace id>-<parent id>-<flags>`)
    /// naming the client's span; the server reports its timings for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Asks for [`ResponseMeta::queued_us`] and [`ResponseMeta::handled_us`]
    /// (also given when `traceparent` is there).
    #[serde(default, skip_serializing_if = "is_false")]
    pub timing: bool,
    /// Asks for [`ResponseMeta::stats`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub stats: bool,
    /// The request's data follows in `CHUNK` frames (the `stream`
    /// extension); the request is answered after the last one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// The client takes the answer as a stream (the `stream` extension):
    /// the server may send `CHUNK`s of this request's id before its
    /// answer, which then ends the stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream_answer: bool,
}

impl RequestMeta {
    /// Whether the meta says nothing (then no meta item is sent).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the answer carries a [`ResponseMeta`].
    pub fn wants_answer_meta(&self) -> bool {
        self.timing || self.stats || self.traceparent.is_some()
    }
}

/// The meta item of a `RESPONSE` (`WIRE.md` §10.2), sent when the request's
/// meta asked for it ([`RequestMeta::wants_answer_meta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMeta {
    /// Microseconds from when the server read the request's first byte to
    /// when it started it (waiting behind other requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_us: Option<u64>,
    /// Microseconds the server spent on it (the handler, and encoding the
    /// answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_us: Option<u64>,
    /// The connection's statistics as of this answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ConnStats>,
}

/// What a server counted on one connection since it began
/// ([`ResponseMeta::stats`]). Every field is optional on the wire; a
/// server reports what it counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// Requests read (whole), this one included.
    #[serde(default)]
    pub requests: u64,
    /// Bytes received on the connection, headers included.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes of answers sent so far (this answer not included).
    #[serde(default)]
    pub bytes_out: u64,
    /// Non-fatal `ERROR`s sent (bad requests, refusals, deadlines,
    /// cancellations).
    #[serde(default)]
    pub errors: u64,
    /// Requests answered `cancelled`.
    #[serde(default)]
    pub cancelled: u64,
    /// Requests answered `deadline`.
    #[serde(default)]
    pub expired: u64,
    /// Times the transport took none of the bytes waiting to be sent (the
    /// client's receive window was full: a credit stall).
    #[serde(default)]
    pub stalls: u64,
    /// Answers queued and not yet sent, this one not included.
    #[serde(default)]
    pub queued: u64,
}

/// The body of a `CANCEL` frame: the id of the request to cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request's id.
    pub id: RequestId,
}

/// Turns the frame that starts at `out[frame_start]`, an encoded `REQUEST`
/// or `RESPONSE` with body `[id, message]` (its last `tail_len` body bytes
/// kept elsewhere, as [`crate::Protocol::encode_request`] allows), into one
/// with body `[id, meta, message]`: the meta item goes in after the id and
/// the frame header's length grows by its size. Fails with
/// [`Error::TooLargeToSend`] (leaving `out` unchanged) if the body would
/// exceed `max`, and with [`Error::Malformed`] if the frame is not an
/// encoded `[id, message]` (a definite 2-item array head, 0x82).
pub fn insert_meta<M: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    frame_start: usize,
    tail_len: usize,
    meta: &M,
    max: u32,
) -> Result<()> {
    let mut item = Vec::new();
    frame::encode_item(meta, &mut item)?;
    insert_item(out, frame_start, tail_len, item, max)
}

/// [`insert_meta`] for a request's meta, with a fast path for the meta the
/// clients send by default, `{"deadline_ms": N}` alone (written directly:
/// the same bytes as serde's).
// Pays (`fast_paths` bench, against `insert_meta`, x86_64, a loaded
// 2-core host): 50 ns against 93 ns.
pub fn insert_request_meta(
    out: &mut Vec<u8>,
    frame_start: usize,
    tail_len: usize,
    meta: &RequestMeta,
    max: u32,
) -> Result<()> {
    let item = match meta {
        RequestMeta {
            deadline_ms: Some(ms),
            traceparent: None,
            timing: false,
            stats: false,
            stream: false,
            stream_answer: false,
        } => {
            let mut item = Vec::with_capacity(18);
            item.extend_from_slice(b"\xa1\x6bdeadline_ms");
            push_head(&mut item, 0, u64::from(*ms));
            item
        }
        _ => {
            let mut item = Vec::new();
            frame::encode_item(meta, &mut item)?;
            item
        }
    };
    insert_item(out, frame_start, tail_len, item, max)
}

/// [`insert_meta`] for a response's meta, with a fast path for timings
/// alone (written directly: the same bytes as serde's).
// Pays (`fast_paths` bench, against `insert_meta`): 68 ns against 157 ns.
pub fn insert_response_meta(
    out: &mut Vec<u8>,
    frame_start: usize,
    tail_len: usize,
    meta: &ResponseMeta,
    max: u32,
) -> Result<()> {
    let item = response_meta_item(meta)?;
    insert_item(out, frame_start, tail_len, item, max)
}

/// [`insert_meta_at`] for a response's meta, with [`insert_response_meta`]'s
/// fast path.
pub fn insert_response_meta_at(
    buf: &mut Vec<u8>,
    body_start: usize,
    meta: &ResponseMeta,
) -> Result<(usize, usize)> {
    let item = response_meta_item(meta)?;
    let added = item.len();
    let at = splice_item(buf, body_start, item)?;
    Ok((at, added))
}

fn response_meta_item(meta: &ResponseMeta) -> Result<Vec<u8>> {
    let mut item = Vec::with_capacity(40);
    match meta {
        ResponseMeta {
            queued_us: Some(q),
            handled_us: Some(h),
            stats: None,
        } => {
            item.extend_from_slice(b"\xa2\x69queued_us");
            push_head(&mut item, 0, *q);
            item.extend_from_slice(b"\x6ahandled_us");
            push_head(&mut item, 0, *h);
        }
        _ => frame::encode_item(meta, &mut item)?,
    }
    Ok(item)
}

/// Inserts the encoded meta `item` into the frame at `out[frame_start]`
/// ([`insert_meta`]).
fn insert_item(
    out: &mut Vec<u8>,
    frame_start: usize,
    tail_len: usize,
    item: Vec<u8>,
    max: u32,
) -> Result<()> {
    let header = frame_start..frame_start + HEADER_LEN;
    let Some(h) = out.get(header.clone()) else {
        return Err(Error::Malformed("not an encoded frame".into()));
    };
    let old = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    debug_assert_eq!(old as usize, out.len() - header.end + tail_len);
    let added = item.len();
    let len = u64::from(old) + added as u64;
    if len > u64::from(max) {
        return Err(Error::TooLargeToSend { len, max });
    }
    splice_item(out, header.end, item)?;
    out[header.start + 1..header.end].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// [`insert_meta`] without a frame header: the body `[id, message]` that
/// starts at `buf[body_start]` becomes `[id, meta, message]`. Returns where
/// the meta item went and its length; the caller fixes any length field.
pub fn insert_meta_at<M: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    body_start: usize,
    meta: &M,
) -> Result<(usize, usize)> {
    let mut item = Vec::new();
    frame::encode_item(meta, &mut item)?;
    let added = item.len();
    let at = splice_item(buf, body_start, item)?;
    Ok((at, added))
}

/// Puts `item` after the id of the body `[id, message]` at
/// `buf[body_start]`, making it `[id, item, message]`; returns where it
/// went.
fn splice_item(buf: &mut Vec<u8>, body_start: usize, item: Vec<u8>) -> Result<usize> {
    if buf.get(body_start) != Some(&0x82) {
        return Err(Error::Malformed("not an encoded [id, message] body".into()));
    }
    let mut pos = body_start + 1;
    if !matches!(read_head(buf, &mut pos), Some((0, _))) {
        return Err(Error::Malformed("not an encoded [id, message] body".into()));
    }
    buf[body_start] = 0x83;
    buf.splice(pos..pos, item);
    Ok(pos)
}

/// Reads the meta item of a body `[id, meta, message]` (a definite 3-item
/// array head, 0x83) and rewrites the bytes just before the message into
/// the head of `[id, message]`: returns where that plain body starts in
/// `body`, and the meta. A body with any other head is returned as it is:
/// `(0, None)`. A meta item that is not a well-formed `M` (or the id
/// before it) is an error, with the id when it could be read.
#[allow(clippy::type_complexity)]
pub fn split_meta<M: for<'de> Deserialize<'de>>(
    body: &mut [u8],
) -> core::result::Result<(usize, Option<M>), (Option<RequestId>, Error)> {
    if body.first() != Some(&0x83) {
        return Ok((0, None));
    }
    let mut pos = 1;
    let id_start = pos;
    let id = match read_head(body, &mut pos) {
        Some((0, v)) if v <= u64::from(u32::MAX) => RequestId(v as u32),
        _ => {
            // Not a plain id: leave it to the message decoder, which
            // reports it as it reports any bad body.
            return Ok((0, None));
        }
    };
    let id_end = pos;
    let (meta, used) = {
        let mut de = Deserializer::new(&body[id_end..]);
        let meta = M::deserialize(&mut de)
            .map_err(|e| (Some(id), frame::classify(e, body.len() - id_end)))?;
        (meta, de.position())
    };
    let msg = id_end + used;
    if msg >= body.len() {
        return Err((
            Some(id),
            Error::Malformed("array too short, expected [id, meta, message]".into()),
        ));
    }
    let head = 1 + (id_end - id_start);
    let start = msg - head;
    body.copy_within(id_start..id_end, start + 1);
    body[start] = 0x82;
    Ok((start, Some(meta)))
}

/// [`split_meta`] for a request's meta, with a fast path for the meta the
/// clients send by default, `{"deadline_ms": N}` alone (one key compared,
/// one integer read: decoding it through serde was most of what the
/// extensions cost a 16-byte round trip). Anything else goes through
/// [`split_meta`]; the results are the same.
// Pays (`fast_paths` bench, against `split_meta::<RequestMeta>`): 18 ns
// against 111 ns.
#[allow(clippy::type_complexity)]
pub fn split_request_meta(
    body: &mut [u8],
) -> core::result::Result<(usize, Option<RequestMeta>), (Option<RequestId>, Error)> {
    const KEY: &[u8] = b"\xa1\x6bdeadline_ms";
    if body.first() == Some(&0x83) {
        let mut pos = 1;
        if let Some((0, id)) = read_head(body, &mut pos)
            && id <= u64::from(u32::MAX)
            && body.get(pos..pos + KEY.len()) == Some(KEY)
        {
            let id_end = pos;
            let mut p = pos + KEY.len();
            if let Some((0, ms)) = read_head(body, &mut p)
                && ms <= u64::from(u32::MAX)
                && p < body.len()
            {
                let head = id_end;
                let start = p - head;
                body.copy_within(1..id_end, start + 1);
                body[start] = 0x82;
                let meta = RequestMeta {
                    deadline_ms: Some(ms as u32),
                    ..RequestMeta::default()
                };
                return Ok((start, Some(meta)));
            }
        }
    }
    split_meta::<RequestMeta>(body)
}

/// Appends a `CHUNK` frame of request `id`: `data`, or the end of the
/// stream (`None`). Fails with [`Error::TooLargeToSend`] for more than
/// [`CHUNK_MAX_DATA`] bytes, leaving `out` unchanged.
///
/// ```
/// use svmc_comm::envelope::RequestId;
/// use svmc_comm::ext::{decode_chunk, encode_chunk_into};
/// let mut f = Vec::new();
/// encode_chunk_into(RequestId(7), Some(b"ab"), &mut f)?;
/// assert_eq!(f, [0x07, 0, 0, 0, 5, 0x82, 0x07, 0x42, b'a', b'b']);
/// let (id, data) = decode_chunk(&f[5..])?;
/// assert_eq!((id, data.as_deref()), (RequestId(7), Some(&b"ab"[..])));
/// f.clear();
/// encode_chunk_into(RequestId(7), None, &mut f)?;
/// assert_eq!(f, [0x07, 0, 0, 0, 3, 0x82, 0x07, 0xf6]);
/// assert_eq!(decode_chunk(&f[5..])?, (RequestId(7), None));
/// # Ok::<(), svmc_comm::Error>(())
/// ```
pub fn encode_chunk_into(id: RequestId, data: Option<&[u8]>, out: &mut Vec<u8>) -> Result<()> {
    let n = data.map_or(0, <[u8]>::len);
    if n > CHUNK_MAX_DATA {
        return Err(Error::TooLargeToSend {
            len: n as u64,
            max: CHUNK_MAX_BODY,
        });
    }
    // Written directly (what ciborium writes for `[id, bytes / null]`):
    // serde's byte-at-a-time path cost more than the copy, measured.
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(0x82);
    push_head(out, 0, u64::from(id.0));
    match data {
        Some(d) => {
            push_head(out, 2, d.len() as u64);
            out.extend_from_slice(d);
        }
        None => out.push(0xf6),
    }
    let header = frame::Header {
        kind: frame::FrameKind::Chunk,
        len: (out.len() - start - HEADER_LEN) as u32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Decodes a `CHUNK` body `[id, bytes / null]`: the request's id and its
/// data (borrowed from `body` when it is one definite byte string), or
/// `None` at the end of the stream.
pub fn decode_chunk(body: &[u8]) -> Result<(RequestId, Option<alloc::borrow::Cow<'_, [u8]>>)> {
    #[derive(Deserialize)]
    struct Chunk<'a>(
        RequestId,
        #[serde(borrow, with = "serde_bytes")] Option<alloc::borrow::Cow<'a, [u8]>>,
    );
    let Chunk(id, data) = frame::decode_body_borrowed(body)?;
    Ok((id, data))
}

#[cfg(test)]
mod tests;
