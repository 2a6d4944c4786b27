//! The server side of a connection, written once for every server: a
//! sans-IO state machine ([`ServerConn`]: bytes in, frames out, calls into
//! a [`Handler`]) that the firmware's event loop drives for many
//! connections at once, and that [`serve`] drives over one blocking
//! [`Connection`](crate::Connection) (the Linux guest's service and the test doubles).
//!
//! The rules it implements (`comm/WIRE.md`):
//!
//! - Our `HELLO` goes out first. Until the client's `HELLO` has been read
//!   and checked (protocol name and version before any other field,
//!   [`Hello::decode_checked`]), every error is fatal: a fatal `ERROR`
//!   frame, then close.
//! - Each `REQUEST` `[id, request]` is answered by exactly one `RESPONSE`
//!   `[id, response]` or one non-fatal `ERROR` carrying the id, in the
//!   order received. Requests may be pipelined: they are read while
//!   earlier answers are still being sent.
//! - A response over the client's `max_body` is replaced by
//!   [`Protocol::response_too_large`] (for svmc a `payload_too_large`
//!   `RESPONSE`; `len` and `max` are body sizes).
//! - A request the [`Budget`] has no room for is read and dropped (the
//!   stream stays in step) and answered with [`Protocol::out_of_memory`].
//! - A client's non-fatal `ERROR` frame is ignored; a fatal one ends the
//!   connection. `GOODBYE` (or the end of the client's stream between
//!   frames) ends it too, after the answers to every request already
//!   received have been sent (half-close).
//! - A frame that cannot be delimited (unknown kind, over the limit,
//!   truncated, `GOODBYE` with a body) gets a fatal `ERROR`, then close.
//!
//! # Heap
//!
//! A connection holds at most one request body in assembly or in the
//! handler. It goes on reading while its answers wait to be sent (WIRE.md
//! §4.1, flow control): the answers to requests of at most [`SMALL_BODY`]
//! bytes are kept in the connection's own [`OUTPUT_HIGH_WATER`] bytes and,
//! beyond that, in room borrowed from the [`Budget`] (given back once they
//! are sent); a request whose answer has no room in either is read,
//! dropped and refused ([`Protocol::out_of_memory`]), and only a client
//! that leaves [`REFUSAL_ROOM`] more bytes of refusals unread is held back
//! by the transport's flow control. Never to stop
//! reading a client that reads is what keeps the connection from wedging
//! behind vhost-device-vsock 0.3.0, which writes a connection's answers to
//! the host only while it has nothing more to read from it (see
//! `comm/WIRE.md` and the guest module's docs). Bodies over [`SMALL_BODY`]
//! are paid for from a
//! [`Budget`] shared by all connections, [`RESERVE_PER_BODY_BYTE`] times
//! their length from the header on (twice that for a request that is
//! decoded for [`Handler::handle`]: the request and its answer exist at
//! once); smaller ones come out of the per-connection allowance
//! [`CONNECTION_HEAP`]. The receive buffer is kept between frames, and an
//! answer in place ([`Handler::handle_in_place`]) is sent from it and then
//! gives it back, so a connection keeps the budget of its largest request
//! so far until it needs a larger buffer, ends, or its driver gives the
//! buffer back with [`ServerConn::release_idle_body`] (`serve_many` does
//! once the connection has been silent for a while): no allocation and no
//! zero-fill per request on a busy connection, and no budget kept from
//! the others by a quiet one.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::cell::Cell;
use core::marker::PhantomData;
use core::ops::Range;

use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, ConnStats, Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};
use svmc_comm::{Hello, Protocol};

use super::ahead::{Ahead, Ctx, Pump, ReadAhead};
use crate::{Error, Result};

/// What the server does after sending a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Read the next request.
    Continue,
    /// Stop serving and return [`Ended::Stopped`] (e.g. to power off).
    Stop,
}

/// Processes requests on the server side. The [`rpc` module's
/// example](crate::rpc#example) implements one and serves it.
pub trait Handler<P: Protocol> {
    /// Answers one request. Failures to process it are responses too.
    fn handle(&mut self, request: P::Request) -> (P::Response, Then);

    /// [`Handler::handle`] with what the server knows about the request
    /// ([`Ctx`]: its id, the client's trace context, its deadline, and
    /// whether the client cancelled it). A handler doing long work
    /// overrides this one and asks [`Ctx::cancelled`] between pieces of
    /// it. The default calls [`Handler::handle`].
    fn handle_ctx(&mut self, request: P::Request, ctx: &mut Ctx<'_>) -> (P::Response, Then) {
        let _ = ctx;
        self.handle(request)
    }

