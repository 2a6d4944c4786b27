//! Hostile-host suite: a host sends every class of bad input to the real
//! guest over hybrid vsock, host-initiated to the service port, each on its
//! own connection. After each, a well-formed request on a new connection
//! must be served, QEMU must still run and the serial log must not mention
//! a panic. The last case powers the VM off (exit status 0). Run with
//! `cargo xtask run-e2e`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceVm};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{self, FrameKind, Header, ProtocolError, ProtocolErrorCode};
use svmc_comm::{Hello, Protocol};
use svmc_host::Session;
use tests::harness::{Case, Setup, Suite};
use tests::suites::vars;
use tests::{ensure, env_count};
use vsock_transport::hybrid::{self, HybridStream};
use vsock_transport::rpc::Client;
use vsock_transport::{Connection, Error as TError, Timeouts};

type R = Result<(), String>;

/// How long we wait for the guest's answer to a bad frame.
const ANSWER: Duration = Duration::from_secs(10);

struct Hostile {
    /// The guest is the Linux test VM.
    linux: bool,
    session: Mutex<Option<Session>>,
    uds: PathBuf,
    serial_log: PathBuf,
    served: AtomicU32,
}

impl Hostile {
    fn timeouts(&self) -> Timeouts {
        Timeouts::uniform(ANSWER)
    }

    fn connect(&self) -> Result<HybridStream, String> {
        hybrid::connect(&self.uds, SERVICE_PORT, &self.timeouts())
            .map_err(|e| format!("connect: {e}"))
    }

    /// A new connection with our `HELLO` sent and the guest's read.
    fn connect_hello(&self) -> Result<HybridStream, String> {
        let mut c = self.connect()?;
        send(
            &mut c,
            &hello_frame(
                <ServiceVm as Protocol>::NAME,
                <ServiceVm as Protocol>::VERSION,
            ),
        )?;
        expect_hello(&mut c)?;
        Ok(c)
    }

    /// The guest is alive, has not panicked, and serves a new connection.
    fn check_serving(&self) -> R {
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            s.vm()
                .ok_or("no vm")?
                .check_running()
                .map_err(|e| e.to_string())?;
        }
        let log = std::fs::read_to_string(&self.serial_log).unwrap_or_default();
        ensure(!log.to_lowercase().contains("panic"), || {
            format!("the guest panicked: {}", self.serial_log.display())
        })?;
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let payload = format!("served after hostile input #{n}").into_bytes();
        let mut c = Client::<_, ServiceVm>::hello(self.connect()?, frame::DEFAULT_MAX_BODY)
            .map_err(|e| format!("handshake on the next connection: {e}"))?;
        let r = c
            .call(&Request::Reverse(payload.clone()))
            .map_err(|e| format!("request on the next connection: {e}"))?;
        let mut want = payload;
        want.reverse();
        ensure(r == Response::Reverse(want), || format!("{r:?}"))?;
        c.close().map_err(|e| e.to_string())
    }
}

fn send<C: Connection>(c: &mut C, bytes: &[u8]) -> R {
    c.send(bytes).map_err(|e| format!("send: {e}"))
}

fn hello_frame(name: &str, version: u32) -> Vec<u8> {
    let h = Hello {
        protocol: name.into(),
        version,
        max_body: frame::DEFAULT_MAX_BODY,
        ext: Vec::new(),
    };
    frame::encode(FrameKind::Hello, &h, frame::DEFAULT_MAX_BODY).expect("hello")
}

fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Id of every request these cases send by hand.
const ID: RequestId = RequestId(42);

fn request_frame(r: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(ID, r, frame::DEFAULT_MAX_BODY, &mut f).expect("request");
    f
}

/// A REQUEST frame whose body is `[ID, <message>]` with the message's
/// CBOR given raw.
fn raw_request(message: &[u8]) -> Vec<u8> {
    // 0x82: an array of 2; 0x18 0x2a: the unsigned integer 42.
    let mut body = vec![0x82, 0x18, ID.0 as u8];
    body.extend_from_slice(message);
    raw_frame(FrameKind::Request as u8, &body)
}

/// Reads one frame: `Ok(None)` if the guest closed the connection.
fn read_frame<C: Connection>(c: &mut C) -> Result<Option<(FrameKind, Vec<u8>)>, String> {
    let mut body = Vec::new();
    match vsock_transport::framed::recv_frame(c, frame::DEFAULT_MAX_BODY, &mut body) {
        Ok(h) => Ok(Some((h.kind, body))),
        Err(TError::Closed | TError::Reset) => Ok(None),
        Err(e) => Err(format!("reading the guest's answer: {e}")),
    }
}

