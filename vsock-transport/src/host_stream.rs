//! The one [`Connection`] that both host backends hand out: [`HostStream`],
//! a connected socket with per-frame deadlines.
//!
//! # Deadlines
//!
//! [`Connection::begin`] starts one [`Deadline`] for a whole frame (or for
//! the hybrid handshake): [`Timeouts::read`] for [`Step::Read`],
//! [`Timeouts::write`] for [`Step::Write`], and so on. Before every `recv(2)`
//! or `send(2)` the socket's `SO_RCVTIMEO` / `SO_SNDTIMEO` is checked
//! against the time left, so a peer that trickles one byte per second runs
//! into the deadline of the frame, not a fresh timeout per byte. To keep
//! `setsockopt(2)` out of the hot path, the timeout last set is cached and
//! only changed when it would overshoot the deadline by more than
//! [`TIMEOUT_SLACK`] (or is less than half the time left, which would cost
//! spurious wake-ups). A socket timeout that fires while time is left is
//! simply re-armed, so an early wake-up never fails a frame.
//!
//! Until the first `begin`, each `send`/`recv` call gets a fresh
//! [`Timeouts::write`]/[`Timeouts::read`] deadline of its own; after it, the
//! deadline of the last `begin` holds for every call until the next one.
//!
//! # Errors
//!
//! | what happened                               | error                       |
//! |---------------------------------------------|-----------------------------|
//! | the deadline passed                         | [`Error::Timeout`]`(step)`  |
//! | `ECONNRESET`                                | [`Error::Reset`]            |
//! | `EPIPE` before any byte of a `send`         | [`Error::Closed`]           |
//! | `EPIPE` after part of a `send` went out     | [`Error::Reset`]            |
//! | used after [`Connection::shutdown`]         | [`Error::ShutDown`]         |
//! | any other OS error                          | [`Error::Io`], with context |
//!
//! Writes go through `send(2)` with `MSG_NOSIGNAL`, so a closed peer is an
//! error and never a `SIGPIPE`, even in programs that do not ignore it.
//!
//! The crate-private `sys` module at the end (socket creation, connect and
//! accept with deadlines, `sockaddr` construction) is shared by the backends.
//! Its system calls go through `nix`; its one `unsafe` block (a socket
//! option `nix` does not know) says why next to it, as does the one in
//! [`HostStream`]'s `wait` (borrowing the socket's descriptor for
//! `poll(2)`).

use std::fmt;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::timeouts::Deadline;
use crate::{Connection, Error, Result, Step, Timeouts};

/// How far a socket timeout may reach past the frame's deadline before it is
/// re-armed with `setsockopt(2)`. This is how late a timeout can be reported
/// (plus scheduling delay); in exchange a large frame costs a
/// `setsockopt(2)` at most every 5 ms of transfer time instead of one per
/// `recv(2)`.
pub const TIMEOUT_SLACK: Duration = Duration::from_millis(5);

/// A connected stream socket that [`HostStream`] can drive.
///
/// Reads go through [`Read`]; writes go through `send(2)` on
/// [`AsRawFd::as_raw_fd`] with `MSG_NOSIGNAL`. Implemented for
/// [`UnixStream`] and, with `host-vsock`, `vsock::VsockStream`.
pub trait Socket: Read + AsRawFd {
    /// Sets `SO_RCVTIMEO` (`None`: block forever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Sets `SO_SNDTIMEO` (`None`: block forever).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Sets or clears `O_NONBLOCK`.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// `shutdown(2)`.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Socket for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, nonblocking)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

#[cfg(feature = "host-vsock")]
impl Socket for vsock::VsockStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        vsock::VsockStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        vsock::VsockStream::set_write_timeout(self, timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        vsock::VsockStream::set_nonblocking(self, nonblocking)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        vsock::VsockStream::shutdown(self, how)
    }
}

