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
//! - with `SVMC_E2E_ARCH` set, the VM of `cargo xtask run-e2e` (firmware
//!   on x86_64 or aarch64, or the Linux guest's service), launched here:
//!   that adds the boot-connection case and the exit status of the
//!   power-off;
//! - otherwise (plain `cargo test`) the guest's service in this process
//!   ([`tests::inproc`], on `rpc::serve`), in seconds; the cases that need
//!   a VM or the guests' event loop (the connection limit, flow control
//!   against a client that never reads) are printed as not applicable,
//!   each with its reason ([`NOT_IN_PROCESS`]).
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

use std::io::Write;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceError, ServiceVm};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, Cancel, Extensions, RequestMeta};
use svmc_comm::frame::{
    self, DEFAULT_MAX_BODY, FrameKind, HEADER_LEN, ProtocolError, ProtocolErrorCode,
};
use svmc_comm::{Hello, Protocol};
use svmc_host::Session;
use tests::inproc::InProcess;
use tests::raw::{
    Capture, Frame, R, Raw, cbor_head, cbor_text, cbor_uint, expect_reversed, hello_body, pattern,
    raw_frame, short,
};
use tests::suites::vars;
use tests::{Case, Ctx, cddl, ensure};

/// How long an answer the peer owes may take (TCG is slow).
const ANSWER: Duration = Duration::from_secs(5);
/// How long "at once" may take: a second connection's `HELLO`, an answer
/// on one connection while another is stalled (R-CONN-4).
const PROMPT: Duration = Duration::from_millis(1500);

/// The server under test.
struct Peer {
    uds: PathBuf,
    port: u32,
    max_conns: usize,
    /// The launched VM's session; its client is the boot connection.
    session: Mutex<Option<Session>>,
    boot_open: AtomicBool,
    /// Every well-formed body sent and every body received.
    captured: Capture,
    /// The server in this process, if that is the peer.
    in_process: Option<InProcess>,
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
        Raw::connect(&self.uds, self.port, ANSWER, Some(&self.captured))
    }

    /// A connection with our `HELLO` (accepting `max_body`) sent and the
    /// server's read and checked; returns it and the server's `max_body`.
    fn hello_with(&self, max_body: u32) -> Result<(Raw<'_>, u32), String> {
        let mut c = self.connect()?;
        let m = c.handshake(max_body)?;
        Ok((c, m))
    }

    fn hello(&self) -> Result<Raw<'_>, String> {
        Ok(self.hello_with(DEFAULT_MAX_BODY)?.0)
    }

    /// [`Peer::hello`] offering the extensions `ext` (§10); checks that
    /// the server's `HELLO` lists all three.
    fn hello_offering(&self, max_body: u32, ext: Extensions) -> Result<Raw<'_>, String> {
        let mut c = self.connect()?;
        c.send_msg(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(max_body).with_ext(ext),
        )?;
        let h = c.expect_hello_body(ANSWER)?;
        ensure(h.extensions() == Extensions::ALL, || {
            format!("the server's HELLO lists {:?}", h.ext)
        })?;
        Ok(c)
    }

    /// A connection with every extension on (R-EXT-2).
    fn hello_ext(&self) -> Result<Raw<'_>, String> {
        self.hello_offering(DEFAULT_MAX_BODY, Extensions::ALL)
    }

    fn capture(&self, kind: FrameKind, body: &[u8], what: String) {
        self.captured.add(kind, body, what);
    }
}

/// A well-formed `REQUEST` frame, its body captured.
fn request_frame(peer: &Peer, id: u32, request: &Request) -> Vec<u8> {
    peer.captured.request_frame(id, request)
}

const REQ: u8 = FrameKind::Request as u8;
const CODE_BAD_FRAME: ProtocolErrorCode = ProtocolErrorCode::BadFrame;
const CODE_TOO_LARGE: ProtocolErrorCode = ProtocolErrorCode::TooLarge;
const CODE_BAD: ProtocolErrorCode = ProtocolErrorCode::BadMessage;
const CODE_VARIANT: ProtocolErrorCode = ProtocolErrorCode::UnknownVariant;
const CODE_UNEXPECTED: ProtocolErrorCode = ProtocolErrorCode::UnexpectedFrame;
const CODE_VERSION: ProtocolErrorCode = ProtocolErrorCode::VersionMismatch;
const CODE_DEADLINE: ProtocolErrorCode = ProtocolErrorCode::DeadlineExceeded;
const CODE_CANCELLED: ProtocolErrorCode = ProtocolErrorCode::Cancelled;
const CANCEL: u8 = FrameKind::Cancel as u8;
const CHUNK: u8 = FrameKind::Chunk as u8;

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
                c.shutdown(Shutdown::Write)?;
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

