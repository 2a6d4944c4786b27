//! The async client: one reader task routes every answer to the call
//! waiting for its id, one writer task writes whole frames in order.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError};
use comm::{Hello, Protocol, RequestId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{AsyncStream, within};
#[allow(deprecated)] // this client still forgets abandoned ids beyond it
use crate::rpc::MAX_ABANDONED;
use crate::{Error, Result, Step, Timeouts};

/// Frames queued for the writer task at most; a call waits for room.
const WRITE_QUEUE: usize = 64;

type Answer<P> = Result<<P as Protocol>::Response>;

/// What the writer task is told to do.
enum Command {
    /// Write this frame, a `REQUEST` with this id.
    Request(RequestId, Vec<u8>),
    /// Write `GOODBYE`, shut the stream down, stop.
    Close,
}

/// Client side of a connection for async code: many tasks may call at once
/// (`&self`), each call with its own timeout.
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
/// A call that times out ([`Error::Timeout`]`(`[`Step::Read`]`)`, not
/// fatal) or whose future is dropped abandons its id: the answer, when it
/// comes, is discarded and counted ([`Client::discarded`]), never given to
/// another call. At most [`MAX_ABANDONED`] abandoned ids are remembered;
/// an answer to a forgotten one is an unexpected id. A call dropped before
/// its frame was queued sent nothing.
///
/// # Errors that end the connection
///
/// An answer with an id that no call waits for, a frame that cannot be
/// delimited, a fatal `ERROR`, a close or a failed write end the
/// connection: every waiting call fails with that error (the peer's close
/// as [`Error::Closed`], the others as [`Error::Poisoned`] with the reason),
/// and so does every later call.
pub struct Client<P: Protocol> {
    shared: Arc<Shared<P>>,
    frames: mpsc::Sender<Command>,
    reader: JoinHandle<()>,
    /// `None` once [`Client::close`] waited for it.
    writer: Option<JoinHandle<()>>,
    peer_max_body: u32,
    call_timeout: Option<Duration>,
}

struct Shared<P: Protocol> {
    state: Mutex<State<P>>,
}

struct State<P: Protocol> {
    next_id: u32,
    /// Calls waiting for their answer, by id.
    waiting: HashMap<RequestId, oneshot::Sender<Answer<P>>>,
    /// Ids given up on whose answers are still due, oldest first.
    abandoned: VecDeque<RequestId>,
    /// Ids written and not answered yet, in write order (for `ERROR`s
    /// without an id).
    written: VecDeque<RequestId>,
    discarded: u64,
    /// Set when the connection ended: why.
    ended: Option<Ended>,
}

#[derive(Clone)]
enum Ended {
    Closed,
    Poisoned(String),
    ClosedByUs,
}

impl Ended {
    fn error(&self) -> Error {
        match self {
            Ended::Closed => Error::Closed,
            Ended::Poisoned(reason) => Error::Poisoned {
                reason: reason.clone(),
            },
            Ended::ClosedByUs => Error::ShutDown,
        }
    }
}

impl<P: Protocol> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection (first reason wins) and fails every waiting call.
    fn end(&self, why: Ended) {
        let mut st = self.lock();
        if st.ended.is_none() {
            st.ended = Some(why);
        }
        let why = st.ended.clone().expect("set");
        for (_, tx) in st.waiting.drain() {
            let _ = tx.send(Err(why.error()));
        }
        st.abandoned.clear();
        st.written.clear();
    }
}

impl<P: Protocol> fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Client")
            .field("protocol", &P::NAME)
            .field("peer_max_body", &self.peer_max_body)
            .field("in_flight", &st.waiting.len())
            .field("abandoned", &st.abandoned.len())
            .field("discarded", &st.discarded)
            .field("ended", &st.ended.as_ref().map(|e| e.error().to_string()))
            .finish_non_exhaustive()
    }
}

/// Reads one frame: `Ok(None)` for a clean close before its first byte.
/// Within a frame, the rest must come within `read` (else
/// [`Error::TimeoutInFrame`]).
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
    read: Option<Duration>,
    body: &mut Vec<u8>,
) -> Result<Option<Header>> {
    let mut h = [0u8; HEADER_LEN];
    let n = r
        .read(&mut h[..1])
        .await
        .map_err(|e| Error::io("reading a frame", e))?;
    if n == 0 {
        return Ok(None);
    }
    let got = AtomicUsize::new(1);
    let rest = async {
        read_exact_counted(r, &mut h[1..], &got, HEADER_LEN).await?;
        let header = Header::parse(h, max)?;
        body.clear();
        body.resize(header.len as usize, 0);
        read_exact_counted(r, body, &got, header.frame_len()).await?;
        Ok(header)
    };
    match read {
        None => rest.await.map(Some),
        Some(d) => match tokio::time::timeout(d, rest).await {
            Ok(r) => r.map(Some),
            Err(_) => Err(Error::TimeoutInFrame {
                step: Step::Read,
                got: got.load(Ordering::Relaxed),
            }),
        },
    }
}

