//! The client side: `HELLO`, then requests, each tied to its answer by a
//! request id (see [`Client`]).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use svmc_comm::ext::{self, Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, FrameKind, ProtocolError};
use svmc_comm::{Protocol, RequestId};

use super::flight::{Answered, InFlight};
use super::hello;
#[cfg(feature = "std")]
use super::trace;
use crate::framed::{recv_frame, send_frame};
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

/// Client side of a connection: ids, pipelining, late-answer discard and
/// poisoning.
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
///   `ERROR`...) the stream may be out of step: the client is *poisoned*.
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
    max_body: u32,
    peer_max_body: u32,
    buf: Vec<u8>,
    /// Requests sent and not answered, in send order (abandoned ones
    /// included), and the next id.
    flight: InFlight,
    /// Set by the first fatal error: a copy of it.
    poisoned: Option<Arc<Error>>,
    /// The extensions on for this connection (`WIRE.md` §10).
    ext: Extensions,
    /// The deadline sent with each request; `None`: the connection's read
    /// timeout.
    deadline: Option<core::time::Duration>,
    /// The meta of the last answer received, if it had one.
    last_meta: Option<(RequestId, ResponseMeta)>,
    _protocol: PhantomData<fn() -> P>,
}

impl<C: Connection, P: Protocol> fmt::Debug for Client<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &P::NAME)
            .field("max_body", &self.max_body)
            .field("peer_max_body", &self.peer_max_body)
            .field("in_flight", &self.in_flight())
            .field("abandoned", &self.abandoned())
            .field("discarded", &self.discarded())
            .field("poisoned", &self.poisoned)
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
            max_body,
            peer_max_body: peer.max_body,
            buf,
            flight: InFlight::new(),
            poisoned: None,
            ext: ext.both(peer.extensions()),
            deadline: None,
            last_meta: None,
            _protocol: PhantomData,
        })
    }

    /// The extensions on for this connection: those both sides offered.
    pub fn extensions(&self) -> Extensions {
        self.ext
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
        let deadline = self.deadline.or_else(|| self.conn.read_timeout());
        RequestMeta {
            deadline_ms: deadline.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            ..RequestMeta::default()
        }
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
        self.peer_max_body
    }

    /// Requests sent whose answers are still expected by the caller (not
    /// counting abandoned ones).
    pub fn in_flight(&self) -> usize {
        self.flight.live()
    }

    /// Requests given up on (timed out) whose answers have not come yet.
    pub fn abandoned(&self) -> usize {
        self.flight.abandoned()
    }

    /// How many late answers to abandoned requests were discarded so far.
    pub fn discarded(&self) -> u64 {
        self.flight.discarded()
    }

    /// Whether an earlier fatal error poisoned this client.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
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
        self.check_usable()?;
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        #[cfg(feature = "std")]
        let span = tracing::info_span!(
            "svmc.call",
            protocol = P::NAME,
            id = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        #[cfg(feature = "std")]
        let _entered = span.enter();
        let mut meta = self.default_meta();
        #[cfg(feature = "std")]
        let trace = (!span.is_disabled() && self.ext.meta).then(trace::Context::new);
        #[cfg(feature = "std")]
        if let Some(t) = &trace {
            meta.traceparent = Some(t.traceparent());
            span.record("trace_id", tracing::field::display(t.trace_id()));
        }
        let id = self.send_request_with(request, &meta)?;
        #[cfg(feature = "std")]
        span.record("id", id.0);
        let r = self.wait_for(id);
        #[cfg(feature = "std")]
        if let (Some(t), Some(m)) = (&trace, self.answer_meta(id)) {
            trace::guest_span(&span, t, m);
        }
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
        self.check_usable()?;
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_with() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let id = self.send_request_with(request, meta)?;
        let answer = self.wait_for(id)?;
        Ok((answer, self.answer_meta(id).cloned()))
    }

    /// Sends a streamed request (`WIRE.md` §10.4): `request`, then all of
    /// `data` read to its end in `CHUNK`s of at most
    /// `svmc_comm::ext::CHUNK_MAX_DATA` bytes, then the end of the stream; and
    /// waits for the answer. Memory stays bounded however long `data`
    /// is; `progress` is called with the bytes sent so far after each
    /// chunk. Needs the `stream` extension on ([`Client::extensions`]):
    /// else [`Error::Usage`] before anything is sent.
    ///
    /// A read error of `data` cancels the request (a `CANCEL`; its answer
    /// is discarded when it comes) and is returned as [`Error::Io`]. The
    /// server may answer before the end of the data (a refusal): the rest
    /// is still sent, and dropped by the server.
    #[cfg(feature = "std")]
    pub fn call_stream(
        &mut self,
        request: &P::Request,
        data: &mut dyn std::io::Read,
        mut progress: impl FnMut(u64),
    ) -> Result<P::Response> {
        self.check_usable()?;
        if !self.ext.stream {
            return Err(Error::Usage(
                "call_stream(): the server does not take request streams (no `stream` extension)",
            ));
        }
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_stream() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let meta = RequestMeta {
            stream: true,
            ..self.default_meta()
        };
        let id = self.send_request_with(request, &meta)?;
        let mut piece = alloc::vec![0u8; ext::CHUNK_MAX_DATA];
        let mut sent = 0u64;
        loop {
            let n = match data.read(&mut piece) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.abandon(id);
                    let _ = self.cancel(id);
                    // The stream must end for the connection to stay in
                    // step; the answer (`cancelled`) is discarded.
                    let _ = self.send_chunk(id, None);
                    return Err(Error::io("reading the data to stream", e));
                }
            };
            if n == 0 {
                break;
            }
            self.send_chunk(id, Some(&piece[..n]))?;
            sent += n as u64;
            progress(sent);
        }
        self.send_chunk(id, None)?;
        self.wait_for(id)
    }

    /// Sends `request` taking its answer as a stream (`WIRE.md` §10.4):
    /// the answer's data, of any length, is written to `out` as its
    /// `CHUNK`s come (one at a time in memory), then the final answer is
    /// returned. Needs the `stream` extension on ([`Error::Usage`]
    /// otherwise); a request whose handler answers plainly just returns
    /// that answer, nothing written.
    ///
    /// A write error of `out` cancels the request; the rest of its data is
    /// read and dropped and the error returned as [`Error::Io`].
    #[cfg(feature = "std")]
    pub fn call_stream_answer(
        &mut self,
        request: &P::Request,
        out: &mut dyn std::io::Write,
    ) -> Result<P::Response> {
        self.check_usable()?;
        if !self.ext.stream {
            return Err(Error::Usage(
                "call_stream_answer(): the server sends no answer streams (no `stream` extension)",
            ));
        }
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_stream_answer() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let meta = RequestMeta {
            stream_answer: true,
            ..self.default_meta()
        };
        let id = self.send_request_with(request, &meta)?;
        let mut failed: Option<std::io::Error> = None;
        let r = self.recv_response_with(&mut |got, data| {
            if got != id {
                return Err(svmc_comm::Error::UnexpectedId(got).into());
            }
            out.write_all(data).map_err(|e| {
                failed = Some(e);
                Error::Usage("the answer stream's writer failed")
            })
        });
        if let Some(e) = failed {
            // The server need not produce the rest: its data, and the
            // answer (`cancelled`), are discarded when they come.
            self.abandon(id);
            let _ = self.cancel(id);
            return Err(Error::io("writing an answer stream", e));
        }
        let (got, answer) = r?;
        debug_assert_eq!(got, id, "the only live request");
        answer
    }

    #[cfg(feature = "std")]
    fn send_chunk(&mut self, id: RequestId, data: Option<&[u8]>) -> Result<()> {
        self.buf.clear();
        ext::encode_chunk_into(id, data, &mut self.buf)?;
        match send_frame(&mut self.conn, &self.buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
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
        self.check_usable()?;
        if !self.ext.cancel || !self.flight.contains(id) {
            return Ok(false);
        }
        let mut f = Vec::new();
        frame::encode_into(
            FrameKind::Cancel,
            &ext::Cancel { id },
            ext::CANCEL_MAX_BODY,
            &mut f,
        )?;
        match send_frame(&mut self.conn, &f) {
            Ok(()) => Ok(true),
            Err(e) => Err(self.failed(e)),
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
        self.check_usable()?;
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
        self.check_usable()?;
        let id = self.flight.fresh_id(|_| false);
        self.buf.clear();
        // The frame goes out whole from `buf`, the payload copied after
        // the head. Sending head + payload from where it lies (one
        // vectored write, `framed::send_frame_parts`) saves that copy on
        // the host, but measured about 2x slower end to end against the
        // firmware (`cargo xtask bench`, 1 MiB and 8 MiB `Reverse`, same
        // bytes on the wire; see BENCHMARKS.md).
        let tail = P::encode_request(id, request, self.peer_max_body, &mut self.buf)?;
        if self.ext.meta && !meta.is_empty() {
            match ext::insert_request_meta(&mut self.buf, 0, tail.len(), meta, self.peer_max_body) {
                // The meta is advisory (a deadline, timings): a request of
                // the server's whole `max_body` goes without it. A stream
                // cannot: its request is small anyway.
                Err(svmc_comm::Error::TooLargeToSend { .. })
                    if !(meta.stream || meta.stream_answer) => {}
                r => r?,
            }
        }
        self.buf.extend_from_slice(tail);
        if let Err(e) = send_frame(&mut self.conn, &self.buf) {
            return Err(self.failed(e));
        }
        self.flight.sent(id);
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
        self.check_usable()?;
        loop {
            if self.in_flight() == 0 {
                return Err(Error::Usage("recv_response() with no request in flight"));
            }
            let header = match recv_frame(&mut self.conn, self.max_body, &mut self.buf) {
                Ok(h) => h,
                Err(e) => return Err(self.failed(e)),
            };
            let (id, answer) = match header.kind {
                FrameKind::Chunk if self.ext.stream => {
                    let r = match ext::decode_chunk(&self.buf) {
                        // An abandoned request's data is discarded with it.
                        Ok((id, Some(_))) if self.flight.is_abandoned(id) => Ok(()),
                        Ok((id, Some(data))) => on_chunk(id, &data),
                        // The end marker is only for request streams.
                        Ok((_, None)) => Err(svmc_comm::Error::Malformed(
                            "an answer stream's CHUNK without data".into(),
                        )
                        .into()),
                        Err(e) => Err(e.into()),
                    };
                    match r {
                        Ok(()) => continue,
                        Err(e) => return Err(self.failed(e)),
                    }
                }
                FrameKind::Response if self.ext.meta => {
                    match ext::split_meta::<ResponseMeta>(&mut self.buf) {
                        Ok((start, meta)) => {
                            let (id, r) = P::decode_response(&self.buf[start..]);
                            self.last_meta = id.zip(meta);
                            (id, r.map_err(Error::from))
                        }
                        Err((id, e)) => (id, Err(e.into())),
                    }
                }
                FrameKind::Response => {
                    let (id, r) = P::decode_response(&self.buf);
                    (id, r.map_err(Error::from))
                }
                FrameKind::Error => match frame::decode_body::<ProtocolError>(&self.buf) {
                    Ok(pe) if pe.fatal => {
                        return Err(self.failed(svmc_comm::Error::Remote(pe).into()));
                    }
                    Ok(pe) => (pe.id, Err(svmc_comm::Error::Remote(pe).into())),
                    Err(e) => (None, Err(e.into())),
                },
                got => (
                    None,
                    Err(svmc_comm::Error::UnexpectedFrame {
                        expected: FrameKind::Response,
                        got,
                    }
                    .into()),
                ),
            };
            // By id, or the oldest in flight (answers come in order).
            match self.flight.answered(id) {
                Ok(Answered::Live(id)) => return Ok((id, answer)),
                Ok(Answered::Discarded(id)) => log_discard!(
                    "{}: discarded a late answer to abandoned request {} ({} so far)",
                    P::NAME,
                    id,
                    self.flight.discarded()
                ),
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Gives up on request `id`: its answer, when it comes, is discarded.
    /// Does nothing if `id` is not in flight.
    pub fn abandon(&mut self, id: RequestId) {
        self.flight.abandon(id);
    }

    /// Sends `GOODBYE` and shuts the connection down (a poisoned client
    /// only shuts down: its stream may be inside a frame).
    pub fn close(mut self) -> Result<()> {
        let r = if self.poisoned.is_some() {
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

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(first) => Err(Error::Poisoned {
                source: first.clone(),
            }),
        }
    }

    /// Poisons the client if `e` is fatal; returns `e`.
    fn failed(&mut self, e: Error) -> Error {
        if e.is_fatal() && self.poisoned.is_none() {
            self.poisoned = Some(Arc::new(e.duplicate()));
        }
        e
    }
}

#[cfg(all(test, feature = "test-utils"))]
mod tests {
    use std::io::Write;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::mock::{self, MockConnection};
    use crate::rpc::test_protocol::{Request, Response, TestVm};
    use svmc_comm::Hello;
    use svmc_comm::envelope;
    use svmc_comm::frame::{DEFAULT_MAX_BODY, ProtocolErrorCode};

    /// A client over a mock pair, and the server's raw end after the HELLO
    /// exchange.
    fn pair() -> (Client<MockConnection, TestVm>, MockConnection) {
        let (a, mut b) = mock::pair();
        let t = thread::spawn(move || Client::<_, TestVm>::hello(a, DEFAULT_MAX_BODY));
        let hello = frame::encode(
            FrameKind::Hello,
            &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
            DEFAULT_MAX_BODY,
        )
        .unwrap();
        b.send(&hello).unwrap();
        let mut buf = Vec::new();
        recv_frame(&mut b, DEFAULT_MAX_BODY, &mut buf).unwrap();
        (t.join().unwrap().unwrap(), b)
    }

    /// Reads one request on the server's end: its id and request.
    fn read_request(b: &mut MockConnection) -> (RequestId, Request) {
        let mut buf = Vec::new();
        let h = recv_frame(b, DEFAULT_MAX_BODY, &mut buf).unwrap();
        assert_eq!(h.kind, FrameKind::Request);
        let (id, r) = envelope::decode::<Request>(&buf);
        (id.unwrap(), r.unwrap())
    }

    fn answer(b: &mut MockConnection, id: RequestId, r: &Response) {
        let mut f = Vec::new();
        envelope::encode_response_into(id, r, DEFAULT_MAX_BODY, &mut f).unwrap();
        b.send(&f).unwrap();
    }

    fn rev(s: &[u8]) -> Request {
        Request::Reverse(s.to_vec())
    }

    #[test]
    fn pipelined_answers_are_matched_by_id_in_any_order() {
        let (mut c, mut b) = pair();
        let ids: Vec<_> = (0..4u8)
            .map(|i| c.send_request(&rev(&[i])).unwrap())
            .collect();
        assert_eq!(c.in_flight(), 4);
        let mut got: Vec<_> = (0..4).map(|_| read_request(&mut b)).collect();
        got.reverse();
        for (id, r) in &got {
            let Request::Reverse(p) = r else { panic!() };
            answer(&mut b, *id, &Response::Reverse(p.clone()));
        }
        for &(id, _) in &got {
            let (rid, r) = c.recv_response().unwrap();
            assert_eq!(rid, id);
            assert_eq!(
                r.unwrap(),
                Response::Reverse(vec![ids.iter().position(|&x| x == id).unwrap() as u8])
            );
        }
        assert_eq!(c.in_flight(), 0);
        assert!(matches!(c.recv_response(), Err(Error::Usage(_))));
    }

    #[test]
    fn unknown_and_duplicate_ids_poison_the_client() {
        let (mut c, mut b) = pair();
        let id = c.send_request(&rev(b"a")).unwrap();
        read_request(&mut b);
        answer(&mut b, RequestId(id.0 + 100), &Response::PowerOff);
        let e = c.recv_response().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(RequestId(x))) if x == id.0 + 100),
            "{e:?}"
        );
        assert!(e.is_fatal());
        assert!(c.is_poisoned());
        // Never touches the stream again.
        let e = c.call(&Request::Info).unwrap_err();
        assert!(
            matches!(&e, Error::Poisoned { source }
                if matches!(**source, Error::Protocol(svmc_comm::Error::UnexpectedId(_)))),
            "{e:?}"
        );
        assert!(e.to_string().contains("reconnect"), "{e}");
        assert!(e.is_fatal());

        let (mut c, mut b) = pair();
        let id = c.send_request(&rev(b"a")).unwrap();
        read_request(&mut b);
        answer(&mut b, id, &Response::PowerOff);
        answer(&mut b, id, &Response::PowerOff);
        assert_eq!(c.recv_response().unwrap().0, id);
        let id2 = c.send_request(&rev(b"b")).unwrap();
        assert_ne!(id2, id);
        let e = c.recv_response().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(x)) if x == id),
            "{e:?}"
        );
    }

    #[test]
    fn hundreds_of_abandoned_requests_are_discarded_when_answered() {
        let (mut c, mut b) = pair();
        // Each small write takes a socket buffer's slot: answer meanwhile.
        let server = thread::spawn(move || {
            for _ in 0..301 {
                let (id, r) = read_request(&mut b);
                let Request::Reverse(p) = r else { panic!() };
                answer(&mut b, id, &Response::Reverse(p));
            }
            b
        });
        let abandoned: Vec<_> = (0..300u16)
            .map(|i| c.send_request(&rev(&i.to_be_bytes())).unwrap())
            .collect();
        for &id in &abandoned {
            c.abandon(id);
        }
        assert_eq!((c.in_flight(), c.abandoned()), (0, 300));
        let live = c.send_request(&rev(b"live")).unwrap();
        assert!(!abandoned.contains(&live), "no id reused while abandoned");
        let (id, r) = c.recv_response().unwrap();
        assert_eq!(
            (id, r.unwrap()),
            (live, Response::Reverse(b"live".to_vec()))
        );
        assert_eq!((c.discarded(), c.abandoned()), (300, 0));
        assert!(!c.is_poisoned());
        drop(server.join().unwrap());
    }

    #[test]
    fn an_error_without_id_answers_the_oldest_and_is_not_fatal() {
        let (mut c, mut b) = pair();
        let first = c.send_request(&rev(b"a")).unwrap();
        let second = c.send_request(&rev(b"b")).unwrap();
        let pe = ProtocolError::new(ProtocolErrorCode::BadMessage, false, "bad");
        b.send(&frame::encode(FrameKind::Error, &pe, 1024).unwrap())
            .unwrap();
        let pe2 = pe.clone().with_id(Some(second));
        b.send(&frame::encode(FrameKind::Error, &pe2, 1024).unwrap())
            .unwrap();
        let (id, r) = c.recv_response().unwrap();
        assert_eq!(id, first);
        let e = r.unwrap_err();
        assert!(
            matches!(&e, Error::Protocol(svmc_comm::Error::Remote(p)) if *p == pe),
            "{e:?}"
        );
        assert!(!e.is_fatal());
        let (id, r) = c.recv_response().unwrap();
        assert_eq!(id, second);
        assert!(r.is_err());
        assert!(!c.is_poisoned());
        // A fatal one poisons.
        c.send_request(&rev(b"c")).unwrap();
        let pe = ProtocolError::new(ProtocolErrorCode::TooLarge, true, "bye");
        b.send(&frame::encode(FrameKind::Error, &pe, 1024).unwrap())
            .unwrap();
        assert!(c.recv_response().unwrap_err().is_fatal());
        assert!(c.is_poisoned());
    }

    #[test]
    fn call_many_keeps_request_order_and_the_window() {
        let (mut c, mut b) = pair();
        let server = thread::spawn(move || {
            // Answers in batches of 3, in reverse, to check the matching.
            let mut seen = 0;
            while seen < 7 {
                let n = 3.min(7 - seen);
                let mut reqs: Vec<_> = (0..n).map(|_| read_request(&mut b)).collect();
                seen += n;
                reqs.reverse();
                for (id, r) in reqs {
                    let Request::Reverse(mut p) = r else { panic!() };
                    p.reverse();
                    answer(&mut b, id, &Response::Reverse(p));
                }
            }
            b
        });
        let reqs: Vec<_> = (0..7u8).map(|i| rev(&[i, b'x'])).collect();
        let answers = c.call_many(&reqs, 3).unwrap();
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap(), Response::Reverse(vec![b'x', i as u8]));
        }
        drop(server.join().unwrap());
    }

    #[test]
    fn a_timeout_inside_a_frame_poisons_and_close_sends_no_goodbye() {
        use crate::host_stream::{HostStream, Peer};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = crate::Timeouts {
            read: Some(Duration::from_millis(100)),
            ..crate::Timeouts::uniform(Duration::from_secs(5))
        };
        let conn = HostStream::new(a, Peer::Other("test".into()), t);
        let srv = thread::spawn(move || {
            let mut f = Vec::new();
            frame::encode_into(
                FrameKind::Hello,
                &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
                DEFAULT_MAX_BODY,
                &mut f,
            )
            .unwrap();
            b.write_all(&f).unwrap();
            b
        });
        let mut c = Client::<_, TestVm>::hello(conn, DEFAULT_MAX_BODY).unwrap();
        let mut b = srv.join().unwrap();
        b.write_all(&[3, 0, 0]).unwrap(); // part of a header
        let e = c.call(&Request::Info).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TimeoutInFrame {
                    step: Step::Read,
                    got: 3
                }
            ),
            "{e:?}"
        );
        assert!(e.is_fatal() && c.is_poisoned());
        let e = c.send_request(&Request::Info).unwrap_err();
        let Error::Poisoned { source } = &e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(**source, Error::TimeoutInFrame { got: 3, .. }),
            "the first error is kept: {e:?}"
        );
        c.close().unwrap();
    }

    #[test]
    fn frame_parts_go_out_whole_through_short_vectored_writes() {
        use crate::framed::send_frame_parts;
        use crate::host_stream::{HostStream, Peer};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut conn = HostStream::new(a, Peer::Other("test".into()), crate::Timeouts::default());
        // Larger than a socket buffer: sendmsg writes short, and what is
        // left of the head and the tail follows.
        let head: Vec<u8> = (0..21u8).collect();
        let tail: Vec<u8> = (0..1_500_000u32).map(|i| (i * 13) as u8).collect();
        let total = head.len() + tail.len();
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; total];
            std::io::Read::read_exact(&mut b, &mut got).unwrap();
            got
        });
        send_frame_parts(&mut conn, &head, &tail).unwrap();
        assert_eq!(reader.join().unwrap(), [&head[..], &tail[..]].concat());
    }

    #[test]
    fn a_large_reverse_goes_out_as_the_generic_encoding() {
        use crate::host_stream::{HostStream, Peer};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = HostStream::new(a, Peer::Other("test".into()), crate::Timeouts::default());
        let srv = thread::spawn(move || {
            let mut f = Vec::new();
            frame::encode_into(
                FrameKind::Hello,
                &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
                DEFAULT_MAX_BODY,
                &mut f,
            )
            .unwrap();
            b.write_all(&f).unwrap();
            let mut hello = Vec::new();
            recv_frame(&mut MockStream(&mut b), DEFAULT_MAX_BODY, &mut hello).unwrap();
            let mut body = Vec::new();
            let h = recv_frame(&mut MockStream(&mut b), DEFAULT_MAX_BODY, &mut body).unwrap();
            assert_eq!(h.kind, FrameKind::Request);
            let mut raw = h.to_bytes().to_vec();
            raw.extend_from_slice(&body);
            let (id, r) = envelope::decode::<Request>(&body);
            let Ok(Request::Reverse(mut p)) = r else {
                panic!("{r:?}")
            };
            p.reverse();
            let mut f = Vec::new();
            envelope::encode_response_into(id.unwrap(), &Response::Reverse(p), u32::MAX, &mut f)
                .unwrap();
            b.write_all(&f).unwrap();
            raw
        });
        let mut c = Client::<_, TestVm>::hello(conn, DEFAULT_MAX_BODY).unwrap();
        // Larger than a socket buffer: the send writes short, the rest follows.
        let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7) as u8).collect();
        let request = Request::Reverse(payload.clone());
        let answer = c.call(&request).unwrap();
        let mut want = Vec::new();
        envelope::encode_request_into(RequestId(1), &request, u32::MAX, &mut want).unwrap();
        assert_eq!(
            srv.join().unwrap(),
            want,
            "the generic encoding, byte for byte"
        );
        let mut reversed = payload;
        reversed.reverse();
        assert_eq!(answer, Response::Reverse(reversed));
    }

    /// A `Connection` on a raw Unix socket, for the test server above.
    struct MockStream<'a>(&'a mut std::os::unix::net::UnixStream);

    impl Connection for MockStream<'_> {
        fn send(&mut self, buf: &[u8]) -> Result<()> {
            self.0.write_all(buf).map_err(|e| Error::io("send", e))
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
            std::io::Read::read(self.0, buf).map_err(|e| Error::io("recv", e))
        }
        fn shutdown(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// A protocol whose name no HELLO can carry (WIRE.md: 1 to 64 bytes).
    struct LongName;
    impl Protocol for LongName {
        const NAME: &'static str = "org.example.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.lo";
        const VERSION: u32 = 1;
        type Request = Request;
        type Response = Response;
    }

    #[test]
    fn a_name_over_64_bytes_fails_before_anything_is_sent() {
        assert_eq!(LongName::NAME.len(), 280);
        let (a, mut b) = mock::pair();
        let e = Client::<_, LongName>::hello(a, DEFAULT_MAX_BODY).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol(svmc_comm::Error::InvalidName {
                    len: 280,
                    max: 64,
                    ..
                })
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("HELLO") && text.contains(LongName::NAME),
            "{text}"
        );
        // Nothing went out: the client dropped its end, so the peer reads EOF.
        let mut byte = [0u8; 1];
        assert_eq!(b.recv(&mut byte).unwrap(), 0);

        // The server refuses the same way, before its HELLO.
        struct Never;
        impl crate::rpc::Handler<LongName> for Never {
            fn handle(&mut self, _: Request) -> (Response, crate::rpc::Then) {
                unreachable!()
            }
        }
        let (mut a, mut b) = mock::pair();
        let e = crate::rpc::serve::<LongName, _, _>(&mut a, &mut Never, Default::default())
            .unwrap_err();
        assert!(e.to_string().contains(LongName::NAME), "{e}");
        assert_eq!(b.recv(&mut byte).unwrap(), 0);
    }
}
