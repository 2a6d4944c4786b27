//! The extensions of protocol version 2 (`comm/WIRE.md` §10) between the
//! library's clients and its server, over a socket pair: negotiation,
//! deadlines, cancellation of a running and of a queued request, answer
//! meta (timings, statistics), the trace spans, and plain version 2 on
//! either side. A protocol of the test's own, as an outside service would
//! write it.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use comm::Protocol;
use comm::ext::{Extensions, RequestMeta};
use comm::frame::ProtocolErrorCode;
use serde::{Deserialize, Serialize};
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::rpc::{self, Client, Ctx, Ended, Handler, RequestStream, ServeConfig, Then};
use vsock_transport::{Error, Step, Timeouts};

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    /// Busy for this many milliseconds, checking for a cancel each one.
    Spin(u32),
    Echo(u32),
    Stop,
    /// Streamed: counts the data's bytes and sums them (mod 2^64); refuses
    /// the stream once it passes the limit, if any.
    Count(Option<u64>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Resp {
    /// Milliseconds actually spun.
    Spun(u32),
    Echo(u32),
    Stopping,
    Counted {
        bytes: u64,
        sum: u64,
    },
    TooMuch,
}

struct Slow;
impl Protocol for Slow {
    const NAME: &'static str = "test.slow";
    const VERSION: u32 = 1;
    type Request = Req;
    type Response = Resp;
}

/// What the handler saw, for the test to check.
#[derive(Default)]
struct Seen {
    started: Vec<u32>,
    traceparents: Vec<Option<String>>,
}

struct Spinner(Arc<Mutex<Seen>>);

impl Handler<Slow> for Spinner {
    fn handle(&mut self, _: Req) -> (Resp, Then) {
        unreachable!("the server calls handle_ctx")
    }
    fn handle_ctx(&mut self, request: Req, ctx: &mut Ctx<'_>) -> (Resp, Then) {
        let mut seen = self.0.lock().unwrap();
        seen.traceparents.push(ctx.traceparent().map(String::from));
        match request {
            Req::Spin(ms) => {
                seen.started.push(ms);
                drop(seen);
                let start = Instant::now();
                let mut spun = 0;
                while spun < ms && !ctx.cancelled() {
                    while start.elapsed() < Duration::from_millis(u64::from(spun) + 1) {
                        std::hint::spin_loop();
                    }
                    spun += 1;
                }
                (Resp::Spun(spun), Then::Continue)
            }
            Req::Echo(n) => {
                seen.started.push(n);
                (Resp::Echo(n), Then::Continue)
            }
            Req::Stop => (Resp::Stopping, Then::Stop),
            Req::Count(_) => (Resp::Counted { bytes: 0, sum: 0 }, Then::Continue),
        }
    }

    fn open_stream(
        &mut self,
        request: Req,
        _: &mut Ctx<'_>,
    ) -> Option<Result<Box<dyn RequestStream<Slow>>, (Resp, Then)>> {
        match request {
            Req::Count(limit) => Some(Ok(Box::new(Counter {
                limit,
                bytes: 0,
                sum: 0,
            }))),
            _ => None,
        }
    }
}

struct Counter {
    limit: Option<u64>,
    bytes: u64,
    sum: u64,
}

impl RequestStream<Slow> for Counter {
    fn chunk(&mut self, data: &[u8], _: &mut Ctx<'_>) -> Result<(), Resp> {
        assert!(data.len() <= comm::ext::CHUNK_MAX_DATA);
        self.bytes += data.len() as u64;
        self.sum = data
            .iter()
            .fold(self.sum, |s, b| s.wrapping_add(u64::from(*b)));
        match self.limit {
            Some(l) if self.bytes > l => Err(Resp::TooMuch),
            _ => Ok(()),
        }
    }
    fn finish(self: Box<Self>, _: &mut Ctx<'_>) -> (Resp, Then) {
        (
            Resp::Counted {
                bytes: self.bytes,
                sum: self.sum,
            },
            Then::Continue,
        )
    }
}

type Conn = HostStream<UnixStream>;

fn pair() -> (Conn, Conn) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = Timeouts::uniform(Duration::from_secs(10));
    (
        HostStream::new(a, Peer::Other("client".into()), t),
        HostStream::new(b, Peer::Other("server".into()), t),
    )
}