    /// Opens a streamed request (its meta said `stream`, `WIRE.md` §10.4):
    /// the request's data follows in `CHUNK`s, handed to the returned
    /// [`RequestStream`] one by one, and the request is answered by
    /// [`RequestStream::finish`] after the last. `Some(Err(answer))`
    /// answers at once (the data is then read and dropped); `None`, the
    /// default, says this request takes no stream: it is answered with a
    /// non-fatal `ERROR` code 3 and its data dropped.
    #[allow(clippy::type_complexity)]
    fn open_stream(
        &mut self,
        request: P::Request,
        ctx: &mut Ctx<'_>,
    ) -> Option<core::result::Result<alloc::boxed::Box<dyn RequestStream<P>>, (P::Response, Then)>>
    {
        let _ = (request, ctx);
        None
    }

    /// [`Handler::handle_ctx`] for a client that takes the answer as a
    /// stream (its meta said `stream_answer`, `WIRE.md` §10.4): a handler
    /// whose answer is data of any length returns
    /// [`Answer::Stream`], whose pieces the server sends as `CHUNK`s
    /// while the client's window has room (one at a time in memory), then
    /// the stream's final answer. The default answers as
    /// [`Handler::handle_ctx`] does.
    fn handle_streaming(&mut self, request: P::Request, ctx: &mut Ctx<'_>) -> Answer<P> {
        let (response, then) = self.handle_ctx(request, ctx);
        Answer::Response(response, then)
    }

    /// Answers a request inside its own `REQUEST` body, if it can, instead
    /// of [`Handler::handle`]: the answer's body is the bytes it appends to
    /// `head` followed by `body[payload]` (which it may have changed in
    /// place), so a large payload is neither decoded into a
    /// [`Protocol::Request`] nor encoded again. `head` starts with the
    /// frame header's placeholder bytes (`HEADER_LEN` of them), which the
    /// server fills in: append after them, do not remove them; `payload`
    /// must be a range within `body` (else the request is answered as too
    /// large). `None` (the default) leaves `body` as it was and the request
    /// goes to [`Handler::handle`].
    fn handle_in_place(&mut self, body: &mut [u8], head: &mut Vec<u8>) -> Option<InPlace> {
        let _ = (body, head);
        None
    }
}

impl<P: Protocol, H: Handler<P> + ?Sized> Handler<P> for &mut H {
    fn handle(&mut self, request: P::Request) -> (P::Response, Then) {
        (**self).handle(request)
    }
    fn handle_ctx(&mut self, request: P::Request, ctx: &mut Ctx<'_>) -> (P::Response, Then) {
        (**self).handle_ctx(request, ctx)
    }
    fn open_stream(
        &mut self,
        request: P::Request,
        ctx: &mut Ctx<'_>,
    ) -> Option<core::result::Result<alloc::boxed::Box<dyn RequestStream<P>>, (P::Response, Then)>>
    {
        (**self).open_stream(request, ctx)
    }
    fn handle_streaming(&mut self, request: P::Request, ctx: &mut Ctx<'_>) -> Answer<P> {
        (**self).handle_streaming(request, ctx)
    }
    fn handle_in_place(&mut self, body: &mut [u8], head: &mut Vec<u8>) -> Option<InPlace> {
        (**self).handle_in_place(body, head)
    }
}

/// A request answered in place ([`Handler::handle_in_place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    /// The request's id, which the answer carries.
    pub id: RequestId,
    /// Where the answer's payload lies in the request's body.
    pub payload: Range<usize>,
    /// What the server does after sending the answer.
    pub then: Then,
}

/// How a served connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent `GOODBYE`.
    Goodbye,
    /// The client closed the stream between frames.
    Closed,
    /// The handler returned [`Then::Stop`].
    Stopped,
    /// The client sent nothing within the read timeout
    /// ([`crate::Timeouts::read`]) after its last frame: an idle client is
    /// an ending, not an error (the stream was in step). Only [`serve`]
    /// reports it; the guest's many-connection server has its own policy.
    IdleTimeout,
    /// The server was at its connection limit: it sent `ERROR` busy
    /// instead of its `HELLO` ([`ServerConn::busy`]).
    Busy,
}