/// R-FRAME-3: the header alone is enough to refuse (the body is never
/// sent): a `REQUEST` over the server's `max_body`, and before the
/// handshake a `HELLO` over its 256 bytes.
fn r_frame_3_too_large_refused_from_the_header(p: &Peer) -> R {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let mut h = vec![REQ];
    h.extend_from_slice(&(max + 1).to_be_bytes());
    c.send(&h)?;
    c.expect_error(CODE_TOO_LARGE, true, None)?;
    let mut c = p.connect()?;
    let mut h = vec![FrameKind::Hello as u8];
    h.extend_from_slice(&(frame::HELLO_MAX_BODY + 1).to_be_bytes());
    c.send(&h)?;
    c.expect_hello()?;
    c.expect_error(CODE_TOO_LARGE, true, None)
        .map_err(|e| format!("a HELLO of {} bytes: {e}", frame::HELLO_MAX_BODY + 1))
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
    c.shutdown(Shutdown::Write)?;
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
    let mut w = c.stream().try_clone().map_err(|e| e.to_string())?;
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
            let mut w = c.stream().try_clone().map_err(|e| e.to_string())?;
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
            let _ = c.shutdown(Shutdown::Both);
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
    c.shutdown(Shutdown::Write)?;
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
// §10 Extensions

/// svmc's answers as the cases of §10 read them: `spin` and `sha256` are
/// written here from the specification (§6), so that these cases check a
/// peer whether or not the `svmc` crate of this build has them.
#[derive(Debug, PartialEq, serde::Deserialize)]
enum Answer {
    #[serde(rename = "rev")]
    Rev(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "info")]
    Info(serde::de::IgnoredAny),
    #[serde(rename = "spin")]
    Spin(u32),
    #[serde(rename = "sha256")]
    Sha256(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "prng")]
    Prng(u64),
    #[serde(rename = "err")]
    Err(ServiceError),
}

/// A response meta as read (R-META-4); `stats` as a map, as every key of
/// it is optional (R-META-5).
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
struct AnswerMeta {
    queued_us: Option<u64>,
    handled_us: Option<u64>,
    stats: Option<std::collections::BTreeMap<String, u64>>,
}

/// One answer: a `RESPONSE` (with its meta, if it has one) or an `ERROR`.
#[derive(Debug)]
enum Got {
    Response {
        id: u32,
        meta: Option<AnswerMeta>,
        answer: Answer,
    },
    Error(ProtocolError),
}

/// What the cases of §10 read from a [`Raw`] connection: svmc's answers
/// with their meta, and answer streams.
trait Answers {
    /// The next frame, a `RESPONSE` or an `ERROR`, within `within`.
    fn answer_within(&mut self, within: Duration) -> Result<Got, String>;

    /// [`Answers::answer_within`] the answer time.
    fn answer(&mut self) -> Result<Got, String> {
        self.answer_within(ANSWER)
    }

    /// An answer stream of request `id` (R-STREAM-8): the data of its
    /// `CHUNK`s, and the answer that ends it.
    fn answer_stream(&mut self, id: u32) -> Result<(Vec<u8>, Got), String>;

    /// The next frame is the `RESPONSE` `[id, want]` or `[id, meta, want]`;
    /// returns its meta.
    fn expect_answer(&mut self, id: u32, want: &Answer) -> Result<Option<AnswerMeta>, String> {
        match self.answer()? {
            Got::Response {
                id: got,
                meta,
                answer,
            } if got == id && answer == *want => Ok(meta),
            other => Err(format!(
                "expected [{id}, {}], got {}",
                cut(format!("{want:?}")),
                cut(format!("{other:?}"))
            )),
        }
    }
}

impl Answers for Raw<'_> {
    fn answer_within(&mut self, within: Duration) -> Result<Got, String> {
        let f = self.frame_within(within)?;
        answer_of(f)
    }

    fn answer_stream(&mut self, id: u32) -> Result<(Vec<u8>, Got), String> {
        let mut data = Vec::new();
        loop {
            let f = self.frame()?;
            if f.kind != CHUNK {
                return Ok((data, answer_of(f)?));
            }
            match ext::decode_chunk(&f.body) {
                Ok((got, Some(d))) if got == RequestId(id) => data.extend_from_slice(&d),
                other => {
                    return Err(format!(
                        "in the answer stream of {id}, a CHUNK {}",
                        cut(format!("{other:?}"))
                    ));
                }
            }
        }
    }
}

/// A frame read as an answer: a `RESPONSE` or an `ERROR`.
fn answer_of(f: Frame) -> Result<Got, String> {
    if f.kind == FrameKind::Error as u8 {
        let pe = frame::decode_body(&f.body).map_err(|e| format!("ERROR body: {e}"))?;
        return Ok(Got::Error(pe));
    }
    ensure(f.kind == FrameKind::Response as u8, || {
        format!("frame kind {:#04x} instead of an answer", f.kind)
    })?;
    let mut body = f.body;
    let (start, meta) = ext::split_meta::<AnswerMeta>(&mut body)
        .map_err(|(_, e)| format!("the RESPONSE's meta: {e}"))?;
    let (id, answer) = envelope::decode::<Answer>(&body[start..]);
    let id = id.ok_or("a RESPONSE without an id")?.0;
    let answer = answer.map_err(|e| format!("RESPONSE {id}: {e}"))?;
    Ok(Got::Response { id, meta, answer })
}

/// The next frame is the answer `[id, {"spin": n}]` to a `spin` of `ms`
/// that ran to its end: `n` is what it measured, `ms` or a little more
/// (a server preempted at the end of its spin reports the time it took).
fn expect_spun(c: &mut Raw<'_>, id: u32, ms: u32) -> R {
    match c.answer()? {
        Got::Response {
            id: got,
            answer: Answer::Spin(n),
            ..
        } if got == id && (ms..ms + 100).contains(&n) => Ok(()),
        other => Err(format!(
            "expected [{id}, {{\"spin\": {ms}}}], got {}",
            cut(format!("{other:?}"))
        )),
    }
}

/// `s`, cut to 200 bytes (a payload in a message).
fn cut(s: String) -> String {
    match s.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// The CBOR of svmc's request `{"spin": ms}`.
fn spin(ms: u32) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "spin");
    cbor_uint(&mut b, ms.into());
    b
}

