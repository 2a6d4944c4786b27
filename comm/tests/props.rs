//! Property tests: the decoder never panics on arbitrary input, agrees with
//! ciborium's own deserializer on whatever it accepts, and encode/decode
//! round-trips arbitrary messages.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use svmc::{GuestInfo, HeapStats, Request, Response, ServiceError};
use svmc_comm::Hello;
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError};

const MAX: u32 = 1 << 16;

/// Decodes `body` with ours and, if that succeeds, checks that ciborium's
/// stream deserializer reads the same value (ours may refuse more).
fn agrees_with_ciborium<T>(body: &[u8])
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(ours) = frame::decode_body::<T>(body) {
        let theirs: T = ciborium::from_reader(body).expect("ciborium reads what we read");
        assert_eq!(theirs, ours);
    }
}

fn round_trip<T>(kind: FrameKind, v: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let f = frame::encode(kind, v, u32::MAX).unwrap();
    let h = Header::parse(f[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
    assert_eq!(h.frame_len(), f.len());
    assert_eq!(&frame::decode::<T>(&f, kind, u32::MAX).unwrap(), v);
    // ciborium reads our encoding as the same value too.
    let theirs: T = ciborium::from_reader(&f[HEADER_LEN..]).unwrap();
    assert_eq!(&theirs, v);
}

fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn guest_info() -> impl Strategy<Value = GuestInfo> {
    (
        text(),
        text(),
        any::<u32>(),
        text(),
        any::<u32>(),
        proptest::option::of(any::<(u64, u64, u64)>()),
    )
        .prop_map(
            |(firmware, firmware_version, protocol_version, arch, max_body, heap)| GuestInfo {
                firmware,
                firmware_version,
                protocol_version,
                arch,
                max_body,
                heap: heap.map(|(size, used, peak)| HeapStats { size, used, peak }),
            },
        )
}

fn service_error() -> impl Strategy<Value = ServiceError> {
    prop_oneof![
        any::<(u64, u64)>().prop_map(|(len, max)| ServiceError::PayloadTooLarge { len, max }),
        any::<u64>().prop_map(|requested| ServiceError::OutOfMemory { requested }),
        Just(ServiceError::Unsupported),
        text().prop_map(ServiceError::Internal),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..70_000),
    ]
}

/// Mostly well-formed frames with bytes changed: reaches deeper than pure noise.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        payload(),
        guest_info(),
        any::<u8>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        any::<usize>(),
    )
        .prop_map(|(p, info, which, edits, cut)| {
            let mut f = match which % 4 {
                0 => frame::encode(FrameKind::Request, &Request::Reverse(p), u32::MAX),
                1 => frame::encode(FrameKind::Response, &Response::Info(info), u32::MAX),
                2 => frame::encode(
                    FrameKind::Hello,
                    &Hello {
                        protocol: "svmc".into(),
                        version: 1,
                        max_body: 7,
                        ext: Vec::new(),
                    },
                    u32::MAX,
                ),
                _ => frame::encode(
                    FrameKind::Response,
                    &Response::Err(ServiceError::Internal("e".into())),
                    u32::MAX,
                ),
            }
            .unwrap();
            for (at, b) in edits {
                let i = at % f.len();
                f[i] = b;
            }
            if which >= 128 {
                f.truncate(cut % (f.len() + 1));
            }
            f
        })
}

/// A text key, written in one of the forms a receiver must read as the
/// same key (R-CBOR-1, R-CBOR-4, R-CBOR-5, R-CBOR-6): shortest definite,
/// a non-shortest head, chunked (split at `cut`), or tagged.
fn encode_key(key: &str, form: u8, cut: usize, out: &mut Vec<u8>) {
    let b = key.as_bytes();
    let head = |out: &mut Vec<u8>, n: usize| {
        if n < 24 {
            out.push(0x60 | n as u8)
        } else {
            out.extend_from_slice(&[0x78, n as u8])
        }
    };
    match form % 4 {
        0 => {
            head(out, b.len());
            out.extend_from_slice(b);
        }
        1 => {
            out.push(0x7a);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        2 => {
            // Keys are ASCII here: any cut is at a character boundary.
            let (x, y) = b.split_at(cut.min(b.len()));
            out.push(0x7f);
            for part in [x, y] {
                head(out, part.len());
                out.extend_from_slice(part);
            }
            out.push(0xff);
        }
        _ => {
            out.extend_from_slice(&[0xd8, 0x20]);
            head(out, b.len());
            out.extend_from_slice(b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn header_parse_never_panics(h in any::<[u8; HEADER_LEN]>(), max in any::<u32>()) {
        if let Ok(header) = Header::parse(h, max) {
            prop_assert!(header.len <= header.kind.max_body(max));
            prop_assert_eq!(header.to_bytes(), h);
        }
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = frame::decode::<Request>(&data, FrameKind::Request, MAX);
        let _ = frame::decode::<Response>(&data, FrameKind::Response, MAX);
        let _ = frame::decode::<Hello>(&data, FrameKind::Hello, MAX);
        agrees_with_ciborium::<Request>(&data);
        agrees_with_ciborium::<Response>(&data);
        agrees_with_ciborium::<Hello>(&data);
        agrees_with_ciborium::<ProtocolError>(&data);
    }

    #[test]
    fn mutated_frames_never_panic(f in mutated_frame()) {
        let _ = frame::decode::<Request>(&f, FrameKind::Request, u32::MAX);
        let _ = frame::decode::<Response>(&f, FrameKind::Response, u32::MAX);
        let _ = frame::decode::<Hello>(&f, FrameKind::Hello, u32::MAX);
        if let Some(body) = f.get(HEADER_LEN..) {
            agrees_with_ciborium::<Request>(body);
            agrees_with_ciborium::<Response>(body);
            agrees_with_ciborium::<Hello>(body);
        }
    }

    #[test]
    fn reverse_round_trips(p in payload()) {
        round_trip(FrameKind::Request, &Request::Reverse(p.clone()));
        round_trip(FrameKind::Response, &Response::Reverse(p));
    }

    #[test]
    fn guest_info_round_trips(info in guest_info()) {
        round_trip(FrameKind::Response, &Response::Info(info));
    }

    #[test]
    fn service_error_round_trips(e in service_error()) {
        round_trip(FrameKind::Response, &Response::Err(e));
    }

    #[test]
    fn hello_round_trips(protocol in ".{0,20}", version in any::<u32>(), max_body in any::<u32>()) {
        round_trip(FrameKind::Hello, &Hello { protocol, version, max_body, ext: Vec::new() });
    }

    /// A map is refused as malformed exactly when two of its keys are the
    /// same text, however each is written, below and above the number of
    /// keys compared inline (8).
    #[test]
    fn repeated_keys_are_found_by_value(
        keys in proptest::collection::vec(("[abc]{0,4}", any::<u8>(), 0..5usize), 0..40),
    ) {
        let mut body = vec![0xb9];
        body.extend_from_slice(&(keys.len() as u16).to_be_bytes());
        for (k, form, cut) in &keys {
            encode_key(k, *form, *cut, &mut body);
            body.push(0x01);
        }
        let distinct: std::collections::BTreeSet<&str> =
            keys.iter().map(|(k, _, _)| k.as_str()).collect();
        let r = frame::decode_body::<std::collections::BTreeMap<String, u8>>(&body);
        if distinct.len() == keys.len() {
            prop_assert_eq!(r.map(|m| m.len()), Ok(keys.len()));
        } else {
            prop_assert!(
                matches!(&r, Err(svmc_comm::Error::Malformed(m)) if m.starts_with("repeated map key")),
                "{:?}", r
            );
        }
    }
}
