//! The hybrid vsock backend end to end over real Unix sockets: a test
//! thread plays the VM's vsock device (the `CONNECT`/`OK` handshake) and the
//! guest's service behind it.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use svmc::Request;
use svmc_comm::frame::{self, FrameKind, ProtocolError, ProtocolErrorCode};
use vsock_transport::host_stream::Peer;
use vsock_transport::hybrid::{self, HybridStream, Listener};
use vsock_transport::rpc::{Client, Ended, Handler};
use vsock_transport::{Connection, Error, Step, Timeouts, framed};

use common::*;

/// How the fake device answers `CONNECT <port>\n`.
enum Answer {
    /// `OK <n>\n`, then hand the stream to the guest's code.
    Ok(u32),
    /// These bytes, then wait for the host to hang up.
    Raw(Vec<u8>),
    /// Nothing; wait for the host to hang up.
    Silent,
    /// Close the connection (nobody listens on the guest port).
    Hangup,
}

/// A fresh directory and the device socket path inside it.
fn uds() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    (dir, path)
}

/// Plays the VM's vsock device for one host-initiated connection: listens on
/// `uds_path` (before returning, so the host can connect at once), reads the
/// `CONNECT` line, answers as told, and for [`Answer::Ok`] runs `guest` on
/// the stream. Returns the port the host asked for and `guest`'s result.
fn device<T: Send + 'static>(
    uds_path: &Path,
    answer: Answer,
    guest: impl FnOnce(UnixStream) -> T + Send + 'static,
) -> JoinHandle<(u32, Option<T>)> {
    let listener = UnixListener::bind(uds_path).unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while line.last() != Some(&b'\n') {
            assert_eq!(s.read(&mut b).unwrap(), 1, "host hung up during CONNECT");
            line.push(b[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let port = line
            .strip_prefix("CONNECT ")
            .and_then(|l| l.strip_suffix('\n'))
            .expect("CONNECT <port>\\n")
            .parse()
            .unwrap();
        match answer {
            Answer::Ok(n) => {
                s.write_all(format!("OK {n}\n").as_bytes()).unwrap();
                return (port, Some(guest(s)));
            }
            Answer::Raw(bytes) => s.write_all(&bytes).unwrap(),
            Answer::Silent => {}
            Answer::Hangup => return (port, None),
        }
        // Wait for the host to give up.
        let _ = s.read_to_end(&mut Vec::new());
        (port, None)
    })
}

/// A device that answers `OK <n>` and serves the reverse service.
fn serving_device(
    uds_path: &Path,
    n: u32,
) -> JoinHandle<(u32, Option<vsock_transport::Result<Ended>>)> {
    device(uds_path, Answer::Ok(n), |s| serve_reverse(guest_conn(s)))
}

fn connect(uds_path: &Path) -> vsock_transport::Result<HybridStream> {
    hybrid::connect(uds_path, 7001, &timeouts())
}

#[test]
fn connect_ok_with_guest_port() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let conn = connect(&uds).unwrap();
    assert_eq!(
        conn.peer(),
        &Peer::HybridConnected {
            uds_path: uds.clone(),
            port: 7001,
            ok_port: 7001
        }
    );
    let mut c = client(conn);
    check_reverse(&mut c, b"hello, guest");
    c.close().unwrap();
    let (port, served) = dev.join().unwrap();
    assert_eq!(port, 7001);
    assert_eq!(served.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn connect_ok_with_host_side_port() {
    // Firecracker answers with the host-side port it assigned.
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 1_073_741_824);
    let conn = connect(&uds).unwrap();
    let Peer::HybridConnected { ok_port, .. } = conn.peer() else {
        panic!("{:?}", conn.peer())
    };
    assert_eq!(*ok_port, 1_073_741_824);
    let mut c = client(conn);
    check_reverse(&mut c, b"x");
    drop(c);
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Closed);
}

