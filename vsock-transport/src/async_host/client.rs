//! The async client: one reader task routes every answer to the call
//! waiting for its id, one writer task writes whole frames in order.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use svmc_comm::ext::{Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, Header};
use svmc_comm::{Protocol, RequestId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::{AsyncStream, within};
use crate::framed::FrameReader;
use crate::rpc::client::sans_io::{self, ClientCore, Codec, Ended, Event};
use crate::{Error, Result, Step, Timeouts};

/// Frames queued for the writer task at most; a call waits for room.
const WRITE_QUEUE: usize = 64;

type Answer<P> = Result<<P as Protocol>::Response>;

/// An answer and the meta the server sent with it.
type Delivery<P> = (Answer<P>, Option<ResponseMeta>);

/// What the writer task is told to do.
enum Command {
    /// Write this frame, a `REQUEST` with this id.
    Request(RequestId, Vec<u8>),
    /// Write a `CANCEL` for this id if its request was written and is
    /// still unanswered.
    Cancel(RequestId),
    /// Write `GOODBYE`, shut the stream down, stop; then say how it went.
    Close(oneshot::Sender<Result<()>>),
}

/// Client side of a connection for async code: many tasks may call at once
/// (`&self`), each call with its own timeout. Tokio tasks under the
/// sans-IO core the blocking [`crate::rpc::Client`] runs on too, which
/// keeps the ids, the requests in flight and the rules below.
///
/// # How answers find their calls
///
/// Every call gets a fresh [`RequestId`] and is registered before its
/// `REQUEST` frame is queued; a reader task reads every frame and hands a
/// `RESPONSE` (or a non-fatal `ERROR`) to the call registered under its id
/// (an `ERROR` without an id to the oldest request written, as the server
/// answers in order). A writer task writes the queued frames one whole
/// frame at a time, so a cancelled call can never leave half a frame on
/// the stream.
///
/// # Cancellation and timeouts
///
/// Cancelling calls never ends the connection, however many are cancelled
/// at once. A call that times out ([`Error::Timeout`]`(`[`Step::Read`]`)`,
/// not fatal) or whose future is dropped is cancelled:
///
/// - if its frame was not written yet, it never is: the writer skips it,
///   so the server never sees that request;
/// - if it was written, its id is *abandoned* until the answer comes (the
///   server answers every request), then the answer is discarded and
///   counted ([`Client::discarded`]), never given to another call, and the
///   id is not reused before that. Abandoned ids take a few bytes each and
///   are bounded by the requests written and not yet answered.
///
/// # Errors that end the connection
///
/// An answer with an id that no call waits for, a frame that cannot be
/// delimited, a fatal `ERROR`, a close or a failed write end the
/// connection: every waiting call fails, and so does every later call
/// (the peer's close as [`Error::Closed`], the others as
/// [`Error::Poisoned`], whose [`source`](std::error::Error::source) is the
/// error itself with its causes, e.g. the OS error of a failed read).
pub struct Client<P: Protocol> {
    shared: Arc<Shared<P>>,
    frames: mpsc::Sender<Command>,
    reader: AbortHandle,
    writer: AbortHandle,
    /// Encodes requests (and the reader decodes answers) without the lock.
    codec: Codec<P>,
    call_timeout: Option<Duration>,
}

struct Shared<P: Protocol> {
    state: Mutex<State<P>>,
}

struct State<P: Protocol> {
    /// Calls waiting for their answer, by id: their frames queued or
    /// written. Only a call still here gets its frame written.
    waiting: HashMap<RequestId, oneshot::Sender<Delivery<P>>>,
    /// Requests written and not answered yet, live or abandoned; the next
    /// id; whether the connection ended and why.
    core: ClientCore<P>,
}

impl<P: Protocol> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection (first reason wins) and fails every waiting call.
    fn end(&self, why: Ended) {
        let mut st = self.lock();
        st.core.end(why);
        let why = st.core.ended().cloned().expect("set");
        for (_, tx) in st.waiting.drain() {
            let _ = tx.send((Err(why.error()), None));
        }
    }
}

