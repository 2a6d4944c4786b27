//! Admission: which connections [`serve_many`](super::serve_many) serves
//! when more arrive than it may serve at once (the "Policy" section of
//! [`super`]): a newcomer at a full table is held while the served
//! connections are probed for closes, then admitted, given an idle
//! connection's slot, refused with `ERROR` busy, or reset; and a served
//! connection whose client closed with answers it never takes is given up.
//!
//! [`Admission`] owns the held newcomers and when the served connections
//! were last probed; the scheduler calls [`Admission::arrive`] for every
//! accepted connection and [`Admission::decide`] once per pass, after it
//! has handed every served connection what the endpoint saw for it. The
//! refusals in progress are the table's slots that are not served
//! ([`ServerConn::busy`] sending its `ERROR`), driven by the scheduler like
//! any other.

use alloc::vec::Vec;

use svmc_comm::Protocol;

use super::{Endpoint, Event, ManyConfig, Slot};
use crate::rpc::ServerConn;

/// At most this many connections over the limit are being refused (sent
/// `ERROR` busy) at once; more are reset at once. As many as can be held
/// ([`MAX_HELD`]): a burst of newcomers that were all held all get the
/// same typed refusal, not a refusal for some and a reset for others.
pub const MAX_REFUSING: usize = MAX_HELD;

/// How long, at most, a new connection that finds the table full waits
/// (held: no `HELLO`, no refusal) for a served connection to turn out
/// closed, in microseconds.
pub const HOLD_US: u64 = 500_000;

/// At most this many new connections are held at once ([`HOLD_US`]); one
/// more over the limit is decided at once. Each holds what the endpoint
/// keeps for a connection not served yet (the guest: a receive ring of
/// `guest::ACCEPT_WINDOW` bytes, grown by [`Endpoint::serve`] only once it
/// is served), so a firmware's heap budget counts them.
pub const MAX_HELD: usize = 8;

/// A served connection whose peer has closed ([`Endpoint::peer_closed`])
/// and that takes none of its answers for this many microseconds is given
/// up (its answers dropped), so that it frees its slot, within the hold of
/// a newcomer waiting for it.
pub const STUCK_US: u64 = HOLD_US / 2;

/// Served connections are probed ([`Endpoint::probe`]) at most once per
/// this many microseconds while connections are held.
const PROBE_EVERY_US: u64 = 50_000;

/// A new connection that found the table full, since this time.
struct Held<Id> {
    id: Id,
    since: u64,
    /// [`Event::Held`] was reported.
    reported: bool,
}

/// The admission state of one server: the newcomers held at a full table
/// (oldest first) and when the served connections were last probed for
/// them.
pub(super) struct Admission<Id> {
    /// Connections served at once (at least 1), the boot connection
    /// included.
    max_conns: usize,
    held: Vec<Held<Id>>,
    /// When the served connections were last probed for the held ones.
    probed: Option<u64>,
}

impl<Id: Copy> Admission<Id> {
    /// No connection held yet; at most `max_conns` (at least 1) served.
    pub(super) fn new(max_conns: usize) -> Self {
        Self {
            max_conns: max_conns.max(1),
            held: Vec::with_capacity(MAX_HELD),
            probed: None,
        }
    }

