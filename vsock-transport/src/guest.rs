//! Guest backend: many connections over virtio-drivers' `VirtIOSocket`
//! (`no_std`), for any virtio [`Hal`] and [`Transport`], served by one
//! event loop.
//!
//! The virtio-drivers types this API takes ([`Hal`], [`Transport`],
//! [`VsockAddr`]) are re-exported here (and the crate as
//! `vsock_transport::virtio_drivers`), so a firmware's versions match.
//! A firmware finds its transport (virtio-mmio or PCI), then:
//!
//! ```no_run
//! use svmc::{Request, Response, SERVICE_PORT, ServiceVm};
//! use vsock_transport::guest::{GuestVsock, Hal, Transport};
//! use vsock_transport::rpc::many::{self, ManyConfig};
//! use vsock_transport::rpc::{Budget, Handler, ServeConfig, Then};
//!
//! struct Reverse;
//! impl Handler<ServiceVm> for Reverse {
//!     fn handle(&mut self, request: Request) -> (Response, Then) {
//!         match request {
//!             Request::Reverse(mut b) => { b.reverse(); (Response::Reverse(b), Then::Continue) }
//!             _ => (Response::PowerOff, Then::Stop),
//!         }
//!     }
//! }
//!
//! /// Serves up to 4 host connections at once until a handler stops.
//! fn serve<H: Hal, T: Transport>(transport: T) -> vsock_transport::Result<()> {
//!     let mut vsock = GuestVsock::<H, T>::new(transport)?;
//!     vsock.listen(SERVICE_PORT);
//!     let config = ManyConfig {
//!         serve: ServeConfig::default(),
//!         max_conns: 4,
//!         idle_timeout_us: 10_000_000,
//!         budget: Budget::new(4 << 20),
//!     };
//!     many::serve_many::<ServiceVm, _, _>(&mut vsock, None, &mut Reverse, &config, |_| {})
//! }
//! ```
//!
//! One connection at a time works too: [`GuestVsock::accept`], then
//! [`GuestVsock::stream`] is a blocking [`Connection`] for
//! [`crate::rpc::serve`] or [`crate::rpc::Client`].
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
//! Two consequences shape this module (the arithmetic is in `credit`,
//! pure functions with their own tests):
//!
//! - **Sending.** virtio-drivers' `send()` never splits a buffer: unless the
//!   whole buffer fits `peer_free` it fails with
//!   `InsufficientBufferSpaceInPeer` (and asks the peer for a credit
//!   update). [`GuestVsock::send_some`] therefore cuts writes into chunks
//!   of at most `peer_free` bytes (tracked here from the events it sees)
//!   and at most [`MAX_PACKET`], and returns what it could send *now*: it
//!   never waits for credit, so a peer that does not read cannot hold the
//!   event loop.
//! - **Receiving.** The peer learns our `fwd_cnt` only from packets we send.
//!   virtio-drivers' `recv()` sends none, so a receiver that only reads
//!   would stall the sender once the buffer's worth is consumed (AOSP bug
//!   b/292080257). [`GuestVsock::recv`] sends a credit update after
//!   consuming data, at the latest when a quarter of the buffer has been
//!   consumed unannounced; so the sender always sees at least three
//!   quarters of the buffer free once we have drained it.
//!
//! Our own buffer is a per-connection ring, and the `buf_alloc` we
//! advertise is exactly its limit, so a peer that honours credit can never
//! overflow it (which would lose data: such a peer is reset). A connection
//! we make gets the full [`GuestVsock::buffer_size`]
//! ([`CONNECTION_BUFFER_SIZE`] unless set otherwise) at once; one we
//! accept starts with [`ACCEPT_WINDOW`] (room for a `HELLO` and a small
//! frame), so connections that wait in the backlog, are held or are being
//! refused cost little heap each, and gets the full buffer, with a credit
//! update, only when it is served ([`GuestVsock::serve`]). The window only
//! grows: the peer's credit follows the latest `buf_alloc` it saw.
//!
//! # Many connections, one loop
//!
//! [`GuestVsock`] owns the device and a table of connections, each named
//! by a [`ConnId`] handle. Nothing here blocks except [`GuestVsock::connect`]
//! (bounded) and the [`Stream`] adapter: the caller's loop calls
//! [`GuestVsock::poll`] (one device event: a connection request on a
//! listening port, accepted at once, goes into a backlog that
//! [`GuestVsock::accept`] hands out; data waits in the ring of its
//! connection; a close is remembered), then [`GuestVsock::recv`] and
//! [`GuestVsock::send_some`] on any connection, without waiting, and
//! [`GuestVsock::tick`] to end shutdowns whose peer never answered. At most
//! [`GuestVsock::set_max_pending`] accepted connections wait in the backlog;
//! beyond that a new one is reset at once, so a flood of connection
//! requests cannot exhaust the heap with per-connection rings.
//!
//! [`Stream`] is a blocking [`Connection`] over one connection of the table
//! (the echo mode and the hostile test firmware use it: one connection at
//! a time, the others wait in the backlog).
//!
//! The table ([`VsockTable`]) makes its device calls through [`Device`]:
//! in the firmware, virtio-drivers' `VirtIOSocket` ([`GuestVsock`]); in its
//! host tests (`guest/tests.rs`, plain `cargo test`), a fake device fed
//! with synthetic events, hostile ones included.
//!
//! # Bounded waits
//!
//! Two waits have no natural end: the answer to our `REQUEST` (a peer that
//! neither accepts nor refuses: vhost-device-vsock 0.3.0 never sends the
//! `RST` for a refused guest connection, its `enq_rst` is a TODO) and the
//! peer's `RST` after our `SHUTDOWN`. Both are bounded by [`Limits`],
//! measured with the clock given to [`GuestVsock::set_clock`]; without one,
//! a microsecond is counted per poll of the device.
//!
//! vhost-device-vsock 0.3.0 reports a failed read of the host's socket as
//! a packet with operation 0, which virtio-drivers rejects without saying
//! which connection it was for. [`GuestVsock::poll`] then sends a credit
//! update on every connection: the daemon re-arms its read of each host
//! socket, the failed one now reads as closed, and its `SHUTDOWN` arrives.
//! [`GuestVsock::tick`] also probes every peer silent for [`PROBE_US`] the
//! same way, for the cases where the daemon lost track of a host socket
//! without a word, and [`GuestVsock::probe`] probes one at once (the
//! server does, for every served connection, when a new one finds its
//! table full). (Closing connections that stay silent anyway is a
//! policy of the server above this layer.)
//!
//! vhost-device-vsock 0.3.0 also hands back RX buffers it did not write:
//! its `recv_pkt` for a connection that is already gone returns `Ok`
//! without touching the buffer, with a used length of one header, so the
//! guest reads the header of whatever packet that buffer held before. An
//! old `RW` header then fails virtio-drivers' length check (dropped, and
//! counted, as malformed); an old control packet is recognised by a
//! credit count that goes back (`Credit::plausible`) and dropped
//! ([`GuestVsock::stale_packets`]). Taking its credit would let
//! virtio-drivers' wrapping arithmetic send more than the daemon has room
//! for, and the daemon drops what does not fit: bytes lost from the middle
//! of an answer.
//!
//! vhost-device-vsock 0.3.0 writes what we send on a connection to the
//! host's socket at once if it can; what does not fit waits in its buffer
//! (as much as the credit it gives us) and is written only on an epoll
//! event that says the socket is writable and *not* readable
//! (`vhu_vsock_thread.rs`, `handle_event`; a readable one goes to the read
//! path instead), or, after a partial write, not at all if re-arming the
//! event fails ("Failed to re-enable EPOLLOUT"). So while the host has
//! bytes for us that we do not take, our answers stay in the daemon: the
//! server above never stops reading a client that reads (WIRE.md §4.1),
//! and [`GuestVsock::tick`] nudges a connection whose credit has let
//! nothing through for [`NUDGE_US`] with a credit update, which re-arms the
//! event.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::hint::spin_loop;

