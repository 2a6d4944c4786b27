//! A small protocol for the rpc loop's unit tests, with what they
//! exercise: a `Reverse` request with a direct codec (its payload as the
//! encoder's tail) and an in-place answer ([`Handler::handle_in_place`]),
//! `Info`, a `PowerOff` that stops the server, and the typed
//! `out_of_memory` / `response_too_large` answers.
//!
//! Its messages have the body layout of svmc's (`svmc-proto`, which
//! depends on this crate and so cannot be used here) and its name is as
//! long, so the frames and byte counts the tests check are the ones a real
//! service produces.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use serde::{Deserialize, Serialize};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::FrameKind;
use svmc_comm::{Protocol, Result};

use super::{Handler, InPlace, Then};

/// The test protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TestVm;

impl Protocol for TestVm {
    // Four bytes, like "svmc": the HELLO frames have the same length.
    const NAME: &'static str = "test";
    const VERSION: u32 = 2;
    type Request = Request;
    type Response = Response;

    fn response_too_large(len: u64, max: u32) -> Option<Response> {
        Some(Response::Err(TestError::PayloadTooLarge {
            len,
            max: max.into(),
        }))
    }

    fn out_of_memory(requested: u64) -> Option<Response> {
        Some(Response::Err(TestError::OutOfMemory { requested }))
    }

    fn encode_request<'a>(
        id: RequestId,
        request: &'a Request,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        match request {
            Request::Reverse(p) => push_reverse(FrameKind::Request, id, p, max, out),
            other => envelope::encode_request_into(id, other, max, out).map(|()| &[][..]),
        }
    }

    fn encode_response<'a>(
        id: RequestId,
        response: &'a Response,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        match response {
            Response::Reverse(p) => push_reverse(FrameKind::Response, id, p, max, out),
            other => envelope::encode_response_into(id, other, max, out).map(|()| &[][..]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    #[serde(rename = "rev")]
    Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "info")]
    Info,
    #[serde(rename = "off")]
    PowerOff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    #[serde(rename = "rev")]
    Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "info")]
    Info(Info),
    #[serde(rename = "off")]
    PowerOff,
    #[serde(rename = "err")]
    Err(TestError),
}

/// What `Info` answers: the fields of svmc's `GuestInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Info {
    pub firmware: String,
    pub firmware_version: String,
    pub protocol_version: u32,
    pub arch: String,
    pub max_body: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TestError {
    PayloadTooLarge { len: u64, max: u64 },
    OutOfMemory { requested: u64 },
}

/// The frame of a `Reverse` up to its payload, which is the tail.
fn push_reverse<'a>(
    kind: FrameKind,
    id: RequestId,
    payload: &'a [u8],
    max: u32,
    out: &mut Vec<u8>,
) -> Result<&'a [u8]> {
    let head = |o: &mut Vec<u8>| {
        o.extend_from_slice(b"\xa1\x63rev");
        envelope::push_head(o, 2, payload.len() as u64);
    };
    envelope::push_frame_head(kind, id, head, payload.len(), max, out)?;
    Ok(payload)
}

/// The id and payload of a `[id, {"rev": bytes}]` body in definite form.
fn reverse_payload(body: &[u8]) -> Option<(RequestId, Range<usize>)> {
    let mut pos = 1;
    if *body.first()? != 0x82 {
        return None;
    }
    let (0, id) = envelope::read_head(body, &mut pos)? else {
        return None;
    };
    if body.get(pos..pos + 5)? != b"\xa1\x63rev" {
        return None;
    }
    pos += 5;
    let (2, len) = envelope::read_head(body, &mut pos)? else {
        return None;
    };
    let id = RequestId(u32::try_from(id).ok()?);
    (len == (body.len() - pos) as u64).then_some((id, pos..body.len()))
}

/// Answers `Reverse` (in place when it can), `Info` from its function and
/// `PowerOff` (then stops).
pub(crate) struct TestService<F: FnMut() -> Info> {
    info: F,
    power_off: bool,
}

impl<F: FnMut() -> Info> TestService<F> {
    pub(crate) fn new(info: F) -> Self {
        Self {
            info,
            power_off: false,
        }
    }

    pub(crate) fn power_off_requested(&self) -> bool {
        self.power_off
    }
}

impl<F: FnMut() -> Info> Handler<TestVm> for TestService<F> {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut bytes) => {
                bytes.reverse();
                (Response::Reverse(bytes), Then::Continue)
            }
            Request::Info => (Response::Info((self.info)()), Then::Continue),
            Request::PowerOff => {
                self.power_off = true;
                (Response::PowerOff, Then::Stop)
            }
        }
    }

    fn handle_in_place(&mut self, body: &mut [u8], head: &mut Vec<u8>) -> Option<InPlace> {
        let (id, payload) = reverse_payload(body)?;
        body[payload.clone()].reverse();
        head.push(0x82);
        envelope::push_head(head, 0, id.0.into());
        head.extend_from_slice(b"\xa1\x63rev");
        envelope::push_head(head, 2, payload.len() as u64);
        Some(InPlace {
            id,
            payload,
            then: Then::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use svmc_comm::frame::HEADER_LEN;

    use super::*;

    #[test]
    fn the_direct_codec_writes_what_serde_writes() {
        for r in [
            Request::Reverse(vec![7; 30]),
            Request::Reverse(vec![]),
            Request::Info,
        ] {
            let mut parts = Vec::new();
            let tail = TestVm::encode_request(RequestId(300), &r, u32::MAX, &mut parts).unwrap();
            parts.extend_from_slice(tail);
            let mut whole = Vec::new();
            envelope::encode_request_into(RequestId(300), &r, u32::MAX, &mut whole).unwrap();
            assert_eq!(parts, whole, "{r:?}");
        }
    }

    #[test]
    fn the_in_place_answer_is_what_the_encoder_writes() {
        let mut wire = Vec::new();
        envelope::encode_request_into(
            RequestId(9),
            &Request::Reverse(b"abc".into()),
            100,
            &mut wire,
        )
        .unwrap();
        let mut head = Vec::new();
        let mut service = TestService::new(|| unreachable!());
        let done = service
            .handle_in_place(&mut wire[HEADER_LEN..], &mut head)
            .unwrap();
        head.extend_from_slice(&wire[HEADER_LEN..][done.payload]);
        let mut want = Vec::new();
        envelope::encode_response_into(
            RequestId(9),
            &Response::Reverse(b"cba".into()),
            100,
            &mut want,
        )
        .unwrap();
        assert_eq!(head, want[HEADER_LEN..]);
        let mut info = Vec::new();
        envelope::encode_request_into(RequestId(9), &Request::Info, 100, &mut info).unwrap();
        assert!(
            service
                .handle_in_place(&mut info[HEADER_LEN..], &mut head)
                .is_none()
        );
    }
}
