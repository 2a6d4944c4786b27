//! Socket set-up helpers shared by the backends, on `nix`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrLike, sockopt};

use crate::timeouts::Deadline;

/// A socket address in the form `connect(2)` and `bind(2)` take.
pub(crate) enum SockAddr {
    /// `AF_UNIX` with a path.
    #[cfg(feature = "host-hybrid")]
    Unix(socket::UnixAddr),
    /// `AF_VSOCK`.
    #[cfg(feature = "host-vsock")]
    Vsock(socket::VsockAddr),
}

/// Room for a path in `sockaddr_un` (`sun_path`, NUL included).
#[cfg(feature = "host-hybrid")]
const SUN_PATH_LEN: usize = 108;

impl SockAddr {
    /// The address of a filesystem Unix socket. Fails if the path does not
    /// fit `sun_path` (107 bytes and a terminating NUL) or contains a NUL.
    #[cfg(feature = "host-hybrid")]
    pub(crate) fn unix(path: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Unix socket path must be shorter than {SUN_PATH_LEN} bytes and contain \
                     no NUL: {}",
                    path.display()
                ),
            ));
        }
        Ok(Self::Unix(socket::UnixAddr::new(path)?))
    }

    /// An AF_VSOCK address.
    #[cfg(feature = "host-vsock")]
    pub(crate) fn vsock(cid: u32, port: u32) -> Self {
        Self::Vsock(socket::VsockAddr::new(cid, port))
    }

    fn family(&self) -> AddressFamily {
        match self {
            #[cfg(feature = "host-hybrid")]
            Self::Unix(_) => AddressFamily::Unix,
            #[cfg(feature = "host-vsock")]
            Self::Vsock(_) => AddressFamily::Vsock,
        }
    }

    fn as_sockaddr(&self) -> &dyn SockaddrLike {
        match self {
            #[cfg(feature = "host-hybrid")]
            Self::Unix(a) => a,
            #[cfg(feature = "host-vsock")]
            Self::Vsock(a) => a,
        }
    }
}

/// A new close-on-exec stream socket for `addr`'s family.
pub(crate) fn stream_socket(addr: &SockAddr, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    Ok(socket::socket(
        addr.family(),
        SockType::Stream,
        flags,
        None,
    )?)
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (level `AF_VSOCK`), the kernel's own
/// limit on an AF_VSOCK connect (2 s by default). Its old, `timeval`
/// form: `SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD` in
/// `include/uapi/linux/vm_sockets.h`; `libc` does not define it.
#[cfg(feature = "host-vsock")]
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// The kernel connect timeout used when ours is `None` (wait forever):
/// one day.
#[cfg(feature = "host-vsock")]
const VSOCK_CONNECT_FOREVER: Duration = Duration::from_secs(24 * 60 * 60);

/// Raises (or lowers) the kernel's AF_VSOCK connect timeout to
/// `timeout`, so that [`Timeouts::connect`](crate::Timeouts::connect)
/// is what limits a connect, not the kernel's 2 s default.
#[cfg(feature = "host-vsock")]
pub(crate) fn set_vsock_connect_timeout(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let t = timeout.unwrap_or(VSOCK_CONNECT_FOREVER);
    let tv = libc::timeval {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // Not through nix: it has no socket option for this (nor does libc
    // name the constant), and its option macro is private to it.
    // SAFETY: `tv` is a valid `timeval` for the duration of the call and
    // the length passed is its size, which is what the kernel reads for
    // this option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `bind(2)`.
#[cfg(feature = "host-hybrid")]
pub(crate) fn bind(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    Ok(socket::bind(fd.as_raw_fd(), addr.as_sockaddr())?)
}

/// `listen(2)` with the same backlog as the standard library (128).
#[cfg(feature = "host-hybrid")]
pub(crate) fn listen(fd: &OwnedFd) -> io::Result<()> {
    let backlog = socket::Backlog::new(128).map_err(io::Error::from)?;
    Ok(socket::listen(fd, backlog)?)
}

/// Why [`connect`] failed.
pub(crate) enum ConnectError {
    /// The deadline passed.
    Timeout,
    /// The OS said no.
    Os(io::Error),
}

/// Connects the non-blocking socket `fd` to `addr` by `deadline`.
///
/// Handles both ways a non-blocking connect can wait: `EINPROGRESS` (vsock;
/// wait for writability, then read `SO_ERROR`) and `EAGAIN` (a Unix
/// listener's backlog is full; retry every [`CONNECT_RETRY`]).
pub(crate) fn connect(
    fd: &OwnedFd,
    addr: &SockAddr,
    deadline: &Deadline,
) -> std::result::Result<(), ConnectError> {
    loop {
        match socket::connect(fd.as_raw_fd(), addr.as_sockaddr()) {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.remaining().map_err(|_| ConnectError::Timeout)?;
                std::thread::sleep(left.map_or(CONNECT_RETRY, |l| l.min(CONNECT_RETRY)));
                deadline.remaining().map_err(|_| ConnectError::Timeout)?;
            }
            Err(Errno::EINPROGRESS) => {
                if !wait(fd, PollFlags::POLLOUT, deadline).map_err(ConnectError::Os)? {
                    return Err(ConnectError::Timeout);
                }
                return match socket::getsockopt(fd, sockopt::SocketError) {
                    Ok(0) => Ok(()),
                    Ok(errno) => Err(ConnectError::Os(io::Error::from_raw_os_error(errno))),
                    Err(e) => Err(ConnectError::Os(e.into())),
                };
            }
            Err(e) => return Err(ConnectError::Os(e.into())),
        }
    }
}

/// How often [`connect`] retries while a Unix listener's backlog is full.
pub(crate) const CONNECT_RETRY: Duration = Duration::from_millis(5);

pub(crate) use super::wait;
