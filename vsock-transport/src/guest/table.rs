//! The connection table: listening ports, a backlog, and the open
//! connections over one [`Device`], with the calls a server makes on them
//! (accept, read, send what the credit allows, close, reset, tick). What
//! the device delivers is taken in by `poll.rs`; the table's host tests
//! (`tests/`) drive both over a fake device.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::hint::spin_loop;

use log::{debug, warn};
use virtio_drivers::device::socket::{ConnectionInfo, DisconnectReason, SocketError, VsockAddr};

use super::conn::{ConnId, ConnState, Key, Phase, find};
use super::device::{Device, RX_BUFFER_SIZE, is_socket_error, virtio};
use crate::endpoint::{Endpoint, Recv};
use crate::{Error, Result, Step};

/// Default per-connection receive buffer (the `buf_alloc` we advertise
/// for a served connection).
pub const CONNECTION_BUFFER_SIZE: u32 = 256 * 1024;

/// Receive buffer (the `buf_alloc` we advertise) of an accepted connection
/// until it is served ([`GuestVsock::serve`](super::GuestVsock::serve)): a `HELLO` (at most
/// `svmc_comm::frame::HELLO_MAX_BODY` bytes of body) and a small frame fit, so
/// a waiting or refused client can say hello and read its answer, but not
/// make us buffer more.
pub const ACCEPT_WINDOW: u32 = 4096;

/// Largest `RW` packet body we send: Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`
/// (64 KiB), which device back-ends also assume.
pub const MAX_PACKET: usize = crate::credit::MAX_PACKET;

/// A connected peer silent for this long gets a credit update (at most
/// one per this period): vhost-device-vsock 0.3.0 can lose track of a host
/// socket that closed (see the module docs), and a credit update makes it
/// look again, so the connection's `SHUTDOWN` arrives within about this
/// time instead of never.
pub const PROBE_US: u64 = 1_000_000;

/// A connection with bytes to send that the peer's credit has let none of
/// through for this long gets a credit update (at most one per this
/// period). vhost-device-vsock 0.3.0 can leave the answers it holds for a
/// host socket unwritten: it writes them only on an "only writable" epoll
/// event, and after a partial write it may fail to re-arm that event at
/// all ("Failed to re-enable EPOLLOUT"); a credit update from us re-arms
/// it (see the module docs), so the stall ends within about this time.
pub const NUDGE_US: u64 = 20_000;

/// Connections the table has room for from the start: a server's 8
/// served ones, as many held and being refused, the backlog, and those
/// still closing (about 170 bytes each). It grows beyond that only in a
/// burst, and never shrinks, so that a heap figure taken after some
/// traffic does not move with how many connections happened to coexist.
pub(super) const TABLE_CAPACITY: usize = 40;

/// Default of [`GuestVsock::set_max_pending`](super::GuestVsock::set_max_pending).
pub const DEFAULT_MAX_PENDING: usize = 4;

/// Bounds on the waits that have no natural end, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long [`GuestVsock::connect`](super::GuestVsock::connect) waits for `RESPONSE` or `RST`
    /// before it gives up with [`Error::Timeout`]`(`[`Step::Connect`]`)`.
    pub connect_us: u64,
    /// How long a connection closed with [`GuestVsock::close`](super::GuestVsock::close) waits for
    /// the peer's `RST` before [`GuestVsock::tick`](super::GuestVsock::tick) resets it.
    pub shutdown_us: u64,
}

impl Default for Limits {
    /// 200 ms to connect (the host answers within a few milliseconds even
    /// under emulation), 100 ms for the shutdown handshake.
    fn default() -> Self {
        Self {
            connect_us: 200_000,
            shutdown_us: 100_000,
        }
    }
}

/// A monotonic clock in microseconds (any origin).
pub type Clock = fn() -> u64;

