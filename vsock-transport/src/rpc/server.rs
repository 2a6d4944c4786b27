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
//!
//! # Source layout
//!
//! One file per part under `server/`: the connection core (its state, the
//! frame assembler, the driver's calls) in `conn.rs`, how a request is
//! answered or refused in `answer.rs`, streams in `stream.rs`, the output
//! queue in `output.rs`, the [`Budget`] in `budget.rs`, and [`serve`] in
//! `blocking.rs`. The budget and the output queue have their unit tests
//! in their files; the connection's (answering and streams included) are
//! in `tests.rs`. This file holds what a service implements and
//! configures.

use alloc::vec::Vec;
use core::ops::Range;

#[cfg(doc)]
use svmc_comm::Hello;
use svmc_comm::Protocol;
use svmc_comm::envelope::RequestId;
use svmc_comm::ext::Extensions;
use svmc_comm::frame;

use super::ahead::{Ahead, Ctx, Pump, ReadAhead};

mod answer;
mod blocking;
mod budget;
mod conn;
mod output;
mod stream;
#[cfg(test)]
mod tests;

pub use blocking::serve;
pub use budget::{Budget, CONNECTION_HEAP, RESERVE_PER_BODY_BYTE, SMALL_BODY};
pub use conn::ServerConn;
pub use output::{OUTPUT_HIGH_WATER, REFUSAL_ROOM};
pub use stream::{Answer, RequestStream, ResponseStream};

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
    /// (`Timeouts::read`, with `std`) after its last frame: an idle client is
    /// an ending, not an error (the stream was in step). Only [`serve`]
    /// reports it; the guest's many-connection server has its own policy.
    IdleTimeout,
    /// The server was at its connection limit: it sent `ERROR` busy
    /// instead of its `HELLO` ([`ServerConn::busy`]).
    Busy,
}

/// Server-side limits and settings. The default: requests up to
/// [`frame::DEFAULT_MAX_BODY`] (16 MiB + 64 B), every extension, and the
/// clock described at [`ServeConfig::now_us`].
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