/// The CBOR of svmc's request `"sha256"`.
fn sha256() -> Vec<u8> {
    let mut b = Vec::new();
    cbor_text(&mut b, "sha256");
    b
}

fn info() -> Vec<u8> {
    let mut b = Vec::new();
    cbor_text(&mut b, "info");
    b
}

/// The CBOR of `{"rev": data}`.
fn rev(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "rev");
    cbor_head(&mut b, 2, data.len() as u64);
    b.extend_from_slice(data);
    b
}

fn reversed(data: &[u8]) -> Answer {
    Answer::Rev(data.iter().rev().copied().collect())
}

/// The body `[id, meta, request]` (`[id, request]` without a meta).
fn meta_body(id: u32, meta: Option<&RequestMeta>, request: &[u8]) -> Vec<u8> {
    let mut body = vec![if meta.is_some() { 0x83 } else { 0x82 }];
    cbor_uint(&mut body, id.into());
    if let Some(m) = meta {
        frame::encode_item(m, &mut body).expect("encodes");
    }
    body.extend_from_slice(request);
    body
}

/// A well-formed `REQUEST` `[id, meta, request]` (captured).
fn meta_request(p: &Peer, id: u32, meta: Option<&RequestMeta>, request: &[u8]) -> Vec<u8> {
    let body = meta_body(id, meta, request);
    p.capture(FrameKind::Request, &body, "sent REQUEST with meta".into());
    raw_frame(REQ, &body)
}

/// A `CANCEL` of request `id` (captured).
fn cancel_frame(p: &Peer, id: u32) -> Vec<u8> {
    let f =
        frame::encode(FrameKind::Cancel, &Cancel { id: RequestId(id) }, u32::MAX).expect("encodes");
    p.capture(FrameKind::Cancel, &f[HEADER_LEN..], "sent CANCEL".into());
    f
}

/// A `CHUNK` of request `id`: `data`, or the end of its stream (captured).
fn chunk_frame(p: &Peer, id: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut f = Vec::new();
    ext::encode_chunk_into(RequestId(id), data, &mut f).expect("encodes");
    p.capture(FrameKind::Chunk, &f[HEADER_LEN..], "sent CHUNK".into());
    f
}

fn stream_meta() -> RequestMeta {
    RequestMeta {
        stream: true,
        ..RequestMeta::default()
    }
}

/// A request stream `[id, {"stream": true}, request]`, its chunks and its
/// end, as one write.
fn stream_frames(p: &Peer, id: u32, request: &[u8], pieces: &[&[u8]]) -> Vec<u8> {
    let mut w = meta_request(p, id, Some(&stream_meta()), request);
    for d in pieces {
        w.extend(chunk_frame(p, id, Some(d)));
    }
    w.extend(chunk_frame(p, id, None));
    w
}

fn hex_digest(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// R-EXT-1, R-EXT-2: the server lists `meta`, `cancel` and `stream`
/// whatever the client lists; a client listing them, and a name nobody
/// knows, gets them on.
fn r_ext_2_the_server_offers_the_extensions(p: &Peer) -> R {
    for ours in [Extensions::NONE, Extensions::ALL] {
        p.hello_offering(DEFAULT_MAX_BODY, ours)
            .map_err(|e| format!("offering {ours:?}: {e}"))?
            .goodbye()?;
    }
    let mut hello = Hello::new::<ServiceVm>(DEFAULT_MAX_BODY).with_ext(Extensions::ALL);
    hello.ext.insert(0, "x-not-yet-invented".into());
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &hello)?;
    c.expect_hello()?;
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(b"ext")))?;
    let meta = c.expect_answer(1, &reversed(b"ext"))?;
    ensure(meta.is_some(), || "no response meta: meta is not on".into())?;
    c.goodbye()
}

/// R-EXT-1 (R-HELLO-7 step 6): an `ext` that is not an array of text
/// strings is a malformed `HELLO`, fatal code 3; in a `HELLO` of another
/// version it is not read (code 6, R-HELLO-4).
fn r_ext_1_a_bad_ext_is_a_bad_hello(p: &Peer) -> R {
    let with_ext = |version: u32, ext: &[u8]| {
        let mut b = hello_body("svmc", version, DEFAULT_MAX_BODY);
        b[0] = 0xa4;
        cbor_text(&mut b, "ext");
        b.extend_from_slice(ext);
        b
    };
    let bad: &[(&str, &[u8])] = &[
        ("a number", b"\x05"),
        ("a text string", b"\x64meta"),
        ("an array with a number", b"\x82\x64meta\x01"),
    ];
    for (what, ext) in bad {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, &with_ext(ServiceVm::VERSION, ext))?;
        c.expect_hello()?;
        c.expect_error(CODE_BAD, true, None)
            .map_err(|e| format!("ext {what}: {e}"))?;
    }
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &with_ext(1, b"\x05"))?;
    c.expect_hello()?;
    c.expect_error(CODE_VERSION, true, None)
}

