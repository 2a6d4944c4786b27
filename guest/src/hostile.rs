//! A guest that misbehaves on purpose (cargo feature `hostile`, never in
//! the default image): the host's tests use it to prove that the host
//! survives a broken or malicious service VM with a typed error, within its
//! timeouts, and leaves nothing behind.
//!
//! The misbehaviour is chosen with `svmc.hostile=<mode>` on the kernel
//! command line and applied to every connection: the boot connection to the
//! host, then each host-initiated connection on the service port. In every
//! mode the guest plays the server's part correctly up to the point where
//! it misbehaves (its `HELLO`, reading the host's `HELLO` and the first
//! request), so the host's check of that stage is what is exercised.
//!
//! | mode               | what the guest sends                                        | what the host should report |
//! |--------------------|-------------------------------------------------------------|-----------------------------|
//! | `garbage`          | random bytes instead of its `HELLO`                          | a frame error (`UnknownFrameKind`, ...) |
//! | `garbage-response` | a `RESPONSE` header, then random bytes as its body (not CBOR) | `InvalidCbor`             |
//! | `too-large`        | a `RESPONSE` header announcing one byte more than the host's `HELLO` allows | `TooLarge` |
//! | `truncated`        | a `RESPONSE` header and half its body, then silence with the connection open | read timeout |
//! | `wrong-version`    | a `HELLO` with version [`ServiceVm`]`::VERSION + 1`          | `VersionMismatch`           |
//! | `wrong-protocol`   | a `HELLO` naming protocol [`WRONG_PROTOCOL`]                 | `ProtocolMismatch`          |
//! | `wrong-type`       | a valid `REQUEST` frame instead of the `RESPONSE`            | `UnexpectedFrame`           |
//! | `trickle`          | the correct `RESPONSE`, one byte every [`TRICKLE_INTERVAL_US`], repeated for ever | read timeout (one deadline per frame) |
//! | `disconnect`       | a `RESPONSE` header and half its body, then a close          | `Truncated`                 |
//! | `lost-kick`        | nothing wrong: its transport drops its first TX notification (as vhost-device-vsock 0.3.0 can, see `svmc_runtime::kick`), then it serves correctly | nothing: the answer, with no relaunch |
//!
//! After misbehaving, the guest waits (without sending) until the host
//! closes the connection, and then takes the next one.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

use log::{info, warn};
use svmc::{Request, Response, ServiceError, ServiceVm};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header};
use svmc_comm::{Hello, Protocol};
use svmc_runtime::Vsock;
use vsock_transport::framed::{recv_frame, send_frame};
use vsock_transport::guest::HOST_CID;
use vsock_transport::guest::VsockAddr;
use vsock_transport::{Connection, Error, Result};

/// The protocol name sent in `wrong-protocol` mode.
pub const WRONG_PROTOCOL: &str = "svmc-hostile";

/// Time between two bytes in `trickle` mode, in microseconds.
pub const TRICKLE_INTERVAL_US: u64 = 1_000_000;

/// Bytes of random data sent in `garbage` mode.
const GARBAGE_LEN: usize = 4096;

/// Our port for the boot-time connection (as in normal operation).
const CONNECT_LOCAL_PORT: u32 = svmc_runtime::entry::CONNECT_LOCAL_PORT;

/// How the guest misbehaves (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Random bytes instead of `HELLO`.
    Garbage = 1,
    /// A `RESPONSE` frame whose body is random bytes.
    GarbageResponse,
    /// A `RESPONSE` header announcing more than the host accepts.
    TooLarge,
    /// Part of a `RESPONSE`, then silence.
    Truncated,
    /// `HELLO` with another version.
    WrongVersion,
    /// `HELLO` with another protocol name.
    WrongProtocol,
    /// A `REQUEST` frame instead of the `RESPONSE`.
    WrongType,
    /// The `RESPONSE` one byte per second, for ever.
    Trickle,
    /// Part of a `RESPONSE`, then a close.
    Disconnect,
    /// The first TX notification is never made; then correct service.
    LostKick,
}

impl Mode {
    const ALL: [Self; 10] = [
        Self::Garbage,
        Self::GarbageResponse,
        Self::TooLarge,
        Self::Truncated,
        Self::WrongVersion,
        Self::WrongProtocol,
        Self::WrongType,
        Self::Trickle,
        Self::Disconnect,
        Self::LostKick,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::GarbageResponse => "garbage-response",
            Self::TooLarge => "too-large",
            Self::Truncated => "truncated",
            Self::WrongVersion => "wrong-version",
            Self::WrongProtocol => "wrong-protocol",
            Self::WrongType => "wrong-type",
            Self::Trickle => "trickle",
            Self::Disconnect => "disconnect",
            Self::LostKick => "lost-kick",
        }
    }
}

/// The mode from the command line, as `Mode as u8` (0: none). Set while
/// the command line is parsed, before the heap exists.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Applies `svmc.hostile=<value>`; `false` if `value` names no mode.
/// Does not allocate.
pub fn set_mode(value: &str) -> bool {
    match Mode::ALL.iter().find(|m| m.name() == value) {
        Some(&m) => {
            MODE.store(m as u8, Ordering::Relaxed);
            if m == Mode::LostKick {
                svmc_runtime::testing::lose_first_tx_kick();
            }
            true
        }
        None => false,
    }
}

/// The mode chosen on the command line, if any.
pub fn mode() -> Option<Mode> {
    let v = MODE.load(Ordering::Relaxed);
    Mode::ALL.into_iter().find(|&m| m as u8 == v)
}

