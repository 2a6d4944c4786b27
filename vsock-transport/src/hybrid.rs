//! Hybrid vsock: the host side of a VM's vsock device as a Unix socket, as
//! Firecracker, Cloud Hypervisor, vhost-device-vsock and alioth provide it.
//!
//! The device (VMM or vhost-user daemon) is configured with one Unix socket
//! path, `uds_path`. Both directions of connection set-up go through Unix
//! sockets derived from it:
//!
//! **Host to guest** ([`connect`]). The host connects to `uds_path` and
//! writes one ASCII line naming the guest port, and the device answers with
//! one line before any data flows:
//!
//! ```text
//! host → device:  "CONNECT 7001\n"   43 4f 4e 4e 45 43 54 20 37 30 30 31 0a
//! device → host:  "OK 7001\n"        4f 4b 20 37 30 30 31 0a
//! ```
//!
//! The number after `OK` is informational: vhost-device-vsock sends the
//! guest port back, Firecracker the host-side port it assigned to the
//! connection (e.g. `OK 1073741824`). It is kept in
//! [`Peer::HybridConnected`]. If nobody listens on the guest port, the
//! device closes the Unix connection without an answer: [`connect`] reports
//! that at once as [`Error::Refused`]. The reply line is read one byte at a
//! time (so that no byte of the guest's first frame is consumed), at most
//! [`MAX_REPLY_LEN`] bytes, all within [`Timeouts::hybrid_connect`]; anything
//! else than `OK <u32>\n` is [`Error::HybridConnect`] with the bytes received,
//! escaped.
//!
//! **Guest to host** ([`Listener`]). When the guest connects to host port
//! `P` (CID 2), the device connects to the Unix socket `<uds_path>_P`
//! ([`listener_path`]), which the host must be listening on already. No
//! handshake line is exchanged in this direction: the data flows at once.
//!
//! After set-up both directions are plain byte streams, driven by
//! [`HostStream`].
//!
//! The listening socket is created owner-only: `socket(2)`, `bind(2)`,
//! `chmod 0600`, and only then `listen(2)`, so there is no moment at which
//! another user could connect (before `listen(2)`, connecting fails with
//! `ECONNREFUSED`). A socket file left behind by a dead process is replaced;
//! one with a live listener behind it is an error ([`std::io::ErrorKind::AddrInUse`]).
//! The file is removed when the [`Listener`] is dropped (unless it was
//! replaced by someone else in the meantime).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::host_stream::sys::{self, ConnectError, SockAddr};
use crate::host_stream::{HostStream, Peer};
use crate::timeouts::Deadline;
use crate::{Connection, Error, Result, Step, Timeouts};

/// The command that opens a host-initiated connection, followed by the
/// decimal guest port and [`LINE_END`].
pub const CONNECT: &str = "CONNECT ";

/// The start of the device's positive answer, followed by a decimal port
/// number and [`LINE_END`].
pub const OK: &str = "OK ";

/// The end of a handshake line.
pub const LINE_END: u8 = b'\n';

/// The longest reply line accepted, newline included. `OK 4294967295\n` is
/// 14 bytes; the margin is for devices that pad, and it bounds what a
/// broken device can make us read.
pub const MAX_REPLY_LEN: usize = 64;

/// Mode of a [`Listener`]'s socket file: owner read and write only. (Write
/// permission is what `connect(2)` checks on a Unix socket.)
pub const SOCKET_MODE: u32 = 0o600;

/// A connection over hybrid vsock.
pub type HybridStream = HostStream<UnixStream>;