use log::{debug, trace, warn};
use virtio_drivers::device::socket::{
    ConnectionInfo, DisconnectReason, SocketError, VirtIOSocket, VsockEvent, VsockEventType,
};

use crate::credit::Credit;
use crate::endpoint::Endpoint;
pub use crate::endpoint::Recv;
use crate::{Connection, Error, Result, Step};
pub use virtio_drivers::Hal;
pub use virtio_drivers::device::socket::VsockAddr;
pub use virtio_drivers::transport::Transport;

/// Size of each buffer in the device's RX virtqueue: the largest packet the
/// device can deliver in one go. virtio-drivers' default of 512 bytes made a
/// 1 MiB round trip about 16 times slower; 64 KiB (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`, so the largest packet a device sends)
/// gives four times fewer packets, and so device round trips, than 16 KiB.
/// The queue holds 8 of them: 512 KiB of heap.
pub const RX_BUFFER_SIZE: usize = 64 * 1024;

/// Heap the device's RX virtqueue holds (8 buffers, virtio-drivers'
/// `QUEUE_SIZE`), for the caller's heap budget.
pub const RX_QUEUE_BYTES: usize = 8 * RX_BUFFER_SIZE;

/// Default per-connection receive buffer (the `buf_alloc` we advertise
/// for a served connection).
pub const CONNECTION_BUFFER_SIZE: u32 = 256 * 1024;

