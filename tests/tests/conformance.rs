//! Conformance suite: checks a server against the numbered rules of
//! `comm/WIRE.md` (v2), one case per rule a server can be checked for
//! (WIRE.md §9 maps rules to cases).
//!
//! It speaks raw bytes written from the specification, never through
//! `rpc::Client`: the point is to check the peer. The peer is a parameter:
//!
//! - `SVMC_CONFORMANCE_UDS=<path>`: a running peer behind a hybrid vsock
//!   socket (`SVMC_CONFORMANCE_PORT`, default 7001), e.g. another
//!   implementation;
//! - otherwise the VM of `cargo xtask run-e2e` (firmware on x86_64 or
//!   aarch64, or the Linux guest's service), launched here: that adds the
//!   boot-connection case and the exit status of the power-off.
//!
//! `SVMC_CONFORMANCE_MAX_CONNS` (default 8) is the peer's connection
//! limit. Every body sent (the well-formed ones) and received is kept and,
//! after the last case, validated against `comm/svmc.cddl` with the `cddl`
//! CLI (`cddl_every_captured_body`); `SVMC_CONFORMANCE_CAPTURE=<dir>` also
//! writes them there.
//!
//! Cases are plain functions in [`CASES`], run in order by
//! `tests::harness::run_trials` (libtest's command line: a filter,
//! `--exact`, `--skip`, `--list`); `r_end_3_power_off` and the CDDL check
//! come last, and the power-off runs whatever the filter.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use comm::envelope::{self, RequestId};
use comm::frame::{
    self, DEFAULT_MAX_BODY, FrameKind, HEADER_LEN, ProtocolError, ProtocolErrorCode,
};
use comm::{Hello, Protocol};
use host::Session;
use svmc::{Request, Response, SERVICE_PORT, ServiceError, ServiceVm};
use tests::{Case, Ctx, cddl, ensure};
use vsock_transport::Timeouts;

type R = Result<(), String>;

/// How long an answer the peer owes may take (TCG is slow).
const ANSWER: Duration = Duration::from_secs(5);
/// How long "at once" may take: a second connection's `HELLO`, an answer
/// on one connection while another is stalled (R-CONN-4).
const PROMPT: Duration = Duration::from_millis(1500);
/// How long we watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

/// The server under test.
struct Peer {
    uds: PathBuf,
    port: u32,
    max_conns: usize,
    /// The launched VM's session; its client is the boot connection.
    session: Mutex<Option<Session>>,
    boot_open: AtomicBool,
    /// `(kind, body, what)` of every well-formed body sent and every body
    /// received.
    captured: Mutex<Vec<(FrameKind, Vec<u8>, String)>>,
}

impl Peer {
    /// Ends the boot connection (GOODBYE, then the close, R-END-1), once:
    /// the other cases use host-initiated connections only, and a slot the
    /// boot connection held would count against the limit.
    fn end_boot(&self) {
        if self.boot_open.swap(false, Ordering::SeqCst)
            && let Some(s) = self.session.lock().unwrap().as_mut()
            && let Some(c) = s.client()
        {
            use vsock_transport::Connection as _;
            let _ = c.connection().send(&frame::goodbye());
            let _ = c.connection().shutdown();
        }
    }

    /// A new connection to the service port, after the hybrid `CONNECT`.
    fn connect(&self) -> Result<Raw<'_>, String> {
        self.end_boot();
        self.connect_keeping_boot()
    }

    fn connect_keeping_boot(&self) -> Result<Raw<'_>, String> {
        let s = vsock_transport::hybrid::connect(&self.uds, self.port, &Timeouts::uniform(ANSWER))
            .map_err(|e| format!("connect: {e}"))?
            .into_inner();
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Raw { s, peer: self })
    }

    /// A connection with our `HELLO` (accepting `max_body`) sent and the
    /// server's read and checked; returns it and the server's `max_body`.
    fn hello_with(&self, max_body: u32) -> Result<(Raw<'_>, u32), String> {
        let mut c = self.connect()?;
        c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(max_body))?;
        let m = c.expect_hello()?;
        Ok((c, m))
    }

    fn hello(&self) -> Result<Raw<'_>, String> {
        Ok(self.hello_with(DEFAULT_MAX_BODY)?.0)
    }

    fn capture(&self, kind: FrameKind, body: &[u8], what: String) {
        self.captured
            .lock()
            .unwrap()
            .push((kind, body.to_vec(), what));
    }
}

/// A frame as read: the kind byte and the body.
struct Frame {
    kind: u8,
    body: Vec<u8>,
}

/// One raw connection.
struct Raw<'p> {
    s: UnixStream,
    peer: &'p Peer,
}

