//! A virtio [`Transport`] that does not let a lost TX notification hang
//! the guest.
//!
//! # Why
//!
//! vhost-user-backend before 0.22 (vhost-device-vsock 0.3.0, the newest
//! release, uses 0.20) drops a vring kick that arrives before the front end
//! has sent `SET_VRING_ENABLE` (rust-vmm/vhost issue 247). QEMU sends that
//! message when the driver sets `DRIVER_OK`, and the daemon handles it on
//! another thread than the kicks: the guest's first TX notification right
//! after start-up can be consumed and ignored. virtio-drivers 0.13 sends
//! every vsock packet with `VirtQueue::add_notify_wait_pop`, which notifies
//! once and then spins until the device has used the buffer, with no
//! re-notification and no timeout: the guest then waits for ever (and the
//! host relaunched the VM after 3 s, about one boot in 30 to 60 here).
//!
//! # How
//!
//! [`KickRetry`] wraps the transport that virtio-drivers drives. It records
//! where each queue's rings are when the driver sets the queue up
//! ([`Transport::queue_set`]; physical == virtual in this guest). When the
//! driver notifies the TX queue, it notifies the device and then waits
//! until the device has used every buffer made available on that queue,
//! notifying again after 5 ms, 10 ms, ... (at most every [`MAX_INTERVAL_US`])
//! while the device has not even taken them. With `VIRTIO_F_EVENT_IDX`
//! (which this daemon offers) "taken" is visible: a device that processed
//! the queue has set the used ring's `avail_event` to the next index, and
//! vhost-device-vsock marks the buffer used only later, from another
//! thread (often more than 2 ms later on a loaded host: re-notifying then
//! was needless in 475 of 500 boots). Other queues are notified once, as
//! before.
//!
//! Why this is correct for virtio-drivers 0.13 (read at its source):
//!
//! - The TX queue is only used through `add_notify_wait_pop` (the vsock
//!   driver's `send_packet_to_tx_queue`): one buffer chain at a time, whose
//!   caller spins until it is used anyway. Waiting here first changes
//!   nothing but who spins, and afterwards `add_notify_wait_pop` finds the
//!   buffer used at once.
//! - `add_notify_wait_pop` calls `notify` only if `should_notify()`: with
//!   `VIRTIO_F_EVENT_IDX` (negotiated with this daemon) when the device's
//!   `avail_event` asks for it. Before the device has processed the queue
//!   for the first time `avail_event` is 0, so the first packet is always
//!   notified, and that is the kick that can be lost. A suppressed
//!   notification means the device is busy with the queue and will see the
//!   buffer without one.
//! - A notification the device did not need is harmless: the daemon finds
//!   no new buffer, or one it would have found anyway.
//! - RX buffers are added by the driver and taken by the device when it
//!   has data (the daemon looks for them then), so a lost RX kick does not
//!   block anything; the event queue is not used by virtio-drivers.
//!
//! The wait has no time limit: handing control back to virtio-drivers'
//! spin would not end the wait either, and could not notify again. After
//! [`WARN_AFTER_US`] without progress it logs a warning once; the host's
//! deadlines and its relaunch of a VM that does not connect at boot are the
//! last resort.
//!
//! Every wait that needed another notification is counted and logged at
//! info level ("re-notified #n"), so that a boot that needed it shows in
//! the serial log. From the guest a lost kick and a device thread not
//! scheduled for 5 ms look the same: the count is an upper bound of the
//! lost kicks.

use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use log::{info, warn};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The transport the firmware gives virtio-drivers: the architecture's,
/// wrapped.
pub type VsockTransport = KickRetry<crate::arch::VirtioTransport>;

/// Index of the vsock TX virtqueue (virtio spec 5.10.2 "Virtqueues":
/// 0 rx, 1 tx, 2 event).
const TX_QUEUE: u16 = 1;

/// Queues whose rings are recorded (vsock has three).
const QUEUES: usize = 3;

/// First wait before notifying again.
const FIRST_INTERVAL_US: u64 = 5_000;

/// Longest wait between two notifications.
pub const MAX_INTERVAL_US: u64 = 64_000;

/// When a TX buffer still has not been used after this long, say so.
pub const WARN_AFTER_US: u64 = 1_000_000;

/// TX buffers that the device used only after more notifications.
static RECOVERED: AtomicU32 = AtomicU32::new(0);

/// `VIRTIO_F_EVENT_IDX` (virtio spec 6, feature bit 29).
const F_EVENT_IDX: u64 = 1 << 29;

/// Where a queue's indices are: `avail.idx` (driver area + 2) and
/// `used.idx` (device area + 2), virtio spec 2.7.6 and 2.7.8; with
/// `VIRTIO_F_EVENT_IDX`, also the used ring's `avail_event` (after its
/// `size` 8-byte elements, device area + 4 + 8 x size).
#[derive(Clone, Copy)]
struct Rings {
    avail_idx: usize,
    used_idx: usize,
    avail_event: Option<usize>,
}