/// R-EXT-3, R-CANCEL-4, R-STREAM-6: to a client that offers no
/// extension (or not `meta`, which `stream` needs) the server is plain
/// version 2: a meta body is a malformed three-item array, `CANCEL` and
/// `CHUNK` are unknown kinds; before the handshake too.
fn r_ext_3_a_client_without_extensions_gets_plain_v2(p: &Peer) -> R {
    let all = RequestMeta {
        deadline_ms: Some(0),
        timing: true,
        ..RequestMeta::default()
    };
    let mut c = p.hello()?;
    c.send_raw(REQ, &meta_body(3, Some(&all), &info()))?;
    c.expect_error(CODE_BAD, false, Some(Some(3)))?;
    c.send(&meta_request(p, 4, None, &rev(b"plain")))?;
    let meta = c.expect_answer(4, &reversed(b"plain"))?;
    ensure(meta.is_none(), || format!("a response meta: {meta:?}"))?;
    c.send(&cancel_frame(p, 4))?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CANCEL without the extension: {e}"))?;

    let no_meta = Extensions {
        meta: false,
        ..Extensions::ALL
    };
    let mut c = p.hello_offering(DEFAULT_MAX_BODY, no_meta)?;
    c.send_raw(REQ, &meta_body(5, Some(&all), &info()))?;
    c.expect_error(CODE_BAD, false, Some(Some(5)))
        .map_err(|e| format!("a meta body without meta: {e}"))?;
    c.send(&chunk_frame(p, 6, Some(b"x")))?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CHUNK with stream but not meta: {e}"))?;

    let mut c = p.connect()?;
    c.send(&cancel_frame(p, 1))?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CANCEL before the handshake: {e}"))
}

/// R-EXT-3, R-FRAME-2, R-ERR-8: without its extension, kind 0x06 or 0x07
/// is an unknown kind (fatal code 1) whatever its header's length, as it
/// is for a plain version 2 server: not `Empty` for length 0, not too
/// large for a length over the extension's limit.
fn r_ext_3_unknown_kinds_whatever_their_length(p: &Peer) -> R {
    for header in [
        [CANCEL, 0, 0, 0, 0],
        [CANCEL, 0, 0, 1, 0],
        [CHUNK, 0, 0, 0, 0],
        [CHUNK, 0, 2, 0, 0],
    ] {
        let mut c = p.hello()?;
        c.send(&header)?;
        c.expect_error(CODE_BAD_FRAME, true, None)
            .map_err(|e| format!("header {header:02x?} without the extension: {e}"))?;
    }
    Ok(())
}

/// R-META-1, R-META-2: a meta with an unknown key (and `"stream": false`)
/// is read and the request answered, without a response meta (none was
/// asked); an empty meta asks nothing; `[id, request]` works as ever.
fn r_meta_1_meta_is_read_and_unknown_keys_ignored(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut meta = vec![0xa3];
    cbor_text(&mut meta, "deadline_ms");
    cbor_uint(&mut meta, 60_000);
    cbor_text(&mut meta, "x-not-yet-invented");
    meta.extend_from_slice(b"\x82\x01\xa1\x61a\x02");
    cbor_text(&mut meta, "stream");
    meta.push(0xf4);
    let mut body = vec![0x83, 0x01];
    body.extend(meta);
    body.extend(rev(b"meta"));
    c.send_raw(REQ, &body)?;
    let m = c.expect_answer(1, &reversed(b"meta"))?;
    ensure(m.is_none(), || {
        format!("a response meta nobody asked for: {m:?}")
    })?;
    let mut body = vec![0x83, 0x02, 0xa0];
    body.extend(info());
    c.send_raw(REQ, &body)?;
    let m = c.expect_answer(2, &Answer::Info(serde::de::IgnoredAny))?;
    ensure(m.is_none(), || {
        format!("a response meta nobody asked for: {m:?}")
    })?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-META-2: a meta that is not a well-formed `request-meta` is a
/// non-fatal code 3 with the request's id; it is read before the request
/// (code 3, not 4, for `[5, 5, "sum"]`).
fn r_meta_2_a_bad_meta_is_code_3_with_the_id(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let cases: &[(&[u8], u32)] = &[
        (b"\x83\x01\x05\x64info", 1),                     // not a map
        (b"\x83\x02\xa1\x6bdeadline_ms\x61x\x64info", 2), // a text deadline
        (
            b"\x83\x03\xa1\x6bdeadline_ms\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info",
            3,
        ), // a deadline over u32
        (b"\x83\x04\xa1\x66timing\x01\x64info", 4),       // a number for a bool
        (b"\x83\x05\x05\x63sum", 5),                      // the meta comes first
        (b"\x83\x06\xa2\x66timing\xf5\x66timing\xf5\x64info", 6), // a repeated key
    ];
    for (i, (body, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(Some(*id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(100 + i as u32)?;
    }
    c.goodbye()
}

/// R-META-3, R-ERR-2: `deadline_ms` 0 has always passed: code 8 with the
/// id, not fatal, at once (a `spin` of 3 s is not carried out), whatever
/// the request holds; `expired` counts them (R-META-5).
fn r_meta_3_deadline_0_is_code_8_and_not_carried_out(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let zero = RequestMeta {
        deadline_ms: Some(0),
        ..RequestMeta::default()
    };
    let t = Instant::now();
    c.send(&meta_request(p, 1, Some(&zero), &spin(3000)))?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 8 after {:?}: was it carried out?", t.elapsed())
    })?;
    let mut unknown = Vec::new();
    cbor_text(&mut unknown, "sum");
    c.send_raw(REQ, &meta_body(2, Some(&zero), &unknown))?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(2)))
        .map_err(|e| format!("an unknown variant past its deadline: {e}"))?;
    let stats = RequestMeta {
        stats: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 3, Some(&stats), &info()))?;
    let m = c.expect_answer(3, &Answer::Info(serde::de::IgnoredAny))?;
    let s = m
        .and_then(|m| m.stats)
        .ok_or("no stats in the answer's meta")?;
    ensure(s.get("expired").is_none_or(|n| *n == 2), || {
        format!("stats after two expired requests: {s:?}")
    })?;
    c.goodbye()
}