impl Raw<'_> {
    fn send(&mut self, bytes: &[u8]) -> R {
        self.s.write_all(bytes).map_err(|e| format!("send: {e}"))
    }

    /// A frame with this raw body (not captured: it may be bad on purpose).
    fn send_raw(&mut self, kind: u8, body: &[u8]) -> R {
        self.send(&raw_frame(kind, body))
    }

    /// A well-formed frame of `kind` holding `msg` (captured).
    fn send_msg<T: serde::Serialize>(&mut self, kind: FrameKind, msg: &T) -> R {
        let f = frame::encode(kind, msg, u32::MAX).map_err(|e| e.to_string())?;
        self.peer
            .capture(kind, &f[HEADER_LEN..], format!("sent {kind}"));
        self.send(&f)
    }

    /// A well-formed `REQUEST` `[id, request]` (captured).
    fn send_request(&mut self, id: u32, request: &Request) -> R {
        self.send(&request_frame(self.peer, id, request))
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

    /// The next frame, within `within`; its body is captured.
    fn frame_within(&mut self, within: Duration) -> Result<Frame, String> {
        let deadline = Instant::now() + within;
        let mut h = [0u8; HEADER_LEN];
        self.read_exact_by(&mut h, deadline, "reading a frame header")?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        ensure(len <= DEFAULT_MAX_BODY, || {
            format!("frame of kind {:#04x} announces {len} bytes", h[0])
        })?;
        let mut body = vec![0; len as usize];
        self.read_exact_by(&mut body, deadline + ANSWER, "reading a frame body")?;
        if let Ok(kind) = FrameKind::from_u8(h[0])
            && !body.is_empty()
        {
            self.peer.capture(kind, &body, format!("received {kind}"));
        }
        Ok(Frame { kind: h[0], body })
    }

    fn frame(&mut self) -> Result<Frame, String> {
        self.frame_within(ANSWER)
    }

    /// Reads the server's `HELLO`, checks it, returns its `max_body`.
    fn expect_hello_within(&mut self, within: Duration) -> Result<u32, String> {
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
        Ok(h.max_body)
    }

    fn expect_hello(&mut self) -> Result<u32, String> {
        self.expect_hello_within(ANSWER)
    }

    /// The next frame is an `ERROR` with `code`, `fatal` and (unless
    /// `None`) the id `id`; a fatal one is followed by the server closing.
    fn expect_error(&mut self, code: ProtocolErrorCode, fatal: bool, id: Option<Option<u32>>) -> R {
        let f = self.frame()?;
        ensure(f.kind == FrameKind::Error as u8, || {
            format!(
                "expected ERROR {code}, got frame kind {:#04x} ({} bytes)",
                f.kind,
                f.body.len()
            )
        })?;
        let pe: ProtocolError =
            frame::decode_body(&f.body).map_err(|e| format!("ERROR body: {e}"))?;
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

    /// The server closes (end of stream) within [`ANSWER`], sending nothing
    /// more.
    fn expect_close(&mut self) -> R {
        let deadline = Instant::now() + ANSWER;
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

    /// Nothing arrives for [`QUIET`].
    fn expect_nothing(&mut self) -> R {
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
    fn expect_response_within(&mut self, id: u32, within: Duration) -> Result<Response, String> {
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

    fn expect_response(&mut self, id: u32) -> Result<Response, String> {
        self.expect_response_within(id, ANSWER)
    }

    /// A reverse request and its answer: the connection is usable.
    fn expect_usable(&mut self, id: u32) -> R {
        self.send_request(id, &Request::Reverse(b"usable".to_vec()))?;
        expect_reversed(self.expect_response(id)?, b"usable")
    }

    fn goodbye(mut self) -> R {
        self.send(&frame::goodbye())?;
        self.expect_close()
    }
}

fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A well-formed `REQUEST` frame, its body captured.
fn request_frame(peer: &Peer, id: u32, request: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(RequestId(id), request, u32::MAX, &mut f).expect("encodes");
    peer.capture(FrameKind::Request, &f[HEADER_LEN..], "sent REQUEST".into());
    f
}

fn expect_reversed(r: Response, sent: &[u8]) -> R {
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

fn short(r: &Response) -> String {
    let s = format!("{r:?}");
    if s.len() > 200 {
        format!("{}...", &s[..200])
    } else {
        s
    }
}

/// A `HELLO` body with these fields, by hand.
fn hello_body(protocol: &str, version: u32, max_body: u32) -> Vec<u8> {
    let mut b = vec![0xa3];
    cbor_text(&mut b, "protocol");
    cbor_text(&mut b, protocol);
    cbor_text(&mut b, "version");
    cbor_uint(&mut b, version.into());
    cbor_text(&mut b, "max_body");
    cbor_uint(&mut b, max_body.into());
    b
}

fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
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

fn cbor_uint(out: &mut Vec<u8>, n: u64) {
    cbor_head(out, 0, n);
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

const REQ: u8 = FrameKind::Request as u8;
const CODE_BAD_FRAME: ProtocolErrorCode = ProtocolErrorCode::BadFrame;
const CODE_TOO_LARGE: ProtocolErrorCode = ProtocolErrorCode::TooLarge;
const CODE_BAD: ProtocolErrorCode = ProtocolErrorCode::BadMessage;
const CODE_VARIANT: ProtocolErrorCode = ProtocolErrorCode::UnknownVariant;
const CODE_UNEXPECTED: ProtocolErrorCode = ProtocolErrorCode::UnexpectedFrame;
const CODE_VERSION: ProtocolErrorCode = ProtocolErrorCode::VersionMismatch;

// ---------------------------------------------------------------------------
// §4 Concurrency

/// R-CONN-2, R-CONN-3: the boot connection is served (the guest is its
/// server) and counts as one connection: with it open, a host-initiated
/// connection gets its `HELLO` at once and is served, and the boot
/// connection still is afterwards.
fn r_conn_3_boot_connection_is_served_alongside(p: &Peer) -> R {
    ensure(p.boot_open.load(Ordering::SeqCst), || {
        "the boot connection is already closed (run this case first)".into()
    })?;
    let mut c = p.connect_keeping_boot()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(PROMPT)
        .map_err(|e| format!("with the boot connection open: {e}"))?;
    c.send_request(1, &Request::Reverse(b"beside boot".to_vec()))?;
    expect_reversed(c.expect_response_within(1, PROMPT)?, b"beside boot")?;
    let mut guard = p.session.lock().unwrap();
    let s = guard.as_mut().ok_or("no session")?;
    let info = s
        .info()
        .map_err(|e| format!("the boot connection after another was served: {e}"))?;
    ensure(info.protocol_version == ServiceVm::VERSION, || {
        format!("{info:?}")
    })?;
    drop(guard);
    c.goodbye()
}

/// How long a server at its limit may hold a new connection before it
/// answers `HELLO` or `busy` (R-CONN-5, R-CONN-7).
const HOLD: Duration = Duration::from_secs(1);

/// A connection that got its `HELLO` within [`HOLD`] and [`PROMPT`], with
/// no wait and no retry: the connections this case closed, however it
/// closed them, no longer count (R-CONN-7).
fn hello_now<'a>(p: &'a Peer, what: &str) -> Result<Raw<'a>, String> {
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(HOLD + PROMPT)
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(c)
}

/// How long a slot may stay taken by a connection an earlier case closed
/// when the server never learns of that close (WIRE.md R-CONN-7's note:
/// vhost-device-vsock 0.3.0 can lose track of a host socket and then
/// reports nothing): until the server displaces it as idle (R-CONN-6, the
/// firmware's 5 s idle timeout), plus a hold and an answer.
const STALE_SLOT: Duration = Duration::from_secs(5)
    .saturating_add(HOLD)
    .saturating_add(PROMPT);

/// A connection that got its `HELLO`, for a case that needs the table
/// free before it checks something else: a `busy` refusal is retried
/// every 300 ms for up to [`STALE_SLOT`] (a refused connection is closed
/// by the server, so retrying holds no slot), and each retry is counted
/// in `retried`. R-CONN-7 itself is checked strictly, on closes the case
/// makes ([`hello_now`]).
fn hello_when_free<'a>(p: &'a Peer, what: &str, retried: &mut u32) -> Result<Raw<'a>, String> {
    let start = Instant::now();
    loop {
        let mut c = p.connect()?;
        c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
        match c.expect_hello_within(HOLD + PROMPT) {
            Ok(_) => return Ok(c),
            Err(e) if e.contains("Busy") && start.elapsed() < STALE_SLOT => {
                *retried += 1;
                thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// Fills the table: `max_conns` connections with their `HELLO`
/// ([`hello_when_free`]); says on stderr if stale slots made it retry.
fn fill_table<'a>(p: &'a Peer, what: &str) -> Result<Vec<Raw<'a>>, String> {
    let mut retried = 0;
    let mut conns = Vec::new();
    for i in 0..p.max_conns {
        conns.push(hello_when_free(
            p,
            &format!("{what} {i} of {}", p.max_conns),
            &mut retried,
        )?);
    }
    if retried > 0 {
        eprintln!(
            "  note: filling the table took {retried} busy retries (a slot of an earlier case's \
             closed connection the server had not learned of)"
        );
    }
    Ok(conns)
}

/// R-CONN-3: `max_conns` connections at once, each served.
fn r_conn_3_eight_connections_at_once(p: &Peer) -> R {
    let mut conns = fill_table(p, "connection")?;
    // Answered in any order of connections.
    for (i, c) in conns.iter_mut().enumerate().rev() {
        let payload = format!("connection {i}").into_bytes();
        c.send_request(i as u32, &Request::Reverse(payload.clone()))?;
        let r = c
            .expect_response_within(i as u32, PROMPT)
            .map_err(|e| format!("connection {i}: {e}"))?;
        expect_reversed(r, &payload)?;
    }
    for c in conns {
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-4: a client stalled inside a frame, and one that sends nothing
/// at all, do not hold up another connection.
fn r_conn_4_stalled_client_does_not_block_another(p: &Peer) -> R {
    let mut stalled = p.hello()?;
    let f = request_frame(p, 1, &Request::Reverse(b"stalled".to_vec()));
    stalled.send(&f[..HEADER_LEN + 3])?;
    let _silent = p.connect()?;
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(PROMPT)
        .map_err(|e| format!("while another client is stalled: {e}"))?;
    for id in 0..3 {
        c.send_request(id, &Request::Reverse(b"not blocked".to_vec()))?;
        expect_reversed(c.expect_response_within(id, PROMPT)?, b"not blocked")?;
    }
    // The stalled client finishes its frame and is answered.
    stalled.send(&f[HEADER_LEN + 3..])?;
    expect_reversed(stalled.expect_response(1)?, b"stalled")?;
    c.goodbye()?;
    stalled.goodbye()
}

/// R-CONN-5: over the limit, `ERROR` busy (7, fatal) instead of `HELLO`,
/// then the close; a freed slot serves again at once.
fn r_conn_5_busy_over_the_limit(p: &Peer) -> R {
    let mut conns = fill_table(p, "connection")?;
    let mut over = p.connect()?;
    over.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    over.expect_error(ProtocolErrorCode::Busy, true, Some(None))
        .map_err(|e| format!("connection {} over the limit: {e}", p.max_conns + 1))?;
    conns.pop().ok_or("none")?.goodbye()?;
    // The freed slot serves a new connection at once (R-CONN-7).
    let mut c = hello_now(p, "after a slot was freed")?;
    c.expect_usable(5)?;
    c.goodbye()?;
    for c in conns {
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-7: `max_conns` connections closed without `GOODBYE` (dropped
/// between frames, dropped in the middle of a frame, their sending side
/// shut down) stop counting: `max_conns` new ones opened at once, right
/// after the closes, each get `HELLO` within [`HOLD`] and [`PROMPT`]
/// (not `busy`) and are served; the half-closed ones are closed by the
/// server (R-END-2).
fn r_conn_7_closed_connections_stop_counting(p: &Peer) -> R {
    let mut old = fill_table(p, "old connection")?;
    for c in &mut old {
        c.expect_usable(1)?;
    }
    let mut half_closed = Vec::new();
    for (i, mut c) in old.into_iter().enumerate() {
        match i % 3 {
            0 => drop(c),
            1 => {
                let f = request_frame(p, 2, &Request::Reverse(vec![7; 1000]));
                c.send(&f[..HEADER_LEN + 10])?;
                drop(c);
            }
            _ => {
                c.s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                half_closed.push(c);
            }
        }
    }
    let mut new = Vec::new();
    for _ in 0..p.max_conns {
        let mut c = p.connect()?;
        c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
        new.push(c);
    }
    for (i, c) in new.iter_mut().enumerate() {
        c.expect_hello_within(HOLD + PROMPT).map_err(|e| {
            format!(
                "new connection {i} of {}, right after the old ones closed: {e}",
                p.max_conns
            )
        })?;
    }
    for (i, c) in half_closed.iter_mut().enumerate() {
        c.expect_close()
            .map_err(|e| format!("half-closed connection {i}: {e}"))?;
    }
    for (i, mut c) in new.into_iter().enumerate() {
        c.expect_usable(10 + i as u32)?;
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-6: an idle connection is not closed while the server has room
/// (here for 6 s, longer than the firmware's idle timeout and than v1's
/// 2 s reset), even while another connection is served.
fn r_conn_6_idle_connection_is_kept(p: &Peer) -> R {
    let mut idle = p.hello()?;
    idle.expect_usable(1)?;
    let mut other = p.hello()?;
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(6) {
        other.send_request(id, &Request::Reverse(b"busy".to_vec()))?;
        expect_reversed(other.expect_response_within(id, PROMPT)?, b"busy")?;
        id += 1;
        thread::sleep(Duration::from_millis(500));
    }
    other.goodbye()?;
    idle.expect_usable(2)
        .map_err(|e| format!("after 6 s idle: {e}"))?;
    idle.goodbye()
}

// ---------------------------------------------------------------------------
// §2 Frames

fn r_frame_2_unknown_kind_is_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(0x09, &[0])?;
    c.expect_error(CODE_BAD_FRAME, true, None)
}

/// R-FRAME-3: the header alone is enough to refuse (the body is never sent).
fn r_frame_3_too_large_refused_from_the_header(p: &Peer) -> R {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let mut h = vec![REQ];
    h.extend_from_slice(&(max + 1).to_be_bytes());
    c.send(&h)?;
    c.expect_error(CODE_TOO_LARGE, true, None)
}

fn r_frame_5_goodbye_with_a_body_is_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(FrameKind::Goodbye as u8, &[0])?;
    c.expect_error(CODE_TOO_LARGE, true, None)
}

fn r_frame_6_empty_body_is_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))?;
    c.expect_usable(1)?;
    c.goodbye()
}

fn r_frame_7_trailing_bytes_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, b"\x82\x05\x64info\x00")?;
    c.expect_error(CODE_BAD, false, Some(Some(5)))?;
    c.expect_usable(6)?;
    c.goodbye()
}

/// R-FRAME-8: a stream ending inside a frame: the server closes (an
/// `ERROR` code 1 first is allowed).
fn r_frame_8_truncated_frame_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send(&[REQ, 0, 0, 0, 10, 0x82, 0x01, 0xa1])?;
    c.s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    match c.frame() {
        Ok(f) if f.kind == FrameKind::Error as u8 => {
            let pe: ProtocolError = frame::decode_body(&f.body).map_err(|e| e.to_string())?;
            ensure(pe.code == CODE_BAD_FRAME && pe.fatal, || format!("{pe:?}"))?;
            c.expect_close()
        }
        Ok(f) => Err(format!(
            "frame kind {:#04x} after a truncated frame",
            f.kind
        )),
        Err(e) if e.contains("closed") => Ok(()),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// §3.1 HELLO

/// R-HELLO-1: the server's `HELLO` comes without waiting for ours.
fn r_hello_1_hello_comes_first(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.expect_hello()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-HELLO-2: a `HELLO` body of exactly 256 bytes (padded with an unknown
/// key) is read.
fn r_hello_2_a_256_byte_hello_is_read(p: &Peer) -> R {
    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa4;
    cbor_text(&mut body, "pad");
    let pad = 256 - body.len() - 2;
    body.push(0x58);
    body.push(pad as u8);
    body.extend(std::iter::repeat_n(0x55, pad));
    assert_eq!(body.len(), 256);
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    p.capture(FrameKind::Hello, &body, "sent HELLO, 256 bytes".into());
    c.expect_hello()?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-HELLO-3, R-VER-2: a version-1 `HELLO`: the server's `HELLO`, then a
/// fatal `ERROR` code 6 naming both versions, then the close.
fn r_hello_3_v1_hello_is_a_version_mismatch(p: &Peer) -> R {
    let mut c = p.connect()?;
    let body = hello_body("svmc", 1, DEFAULT_MAX_BODY);
    p.capture(FrameKind::Hello, &body, "sent v1 HELLO".into());
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    let f = c.frame()?;
    ensure(f.kind == FrameKind::Error as u8, || {
        format!("kind {:#04x}", f.kind)
    })?;
    let pe: ProtocolError = frame::decode_body(&f.body).map_err(|e| e.to_string())?;
    ensure(pe.code == CODE_VERSION && pe.fatal, || format!("{pe:?}"))?;
    ensure(pe.detail.contains('1') && pe.detail.contains('2'), || {
        format!("the detail does not name both versions: {:?}", pe.detail)
    })?;
    c.expect_close()
}

fn r_hello_3_other_protocol_is_a_mismatch(p: &Peer) -> R {
    let mut c = p.connect()?;
    let body = hello_body("other", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    p.capture(FrameKind::Hello, &body, "sent other HELLO".into());
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_VERSION, true, None)
}

/// R-HELLO-4: another version (or name) whose other fields have the
/// wrong types is still a mismatch, never a bad message.
fn r_hello_4_other_version_fields_are_not_read(p: &Peer) -> R {
    // {"max_body": "lots", "protocol": "svmc", "version": 3}
    let v3 = b"\xa3\x68max_body\x64lots\x68protocol\x64svmc\x67version\x03";
    // {"protocol": "svmd", "version": "two"}
    let other = b"\xa2\x68protocol\x64svmd\x67version\x63two";
    for body in [&v3[..], &other[..]] {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, body)?;
        c.expect_hello()?;
        c.expect_error(CODE_VERSION, true, None)
            .map_err(|e| format!("HELLO {body:02x?}: {e}"))?;
    }
    Ok(())
}

/// R-HELLO-5: a `REQUEST` as the first frame is fatal (code 5).
fn r_hello_5_request_before_hello_is_fatal(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.send_request(1, &Request::Info)?;
    c.expect_hello()?;
    c.expect_error(CODE_UNEXPECTED, true, None)
}

/// R-HELLO-5: a `HELLO` that is not CBOR is fatal (code 3).
fn r_hello_5_bad_hello_is_fatal(p: &Peer) -> R {
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &[0xff, 0xff])?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
}

/// R-HELLO-5: a client's first frame may be an `ERROR` (its refusal): no
/// answer, the close; a `GOODBYE` first is an unexpected frame (code 5).
fn r_hello_5_error_or_goodbye_as_the_first_frame(p: &Peer) -> R {
    for fatal in [false, true] {
        let mut c = p.connect()?;
        c.send_msg(
            FrameKind::Error,
            &ProtocolError::new(CODE_BAD, fatal, "the client refuses"),
        )?;
        c.expect_hello()?;
        c.expect_close()
            .map_err(|e| format!("ERROR (fatal {fatal}) first: {e}"))?;
    }
    let mut c = p.connect()?;
    c.send(&frame::goodbye())?;
    c.expect_hello()?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("GOODBYE first: {e}"))
}

/// R-HELLO-7: the body is checked as CBOR before `protocol` is compared:
/// a `HELLO` that is not a map, or another protocol's `HELLO` with a
/// repeated key, is code 3, not 6.
fn r_hello_7_the_body_is_checked_before_the_protocol(p: &Peer) -> R {
    // ["svmc", 2, 1024]
    let not_a_map = b"\x83\x64svmc\x02\x19\x04\x00".to_vec();
    let mut other = hello_body("svmd", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    other[0] = 0xa5;
    for _ in 0..2 {
        cbor_text(&mut other, "x");
        cbor_uint(&mut other, 1);
    }
    for (what, body) in [("not a map", not_a_map), ("svmd, a repeated key", other)] {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, &body)?;
        c.expect_hello()?;
        c.expect_error(CODE_BAD, true, None)
            .map_err(|e| format!("HELLO {what}: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// §3.2 ids and order

/// R-ID-1, R-ID-3: every id, whatever its width, comes back.
fn r_id_3_every_id_is_echoed(p: &Peer) -> R {
    let mut c = p.hello()?;
    for id in [0, 1, 23, 24, 255, 256, 65535, 65536, u32::MAX - 1, u32::MAX] {
        let payload = id.to_be_bytes();
        c.send_request(id, &Request::Reverse(payload.to_vec()))?;
        expect_reversed(c.expect_response(id)?, &payload)?;
    }
    c.send_request(7, &Request::Info)?;
    match c.expect_response(7)? {
        Response::Info(i) => ensure(i.protocol_version == ServiceVm::VERSION, || {
            format!("{i:?}")
        })?,
        other => return Err(format!("Info answered with {}", short(&other))),
    }
    c.goodbye()
}

/// R-ID-4: answers in the order of the requests, not of the ids.
fn r_id_4_answers_in_order(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = request_frame(p, 30, &Request::Info);
    batch.extend(request_frame(p, 10, &Request::Reverse(b"ten".to_vec())));
    batch.extend(request_frame(p, 20, &Request::Reverse(b"twenty".to_vec())));
    c.send(&batch)?;
    ensure(matches!(c.expect_response(30)?, Response::Info(_)), || {
        "30".into()
    })?;
    expect_reversed(c.expect_response(10)?, b"ten")?;
    expect_reversed(c.expect_response(20)?, b"twenty")?;
    c.goodbye()
}

/// R-ID-5: 8 requests sent before reading anything are all answered.
fn r_id_5_eight_pipelined_requests(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = Vec::new();
    for id in 0..8u32 {
        batch.extend(request_frame(
            p,
            id,
            &Request::Reverse(pattern(16 + id as usize)),
        ));
    }
    c.send(&batch)?;
    for id in 0..8u32 {
        expect_reversed(c.expect_response(id)?, &pattern(16 + id as usize))?;
    }
    c.goodbye()
}

// ---------------------------------------------------------------------------
// §4.1 flow control

/// How long the write of a pipelined burst may take while nothing is read
/// (megabytes through the emulated device).
const BURST_WRITE: Duration = Duration::from_secs(30);

/// Sends `sizes.len()` reverse requests (ids from 1), then `GOODBYE` if
/// `goodbye`, all written before a byte is read: the write has to complete
/// (R-FLOW-1: the server keeps reading). Then every request gets its
/// answer, in order: the reversed bytes or `out_of_memory` (R-FLOW-2).
/// Returns how many were refused.
fn burst_without_reading(p: &Peer, sizes: &[usize], goodbye: bool) -> Result<usize, String> {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut v = pattern(n.min(max as usize - 64));
            v[0] = i as u8;
            v
        })
        .collect();
    let mut batch = Vec::new();
    for (i, b) in payloads.iter().enumerate() {
        batch.extend(request_frame(p, i as u32 + 1, &Request::Reverse(b.clone())));
    }
    if goodbye {
        batch.extend(frame::goodbye());
    }
    let total = batch.len();
    let mut w = c.s.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(w.write_all(&batch));
    });
    match rx.recv_timeout(BURST_WRITE) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("writing {total} bytes of requests: {e}")),
        Err(_) => {
            return Err(format!(
                "the server stopped reading: {total} bytes of pipelined requests not \
                 written within {BURST_WRITE:?}"
            ));
        }
    }
    let mut refused = 0;
    for (i, b) in payloads.iter().enumerate() {
        let id = i as u32 + 1;
        let r = c
            .expect_response_within(id, Duration::from_secs(30))
            .map_err(|e| format!("answer {id} of {}: {e}", sizes.len()))?;
        match r {
            Response::Err(ServiceError::OutOfMemory { requested }) => {
                ensure(requested > 0, || "out_of_memory of 0 bytes".into())?;
                refused += 1;
            }
            r => expect_reversed(r, b).map_err(|e| format!("answer {id}: {e}"))?,
        }
    }
    if goodbye {
        c.expect_close()?;
    } else {
        c.expect_usable(1000)?;
        c.goodbye()?;
    }
    Ok(refused)
}

/// R-ID-5, R-FLOW-1, R-FLOW-2: 8 pipelined requests of 128 KiB, then of
/// 1 MiB, written before anything is read: the writes complete and every
/// request gets its answer or `out_of_memory`; the 128 KiB ones (1 MiB in
/// all, R-FLOW-2's guarantee) are all answered.
fn r_flow_1_large_pipelined_requests_without_reading(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[128 << 10; 8], false)?;
    ensure(refused == 0, || {
        format!("{refused} of 8 requests of 128 KiB refused")
    })?;
    let refused = burst_without_reading(p, &[1 << 20; 8], false)?;
    println!(
        "    8 x 1 MiB: {} answered, {refused} out_of_memory",
        8 - refused
    );
    Ok(())
}

/// R-FLOW-2: 600 small requests written before anything is read: each
/// gets one answer, reversed or `out_of_memory`, and the connection goes on.
fn r_flow_2_many_small_requests_without_reading(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[2000; 600], false)?;
    println!(
        "    600 x 2000 B: {} answered, {refused} out_of_memory",
        600 - refused
    );
    ensure(refused < 600 - 16, || "fewer than 16 answered".into())
}

/// R-END-2, R-FLOW-1: 4 MiB of requests and `GOODBYE` in one write: all
/// answered (or refused), then the close.
fn r_end_2_answers_after_goodbye_with_megabytes_due(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[300_000, 300_000, 300_000, 300_000], true)?;
    ensure(refused == 0, || format!("{refused} of 4 x 300 KB refused"))?;
    burst_without_reading(p, &[1 << 20; 4], true).map(drop)
}