fn expect_hello<C: Connection>(c: &mut C) -> R {
    match read_frame(c)? {
        Some((FrameKind::Hello, body)) => {
            let h: Hello = frame::decode_body(&body).map_err(|e| e.to_string())?;
            h.check::<ServiceVm>().map_err(|e| e.to_string())
        }
        other => Err(format!("expected the guest's HELLO, got {other:?}")),
    }
}

/// Expects an `ERROR` frame with `code` and `fatal`; for a fatal error,
/// also that the guest then closes the connection.
fn expect_error<C: Connection>(c: &mut C, code: ProtocolErrorCode, fatal: bool) -> R {
    let pe = match read_frame(c)? {
        Some((FrameKind::Error, body)) => {
            frame::decode_body::<ProtocolError>(&body).map_err(|e| format!("ERROR body: {e}"))?
        }
        other => return Err(format!("expected an ERROR frame, got {other:?}")),
    };
    ensure(pe.code == code && pe.fatal == fatal, || {
        format!("expected {code} (fatal: {fatal}), got {pe:?}")
    })?;
    println!("  guest: ERROR {pe}");
    if fatal {
        expect_close(c)?;
    }
    Ok(())
}

fn expect_close<C: Connection>(c: &mut C) -> R {
    match read_frame(c)? {
        None => Ok(()),
        Some((k, _)) => Err(format!("expected the guest to close, got a {k} frame")),
    }
}

/// After a non-fatal error the same connection still serves requests.
fn expect_still_usable<C: Connection>(c: &mut C) -> R {
    send(c, &request_frame(&Request::Reverse(b"same conn".to_vec())))?;
    match read_frame(c)? {
        Some((FrameKind::Response, body)) => {
            let (id, r) = envelope::decode::<Response>(&body);
            let r = r.map_err(|e| e.to_string())?;
            ensure(
                id == Some(ID) && r == Response::Reverse(b"nnoc emas".to_vec()),
                || format!("{id:?} {r:?}"),
            )
        }
        other => Err(format!(
            "expected a RESPONSE on the same connection, got {other:?}"
        )),
    }
}

/// Runs `f` on the suite, then checks that the guest still serves.
fn case(h: &Hostile, f: impl FnOnce(&Hostile) -> R) -> R {
    let r = f(h);
    let s = h.check_serving();
    r.and(s)
}

// ---- the cases ------------------------------------------------------------------

fn garbage_bytes(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        send(
            &mut c,
            b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n\x00\xff\xfe garbage",
        )?;
        expect_hello(&mut c)?;
        expect_error(&mut c, ProtocolErrorCode::BadFrame, true)
    })
}

fn garbage_after_hello(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 | 0x80)
            .collect();
        send(&mut c, &junk)?;
        expect_error(&mut c, ProtocolErrorCode::BadFrame, true)
    })
}

fn header_over_maximum(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let header = Header {
            kind: FrameKind::Request,
            len: u32::MAX,
        };
        send(&mut c, &header.to_bytes())?;
        expect_error(&mut c, ProtocolErrorCode::TooLarge, true)
    })
}

fn hello_over_maximum(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        let header = Header {
            kind: FrameKind::Hello,
            len: frame::HELLO_MAX_BODY + 1,
        };
        send(&mut c, &header.to_bytes())?;
        expect_hello(&mut c)?;
        expect_error(&mut c, ProtocolErrorCode::TooLarge, true)
    })
}

fn truncated_frame_then_close(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let f = request_frame(&Request::Reverse(vec![7; 1000]));
        send(&mut c, &f[..f.len() / 2])?;
        // Half-close: the guest sees the end of the stream mid-frame.
        c.get_ref()
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        // Best effort ERROR, then close.
        match read_frame(&mut c)? {
            None => Ok(()),
            Some((FrameKind::Error, body)) => {
                let pe: ProtocolError = frame::decode_body(&body).map_err(|e| e.to_string())?;
                ensure(pe.code == ProtocolErrorCode::BadFrame, || format!("{pe:?}"))?;
                expect_close(&mut c)
            }
            Some((k, _)) => Err(format!("unexpected {k} frame")),
        }
    })
}

fn truncated_frame_then_silence(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let f = request_frame(&Request::Reverse(vec![7; 1000]));
        send(&mut c, &f[..3])?;
        // The guest waits for the rest; nothing comes back meanwhile.
        c.set_timeouts(Timeouts::uniform(Duration::from_millis(700)));
        match read_frame(&mut c) {
            Err(e) if e.contains("timed out") => {}
            other => return Err(format!("expected silence, got {other:?}")),
        }
        drop(c);
        Ok(())
    })
}

