//! A Linux service VM's side: non-blocking AF_VSOCK connections as an
//! [`Endpoint`], so that [`serve_many`] serves them in one event loop, as
//! it serves the bare-metal guest's device (`guest::GuestVsock`).
//!
//! With svmc's handler (`svmc::server::Service`; a protocol of your own
//! takes your [`Handler`](crate::rpc::Handler), written as in the
//! [`rpc` module's example](crate::rpc#example)), and the boot connection
//! to the host as the readiness signal:
//!
//! ```no_run
//! use svmc::server::Service;
//! use svmc::{GuestInfo, ServiceVm};
//! use svmc_comm::{HOST_PORT, Protocol, SERVICE_PORT};
//! use vsock_transport::host_vsock::{self, CID_HOST};
//! use vsock_transport::linux_endpoint::LinuxEndpoint;
//! use vsock_transport::rpc::many::{self, ManyConfig};
//! use vsock_transport::rpc::{Budget, ServeConfig};
//! use vsock_transport::Timeouts;
//!
//! /// What `info` answers.
//! fn info() -> GuestInfo {
//!     GuestInfo {
//!         firmware: "my-linux-service".into(),
//!         firmware_version: env!("CARGO_PKG_VERSION").into(),
//!         protocol_version: ServiceVm::VERSION,
//!         arch: std::env::consts::ARCH.into(),
//!         max_body: svmc_comm::frame::DEFAULT_MAX_BODY,
//!         heap: None,
//!     }
//! }
//!
//! // Listen first: the host may connect as soon as it sees us.
//! let mut endpoint = LinuxEndpoint::bind(SERVICE_PORT)?;
//! let to_host = host_vsock::connect(CID_HOST, HOST_PORT, &Timeouts::default())?;
//! let boot = endpoint.add(to_host.into_inner())?;
//! let config = ManyConfig {
//!     serve: ServeConfig::default(),
//!     // What the firmware uses: 8 connections, idle ones give way after
//!     // 5 s when the table is full, a heap budget for large requests
//!     // shared by all (here a fixed 64 MiB; size it from the VM's memory).
//!     max_conns: 8,
//!     idle_timeout_us: 5_000_000,
//!     budget: Budget::new(64 << 20),
//! };
//! let mut service = Service::new(info);
//! many::serve_many::<ServiceVm, _, _>(&mut endpoint, Some(boot), &mut service, &config, |_| {})?;
//! # Ok::<(), vsock_transport::Error>(())
//! ```
//!
//! There is no device to poll: [`Endpoint::idle`] sleeps in `poll(2)` (at
//! most [`IDLE_POLL`]) until the listener or a connection is ready.
//! [`Endpoint::close`] shuts our side down and keeps the socket, for at
//! most [`CLOSE_WAIT`], until the peer closes its side too, so that our last
//! answer leaves the VM before the socket goes; [`Endpoint::reset`] closes
//! with `SO_LINGER` 0, which resets the connection.
//!
//! [`Endpoint::probe`] makes the kernel send a credit update: it grows the
//! connection's receive buffer by one byte (`SO_VM_SOCKETS_BUFFER_SIZE`;
//! Linux 5.5 and later send a credit update when it changes), up to
//! [`PROBE_BYTES`] times. vhost-device-vsock 0.3.0 then looks at a host
//! socket it lost track of, whose close the kernel reports (see the module
//! docs of `guest`, where the bare-metal side does the same).
//!
//! [`serve_many`]: crate::rpc::many::serve_many

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vsock::{VsockListener, VsockStream};

use crate::endpoint::{Endpoint, Recv};
use crate::host_vsock::{CID_ANY, CID_HOST};
use crate::{Error, Result};

/// Reads of 4 KiB a closing connection gets per [`Endpoint::tick`], at
/// most (what its peer still sends is dropped).
const TICK_READS: usize = 16;

/// How long a connection closed with [`Endpoint::close`] waits for the peer
/// to close its side too (so that our last answer, e.g. to a power-off
/// request, is out of the VM) before it is dropped.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long [`Endpoint::idle`] sleeps in `poll(2)` at most.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// The kernel's default receive buffer of a vsock connection (256 KiB),
/// which connections keep until probed.
pub const BUFFER: u64 = 256 * 1024;

/// How many probes a connection may have: each grows its receive buffer
/// by one byte beyond [`BUFFER`].
pub const PROBE_BYTES: u64 = 64 * 1024;

