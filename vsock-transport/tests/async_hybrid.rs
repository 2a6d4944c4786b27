//! The async client (feature `tokio`) over real Unix sockets, against the
//! blocking `rpc::serve` in a thread: hybrid vsock `CONNECT`/`OK` through a
//! device played by the test, many tasks on one connection, cancellation,
//! timeouts, a server that closes.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::Duration;

use svmc::{Request, Response, ServiceVm};
use svmc_comm::Hello;
use svmc_comm::frame::{self, DEFAULT_MAX_BODY, FrameKind};
use tokio::sync::mpsc;
use vsock_transport::async_host::{self, Client};
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::rpc::{self, Ended, Handler, Then};
use vsock_transport::{Connection, Error, Step, Timeouts, framed};

/// Reverses bytes; a payload starting with `slow` is answered after
/// 300 ms, one starting with `lazy` after 1 s. With `seen`, sends the first
/// 16 bytes of every payload there as it arrives (what the server received).
#[derive(Default)]
struct SlowReverse {
    seen: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl Handler<ServiceVm> for SlowReverse {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut b) => {
                if let Some(seen) = &self.seen {
                    let _ = seen.send(b[..b.len().min(16)].to_vec());
                }
                if b.starts_with(b"slow") {
                    thread::sleep(Duration::from_millis(300));
                } else if b.starts_with(b"lazy") {
                    thread::sleep(Duration::from_secs(1));
                }
                b.reverse();
                (Response::Reverse(b), Then::Continue)
            }
            _ => (Response::PowerOff, Then::Stop),
        }
    }
}

fn timeouts() -> Timeouts {
    Timeouts::uniform(Duration::from_secs(10))
}

type Device = thread::JoinHandle<Option<vsock_transport::Result<Ended>>>;

/// Plays the VM's vsock device on `uds`: accepts one connection, answers
/// `CONNECT <port>` with `OK <port>` and serves it (or, with `refuse`,
/// hangs up as a device does when nobody listens on the port).
fn device(uds: &Path, refuse: bool) -> Device {
    device_with(uds, refuse, SlowReverse::default())
}

fn device_with(uds: &Path, refuse: bool, mut handler: SlowReverse) -> Device {
    let listener = UnixListener::bind(uds).unwrap();
    thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let port: u32 = line.strip_prefix("CONNECT ")?.trim_end().parse().unwrap();
        if refuse {
            return None;
        }
        (&s).write_all(format!("OK {port}\n").as_bytes()).unwrap();
        let mut conn = HostStream::new(s, Peer::Other("test device".into()), timeouts());
        Some(rpc::serve::<ServiceVm, _, _>(
            &mut conn,
            &mut handler,
            Default::default(),
        ))
    })
}

async fn connected(dir: &Path) -> (Client<ServiceVm>, Device) {
    connected_with(dir, SlowReverse::default()).await
}

/// A client, its device, and what the server receives (the first 16 bytes
/// of each payload, in order).
async fn recorded(dir: &Path) -> (Client<ServiceVm>, Device, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (client, dev) = connected_with(dir, SlowReverse { seen: Some(tx) }).await;
    (client, dev, rx)
}

async fn connected_with(dir: &Path, handler: SlowReverse) -> (Client<ServiceVm>, Device) {
    let uds = dir.join("vm.vsock");
    let dev = device_with(&uds, false, handler);
    let stream = async_host::hybrid::connect(&uds, 7001, &timeouts())
        .await
        .unwrap();
    let client = Client::<ServiceVm>::hello(stream, DEFAULT_MAX_BODY, &timeouts())
        .await
        .unwrap();
    (client, dev)
}

fn rev(b: &[u8]) -> Request {
    Request::Reverse(b.to_vec())
}