async fn read_exact_counted<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    got: &AtomicUsize,
    frame_len: usize,
) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r
            .read(&mut buf[filled..])
            .await
            .map_err(|e| Error::io("reading a frame", e))?;
        if n == 0 {
            return Err(comm::Error::Truncated {
                expected: frame_len,
                got: got.load(Ordering::Relaxed),
            }
            .into());
        }
        filled += n;
        got.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

impl<P: Protocol + 'static> Client<P>
where
    P::Response: Send,
{
    /// Exchanges `HELLO` frames on a fresh stream (within
    /// [`Timeouts::hello`]), then starts the reader and writer tasks (so it
    /// must run within a tokio runtime). `max_body` bounds the responses we
    /// accept. Calls time out after [`Timeouts::read`] unless
    /// [`Client::call_timeout`] says otherwise; frames are written within
    /// [`Timeouts::write`] and read within [`Timeouts::read`] once their
    /// first byte came.
    ///
    /// Fails before sending anything if `P::NAME` does not fit a `HELLO`
    /// ([`comm::Error::InvalidName`]).
    pub async fn hello<S: AsyncStream>(
        stream: S,
        max_body: u32,
        timeouts: &Timeouts,
    ) -> Result<Self> {
        comm::handshake::check_name::<P>()?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = frame::encode(
            FrameKind::Hello,
            &Hello::new::<P>(max_body),
            frame::HELLO_MAX_BODY,
        )?;
        let mut body = Vec::new();
        let peer_max_body = within(timeouts.hello, Step::Hello, async {
            wr.write_all(&hello)
                .await
                .map_err(|e| Error::io("sending HELLO", e))?;
            let header = read_frame(&mut rd, frame::HELLO_MAX_BODY, None, &mut body)
                .await?
                .ok_or(Error::Closed)?;
            frame::check_kind(header.kind, FrameKind::Hello, &body)?;
            Ok(Hello::decode_checked::<P>(&body)?.max_body)
        })
        .await?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_id: 1,
                waiting: HashMap::new(),
                abandoned: VecDeque::new(),
                written: VecDeque::new(),
                discarded: 0,
                ended: None,
            }),
        });
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(shared.clone(), wr, queue, timeouts.write));
        let reader = tokio::spawn(read_loop(shared.clone(), rd, max_body, timeouts.read));
        Ok(Self {
            shared,
            frames,
            reader,
            writer: Some(writer),
            peer_max_body,
            call_timeout: timeouts.read,
        })
    }

    /// The largest request body the server accepts (from its `HELLO`).
    pub fn peer_max_body(&self) -> u32 {
        self.peer_max_body
    }

    /// Calls waiting for their answers now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// How many late answers to abandoned calls were discarded so far.
    pub fn discarded(&self) -> u64 {
        self.shared.lock().discarded
    }

    /// Whether the connection ended (every call fails).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().ended.is_some()
    }

    /// Sends one request and waits for its answer, at most the default call
    /// timeout ([`Timeouts::read`] given to [`Client::hello`]).
    pub async fn call(&self, request: &P::Request) -> Result<P::Response> {
        self.call_timeout(request, self.call_timeout).await
    }

    /// Sends one request and waits for its answer at most `timeout`
    /// (`None`: as long as the connection lives).
    ///
    /// A request over the server's maximum fails with
    /// [`comm::Error::TooLargeToSend`] before anything is queued; a
    /// server's non-fatal `ERROR` about it is [`comm::Error::Remote`]; a
    /// timeout is [`Error::Timeout`]`(`[`Step::Read`]`)` and abandons the
    /// request. None of these end the connection.
    pub async fn call_timeout(
        &self,
        request: &P::Request,
        timeout: Option<Duration>,
    ) -> Result<P::Response> {
        let (id, rx) = {
            let mut st = self.shared.lock();
            if let Some(why) = &st.ended {
                return Err(why.error());
            }
            let id = fresh_id(&mut st);
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(id, tx);
            (id, rx)
        };
        // From here on, a drop (cancellation) or an early return abandons
        // (or, before the frame is queued, simply forgets) the id.
        let mut guard = Pending {
            shared: &self.shared,
            id,
            queued: false,
        };
        let mut f = Vec::new();
        // The frame is queued whole: the tail (a payload) is copied once.
        let tail = P::encode_request(id, request, self.peer_max_body, &mut f)?;
        f.reserve_exact(tail.len());
        f.extend_from_slice(tail);
        if self.frames.send(Command::Request(id, f)).await.is_err() {
            return Err(self.ended_error());
        }
        guard.queued = true;
        let answer = match timeout {
            None => rx.await,
            Some(d) => match tokio::time::timeout(d, rx).await {
                Ok(a) => a,
                Err(_) => return Err(Error::Timeout(Step::Read)),
            },
        };
        guard.done();
        match answer {
            Ok(a) => a,
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Sends `GOODBYE` after the frames queued so far, shuts the stream
    /// down and stops the tasks. Calls still waiting fail with
    /// [`Error::ShutDown`].
    pub async fn close(mut self) -> Result<()> {
        let ended = self.shared.lock().ended.is_some();
        if !ended
            && self.frames.send(Command::Close).await.is_ok()
            && let Some(writer) = self.writer.take()
        {
            let _ = writer.await;
        }
        self.reader.abort();
        self.shared.end(Ended::ClosedByUs);
        Ok(())
    }

    fn ended_error(&self) -> Error {
        match &self.shared.lock().ended {
            Some(why) => why.error(),
            None => Error::Closed,
        }
    }
}

impl<P: Protocol> Drop for Client<P> {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

/// A registered call; dropping it before [`Pending::done`] abandons the id.
struct Pending<'a, P: Protocol> {
    shared: &'a Shared<P>,
    id: RequestId,
    queued: bool,
}

impl<P: Protocol> Pending<'_, P> {
    fn done(self) {
        self.shared.lock().waiting.remove(&self.id);
        std::mem::forget(self);
    }
}