/// The Unix socket on which guest-initiated connections to host port `port`
/// arrive: `<uds_path>_<port>`.
pub fn listener_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to guest port `port` through the device socket `uds_path`.
///
/// ```no_run
/// use vsock_transport::comm::frame::DEFAULT_MAX_BODY;
/// use svmc::{Request, ServiceVm, SERVICE_PORT};
/// use vsock_transport::rpc::Client;
/// use vsock_transport::{Timeouts, hybrid};
///
/// // The VM's vsock device socket (e.g. vhost-device-vsock's `uds-path`).
/// let conn = hybrid::connect("/run/vm/vsock.sock".as_ref(), SERVICE_PORT, &Timeouts::default())?;
/// let mut client = Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY)?;
/// println!("{:?}", client.call(&Request::Info)?);
/// client.close()?;
/// # Ok::<(), vsock_transport::Error>(())
/// ```
///
/// Connecting is bounded by [`Timeouts::connect`] and the `CONNECT`/`OK`
/// exchange by [`Timeouts::hybrid_connect`]. Errors: [`Error::Refused`] if the
/// device closed the connection without a reply (nobody listens on the
/// guest port); [`Error::HybridConnect`] for a wrong reply;
/// [`Error::Timeout`]`(`[`Step::Connect`]` | `[`Step::HybridConnect`]`)`;
/// [`Error::Io`] if `uds_path` cannot be connected to (no such file, nobody
/// listening: is the VMM or device daemon running?).
pub fn connect(uds_path: &Path, port: u32, timeouts: &Timeouts) -> Result<HybridStream> {
    let io_err = |e| {
        Error::io(
            format!(
                "connecting to the hybrid vsock socket {} (is the VM's vsock device running?)",
                uds_path.display()
            ),
            e,
        )
    };
    let addr = SockAddr::unix(uds_path).map_err(io_err)?;
    let fd = sys::stream_socket(&addr, true).map_err(io_err)?;
    let deadline = Deadline::start(timeouts, Step::Connect);
    sys::connect(&fd, &addr, &deadline).map_err(|e| match e {
        ConnectError::Timeout => Error::Timeout(Step::Connect),
        ConnectError::Os(e) => io_err(e),
    })?;
    let socket = UnixStream::from(fd);
    socket.set_nonblocking(false).map_err(io_err)?;

    let mut stream = HostStream::new(
        socket,
        Peer::Other(format!(
            "hybrid vsock {} (CONNECT to guest port {port})",
            uds_path.display()
        )),
        *timeouts,
    );
    let ok_port = connect_exchange(&mut stream, port)?;
    let socket = stream.into_inner();
    Ok(HostStream::new(
        socket,
        Peer::HybridConnected {
            uds_path: uds_path.to_owned(),
            port,
            ok_port,
        },
        *timeouts,
    ))
}

/// Sends `CONNECT <port>\n` and reads the `OK <n>\n` reply; returns `n`.
fn connect_exchange(stream: &mut HybridStream, port: u32) -> Result<u32> {
    stream.begin(Step::HybridConnect);
    let refused = |e| match e {
        // The device hung up on us before answering: nobody listens on the
        // guest port.
        Error::Closed | Error::Reset => Error::Refused { port },
        e => e,
    };
    stream
        .send(format!("{CONNECT}{port}\n").as_bytes())
        .map_err(refused)?;
    let mut line = [0u8; MAX_REPLY_LEN];
    let mut len = 0;
    loop {
        if len == MAX_REPLY_LEN {
            return Err(Error::HybridConnect(format!(
                "no end of line within {MAX_REPLY_LEN} bytes of the reply to CONNECT {port}: \"{}\"",
                escape(&line)
            )));
        }
        let n = match stream.recv(&mut line[len..=len]) {
            Ok(n) => n,
            Err(e) if len == 0 => return Err(refused(e)),
            Err(e) => return Err(e),
        };
        if n == 0 {
            if len == 0 {
                return Err(Error::Refused { port });
            }
            return Err(Error::HybridConnect(format!(
                "connection closed after \"{}\", before the end of the reply to CONNECT {port}",
                escape(&line[..len])
            )));
        }
        len += 1;
        if line[len - 1] == LINE_END {
            return parse_reply(&line[..len]);
        }
    }
}