    /// Connections served at once, at most.
    pub(super) fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// A connection just accepted: served at once if there is room; else
    /// held until the end of the pass at least (so that the closes the
    /// pass saw count first), or decided at once when [`MAX_HELD`] are held
    /// already.
    pub(super) fn arrive<P, E>(
        &mut self,
        endpoint: &mut E,
        slots: &mut Vec<Slot<P, Id>>,
        id: Id,
        config: &ManyConfig,
        report: &mut impl FnMut(Event<'_, Id>),
    ) where
        P: Protocol,
        E: Endpoint<Id = Id>,
    {
        if self.held.len() >= MAX_HELD {
            self.drop_closed_held(endpoint);
        }
        if served(slots) < self.max_conns && self.held.is_empty() {
            self.admit(endpoint, slots, id, config, report);
        } else if self.held.len() < MAX_HELD {
            self.held.push(Held {
                id,
                since: endpoint.now_us(),
                reported: false,
            });
        } else {
            self.admit(endpoint, slots, id, config, report);
        }
    }

    /// Gives up the served connections stuck on a closed client
    /// ([`STUCK_US`]), then decides the held connections, oldest first:
    /// admitted while there is room; then, while the table is full, kept
    /// for up to [`HOLD_US`] with the served connections probed (at most
    /// once per [`PROBE_EVERY_US`]), and decided by [`Admission::admit`]
    /// (displacement or refusal) when that is over. `true` if any was
    /// decided or given up, or a probe went out.
    pub(super) fn decide<P, E>(
        &mut self,
        endpoint: &mut E,
        slots: &mut Vec<Slot<P, Id>>,
        config: &ManyConfig,
        report: &mut impl FnMut(Event<'_, Id>),
    ) -> bool
    where
        P: Protocol,
        E: Endpoint<Id = Id>,
    {
        let now = endpoint.now_us();
        let mut moved = give_up_stuck(endpoint, slots, now);
        if self.held.is_empty() {
            return moved;
        }
        moved |= self.drop_closed_held(endpoint);
        while let Some(h) = self.held.first() {
            let full = served(slots) >= self.max_conns;
            if full && now.wrapping_sub(h.since) < HOLD_US {
                break;
            }
            let h = self.held.remove(0);
            self.admit(endpoint, slots, h.id, config, report);
            moved = true;
        }
        for h in self.held.iter_mut().filter(|h| !h.reported) {
            h.reported = true;
            report(Event::Held(h.id));
        }
        // Whoever is left waits for a close: probe every served connection,
        // once after the newest one arrived and at most once per period.
        if let Some(newest) = self.held.last().map(|h| h.since)
            && self
                .probed
                .is_none_or(|t| t < newest && now.wrapping_sub(t) >= PROBE_EVERY_US)
        {
            for s in slots.iter().filter(|s| s.served) {
                endpoint.probe(s.id);
            }
            self.probed = Some(now);
            moved = true;
        }
        moved
    }

    /// Power-off: resets every held connection.
    pub(super) fn reset_held<E: Endpoint<Id = Id>>(&mut self, endpoint: &mut E) {
        for h in self.held.drain(..) {
            endpoint.reset(h.id);
        }
    }

    /// Resets the held connections whose client has already closed its
    /// side (a burst of connections opened and dropped): they would take
    /// the room of a newcomer that still wants an answer. `true` if one was
    /// dropped.
    fn drop_closed_held<E: Endpoint<Id = Id>>(&mut self, endpoint: &mut E) -> bool {
        let before = self.held.len();
        self.held.retain(|h| {
            if endpoint.peer_closed(h.id) {
                endpoint.reset(h.id);
                false
            } else {
                true
            }
        });
        self.held.len() != before
    }

    /// Serves `id`, displaces an idle connection for it, or refuses it.
    fn admit<P, E>(
        &self,
        endpoint: &mut E,
        slots: &mut Vec<Slot<P, Id>>,
        id: Id,
        config: &ManyConfig,
        report: &mut impl FnMut(Event<'_, Id>),
    ) where
        P: Protocol,
        E: Endpoint<Id = Id>,
    {
        let now = endpoint.now_us();
        if served(slots) >= self.max_conns {
            let victim = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.served
                        && !s.conn.mid_frame()
                        && s.conn.output_len() == 0
                        && (now.wrapping_sub(s.last_rx) >= config.idle_timeout_us
                            || endpoint.peer_closed(s.id))
                })
                .min_by_key(|(_, s)| s.last_rx)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    let old = slots.swap_remove(i);
                    report(Event::Evicted(old.id));
                    endpoint.close(old.id);
                }
                None => {
                    let refusing = slots.iter().filter(|s| !s.served).count();
                    if refusing >= MAX_REFUSING {
                        report(Event::Dropped(id));
                        endpoint.reset(id);
                    } else {
                        report(Event::Busy(id));
                        slots.push(Slot {
                            id,
                            conn: ServerConn::busy(&busy_detail(self.max_conns)),
                            served: false,
                            last_rx: now,
                            stuck: None,
                        });
                    }
                    return;
                }
            }
        }
        report(Event::Accepted(id));
        endpoint.serve(id);
        slots.push(Slot::served(id, config, now));
    }
}

/// Served connections, counted against the limit.
fn served<P: Protocol, Id>(slots: &[Slot<P, Id>]) -> usize {
    slots.iter().filter(|s| s.served).count()
}

