//! Heap accounting of the server: the [`Budget`] that large request bodies
//! (and the answers borrowed beyond a connection's own allowance) are paid
//! from, shared by every connection of one server, and the limits that say
//! what a connection may hold outside it. How the connection spends it is
//! in the server module's "Heap" section ([`super`]).

use alloc::rc::Rc;
use core::cell::Cell;

#[cfg(doc)]
use super::{Handler, ServerConn};
use super::{OUTPUT_HIGH_WATER, REFUSAL_ROOM};
#[cfg(doc)]
use svmc_comm::Protocol;

/// Request bodies up to this size need no [`Budget`] reservation.
pub const SMALL_BODY: u32 = 64 * 1024;

/// Heap one connection may use outside the [`Budget`]: a small request,
/// its answer, the queued answers under [`OUTPUT_HIGH_WATER`] and one more
/// small answer, the refusals after them ([`REFUSAL_ROOM`]), and the state
/// itself.
pub const CONNECTION_HEAP: usize =
    2 * SMALL_BODY as usize + 2 * OUTPUT_HIGH_WATER + REFUSAL_ROOM + 4096;

/// Heap bytes reserved per byte of a large request body from its header
/// on: the body, in which an answer in place ([`Handler::handle_in_place`])
/// is also sent. A request that goes to [`Handler::handle`] instead takes
/// as much again before it is decoded (the message decoded from the body
/// and the answer exist at once), or is answered with
/// [`Protocol::out_of_memory`] if the [`Budget`] has no room for that.
pub const RESERVE_PER_BODY_BYTE: usize = 1;

/// Heap bytes that large requests may take, shared by the connections of
/// one server. Cloning shares it; a [`ServerConn`] gives back what it holds
/// when it is dropped.
#[derive(Debug, Clone)]
pub struct Budget(Rc<Cell<usize>>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Rc::new(Cell::new(bytes)))
    }

    /// No limit (a host process: its allocator reports failure).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// Bytes not reserved now.
    pub fn free(&self) -> usize {
        self.0.get()
    }

    /// Reserves `n` bytes; `false` (and nothing reserved) if fewer are
    /// free.
    pub(super) fn take(&self, n: usize) -> bool {
        match self.0.get().checked_sub(n) {
            Some(rest) => {
                self.0.set(rest);
                true
            }
            None => false,
        }
    }

    /// Gives back `n` bytes reserved before.
    pub(super) fn give(&self, n: usize) {
        self.0.set(self.0.get().saturating_add(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_reserves_all_or_nothing_and_give_returns_it() {
        let b = Budget::new(100);
        assert!(b.take(60));
        assert_eq!(b.free(), 40);
        assert!(!b.take(41), "more than is free");
        assert_eq!(b.free(), 40, "a refused take reserves nothing");
        assert!(b.take(40));
        assert_eq!(b.free(), 0);
        assert!(b.take(0));
        b.give(100);
        assert_eq!(b.free(), 100);
    }

    #[test]
    fn clones_share_one_budget() {
        let a = Budget::new(10);
        let b = a.clone();
        assert!(b.take(7));
        assert_eq!(a.free(), 3);
        a.give(7);
        assert_eq!(b.free(), 10);
    }

    #[test]
    fn unlimited_never_refuses_and_never_overflows() {
        let b = Budget::unlimited();
        assert!(b.take(usize::MAX / 2));
        assert!(b.take(usize::MAX / 2));
        b.give(usize::MAX);
        assert_eq!(b.free(), usize::MAX, "saturates");
    }
}
