//! Round trips of every message, and one test per class of malformed frame:
//! each must be refused with its own typed error.

use svmc::{GuestInfo, HeapStats, Request, Response, ServiceError, ServiceVm};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{
    self, DEFAULT_MAX_BODY, ERROR_MAX_BODY, FrameKind, HEADER_LEN, HELLO_MAX_BODY, Header,
    ProtocolError, ProtocolErrorCode,
};
use svmc_comm::{Error, Hello, Protocol};

const MAX: u32 = 1 << 20;

fn info(heap: bool) -> GuestInfo {
    GuestInfo {
        firmware: "svmc-guest".into(),
        firmware_version: "0.1.0".into(),
        protocol_version: 1,
        arch: "aarch64".into(),
        max_body: MAX,
        heap: heap.then_some(HeapStats {
            size: u64::MAX,
            used: 0,
            peak: 1 << 40,
        }),
    }
}

const ID: RequestId = RequestId(9);

/// A `REQUEST` frame of `r`, body `[ID, r]`.
fn request(r: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(ID, r, MAX, &mut f).unwrap();
    f
}

/// A frame of `kind` with this raw body.
fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn every_request_round_trips() {
    for r in [
        Request::Reverse(vec![]),
        Request::Reverse(b"abc".to_vec()),
        Request::Reverse((0..=255).collect()),
        Request::Reverse(vec![7; 70_000]),
        Request::Info,
        Request::PowerOff,
    ] {
        let f = request(&r);
        assert_eq!(
            frame::decode::<(RequestId, Request)>(&f, FrameKind::Request, MAX),
            Ok((ID, r))
        );
    }
}

#[test]
fn every_response_round_trips() {
    for r in [
        Response::Reverse(vec![]),
        Response::Reverse(b"cba".to_vec()),
        Response::Info(info(true)),
        Response::Info(info(false)),
        Response::PowerOff,
        Response::Err(ServiceError::PayloadTooLarge { len: 1, max: 0 }),
        Response::Err(ServiceError::OutOfMemory {
            requested: u64::MAX,
        }),
        Response::Err(ServiceError::Unsupported),
        Response::Err(ServiceError::Internal("héllo ✓".into())),
    ] {
        let mut f = Vec::new();
        envelope::encode_response_into(ID, &r, MAX, &mut f).unwrap();
        assert_eq!(
            frame::decode::<(RequestId, Response)>(&f, FrameKind::Response, MAX),
            Ok((ID, r))
        );
    }
}

#[test]
fn hello_and_protocol_error_round_trip() {
    let h = Hello::new::<ServiceVm>(DEFAULT_MAX_BODY);
    let f = frame::encode(FrameKind::Hello, &h, MAX).unwrap();
    assert!(f.len() - HEADER_LEN <= HELLO_MAX_BODY as usize);
    assert_eq!(frame::decode::<Hello>(&f, FrameKind::Hello, MAX), Ok(h));
    for code in [
        ProtocolErrorCode::BadFrame,
        ProtocolErrorCode::TooLarge,
        ProtocolErrorCode::BadMessage,
        ProtocolErrorCode::UnknownVariant,
        ProtocolErrorCode::UnexpectedFrame,
        ProtocolErrorCode::VersionMismatch,
        ProtocolErrorCode::Busy,
        ProtocolErrorCode::Other(999),
    ] {
        for id in [None, Some(svmc_comm::RequestId(u32::MAX))] {
            let e = ProtocolError::new(code, true, "x").with_id(id);
            let f = frame::encode(FrameKind::Error, &e, MAX).unwrap();
            assert_eq!(frame::decode(&f, FrameKind::Error, MAX), Ok(e));
        }
    }
}

#[test]
fn truncated_header() {
    for n in 0..HEADER_LEN {
        let f = request(&Request::Info);
        assert_eq!(
            frame::decode::<(RequestId, Request)>(&f[..n], FrameKind::Request, MAX),
            Err(Error::Truncated {
                expected: HEADER_LEN,
                got: n
            })
        );
    }
}

#[test]
fn truncated_body() {
    let f = request(&Request::Reverse(b"abc".into()));
    for n in HEADER_LEN..f.len() {
        assert_eq!(
            frame::decode::<(RequestId, Request)>(&f[..n], FrameKind::Request, MAX),
            Err(Error::Truncated {
                expected: f.len(),
                got: n
            })
        );
    }
}

