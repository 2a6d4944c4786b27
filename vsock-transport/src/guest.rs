//! Guest backend: [`Connection`] over virtio-drivers' `VsockConnectionManager`
//! (`no_std`), for any virtio [`Hal`] and [`Transport`].
//!
//! # A short primer on virtio-vsock streams
//!
//! (virtio spec 1.2, section 5.10 "Socket Device"; Linux
//! `include/uapi/linux/virtio_vsock.h`.) A connection is named by the two
//! (CID, port) pairs. The host is CID 2 (`VMADDR_CID_HOST`). Set-up is
//! `REQUEST` → `RESPONSE` (accepted) or `RST` (nobody listens: refused). Data
//! travels in `RW` packets. A side that is done sends `SHUTDOWN` (with
//! "no more sends" / "no more receives" flags) and the other side answers
//! with `RST`, which also ends the connection at once when sent unprompted.
//!
//! Flow control is credit based. Every packet header carries the sender's
//! `buf_alloc` (bytes of receive buffer it has for this connection) and
//! `fwd_cnt` (bytes it has consumed so far). The sender of data counts what
//! it sent (`tx_cnt`) and may only send what the peer has room for:
//!
//! ```text
//! peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt)      (all u32, wrapping)
//! ```
//!
//! Two consequences shape this module:
//!
//! - **Sending.** virtio-drivers' `send()` never splits a buffer: unless the
//!   whole buffer fits `peer_free` it fails with
//!   `InsufficientBufferSpaceInPeer` (and asks the peer for a credit
//!   update). [`GuestConnection::send`] therefore cuts writes into chunks of
//!   at most `peer_free` bytes (tracked here from the events it sees) and at
//!   most [`MAX_PACKET`], and on that error polls the device and retries.
//! - **Receiving.** The peer learns our `fwd_cnt` only from packets we send.
//!   virtio-drivers' `recv()` sends none, so a receiver that only reads
//!   would stall the sender once the buffer's worth is consumed (AOSP bug
//!   b/292080257). [`GuestConnection::recv`] sends a credit update after
//!   consuming data, at the latest when a quarter of the buffer has been
//!   consumed unannounced; so the sender always sees at least three
//!   quarters of the buffer free once we have drained it.
//!
//! Our own buffer is the manager's per-connection ring, and the `buf_alloc`
//! we advertise is exactly its size ([`CONNECTION_BUFFER_SIZE`] unless set
//! otherwise), so a peer that honours credit can never overflow it (which
//! would lose data: `poll()` fails with `OutputBufferTooShort`).
//!
//! # Connections in sequence
//!
//! [`GuestVsock`] owns the device. It is polled only through
//! [`GuestVsock::poll`], which records every event: a connection request on
//! a listening port (the manager accepts it at once) goes into a backlog
//! that [`GuestVsock::accept`] hands out in order; data for any connection
//! waits in the manager's ring; a close is remembered per connection. So
//! events for other connections that arrive while one is served are never
//! lost. A [`GuestConnection`] borrows the [`GuestVsock`] mutably: one
//! connection is served at a time.
//!
//! # Bounded waits
//!
//! Two waits have no natural end: the answer to our `REQUEST` (a peer that
//! neither accepts nor refuses: vhost-device-vsock 0.3.0 never sends the
//! `RST` for a refused guest connection, its `enq_rst` is a TODO) and the
//! peer's `RST` after our `SHUTDOWN`. Both are bounded by [`Limits`],
//! measured with the clock given to [`GuestVsock::set_clock`]; without one,
//! a microsecond is counted per poll of the device.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::hint::spin_loop;

use log::{debug, trace, warn};
use virtio_drivers::Hal;
use virtio_drivers::device::socket::{
    DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEvent,
    VsockEventType,
};
use virtio_drivers::transport::Transport;

use crate::{Connection, Error, Result, Step};

/// Size of each buffer in the device's RX virtqueue: the largest packet the
/// device can deliver in one go. virtio-drivers' default of 512 bytes made a
/// 1 MiB round trip about 16 times slower; 64 KiB (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`, so the largest packet a device sends)
/// gives four times fewer packets, and so device round trips, than 16 KiB.
/// The queue holds 8 of them: 512 KiB of heap.
pub const RX_BUFFER_SIZE: usize = 64 * 1024;