/// R-META-3: the deadline counts from when the server read the request,
/// not from when it got round to it: a request written behind a `spin`
/// of 800 ms with a deadline of 200 ms is answered code 8; one with a
/// deadline it meets is carried out.
fn r_meta_3_a_deadline_passed_behind_a_long_request(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let within = |ms| RequestMeta {
        deadline_ms: Some(ms),
        ..RequestMeta::default()
    };
    let mut w = meta_request(p, 1, None, &spin(800));
    w.extend(meta_request(p, 2, Some(&within(200)), &rev(b"late")));
    w.extend(meta_request(p, 3, Some(&within(60_000)), &rev(b"in time")));
    c.send(&w)?;
    expect_spun(&mut c, 1, 800)?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(2)))?;
    c.expect_answer(3, &reversed(b"in time"))?;
    c.goodbye()
}

/// R-META-4, R-META-5: `timing`, `stats` and a `traceparent` get a
/// response meta (with the statistics only for `stats`); a deadline
/// alone, or no meta, gets none.
fn r_meta_4_timing_and_stats_only_when_asked(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let timed = |m: &Option<AnswerMeta>| {
        m.as_ref()
            .is_some_and(|m| m.queued_us.is_some() && m.handled_us.is_some())
    };
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(b"timing")))?;
    let m = c.expect_answer(1, &reversed(b"timing"))?;
    ensure(timed(&m) && m.as_ref().unwrap().stats.is_none(), || {
        format!("timing: {m:?}")
    })?;

    let stats = RequestMeta {
        stats: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 2, Some(&stats), &info()))?;
    let m = c.expect_answer(2, &Answer::Info(serde::de::IgnoredAny))?;
    let s = m.as_ref().and_then(|m| m.stats.as_ref());
    ensure(
        timed(&m) && s.is_some_and(|s| s.get("requests").is_none_or(|n| *n == 2)),
        || format!("stats, the connection's second request: {m:?}"),
    )?;

    let traced = RequestMeta {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 3, Some(&traced), &rev(b"traced")))?;
    let m = c.expect_answer(3, &reversed(b"traced"))?;
    ensure(timed(&m), || format!("traceparent: {m:?}"))?;

    let deadline = RequestMeta {
        deadline_ms: Some(60_000),
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 4, Some(&deadline), &rev(b"deadline")))?;
    let m = c.expect_answer(4, &reversed(b"deadline"))?;
    ensure(m.is_none(), || format!("a deadline alone: {m:?}"))?;
    c.send(&meta_request(p, 5, None, &rev(b"none")))?;
    let m = c.expect_answer(5, &reversed(b"none"))?;
    ensure(m.is_none(), || format!("no meta: {m:?}"))?;
    c.goodbye()
}

/// R-META-4: an answer that fits the client's `max_body` without its
/// meta is sent without it, never refused as too large.
fn r_meta_4_meta_never_makes_an_answer_too_large(p: &Peer) -> R {
    let payload = pattern(100);
    let plain = envelope::body_len(RequestId(1), &Response::Reverse(payload.clone()))
        .map_err(|e| e.to_string())? as u32;
    let mut c = p.hello_offering(plain, Extensions::ALL)?;
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(&payload)))?;
    c.expect_answer(1, &reversed(&payload))
        .map_err(|e| format!("max_body {plain}, the answer's body without meta: {e}"))?;
    c.goodbye()
}

/// R-CANCEL-1, R-CANCEL-3, R-CANCEL-5: a `CANCEL` of an answered request
/// or of an id never sent gets no answer and the connection goes on (a
/// later request with that id is carried out); a bad `CANCEL` body is a
/// non-fatal code 3 without an id, an empty one too (R-FRAME-6); one over
/// 64 bytes is fatal code 2.
fn r_cancel_3_cancels_of_answered_ids_are_ignored(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.expect_usable(1)?;
    let mut w = cancel_frame(p, 1);
    w.extend(cancel_frame(p, 77));
    c.send(&w)?;
    c.expect_nothing()?;
    c.expect_usable(77)?;
    c.send_raw(CANCEL, b"\xa1\x62id\x61x")?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("a CANCEL with a text id: {e}"))?;
    c.send_raw(CANCEL, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("an empty CANCEL: {e}"))?;
    c.expect_usable(2)?;
    c.send(&[CANCEL, 0, 0, 0, 65])?;
    c.expect_error(CODE_TOO_LARGE, true, None)
}

/// R-CANCEL-2, R-ERR-2: a `CANCEL` of a running `spin` of 5 s gets code
/// 9 with its id at once, not fatal; the connection goes on.
fn r_cancel_2_cancel_stops_a_running_spin(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(p, 1, None, &spin(5000)))?;
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    c.send(&cancel_frame(p, 1))?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 9 came {:?} after the CANCEL", t.elapsed())
    })?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// R-CANCEL-2: a `CANCEL` written right behind its request (one write)