fn hello_wrong_version(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        send(&mut c, &hello_frame(<ServiceVm as Protocol>::NAME, 99))?;
        expect_hello(&mut c)?;
        expect_error(&mut c, ProtocolErrorCode::VersionMismatch, true)
    })
}

fn hello_wrong_protocol(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        send(
            &mut c,
            &hello_frame("not-svmc", <ServiceVm as Protocol>::VERSION),
        )?;
        expect_hello(&mut c)?;
        expect_error(&mut c, ProtocolErrorCode::VersionMismatch, true)
    })
}

fn request_before_hello(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        send(&mut c, &request_frame(&Request::Info))?;
        expect_hello(&mut c)?;
        // The handshake failed: the guest reports it as fatal and closes.
        expect_error(&mut c, ProtocolErrorCode::UnexpectedFrame, true)?;
        expect_close(&mut c)
    })
}

fn response_frame_from_host(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let mut f = Vec::new();
        envelope::encode_response_into(
            ID,
            &Response::Reverse(b"x".to_vec()),
            frame::DEFAULT_MAX_BODY,
            &mut f,
        )
        .map_err(|e| e.to_string())?;
        send(&mut c, &f)?;
        expect_error(&mut c, ProtocolErrorCode::UnexpectedFrame, false)?;
        expect_still_usable(&mut c)
    })
}

fn second_hello(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        send(
            &mut c,
            &hello_frame(
                <ServiceVm as Protocol>::NAME,
                <ServiceVm as Protocol>::VERSION,
            ),
        )?;
        expect_error(&mut c, ProtocolErrorCode::UnexpectedFrame, false)?;
        expect_still_usable(&mut c)
    })
}

fn error_frame_from_host(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let pe = ProtocolError::new(ProtocolErrorCode::BadMessage, false, "the host complains");
        let f = frame::encode(FrameKind::Error, &pe, frame::ERROR_MAX_BODY)
            .map_err(|e| e.to_string())?;
        send(&mut c, &f)?;
        // The guest takes it as the client's complaint: no answer, and the
        // connection goes on (the next frame back is the RESPONSE).
        expect_still_usable(&mut c)
    })
}

fn unknown_frame_kind(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        send(&mut c, &raw_frame(0x7f, &[0x60]))?;
        expect_error(&mut c, ProtocolErrorCode::BadFrame, true)
    })
}

fn invalid_cbor(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        // A reserved additional-information value, then a break out of nowhere.
        send(
            &mut c,
            &raw_frame(FrameKind::Request as u8, &[0x1c, 0xff, 0xff]),
        )?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        // A byte string announcing more than the body holds.
        send(
            &mut c,
            &raw_request(&[0xa1, 0x63, b'r', b'e', b'v', 0x5a, 0xff, 0xff, 0xff, 0xf0]),
        )?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        // Deep nesting.
        send(&mut c, &raw_frame(FrameKind::Request as u8, &[0x81; 1000]))?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        expect_still_usable(&mut c)
    })
}

fn unknown_request_variant(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        // The text string "nope": a unit variant nobody knows.
        send(&mut c, &raw_request(b"\x64nope"))?;
        expect_error(&mut c, ProtocolErrorCode::UnknownVariant, false)?;
        // {"zap": h'00'}: a newtype variant nobody knows.
        send(&mut c, &raw_request(b"\xa1\x63zap\x41\x00"))?;
        expect_error(&mut c, ProtocolErrorCode::UnknownVariant, false)?;
        expect_still_usable(&mut c)
    })
}

fn wrong_shape(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        // {"rev": 5}: a known variant with an integer for its bytes.
        send(&mut c, &raw_request(b"\xa1\x63rev\x05"))?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        expect_still_usable(&mut c)
    })
}

fn trailing_bytes(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let mut body = request_frame(&Request::Info).split_off(frame::HEADER_LEN);
        body.extend_from_slice(&[0x00, 0x01, 0x02]);
        send(&mut c, &raw_frame(FrameKind::Request as u8, &body))?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        expect_still_usable(&mut c)
    })
}

