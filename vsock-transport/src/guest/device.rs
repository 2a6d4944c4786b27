//! The device layer: what the connection table asks of a virtio socket
//! device ([`Device`]), and its implementation on virtio-drivers'
//! `VirtIOSocket` ([`GuestVsock`]). Nothing here keeps state: the table
//! (`table.rs`) does, and its host tests run it over a fake device.

use virtio_drivers::Hal;
use virtio_drivers::device::socket::{
    ConnectionInfo, SocketError, VirtIOSocket, VsockAddr, VsockEvent, VsockEventType,
};
use virtio_drivers::transport::Transport;

use super::{CONNECTION_BUFFER_SIZE, VsockTable};
use crate::{Error, Result};

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

/// A device error as this crate's [`Error`].
pub(super) fn virtio(e: impl Into<virtio_drivers::Error>) -> Error {
    Error::Virtio(e.into())
}

/// Whether `e` is the socket error `want`.
pub(super) fn is_socket_error(e: &virtio_drivers::Error, want: SocketError) -> bool {
    matches!(e, virtio_drivers::Error::SocketDeviceError(s) if *s == want)
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