/// Server-side limits and settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Largest request body accepted (advertised in our `HELLO`).
    pub max_body: u32,
    /// The extensions of version 2 offered in our `HELLO` (`WIRE.md` §10;
    /// default: all). [`Extensions::NONE`] serves plain version 2.
    pub ext: Extensions,
    /// Microseconds on a monotonic clock: deadlines, timings and the
    /// pacing of [`Ctx::cancelled`]. The default, with `std`, counts from
    /// the first call; without `std` it is always 0, and then no deadline
    /// ever passes (the bare-metal runtime passes its clock).
    pub now_us: fn() -> u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body: frame::DEFAULT_MAX_BODY,
            ext: Extensions::ALL,
            now_us: default_clock,
        }
    }
}

/// [`ServeConfig::now_us`]'s default.
#[cfg(feature = "std")]
fn default_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// [`ServeConfig::now_us`]'s default.
#[cfg(not(feature = "std"))]
fn default_clock() -> u64 {
    0
}

/// Request bodies up to this size need no [`Budget`] reservation.
pub const SMALL_BODY: u32 = 64 * 1024;

/// Answers to requests of at most [`SMALL_BODY`] bytes (and `ERROR`s) that
/// one connection keeps waiting out of its own allowance; while more wait,
/// the room for a further small request's answer is borrowed from the
/// [`Budget`], and a request it has no room for either is read, dropped
/// and answered with [`Protocol::out_of_memory`] (WIRE.md R-FLOW-2).
/// Answers to larger requests are paid for from the budget too.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Room for the refusals (and `ERROR`s) a connection queues beyond
/// [`OUTPUT_HIGH_WATER`]; once that is full too, it reads nothing more
/// until its client has taken some of its answers (WIRE.md R-FLOW-3:
/// about 600 refusals, far more than any client keeps in flight).
pub const REFUSAL_ROOM: usize = 32 * 1024;

/// Heap one connection may use outside the [`Budget`]: a small request,
/// its answer, the queued answers under [`OUTPUT_HIGH_WATER`] and one more
/// small answer, the refusals after them ([`REFUSAL_ROOM`]), and the state
/// itself.
pub const CONNECTION_HEAP: usize =
    2 * SMALL_BODY as usize + 2 * OUTPUT_HIGH_WATER + REFUSAL_ROOM + 4096;

/// Heap bytes reserved per byte of a large request body from its header
/// on: the body, in which an answer in place ([`Handler::handle_in_place`])
/// is also sent. A request that goes to [`Handler::handle`] instead takes
/// as much again before it is decoded (the message decoded from the body
/// and the answer exist at once), or is answered with
/// [`Protocol::out_of_memory`] if the [`Budget`] has no room for that.
pub const RESERVE_PER_BODY_BYTE: usize = 1;

/// Bytes borrowed for a small answer beyond its request's body length:
/// the envelope of a `RESPONSE` or an `ERROR`.
const ANSWER_SLACK: usize = 64;

/// Queued answers are joined into one buffer up to this size.
const COALESCE_BYTES: usize = 16 * 1024;

/// Largest capacity of an answer buffer kept for the next answer
/// ([`ServerConn`]'s `spare`).
const SPARE_MAX: usize = COALESCE_BYTES + 64;

/// Bytes of a dropped request's body kept to read its id from.
const ID_PREFIX: usize = 32;

/// Piece size when reading and dropping a request's body.
const DISCARD_CHUNK: usize = 4096;

/// When a request whose meta asked for timings arrived and started.
#[derive(Debug, Clone, Copy)]
struct Timing {
    arrived: u64,
    started: u64,
    stats: bool,
}

/// The id of a body `[id, ...]` written plainly (a definite array head and
/// a uint head): a few bytes read, whatever the body's size. `None` for any
/// other encoding (the full decoder reads those).
fn plain_id(body: &[u8]) -> Option<RequestId> {
    if !matches!(body.first()?, 0x82 | 0x83) {
        return None;
    }
    let b = *body.get(1)?;
    let arg = |n: usize| -> Option<u32> {
        let bytes = body.get(2..2 + n)?;
        let mut v = 0u64;
        for x in bytes {
            v = (v << 8) | u64::from(*x);
        }
        u32::try_from(v).ok()
    };
    let id = match b {
        0..=23 => u32::from(b),
        24 => arg(1)?,
        25 => arg(2)?,
        26 => arg(4)?,
        27 => arg(8)?,
        _ => return None,
    };
    Some(RequestId(id))
}

