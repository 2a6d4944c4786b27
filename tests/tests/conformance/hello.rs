//! §3.1 `HELLO`: who speaks first, versions, names and malformed `HELLO`s.

use super::*;

/// R-HELLO-1: the server's `HELLO` comes without waiting for ours.
pub(crate) fn r_hello_1_hello_comes_first(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.expect_hello()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-HELLO-2: a `HELLO` body of exactly 256 bytes (padded with an unknown
/// key) is read.
pub(crate) fn r_hello_2_a_256_byte_hello_is_read(p: &Peer) -> R {
    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa4;
    cbor_text(&mut body, "pad");
    let pad = 256 - body.len() - 2;
    body.push(0x58);
    body.push(pad as u8);
    body.extend(std::iter::repeat_n(0x55, pad));
    assert_eq!(body.len(), 256);
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    p.capture(FrameKind::Hello, &body, "sent HELLO, 256 bytes".into());
    c.expect_hello()?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-HELLO-3, R-VER-2: a version-1 `HELLO`: the server's `HELLO`, then a
/// fatal `ERROR` code 6 naming both versions, then the close.
pub(crate) fn r_hello_3_v1_hello_is_a_version_mismatch(p: &Peer) -> R {
    let mut c = p.connect()?;
    let body = hello_body("svmc", 1, DEFAULT_MAX_BODY);
    p.capture(FrameKind::Hello, &body, "sent v1 HELLO".into());
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    let f = c.frame()?;
    ensure(f.kind == FrameKind::Error as u8, || {
        format!("kind {:#04x}", f.kind)
    })?;
    let pe: ProtocolError = frame::decode_body(&f.body).map_err(|e| e.to_string())?;
    ensure(pe.code == CODE_VERSION && pe.fatal, || format!("{pe:?}"))?;
    ensure(pe.detail.contains('1') && pe.detail.contains('2'), || {
        format!("the detail does not name both versions: {:?}", pe.detail)
    })?;
    c.expect_close()
}

pub(crate) fn r_hello_3_other_protocol_is_a_mismatch(p: &Peer) -> R {
    let mut c = p.connect()?;
    let body = hello_body("other", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    p.capture(FrameKind::Hello, &body, "sent other HELLO".into());
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_VERSION, true, None)
}

/// R-HELLO-4: another version (or name) whose other fields have the
/// wrong types is still a mismatch, never a bad message.
pub(crate) fn r_hello_4_other_version_fields_are_not_read(p: &Peer) -> R {
    // {"max_body": "lots", "protocol": "svmc", "version": 3}
    let v3 = b"\xa3\x68max_body\x64lots\x68protocol\x64svmc\x67version\x03";
    // {"protocol": "svmd", "version": "two"}
    let other = b"\xa2\x68protocol\x64svmd\x67version\x63two";
    for body in [&v3[..], &other[..]] {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, body)?;
        c.expect_hello()?;
        c.expect_error(CODE_VERSION, true, None)
            .map_err(|e| format!("HELLO {body:02x?}: {e}"))?;
    }
    Ok(())
}

/// R-HELLO-5: a `REQUEST` as the first frame is fatal (code 5).
pub(crate) fn r_hello_5_request_before_hello_is_fatal(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.send_request(1, &Request::Info)?;
    c.expect_hello()?;
    c.expect_error(CODE_UNEXPECTED, true, None)
}

/// R-HELLO-5: a `HELLO` that is not CBOR is fatal (code 3).
pub(crate) fn r_hello_5_bad_hello_is_fatal(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &[0xff, 0xff])?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
}

/// R-HELLO-5: a client's first frame may be an `ERROR` (its refusal): no
/// answer, the close; a `GOODBYE` first is an unexpected frame (code 5).
pub(crate) fn r_hello_5_error_or_goodbye_as_the_first_frame(p: &Peer) -> R {
    for fatal in [false, true] {
        let mut c = p.connect()?;
        c.send_msg(
            FrameKind::Error,
            &ProtocolError::new(CODE_BAD, fatal, "the client refuses"),
        )?;
        c.expect_hello()?;
        c.expect_close()
            .map_err(|e| format!("ERROR (fatal {fatal}) first: {e}"))?;
    }
    let mut c = p.connect()?;
    c.send(&frame::goodbye())?;
    c.expect_hello()?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("GOODBYE first: {e}"))
}

/// R-HELLO-7: the body is checked as CBOR before `protocol` is compared:
/// a `HELLO` that is not a map, or another protocol's `HELLO` with a
/// repeated key, is code 3, not 6.
pub(crate) fn r_hello_7_the_body_is_checked_before_the_protocol(p: &Peer) -> R {
    // ["svmc", 2, 1024]
    let not_a_map = b"\x83\x64svmc\x02\x19\x04\x00".to_vec();
    let mut other = hello_body("svmd", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    other[0] = 0xa5;
    for _ in 0..2 {
        cbor_text(&mut other, "x");
        cbor_uint(&mut other, 1);
    }
    for (what, body) in [("not a map", not_a_map), ("svmd, a repeated key", other)] {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, &body)?;
        c.expect_hello()?;
        c.expect_error(CODE_BAD, true, None)
            .map_err(|e| format!("HELLO {what}: {e}"))?;
    }
    Ok(())
}
