//! Per-connection credit accounting of a virtio-vsock stream, as pure
//! functions (no device): what may be sent now, and when our consumption
//! must be announced.
//!
//! ```text
//! peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt)      (all u32, wrapping)
//! ```
//!
//! See the module docs of `guest` for why both directions need care with
//! virtio-drivers 0.13. Compiled for the `guest` feature, and for the
//! tests of every build, so the host's `cargo test` checks it.

/// Largest `RW` packet body we send: Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`
/// (64 KiB), which device back-ends also assume.
pub(crate) const MAX_PACKET: usize = 64 * 1024;

/// What we know of one connection's credit, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit {
    /// The peer's last `buf_alloc`.
    pub(crate) peer_buf_alloc: u32,
    /// The peer's last `fwd_cnt`.
    pub(crate) peer_fwd_cnt: u32,
    /// Body bytes we have sent.
    pub(crate) tx_cnt: u32,
    /// Body bytes consumed since our `fwd_cnt` last went to the peer.
    pub(crate) unannounced: u32,
    /// Our own receive buffer (the `buf_alloc` we advertise). It only
    /// grows ([`Credit::grow`]), so the peer, whose credit follows the
    /// latest value it saw, never has more in flight than it allows.
    pub(crate) buffer_size: u32,
}

impl Credit {
    /// A connection whose peer has advertised nothing yet.
    pub(crate) fn new(buffer_size: u32) -> Self {
        Self {
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            unannounced: 0,
            buffer_size,
        }
    }

    /// Takes the peer's `buf_alloc` and `fwd_cnt` from a packet header.
    pub(crate) fn peer_status(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, as far as we have seen.
    /// It can only be lower than the driver's own figure (it sees a few
    /// events we do not, such as `CREDIT_REQUEST`), never higher; a peer
    /// that shrank its buffer below what is in flight gives 0.
    pub(crate) fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether `fwd_cnt` from a packet of the peer can be the peer's: its
    /// count of forwarded bytes never goes back and never exceeds what we
    /// sent. A packet that fails this is stale: vhost-device-vsock 0.3.0
    /// hands the guest an RX buffer it did not write (its `recv_pkt` for a
    /// connection that is gone returns `Ok` without touching the buffer),
    /// so the guest reads the header of whatever packet that buffer held
    /// before, an older one. Taking its `fwd_cnt` would move the credit
    /// back, and virtio-drivers 0.13 computes the peer's free space with
    /// wrapping `u32` arithmetic: once more than `buf_alloc` is counted in
    /// flight it sees almost 4 GiB free, sends what the peer has no room
    /// for, and the daemon drops it (`LocalTxBufFull`): bytes lost from the
    /// middle of a stream.
    pub(crate) fn plausible(&self, fwd_cnt: u32) -> bool {
        self.tx_cnt.wrapping_sub(fwd_cnt) <= self.tx_cnt.wrapping_sub(self.peer_fwd_cnt)
    }

    /// How many of `pending` bytes to offer the driver in the next `RW`
    /// packet (0 if `pending` is 0, or if more than the peer's buffer is in
    /// flight: a peer that shrank its buffer, for which virtio-drivers'
    /// wrapping arithmetic would see room that is not there).
    ///
    /// Every packet costs a round trip through the device, whatever its
    /// size, so send big ones: the credit we know of when it covers the
    /// rest or half the peer's buffer; otherwise a full packet, which the
    /// driver refuses while asking the peer for a credit update (once: it
    /// keeps a pending flag), so the caller tries again after the next
    /// events without busy-sending small packets.
    pub(crate) fn next_chunk(&self, pending: usize) -> usize {
        if self.tx_cnt.wrapping_sub(self.peer_fwd_cnt) > self.peer_buf_alloc {
            return 0;
        }
        let want = pending.min(MAX_PACKET);
        let free = self.peer_free() as usize;
        if free >= want || free >= (self.peer_buf_alloc as usize / 2).max(1) {
            want.min(free)
        } else {
            want
        }
    }

    /// Records `n` bytes sent in one packet (which carried our `fwd_cnt`,
    /// so nothing is unannounced any more).
    pub(crate) fn sent(&mut self, n: usize) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
        self.unannounced = 0;
    }

    /// Raises our buffer to `buffer_size` (never lowers it: the peer may
    /// already have sent what the larger window allowed); `true` if it
    /// grew, so the peer must be told (a credit update).
    pub(crate) fn grow(&mut self, buffer_size: u32) -> bool {
        if buffer_size > self.buffer_size {
            self.buffer_size = buffer_size;
            true
        } else {
            false
        }
    }

    /// Whether `n` more received bytes fit our buffer, which holds
    /// `buffered` unread ones. A peer that honours the credit we
    /// advertised never sends more; one that does has lost data.
    pub(crate) fn fits(&self, buffered: usize, n: usize) -> bool {
        buffered.saturating_add(n) <= self.buffer_size as usize
    }

    /// Capacity for a receive ring of capacity `capacity` that must hold
    /// `needed` bytes (which [`Credit::fits`]): the usual doubling, but
    /// never beyond our buffer, so a ring holds no more heap than the
    /// `buf_alloc` we advertised.
    pub(crate) fn ring_capacity(&self, capacity: usize, needed: usize) -> usize {
        if needed <= capacity {
            capacity
        } else {
            capacity
                .saturating_mul(2)
                .max(needed)
                .min(self.buffer_size as usize)
                .max(needed)
        }
    }