struct Served {
    client: Client<Conn, Slow>,
    seen: Arc<Mutex<Seen>>,
    server: thread::JoinHandle<vsock_transport::Result<Ended>>,
}

fn served(server_ext: Extensions, client_ext: Extensions) -> Served {
    let (c, mut s) = pair();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut h = Spinner(seen.clone());
    let config = ServeConfig {
        ext: server_ext,
        ..ServeConfig::default()
    };
    let server = thread::spawn(move || rpc::serve::<Slow, _, _>(&mut s, &mut h, config));
    let client = Client::hello_with(c, 1 << 20, client_ext).unwrap();
    Served {
        client,
        seen,
        server,
    }
}

fn code(e: &Error) -> Option<ProtocolErrorCode> {
    match e {
        Error::Protocol(comm::Error::Remote(pe)) => Some(pe.code),
        _ => None,
    }
}

impl Served {
    fn stop(mut self) {
        assert_eq!(self.client.call(&Req::Stop).unwrap(), Resp::Stopping);
        assert_eq!(self.server.join().unwrap().unwrap(), Ended::Stopped);
    }
}

#[test]
fn extensions_are_on_only_when_both_offer_them() {
    for (server, client, on) in [
        (Extensions::ALL, Extensions::ALL, Extensions::ALL),
        (Extensions::NONE, Extensions::ALL, Extensions::NONE),
        (Extensions::ALL, Extensions::NONE, Extensions::NONE),
        (
            Extensions {
                meta: true,
                cancel: false,
                stream: true,
            },
            Extensions::ALL,
            Extensions {
                meta: true,
                cancel: false,
                stream: true,
            },
        ),
    ] {
        let mut s = served(server, client);
        assert_eq!(s.client.extensions(), on);
        // Plain version 2 still works both ways: deadlines and CANCEL are
        // simply not sent.
        assert_eq!(s.client.call(&Req::Echo(7)).unwrap(), Resp::Echo(7));
        assert!(!s.client.cancel(comm::RequestId(1)).unwrap());
        s.stop();
    }
}

#[test]
fn a_request_past_its_deadline_is_not_started() {
    let mut s = served(Extensions::ALL, Extensions::ALL);
    // Two requests written at once: the second waits 300 ms behind the
    // first, past its deadline of 50 ms.
    let slow = s.client.send_request(&Req::Spin(300)).unwrap();
    let late = s
        .client
        .send_request_with(
            &Req::Echo(2),
            &RequestMeta {
                deadline_ms: Some(50),
                ..RequestMeta::default()
            },
        )
        .unwrap();
    let (id, a) = s.client.recv_response().unwrap();
    assert_eq!((id, a.unwrap()), (slow, Resp::Spun(300)));
    let (id, a) = s.client.recv_response().unwrap();
    assert_eq!(id, late);
    let e = a.unwrap_err();
    assert_eq!(code(&e), Some(ProtocolErrorCode::DeadlineExceeded), "{e}");
    // Not carried out: the handler never saw it.
    assert_eq!(s.seen.lock().unwrap().started, [300]);
    // A deadline that is met changes nothing.
    let (a, _) = s
        .client
        .call_with(
            &Req::Echo(3),
            &RequestMeta {
                deadline_ms: Some(5000),
                ..RequestMeta::default()
            },
        )
        .unwrap();
    assert_eq!(a, Resp::Echo(3));
    s.stop();
}

