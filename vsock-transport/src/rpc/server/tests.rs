use alloc::string::String;
use alloc::vec;

use alloc::vec::Vec;

use svmc_comm::Hello;
use svmc_comm::Protocol;
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};

use super::*;
use crate::Error;
use crate::rpc::test_protocol::{Info, Request, Response, TestError, TestService, TestVm};

type Conn = ServerConn<TestVm>;

fn info() -> Info {
    Info {
        firmware: "test".into(),
        firmware_version: "0".into(),
        protocol_version: TestVm::VERSION,
        arch: "test".into(),
        max_body: 1 << 20,
        heap: None,
    }
}

fn hello_frame(max_body: u32) -> Vec<u8> {
    frame::encode(
        FrameKind::Hello,
        &Hello::new::<TestVm>(max_body),
        frame::HELLO_MAX_BODY,
    )
    .unwrap()
}

fn request(id: u32, r: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode_request_into(RequestId(id), r, u32::MAX, &mut out).unwrap();
    out
}

/// Feeds `bytes` (all of them, processing frames as needed, sending
/// output as it comes) and returns the frames sent.
fn feed(s: &mut Conn, h: &mut impl Handler<TestVm>, bytes: &[u8]) -> Vec<u8> {
    let mut sent = Vec::new();
    pump(s, h, bytes, Some(&mut sent));
    drain(s, &mut sent);
    sent
}

/// Feeds `bytes` while the connection takes them, processing frames
/// as they complete, and sending the output into `sent` as it comes
/// (`None`: a client that writes and does not read); returns the
/// frames processed and the bytes not taken.
fn pump(
    s: &mut Conn,
    h: &mut impl Handler<TestVm>,
    mut bytes: &[u8],
    mut sent: Option<&mut Vec<u8>>,
) -> (usize, usize) {
    let mut processed = 0;
    loop {
        if let Some(sent) = sent.as_deref_mut() {
            drain(s, sent);
        }
        if s.process(h) {
            processed += 1;
            continue;
        }
        if bytes.is_empty() || !s.wants_input() {
            break;
        }
        let buf = s.input_buf();
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        s.received(n);
    }
    (processed, bytes.len())
}

fn drain(s: &mut Conn, sent: &mut Vec<u8>) {
    while !s.output().is_empty() {
        let n = s.output().len();
        sent.extend_from_slice(s.output());
        s.sent(n);
    }
}

