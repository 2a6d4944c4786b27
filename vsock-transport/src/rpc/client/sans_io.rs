//! The client's side of a connection without I/O: what the blocking
//! [`Client`](super::Client) and the async client
//! (`async_host::Client`) share, as the server's [`ServerConn`] is shared
//! by every server loop.
//!
//! [`ClientCore`] owns the request ids and the requests in flight
//! ([`InFlight`]: `WIRE.md` R-ID-2, R-ID-4, R-ID-6), whether the
//! connection ended and why (poisoning), and the extensions on for it
//! (`WIRE.md` §10). It encodes frames into a buffer the caller writes out
//! (a request with its meta, a `CANCEL`) and turns each frame the caller
//! read ([`FrameReader`](crate::framed::FrameReader)) into an [`Event`]:
//! the answer to live request N with its meta, a piece of N's answer
//! stream, or a late answer discarded. Its callers only move bytes and
//! wait: a thread on a [`Connection`](crate::Connection), or tokio tasks.
//!
//! # The rules it keeps
//!
//! - Ids count up from 1 and wrap; no id is given out while its request
//!   is in flight, even abandoned.
//! - An answer names its request's id; one without a readable id is the
//!   oldest request's (the server answers in order). An id with no
//!   request in flight is [`svmc_comm::Error::UnexpectedId`], fatal.
//! - A caller that gives up (a timeout, a dropped future) *abandons* its
//!   request: kept until its answer comes, however many there are, then
//!   the answer (and any data of its answer stream) is discarded, logged
//!   and counted. Where `cancel` is on, a `CANCEL` tells the server.
//! - The first fatal error ends the connection: every later use fails
//!   with [`Error::Poisoned`], whose source is that error.
//! - The meta (`WIRE.md` §10.2) goes with a request where `meta` is on
//!   and it says something; it is advisory, so a request that fills the
//!   server's `max_body` goes without it, unless it opens a stream.
//!
//! [`ServerConn`]: crate::rpc::ServerConn

use alloc::borrow::Cow;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::time::Duration;

use svmc_comm::ext::{self, Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, FrameKind, ProtocolError};
use svmc_comm::{Hello, Protocol, RequestId};

use crate::rpc::flight::{Answered, InFlight};
use crate::{Error, Result};

/// Logs a discarded late answer: through `tracing` on the host (`std`
/// turns it on), through `log` with the `guest` backend.
macro_rules! log_discard {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        tracing::warn!($($arg)*);
        #[cfg(all(feature = "guest", not(feature = "tracing")))]
        log::warn!($($arg)*);
        #[cfg(not(any(feature = "guest", feature = "tracing")))]
        let _ = ($($arg)*);
    }};
}

/// Why a connection ended; the error every later use gets
/// ([`Ended::error`]).
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// The server closed the stream between frames (the async client's
    /// reader: the blocking client is poisoned by [`Error::Closed`]).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    Closed,
    /// The first fatal error.
    Poisoned(Arc<Error>),
    /// We closed it (the async client's `shutdown`; the blocking client's
    /// `close` takes it by value).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    ClosedByUs,
    /// The async client's tasks were dropped with their runtime.
    #[cfg(feature = "tokio")]
    RuntimeGone,
}

impl Ended {
    /// The error a call on the ended connection gets.
    pub(crate) fn error(&self) -> Error {
        match self {
            Ended::Closed => Error::Closed,
            Ended::Poisoned(first) => Error::Poisoned {
                source: first.clone(),
            },
            Ended::ClosedByUs => Error::ShutDown,
            #[cfg(feature = "tokio")]
            Ended::RuntimeGone => Error::RuntimeGone,
        }
    }
}

/// What a received frame meant ([`ClientCore::receive`]).
#[derive(Debug)]
pub(crate) enum Event<'b, P: Protocol> {
    /// The answer to live request `id`: the response, or that request's
    /// own error (a non-fatal `ERROR` about it, an undecodable response);
    /// and the meta the server sent with it.
    Answer {
        id: RequestId,
        answer: Result<P::Response>,
        meta: Option<ResponseMeta>,
    },
    /// A piece of the answer stream of live request `id`.
    Chunk { id: RequestId, data: Cow<'b, [u8]> },
    /// A late answer to an abandoned request, or data of its answer
    /// stream: dropped (an answer is logged and counted).
    Discarded,
}

