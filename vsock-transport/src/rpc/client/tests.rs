//! The blocking [`Client`](super::Client) against a scripted server end.

use std::io::Write;
use std::thread;
use std::time::Duration;

use super::*;
use crate::framed::recv_frame;
use crate::mock::{self, MockConnection};
use crate::rpc::test_protocol::{Request, Response, TestVm};
use svmc_comm::Hello;
use svmc_comm::envelope;
use svmc_comm::frame::{DEFAULT_MAX_BODY, ProtocolError, ProtocolErrorCode};

/// A client over a mock pair, and the server's raw end after the HELLO
/// exchange.
fn pair() -> (Client<MockConnection, TestVm>, MockConnection) {
    let (a, mut b) = mock::pair();
    let t = thread::spawn(move || Client::<_, TestVm>::hello(a, DEFAULT_MAX_BODY));
    let hello = frame::encode(
        FrameKind::Hello,
        &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
        DEFAULT_MAX_BODY,
    )
    .unwrap();
    b.send(&hello).unwrap();
    let mut buf = Vec::new();
    recv_frame(&mut b, DEFAULT_MAX_BODY, &mut buf).unwrap();
    (t.join().unwrap().unwrap(), b)
}

/// Reads one request on the server's end: its id and request.
fn read_request(b: &mut MockConnection) -> (RequestId, Request) {
    let mut buf = Vec::new();
    let h = recv_frame(b, DEFAULT_MAX_BODY, &mut buf).unwrap();
    assert_eq!(h.kind, FrameKind::Request);
    let (id, r) = envelope::decode::<Request>(&buf);
    (id.unwrap(), r.unwrap())
}

fn answer(b: &mut MockConnection, id: RequestId, r: &Response) {
    let mut f = Vec::new();
    envelope::encode_response_into(id, r, DEFAULT_MAX_BODY, &mut f).unwrap();
    b.send(&f).unwrap();
}

fn rev(s: &[u8]) -> Request {
    Request::Reverse(s.to_vec())
}

#[test]
fn pipelined_answers_are_matched_by_id_in_any_order() {
    let (mut c, mut b) = pair();
    let ids: Vec<_> = (0..4u8)
        .map(|i| c.send_request(&rev(&[i])).unwrap())
        .collect();
    assert_eq!(c.in_flight(), 4);
    let mut got: Vec<_> = (0..4).map(|_| read_request(&mut b)).collect();
    got.reverse();
    for (id, r) in &got {
        let Request::Reverse(p) = r else { panic!() };
        answer(&mut b, *id, &Response::Reverse(p.clone()));
    }
    for &(id, _) in &got {
        let (rid, r) = c.recv_response().unwrap();
        assert_eq!(rid, id);
        assert_eq!(
            r.unwrap(),
            Response::Reverse(vec![ids.iter().position(|&x| x == id).unwrap() as u8])
        );
    }
    assert_eq!(c.in_flight(), 0);
    assert!(matches!(c.recv_response(), Err(Error::Usage(_))));
}

#[test]
fn unknown_and_duplicate_ids_poison_the_client() {
    let (mut c, mut b) = pair();
    let id = c.send_request(&rev(b"a")).unwrap();
    read_request(&mut b);
    answer(&mut b, RequestId(id.0 + 100), &Response::PowerOff);
    let e = c.recv_response().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(RequestId(x))) if x == id.0 + 100),
        "{e:?}"
    );
    assert!(e.is_fatal());
    assert!(c.is_poisoned());
    // Never touches the stream again.
    let e = c.call(&Request::Info).unwrap_err();
    assert!(
        matches!(&e, Error::Poisoned { source }
            if matches!(**source, Error::Protocol(svmc_comm::Error::UnexpectedId(_)))),
        "{e:?}"
    );
    assert!(e.to_string().contains("reconnect"), "{e}");
    assert!(e.is_fatal());

    let (mut c, mut b) = pair();
    let id = c.send_request(&rev(b"a")).unwrap();
    read_request(&mut b);
    answer(&mut b, id, &Response::PowerOff);
    answer(&mut b, id, &Response::PowerOff);
    assert_eq!(c.recv_response().unwrap().0, id);
    let id2 = c.send_request(&rev(b"b")).unwrap();
    assert_ne!(id2, id);
    let e = c.recv_response().unwrap_err();
    assert!(
        matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(x)) if x == id),
        "{e:?}"
    );
}