/// `setsockopt(2)` options of level `AF_VSOCK`
/// (`include/uapi/linux/vm_sockets.h`). Set through libc: nix names none
/// of them.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// A connection's handle in a [`LinuxEndpoint`]. Handles are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u32);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A served connection.
struct Conn {
    stream: VsockStream,
    /// The last read found nothing: wait for `POLLIN`. (A connection whose
    /// server takes no input now, e.g. while its answers wait, is not
    /// polled for input, so `poll(2)` does not wake for it in a loop.)
    want_read: bool,
    /// The last write was short: wait for `POLLOUT` too.
    want_write: bool,
    /// The receive buffer we last set (`SO_VM_SOCKETS_BUFFER_SIZE`); a
    /// probe grows it by one byte.
    buffer: u64,
}

/// Non-blocking AF_VSOCK connections for
/// [`serve_many`](crate::rpc::many::serve_many): a listener, the served
/// connections, and the closed ones that wait (bounded) for the peer's end
/// of the stream. See the [module docs](self).
pub struct LinuxEndpoint {
    listener: VsockListener,
    /// Only connections from this CID are accepted (others are closed at
    /// once); `None`: any.
    expected_cid: Option<u32>,
    conns: BTreeMap<ConnId, Conn>,
    closing: BTreeMap<ConnId, (VsockStream, Instant)>,
    next: u32,
    start: Instant,
    /// Connections refused for their CID: the first few are logged, then
    /// one in [`REFUSED_LOG_EVERY`] (a peer may open them in a loop).
    refused: u64,
}

/// See [`LinuxEndpoint`]'s `refused`.
const REFUSED_LOG_EVERY: u64 = 1000;

fn io_err(what: &str, e: io::Error) -> Error {
    Error::io(what.to_string(), e)
}

impl LinuxEndpoint {
    /// Listens on `port` of any local CID and accepts connections from
    /// the host (CID 2) only: a service VM's endpoint.
    pub fn bind(port: u32) -> Result<Self> {
        Self::bind_cid(CID_ANY, port, Some(CID_HOST))
    }

    /// Listens on `port` of local CID `cid` (`host_vsock::PORT_ANY` picks a
    /// free port, see [`LinuxEndpoint::port`]) and accepts connections
    /// from `expected_cid` only, or from anyone with `None`.
    pub fn bind_cid(cid: u32, port: u32, expected_cid: Option<u32>) -> Result<Self> {
        let what = format!("listening on vsock port {port}");
        let listener =
            VsockListener::bind_with_cid_port(cid, port).map_err(|e| io_err(&what, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err(&what, e))?;
        Ok(Self {
            listener,
            expected_cid,
            conns: BTreeMap::new(),
            closing: BTreeMap::new(),
            next: 0,
            start: Instant::now(),
            refused: 0,
        })
    }

    /// The port the endpoint listens on.
    pub fn port(&self) -> Result<u32> {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| io_err("reading the listener's address", e))
    }

    /// Serves `stream` too (e.g. a connection this VM made to the host, its
    /// readiness signal, passed to `serve_many` as the boot connection:
    /// `host_vsock::connect(CID_HOST, HOST_PORT, ..)?.into_inner()`, as in
    /// the [module's example](self)). It is made non-blocking.
    pub fn add(&mut self, stream: VsockStream) -> Result<ConnId> {
        stream
            .set_nonblocking(true)
            .map_err(|e| io_err("making a connection non-blocking", e))?;
        // Room for the probes to grow the buffer (never to shrink it: the
        // kernel drops what a peer sent beyond the buffer it was told of).
        if let Err(e) = set_vsock_u64(&stream, SO_VM_SOCKETS_BUFFER_MAX_SIZE, BUFFER + PROBE_BYTES)
        {
            tracing::warn!("vsock: raising the buffer limit: {e}");
        }
        let id = ConnId(self.next);
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                stream,
                want_read: true,
                want_write: false,
                buffer: BUFFER,
            },
        );
        Ok(id)
    }
}

/// What a non-blocking read's result means for [`Endpoint::recv`].
fn read_outcome(r: io::Result<usize>) -> Result<Recv> {
    match r {
        Ok(0) => Ok(Recv::Eof),
        Ok(n) => Ok(Recv::Data(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Recv::Empty)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(Error::Reset),
        Err(e) => Err(io_err("reading", e)),
    }
}

/// What a non-blocking write's result means for [`Endpoint::send_some`]:
/// bytes written, or `None` if the socket had no room.
fn write_outcome(r: io::Result<usize>) -> Result<Option<usize>> {
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(Error::Reset)
        }
        Err(e) => Err(io_err("writing", e)),
    }
}

impl Endpoint for LinuxEndpoint {
    type Id = ConnId;

    fn poll(&mut self) -> Result<bool> {
        // No device: readiness is waited for in `idle`.
        Ok(false)
    }

