//! The svmc service's request handler on `vsock-transport`'s rpc loop
//! (feature `server`), written once for every server of [`ServiceVm`]:
//! the bare-metal firmware, the Linux guest's service and the test
//! doubles. What differs between them (the firmware name, the
//! architecture, heap figures) comes from the `info` function they pass.

use alloc::boxed::Box;
use alloc::vec::Vec;

use sha2::{Digest, Sha256};
use vsock_transport::rpc::{Answer, Ctx, Handler, InPlace, RequestStream, ResponseStream, Then};

use crate::{GuestInfo, Request, Response, ServiceError, ServiceVm};

/// Answers [`ServiceVm`] requests: `Reverse` in place, `Info` from the
/// caller's function, `PowerOff` (answered, then [`Then::Stop`] and
/// [`Service::power_off_requested`]).
pub struct Service<F: FnMut() -> GuestInfo> {
    info: F,
    power_off: bool,
}

impl<F: FnMut() -> GuestInfo> Service<F> {
    /// A handler whose `Info` answer comes from `info`.
    pub fn new(info: F) -> Self {
        Self {
            info,
            power_off: false,
        }
    }

    /// Whether a `PowerOff` request was answered.
    pub fn power_off_requested(&self) -> bool {
        self.power_off
    }
}

impl<F: FnMut() -> GuestInfo> Handler<ServiceVm> for Service<F> {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut bytes) => {
                // In place: no allocation, so no out-of-memory case here;
                // the request's buffer becomes the response's.
                reverse(&mut bytes);
                (Response::Reverse(bytes), Then::Continue)
            }
            Request::Info => (Response::Info((self.info)()), Then::Continue),
            Request::PowerOff => {
                self.power_off = true;
                (Response::PowerOff, Then::Stop)
            }
            // Without a stream: the digest of no data. (Spinning needs the
            // server's clock: see `handle_ctx`.)
            Request::Sha256 => (
                Response::Sha256(Sha256::digest([]).to_vec()),
                Then::Continue,
            ),
            Request::Spin(_) => (Response::Spin(0), Then::Continue),
            // Only as an answer stream (`handle_streaming`).
            Request::Prng { .. } => (Response::Err(ServiceError::Unsupported), Then::Continue),
        }
    }

    fn handle_streaming(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Answer<ServiceVm> {
        match request {
            Request::Prng { seed, len } => Answer::Stream(Box::new(Prng {
                state: seed,
                left: len,
                sent: 0,
            })),
            other => {
                let (r, t) = self.handle_ctx(other, ctx);
                Answer::Response(r, t)
            }
        }
    }

    fn handle_ctx(&mut self, request: Request, ctx: &mut Ctx<'_>) -> (Response, Then) {
        match request {
            Request::Spin(ms) => (Response::Spin(spin(ms, ctx)), Then::Continue),
            other => self.handle(other),
        }
    }

    #[allow(clippy::type_complexity)]
    fn open_stream(
        &mut self,
        request: Request,
        _: &mut Ctx<'_>,
    ) -> Option<Result<Box<dyn RequestStream<ServiceVm>>, (Response, Then)>> {
        match request {
            Request::Sha256 => Some(Ok(Box::new(Sha256Stream(Sha256::new())))),
            _ => None,
        }
    }

    /// `Reverse` where its payload lies in the request's frame body: one
    /// pass over the bytes (the reverse), no copy, no allocation; the
    /// answer goes out as a few header bytes and the same buffer.
    fn handle_in_place(&mut self, body: &mut [u8], head: &mut Vec<u8>) -> Option<InPlace> {
        let (id, payload) = crate::reverse_payload(body)?;
        reverse(&mut body[payload.clone()]);
        crate::reverse_response_head(id, payload.len(), head);
        Some(InPlace {
            id,
            payload,
            then: Then::Continue,
        })
    }
}

/// Keeps the CPU busy for `ms` milliseconds of the server's clock, asking
/// about once a millisecond whether the request was cancelled; stops then,
/// or when its deadline passed. Returns the whole milliseconds spent.
fn spin(ms: u32, ctx: &mut Ctx<'_>) -> u32 {
    let start = ctx.now_us();
    if start == 0 {
        // A server without a clock (`ServeConfig::now_us` left at 0):
        // nothing to measure the time with.
        return 0;
    }
    let end = start.saturating_add(u64::from(ms) * 1000);
    let mut next_check = start;
    loop {
        let now = ctx.now_us();
        if now >= end {
            break;
        }
        if now >= next_check {
            if ctx.cancelled() || ctx.remaining_us() == Some(0) {
                break;
            }
            next_check = now + 1000;
        }
        core::hint::spin_loop();
    }
    u32::try_from((ctx.now_us() - start) / 1000).unwrap_or(u32::MAX)
}

/// A `prng` answer stream: the generator's next bytes, produced as the
/// client takes them.
struct Prng {
    state: u64,
    left: u64,
    sent: u64,
}

impl ResponseStream<ServiceVm> for Prng {
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        // Whole words, but the last piece: the sequence does not depend
        // on how it is cut into chunks.
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len() & !7);
        let n = if n == 0 {
            self.left.min(buf.len() as u64) as usize
        } else {
            n
        };
        crate::prng_fill(&mut self.state, &mut buf[..n]);
        self.left -= n as u64;
        self.sent += n as u64;
        n
    }

    fn finish(self: Box<Self>) -> (Response, Then) {
        (Response::Prng(self.sent), Then::Continue)
    }
}

/// The data of a `sha256` request stream, hashed as it comes.
struct Sha256Stream(Sha256);

impl RequestStream<ServiceVm> for Sha256Stream {
    fn chunk(&mut self, data: &[u8], _: &mut Ctx<'_>) -> Result<(), Response> {
        self.0.update(data);
        Ok(())
    }

    fn finish(self: Box<Self>, _: &mut Ctx<'_>) -> (Response, Then) {
        (Response::Sha256(self.0.finalize().to_vec()), Then::Continue)
    }
}

/// Reverses `bytes` in place, eight bytes from each end per step (a
/// byte swap of two words). Same result as `<[u8]>::reverse`, which at the
/// guest's `opt-level = "s"` swaps one byte pair per step: under TCG the
/// 8 MiB `Reverse` spent more time in that loop than on the wire.
pub fn reverse(bytes: &mut [u8]) {
    let (mut i, mut j) = (0, bytes.len());
    while j - i >= 16 {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[i..i + 8]);
        b.copy_from_slice(&bytes[j - 8..j]);
        bytes[i..i + 8].copy_from_slice(&u64::from_le_bytes(b).swap_bytes().to_le_bytes());
        bytes[j - 8..j].copy_from_slice(&u64::from_le_bytes(a).swap_bytes().to_le_bytes());
        i += 8;
        j -= 8;
    }
    bytes[i..j].reverse();
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    #[test]
    fn reverse_matches_the_slice_method_for_every_small_length() {
        for len in 0..80 {
            let v: Vec<u8> = (0..len as u8).collect();
            let mut a = v.clone();
            reverse(&mut a);
            let mut b = v;
            b.reverse();
            assert_eq!(a, b, "length {len}");
        }
    }
}