#[test]
fn too_large_is_refused_from_the_header_alone() {
    // 4 GiB - 1 announced, 1 MiB accepted: refused before any body byte.
    let h = [0x02, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        Header::parse(h, MAX),
        Err(Error::TooLarge {
            len: u32::MAX.into(),
            max: MAX
        })
    );
    // `decode` refuses it too, from the header, whatever follows.
    assert!(matches!(
        frame::decode::<Request>(&h, FrameKind::Request, MAX),
        Err(Error::TooLarge { .. })
    ));
    // Fixed limits of HELLO and ERROR, whatever the configured maximum.
    assert_eq!(
        Header::parse([0x01, 0, 0, 1, 1], u32::MAX),
        Err(Error::TooLarge {
            len: 257,
            max: HELLO_MAX_BODY
        })
    );
    assert_eq!(
        Header::parse([0x04, 0, 0, 4, 1], u32::MAX),
        Err(Error::TooLarge {
            len: 1025,
            max: ERROR_MAX_BODY
        })
    );
    // Exactly the maximum is fine.
    assert!(Header::parse([0x02, 0, 0x10, 0, 0], MAX).is_ok());
}

#[test]
fn too_large_when_encoding_leaves_the_buffer_alone() {
    let mut out = b"keep".to_vec();
    assert_eq!(
        frame::encode_into(
            FrameKind::Request,
            &Request::Reverse(vec![0; 100]),
            50,
            &mut out
        ),
        Err(Error::TooLargeToSend { len: 107, max: 50 })
    );
    assert_eq!(out, b"keep");
}

#[test]
fn empty_body() {
    for kind in [0x01, 0x02, 0x03, 0x04] {
        let f = raw(kind, &[]);
        let k = FrameKind::from_u8(kind).unwrap();
        assert_eq!(
            frame::decode::<Request>(&f, k, MAX),
            Err(Error::Empty { kind: k })
        );
    }
    assert_eq!(
        frame::decode_body::<Request>(&[]),
        Err(Error::InvalidCbor { offset: 0 })
    );
}

#[test]
fn unknown_frame_kind() {
    // 0x06 is `CANCEL` and 0x07 `CHUNK`, known to the frame layer since
    // the extensions (a server without them still refuses them as unknown).
    assert_eq!(FrameKind::from_u8(0x06), Ok(FrameKind::Cancel));
    assert_eq!(FrameKind::from_u8(0x07), Ok(FrameKind::Chunk));
    for kind in [0x00, 0x08, 0x7f, 0xff] {
        assert_eq!(
            frame::decode::<Request>(&raw(kind, b"\x63off"), FrameKind::Request, MAX),
            Err(Error::UnknownFrameKind(kind))
        );
    }
}

#[test]
fn invalid_cbor() {
    // 0x1c: reserved additional information.
    assert_eq!(
        frame::decode::<Request>(&raw(2, &[0x1c]), FrameKind::Request, MAX),
        Err(Error::InvalidCbor { offset: 0 })
    );
    // A text string that is not UTF-8.
    assert_eq!(
        frame::decode::<Request>(&raw(2, &[0x62, 0xc3, 0x28]), FrameKind::Request, MAX),
        Err(Error::InvalidCbor { offset: 0 })
    );
    // A byte string announcing more than the body holds.
    assert_eq!(
        frame::decode::<Request>(&raw(2, b"\xa1\x63rev\x45ab"), FrameKind::Request, MAX),
        Err(Error::InvalidCbor { offset: 8 })
    );
    // A byte string announcing 2^64 - 1 bytes: no allocation, just an error.
    let mut body = b"\xa1\x63rev\x5b".to_vec();
    body.extend_from_slice(&[0xff; 8]);
    assert!(matches!(
        frame::decode_body::<Request>(&body),
        Err(Error::InvalidCbor { .. })
    ));
}

