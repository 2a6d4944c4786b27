//! Property tests: the decoder never panics on arbitrary input, agrees with
//! ciborium's own deserializer on whatever it accepts, and encode/decode
//! round-trips arbitrary messages.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use svmc_comm::Hello;
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError};
use svmc_comm::service::{GuestInfo, HeapStats, Request, Response, ServiceError};

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
        round_trip(FrameKind::Hello, &Hello { protocol, version, max_body });
    }
}