/// Held by each I/O task: a task dropped before the connection ended
/// (its runtime shut down) ends it with [`Error::RuntimeGone`], so later
/// calls say so instead of blaming the peer.
struct EndIfDropped<P: Protocol>(Arc<Shared<P>>);

impl<P: Protocol> Drop for EndIfDropped<P> {
    fn drop(&mut self) {
        // First reason wins: after a normal end this changes nothing.
        self.0.end(Ended::RuntimeGone);
    }
}

impl<P: Protocol> fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Client")
            .field("protocol", &P::NAME)
            .field("peer_max_body", &self.codec.peer_max_body())
            .field("in_flight", &st.waiting.len())
            .field("abandoned", &st.core.abandoned())
            .field("discarded", &st.core.discarded())
            .field("ended", &st.core.ended().map(|e| e.error().to_string()))
            .finish_non_exhaustive()
    }
}

/// Reads one frame into `body` ([`FrameReader`]): its first byte whenever
/// it comes, the rest within `read` (else [`Error::TimeoutInFrame`]). A
/// clean close before the first byte is [`Error::Closed`].
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
    read: Option<Duration>,
    body: &mut Vec<u8>,
) -> Result<Header> {
    let mut frame = FrameReader::new(max);
    let mut next = async |frame: &mut FrameReader, body: &mut Vec<u8>, most: usize| {
        let want = frame.want(body);
        let most = most.min(want.len());
        match r.read(&mut want[..most]).await {
            Ok(0) => Err(frame.closed()),
            Ok(n) => frame.filled(n, body),
            Err(e) => Err(Error::io("reading a frame", e)),
        }
    };
    if let Some(header) = next(&mut frame, body, 1).await? {
        return Ok(header);
    }
    let rest = async {
        loop {
            if let Some(header) = next(&mut frame, body, usize::MAX).await? {
                return Ok(header);
            }
        }
    };
    match read {
        None => rest.await,
        Some(d) => match tokio::time::timeout(d, rest).await {
            Ok(r) => r,
            Err(_) => Err(frame.timed_out(Step::Read)),
        },
    }
}

