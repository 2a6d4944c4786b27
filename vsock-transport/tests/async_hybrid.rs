//! The async client (feature `tokio`) over real Unix sockets, against the
//! blocking `rpc::serve` in a thread: hybrid vsock `CONNECT`/`OK` through a
//! device played by the test, many tasks on one connection, cancellation,
//! timeouts, a server that closes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use comm::frame::DEFAULT_MAX_BODY;
use comm::service::{Request, Response, ServiceVm};
use vsock_transport::async_host::{self, Client};
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::rpc::{self, Ended, Handler, Then};
use vsock_transport::{Error, Step, Timeouts};

/// Reverses bytes; a payload starting with `slow` is answered after 300 ms.
struct SlowReverse;

impl Handler<ServiceVm> for SlowReverse {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut b) => {
                if b.starts_with(b"slow") {
                    thread::sleep(Duration::from_millis(300));
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

/// Plays the VM's vsock device on `uds`: accepts one connection, answers
/// `CONNECT <port>` with `OK <port>` and serves it (or, with `refuse`,
/// hangs up as a device does when nobody listens on the port).
fn device(uds: &Path, refuse: bool) -> thread::JoinHandle<Option<vsock_transport::Result<Ended>>> {
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
            &mut SlowReverse,
            Default::default(),
        ))
    })
}

async fn connected(
    dir: &Path,
) -> (
    Client<ServiceVm>,
    thread::JoinHandle<Option<vsock_transport::Result<Ended>>>,
) {
    let uds = dir.join("vm.vsock");
    let dev = device(&uds, false);
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
        rpc::serve::<ServiceVm, _, _>(&mut conn, &mut SlowReverse, Default::default())
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