/// is read before the request starts or while it runs: code 9 at once,
/// not the `spin`'s answer 3 s later.
fn r_cancel_2_cancel_right_behind_its_request(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, None, &spin(3000));
    w.extend(cancel_frame(p, 1));
    let t = Instant::now();
    c.send(&w)?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 9 came after {:?}", t.elapsed())
    })?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// R-CANCEL-2, R-ID-3: a request pipelined behind a `spin` and cancelled
/// before it started gets exactly one answer: code 9 (or its response,
/// had the server started it first); nothing more comes.
fn r_cancel_2_a_pipelined_request_cancelled_before_it_starts(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, None, &spin(500));
    w.extend(meta_request(p, 2, None, &rev(b"queued")));
    w.extend(cancel_frame(p, 2));
    c.send(&w)?;
    expect_spun(&mut c, 1, 500)?;
    match c.answer()? {
        Got::Error(pe) if pe.code == CODE_CANCELLED && !pe.fatal && pe.id == Some(RequestId(2)) => {
        }
        Got::Response { id: 2, answer, .. } if answer == reversed(b"queued") => {
            println!("    (the server started request 2 before it read the CANCEL)");
        }
        other => return Err(format!("the answer to the cancelled request 2: {other:?}")),
    }
    c.expect_nothing()?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-STREAM-1: `sha256` of streams: a known vector in three chunks (one
/// empty), the empty stream, 1 000 000 bytes in 16 chunks of up to
/// 64 KiB; `sha256` without a stream is the digest of no data.
fn r_stream_1_sha256_of_a_stream(p: &Peer) -> R {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut c = p.hello_ext()?;
    let vector: [&[u8]; 3] = [
        b"abcdbcdecdefdefg",
        b"",
        b"efghfghighijhijkijkljklmklmnlmnomnopnopq",
    ];
    c.send(&stream_frames(p, 1, &sha256(), &vector))?;
    let want = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
    c.expect_answer(1, &Answer::Sha256(hex_digest(want)))?;
    c.send(&stream_frames(p, 2, &sha256(), &[]))?;
    c.expect_answer(2, &Answer::Sha256(hex_digest(EMPTY)))
        .map_err(|e| format!("the empty stream: {e}"))?;
    let million = vec![b'a'; 1_000_000];
    let pieces: Vec<&[u8]> = million.chunks(ext::CHUNK_MAX_DATA).collect();
    c.send(&stream_frames(p, 3, &sha256(), &pieces))?;
    let want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    c.expect_answer(3, &Answer::Sha256(hex_digest(want)))
        .map_err(|e| format!("a million 'a': {e}"))?;
    c.send(&meta_request(p, 4, None, &sha256()))?;
    c.expect_answer(4, &Answer::Sha256(hex_digest(EMPTY)))
        .map_err(|e| format!("sha256 without a stream: {e}"))?;
    c.expect_usable(5)?;
    c.goodbye()
}

/// R-STREAM-2: a `CHUNK` when no stream is open, or of another id than
/// the open stream's, is a fatal code 5.
fn r_stream_2_a_chunk_outside_a_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.expect_usable(1)?;
    c.send(&chunk_frame(p, 5, Some(b"x")))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("no stream open: {e}"))?;
    // A stream refused at once (rev takes none) is open until its end.
    let mut c = p.hello_ext()?;
    c.send(&meta_request(p, 1, Some(&stream_meta()), &rev(b"x")))?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.send(&chunk_frame(p, 2, Some(b"x")))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("a chunk of request 2 in the stream of 1: {e}"))
}

/// R-STREAM-2: a `REQUEST` while a stream is open is a fatal code 5.
fn r_stream_2_a_request_inside_a_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &rev(b"x"));
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    c.send(&w)?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.send(&meta_request(p, 2, None, &info()))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
}

/// R-STREAM-4, R-STREAM-7: requests that take no stream (`rev`, `info`)
/// sent as one: code 3 with the id, the chunks dropped, the connection
/// goes on; a `CHUNK` body that is not a `chunk-body` is a non-fatal code
/// 3 without an id, and the stream stays open.
fn r_stream_4_a_request_that_takes_no_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &rev(b"abc"));
    w.extend(chunk_frame(p, 1, Some(b"xyz")));
    w.extend(raw_frame(CHUNK, b"\x01"));
    w.extend(chunk_frame(p, 1, Some(b"more")));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("a CHUNK body that is not an array: {e}"))?;
    c.expect_usable(2)?;
    c.send(&stream_frames(p, 3, &info(), &[b"data"]))?;
    c.expect_error(CODE_BAD, false, Some(Some(3)))?;
    c.expect_usable(4)?;
    c.goodbye()
}

/// R-STREAM-3: a streamed request refused at its start (its deadline of
/// 0 passed, code 8; an unknown variant, code 4) is answered once and
/// its chunks are dropped: the connection goes on.
fn r_stream_3_refused_at_its_start_the_chunks_are_dropped(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let late = RequestMeta {
        deadline_ms: Some(0),
        stream: true,
        ..RequestMeta::default()
    };
    let mut w = meta_request(p, 1, Some(&late), &sha256());
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(1)))?;
    c.expect_usable(2)
        .map_err(|e| format!("after the chunks of a stream past its deadline: {e}"))?;
    let mut unknown = Vec::new();
    cbor_text(&mut unknown, "sum");
    let mut w = raw_frame(REQ, &meta_body(3, Some(&stream_meta()), &unknown));
    w.extend(chunk_frame(p, 3, Some(b"abc")));
    w.extend(chunk_frame(p, 3, None));
    c.send(&w)?;
    c.expect_error(CODE_VARIANT, false, Some(Some(3)))?;
    c.expect_usable(4)
        .map_err(|e| format!("after the chunks of an unknown variant: {e}"))?;
    c.goodbye()
}