#[test]
fn unknown_variant() {
    for body in [&b"\x63sum"[..], b"\xa1\x63sum\x01"] {
        let e = frame::decode::<Request>(&raw(2, body), FrameKind::Request, MAX).unwrap_err();
        assert!(
            matches!(&e, Error::UnknownVariant(m) if m.contains("sum")),
            "{e:?}"
        );
        assert_eq!(
            ProtocolError::from_error(&e).map(|p| (p.code, p.fatal)),
            Some((ProtocolErrorCode::UnknownVariant, false))
        );
    }
}

#[test]
fn unknown_variant_is_told_by_its_type_not_its_wording() {
    // Nested: an unknown `ServiceError` inside `Response::Err`, with
    // serde's full wording.
    let e = frame::decode_body::<Response>(b"\xa1\x63err\x63bad").unwrap_err();
    assert_eq!(
        e,
        Error::UnknownVariant(
            "unknown variant `bad`, expected one of `payload_too_large`, `out_of_memory`, \
             `unsupported`, `internal`"
                .into()
        )
    );
    // A type whose own error merely reads like one is malformed (code 3).
    struct Lookalike;
    impl<'de> serde::Deserialize<'de> for Lookalike {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let _ = <u8 as serde::Deserialize>::deserialize(d)?;
            Err(serde::de::Error::custom("unknown variant `sum`"))
        }
    }
    let e = frame::decode_body::<Lookalike>(b"\x01")
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e:?}");
    assert_eq!(
        ProtocolError::from_error(&e).map(|p| p.code),
        Some(ProtocolErrorCode::BadMessage)
    );
}

#[test]
fn malformed_shape() {
    for body in [
        &b"\x01"[..],                  // an integer, not a message
        b"\xa1\x63rev\x01",            // payload is not bytes
        b"\xa1\x63rev\x63abc",         // text is not bytes
        b"\xa2\x63rev\x40\x63rev\x40", // an enum map with two entries
        b"\xa1\x64info\xf6",           // a unit variant as a map
        b"\x63rev",                    // a newtype variant as bare text
        b"\x80",                       // an array
    ] {
        let e = frame::decode::<Request>(&raw(2, body), FrameKind::Request, MAX).unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{body:x?}: {e:?}");
    }
    // A GuestInfo without its required fields.
    let e = frame::decode_body::<Response>(b"\xa1\x64info\xa0").unwrap_err();
    assert!(
        matches!(&e, Error::Malformed(m) if m.contains("missing field")),
        "{e:?}"
    );
    // Nesting past the recursion limit.
    let mut deep = b"\xa1\x64info\xa1\x64heap".to_vec();
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0x00);
    let e = frame::decode_body::<Response>(&deep).unwrap_err();
    assert!(matches!(&e, Error::Malformed(_)), "{e:?}");
}

#[test]
fn trailing_bytes_inside_the_body() {
    assert_eq!(
        frame::decode::<Request>(&raw(2, b"\x63off\x00\x00"), FrameKind::Request, MAX),
        Err(Error::TrailingBytes { extra: 2 })
    );
}

#[test]
fn trailing_bytes_after_the_frame() {
    let mut f = request(&Request::Info);
    f.extend_from_slice(&frame::goodbye());
    assert_eq!(
        frame::decode::<(RequestId, Request)>(&f, FrameKind::Request, MAX),
        Err(Error::TrailingBytes { extra: HEADER_LEN })
    );
    // A GOODBYE that announces a body: over its limit of 0 (code 2, fatal).
    let e = Header::parse([0x05, 0, 0, 0, 1], MAX).unwrap_err();
    assert_eq!(e, Error::TooLarge { len: 1, max: 0 });
    assert!(e.is_fatal());
    assert_eq!(
        ProtocolError::from_error(&e).map(|p| (p.code, p.fatal)),
        Some((ProtocolErrorCode::TooLarge, true))
    );
}

#[test]
fn unexpected_frame_kind() {
    let f = request(&Request::Info);
    assert_eq!(
        frame::decode::<(RequestId, Response)>(&f, FrameKind::Response, MAX),
        Err(Error::UnexpectedFrame {
            expected: FrameKind::Response,
            got: FrameKind::Request
        })
    );
    assert_eq!(
        frame::check_kind(FrameKind::Goodbye, FrameKind::Request, &[]),
        Err(Error::UnexpectedFrame {
            expected: FrameKind::Request,
            got: FrameKind::Goodbye
        })
    );
}