/// The meta sent with a request by default: `deadline` (rounded down to
/// milliseconds, at most `u32::MAX`), after which its caller gives up.
pub(crate) fn deadline_meta(deadline: Option<Duration>) -> RequestMeta {
    RequestMeta {
        deadline_ms: deadline.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
        ..RequestMeta::default()
    }
}

/// Our `HELLO` frame, offering `ext`, into `out` (replacing its contents).
/// A [`Protocol::NAME`] no `HELLO` can carry fails first, with
/// [`svmc_comm::Error::InvalidName`].
pub(crate) fn hello_frame<P: Protocol>(
    max_body: u32,
    ext: Extensions,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    svmc_comm::handshake::check_name::<P>()?;
    out.clear();
    let ours = Hello::new::<P>(max_body).with_ext(ext);
    frame::encode_into(FrameKind::Hello, &ours, max, out)?;
    Ok(())
}

/// The server's `HELLO`, checked: protocol name and version first,
/// whatever the other fields hold.
pub(crate) fn peer_hello<P: Protocol>(kind: FrameKind, body: &[u8]) -> Result<Hello> {
    frame::check_kind(kind, FrameKind::Hello, body)?;
    Ok(Hello::decode_checked::<P>(body)?)
}

/// A frame decoded ([`Codec::decode`]), not yet matched to a request.
#[derive(Debug)]
pub(crate) enum Decoded<'b, P: Protocol> {
    /// An answer to request `id`, or without a readable id to the oldest
    /// in flight: the response or that request's own error, and the meta
    /// the server sent with it.
    Answer {
        id: Option<RequestId>,
        answer: Result<P::Response>,
        meta: Option<ResponseMeta>,
    },
    /// A piece of the answer stream of request `id`.
    Chunk { id: RequestId, data: Cow<'b, [u8]> },
}

/// What encoding and decoding frames need of a connection: the server's
/// maximum, the extensions on, whether the client takes
/// `CHUNK`s. Fixed after `HELLO`, so a copy encodes requests and decodes
/// answers without holding whatever guards the [`ClientCore`] (the async
/// client's lock: other calls go on while a large payload is copied or
/// decoded).
pub(crate) struct Codec<P: Protocol> {
    peer_max_body: u32,
    ext: Extensions,
    /// Whether `CHUNK`s of answer streams are taken (`stream` is on and
    /// the caller reads streams); else a `CHUNK` is a stray frame.
    chunks: bool,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Clone for Codec<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Protocol> Copy for Codec<P> {}

impl<P: Protocol> core::fmt::Debug for Codec<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Codec")
            .field("peer_max_body", &self.peer_max_body)
            .field("ext", &self.ext)
            .field("chunks", &self.chunks)
            .finish()
    }
}

impl<P: Protocol> Codec<P> {
    /// The largest request body the server accepts.
    pub(crate) fn peer_max_body(&self) -> u32 {
        self.peer_max_body
    }

    /// The extensions on for this connection.
    pub(crate) fn extensions(&self) -> Extensions {
        self.ext
    }

    /// Encodes request `id` into `out` (replacing its contents), the meta
    /// in it where `meta` is on and `meta` says something. Fails with
    /// [`svmc_comm::Error::TooLargeToSend`] (not fatal) if it exceeds the
    /// server's maximum; the meta alone is left out rather than that,
    /// except for a stream's (whose server needs it).
    pub(crate) fn encode_request(
        &self,
        id: RequestId,
        request: &P::Request,
        meta: &RequestMeta,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        // The frame goes out whole from `out`, the payload copied after
        // the head. Sending head + payload from where it lies (one
        // vectored write, `framed::send_frame_parts`) saves that copy on
        // the host, but measured about 2x slower end to end against the
        // firmware (`cargo xtask bench`, 1 MiB and 8 MiB `Reverse`, same
        // bytes on the wire; see BENCHMARKS.md).
        let tail = P::encode_request(id, request, self.peer_max_body, out)?;
        if self.ext.meta && !meta.is_empty() {
            match ext::insert_request_meta(out, 0, tail.len(), meta, self.peer_max_body) {
                Err(svmc_comm::Error::TooLargeToSend { .. })
                    if !(meta.stream || meta.stream_answer) => {}
                r => r?,
            }
        }
        out.reserve_exact(tail.len());
        out.extend_from_slice(tail);
        Ok(())
    }

