//! The requests a client has written and not seen answered: the client's
//! half of `WIRE.md` R-ID-2 (no id reused while its request is in flight
//! or abandoned and unanswered), R-ID-4 (an answer without an id is the
//! oldest request's) and R-ID-6 (a late answer to an abandoned request is
//! discarded; an answer to no request is fatal). Sans-IO, kept by the
//! client core (`client::sans_io`) that the blocking
//! [`Client`](super::Client) and the async client share.
//!
//! Abandoned requests are kept until their answers come, however many
//! there are: each one is a request that was written, and the server
//! answers every request exactly once (R-ID-3), so they take memory in
//! proportion to what was sent and not yet answered, and forgetting one
//! would turn its answer into an unexpected id (a healthy connection
//! ended) and free its id for reuse while the answer is still due.

use alloc::collections::VecDeque;

use svmc_comm::RequestId;

use crate::{Error, Result};

/// A request written and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: RequestId,
    /// Its caller gave up waiting: its answer is discarded.
    abandoned: bool,
}

/// What an answer was for ([`InFlight::answered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// A request whose caller waits for it.
    Live(RequestId),
    /// An abandoned request: discard the answer (now counted in
    /// [`InFlight::discarded`]).
    Discarded(RequestId),
}

/// Ids of the requests written and not answered, in write order, each
/// live or abandoned; and the next id to give out.
#[derive(Debug)]
pub(crate) struct InFlight {
    slots: VecDeque<Slot>,
    abandoned: usize,
    next_id: RequestId,
    discarded: u64,
}