#[test]
fn error_frame_decodes_to_remote() {
    let pe = ProtocolError::new(ProtocolErrorCode::TooLarge, true, "body of 2000000 bytes");
    let f = frame::encode(FrameKind::Error, &pe, MAX).unwrap();
    for kind in [FrameKind::Hello, FrameKind::Request, FrameKind::Response] {
        assert_eq!(
            frame::decode::<Response>(&f, kind, MAX),
            Err(Error::Remote(pe.clone()))
        );
    }
    // An ERROR frame that is itself garbage is reported as such.
    assert!(matches!(
        frame::check_kind(FrameKind::Error, FrameKind::Response, b"\x01"),
        Err(Error::Malformed(_))
    ));
    // An unknown code is kept.
    let body = b"\xa3\x64code\x19\x03\xe7\x65fatal\xf5\x66detail\x60";
    let e: ProtocolError = frame::decode_body(body).unwrap();
    assert_eq!(e.code, ProtocolErrorCode::Other(999));
}

struct Other;
impl Protocol for Other {
    const NAME: &'static str = "other";
    const VERSION: u32 = 1;
    type Request = Request;
    type Response = Response;
}

struct Next;
impl Protocol for Next {
    const NAME: &'static str = "svmc";
    const VERSION: u32 = 3;
    type Request = Request;
    type Response = Response;
}

#[test]
fn hello_wrong_protocol_name() {
    let theirs = Hello::new::<Other>(MAX);
    let f = frame::encode(FrameKind::Hello, &theirs, MAX).unwrap();
    let got: Hello = frame::decode(&f, FrameKind::Hello, MAX).unwrap();
    let e = got.check::<ServiceVm>().unwrap_err();
    assert_eq!(
        e,
        Error::ProtocolMismatch {
            ours: "svmc",
            theirs: "other".into()
        }
    );
    assert_eq!(
        ProtocolError::from_error(&e).map(|p| (p.code, p.fatal)),
        Some((ProtocolErrorCode::VersionMismatch, true))
    );
}

#[test]
fn hello_wrong_version() {
    let theirs = Hello::new::<Next>(MAX);
    let f = frame::encode(FrameKind::Hello, &theirs, MAX).unwrap();
    let got: Hello = frame::decode(&f, FrameKind::Hello, MAX).unwrap();
    assert_eq!(
        got.check::<ServiceVm>(),
        Err(Error::VersionMismatch { ours: 2, theirs: 3 })
    );
    assert_eq!(got.check::<Next>(), Ok(()));
}

#[test]
fn hello_from_a_newer_peer_with_more_fields_is_read() {
    // Unknown keys are ignored: a future HELLO with an extra field still
    // yields a clear version check.
    let body = b"\xa4\x68protocol\x64svmc\x67version\x03\x68max_body\x19\x04\x00\x65extra\xf5";
    let h: Hello = frame::decode(&raw(1, body), FrameKind::Hello, MAX).unwrap();
    assert_eq!(
        h.check::<ServiceVm>(),
        Err(Error::VersionMismatch { ours: 2, theirs: 3 })
    );
}