#[test]
fn a_cancel_stops_a_running_request_and_it_is_answered_cancelled() {
    let mut s = served(Extensions::ALL, Extensions::ALL);
    let t = Instant::now();
    let id = s.client.send_request(&Req::Spin(10_000)).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(s.client.cancel(id).unwrap());
    let (got, a) = s.client.recv_response().unwrap();
    assert_eq!(got, id);
    let e = a.unwrap_err();
    assert_eq!(code(&e), Some(ProtocolErrorCode::Cancelled), "{e}");
    // Stopped long before its 10 s (generous for a loaded machine).
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The connection goes on.
    assert_eq!(s.client.call(&Req::Echo(9)).unwrap(), Resp::Echo(9));
    s.stop();
}

#[test]
fn a_cancelled_request_still_queued_is_never_started() {
    let mut s = served(Extensions::ALL, Extensions::ALL);
    let first = s.client.send_request(&Req::Spin(200)).unwrap();
    let queued = s.client.send_request(&Req::Echo(5)).unwrap();
    assert!(s.client.cancel(queued).unwrap());
    let (id, a) = s.client.recv_response().unwrap();
    assert_eq!((id, a.unwrap()), (first, Resp::Spun(200)));
    let (id, a) = s.client.recv_response().unwrap();
    assert_eq!(id, queued);
    assert_eq!(code(&a.unwrap_err()), Some(ProtocolErrorCode::Cancelled));
    assert_eq!(s.seen.lock().unwrap().started, [200]);
    s.stop();
}

#[test]
fn a_call_that_times_out_cancels_its_request() {
    let (c, mut srv) = pair();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut h = Spinner(seen.clone());
    let server =
        thread::spawn(move || rpc::serve::<Slow, _, _>(&mut srv, &mut h, ServeConfig::default()));
    let mut c = c;
    c.set_timeouts(Timeouts {
        read: Some(Duration::from_millis(200)),
        ..Timeouts::uniform(Duration::from_secs(10))
    });
    let mut client = Client::<_, Slow>::hello(c, 1 << 20).unwrap();
    let t = Instant::now();
    let e = client.call(&Req::Spin(20_000)).unwrap_err();
    assert!(matches!(e, Error::Timeout(Step::Read)), "{e}");
    // The server stopped spinning: the next call is answered long before
    // the 20 s the first one asked for (its late `cancelled` answer is
    // discarded on the way).
    client.set_deadline(None);
    client
        .connection()
        .set_timeouts(Timeouts::uniform(Duration::from_secs(10)));
    assert_eq!(client.call(&Req::Echo(1)).unwrap(), Resp::Echo(1));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(client.discarded(), 1);
    assert_eq!(client.call(&Req::Stop).unwrap(), Resp::Stopping);
    assert_eq!(server.join().unwrap().unwrap(), Ended::Stopped);
}

#[test]
fn timings_and_statistics_come_back_when_asked() {
    let mut s = served(Extensions::ALL, Extensions::ALL);
    for n in 0..3 {
        s.client.call(&Req::Echo(n)).unwrap();
    }
    let (a, meta) = s
        .client
        .call_with(
            &Req::Spin(30),
            &RequestMeta {
                timing: true,
                stats: true,
                ..RequestMeta::default()
            },
        )
        .unwrap();
    assert_eq!(a, Resp::Spun(30));
    let meta = meta.expect("asked for");
    assert!(meta.handled_us.unwrap() >= 30_000, "{meta:?}");
    assert!(meta.queued_us.is_some());
    let stats = meta.stats.expect("asked for");
    assert_eq!(stats.requests, 4, "{stats:?}");
    assert!(
        stats.bytes_in > 4 * 5 && stats.bytes_out > 3 * 5,
        "{stats:?}"
    );
    assert_eq!((stats.errors, stats.cancelled, stats.expired), (0, 0, 0));
    // Not asked: no meta, no bytes spent on it.
    let (_, meta) = s
        .client
        .call_with(&Req::Echo(1), &RequestMeta::default())
        .unwrap();
    assert_eq!(meta, None);
    s.stop();
}