impl<P: Protocol + 'static> Client<P>
where
    P::Response: Send,
{
    /// Exchanges `HELLO` frames on a fresh stream (within
    /// [`Timeouts::hello`]), then starts the reader and writer tasks (so it
    /// must run within a tokio runtime). The client belongs to that
    /// runtime: its calls may be made from anywhere, but once that runtime
    /// shuts down, the tasks are gone and every call fails with
    /// [`Error::RuntimeGone`]. `max_body` bounds the responses we
    /// accept. Calls time out after [`Timeouts::read`] unless
    /// [`Client::call_timeout`] says otherwise; frames are written within
    /// [`Timeouts::write`] and read within [`Timeouts::read`] once their
    /// first byte came.
    ///
    /// Fails before sending anything if `P::NAME` does not fit a `HELLO`
    /// ([`svmc_comm::Error::InvalidName`]).
    pub async fn hello<S: AsyncStream>(
        stream: S,
        max_body: u32,
        timeouts: &Timeouts,
    ) -> Result<Self> {
        let ours = Extensions::ALL;
        let mut hello = Vec::new();
        sans_io::hello_frame::<P>(max_body, ours, frame::HELLO_MAX_BODY, &mut hello)?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut body = Vec::new();
        let peer = within(timeouts.hello, Step::Hello, async {
            wr.write_all(&hello)
                .await
                .map_err(|e| crate::rpc::closed_before_hello(Error::io("sending HELLO", e)))?;
            let header = read_frame(&mut rd, frame::HELLO_MAX_BODY, None, &mut body)
                .await
                .map_err(crate::rpc::closed_before_hello)?;
            sans_io::peer_hello::<P>(header.kind, &body)
        })
        .await?;
        // No answer streams are read here: a `CHUNK` ends the connection.
        let core = ClientCore::new(max_body, ours, &peer, false);
        let codec = core.codec();

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                core,
            }),
        });
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(shared.clone(), wr, queue, timeouts.write));
        let reader = tokio::spawn(read_loop(
            shared.clone(),
            rd,
            codec,
            max_body,
            timeouts.read,
        ));
        Ok(Self {
            shared,
            frames,
            reader: reader.abort_handle(),
            writer: writer.abort_handle(),
            codec,
            call_timeout: timeouts.read,
        })
    }

    /// The extensions on for this connection (`WIRE.md` §10): those both
    /// sides offered. With `meta`, each call sends its timeout as the
    /// request's deadline; with `cancel`, a call that times out or is
    /// dropped after its frame was written sends a `CANCEL`.
    pub fn extensions(&self) -> Extensions {
        self.codec.extensions()
    }

    /// The largest request body the server accepts (from its `HELLO`).
    pub fn peer_max_body(&self) -> u32 {
        self.codec.peer_max_body()
    }

    /// Calls waiting for their answers now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// How many answers to cancelled calls (timed out or dropped) were
    /// discarded so far.
    pub fn discarded(&self) -> u64 {
        self.shared.lock().core.discarded()
    }

    /// Whether the connection ended (every call fails).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().core.ended().is_some()
    }

    /// Sends one request and waits for its answer, at most the default call
    /// timeout ([`Timeouts::read`] given to [`Client::hello`]).
    pub async fn call(&self, request: &P::Request) -> Result<P::Response> {
        self.call_timeout(request, self.call_timeout).await
    }

    /// Sends one request and waits for its answer at most `timeout`
    /// (`None`: as long as the connection lives). The time spent waiting
    /// for room in the writer's queue (behind other calls' frames) counts.
    ///
    /// A request over the server's maximum fails with
    /// [`svmc_comm::Error::TooLargeToSend`] before anything is queued; a
    /// server's non-fatal `ERROR` about it is [`svmc_comm::Error::Remote`]; a
    /// timeout is [`Error::Timeout`]`(`[`Step::Read`]`)` and cancels the
    /// call (its frame is not written if it was not yet; otherwise its
    /// answer is discarded). None of these end the connection.
    pub async fn call_timeout(
        &self,
        request: &P::Request,
        timeout: Option<Duration>,
    ) -> Result<P::Response> {
        let meta = sans_io::deadline_meta(timeout);
        self.call_meta(request, timeout, meta).await.map(|(a, _)| a)
    }

    /// [`Client::call_timeout`] with the request's meta given (`WIRE.md`
    /// §10.2: a deadline, a trace context, asking for the server's timings
    /// and the connection's statistics); returns the answer's meta with
    /// the answer. Where the `meta` extension is off, none is sent and
    /// none comes back.
    pub async fn call_with(
        &self,
        request: &P::Request,
        timeout: Option<Duration>,
        meta: &RequestMeta,
    ) -> Result<(P::Response, Option<ResponseMeta>)> {
        self.call_meta(request, timeout, meta.clone()).await
    }

    async fn call_meta(
        &self,
        request: &P::Request,
        timeout: Option<Duration>,
        mut meta: RequestMeta,
    ) -> Result<(P::Response, Option<ResponseMeta>)> {
        // Traced as the blocking client's calls are (`rpc` module docs):
        // a W3C traceparent when the call's span is enabled, and the
        // guest's timings as a child span.
        let call = crate::rpc::trace::Call::start(
            crate::rpc::trace::call_span!(P::NAME),
            self.extensions().meta,
            &mut meta,
        );
        let r = self.call_meta_in(request, timeout, meta, &call).await;
        if let Ok((_, Some(m))) = &r {
            call.answered(Some(m));
        }
        r
    }

    async fn call_meta_in(
        &self,
        request: &P::Request,
        timeout: Option<Duration>,
        meta: RequestMeta,
        call: &crate::rpc::trace::Call,
    ) -> Result<(P::Response, Option<ResponseMeta>)> {
        let (id, rx) = {
            let mut st = self.shared.lock();
            st.core.check_usable()?;
            let State { waiting, core } = &mut *st;
            let id = core.fresh_id(|id| waiting.contains_key(&id));
            call.sent(id);
            let (tx, rx) = oneshot::channel();
            waiting.insert(id, tx);
            (id, rx)
        };
        // From here on, a drop (cancellation) or an early return cancels
        // the call: its frame is not written, or its id is abandoned.
        let guard = Pending {
            shared: &self.shared,
            frames: self.extensions().cancel.then_some(&self.frames),
            id,
        };
        let mut f = Vec::new();
        // The frame is queued whole: the tail (a payload) is copied once.
        // The lock is not held while encoding: only the connection's
        // settings are read, and they do not change.
        self.codec.encode_request(id, request, &meta, &mut f)?;
        let exchange = async {
            if self.frames.send(Command::Request(id, f)).await.is_err() {
                return Err(self.ended_error());
            }
            Ok(rx.await)
        };
        let answer = match timeout {
            None => exchange.await?,
            Some(d) => match tokio::time::timeout(d, exchange).await {
                Ok(a) => a?,
                Err(_) => return Err(Error::Timeout(Step::Read)),
            },
        };
        guard.done();
        match answer {
            Ok((a, m)) => a.map(|a| (a, m)),
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Ends the connection; any task that shares the client (e.g. through
    /// an `Arc`) may call it. Every call waiting, and every later one,
    /// fails with [`Error::ShutDown`]; frames not written yet never are
    /// (their calls failed); `GOODBYE` follows the frame being written, if
    /// any, then the stream is shut down and the tasks stop.
    ///
    /// Waits until `GOODBYE` is written, within [`Timeouts::write`] for the
    /// frame being written and again for `GOODBYE`, and fails if it could
    /// not be. On a connection that already ended (another `shutdown`, a
    /// fatal error, the peer's close) it only stops the tasks, and is
    /// `Ok`.
    pub async fn shutdown(&self) -> Result<()> {
        let first = {
            let mut st = self.shared.lock();
            let first = st.core.ended().is_none();
            if first {
                st.core.end(Ended::ClosedByUs);
            }
            first
        };
        self.shared.end(Ended::ClosedByUs);
        let mut r = Ok(());
        if first {
            let (done, written) = oneshot::channel();
            if self.frames.send(Command::Close(done)).await.is_ok() {
                r = written.await.unwrap_or(Ok(()));
            }
        }
        self.reader.abort();
        r
    }

    /// [`Client::shutdown`] for a client owned alone.
    pub async fn close(self) -> Result<()> {
        self.shutdown().await
    }

    fn ended_error(&self) -> Error {
        match self.shared.lock().core.ended() {
            Some(why) => why.error(),
            None => Error::Closed,
        }
    }
}

impl<P: Protocol> Drop for Client<P> {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A registered call; dropping it before [`Pending::done`] cancels it.
struct Pending<'a, P: Protocol> {
    shared: &'a Shared<P>,
    /// Where a `CANCEL` is queued (the extension is on).
    frames: Option<&'a mpsc::Sender<Command>>,
    id: RequestId,
}

impl<P: Protocol> Pending<'_, P> {
    fn done(self) {
        self.shared.lock().waiting.remove(&self.id);
        std::mem::forget(self);
    }
}

impl<P: Protocol> Drop for Pending<'_, P> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.waiting.remove(&self.id).is_some() {
            // Not waiting any more: the writer skips its frame if it was
            // not written yet; if it was, its answer is discarded, and the
            // server is told it need not do the work (best effort: not if
            // the writer's queue is full).
            st.core.abandon(self.id);
            if let Some(frames) = self.frames
                && st.core.ended().is_none()
            {
                let _ = frames.try_send(Command::Cancel(self.id));
            }
        } else if st.core.ended().is_none() {
            // Its answer came as it was cancelled, and was never taken.
            st.core.discard_live();
        }
    }
}

