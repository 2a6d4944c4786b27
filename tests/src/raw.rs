//! The raw-frame client of the suites that speak bytes (`conformance`,
//! `hostile_host`): one connection to a service port behind a hybrid vsock
//! socket, written from `comm/WIRE.md` and never through `rpc::Client`, so
//! that the peer is what is checked. It sends bytes or frames (good or bad
//! on purpose), reads frames with deadlines, and expects answers, `ERROR`s,
//! silence or the close. Well-formed bodies sent, and every body received,
//! can be kept in a [`Capture`] (the conformance suite validates them
//! against `comm/svmc.cddl` at its end).
//!
//! Every failure is a one-line `String` for the case's report; a close
//! reads as "... the server closed ..." and a timeout as "... nothing
//! within the deadline ...", which some cases look for.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use svmc::{Request, Response, ServiceVm};
use svmc_comm::Hello;
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{
    self, DEFAULT_MAX_BODY, FrameKind, HEADER_LEN, ProtocolError, ProtocolErrorCode,
};
use vsock_transport::Timeouts;

use crate::ensure;

/// A case's result.
pub type R = Result<(), String>;

/// How long we watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// How long a write may block (megabytes through an emulated device).
const WRITE: Duration = Duration::from_secs(30);

/// `(kind, body, what)` of frames exchanged, for a schema check.
#[derive(Debug, Default)]
pub struct Capture {
    bodies: Mutex<Vec<(FrameKind, Vec<u8>, String)>>,
}

impl Capture {
    /// Keeps `body` of a frame of `kind`; `what` names it in messages.
    pub fn add(&self, kind: FrameKind, body: &[u8], what: String) {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((kind, body.to_vec(), what));
    }

    /// Everything kept so far.
    pub fn bodies(&self) -> Vec<(FrameKind, Vec<u8>, String)> {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A well-formed `REQUEST` frame `[id, request]`, its body kept.
    pub fn request_frame(&self, id: u32, request: &Request) -> Vec<u8> {
        let f = request_frame(id, request);
        self.add(FrameKind::Request, &f[HEADER_LEN..], "sent REQUEST".into());
        f
    }
}

/// A frame as read: the kind byte and the body.
#[derive(Debug)]
pub struct Frame {
    /// The kind byte, known or not.
    pub kind: u8,
    /// The body.
    pub body: Vec<u8>,
}

/// One raw connection.
pub struct Raw<'c> {
    s: UnixStream,
    /// How long an answer the peer owes may take.
    answer: Duration,
    capture: Option<&'c Capture>,
}

impl<'c> Raw<'c> {
    /// A new connection to `port` behind the hybrid vsock socket `uds`
    /// (after its `CONNECT`/`OK`); `answer` is how long an answer the peer
    /// owes may take, and `capture` keeps the bodies exchanged.
    pub fn connect(
        uds: &Path,
        port: u32,
        answer: Duration,
        capture: Option<&'c Capture>,
    ) -> Result<Self, String> {
        let s = vsock_transport::hybrid::connect(uds, port, &Timeouts::uniform(answer))
            .map_err(|e| format!("connect: {e}"))?
            .into_inner();
        s.set_write_timeout(Some(WRITE))
            .map_err(|e| e.to_string())?;
        Ok(Self { s, answer, capture })
    }

    /// The socket (to shut a side down, set options or write from a thread).
    pub fn stream(&self) -> &UnixStream {
        &self.s
    }

    /// Shuts down `how` of the socket.
    pub fn shutdown(&self, how: Shutdown) -> R {
        self.s.shutdown(how).map_err(|e| e.to_string())
    }

    /// Keeps `body` in the capture, if there is one.
    pub fn capture(&self, kind: FrameKind, body: &[u8], what: String) {
        if let Some(c) = self.capture {
            c.add(kind, body, what);
        }
    }

