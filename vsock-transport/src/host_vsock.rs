//! AF_VSOCK on the host, through the `vsock` crate: for VMMs whose vsock
//! device is backed by the kernel (`vhost_vsock`: QEMU `vhost-vsock-pci`,
//! crosvm, Cloud Hypervisor with vhost-vsock), and inside a Linux guest.
//!
//! - [`Listener`]: listens on a port and accepts the guest's connection,
//!   checking that it comes from the expected CID ([`Error::UnexpectedPeer`]
//!   otherwise), within [`Timeouts::accept`].
//! - [`connect`]: connects to a guest CID and port within
//!   [`Timeouts::connect`]; a guest that does not listen on the port
//!   (`ECONNREFUSED`, or `ECONNRESET` as virtio-vsock reports it) is
//!   [`Error::Refused`].
//!
//! Both give a [`HostStream`], the same connection type as hybrid vsock.
//!
//! Without a vsock transport in the kernel (no `vhost_vsock`,
//! `vsock_loopback` or `vmw_vsock_virtio_transport`), sockets can often
//! still be created but binding a CID or connecting fails with
//! `EADDRNOTAVAIL`, `ENODEV` or `EAFNOSUPPORT`; those come back as
//! [`Error::Io`] saying so, and [`is_unavailable`] recognises them.
//!
//! ```no_run
//! use vsock_transport::comm::frame::DEFAULT_MAX_BODY;
//! use svmc::{Request, ServiceVm};
//! use svmc_comm::{HOST_PORT, SERVICE_PORT};
//! use vsock_transport::host_vsock::{self, Listener};
//! use vsock_transport::rpc::Client;
//! use vsock_transport::Timeouts;
//!
//! // Host to guest: the guest with CID 3 serves on its service port.
//! let conn = host_vsock::connect(3, SERVICE_PORT, &Timeouts::default())?;
//! let mut client = Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY)?;
//! println!("{:?}", client.call(&Request::Info)?);
//! client.close()?;
//!
//! // Guest to host: wait for CID 3 to connect to our port.
//! let listener = Listener::bind(HOST_PORT, Some(3), Timeouts::default())?;
//! let from_guest = listener.accept()?;
//! # drop(from_guest);
//! # Ok::<(), vsock_transport::Error>(())
//! ```

use std::io;

use vsock::{VsockAddr, VsockListener, VsockStream};

use crate::host_stream::sys::{self, ConnectError, SockAddr};
use crate::host_stream::{HostStream, Peer};
use crate::timeouts::Deadline;
use crate::{Error, Result, Step, Timeouts};

/// Bind to any local CID (`VMADDR_CID_ANY`, `include/uapi/linux/vm_sockets.h`).
pub const CID_ANY: u32 = libc::VMADDR_CID_ANY;
/// The hypervisor's CID, 0 (`VMADDR_CID_HYPERVISOR`).
pub const CID_HYPERVISOR: u32 = libc::VMADDR_CID_HYPERVISOR;
/// Local loopback, 1 (`VMADDR_CID_LOCAL`, needs the `vsock_loopback` module).
pub const CID_LOCAL: u32 = libc::VMADDR_CID_LOCAL;
/// The host as seen from a guest, 2 (`VMADDR_CID_HOST`).
pub const CID_HOST: u32 = libc::VMADDR_CID_HOST;
/// Let the kernel pick a free port (`VMADDR_PORT_ANY`).
pub const PORT_ANY: u32 = libc::VMADDR_PORT_ANY;

/// A connection over AF_VSOCK.
pub type VsockHostStream = HostStream<VsockStream>;

/// What the kernel says when no vsock transport can carry the address.
const UNAVAILABLE_ERRNOS: [i32; 4] = [
    libc::EAFNOSUPPORT,
    libc::EADDRNOTAVAIL,
    libc::ENODEV,
    libc::ESOCKTNOSUPPORT,
];

/// Whether `e` says that AF_VSOCK (or the vsock transport for the address)
/// is not available on this machine, as opposed to a peer's failure.
pub fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.raw_os_error().is_some_and(|n| UNAVAILABLE_ERRNOS.contains(&n)))
}

/// Context for an OS error, with a hint when AF_VSOCK is unavailable.
pub(crate) fn io_error(what: String, e: io::Error) -> Error {
    if e.raw_os_error()
        .is_some_and(|n| UNAVAILABLE_ERRNOS.contains(&n))
    {
        Error::io(
            format!(
                "{what}: AF_VSOCK is not available for this address \
                 (no vhost_vsock / vsock_loopback / virtio vsock transport loaded?)"
            ),
            e,
        )
    } else {
        Error::io(what, e)
    }
}

/// Listens for guest-initiated AF_VSOCK connections on one port.
#[derive(Debug)]
pub struct Listener {
    listener: VsockListener,
    cid: u32,
    port: u32,
    expected_cid: Option<u32>,
    timeouts: Timeouts,
}

impl Listener {
    /// Listens on `port` of any local CID ([`CID_ANY`]); accepts only peers
    /// with CID `expected_cid` (`None`: any peer).
    pub fn bind(port: u32, expected_cid: Option<u32>, timeouts: Timeouts) -> Result<Self> {
        Self::bind_cid(CID_ANY, port, expected_cid, timeouts)
    }