    /// Records `n` bytes consumed from our buffer; `true` if a credit
    /// update is due now: a quarter of our buffer consumed unannounced, so
    /// the sender always sees at least three quarters of it free once we
    /// have drained it.
    pub(crate) fn consumed(&mut self, n: usize) -> bool {
        self.unannounced = self.unannounced.saturating_add(n as u32);
        if self.unannounced >= (self.buffer_size / 4).max(1) {
            self.unannounced = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credit(buf_alloc: u32, fwd_cnt: u32, tx_cnt: u32) -> Credit {
        let mut c = Credit::new(256 * 1024);
        c.peer_status(buf_alloc, fwd_cnt);
        c.tx_cnt = tx_cnt;
        c
    }

    #[test]
    fn peer_free_follows_the_formula() {
        assert_eq!(credit(65536, 0, 0).peer_free(), 65536);
        assert_eq!(credit(65536, 1000, 5000).peer_free(), 65536 - 4000);
        // Counters wrap.
        assert_eq!(credit(65536, u32::MAX - 9, 10).peer_free(), 65536 - 20);
        // A peer that shrank its buffer below what is in flight.
        assert_eq!(credit(100, 0, 200).peer_free(), 0);
    }

    #[test]
    fn chunks_never_exceed_a_packet_or_known_credit_when_it_is_ample() {
        let c = credit(256 * 1024, 0, 0);
        assert_eq!(c.next_chunk(1_000_000), MAX_PACKET);
        assert_eq!(c.next_chunk(10), 10);
        assert_eq!(c.next_chunk(0), 0);
        // Half the peer's buffer free: send what fits.
        let c = credit(65536, 0, 30000);
        assert_eq!(c.next_chunk(1_000_000), 35536);
        // The rest fits.
        let c = credit(65536, 0, 60000);
        assert_eq!(c.next_chunk(100), 100);
    }

    #[test]
    fn little_credit_offers_a_full_packet_to_trigger_a_credit_request() {
        let c = credit(65536, 0, 60000);
        assert_eq!(c.next_chunk(1_000_000), MAX_PACKET);
        let c = credit(0, 0, 0);
        assert_eq!(c.next_chunk(5), 5);
    }

    #[test]
    fn more_in_flight_than_the_peer_holds_sends_nothing() {
        assert_eq!(credit(100, 0, 200).next_chunk(1000), 0);
        assert_eq!(credit(65536, u32::MAX - 9, 65536).next_chunk(5), 0);
        assert_eq!(credit(65536, u32::MAX - 9, 65526).next_chunk(5), 5);
    }

    #[test]
    fn a_forward_count_that_goes_back_or_past_what_we_sent_is_stale() {
        let c = credit(65536, 1000, 5000);
        assert!(c.plausible(1000));
        assert!(c.plausible(3000));
        assert!(c.plausible(5000));
        assert!(!c.plausible(999), "goes back");
        assert!(!c.plausible(0));
        assert!(!c.plausible(5001), "more than we sent");
        // Across the wrap of the counters.
        let c = credit(65536, u32::MAX - 5, 10);
        assert!(c.plausible(u32::MAX - 5));
        assert!(c.plausible(3));
        assert!(c.plausible(10));
        assert!(!c.plausible(11));
        assert!(!c.plausible(u32::MAX - 6));
        // A fresh connection: only 0.
        let c = Credit::new(4096);
        assert!(c.plausible(0));
        assert!(!c.plausible(1));
    }

    #[test]
    fn sent_counts_and_announces() {
        let mut c = credit(65536, 0, 0);
        c.unannounced = 7;
        c.sent(1000);
        assert_eq!((c.tx_cnt, c.unannounced, c.peer_free()), (1000, 0, 64536));
        c.tx_cnt = u32::MAX;
        c.sent(2);
        assert_eq!(c.tx_cnt, 1);
    }

    #[test]
    fn a_window_grows_but_never_shrinks() {
        let mut c = Credit::new(4096);
        assert!(c.fits(4000, 96));
        assert!(!c.fits(4000, 97));
        assert!(!c.fits(usize::MAX, 1));
        assert!(c.grow(256 * 1024));
        assert_eq!(c.buffer_size, 256 * 1024);
        assert!(c.fits(4000, 97));
        assert!(c.fits(0, 256 * 1024));
        assert!(!c.fits(1, 256 * 1024));
        // Already that large, or asked to shrink: nothing to announce.
        assert!(!c.grow(256 * 1024));
        assert!(!c.grow(4096));
        assert_eq!(c.buffer_size, 256 * 1024);
    }

    #[test]
    fn a_ring_doubles_up_to_the_window_only() {
        let mut c = Credit::new(4096);
        assert_eq!(c.ring_capacity(0, 300), 300);
        assert_eq!(c.ring_capacity(300, 200), 300);
        assert_eq!(c.ring_capacity(300, 301), 600);
        assert_eq!(c.ring_capacity(2400, 2401), 4096);
        assert_eq!(c.ring_capacity(1000, 3000), 3000);
        c.grow(256 * 1024);
        assert_eq!(c.ring_capacity(4096, 4097), 8192);
        assert_eq!(c.ring_capacity(192 * 1024, 192 * 1024 + 1), 256 * 1024);
    }

    #[test]
    fn credit_updates_follow_the_grown_window() {
        let mut c = Credit::new(4096);
        assert!(c.consumed(1024));
        c.grow(256 * 1024);
        assert!(!c.consumed(1024));
        assert!(!c.consumed(64 * 1024 - 1025));
        assert!(c.consumed(1));
    }

    #[test]
    fn credit_update_due_every_quarter_buffer() {
        let mut c = Credit::new(1024);
        assert!(!c.consumed(100));
        assert!(!c.consumed(155));
        assert!(c.consumed(1));
        assert_eq!(c.unannounced, 0);
        assert!(c.consumed(5000));
    }
}