    /// Sends `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> R {
        self.s.write_all(bytes).map_err(|e| format!("send: {e}"))
    }

    /// A frame with this raw body (not captured: it may be bad on purpose).
    pub fn send_raw(&mut self, kind: u8, body: &[u8]) -> R {
        self.send(&raw_frame(kind, body))
    }

    /// A well-formed frame of `kind` holding `msg` (captured).
    pub fn send_msg<T: serde::Serialize>(&mut self, kind: FrameKind, msg: &T) -> R {
        let f = frame::encode(kind, msg, u32::MAX).map_err(|e| e.to_string())?;
        self.capture(kind, &f[HEADER_LEN..], format!("sent {kind}"));
        self.send(&f)
    }

    /// A well-formed `REQUEST` `[id, request]` (captured).
    pub fn send_request(&mut self, id: u32, request: &Request) -> R {
        let f = request_frame(id, request);
        self.capture(FrameKind::Request, &f[HEADER_LEN..], "sent REQUEST".into());
        self.send(&f)
    }

    /// Sends our `HELLO` (accepting `max_body`), reads the server's and
    /// checks it; returns the server's `max_body`.
    pub fn handshake(&mut self, max_body: u32) -> Result<u32, String> {
        self.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(max_body))?;
        self.expect_hello()
    }

    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant, what: &str) -> R {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{what}: nothing within the deadline ({got} bytes)"));
            }
            self.s
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return Err(format!("{what}: the server closed ({got} bytes read)")),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("{what}: nothing within the deadline ({got} bytes)"));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
        Ok(())
    }

    /// The next frame, its header within `within`; its body is captured.
    pub fn frame_within(&mut self, within: Duration) -> Result<Frame, String> {
        let deadline = Instant::now() + within;
        let mut h = [0u8; HEADER_LEN];
        self.read_exact_by(&mut h, deadline, "reading a frame header")?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        ensure(len <= DEFAULT_MAX_BODY, || {
            format!("frame of kind {:#04x} announces {len} bytes", h[0])
        })?;
        let mut body = vec![0; len as usize];
        self.read_exact_by(&mut body, deadline + self.answer, "reading a frame body")?;
        if let Ok(kind) = FrameKind::from_u8(h[0])
            && !body.is_empty()
        {
            self.capture(kind, &body, format!("received {kind}"));
        }
        Ok(Frame { kind: h[0], body })
    }

    /// The next frame, within the answer time.
    pub fn frame(&mut self) -> Result<Frame, String> {
        self.frame_within(self.answer)
    }

    /// Reads the server's `HELLO`, checks it, returns its `max_body`.
    pub fn expect_hello_within(&mut self, within: Duration) -> Result<u32, String> {
        Ok(self.expect_hello_body(within)?.max_body)
    }

    /// [`Raw::expect_hello_within`], returning the whole `HELLO`.
    pub fn expect_hello_body(&mut self, within: Duration) -> Result<Hello, String> {
        let f = self.frame_within(within)?;
        if f.kind == FrameKind::Error as u8 {
            let pe: Result<ProtocolError, _> = frame::decode_body(&f.body);
            return Err(format!("an ERROR instead of HELLO: {pe:?}"));
        }
        ensure(f.kind == FrameKind::Hello as u8, || {
            format!("frame kind {:#04x} instead of HELLO", f.kind)
        })?;
        let h = Hello::decode_checked::<ServiceVm>(&f.body).map_err(|e| format!("HELLO: {e}"))?;
        ensure(h.max_body > 0, || "max_body 0".into())?;
        Ok(h)
    }

    /// [`Raw::expect_hello_within`] the answer time.
    pub fn expect_hello(&mut self) -> Result<u32, String> {
        self.expect_hello_within(self.answer)
    }

    /// The next frame is an `ERROR`; returns it.
    pub fn expect_any_error(&mut self) -> Result<ProtocolError, String> {
        let f = self.frame()?;
        ensure(f.kind == FrameKind::Error as u8, || {
            format!(
                "expected an ERROR, got frame kind {:#04x} ({} bytes)",
                f.kind,
                f.body.len()
            )
        })?;
        frame::decode_body(&f.body).map_err(|e| format!("ERROR body: {e}"))
    }

    /// The next frame is an `ERROR` with `code`, `fatal` and (unless
    /// `None`) the id `id`; a fatal one is followed by the server closing.
    pub fn expect_error(
        &mut self,
        code: ProtocolErrorCode,
        fatal: bool,
        id: Option<Option<u32>>,
    ) -> R {
        let pe = self
            .expect_any_error()
            .map_err(|e| format!("expected ERROR {code}: {e}"))?;
        ensure(pe.code == code && pe.fatal == fatal, || {
            format!("expected code {code} fatal {fatal}, got {pe:?}")
        })?;
        if let Some(id) = id {
            ensure(pe.id.map(|i| i.0) == id, || {
                format!("expected id {id:?}, got {pe:?}")
            })?;
        }
        if fatal {
            self.expect_close()?;
        }
        Ok(())
    }

    /// The server closes (end of stream or reset) within the answer time,
    /// sending nothing more.
    pub fn expect_close(&mut self) -> R {
        let deadline = Instant::now() + self.answer;
        let mut b = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure(!left.is_zero(), || "the server did not close".into())?;
            self.s
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            return match self.s.read(&mut b) {
                Ok(0) => Ok(()),
                Ok(n) => Err(format!(
                    "{n} more bytes instead of the close: {:02x?}",
                    &b[..n]
                )),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => Err(format!("waiting for the close: {e}")),
            };
        }
    }

    /// Nothing arrives for [`QUIET`] (and the server does not close).
    pub fn expect_nothing(&mut self) -> R {
        self.s
            .set_read_timeout(Some(QUIET))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        match self.s.read(&mut b) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Ok(0) => Err("the server closed".into()),
            Ok(n) => Err(format!("unexpected bytes: {:02x?}", &b[..n])),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The next frame is the `RESPONSE` with `id`; returns the response.
    pub fn expect_response_within(
        &mut self,
        id: u32,
        within: Duration,
    ) -> Result<Response, String> {
        let f = self.frame_within(within)?;
        if f.kind == FrameKind::Error as u8 {
            let pe: Result<ProtocolError, _> = frame::decode_body(&f.body);
            return Err(format!("an ERROR instead of the RESPONSE to {id}: {pe:?}"));
        }
        ensure(f.kind == FrameKind::Response as u8, || {
            format!("frame kind {:#04x} instead of RESPONSE", f.kind)
        })?;
        let (got, r) = envelope::decode::<Response>(&f.body);
        ensure(got == Some(RequestId(id)), || {
            format!("RESPONSE id {got:?}, expected {id}")
        })?;
        r.map_err(|e| format!("RESPONSE body: {e}"))
    }

    /// [`Raw::expect_response_within`] the answer time.
    pub fn expect_response(&mut self, id: u32) -> Result<Response, String> {
        self.expect_response_within(id, self.answer)
    }

    /// A reverse request and its answer: the connection is usable.
    pub fn expect_usable(&mut self, id: u32) -> R {
        self.send_request(id, &Request::Reverse(b"usable".to_vec()))?;
        expect_reversed(self.expect_response(id)?, b"usable")
    }

    /// `GOODBYE`, then the server closes.
    pub fn goodbye(mut self) -> R {
        self.send(&frame::goodbye())?;
        self.expect_close()
    }
}