impl InFlight {
    /// Nothing in flight; ids count up from 1.
    pub(crate) fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            abandoned: 0,
            next_id: RequestId(1),
            discarded: 0,
        }
    }

    /// The next id (counting up, wrapping after `u32::MAX`) that is not in
    /// flight, abandoned or not, and that `taken` does not claim (ids a
    /// caller holds but has not written yet).
    ///
    /// Ends as long as fewer than 2^32 ids are taken, which the memory
    /// they would need rules out.
    pub(crate) fn fresh_id(&mut self, taken: impl Fn(RequestId) -> bool) -> RequestId {
        let mut id = self.next_id;
        while taken(id) || self.contains(id) {
            id = id.next();
        }
        self.next_id = id.next();
        id
    }

    /// Request `id` was written (after the ones written before it).
    pub(crate) fn sent(&mut self, id: RequestId) {
        debug_assert!(!self.contains(id), "id {id} given out twice");
        self.slots.push_back(Slot {
            id,
            abandoned: false,
        });
    }

    /// Gives up on request `id`: its answer will be discarded. Returns
    /// whether `id` was in flight and live.
    pub(crate) fn abandon(&mut self, id: RequestId) -> bool {
        match self.slots.iter_mut().find(|s| s.id == id) {
            Some(slot) if !slot.abandoned => {
                slot.abandoned = true;
                self.abandoned += 1;
                true
            }
            _ => false,
        }
    }

    /// An answer arrived, naming request `id` or, without an id, the oldest
    /// request in flight (R-ID-4). The request is no longer in flight.
    ///
    /// Fails (fatal: the stream is out of step) when no request in flight
    /// has that id ([`svmc_comm::Error::UnexpectedId`]: never sent, or already
    /// answered), or when an answer without an id comes while nothing is in
    /// flight.
    pub(crate) fn answered(&mut self, id: Option<RequestId>) -> Result<Answered> {
        let at = match id {
            // Answers come in order: the oldest is the usual match.
            Some(id) => self
                .slots
                .iter()
                .position(|s| s.id == id)
                .ok_or(svmc_comm::Error::UnexpectedId(id))?,
            None if self.slots.is_empty() => {
                return Err(Error::Protocol(svmc_comm::Error::Malformed(
                    "an answer without a request id while no request is in flight".into(),
                )));
            }
            None => 0,
        };
        let slot = self.slots.remove(at).expect("position in range");
        if slot.abandoned {
            self.abandoned -= 1;
            self.discarded += 1;
            Ok(Answered::Discarded(slot.id))
        } else {
            Ok(Answered::Live(slot.id))
        }
    }

    /// Counts an answer discarded after [`InFlight::answered`] found it
    /// live: its caller gave up as it came, before taking it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    pub(crate) fn discard_live(&mut self) {
        self.discarded += 1;
    }

    /// Whether `id` is in flight (abandoned or not).
    pub(crate) fn contains(&self, id: RequestId) -> bool {
        self.slots.iter().any(|s| s.id == id)
    }

    /// Whether `id` is in flight and abandoned (its answer, and the data
    /// of its answer stream, are discarded).
    pub(crate) fn is_abandoned(&self, id: RequestId) -> bool {
        self.slots.iter().any(|s| s.id == id && s.abandoned)
    }

    /// Requests in flight whose callers wait for them.
    pub(crate) fn live(&self) -> usize {
        self.slots.len() - self.abandoned
    }

    /// Abandoned requests whose answers have not come yet.
    pub(crate) fn abandoned(&self) -> usize {
        self.abandoned
    }

    /// Late answers to abandoned requests discarded so far.
    pub(crate) fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Forgets every request in flight (the connection ended: no answer
    /// will come). The id counter and [`InFlight::discarded`] stay.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async client's
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.abandoned = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives out and sends `N` ids.
    fn ids<const N: usize>(f: &mut InFlight) -> [RequestId; N] {
        core::array::from_fn(|_| {
            let id = f.fresh_id(|_| false);
            f.sent(id);
            id
        })
    }

    #[test]
    fn thousands_of_abandoned_answers_are_discarded_not_unexpected() {
        let mut f = InFlight::new();
        let sent: [_; 5000] = ids(&mut f);
        for &id in &sent {
            assert!(f.abandon(id));
        }
        assert!(!f.abandon(sent[0]), "already abandoned");
        assert_eq!((f.live(), f.abandoned()), (0, 5000));
        let [live] = ids(&mut f);
        for &id in &sent {
            assert_eq!(f.answered(Some(id)).unwrap(), Answered::Discarded(id));
        }
        assert_eq!(f.answered(Some(live)).unwrap(), Answered::Live(live));
        assert_eq!((f.live(), f.abandoned(), f.discarded()), (0, 0, 5000));
    }

    #[test]
    fn an_id_never_sent_or_answered_twice_is_fatal() {
        let mut f = InFlight::new();
        let [a, b] = ids(&mut f);
        assert_eq!(f.answered(Some(a)).unwrap(), Answered::Live(a));
        for wrong in [a, RequestId(b.0 + 1)] {
            let e = f.answered(Some(wrong)).unwrap_err();
            assert!(
                matches!(e, Error::Protocol(svmc_comm::Error::UnexpectedId(x)) if x == wrong),
                "{e:?}"
            );
        }
        assert_eq!(f.answered(Some(b)).unwrap(), Answered::Live(b));
        assert!(f.answered(None).is_err(), "nothing in flight");
    }

    #[test]
    fn an_answer_without_id_is_the_oldest_abandoned_or_not() {
        let mut f = InFlight::new();
        let [a, b, c] = ids(&mut f);
        f.abandon(a);
        assert_eq!(f.answered(None).unwrap(), Answered::Discarded(a));
        assert_eq!(f.answered(Some(c)).unwrap(), Answered::Live(c));
        assert_eq!(f.answered(None).unwrap(), Answered::Live(b));
    }

    #[test]
    fn fresh_ids_skip_what_is_in_flight_or_taken_and_wrap() {
        let mut f = InFlight::new();
        f.next_id = RequestId(u32::MAX - 1);
        let [a] = ids(&mut f);
        assert_eq!(a, RequestId(u32::MAX - 1));
        f.abandon(a);
        // u32::MAX is held by a caller that has not written it yet.
        let b = f.fresh_id(|id| id == RequestId(u32::MAX));
        assert_eq!(b, RequestId(0), "wrapped");
        f.next_id = a;
        assert_eq!(
            f.fresh_id(|_| false),
            RequestId(u32::MAX),
            "not the abandoned one"
        );
    }
}