/// Misbehaves in `mode` on the boot connection to `host_port` and then on
/// every connection accepted on the listening port, for ever. Returns only
/// on a device error, with what was being done.
pub fn run(vsock: &mut Vsock, host_port: u32, mode: Mode, max_body: u32) -> (&'static str, Error) {
    warn!(
        "hostile mode {}: misbehaving on every connection",
        mode.name()
    );
    let host = VsockAddr {
        cid: HOST_CID,
        port: host_port,
    };
    match vsock.connect(host, CONNECT_LOCAL_PORT) {
        Ok(id) => misbehave_logged(&mut vsock.stream(id), mode, max_body),
        Err(e @ (Error::Refused { .. } | Error::Timeout(_))) => {
            info!("host port {host_port}: {e}; waiting for the host to connect")
        }
        Err(e) => return ("connecting to the host", e),
    }
    loop {
        match vsock.accept() {
            Some(id) => misbehave_logged(&mut vsock.stream(id), mode, max_body),
            None => {
                if let Err(e) = vsock.poll_or_spin() {
                    return ("waiting for a connection", e);
                }
            }
        }
    }
}

fn misbehave_logged<C: Connection>(conn: &mut C, mode: Mode, max_body: u32) {
    match misbehave(conn, mode, max_body) {
        Ok(()) => info!("hostile: connection ended"),
        Err(e) => info!("hostile: connection ended: {e}"),
    }
    let _ = conn.shutdown();
}

/// Misbehaves on one connection, then waits for the peer to close it.
fn misbehave<C: Connection>(conn: &mut C, mode: Mode, max_body: u32) -> Result<()> {
    let mut rng = XorShift(0x5eed_5eed_dead_beef);
    let mut buf = Vec::new();
    match mode {
        Mode::Garbage => {
            let garbage: Vec<u8> = (0..GARBAGE_LEN).map(|_| rng.byte()).collect();
            send_frame(conn, &garbage)?;
            return wait_for_close(conn);
        }
        Mode::WrongVersion => {
            send_hello(conn, ServiceVm::NAME, ServiceVm::VERSION + 1, max_body)?;
            return wait_for_close(conn);
        }
        Mode::WrongProtocol => {
            send_hello(conn, WRONG_PROTOCOL, ServiceVm::VERSION, max_body)?;
            return wait_for_close(conn);
        }
        _ => {}
    }

    // The correct start of a connection: HELLO both ways, then a request.
    send_hello(conn, ServiceVm::NAME, ServiceVm::VERSION, max_body)?;
    let header = recv_frame(conn, max_body, &mut buf)?;
    frame::check_kind(header.kind, FrameKind::Hello, &buf)?;
    let peer: Hello = frame::decode_body(&buf)?;
    peer.check::<ServiceVm>()?;
    let header = recv_frame(conn, max_body, &mut buf)?;
    let response = match frame::decode_body::<Request>(&buf) {
        Ok(Request::Reverse(mut bytes)) if header.kind == FrameKind::Request => {
            bytes.reverse();
            Response::Reverse(bytes)
        }
        _ => Response::Err(ServiceError::Unsupported),
    };
    let answer = frame::encode(FrameKind::Response, &response, peer.max_body)?;
    let body_len = answer.len() - HEADER_LEN;

    match mode {
        Mode::GarbageResponse => {
            // 0x1c: major type 0 with the reserved additional information
            // 28, which is not well-formed CBOR (RFC 8949, section 3).
            let mut f = Header {
                kind: FrameKind::Response,
                len: 64,
            }
            .to_bytes()
            .to_vec();
            f.push(0x1c);
            f.extend((1..64).map(|_| rng.byte()));
            send_frame(conn, &f)?;
        }
        Mode::TooLarge => {
            let h = Header {
                kind: FrameKind::Response,
                len: peer.max_body.saturating_add(1),
            };
            send_frame(conn, &h.to_bytes())?;
        }
        Mode::Truncated => send_frame(conn, &answer[..HEADER_LEN + body_len / 2])?,
        Mode::Disconnect => {
            send_frame(conn, &answer[..HEADER_LEN + body_len / 2])?;
            return conn.shutdown();
        }
        Mode::WrongType => {
            let f = frame::encode(FrameKind::Request, &Request::Info, peer.max_body)?;
            send_frame(conn, &f)?;
        }
        Mode::Trickle => loop {
            for &b in &answer {
                conn.send(&[b])?;
                let start = svmc_runtime::now_us();
                while svmc_runtime::now_us() - start < TRICKLE_INTERVAL_US {
                    core::hint::spin_loop();
                }
            }
        },
        // Handled before (at the HELLO stage), or not misbehaving here.
        Mode::Garbage | Mode::WrongVersion | Mode::WrongProtocol | Mode::LostKick => {
            unreachable!()
        }
    }
    wait_for_close(conn)
}

fn send_hello<C: Connection>(conn: &mut C, name: &str, version: u32, max_body: u32) -> Result<()> {
    let hello = Hello {
        protocol: name.into(),
        version,
        max_body,
        ext: Vec::new(),
    };
    send_frame(conn, &frame::encode(FrameKind::Hello, &hello, max_body)?)
}

/// Reads and drops whatever the peer sends until it closes the connection.
fn wait_for_close<C: Connection>(conn: &mut C) -> Result<()> {
    let mut sink = vec![0u8; 4096];
    while conn.recv(&mut sink)? != 0 {}
    Ok(())
}

/// xorshift64: deterministic bytes, the same on every run.
struct XorShift(u64);

impl XorShift {
    fn byte(&mut self) -> u8 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 56) as u8
    }
}