/// Gives up the served connections whose client closed while answers were
/// due and that took none of them for [`STUCK_US`]: vhost-device-vsock
/// drops what it cannot write to a closed host socket and returns no
/// credit, so such answers would hold the slot for ever (R-CONN-7; R-END-2
/// lets a server drop the answers after a close without `GOODBYE`). `true`
/// if one was given up.
fn give_up_stuck<P, E>(endpoint: &mut E, slots: &mut [Slot<P, E::Id>], now: u64) -> bool
where
    P: Protocol,
    E: Endpoint,
{
    let mut moved = false;
    for s in slots.iter_mut().filter(|s| s.served) {
        let pending = s.conn.output_len();
        if pending == 0 || !endpoint.peer_closed(s.id) {
            s.stuck = None;
            continue;
        }
        match s.stuck {
            Some((since, len)) if len == pending => {
                if now.wrapping_sub(since) >= STUCK_US {
                    s.conn
                        .transport_failed(crate::Error::Timeout(crate::Step::Write));
                    s.stuck = None;
                    moved = true;
                }
            }
            _ => s.stuck = Some((now, pending)),
        }
    }
    moved
}

fn busy_detail(max_conns: usize) -> alloc::string::String {
    alloc::format!("server at its limit of {max_conns} connections")
}

#[cfg(test)]
mod tests {
    use alloc::rc::Rc;
    use alloc::string::String;
    use core::cell::RefCell;

    use super::super::tests::{Fake, Id, St};
    use super::*;
    use crate::rpc::test_protocol::TestVm;
    use crate::rpc::{Budget, ServeConfig};

    /// An [`Admission`] driven directly, over the fake endpoint, with the
    /// table the scheduler would keep and what was reported.
    struct Bed {
        adm: Admission<Id>,
        fake: Fake,
        st: Rc<RefCell<St>>,
        slots: Vec<Slot<TestVm, Id>>,
        config: ManyConfig,
        events: Vec<String>,
    }

    impl Bed {
        fn new(max_conns: usize, idle_timeout_us: u64) -> Self {
            let (fake, st) = Fake::new();
            Self {
                adm: Admission::new(max_conns),
                fake,
                st,
                slots: Vec::new(),
                config: ManyConfig {
                    serve: ServeConfig::default(),
                    max_conns,
                    idle_timeout_us,
                    budget: Budget::new(1 << 20),
                },
                events: Vec::new(),
            }
        }

        /// Connection `id` is accepted at the fake's time now.
        fn arrive(&mut self, id: u32) {
            self.st.borrow_mut().connect(id);
            let events = &mut self.events;
            let mut report = |e: Event<'_, Id>| events.push(alloc::format!("{e:?}"));
            self.adm.arrive(
                &mut self.fake,
                &mut self.slots,
                Id(id),
                &self.config,
                &mut report,
            );
        }

        /// The end of a pass at `ms` milliseconds.
        fn decide(&mut self, ms: u64) -> bool {
            self.st.borrow_mut().pass = ms;
            let events = &mut self.events;
            let mut report = |e: Event<'_, Id>| events.push(alloc::format!("{e:?}"));
            self.adm
                .decide(&mut self.fake, &mut self.slots, &self.config, &mut report)
        }

        fn events(&mut self) -> Vec<String> {
            core::mem::take(&mut self.events)
        }

        fn conn<R>(&self, id: u32, f: impl FnOnce(&super::super::tests::Conn) -> R) -> R {
            f(&self.st.borrow().conns[&id])
        }
    }

    const HOLD_MS: u64 = HOLD_US / 1000;

    #[test]
    fn served_while_there_is_room_then_held() {
        let mut b = Bed::new(1, u64::MAX);
        b.arrive(0);
        b.arrive(1);
        assert_eq!(b.events(), ["Accepted(Id(0))"]);
        assert_eq!(b.slots.len(), 1);
        assert!(b.conn(0, |c| c.served));
        // 1 is held: neither served nor refused, until the end of the pass.
        assert_eq!(b.adm.held.len(), 1);
        assert!(b.conn(1, |c| !c.served && !c.closed));
    }

    #[test]
    fn held_probes_the_served_once_then_is_refused_when_the_hold_ends() {
        let mut b = Bed::new(1, u64::MAX);
        b.arrive(0);
        b.arrive(1);
        assert!(b.decide(1), "a probe went out");
        assert_eq!(b.events(), ["Accepted(Id(0))", "Held(Id(1))"]);
        assert_eq!(b.conn(0, |c| c.probes), 1);
        // Once after the newest arrived: not again for the same newcomer.
        assert!(!b.decide(2 + PROBE_EVERY_US / 1000));
        assert_eq!(b.conn(0, |c| c.probes), 1);
        assert!(!b.decide(HOLD_MS - 1));
        assert!(b.events().is_empty());
        assert!(b.decide(HOLD_MS));
        assert_eq!(b.events(), ["Busy(Id(1))"]);
        assert!(b.adm.held.is_empty());
        // The refusal is a slot of the table, not counted as served.
        assert_eq!(b.slots.len(), 2);
        assert!(!b.slots[1].served && b.slots[1].conn.is_ending());
        assert!(b.conn(1, |c| !c.served));
    }