fn reversed(b: &[u8]) -> Response {
    Response::Reverse(b.iter().rev().copied().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_times_a_hundred_calls_each_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    let client = Arc::new(client);
    let tasks: Vec<_> = (0..16u32)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    let payload = format!("task {t} call {i} ").repeat((i % 7 + 1) as usize);
                    let got = client.call(&rev(payload.as_bytes())).await.unwrap();
                    assert_eq!(got, reversed(payload.as_bytes()), "task {t} call {i}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.discarded(), 0);
    Arc::try_unwrap(client).unwrap().close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

#[tokio::test]
async fn a_dropped_call_leaves_the_connection_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    // Dropped mid-flight: the request was written, its answer comes later.
    let slow = rev(b"slow one");
    let dropped = tokio::time::timeout(Duration::from_millis(50), client.call(&slow));
    assert!(
        dropped.await.is_err(),
        "the slow call cannot finish in 50 ms"
    );
    // Calls after it get their own answers, not the late one.
    for i in 0..5u8 {
        let payload = [b'n', i];
        assert_eq!(
            client.call(&rev(&payload)).await.unwrap(),
            reversed(&payload)
        );
    }
    assert_eq!(client.discarded(), 1, "the late answer was discarded by id");
    assert!(!client.is_closed());
    client.close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

/// Everything `seen` holds now.
fn drain(seen: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| seen.try_recv().ok()).collect()
}

/// Starts `n` calls at once, each cancelled after `timeout`; returns how
/// many were answered in time.
async fn cancelled_calls(client: &Arc<Client<ServiceVm>>, n: u32, timeout: Duration) -> usize {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        calls.spawn(async move {
            let payload = format!("cancel {i}");
            tokio::time::timeout(timeout, client.call(&rev(payload.as_bytes())))
                .await
                .map(|answer| assert_eq!(answer.unwrap(), reversed(payload.as_bytes())))
                .is_ok()
        });
    }
    calls.join_all().await.into_iter().filter(|&ok| ok).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_cancelled_calls_leave_the_connection_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev, mut seen) = recorded(dir.path()).await;
    let client = Arc::new(client);
    let mut received = Vec::new();
    // As a user would: each call in `timeout(1 ms)`.
    let mut answered = cancelled_calls(&client, 300, Duration::from_millis(1)).await;
    // While the server sleeps, 300 calls are written and then cancelled:
    // far more abandoned ids than the 64 a client used to remember.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call(&rev(b"slow")).await }
    });
    while !received.iter().any(|p| p == b"slow") {
        tokio::time::sleep(Duration::from_millis(1)).await;
        received.extend(drain(&mut seen));
    }
    answered += cancelled_calls(&client, 300, Duration::from_millis(100)).await;
    assert_eq!(slow.await.unwrap().unwrap(), reversed(b"slow"));
    // The connection goes on; the late answers came before this one's.
    assert_eq!(
        client.call(&rev(b"after")).await.unwrap(),
        reversed(b"after")
    );
    answered += 2;
    assert!(!client.is_closed());
    assert_eq!(client.in_flight(), 0);
    // Every request written was answered in time or its late answer
    // discarded; none of the calls cancelled before their frames were
    // written reached the server. Of those written and then cancelled,
    // the ones whose `CANCEL` the server read before starting them were
    // answered `cancelled` without reaching the handler: the handler saw
    // at most one request per answer, and every request answered in time.
    received.extend(drain(&mut seen));
    let discarded = usize::try_from(client.discarded()).unwrap();
    assert!(received.len() <= answered + discarded);
    assert!(received.len() >= answered);
    assert!(discarded > 64, "{discarded} abandoned and discarded");
    Arc::try_unwrap(client).unwrap().close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