/// Default per-connection receive buffer (the `buf_alloc` we advertise).
pub const CONNECTION_BUFFER_SIZE: u32 = 256 * 1024;

/// Largest `RW` packet body we send: Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`
/// (64 KiB), which device back-ends also assume.
pub const MAX_PACKET: usize = 64 * 1024;

/// Bounds on the waits that have no natural end, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long [`GuestVsock::connect`] waits for `RESPONSE` or `RST`
    /// before it gives up with [`Error::Timeout`]`(`[`Step::Connect`]`)`.
    pub connect_us: u64,
    /// How long [`GuestConnection::shutdown`] waits for the peer's `RST`
    /// before it resets the connection itself.
    pub shutdown_us: u64,
    /// How long a connection may go without receiving anything while
    /// another connection waits to be served, before it is reset and
    /// reported closed. Connections are served one at a time, and
    /// vhost-device-vsock 0.3.0 does not tell the guest when the host side of
    /// a connection fails (it sends a packet with operation 0, which
    /// virtio-drivers rejects without saying which connection it was for,
    /// instead of `RST`), so without this a dead connection would block every
    /// later one forever.
    pub idle_yield_us: u64,
}

impl Default for Limits {
    /// 200 ms to connect (the host answers within a few milliseconds even
    /// under emulation), 100 ms for the shutdown handshake, 2 s of silence
    /// before an idle connection yields to a waiting one.
    fn default() -> Self {
        Self {
            connect_us: 200_000,
            shutdown_us: 100_000,
            idle_yield_us: 2_000_000,
        }
    }
}

/// A monotonic clock in microseconds (any origin).
pub type Clock = fn() -> u64;

/// The connection manager as configured here.
pub type Manager<H, T> = VsockConnectionManager<H, T, RX_BUFFER_SIZE>;

/// The host's CID.
pub const HOST_CID: u64 = 2;

fn virtio(e: impl Into<virtio_drivers::Error>) -> Error {
    Error::Virtio(e.into())
}

fn is_socket_error(e: &virtio_drivers::Error, want: SocketError) -> bool {
    matches!(e, virtio_drivers::Error::SocketDeviceError(s) if *s == want)
}

/// A connection's name on our side: the peer's address and our port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    peer: VsockAddr,
    local_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// We sent `REQUEST` and wait for `RESPONSE` or `RST`.
    Connecting,
    /// Data may flow.
    Connected,
    /// The peer sent `SHUTDOWN` or `RST`.
    PeerClosed(DisconnectReason),
}

/// What we track per connection, beside the manager's own state.
#[derive(Debug)]
struct ConnState {
    key: Key,
    phase: Phase,
    /// The peer's last `buf_alloc`.
    peer_buf_alloc: u32,
    /// The peer's last `fwd_cnt`.
    peer_fwd_cnt: u32,
    /// Body bytes we have sent.
    tx_cnt: u32,
    /// Body bytes consumed since our `fwd_cnt` last went to the peer.
    unannounced: u32,
}

impl ConnState {
    fn new(key: Key, phase: Phase) -> Self {
        Self {
            key,
            phase,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            unannounced: 0,
        }
    }

    /// `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, as far as we have seen.
    /// It can only be lower than the driver's own figure (it sees a few
    /// events we do not), never higher.
    fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// The guest's vsock device: listening ports, a backlog of accepted
/// connections, and outgoing connections.
pub struct GuestVsock<H: Hal, T: Transport> {
    manager: Manager<H, T>,
    conns: Vec<ConnState>,
    backlog: VecDeque<Key>,
    buffer_size: u32,
    limits: Limits,
    clock: Option<Clock>,
    /// Polls so far: the time base when there is no clock.
    polls: u64,
}

impl<H: Hal, T: Transport> GuestVsock<H, T> {
    /// Initialises the virtio socket device behind `transport`, with
    /// [`CONNECTION_BUFFER_SIZE`] bytes of receive buffer per connection.
    pub fn new(transport: T) -> Result<Self> {
        Self::with_buffer_size(transport, CONNECTION_BUFFER_SIZE)
    }

