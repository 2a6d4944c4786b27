//! §3.4 `ERROR` frames: the client's, and which fault a server reports.

use super::*;

/// R-ERR-1, R-ERR-4, R-ERR-5: a client's non-fatal `ERROR` is not
/// answered and the connection goes on.
pub(crate) fn r_err_5_client_error_not_fatal_is_ignored(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_msg(
        FrameKind::Error,
        &ProtocolError::new(CODE_BAD, false, "the client complains").with_id(Some(RequestId(3))),
    )?;
    c.expect_nothing()?;
    c.expect_usable(1)?;
    c.goodbye()
}

pub(crate) fn r_err_5_client_fatal_error_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_msg(
        FrameKind::Error,
        &ProtocolError::new(CODE_BAD_FRAME, true, "the client gives up"),
    )?;
    c.expect_close()
}

/// R-ERR-5, R-CBOR-1: an `ERROR` body that is not an `error-body` (here a
/// repeated key, unknown or known, and not CBOR) is a bad message: a
/// non-fatal `ERROR` code 3 without an id, whatever its `fatal` says.
pub(crate) fn r_err_5_undecodable_client_error_is_a_bad_message(p: &Peer) -> R {
    let error_body = |fatal: bool, extra: &[(&str, u64)]| {
        let mut b = vec![0xa3 + extra.len() as u8];
        cbor_text(&mut b, "code");
        cbor_uint(&mut b, 3);
        cbor_text(&mut b, "fatal");
        b.push(if fatal { 0xf5 } else { 0xf4 });
        cbor_text(&mut b, "detail");
        cbor_text(&mut b, "x");
        for (k, v) in extra {
            cbor_text(&mut b, k);
            cbor_uint(&mut b, *v);
        }
        b
    };
    let mut c = p.hello()?;
    let bodies = [
        (
            "a repeated unknown key",
            error_body(false, &[("n", 1), ("n", 2)]),
        ),
        (
            "a repeated known key, fatal",
            error_body(true, &[("code", 1)]),
        ),
        ("not CBOR", vec![0xff]),
    ];
    for (i, (what, body)) in bodies.into_iter().enumerate() {
        c.send_raw(FrameKind::Error as u8, &body)?;
        c.expect_error(CODE_BAD, false, Some(None))
            .map_err(|e| format!("ERROR with {what}: {e}"))?;
        c.expect_usable(20 + i as u32)?;
    }
    c.goodbye()
}

/// R-ERR-3, R-ID-4: `ERROR`s about frames that are not requests carry no
/// id and take no request's place: pipelined with requests, every frame's
/// reply comes in order.
pub(crate) fn r_err_3_errors_about_other_frames_are_not_answers(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut resp = Vec::new();
    envelope::encode_response_into(RequestId(1), &Response::PowerOff, u32::MAX, &mut resp)
        .map_err(|e| e.to_string())?;
    let mut batch = request_frame(p, 1, &Request::Reverse(b"one".to_vec()));
    batch.extend(resp);
    batch.extend(request_frame(p, 2, &Request::Reverse(b"two".to_vec())));
    batch.extend(
        frame::encode(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY),
            u32::MAX,
        )
        .map_err(|e| e.to_string())?,
    );
    batch.extend(raw_frame(FrameKind::Error as u8, &[])); // empty ERROR
    batch.extend(request_frame(p, 3, &Request::Reverse(b"three".to_vec())));
    c.send(&batch)?;
    expect_reversed(c.expect_response(1)?, b"one")?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("about the RESPONSE: {e}"))?;
    expect_reversed(c.expect_response(2)?, b"two")?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("about the HELLO: {e}"))?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("about the empty ERROR: {e}"))?;
    expect_reversed(c.expect_response(3)?, b"three")?;
    c.goodbye()
}

/// R-ERR-8: which class wins when several apply: the header, then the
/// kind, then the body's first fault in reading order.
pub(crate) fn r_err_8_the_first_fault_decides(p: &Peer) -> R {
    let mut c = p.hello()?;
    // An empty HELLO after the handshake: the header first (code 3).
    c.send_raw(FrameKind::Hello as u8, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("empty HELLO: {e}"))?;
    // A HELLO that is not CBOR: the kind first (code 5).
    c.send_raw(FrameKind::Hello as u8, &[0xff])?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("HELLO not CBOR: {e}"))?;
    // The unknown name before the content: not CBOR, nested too deep.
    let mut deep = b"\x82\x03\xa1\x63sum".to_vec();
    deep.extend(std::iter::repeat_n(0x81, 200));
    deep.push(0x80);
    let cases: [(&[u8], u32); 3] = [
        (b"\x82\x01\xa1\x63sum\xff", 1),
        (b"\x82\x02\x63sum\x00", 2), // and a trailing byte
        (&deep, 3),
    ];
    for (body, id) in cases {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_VARIANT, false, Some(Some(id)))
            .map_err(|e| format!("request {id}: {e}"))?;
    }
    c.expect_usable(4)?;
    c.goodbye()
}
