//! Checks the example frames of `WIRE.md` against the encoder, byte for
//! byte, and decodes each back, so the specification cannot drift from the
//! code.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use svmc::{GuestInfo, HeapStats, Request, Response, ServiceError, ServiceVm};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, Cancel, Extensions, RequestMeta, ResponseMeta};
use svmc_comm::frame::{self, DEFAULT_MAX_BODY, FrameKind, ProtocolError, ProtocolErrorCode};
use svmc_comm::{Error, Hello};

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

/// [`case`] for a `REQUEST` or `RESPONSE`: body `[id, value]`.
fn enveloped<T>(kind: FrameKind, id: u32, value: T) -> Check
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Box::new(move |wire| {
        let mut ours = Vec::new();
        let id = RequestId(id);
        match kind {
            FrameKind::Request => {
                envelope::encode_request_into(id, &value, DEFAULT_MAX_BODY, &mut ours)
            }
            _ => envelope::encode_response_into(id, &value, DEFAULT_MAX_BODY, &mut ours),
        }
        .unwrap();
        assert_eq!(hex(&ours), hex(wire), "encoding of {value:?}");
        let h = frame::Header::parse(
            wire[..frame::HEADER_LEN].try_into().unwrap(),
            DEFAULT_MAX_BODY,
        )
        .unwrap();
        assert_eq!((h.kind, h.frame_len()), (kind, wire.len()));
        let (got_id, back) = envelope::decode::<T>(&wire[frame::HEADER_LEN..]);
        assert_eq!(got_id, Some(id));
        assert_eq!(back.unwrap(), value);
    })
}

/// [`enveloped`] with a meta item: body `[id, meta, value]` (`WIRE.md`
/// §10.2), read back with `ext::split_meta`.
fn with_meta<M, T>(kind: FrameKind, id: u32, meta: M, value: T) -> Check
where
    M: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Box::new(move |wire| {
        let mut ours = Vec::new();
        let id = RequestId(id);
        match kind {
            FrameKind::Request => {
                envelope::encode_request_into(id, &value, DEFAULT_MAX_BODY, &mut ours)
            }
            _ => envelope::encode_response_into(id, &value, DEFAULT_MAX_BODY, &mut ours),
        }
        .unwrap();
        ext::insert_meta(&mut ours, 0, 0, &meta, DEFAULT_MAX_BODY).unwrap();
        assert_eq!(hex(&ours), hex(wire), "encoding of {meta:?}, {value:?}");
        let h = frame::Header::parse(
            wire[..frame::HEADER_LEN].try_into().unwrap(),
            DEFAULT_MAX_BODY,
        )
        .unwrap();
        assert_eq!((h.kind, h.frame_len()), (kind, wire.len()));
        let mut body = wire[frame::HEADER_LEN..].to_vec();
        let (start, got) = ext::split_meta::<M>(&mut body).unwrap();
        assert_eq!(got.as_ref(), Some(&meta));
        let (got_id, back) = envelope::decode::<T>(&body[start..]);
        assert_eq!(got_id, Some(id));
        assert_eq!(back.unwrap(), value);
    })
}

