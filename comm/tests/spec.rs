//! Checks the example frames of `WIRE.md` against the encoder, byte for
//! byte, and decodes each back, so the specification cannot drift from the
//! code.

use std::collections::BTreeMap;
use std::fmt::Debug;

use comm::frame::{self, DEFAULT_MAX_BODY, FrameKind, ProtocolError, ProtocolErrorCode};
use comm::service::{GuestInfo, HeapStats, Request, Response, ServiceError, ServiceVm};
use comm::{Error, Hello};
use serde::Serialize;
use serde::de::DeserializeOwned;

const WIRE: &str = include_str!("../WIRE.md");

/// `Example <name>:` lines, each followed by a ```hex block, as bytes.
fn examples() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = WIRE.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("Example ") else {
            continue;
        };
        let Some((name, _)) = rest.split_once(':') else {
            continue;
        };
        assert_eq!(lines.next(), Some("```hex"), "example {name}: no hex block");
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            let data = l.split('#').next().unwrap();
            for pair in data.split_whitespace() {
                assert_eq!(pair.len(), 2, "example {name}: bad hex {pair:?}");
                bytes.push(u8::from_str_radix(pair, 16).expect("hex digits"));
            }
        }
        assert!(
            out.insert(name.to_string(), bytes).is_none(),
            "example {name} twice"
        );
    }
    out
}

type Check = Box<dyn Fn(&[u8])>;

/// Encodes `value` as a frame of `kind`, and returns a check that a frame
/// is exactly that encoding and decodes to `value`.
fn case<T>(kind: FrameKind, value: T) -> Check
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Box::new(move |wire| {
        let ours = frame::encode(kind, &value, DEFAULT_MAX_BODY).unwrap();
        assert_eq!(hex(&ours), hex(wire), "encoding of {value:?}");
        let back: T = frame::decode(wire, kind, DEFAULT_MAX_BODY).unwrap();
        assert_eq!(back, value);
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x} ")).collect()
}

fn cases() -> BTreeMap<&'static str, Check> {
    let mut m: BTreeMap<&'static str, Check> = BTreeMap::new();
    m.insert(
        "hello",
        case(FrameKind::Hello, Hello::new::<ServiceVm>(DEFAULT_MAX_BODY)),
    );
    m.insert(
        "request-reverse",
        case(FrameKind::Request, Request::Reverse(b"abc".to_vec())),
    );
    m.insert(
        "response-reverse",
        case(FrameKind::Response, Response::Reverse(b"cba".to_vec())),
    );
    m.insert("request-info", case(FrameKind::Request, Request::Info));
    m.insert(
        "response-info",
        case(
            FrameKind::Response,
            Response::Info(GuestInfo {
                firmware: "svmc-guest".into(),
                firmware_version: "0.1.0".into(),
                protocol_version: 1,
                arch: "x86_64".into(),
                max_body: 16777280,
                heap: Some(HeapStats {
                    size: 1048576,
                    used: 4096,
                    peak: 8192,
                }),
            }),
        ),
    );
    m.insert(
        "request-power-off",
        case(FrameKind::Request, Request::PowerOff),
    );
    m.insert(
        "response-power-off",
        case(FrameKind::Response, Response::PowerOff),
    );
    m.insert(
        "response-err-too-large",
        case(
            FrameKind::Response,
            Response::Err(ServiceError::PayloadTooLarge {
                len: 20000000,
                max: 16777216,
            }),
        ),
    );
    m.insert(
        "response-err-unsupported",
        case(
            FrameKind::Response,
            Response::Err(ServiceError::Unsupported),
        ),
    );
    m.insert(
        "error",
        Box::new(|wire| {
            let e = ProtocolError {
                code: ProtocolErrorCode::UnknownVariant,
                fatal: false,
                detail: "unknown variant `sum`".into(),
            };
            case(FrameKind::Error, e.clone())(wire);
            // Where a response is expected, an ERROR frame is the peer's error.
            assert_eq!(
                frame::decode::<Response>(wire, FrameKind::Response, DEFAULT_MAX_BODY),
                Err(Error::Remote(e))
            );
        }),
    );
    m.insert(
        "goodbye",
        Box::new(|wire| {
            assert_eq!(wire, frame::goodbye());
            let h = frame::Header::parse(wire.try_into().unwrap(), DEFAULT_MAX_BODY).unwrap();
            assert_eq!((h.kind, h.len), (FrameKind::Goodbye, 0));
        }),
    );
    m
}

#[test]
fn every_example_matches_the_encoder() {
    let examples = examples();
    let cases = cases();
    let documented: Vec<_> = examples.keys().map(String::as_str).collect();
    let tested: Vec<_> = cases.keys().copied().collect();
    assert_eq!(
        documented, tested,
        "examples in WIRE.md vs cases in this test"
    );
    for (name, wire) in &examples {
        println!("checking example {name}");
        cases[name.as_str()](wire);
    }
}

#[test]
fn documented_constants() {
    // Figures quoted in WIRE.md.
    assert_eq!(frame::HEADER_LEN, 5);
    assert_eq!(DEFAULT_MAX_BODY, 16_777_280);
    assert_eq!(frame::HELLO_MAX_BODY, 256);
    assert_eq!(frame::ERROR_MAX_BODY, 1024);
    assert_eq!(frame::RECURSION_LIMIT, 128);
    assert_eq!(comm::service::HOST_PORT, 7000);
    assert_eq!(comm::service::SERVICE_PORT, 7001);
    for (n, overhead) in [
        (0, 11),
        (23, 11),
        (24, 12),
        (255, 12),
        (256, 13),
        (65535, 13),
        (65536, 15),
        (1 << 20, 15),
    ] {
        let f = frame::encode(FrameKind::Request, &Request::Reverse(vec![0; n]), u32::MAX).unwrap();
        assert_eq!(f.len() - n, overhead, "payload of {n} bytes");
        assert!(f.len() - n - frame::HEADER_LEN <= comm::service::REVERSE_OVERHEAD as usize);
    }
}
