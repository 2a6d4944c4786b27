//! The client side: `HELLO`, then requests, each tied to its answer by a
//! request id (see [`Client`]).

pub(crate) mod sans_io;
#[cfg(feature = "std")]
mod stream;
#[cfg(all(test, feature = "test-utils"))]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use svmc_comm::ext::{Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, FrameKind, Header};
use svmc_comm::{Protocol, RequestId};

use self::sans_io::{ClientCore, Event, deadline_meta};
use super::hello;
#[cfg(feature = "std")]
use super::trace;
use crate::framed::FrameReader;
use crate::framed::send_frame;
use crate::{Connection, Error, Result, Step};

/// How many abandoned requests (timed out, answer still due) a client
/// used to remember; the oldest was forgotten beyond that, and its answer
/// ended the connection. Clients now keep every abandoned id until its
/// answer comes (it was written, so the server answers it).
#[deprecated(
    since = "0.1.0",
    note = "no limit any more: a client keeps every abandoned id until its answer comes"
)]
pub const MAX_ABANDONED: usize = 64;

/// Client side of a connection: ids, pipelining, late-answer discard and
/// poisoning: a [`Connection`] under the sans-IO client core (module
/// `rpc::client::sans_io`), which keeps these rules for the async client
/// too.
///
/// # Ids, late answers, poisoning
///
/// The client numbers its requests ([`RequestId`], `WIRE.md` R-ID-1) and
/// keeps the ids in flight in send order. An answer (`RESPONSE`, or a
/// non-fatal `ERROR`) is matched by its id; an answer without a readable id
/// belongs to the oldest request in flight, as the server answers in order
/// (R-ID-4).
///
/// - A [`Client::call`] whose read deadline passes before any byte of the
///   answer arrived fails with [`Error::Timeout`]`(`[`Step::Read`]`)`, which
///   is not fatal: its id is remembered as *abandoned* until its answer
///   comes, however many there are (each was sent, so its answer is due;
///   the memory is a few bytes per request sent and not answered). The
///   answer is then discarded, logged and counted ([`Client::discarded`]),
///   never handed to another call, and the id is not reused before it.
/// - An answer with an id that has no request in flight (never sent, or
///   already answered) is [`svmc_comm::Error::UnexpectedId`], fatal.
/// - After any fatal error ([`Error::is_fatal`]: a deadline that passed
///   inside a frame, a close, a truncated or oversized frame, a fatal
///   `ERROR`...), or a frame a server never sends in answer (a `REQUEST`,
///   a `HELLO`..., [`svmc_comm::Error::UnexpectedFrame`]), the stream may
///   be out of step: the client is *poisoned*.
///   The call that met the error gets it; every later call fails at once
///   with [`Error::Poisoned`], whose source is that first error, without
///   touching the stream.
///
/// # Pipelining
///
/// [`Client::send_request`] and [`Client::recv_response`] are the two
/// halves of a call, so several requests can be in flight on one
/// connection; [`Client::call_many`] does that for a batch with a window.
/// [`Client::call`] is one request, one answer.
pub struct Client<C: Connection, P: Protocol> {
    conn: C,
    /// Ids, requests in flight, poisoning, encoding and decoding.
    core: ClientCore<P>,
    /// The frame being written, or the last one read.
    buf: Vec<u8>,
    /// The deadline sent with each request; `None`: the connection's read
    /// timeout.
    deadline: Option<core::time::Duration>,
    /// The meta of the last answer received, if it had one.
    last_meta: Option<(RequestId, ResponseMeta)>,
}

impl<C: Connection, P: Protocol> fmt::Debug for Client<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &P::NAME)
            .field("max_body", &self.core.max_body())
            .field("peer_max_body", &self.core.peer_max_body())
            .field("in_flight", &self.in_flight())
            .field("abandoned", &self.abandoned())
            .field("discarded", &self.discarded())
            .field("poisoned", &self.core.poison())
            .finish_non_exhaustive()
    }
}

impl<C: Connection, P: Protocol> Client<C, P> {
    /// Exchanges `HELLO` frames on a fresh connection. `max_body` bounds the
    /// responses we accept. A server at its connection limit answers with a
    /// fatal `ERROR` code 7 instead: [`svmc_comm::Error::Remote`] with
    /// [`svmc_comm::frame::ProtocolErrorCode::Busy`].
    ///
    /// Fails before sending anything if `P::NAME` does not fit a `HELLO`
    /// ([`svmc_comm::Error::InvalidName`]).
    ///
    /// Offers every extension of version 2 this crate knows
    /// ([`Extensions::ALL`]); a plain version 2 server takes none, and the
    /// client then speaks plain version 2.
    pub fn hello(conn: C, max_body: u32) -> Result<Self> {
        Self::hello_with(conn, max_body, Extensions::ALL)
    }

