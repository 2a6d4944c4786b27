//! Pieces shared by the host backend tests: the guest's side of the
//! service protocol, played by a test thread.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use svmc::server::Service;
use svmc::{GuestInfo, Request, Response, ServiceVm};
use svmc_comm::frame::{self, FrameKind, HELLO_MAX_BODY};
use svmc_comm::{Hello, Protocol};
use vsock_transport::framed::{recv_frame, recv_frame_as};
use vsock_transport::rpc::{self, Client, Ended, Handler, ServeConfig, Then};
use vsock_transport::{Connection, Result, Step, Timeouts};

/// The guest's service: the one svmc handler of the firmware and the
/// Linux service (reverses bytes, answers `Info`, stops on `PowerOff`).
pub(crate) fn service() -> Service<fn() -> GuestInfo> {
    Service::new(|| GuestInfo {
        firmware: "test-double".into(),
        firmware_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: ServiceVm::VERSION,
        arch: std::env::consts::ARCH.into(),
        max_body: frame::DEFAULT_MAX_BODY,
        heap: None,
    })
}

/// [`service`] as a unit value, for doubles that wrap it.
pub(crate) struct Reverse;

impl Handler<ServiceVm> for Reverse {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        service().handle(request)
    }
}

/// The same protocol as [`ServiceVm`], one version later.
pub(crate) struct ServiceVmNext;

impl Protocol for ServiceVmNext {
    const NAME: &'static str = ServiceVm::NAME;
    const VERSION: u32 = ServiceVm::VERSION + 1;
    type Request = Request;
    type Response = Response;
}

/// Timeouts short enough that a hang fails the test quickly.
pub(crate) fn timeouts() -> Timeouts {
    Timeouts::uniform(Duration::from_secs(5))
}

/// Serves the reverse service on `conn` with the default limits.
pub(crate) fn serve_reverse<C: Connection>(mut conn: C) -> Result<Ended> {
    rpc::serve::<ServiceVm, _, _>(&mut conn, &mut service(), ServeConfig::default())
}

/// Serves the reverse service with a small request limit.
pub(crate) fn serve_reverse_max(mut conn: impl Connection, max_body: u32) -> Result<Ended> {
    rpc::serve::<ServiceVm, _, _>(
        &mut conn,
        &mut service(),
        ServeConfig {
            max_body,
            ..ServeConfig::default()
        },
    )
}

/// The client side of the service.
pub(crate) fn client<C: Connection>(conn: C) -> Client<C, ServiceVm> {
    Client::hello(conn, frame::DEFAULT_MAX_BODY).expect("HELLO exchange")
}

/// Reverses `payload` through `client` and checks the answer.
pub(crate) fn check_reverse<C: Connection>(client: &mut Client<C, ServiceVm>, payload: &[u8]) {
    let answer = client
        .call(&Request::Reverse(payload.to_vec()))
        .expect("reverse call");
    let Response::Reverse(got) = answer else {
        panic!("unexpected answer {answer:?}");
    };
    assert_eq!(got.len(), payload.len());
    assert!(
        got.iter().eq(payload.iter().rev()),
        "reversed payload differs"
    );
}

/// A payload that is not periodic in any small power of two.
pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Plays a misbehaving server up to the first request: sends our `HELLO`,
/// reads the peer's, reads one request frame. The caller then answers (or
/// not) by hand.
pub(crate) fn raw_server_until_request<C: Connection>(conn: &mut C) {
    let hello = frame::encode(
        FrameKind::Hello,
        &Hello::new::<ServiceVm>(frame::DEFAULT_MAX_BODY),
        HELLO_MAX_BODY,
    )
    .unwrap();
    vsock_transport::framed::send_frame(conn, &hello).unwrap();
    let mut buf = Vec::new();
    let h = recv_frame_as(conn, frame::DEFAULT_MAX_BODY, &mut buf, Step::Hello).unwrap();
    assert_eq!(h.kind, FrameKind::Hello);
    let h = recv_frame(conn, frame::DEFAULT_MAX_BODY, &mut buf).unwrap();
    assert_eq!(h.kind, FrameKind::Request);
}

/// A `RESPONSE` frame to a reverse request, as bytes. Its id is 1: the id of a fresh client's first request.
pub(crate) fn response_frame(payload: &[u8]) -> Vec<u8> {
    response_frame_id(1, payload)
}

/// A `RESPONSE` frame with id `id` to a reverse request, as bytes.
pub(crate) fn response_frame_id(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    svmc_comm::envelope::encode_response_into(
        svmc_comm::RequestId(id),
        &Response::Reverse(payload.to_vec()),
        frame::DEFAULT_MAX_BODY,
        &mut f,
    )
    .unwrap();
    f
}

/// Runs `f` and returns its result and how long it took.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// The guest's end of a Unix stream, as a [`Connection`].
pub(crate) fn guest_conn(
    s: std::os::unix::net::UnixStream,
) -> vsock_transport::host_stream::HostStream<std::os::unix::net::UnixStream> {
    use vsock_transport::host_stream::{HostStream, Peer};
    HostStream::new(s, Peer::Other("test guest".into()), timeouts())
}

/// Two connected [`guest_conn`]s.
pub(crate) fn pair() -> (
    vsock_transport::host_stream::HostStream<std::os::unix::net::UnixStream>,
    vsock_transport::host_stream::HostStream<std::os::unix::net::UnixStream>,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (guest_conn(a), guest_conn(b))
}