/// Splits a byte stream into (kind, body) frames.
fn frames(mut bytes: &[u8]) -> Vec<(FrameKind, Vec<u8>)> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let h = Header::parse(bytes[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
        let end = HEADER_LEN + h.len as usize;
        v.push((h.kind, bytes[HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    v
}

fn response(body: &[u8]) -> (u32, Response) {
    let (id, r) = envelope::decode::<Response>(body);
    (id.unwrap().0, r.unwrap())
}

fn error(body: &[u8]) -> ProtocolError {
    frame::decode_body(body).unwrap()
}

fn config() -> ServeConfig {
    ServeConfig {
        max_body: 1 << 20,
        ..ServeConfig::default()
    }
}

/// A connection after the HELLO exchange, our HELLO already checked.
fn connected(budget: &Budget, client_max: u32) -> (Conn, TestService<fn() -> Info>) {
    let mut s = Conn::new(config(), budget.clone());
    let mut h = TestService::new(info as fn() -> Info);
    let out = frames(&feed(&mut s, &mut h, &hello_frame(client_max)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, FrameKind::Hello);
    let ours: Hello = Hello::decode_checked::<TestVm>(&out[0].1).unwrap();
    assert_eq!(ours.max_body, 1 << 20);
    assert!(s.hello_done());
    (s, h)
}

#[test]
fn pipelined_requests_are_answered_in_order_with_their_ids() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut burst = Vec::new();
    for (i, id) in [7u32, 3, 900, u32::MAX].into_iter().enumerate() {
        burst.extend(request(id, &Request::Reverse(vec![i as u8, 1, 2])));
    }
    burst.extend(request(5, &Request::Info));
    // Byte by byte: the assembler copes with any split.
    let mut out = Vec::new();
    for b in &burst {
        out.extend(feed(&mut s, &mut h, core::slice::from_ref(b)));
    }
    let got: Vec<_> = frames(&out)
        .into_iter()
        .map(|(k, b)| {
            assert_eq!(k, FrameKind::Response);
            response(&b)
        })
        .collect();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], (7, Response::Reverse(vec![2, 1, 0])));
    assert_eq!(got[1], (3, Response::Reverse(vec![2, 1, 1])));
    assert_eq!(got[2].0, 900);
    assert_eq!(got[3].0, u32::MAX);
    assert_eq!(got[4], (5, Response::Info(info())));
    // GOODBYE ends it cleanly.
    assert!(feed(&mut s, &mut h, &frame::goodbye()).is_empty());
    assert!(s.is_done());
    assert!(matches!(s.take_end(), Some(Ok(Ended::Goodbye))));
}

#[test]
fn bodies_of_every_size_in_turn_are_answered_exactly() {
    // The receive buffer keeps the largest body's length: a smaller
    // frame after a larger one must see only its own bytes, typed or
    // in place, and the budget comes back whole.
    let budget = Budget::new(1 << 20);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let big =
        |seed: u8, n: usize| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect() };
    let sizes = [200_000usize, 3, 0, 70_000, 200_000, 17, 66_000];
    for (i, &n) in sizes.iter().enumerate() {
        let data = big(i as u8 + 3, n);
        let id = i as u32;
        let out = frames(&feed(
            &mut s,
            &mut h,
            &request(id, &Request::Reverse(data.clone())),
        ));
        let mut want = data;
        want.reverse();
        assert_eq!(out.len(), 1, "size {n}");
        assert_eq!(
            response(&out[0].1),
            (id, Response::Reverse(want)),
            "size {n}"
        );
        // A typed request after it.
        let out = frames(&feed(&mut s, &mut h, &request(100 + id, &Request::Info)));
        assert_eq!(response(&out[0].1), (100 + id, Response::Info(info())));
    }
    drop(s);
    assert_eq!(budget.free(), 1 << 20);
}

#[test]
fn every_error_before_hello_is_fatal() {
    let cases: Vec<Vec<u8>> = vec![
        request(1, &Request::Info),
        frame::goodbye().to_vec(),
        vec![0x02, 0, 0, 0, 0], // empty REQUEST
        vec![0x09, 0, 0, 0, 1, 0],
        {
            let mut h = hello_frame(1024);
            h[HEADER_LEN + 10] ^= 0xff; // garbles the body
            h
        },
    ];
    for bytes in cases {
        let mut s = Conn::new(config(), Budget::unlimited());
        let mut h = TestService::new(info as fn() -> Info);
        let out = frames(&feed(&mut s, &mut h, &bytes));
        assert_eq!(out[0].0, FrameKind::Hello);
        assert_eq!(out.len(), 2, "{bytes:02x?}");
        assert_eq!(out[1].0, FrameKind::Error);
        assert!(error(&out[1].1).fatal, "{bytes:02x?}");
        assert!(s.is_done());
        assert!(matches!(s.take_end(), Some(Err(_))));
    }
}

#[test]
fn another_version_is_refused_with_both_versions() {
    let mut s = Conn::new(config(), Budget::unlimited());
    let mut h = TestService::new(info as fn() -> Info);
    let old = Hello {
        protocol: TestVm::NAME.into(),
        version: 1,
        max_body: 100,
        ext: Vec::new(),
    };
    let f = frame::encode(FrameKind::Hello, &old, frame::HELLO_MAX_BODY).unwrap();
    let out = frames(&feed(&mut s, &mut h, &f));
    let e = error(&out[1].1);
    assert_eq!(
        (e.code, e.fatal),
        (ProtocolErrorCode::VersionMismatch, true)
    );
    let Some(Err(Error::Protocol(svmc_comm::Error::VersionMismatch { ours, theirs }))) =
        s.take_end()
    else {
        panic!("not a version mismatch");
    };
    assert_eq!((ours, theirs), (TestVm::VERSION, 1));
}

#[test]
fn bad_requests_get_a_non_fatal_error_with_their_id() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    // [4, "sum"]: an unknown request.
    let mut f = vec![0x02, 0, 0, 0, 6, 0x82, 0x04, 0x63];
    f.extend(b"sum");
    let out = frames(&feed(&mut s, &mut h, &f));
    let e = error(&out[0].1);
    assert_eq!(e.code, ProtocolErrorCode::UnknownVariant);
    assert!(!e.fatal);
    assert_eq!(e.id, Some(RequestId(4)));
    // A RESPONSE from the client, an empty REQUEST: non-fatal, no id.
    let out = frames(&feed(&mut s, &mut h, &[0x03, 0, 0, 0, 1, 0x00]));
    assert_eq!(error(&out[0].1).code, ProtocolErrorCode::UnexpectedFrame);
    let out = frames(&feed(&mut s, &mut h, &[0x02, 0, 0, 0, 0]));
    assert!(!error(&out[0].1).fatal);
    // Still serving.
    let out = frames(&feed(&mut s, &mut h, &request(9, &Request::Info)));
    assert_eq!(response(&out[0].1).0, 9);
}