#[test]
fn hello_name_and_version_are_read_before_the_other_fields() {
    // Another version (1) or name, with a max_body that is a string and an
    // unknown key: still a version or protocol mismatch, never Malformed.
    let v1 = b"\xa4\x68max_body\x64lots\x68protocol\x64svmc\x67version\x01\x61x\x80";
    assert_eq!(
        Hello::decode_checked::<ServiceVm>(v1),
        Err(Error::VersionMismatch { ours: 2, theirs: 1 })
    );
    let other = b"\xa3\x68protocol\x65other\x67version\x61x\x68max_body\xf6";
    assert_eq!(
        Hello::decode_checked::<ServiceVm>(other),
        Err(Error::ProtocolMismatch {
            ours: "svmc",
            theirs: "other".into()
        })
    );
    // Our name and version: now the other fields count.
    let ours = b"\xa3\x68protocol\x64svmc\x67version\x02\x68max_body\x64lots";
    assert!(matches!(
        Hello::decode_checked::<ServiceVm>(ours),
        Err(Error::Malformed(_))
    ));
    let f = frame::encode(FrameKind::Hello, &Hello::new::<ServiceVm>(7), MAX).unwrap();
    assert_eq!(
        Hello::decode_checked::<ServiceVm>(&f[HEADER_LEN..]),
        Ok(Hello::new::<ServiceVm>(7))
    );
    // No protocol name at all cannot be told from garbage.
    assert!(matches!(
        Hello::decode_checked::<ServiceVm>(b"\xa1\x67version\x01"),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn lenient_but_valid_encodings_are_read() {
    // Fields in another order, a non-shortest integer, indefinite lengths.
    let body =
        b"\xbf\x67version\x1a\x00\x00\x00\x01\x68max_body\x01\x68protocol\x7f\x62sv\x62mc\xff\xff";
    let h: Hello = frame::decode_body(body).unwrap();
    assert_eq!(
        h,
        Hello {
            protocol: "svmc".into(),
            version: 1,
            max_body: 1,
            ext: Vec::new(),
        }
    );
    // An indefinite-length byte string payload.
    let body = b"\xa1\x63rev\x5f\x41a\x42bc\xff";
    assert_eq!(
        frame::decode_body::<Request>(body),
        Ok(Request::Reverse(b"abc".to_vec()))
    );
}

/// `Error::is_fatal` agrees with the fatal flag of the ERROR a receiver
/// sends for the same error (WIRE.md §3.4), and local refusals are not
/// fatal.
#[test]
fn is_fatal_agrees_with_the_error_table() {
    let received = [
        Error::Truncated {
            expected: 10,
            got: 3,
        },
        Error::TooLarge { len: 2, max: 1 },
        Error::Empty {
            kind: FrameKind::Request,
        },
        Error::UnknownFrameKind(9),
        Error::UnexpectedFrame {
            expected: FrameKind::Request,
            got: FrameKind::Response,
        },
        Error::InvalidCbor { offset: 0 },
        Error::UnknownVariant("x".into()),
        Error::Malformed("x".into()),
        Error::TrailingBytes { extra: 1 },
        Error::ProtocolMismatch {
            ours: "svmc",
            theirs: "x".into(),
        },
        Error::VersionMismatch { ours: 2, theirs: 1 },
    ];
    for e in received {
        let pe = ProtocolError::from_error(&e).expect("reported to the peer");
        assert_eq!(e.is_fatal(), pe.fatal, "{e}");
    }
    for e in [
        Error::TooLargeToSend { len: 2, max: 1 },
        Error::Encode("x".into()),
    ] {
        assert!(!e.is_fatal(), "{e}");
        assert_eq!(ProtocolError::from_error(&e), None, "{e}");
    }
    assert!(Error::UnexpectedId(svmc_comm::RequestId(3)).is_fatal());
    let remote = |fatal| Error::Remote(ProtocolError::new(ProtocolErrorCode::Busy, fatal, "x"));
    assert!(remote(true).is_fatal());
    assert!(!remote(false).is_fatal());
}

/// R-ERR-7: a sender's detail is at most 512 bytes, cut at a character
/// boundary, so the largest `ERROR` (id and all) fits its 1024-byte limit;
/// a receiver reads a longer one.
#[test]
fn error_details_are_cut_to_512_bytes_and_read_when_longer() {
    use svmc_comm::RequestId;
    use svmc_comm::frame::{ERROR_MAX_DETAIL, ProtocolError, ProtocolErrorCode};
    let long = "é".repeat(400); // 800 bytes
    let e = ProtocolError::new(ProtocolErrorCode::Other(u32::MAX), true, long.clone())
        .with_id(Some(RequestId(u32::MAX)));
    assert_eq!(e.detail.len(), ERROR_MAX_DETAIL);
    assert!(long.starts_with(&e.detail));
    let f = frame::encode(FrameKind::Error, &e, 0).expect("fits ERROR_MAX_BODY");
    assert!(f.len() - HEADER_LEN <= ERROR_MAX_BODY as usize);
    // 700 bytes of detail from a peer that does not cut: read as is.
    let mut sent = e.clone();
    sent.detail = "x".repeat(700);
    let mut body = Vec::new();
    ciborium::into_writer(&sent, &mut body).unwrap();
    assert!(body.len() <= ERROR_MAX_BODY as usize);
    assert_eq!(frame::decode_body::<ProtocolError>(&body), Ok(sent));
}