#[test]
fn wrong_handshake_replies_are_handshake_errors() {
    let overlong = vec![b'A'; 100];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\n".to_vec(), "garbage\\n"),
        (b"OK\n".to_vec(), "OK\\n"),
        (b"OK \n".to_vec(), "OK \\n"),
        (b"OK 12x\n".to_vec(), "OK 12x\\n"),
        (b"OK 99999999999\n".to_vec(), "99999999999"),
        (b"ok 7001\n".to_vec(), "ok 7001"),
        (b"OK 7001\r\n".to_vec(), "\\r\\n"),
        (b"\xff\x00\n".to_vec(), "\\xff\\x00\\n"),
        (overlong, "no end of line within 64 bytes"),
        (b"OK 70".to_vec(), "connection closed after \"OK 70\""),
    ];
    for (reply, expect) in cases {
        let (_dir, uds) = uds();
        let closes = !reply.ends_with(b"\n") && reply.len() < 64;
        let answer = Answer::Raw(reply.clone());
        let dev = if closes {
            // Send the partial line, then hang up.
            let l = UnixListener::bind(&uds).unwrap();
            thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut line = [0u8; 13];
                s.read_exact(&mut line).unwrap();
                s.write_all(&reply).unwrap();
                (0, None)
            })
        } else {
            device(&uds, answer, |_| ())
        };
        let err = connect(&uds).unwrap_err();
        let Error::HybridConnect(msg) = &err else {
            panic!("expected a handshake error for {expect:?}, got {err:?}");
        };
        assert!(msg.contains(expect), "{msg:?} should contain {expect:?}");
        assert!(msg.len() < 400, "message not truncated: {msg}");
        dev.join().unwrap();
    }
}

#[test]
fn silent_device_times_out_in_hybrid_connect() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Silent, |_| ());
    let t = Timeouts {
        hybrid_connect: Some(Duration::from_millis(300)),
        ..timeouts()
    };
    let (r, took) = timed(|| hybrid::connect(&uds, 7001, &t));
    assert!(
        matches!(r, Err(Error::Timeout(Step::HybridConnect))),
        "{r:?}"
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    dev.join().unwrap();
}

#[test]
fn hangup_before_reply_is_refused_at_once() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Hangup, |_| ());
    let (r, took) = timed(|| connect(&uds));
    assert!(matches!(r, Err(Error::Refused { port: 7001 })), "{r:?}");
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    assert_eq!(dev.join().unwrap().0, 7001);
}

#[test]
fn no_device_is_an_io_error() {
    let (_dir, uds) = uds();
    let err = connect(&uds).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("vsock.sock"), "{err}");
    // A socket file nobody listens on.
    drop(UnixListener::bind(&uds).unwrap());
    let err = connect(&uds).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
}

#[test]
fn a_killed_peer_poisons_the_client_with_its_error_as_the_source() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        let mut conn = guest_conn(s);
        let hello = frame::encode(
            FrameKind::Hello,
            &svmc_comm::Hello::new::<svmc::ServiceVm>(frame::DEFAULT_MAX_BODY),
            frame::HELLO_MAX_BODY,
        )
        .unwrap();
        framed::send_frame(&mut conn, &hello).unwrap();
        let mut buf = Vec::new();
        framed::recv_frame_as(&mut conn, frame::HELLO_MAX_BODY, &mut buf, Step::Hello).unwrap();
        // Killed with the rest of the request unread: the socket resets.
        assert_eq!(conn.recv(&mut [0u8]).unwrap(), 1);
    });
    let mut c = client(connect(&uds).unwrap());
    let first = c.call(&Request::Reverse(b"abc".to_vec())).unwrap_err();
    assert!(matches!(first, Error::Reset), "{first:?}");
    dev.join().unwrap();
    let later = c.call(&Request::Info).unwrap_err();
    let Error::Poisoned { source } = &later else {
        panic!("{later:?}")
    };
    assert!(matches!(**source, Error::Reset), "{later:?}");
    let shown = std::error::Error::source(&later).map(|s| s.to_string());
    assert_eq!(shown, Some(first.to_string()), "the chain names the cause");
}

#[test]
fn peer_closing_mid_frame_is_truncated() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        let mut conn = guest_conn(s);
        raw_server_until_request(&mut conn);
        let f = response_frame(b"abcdef");
        conn.send(&f[..f.len() - 3]).unwrap();
        // Dropped: closed after part of the frame.
    });
    let mut c = client(connect(&uds).unwrap());
    let err = c.call(&Request::Reverse(b"fedcba".to_vec())).unwrap_err();
    let len = response_frame(b"abcdef").len();
    assert!(
        matches!(err, Error::Protocol(svmc_comm::Error::Truncated { expected, got }) if expected == len && got == len - 3),
        "{err:?}"
    );
    dev.join().unwrap();
}