#[test]
fn goodbye_with_a_body_is_too_large_and_fatal() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let out = frames(&feed(&mut s, &mut h, &[0x05, 0, 0, 0, 1, 0]));
    let e = error(&out[0].1);
    assert_eq!((e.code, e.fatal), (ProtocolErrorCode::TooLarge, true));
    assert!(matches!(s.take_end(), Some(Err(_))));
}

#[test]
fn a_response_over_the_clients_limit_is_payload_too_large() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 100);
    let out = frames(&feed(
        &mut s,
        &mut h,
        &request(11, &Request::Reverse(vec![1; 200])),
    ));
    let (id, r) = response(&out[0].1);
    assert_eq!(id, 11);
    let Response::Err(TestError::PayloadTooLarge { len, max }) = r else {
        panic!("{r:?}");
    };
    assert_eq!(max, 100);
    assert_eq!(
        len,
        envelope::body_len(RequestId(11), &Response::Reverse(vec![1; 200])).unwrap() as u64
    );
}

#[test]
fn an_answer_not_even_its_refusal_fits_is_a_non_fatal_code_2() {
    // max_body 0 (and 10): no RESPONSE fits, not even payload_too_large;
    // every request still gets its answer, an ERROR code 2 with its id.
    for client_max in [0, 10] {
        let budget = Budget::unlimited();
        let (mut s, mut h) = connected(&budget, client_max);
        for (id, r) in [(11, Request::Info), (12, Request::Reverse(vec![1; 200]))] {
            let out = frames(&feed(&mut s, &mut h, &request(id, &r)));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, FrameKind::Error);
            let e = error(&out[0].1);
            assert_eq!(
                (e.code, e.fatal, e.id),
                (ProtocolErrorCode::TooLarge, false, Some(RequestId(id))),
                "max_body {client_max}: {e:?}"
            );
            assert!(e.detail.contains("your max_body"), "{}", e.detail);
        }
        assert!(!s.is_ending());
    }
}

#[test]
fn a_request_without_memory_is_dropped_and_answered_out_of_memory() {
    let budget = Budget::new(150_000);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let big = request(21, &Request::Reverse(vec![3; 200_000]));
    let out = frames(&feed(&mut s, &mut h, &big));
    let (id, r) = response(&out[0].1);
    assert_eq!(id, 21);
    assert!(
        matches!(r, Response::Err(TestError::OutOfMemory { requested }) if requested == big.len() as u64 - HEADER_LEN as u64)
    );
    assert_eq!(budget.free(), 150_000);
    // In step: the next request (which fits) is served.
    let ok = request(22, &Request::Reverse(vec![3; 100_000]));
    let out = frames(&feed(&mut s, &mut h, &ok));
    assert_eq!(
        response(&out[0].1),
        (22, Response::Reverse(vec![3; 100_000]))
    );
    // The connection keeps its receive buffer, and the budget for it,
    // until it ends (or its driver finds it quiet).
    assert_eq!(budget.free(), 150_000 - (ok.len() - HEADER_LEN));
    drop(s);
    assert_eq!(budget.free(), 150_000);
}

