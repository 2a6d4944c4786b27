//! The answers of one connection waiting to be sent: a queue of frames
//! with what each holds of the [`Budget`], small answers joined into one
//! write, the buffer of the last answer sent kept for the next one, and the
//! connection's own allowance for answers its client has not taken yet
//! ([`OUTPUT_HIGH_WATER`], then room borrowed from the budget, then
//! [`REFUSAL_ROOM`]).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Range;

use super::Budget;
#[cfg(doc)]
use super::{SMALL_BODY, ServerConn};
#[cfg(doc)]
use svmc_comm::Protocol;

/// Answers to requests of at most [`SMALL_BODY`] bytes (and `ERROR`s) that
/// one connection keeps waiting out of its own allowance; while more wait,
/// the room for a further small request's answer is borrowed from the
/// [`Budget`], and a request it has no room for either is read, dropped
/// and answered with [`Protocol::out_of_memory`] (WIRE.md R-FLOW-2).
/// Answers to larger requests are paid for from the budget too.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Room for the refusals (and `ERROR`s) a connection queues beyond
/// [`OUTPUT_HIGH_WATER`]; once that is full too, it reads nothing more
/// until its client has taken some of its answers (WIRE.md R-FLOW-3:
/// about 600 refusals, far more than any client keeps in flight).
pub const REFUSAL_ROOM: usize = 32 * 1024;

/// Bytes borrowed for a small answer beyond its request's body length:
/// the envelope of a `RESPONSE` or an `ERROR`.
const ANSWER_SLACK: usize = 64;

/// Queued answers are joined into one buffer up to this size.
const COALESCE_BYTES: usize = 16 * 1024;

/// Largest capacity of an answer buffer kept for the next answer
/// ([`Output`]'s `spare`).
const SPARE_MAX: usize = COALESCE_BYTES + 64;

/// One queued answer: `bytes`, then the `payload` range of `body` (an
/// answer in place).
#[derive(Debug)]
struct Out {
    bytes: Vec<u8>,
    body: Option<(Vec<u8>, Range<usize>)>,
    sent: usize,
    /// Budget to give back once it is sent (or that goes with `body` when
    /// the connection takes it back as its receive buffer).
    reserved: usize,
}

impl Out {
    /// Paid for by the connection's own allowance (or room borrowed for
    /// it), not by a reservation of its own: counted in [`Output`]'s
    /// `loose`. An answer to a small request is, copied or in place: an
    /// in-place answer of 16-64 KiB holds its request's receive buffer
    /// while it waits, and a client that sent many and read none made the
    /// queue grow without bound when it was not counted.
    fn is_loose(&self) -> bool {
        self.reserved == 0
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.body.as_ref().map_or(0, |(_, r)| r.len())
    }

    fn rest(&self) -> &[u8] {
        if self.sent < self.bytes.len() {
            return &self.bytes[self.sent..];
        }
        match &self.body {
            Some((b, r)) => &b[r.start + (self.sent - self.bytes.len())..r.end],
            None => &[],
        }
    }
}

/// The receive buffer an answer in place was sent from (or copied out
/// of), no longer needed by the queue, with the budget it holds: the
/// connection takes it back ([`ServerConn`]'s `take_back`).
#[derive(Debug)]
pub(super) struct Spent {
    pub(super) body: Vec<u8>,
    pub(super) reserved: usize,
}

/// The answers of one connection waiting to be sent. The [`Budget`] that
/// some of them hold is the connection's, passed in where it is paid or
/// given back.
#[derive(Debug, Default)]
pub(super) struct Output {
    queue: VecDeque<Out>,
    /// Bytes queued, in all.
    len: usize,
    /// Bytes of `queue` not paid for by the budget ([`Out::is_loose`]).
    loose: usize,
    /// Budget borrowed for small answers beyond [`OUTPUT_HIGH_WATER`],
    /// given back once they are sent.
    borrowed: usize,
    /// The buffer of the last answer sent (cleared, at most [`SPARE_MAX`]
    /// bytes of capacity), for the next answer: a small request is then
    /// answered without an allocation. Kept only while no answer is
    /// queued, so it never adds to the queue's memory.
    spare: Vec<u8>,
}

impl Output {
    /// The bytes to send next (empty if none): the rest of the oldest
    /// queued frame.
    pub(super) fn front(&self) -> &[u8] {
        self.queue.front().map_or(&[], Out::rest)
    }

    /// Bytes queued, in all.
    pub(super) fn bytes(&self) -> usize {
        self.len
    }