#[test]
fn trickling_peer_times_out_per_frame() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        let mut conn = guest_conn(s);
        raw_server_until_request(&mut conn);
        // One byte per 100 ms: each byte is well within any per-byte
        // timeout, the frame is not within its deadline.
        for b in response_frame(b"0123456789") {
            if conn.send(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let t = Timeouts {
        read: Some(Duration::from_millis(500)),
        ..timeouts()
    };
    let mut c = client(hybrid::connect(&uds, 7001, &t).unwrap());
    let (r, took) = timed(|| c.call(&Request::Reverse(b"9876543210".to_vec())));
    // Part of the frame had arrived: out of step, fatal, and the client
    // is poisoned.
    assert!(
        matches!(r, Err(Error::TimeoutInFrame { step: Step::Read, got }) if got > 0),
        "{r:?}"
    );
    assert!(c.is_poisoned());
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}");
    drop(c);
    dev.join().unwrap();
}

#[test]
fn eight_mib_round_trip() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let mut c = client(connect(&uds).unwrap());
    let p = payload(8 << 20);
    check_reverse(&mut c, &p);
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn many_requests_on_one_connection() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let mut c = client(connect(&uds).unwrap());
    for i in 0..2000 {
        check_reverse(&mut c, &payload(i % 300 + 1));
    }
    check_reverse(&mut c, &payload(100_000));
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn version_mismatch_is_detected_on_both_sides() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let conn = connect(&uds).unwrap();
    let err = Client::<_, ServiceVmNext>::hello(conn, frame::DEFAULT_MAX_BODY)
        .expect_err("handshake must fail");
    assert!(
        matches!(
            err,
            Error::Protocol(svmc_comm::Error::VersionMismatch { ours: 3, theirs: 2 })
        ),
        "{err:?}"
    );
    let served = dev.join().unwrap().1.unwrap();
    assert!(
        matches!(
            served,
            Err(Error::Protocol(svmc_comm::Error::VersionMismatch {
                ours: 2,
                theirs: 3
            }))
        ),
        "{served:?}"
    );
}

/// R-HELLO-6: a client may accept bodies of 0 bytes; its `HELLO` and the
/// server's still go (they have a limit of their own), and an answer too
/// large for it is refused by the server, not a failed connection.
#[test]
fn a_client_that_takes_no_body_still_says_hello() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let mut c = Client::<_, svmc::ServiceVm>::hello(connect(&uds).unwrap(), 0).expect("HELLO");
    let err = c.call(&Request::Info).expect_err("no answer fits 0 bytes");
    assert!(!err.is_fatal(), "{err:?}");
    c.close().unwrap();
    dev.join().unwrap();
}