impl<P: Protocol> Drop for Pending<'_, P> {
    #[allow(deprecated)] // MAX_ABANDONED
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.waiting.remove(&self.id).is_none() || !self.queued || st.ended.is_some() {
            // Answered meanwhile, never sent, or nothing more will come.
            return;
        }
        st.abandoned.push_back(self.id);
        while st.abandoned.len() > MAX_ABANDONED {
            let forgotten = st.abandoned.pop_front().expect("non-empty");
            tracing::warn!(
                "{}: forgot abandoned request {forgotten} (more than {MAX_ABANDONED} unanswered)",
                P::NAME
            );
        }
    }
}

/// The next id not waiting and not abandoned (ids wrap after `u32::MAX`).
fn fresh_id<P: Protocol>(st: &mut State<P>) -> RequestId {
    let mut id = RequestId(st.next_id);
    while st.waiting.contains_key(&id) || st.abandoned.contains(&id) {
        id = id.next();
    }
    st.next_id = id.next().0;
    id
}

async fn write_loop<P: Protocol, S: AsyncWrite>(
    shared: Arc<Shared<P>>,
    mut wr: WriteHalf<S>,
    mut queue: mpsc::Receiver<Command>,
    write: Option<Duration>,
) {
    while let Some(cmd) = queue.recv().await {
        let f = match cmd {
            Command::Request(id, f) => {
                shared.lock().written.push_back(id);
                f
            }
            Command::Close => {
                let _ = wr.write_all(&frame::goodbye()).await;
                break;
            }
        };
        let r = within(write, Step::Write, async {
            wr.write_all(&f)
                .await
                .map_err(|e| Error::io("writing a frame", e))
        })
        .await;
        if let Err(e) = r {
            shared.end(Ended::Poisoned(e.to_string()));
            return;
        }
    }
    // Closed (or the client is gone): no more frames.
    let _ = wr.shutdown().await;
}

async fn read_loop<P: Protocol, S: AsyncRead>(
    shared: Arc<Shared<P>>,
    mut rd: ReadHalf<S>,
    max_body: u32,
    read: Option<Duration>,
) {
    let mut body = Vec::new();
    loop {
        let header = match read_frame(&mut rd, max_body, read, &mut body).await {
            Ok(Some(h)) => h,
            Ok(None) => return shared.end(Ended::Closed),
            Err(e) => return shared.end(Ended::Poisoned(e.to_string())),
        };
        let (id, answer): (Option<RequestId>, Answer<P>) = match header.kind {
            FrameKind::Response => {
                let (id, r) = P::decode_response(&body);
                (id, r.map_err(Error::from))
            }
            FrameKind::Error => match frame::decode_body::<ProtocolError>(&body) {
                Ok(pe) if pe.fatal => {
                    return shared.end(Ended::Poisoned(comm::Error::Remote(pe).to_string()));
                }
                Ok(pe) => (pe.id, Err(comm::Error::Remote(pe).into())),
                Err(e) => (None, Err(e.into())),
            },
            got => {
                let e = comm::Error::UnexpectedFrame {
                    expected: FrameKind::Response,
                    got,
                };
                return shared.end(Ended::Poisoned(e.to_string()));
            }
        };
        let mut st = shared.lock();
        let id = match id {
            Some(id) => id,
            None => match st.written.front() {
                Some(&oldest) => oldest,
                None => {
                    drop(st);
                    return shared.end(Ended::Poisoned(
                        "an answer without a request id while no request was in flight".into(),
                    ));
                }
            },
        };
        if let Some(at) = st.written.iter().position(|&w| w == id) {
            st.written.remove(at);
        }
        if let Some(tx) = st.waiting.remove(&id) {
            // The call may be gone this instant; then the answer is dropped.
            let _ = tx.send(answer);
        } else if let Some(at) = st.abandoned.iter().position(|&a| a == id) {
            st.abandoned.remove(at);
            st.discarded += 1;
            tracing::warn!(
                "{}: discarded a late answer to abandoned request {id} ({} so far)",
                P::NAME,
                st.discarded
            );
        } else {
            drop(st);
            return shared.end(Ended::Poisoned(comm::Error::UnexpectedId(id).to_string()));
        }
    }
}

// Only the tasks touch the halves; the client itself is shared by tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client<comm::service::ServiceVm>>();
};