/// Heap bytes that large requests may take, shared by the connections of
/// one server. Cloning shares it; a [`ServerConn`] gives back what it holds
/// when it is dropped.
#[derive(Debug, Clone)]
pub struct Budget(Rc<Cell<usize>>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Rc::new(Cell::new(bytes)))
    }

    /// No limit (a host process: its allocator reports failure).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// Bytes not reserved now.
    pub fn free(&self) -> usize {
        self.0.get()
    }

    fn take(&self, n: usize) -> bool {
        match self.0.get().checked_sub(n) {
            Some(rest) => {
                self.0.set(rest);
                true
            }
            None => false,
        }
    }

    fn give(&self, n: usize) {
        self.0.set(self.0.get().saturating_add(n));
    }
}

/// Where the next received bytes go.
#[derive(Debug)]
enum Input {
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

/// One queued answer: `bytes`, then the `payload` range of `body` (an
/// answer in place).
#[derive(Debug)]
struct Out {
    bytes: Vec<u8>,
    body: Option<(Vec<u8>, Range<usize>)>,
    sent: usize,
    /// Budget to give back once it is sent (or that goes with `body` when
    /// the connection takes it back as its receive buffer).
    reserved: usize,
}

impl Out {
    /// Paid for by the connection's own allowance, not the budget: counted
    /// in `ServerConn::loose_bytes`.
    fn is_loose(&self) -> bool {
        self.reserved == 0 && self.body.is_none()
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.body.as_ref().map_or(0, |(_, r)| r.len())
    }

    fn rest(&self) -> &[u8] {
        if self.sent < self.bytes.len() {
            return &self.bytes[self.sent..];
        }
        match &self.body {
            Some((b, r)) => &b[r.start + (self.sent - self.bytes.len())..r.end],
            None => &[],
        }
    }
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
    peer_max: u32,
    hello_done: bool,
    input: Input,
    /// The receive buffer of frame bodies, kept between frames (and taken
    /// back after an answer in place has been sent from it), so that a
    /// body is neither allocated nor zeroed again unless it is larger than
    /// any before: its length is the largest body so far (all of it
    /// initialised), the frame is its first `body_len` bytes.
    body: Vec<u8>,
    /// Length of the frame body in `body`.
    body_len: usize,
    /// The buffer of the last answer sent (cleared, at most [`SPARE_MAX`]
    /// bytes of capacity), for the next answer: a small request is then
    /// answered without an allocation. Kept only while no answer is
    /// queued, so it never adds to the queue's memory.
    spare: Vec<u8>,
    /// Budget held by `body`'s allocation.
    reserved: usize,
    out: VecDeque<Out>,
    out_bytes: usize,
    /// Bytes of `out` not paid for by the budget ([`Out::is_loose`]).
    loose_bytes: usize,
    /// Budget borrowed for small answers beyond [`OUTPUT_HIGH_WATER`],
    /// given back once they are sent.
    borrowed: usize,
    budget: Budget,
    end: Option<Result<Ended>>,
    ignored_errors: u32,
    /// Ours until the client's `HELLO`, then those both offered.
    ext: Extensions,
    now_us: fn() -> u64,
    /// When the first byte of the frame in assembly was read.
    frame_at: u64,
    /// Bytes read ahead while a request ran ([`Ahead`]).
    ahead: Ahead,
    stats: ConnStats,
    stalling: bool,
    /// The request stream open now, if any.
    stream: Option<InStream<P>>,
    /// The answer stream being sent, if any.
    out_stream: Option<OutStream<P>>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> core::fmt::Debug for ServerConn<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConn")
            .field("hello_done", &self.hello_done)
            .field("input", &self.input)
            .field("out_bytes", &self.out_bytes)
            .field("loose_bytes", &self.loose_bytes)
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
            spare: Vec::new(),
            reserved: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            loose_bytes: 0,
            borrowed: 0,
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
        s.queued = self.out.len() as u64;
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
            Input::Header { got: 0, .. } => {
                self.loose_bytes <= OUTPUT_HIGH_WATER + self.borrowed + REFUSAL_ROOM
            }
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
            && self.loose_bytes > OUTPUT_HIGH_WATER + self.borrowed
            && !self.borrow_for_answer(len)
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
    /// at most [`super::AHEAD_MAX`] bytes) before a request starts and
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

