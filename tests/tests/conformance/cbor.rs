//! §5 body encoding: the CBOR a server must read, and refuse.

use super::*;

/// R-CBOR-1: keys in any order, unknown keys ignored; a repeated key is
/// malformed (fatal before the handshake).
pub(crate) fn r_cbor_1_key_order_unknown_and_repeated_keys(p: &Peer) -> R {
    let mut body = vec![0xa4];
    cbor_text(&mut body, "x");
    body.extend_from_slice(b"\x82\x01\x02");
    cbor_text(&mut body, "max_body");
    cbor_uint(&mut body, DEFAULT_MAX_BODY.into());
    cbor_text(&mut body, "version");
    cbor_uint(&mut body, ServiceVm::VERSION.into());
    cbor_text(&mut body, "protocol");
    cbor_text(&mut body, "svmc");
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    p.capture(FrameKind::Hello, &body, "sent HELLO, other order".into());
    c.expect_hello()?;
    c.expect_usable(1)?;
    c.goodbye()?;

    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa4;
    cbor_text(&mut body, "protocol");
    cbor_text(&mut body, "svmc");
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("a repeated key: {e}"))
}

/// R-CBOR-1: a repeated *unknown* key in a `HELLO` is malformed too,
/// also when the two are written differently (definite and chunked):
/// fatal code 3 before the handshake.
pub(crate) fn r_cbor_1_repeated_unknown_key_in_hello_is_fatal(p: &Peer) -> R {
    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa5;
    cbor_text(&mut body, "x");
    body.extend_from_slice(b"\x82\x01\x02");
    body.extend_from_slice(b"\x7f\x61x\xff\x00"); // (_ "x"): 0
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("a repeated unknown key: {e}"))
}

/// R-CBOR-2: a unit variant as a map, or a variant with content as a
/// bare name, is malformed.
pub(crate) fn r_cbor_2_enum_shapes(p: &Peer) -> R {
    let mut c = p.hello()?;
    for (body, id) in [
        (&b"\x82\x01\xa1\x64info\xf6"[..], 1),
        (&b"\x82\x02\x63rev"[..], 2),
    ] {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(Some(id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
    }
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-CBOR-4: integers and lengths of any width.
pub(crate) fn r_cbor_4_integers_of_any_width(p: &Peer) -> R {
    let mut c = p.hello()?;
    // id 5 as a u32 and as a u64; the payload length as a u32.
    let bodies: [&[u8]; 2] = [
        b"\x82\x1a\x00\x00\x00\x05\xa1\x63rev\x5a\x00\x00\x00\x02ab",
        b"\x82\x1b\x00\x00\x00\x00\x00\x00\x00\x05\xa1\x63rev\x42ab",
    ];
    for body in bodies {
        c.send_raw(REQ, body)?;
        expect_reversed(c.expect_response(5)?, b"ab").map_err(|e| format!("{body:02x?}: {e}"))?;
    }
    c.goodbye()
}

/// R-CBOR-5: indefinite lengths everywhere, chunked names included.
pub(crate) fn r_cbor_5_indefinite_lengths(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [_ 6, {_ (_ "re", "v"): (_ h'61', h'62')}]
    c.send_raw(
        REQ,
        b"\x9f\x06\xbf\x7f\x62re\x61v\xff\x5f\x41a\x41b\xff\xff\xff",
    )?;
    expect_reversed(c.expect_response(6)?, b"ab")?;
    // [7, (_ "in", "fo")]
    c.send_raw(REQ, b"\x82\x07\x7f\x62in\x62fo\xff")?;
    ensure(matches!(c.expect_response(7)?, Response::Info(_)), || {
        "info".into()
    })?;
    c.goodbye()
}

/// R-CBOR-6: tags other than 2 and 3 are skipped; a bignum where bytes
/// are expected is malformed.
pub(crate) fn r_cbor_6_tags(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [7, {"rev": 100(h'6162')}], and a tag on the id and the request.
    c.send_raw(REQ, b"\x82\x07\xa1\x63rev\xd8\x64\x42ab")?;
    expect_reversed(c.expect_response(7)?, b"ab")?;
    c.send_raw(REQ, b"\x82\xd8\x64\x08\xd8\x65\x64info")?;
    ensure(matches!(c.expect_response(8)?, Response::Info(_)), || {
        "info".into()
    })?;
    // [9, {"rev": 2(h'0102')}]
    c.send_raw(REQ, b"\x82\x09\xa1\x63rev\xc2\x42\x01\x02")?;
    c.expect_error(CODE_BAD, false, Some(Some(9)))?;
    c.expect_usable(10)?;
    c.goodbye()
}

/// R-CBOR-4, R-CBOR-5, R-CBOR-6: a bignum id is the integer it holds; a
/// tag on a chunk of a string is not well-formed.
pub(crate) fn r_cbor_6_bignum_ids_and_tagged_chunks(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [2(h'05'), "info"]
    c.send_raw(REQ, b"\x82\xc2\x41\x05\x64info")?;
    ensure(matches!(c.expect_response(5)?, Response::Info(_)), || {
        "info".into()
    })?;
    // [6, {"rev": (_ 32(h'61'))}]
    c.send_raw(REQ, b"\x82\x06\xa1\x63rev\x5f\xd8\x20\x41a\xff")?;
    c.expect_error(CODE_BAD, false, Some(Some(6)))?;
    c.expect_usable(7)?;
    c.goodbye()
}

/// R-CBOR-7: 128 levels are read, 129 refused (in an unknown `HELLO` key:
/// the map is level 1).
pub(crate) fn r_cbor_7_nesting_limit(p: &Peer) -> R {
    let hello_nested = |levels: usize| {
        let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
        body[0] = 0xa4;
        cbor_text(&mut body, "x");
        // The map is level 1; `levels - 1` arrays inside, the last empty.
        body.extend(std::iter::repeat_n(0x81, levels - 2));
        body.push(0x80);
        body
    };
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &hello_nested(128))?;
    c.expect_hello()?;
    c.expect_usable(1).map_err(|e| format!("128 levels: {e}"))?;
    c.goodbye()?;
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &hello_nested(129))?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("129 levels: {e}"))
}

pub(crate) fn r_cbor_8_invalid_utf8(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, b"\x82\x09\x64in\xff\xfe")?;
    c.expect_error(CODE_BAD, false, Some(Some(9)))?;
    c.expect_usable(10)?;
    c.goodbye()
}