/// Parses the device's reply line, newline included: `OK <u32>\n`.
///
/// ```
/// # use vsock_transport::hybrid::parse_reply;
/// assert_eq!(parse_reply(b"OK 1073741824\n").unwrap(), 1073741824);
/// assert!(parse_reply(b"OK\n").is_err());
/// ```
pub fn parse_reply(line: &[u8]) -> Result<u32> {
    let bad = || {
        Error::HybridConnect(format!(
            "expected \"OK <port>\\n\" in reply to CONNECT, got \"{}\"",
            escape(line)
        ))
    };
    let digits = line
        .strip_prefix(OK.as_bytes())
        .and_then(|l| l.strip_suffix(&[LINE_END]))
        .ok_or_else(bad)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    // ASCII digits are UTF-8; only overflow can fail.
    core::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// Bytes as printable ASCII (`\n`, `\xff`, ...), for error messages.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Listens for guest-initiated connections to one host port (see the
/// [module docs](self)).
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use vsock_transport::{Connection, Timeouts, hybrid};
///
/// let dir = tempfile::tempdir()?;
/// let uds = dir.path().join("vm.vsock");
/// let listener = hybrid::Listener::bind(&uds, 7000, Timeouts::default())?;
/// assert_eq!(listener.path(), hybrid::listener_path(&uds, 7000));
/// // The device connects there when the guest connects to host port 7000.
/// let mut device = UnixStream::connect(listener.path())?;
/// device.write_all(b"hi")?;
/// let mut conn = listener.accept()?;
/// let mut buf = [0; 2];
/// assert_eq!(conn.recv(&mut buf)?, 2);
/// assert_eq!(&buf, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    port: u32,
    timeouts: Timeouts,
    /// Device and inode of our socket file, to remove only our own on drop.
    id: (u64, u64),
}

impl Listener {
    /// Listens on `<uds_path>_<port>` ([`listener_path`]) with mode
    /// [`SOCKET_MODE`]. A stale socket file there is replaced; a live one
    /// (something accepts connections on it) or a file that is not a socket
    /// is an [`Error::Io`] (`AddrInUse` / `AlreadyExists`).
    pub fn bind(uds_path: &Path, port: u32, timeouts: Timeouts) -> Result<Self> {
        let path = listener_path(uds_path, port);
        let io_err = |e| Error::io(format!("listening on {}", path.display()), e);
        remove_stale(&path).map_err(io_err)?;
        let addr = SockAddr::unix(&path).map_err(io_err)?;
        let fd = sys::stream_socket(&addr, false).map_err(io_err)?;
        sys::bind(&fd, &addr).map_err(io_err)?;
        // From here on the file is ours: remove it again on failure.
        let setup = || -> io::Result<(u64, u64)> {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
            let meta = std::fs::symlink_metadata(&path)?;
            // Only now may anyone connect: the file is owner-only already.
            sys::listen(&fd)?;
            Ok((meta.dev(), meta.ino()))
        };
        let id = match setup() {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io_err(e));
            }
        };
        let listener = UnixListener::from(fd);
        let l = Self {
            listener,
            path,
            port,
            timeouts,
            id,
        };
        // Non-blocking, so that an accept after a spurious wake-up returns
        // instead of blocking past the deadline.
        l.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("listening on {}", l.path.display()), e))?;
        Ok(l)
    }

    /// The listening socket (non-blocking), for the async listener.
    #[cfg(feature = "tokio")]
    pub(crate) fn as_std(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket file: `<uds_path>_<port>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host port this listener serves.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for the guest to connect, at most [`Timeouts::accept`]
    /// ([`Error::Timeout`]`(`[`Step::Accept`]`)`).
    pub fn accept(&self) -> Result<HybridStream> {
        let io_err = |e| Error::io(format!("accepting on {}", self.path.display()), e);
        let deadline = Deadline::start(&self.timeouts, Step::Accept);
        loop {
            if !sys::wait(&self.listener, nix::poll::PollFlags::POLLIN, &deadline)
                .map_err(io_err)?
            {
                return Err(Error::Timeout(Step::Accept));
            }
            match self.listener.accept() {
                Ok((socket, _)) => {
                    socket.set_nonblocking(false).map_err(io_err)?;
                    return Ok(HostStream::new(
                        socket,
                        Peer::HybridAccepted {
                            socket_path: self.path.clone(),
                            port: self.port,
                        },
                        self.timeouts,
                    ));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the file only if it is still the one we bound.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file at `path` that nobody listens on any more.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; not replacing it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