/// R-CONN-7, R-FLOW-4: connections closed by their client with megabytes
/// of answers due (8 requests of 128 KiB written from a thread, nothing
/// read) stop counting: the client then opens as many new connections as
/// the limit allows, and each gets `HELLO`.
fn r_conn_7_closed_with_answers_due_stop_counting(p: &Peer) -> R {
    for round in 0..2 {
        let mut gone = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..p.max_conns {
            let c = p.hello()?;
            let mut batch = Vec::new();
            for id in 1..=8 {
                batch.extend(request_frame(p, id, &Request::Reverse(pattern(128 << 10))));
            }
            let mut w = c.s.try_clone().map_err(|e| e.to_string())?;
            // The write may block (a server that stops reading); the
            // close below ends it.
            writers.push(thread::spawn(move || {
                let _ = w.write_all(&batch);
            }));
            gone.push(c);
        }
        // Some of the answers are under way; the client goes away.
        thread::sleep(Duration::from_millis(500));
        for c in &gone {
            let _ = c.s.shutdown(Shutdown::Both);
        }
        drop(gone);
        for w in writers {
            let _ = w.join();
        }
        let mut fresh = Vec::new();
        for _ in 0..p.max_conns {
            let mut c = p.connect()?;
            c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
            fresh.push(c);
        }
        for (i, c) in fresh.iter_mut().enumerate() {
            c.expect_hello_within(Duration::from_secs(1) + PROMPT)
                .map_err(|e| format!("round {round}: new connection {i} after the closes: {e}"))?;
        }
        for (i, mut c) in fresh.into_iter().enumerate() {
            c.expect_usable(i as u32)?;
            c.goodbye()?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// §3.3 what a server answers

/// R-REQ-2, R-ERR-2: bad requests get non-fatal `ERROR`s 3 and 4 with
/// their ids; the connection goes on.
fn r_req_2_bad_requests_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    let cases: &[(&[u8], ProtocolErrorCode, u32)] = &[
        (b"\x82\x01\xff", CODE_BAD, 1),            // not CBOR after the id
        (b"\x82\x02\xa1\x63rev\x01", CODE_BAD, 2), // payload of the wrong type
        (b"\x82\x03\x63sum", CODE_VARIANT, 3),     // unknown variant
        (b"\x82\x04\xa2\x63rev\x40\x61x\x01", CODE_BAD, 4), // two-entry enum map
        (b"\x82\x05\x82\x01\x02", CODE_BAD, 5),    // an array as request
    ];
    for (i, (body, code, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(*code, false, Some(Some(*id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(100 + i as u32)?;
    }
    c.goodbye()
}

/// R-REQ-3, R-ERR-3: the `ERROR` names the request when its id can be
/// read, and has no id when it cannot.
fn r_req_3_errors_name_the_request(p: &Peer) -> R {
    let mut c = p.hello()?;
    let cases: &[(&[u8], Option<u32>)] = &[
        (b"\x64info", None),                                         // a v1 body
        (b"\x82\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info", None), // id over u32
        (b"\x82\x61a\x64info", None),                                // text id
        (b"\x83\x07\x64info\x00", Some(7)),                          // three items
        (b"\x81\x08", Some(8)),                                      // no request
    ];
    for (i, (body, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(*id))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(200 + i as u32)?;
    }
    c.goodbye()
}

/// R-REQ-4: a `RESPONSE` or a second `HELLO` from the client: non-fatal
/// `ERROR` code 5.
fn r_req_4_unexpected_kinds_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut resp = Vec::new();
    envelope::encode_response_into(RequestId(1), &Response::PowerOff, u32::MAX, &mut resp)
        .map_err(|e| e.to_string())?;
    c.send(&resp)?;
    c.expect_error(CODE_UNEXPECTED, false, None)?;
    c.expect_usable(2)?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_error(CODE_UNEXPECTED, false, None)?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-REQ-5 (and R-HELLO-6, R-REQ-1, R-REQ-7): an answer over the client's
/// `max_body` is a `payload_too_large` RESPONSE with body sizes.
fn r_req_5_response_too_large_for_the_client(p: &Peer) -> R {
    let (mut c, _) = p.hello_with(64)?;
    let payload = pattern(100);
    c.send_request(9, &Request::Reverse(payload.clone()))?;
    let would_be = envelope::body_len(RequestId(9), &Response::Reverse(payload)).unwrap() as u64;
    let r = c.expect_response(9)?;
    ensure(
        r == Response::Err(ServiceError::PayloadTooLarge {
            len: would_be,
            max: 64,
        }),
        || format!("expected payload_too_large {{ len: {would_be}, max: 64 }}, got {r:?}"),
    )?;
    c.expect_usable(10)?;
    c.goodbye()
}

/// R-ERR-2, R-REQ-5, R-HELLO-6: with `max_body` 0 no answer fits, not
/// even `payload_too_large`: each request is refused with a non-fatal
/// `ERROR` code 2 carrying its id, and the connection goes on.
fn r_err_2_code_2_refusing_an_answer_is_not_fatal(p: &Peer) -> R {
    let (mut c, _) = p.hello_with(0)?;
    c.send_request(4, &Request::Info)?;
    c.expect_error(CODE_TOO_LARGE, false, Some(Some(4)))
        .map_err(|e| format!("info: {e}"))?;
    c.send_request(5, &Request::Reverse(b"abc".to_vec()))?;
    c.expect_error(CODE_TOO_LARGE, false, Some(Some(5)))
        .map_err(|e| format!("reverse: {e}"))?;
    c.goodbye()
}

/// R-REQ-6: a request near the server's `max_body` is answered (or
/// refused with `out_of_memory`), and the server keeps serving.
fn r_req_6_large_request_is_answered_or_out_of_memory(p: &Peer) -> R {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let len = (max - svmc::REVERSE_OVERHEAD).min(16 << 20) as usize;
    let payload = pattern(len);
    c.send_request(1, &Request::Reverse(payload.clone()))?;
    match c.expect_response_within(1, Duration::from_secs(60))? {
        Response::Err(ServiceError::OutOfMemory { requested }) => {
            ensure(requested > 0, || "out_of_memory of 0 bytes".into())?;
            println!("    {len} bytes: out_of_memory ({requested} bytes)");
        }
        r => expect_reversed(r, &payload)?,
    }
    c.expect_usable(2)?;
    c.goodbye()
}

// ---------------------------------------------------------------------------
// §3.4 ERROR frames

/// R-ERR-1, R-ERR-4, R-ERR-5: a client's non-fatal `ERROR` is not
/// answered and the connection goes on.
fn r_err_5_client_error_not_fatal_is_ignored(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_msg(
        FrameKind::Error,
        &ProtocolError::new(CODE_BAD, false, "the client complains").with_id(Some(RequestId(3))),
    )?;
    c.expect_nothing()?;
    c.expect_usable(1)?;
    c.goodbye()
}

fn r_err_5_client_fatal_error_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_msg(
        FrameKind::Error,
        &ProtocolError::new(CODE_BAD_FRAME, true, "the client gives up"),
    )?;
    c.expect_close()
}

/// R-ERR-5, R-CBOR-1: an `ERROR` body that is not an `error-body` (here a
/// repeated key, unknown or known, and not CBOR) is a bad message: a
/// non-fatal `ERROR` code 3 without an id, whatever its `fatal` says.
fn r_err_5_undecodable_client_error_is_a_bad_message(p: &Peer) -> R {
    let error_body = |fatal: bool, extra: &[(&str, u64)]| {
        let mut b = vec![0xa3 + extra.len() as u8];
        cbor_text(&mut b, "code");
        cbor_uint(&mut b, 3);
        cbor_text(&mut b, "fatal");
        b.push(if fatal { 0xf5 } else { 0xf4 });
        cbor_text(&mut b, "detail");
        cbor_text(&mut b, "x");
        for (k, v) in extra {
            cbor_text(&mut b, k);
            cbor_uint(&mut b, *v);
        }
        b
    };
    let mut c = p.hello()?;
    let bodies = [
        (
            "a repeated unknown key",
            error_body(false, &[("n", 1), ("n", 2)]),
        ),
        (
            "a repeated known key, fatal",
            error_body(true, &[("code", 1)]),
        ),
        ("not CBOR", vec![0xff]),
    ];
    for (i, (what, body)) in bodies.into_iter().enumerate() {
        c.send_raw(FrameKind::Error as u8, &body)?;
        c.expect_error(CODE_BAD, false, Some(None))
            .map_err(|e| format!("ERROR with {what}: {e}"))?;
        c.expect_usable(20 + i as u32)?;
    }
    c.goodbye()
}

/// R-ERR-3, R-ID-4: `ERROR`s about frames that are not requests carry no
/// id and take no request's place: pipelined with requests, every frame's
/// reply comes in order.
fn r_err_3_errors_about_other_frames_are_not_answers(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut resp = Vec::new();
    envelope::encode_response_into(RequestId(1), &Response::PowerOff, u32::MAX, &mut resp)
        .map_err(|e| e.to_string())?;
    let mut batch = request_frame(p, 1, &Request::Reverse(b"one".to_vec()));
    batch.extend(resp);
    batch.extend(request_frame(p, 2, &Request::Reverse(b"two".to_vec())));
    batch.extend(
        frame::encode(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY),
            u32::MAX,
        )
        .map_err(|e| e.to_string())?,
    );
    batch.extend(raw_frame(FrameKind::Error as u8, &[])); // empty ERROR
    batch.extend(request_frame(p, 3, &Request::Reverse(b"three".to_vec())));
    c.send(&batch)?;
    expect_reversed(c.expect_response(1)?, b"one")?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("about the RESPONSE: {e}"))?;
    expect_reversed(c.expect_response(2)?, b"two")?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("about the HELLO: {e}"))?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("about the empty ERROR: {e}"))?;
    expect_reversed(c.expect_response(3)?, b"three")?;
    c.goodbye()
}

/// R-ERR-8: which class wins when several apply: the header, then the
/// kind, then the body's first fault in reading order.
fn r_err_8_the_first_fault_decides(p: &Peer) -> R {
    let mut c = p.hello()?;
    // An empty HELLO after the handshake: the header first (code 3).
    c.send_raw(FrameKind::Hello as u8, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("empty HELLO: {e}"))?;
    // A HELLO that is not CBOR: the kind first (code 5).
    c.send_raw(FrameKind::Hello as u8, &[0xff])?;
    c.expect_error(CODE_UNEXPECTED, false, Some(None))
        .map_err(|e| format!("HELLO not CBOR: {e}"))?;
    // The unknown name before the content: not CBOR, nested too deep.
    let mut deep = b"\x82\x03\xa1\x63sum".to_vec();
    deep.extend(std::iter::repeat_n(0x81, 200));
    deep.push(0x80);
    let cases: [(&[u8], u32); 3] = [
        (b"\x82\x01\xa1\x63sum\xff", 1),
        (b"\x82\x02\x63sum\x00", 2), // and a trailing byte
        (&deep, 3),
    ];
    for (body, id) in cases {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_VARIANT, false, Some(Some(id)))
            .map_err(|e| format!("request {id}: {e}"))?;
    }
    c.expect_usable(4)?;
    c.goodbye()
}