/// A frame of `kind` (known or not) with this body, as bytes.
pub fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A well-formed `REQUEST` frame `[id, request]` (not captured: see
/// [`Capture::request_frame`]).
pub fn request_frame(id: u32, request: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(RequestId(id), request, u32::MAX, &mut f).expect("encodes");
    f
}

/// `r` is the reverse of `sent`.
pub fn expect_reversed(r: Response, sent: &[u8]) -> R {
    let mut want = sent.to_vec();
    want.reverse();
    ensure(r == Response::Reverse(want), || {
        format!(
            "expected the reverse of {} bytes, got {}",
            sent.len(),
            short(&r)
        )
    })
}

/// `r` for a message, cut to 200 bytes.
pub fn short(r: &Response) -> String {
    let s = format!("{r:?}");
    match s.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// A `HELLO` body with these fields, by hand.
pub fn hello_body(protocol: &str, version: u32, max_body: u32) -> Vec<u8> {
    let mut b = vec![0xa3];
    cbor_text(&mut b, "protocol");
    cbor_text(&mut b, protocol);
    cbor_text(&mut b, "version");
    cbor_uint(&mut b, version.into());
    cbor_text(&mut b, "max_body");
    cbor_uint(&mut b, max_body.into());
    b
}

/// A CBOR head: major type `major`, argument `n`, in its shortest form.
pub fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A CBOR unsigned integer.
pub fn cbor_uint(out: &mut Vec<u8>, n: u64) {
    cbor_head(out, 0, n);
}

/// A CBOR text string.
pub fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `len` bytes that are not periodic in any small power of two.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_heads_take_the_shortest_form() {
        let head = |n| {
            let mut v = Vec::new();
            cbor_uint(&mut v, n);
            v
        };
        assert_eq!(head(23), [0x17]);
        assert_eq!(head(24), [0x18, 24]);
        assert_eq!(head(256), [0x19, 1, 0]);
        assert_eq!(head(65536), [0x1a, 0, 1, 0, 0]);
        assert_eq!(head(1 << 32), [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn a_hand_made_hello_decodes() {
        let h = Hello::decode_checked::<ServiceVm>(&hello_body(
            "svmc",
            <ServiceVm as svmc_comm::Protocol>::VERSION,
            1024,
        ))
        .unwrap();
        assert_eq!(h.max_body, 1024);
    }
}
