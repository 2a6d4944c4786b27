//! One connection of the table: its handle, its name on the wire, its
//! phase, and the credit and receive ring it keeps. Plain data; the table
//! (`table.rs`, `poll.rs`) moves it from phase to phase.

use virtio_drivers::device::socket::{ConnectionInfo, DisconnectReason, VsockAddr};

use super::rx::RxRing;
use crate::credit::Credit;

/// A handle on one connection of a [`GuestVsock`](super::GuestVsock).
/// Handles are never reused, so a stale one names no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(super) u32);

impl core::fmt::Display for ConnId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A connection's name on our side: the peer's address and our port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) peer: VsockAddr,
    pub(super) local_port: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct ConnState {
    pub(super) id: ConnId,
    /// The driver's view: addresses, our `buf_alloc` and `fwd_cnt`, the
    /// peer's credit.
    pub(super) info: ConnectionInfo,
    pub(super) phase: Phase,
    pub(super) credit: Credit,
    /// Received bytes not yet read; never more than our `buf_alloc`
    /// (`credit.buffer_size`).
    pub(super) rx: RxRing,
    /// The peer sent more than our buffer holds (it ignored our credit):
    /// the data is lost, so the connection is reset.
    pub(super) overrun: bool,
    /// When we last heard from the peer or probed it
    /// ([`PROBE_US`](super::PROBE_US)).
    pub(super) last_seen: u64,
    /// When the connection was made (accepted or requested).
    pub(super) accepted_at: u64,
    /// Since when bytes wait to be sent that the peer's credit lets none
    /// of through ([`NUDGE_US`](super::NUDGE_US)).
    pub(super) starved_since: Option<u64>,
    /// When we last nudged the peer about it.
    pub(super) nudged_at: u64,
}

impl ConnState {
    /// Connection `id`, made at `now` (µs), whose header state is `info`
    /// (its `buf_alloc` is our receive buffer).
    pub(super) fn new(id: ConnId, info: ConnectionInfo, phase: Phase, now: u64) -> Self {
        Self {
            id,
            credit: Credit::new(info.buf_alloc),
            info,
            phase,
            rx: RxRing::new(),
            overrun: false,
            last_seen: now,
            accepted_at: now,
            starved_since: None,
            nudged_at: now,
        }
    }

    /// The connection's name on our side.
    pub(super) fn key(&self) -> Key {
        Key {
            peer: self.info.dst,
            local_port: self.info.src_port,
        }
    }
}

/// Connection `id` of `conns`, if it is there.
pub(super) fn find(conns: &mut [ConnState], id: ConnId) -> Option<&mut ConnState> {
    conns.iter_mut().find(|s| s.id == id)
}