async fn write_loop<P: Protocol, S: AsyncWrite>(
    shared: Arc<Shared<P>>,
    mut wr: WriteHalf<S>,
    mut queue: mpsc::Receiver<Command>,
    write: Option<Duration>,
) {
    let _end = EndIfDropped(shared.clone());
    while let Some(cmd) = queue.recv().await {
        let f = match cmd {
            Command::Request(id, f) => {
                let mut st = shared.lock();
                if !st.waiting.contains_key(&id) {
                    // Cancelled before its frame was written (or the
                    // connection ended): the server never sees it.
                    continue;
                }
                st.core.sent(id);
                f
            }
            Command::Cancel(id) => {
                let st = shared.lock();
                // Only a request written and still unanswered, whose
                // caller gave up.
                let mut f = Vec::new();
                if st.waiting.contains_key(&id)
                    || !matches!(st.core.encode_cancel(id, &mut f), Ok(true))
                {
                    continue;
                }
                f
            }
            Command::Close(done) => {
                // `shutdown` ended the connection before it sent this.
                let r = within(write, Step::Write, async {
                    wr.write_all(&frame::goodbye())
                        .await
                        .map_err(|e| Error::io("writing GOODBYE", e))?;
                    wr.shutdown()
                        .await
                        .map_err(|e| Error::io("shutting the stream down", e))
                })
                .await;
                let _ = done.send(r);
                return;
            }
        };
        let r = within(write, Step::Write, async {
            wr.write_all(&f)
                .await
                .map_err(|e| Error::io("writing a frame", e))
        })
        .await;
        if let Err(e) = r {
            shared.end(Ended::Poisoned(Arc::new(e)));
            return;
        }
    }
    // The client is gone: no more frames.
    let _ = wr.shutdown().await;
}