#[test]
fn hundreds_of_abandoned_requests_are_discarded_when_answered() {
    let (mut c, mut b) = pair();
    // Each small write takes a socket buffer's slot: answer meanwhile.
    let server = thread::spawn(move || {
        for _ in 0..301 {
            let (id, r) = read_request(&mut b);
            let Request::Reverse(p) = r else { panic!() };
            answer(&mut b, id, &Response::Reverse(p));
        }
        b
    });
    let abandoned: Vec<_> = (0..300u16)
        .map(|i| c.send_request(&rev(&i.to_be_bytes())).unwrap())
        .collect();
    for &id in &abandoned {
        c.abandon(id);
    }
    assert_eq!((c.in_flight(), c.abandoned()), (0, 300));
    let live = c.send_request(&rev(b"live")).unwrap();
    assert!(!abandoned.contains(&live), "no id reused while abandoned");
    let (id, r) = c.recv_response().unwrap();
    assert_eq!(
        (id, r.unwrap()),
        (live, Response::Reverse(b"live".to_vec()))
    );
    assert_eq!((c.discarded(), c.abandoned()), (300, 0));
    assert!(!c.is_poisoned());
    drop(server.join().unwrap());
}

#[test]
fn an_error_without_id_answers_the_oldest_and_is_not_fatal() {
    let (mut c, mut b) = pair();
    let first = c.send_request(&rev(b"a")).unwrap();
    let second = c.send_request(&rev(b"b")).unwrap();
    let pe = ProtocolError::new(ProtocolErrorCode::BadMessage, false, "bad");
    b.send(&frame::encode(FrameKind::Error, &pe, 1024).unwrap())
        .unwrap();
    let pe2 = pe.clone().with_id(Some(second));
    b.send(&frame::encode(FrameKind::Error, &pe2, 1024).unwrap())
        .unwrap();
    let (id, r) = c.recv_response().unwrap();
    assert_eq!(id, first);
    let e = r.unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(svmc_comm::Error::Remote(p)) if *p == pe),
        "{e:?}"
    );
    assert!(!e.is_fatal());
    let (id, r) = c.recv_response().unwrap();
    assert_eq!(id, second);
    assert!(r.is_err());
    assert!(!c.is_poisoned());
    // A fatal one poisons.
    c.send_request(&rev(b"c")).unwrap();
    let pe = ProtocolError::new(ProtocolErrorCode::TooLarge, true, "bye");
    b.send(&frame::encode(FrameKind::Error, &pe, 1024).unwrap())
        .unwrap();
    assert!(c.recv_response().unwrap_err().is_fatal());
    assert!(c.is_poisoned());
}

#[test]
fn call_many_keeps_request_order_and_the_window() {
    let (mut c, mut b) = pair();
    let server = thread::spawn(move || {
        // Answers in batches of 3, in reverse, to check the matching.
        let mut seen = 0;
        while seen < 7 {
            let n = 3.min(7 - seen);
            let mut reqs: Vec<_> = (0..n).map(|_| read_request(&mut b)).collect();
            seen += n;
            reqs.reverse();
            for (id, r) in reqs {
                let Request::Reverse(mut p) = r else { panic!() };
                p.reverse();
                answer(&mut b, id, &Response::Reverse(p));
            }
        }
        b
    });
    let reqs: Vec<_> = (0..7u8).map(|i| rev(&[i, b'x'])).collect();
    let answers = c.call_many(&reqs, 3).unwrap();
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.unwrap(), Response::Reverse(vec![b'x', i as u8]));
    }
    drop(server.join().unwrap());
}

#[test]
fn a_timeout_inside_a_frame_poisons_and_close_sends_no_goodbye() {
    use crate::host_stream::{HostStream, Peer};
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let t = crate::Timeouts {
        read: Some(Duration::from_millis(100)),
        ..crate::Timeouts::uniform(Duration::from_secs(5))
    };
    let conn = HostStream::new(a, Peer::Other("test".into()), t);
    let srv = thread::spawn(move || {
        let mut f = Vec::new();
        frame::encode_into(
            FrameKind::Hello,
            &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
            DEFAULT_MAX_BODY,
            &mut f,
        )
        .unwrap();
        b.write_all(&f).unwrap();
        b
    });
    let mut c = Client::<_, TestVm>::hello(conn, DEFAULT_MAX_BODY).unwrap();
    let mut b = srv.join().unwrap();
    b.write_all(&[3, 0, 0]).unwrap(); // part of a header
    let e = c.call(&Request::Info).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TimeoutInFrame {
                step: Step::Read,
                got: 3
            }
        ),
        "{e:?}"
    );
    assert!(e.is_fatal() && c.is_poisoned());
    let e = c.send_request(&Request::Info).unwrap_err();
    let Error::Poisoned { source } = &e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(**source, Error::TimeoutInFrame { got: 3, .. }),
        "the first error is kept: {e:?}"
    );
    c.close().unwrap();
}

