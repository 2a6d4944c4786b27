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
//! host tests (`guest/tests/`, plain `cargo test`), a fake device fed
//! with synthetic events, hostile ones included.
//!
//! The files, one concern each:
//!
//! - `device.rs`: the [`Device`] trait and its implementation on
//!   `VirtIOSocket` (no state);
//! - `table.rs`: [`VsockTable`], the connection table and the calls a
//!   server makes on it; `poll.rs`: what it does with each packet the
//!   device delivers;
//! - `conn.rs`: one connection's state; `rx.rs`: its receive ring;
//! - `stream.rs`: the blocking [`Stream`] adapter;
//! - `fake.rs` (tests only): the fake device and test clock, the test
//!   context of the table's host tests (`tests/`, one file per topic) and
//!   of the stream's.
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
//!
//! [`Connection`]: crate::Connection

mod conn;
mod device;
mod poll;
mod rx;
mod stream;
mod table;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use crate::endpoint::Recv;
pub use conn::ConnId;
pub use device::{Device, Event, GuestVsock, RX_BUFFER_SIZE, RX_QUEUE_BYTES};
pub use stream::Stream;
pub use table::{
    ACCEPT_WINDOW, CONNECTION_BUFFER_SIZE, Clock, DEFAULT_MAX_PENDING, Limits, MAX_PACKET,
    NUDGE_US, PROBE_US, VsockTable,
};
pub use virtio_drivers::Hal;
pub use virtio_drivers::device::socket::VsockAddr;
pub use virtio_drivers::transport::Transport;

/// The host's CID.
pub const HOST_CID: u64 = 2;