async fn read_loop<P: Protocol, S: AsyncRead>(
    shared: Arc<Shared<P>>,
    mut rd: ReadHalf<S>,
    codec: Codec<P>,
    max_body: u32,
    read: Option<Duration>,
) {
    let _end = EndIfDropped(shared.clone());
    let mut body = Vec::new();
    loop {
        let header = match read_frame(&mut rd, max_body, read, &mut body).await {
            Ok(h) => h,
            Err(Error::Closed) => return shared.end(Ended::Closed),
            Err(e) => return shared.end(Ended::Poisoned(Arc::new(e))),
        };
        // Decoded before taking the lock: calls go on meanwhile.
        let decoded = codec.decode(header.kind, &mut body);
        let mut st = shared.lock();
        match decoded.and_then(|d| st.core.resolve(d)) {
            Ok(Event::Answer { id, answer, meta }) => {
                if let Some(tx) = st.waiting.remove(&id) {
                    // The call may be gone this instant; then the answer
                    // is dropped.
                    let _ = tx.send((answer, meta));
                }
            }
            // Logged by the core; no `CHUNK` is taken (`chunks` off).
            Ok(Event::Discarded | Event::Chunk { .. }) => {}
            // Any error here ends the connection, fatal or not.
            Err(e) => {
                drop(st);
                return shared.end(Ended::Poisoned(Arc::new(e)));
            }
        }
    }
}

// Only the tasks touch the halves; the client itself is shared by tasks.
// Checked for every protocol whose responses can be sent between threads
// at once: a generic function's body is type-checked where it is written.
const fn _assert_send_sync<P: svmc_comm::Protocol<Response: Send>>() {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client<P>>();
}