#[test]
fn frame_parts_go_out_whole_through_short_vectored_writes() {
    use crate::framed::send_frame_parts;
    use crate::host_stream::{HostStream, Peer};
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut conn = HostStream::new(a, Peer::Other("test".into()), crate::Timeouts::default());
    // Larger than a socket buffer: sendmsg writes short, and what is
    // left of the head and the tail follows.
    let head: Vec<u8> = (0..21u8).collect();
    let tail: Vec<u8> = (0..1_500_000u32).map(|i| (i * 13) as u8).collect();
    let total = head.len() + tail.len();
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; total];
        std::io::Read::read_exact(&mut b, &mut got).unwrap();
        got
    });
    send_frame_parts(&mut conn, &head, &tail).unwrap();
    assert_eq!(reader.join().unwrap(), [&head[..], &tail[..]].concat());
}

#[test]
fn a_large_reverse_goes_out_as_the_generic_encoding() {
    use crate::host_stream::{HostStream, Peer};
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let conn = HostStream::new(a, Peer::Other("test".into()), crate::Timeouts::default());
    let srv = thread::spawn(move || {
        let mut f = Vec::new();
        frame::encode_into(
            FrameKind::Hello,
            &Hello::new::<TestVm>(DEFAULT_MAX_BODY),
            DEFAULT_MAX_BODY,
            &mut f,
        )
        .unwrap();
        b.write_all(&f).unwrap();
        let mut hello = Vec::new();
        recv_frame(&mut MockStream(&mut b), DEFAULT_MAX_BODY, &mut hello).unwrap();
        let mut body = Vec::new();
        let h = recv_frame(&mut MockStream(&mut b), DEFAULT_MAX_BODY, &mut body).unwrap();
        assert_eq!(h.kind, FrameKind::Request);
        let mut raw = h.to_bytes().to_vec();
        raw.extend_from_slice(&body);
        let (id, r) = envelope::decode::<Request>(&body);
        let Ok(Request::Reverse(mut p)) = r else {
            panic!("{r:?}")
        };
        p.reverse();
        let mut f = Vec::new();
        envelope::encode_response_into(id.unwrap(), &Response::Reverse(p), u32::MAX, &mut f)
            .unwrap();
        b.write_all(&f).unwrap();
        raw
    });
    let mut c = Client::<_, TestVm>::hello(conn, DEFAULT_MAX_BODY).unwrap();
    // Larger than a socket buffer: the send writes short, the rest follows.
    let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7) as u8).collect();
    let request = Request::Reverse(payload.clone());
    let answer = c.call(&request).unwrap();
    let mut want = Vec::new();
    envelope::encode_request_into(RequestId(1), &request, u32::MAX, &mut want).unwrap();
    assert_eq!(
        srv.join().unwrap(),
        want,
        "the generic encoding, byte for byte"
    );
    let mut reversed = payload;
    reversed.reverse();
    assert_eq!(answer, Response::Reverse(reversed));
}

/// A `Connection` on a raw Unix socket, for the test server above.
struct MockStream<'a>(&'a mut std::os::unix::net::UnixStream);

impl Connection for MockStream<'_> {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        self.0.write_all(buf).map_err(|e| Error::io("send", e))
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        std::io::Read::read(self.0, buf).map_err(|e| Error::io("recv", e))
    }
    fn shutdown(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A protocol whose name no HELLO can carry (WIRE.md: 1 to 64 bytes).
struct LongName;
impl Protocol for LongName {
    const NAME: &'static str = "org.example.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.long-protocol-name.lo";
    const VERSION: u32 = 1;
    type Request = Request;
    type Response = Response;
}

#[test]
fn a_name_over_64_bytes_fails_before_anything_is_sent() {
    assert_eq!(LongName::NAME.len(), 280);
    let (a, mut b) = mock::pair();
    let e = Client::<_, LongName>::hello(a, DEFAULT_MAX_BODY).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol(svmc_comm::Error::InvalidName {
                len: 280,
                max: 64,
                ..
            })
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("HELLO") && text.contains(LongName::NAME),
        "{text}"
    );
    // Nothing went out: the client dropped its end, so the peer reads EOF.
    let mut byte = [0u8; 1];
    assert_eq!(b.recv(&mut byte).unwrap(), 0);

    // The server refuses the same way, before its HELLO.
    struct Never;
    impl crate::rpc::Handler<LongName> for Never {
        fn handle(&mut self, _: Request) -> (Response, crate::rpc::Then) {
            unreachable!()
        }
    }
    let (mut a, mut b) = mock::pair();
    let e =
        crate::rpc::serve::<LongName, _, _>(&mut a, &mut Never, Default::default()).unwrap_err();
    assert!(e.to_string().contains(LongName::NAME), "{e}");
    assert_eq!(b.recv(&mut byte).unwrap(), 0);
}
