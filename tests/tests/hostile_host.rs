//! Hostile-host suite: the real guest keeps serving through input that is
//! about robustness rather than the letter of `comm/WIRE.md` (junk
//! streams, decoder bombs, a trickle, clients that vanish at every step of
//! the hybrid handshake and of a frame), each on its own host-initiated
//! connection to the service port. After each, a well-formed request on a
//! new connection must be served, QEMU must still run and the serial log
//! must not mention a panic. The last case powers the VM off (exit status
//! 0). Run with `cargo xtask run-e2e`.
//!
//! What the specification says of each bad frame (its `ERROR` code, fatal
//! or not, the close) is checked once, by the conformance suite (WIRE.md
//! §9 maps its rules to cases); both suites speak through
//! [`tests::raw::Raw`].

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceVm};
use svmc_comm::frame::{self, DEFAULT_MAX_BODY, FrameKind, ProtocolErrorCode};
use svmc_host::Session;
use tests::harness::{Case, Setup, Suite};
use tests::raw::{R, Raw, raw_frame, request_frame};
use tests::suites::vars;
use tests::{ensure, env_count};
use vsock_transport::Timeouts;
use vsock_transport::hybrid;
use vsock_transport::rpc::Client;

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
    fn connect(&self) -> Result<Raw<'static>, String> {
        Raw::connect(&self.uds, SERVICE_PORT, ANSWER, None)
    }

    /// A new connection with our `HELLO` sent and the guest's read.
    fn connect_hello(&self) -> Result<Raw<'static>, String> {
        let mut c = self.connect()?;
        c.handshake(DEFAULT_MAX_BODY)?;
        Ok(c)
    }

    /// The guest is alive, has not panicked, and serves a new connection
    /// (through the library's client: the raw one is for bad input).
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
        let conn = hybrid::connect(&self.uds, SERVICE_PORT, &Timeouts::uniform(ANSWER))
            .map_err(|e| format!("connect: {e}"))?;
        let mut c = Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY)
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

/// Id of every request these cases send by hand.
const ID: u32 = 42;

/// A REQUEST frame whose body is `[ID, <message>]` with the message's
/// CBOR given raw.
fn raw_request(message: &[u8]) -> Vec<u8> {
    // 0x82: an array of 2; 0x18 0x2a: the unsigned integer 42.
    let mut body = vec![0x82, 0x18, ID as u8];
    body.extend_from_slice(message);
    raw_frame(FrameKind::Request as u8, &body)
}

/// Expects an `ERROR` frame with `code` and `fatal` (and for a fatal one
/// the close), and prints it.
fn expect_error(c: &mut Raw<'_>, code: ProtocolErrorCode, fatal: bool) -> R {
    let pe = c.expect_any_error()?;
    ensure(pe.code == code && pe.fatal == fatal, || {
        format!("expected {code} (fatal: {fatal}), got {pe:?}")
    })?;
    println!("  guest: ERROR {pe}");
    if fatal {
        c.expect_close()?;
    }
    Ok(())
}

/// Runs `f` on the suite, then checks that the guest still serves.
fn case(h: &Hostile, f: impl FnOnce(&Hostile) -> R) -> R {
    let r = f(h);
    let s = h.check_serving();
    r.and(s)
}

// ---- the cases ------------------------------------------------------------------

/// An HTTP request by mistake, before any `HELLO`.
fn garbage_bytes(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect()?;
        c.send(b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n\x00\xff\xfe garbage")?;
        c.expect_hello()?;
        expect_error(&mut c, ProtocolErrorCode::BadFrame, true)
    })
}

/// 4 KiB of junk after the handshake.
fn garbage_after_hello(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 | 0x80)
            .collect();
        c.send(&junk)?;
        expect_error(&mut c, ProtocolErrorCode::BadFrame, true)
    })
}

/// Bodies made to exhaust a decoder: a byte string announcing 4 GiB in a
/// body of a few bytes (nothing may be allocated for it), and 1000 levels
/// of nesting (the stack); each a non-fatal bad message.
fn decoder_bombs(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        c.send(&raw_request(&[
            0xa1, 0x63, b'r', b'e', b'v', 0x5a, 0xff, 0xff, 0xff, 0xf0,
        ]))?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        c.send(&raw_frame(FrameKind::Request as u8, &[0x81; 1000]))?;
        expect_error(&mut c, ProtocolErrorCode::BadMessage, false)?;
        c.expect_usable(ID)
    })
}

fn trickle(h: &Hostile) -> R {
    case(h, |h| {
        let secs = env_count(vars::HOSTILE_TRICKLE_SECS, 3);
        let mut c = h.connect_hello()?;
        let f = request_frame(ID, &Request::Reverse(vec![1; 64]));
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
            c.send(std::slice::from_ref(b))?;
        }
        // Nothing came back while trickling.
        c.expect_nothing()
            .map_err(|e| format!("expected silence: {e}"))?;
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
        let f = request_frame(ID, &Request::Reverse(vec![9; 100_000]));
        c.send(&f[..50_000])?;
        drop(c);
        Ok(())
    })
}

fn disconnect_mid_header(h: &Hostile) -> R {
    case(h, |h| {
        let mut c = h.connect_hello()?;
        c.send(&[FrameKind::Request as u8, 0])?;
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
        nix::sys::socket::setsockopt(c.stream(), nix::sys::socket::sockopt::Linger, &linger)
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

fn power_off(h: &Hostile) -> R {
    let mut c = h.connect_hello()?;
    c.send_request(ID, &Request::PowerOff)?;
    let r = c.expect_response(ID)?;
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
    ("decoder_bombs", decoder_bombs),
    ("trickle", trickle),
    ("disconnect_mid_frame", disconnect_mid_frame),
    ("disconnect_mid_header", disconnect_mid_header),
    ("close_before_ok", close_before_ok),
    ("close_right_after_ok", close_right_after_ok),
    ("reset_with_unread_hello", reset_with_unread_hello),
    ("burst_of_abrupt_closes", burst_of_abrupt_closes),
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
