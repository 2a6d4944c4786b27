//! The connection core: [`ServerConn`]'s state, its frame assembler
//! (header, body, a request read and dropped for want of memory), the
//! dispatch of complete frames, and the driver's side of its output and
//! its end. How requests are answered is in `answer.rs`, streams in
//! `stream.rs`, the output queue in `output.rs`.

use alloc::vec::Vec;
use core::marker::PhantomData;

use svmc_comm::envelope;
use svmc_comm::ext::{self, ConnStats, Extensions};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};
use svmc_comm::{Hello, Protocol};

use super::output::{Output, Spent};
use super::stream::{InStream, OutStream};
use super::{
    Ahead, Budget, Ended, Handler, Pump, RESERVE_PER_BODY_BYTE, ReadAhead, SMALL_BODY, ServeConfig,
};
#[cfg(doc)]
use super::{Ctx, InPlace, OUTPUT_HIGH_WATER, REFUSAL_ROOM};
use crate::{Error, Result};

/// Bytes of a dropped request's body kept to read its id from.
const ID_PREFIX: usize = 32;

/// Piece size when reading and dropping a request's body.
const DISCARD_CHUNK: usize = 4096;

/// Where the next received bytes go.
#[derive(Debug)]
pub(super) enum Input {
    /// The frame header, `got` bytes of it so far.
    Header { bytes: [u8; HEADER_LEN], got: usize },
    /// The body of a `kind` frame, into `ServerConn::body`.
    Body { kind: FrameKind, got: usize },
    /// A request body nobody has memory for, read and dropped.
    Discard {
        len: u32,
        left: usize,
        prefix: [u8; ID_PREFIX],
        prefix_len: usize,
    },
    /// A complete frame waits in `ServerConn::body` for
    /// [`ServerConn::process`].
    Ready(FrameKind),
    /// Nothing more is read.
    Stopped,
}

