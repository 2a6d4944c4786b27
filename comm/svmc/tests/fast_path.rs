//! The direct codec of `svmc` (`encode_*_parts`, `decode_request`,
//! `decode_response`, `reverse_payload`) against the generic serde path:
//! byte for byte when encoding, value for value (errors included) when
//! decoding, on well-formed, non-canonical and malformed bodies.

use proptest::prelude::*;
use svmc::{GuestInfo, Request, Response, ServiceError};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::HEADER_LEN;

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => proptest::collection::vec(any::<u8>(), 200..300),
        1 => proptest::collection::vec(any::<u8>(), 65_530..65_540),
    ]
}

fn id() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..30, 250u32..260, 65_530u32..65_540, any::<u32>()]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => payload().prop_map(Request::Reverse),
        1 => Just(Request::Info),
        1 => Just(Request::PowerOff),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        4 => payload().prop_map(Response::Reverse),
        1 => Just(Response::PowerOff),
        1 => Just(Response::Info(GuestInfo {
            firmware: "f".into(),
            firmware_version: "1".into(),
            protocol_version: 2,
            arch: "x86_64".into(),
            max_body: 9,
            heap: None,
        })),
        1 => "[a-z]{0,30}".prop_map(|s| Response::Err(ServiceError::Internal(s))),
    ]
}

/// The `CBOR head` of `major` and `arg` in a width of `2^w` bytes (w = 4:
/// the shortest), as a non-canonical encoder could write it.
fn head(major: u8, arg: u64, w: u8) -> Vec<u8> {
    let m = major << 5;
    match w {
        0 if arg <= 0xff => vec![m | 24, arg as u8],
        1 if arg <= 0xffff => [&[m | 25][..], &(arg as u16).to_be_bytes()].concat(),
        2 if arg <= 0xffff_ffff => [&[m | 26][..], &(arg as u32).to_be_bytes()].concat(),
        3 => [&[m | 27][..], &arg.to_be_bytes()].concat(),
        _ if arg < 24 => vec![m | arg as u8],
        _ => head(
            major,
            arg,
            if arg <= 0xff {
                0
            } else if arg <= 0xffff {
                1
            } else {
                2
            },
        ),
    }
}

/// Bodies that look like a `Reverse` or a unit variant but are spelled in
/// other ways: other widths, tags, indefinite lengths, wrong counts, wrong
/// names, lengths off by one.
fn odd_body() -> impl Strategy<Value = Vec<u8>> {
    (
        id(),
        proptest::collection::vec(any::<u8>(), 0..30),
        any::<(u8, u8)>(),
        0u8..16,
        -2i64..3,
    )
        .prop_map(|(id, p, (wi, wl), shape, off)| {
            let len = (p.len() as i64 + off).max(0) as u64;
            let mut b = match shape {
                0 => vec![0x82],
                1 => vec![0x9f],
                2 => vec![0x83],
                3 => vec![0x81],
                _ => vec![0x82],
            };
            if shape == 4 {
                b.extend_from_slice(&[0xd8, 0x20]);
            }
            b.extend(head(0, id.into(), wi % 5));
            match shape {
                5 => b.extend_from_slice(b"\x64info"),
                6 => b.extend_from_slice(b"\x63off"),
                7 => b.extend_from_slice(b"\x78\x04info"),
                8 => b.extend_from_slice(b"\x63of\xff"),
                9 => b.extend_from_slice(b"\xbf\x63rev"),
                10 => b.extend_from_slice(b"\xa1\x63rex"),
                11 => b.extend_from_slice(b"\xa1\x7f\x63rev\xff"),
                12 => b.extend_from_slice(b"\xa2\x63rev"),
                _ => b.extend_from_slice(b"\xa1\x63rev"),
            }
            if shape == 13 {
                b.push(0x5f);
                b.extend(head(2, p.len() as u64, 4));
                b.extend_from_slice(&p);
                b.push(0xff);
            } else if shape == 14 {
                b.extend(head(3, len, wl % 5));
                b.extend_from_slice(&p);
            } else if !(5..=8).contains(&shape) {
                b.extend(head(2, len, wl % 5));
                b.extend_from_slice(&p);
            }
            if shape == 1 || shape == 9 {
                b.push(0xff);
            }
            if shape == 15 {
                b.push(0);
            }
            b
        })
}

/// Well-formed bodies with bytes changed, cut or appended.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    (
        request(),
        response(),
        id(),
        any::<bool>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        any::<(u8, usize)>(),
    )
        .prop_map(|(req, resp, id, which, edits, (cut_kind, cut))| {
            let mut f = Vec::new();
            if which {
                envelope::encode_request_into(RequestId(id), &req, u32::MAX, &mut f).unwrap();
            } else {
                envelope::encode_response_into(RequestId(id), &resp, u32::MAX, &mut f).unwrap();
            }
            let mut b = f.split_off(HEADER_LEN);
            for (at, v) in edits {
                let i = at % b.len();
                b[i] = v;
            }
            match cut_kind % 4 {
                0 => b.truncate(cut % (b.len() + 1)),
                1 => b.push(cut as u8),
                _ => {}
            }
            b
        })
}