    /// [`Client::hello`] offering only the extensions `ext`
    /// ([`Extensions::NONE`]: plain version 2, no meta and no `CANCEL`
    /// ever sent).
    pub fn hello_with(mut conn: C, max_body: u32, ext: Extensions) -> Result<Self> {
        let mut buf = Vec::new();
        let peer = hello::<P, C>(&mut conn, max_body, ext, &mut buf)?;
        Ok(Self {
            conn,
            core: ClientCore::new(max_body, ext, &peer, true),
            buf,
            deadline: None,
            last_meta: None,
        })
    }

    /// The extensions on for this connection: those both sides offered.
    pub fn extensions(&self) -> Extensions {
        self.core.extensions()
    }

    /// Sets the deadline sent with each request (where the `meta`
    /// extension is on): the server does not start a request it could not
    /// start within it (`ERROR` code 8). `None`, the default, sends the
    /// connection's read timeout ([`Connection::read_timeout`]), after
    /// which the client would have given up anyway.
    pub fn set_deadline(&mut self, deadline: Option<core::time::Duration>) {
        self.deadline = deadline;
    }

    /// The meta the server sent with its answer to request `id`, if that
    /// was the last answer received and it had one (timings, statistics:
    /// asked for with [`Client::call_with`]).
    pub fn answer_meta(&self, id: RequestId) -> Option<&ResponseMeta> {
        match &self.last_meta {
            Some((got, m)) if *got == id => Some(m),
            _ => None,
        }
    }

    /// The meta sent with a request by default: the deadline.
    fn default_meta(&self) -> RequestMeta {
        deadline_meta(self.deadline.or_else(|| self.conn.read_timeout()))
    }