#[test]
fn the_budget_is_held_until_the_answer_is_sent_and_given_back_on_drop() {
    let budget = Budget::new(1 << 20);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let big = request(1, &Request::Reverse(vec![3; 100_000]));
    // Everything but the last byte: reserved from the header on.
    let mut sent = Vec::new();
    let mut bytes = &big[..big.len() - 1];
    while !bytes.is_empty() {
        let buf = s.input_buf();
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        bytes = &bytes[n..];
        s.received(n);
    }
    let held = (1 << 20) - budget.free();
    assert_eq!(held, big.len() - HEADER_LEN);
    s.input_buf()[0] = big[big.len() - 1];
    s.received(1);
    assert!(s.process(&mut h));
    // The answer is queued, not sent: still held.
    assert_eq!((1 << 20) - budget.free(), held);
    s.sent(10);
    drain(&mut s, &mut sent);
    // Answered in place: the buffer is the connection's receive buffer
    // again, with its share of the budget.
    assert_eq!((1 << 20) - budget.free(), held);
    // Until its driver finds the connection quiet and takes it back.
    assert!(s.release_idle_body());
    assert_eq!(budget.free(), 1 << 20);
    assert!(!s.release_idle_body());
    // Not in the middle of a frame: the reservation stays.
    s.input_buf()[..HEADER_LEN].copy_from_slice(&big[..HEADER_LEN]);
    s.received(HEADER_LEN);
    assert_eq!((1 << 20) - budget.free(), held);
    assert!(!s.release_idle_body());
    assert_eq!((1 << 20) - budget.free(), held);
    drop(s);
    assert_eq!(budget.free(), 1 << 20);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut sent = Vec::new();
    feed(&mut s, &mut h, &big);
    drain(&mut s, &mut sent);
    // A connection dropped mid-request gives its reservation back.
    s.input_buf()[..HEADER_LEN].copy_from_slice(&big[..HEADER_LEN]);
    s.received(HEADER_LEN);
    assert!(budget.free() < 1 << 20);
    drop(s);
    assert_eq!(budget.free(), 1 << 20);
}

#[test]
fn a_client_that_does_not_read_gets_every_answer_or_a_refusal() {
    // Pipelined answers never stop the reading (a server that stops
    // reading while its answers cannot leave wedges the connection):
    // small answers fit OUTPUT_HIGH_WATER, then borrow from the budget;
    // large ones are paid from it; what it has no room for is refused.
    let budget = Budget::new(5 << 18);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut burst = Vec::new();
    for id in 0..40u32 {
        burst.extend(request(id, &Request::Reverse(vec![id as u8; 4096])));
    }
    for id in 100..104u32 {
        burst.extend(request(id, &Request::Reverse(vec![id as u8; 1 << 19])));
    }
    burst.extend(request(200, &Request::Info));
    let (processed, left) = pump(&mut s, &mut h, &burst, None);
    assert_eq!(left, 0, "every byte was read without a byte sent");
    assert!(processed < 45);
    let mut sent = Vec::new();
    drain(&mut s, &mut sent);
    let got = frames(&sent);
    assert_eq!(got.len(), 45, "exactly one answer each");
    let mut answered = 0;
    for ((_, body), want) in got.iter().zip((0..40).chain(100..104).chain([200])) {
        let (id, r) = response(body);
        assert_eq!(id, want, "in order");
        match r {
            Response::Err(TestError::OutOfMemory { requested }) => {
                assert!(requested > 0)
            }
            Response::Reverse(b) => {
                assert!(b.iter().all(|&x| x == want as u8));
                answered += 1;
            }
            Response::Info(_) => answered += 1,
            other => panic!("{other:?}"),
        }
    }
    // The small answers fit the high water and then borrow from the
    // budget, which holds two of the 512 KiB ones as well.
    assert_eq!(answered, 40 + 2 + 1, "{answered} answered");
    drop(s);
    assert_eq!(budget.free(), 5 << 18);
}