#[tokio::test]
async fn a_call_cancelled_before_its_frame_was_written_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev, mut seen) = recorded(dir.path()).await;
    let client = Arc::new(client);
    // The server sleeps 1 s on this one and reads nothing meanwhile...
    let lazy = tokio::spawn({
        let client = client.clone();
        async move { client.call(&rev(b"lazy")).await }
    });
    assert_eq!(seen.recv().await.unwrap(), b"lazy");
    // ... so the writer is stuck inside this large frame (more than the
    // socket buffers hold) until then ...
    let mut big = vec![b'b'; 4 << 20];
    big[..3].copy_from_slice(b"big");
    let big_request = Request::Reverse(big.clone());
    {
        let mut big_call = std::pin::pin!(client.call(&big_request));
        let first = std::future::poll_fn(|cx| Poll::Ready(big_call.as_mut().poll(cx).is_pending()));
        assert!(first.await, "queued, not answered");
        // ... and these calls, queued behind it, are cancelled before
        // their frames are written: they must never be.
        assert_eq!(
            cancelled_calls(&client, 20, Duration::from_millis(1)).await,
            0
        );
        big.reverse();
        assert_eq!(big_call.await.unwrap(), Response::Reverse(big));
    }
    assert_eq!(lazy.await.unwrap().unwrap(), reversed(b"lazy"));
    assert_eq!(client.call(&rev(b"next")).await.unwrap(), reversed(b"next"));
    let mut received = drain(&mut seen);
    received[0].truncate(3);
    assert_eq!(received, [&b"big"[..], b"next"]);
    assert_eq!(client.discarded(), 0, "no answer to a cancelled call came");
    Arc::try_unwrap(client).unwrap().close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

/// The OS error in `e`'s chain of sources, if any.
fn os_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(os) = e.downcast_ref::<std::io::Error>() {
            return Some(os);
        }
        cause = e.source();
    }
    None
}

/// A client on one end of a socket pair, and a thread that plays the VM
/// on the other by hand with `vm` after the `HELLO` exchange.
async fn raw_vm(
    vm: impl FnOnce(HostStream<std::os::unix::net::UnixStream>) + Send + 'static,
) -> (Client<ServiceVm>, thread::JoinHandle<()>) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let vm = thread::spawn(move || {
        let mut conn = HostStream::new(theirs, Peer::Other("test VM".into()), timeouts());
        let hello = frame::encode(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY),
            frame::HELLO_MAX_BODY,
        )
        .unwrap();
        framed::send_frame(&mut conn, &hello).unwrap();
        let mut buf = Vec::new();
        framed::recv_frame_as(&mut conn, frame::HELLO_MAX_BODY, &mut buf, Step::Hello).unwrap();
        vm(conn);
    });
    ours.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(ours).unwrap();
    let client = Client::<ServiceVm>::hello(stream, DEFAULT_MAX_BODY, &timeouts())
        .await
        .unwrap();
    (client, vm)
}

/// Reads one `REQUEST` on the VM's side: its id.
fn read_request(conn: &mut HostStream<std::os::unix::net::UnixStream>) -> svmc_comm::RequestId {
    let mut buf = Vec::new();
    let h = framed::recv_frame(conn, DEFAULT_MAX_BODY, &mut buf).unwrap();
    assert_eq!(h.kind, FrameKind::Request);
    svmc_comm::envelope::decode::<Request>(&buf).0.unwrap()
}

/// Answers request `id` with `response` on the VM's side.
fn answer(conn: &mut HostStream<std::os::unix::net::UnixStream>, id: u32, response: &Response) {
    let mut f = Vec::new();
    svmc_comm::envelope::encode_response_into(
        svmc_comm::RequestId(id),
        response,
        DEFAULT_MAX_BODY,
        &mut f,
    )
    .unwrap();
    conn.send(&f).unwrap();
}