/// Listening ports, a backlog of accepted connections, and the table of
/// open connections, over a [`Device`] ([`GuestVsock`](super::GuestVsock) in the firmware).
///
/// It drives virtio-drivers' `VirtIOSocket` directly rather than through
/// its `VsockConnectionManager`: the manager resets a connection as soon as
/// the peer's `SHUTDOWN` has been read to the end, so a server could not
/// send the answers to requests that came just before a half-close; here
/// a connection lasts until we close it.
pub struct VsockTable<D: Device> {
    pub(super) driver: D,
    pub(super) listening: Vec<u32>,
    pub(super) conns: Vec<ConnState>,
    pub(super) backlog: VecDeque<ConnId>,
    pub(super) max_pending: usize,
    next_id: u32,
    pub(super) buffer_size: u32,
    limits: Limits,
    clock: Option<Clock>,
    /// Polls so far: the time base when there is no clock.
    pub(super) polls: u64,
    /// Stale packets dropped ([`GuestVsock::stale_packets`](super::GuestVsock::stale_packets)).
    pub(super) stale_packets: u64,
    /// Malformed packets dropped (logged at powers of two).
    pub(super) malformed_packets: u64,
    /// Packets with operation 0 (logged at powers of two).
    pub(super) op0_packets: u64,
}

impl<D: Device> VsockTable<D> {
    /// The table over an initialised `driver`, with `buffer_size` bytes of
    /// receive buffer per connection (at least [`RX_BUFFER_SIZE`]).
    pub fn with_device(driver: D, buffer_size: u32) -> Self {
        let buffer_size = buffer_size.max(RX_BUFFER_SIZE as u32);
        Self {
            driver,
            listening: Vec::new(),
            conns: Vec::with_capacity(TABLE_CAPACITY),
            backlog: VecDeque::new(),
            max_pending: DEFAULT_MAX_PENDING,
            next_id: 0,
            buffer_size,
            limits: Limits::default(),
            clock: None,
            polls: 0,
            stale_packets: 0,
            malformed_packets: 0,
            op0_packets: 0,
        }
    }