// ---------------------------------------------------------------------------
// §3.5 the end

fn r_end_1_goodbye_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-END-2: requests followed at once by `GOODBYE` are all answered.
fn r_end_2_answers_after_goodbye(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = Vec::new();
    for id in 1..=3 {
        batch.extend(request_frame(
            p,
            id,
            &Request::Reverse(pattern(id as usize * 10)),
        ));
    }
    batch.extend(frame::goodbye());
    c.send(&batch)?;
    for id in 1..=3 {
        expect_reversed(c.expect_response(id)?, &pattern(id as usize * 10))?;
    }
    c.expect_close()
}

/// R-END-2: after a shutdown of our sending side without `GOODBYE` the
/// server closes; what it sends before (it MAY answer) are the answers
/// due, in order.
fn r_end_2_closes_after_shutdown(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = request_frame(p, 1, &Request::Reverse(b"one".to_vec()));
    batch.extend(request_frame(p, 2, &Request::Reverse(b"two".to_vec())));
    c.send(&batch)?;
    c.s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut answered = 0;
    for (id, sent) in [(1, &b"one"[..]), (2, &b"two"[..])] {
        match c.frame() {
            Ok(f) => {
                ensure(f.kind == FrameKind::Response as u8, || {
                    format!("frame kind {:#04x} after the shutdown", f.kind)
                })?;
                let (got, r) = envelope::decode::<Response>(&f.body);
                ensure(got == Some(RequestId(id)), || {
                    format!("id {got:?}, expected {id}")
                })?;
                expect_reversed(r.map_err(|e| e.to_string())?, sent)?;
                answered += 1;
            }
            Err(e) if e.contains("closed") => break,
            Err(e) => return Err(e),
        }
    }
    if answered == 2 {
        c.expect_close()?;
    }
    println!("    {answered} of 2 answers before the close");
    Ok(())
}