#[test]
fn refusals_pile_up_to_their_room_then_reading_stops() {
    let budget = Budget::new(256 << 10);
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut burst = Vec::new();
    for id in 0..5000u32 {
        burst.extend(request(id, &Request::Reverse(vec![1; 1000])));
    }
    let (_, left) = pump(&mut s, &mut h, &burst, None);
    assert!(left > 0, "a client that never reads is held back");
    assert!(!s.wants_input());
    assert!(budget.free() < 2048, "the budget was borrowed from");
    assert!(s.output_len() <= OUTPUT_HIGH_WATER + (256 << 10) + REFUSAL_ROOM + 2048);
    // Once it reads, the rest is read and answered, one answer each.
    let mut sent = Vec::new();
    drain(&mut s, &mut sent);
    sent.extend(feed(&mut s, &mut h, &burst[burst.len() - left..]));
    let ids: Vec<u32> = frames(&sent).iter().map(|(_, b)| response(b).0).collect();
    assert_eq!(ids, (0..5000).collect::<Vec<_>>());
    // Everything borrowed is given back once the answers are out.
    drop(s);
    assert_eq!(budget.free(), 256 << 10);
}

#[test]
fn client_errors_non_fatal_ignored_fatal_ends() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let e = |fatal| {
        frame::encode(
            FrameKind::Error,
            &ProtocolError::new(ProtocolErrorCode::BadMessage, fatal, String::from("x")),
            frame::ERROR_MAX_BODY,
        )
        .unwrap()
    };
    assert!(feed(&mut s, &mut h, &e(false)).is_empty());
    assert_eq!(s.ignored_errors(), 1);
    assert!(!s.is_ending());
    assert!(feed(&mut s, &mut h, &e(true)).is_empty());
    assert!(matches!(
        s.take_end(),
        Some(Err(Error::Protocol(svmc_comm::Error::Remote(_))))
    ));
}

#[test]
fn half_close_still_gets_the_answers() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut bytes = request(1, &Request::Info);
    bytes.extend(request(2, &Request::Info));
    // Everything arrives, then the end of the stream; nothing is sent
    // until the end has been seen.
    let mut rest = &bytes[..];
    loop {
        if s.process(&mut h) {
            continue;
        }
        if rest.is_empty() {
            break;
        }
        let buf = s.input_buf();
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        s.received(n);
    }
    s.peer_closed();
    assert!(s.is_ending());
    let mut sent = Vec::new();
    drain(&mut s, &mut sent);
    let ids: Vec<u32> = frames(&sent).iter().map(|(_, b)| response(b).0).collect();
    assert_eq!(ids, [1, 2]);
    assert!(matches!(s.take_end(), Some(Ok(Ended::Closed))));
}

#[test]
fn truncated_frame_is_fatal() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let f = request(1, &Request::Reverse(vec![1; 50]));
    feed(&mut s, &mut h, &f[..20]);
    s.peer_closed();
    let mut sent = Vec::new();
    drain(&mut s, &mut sent);
    let out = frames(&sent);
    assert!(error(&out[0].1).fatal);
    assert!(matches!(
        s.take_end(),
        Some(Err(Error::Protocol(svmc_comm::Error::Truncated { .. })))
    ));
}

#[test]
fn busy_sends_only_a_fatal_busy_error() {
    let mut s = Conn::busy("8 connections");
    let mut sent = Vec::new();
    drain(&mut s, &mut sent);
    let out = frames(&sent);
    assert_eq!(out.len(), 1);
    let e = error(&out[0].1);
    assert_eq!((e.code, e.fatal), (ProtocolErrorCode::Busy, true));
    assert!(!s.wants_input());
    assert!(matches!(s.take_end(), Some(Ok(Ended::Busy))));
}

#[test]
fn power_off_answers_then_stops() {
    let budget = Budget::unlimited();
    let (mut s, mut h) = connected(&budget, 1 << 20);
    let mut bytes = request(1, &Request::PowerOff);
    bytes.extend(request(2, &Request::Info));
    let out = frames(&feed(&mut s, &mut h, &bytes));
    assert_eq!(out.len(), 1);
    assert_eq!(response(&out[0].1), (1, Response::PowerOff));
    assert!(h.power_off_requested());
    assert!(matches!(s.take_end(), Some(Ok(Ended::Stopped))));
}