    /// Sets the bounds on connect and shutdown waits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Measures [`Limits`] with `clock` instead of counting polls.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = Some(clock);
    }

    /// At most `n` (at least 1) accepted connections wait in the backlog;
    /// a connection request beyond that is reset as soon as it arrives.
    pub fn set_max_pending(&mut self, n: usize) {
        self.max_pending = n.max(1);
    }

    /// Microseconds by the clock, or polls without one.
    pub fn now(&self) -> u64 {
        self.clock.map_or(self.polls, |clock| clock())
    }

    /// Stale packets dropped so far: RX buffers the device handed back
    /// without writing them, whose old header carried a credit count that
    /// goes back (vhost-device-vsock 0.3.0; see the module docs).
    pub fn stale_packets(&self) -> u64 {
        self.stale_packets
    }

    /// The CID the device was given.
    pub fn guest_cid(&self) -> u64 {
        self.driver.guest_cid()
    }

    /// Per-connection receive buffer size (the `buf_alloc` we advertise
    /// for a served connection; [`ACCEPT_WINDOW`] before).
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }

    /// Connections in the table: served, waiting in the backlog, or
    /// closing. Each holds a receive ring of up to
    /// [`GuestVsock::buffer_size`](super::GuestVsock::buffer_size) bytes once served, [`ACCEPT_WINDOW`]
    /// before.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accepts connections on `port` from now on. They queue up until
    /// [`GuestVsock::accept`](super::GuestVsock::accept) takes them.
    pub fn listen(&mut self, port: u32) {
        if !self.listening.contains(&port) {
            self.listening.push(port);
        }
    }

    /// Connects from our `local_port` to `peer` and waits for the answer
    /// (events for other connections are recorded meanwhile). A `RST`
    /// answer (nobody listens there) is [`Error::Refused`]; no answer within
    /// [`Limits::connect_us`] is [`Error::Timeout`]`(`[`Step::Connect`]`)`,
    /// and the request is reset.
    pub fn connect(&mut self, peer: VsockAddr, local_port: u32) -> Result<ConnId> {
        let key = Key { peer, local_port };
        if self.conns.iter().any(|s| s.key() == key) {
            return Err(virtio(SocketError::ConnectionExists));
        }
        let info = self.new_info(key, self.buffer_size);
        self.driver.connect(&info).map_err(virtio)?;
        let id = self.insert(info, Phase::Connecting);
        let start = self.now();
        loop {
            match self.state(id).map(|s| s.phase) {
                Some(Phase::Connected) => break,
                Some(Phase::Connecting) if self.now() - start >= self.limits.connect_us => {
                    self.finish(id, true);
                    return Err(Error::Timeout(Step::Connect));
                }
                Some(Phase::Connecting) => self.poll_or_spin()?,
                Some(_) | None => {
                    self.finish(id, false);
                    return Err(Error::Refused { port: peer.port });
                }
            }
        }
        debug!(
            "vsock {id}: connected to {}:{} from port {local_port}",
            peer.cid, peer.port
        );
        Ok(id)
    }

    /// The next connection accepted on a listening port, if one waits
    /// (connections come in the order they arrived). Does not poll.
    pub fn accept(&mut self) -> Option<ConnId> {
        let id = self.backlog.pop_front()?;
        if let Some(s) = self.state(id) {
            debug!(
                "vsock {id}: accepted {}:{} on port {}",
                s.info.dst.cid, s.info.dst.port, s.info.src_port
            );
        }
        Some(id)
    }

    /// Connections accepted by the device and not yet handed out by
    /// [`GuestVsock::accept`](super::GuestVsock::accept).
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The peer's address of connection `id`.
    pub fn peer(&self, id: ConnId) -> Option<VsockAddr> {
        self.conns.iter().find(|s| s.id == id).map(|s| s.info.dst)
    }

    /// Whether `id` is in the table and not being closed by us.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns
            .iter()
            .any(|s| s.id == id && !matches!(s.phase, Phase::Closing(_)))
    }

    /// Whether `id` is still in the table (open or closing).
    pub fn exists(&self, id: ConnId) -> bool {
        self.conns.iter().any(|s| s.id == id)
    }

    /// Reads what connection `id` has buffered into `buf`, without waiting,
    /// and tells the peer about the consumed bytes when due.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<Recv> {
        let state = find(&mut self.conns, id).ok_or(Error::ShutDown)?;
        match state.phase {
            Phase::Closing(_) => return Err(Error::ShutDown),
            Phase::Connecting => return Ok(Recv::Empty),
            Phase::Connected | Phase::PeerClosed(_) => {}
        }
        if buf.is_empty() {
            return Ok(Recv::Empty);
        }
        let n = state.rx.read(buf);
        if n == 0 {
            return Ok(match state.phase {
                Phase::PeerClosed(_) => Recv::Eof,
                _ => Recv::Empty,
            });
        }
        state.info.done_forwarding(n);
        if state.credit.consumed(n)
            && state.phase == Phase::Connected
            && let Err(e) = self.driver.credit_update(&state.info)
        {
            return Err(virtio(e));
        }
        Ok(Recv::Data(n))
    }

    /// Sends as much of `buf` on connection `id` as the peer's credit
    /// allows now, in packets of at most [`MAX_PACKET`] bytes; returns how
    /// many bytes went (possibly 0). Never waits: when the credit is used
    /// up the driver has asked the peer for an update, and a later call
    /// (after [`GuestVsock::poll`](super::GuestVsock::poll) has seen it) goes on. After the peer's
    /// `SHUTDOWN` we may still send until we close (half-close).
    pub fn send_some(&mut self, id: ConnId, buf: &[u8]) -> Result<usize> {
        let now = self.now();
        let state = find(&mut self.conns, id).ok_or(Error::ShutDown)?;
        let sent = Self::send_chunks(&mut self.driver, state, buf)?;
        if sent > 0 || buf.is_empty() {
            state.starved_since = None;
        } else if state.starved_since.is_none() {
            state.starved_since = Some(now);
        }
        Ok(sent)
    }

    /// [`GuestVsock::send_some`](super::GuestVsock::send_some)'s packets.
    fn send_chunks(driver: &mut D, state: &mut ConnState, buf: &[u8]) -> Result<usize> {
        let mut sent = 0;
        while sent < buf.len() {
            match state.phase {
                Phase::PeerClosed(DisconnectReason::Reset) => return Err(Error::Reset),
                Phase::Closing(_) => return Err(Error::ShutDown),
                Phase::Connecting => return Ok(0),
                Phase::Connected | Phase::PeerClosed(DisconnectReason::Shutdown) => {}
            }
            let n = state.credit.next_chunk(buf.len() - sent);
            if n == 0 {
                // More than the peer's buffer is in flight (it shrank
                // it): nothing goes until it has read enough. Offering the
                // driver an empty packet would send one (its free space
                // wraps around) and never end this loop.
                break;
            }
            match driver.send(&buf[sent..sent + n], &mut state.info) {
                Ok(()) => {
                    state.credit.sent(n);
                    sent += n;
                }
                Err(e) if is_socket_error(&e, SocketError::InsufficientBufferSpaceInPeer) => break,
                Err(e) => return Err(virtio(e)),
            }
        }
        Ok(sent)
    }

    /// Starts closing connection `id`: `SHUTDOWN` to a peer that has not
    /// reset it (whose `RST` answer, or [`Limits::shutdown_us`] in
    /// [`GuestVsock::tick`](super::GuestVsock::tick), ends it), or at once if the peer has reset it
    /// already. Whatever the peer still sends is dropped.
    pub fn close(&mut self, id: ConnId) -> Result<()> {
        let now = self.now();
        let Some(state) = find(&mut self.conns, id) else {
            return Ok(());
        };
        match state.phase {
            Phase::Connected | Phase::PeerClosed(DisconnectReason::Shutdown) => {
                state.phase = Phase::Closing(now);
                state.rx.release();
                match self.driver.shutdown(&state.info) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.finish(id, true);
                        Err(virtio(e))
                    }
                }
            }
            Phase::Closing(_) => Ok(()),
            Phase::Connecting => {
                self.finish(id, true);
                Ok(())
            }
            Phase::PeerClosed(DisconnectReason::Reset) => {
                self.finish(id, false);
                Ok(())
            }
        }
    }

    /// Resets connection `id` at once (`RST`) and forgets it.
    pub fn reset(&mut self, id: ConnId) {
        let rst = self
            .conns
            .iter()
            .find(|s| s.id == id)
            .is_some_and(|s| s.phase != Phase::PeerClosed(DisconnectReason::Reset));
        self.finish(id, rst);
    }

    /// Resets the connections whose peer has not answered our `SHUTDOWN`
    /// within [`Limits::shutdown_us`], probes connected peers silent for
    /// [`PROBE_US`] with a credit update, and nudges the same way those
    /// whose credit has let nothing through for [`NUDGE_US`].
    pub fn tick(&mut self) {
        let now = self.now();
        for s in &mut self.conns {
            if s.phase != Phase::Connected {
                continue;
            }
            if now.wrapping_sub(s.last_seen) >= PROBE_US {
                s.last_seen = now;
                s.nudged_at = now;
                if let Err(e) = self.driver.credit_update(&s.info) {
                    warn!("vsock {}: probe: {e}", s.id);
                }
            } else if s
                .starved_since
                .is_some_and(|t| now.wrapping_sub(t) >= NUDGE_US)
                && now.wrapping_sub(s.nudged_at) >= NUDGE_US
            {
                s.nudged_at = now;
                if let Err(e) = self.driver.credit_update(&s.info) {
                    warn!("vsock {}: nudge: {e}", s.id);
                }
            }
        }
        let limit = self.limits.shutdown_us;
        while let Some(s) = self
            .conns
            .iter()
            .find(|s| matches!(s.phase, Phase::Closing(t) if now.wrapping_sub(t) >= limit))
        {
            warn!(
                "vsock {}: no RST from {}:{} after shutdown; resetting",
                s.id, s.info.dst.cid, s.info.dst.port
            );
            let id = s.id;
            self.finish(id, true);
        }
    }

    /// Sends a credit update on connection `id` now, if it is connected:
    /// vhost-device-vsock 0.3.0 then looks at the host's socket again, so
    /// a socket the host closed without it noticing is reported
    /// (`SHUTDOWN`) within its answer time (see the module docs). The
    /// server calls it for every served connection when a new one finds
    /// the table full.
    pub fn probe(&mut self, id: ConnId) {
        let now = self.now();
        if let Some(s) = self.conns.iter_mut().find(|s| s.id == id)
            && s.phase == Phase::Connected
        {
            s.last_seen = now;
            if let Err(e) = self.driver.credit_update(&s.info) {
                warn!("vsock {id}: probe: {e}");
            }
        }
    }

    /// Connection `id` is served: its receive buffer grows from
    /// [`ACCEPT_WINDOW`] to [`GuestVsock::buffer_size`](super::GuestVsock::buffer_size), and a credit
    /// update tells the peer. Nothing happens if it has the full buffer
    /// already (a connection we made, or served before) or is gone.
    pub fn serve(&mut self, id: ConnId) {
        let size = self.buffer_size;
        let Some(s) = find(&mut self.conns, id) else {
            return;
        };
        if !s.credit.grow(size) {
            return;
        }
        s.info.buf_alloc = size;
        if s.phase == Phase::Connected
            && let Err(e) = self.driver.credit_update(&s.info)
        {
            warn!("vsock {id}: credit update: {e}");
        }
    }

    /// A connection's header state, advertising `buf_alloc` bytes.
    pub(super) fn new_info(&self, key: Key, buf_alloc: u32) -> ConnectionInfo {
        let mut info = ConnectionInfo::new(key.peer, key.local_port);
        info.buf_alloc = buf_alloc;
        info
    }

    /// Adds a connection under a new handle.
    pub(super) fn insert(&mut self, info: ConnectionInfo, phase: Phase) -> ConnId {
        let now = self.now();
        let id = ConnId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.push(ConnState::new(id, info, phase, now));
        id
    }

    /// Forgets connection `id`, first sending `RST` if `rst`.
    pub(super) fn finish(&mut self, id: ConnId, rst: bool) {
        if rst
            && let Some(s) = self.conns.iter().find(|s| s.id == id)
            && let Err(e) = self.driver.force_close(&s.info)
        {
            warn!("vsock {id}: reset: {e}");
        }
        self.forget(id);
    }

    /// Forgets connection `id` without a word to the peer.
    pub(super) fn forget(&mut self, id: ConnId) {
        self.conns.retain(|s| s.id != id);
        self.backlog.retain(|&b| b != id);
    }

    /// Connection `id`'s state, if it is in the table.
    pub(super) fn state(&mut self, id: ConnId) -> Option<&mut ConnState> {
        find(&mut self.conns, id)
    }
}