#[tokio::test]
async fn an_answer_to_no_request_still_ends_the_connection() {
    for twice in [false, true] {
        let (client, vm) = raw_vm(move |mut conn| {
            let id = read_request(&mut conn);
            answer(&mut conn, id.0, &reversed(b"a"));
            // The same id again, or one never issued.
            let wrong = if twice { id.0 } else { id.0 + 1000 };
            answer(&mut conn, wrong, &reversed(b"b"));
            let _ = conn.recv(&mut [0u8]);
        })
        .await;
        assert_eq!(client.call(&rev(b"a")).await.unwrap(), reversed(b"a"));
        let e = client.call(&rev(b"c")).await.unwrap_err();
        let Error::Poisoned { source } = &e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(**source, Error::Protocol(svmc_comm::Error::UnexpectedId(_))),
            "{e:?}"
        );
        // The runtime must run to close the stream the VM waits on.
        drop(client);
        tokio::task::spawn_blocking(|| vm.join().unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_killed_peer_fails_the_calls_with_the_os_error_as_their_cause() {
    let (client, vm) = raw_vm(|mut conn| {
        // Killed with the rest of the request unread: the socket resets.
        assert_eq!(conn.recv(&mut [0u8]).unwrap(), 1);
    })
    .await;
    let waiting = client.call(&rev(b"abc")).await.unwrap_err();
    vm.join().unwrap();
    let later = client.call(&rev(b"def")).await.unwrap_err();
    for e in [&waiting, &later] {
        assert!(matches!(e, Error::Poisoned { .. }) && e.is_fatal(), "{e:?}");
        let os = os_error(e).unwrap_or_else(|| panic!("no OS error in {e:?}"));
        assert_eq!(os.kind(), std::io::ErrorKind::ConnectionReset, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_shared_by_tasks_is_shut_down_through_any_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    let client = Arc::new(client);
    let callers: Vec<_> = (0..8u32)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let payload = format!("task {t} call {i}");
                    match client.call(&rev(payload.as_bytes())).await {
                        Ok(answer) => assert_eq!(answer, reversed(payload.as_bytes())),
                        Err(e) => return (i, e),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    // One task shuts the connection down while the others call.
    let closer = tokio::spawn({
        let client = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.shutdown().await
        }
    });
    closer.await.unwrap().unwrap();
    assert!(client.is_closed());
    for caller in callers {
        let (calls, e) = caller.await.unwrap();
        assert!(matches!(e, Error::ShutDown), "after {calls} calls: {e:?}");
    }
    let e = client.call(&rev(b"late")).await.unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    client.shutdown().await.unwrap();
    drop(client);
    // The server read GOODBYE, or failed to answer a call of the moment.
    assert!(dev.join().unwrap().is_some());
}

#[tokio::test]
async fn shutdown_on_an_idle_shared_client_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    let client = Arc::new(client);
    let other = client.clone();
    assert_eq!(other.call(&rev(b"ab")).await.unwrap(), reversed(b"ab"));
    other.shutdown().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
    assert!(matches!(
        client.call(&rev(b"x")).await,
        Err(Error::ShutDown)
    ));
}

#[test]
fn a_client_whose_runtime_was_shut_down_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (client, dev) = first.block_on(connected(dir.path()));
    let answer = first.block_on(client.call(&rev(b"abc"))).unwrap();
    assert_eq!(answer, reversed(b"abc"));
    drop(first);
    // The peer is fine; the client's tasks died with the runtime.
    let e = runtime().block_on(client.call(&rev(b"x"))).unwrap_err();
    assert!(matches!(e, Error::RuntimeGone), "{e:?}");
    assert!(e.to_string().contains("runtime") && e.is_fatal(), "{e}");
    assert!(client.is_closed());
    drop(client);
    assert!(dev.join().unwrap().is_some());
}

#[tokio::test]
async fn a_call_timeout_counts_the_wait_for_room_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev, mut seen) = recorded(dir.path()).await;
    let client = Arc::new(client);
    let spawn_call = |payload: Vec<u8>| {
        let client = client.clone();
        tokio::spawn(async move { client.call(&Request::Reverse(payload)).await })
    };
    // The server sleeps 1 s and reads nothing; the writer is stuck inside
    // a large frame; 64 calls fill the writer's queue behind it.
    let lazy = spawn_call(b"lazy".to_vec());
    assert_eq!(seen.recv().await.unwrap(), b"lazy");
    let slept = tokio::time::Instant::now();
    let mut calls = vec![spawn_call(vec![b'b'; 4 << 20])];
    calls.extend((0..64u8).map(|i| spawn_call(vec![i])));
    while client.in_flight() < 66 {
        tokio::task::yield_now().await;
    }
    // This call cannot even be queued before the server wakes up.
    let e = client
        .call_timeout(&rev(b"queued"), Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(Step::Read)), "{e:?}");
    assert!(slept.elapsed() < Duration::from_millis(850), "{slept:?}");
    assert_eq!(lazy.await.unwrap().unwrap(), reversed(b"lazy"));
    for call in calls {
        assert!(matches!(call.await.unwrap(), Ok(Response::Reverse(_))));
    }
    assert!(!drain(&mut seen).iter().any(|p| p == b"queued"));
    Arc::try_unwrap(client).unwrap().close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