/// Who is on the other end of a [`HostStream`]; named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A host-initiated hybrid vsock connection: we connected to the
    /// device's `uds_path`, sent `CONNECT <port>` and got `OK <ok_port>`.
    HybridConnected {
        /// The device's Unix socket.
        uds_path: PathBuf,
        /// The guest port we asked for.
        port: u32,
        /// The number in the device's `OK` reply. Informational:
        /// vhost-device-vsock sends the guest port, Firecracker the
        /// host-side port it assigned.
        ok_port: u32,
    },
    /// A guest-initiated hybrid vsock connection, accepted on the Unix
    /// socket `<uds_path>_<port>`.
    HybridAccepted {
        /// The socket we listen on.
        socket_path: PathBuf,
        /// The host port the guest connected to.
        port: u32,
    },
    /// An AF_VSOCK peer.
    Vsock {
        /// The peer's context id.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
    /// Anything else (a socket pair in a test, ...), in words.
    Other(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HybridConnected {
                uds_path,
                port,
                ok_port,
            } => write!(
                f,
                "guest port {port} via hybrid vsock {} (OK {ok_port})",
                uds_path.display()
            ),
            Self::HybridAccepted { socket_path, port } => write!(
                f,
                "guest connection to host port {port} on {}",
                socket_path.display()
            ),
            Self::Vsock { cid, port } => write!(f, "vsock CID {cid} port {port}"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Which socket timeout an operation uses.
#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// A connected host socket with per-frame deadlines: the [`Connection`] of
/// both host backends (see the [module docs](self)).
#[derive(Debug)]
pub struct HostStream<S: Socket> {
    socket: S,
    peer: Peer,
    timeouts: Timeouts,
    /// The deadline of the last [`Connection::begin`], if any.
    deadline: Option<Deadline>,
    /// `SO_RCVTIMEO` as last set (`None`: unknown, `Some(None)`: forever).
    read_timeout: Option<Option<Duration>>,
    /// `SO_SNDTIMEO` as last set.
    write_timeout: Option<Option<Duration>>,
    shut_down: bool,
}

impl<S: Socket> HostStream<S> {
    /// Wraps a connected, blocking socket. Its socket timeouts are
    /// overwritten as needed.
    pub fn new(socket: S, peer: Peer, timeouts: Timeouts) -> Self {
        Self {
            socket,
            peer,
            timeouts,
            deadline: None,
            read_timeout: None,
            write_timeout: None,
            shut_down: false,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Changes the timeouts; applies from the next [`Connection::begin`].
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// Gives the socket back.
    pub fn into_inner(self) -> S {
        self.socket
    }

    /// Checks the deadline and makes the socket timeout for `dir` end no
    /// later than [`TIMEOUT_SLACK`] after it.
    fn arm(&mut self, dir: Dir) -> Result<()> {
        let deadline = match self.deadline {
            Some(d) => d,
            None => {
                let step = match dir {
                    Dir::Read => Step::Read,
                    Dir::Write => Step::Write,
                };
                Deadline::start(&self.timeouts, step)
            }
        };
        let left = deadline.remaining()?;
        let current = match dir {
            Dir::Read => &mut self.read_timeout,
            Dir::Write => &mut self.write_timeout,
        };
        let keep = match (*current, left) {
            (Some(None), None) => true,
            (Some(Some(set)), Some(left)) => set <= left + TIMEOUT_SLACK && set >= left / 2,
            _ => false,
        };
        if !keep {
            let r = match dir {
                Dir::Read => self.socket.set_read_timeout(left),
                Dir::Write => self.socket.set_write_timeout(left),
            };
            if let Err(e) = r {
                *current = None;
                return Err(Error::io(
                    format!("setting the socket timeout for {}", self.peer),
                    e,
                ));
            }
            *current = Some(left);
        }
        Ok(())
    }

    fn step(&self, dir: Dir) -> Step {
        match (self.deadline, dir) {
            (Some(d), _) => d.step(),
            (None, Dir::Read) => Step::Read,
            (None, Dir::Write) => Step::Write,
        }
    }
}

impl<S: Socket> HostStream<S> {
    /// What a failed send means: `None` to try again (an interrupt, or a
    /// socket timeout that `arm` checks against the deadline), else the
    /// error. `sent` bytes of the frame went out before it.
    fn send_error(&self, e: io::Error, sent: usize) -> Option<Error> {
        match e.kind() {
            io::ErrorKind::Interrupted => None,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => None,
            io::ErrorKind::ConnectionReset => Some(Error::Reset),
            io::ErrorKind::BrokenPipe if sent == 0 => Some(Error::Closed),
            io::ErrorKind::BrokenPipe => Some(Error::Reset),
            _ => {
                let step = self.step(Dir::Write);
                Some(Error::io(format!("{step}: sending to {}", self.peer), e))
            }
        }
    }
}

impl<S: Socket> Connection for HostStream<S> {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        let fd = self.socket.as_raw_fd();
        let mut sent = 0;
        while sent < buf.len() {
            self.arm(Dir::Write)?;
            match send_nosignal(fd, &buf[sent..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => sent += n,
                Err(e) => {
                    if let Some(e) = self.send_error(e, sent) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// One `sendmsg` for all of `bufs` (again for what is left after a
    /// short write).
    fn send_vectored(&mut self, bufs: &[&[u8]]) -> Result<()> {
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        let fd = self.socket.as_raw_fd();
        let mut slices: Vec<io::IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| io::IoSlice::new(b))
            .collect();
        let mut left = &mut slices[..];
        let mut sent = 0;
        while !left.is_empty() {
            self.arm(Dir::Write)?;
            match sendmsg_nosignal(fd, left) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => {
                    sent += n;
                    io::IoSlice::advance_slices(&mut left, n);
                }
                Err(e) => {
                    if let Some(e) = self.send_error(e, sent) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            self.arm(Dir::Read)?;
            match self.socket.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut => {}
                    io::ErrorKind::ConnectionReset => return Err(Error::Reset),
                    _ => {
                        let step = self.step(Dir::Read);
                        return Err(Error::io(
                            format!("{step}: receiving from {}", self.peer),
                            e,
                        ));
                    }
                },
            }
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        match self.socket.shutdown(Shutdown::Both) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(Error::io(format!("shutting down {}", self.peer), e)),
        }
    }

    fn begin(&mut self, step: Step) {
        self.deadline = Some(Deadline::start(&self.timeouts, step));
    }

    fn read_timeout(&self) -> Option<core::time::Duration> {
        self.timeouts.read
    }

    fn try_send(&mut self, buf: &[u8]) -> Result<Option<usize>> {
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if buf.is_empty() {
            return Ok(Some(0));
        }
        loop {
            match send_nosignal_nowait(self.socket.as_raw_fd(), buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
                Err(e) => {
                    if let Some(e) = self.send_error(e, 0) {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn wait(&mut self, read: bool) -> Result<()> {
        use nix::poll::PollFlags;
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        let deadline = self
            .deadline
            .unwrap_or_else(|| Deadline::start(&self.timeouts, Step::Write));
        let events = if read {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLOUT
        };
        // SAFETY: the descriptor belongs to `self.socket`, which outlives
        // this borrow (it is only used for the `poll(2)` below).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.socket.as_raw_fd()) };
        match wait(&fd, events, &deadline) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Timeout(deadline.step())),
            Err(e) => Err(Error::io(format!("waiting for {}", self.peer), e)),
        }
    }

    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        use nix::sys::socket::{MsgFlags, recv};
        if self.shut_down || buf.is_empty() {
            return Ok(None);
        }
        match recv(self.socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => Ok(Some(n)),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(None),
            Err(nix::errno::Errno::ECONNRESET) => Err(Error::Reset),
            Err(e) => Err(Error::io(
                format!("reading ahead from {}", self.peer),
                io::Error::from(e),
            )),
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL | MSG_DONTWAIT`.
fn send_nosignal_nowait(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, send};
    Ok(send(
        fd,
        buf,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )?)
}

/// `send(2)` with `MSG_NOSIGNAL`: a closed peer is `EPIPE`, never `SIGPIPE`.
fn send_nosignal(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, send};
    Ok(send(fd, buf, MsgFlags::MSG_NOSIGNAL)?)
}

/// `sendmsg(2)` of `bufs` without `SIGPIPE`.
fn sendmsg_nosignal(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, UnixAddr, sendmsg};
    Ok(sendmsg::<UnixAddr>(
        fd,
        bufs,
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`); `false` if
/// `deadline` passed first. Hang-ups and errors count as ready, so the next
/// system call reports them.
pub(crate) fn wait(
    fd: &impl std::os::fd::AsFd,
    events: nix::poll::PollFlags,
    deadline: &Deadline,
) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::poll::{PollFd, PollTimeout, poll};
    loop {
        let Ok(left) = deadline.remaining() else {
            return Ok(false);
        };
        let timeout = match left {
            None => PollTimeout::NONE,
            // Round up so that a wait never ends before the deadline.
            Some(l) => {
                PollTimeout::try_from(l.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(any(feature = "host-hybrid", feature = "host-vsock"))]
pub(crate) mod sys;