/// R-STREAM-5: a `CANCEL` of the open stream is answered code 9 at once,
/// before its end; the rest of its chunks are dropped.
fn r_stream_5_cancel_of_an_open_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &sha256());
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    w.extend(cancel_frame(p, 1));
    c.send(&w)?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    let mut w = chunk_frame(p, 1, Some(b"dropped"));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_nothing()?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// The CBOR of svmc's request `{"prng": {"seed": seed, "len": len}}`.
fn prng(seed: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "prng");
    b.push(0xa2);
    cbor_text(&mut b, "seed");
    cbor_uint(&mut b, seed);
    cbor_text(&mut b, "len");
    cbor_uint(&mut b, len);
    b
}

/// The first `len` bytes of the xorshift64 sequence from `seed`, as §6
/// defines `prng`'s data.
fn xorshift(seed: u64, len: usize) -> Vec<u8> {
    let mut x = if seed == 0 { 1 } else { seed };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn answer_stream_meta() -> RequestMeta {
    RequestMeta {
        stream_answer: true,
        ..RequestMeta::default()
    }
}

/// R-STREAM-8: `prng` with `stream_answer` is answered by `CHUNK`s of its
/// id holding the sequence, then `{"prng": n}`; without an answer stream
/// it is `unsupported`; the connection goes on.
fn r_stream_8_prng_answer_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let len = 200_003;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(7, len),
    ))?;
    let (data, end) = c.answer_stream(1)?;
    ensure(data == xorshift(7, len as usize), || {
        format!("{} bytes of data, not the sequence of seed 7", data.len())
    })?;
    match end {
        Got::Response {
            id: 1,
            answer: Answer::Prng(n),
            ..
        } if n == len => {}
        other => return Err(format!("the end of the answer stream: {other:?}")),
    }
    c.send(&meta_request(p, 2, None, &prng(7, 10)))?;
    c.expect_answer(2, &Answer::Err(ServiceError::Unsupported))
        .map_err(|e| format!("prng without an answer stream: {e}"))?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-STREAM-9: a `REQUEST` while an answer stream is sent is a fatal
/// code 5 (after whatever chunks came first).
fn r_stream_9_a_request_inside_an_answer_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(1, 1 << 30),
    ))?;
    let f = c.frame()?;
    ensure(f.kind == CHUNK, || {
        format!("frame kind {:#04x} instead of a CHUNK", f.kind)
    })?;
    c.send(&meta_request(p, 2, None, &info()))?;
    loop {
        let f = c.frame()?;
        if f.kind == CHUNK {
            continue;
        }
        return match answer_of(f)? {
            Got::Error(pe) if pe.code == CODE_UNEXPECTED && pe.fatal => c.expect_close(),
            other => Err(format!("a REQUEST inside an answer stream: {other:?}")),
        };
    }
}

/// R-STREAM-10: a `CANCEL` of an answer stream stops it: a few more
/// chunks at most, then code 9 with the id; the connection goes on.
fn r_stream_10_cancel_of_an_answer_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(1, 1 << 30),
    ))?;
    let f = c.frame()?;
    ensure(f.kind == CHUNK, || {
        format!("frame kind {:#04x} instead of a CHUNK", f.kind)
    })?;
    c.send(&cancel_frame(p, 1))?;
    let (data, end) = c.answer_stream(1)?;
    match end {
        Got::Error(pe) if pe.code == CODE_CANCELLED && !pe.fatal && pe.id == Some(RequestId(1)) => {
        }
        other => {
            return Err(format!(
                "after the CANCEL, {} bytes and {other:?}",
                data.len()
            ));
        }
    }
    c.expect_usable(2)?;
    c.goodbye()
}

// ---------------------------------------------------------------------------
// §6 the captured bodies against the CDDL