    /// [`GuestVsock::new`] with `buffer_size` bytes of receive buffer per
    /// connection (at least [`RX_BUFFER_SIZE`], so that one full RX buffer
    /// always fits once the ring is drained).
    pub fn with_buffer_size(transport: T, buffer_size: u32) -> Result<Self> {
        let buffer_size = buffer_size.max(RX_BUFFER_SIZE as u32);
        let driver = VirtIOSocket::<H, T, RX_BUFFER_SIZE>::new(transport).map_err(virtio)?;
        Ok(Self {
            manager: VsockConnectionManager::new_with_capacity(driver, buffer_size),
            conns: Vec::new(),
            backlog: VecDeque::new(),
            buffer_size,
            limits: Limits::default(),
            clock: None,
            polls: 0,
        })
    }

    /// Sets the bounds on connect and shutdown waits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Measures [`Limits`] with `clock` instead of counting polls.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = Some(clock);
    }

    /// Microseconds by the clock, or polls without one.
    fn now(&self) -> u64 {
        self.clock.map_or(self.polls, |clock| clock())
    }

    /// The CID the device was given.
    pub fn guest_cid(&self) -> u64 {
        self.manager.guest_cid()
    }

    /// Per-connection receive buffer size (the `buf_alloc` we advertise).
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }

    /// Accepts connections on `port` from now on. They queue up until
    /// [`GuestVsock::accept`] takes them.
    pub fn listen(&mut self, port: u32) {
        self.manager.listen(port);
    }

    /// Connects from our `local_port` to `peer` and waits for the answer.
    /// A `RST` answer (nobody listens there) is [`Error::Refused`]; no
    /// answer within [`Limits::connect_us`] is
    /// [`Error::Timeout`]`(`[`Step::Connect`]`)`, and the request is reset.
    pub fn connect(
        &mut self,
        peer: VsockAddr,
        local_port: u32,
    ) -> Result<GuestConnection<'_, H, T>> {
        let key = Key { peer, local_port };
        if self.state(key).is_some() {
            return Err(virtio(SocketError::ConnectionExists));
        }
        self.manager.connect(peer, local_port).map_err(virtio)?;
        self.conns.push(ConnState::new(key, Phase::Connecting));
        let start = self.now();
        loop {
            match self.state(key).map(|s| s.phase) {
                Some(Phase::Connected) => break,
                Some(Phase::Connecting) if self.now() - start >= self.limits.connect_us => {
                    let r = self.manager.force_close(peer, local_port);
                    self.forget(key);
                    r.map_err(virtio)?;
                    return Err(Error::Timeout(Step::Connect));
                }
                Some(Phase::Connecting) => self.poll_or_spin()?,
                Some(Phase::PeerClosed(_)) | None => {
                    self.forget(key);
                    return Err(Error::Refused { port: peer.port });
                }
            }
        }
        debug!(
            "vsock: connected to {}:{} from port {local_port}",
            peer.cid, peer.port
        );
        Ok(GuestConnection::new(self, key))
    }

    /// Waits for the next connection on a listening port. Connections that
    /// arrived earlier (also while another one was served) come first.
    pub fn accept(&mut self) -> Result<GuestConnection<'_, H, T>> {
        loop {
            if let Some(key) = self.backlog.pop_front() {
                debug!(
                    "vsock: accepted {}:{} on port {}",
                    key.peer.cid, key.peer.port, key.local_port
                );
                return Ok(GuestConnection::new(self, key));
            }
            self.poll_or_spin()?;
        }
    }

    /// Connections accepted by the device and not yet handed out by
    /// [`GuestVsock::accept`].
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Processes at most one event from the device; `Ok(false)` if there
    /// was none. Every blocking operation here polls through this, so no
    /// event is lost whichever connection it belongs to.
    ///
    /// A malformed packet (bad header or length, unknown operation) is
    /// dropped with a warning: it concerns that packet only, and the driver
    /// has recycled its buffer. Other device errors are returned.
    pub fn poll(&mut self) -> Result<bool> {
        self.polls += 1;
        match self.manager.poll() {
            Ok(Some(event)) => {
                self.record(&event);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(virtio_drivers::Error::SocketDeviceError(
                e @ (SocketError::BufferTooShort
                | SocketError::InvalidNumber
                | SocketError::UnknownOperation(_)
                | SocketError::InvalidOperation
                | SocketError::UnexpectedDataInPacket),
            )) => {
                warn!("vsock: dropped a malformed packet: {e}");
                Ok(true)
            }
            Err(e) => Err(virtio(e)),
        }
    }

    fn poll_or_spin(&mut self) -> Result<()> {
        if !self.poll()? {
            spin_loop();
        }
        Ok(())
    }

    fn record(&mut self, event: &VsockEvent) {
        trace!("vsock: {event:?}");
        let key = Key {
            peer: event.source,
            local_port: event.destination.port,
        };
        if event.event_type == VsockEventType::ConnectionRequest {
            // The manager only passes requests for listening ports on, and
            // has accepted them already.
            self.forget(key);
            let mut state = ConnState::new(key, Phase::Connected);
            state.peer_buf_alloc = event.buffer_status.buffer_allocation;
            state.peer_fwd_cnt = event.buffer_status.forward_count;
            self.conns.push(state);
            self.backlog.push_back(key);
            return;
        }
        let Some(state) = self.state(key) else {
            return;
        };
        state.peer_buf_alloc = event.buffer_status.buffer_allocation;
        state.peer_fwd_cnt = event.buffer_status.forward_count;
        match event.event_type {
            VsockEventType::Connected if state.phase == Phase::Connecting => {
                state.phase = Phase::Connected;
            }
            VsockEventType::Disconnected { reason } => state.phase = Phase::PeerClosed(reason),
            _ => {}
        }
    }

    fn state(&mut self, key: Key) -> Option<&mut ConnState> {
        find(&mut self.conns, key)
    }

    fn forget(&mut self, key: Key) {
        self.conns.retain(|s| s.key != key);
    }
}