fn same_decode(body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        svmc::decode_request(body),
        envelope::decode::<Request>(body),
        "request {:02x?}",
        body
    );
    prop_assert_eq!(
        svmc::decode_response(body),
        envelope::decode::<Response>(body),
        "response {:02x?}",
        body
    );
    // What `reverse_payload` finds is the generic decoder's `Reverse`.
    if let Some((id, range)) = svmc::reverse_payload(body) {
        prop_assert_eq!(
            envelope::decode::<Request>(body),
            (Some(id), Ok(Request::Reverse(body[range].to_vec())))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_parts_are_the_generic_encoding(id in id(), r in request(), max in prop_oneof![Just(u32::MAX), 0u32..300]) {
        let mut want = b"keep".to_vec();
        let want_r = envelope::encode_request_into(RequestId(id), &r, max, &mut want);
        let mut got = b"keep".to_vec();
        let got_r = svmc::encode_request_parts(RequestId(id), &r, max, &mut got);
        prop_assert_eq!(got_r.is_ok(), want_r.is_ok());
        match got_r {
            Ok(tail) => prop_assert_eq!([&got[..], tail].concat(), want),
            Err(e) => {
                prop_assert_eq!(Err(e), want_r);
                prop_assert_eq!(got, b"keep");
            }
        }
    }

    #[test]
    fn response_parts_are_the_generic_encoding(id in id(), r in response(), max in prop_oneof![Just(u32::MAX), 0u32..300]) {
        let mut want = Vec::new();
        let want_r = envelope::encode_response_into(RequestId(id), &r, max, &mut want);
        let mut got = Vec::new();
        let got_r = svmc::encode_response_parts(RequestId(id), &r, max, &mut got);
        match got_r {
            Ok(tail) => prop_assert_eq!([&got[..], tail].concat(), want),
            Err(e) => {
                prop_assert_eq!(Err(e), want_r);
                prop_assert!(got.is_empty());
            }
        }
        if let (Response::Reverse(p), false) = (&r, got.is_empty()) {
            let mut head = Vec::new();
            svmc::reverse_response_head(RequestId(id), p.len(), &mut head);
            prop_assert_eq!(&head[..], &got[HEADER_LEN..]);
        }
    }

    #[test]
    fn well_formed_bodies_decode_the_same(id in id(), req in request(), resp in response()) {
        let mut f = Vec::new();
        envelope::encode_request_into(RequestId(id), &req, u32::MAX, &mut f).unwrap();
        prop_assert_eq!(svmc::decode_request(&f[HEADER_LEN..]), (Some(RequestId(id)), Ok(req)));
        same_decode(&f[HEADER_LEN..])?;
        f.clear();
        envelope::encode_response_into(RequestId(id), &resp, u32::MAX, &mut f).unwrap();
        prop_assert_eq!(svmc::decode_response(&f[HEADER_LEN..]), (Some(RequestId(id)), Ok(resp)));
        same_decode(&f[HEADER_LEN..])?;
    }

    #[test]
    fn odd_bodies_decode_the_same(b in odd_body()) {
        same_decode(&b)?;
    }

    #[test]
    fn mutated_bodies_decode_the_same(b in mutated_body()) {
        same_decode(&b)?;
    }

    #[test]
    fn random_bodies_decode_the_same(tail in proptest::collection::vec(any::<u8>(), 0..40), lead in 0u8..4) {
        let mut b = match lead {
            0 => vec![0x82, 0x01, 0xa1, 0x63, b'r', b'e', b'v'],
            1 => vec![0x82, 0x01],
            2 => vec![0x82],
            _ => vec![],
        };
        b.extend_from_slice(&tail);
        same_decode(&b)?;
    }
}

#[test]
fn non_canonical_reverses_are_found_or_left_to_the_generic_path() {
    // Non-shortest id and length: found in place.
    let b = b"\x82\x1a\x00\x00\x00\x09\xa1\x63rev\x59\x00\x02ab";
    let (id, r) = svmc::reverse_payload(b).unwrap();
    assert_eq!((id, &b[r]), (RequestId(9), &b"ab"[..]));
    // A tagged id or a chunked payload: not in place, but still a Reverse.
    for b in [
        &b"\x82\xd8\x20\x09\xa1\x63rev\x42ab"[..],
        b"\x82\x09\xa1\x63rev\x5f\x41a\x41b\xff",
    ] {
        assert_eq!(svmc::reverse_payload(b), None);
        assert_eq!(
            svmc::decode_request(b),
            (Some(RequestId(9)), Ok(Request::Reverse(b"ab".to_vec())))
        );
    }
    // An id over u32: no id, and the generic path's error.
    let b = b"\x82\x1b\x00\x00\x00\x01\x00\x00\x00\x00\xa1\x63rev\x40";
    assert_eq!(svmc::reverse_payload(b), None);
    assert_eq!(svmc::decode_request(b), envelope::decode::<Request>(b));
    assert_eq!(svmc::decode_request(b).0, None);
}