/// R-END-3: `PowerOff` is answered with its id, the server closes, and a
/// launched VM exits with status 0.
fn r_end_3_power_off(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_request(77, &Request::PowerOff)?;
    let r = c.expect_response(77)?;
    ensure(r == Response::PowerOff, || format!("{r:?}"))?;
    c.expect_close()?;
    let mut guard = p.session.lock().unwrap();
    if let Some(s) = guard.as_mut() {
        let vm = s.vm().ok_or("no VM")?;
        let status = vm
            .wait_exit(Duration::from_secs(20))
            .map_err(|e| format!("waiting for the power-off: {e}"))?;
        ensure(status.code() == Some(0), || {
            format!("QEMU exit status {status}")
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// §5 body encoding

/// R-CBOR-1: keys in any order, unknown keys ignored; a repeated key is
/// malformed (fatal before the handshake).
fn r_cbor_1_key_order_unknown_and_repeated_keys(p: &Peer) -> R {
    let mut body = vec![0xa4];
    cbor_text(&mut body, "x");
    body.extend_from_slice(b"\x82\x01\x02");
    cbor_text(&mut body, "max_body");
    cbor_uint(&mut body, DEFAULT_MAX_BODY.into());
    cbor_text(&mut body, "version");
    cbor_uint(&mut body, ServiceVm::VERSION.into());
    cbor_text(&mut body, "protocol");
    cbor_text(&mut body, "svmc");
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    p.capture(FrameKind::Hello, &body, "sent HELLO, other order".into());
    c.expect_hello()?;
    c.expect_usable(1)?;
    c.goodbye()?;

    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa4;
    cbor_text(&mut body, "protocol");
    cbor_text(&mut body, "svmc");
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("a repeated key: {e}"))
}

/// R-CBOR-1: a repeated *unknown* key in a `HELLO` is malformed too,
/// also when the two are written differently (definite and chunked):
/// fatal code 3 before the handshake.
fn r_cbor_1_repeated_unknown_key_in_hello_is_fatal(p: &Peer) -> R {
    let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
    body[0] = 0xa5;
    cbor_text(&mut body, "x");
    body.extend_from_slice(b"\x82\x01\x02");
    body.extend_from_slice(b"\x7f\x61x\xff\x00"); // (_ "x"): 0
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &body)?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("a repeated unknown key: {e}"))
}

/// R-CBOR-2: a unit variant as a map, or a variant with content as a
/// bare name, is malformed.
fn r_cbor_2_enum_shapes(p: &Peer) -> R {
    let mut c = p.hello()?;
    for (body, id) in [
        (&b"\x82\x01\xa1\x64info\xf6"[..], 1),
        (&b"\x82\x02\x63rev"[..], 2),
    ] {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(Some(id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
    }
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-CBOR-4: integers and lengths of any width.
fn r_cbor_4_integers_of_any_width(p: &Peer) -> R {
    let mut c = p.hello()?;
    // id 5 as a u32 and as a u64; the payload length as a u32.
    let bodies: [&[u8]; 2] = [
        b"\x82\x1a\x00\x00\x00\x05\xa1\x63rev\x5a\x00\x00\x00\x02ab",
        b"\x82\x1b\x00\x00\x00\x00\x00\x00\x00\x05\xa1\x63rev\x42ab",
    ];
    for body in bodies {
        c.send_raw(REQ, body)?;
        expect_reversed(c.expect_response(5)?, b"ab").map_err(|e| format!("{body:02x?}: {e}"))?;
    }
    c.goodbye()
}

/// R-CBOR-5: indefinite lengths everywhere, chunked names included.
fn r_cbor_5_indefinite_lengths(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [_ 6, {_ (_ "re", "v"): (_ h'61', h'62')}]
    c.send_raw(
        REQ,
        b"\x9f\x06\xbf\x7f\x62re\x61v\xff\x5f\x41a\x41b\xff\xff\xff",
    )?;
    expect_reversed(c.expect_response(6)?, b"ab")?;
    // [7, (_ "in", "fo")]
    c.send_raw(REQ, b"\x82\x07\x7f\x62in\x62fo\xff")?;
    ensure(matches!(c.expect_response(7)?, Response::Info(_)), || {
        "info".into()
    })?;
    c.goodbye()
}

/// R-CBOR-6: tags other than 2 and 3 are skipped; a bignum where bytes
/// are expected is malformed.
fn r_cbor_6_tags(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [7, {"rev": 100(h'6162')}], and a tag on the id and the request.
    c.send_raw(REQ, b"\x82\x07\xa1\x63rev\xd8\x64\x42ab")?;
    expect_reversed(c.expect_response(7)?, b"ab")?;
    c.send_raw(REQ, b"\x82\xd8\x64\x08\xd8\x65\x64info")?;
    ensure(matches!(c.expect_response(8)?, Response::Info(_)), || {
        "info".into()
    })?;
    // [9, {"rev": 2(h'0102')}]
    c.send_raw(REQ, b"\x82\x09\xa1\x63rev\xc2\x42\x01\x02")?;
    c.expect_error(CODE_BAD, false, Some(Some(9)))?;
    c.expect_usable(10)?;
    c.goodbye()
}

/// R-CBOR-4, R-CBOR-5, R-CBOR-6: a bignum id is the integer it holds; a
/// tag on a chunk of a string is not well-formed.
fn r_cbor_6_bignum_ids_and_tagged_chunks(p: &Peer) -> R {
    let mut c = p.hello()?;
    // [2(h'05'), "info"]
    c.send_raw(REQ, b"\x82\xc2\x41\x05\x64info")?;
    ensure(matches!(c.expect_response(5)?, Response::Info(_)), || {
        "info".into()
    })?;
    // [6, {"rev": (_ 32(h'61'))}]
    c.send_raw(REQ, b"\x82\x06\xa1\x63rev\x5f\xd8\x20\x41a\xff")?;
    c.expect_error(CODE_BAD, false, Some(Some(6)))?;
    c.expect_usable(7)?;
    c.goodbye()
}

/// R-CBOR-7: 128 levels are read, 129 refused (in an unknown `HELLO` key:
/// the map is level 1).
fn r_cbor_7_nesting_limit(p: &Peer) -> R {
    let hello_nested = |levels: usize| {
        let mut body = hello_body("svmc", ServiceVm::VERSION, DEFAULT_MAX_BODY);
        body[0] = 0xa4;
        cbor_text(&mut body, "x");
        // The map is level 1; `levels - 1` arrays inside, the last empty.
        body.extend(std::iter::repeat_n(0x81, levels - 2));
        body.push(0x80);
        body
    };
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &hello_nested(128))?;
    c.expect_hello()?;
    c.expect_usable(1).map_err(|e| format!("128 levels: {e}"))?;
    c.goodbye()?;
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &hello_nested(129))?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD, true, None)
        .map_err(|e| format!("129 levels: {e}"))
}

fn r_cbor_8_invalid_utf8(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, b"\x82\x09\x64in\xff\xfe")?;
    c.expect_error(CODE_BAD, false, Some(Some(9)))?;
    c.expect_usable(10)?;
    c.goodbye()
}