/// A `CHUNK` of request `id` (`WIRE.md` §10.4).
fn chunk(id: u32, data: Option<&'static [u8]>) -> Check {
    Box::new(move |wire| {
        let mut ours = Vec::new();
        ext::encode_chunk_into(RequestId(id), data, &mut ours).unwrap();
        assert_eq!(hex(&ours), hex(wire), "encoding of the chunk {data:?}");
        let h = frame::Header::parse(wire[..frame::HEADER_LEN].try_into().unwrap(), 0).unwrap();
        assert_eq!((h.kind, h.frame_len()), (FrameKind::Chunk, wire.len()));
        let (got_id, got) = ext::decode_chunk(&wire[frame::HEADER_LEN..]).unwrap();
        assert_eq!((got_id, got.as_deref()), (RequestId(id), data));
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
        enveloped(FrameKind::Request, 1, Request::Reverse(b"abc".to_vec())),
    );
    m.insert(
        "response-reverse",
        enveloped(FrameKind::Response, 1, Response::Reverse(b"cba".to_vec())),
    );
    m.insert(
        "request-info",
        enveloped(FrameKind::Request, 2, Request::Info),
    );
    m.insert(
        "response-info",
        enveloped(
            FrameKind::Response,
            2,
            Response::Info(GuestInfo {
                firmware: "svmc-guest".into(),
                firmware_version: "0.1.0".into(),
                protocol_version: 2,
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
        enveloped(FrameKind::Request, 3, Request::PowerOff),
    );
    m.insert(
        "response-power-off",
        enveloped(FrameKind::Response, 3, Response::PowerOff),
    );
    m.insert(
        "response-err-too-large",
        enveloped(
            FrameKind::Response,
            4,
            Response::Err(ServiceError::PayloadTooLarge {
                len: 20000000,
                max: 16777216,
            }),
        ),
    );
    m.insert(
        "response-err-unsupported",
        enveloped(
            FrameKind::Response,
            5,
            Response::Err(ServiceError::Unsupported),
        ),
    );
    m.insert(
        "error",
        Box::new(|wire| {
            let e = ProtocolError::new(
                ProtocolErrorCode::UnknownVariant,
                false,
                "unknown variant `sum`",
            )
            .with_id(Some(RequestId(6)));
            case(FrameKind::Error, e.clone())(wire);
            // Where a response is expected, an ERROR frame is the peer's error.
            assert_eq!(
                frame::decode::<Response>(wire, FrameKind::Response, DEFAULT_MAX_BODY),
                Err(Error::Remote(e))
            );
        }),
    );
    m.insert(
        "error-busy",
        case(
            FrameKind::Error,
            ProtocolError::new(ProtocolErrorCode::Busy, true, "8 connections"),
        ),
    );
    m.insert(
        "hello-ext",
        case(
            FrameKind::Hello,
            Hello::new::<ServiceVm>(DEFAULT_MAX_BODY).with_ext(Extensions::ALL),
        ),
    );
    m.insert(
        "request-meta-deadline",
        with_meta(
            FrameKind::Request,
            7,
            RequestMeta {
                deadline_ms: Some(250),
                ..RequestMeta::default()
            },
            Request::Info,
        ),
    );
    m.insert(
        "response-meta-timing",
        with_meta(
            FrameKind::Response,
            8,
            ResponseMeta {
                queued_us: Some(120),
                handled_us: Some(35),
                stats: None,
            },
            Response::Reverse(b"cba".to_vec()),
        ),
    );
    m.insert(
        "error-deadline",
        case(
            FrameKind::Error,
            ProtocolError::new(
                ProtocolErrorCode::DeadlineExceeded,
                false,
                "deadline passed",
            )
            .with_id(Some(RequestId(7))),
        ),
    );
    m.insert(
        "cancel",
        case(FrameKind::Cancel, Cancel { id: RequestId(7) }),
    );
    m.insert(
        "error-cancelled",
        case(
            FrameKind::Error,
            ProtocolError::new(ProtocolErrorCode::Cancelled, false, "cancelled")
                .with_id(Some(RequestId(7))),
        ),
    );
    m.insert(
        "request-stream-sha256",
        with_meta(
            FrameKind::Request,
            9,
            RequestMeta {
                stream: true,
                ..RequestMeta::default()
            },
            Request::Sha256,
        ),
    );
    m.insert(
        "response-sha256",
        enveloped(
            FrameKind::Response,
            9,
            Response::Sha256(
                b"\xba\x78\x16\xbf\x8f\x01\xcf\xea\x41\x41\x40\xde\x5d\xae\x22\x23\
                  \xb0\x03\x61\xa3\x96\x17\x7a\x9c\xb4\x10\xff\x61\xf2\x00\x15\xad"
                    .to_vec(),
            ),
        ),
    );
    m.insert("chunk", chunk(9, Some(b"abc")));
    m.insert("chunk-end", chunk(9, None));
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
    assert_eq!(frame::ERROR_MAX_DETAIL, 512);
    assert_eq!(frame::RECURSION_LIMIT, 128);
    assert_eq!(svmc_comm::HOST_PORT, 7000);
    assert_eq!(svmc_comm::SERVICE_PORT, 7001);
    assert_eq!(ext::CANCEL_MAX_BODY, 64);
    assert_eq!(ext::CHUNK_MAX_DATA, 65_536);
    assert_eq!(ext::CHUNK_MAX_BODY, 65_552);
    assert_eq!(frame::FrameKind::Cancel as u8, 0x06);
    assert_eq!(frame::FrameKind::Chunk as u8, 0x07);
    assert_eq!(u32::from(ProtocolErrorCode::DeadlineExceeded), 8);
    assert_eq!(u32::from(ProtocolErrorCode::Cancelled), 9);
    // The largest id takes 5 bytes (1 for ids up to 23).
    for (n, overhead) in [
        (0, 17),
        (23, 17),
        (24, 18),
        (255, 18),
        (256, 19),
        (65535, 19),
        (65536, 21),
        (1 << 20, 21),
    ] {
        let mut f = Vec::new();
        envelope::encode_request_into(
            RequestId(u32::MAX),
            &Request::Reverse(vec![0; n]),
            u32::MAX,
            &mut f,
        )
        .unwrap();
        assert_eq!(f.len() - n, overhead, "payload of {n} bytes");
        assert!(f.len() - n - frame::HEADER_LEN <= svmc::REVERSE_OVERHEAD as usize);
    }
}

#[test]
fn the_cddl_in_wire_md_is_the_cddl_file() {
    let file = include_str!("../svmc.cddl");
    let start = WIRE.find("```cddl\n").expect("a cddl block in WIRE.md") + "```cddl\n".len();
    let len = WIRE[start..].find("```\n").expect("end of the cddl block");
    assert_eq!(
        &WIRE[start..start + len],
        file,
        "WIRE.md §6 vs comm/svmc.cddl"
    );
    assert_eq!(WIRE.matches("```cddl").count(), 1);
}

/// Every `**R-AREA-n.**` rule is defined once, every rule mentioned is
/// defined, and §9 (conformance) names each one.
#[test]
fn every_rule_is_defined_once_and_listed_in_conformance() {
    let is_rule = |w: &str| {
        let mut parts = w.splitn(3, '-');
        parts.next() == Some("R")
            && parts
                .next()
                .is_some_and(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_uppercase()))
            && parts
                .next()
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| is_rule(w))
            .map(str::to_string)
            .collect()
    };
    let mut defined = std::collections::BTreeSet::new();
    for line in WIRE.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("- **R-") {
            let name = format!("R-{}", rest.split('.').next().unwrap());
            assert!(defined.insert(name.clone()), "{name} defined twice");
        }
    }
    assert!(defined.len() > 40, "only {} rules found", defined.len());
    for w in words(WIRE) {
        assert!(defined.contains(&w), "{w} is mentioned but not defined");
    }
    let conformance = &WIRE[WIRE.find("## 9. Conformance").unwrap()..];
    // §9 alone: the sections after it define rules of their own.
    let conformance = &conformance[..conformance.find("\n## ").unwrap_or(conformance.len())];
    let listed: std::collections::BTreeSet<_> = words(conformance).into_iter().collect();
    for r in &defined {
        assert!(listed.contains(r), "{r} is not in §9");
    }
}