impl Rings {
    /// Whether the device has taken every available buffer (it may not
    /// have marked them used yet): with `VIRTIO_F_EVENT_IDX` a device that
    /// has processed the queue sets `avail_event` to the index it will
    /// look at next. vhost-device-vsock does so after handing the packet
    /// on (`enable_notification`) and marks the buffer used later, from
    /// another thread. Without the feature, unknown (`false`).
    fn taken(&self) -> bool {
        let Some(avail_event) = self.avail_event else {
            return false;
        };
        // SAFETY: the used ring's `avail_event` field, an aligned u16 in a
        // ring that stays allocated until `queue_unset` (see `pending`).
        let event = unsafe { AtomicU16::from_ptr(avail_event as *mut u16) };
        // SAFETY: the avail ring's `idx` (see `pending`).
        let avail = unsafe { AtomicU16::from_ptr(self.avail_idx as *mut u16) };
        event.load(Ordering::Acquire) == avail.load(Ordering::Acquire)
    }

    /// Buffers made available that the device has not used yet.
    fn pending(&self) -> bool {
        // SAFETY: both addresses are the `idx` fields of the rings that
        // virtio-drivers allocated for this queue (through `IdentityHal`,
        // so physical == virtual, and 2-byte aligned: the rings are at
        // least 2-byte aligned by the virtio layout) and passed to
        // `queue_set`; they stay allocated until `queue_unset`, which
        // forgets them. The device writes `used.idx` concurrently;
        // virtio-drivers itself accesses both as `AtomicU16`.
        let avail = unsafe { AtomicU16::from_ptr(self.avail_idx as *mut u16) };
        // SAFETY: as above, for the used ring's `idx`.
        let used = unsafe { AtomicU16::from_ptr(self.used_idx as *mut u16) };
        let (avail, used) = (avail.load(Ordering::Acquire), used.load(Ordering::Acquire));
        avail != used
    }
}

/// A transport whose TX notifications are repeated until the device has
/// used the buffers (see the module documentation).
pub struct KickRetry<T: Transport> {
    inner: T,
    rings: [Option<Rings>; QUEUES],
    event_idx: bool,
    clock: fn() -> u64,
}

impl<T: Transport> KickRetry<T> {
    /// Wraps `inner`; `clock` is a monotonic clock in microseconds.
    pub fn new(inner: T, clock: fn() -> u64) -> Self {
        Self {
            inner,
            rings: [None; QUEUES],
            event_idx: false,
            clock,
        }
    }

    /// Waits until the device has used every available buffer of `rings`,
    /// notifying `queue` again while it has not.
    fn wait_used(&mut self, queue: u16, rings: Rings) {
        if !rings.pending() {
            return;
        }
        let start = (self.clock)();
        let mut last = start;
        let mut interval = FIRST_INTERVAL_US;
        let mut extra = 0u32;
        let mut warned = false;
        while rings.pending() {
            let now = (self.clock)();
            if now.wrapping_sub(last) >= interval {
                // A device that has taken the buffer will mark it used:
                // notify only one that has not looked at the queue.
                if !rings.taken() {
                    self.inner.notify(queue);
                    extra += 1;
                    interval = (interval * 2).min(MAX_INTERVAL_US);
                }
                last = now;
            }
            if !warned && now.wrapping_sub(start) >= WARN_AFTER_US {
                warn!(
                    "vsock: the device has not taken a TX buffer for {} ms ({extra} more notifications)",
                    now.wrapping_sub(start) / 1000
                );
                warned = true;
            }
            core::hint::spin_loop();
        }
        if extra > 0 {
            let n = RECOVERED.fetch_add(1, Ordering::Relaxed) + 1;
            info!(
                "vsock: the device had not taken a TX buffer {} us after the first notification; it did after {extra} more (lost kick, or the device not scheduled; re-notified #{n})",
                (self.clock)().wrapping_sub(start)
            );
        }
    }
}

impl<T: Transport> Transport for KickRetry<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.event_idx = driver_features & F_EVENT_IDX != 0;
        self.inner.write_driver_features(driver_features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        // A test firmware can lose the first TX kick on purpose, as the
        // daemon may, to prove that the wait below recovers.
        #[cfg(feature = "test-hooks")]
        let lost = queue == TX_QUEUE && crate::testing::take_lost_kick();
        #[cfg(not(feature = "test-hooks"))]
        let lost = false;
        if !lost {
            self.inner.notify(queue);
        }
        if queue == TX_QUEUE
            && let Some(rings) = self.rings[usize::from(queue)]
        {
            self.wait_used(queue, rings);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
        if let Some(slot) = self.rings.get_mut(usize::from(queue)) {
            *slot = Some(Rings {
                avail_idx: driver_area as usize + 2,
                used_idx: device_area as usize + 2,
                avail_event: self
                    .event_idx
                    .then(|| device_area as usize + 4 + 8 * size as usize),
            });
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(slot) = self.rings.get_mut(usize::from(queue)) {
            *slot = None;
        }
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
