//! Feeds arbitrary bytes to the frame decoder: `Header::parse`, `decode` of
//! `REQUEST`, `RESPONSE` and `HELLO` frames, and `decode_body` of each
//! message type. Nothing may panic; whatever decodes must re-encode to a
//! frame that decodes to the same value; and whatever our slice deserializer
//! accepts, ciborium's own deserializer must accept as the same value. The
//! direct codec of `svmc` (svmc-proto) must return what the generic `envelope` path
//! returns, value and error alike.
#![no_main]

use svmc_comm::Hello;
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError};
use svmc_comm::envelope;
use svmc::{Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Small maximum so that the size checks are reached too.
const MAX: u32 = 4096;

fn check<T>(data: &[u8], kind: FrameKind)
where
    T: Serialize + DeserializeOwned + PartialEq + core::fmt::Debug,
{
    if let Ok(v) = frame::decode::<T>(data, kind, MAX) {
        let again = frame::encode(kind, &v, MAX).expect("a decoded message re-encodes");
        assert_eq!(frame::decode::<T>(&again, kind, MAX).expect("re-decodes"), v);
    }
    if let Ok(v) = frame::decode_body::<T>(data) {
        let theirs: T = ciborium::from_reader(data).expect("ciborium accepts what we accept");
        assert_eq!(theirs, v);
        let again = frame::encode(kind, &v, u32::MAX).expect("re-encodes");
        assert_eq!(frame::decode_body::<T>(&again[HEADER_LEN..]).unwrap(), v);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HEADER_LEN) {
        let h: [u8; HEADER_LEN] = h.try_into().unwrap();
        if let Ok(header) = Header::parse(h, MAX) {
            assert!(header.len <= header.kind.max_body(MAX));
            assert_eq!(header.to_bytes(), h);
        }
    }
    check::<Request>(data, FrameKind::Request);
    check::<Response>(data, FrameKind::Response);
    check::<Hello>(data, FrameKind::Hello);
    check::<ProtocolError>(data, FrameKind::Error);
    assert_eq!(svmc::decode_request(data), envelope::decode::<Request>(data));
    assert_eq!(svmc::decode_response(data), envelope::decode::<Response>(data));
});
