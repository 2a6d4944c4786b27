//! How a connection answers: a request read in full is answered in place,
//! typed, as a stream, or refused (no memory, cancelled, deadline passed,
//! too large for the client), and every answer and `ERROR` is queued for
//! sending ([`super::output`]).

use alloc::string::ToString;
use alloc::vec::Vec;

use svmc_comm::Protocol;
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};

use super::stream::{InStream, OutStream};
use super::{Answer, Ctx, Ended, Handler, InPlace, Pump, SMALL_BODY, ServerConn, Then};

/// When a request whose meta asked for timings arrived and started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) arrived: u64,
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

impl<P: Protocol> ServerConn<P> {
    /// Answers a request of `requested` body bytes that the budget has no
    /// room for.
    pub(super) fn no_memory(&mut self, id: Option<RequestId>, requested: u64) {
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

    /// Answers the request in the first `len` bytes of `body`.
    pub(super) fn request<H: Handler<P> + ?Sized>(
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
            if now.saturating_sub(arrived) >= crate::rpc::ahead::PUMP_GAP_US
                && !self
                    .ahead
                    .pumped_within(now, crate::rpc::ahead::PUMP_GAP_US)
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
        let mut head = self.output.take_spare();
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
        self.output.recycle(head);
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
    pub(super) fn refuse(&mut self, id: RequestId, code: ProtocolErrorCode) {
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
            if let Some(spent) = self.output.push_in_place(head, body, payload, reserved) {
                self.take_back(spent);
            }
        }
        if then == Then::Stop {
            self.stop(Ok(Ended::Stopped));
        }
    }

    pub(super) fn queue_response(
        &mut self,
        id: RequestId,
        response: &P::Response,
        reserved: usize,
        timing: Option<Timing>,
    ) {
        let mut out = self.output.take_spare();
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
    pub(super) fn report(&mut self, e: &svmc_comm::Error, id: Option<RequestId>) {
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
    pub(super) fn fatal(&mut self, e: svmc_comm::Error) {
        // An answer stream being sent ends here too: nothing follows a
        // fatal ERROR (R-ERR-1).
        self.out_stream = None;
        if let Some(mut report) = ProtocolError::from_error(&e) {
            report.fatal = true;
            self.queue_error(report);
        }
        self.stop(Err(e.into()));
    }

    pub(super) fn queue_error(&mut self, report: ProtocolError) {
        if !report.fatal {
            self.stats.errors += 1;
        }
        if let Ok(f) = frame::encode(FrameKind::Error, &report, frame::ERROR_MAX_BODY) {
            self.queue(f, 0);
        }
    }

    /// Queues the frame `bytes`, holding `reserved` bytes of the budget
    /// until it is sent.
    pub(super) fn queue(&mut self, bytes: Vec<u8>, reserved: usize) {
        self.output.push(bytes, reserved);
    }
}