impl<D: Device> Endpoint for VsockTable<D> {
    type Id = ConnId;

    fn poll(&mut self) -> Result<bool> {
        VsockTable::poll(self)
    }
    fn accept(&mut self) -> Option<ConnId> {
        VsockTable::accept(self)
    }
    fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<Recv> {
        VsockTable::recv(self, id, buf)
    }
    fn send_some(&mut self, id: ConnId, buf: &[u8]) -> Result<usize> {
        VsockTable::send_some(self, id, buf)
    }
    fn close(&mut self, id: ConnId) {
        if let Err(e) = VsockTable::close(self, id) {
            warn!("vsock {id}: shutdown: {e}");
        }
    }
    fn reset(&mut self, id: ConnId) {
        VsockTable::reset(self, id)
    }
    fn exists(&self, id: ConnId) -> bool {
        VsockTable::exists(self, id)
    }
    fn tick(&mut self) {
        VsockTable::tick(self)
    }
    fn probe(&mut self, id: ConnId) {
        VsockTable::probe(self, id)
    }
    fn serve(&mut self, id: ConnId) {
        VsockTable::serve(self, id)
    }
    fn peer_closed(&self, id: ConnId) -> bool {
        self.conns
            .iter()
            .any(|s| s.id == id && matches!(s.phase, Phase::PeerClosed(_)))
    }
    fn now_us(&self) -> u64 {
        self.now()
    }
    fn unread(&self) -> usize {
        self.conns.iter().map(|s| s.rx.len()).sum()
    }
    fn idle(&mut self) {
        spin_loop();
    }
}