#[test]
fn a_plain_version_2_server_gets_no_meta_and_no_cancel() {
    // The server offers nothing: the client's deadline and timings
    // request are not sent, and its cancel sends nothing.
    let mut s = served(Extensions::NONE, Extensions::ALL);
    let (a, meta) = s
        .client
        .call_with(
            &Req::Echo(4),
            &RequestMeta {
                deadline_ms: Some(1),
                timing: true,
                ..RequestMeta::default()
            },
        )
        .unwrap();
    assert_eq!((a, meta), (Resp::Echo(4), None));
    s.stop();
}

mod spans {
    //! The trace of one call: the client's span and the guest's, one
    //! trace id, the traceparent the server saw naming it.

    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Debug, Default, Clone)]
    pub(super) struct SpanSeen {
        pub(super) name: String,
        pub(super) parent: Option<String>,
        pub(super) fields: Vec<(String, String)>,
    }

    struct Fields<'a>(&'a mut Vec<(String, String)>);
    impl Visit for Fields<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().into(), format!("{v:?}")));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push((f.name().into(), v.into()));
        }
    }

    #[derive(Clone, Default)]
    pub(super) struct Recorder(pub(super) Arc<Mutex<Vec<SpanSeen>>>);

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut seen = SpanSeen {
                name: attrs.metadata().name().into(),
                parent: ctx
                    .span(id)
                    .and_then(|s| s.parent())
                    .map(|p| p.name().into()),
                ..SpanSeen::default()
            };
            attrs.record(&mut Fields(&mut seen.fields));
            self.0.lock().unwrap().push(seen);
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            let Some(name) = ctx.span(id).map(|s| s.name()) else {
                return;
            };
            let mut all = self.0.lock().unwrap();
            if let Some(s) = all.iter_mut().rev().find(|s| s.name == name) {
                values.record(&mut Fields(&mut s.fields));
            }
        }
    }

    pub(super) fn subscriber(r: Recorder) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::registry().with(r)
    }
}

