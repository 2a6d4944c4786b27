//! §3.2 ids and order, §3.3 what a server answers.

use super::*;

/// R-ID-1, R-ID-3: every id, whatever its width, comes back.
pub(crate) fn r_id_3_every_id_is_echoed(p: &Peer) -> R {
    let mut c = p.hello()?;
    for id in [0, 1, 23, 24, 255, 256, 65535, 65536, u32::MAX - 1, u32::MAX] {
        let payload = id.to_be_bytes();
        c.send_request(id, &Request::Reverse(payload.to_vec()))?;
        expect_reversed(c.expect_response(id)?, &payload)?;
    }
    c.send_request(7, &Request::Info)?;
    match c.expect_response(7)? {
        Response::Info(i) => ensure(i.protocol_version == ServiceVm::VERSION, || {
            format!("{i:?}")
        })?,
        other => return Err(format!("Info answered with {}", short(&other))),
    }
    c.goodbye()
}

/// R-ID-4: answers in the order of the requests, not of the ids.
pub(crate) fn r_id_4_answers_in_order(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = request_frame(p, 30, &Request::Info);
    batch.extend(request_frame(p, 10, &Request::Reverse(b"ten".to_vec())));
    batch.extend(request_frame(p, 20, &Request::Reverse(b"twenty".to_vec())));
    c.send(&batch)?;
    ensure(matches!(c.expect_response(30)?, Response::Info(_)), || {
        "30".into()
    })?;
    expect_reversed(c.expect_response(10)?, b"ten")?;
    expect_reversed(c.expect_response(20)?, b"twenty")?;
    c.goodbye()
}

/// R-ID-5: 8 requests sent before reading anything are all answered.
pub(crate) fn r_id_5_eight_pipelined_requests(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = Vec::new();
    for id in 0..8u32 {
        batch.extend(request_frame(
            p,
            id,
            &Request::Reverse(pattern(16 + id as usize)),
        ));
    }
    c.send(&batch)?;
    for id in 0..8u32 {
        expect_reversed(c.expect_response(id)?, &pattern(16 + id as usize))?;
    }
    c.goodbye()
}

/// R-REQ-2, R-ERR-2: bad requests get non-fatal `ERROR`s 3 and 4 with
/// their ids; the connection goes on.
pub(crate) fn r_req_2_bad_requests_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    let cases: &[(&[u8], ProtocolErrorCode, u32)] = &[
        (b"\x82\x01\xff", CODE_BAD, 1),            // not CBOR after the id
        (b"\x82\x02\xa1\x63rev\x01", CODE_BAD, 2), // payload of the wrong type
        (b"\x82\x03\x63sum", CODE_VARIANT, 3),     // unknown variant
        (b"\x82\x04\xa2\x63rev\x40\x61x\x01", CODE_BAD, 4), // two-entry enum map
        (b"\x82\x05\x82\x01\x02", CODE_BAD, 5),    // an array as request
    ];
    for (i, (body, code, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(*code, false, Some(Some(*id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(100 + i as u32)?;
    }
    c.goodbye()
}

/// R-REQ-3, R-ERR-3: the `ERROR` names the request when its id can be
/// read, and has no id when it cannot.
pub(crate) fn r_req_3_errors_name_the_request(p: &Peer) -> R {
    let mut c = p.hello()?;
    let cases: &[(&[u8], Option<u32>)] = &[
        (b"\x64info", None),                                         // a v1 body
        (b"\x82\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info", None), // id over u32
        (b"\x82\x61a\x64info", None),                                // text id
        (b"\x83\x07\x64info\x00", Some(7)),                          // three items
        (b"\x81\x08", Some(8)),                                      // no request
    ];
    for (i, (body, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(*id))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(200 + i as u32)?;
    }
    c.goodbye()
}

/// R-REQ-4: a `RESPONSE` or a second `HELLO` from the client: non-fatal
/// `ERROR` code 5.
pub(crate) fn r_req_4_unexpected_kinds_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut resp = Vec::new();
    envelope::encode_response_into(RequestId(1), &Response::PowerOff, u32::MAX, &mut resp)
        .map_err(|e| e.to_string())?;
    c.send(&resp)?;
    c.expect_error(CODE_UNEXPECTED, false, None)?;
    c.expect_usable(2)?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_error(CODE_UNEXPECTED, false, None)?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-REQ-5 (and R-HELLO-6, R-REQ-1, R-REQ-7): an answer over the client's
/// `max_body` is a `payload_too_large` RESPONSE with body sizes.
pub(crate) fn r_req_5_response_too_large_for_the_client(p: &Peer) -> R {
    let (mut c, _) = p.hello_with(64)?;
    let payload = pattern(100);
    c.send_request(9, &Request::Reverse(payload.clone()))?;
    let would_be = envelope::body_len(RequestId(9), &Response::Reverse(payload)).unwrap() as u64;
    let r = c.expect_response(9)?;
    ensure(
        r == Response::Err(ServiceError::PayloadTooLarge {
            len: would_be,
            max: 64,
        }),
        || format!("expected payload_too_large {{ len: {would_be}, max: 64 }}, got {r:?}"),
    )?;
    c.expect_usable(10)?;
    c.goodbye()
}

/// R-ERR-2, R-REQ-5, R-HELLO-6: with `max_body` 0 no answer fits, not
/// even `payload_too_large`: each request is refused with a non-fatal
/// `ERROR` code 2 carrying its id, and the connection goes on.
pub(crate) fn r_err_2_code_2_refusing_an_answer_is_not_fatal(p: &Peer) -> R {
    let (mut c, _) = p.hello_with(0)?;
    c.send_request(4, &Request::Info)?;
    c.expect_error(CODE_TOO_LARGE, false, Some(Some(4)))
        .map_err(|e| format!("info: {e}"))?;
    c.send_request(5, &Request::Reverse(b"abc".to_vec()))?;
    c.expect_error(CODE_TOO_LARGE, false, Some(Some(5)))
        .map_err(|e| format!("reverse: {e}"))?;
    c.goodbye()
}

/// R-REQ-6: a request near the server's `max_body` is answered (or
/// refused with `out_of_memory`), and the server keeps serving.
pub(crate) fn r_req_6_large_request_is_answered_or_out_of_memory(p: &Peer) -> R {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let len = (max - svmc::REVERSE_OVERHEAD).min(16 << 20) as usize;
    let payload = pattern(len);
    c.send_request(1, &Request::Reverse(payload.clone()))?;
    match c.expect_response_within(1, Duration::from_secs(60))? {
        Response::Err(ServiceError::OutOfMemory { requested }) => {
            ensure(requested > 0, || "out_of_memory of 0 bytes".into())?;
            println!("    {len} bytes: out_of_memory ({requested} bytes)");
        }
        r => expect_reversed(r, &payload)?,
    }
    c.expect_usable(2)?;
    c.goodbye()
}