    /// Frames (or runs of small frames joined) queued.
    pub(super) fn frames(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the small answers and refusals queued leave room to read
    /// another frame: at most [`OUTPUT_HIGH_WATER`], what was borrowed
    /// beyond it, and [`REFUSAL_ROOM`].
    pub(super) fn reads_on(&self) -> bool {
        self.loose <= OUTPUT_HIGH_WATER + self.borrowed + REFUSAL_ROOM
    }

    /// Whether the answer to a small request of `len` body bytes has room:
    /// in the connection's own allowance ([`OUTPUT_HIGH_WATER`]) or, once
    /// that is full of answers its client has not taken yet, borrowed from
    /// `budget`; `false` if the budget has no room either (the request is
    /// then refused). A 1-byte request is refused only when the server is
    /// short of memory, not because many small answers wait.
    pub(super) fn room_for_small_answer(&mut self, len: usize, budget: &Budget) -> bool {
        let want = len + ANSWER_SLACK;
        // Room for the whole answer, not just its start: an answer in
        // place of up to 64 KiB that overshot the allowance unpaid would
        // stop the reading (`reads_on`) before any refusal.
        if self.loose + want <= OUTPUT_HIGH_WATER + self.borrowed {
            return true;
        }
        if budget.take(want) {
            self.borrowed += want;
            true
        } else {
            false
        }
    }

    /// Queues the frame `bytes`, holding `reserved` bytes of the budget
    /// until it is sent.
    pub(super) fn push(&mut self, bytes: Vec<u8>, reserved: usize) {
        let spent = self.push_out(Out {
            bytes,
            body: None,
            sent: 0,
            reserved,
        });
        debug_assert!(spent.is_none());
    }

    /// Queues an answer in place: `head`, then `body[payload]`, with the
    /// `reserved` budget of `body`. A small one is copied out at once (a
    /// few bytes): it can then join the others, and its buffer is given
    /// back now ([`Spent`]).
    pub(super) fn push_in_place(
        &mut self,
        head: Vec<u8>,
        body: Vec<u8>,
        payload: Range<usize>,
        reserved: usize,
    ) -> Option<Spent> {
        self.push_out(Out {
            bytes: head,
            body: Some((body, payload)),
            sent: 0,
            reserved,
        })
    }

    fn push_out(&mut self, mut out: Out) -> Option<Spent> {
        let mut spent = None;
        if out.len() <= COALESCE_BYTES
            && let Some((body, payload)) = out.body.take()
        {
            out.bytes.extend_from_slice(&body[payload]);
            spent = Some(Spent {
                body,
                reserved: core::mem::take(&mut out.reserved),
            });
        }
        self.len += out.len();
        if out.is_loose() {
            self.loose += out.len();
        }
        // Small answers go out together: one transport write (one vsock
        // packet) for several pipelined answers instead of one each.
        if out.reserved == 0
            && out.body.is_none()
            && let Some(last) = self.queue.back_mut()
            && last.reserved == 0
            && last.body.is_none()
            && last.bytes.len() + out.bytes.len() <= COALESCE_BYTES
        {
            last.bytes.extend_from_slice(&out.bytes);
            return spent;
        }
        // Whatever it is built from, a queued answer ends the spare's
        // keeping (see `spare`).
        self.spare = Vec::new();
        self.queue.push_back(out);
        spent
    }

    /// `n` bytes of [`Output::front`] were sent. What a frame sent in full
    /// held of the budget goes back to `budget`, except the receive buffer
    /// of an answer in place, which is returned with its share.
    pub(super) fn sent(&mut self, n: usize, budget: &Budget) -> Option<Spent> {
        let o = self.queue.front_mut()?;
        o.sent += n;
        self.len -= n;
        let loose = o.is_loose();
        let done = o.sent == o.len();
        if loose {
            self.loose -= n;
            self.repay(budget);
        }
        if !done {
            return None;
        }
        let o = self.queue.pop_front()?;
        let spent = match o.body {
            Some((body, _)) => Some(Spent {
                body,
                reserved: o.reserved,
            }),
            None => {
                budget.give(o.reserved);
                None
            }
        };
        self.recycle(o.bytes);
        spent
    }

    /// Gives back what was borrowed for small answers once those that
    /// remain fit the connection's own allowance again.
    fn repay(&mut self, budget: &Budget) {
        if self.borrowed > 0 && self.loose <= OUTPUT_HIGH_WATER {
            budget.give(core::mem::take(&mut self.borrowed));
        }
    }

    /// The spare answer buffer (empty, or a new one).
    pub(super) fn take_spare(&mut self) -> Vec<u8> {
        let mut v = core::mem::take(&mut self.spare);
        v.clear();
        v
    }

    /// Keeps `v` as the spare answer buffer if nothing is queued and it is
    /// small; else frees it.
    pub(super) fn recycle(&mut self, v: Vec<u8>) {
        if self.queue.is_empty() && v.capacity() <= SPARE_MAX {
            self.spare = v;
        }
    }

    /// Drops everything queued and gives back the budget it held.
    pub(super) fn clear(&mut self, budget: &Budget) {
        for o in self.queue.drain(..) {
            budget.give(o.reserved);
        }
        self.len = 0;
        self.loose = 0;
        self.repay(budget);
    }
}

#[cfg(test)]
mod tests {
    const HEADER_LEN_FOR_TEST: usize = svmc_comm::frame::HEADER_LEN;
    use alloc::vec;