// ---------------------------------------------------------------------------
// §6 the captured bodies against the CDDL

fn cddl_every_captured_body(p: &Peer) -> R {
    let tool = cddl::tool()?;
    let captured = p.captured.lock().unwrap().clone();
    if let Ok(dir) = std::env::var("SVMC_CONFORMANCE_CAPTURE") {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (i, (kind, body, _)) in captured.iter().enumerate() {
            let rule = cddl::rule_for(*kind).unwrap_or("none");
            std::fs::write(format!("{dir}/{i:04}-{rule}.cbor"), body).map_err(|e| e.to_string())?;
        }
    }
    let mut failed = Vec::new();
    let mut counts = Vec::new();
    for kind in [
        FrameKind::Hello,
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::Error,
    ] {
        let rule = cddl::rule_for(kind).unwrap();
        // Deduplicated: the same body needs one run of the tool.
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, body, what) in &captured {
            if *k == kind && !bodies.iter().any(|(_, b)| b == body) {
                // Large payloads: the schema does not care about their size.
                bodies.push((what.clone(), body.clone()));
            }
        }
        ensure(!bodies.is_empty(), || format!("no {kind} body captured"))?;
        counts.push(format!("{} {kind}", bodies.len()));
        failed.extend(cddl::validate(&tool, rule, &bodies)?);
    }
    println!("    validated {}", counts.join(", "));
    ensure(failed.is_empty(), || {
        format!("bodies that break the schema: {failed:?}")
    })
}