/// The server's side of one connection, without I/O.
///
/// The driver repeats, in any order that suits its I/O:
/// - send [`ServerConn::output`] and report it with [`ServerConn::sent`];
/// - while [`ServerConn::wants_input`], receive into
///   [`ServerConn::input_buf`] and report it with [`ServerConn::received`]
///   (or [`ServerConn::peer_closed`] at the end of the client's stream);
/// - [`ServerConn::process`] a complete frame (at most one per call, so a
///   driver serving many connections is fair between them);
///
/// until [`ServerConn::is_done`]; then [`ServerConn::take_end`] says how it
/// ended, and the driver closes the transport.
pub struct ServerConn<P: Protocol> {
    max_body: u32,
    pub(super) peer_max: u32,
    pub(super) hello_done: bool,
    pub(super) input: Input,
    /// The receive buffer of frame bodies, kept between frames (and taken
    /// back after an answer in place has been sent from it), so that a
    /// body is neither allocated nor zeroed again unless it is larger than
    /// any before: its length is the largest body so far (all of it
    /// initialised), the frame is its first `body_len` bytes.
    pub(super) body: Vec<u8>,
    /// Length of the frame body in `body`.
    body_len: usize,
    /// Budget held by `body`'s allocation.
    pub(super) reserved: usize,
    /// The answers waiting to be sent.
    pub(super) output: Output,
    pub(super) budget: Budget,
    end: Option<Result<Ended>>,
    ignored_errors: u32,
    /// Ours until the client's `HELLO`, then those both offered.
    pub(super) ext: Extensions,
    pub(super) now_us: fn() -> u64,
    /// When the first byte of the frame in assembly was read.
    pub(super) frame_at: u64,
    /// Bytes read ahead while a request ran ([`Ahead`]).
    pub(super) ahead: Ahead,
    pub(super) stats: ConnStats,
    stalling: bool,
    /// The request stream open now, if any.
    pub(super) stream: Option<InStream<P>>,
    /// The answer stream being sent, if any.
    pub(super) out_stream: Option<OutStream<P>>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> core::fmt::Debug for ServerConn<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConn")
            .field("hello_done", &self.hello_done)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> ServerConn<P> {
    /// A fresh connection: our `HELLO` is queued. A `P::NAME` that no
    /// `HELLO` can carry ends it at once, before anything is sent, with
    /// [`svmc_comm::Error::InvalidName`].
    pub fn new(config: ServeConfig, budget: Budget) -> Self {
        let mut s = Self::empty(config, budget);
        if let Err(e) = svmc_comm::handshake::check_name::<P>() {
            s.stop(Err(e.into()));
            return s;
        }
        let mut hello = Vec::new();
        match frame::encode_into(
            FrameKind::Hello,
            &Hello::new::<P>(config.max_body).with_ext(config.ext),
            frame::HELLO_MAX_BODY,
            &mut hello,
        ) {
            Ok(()) => s.queue(hello, 0),
            Err(e) => s.stop(Err(e.into())),
        }
        s
    }

    /// A connection refused at the server's connection limit: only a fatal
    /// `ERROR` busy is queued (instead of our `HELLO`), then it ends with
    /// [`Ended::Busy`]. `detail` says why (e.g. the limit).
    pub fn busy(detail: &str) -> Self {
        let mut s = Self::empty(ServeConfig::default(), Budget::new(0));
        let report = ProtocolError::new(ProtocolErrorCode::Busy, true, detail);
        s.queue_error(report);
        s.stop(Ok(Ended::Busy));
        s
    }

    fn empty(config: ServeConfig, budget: Budget) -> Self {
        Self {
            max_body: config.max_body,
            peer_max: 0,
            hello_done: false,
            input: Input::Header {
                bytes: [0; HEADER_LEN],
                got: 0,
            },
            body: Vec::new(),
            body_len: 0,
            reserved: 0,
            output: Output::default(),
            budget,
            end: None,
            ignored_errors: 0,
            ext: config.ext,
            now_us: config.now_us,
            frame_at: 0,
            ahead: Ahead::default(),
            stats: ConnStats::default(),
            stalling: false,
            stream: None,
            out_stream: None,
            _protocol: PhantomData,
        }
    }

    /// The extensions on for this connection (once the client's `HELLO`
    /// was read; ours before).
    pub fn extensions(&self) -> Extensions {
        self.ext
    }

    /// What this connection counted so far.
    pub fn stats(&self) -> ConnStats {
        let mut s = self.stats;
        s.queued = self.output.frames() as u64;
        s
    }

    /// The transport took none of the bytes of [`ServerConn::output`] (the
    /// client's receive window is full): counted in [`ConnStats::stalls`].
    /// A stall counts once until bytes go again.
    pub fn stalled(&mut self) {
        if !self.stalling {
            self.stalling = true;
            self.stats.stalls += 1;
        }
    }

    /// Whether the client's `HELLO` has been accepted.
    pub fn hello_done(&self) -> bool {
        self.hello_done
    }

    /// Non-fatal `ERROR` frames from the client, ignored so far.
    pub fn ignored_errors(&self) -> u32 {
        self.ignored_errors
    }

    /// Whether received bytes are wanted now: `false` while a complete
    /// frame waits for [`ServerConn::process`], between frames while the
    /// client leaves more than [`OUTPUT_HIGH_WATER`] + [`REFUSAL_ROOM`]
    /// bytes of small answers and refusals unread, while bytes read ahead
    /// during a request wait to be taken, and once the connection reads no
    /// more.
    pub fn wants_input(&self) -> bool {
        if !self.ahead.buf.is_empty() {
            return false;
        }
        match self.input {
            Input::Header { got: 0, .. } => self.output.reads_on(),
            Input::Header { .. } | Input::Body { .. } | Input::Discard { .. } => true,
            Input::Ready(_) | Input::Stopped => false,
        }
    }

    /// Whether no byte of the next frame has arrived yet (a driver with
    /// per-frame deadlines starts one here).
    pub fn at_frame_start(&self) -> bool {
        matches!(self.input, Input::Header { got: 0, .. })
    }

    /// Whether the connection holds a frame in part or in whole (a client
    /// with a frame in flight is not idle).
    pub fn mid_frame(&self) -> bool {
        !matches!(self.input, Input::Header { got: 0, .. } | Input::Stopped)
    }

    /// Where to put received bytes (empty when none are wanted).
    pub fn input_buf(&mut self) -> &mut [u8] {
        match &mut self.input {
            Input::Header { bytes, got } => &mut bytes[*got..],
            Input::Body { got, .. } => &mut self.body[*got..self.body_len],
            Input::Discard { left, .. } => {
                let n = (*left).min(DISCARD_CHUNK);
                if self.body.len() < n {
                    self.body.resize(n, 0);
                }
                &mut self.body[..n]
            }
            Input::Ready(_) | Input::Stopped => &mut [],
        }
    }

    /// `n` bytes were received into [`ServerConn::input_buf`].
    pub fn received(&mut self, n: usize) {
        self.received_at(n, None);
    }

    /// [`ServerConn::received`] of bytes first read at `at` (read ahead),
    /// or now.
    fn received_at(&mut self, n: usize, at: Option<u64>) {
        self.stats.bytes_in += n as u64;
        match &mut self.input {
            Input::Header { bytes, got } => {
                if *got == 0 && n > 0 {
                    self.frame_at = at.unwrap_or_else(self.now_us);
                }
                *got += n;
                if *got == HEADER_LEN {
                    let h = *bytes;
                    self.on_header(h);
                }
            }
            Input::Body { kind, got } => {
                *got += n;
                if *got == self.body_len {
                    self.input = Input::Ready(*kind);
                }
            }
            Input::Discard {
                len,
                left,
                prefix,
                prefix_len,
            } => {
                let keep = (ID_PREFIX - *prefix_len).min(n);
                prefix[*prefix_len..*prefix_len + keep].copy_from_slice(&self.body[..keep]);
                *prefix_len += keep;
                *left -= n;
                if *left == 0 {
                    let (id, _) = envelope::decode::<serde::de::IgnoredAny>(&prefix[..*prefix_len]);
                    let requested = u64::from(*len);
                    self.stats.requests += 1;
                    self.body = Vec::new();
                    self.body_len = 0;
                    self.input = Input::Header {
                        bytes: [0; HEADER_LEN],
                        got: 0,
                    };
                    self.no_memory(id, requested);
                }
            }
            Input::Ready(_) | Input::Stopped => debug_assert_eq!(n, 0),
        }
    }

    /// The client's stream ended (it closed or shut down its sending side).
    /// Between frames that ends the connection once the queued answers are
    /// sent; inside a frame it is a truncated frame (fatal).
    pub fn peer_closed(&mut self) {
        match &self.input {
            Input::Header { got: 0, .. } if self.hello_done => self.stop(Ok(Ended::Closed)),
            Input::Header { got: 0, .. } => self.stop(Err(Error::Closed)),
            Input::Header { got, .. } => {
                let got = *got;
                self.fatal(svmc_comm::Error::Truncated {
                    expected: HEADER_LEN,
                    got,
                })
            }
            Input::Body { got, .. } => {
                let e = svmc_comm::Error::Truncated {
                    expected: HEADER_LEN + self.body_len,
                    got: HEADER_LEN + got,
                };
                self.fatal(e)
            }
            Input::Discard { len, left, .. } => {
                let e = svmc_comm::Error::Truncated {
                    expected: HEADER_LEN + *len as usize,
                    got: HEADER_LEN + *len as usize - left,
                };
                self.fatal(e)
            }
            // A frame waits: it is processed, then the end is seen again.
            Input::Ready(_) | Input::Stopped => {}
        }
    }

    /// The transport failed: nothing more can be sent or received.
    pub fn transport_failed(&mut self, e: Error) {
        self.clear_output();
        if self.end.is_none() {
            self.stop(Err(e));
        } else {
            self.input = Input::Stopped;
        }
    }

    fn on_header(&mut self, h: [u8; HEADER_LEN]) {
        self.input = Input::Header {
            bytes: [0; HEADER_LEN],
            got: 0,
        };
        // Where its extension is off, a kind the extensions added is the
        // unknown kind it was in plain version 2, whatever its length
        // (R-FRAME-2: the kind is checked first).
        let off = match FrameKind::from_u8(h[0]) {
            Ok(FrameKind::Cancel) => !(self.hello_done && self.ext.cancel),
            Ok(FrameKind::Chunk) => !(self.hello_done && self.ext.stream),
            _ => false,
        };
        if off {
            return self.fatal(svmc_comm::Error::UnknownFrameKind(h[0]));
        }
        let header = match Header::parse(h, self.max_body) {
            Ok(header) => header,
            Err(e @ svmc_comm::Error::Empty { .. }) if self.hello_done => {
                // The header was all there was: still in step.
                self.report(&e, None);
                return;
            }
            Err(e) => return self.fatal(e),
        };
        match header.kind {
            FrameKind::Goodbye if self.hello_done => return self.stop(Ok(Ended::Goodbye)),
            FrameKind::Goodbye => {
                return self.fatal(svmc_comm::Error::UnexpectedFrame {
                    expected: FrameKind::Hello,
                    got: FrameKind::Goodbye,
                });
            }
            _ => {}
        }
        let len = header.len as usize;
        if header.kind == FrameKind::Request
            && self.hello_done
            && header.len <= SMALL_BODY
            && !self.output.room_for_small_answer(len, &self.budget)
        {
            // The client leaves its answers unread: no room for another
            // small one. Read and drop the request, and refuse it (R-FLOW-2)
            // rather than stop reading: a server that stops reading while
            // its answers cannot leave wedges the connection
            // (vhost-device-vsock 0.3.0 writes a connection's answers to
            // the host only while it has nothing to read from it).
            self.input = Input::Discard {
                len: header.len,
                left: len,
                prefix: [0; ID_PREFIX],
                prefix_len: 0,
            };
            return;
        }
        if header.kind == FrameKind::Request && header.len > SMALL_BODY {
            let want = len.saturating_mul(RESERVE_PER_BODY_BYTE);
            if want > self.reserved {
                // A larger buffer: the old one goes first, so the two
                // never exist at once.
                self.release_body();
                if !self.budget.take(want) {
                    self.input = Input::Discard {
                        len: header.len,
                        left: len,
                        prefix: [0; ID_PREFIX],
                        prefix_len: 0,
                    };
                    return;
                }
                self.reserved = want;
            }
        }
        // Every byte is overwritten as it arrives, so what the buffer held
        // (earlier frames) stays and only growth beyond the largest body
        // so far is zeroed: no pass over a large body, also after smaller
        // ones (megabytes of memset are milliseconds under emulation).
        if self.body.len() < len {
            self.body.resize(len, 0);
        }
        self.body_len = len;
        self.input = Input::Body {
            kind: header.kind,
            got: 0,
        };
    }

    /// Processes the complete frame that waits, if any. At most one frame
    /// (one handler call) per call; `true` if one was processed. (Whether
    /// there is room for its answer was decided from its header.)
    pub fn process<H: Handler<P> + ?Sized>(&mut self, handler: &mut H) -> bool {
        self.process_with(handler, &mut |_| ReadAhead::Nothing)
    }

    /// [`ServerConn::process`] for a driver that can read the connection's
    /// transport without waiting: `read_ahead` is called (with a buffer of
    /// at most [`AHEAD_MAX`](crate::rpc::AHEAD_MAX) bytes) before a request starts and
    /// whenever its handler asks [`Ctx::cancelled`], so that a `CANCEL`
    /// sent meanwhile stops it, and requests sent meanwhile get their
    /// arrival time. The bytes it reads are assembled into frames before
    /// anything the driver receives later ([`ServerConn::wants_input`] is
    /// `false` until then).
    pub fn process_with<H: Handler<P> + ?Sized>(
        &mut self,
        handler: &mut H,
        read_ahead: Pump<'_>,
    ) -> bool {
        let Input::Ready(kind) = self.input else {
            return false;
        };
        self.input = Input::Header {
            bytes: [0; HEADER_LEN],
            got: 0,
        };
        if kind == FrameKind::Request && self.hello_done {
            let body = core::mem::take(&mut self.body);
            let len = core::mem::take(&mut self.body_len);
            let reserved = core::mem::take(&mut self.reserved);
            self.request(body, len, reserved, handler, read_ahead);
            self.drain_ahead();
            return true;
        }
        let body = &self.body[..self.body_len];
        match kind {
            FrameKind::Hello if !self.hello_done => match Hello::decode_checked::<P>(body) {
                Ok(peer) => {
                    self.peer_max = peer.max_body;
                    self.ext = self.ext.both(peer.extensions());
                    self.ahead.cancel_on = self.ext.cancel;
                    self.hello_done = true;
                }
                Err(e) => self.fatal(e),
            },
            // The request it names came before it and is answered already:
            // nothing to do (one read ahead is acted on when read ahead).
            FrameKind::Cancel => match frame::decode_body::<ext::Cancel>(body) {
                Ok(c) => self.cancel_streams(c.id),
                Err(e) => self.report(&e, None),
            },
            FrameKind::Chunk => {
                let body = core::mem::take(&mut self.body);
                self.chunk(&body[..self.body_len], read_ahead);
                self.body = body;
            }
            FrameKind::Error => match frame::decode_body::<ProtocolError>(body) {
                Ok(pe) if pe.fatal || !self.hello_done => {
                    self.stop(Err(svmc_comm::Error::Remote(pe).into()));
                }
                Ok(_) => self.ignored_errors = self.ignored_errors.saturating_add(1),
                Err(e) => self.report(&e, None),
            },
            got => {
                let e = svmc_comm::Error::UnexpectedFrame {
                    expected: if self.hello_done {
                        FrameKind::Request
                    } else {
                        FrameKind::Hello
                    },
                    got,
                };
                self.report(&e, None);
            }
        }
        self.drain_ahead();
        true
    }

    /// Feeds the bytes read ahead to the frame assembler, up to the end of
    /// the next complete frame; what follows waits for the next
    /// [`ServerConn::process_with`].
    fn drain_ahead(&mut self) {
        if let Some(e) = self.ahead.failed.take() {
            return self.transport_failed(e);
        }
        let since = self.ahead.since;
        let src = core::mem::take(&mut self.ahead.buf);
        let mut off = 0;
        while off < src.len() {
            let dst = self.input_buf();
            if dst.is_empty() {
                break;
            }
            let n = dst.len().min(src.len() - off);
            dst[..n].copy_from_slice(&src[off..off + n]);
            self.received_at(n, since);
            off += n;
        }
        self.ahead.buf = src;
        self.ahead.consumed(off);
        if self.ahead.buf.is_empty() && core::mem::take(&mut self.ahead.eof) {
            self.peer_closed();
        }
    }

    /// Gives back the receive buffer kept after a large request, with its
    /// share of the [`Budget`], if no byte of a next frame has arrived;
    /// `true` if it held one. A driver calls it for a connection that has
    /// gone quiet, so that it does not keep the budget from the others.
    pub fn release_idle_body(&mut self) -> bool {
        if self.reserved == 0 || !self.at_frame_start() {
            return false;
        }
        self.release_body();
        true
    }

    /// Frees the receive buffer and gives back what it held of the budget.
    fn release_body(&mut self) {
        self.body = Vec::new();
        self.body_len = 0;
        self.budget.give(core::mem::take(&mut self.reserved));
    }

    /// `body`, the buffer of an answer in place that needs it no more,
    /// becomes the receive buffer again with its `reserved` budget, unless
    /// a newer one is in use (pipelined requests) or nothing more is read.
    pub(super) fn take_back(&mut self, Spent { body, reserved }: Spent) {
        if body.capacity() > self.body.capacity() && matches!(self.input, Input::Header { .. }) {
            self.release_body();
            self.body = body;
            self.reserved = reserved;
        } else {
            self.budget.give(reserved);
        }
    }

    /// Reads nothing more; the connection ends with `end` once the queued
    /// answers are sent.
    pub(super) fn stop(&mut self, end: Result<Ended>) {
        self.input = Input::Stopped;
        self.release_body();
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    fn clear_output(&mut self) {
        self.out_stream = None;
        self.output.clear(&self.budget);
    }

    /// The bytes to send next (empty if none): the rest of the oldest
    /// queued frame.
    pub fn output(&self) -> &[u8] {
        self.output.front()
    }

    /// Bytes queued to send, in all.
    pub fn output_len(&self) -> usize {
        self.output.bytes()
    }

    /// `n` bytes of [`ServerConn::output`] were sent.
    pub fn sent(&mut self, n: usize) {
        if self.output.is_empty() {
            return;
        }
        self.stats.bytes_out += n as u64;
        self.stalling = false;
        if let Some(spent) = self.output.sent(n, &self.budget) {
            self.take_back(spent);
        }
    }

    /// Whether the connection has ended and everything queued is sent: the
    /// driver closes the transport now.
    pub fn is_done(&self) -> bool {
        self.end.is_some() && self.output.is_empty() && self.out_stream.is_none()
    }

    /// Whether the connection reads nothing more (it ends once its output
    /// is sent).
    pub fn is_ending(&self) -> bool {
        self.end.is_some()
    }

    /// How the connection ended, once [`ServerConn::is_done`].
    pub fn take_end(&mut self) -> Option<Result<Ended>> {
        if self.is_done() {
            self.end.take()
        } else {
            None
        }
    }
}

impl<P: Protocol> Drop for ServerConn<P> {
    fn drop(&mut self) {
        self.clear_output();
        self.budget.give(core::mem::take(&mut self.reserved));
    }
}