fn empty_body(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        send(&mut c, &raw_frame(FrameKind::Request as u8, &[]))?;
        // Reported as a bad message; the frame's boundaries were intact, so
        // the connection stays usable.
        let pe = match read_frame(&mut c)? {
            Some((FrameKind::Error, body)) => {
                frame::decode_body::<ProtocolError>(&body).map_err(|e| e.to_string())?
            }
            other => return Err(format!("expected an ERROR frame, got {other:?}")),
        };
        println!("  guest: ERROR {pe}");
        ensure(
            pe.code == ProtocolErrorCode::BadMessage && !pe.fatal,
            || format!("{pe:?}"),
        )?;
        expect_still_usable(&mut c)
    })
}

fn goodbye_with_body(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        send(&mut c, &raw_frame(FrameKind::Goodbye as u8, b"\x00"))?;
        let pe = match read_frame(&mut c)? {
            Some((FrameKind::Error, body)) => {
                frame::decode_body::<ProtocolError>(&body).map_err(|e| e.to_string())?
            }
            other => return Err(format!("expected an ERROR frame, got {other:?}")),
        };
        println!("  guest: ERROR {pe}");
        // The body's bytes were never read: the stream is out of step, so
        // the guest says so and closes.
        ensure(pe.fatal, || format!("{pe:?}"))?;
        expect_close(&mut c)
    })
}

fn trickle(h: &Hostile) -> R {
    case(h, |h| {
        let secs = env_count(vars::HOSTILE_TRICKLE_SECS, 3);
        let mut c = h.connect_hello()?;
        let f = request_frame(&Request::Reverse(vec![1; 64]));
        // Meanwhile another client connects; the guest serves connections
        // at once, so it is served while the trickle goes on.
        let uds = h.uds.clone();
        let waiting = std::thread::spawn(move || -> Result<Duration, String> {
            let start = Instant::now();
            let conn = hybrid::connect(
                &uds,
                SERVICE_PORT,
                &Timeouts::uniform(Duration::from_secs(60)),
            )
            .map_err(|e| e.to_string())?;
            let mut cl = Client::<_, ServiceVm>::hello(conn, frame::DEFAULT_MAX_BODY)
                .map_err(|e| format!("waiting client: {e}"))?;
            let r = cl
                .call(&Request::Reverse(b"waited".to_vec()))
                .map_err(|e| e.to_string())?;
            ensure(r == Response::Reverse(b"detiaw".to_vec()), || {
                format!("{r:?}")
            })?;
            let took = start.elapsed();
            cl.close().map_err(|e| e.to_string())?;
            Ok(took)
        });
        let start = Instant::now();
        for (i, b) in f.iter().take(secs as usize).enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            send(&mut c, std::slice::from_ref(b))?;
        }
        // Nothing came back while trickling.
        c.set_timeouts(Timeouts::uniform(Duration::from_millis(300)));
        match read_frame(&mut c) {
            Err(e) if e.contains("timed out") => {}
            other => return Err(format!("expected silence, got {other:?}")),
        }
        let trickled = start.elapsed();
        let took = waiting.join().map_err(|_| "waiting client panicked")??;
        drop(c);
        ensure(took < Duration::from_secs(1) && took < trickled, || {
            format!("the other client took {took:?} while one trickled for {trickled:?}")
        })?;
        println!("  the other client was served in {took:?} while one trickled for {trickled:?}");
        Ok(())
    })
}

fn disconnect_mid_frame(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let f = request_frame(&Request::Reverse(vec![9; 100_000]));
        send(&mut c, &f[..50_000])?;
        drop(c);
        Ok(())
    })
}

fn disconnect_mid_header(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        send(&mut c, &[FrameKind::Request as u8, 0])?;
        drop(c);
        Ok(())
    })
}