    use super::*;

    /// Sends everything queued, in writes of at most `chunk` bytes.
    fn drain(o: &mut Output, budget: &Budget, chunk: usize) -> (Vec<u8>, Vec<Spent>) {
        let mut sent = Vec::new();
        let mut spent = Vec::new();
        while !o.front().is_empty() {
            let n = o.front().len().min(chunk);
            sent.extend_from_slice(&o.front()[..n]);
            spent.extend(o.sent(n, budget));
        }
        (sent, spent)
    }

    #[test]
    fn small_answers_are_joined_into_one_write() {
        let budget = Budget::new(0);
        let mut o = Output::default();
        o.push(vec![1; 10], 0);
        o.push(vec![2; 20], 0);
        assert_eq!((o.frames(), o.bytes()), (1, 30));
        assert_eq!(o.front().len(), 30);
        // Up to COALESCE_BYTES: the next starts a frame of its own.
        o.push(vec![3; COALESCE_BYTES - 10], 0);
        assert_eq!(o.frames(), 2);
        let (sent, spent) = drain(&mut o, &budget, 7);
        assert!(spent.is_empty());
        assert_eq!(sent.len(), 30 + COALESCE_BYTES - 10);
        assert_eq!(&sent[..10], &[1; 10]);
        assert_eq!(&sent[10..30], &[2; 20]);
        assert!(o.is_empty() && o.bytes() == 0);
    }

    #[test]
    fn an_answer_holding_budget_is_not_joined_and_pays_back_when_sent() {
        let budget = Budget::new(1000);
        let mut o = Output::default();
        o.push(vec![1; 10], 0);
        assert!(budget.take(300));
        o.push(vec![2; 300], 300);
        o.push(vec![3; 10], 0);
        assert_eq!(o.frames(), 3);
        assert!(o.sent(10, &budget).is_none());
        assert!(o.sent(299, &budget).is_none());
        assert_eq!(budget.free(), 700, "held until its last byte is sent");
        assert!(o.sent(1, &budget).is_none());
        assert_eq!(budget.free(), 1000);
        assert_eq!(o.front(), &[3; 10]);
    }

    #[test]
    fn a_small_answer_in_place_is_copied_out_and_its_buffer_given_back() {
        let mut o = Output::default();
        let body: Vec<u8> = (0..100).collect();
        let spent = o.push_in_place(vec![9, 9], body, 10..20, 42).unwrap();
        assert_eq!((spent.body.len(), spent.reserved), (100, 42));
        let mut want = vec![9, 9];
        want.extend(10..20);
        assert_eq!(o.front(), &want[..]);
        // Loose now (paid by the allowance): it joins the next one.
        o.push(vec![7], 0);
        assert_eq!(o.frames(), 1);
    }

    #[test]
    fn a_large_answer_in_place_is_sent_from_its_buffer_then_given_back() {
        let budget = Budget::new(0);
        let mut o = Output::default();
        let n = COALESCE_BYTES * 2;
        let body: Vec<u8> = (0..n).map(|i| i as u8).collect();
        assert!(o.push_in_place(vec![5; 3], body, 1..n, 77).is_none());
        assert_eq!(o.bytes(), 3 + n - 1);
        let (sent, spent) = drain(&mut o, &budget, 1000);
        assert_eq!(&sent[..3], &[5; 3]);
        assert!(sent[3..].iter().zip(1..).all(|(&b, i)| b == i as u8));
        assert_eq!(spent.len(), 1);
        assert_eq!((spent[0].body.len(), spent[0].reserved), (n, 77));
        assert_eq!(budget.free(), 0, "the buffer's share goes with it");
    }