    #[test]
    fn a_slot_that_frees_goes_to_the_oldest_held_at_once() {
        let mut b = Bed::new(1, u64::MAX);
        for id in 0..3 {
            b.arrive(id);
        }
        b.decide(1);
        assert_eq!(
            b.events(),
            ["Accepted(Id(0))", "Held(Id(1))", "Held(Id(2))"]
        );
        // The scheduler saw 0 end and took it out of the table.
        b.slots.clear();
        assert!(b.decide(2));
        assert_eq!(b.events(), ["Accepted(Id(1))"]);
        assert_eq!(b.adm.held.len(), 1, "2 waits on");
        assert!(b.conn(1, |c| c.served));
    }

    #[test]
    fn over_max_held_a_newcomer_is_decided_at_once_and_refusals_are_capped() {
        let mut b = Bed::new(1, u64::MAX);
        let held = 1..=MAX_HELD as u32;
        let refused = held.end() + 1..=held.end() + MAX_REFUSING as u32;
        let dropped = refused.end() + 1;
        for id in 0..=dropped {
            b.arrive(id);
        }
        assert_eq!(b.adm.held.len(), MAX_HELD);
        let events = b.events();
        assert_eq!(events.len(), 1 + MAX_REFUSING + 1);
        for (e, id) in events[1..].iter().zip(refused) {
            assert_eq!(*e, alloc::format!("Busy(Id({id}))"));
        }
        assert_eq!(
            *events.last().unwrap(),
            alloc::format!("Dropped(Id({dropped}))")
        );
        assert!(b.conn(dropped, |c| c.reset));
        assert_eq!(b.slots.len(), 1 + MAX_REFUSING);
    }

    #[test]
    fn newcomers_already_gone_are_reset_to_make_room_to_hold_another() {
        let mut b = Bed::new(1, u64::MAX);
        for id in 0..=MAX_HELD as u32 {
            b.arrive(id);
        }
        for id in 1..=MAX_HELD as u32 {
            b.st.borrow_mut().conns.get_mut(&id).unwrap().eof = true;
        }
        let next = MAX_HELD as u32 + 1;
        b.arrive(next);
        assert_eq!(b.events(), ["Accepted(Id(0))"], "held, not refused");
        assert_eq!(b.adm.held.len(), 1);
        for id in 1..=MAX_HELD as u32 {
            assert!(b.conn(id, |c| c.reset));
        }
    }

    #[test]
    fn an_idle_connection_gives_way_at_the_end_of_the_hold() {
        let mut b = Bed::new(1, 10_000);
        b.arrive(0);
        // 0's HELLO went out: nothing left to send.
        let n = b.slots[0].conn.output().len();
        b.slots[0].conn.sent(n);
        b.decide(0);
        b.arrive(1);
        b.decide(1);
        assert_eq!(b.events(), ["Accepted(Id(0))", "Held(Id(1))"]);
        assert!(b.decide(HOLD_MS));
        assert_eq!(b.events(), ["Evicted(Id(0))", "Accepted(Id(1))"]);
        assert!(b.conn(0, |c| c.closed));
        assert_eq!(b.slots.len(), 1);
        assert_eq!(b.slots[0].id, Id(1));
    }

    #[test]
    fn a_closed_client_that_takes_no_answer_is_given_up_after_stuck_us() {
        let mut b = Bed::new(1, u64::MAX);
        b.arrive(0);
        // Its HELLO waits, and its client has closed.
        b.st.borrow_mut().conns.get_mut(&0).unwrap().eof = true;
        let stuck_ms = STUCK_US / 1000;
        assert!(!b.decide(1));
        assert!(!b.decide(stuck_ms));
        assert!(!b.slots[0].conn.is_ending());
        assert!(b.decide(1 + stuck_ms));
        assert!(
            b.slots[0].conn.is_done(),
            "its answers dropped, its slot free"
        );
    }
}
