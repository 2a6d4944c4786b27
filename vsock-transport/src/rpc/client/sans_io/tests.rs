//! [`ClientCore`] on its own: frames in as bytes, events and frames out,
//! no connection.

use alloc::vec;
use alloc::vec::Vec;

use svmc_comm::envelope;
use svmc_comm::frame::{HEADER_LEN, ProtocolErrorCode};

use super::*;
use crate::rpc::test_protocol::{Request, Response, TestVm};

const MAX: u32 = 1024;

/// A core after a `HELLO` from a server with `ext` on and `MAX` bodies.
fn core_with(ext: Extensions) -> ClientCore<TestVm> {
    let peer = Hello::new::<TestVm>(MAX).with_ext(ext);
    ClientCore::new(MAX, Extensions::ALL, &peer, true)
}

fn core() -> ClientCore<TestVm> {
    core_with(Extensions::ALL)
}

/// Encodes and "writes" a request; its id.
fn send(c: &mut ClientCore<TestVm>, meta: &RequestMeta) -> RequestId {
    let id = c.fresh_id(|_| false);
    let mut out = Vec::new();
    c.encode_request(id, &Request::Info, meta, &mut out)
        .unwrap();
    c.sent(id);
    id
}

/// The frame kind and body of a whole encoded frame.
fn split(frame: &[u8]) -> (FrameKind, Vec<u8>) {
    let h = frame::Header::parse(frame[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
    (h.kind, frame[HEADER_LEN..].to_vec())
}

fn response(id: RequestId, r: &Response) -> (FrameKind, Vec<u8>) {
    let mut f = Vec::new();
    envelope::encode_response_into(id, r, MAX, &mut f).unwrap();
    split(&f)
}

fn error(pe: &ProtocolError) -> (FrameKind, Vec<u8>) {
    split(&frame::encode(FrameKind::Error, pe, MAX).unwrap())
}

fn receive(
    c: &mut ClientCore<TestVm>,
    (kind, mut body): (FrameKind, Vec<u8>),
) -> Result<(RequestId, Result<Response>, Option<ResponseMeta>)> {
    match c.receive(kind, &mut body)? {
        Event::Answer { id, answer, meta } => Ok((id, answer, meta)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ids_count_up_and_skip_those_taken_or_in_flight() {
    let mut c = core();
    let a = send(&mut c, &RequestMeta::default());
    assert_eq!(a, RequestId(1));
    // Id 2 is held by a caller whose frame is not written yet.
    let b = c.fresh_id(|id| id == RequestId(2));
    assert_eq!(b, RequestId(3));
    c.sent(b);
    assert_eq!(c.live(), 2);
}

#[test]
fn answers_in_any_order_find_their_requests() {
    let mut c = core();
    let ids: Vec<_> = (0..4)
        .map(|_| send(&mut c, &RequestMeta::default()))
        .collect();
    for &id in ids.iter().rev() {
        let (got, answer, meta) = receive(&mut c, response(id, &Response::PowerOff)).unwrap();
        assert_eq!((got, answer.unwrap(), meta), (id, Response::PowerOff, None));
    }
    assert_eq!(c.live(), 0);
    // Answered already: an unexpected id, which ends the connection.
    let e = receive(&mut c, response(ids[0], &Response::PowerOff)).unwrap_err();
    assert!(
        matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(x)) if x == ids[0]),
        "{e:?}"
    );
    assert!(c.poison().is_some());
    let e = c.check_usable().unwrap_err();
    assert!(matches!(&e, Error::Poisoned { source }
        if matches!(**source, Error::Protocol(svmc_comm::Error::UnexpectedId(_)))));
}

#[test]
fn abandoned_requests_are_kept_however_many_and_their_answers_dropped() {
    let mut c = core();
    let gone: Vec<_> = (0..1000)
        .map(|_| send(&mut c, &RequestMeta::default()))
        .collect();
    for &id in &gone {
        assert!(c.abandon(id));
    }
    let live = send(&mut c, &RequestMeta::default());
    assert!(!gone.contains(&live));
    assert_eq!((c.live(), c.abandoned()), (1, 1000));
    for &id in &gone {
        let mut body = response(id, &Response::PowerOff).1;
        let e = c.receive(FrameKind::Response, &mut body).unwrap();
        assert!(matches!(e, Event::Discarded));
    }
    assert_eq!((c.abandoned(), c.discarded()), (0, 1000));
    assert_eq!(
        receive(&mut c, response(live, &Response::PowerOff))
            .unwrap()
            .0,
        live
    );
    assert!(c.check_usable().is_ok());
}

#[test]
fn errors_without_id_answer_the_oldest_and_fatal_ones_poison() {
    let mut c = core();
    let first = send(&mut c, &RequestMeta::default());
    let second = send(&mut c, &RequestMeta::default());
    let pe = ProtocolError::new(ProtocolErrorCode::BadMessage, false, "bad");
    let (id, answer, _) = receive(&mut c, error(&pe)).unwrap();
    assert_eq!(id, first);
    let e = answer.unwrap_err();
    assert!(!e.is_fatal(), "{e:?}");
    let (id, _, _) = receive(&mut c, error(&pe.clone().with_id(Some(second)))).unwrap();
    assert_eq!(id, second);
    assert!(c.check_usable().is_ok());

    send(&mut c, &RequestMeta::default());
    let fatal = ProtocolError::new(ProtocolErrorCode::TooLarge, true, "bye");
    let e = receive(&mut c, error(&fatal)).unwrap_err();
    assert!(e.is_fatal());
    // The first fatal error is kept; a later one does not replace it.
    c.fail(Error::Closed);
    let Some(first) = c.poison() else {
        panic!("poisoned")
    };
    assert!(
        matches!(&**first, Error::Protocol(svmc_comm::Error::Remote(p)) if p.fatal),
        "{first:?}"
    );
    // A non-fatal error does not end the connection.
    let mut c = core();
    c.fail(Error::Timeout(crate::Step::Read));
    assert!(c.ended().is_none());
}

#[test]
fn a_stray_frame_ends_the_connection() {
    let goodbye = || (FrameKind::Goodbye, Vec::new());
    let mut c = core();
    send(&mut c, &RequestMeta::default());
    send(&mut c, &RequestMeta::default());
    let e = receive(&mut c, goodbye()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol(svmc_comm::Error::UnexpectedFrame {
                expected: FrameKind::Response,
                got: FrameKind::Goodbye
            })
        ),
        "{e:?}"
    );
    assert!(c.poison().is_some(), "the connection ended");
    assert_eq!(c.live(), 0, "no answer will come");
    assert!(c.check_usable().is_err());
}

#[test]
fn cancel_frames_only_for_requests_written_and_unanswered() {
    let mut c = core();
    let id = send(&mut c, &RequestMeta::default());
    let mut out = vec![1, 2, 3];
    assert!(c.encode_cancel(id, &mut out).unwrap());
    let (kind, body) = split(&out);
    assert_eq!(kind, FrameKind::Cancel);
    assert_eq!(
        frame::decode_body::<ext::Cancel>(&body).unwrap(),
        ext::Cancel { id }
    );
    // Abandoned: still in flight, so still cancelled.
    c.abandon(id);
    assert!(c.encode_cancel(id, &mut out).unwrap());
    assert!(!c.encode_cancel(RequestId(99), &mut out).unwrap());
    // Without the extension: never.
    let mut c = core_with(Extensions::NONE);
    let id = send(&mut c, &RequestMeta::default());
    assert!(!c.encode_cancel(id, &mut out).unwrap());
}

#[test]
fn the_meta_goes_where_it_fits_and_is_dropped_where_it_would_not() {
    let c = core();
    let meta = deadline_meta(Some(Duration::from_secs(2)));
    assert_eq!(meta.deadline_ms, Some(2000));
    let mut out = Vec::new();
    c.encode_request(RequestId(5), &Request::Info, &meta, &mut out)
        .unwrap();
    let (_, mut body) = split(&out);
    let (start, got) = ext::split_request_meta(&mut body).unwrap();
    assert_eq!(got, Some(meta.clone()));
    let (id, r) = envelope::decode::<Request>(&body[start..]);
    assert_eq!((id, r.unwrap()), (Some(RequestId(5)), Request::Info));

    // A request that fills the server's max_body goes without its meta...
    let mut plain = Vec::new();
    let fits = |n| {
        let mut f = Vec::new();
        envelope::encode_request_into(
            RequestId(5),
            &Request::Reverse(vec![0; n]),
            u32::MAX,
            &mut f,
        )
        .unwrap();
        f.len() - HEADER_LEN
    };
    let n = (0..MAX as usize)
        .rev()
        .find(|&n| fits(n) <= MAX as usize)
        .unwrap();
    let full = Request::Reverse(vec![7; n]);
    c.encode_request(RequestId(5), &full, &meta, &mut out)
        .unwrap();
    c.encode_request(RequestId(5), &full, &RequestMeta::default(), &mut plain)
        .unwrap();
    assert_eq!(out, plain, "sent without the meta");
    // ...but a stream's meta is needed: refused, not fatal.
    let stream = RequestMeta {
        stream: true,
        ..meta.clone()
    };
    let e = c
        .encode_request(RequestId(5), &full, &stream, &mut out)
        .unwrap_err();
    assert!(
        matches!(e, Error::Protocol(svmc_comm::Error::TooLargeToSend { .. })) && !e.is_fatal(),
        "{e:?}"
    );
    // Where the extension is off, no meta at all.
    let c = core_with(Extensions::NONE);
    c.encode_request(RequestId(5), &Request::Info, &meta, &mut out)
        .unwrap();
    c.encode_request(
        RequestId(5),
        &Request::Info,
        &RequestMeta::default(),
        &mut plain,
    )
    .unwrap();
    assert_eq!(out, plain);
}

#[test]
fn an_answer_brings_its_meta() {
    let mut c = core();
    let id = send(&mut c, &RequestMeta::default());
    let mut f = Vec::new();
    envelope::encode_response_into(id, &Response::PowerOff, MAX, &mut f).unwrap();
    let m = ResponseMeta {
        queued_us: Some(3),
        handled_us: Some(4),
        stats: None,
    };
    ext::insert_response_meta(&mut f, 0, 0, &m, MAX).unwrap();
    let (got, answer, meta) = receive(&mut c, split(&f)).unwrap();
    assert_eq!(
        (got, answer.unwrap(), meta),
        (id, Response::PowerOff, Some(m))
    );
}

#[test]
fn chunks_go_to_live_streams_and_abandoned_ones_are_dropped() {
    let chunk = |id, data: Option<&[u8]>| {
        let mut f = Vec::new();
        ext::encode_chunk_into(id, data, &mut f).unwrap();
        split(&f)
    };
    let mut c = core();
    let a = send(&mut c, &RequestMeta::default());
    let b = send(&mut c, &RequestMeta::default());
    c.abandon(b);
    let (kind, mut body) = chunk(a, Some(b"data"));
    match c.receive(kind, &mut body).unwrap() {
        Event::Chunk { id, data } => assert_eq!((id, &*data), (a, &b"data"[..])),
        other => panic!("{other:?}"),
    }
    let (kind, mut body) = chunk(b, Some(b"gone"));
    assert!(matches!(
        c.receive(kind, &mut body).unwrap(),
        Event::Discarded
    ));
    assert_eq!(c.discarded(), 0, "data is not an answer");
    // The end marker is for request streams only: an error, not fatal.
    let (kind, mut body) = chunk(a, None);
    assert!(c.receive(kind, &mut body).is_err());
    assert!(c.check_usable().is_ok());

    // A client that reads no answer streams: a stray frame.
    let peer = Hello::new::<TestVm>(MAX).with_ext(Extensions::ALL);
    let mut c = ClientCore::<TestVm>::new(MAX, Extensions::ALL, &peer, false);
    let a = send(&mut c, &RequestMeta::default());
    let (kind, mut body) = chunk(a, Some(b"data"));
    assert!(c.receive(kind, &mut body).is_err());
}

#[test]
fn an_ended_connection_forgets_what_was_in_flight() {
    let mut c = core();
    send(&mut c, &RequestMeta::default());
    c.end(Ended::Closed);
    c.end(Ended::ClosedByUs);
    assert_eq!(c.live(), 0);
    assert!(
        matches!(c.check_usable(), Err(Error::Closed)),
        "first reason wins"
    );
}

#[test]
fn decoding_needs_only_a_copy_of_the_codec_and_matching_the_core() {
    let mut c = core();
    let codec = c.codec();
    let a = send(&mut c, &RequestMeta::default());
    let b = send(&mut c, &RequestMeta::default());
    let (kind, mut body) = response(b, &Response::PowerOff);
    let decoded = codec.decode(kind, &mut body).unwrap();
    assert!(matches!(decoded, Decoded::Answer { id: Some(x), .. } if x == b));
    assert_eq!(c.live(), 2, "decoding matched nothing");
    assert!(matches!(c.resolve(decoded).unwrap(), Event::Answer { id, .. } if id == b));
    // A fatal ERROR is an error of the decoder; the core is told.
    let fatal = ProtocolError::new(ProtocolErrorCode::TooLarge, true, "bye");
    let (kind, mut body) = error(&fatal);
    let e = codec.decode(kind, &mut body).unwrap_err();
    assert!(c.check_usable().is_ok(), "the decoder has no state");
    c.fail(e);
    assert!(c.check_usable().is_err());
    assert_eq!(c.live(), 1, "{a} still in flight");
}