#[tokio::test]
async fn a_call_timeout_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    let e = client
        .call_timeout(&rev(b"slow two"), Some(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(Step::Read)), "{e:?}");
    assert!(!e.is_fatal());
    // Concurrent calls while the late answer is due.
    let (ab, cd) = (rev(b"ab"), rev(b"cd"));
    let (a, b) = tokio::join!(client.call(&ab), client.call(&cd));
    assert_eq!((a.unwrap(), b.unwrap()), (reversed(b"ab"), reversed(b"cd")));
    assert_eq!(client.discarded(), 1);
    client.close().await.unwrap();
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Goodbye))));
}

#[tokio::test]
async fn a_server_that_closes_fails_the_waiting_and_later_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (client, dev) = connected(dir.path()).await;
    // PowerOff: the server answers, then stops and shuts the stream down.
    assert_eq!(
        client.call(&Request::PowerOff).await.unwrap(),
        Response::PowerOff
    );
    assert!(matches!(dev.join().unwrap(), Some(Ok(Ended::Stopped))));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !client.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close was not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = client.call(&rev(b"x")).await.unwrap_err();
    assert!(matches!(e, Error::Closed), "{e:?}");
    assert!(e.is_fatal());
}

#[tokio::test]
async fn connect_reports_a_refused_port_and_a_missing_device() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let dev = device(&uds, true);
    let e = async_host::hybrid::connect(&uds, 7001, &timeouts())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Refused { port: 7001 }), "{e:?}");
    assert!(dev.join().unwrap().is_none());
    let e = async_host::hybrid::connect(&dir.path().join("none"), 7001, &timeouts())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("is the VM's vsock device running"),
        "{e}"
    );
}

#[tokio::test]
async fn the_listener_accepts_what_the_guest_connects() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = async_host::hybrid::Listener::bind(&uds, 7000, timeouts()).unwrap();
    let path: PathBuf = listener.path().to_owned();
    assert_eq!(path, vsock_transport::hybrid::listener_path(&uds, 7000));
    // The "guest": connects through the device's socket and serves.
    let guest = thread::spawn(move || {
        let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut conn = HostStream::new(s, Peer::Other("guest".into()), timeouts());
        rpc::serve::<ServiceVm, _, _>(&mut conn, &mut SlowReverse::default(), Default::default())
    });
    let stream = listener.accept().await.unwrap();
    let client = Client::<ServiceVm>::hello(stream, DEFAULT_MAX_BODY, &timeouts())
        .await
        .unwrap();
    assert_eq!(
        client.call(&rev(b"guest")).await.unwrap(),
        reversed(b"guest")
    );
    client.close().await.unwrap();
    assert!(matches!(guest.join().unwrap(), Ok(Ended::Goodbye)));
    // Nobody connects: the accept deadline.
    let short = Timeouts {
        accept: Some(Duration::from_millis(50)),
        ..timeouts()
    };
    let listener = async_host::hybrid::Listener::bind(&uds, 7002, short).unwrap();
    let e = listener.accept().await.unwrap_err();
    assert!(matches!(e, Error::Timeout(Step::Accept)), "{e:?}");
    drop(listener);
    assert!(!vsock_transport::hybrid::listener_path(&uds, 7002).exists());
}
