//! `HostStream`, the connection both host backends hand out, on a Unix
//! socket pair: its error mapping and deadlines, and `rpc::serve` over it
//! with a client that does not read.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use svmc::Request;
use svmc_comm::envelope::RequestId;
use svmc_comm::frame::{self, FrameKind};
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::{Connection, Error, Step, Timeouts, framed};

use common::*;

/// R-FLOW-1..3 on `rpc::serve` over a real socket: a client that writes
/// requests and never reads is read while its answers wait, far past what
/// the socket buffers hold: every request of a budget's worth (32 MiB) and
/// more is read, answered or refused; once the refusals fill their room,
/// the server stops reading (the client's writes block), and its write
/// deadline, which runs since the client first took nothing, ends the
/// connection. What it holds meanwhile is bounded by that budget.
#[test]
fn a_client_that_never_reads_is_read_then_ended_by_its_write_deadline() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let write_deadline = Duration::from_secs(3);
    let server = thread::spawn(move || {
        let t = Timeouts {
            write: Some(write_deadline),
            ..timeouts()
        };
        let started = std::time::Instant::now();
        // A 1 MiB limit: the budget is its minimum, 32 MiB.
        let conn = HostStream::new(a, Peer::Other("test guest".into()), t);
        (serve_reverse_max(conn, 1 << 20), started.elapsed())
    });
    // A raw client: its HELLO, then requests, and not a byte read.
    b.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let hello = svmc_comm::Hello::new::<svmc::ServiceVm>(frame::DEFAULT_MAX_BODY);
    let mut f = frame::encode(FrameKind::Hello, &hello, frame::HELLO_MAX_BODY).unwrap();
    b.write_all(&f).unwrap();
    let mut id = 0;
    let mut request = |b: &mut UnixStream, len: usize| {
        id += 1;
        f.clear();
        let r = Request::Reverse(vec![7; len]);
        svmc_comm::envelope::encode_request_into(RequestId(id), &r, u32::MAX, &mut f).unwrap();
        b.write_all(&f)
    };
    // 48 MiB of 48 KiB requests, more than the budget holds answers for:
    // all read (answered or refused), none blocks the writer.
    for i in 0..1024 {
        if let Err(e) = request(&mut b, 48 * 1024) {
            panic!("the server stopped reading after {i} requests of 48 KiB: {e}");
        }
    }
    // Then tiny ones, refused once the budget is spent, until the server
    // stops reading.
    let mut tiny = 0;
    let why = loop {
        if let Err(e) = request(&mut b, 1) {
            break e;
        }
        tiny += 1;
        assert!(tiny < 200_000, "the server never stopped reading");
    };
    assert!(
        matches!(
            why.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the writer was not blocked but {why:?} after {tiny} tiny requests"
    );
    let (served, took) = server.join().unwrap();
    assert!(
        matches!(served, Err(Error::Timeout(Step::Write))),
        "{served:?} after {tiny} tiny requests"
    );
    assert!(took < write_deadline * 5, "ended after {took:?}");
}

#[test]
fn send_to_closed_peer_is_closed_then_shutdown_is_typed() {
    let (mut a, b) = pair();
    drop(b);
    a.begin(Step::Write);
    assert!(matches!(a.send(b"x"), Err(Error::Closed)));
    a.shutdown().unwrap();
    assert!(matches!(a.send(b"x"), Err(Error::ShutDown)));
    assert!(matches!(a.recv(&mut [0; 4]), Err(Error::ShutDown)));
}

#[test]
fn peer_closing_with_unread_data_is_reset() {
    let (mut a, b) = pair();
    a.send(b"unread").unwrap();
    drop(b);
    // Linux reports ECONNRESET to the sender when the receiver closes with
    // data unread.
    let r = a.recv(&mut [0; 4]);
    assert!(matches!(r, Err(Error::Reset)), "{r:?}");
}

#[test]
fn clean_close_between_frames_is_closed() {
    let (mut a, b) = pair();
    drop(b);
    let mut buf = Vec::new();
    let r = framed::recv_frame(&mut a, 1024, &mut buf);
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[test]
fn write_deadline_covers_the_whole_frame() {
    // The peer never reads: a large frame cannot be written in time.
    let (mut a, _b) = pair();
    a.set_timeouts(Timeouts {
        write: Some(Duration::from_millis(200)),
        ..timeouts()
    });
    let (r, took) = timed(|| framed::send_frame(&mut a, &vec![0; 8 << 20]));
    assert!(matches!(r, Err(Error::Timeout(Step::Write))), "{r:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

#[test]
fn many_small_frames_do_not_reset_the_socket_timeout_each_time() {
    // Functional check of the cached timeout: a stream with a long read
    // deadline keeps working across many frames and a short one still
    // fires afterwards.
    let (mut a, mut b) = pair();
    let mut buf = Vec::new();
    for i in 0..500u32 {
        framed::send_frame(&mut b, &response_frame(&i.to_be_bytes())).unwrap();
        framed::recv_frame(&mut a, 1024, &mut buf).unwrap();
    }
    a.set_timeouts(Timeouts {
        read: Some(Duration::from_millis(100)),
        ..timeouts()
    });
    let (r, took) = timed(|| framed::recv_frame(&mut a, 1024, &mut buf));
    assert!(matches!(r, Err(Error::Timeout(Step::Read))), "{r:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}