#[test]
fn a_traced_call_has_spans_from_both_sides() {
    let recorder = spans::Recorder::default();
    let _guard = tracing::subscriber::set_default(spans::subscriber(recorder.clone()));
    let mut s = served(Extensions::ALL, Extensions::ALL);
    assert_eq!(s.client.call(&Req::Spin(20)).unwrap(), Resp::Spun(20));
    let spans = recorder.0.lock().unwrap().clone();
    let field = |s: &spans::SpanSeen, k: &str| {
        s.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let call = spans
        .iter()
        .find(|s| s.name == "svmc.call")
        .expect("the client's span");
    let guest = spans
        .iter()
        .find(|s| s.name == "svmc.guest")
        .expect("the guest's span");
    assert_eq!(guest.parent.as_deref(), Some("svmc.call"));
    let trace_id = field(call, "trace_id").expect("trace id recorded");
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert_eq!(field(guest, "trace_id").as_deref(), Some(trace_id.as_str()));
    let handled: u64 = field(guest, "handled_us").unwrap().parse().unwrap();
    assert!(handled >= 20_000, "{handled}");
    // The server saw a W3C traceparent of that trace.
    let tp = s.seen.lock().unwrap().traceparents[0]
        .clone()
        .expect("sent");
    assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
    assert_eq!(tp.len(), 55, "{tp}");
    s.stop();
}

/// A reader of `len` pseudo-random bytes that also sums them.
struct Data {
    left: u64,
    state: u64,
    sum: u64,
}

impl Data {
    fn new(len: u64) -> Self {
        Self {
            left: len,
            state: 0x9e37_79b9_7f4a_7c15,
            sum: 0,
        }
    }
}

impl std::io::Read for Data {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize).min(100_000);
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
            self.sum = self.sum.wrapping_add(u64::from(*b));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn a_stream_larger_than_max_body_is_taken_in_chunks() {
    // 40 MiB through a client and a server that accept 1 MiB bodies.
    let mut s = served(Extensions::ALL, Extensions::ALL);
    let len = 40 << 20;
    let mut data = Data::new(len);
    let mut last = 0;
    let a = s
        .client
        .call_stream(&Req::Count(None), &mut data, |n| {
            assert!(n > last);
            last = n;
        })
        .unwrap();
    assert_eq!(last, len);
    assert_eq!(
        a,
        Resp::Counted {
            bytes: len,
            sum: data.sum
        }
    );
    // Empty data: a stream of no chunks.
    let a = s
        .client
        .call_stream(&Req::Count(None), &mut std::io::empty(), |_| {})
        .unwrap();
    assert_eq!(a, Resp::Counted { bytes: 0, sum: 0 });
    // The connection goes on.
    assert_eq!(s.client.call(&Req::Echo(1)).unwrap(), Resp::Echo(1));
    s.stop();
}

#[test]
fn a_stream_refused_midway_is_answered_once_and_the_rest_dropped() {
    let mut s = served(Extensions::ALL, Extensions::ALL);
    let a = s
        .client
        .call_stream(&Req::Count(Some(100_000)), &mut Data::new(1 << 20), |_| {})
        .unwrap();
    assert_eq!(a, Resp::TooMuch);
    // A request that takes no stream: ERROR code 3, data dropped.
    let e = s
        .client
        .call_stream(&Req::Echo(3), &mut Data::new(300_000), |_| {})
        .unwrap_err();
    assert_eq!(code(&e), Some(ProtocolErrorCode::BadMessage), "{e}");
    assert_eq!(s.client.call(&Req::Echo(2)).unwrap(), Resp::Echo(2));
    s.stop();
}

#[test]
fn a_failing_reader_cancels_the_stream_and_the_connection_goes_on() {
    struct Failing(u32);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0 -= 1;
            buf.fill(1);
            Ok(buf.len())
        }
    }
    let mut s = served(Extensions::ALL, Extensions::ALL);
    let e = s
        .client
        .call_stream(&Req::Count(None), &mut Failing(3), |_| {})
        .unwrap_err();
    match &e {
        Error::Io { source, .. } => assert_eq!(source.to_string(), "disk on fire"),
        e => panic!("not the reader's error: {e:?}"),
    }
    // The cancelled stream's answer is discarded; the next call is in step.
    assert_eq!(s.client.call(&Req::Echo(5)).unwrap(), Resp::Echo(5));
    assert_eq!(s.client.discarded(), 1);
    s.stop();
}

#[test]
fn streams_need_the_extension() {
    let mut s = served(
        Extensions {
            stream: false,
            ..Extensions::ALL
        },
        Extensions::ALL,
    );
    let e = s
        .client
        .call_stream(&Req::Count(None), &mut Data::new(10), |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    s.stop();
}

#[test]
fn a_stream_whose_request_is_unknown_is_refused_and_its_data_dropped() {
    /// The same protocol as a newer client sees it: one more request.
    #[derive(Serialize, Deserialize)]
    enum NewReq {
        Echo(u32),
        Newer,
    }
    struct SlowNext;
    impl Protocol for SlowNext {
        const NAME: &'static str = Slow::NAME;
        const VERSION: u32 = Slow::VERSION;
        type Request = NewReq;
        type Response = Resp;
    }
    let (c, mut srv) = pair();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut h = Spinner(seen.clone());
    let server =
        thread::spawn(move || rpc::serve::<Slow, _, _>(&mut srv, &mut h, ServeConfig::default()));
    let mut client = Client::<_, SlowNext>::hello(c, 1 << 20).unwrap();
    let e = client
        .call_stream(&NewReq::Newer, &mut Data::new(300_000), |_| {})
        .unwrap_err();
    assert_eq!(code(&e), Some(ProtocolErrorCode::UnknownVariant), "{e}");
    // Its chunks were read and dropped: the connection is in step.
    assert_eq!(client.call(&NewReq::Echo(8)).unwrap(), Resp::Echo(8));
    client.close().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), Ended::Goodbye);
}