/// Receive buffer (the `buf_alloc` we advertise) of an accepted connection
/// until it is served ([`GuestVsock::serve`]): a `HELLO` (at most
/// `svmc_comm::frame::HELLO_MAX_BODY` bytes of body) and a small frame fit, so
/// a waiting or refused client can say hello and read its answer, but not
/// make us buffer more.
pub const ACCEPT_WINDOW: u32 = 4096;

/// Largest `RW` packet body we send: Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`
/// (64 KiB), which device back-ends also assume.
pub const MAX_PACKET: usize = crate::credit::MAX_PACKET;

/// A `REQUEST` for a connection we know that comes within this many
/// microseconds of the first is the same request again, and is ignored
/// (seen behind vhost-device-vsock 0.3.0, which never reuses a host port
/// while it knows the connection, so a repeat cannot be a new one). A
/// later one is a new connection on a reused port (the Linux host
/// allocates ephemeral ports again): the old connection is gone.
const DUPLICATE_REQUEST_US: u64 = 1_000_000;

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
const TABLE_CAPACITY: usize = 40;

/// Default of [`GuestVsock::set_max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 4;

/// Bounds on the waits that have no natural end, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long [`GuestVsock::connect`] waits for `RESPONSE` or `RST`
    /// before it gives up with [`Error::Timeout`]`(`[`Step::Connect`]`)`.
    pub connect_us: u64,
    /// How long a connection closed with [`GuestVsock::close`] waits for
    /// the peer's `RST` before [`GuestVsock::tick`] resets it.
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

/// The host's CID.
pub const HOST_CID: u64 = 2;

fn virtio(e: impl Into<virtio_drivers::Error>) -> Error {
    Error::Virtio(e.into())
}

fn is_socket_error(e: &virtio_drivers::Error, want: SocketError) -> bool {
    matches!(e, virtio_drivers::Error::SocketDeviceError(s) if *s == want)
}

/// A handle on one connection of a [`GuestVsock`]. Handles are never
/// reused, so a stale one names no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u32);

impl core::fmt::Display for ConnId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}", self.0)
    }
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
    /// The peer sent `SHUTDOWN` (it sends nothing more; we may still send
    /// until we close) or `RST` (gone).
    PeerClosed(DisconnectReason),
    /// We sent `SHUTDOWN` at this time and wait for the peer's `RST`.
    Closing(u64),
}