    fn accept(&mut self) -> Option<ConnId> {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) if self.expected_cid.is_none_or(|c| c == addr.cid()) => {
                    match self.add(stream) {
                        Ok(id) => return Some(id),
                        Err(e) => tracing::warn!("accepting: {e}"),
                    }
                }
                Ok((_, addr)) => {
                    self.refused += 1;
                    if self.refused <= 10 || self.refused.is_multiple_of(REFUSED_LOG_EVERY) {
                        tracing::warn!(
                            "refused a connection from CID {} ({} refused so far)",
                            addr.cid(),
                            self.refused
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accepting: {e}");
                    return None;
                }
            }
        }
    }

    fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<Recv> {
        let c = self.conns.get_mut(&id).ok_or(Error::ShutDown)?;
        let r = read_outcome(c.stream.read(buf));
        if matches!(r, Ok(Recv::Empty)) {
            c.want_read = true;
        }
        r
    }

    fn send_some(&mut self, id: ConnId, buf: &[u8]) -> Result<usize> {
        let c = self.conns.get_mut(&id).ok_or(Error::ShutDown)?;
        match write_outcome(c.stream.write(buf))? {
            Some(n) => {
                c.want_write = n < buf.len();
                Ok(n)
            }
            None => {
                c.want_write = true;
                Ok(0)
            }
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            // Our end of the stream; whatever was written still goes out.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            self.closing.insert(id, (c.stream, Instant::now()));
        }
    }

    fn reset(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            // SO_LINGER 0: the close resets the connection at once.
            if let Err(e) = set_linger(&c.stream, Duration::ZERO) {
                tracing::warn!("SO_LINGER: {e}");
            }
        }
        self.closing.remove(&id);
    }

    fn exists(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id) || self.closing.contains_key(&id)
    }

    fn tick(&mut self) {
        let mut sink = [0u8; 4096];
        self.closing.retain(|_, (stream, since)| {
            if since.elapsed() >= CLOSE_WAIT {
                return false;
            }
            // Drop what the peer still sends; its end of the stream (or an
            // error) means it is done. A few reads per tick at most: a
            // peer that keeps sending must not hold the event loop here.
            for _ in 0..TICK_READS {
                match stream.read(&mut sink) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// A credit update on `id`'s connection: the kernel sends one when the
    /// receive buffer size changes (Linux 5.5, "vsock/virtio: send a
    /// credit update when buffer size is changed"), so the buffer grows by
    /// one byte, up to [`PROBE_BYTES`] probes per connection. It makes
    /// vhost-device-vsock 0.3.0 look at a host socket it lost track of,
    /// whose close the kernel then reports.
    fn probe(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.buffer < BUFFER + PROBE_BYTES
        {
            c.buffer += 1;
            if let Err(e) = set_vsock_u64(&c.stream, SO_VM_SOCKETS_BUFFER_SIZE, c.buffer) {
                tracing::warn!("vsock {id}: probe: {e}");
            }
        }
    }

    /// The kernel knows at once when the host closed its side: poll(2)
    /// says `POLLRDHUP` (or `POLLHUP`) without waiting. Through libc, not
    /// nix: nix's `PollFd::revents` is `PollFlags::from_bits`, which is
    /// `None` whenever `POLLRDHUP` (a bit nix does not name) is set, so
    /// the close went unseen (hostile_host's burst_of_abrupt_closes failed).
    fn peer_closed(&self, id: ConnId) -> bool {
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let mut fd = libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one live pollfd that poll(2) only reads and writes, and
        // a timeout of 0 (no wait).
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Sleeps in `poll(2)` until the listener or a connection is ready, at
    /// most [`IDLE_POLL`]. (Through libc, as `peer_closed`: one array of
    /// pollfds built here, whose results are not read.)
    fn idle(&mut self) {
        let mut fds = vec![libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for c in self.conns.values_mut() {
            let mut events = 0;
            if std::mem::take(&mut c.want_read) {
                events |= libc::POLLIN;
            }
            if c.want_write {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        for (stream, _) in self.closing.values() {
            fds.push(libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = IDLE_POLL.as_millis() as libc::c_int;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs that
        // poll(2) only reads and writes within.
        let _ = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    }
}

/// Sets a `u64` option of level `AF_VSOCK` on `conn`.
fn set_vsock_u64(conn: &VsockStream, option: libc::c_int, value: u64) -> io::Result<()> {
    // SAFETY: a valid socket fd and a pointer to a u64 that lives for the
    // call, with its exact size (the type these options take).
    let r = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::AF_VSOCK,
            option,
            (&raw const value).cast(),
            size_of::<u64>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SO_LINGER` on, for `t` (0: a close resets the connection).
fn set_linger(conn: &VsockStream, t: Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: t.as_secs() as libc::c_int,
    };
    setsockopt(conn, Linger, &linger).map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
