//! Streams (`comm/WIRE.md` §10.4): a request's data in `CHUNK`s handed to
//! a [`RequestStream`], and an answer's data produced by a
//! [`ResponseStream`] as the client takes it, one chunk at a time in
//! memory either way.

use alloc::boxed::Box;

use svmc_comm::Protocol;
use svmc_comm::envelope::RequestId;
use svmc_comm::ext::{self, RequestMeta};
use svmc_comm::frame::{FrameKind, ProtocolError, ProtocolErrorCode};

use super::answer::Timing;
use super::{Ctx, Ended, Handler, OUTPUT_HIGH_WATER, Pump, ServerConn, Then};

/// The data of a streamed request, taken piece by piece
/// ([`Handler::open_stream`]): the server holds one `CHUNK` at a time, so
/// a request of any size takes bounded memory.
pub trait RequestStream<P: Protocol> {
    /// The next piece of the data (at most `svmc_comm::ext::CHUNK_MAX_DATA`
    /// bytes). `Err(answer)` answers the request now; the rest of its data
    /// is read and dropped.
    fn chunk(&mut self, data: &[u8], ctx: &mut Ctx<'_>) -> core::result::Result<(), P::Response>;

    /// The data ended: the answer.
    fn finish(self: Box<Self>, ctx: &mut Ctx<'_>) -> (P::Response, Then);
}

/// What [`Handler::handle_streaming`] answers.
pub enum Answer<P: Protocol> {
    /// One response, as [`Handler::handle`] gives.
    Response(P::Response, Then),
    /// Data sent as `CHUNK`s, then the stream's final answer.
    Stream(Box<dyn ResponseStream<P>>),
}

/// An answer's data, produced piece by piece as the client takes it
/// ([`Answer::Stream`]): the server holds at most a window of it.
pub trait ResponseStream<P: Protocol> {
    /// Writes the next piece of the data into `buf` (at most
    /// `svmc_comm::ext::CHUNK_MAX_DATA` bytes) and returns its length; 0 ends
    /// the data.
    fn fill(&mut self, buf: &mut [u8]) -> usize;

    /// After the data: the final answer (a response, or the protocol's
    /// error if the data was cut short).
    fn finish(self: Box<Self>) -> (P::Response, Then);
}

/// An answer stream being sent.
pub(super) struct OutStream<P: Protocol> {
    id: RequestId,
    source: Box<dyn ResponseStream<P>>,
    timing: Option<Timing>,
}

/// A request stream open on a connection.
pub(super) struct InStream<P: Protocol> {
    id: RequestId,
    /// `None` once the request is answered (refused, cancelled): its
    /// data is dropped until the end.
    sink: Option<Box<dyn RequestStream<P>>>,
    timing: Option<Timing>,
    deadline_us: Option<u64>,
    traceparent: Option<alloc::string::String>,
}

impl<P: Protocol> OutStream<P> {
    pub(super) fn new(
        id: RequestId,
        source: Box<dyn ResponseStream<P>>,
        timing: Option<Timing>,
    ) -> Self {
        Self { id, source, timing }
    }
}

impl<P: Protocol> InStream<P> {
    /// The stream of a request answered already: its data is dropped.
    pub(super) fn dropping(id: RequestId) -> Self {
        Self {
            id,
            sink: None,
            timing: None,
            deadline_us: None,
            traceparent: None,
        }
    }
}

impl<P: Protocol> ServerConn<P> {
    /// A `CANCEL` of request `id` read in its turn: the request stream or
    /// answer stream of that id, if open, ends with `cancelled` (the
    /// answer stream's chunks sent so far come before it).
    pub(super) fn cancel_streams(&mut self, id: RequestId) {
        if let Some(st) = &mut self.stream
            && st.id == id
            && st.sink.take().is_some()
        {
            self.ahead.done();
            self.refuse(id, ProtocolErrorCode::Cancelled);
        }
        if self.out_stream.take_if(|o| o.id == id).is_some() {
            self.refuse(id, ProtocolErrorCode::Cancelled);
        }
    }

    /// Opens the request stream of request `id` (its meta said `stream`).
    pub(super) fn open_stream<H: Handler<P> + ?Sized>(
        &mut self,
        id: RequestId,
        request: P::Request,
        meta: RequestMeta,
        timing: Option<Timing>,
        handler: &mut H,
        read_ahead: Pump<'_>,
    ) {
        if self.ahead.current != Some(id) && self.ahead.starts(id) {
            self.ahead.done();
            // Its data still comes: dropped until the end.
            self.stream = Some(InStream::dropping(id));
            return self.refuse(id, ProtocolErrorCode::Cancelled);
        }
        let deadline_us = meta.deadline_ms.map(|ms| {
            timing
                .map_or(0, |t| t.arrived)
                .saturating_add(u64::from(ms) * 1000)
        });
        let mut ctx = Ctx {
            id,
            traceparent: meta.traceparent.as_deref(),
            deadline_us,
            now_us: self.now_us,
            ahead: &mut self.ahead,
            pump: read_ahead,
        };
        let opened = handler.open_stream(request, &mut ctx);
        let sink = match opened {
            Some(Ok(sink)) if !self.ahead.current_cancelled => Some(sink),
            Some(Ok(_)) => {
                self.refuse(id, ProtocolErrorCode::Cancelled);
                None
            }
            Some(Err((response, then))) => {
                self.queue_response(id, &response, 0, timing);
                if then == Then::Stop {
                    self.stop(Ok(Ended::Stopped));
                }
                None
            }
            None => {
                self.queue_error(
                    ProtocolError::new(
                        ProtocolErrorCode::BadMessage,
                        false,
                        "this request takes no stream: its data is dropped",
                    )
                    .with_id(Some(id)),
                );
                None
            }
        };
        if sink.is_none() {
            self.ahead.done();
        }
        self.stream = Some(InStream {
            id,
            sink,
            timing,
            deadline_us,
            traceparent: meta.traceparent,
        });
    }

    /// A `CHUNK` of the open request stream.
    pub(super) fn chunk(&mut self, body: &[u8], read_ahead: Pump<'_>) {
        let (id, data) = match ext::decode_chunk(body) {
            Ok(v) => v,
            Err(e) => return self.report(&e, None),
        };
        let Some(mut st) = self.stream.take_if(|st| st.id == id) else {
            // Out of step with the client: no stream of that id is open.
            return self.fatal(svmc_comm::Error::UnexpectedFrame {
                expected: if self.stream.is_some() {
                    FrameKind::Chunk
                } else {
                    FrameKind::Request
                },
                got: FrameKind::Chunk,
            });
        };
        let Some(mut sink) = st.sink.take() else {
            // Answered already: the data is dropped until the end.
            if data.is_some() {
                self.stream = Some(st);
            }
            return;
        };
        let mut ctx = Ctx {
            id,
            traceparent: st.traceparent.as_deref(),
            deadline_us: st.deadline_us,
            now_us: self.now_us,
            ahead: &mut self.ahead,
            pump: read_ahead,
        };
        match data {
            Some(d) if !ctx.ahead.current_cancelled => match sink.chunk(&d, &mut ctx) {
                Ok(()) if !self.ahead.current_cancelled => st.sink = Some(sink),
                Ok(()) => {
                    self.ahead.done();
                    self.refuse(id, ProtocolErrorCode::Cancelled);
                }
                Err(response) => {
                    self.ahead.done();
                    self.queue_response(id, &response, 0, st.timing);
                }
            },
            Some(_) => {
                self.ahead.done();
                self.refuse(id, ProtocolErrorCode::Cancelled);
            }
            None => {
                let (response, then) = sink.finish(&mut ctx);
                if self.ahead.done() {
                    self.refuse(id, ProtocolErrorCode::Cancelled);
                } else {
                    self.queue_response(id, &response, 0, st.timing);
                }
                if then == Then::Stop {
                    self.stop(Ok(Ended::Stopped));
                }
                return;
            }
        }
        self.stream = Some(st);
    }

    /// Queues the next pieces of the answer stream being sent, if any,
    /// while less than [`OUTPUT_HIGH_WATER`] bytes wait to be sent, and its
    /// final answer after its data; `true` if it queued anything. Drivers
    /// call it whenever output went out.
    pub fn produce(&mut self) -> bool {
        let mut queued = false;
        while self.output.bytes() < OUTPUT_HIGH_WATER {
            let Some(mut o) = self.out_stream.take() else {
                break;
            };
            let mut piece = alloc::vec![0u8; ext::CHUNK_MAX_DATA];
            let n = o.source.fill(&mut piece).min(ext::CHUNK_MAX_DATA);
            queued = true;
            if n == 0 {
                let (response, then) = o.source.finish();
                self.queue_response(o.id, &response, 0, o.timing);
                if then == Then::Stop {
                    self.stop(Ok(Ended::Stopped));
                }
                break;
            }
            let mut f = self.output.take_spare();
            match ext::encode_chunk_into(o.id, Some(&piece[..n]), &mut f) {
                Ok(()) => self.queue(f, 0),
                Err(e) => {
                    self.report(&e, Some(o.id));
                    break;
                }
            }
            self.out_stream = Some(o);
        }
        queued
    }
}