    /// Decodes the frame of `kind` with `body` (as read). An error is the
    /// connection's, not one request's (the caller passes it to
    /// [`ClientCore::fail`], or ends the connection).
    pub(crate) fn decode<'b>(&self, kind: FrameKind, body: &'b mut [u8]) -> Result<Decoded<'b, P>> {
        let mut meta = None;
        let (id, answer): (Option<RequestId>, Result<P::Response>) = match kind {
            FrameKind::Chunk if self.chunks => {
                return match ext::decode_chunk(body) {
                    Ok((id, Some(data))) => Ok(Decoded::Chunk { id, data }),
                    // The end marker is only for request streams.
                    Ok((_, None)) => Err(svmc_comm::Error::Malformed(
                        "an answer stream's CHUNK without data".into(),
                    )
                    .into()),
                    Err(e) => Err(e.into()),
                };
            }
            FrameKind::Response if self.ext.meta => match ext::split_meta::<ResponseMeta>(body) {
                Ok((start, m)) => {
                    meta = m;
                    let (id, r) = P::decode_response(&body[start..]);
                    (id, r.map_err(Error::from))
                }
                Err((id, e)) => (id, Err(e.into())),
            },
            FrameKind::Response => {
                let (id, r) = P::decode_response(body);
                (id, r.map_err(Error::from))
            }
            FrameKind::Error => match frame::decode_body::<ProtocolError>(body) {
                Ok(pe) if pe.fatal => return Err(svmc_comm::Error::Remote(pe).into()),
                Ok(pe) => (pe.id, Err(svmc_comm::Error::Remote(pe).into())),
                Err(e) => (None, Err(e.into())),
            },
            got => {
                let e = svmc_comm::Error::UnexpectedFrame {
                    expected: FrameKind::Response,
                    got,
                };
                // The server broke the protocol: the stream may be out of
                // step, so the connection ends (`ClientCore::receive`).
                return Err(e.into());
            }
        };
        Ok(Decoded::Answer { id, answer, meta })
    }
}

/// The client's state of one connection after `HELLO`; see the module
/// docs.
pub(crate) struct ClientCore<P: Protocol> {
    max_body: u32,
    codec: Codec<P>,
    flight: InFlight,
    ended: Option<Ended>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> ClientCore<P> {
    /// After the `HELLO` exchange: we accept bodies up to `max_body` and
    /// offered `offered`; the server sent `peer`. `chunks`: whether the
    /// caller reads answer streams (where `stream` is on).
    pub(crate) fn new(max_body: u32, offered: Extensions, peer: &Hello, chunks: bool) -> Self {
        let ext = offered.both(peer.extensions());
        Self {
            max_body,
            codec: Codec {
                peer_max_body: peer.max_body,
                ext,
                chunks: chunks && ext.stream,
                _protocol: PhantomData,
            },
            flight: InFlight::new(),
            ended: None,
            _protocol: PhantomData,
        }
    }

    /// The largest answer body we accept.
    pub(crate) fn max_body(&self) -> u32 {
        self.max_body
    }

    /// The largest request body the server accepts.
    pub(crate) fn peer_max_body(&self) -> u32 {
        self.codec.peer_max_body()
    }

    /// A copy of what encodes requests and decodes answers.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    pub(crate) fn codec(&self) -> Codec<P> {
        self.codec
    }

    /// The extensions on for this connection.
    pub(crate) fn extensions(&self) -> Extensions {
        self.codec.extensions()
    }

    /// Requests written whose callers wait for their answers.
    pub(crate) fn live(&self) -> usize {
        self.flight.live()
    }

    /// Requests given up on whose answers have not come yet.
    pub(crate) fn abandoned(&self) -> usize {
        self.flight.abandoned()
    }

    /// Late answers discarded so far.
    pub(crate) fn discarded(&self) -> u64 {
        self.flight.discarded()
    }

    /// Why the connection ended, if it did.
    pub(crate) fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// The first fatal error, if one poisoned the connection.
    pub(crate) fn poison(&self) -> Option<&Arc<Error>> {
        match &self.ended {
            Some(Ended::Poisoned(e)) => Some(e),
            _ => None,
        }
    }