    /// The old name of [`Client::hello`].
    #[deprecated(
        since = "0.1.0",
        note = "renamed to `hello` (the HELLO exchange); the hybrid CONNECT/OK exchange is `Step::HybridConnect`"
    )]
    pub fn handshake(conn: C, max_body: u32) -> Result<Self> {
        Self::hello(conn, max_body)
    }

    /// The largest request body the server accepts (from its `HELLO`).
    pub fn peer_max_body(&self) -> u32 {
        self.core.peer_max_body()
    }

    /// Requests sent whose answers are still expected by the caller (not
    /// counting abandoned ones).
    pub fn in_flight(&self) -> usize {
        self.core.live()
    }

    /// Requests given up on (timed out) whose answers have not come yet.
    pub fn abandoned(&self) -> usize {
        self.core.abandoned()
    }

    /// How many late answers to abandoned requests were discarded so far.
    pub fn discarded(&self) -> u64 {
        self.core.discarded()
    }

    /// Whether an earlier fatal error, or a frame a server never sends in
    /// answer, poisoned this client (see [the type's docs](Client)).
    pub fn is_poisoned(&self) -> bool {
        self.core.ended().is_some()
    }

    /// Sends one request and waits for its answer.
    ///
    /// A request whose encoding exceeds the server's maximum fails with
    /// [`svmc_comm::Error::TooLargeToSend`] before anything is sent. A server's
    /// non-fatal `ERROR` about it is [`svmc_comm::Error::Remote`]. A read timeout
    /// before any byte of the answer is [`Error::Timeout`]`(`[`Step::Read`]`)`
    /// and abandons the request (its answer is discarded when it comes).
    /// None of these poison the client. Fails with [`Error::Usage`] while
    /// pipelined requests ([`Client::send_request`]) are unanswered.
    pub fn call(&mut self, request: &P::Request) -> Result<P::Response> {
        self.core.check_usable()?;
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let mut meta = self.default_meta();
        #[cfg(feature = "std")]
        let call = trace::Call::start(
            trace::call_span!(P::NAME),
            self.core.extensions().meta,
            &mut meta,
        );
        #[cfg(feature = "std")]
        let _entered = call.span().enter();
        let id = self.send_request_with(request, &meta)?;
        #[cfg(feature = "std")]
        call.sent(id);
        let r = self.wait_for(id);
        #[cfg(feature = "std")]
        call.answered(self.answer_meta(id));
        let _ = &mut meta;
        r
    }

    /// [`Client::call`] with the request's meta given (`WIRE.md` §10.2: a
    /// deadline, a trace context, asking for the server's timings and the
    /// connection's statistics); returns the answer's meta with the
    /// answer. Where the `meta` extension is off, the meta is not sent
    /// and none comes back.
    pub fn call_with(
        &mut self,
        request: &P::Request,
        meta: &RequestMeta,
    ) -> Result<(P::Response, Option<ResponseMeta>)> {
        self.core.check_usable()?;
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_with() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let id = self.send_request_with(request, meta)?;
        let answer = self.wait_for(id)?;
        Ok((answer, self.answer_meta(id).cloned()))
    }

    /// Waits for the answer to `id`, the only live request; on a read
    /// timeout abandons and cancels it.
    fn wait_for(&mut self, id: RequestId) -> Result<P::Response> {
        match self.recv_response() {
            Ok((got, answer)) => {
                debug_assert_eq!(got, id, "the only live request");
                answer
            }
            Err(e @ Error::Timeout(Step::Read)) => {
                self.abandon(id);
                // The server need not finish what nobody waits for; the
                // timeout is what the caller gets whatever happens here
                // (a failed send poisons the client as usual).
                let _ = self.cancel(id);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a `CANCEL` for request `id` (where the `cancel` extension is
    /// on and `id` is in flight): the server answers it with `ERROR` code
    /// 9 ([`svmc_comm::frame::ProtocolErrorCode::Cancelled`]) if it had not
    /// answered it yet, and a handler doing long work stops. It still gets
    /// exactly one answer, which the caller reads as usual (or discards,
    /// for an abandoned request). `Ok(false)` if nothing was sent.
    pub fn cancel(&mut self, id: RequestId) -> Result<bool> {
        self.core.check_usable()?;
        let mut f = Vec::new();
        if !self.core.encode_cancel(id, &mut f)? {
            return Ok(false);
        }
        match send_frame(&mut self.conn, &f) {
            Ok(()) => Ok(true),
            Err(e) => Err(self.core.fail(e)),
        }
    }

    /// Sends every request of `requests` with at most `window` (at least 1)
    /// in flight at once, and returns their answers in request order.
    ///
    /// The outer error is one that ends the batch (a read timeout, which
    /// abandons the batch's unanswered requests, or a fatal error); the
    /// inner ones are per request, as in [`Client::call`]. A request too
    /// large to send gets its [`svmc_comm::Error::TooLargeToSend`] and the batch
    /// goes on.
    pub fn call_many<'r, I>(
        &mut self,
        requests: I,
        window: usize,
    ) -> Result<Vec<Result<P::Response>>>
    where
        I: IntoIterator<Item = &'r P::Request>,
        P::Request: 'r,
    {
        self.core.check_usable()?;
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_many() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let window = window.max(1);
        let mut answers: Vec<Option<Result<P::Response>>> = Vec::new();
        // (id, index into `answers`) of the requests of this batch in flight.
        let mut pending: VecDeque<(RequestId, usize)> = VecDeque::new();
        let mut requests = requests.into_iter();
        let mut more = true;
        loop {
            while more && pending.len() < window {
                let Some(request) = requests.next() else {
                    more = false;
                    break;
                };
                let index = answers.len();
                match self.send_request(request) {
                    Ok(id) => {
                        answers.push(None);
                        pending.push_back((id, index));
                    }
                    Err(e) if !e.is_fatal() => answers.push(Some(Err(e))),
                    Err(e) => return Err(e),
                }
            }
            if pending.is_empty() {
                break;
            }
            match self.recv_response() {
                Ok((id, answer)) => {
                    let at = pending
                        .iter()
                        .position(|&(p, _)| p == id)
                        .expect("recv_response only returns live ids, all of this batch");
                    let (_, index) = pending.remove(at).expect("in range");
                    answers[index] = Some(answer);
                }
                Err(e) => {
                    if matches!(e, Error::Timeout(Step::Read)) {
                        for (id, _) in pending {
                            self.abandon(id);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every request answered"))
            .collect())
    }

    /// Sends one request without waiting for its answer, and returns its id.
    ///
    /// Refused before anything is sent (not fatal): a request over the
    /// server's maximum ([`svmc_comm::Error::TooLargeToSend`]). A failed send
    /// poisons the client (part of the frame may have gone out).
    pub fn send_request(&mut self, request: &P::Request) -> Result<RequestId> {
        let meta = self.default_meta();
        self.send_request_with(request, &meta)
    }

    /// [`Client::send_request`] with the request's meta given (sent where
    /// the `meta` extension is on and it says something).
    pub fn send_request_with(
        &mut self,
        request: &P::Request,
        meta: &RequestMeta,
    ) -> Result<RequestId> {
        self.core.check_usable()?;
        let id = self.core.fresh_id(|_| false);
        self.core.encode_request(id, request, meta, &mut self.buf)?;
        if let Err(e) = send_frame(&mut self.conn, &self.buf) {
            return Err(self.core.fail(e));
        }
        self.core.sent(id);
        Ok(id)
    }

    /// Waits for the next answer to a request in flight and returns its id
    /// and the answer (the inner result: the response, or that request's
    /// own error, e.g. a non-fatal `ERROR` about it). Late answers to
    /// abandoned requests are discarded on the way.
    ///
    /// A read timeout before any byte of a frame is
    /// [`Error::Timeout`]`(`[`Step::Read`]`)`, not fatal, and leaves every
    /// request in flight (call again, or [`Client::abandon`] them). Fails
    /// with [`Error::Usage`] when no request is in flight.
    pub fn recv_response(&mut self) -> Result<(RequestId, Result<P::Response>)> {
        self.recv_response_with(&mut |_, _| {
            Err(svmc_comm::Error::UnexpectedFrame {
                expected: FrameKind::Response,
                got: FrameKind::Chunk,
            }
            .into())
        })
    }

    /// [`Client::recv_response`], handing the `CHUNK`s of an answer
    /// stream to `on_chunk` (an error from it is returned, poisoning the
    /// client if fatal).
    fn recv_response_with(
        &mut self,
        on_chunk: &mut dyn FnMut(RequestId, &[u8]) -> Result<()>,
    ) -> Result<(RequestId, Result<P::Response>)> {
        self.core.check_usable()?;
        loop {
            if self.in_flight() == 0 {
                return Err(Error::Usage("recv_response() with no request in flight"));
            }
            let header = match self.read_frame() {
                Ok(h) => h,
                Err(e) => return Err(self.core.fail(e)),
            };
            match self.core.receive(header.kind, &mut self.buf)? {
                Event::Answer { id, answer, meta } => {
                    self.last_meta = meta.map(|m| (id, m));
                    return Ok((id, answer));
                }
                Event::Chunk { id, data } => {
                    if let Err(e) = on_chunk(id, &data) {
                        return Err(self.core.fail(e));
                    }
                }
                Event::Discarded => {}
            }
        }
    }

    /// Reads one frame into `buf`, within one deadline of the connection
    /// ([`Connection::begin`]), exactly its bytes.
    fn read_frame(&mut self) -> Result<Header> {
        self.conn.begin(Step::Read);
        let mut frame = FrameReader::new(self.core.max_body());
        loop {
            let n = match self.conn.recv(frame.want(&mut self.buf)) {
                Ok(0) => return Err(frame.closed()),
                Ok(n) => n,
                Err(Error::Timeout(step)) => return Err(frame.timed_out(step)),
                Err(e) => return Err(e),
            };
            if let Some(header) = frame.filled(n, &mut self.buf)? {
                return Ok(header);
            }
        }
    }

    /// Gives up on request `id`: its answer, when it comes, is discarded.
    /// Does nothing if `id` is not in flight.
    pub fn abandon(&mut self, id: RequestId) {
        self.core.abandon(id);
    }

    /// Sends `GOODBYE` and shuts the connection down (a poisoned client
    /// only shuts down: its stream may be inside a frame).
    pub fn close(mut self) -> Result<()> {
        let r = if self.core.poison().is_some() {
            Ok(())
        } else {
            send_frame(&mut self.conn, &frame::goodbye())
        };
        let s = self.conn.shutdown();
        r.and(s)
    }

    /// The connection, e.g. to send raw bytes in tests. Bytes sent or read
    /// through it behind the client's back are not tracked.
    pub fn connection(&mut self) -> &mut C {
        &mut self.conn
    }

    /// Gives the connection back without a `GOODBYE`.
    pub fn into_inner(self) -> C {
        self.conn
    }
}