    /// Borrows from the budget the room for the answer to a small request
    /// of `len` body bytes, when the connection's own allowance
    /// ([`OUTPUT_HIGH_WATER`]) is full of answers its client has not taken
    /// yet; `false` if the budget has no room either (the request is then
    /// refused). A 1-byte request is refused only when the server is short
    /// of memory, not because many small answers wait.
    fn borrow_for_answer(&mut self, len: usize) -> bool {
        let want = len + ANSWER_SLACK;
        if self.budget.take(want) {
            self.borrowed += want;
            true
        } else {
            false
        }
    }

    /// Gives back what was borrowed for small answers once those that
    /// remain fit the connection's own allowance again.
    fn repay(&mut self) {
        if self.borrowed > 0 && self.loose_bytes <= OUTPUT_HIGH_WATER {
            self.budget.give(core::mem::take(&mut self.borrowed));
        }
    }

    /// Answers a request of `requested` body bytes that the budget has no
    /// room for.
    fn no_memory(&mut self, id: Option<RequestId>, requested: u64) {
        match (id, P::out_of_memory(requested)) {
            (Some(id), Some(r)) => self.queue_response(id, &r, 0, None),
            _ => self.queue_error(
                ProtocolError::new(
                    ProtocolErrorCode::TooLarge,
                    false,
                    "no memory for this request now: dropped",
                )
                .with_id(id),
            ),
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

    /// Answers the request in the first `len` bytes of `body`.
    fn request<H: Handler<P> + ?Sized>(
        &mut self,
        mut body: Vec<u8>,
        len: usize,
        mut reserved: usize,
        handler: &mut H,
        read_ahead: Pump<'_>,
    ) {
        self.stats.requests += 1;
        if self.stream.is_some() || self.out_stream.is_some() {
            // Only the stream's CHUNKs (and CANCEL) may come now.
            drop(body);
            self.budget.give(reserved);
            return self.fatal(svmc_comm::Error::UnexpectedFrame {
                expected: FrameKind::Chunk,
                got: FrameKind::Request,
            });
        }
        let arrived = self.frame_at;
        // `[id, meta, request]` becomes `[id, request]` at `start`.
        let (start, meta) = if self.ext.meta {
            match ext::split_request_meta(&mut body[..len]) {
                Ok((start, meta)) => (start, meta.unwrap_or_default()),
                Err((id, e)) => {
                    drop(body);
                    self.budget.give(reserved);
                    return self.report(&e, id);
                }
            }
        } else {
            (0, RequestMeta::default())
        };
        let pid = plain_id(&body[start..len]);
        if let Some(id) = pid {
            // From here a CANCEL read ahead that names it counts.
            self.ahead.begin(id);
        }
        if self.ext.cancel {
            // A CANCEL for this request may have come behind it while it
            // waited its turn: looked for when it waited a millisecond or
            // more (behind long work), not for requests served at once.
            let now = (self.now_us)();
            if now.saturating_sub(arrived) >= super::ahead::PUMP_GAP_US
                && !self.ahead.pumped_within(now, super::ahead::PUMP_GAP_US)
            {
                self.ahead.pump(now, &mut *read_ahead);
            }
        }
        if let Some(id) = pid {
            let refusal = if self.ahead.starts(id) {
                Some(ProtocolErrorCode::Cancelled)
            } else if meta
                .deadline_ms
                // 0: passed already, whatever the clock says.
                .is_some_and(|ms| {
                    ms == 0 || (self.now_us)().saturating_sub(arrived) > u64::from(ms) * 1000
                })
            {
                Some(ProtocolErrorCode::DeadlineExceeded)
            } else {
                None
            };
            if let Some(code) = refusal {
                drop(body);
                self.budget.give(reserved);
                self.ahead.done();
                if meta.stream && self.ext.stream {
                    // Its data still comes: dropped until the end.
                    self.stream = Some(InStream::dropping(id));
                }
                return self.refuse(id, code);
            }
        }
        let started = (self.now_us)();
        let timing = meta.wants_answer_meta().then_some(Timing {
            arrived,
            started,
            stats: meta.stats,
        });
        if meta.stream && self.ext.stream {
            self.budget.give(reserved);
            let (id, request) = envelope::decode::<P::Request>(&body[start..len]);
            drop(body);
            return match (id, request) {
                (Some(id), Ok(r)) => self.open_stream(id, r, meta, timing, handler, read_ahead),
                (id, Err(e)) => {
                    self.ahead.done();
                    if let Some(id) = id {
                        // A stream is open whatever becomes of its request:
                        // its data is dropped until the end.
                        self.stream = Some(InStream::dropping(id));
                    }
                    self.report(&e, id)
                }
                (None, Ok(_)) => unreachable!("a decoded request always has an id"),
            };
        }
        let mut head = self.take_spare();
        head.extend_from_slice(&[0; HEADER_LEN]);
        if let Some(mut answer) = handler.handle_in_place(&mut body[start..len], &mut head) {
            self.ahead.done();
            answer.payload = answer.payload.start.saturating_add(start)
                ..answer.payload.end.saturating_add(start);
            if let Some(t) = timing {
                let m = self.answer_meta(t);
                // Best effort: without it if it does not fit the client's
                // `max_body` (R-META-4).
                if let Ok((at, added)) = ext::insert_response_meta_at(&mut head, HEADER_LEN, &m)
                    && head.len() - HEADER_LEN + answer.payload.len() > self.peer_max as usize
                {
                    head.drain(at..at + added);
                    head[HEADER_LEN] = 0x82;
                }
            }
            return self.answer_in_place(answer, head, body, len, reserved);
        }
        self.recycle(head);
        let len = len - start;
        // The typed way: the decoded request and its answer need as much
        // again as a large body.
        if len > SMALL_BODY as usize {
            let more = len;
            if !self.budget.take(more) {
                let (id, _) = envelope::decode::<serde::de::IgnoredAny>(&body[start..start + len]);
                drop(body);
                self.budget.give(reserved);
                self.ahead.done();
                return self.no_memory(id, more as u64);
            }
            reserved += more;
        }
        let (id, request) = envelope::decode::<P::Request>(&body[start..start + len]);
        // Free the request frame before the response exists.
        drop(body);
        let (id, request) = match (id, request) {
            (Some(id), Ok(r)) => (id, r),
            (id, Err(e)) => {
                self.budget.give(reserved);
                self.ahead.done();
                return self.report(&e, id);
            }
            (None, Ok(_)) => unreachable!("a decoded request always has an id"),
        };
        if self.ahead.current != Some(id) && self.ahead.starts(id) {
            self.budget.give(reserved);
            self.ahead.done();
            return self.refuse(id, ProtocolErrorCode::Cancelled);
        }
        let mut ctx = Ctx {
            id,
            traceparent: meta.traceparent.as_deref(),
            deadline_us: meta
                .deadline_ms
                .map(|ms| arrived.saturating_add(u64::from(ms) * 1000)),
            now_us: self.now_us,
            ahead: &mut self.ahead,
            pump: read_ahead,
        };
        let (response, then) = if meta.stream_answer && self.ext.stream {
            match handler.handle_streaming(request, &mut ctx) {
                Answer::Response(r, t) => (r, t),
                Answer::Stream(source) => {
                    self.ahead.done();
                    self.budget.give(reserved);
                    self.out_stream = Some(OutStream::new(id, source, timing));
                    self.produce();
                    return;
                }
            }
        } else {
            handler.handle_ctx(request, &mut ctx)
        };
        if self.ahead.done() {
            // The client cancelled it while it ran: it gets `cancelled`,
            // whatever the handler made of it.
            drop(response);
            self.budget.give(reserved);
            self.refuse(id, ProtocolErrorCode::Cancelled);
        } else {
            self.queue_response(id, &response, reserved, timing);
        }
        if then == Then::Stop {
            self.stop(Ok(Ended::Stopped));
        }
    }

    /// The non-fatal `ERROR` that answers a request not carried out because
    /// its client cancelled it or its deadline passed.
    fn refuse(&mut self, id: RequestId, code: ProtocolErrorCode) {
        let detail = match code {
            ProtocolErrorCode::Cancelled => {
                self.stats.cancelled += 1;
                "cancelled by the client: not carried out"
            }
            _ => {
                self.stats.expired += 1;
                "its deadline passed before it started: not carried out"
            }
        };
        self.queue_error(ProtocolError::new(code, false, detail).with_id(Some(id)));
    }

    /// The meta of an answer: the request's timings, and the connection's
    /// statistics if asked.
    fn answer_meta(&self, t: Timing) -> ResponseMeta {
        let now = (self.now_us)();
        ResponseMeta {
            queued_us: Some(t.started.saturating_sub(t.arrived)),
            handled_us: Some(now.saturating_sub(t.started)),
            stats: t.stats.then(|| self.stats()),
        }
    }

    /// Queues the answer `handle_in_place` made in the first `frame_len`
    /// bytes of `body`.
    fn answer_in_place(
        &mut self,
        answer: InPlace,
        mut head: Vec<u8>,
        body: Vec<u8>,
        frame_len: usize,
        reserved: usize,
    ) {
        let InPlace { id, payload, then } = answer;
        // A handler that removed the header's placeholder or gave a range
        // outside the body made a mistake: answered as too large below.
        let bad = head.len() < HEADER_LEN || payload.start > payload.end || payload.end > frame_len;
        let len = head.len().saturating_sub(HEADER_LEN) + payload.len();
        if bad || len > self.peer_max as usize {
            // Too large for the client (or a handler's mistake): answered
            // as a typed response would be.
            self.body = body;
            self.reserved = reserved;
            match P::response_too_large(len as u64, self.peer_max) {
                Some(r) => self.queue_response(id, &r, 0, None),
                None => self.refuse_answer(id, len as u64),
            }
        } else {
            let header = Header {
                kind: FrameKind::Response,
                len: len as u32,
            };
            head[..HEADER_LEN].copy_from_slice(&header.to_bytes());
            self.queue_out(Out {
                bytes: head,
                body: Some((body, payload)),
                sent: 0,
                reserved,
            });
        }
        if then == Then::Stop {
            self.stop(Ok(Ended::Stopped));
        }
    }

    fn queue_response(
        &mut self,
        id: RequestId,
        response: &P::Response,
        reserved: usize,
        timing: Option<Timing>,
    ) {
        let mut out = self.take_spare();
        match envelope::encode_response_into(id, response, self.peer_max, &mut out) {
            Ok(()) => {
                if let Some(t) = timing {
                    let m = self.answer_meta(t);
                    // Best effort: without it if it does not fit.
                    let _ = ext::insert_response_meta(&mut out, 0, 0, &m, self.peer_max);
                }
                self.queue(out, reserved)
            }
            Err(svmc_comm::Error::TooLargeToSend { len, max }) => {
                self.budget.give(reserved);
                match P::response_too_large(len, max) {
                    Some(r) => {
                        let mut out = Vec::new();
                        match envelope::encode_response_into(id, &r, self.peer_max, &mut out) {
                            Ok(()) => self.queue(out, 0),
                            // Even the refusal is over the client's
                            // `max_body` (e.g. 0): the ERROR has its own
                            // limit.
                            Err(svmc_comm::Error::TooLargeToSend { .. }) => {
                                self.refuse_answer(id, len)
                            }
                            Err(e) => self.report(&e, Some(id)),
                        }
                    }
                    None => self.refuse_answer(id, len),
                }
            }
            Err(e) => {
                self.budget.give(reserved);
                self.report(&e, Some(id));
            }
        }
    }

    /// The non-fatal `ERROR` code 2 with the request's id that refuses an
    /// answer whose `RESPONSE` body would be `len` bytes, over the
    /// client's `max_body` (`WIRE.md` R-REQ-5, R-ERR-2): for a protocol
    /// without a typed answer for it, or when even that is too large.
    fn refuse_answer(&mut self, id: RequestId, len: u64) {
        let detail = alloc::format!(
            "the answer's RESPONSE body of {len} bytes is over your max_body of {}: not sent",
            self.peer_max
        );
        self.queue_error(
            ProtocolError::new(ProtocolErrorCode::TooLarge, false, detail).with_id(Some(id)),
        );
    }

    /// A non-fatal `ERROR` about the frame just read (fatal before `HELLO`).
    fn report(&mut self, e: &svmc_comm::Error, id: Option<RequestId>) {
        if !self.hello_done {
            return self.fatal(e.clone());
        }
        let report = match ProtocolError::from_error(e) {
            Some(r) => r,
            None => ProtocolError::new(ProtocolErrorCode::BadMessage, false, e.to_string()),
        };
        let mut report = report.with_id(id);
        report.fatal = false;
        self.queue_error(report);
    }

    /// A fatal `ERROR` for `e`, then the end.
    fn fatal(&mut self, e: svmc_comm::Error) {
        // An answer stream being sent ends here too: nothing follows a
        // fatal ERROR (R-ERR-1).
        self.out_stream = None;
        if let Some(mut report) = ProtocolError::from_error(&e) {
            report.fatal = true;
            self.queue_error(report);
        }
        self.stop(Err(e.into()));
    }

    fn queue_error(&mut self, report: ProtocolError) {
        if !report.fatal {
            self.stats.errors += 1;
        }
        if let Ok(f) = frame::encode(FrameKind::Error, &report, frame::ERROR_MAX_BODY) {
            self.queue(f, 0);
        }
    }

    fn queue(&mut self, bytes: Vec<u8>, reserved: usize) {
        self.queue_out(Out {
            bytes,
            body: None,
            sent: 0,
            reserved,
        });
    }

    fn queue_out(&mut self, mut out: Out) {
        // A small answer in place is copied out (a few bytes): it can then
        // join the others, and its buffer is the receive buffer again at
        // once.
        if out.len() <= COALESCE_BYTES
            && let Some((body, payload)) = out.body.take()
        {
            out.bytes.extend_from_slice(&body[payload]);
            self.take_back(body, core::mem::take(&mut out.reserved));
        }
        self.out_bytes += out.len();
        if out.is_loose() {
            self.loose_bytes += out.len();
        }
        // Small answers go out together: one transport write (one vsock
        // packet) for several pipelined answers instead of one each.
        if out.reserved == 0
            && out.body.is_none()
            && let Some(last) = self.out.back_mut()
            && last.reserved == 0
            && last.body.is_none()
            && last.bytes.len() + out.bytes.len() <= COALESCE_BYTES
        {
            last.bytes.extend_from_slice(&out.bytes);
            return;
        }
        // Whatever it is built from, a queued answer ends the spare's
        // keeping (see `spare`).
        self.spare = Vec::new();
        self.out.push_back(out);
    }

    /// The spare answer buffer (empty, or a new one).
    fn take_spare(&mut self) -> Vec<u8> {
        let mut v = core::mem::take(&mut self.spare);
        v.clear();
        v
    }

    /// Keeps `v` as the spare answer buffer if nothing is queued and it is
    /// small; else frees it.
    fn recycle(&mut self, v: Vec<u8>) {
        if self.out.is_empty() && v.capacity() <= SPARE_MAX {
            self.spare = v;
        }
    }

    /// `body`, the buffer of an answer in place that needs it no more,
    /// becomes the receive buffer again with its `reserved` budget, unless
    /// a newer one is in use (pipelined requests) or nothing more is read.
    fn take_back(&mut self, body: Vec<u8>, reserved: usize) {
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
    fn stop(&mut self, end: Result<Ended>) {
        self.input = Input::Stopped;
        self.release_body();
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    fn clear_output(&mut self) {
        self.out_stream = None;
        for o in self.out.drain(..) {
            self.budget.give(o.reserved);
        }
        self.out_bytes = 0;
        self.loose_bytes = 0;
        self.repay();
    }

    /// The bytes to send next (empty if none): the rest of the oldest
    /// queued frame.
    pub fn output(&self) -> &[u8] {
        self.out.front().map_or(&[], Out::rest)
    }

    /// Bytes queued to send, in all.
    pub fn output_len(&self) -> usize {
        self.out_bytes
    }

    /// `n` bytes of [`ServerConn::output`] were sent.
    pub fn sent(&mut self, n: usize) {
        let Some(o) = self.out.front_mut() else {
            return;
        };
        o.sent += n;
        self.out_bytes -= n;
        self.stats.bytes_out += n as u64;
        self.stalling = false;
        let loose = o.is_loose();
        let done = o.sent == o.len();
        if loose {
            self.loose_bytes -= n;
            self.repay();
        }
        if done {
            let Some(o) = self.out.pop_front() else {
                return;
            };
            match o.body {
                Some((body, _)) => self.take_back(body, o.reserved),
                None => self.budget.give(o.reserved),
            }
            self.recycle(o.bytes);
        }
    }

    /// Whether the connection has ended and everything queued is sent: the
    /// driver closes the transport now.
    pub fn is_done(&self) -> bool {
        self.end.is_some() && self.out.is_empty() && self.out_stream.is_none()
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

mod blocking;
mod stream;
#[cfg(test)]
mod tests;

pub use blocking::serve;
pub use stream::{Answer, RequestStream, ResponseStream};
use stream::{InStream, OutStream};