#[test]
fn oversized_request_is_refused_locally() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        serve_reverse_max(guest_conn(s), 1024)
    });
    let mut c = client(connect(&uds).unwrap());
    assert_eq!(c.peer_max_body(), 1024);
    let err = c.call(&Request::Reverse(vec![0; 2000])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(svmc_comm::Error::TooLargeToSend { max: 1024, .. })
        ),
        "{err:?}"
    );
    // Nothing was sent: the connection goes on.
    check_reverse(&mut c, b"still there");
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn garbage_body_gets_an_error_frame_and_the_connection_goes_on() {
    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let mut c = client(connect(&uds).unwrap());
    // A REQUEST frame whose body is not CBOR.
    framed::send_frame(c.connection(), &[0x02, 0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    let mut buf = Vec::new();
    let h = framed::recv_frame(c.connection(), frame::DEFAULT_MAX_BODY, &mut buf).unwrap();
    assert_eq!(h.kind, FrameKind::Error);
    let report: ProtocolError = frame::decode_body(&buf).unwrap();
    assert_eq!(report.code, ProtocolErrorCode::BadMessage);
    assert!(!report.fatal, "{report}");
    check_reverse(&mut c, b"after the garbage");
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

// ---------------------------------------------------------------------------
// Guest-initiated connections: the host listens on `<uds_path>_<port>`.

/// A "guest" that connects to the host's listener and serves.
fn guest(path: PathBuf) -> JoinHandle<vsock_transport::Result<Ended>> {
    thread::spawn(move || serve_reverse(guest_conn(UnixStream::connect(path).unwrap())))
}

#[test]
fn an_idle_client_ends_serve_with_idle_timeout() {
    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        let mut conn = guest_conn(s);
        conn.set_timeouts(Timeouts {
            read: Some(Duration::from_millis(200)),
            ..timeouts()
        });
        serve_reverse(conn)
    });
    let mut c = client(hybrid::connect(&uds, 7001, &timeouts()).unwrap());
    check_reverse(&mut c, b"then silence");
    // The client says nothing more: an ending, not an error.
    let (_, served) = dev.join().unwrap();
    let ended = served.expect("served");
    assert!(matches!(ended, Ok(Ended::IdleTimeout)), "{ended:?}");
}

#[test]
fn guest_connects_to_host_listener() {
    let (_dir, uds) = uds();
    let l = Listener::bind(&uds, 7000, timeouts()).unwrap();
    let path = hybrid::listener_path(&uds, 7000);
    assert_eq!(l.path(), path);
    assert_eq!(path.file_name().unwrap(), "vsock.sock_7000");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let g = guest(path.clone());
    let conn = l.accept().unwrap();
    assert_eq!(
        conn.peer(),
        &Peer::HybridAccepted {
            socket_path: path.clone(),
            port: 7000
        }
    );
    let mut c = client(conn);
    check_reverse(&mut c, &payload(3 << 20));
    assert_eq!(
        c.call(&Request::PowerOff).unwrap(),
        svmc::Response::PowerOff
    );
    assert_eq!(g.join().unwrap().unwrap(), Ended::Stopped);
    drop(l);
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn stale_socket_is_replaced_live_one_is_refused() {
    let (_dir, uds) = uds();
    let path = hybrid::listener_path(&uds, 7000);
    // A listener that died without removing its file.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let l = Listener::bind(&uds, 7000, timeouts()).unwrap();
    let g = guest(path.clone());
    let mut c = client(l.accept().unwrap());
    check_reverse(&mut c, b"fresh");
    c.close().unwrap();
    g.join().unwrap().unwrap();

    // Ours is live now: a second listener must not steal it.
    let err = Listener::bind(&uds, 7000, timeouts()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
        "{err:?}"
    );
    // The failed attempt did not remove the live socket.
    assert!(path.exists());
    drop(l);
    assert!(!path.exists());

    // Not a socket: left alone.
    std::fs::write(&path, b"precious").unwrap();
    let err = Listener::bind(&uds, 7000, timeouts()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn accept_times_out() {
    let (_dir, uds) = uds();
    let t = Timeouts {
        accept: Some(Duration::from_millis(200)),
        ..timeouts()
    };
    let l = Listener::bind(&uds, 7000, t).unwrap();
    let (r, took) = timed(|| l.accept());
    assert!(matches!(r, Err(Error::Timeout(Step::Accept))), "{r:?}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Still usable afterwards.
    let g = guest(l.path().to_owned());
    let mut c = client(l.accept().unwrap());
    check_reverse(&mut c, b"late");
    drop(c);
    assert_eq!(g.join().unwrap().unwrap(), Ended::Closed);
}

#[test]
fn version_mismatch_guest_initiated() {
    let (_dir, uds) = uds();
    let l = Listener::bind(&uds, 7000, timeouts()).unwrap();
    let g = guest(l.path().to_owned());
    let err = Client::<_, ServiceVmNext>::hello(l.accept().unwrap(), frame::DEFAULT_MAX_BODY)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(svmc_comm::Error::VersionMismatch { .. })
        ),
        "{err:?}"
    );
    let served = g.join().unwrap();
    assert!(
        matches!(
            served,
            Err(Error::Protocol(svmc_comm::Error::VersionMismatch { .. }))
        ),
        "{served:?}"
    );
}

// ---------------------------------------------------------------------------
// Request ids: a late answer is never handed to the next
// call.

/// Reverses bytes like the guest, but takes `delay` over a request whose
/// payload is `b"slow"`.
struct SlowReverse {
    delay: Duration,
}

impl Handler<svmc::ServiceVm> for SlowReverse {
    fn handle(&mut self, request: Request) -> (svmc::Response, vsock_transport::rpc::Then) {
        if request == Request::Reverse(b"slow".to_vec()) {
            thread::sleep(self.delay);
        }
        Reverse.handle(request)
    }
}

#[test]
fn late_answer_to_a_timed_out_call_is_not_the_next_calls_answer() {
    use svmc::Response;

    let (_dir, uds) = uds();
    let dev = device(&uds, Answer::Ok(7001), |s| {
        let mut conn = guest_conn(s);
        let mut slow = SlowReverse {
            delay: Duration::from_millis(400),
        };
        vsock_transport::rpc::serve::<svmc::ServiceVm, _, _>(
            &mut conn,
            &mut slow,
            vsock_transport::rpc::ServeConfig::default(),
        )
    });
    let t = Timeouts {
        read: Some(Duration::from_millis(250)),
        ..timeouts()
    };
    let mut c = client(hybrid::connect(&uds, 7001, &t).unwrap());
    // `a` is answered after the call gave up: not fatal.
    let r = c.call(&Request::Reverse(b"slow".to_vec()));
    assert!(matches!(r, Err(Error::Timeout(Step::Read))), "{r:?}");
    assert!(!r.unwrap_err().is_fatal());
    assert_eq!((c.in_flight(), c.abandoned()), (0, 1));
    // `b` gets b's answer, not a's; a's is discarded and counted.
    let r = c.call(&Request::Reverse(b"fast".to_vec()));
    assert_eq!(r.unwrap(), Response::Reverse(b"tsaf".to_vec()));
    assert_eq!((c.discarded(), c.abandoned()), (1, 0));
    assert!(!c.is_poisoned());
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn pipelined_requests_over_a_real_socket() {
    use svmc::Response;

    let (_dir, uds) = uds();
    let dev = serving_device(&uds, 7001);
    let mut c = client(connect(&uds).unwrap());
    // Eight sent before reading any answer, then a batch with a window.
    let ids: Vec<_> = (0..8u8)
        .map(|i| c.send_request(&Request::Reverse(vec![i, 0xff])).unwrap())
        .collect();
    assert_eq!(c.in_flight(), 8);
    for (i, id) in ids.iter().enumerate() {
        let (got, r) = c.recv_response().unwrap();
        assert_eq!(got, *id);
        assert_eq!(r.unwrap(), Response::Reverse(vec![0xff, i as u8]));
    }
    let reqs: Vec<_> = (0..100u32)
        .map(|i| Request::Reverse(payload(i as usize * 37 % 500 + 1)))
        .collect();
    let answers = c.call_many(&reqs, 8).unwrap();
    for (req, a) in reqs.iter().zip(answers) {
        let Request::Reverse(p) = req else {
            unreachable!()
        };
        let mut want = p.clone();
        want.reverse();
        assert_eq!(a.unwrap(), Response::Reverse(want));
    }
    // A blocking call with pipelined requests unanswered is refused.
    c.send_request(&Request::Info).unwrap();
    let e = c.call(&Request::Info).unwrap_err();
    assert!(matches!(e, Error::Usage(_)) && !e.is_fatal(), "{e:?}");
    assert!(c.recv_response().unwrap().1.is_ok());
    c.close().unwrap();
    assert_eq!(dev.join().unwrap().1.unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn a_close_before_the_servers_hello_is_a_refusal() {
    // What a client sees of a server at its connection limit that cannot
    // even refuse with `busy` (WIRE.md R-CONN-5): a typed refusal, not a
    // broken connection.
    let (a, b) = pair();
    drop(b);
    let e = Client::<_, svmc::ServiceVm>::hello(a, 1024).unwrap_err();
    assert!(matches!(e, Error::ClosedBeforeHello), "{e:?}");
    assert!(e.is_refused() && e.is_fatal());
    // And `busy` itself.
    let (a, mut b) = pair();
    let busy = frame::encode(
        FrameKind::Error,
        &ProtocolError::new(ProtocolErrorCode::Busy, true, "at the limit"),
        frame::ERROR_MAX_BODY,
    )
    .unwrap();
    b.send(&busy).unwrap();
    let e = Client::<_, svmc::ServiceVm>::hello(a, 1024).unwrap_err();
    assert!(e.is_refused(), "{e:?}");
    assert!(!Error::Closed.is_refused());
}