/// What we track per connection: the driver's header state, ours, and the
/// receive ring.
#[derive(Debug)]
struct ConnState {
    id: ConnId,
    /// The driver's view: addresses, our `buf_alloc` and `fwd_cnt`, the
    /// peer's credit.
    info: ConnectionInfo,
    phase: Phase,
    credit: Credit,
    /// Received bytes not yet read; never more than our `buf_alloc`
    /// (`credit.buffer_size`).
    rx: VecDeque<u8>,
    /// The peer sent more than our buffer holds (it ignored our credit):
    /// the data is lost, so the connection is reset.
    overrun: bool,
    /// When we last heard from the peer or probed it ([`PROBE_US`]).
    last_seen: u64,
    /// When the connection was made (accepted or requested).
    accepted_at: u64,
    /// Since when bytes wait to be sent that the peer's credit lets none
    /// of through ([`NUDGE_US`]).
    starved_since: Option<u64>,
    /// When we last nudged the peer about it.
    nudged_at: u64,
}

impl ConnState {
    fn key(&self) -> Key {
        Key {
            peer: self.info.dst,
            local_port: self.info.src_port,
        }
    }
}

/// What the connection table asks of the device: virtio-drivers'
/// `VirtIOSocket` calls it makes, with the driver's own types, so that the
/// firmware runs the driver as is, and the table's tests run on the host
/// against a fake device fed with synthetic events.
pub trait Device {
    /// What [`Device::poll`] delivers (virtio-drivers' `VsockEvent`).
    type Event: core::fmt::Debug;
    /// The fields of `event` the table looks at.
    fn event(event: &Self::Event) -> Event;
    /// Records the peer's credit from `event` in `info`, which the
    /// driver's [`Device::send`] checks (`ConnectionInfo::update_for_event`).
    fn update_for_event(info: &mut ConnectionInfo, event: &Self::Event);
    /// The CID the device was given.
    fn guest_cid(&self) -> u64;
    /// Takes the next packet from the device, if there is one, and hands
    /// its event and body to `handler` (`VirtIOSocket::poll`).
    fn poll(
        &mut self,
        handler: impl FnOnce(Self::Event, &[u8]) -> virtio_drivers::Result<Option<Self::Event>>,
    ) -> virtio_drivers::Result<Option<Self::Event>>;
    /// Sends `REQUEST`.
    fn connect(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result;
    /// Sends `RESPONSE`.
    fn accept(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result;
    /// Sends `buf` in one `RW` packet if the peer's credit, as the driver
    /// counts it in `info`, has room for all of it; otherwise fails with
    /// `InsufficientBufferSpaceInPeer` (after a `CREDIT_REQUEST`, unless
    /// one is pending).
    fn send(&mut self, buf: &[u8], info: &mut ConnectionInfo) -> virtio_drivers::Result;
    /// Sends `CREDIT_UPDATE`.
    fn credit_update(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result;
    /// Sends `SHUTDOWN` (no more sends, no more receives).
    fn shutdown(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result;
    /// Sends `RST`.
    fn force_close(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result;
}

/// A packet header from the peer, as the table sees it: virtio-drivers'
/// `VsockEvent`, whose buffer status type is not exported, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The peer who sent it.
    pub source: VsockAddr,
    /// The CID and port on our side.
    pub destination: VsockAddr,
    /// The peer's `buf_alloc`.
    pub buf_alloc: u32,
    /// The peer's `fwd_cnt`.
    pub fwd_cnt: u32,
    /// What the packet says.
    pub kind: VsockEventType,
}

impl<H: Hal, T: Transport> Device for VirtIOSocket<H, T, RX_BUFFER_SIZE> {
    type Event = VsockEvent;
    fn event(event: &VsockEvent) -> Event {
        Event {
            source: event.source,
            destination: event.destination,
            buf_alloc: event.buffer_status.buffer_allocation,
            fwd_cnt: event.buffer_status.forward_count,
            kind: event.event_type.clone(),
        }
    }
    fn update_for_event(info: &mut ConnectionInfo, event: &VsockEvent) {
        info.update_for_event(event);
    }
    fn guest_cid(&self) -> u64 {
        VirtIOSocket::guest_cid(self)
    }
    fn poll(
        &mut self,
        handler: impl FnOnce(VsockEvent, &[u8]) -> virtio_drivers::Result<Option<VsockEvent>>,
    ) -> virtio_drivers::Result<Option<VsockEvent>> {
        VirtIOSocket::poll(self, handler)
    }
    fn connect(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::connect(self, info)
    }
    fn accept(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::accept(self, info)
    }
    fn send(&mut self, buf: &[u8], info: &mut ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::send(self, buf, info)
    }
    fn credit_update(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::credit_update(self, info)
    }
    fn shutdown(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::shutdown(self, info)
    }
    fn force_close(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        VirtIOSocket::force_close(self, info)
    }
}

/// The guest's vsock device: virtio-drivers' `VirtIOSocket` under the
/// connection table.
pub type GuestVsock<H, T> = VsockTable<VirtIOSocket<H, T, RX_BUFFER_SIZE>>;

/// Listening ports, a backlog of accepted connections, and the table of
/// open connections, over a [`Device`] ([`GuestVsock`] in the firmware).
///
/// It drives virtio-drivers' `VirtIOSocket` directly rather than through
/// its `VsockConnectionManager`: the manager resets a connection as soon as
/// the peer's `SHUTDOWN` has been read to the end, so a server could not
/// send the answers to requests that came just before a half-close; here
/// a connection lasts until we close it.
pub struct VsockTable<D: Device> {
    driver: D,
    listening: Vec<u32>,
    conns: Vec<ConnState>,
    backlog: VecDeque<ConnId>,
    max_pending: usize,
    next_id: u32,
    buffer_size: u32,
    limits: Limits,
    clock: Option<Clock>,
    /// Polls so far: the time base when there is no clock.
    polls: u64,
    /// Stale packets dropped ([`GuestVsock::stale_packets`]).
    stale_packets: u64,
    /// Malformed packets dropped (logged at powers of two).
    malformed_packets: u64,
    /// Packets with operation 0 (logged at powers of two).
    op0_packets: u64,
}

impl<H: Hal, T: Transport> VsockTable<VirtIOSocket<H, T, RX_BUFFER_SIZE>> {
    /// Initialises the virtio socket device behind `transport`, with
    /// [`CONNECTION_BUFFER_SIZE`] bytes of receive buffer per connection.
    pub fn new(transport: T) -> Result<Self> {
        Self::with_buffer_size(transport, CONNECTION_BUFFER_SIZE)
    }

    /// [`GuestVsock::new`] with `buffer_size` bytes of receive buffer per
    /// connection (at least [`RX_BUFFER_SIZE`], so that one full RX buffer
    /// always fits once the ring is drained).
    pub fn with_buffer_size(transport: T, buffer_size: u32) -> Result<Self> {
        let driver = VirtIOSocket::<H, T, RX_BUFFER_SIZE>::new(transport).map_err(virtio)?;
        Ok(VsockTable::with_device(driver, buffer_size))
    }
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
    /// [`GuestVsock::buffer_size`] bytes once served, [`ACCEPT_WINDOW`]
    /// before.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accepts connections on `port` from now on. They queue up until
    /// [`GuestVsock::accept`] takes them.
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
    /// [`GuestVsock::accept`].
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

    /// Processes at most one event from the device; `Ok(false)` if there
    /// was none.
    ///
    /// A malformed packet (bad header or length, unknown operation) is
    /// dropped with a warning: it concerns that packet only, and the driver
    /// has recycled its buffer. Other device errors are returned.
    pub fn poll(&mut self) -> Result<bool> {
        self.polls += 1;
        let now = self.now();
        let guest_cid = self.driver.guest_cid();
        let conns = &mut self.conns;
        let mut stale = None;
        let result = self.driver.poll(|event, body| {
            let e = D::event(&event);
            if e.destination.cid == guest_cid
                && let Some(c) = conns
                    .iter_mut()
                    .find(|c| c.info.dst == e.source && c.info.src_port == e.destination.port)
            {
                if !c.credit.plausible(e.fwd_cnt) {
                    // An RX buffer the device did not write (see
                    // `Credit::plausible`): an old packet, not news.
                    stale = Some((c.id, e.fwd_cnt));
                    return Ok(None);
                }
                D::update_for_event(&mut c.info, &event);
                c.last_seen = now;
                c.credit.peer_status(e.buf_alloc, e.fwd_cnt);
                // After our SHUTDOWN nobody reads the connection any more
                // (`close`): its data would only hold heap, and count as
                // unread, until the peer's RST.
                if let VsockEventType::Received { .. } = e.kind
                    && !matches!(c.phase, Phase::Closing(_))
                {
                    if !c.credit.fits(c.rx.len(), body.len()) {
                        c.overrun = true;
                    } else {
                        let needed = c.rx.len() + body.len();
                        let capacity = c.credit.ring_capacity(c.rx.capacity(), needed);
                        c.rx.reserve_exact(capacity - c.rx.len());
                        c.rx.extend(body);
                    }
                }
            }
            Ok(Some(event))
        });
        if let Some((id, fwd_cnt)) = stale {
            debug!("vsock {id}: dropped a stale packet (fwd_cnt {fwd_cnt} goes back)");
            self.stale_packets = self.stale_packets.wrapping_add(1);
            return Ok(true);
        }
        match result {
            Ok(Some(event)) => {
                self.record(&event, guest_cid);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(virtio_drivers::Error::SocketDeviceError(SocketError::InvalidOperation)) => {
                // Operation 0: vhost-device-vsock's report of a failed read
                // of some host socket, with the header zeroed.
                self.probe_all();
                Ok(true)
            }
            Err(virtio_drivers::Error::SocketDeviceError(
                e @ (SocketError::BufferTooShort
                | SocketError::InvalidNumber
                | SocketError::UnknownOperation(_)
                | SocketError::UnexpectedDataInPacket),
            )) => {
                // vhost-device-vsock 0.3.0 hands back RX buffers it did
                // not write (see `Credit::plausible`): an old RW header
                // whose length the used length does not cover.
                self.malformed_packets = self.malformed_packets.wrapping_add(1);
                if self.malformed_packets.is_power_of_two() {
                    warn!(
                        "vsock: dropped a malformed packet: {e} ({} so far)",
                        self.malformed_packets
                    );
                }
                Ok(true)
            }
            Err(e) => Err(virtio(e)),
        }
    }

    /// After a packet with operation 0 (see the module docs): a credit
    /// update on every connected connection. vhost-device-vsock re-arms its
    /// read of the host's socket on a credit update, and the second read of
    /// a socket that failed returns the end of the stream, which it reports
    /// as `SHUTDOWN`: so the connection that the zeroed packet was about
    /// learns that it is closed, instead of staying silent for ever. For the
    /// others it is a harmless repetition of our credit.
    fn probe_all(&mut self) {
        self.op0_packets = self.op0_packets.wrapping_add(1);
        if self.op0_packets.is_power_of_two() {
            warn!(
                "vsock: a packet with operation 0 (a failed host socket, connection unknown; \
                 {} so far); probing {} connections",
                self.op0_packets,
                self.conns.len()
            );
        }
        for s in &self.conns {
            if s.phase == Phase::Connected {
                let _ = self.driver.credit_update(&s.info);
            }
        }
    }

    /// [`GuestVsock::poll`], and a spin-loop hint if there was nothing.
    pub fn poll_or_spin(&mut self) -> Result<()> {
        if !self.poll()? {
            spin_loop();
        }
        Ok(())
    }

    fn record(&mut self, event: &D::Event, guest_cid: u64) {
        trace!("vsock: {event:?}");
        let e = D::event(event);
        if e.destination.cid != guest_cid {
            return;
        }
        let key = Key {
            peer: e.source,
            local_port: e.destination.port,
        };
        let found = self.conns.iter().position(|s| s.key() == key);
        if e.kind == VsockEventType::ConnectionRequest {
            if let Some(i) = found {
                let old = &self.conns[i];
                let age = self.now().wrapping_sub(old.accepted_at);
                if age < DUPLICATE_REQUEST_US {
                    // The same connection again: answering it twice makes
                    // vhost-device-vsock 0.3.0 write a second `OK` line
                    // into the host's stream, and forgetting the first
                    // loses what it holds.
                    warn!(
                        "vsock {}: a second REQUEST from {}:{} {} us after the first: ignored",
                        old.id, key.peer.cid, key.peer.port, age
                    );
                    return;
                }
                // Later, a request for a connection we still know is a
                // new connection on a reused port: the old one is gone.
                let old = old.id;
                self.forget(old);
            }
            let mut info = self.new_info(key, ACCEPT_WINDOW.min(self.buffer_size));
            D::update_for_event(&mut info, event);
            if !self.listening.contains(&key.local_port) {
                let _ = self.driver.force_close(&info);
                return;
            }
            if self.backlog.len() >= self.max_pending {
                warn!(
                    "vsock: {} connections already wait to be served; resetting {}:{}",
                    self.backlog.len(),
                    key.peer.cid,
                    key.peer.port
                );
                let _ = self.driver.force_close(&info);
                return;
            }
            if let Err(e) = self.driver.accept(&info) {
                warn!("vsock: accepting {}:{}: {e}", key.peer.cid, key.peer.port);
                return;
            }
            let id = self.insert(info, Phase::Connected);
            if let Some(s) = self.state(id) {
                s.credit.peer_status(e.buf_alloc, e.fwd_cnt);
            }
            self.backlog.push_back(id);
            return;
        }
        let Some(i) = found else {
            return;
        };
        let state = &mut self.conns[i];
        let id = state.id;
        if state.overrun {
            warn!("vsock {id}: the peer sent more than our credit allowed; resetting");
            self.finish(id, true);
            return;
        }
        match e.kind {
            VsockEventType::Connected if state.phase == Phase::Connecting => {
                state.phase = Phase::Connected;
            }
            VsockEventType::Disconnected { reason } => match state.phase {
                // The answer to our SHUTDOWN (or the peer's own): done.
                Phase::Closing(_) => self.finish(id, reason == DisconnectReason::Shutdown),
                _ => state.phase = Phase::PeerClosed(reason),
            },
            VsockEventType::CreditRequest => {
                if let Err(e) = self.driver.credit_update(&state.info) {
                    warn!("vsock {id}: credit update: {e}");
                }
            }
            _ => {}
        }
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
        let n = {
            let (a, b) = state.rx.as_slices();
            let n1 = a.len().min(buf.len());
            buf[..n1].copy_from_slice(&a[..n1]);
            let n2 = b.len().min(buf.len() - n1);
            buf[n1..n1 + n2].copy_from_slice(&b[..n2]);
            n1 + n2
        };
        if n == 0 {
            return Ok(match state.phase {
                Phase::PeerClosed(_) => Recv::Eof,
                _ => Recv::Empty,
            });
        }
        state.rx.drain(..n);
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
    /// (after [`GuestVsock::poll`] has seen it) goes on. After the peer's
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

    /// [`GuestVsock::send_some`]'s packets.
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
    /// [`GuestVsock::tick`], ends it), or at once if the peer has reset it
    /// already. Whatever the peer still sends is dropped.
    pub fn close(&mut self, id: ConnId) -> Result<()> {
        let now = self.now();
        let Some(state) = find(&mut self.conns, id) else {
            return Ok(());
        };
        match state.phase {
            Phase::Connected | Phase::PeerClosed(DisconnectReason::Shutdown) => {
                state.phase = Phase::Closing(now);
                state.rx = VecDeque::new();
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
    /// [`ACCEPT_WINDOW`] to [`GuestVsock::buffer_size`], and a credit
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

    /// A blocking [`Connection`] over connection `id`, which is served
    /// from now on ([`GuestVsock::serve`]).
    pub fn stream(&mut self, id: ConnId) -> Stream<'_, D> {
        self.serve(id);
        Stream {
            vsock: self,
            id,
            shut: false,
        }
    }

    /// A connection's header state, advertising `buf_alloc` bytes.
    fn new_info(&self, key: Key, buf_alloc: u32) -> ConnectionInfo {
        let mut info = ConnectionInfo::new(key.peer, key.local_port);
        info.buf_alloc = buf_alloc;
        info
    }

    fn insert(&mut self, info: ConnectionInfo, phase: Phase) -> ConnId {
        let last_seen = self.now();
        let credit = Credit::new(info.buf_alloc);
        let id = ConnId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.push(ConnState {
            id,
            info,
            phase,
            credit,
            rx: VecDeque::new(),
            overrun: false,
            last_seen,
            accepted_at: last_seen,
            starved_since: None,
            nudged_at: last_seen,
        });
        id
    }

    /// Forgets connection `id`, first sending `RST` if `rst`.
    fn finish(&mut self, id: ConnId, rst: bool) {
        if rst
            && let Some(s) = self.conns.iter().find(|s| s.id == id)
            && let Err(e) = self.driver.force_close(&s.info)
        {
            warn!("vsock {id}: reset: {e}");
        }
        self.forget(id);
    }

    fn forget(&mut self, id: ConnId) {
        self.conns.retain(|s| s.id != id);
        self.backlog.retain(|&b| b != id);
    }

    fn state(&mut self, id: ConnId) -> Option<&mut ConnState> {
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

fn find(conns: &mut [ConnState], id: ConnId) -> Option<&mut ConnState> {
    conns.iter_mut().find(|s| s.id == id)
}

/// One connection of a [`GuestVsock`] as a blocking [`Connection`]: every
/// call polls the device (recording events for other connections) until it
/// can go on. While it is used, no other connection is served.
///
/// Dropping it without [`Connection::shutdown`] resets the connection.
pub struct Stream<'a, D: Device> {
    vsock: &'a mut VsockTable<D>,
    id: ConnId,
    shut: bool,
}

impl<D: Device> Stream<'_, D> {
    /// The connection's handle.
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl<D: Device> Connection for Stream<'_, D> {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        if self.shut {
            return Err(Error::ShutDown);
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.vsock.send_some(self.id, rest)?;
            rest = &rest[n..];
            if !rest.is_empty() {
                self.vsock.poll_or_spin()?;
                // Probes a peer that has gone quiet (PROBE_US).
                self.vsock.tick();
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
        loop {
            match self.vsock.recv(self.id, buf)? {
                Recv::Data(n) => return Ok(n),
                Recv::Eof => return Ok(0),
                Recv::Empty => {
                    self.vsock.poll_or_spin()?;
                    self.vsock.tick();
                }
            }
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shut {
            return Ok(());
        }
        self.shut = true;
        let r = self.vsock.close(self.id);
        // Wait, bounded, for the peer's RST (events for other connections
        // are recorded meanwhile).
        while self.vsock.exists(self.id) {
            self.vsock.poll_or_spin()?;
            self.vsock.tick();
        }
        r
    }
}

impl<D: Device> Drop for Stream<'_, D> {
    fn drop(&mut self) {
        if !self.shut {
            self.shut = true;
            self.vsock.reset(self.id);
        }
    }
}

#[cfg(test)]
mod tests;