fn cddl_every_captured_body(p: &Peer) -> R {
    let tool = cddl::tool()?;
    let captured = p.captured.bodies();
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
        FrameKind::Cancel,
        FrameKind::Chunk,
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
    (
        "r_ext_2_the_server_offers_the_extensions",
        r_ext_2_the_server_offers_the_extensions,
    ),
    (
        "r_ext_1_a_bad_ext_is_a_bad_hello",
        r_ext_1_a_bad_ext_is_a_bad_hello,
    ),
    (
        "r_ext_3_a_client_without_extensions_gets_plain_v2",
        r_ext_3_a_client_without_extensions_gets_plain_v2,
    ),
    (
        "r_ext_3_unknown_kinds_whatever_their_length",
        r_ext_3_unknown_kinds_whatever_their_length,
    ),
    (
        "r_meta_1_meta_is_read_and_unknown_keys_ignored",
        r_meta_1_meta_is_read_and_unknown_keys_ignored,
    ),
    (
        "r_meta_2_a_bad_meta_is_code_3_with_the_id",
        r_meta_2_a_bad_meta_is_code_3_with_the_id,
    ),
    (
        "r_meta_3_deadline_0_is_code_8_and_not_carried_out",
        r_meta_3_deadline_0_is_code_8_and_not_carried_out,
    ),
    (
        "r_meta_3_a_deadline_passed_behind_a_long_request",
        r_meta_3_a_deadline_passed_behind_a_long_request,
    ),
    (
        "r_meta_4_timing_and_stats_only_when_asked",
        r_meta_4_timing_and_stats_only_when_asked,
    ),
    (
        "r_meta_4_meta_never_makes_an_answer_too_large",
        r_meta_4_meta_never_makes_an_answer_too_large,
    ),
    (
        "r_cancel_3_cancels_of_answered_ids_are_ignored",
        r_cancel_3_cancels_of_answered_ids_are_ignored,
    ),
    (
        "r_cancel_2_cancel_stops_a_running_spin",
        r_cancel_2_cancel_stops_a_running_spin,
    ),
    (
        "r_cancel_2_cancel_right_behind_its_request",
        r_cancel_2_cancel_right_behind_its_request,
    ),
    (
        "r_cancel_2_a_pipelined_request_cancelled_before_it_starts",
        r_cancel_2_a_pipelined_request_cancelled_before_it_starts,
    ),
    (
        "r_stream_1_sha256_of_a_stream",
        r_stream_1_sha256_of_a_stream,
    ),
    (
        "r_stream_2_a_chunk_outside_a_stream_is_fatal",
        r_stream_2_a_chunk_outside_a_stream_is_fatal,
    ),
    (
        "r_stream_2_a_request_inside_a_stream_is_fatal",
        r_stream_2_a_request_inside_a_stream_is_fatal,
    ),
    (
        "r_stream_4_a_request_that_takes_no_stream",
        r_stream_4_a_request_that_takes_no_stream,
    ),
    (
        "r_stream_3_refused_at_its_start_the_chunks_are_dropped",
        r_stream_3_refused_at_its_start_the_chunks_are_dropped,
    ),
    (
        "r_stream_5_cancel_of_an_open_stream",
        r_stream_5_cancel_of_an_open_stream,
    ),
    (
        "r_stream_8_prng_answer_stream",
        r_stream_8_prng_answer_stream,
    ),
    (
        "r_stream_9_a_request_inside_an_answer_stream_is_fatal",
        r_stream_9_a_request_inside_an_answer_stream_is_fatal,
    ),
    (
        "r_stream_10_cancel_of_an_answer_stream",
        r_stream_10_cancel_of_an_answer_stream,
    ),
    ("r_end_3_power_off", r_end_3_power_off),
    ("cddl_every_captured_body", cddl_every_captured_body),
];

/// The case that needs the boot connection of a launched VM.
const BOOT_CASE: &str = "r_conn_3_boot_connection_is_served_alongside";

/// The cases that do not apply to the in-process server
/// ([`tests::inproc`]: the guest's service on `rpc::serve`, one blocking
/// connection per thread), and why. They run against the VMs.
const NOT_IN_PROCESS: &[(&str, &str)] = &[
    (
        "r_conn_5_busy_over_the_limit",
        "the connection limit is the guests' event loop's (rpc::many); the in-process server \
         has a thread per connection and no limit",
    ),
    (
        "r_conn_6_idle_connection_is_kept",
        "idle connections give way at the limit in the guests' event loop (rpc::many); no \
         limit here",
    ),
    (
        "r_conn_7_closed_connections_stop_counting",
        "no connection limit here to count against",
    ),
    (
        "r_conn_7_closed_with_answers_due_stop_counting",
        "no connection limit here to count against",
    ),
    (
        "r_flow_1_large_pipelined_requests_without_reading",
        "R-FLOW-1 is met by the guests' event loop (rpc::many); rpc::serve writes an answer \
         with a blocking send, so a client that writes megabytes and never reads stops it",
    ),
    (
        "r_flow_2_many_small_requests_without_reading",
        "as r_flow_1: rpc::serve's blocking send, against a client that never reads",
    ),
    (
        "r_end_2_answers_after_goodbye_with_megabytes_due",
        "as r_flow_1: rpc::serve's blocking send, against a client that never reads",
    ),
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
    let in_process = std::env::var_os("SVMC_CONFORMANCE_UDS").is_none()
        && std::env::var_os(vars::ARCH).is_none();
    let (peer, label) = match std::env::var_os("SVMC_CONFORMANCE_UDS") {
        None if in_process => {
            let server = InProcess::start().expect("starting the in-process server");
            println!(
                "conformance against the in-process server at {} ({} not set: no VM)",
                server.uds().display(),
                vars::ARCH
            );
            let peer = Peer {
                uds: server.uds().to_path_buf(),
                port,
                max_conns,
                session: Mutex::new(None),
                boot_open: AtomicBool::new(false),
                captured: Capture::default(),
                in_process: Some(server),
            };
            (peer, "conformance-inproc".to_string())
        }
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
                captured: Capture::default(),
                in_process: None,
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
                captured: Capture::default(),
                in_process: None,
            };
            (peer, label)
        }
    };
    let launched = peer.session.lock().unwrap().is_some();
    let not_here = |name: &str| -> Option<&'static str> {
        if peer.in_process.is_some()
            && let Some((_, why)) = NOT_IN_PROCESS.iter().find(|(n, _)| *n == name)
        {
            return Some(why);
        }
        (!launched && name == BOOT_CASE)
            .then_some("there is no boot connection: no VM launched here")
    };
    let mut cases: Vec<Case<Peer>> = Vec::new();
    for &(name, f) in CASES {
        match not_here(name) {
            Some(why) if !args.is_filtered_out(&libtest_mimic::Trial::test(name, || Ok(()))) => {
                println!("test {name} ... not applicable: {why}");
            }
            Some(_) => {}
            None => cases.push((name, f)),
        }
    }
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