    /// `Ok` while the connection lives; else the error for a use of it.
    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.ended {
            None => Ok(()),
            Some(why) => Err(why.error()),
        }
    }

    /// Ends the connection if `e` is fatal (keeping a copy of the first
    /// such error); returns `e` for the caller that met it.
    pub(crate) fn fail(&mut self, e: Error) -> Error {
        if e.is_fatal() && self.ended.is_none() {
            self.ended = Some(Ended::Poisoned(Arc::new(e.duplicate())));
        }
        e
    }

    /// Ends the connection (the first reason wins); no answer will come,
    /// so nothing stays in flight.
    pub(crate) fn end(&mut self, why: Ended) {
        if self.ended.is_none() {
            self.ended = Some(why);
        }
        self.flight.clear();
    }

    /// A fresh id: not in flight, and not claimed by `taken` (ids handed to
    /// callers whose frames are not written yet).
    pub(crate) fn fresh_id(&mut self, taken: impl Fn(RequestId) -> bool) -> RequestId {
        self.flight.fresh_id(taken)
    }

    /// The frame of request `id` was written (after those written before).
    pub(crate) fn sent(&mut self, id: RequestId) {
        self.flight.sent(id);
    }

    /// Gives up on request `id`: its answer is discarded when it comes.
    /// Whether `id` was in flight and live.
    pub(crate) fn abandon(&mut self, id: RequestId) -> bool {
        self.flight.abandon(id)
    }

    /// Counts an answer handed to a caller that gave up as it came.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    pub(crate) fn discard_live(&mut self) {
        self.flight.discard_live();
    }

    /// [`Codec::encode_request`].
    pub(crate) fn encode_request(
        &self,
        id: RequestId,
        request: &P::Request,
        meta: &RequestMeta,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.codec.encode_request(id, request, meta, out)
    }

    /// Encodes a `CANCEL` of request `id` into `out` (replacing its
    /// contents) where `cancel` is on and `id` was written and is not
    /// answered yet; `false` (and `out` left alone) otherwise.
    pub(crate) fn encode_cancel(&self, id: RequestId, out: &mut Vec<u8>) -> Result<bool> {
        if !self.codec.ext.cancel || !self.flight.contains(id) {
            return Ok(false);
        }
        out.clear();
        frame::encode_into(
            FrameKind::Cancel,
            &ext::Cancel { id },
            ext::CANCEL_MAX_BODY,
            out,
        )?;
        Ok(true)
    }

    /// What the frame of `kind` with `body` (as read) means: decoded
    /// ([`Codec::decode`]) and matched ([`ClientCore::resolve`]). An error
    /// is the connection's, not one request's; a fatal one ends the
    /// connection ([`ClientCore::fail`]).
    pub(crate) fn receive<'b>(
        &mut self,
        kind: FrameKind,
        body: &'b mut [u8],
    ) -> Result<Event<'b, P>> {
        match self.codec.decode(kind, body) {
            Ok(d) => self.resolve(d),
            // A frame a server never sends here is not fatal as a
            // request's error would be, but the server broke the protocol
            // and the stream may be out of step: it ends the connection,
            // as a fatal error does.
            Err(e @ Error::Protocol(svmc_comm::Error::UnexpectedFrame { .. })) => {
                self.end(Ended::Poisoned(Arc::new(e.duplicate())));
                Err(e)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// What a decoded frame means: matched to its request in flight (by
    /// id, or the oldest: answers come in order). An error (an answer to
    /// no request) is the connection's and fatal.
    pub(crate) fn resolve<'b>(&mut self, decoded: Decoded<'b, P>) -> Result<Event<'b, P>> {
        let (id, answer, meta) = match decoded {
            // An abandoned request's data is discarded with it.
            Decoded::Chunk { id, .. } if self.flight.is_abandoned(id) => {
                return Ok(Event::Discarded);
            }
            Decoded::Chunk { id, data } => return Ok(Event::Chunk { id, data }),
            Decoded::Answer { id, answer, meta } => (id, answer, meta),
        };
        match self.flight.answered(id) {
            Ok(Answered::Live(id)) => Ok(Event::Answer { id, answer, meta }),
            Ok(Answered::Discarded(id)) => {
                log_discard!(
                    "{}: discarded a late answer to abandoned request {} ({} so far)",
                    P::NAME,
                    id,
                    self.flight.discarded()
                );
                Ok(Event::Discarded)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

impl<P: Protocol> core::fmt::Debug for ClientCore<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientCore")
            .field("protocol", &P::NAME)
            .field("max_body", &self.max_body)
            .field("peer_max_body", &self.codec.peer_max_body)
            .field("ext", &self.codec.ext)
            .field("flight", &self.flight)
            .field("ended", &self.ended)
            .finish()
    }
}

#[cfg(test)]
mod tests;