/// Every case, in the order they run (the power-off and the CDDL check
/// last). `r_conn_3_boot_connection_is_served_alongside` is first so that
/// the boot connection is still open; it runs only against a launched VM.
const CASES: &[Case<Peer>] = &[
    (
        "r_conn_3_boot_connection_is_served_alongside",
        r_conn_3_boot_connection_is_served_alongside,
    ),
    ("r_hello_1_hello_comes_first", r_hello_1_hello_comes_first),
    (
        "r_hello_2_a_256_byte_hello_is_read",
        r_hello_2_a_256_byte_hello_is_read,
    ),
    (
        "r_hello_3_v1_hello_is_a_version_mismatch",
        r_hello_3_v1_hello_is_a_version_mismatch,
    ),
    (
        "r_hello_3_other_protocol_is_a_mismatch",
        r_hello_3_other_protocol_is_a_mismatch,
    ),
    (
        "r_hello_4_other_version_fields_are_not_read",
        r_hello_4_other_version_fields_are_not_read,
    ),
    (
        "r_hello_5_request_before_hello_is_fatal",
        r_hello_5_request_before_hello_is_fatal,
    ),
    ("r_hello_5_bad_hello_is_fatal", r_hello_5_bad_hello_is_fatal),
    (
        "r_hello_5_error_or_goodbye_as_the_first_frame",
        r_hello_5_error_or_goodbye_as_the_first_frame,
    ),
    (
        "r_hello_7_the_body_is_checked_before_the_protocol",
        r_hello_7_the_body_is_checked_before_the_protocol,
    ),
    (
        "r_frame_2_unknown_kind_is_fatal",
        r_frame_2_unknown_kind_is_fatal,
    ),
    (
        "r_frame_3_too_large_refused_from_the_header",
        r_frame_3_too_large_refused_from_the_header,
    ),
    (
        "r_frame_5_goodbye_with_a_body_is_fatal",
        r_frame_5_goodbye_with_a_body_is_fatal,
    ),
    (
        "r_frame_6_empty_body_is_not_fatal",
        r_frame_6_empty_body_is_not_fatal,
    ),
    (
        "r_frame_7_trailing_bytes_are_not_fatal",
        r_frame_7_trailing_bytes_are_not_fatal,
    ),
    (
        "r_frame_8_truncated_frame_closes",
        r_frame_8_truncated_frame_closes,
    ),
    ("r_id_3_every_id_is_echoed", r_id_3_every_id_is_echoed),
    ("r_id_4_answers_in_order", r_id_4_answers_in_order),
    (
        "r_id_5_eight_pipelined_requests",
        r_id_5_eight_pipelined_requests,
    ),
    (
        "r_flow_1_large_pipelined_requests_without_reading",
        r_flow_1_large_pipelined_requests_without_reading,
    ),
    (
        "r_flow_2_many_small_requests_without_reading",
        r_flow_2_many_small_requests_without_reading,
    ),
    (
        "r_end_2_answers_after_goodbye_with_megabytes_due",
        r_end_2_answers_after_goodbye_with_megabytes_due,
    ),
    (
        "r_req_2_bad_requests_are_not_fatal",
        r_req_2_bad_requests_are_not_fatal,
    ),
    (
        "r_req_3_errors_name_the_request",
        r_req_3_errors_name_the_request,
    ),
    (
        "r_req_4_unexpected_kinds_are_not_fatal",
        r_req_4_unexpected_kinds_are_not_fatal,
    ),
    (
        "r_req_5_response_too_large_for_the_client",
        r_req_5_response_too_large_for_the_client,
    ),
    (
        "r_err_2_code_2_refusing_an_answer_is_not_fatal",
        r_err_2_code_2_refusing_an_answer_is_not_fatal,
    ),
    (
        "r_req_6_large_request_is_answered_or_out_of_memory",
        r_req_6_large_request_is_answered_or_out_of_memory,
    ),
    (
        "r_err_5_client_error_not_fatal_is_ignored",
        r_err_5_client_error_not_fatal_is_ignored,
    ),
    (
        "r_err_5_client_fatal_error_closes",
        r_err_5_client_fatal_error_closes,
    ),
    (
        "r_err_5_undecodable_client_error_is_a_bad_message",
        r_err_5_undecodable_client_error_is_a_bad_message,
    ),
    (
        "r_err_3_errors_about_other_frames_are_not_answers",
        r_err_3_errors_about_other_frames_are_not_answers,
    ),
    (
        "r_err_8_the_first_fault_decides",
        r_err_8_the_first_fault_decides,
    ),
    ("r_end_1_goodbye_closes", r_end_1_goodbye_closes),
    (
        "r_end_2_answers_after_goodbye",
        r_end_2_answers_after_goodbye,
    ),
    (
        "r_end_2_closes_after_shutdown",
        r_end_2_closes_after_shutdown,
    ),
    (
        "r_cbor_1_key_order_unknown_and_repeated_keys",
        r_cbor_1_key_order_unknown_and_repeated_keys,
    ),
    (
        "r_cbor_1_repeated_unknown_key_in_hello_is_fatal",
        r_cbor_1_repeated_unknown_key_in_hello_is_fatal,
    ),
    ("r_cbor_2_enum_shapes", r_cbor_2_enum_shapes),
    (
        "r_cbor_4_integers_of_any_width",
        r_cbor_4_integers_of_any_width,
    ),
    ("r_cbor_5_indefinite_lengths", r_cbor_5_indefinite_lengths),
    ("r_cbor_6_tags", r_cbor_6_tags),
    (
        "r_cbor_6_bignum_ids_and_tagged_chunks",
        r_cbor_6_bignum_ids_and_tagged_chunks,
    ),
    ("r_cbor_7_nesting_limit", r_cbor_7_nesting_limit),
    ("r_cbor_8_invalid_utf8", r_cbor_8_invalid_utf8),
    (
        "r_conn_3_eight_connections_at_once",
        r_conn_3_eight_connections_at_once,
    ),
    (
        "r_conn_4_stalled_client_does_not_block_another",
        r_conn_4_stalled_client_does_not_block_another,
    ),
    ("r_conn_5_busy_over_the_limit", r_conn_5_busy_over_the_limit),
    (
        "r_conn_6_idle_connection_is_kept",
        r_conn_6_idle_connection_is_kept,
    ),
    (
        "r_conn_7_closed_connections_stop_counting",
        r_conn_7_closed_connections_stop_counting,
    ),
    (
        "r_conn_7_closed_with_answers_due_stop_counting",
        r_conn_7_closed_with_answers_due_stop_counting,
    ),
    ("r_end_3_power_off", r_end_3_power_off),
    ("cddl_every_captured_body", cddl_every_captured_body),
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not valid")),
        Err(_) => default,
    }
}