fn close_before_ok(h: &Hostile) -> R {
    if h.linux {
        // The Linux guest answers the daemon's REQUEST at once, and then
        // vhost-device-vsock 0.3.0 writes `OK` to the socket we closed and
        // panics on the EPIPE (`vsock_conn.rs` `send_pkt`, an `unwrap`),
        // which ends the device of the VM: every later case fails. Seen in
        // 1 of 9 runs; written up for upstream in
        // vsock-transport/docs/vhost-device-vsock-0.3.0.md (bug 4).
        println!("  not run against the Linux guest: it kills vhost-device-vsock 0.3.0 (bug 4)");
        return Ok(());
    }
    case(h, |h| {
        // CONNECT, then close without waiting for OK.
        let mut s = UnixStream::connect(&h.uds).map_err(|e| e.to_string())?;
        s.write_all(format!("CONNECT {SERVICE_PORT}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        drop(s);
        Ok(())
    })
}

fn close_right_after_ok(h: &Hostile) -> R {
    case(h, |h| {
        // CONNECT, OK, then close at once (before the guest's HELLO is read).
        drop(h.connect()?);
        Ok(())
    })
}

fn reset_with_unread_hello(h: &Hostile) -> R {
    case(h, |h| {
        // Close with the guest's HELLO unread in our receive buffer and
        // SO_LINGER 0: the daemon's next read on its side fails with
        // ECONNRESET (the nearest a Unix socket has to an RST).
        let c = h.connect()?;
        std::thread::sleep(Duration::from_millis(100));
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(c.get_ref(), nix::sys::socket::sockopt::Linger, &linger)
            .map_err(|e| format!("SO_LINGER: {e}"))?;
        drop(c);
        Ok(())
    })
}

fn burst_of_abrupt_closes(h: &Hostile) -> R {
    case(h, |h| {
        for _ in 0..20 {
            drop(h.connect()?);
        }
        Ok(())
    })
}

fn half_close_after_hello(h: &Hostile) -> R {
    case(h, |h| {
        // A client that says nothing more after HELLO and shuts its write
        // side: a clean close between frames.
        let mut c = h.connect_hello()?;
        c.get_ref()
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        expect_close(&mut c)
    })
}

fn power_off(h: &Hostile) -> R {
    let mut c = Client::<_, ServiceVm>::hello(h.connect()?, frame::DEFAULT_MAX_BODY)
        .map_err(|e| e.to_string())?;
    let r = c.call(&Request::PowerOff).map_err(|e| e.to_string())?;
    ensure(r == Response::PowerOff, || format!("{r:?}"))?;
    let mut guard = h.session.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = guard.take().ok_or("no session")?;
    let status = s
        .vm()
        .ok_or("no vm")?
        .wait_exit(Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    let log = std::fs::read_to_string(&h.serial_log).unwrap_or_default();
    ensure(!log.to_lowercase().contains("panic"), || {
        format!("the guest panicked: {}", h.serial_log.display())
    })?;
    ensure(status.code() == Some(0), || {
        format!(
            "QEMU exit status {status}; serial log {}",
            h.serial_log.display()
        )
    })
}

const CASES: &[Case<Hostile>] = &[
    ("garbage_bytes", garbage_bytes),
    ("garbage_after_hello", garbage_after_hello),
    ("header_over_maximum", header_over_maximum),
    ("hello_over_maximum", hello_over_maximum),
    ("truncated_frame_then_close", truncated_frame_then_close),
    ("truncated_frame_then_silence", truncated_frame_then_silence),
    ("hello_wrong_version", hello_wrong_version),
    ("hello_wrong_protocol", hello_wrong_protocol),
    ("request_before_hello", request_before_hello),
    ("response_frame_from_host", response_frame_from_host),
    ("second_hello", second_hello),
    ("error_frame_from_host", error_frame_from_host),
    ("unknown_frame_kind", unknown_frame_kind),
    ("invalid_cbor", invalid_cbor),
    ("unknown_request_variant", unknown_request_variant),
    ("wrong_shape", wrong_shape),
    ("trailing_bytes", trailing_bytes),
    ("empty_body", empty_body),
    ("goodbye_with_body", goodbye_with_body),
    ("trickle", trickle),
    ("disconnect_mid_frame", disconnect_mid_frame),
    ("disconnect_mid_header", disconnect_mid_header),
    ("close_before_ok", close_before_ok),
    ("close_right_after_ok", close_right_after_ok),
    ("reset_with_unread_hello", reset_with_unread_hello),
    ("burst_of_abrupt_closes", burst_of_abrupt_closes),
    ("half_close_after_hello", half_close_after_hello),
];

fn setup(s: Setup) -> Result<Hostile, String> {
    let mut session = s
        .ctx
        .session()
        .map_err(|e| format!("could not start the VM: {e}"))?;
    // End the boot connection so that the guest serves its listener.
    let _ = session
        .client()
        .map(|c| c.connection().send(&frame::goodbye()));
    let vm = session.vm().ok_or("no VM")?;
    let (uds, serial_log) = (vm.uds_path().to_path_buf(), vm.serial_log().to_path_buf());
    println!("  serial log: {}", serial_log.display());
    Ok(Hostile {
        linux: s.ctx.guest == svmc_host::Guest::Linux,
        session: Mutex::new(Some(session)),
        uds,
        serial_log,
        served: AtomicU32::new(0),
    })
}

fn main() {
    tests::harness::main(&Suite {
        name: "hostile_host",
        private_tmp: false,
        setup,
        cases: CASES,
        // With a filter too: the VM must be powered off.
        last: Some(("power_off", power_off)),
        helpers: &[],
    })
}