fn find(conns: &mut [ConnState], key: Key) -> Option<&mut ConnState> {
    conns.iter_mut().find(|s| s.key == key)
}

/// One connection of a [`GuestVsock`], accepted or connected.
///
/// Dropping it without [`Connection::shutdown`] resets the connection.
pub struct GuestConnection<'a, H: Hal, T: Transport> {
    vsock: &'a mut GuestVsock<H, T>,
    key: Key,
    shut: bool,
}

impl<'a, H: Hal, T: Transport> GuestConnection<'a, H, T> {
    fn new(vsock: &'a mut GuestVsock<H, T>, key: Key) -> Self {
        Self {
            vsock,
            key,
            shut: false,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> VsockAddr {
        self.key.peer
    }

    /// Our port.
    pub fn local_port(&self) -> u32 {
        self.key.local_port
    }

    fn phase(&mut self) -> Option<Phase> {
        let key = self.key;
        self.vsock.state(key).map(|s| s.phase)
    }

    /// Frees the manager's state (sending `RST` if it still had any) and ours.
    fn close_now(&mut self) -> Result<()> {
        let Key { peer, local_port } = self.key;
        let r = match self.vsock.manager.force_close(peer, local_port) {
            Err(e) if is_socket_error(&e, SocketError::NotConnected) => Ok(()),
            r => r.map_err(virtio),
        };
        self.vsock.forget(self.key);
        r
    }
}

impl<H: Hal, T: Transport> Connection for GuestConnection<'_, H, T> {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        if self.shut {
            return Err(Error::ShutDown);
        }
        let Key { peer, local_port } = self.key;
        let mut rest = buf;
        while !rest.is_empty() {
            let vsock = &mut *self.vsock;
            let state = find(&mut vsock.conns, self.key).ok_or(Error::Reset)?;
            match state.phase {
                Phase::PeerClosed(DisconnectReason::Reset) => return Err(Error::Reset),
                Phase::PeerClosed(DisconnectReason::Shutdown) => return Err(Error::Closed),
                Phase::Connecting | Phase::Connected => {}
            }
            // Every packet costs a round trip through the device, whatever
            // its size, so send big ones: use the credit we know of when it
            // covers the rest or half the peer's buffer; otherwise try a
            // full packet, which the driver refuses while asking the peer
            // for a credit update (we poll until it comes, below).
            let want = rest.len().min(MAX_PACKET);
            let free = state.peer_free() as usize;
            let n = if free >= want || free >= (state.peer_buf_alloc as usize / 2).max(1) {
                want.min(free)
            } else {
                want
            };
            match vsock.manager.send(peer, local_port, &rest[..n]) {
                Ok(()) => {
                    state.tx_cnt = state.tx_cnt.wrapping_add(n as u32);
                    // The packet carried our fwd_cnt.
                    state.unannounced = 0;
                    rest = &rest[n..];
                }
                Err(e) if is_socket_error(&e, SocketError::InsufficientBufferSpaceInPeer) => {
                    vsock.poll_or_spin()?;
                }
                Err(e) => return Err(virtio(e)),
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.shut {
            return Err(Error::ShutDown);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let Key { peer, local_port } = self.key;
        let threshold = self.vsock.buffer_size / 4;
        let wait_start = self.vsock.now();
        loop {
            let vsock = &mut *self.vsock;
            match vsock.manager.recv(peer, local_port, buf) {
                Ok(0) => {}
                Ok(n) => {
                    let Some(state) = find(&mut vsock.conns, self.key) else {
                        return Ok(n);
                    };
                    state.unannounced = state.unannounced.saturating_add(n as u32);
                    if state.unannounced >= threshold && state.phase == Phase::Connected {
                        state.unannounced = 0;
                        match vsock.manager.update_credit(peer, local_port) {
                            // Drained the last bytes after the peer closed:
                            // the manager has just dropped the connection.
                            Err(e) if is_socket_error(&e, SocketError::NotConnected) => {}
                            r => r.map_err(virtio)?,
                        }
                    }
                    return Ok(n);
                }
                // The manager drops a connection once the peer has closed
                // it and its data are drained.
                Err(e) if is_socket_error(&e, SocketError::NotConnected) => return Ok(0),
                Err(e) => return Err(virtio(e)),
            }
            // Nothing buffered: end of stream if the peer closed (SHUTDOWN
            // with either flag, or RST), else wait for more.
            match self.phase() {
                Some(Phase::PeerClosed(_)) | None => return Ok(0),
                Some(_) => self.vsock.poll_or_spin()?,
            }
            if !self.vsock.backlog.is_empty()
                && self.vsock.now().wrapping_sub(wait_start) >= self.vsock.limits.idle_yield_us
            {
                warn!(
                    "vsock: {}:{} idle while another connection waits; resetting it",
                    peer.cid, peer.port
                );
                self.close_now()?;
                return Ok(0);
            }
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shut {
            return Ok(());
        }
        self.shut = true;
        let Key { peer, local_port } = self.key;
        if self.phase() == Some(Phase::Connected) {
            match self.vsock.manager.shutdown(peer, local_port) {
                Err(e) if is_socket_error(&e, SocketError::NotConnected) => {}
                r => r.map_err(virtio)?,
            }
            // Wait, bounded, for the peer's RST (events for other
            // connections are recorded meanwhile).
            let start = self.vsock.now();
            while self.phase() == Some(Phase::Connected) {
                if self.vsock.now() - start >= self.vsock.limits.shutdown_us {
                    warn!(
                        "vsock: no RST from {}:{} after shutdown; resetting",
                        peer.cid, peer.port
                    );
                    break;
                }
                self.vsock.poll_or_spin()?;
            }
        }
        self.close_now()
    }
}

impl<H: Hal, T: Transport> Drop for GuestConnection<'_, H, T> {
    fn drop(&mut self) {
        if !self.shut {
            self.shut = true;
            let _ = self.close_now();
        }
    }
}