    /// Listens on `cid:port` (e.g. [`CID_LOCAL`] for loopback tests;
    /// [`PORT_ANY`] picks a free port, see [`Listener::port`]).
    pub fn bind_cid(
        cid: u32,
        port: u32,
        expected_cid: Option<u32>,
        timeouts: Timeouts,
    ) -> Result<Self> {
        let what = || match port {
            PORT_ANY => format!("listening on vsock CID {cid}, any port"),
            _ => format!("listening on vsock CID {cid} port {port}"),
        };
        let listener =
            VsockListener::bind(&VsockAddr::new(cid, port)).map_err(|e| io_error(what(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| io_error(what(), e))?
            .port();
        // Non-blocking, so that an accept after a spurious wake-up returns
        // instead of blocking past the deadline.
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error(what(), e))?;
        Ok(Self {
            listener,
            cid,
            port,
            expected_cid,
            timeouts,
        })
    }

    /// The port listened on (the kernel's choice after [`PORT_ANY`]).
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for a peer to connect, at most [`Timeouts::accept`]. A peer
    /// with another CID than expected is disconnected and reported as
    /// [`Error::UnexpectedPeer`]; the listener stays usable.
    pub fn accept(&self) -> Result<VsockHostStream> {
        let what = || format!("accepting on vsock CID {} port {}", self.cid, self.port);
        let deadline = Deadline::start(&self.timeouts, Step::Accept);
        loop {
            if !sys::wait(&self.listener, nix::poll::PollFlags::POLLIN, &deadline)
                .map_err(|e| io_error(what(), e))?
            {
                return Err(Error::Timeout(Step::Accept));
            }
            match self.listener.accept() {
                Ok((socket, addr)) => {
                    if let Some(expected) = self.expected_cid
                        && addr.cid() != expected
                    {
                        return Err(Error::UnexpectedPeer {
                            expected,
                            got: addr.cid(),
                        });
                    }
                    socket
                        .set_nonblocking(false)
                        .map_err(|e| io_error(what(), e))?;
                    return Ok(HostStream::new(
                        socket,
                        Peer::Vsock {
                            cid: addr.cid(),
                            port: addr.port(),
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
                Err(e) => return Err(io_error(what(), e)),
            }
        }
    }
}

/// Connects to `cid:port` within [`Timeouts::connect`].
///
/// Nobody listening (`ECONNREFUSED`, `ECONNRESET`) is [`Error::Refused`].
/// The kernel's own connect timeout is set to ours first
/// (`SO_VM_SOCKETS_CONNECT_TIMEOUT`); either running out (our poll, or
/// `ETIMEDOUT`) is [`Error::Timeout`]`(`[`Step::Connect`]`)`.
pub fn connect(cid: u32, port: u32, timeouts: &Timeouts) -> Result<VsockHostStream> {
    let what = || format!("connecting to vsock CID {cid} port {port}");
    let addr = SockAddr::vsock(cid, port);
    let fd = sys::stream_socket(&addr, true).map_err(|e| io_error(what(), e))?;
    // Best effort: without it the kernel gives up after 2 s, which is
    // reported as a timeout too.
    let _ = sys::set_vsock_connect_timeout(&fd, timeouts.connect);
    let deadline = Deadline::start(timeouts, Step::Connect);
    sys::connect(&fd, &addr, &deadline).map_err(|e| match e {
        ConnectError::Timeout => Error::Timeout(Step::Connect),
        ConnectError::Os(e) => map_connect_error(what(), port, e),
    })?;
    let socket = VsockStream::from(fd);
    socket
        .set_nonblocking(false)
        .map_err(|e| io_error(what(), e))?;
    Ok(HostStream::new(
        socket,
        Peer::Vsock { cid, port },
        *timeouts,
    ))
}

/// The error for a failed AF_VSOCK connect.
pub(crate) fn map_connect_error(what: String, port: u32, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::ECONNRESET) => Error::Refused { port },
        Some(libc::ETIMEDOUT) => Error::Timeout(Step::Connect),
        _ => io_error(what, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_typed() {
        let m = |errno| map_connect_error("x".into(), 7, io::Error::from_raw_os_error(errno));
        assert!(matches!(m(libc::ECONNREFUSED), Error::Refused { port: 7 }));
        assert!(matches!(m(libc::ECONNRESET), Error::Refused { port: 7 }));
        assert!(matches!(m(libc::ETIMEDOUT), Error::Timeout(Step::Connect)));
        let e = m(libc::ENODEV);
        assert!(is_unavailable(&e), "{e}");
        assert!(e.to_string().contains("AF_VSOCK is not available"), "{e}");
        assert!(!is_unavailable(&m(libc::EACCES)));
    }

    #[test]
    fn kernel_connect_timeout_is_accepted() {
        let Ok(fd) = sys::stream_socket(&SockAddr::vsock(CID_LOCAL, 1), true) else {
            return; // No AF_VSOCK sockets at all.
        };
        sys::set_vsock_connect_timeout(&fd, Some(std::time::Duration::from_millis(1500))).unwrap();
        sys::set_vsock_connect_timeout(&fd, None).unwrap();
    }
}