fn main() {
    let args = tests::harness::arguments();
    if args.list {
        tests::harness::list(&args, CASES);
    }
    let logs = tempfile::Builder::new()
        .prefix("svmc-conformance-logs-")
        .tempdir()
        .expect("log dir");
    let port = env_or("SVMC_CONFORMANCE_PORT", SERVICE_PORT);
    let max_conns = env_or("SVMC_CONFORMANCE_MAX_CONNS", 8usize);
    let (peer, label) = match std::env::var_os("SVMC_CONFORMANCE_UDS") {
        Some(uds) => {
            let uds = PathBuf::from(uds);
            println!(
                "conformance against the peer at {} port {port}",
                uds.display()
            );
            let peer = Peer {
                uds,
                port,
                max_conns,
                session: Mutex::new(None),
                boot_open: AtomicBool::new(false),
                captured: Mutex::new(Vec::new()),
            };
            (peer, "conformance".to_string())
        }
        None => {
            let ctx = match Ctx::from_env(logs.path().to_path_buf()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("conformance: {e} (or set SVMC_CONFORMANCE_UDS)");
                    std::process::exit(2);
                }
            };
            let label = format!("conformance-{}-{}", ctx.arch, ctx.guest.name());
            println!("{label} with {}", ctx.image.display());
            let mut session = match ctx.session() {
                Ok(s) => s,
                Err(e) => {
                    println!("{label}: could not start the VM: {e}");
                    println!("{label}: 0 passed, {} failed", CASES.len());
                    std::process::exit(1);
                }
            };
            let uds = session.vm().expect("launched").uds_path().to_path_buf();
            let peer = Peer {
                uds,
                port,
                max_conns,
                session: Mutex::new(Some(session)),
                boot_open: AtomicBool::new(true),
                captured: Mutex::new(Vec::new()),
            };
            (peer, label)
        }
    };
    let launched = peer.session.lock().unwrap().is_some();
    let cases: Vec<Case<Peer>> = CASES
        .iter()
        .copied()
        .filter(|(name, _)| launched || !name.contains("boot_connection"))
        .collect();
    // With a filter, still power off at the end.
    let peer = std::sync::Arc::new(peer);
    let (passed, failed) =
        tests::harness::run_trials(&args, Ok(peer.clone()), &cases, Some("r_end_3_power_off"));
    println!("{label}: {passed} passed, {failed} failed");
    let ok = failed == 0;
    drop(peer);
    // `exit` runs no destructors: remove the logs, or keep them (the
    // guest's serial log says why a case failed) and say where.
    if ok {
        drop(logs);
    } else {
        println!("{label}: logs kept in {}", logs.keep().display());
    }
    std::process::exit(if ok { 0 } else { 1 });
}
