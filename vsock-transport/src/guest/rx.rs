//! A connection's receive ring: the bytes the peer sent that nobody has
//! read yet. It never holds more than the `buf_alloc` we advertised
//! ([`Credit::fits`]), and never reserves more heap than that either
//! ([`Credit::ring_capacity`]): a connection costs what it was promised,
//! not what a peer that ignores our credit would like.

use alloc::collections::VecDeque;

use crate::credit::Credit;

/// Received bytes not yet read, in arrival order.
#[derive(Debug, Default)]
pub(super) struct RxRing(VecDeque<u8>);

impl RxRing {
    /// An empty ring, with no heap.
    pub(super) const fn new() -> Self {
        Self(VecDeque::new())
    }

    /// Bytes buffered.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes the ring has heap for.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// Appends `body` if our buffer, as `credit` counts it, has room for
    /// it; `false` (and nothing appended) if the peer sent more than our
    /// credit allowed.
    pub(super) fn push(&mut self, credit: &Credit, body: &[u8]) -> bool {
        if !credit.fits(self.0.len(), body.len()) {
            return false;
        }
        let needed = self.0.len() + body.len();
        let capacity = credit.ring_capacity(self.0.capacity(), needed);
        self.0.reserve_exact(capacity - self.0.len());
        self.0.extend(body);
        true
    }

    /// Moves the oldest bytes into `buf`, as many as fit; returns how many.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = {
            let (a, b) = self.0.as_slices();
            let n1 = a.len().min(buf.len());
            buf[..n1].copy_from_slice(&a[..n1]);
            let n2 = b.len().min(buf.len() - n1);
            buf[n1..n1 + n2].copy_from_slice(&b[..n2]);
            n1 + n2
        };
        self.0.drain(..n);
        n
    }

    /// Drops what is buffered and gives its heap back.
    pub(super) fn release(&mut self) {
        self.0 = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_come_out_in_order_across_the_wrap() {
        let credit = Credit::new(8);
        let mut r = RxRing::new();
        assert!(r.push(&credit, b"abcdef"));
        let mut buf = [0; 4];
        assert_eq!(r.read(&mut buf), 4);
        assert_eq!(&buf, b"abcd");
        // The next push wraps around the end of the ring's heap.
        assert!(r.push(&credit, b"ghij"));
        let mut buf = [0; 16];
        assert_eq!(r.read(&mut buf), 6);
        assert_eq!(&buf[..6], b"efghij");
        assert_eq!(r.read(&mut buf), 0);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn more_than_the_credit_is_refused_whole() {
        let credit = Credit::new(8);
        let mut r = RxRing::new();
        assert!(r.push(&credit, b"abcde"));
        assert!(!r.push(&credit, b"wxyz"), "9 bytes in a buffer of 8");
        assert_eq!(r.len(), 5);
        assert!(r.push(&credit, b"xyz"));
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn the_heap_never_exceeds_the_buffer_and_is_given_back() {
        let credit = Credit::new(1000);
        let mut r = RxRing::new();
        for _ in 0..10 {
            assert!(r.push(&credit, &[7; 100]));
            assert!(r.capacity() <= 1000, "capacity {}", r.capacity());
        }
        assert!(!r.push(&credit, &[7]));
        r.release();
        assert_eq!((r.len(), r.capacity()), (0, 0));
    }

    #[test]
    fn an_empty_buffer_reads_nothing() {
        let credit = Credit::new(8);
        let mut r = RxRing::new();
        assert!(r.push(&credit, b"ab"));
        assert_eq!(r.read(&mut []), 0);
        assert_eq!(r.len(), 2);
    }
}