    #[test]
    fn beyond_the_high_water_small_answers_borrow_and_repay() {
        let budget = Budget::new(1000);
        let mut o = Output::default();
        assert!(o.room_for_small_answer(1, &budget));
        o.push(vec![0; OUTPUT_HIGH_WATER + 1], 0);
        assert!(o.room_for_small_answer(100, &budget));
        assert_eq!(budget.free(), 1000 - 100 - ANSWER_SLACK);
        o.push(vec![0; 200], 0);
        // No room for this one: nothing borrowed.
        assert!(!o.room_for_small_answer(1000, &budget));
        assert_eq!(budget.free(), 1000 - 100 - ANSWER_SLACK);
        // Repaid once what waits fits the allowance again.
        assert!(o.sent(1, &budget).is_none());
        assert_eq!(budget.free(), 1000 - 100 - ANSWER_SLACK);
        assert!(o.sent(200, &budget).is_none());
        assert_eq!(budget.free(), 1000);
    }

    #[test]
    fn answers_in_place_to_small_requests_count_against_the_allowance() {
        let budget = Budget::new(0);
        let mut o = Output::default();
        let n = COALESCE_BYTES + 100;
        let mut pushed = 0;
        while o.room_for_small_answer(n, &budget) {
            assert!(
                o.push_in_place(vec![0; HEADER_LEN_FOR_TEST], vec![1; n], 0..n, 0)
                    .is_none()
            );
            pushed += 1;
            assert!(pushed < 100, "never out of room");
        }
        // As many as the allowance holds, whole.
        assert!(pushed >= 1 && o.bytes() <= OUTPUT_HIGH_WATER, "{pushed}");
        assert!(o.bytes() + n + ANSWER_SLACK > OUTPUT_HIGH_WATER, "{pushed}");
        // Reading goes on for the refusals, then stops.
        while o.reads_on() {
            o.push(vec![0; 64], 0);
        }
        assert!(o.bytes() <= OUTPUT_HIGH_WATER + REFUSAL_ROOM + 64);
    }

    #[test]
    fn answers_in_place_beyond_the_allowance_borrow_and_reading_goes_on() {
        let budget = Budget::new(1 << 20);
        let mut o = Output::default();
        let n = 48 * 1024;
        for i in 0..10 {
            assert!(o.room_for_small_answer(n, &budget), "answer {i}");
            o.push_in_place(vec![0; HEADER_LEN_FOR_TEST], vec![1; n], 0..n, 0);
            assert!(o.reads_on(), "after answer {i}");
        }
        drain(&mut o, &budget, usize::MAX);
        assert_eq!(budget.free(), 1 << 20, "repaid once sent");
    }

    #[test]
    fn reading_stops_once_the_refusal_room_is_full_too() {
        let budget = Budget::new(0);
        let mut o = Output::default();
        o.push(vec![0; OUTPUT_HIGH_WATER + REFUSAL_ROOM], 0);
        assert!(o.reads_on());
        o.push(vec![0; 1], 0);
        assert!(!o.reads_on());
        o.sent(1, &budget);
        assert!(o.reads_on());
    }

    #[test]
    fn the_spare_buffer_is_kept_only_while_nothing_is_queued() {
        let budget = Budget::new(0);
        let mut o = Output::default();
        o.push(Vec::with_capacity(100), 0);
        o.push(vec![1; 50], 0);
        drain(&mut o, &budget, usize::MAX);
        let spare = o.take_spare();
        assert!(spare.is_empty() && spare.capacity() >= 50, "recycled");
        assert_eq!(o.take_spare().capacity(), 0, "taken once");
        // Too large to keep, or something still queued: freed.
        o.recycle(Vec::with_capacity(SPARE_MAX + 1));
        assert_eq!(o.take_spare().capacity(), 0);
        o.push(vec![1], 0);
        o.recycle(Vec::with_capacity(10));
        assert_eq!(o.take_spare().capacity(), 0);
    }

    #[test]
    fn clear_gives_back_everything_held() {
        let budget = Budget::new(1000);
        let mut o = Output::default();
        o.push(vec![0; OUTPUT_HIGH_WATER + 1], 0);
        assert!(o.room_for_small_answer(10, &budget));
        assert!(budget.take(500));
        o.push(vec![0; 500], 500);
        o.clear(&budget);
        assert_eq!(budget.free(), 1000);
        assert!(o.is_empty() && o.bytes() == 0 && o.front().is_empty());
        assert!(o.reads_on());
    }
}
