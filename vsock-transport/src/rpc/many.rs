//! Many connections served by one event loop, and the server's
//! lifecycle, written once: [`serve_many`] takes the boot connection (the
//! server's own connection to the host, if it made one) and every
//! connection an [`Endpoint`] accepts, drives a [`ServerConn`] for each,
//! and returns when the handler stops (power-off).
//!
//! # Policy
//!
//! - **Limit.** At most [`ManyConfig::max_conns`] connections are served
//!   at once, the boot connection included.
//! - **Closes first.** A new connection that finds the table full is
//!   decided only after the pass has handed every served connection what
//!   the endpoint saw for it, so a connection whose client closed it is
//!   gone before the newcomer is counted.
//! - **Over the limit.** A new connection that finds the table full is
//!   held (no `HELLO`, no refusal yet) for up to [`HOLD_US`], and every
//!   served connection is probed ([`Endpoint::probe`]): a client may have
//!   closed one without the endpoint knowing yet. As soon as a slot frees,
//!   the oldest held connection is admitted. At the end of the hold it
//!   first tries to displace an idle connection: a served connection with
//!   no frame in part or in whole, nothing left to send, and nothing
//!   received for [`ManyConfig::idle_timeout_us`] or a client that has
//!   closed its side ([`Endpoint::peer_closed`]; the one silent for
//!   longest is closed). If there is none, the new connection gets a fatal
//!   `ERROR` busy (code 7) instead of the server's `HELLO` and is closed
//!   ([`ServerConn::busy`]). At most [`MAX_HELD`] connections are held at
//!   once (more are decided at once) and at most [`MAX_REFUSING`]
//!   refusals are in progress at once (as many as can be held, so that
//!   every newcomer that was held gets its `busy`); beyond that a
//!   connection is reset without a word.
//! - **Closed with answers due.** A served connection whose client has
//!   closed its side ([`Endpoint::peer_closed`]) with answers still due,
//!   none of which it takes for [`STUCK_US`], is given up, held newcomers
//!   or not (vhost-device-vsock 0.3.0 silently drops what it cannot write
//!   to a closed host socket and returns no credit, so such answers would
//!   wait, and keep the slot, for ever).
//! - **Interleaving.** Each pass over the table sends what each
//!   connection's peer has credit for, reads what has arrived for each,
//!   and processes one complete request per connection (up to
//!   8 (`SMALL_BATCH`) pipelined ones while their answers stay small, which
//!   then go out in one write); so a request on any connection waits at
//!   most for one request (or a few tiny ones) of each other connection,
//!   and a silent, slow or trickling client holds nobody up.
//! - **Heap.** The [`Budget`] is shared by all connections (see
//!   [`ServerConn`]).
//! - **Power-off.** When the handler stops ([`Then::Stop`]), its answer is
//!   sent, every connection is closed, and [`serve_many`] returns.
//!
//! [`Then::Stop`]: super::Then::Stop

use alloc::vec::Vec;

use svmc_comm::Protocol;

use super::{Budget, Ended, Handler, ReadAhead, ServeConfig, ServerConn};
use crate::Result;
pub use crate::endpoint::{Endpoint, Recv};

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

/// A receive buffer kept after a large request (for the next one: no
/// allocation, no zero-fill) is given back with its share of the budget
/// once its connection has been silent for this many microseconds, so a
/// client that sent one large request and went quiet does not keep the
/// budget from the other connections for longer than that. (Long enough
/// that a client pausing between large requests, e.g. to prepare the
/// next one, does not pay the buffer's allocation and zero-fill again.)
pub const KEEP_BODY_US: u64 = 1_000_000;

/// Served connections are probed ([`Endpoint::probe`]) at most once per
/// this many microseconds while connections are held.
const PROBE_EVERY_US: u64 = 50_000;

/// Requests of one connection processed in one pass, at most, while their
/// answers stay under [`SMALL_ANSWERS`] bytes.
const SMALL_BATCH: usize = 8;

/// Device events taken each time a running request's handler reads its
/// connection ahead (`Ctx::cancelled`): enough to drain the queues a
/// millisecond fills.
const READ_AHEAD_EVENTS: usize = 32;

/// See [`SMALL_BATCH`].
const SMALL_ANSWERS: usize = 16 * 1024;

/// Windows of an answer stream (each up to the server core's
/// [`OUTPUT_HIGH_WATER`](super::OUTPUT_HIGH_WATER)) one connection
/// produces per pass, at most.
const STREAM_WINDOWS_PER_PASS: usize = 4;

/// Device events taken per pass of the loop, at most (a burst of small
/// pipelined requests is then answered together).
const EVENTS_PER_PASS: usize = 32;

/// A pass stops taking device events once this many received bytes wait
/// unread ([`Endpoint::unread`]): one full packet. Without it a large
/// request filled the whole ring (our `buf_alloc`) before it was read, the
/// peer waited for credit every 256 KiB, and a 1 MiB reverse took 1.2x
/// the raw reverse's time (whose blocking stream reads after every
/// packet); `cargo xtask profile` showed the difference as time waiting
/// for the device.
const READ_AT: usize = 64 * 1024;

/// Settings of [`serve_many`].
#[derive(Debug, Clone)]
pub struct ManyConfig {
    /// Per-connection settings.
    pub serve: ServeConfig,
    /// Connections served at once (at least 1), the boot connection
    /// included.
    pub max_conns: usize,
    /// How long a connection must have been silent (and between frames,
    /// with nothing to send) to be closed for a new one when the table is
    /// full.
    pub idle_timeout_us: u64,
    /// Heap for large requests, shared by all connections.
    pub budget: Budget,
}

/// What happened, for the caller's log. New kinds of event may be added
/// in a minor release: a `match` needs a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a, Id> {
    /// A connection is served.
    Accepted(Id),
    /// A connection over the limit is held while the served ones are
    /// probed for closes (at most [`HOLD_US`]); then it is served, or
    /// refused.
    Held(Id),
    /// A connection over the limit is refused with `ERROR` busy.
    Busy(Id),
    /// A connection over the limit is reset: too many refusals at once.
    Dropped(Id),
    /// An idle connection is closed to make room.
    Evicted(Id),
    /// A connection ended.
    Ended(Id, &'a Result<Ended>),
}

struct Slot<P: Protocol, Id> {
    id: Id,
    conn: ServerConn<P>,
    /// Counted against the limit (not a busy refusal).
    served: bool,
    last_rx: u64,
    /// While a newcomer is held: since when the peer has closed with
    /// this many bytes of answers waiting, none of them taken.
    stuck: Option<(u64, usize)>,
}

/// A new connection that found the table full, since this time.
struct Held<Id> {
    id: Id,
    since: u64,
    /// [`Event::Held`] was reported.
    reported: bool,
}

/// Serves `boot` (if any) and every connection `endpoint` accepts until
/// `handler` stops; then closes every connection (bounded) and returns.
/// Only a device error ends it early.
pub fn serve_many<P, E, H>(
    endpoint: &mut E,
    boot: Option<E::Id>,
    handler: &mut H,
    config: &ManyConfig,
    mut report: impl FnMut(Event<'_, E::Id>),
) -> Result<()>
where
    P: Protocol,
    E: Endpoint,
    H: Handler<P> + ?Sized,
{
    // A name no HELLO can carry: refuse to serve at all, before any send.
    svmc_comm::handshake::check_name::<P>()?;
    let max_conns = config.max_conns.max(1);
    // Sized once for the most there can be (served and being refused), so
    // that the table never reallocates while it serves: a burst of
    // refusals does not leave a larger table behind.
    let mut slots: Vec<Slot<P, E::Id>> = Vec::with_capacity(max_conns + MAX_REFUSING);
    if let Some(id) = boot {
        report(Event::Accepted(id));
        endpoint.serve(id);
        slots.push(Slot {
            id,
            conn: ServerConn::new(config.serve, config.budget.clone()),
            served: true,
            last_rx: endpoint.now_us(),
            stuck: None,
        });
    }
    let mut held: Vec<Held<E::Id>> = Vec::with_capacity(MAX_HELD);
    // When the served connections were last probed for the held ones.
    let mut probed: Option<u64> = None;
    let mut stopped = false;
    while !stopped {
        let mut busy = false;
        for _ in 0..EVENTS_PER_PASS {
            // Accepted connections are taken at once, so that a burst of
            // them never piles up in the endpoint; they are admitted (or
            // held, or refused) after this pass has seen the closes.
            while let Some(id) = endpoint.accept() {
                busy = true;
                arrive(
                    endpoint,
                    &mut slots,
                    &mut held,
                    id,
                    max_conns,
                    config,
                    &mut report,
                );
            }
            if !endpoint.poll()? {
                break;
            }
            busy = true;
            if endpoint.unread() >= READ_AT {
                break;
            }
        }
        while let Some(id) = endpoint.accept() {
            busy = true;
            arrive(
                endpoint,
                &mut slots,
                &mut held,
                id,
                max_conns,
                config,
                &mut report,
            );
        }
        let now = endpoint.now_us();
        let mut i = 0;
        while i < slots.len() {
            let slot = &mut slots[i];
            busy |= step(endpoint, slot, handler);
            // (`last_rx` may be later than `now`: it was read in `step`.)
            if now.saturating_sub(slot.last_rx) >= KEEP_BODY_US {
                slot.conn.release_idle_body();
            }
            if slot.conn.is_done() {
                let end = slot.conn.take_end().unwrap_or(Ok(Ended::Closed));
                report(Event::Ended(slot.id, &end));
                stopped |= matches!(end, Ok(Ended::Stopped));
                endpoint.close(slot.id);
                slots.swap_remove(i);
                busy = true;
                continue;
            }
            i += 1;
        }
        busy |= decide(
            endpoint,
            &mut slots,
            &mut held,
            &mut probed,
            max_conns,
            config,
            &mut report,
        );
        endpoint.tick();
        if !busy {
            endpoint.idle();
        }
    }
    // Power-off: close the others too, and wait (bounded by the
    // endpoint's shutdown limit) until every close is done.
    let mut closing: Vec<E::Id> = Vec::new();
    for slot in slots.drain(..) {
        endpoint.close(slot.id);
        closing.push(slot.id);
    }
    for h in held.drain(..) {
        endpoint.reset(h.id);
    }
    while let Some(id) = endpoint.accept() {
        endpoint.reset(id);
    }
    while closing.iter().any(|&id| endpoint.exists(id)) {
        if !endpoint.poll()? {
            endpoint.idle();
        }
        endpoint.tick();
    }
    Ok(())
}

/// A connection just accepted: served at once if there is room; else held
/// until the end of the pass at least (so that the closes the pass saw
/// count first), or decided at once when [`MAX_HELD`] are held already.
fn arrive<P, E>(
    endpoint: &mut E,
    slots: &mut Vec<Slot<P, E::Id>>,
    held: &mut Vec<Held<E::Id>>,
    id: E::Id,
    max_conns: usize,
    config: &ManyConfig,
    report: &mut impl FnMut(Event<'_, E::Id>),
) where
    P: Protocol,
    E: Endpoint,
{
    if held.len() >= MAX_HELD {
        drop_closed_held(endpoint, held);
    }
    if served(slots) < max_conns && held.is_empty() {
        admit(endpoint, slots, id, max_conns, config, report);
    } else if held.len() < MAX_HELD {
        held.push(Held {
            id,
            since: endpoint.now_us(),
            reported: false,
        });
    } else {
        admit(endpoint, slots, id, max_conns, config, report);
    }
}

/// Resets the held connections whose client has already closed its side
/// (a burst of connections opened and dropped): they would take the room
/// of a newcomer that still wants an answer. `true` if one was dropped.
fn drop_closed_held<E: Endpoint>(endpoint: &mut E, held: &mut Vec<Held<E::Id>>) -> bool {
    let before = held.len();
    held.retain(|h| {
        if endpoint.peer_closed(h.id) {
            endpoint.reset(h.id);
            false
        } else {
            true
        }
    });
    held.len() != before
}

/// Served connections, counted against the limit.
fn served<P: Protocol, Id>(slots: &[Slot<P, Id>]) -> usize {
    slots.iter().filter(|s| s.served).count()
}

/// Decides the held connections, oldest first: admitted while there is
/// room; then, while the table is full, kept for up to [`HOLD_US`] with
/// the served connections probed (at most once per [`PROBE_EVERY_US`]),
/// and decided by [`admit`] (displacement or refusal) when that is over.
/// `true` if any was decided or a probe went out.
fn decide<P, E>(
    endpoint: &mut E,
    slots: &mut Vec<Slot<P, E::Id>>,
    held: &mut Vec<Held<E::Id>>,
    probed: &mut Option<u64>,
    max_conns: usize,
    config: &ManyConfig,
    report: &mut impl FnMut(Event<'_, E::Id>),
) -> bool
where
    P: Protocol,
    E: Endpoint,
{
    let now = endpoint.now_us();
    let mut moved = give_up_stuck(endpoint, slots, now);
    if held.is_empty() {
        return moved;
    }
    moved |= drop_closed_held(endpoint, held);
    while let Some(h) = held.first() {
        let full = served(slots) >= max_conns;
        if full && now.wrapping_sub(h.since) < HOLD_US {
            break;
        }
        let h = held.remove(0);
        admit(endpoint, slots, h.id, max_conns, config, report);
        moved = true;
    }
    for h in held.iter_mut().filter(|h| !h.reported) {
        h.reported = true;
        report(Event::Held(h.id));
    }
    // Whoever is left waits for a close: probe every served connection,
    // once after the newest one arrived and at most once per period.
    if let Some(newest) = held.last().map(|h| h.since)
        && probed.is_none_or(|t| t < newest && now.wrapping_sub(t) >= PROBE_EVERY_US)
    {
        for s in slots.iter().filter(|s| s.served) {
            endpoint.probe(s.id);
        }
        *probed = Some(now);
        moved = true;
    }
    moved
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

/// Serves `id`, displaces an idle connection for it, or refuses it.
fn admit<P, E>(
    endpoint: &mut E,
    slots: &mut Vec<Slot<P, E::Id>>,
    id: E::Id,
    max_conns: usize,
    config: &ManyConfig,
    report: &mut impl FnMut(Event<'_, E::Id>),
) where
    P: Protocol,
    E: Endpoint,
{
    let now = endpoint.now_us();
    let served = slots.iter().filter(|s| s.served).count();
    if served >= max_conns {
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
                        conn: ServerConn::busy(&busy_detail(max_conns)),
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
    slots.push(Slot {
        id,
        conn: ServerConn::new(config.serve, config.budget.clone()),
        served: true,
        last_rx: now,
        stuck: None,
    });
}

fn busy_detail(max_conns: usize) -> alloc::string::String {
    alloc::format!("server at its limit of {max_conns} connections")
}

/// One connection's share of a pass: send, receive, process at most one
/// frame, send again. `true` if anything moved.
fn step<P, E, H>(endpoint: &mut E, slot: &mut Slot<P, E::Id>, handler: &mut H) -> bool
where
    P: Protocol,
    E: Endpoint,
    H: Handler<P> + ?Sized,
{
    let mut moved = flush(endpoint, slot);
    let before = slot.last_rx;
    let open = read_some(endpoint, slot);
    moved |= !open || slot.last_rx != before;
    // One request per pass, or a few small ones: pipelined small requests
    // are answered together (one write), and another connection waits for
    // at most a few requests whose answers are that small.
    let id = slot.id;
    for _ in 0..SMALL_BATCH {
        // While a request runs, its handler may ask whether it was
        // cancelled: the device is polled and this connection read ahead,
        // without waiting.
        let mut read_ahead = |buf: &mut [u8]| {
            for _ in 0..READ_AHEAD_EVENTS {
                if !matches!(endpoint.poll(), Ok(true)) {
                    break;
                }
            }
            match endpoint.recv(id, buf) {
                Ok(Recv::Data(n)) => ReadAhead::Data(n),
                Ok(Recv::Empty) => ReadAhead::Nothing,
                Ok(Recv::Eof) => ReadAhead::Eof,
                Err(e) => ReadAhead::Failed(e),
            }
        };
        if !slot.conn.process_with(handler, &mut read_ahead) {
            break;
        }
        moved = true;
        if slot.conn.output_len() >= SMALL_ANSWERS || !read_some(endpoint, slot) {
            break;
        }
    }
    flush(endpoint, slot);
    // An answer stream goes on as its client takes it, a window at a time
    // per pass: the next pass reads the connection first (a `CANCEL`, or a
    // `REQUEST` that ends it), and the other connections get their turn.
    // An endpoint whose writes rarely wait (Linux, a fast client) would
    // otherwise send the whole stream here, unread and unfair.
    for _ in 0..STREAM_WINDOWS_PER_PASS {
        if !slot.conn.produce() {
            break;
        }
        moved = true;
        if !flush(endpoint, slot) {
            break;
        }
    }
    moved
}

/// Reads what has arrived for `slot` into its frame assembler while it
/// wants input; `false` if the connection ended or failed.
fn read_some<P: Protocol, E: Endpoint>(endpoint: &mut E, slot: &mut Slot<P, E::Id>) -> bool {
    while slot.conn.wants_input() {
        match endpoint.recv(slot.id, slot.conn.input_buf()) {
            Ok(Recv::Data(n)) => {
                slot.conn.received(n);
                slot.last_rx = endpoint.now_us();
            }
            Ok(Recv::Empty) => break,
            Ok(Recv::Eof) => {
                slot.conn.peer_closed();
                return false;
            }
            Err(e) => {
                slot.conn.transport_failed(e);
                return false;
            }
        }
    }
    true
}

fn flush<P: Protocol, E: Endpoint>(endpoint: &mut E, slot: &mut Slot<P, E::Id>) -> bool {
    let mut moved = false;
    while !slot.conn.output().is_empty() {
        match endpoint.send_some(slot.id, slot.conn.output()) {
            Ok(0) => {
                slot.conn.stalled();
                break;
            }
            Ok(n) => {
                slot.conn.sent(n);
                moved = true;
            }
            Err(e) => {
                slot.conn.transport_failed(e);
                return true;
            }
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::collections::{BTreeMap, VecDeque};
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;

    use super::*;
    use crate::rpc::test_protocol::{Info, Request, Response, TestService, TestVm};
    use crate::rpc::{Answer, Ctx, ResponseStream, Then};
    use svmc_comm::Hello;
    use svmc_comm::envelope::{self, RequestId};
    use svmc_comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};

    /// One simulated connection.
    #[derive(Default)]
    struct Conn {
        /// Bytes the client has sent that the server has not read.
        inbox: VecDeque<u8>,
        /// Bytes the server has sent.
        out: Vec<u8>,
        /// The client closed its side.
        eof: bool,
        /// How many more bytes the client takes now.
        credit: usize,
        closed: bool,
        reset: bool,
        /// The client closed, and the endpoint reports it once probed.
        silently_closed: bool,
        /// Probes received.
        probes: u32,
        /// [`Endpoint::serve`] was called.
        served: bool,
    }

    #[derive(Default)]
    struct St {
        conns: BTreeMap<u32, Conn>,
        pending: VecDeque<u32>,
        pass: u64,
    }

    impl St {
        fn connect(&mut self, id: u32) {
            self.conns.insert(
                id,
                Conn {
                    credit: usize::MAX,
                    ..Conn::default()
                },
            );
            self.pending.push_back(id);
        }
        fn send(&mut self, id: u32, bytes: &[u8]) {
            self.conns.get_mut(&id).unwrap().inbox.extend(bytes);
        }
        fn frames(&self, id: u32) -> Vec<(FrameKind, Vec<u8>)> {
            let mut v = Vec::new();
            let mut b = &self.conns[&id].out[..];
            while b.len() >= HEADER_LEN {
                let h = Header::parse(b[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
                let end = HEADER_LEN + h.len as usize;
                if b.len() < end {
                    break;
                }
                v.push((h.kind, b[HEADER_LEN..end].to_vec()));
                b = &b[end..];
            }
            v
        }
        fn responses(&self, id: u32) -> Vec<u32> {
            self.frames(id)
                .iter()
                .filter(|(k, _)| *k == FrameKind::Response)
                .map(|(_, b)| envelope::decode::<Response>(b).0.unwrap().0)
                .collect()
        }
    }

    type Hook = Box<dyn FnMut(&mut St)>;

    struct Fake {
        st: Rc<RefCell<St>>,
        hook: Hook,
    }

    impl core::fmt::Display for Id {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Id(u32);

    impl Endpoint for Fake {
        type Id = Id;
        fn poll(&mut self) -> Result<bool> {
            let mut st = self.st.borrow_mut();
            st.pass += 1;
            assert!(st.pass < 10_000, "the script never powered off");
            (self.hook)(&mut st);
            Ok(false)
        }
        fn accept(&mut self) -> Option<Id> {
            self.st.borrow_mut().pending.pop_front().map(Id)
        }
        fn recv(&mut self, id: Id, buf: &mut [u8]) -> Result<Recv> {
            let mut st = self.st.borrow_mut();
            let c = st.conns.get_mut(&id.0).unwrap();
            if c.inbox.is_empty() {
                return Ok(if c.eof { Recv::Eof } else { Recv::Empty });
            }
            let n = buf.len().min(c.inbox.len());
            for (d, s) in buf.iter_mut().zip(c.inbox.drain(..n)) {
                *d = s;
            }
            Ok(Recv::Data(n))
        }
        fn send_some(&mut self, id: Id, buf: &[u8]) -> Result<usize> {
            let mut st = self.st.borrow_mut();
            let c = st.conns.get_mut(&id.0).unwrap();
            let n = buf.len().min(c.credit);
            c.credit -= n;
            c.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn close(&mut self, id: Id) {
            self.st.borrow_mut().conns.get_mut(&id.0).unwrap().closed = true;
        }
        fn reset(&mut self, id: Id) {
            let mut st = self.st.borrow_mut();
            let c = st.conns.get_mut(&id.0).unwrap();
            c.closed = true;
            c.reset = true;
        }
        fn exists(&self, id: Id) -> bool {
            !self.st.borrow().conns[&id.0].closed
        }
        fn tick(&mut self) {}
        fn peer_closed(&self, id: Id) -> bool {
            let st = self.st.borrow();
            let c = &st.conns[&id.0];
            c.eof && c.inbox.is_empty()
        }
        fn probe(&mut self, id: Id) {
            let mut st = self.st.borrow_mut();
            let c = st.conns.get_mut(&id.0).unwrap();
            c.probes += 1;
            c.eof |= c.silently_closed;
        }
        fn serve(&mut self, id: Id) {
            let mut st = self.st.borrow_mut();
            let c = st.conns.get_mut(&id.0).unwrap();
            assert!(!c.closed && !c.served, "{id} served twice or closed");
            c.served = true;
        }
        fn now_us(&self) -> u64 {
            self.st.borrow().pass * 1000
        }
    }

    fn hello() -> Vec<u8> {
        frame::encode(
            FrameKind::Hello,
            &Hello::new::<TestVm>(frame::DEFAULT_MAX_BODY),
            frame::HELLO_MAX_BODY,
        )
        .unwrap()
    }

    fn request(id: u32, r: &Request) -> Vec<u8> {
        let mut f = Vec::new();
        envelope::encode_request_into(RequestId(id), r, u32::MAX, &mut f).unwrap();
        f
    }

    fn info() -> Info {
        Info {
            firmware: "t".into(),
            firmware_version: "0".into(),
            protocol_version: TestVm::VERSION,
            arch: "t".into(),
            max_body: 1 << 20,
            heap: None,
        }
    }

    /// Runs the server with the boot connection 0 (already in `St`) until
    /// the script powers it off; returns the final state.
    fn run(max_conns: usize, idle_timeout_us: u64, hook: Hook) -> St {
        let mut handler = TestService::new(info as fn() -> Info);
        let st = run_with(max_conns, idle_timeout_us, hook, &mut handler);
        assert!(handler.power_off_requested());
        st
    }

    /// [`run`] with a handler of the test's own.
    fn run_with<H: Handler<TestVm>>(
        max_conns: usize,
        idle_timeout_us: u64,
        hook: Hook,
        handler: &mut H,
    ) -> St {
        let st = Rc::new(RefCell::new(St::default()));
        st.borrow_mut().connect(0);
        st.borrow_mut().pending.clear();
        let mut fake = Fake {
            st: st.clone(),
            hook,
        };
        let config = ManyConfig {
            serve: ServeConfig {
                max_body: 1 << 20,
                ..ServeConfig::default()
            },
            max_conns,
            idle_timeout_us,
            budget: Budget::new(1 << 22),
        };
        serve_many::<TestVm, _, _>(&mut fake, Some(Id(0)), handler, &config, |_| {}).unwrap();
        drop(fake);
        Rc::try_unwrap(st).ok().unwrap().into_inner()
    }

    #[test]
    fn silent_and_stalled_clients_do_not_delay_another() {
        let answered_at = Rc::new(RefCell::new(None));
        let at = answered_at.clone();
        let st = run(
            8,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    // The boot connection says HELLO and then nothing.
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                    // Connection 1 stalls in the middle of a request.
                    st.send(1, &request(9, &Request::Reverse(vec![1; 1000]))[..400]);
                }
                5 => {
                    st.connect(2);
                    st.send(2, &hello());
                    st.send(2, &request(3, &Request::Info));
                }
                p if p > 5 && at.borrow().is_none() && st.responses(2) == [3] => {
                    *at.borrow_mut() = Some(p);
                    st.send(2, &request(4, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        let at = answered_at.borrow().unwrap();
        assert!(at <= 8, "answered at pass {at}");
        assert_eq!(st.responses(2), [3, 4]);
        // Power-off closes every connection.
        assert!(st.conns.values().all(|c| c.closed));
        assert!(st.responses(1).is_empty());
    }

    /// A client with `n` pipelined reverses of `size` bytes and another
    /// with one `Info`: how many of the first's were answered when the
    /// second's answer was out.
    fn answered_before_another(size: usize) -> usize {
        let seen = Rc::new(RefCell::new(0));
        let out = seen.clone();
        run(
            8,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    for i in 0..100 {
                        st.send(0, &request(i, &Request::Reverse(vec![7; size])));
                    }
                    st.connect(1);
                    st.send(1, &hello());
                    st.send(1, &request(50, &Request::Info));
                }
                p if p > 1 && st.responses(1) == [50] => {
                    *out.borrow_mut() = st.responses(0).len();
                    st.send(1, &request(51, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        *seen.borrow()
    }

    #[test]
    fn a_busy_client_gets_one_request_per_pass_or_a_few_small_ones() {
        let small = answered_before_another(100);
        assert!(small <= SMALL_BATCH + 1, "{small} small answers first");
        let large = answered_before_another(SMALL_ANSWERS);
        assert!(large <= 2, "{large} large answers first");
    }

    fn error(body: &[u8]) -> ProtocolError {
        frame::decode_body(body).unwrap()
    }

    /// Passes of the fake (1 ms each) a new connection is held at most.
    const HOLD: u64 = HOLD_US / 1000;

    #[test]
    fn over_the_limit_held_then_busy_then_reset_when_refusals_pile_up() {
        let st = run(
            2,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                }
                // 2 is held, then refused, and reads its busy ERROR.
                3 => st.connect(2),
                p if p == 3 + HOLD - 10 => {
                    // Held: neither HELLO nor busy yet, and the served
                    // connections were probed.
                    assert!(st.conns[&2].out.is_empty() && !st.conns[&2].closed);
                    assert!(!st.conns[&2].served);
                    assert!(st.conns[&0].probes > 0 && st.conns[&1].probes > 0);
                    assert_eq!(st.conns[&2].probes, 0);
                }
                p if p == 3 + HOLD + 10 => {
                    // MAX_REFUSING + 1 newcomers read nothing: their
                    // refusals stay in progress, and one is too many and
                    // is reset.
                    for id in 3..3 + MAX_REFUSING as u32 + 1 {
                        st.connect(id);
                        st.conns.get_mut(&id).unwrap().credit = 0;
                    }
                }
                p if p == 3 + 2 * HOLD + 30 => {
                    for id in 3..3 + MAX_REFUSING as u32 + 1 {
                        st.conns.get_mut(&id).unwrap().credit = usize::MAX;
                    }
                }
                p if p == 3 + 2 * HOLD + 40 => st.send(1, &request(1, &Request::PowerOff)),
                _ => {}
            }),
        );
        let mut reset = 0;
        for id in 2..3 + MAX_REFUSING as u32 + 1 {
            assert!(!st.conns[&id].served, "refused {id} got the full window");
            if st.conns[&id].reset {
                assert!(st.conns[&id].out.is_empty());
                reset += 1;
                continue;
            }
            let f = st.frames(id);
            assert_eq!(f.len(), 1, "connection {id}");
            let e = error(&f[0].1);
            assert_eq!((e.code, e.fatal), (ProtocolErrorCode::Busy, true));
            assert!(st.conns[&id].closed);
        }
        assert_eq!(
            reset, 1,
            "one over MAX_REFUSING is reset, the others refused"
        );
        assert!(st.conns[&0].served && st.conns[&1].served);
        assert_eq!(st.responses(1), [1]);
    }

    #[test]
    fn an_idle_connection_gives_way_only_when_full_and_silent_long_enough() {
        // Idle after 1000 passes; a new connection is held for HOLD (500).
        let st = run(
            2,
            1_000_000,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                }
                // At the end of its hold nobody has been silent for 1 s:
                // busy.
                5 => st.connect(2),
                // Connection 1 speaks at pass 700; when 3's hold ends at
                // pass 1600, the boot connection has been silent for
                // 1.6 s, 1 for 0.9 s.
                700 => st.send(1, &request(1, &Request::Info)),
                1100 => st.connect(3),
                p if p == 1100 + HOLD - 10 => assert!(!st.conns[&0].closed),
                p if p == 1100 + HOLD + 10 => {
                    st.send(3, &hello());
                    st.send(3, &request(2, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        assert_eq!(error(&st.frames(2)[0].1).code, ProtocolErrorCode::Busy);
        assert!(st.conns[&0].closed, "the boot connection, silent longest");
        assert_eq!(st.responses(1), [1]);
        assert_eq!(st.frames(3)[0].0, FrameKind::Hello);
        assert_eq!(st.responses(3), [2]);
    }

    #[test]
    fn a_client_mid_frame_is_not_idle() {
        let st = run(
            1,
            1000,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.send(0, &request(1, &Request::Info)[..3]);
                }
                20 => st.connect(1),
                p if p == 20 + HOLD + 10 => st.send(0, &request(1, &Request::PowerOff)[3..]),
                _ => {}
            }),
        );
        assert_eq!(error(&st.frames(1)[0].1).code, ProtocolErrorCode::Busy);
        assert!(!st.conns[&0].reset);
    }

    #[test]
    fn closes_free_slots_for_new_connections_at_once() {
        let first = Rc::new(RefCell::new(None));
        let at = first.clone();
        let st = run(
            2,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                }
                5 => {
                    // The client of 1 is gone, but the endpoint learns it
                    // only when probed; 2 arrives at a full table.
                    st.conns.get_mut(&1).unwrap().silently_closed = true;
                    st.connect(2);
                    st.send(2, &hello());
                }
                p if p > 5 && at.borrow().is_none() && !st.frames(2).is_empty() => {
                    *at.borrow_mut() = Some(p);
                    // A close the endpoint reports in the very pass a new
                    // connection arrives frees its slot for it.
                    st.conns.get_mut(&0).unwrap().eof = true;
                    st.connect(3);
                    st.send(3, &hello());
                    st.send(3, &request(1, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        let at = first.borrow().unwrap();
        assert!(at <= 8, "2 served at pass {at}");
        assert_eq!(st.frames(2)[0].0, FrameKind::Hello);
        assert_eq!(st.frames(3)[0].0, FrameKind::Hello);
        // 2 was held, then admitted: served like any other.
        assert!(st.conns[&2].served && st.conns[&3].served);
        assert_eq!(st.responses(3), [1]);
    }

    /// 1 does not read its answer; at pass 10 it has closed (`gone`) or
    /// not, and 2 arrives at the full table: the pass 2 got its first frame.
    fn newcomer_next_to_a_client_that_does_not_read(gone: bool) -> (St, u64) {
        let first = Rc::new(RefCell::new(0));
        let at = first.clone();
        let st = run(
            2,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                    st.send(1, &request(1, &Request::Reverse(vec![7; 100_000])));
                    st.conns.get_mut(&1).unwrap().credit = 1000;
                }
                10 => {
                    st.conns.get_mut(&1).unwrap().eof = gone;
                    st.connect(2);
                    st.send(2, &hello());
                }
                p if p > 10 && *at.borrow() == 0 && !st.frames(2).is_empty() => {
                    *at.borrow_mut() = p;
                    st.send(0, &request(9, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        let at = *first.borrow();
        (st, at)
    }

    #[test]
    fn a_closed_client_with_answers_due_gives_way_within_the_hold() {
        let (st, at) = newcomer_next_to_a_client_that_does_not_read(true);
        assert_eq!(st.frames(2)[0].0, FrameKind::Hello);
        let stuck = STUCK_US / 1000;
        assert!(at > 10 + stuck && at < 10 + HOLD, "2 served at pass {at}");
        assert!(st.conns[&1].closed);
        // A live client that does not read keeps its slot.
        let (st, at) = newcomer_next_to_a_client_that_does_not_read(false);
        assert_eq!(error(&st.frames(2)[0].1).code, ProtocolErrorCode::Busy);
        assert!(at >= 10 + HOLD, "2 refused at pass {at}");
    }

    #[test]
    fn a_closed_client_with_answers_due_frees_its_slot_without_a_newcomer() {
        let stuck = STUCK_US / 1000;
        let st = run(
            8,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                    st.send(1, &request(1, &Request::Reverse(vec![7; 100_000])));
                    st.conns.get_mut(&1).unwrap().credit = 1000;
                }
                10 => st.conns.get_mut(&1).unwrap().eof = true,
                p if p == 10 + stuck - 20 => assert!(!st.conns[&1].closed, "too early"),
                p if p == 10 + stuck + 20 => {
                    assert!(st.conns[&1].closed, "given up after STUCK_US");
                    st.send(0, &request(9, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        assert_eq!(st.responses(0), [9]);
    }

    #[test]
    fn newcomers_already_gone_do_not_take_the_room_of_one_that_waits() {
        // A burst of MAX_HELD connections opened and dropped at a full
        // table, then one that wants an answer: it is held, not refused
        // at once, and served when a slot frees.
        let burst = 2..2 + MAX_HELD as u32;
        let last = 2 + MAX_HELD as u32;
        let b = burst.clone();
        let st = run(
            2,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                }
                3 => {
                    for id in b.clone() {
                        st.connect(id);
                    }
                }
                4 => {
                    for id in b.clone() {
                        st.conns.get_mut(&id).unwrap().eof = true;
                    }
                    st.connect(last);
                    st.send(last, &hello());
                }
                20 => {
                    assert!(st.frames(last).is_empty(), "held, not refused at once");
                    st.conns.get_mut(&1).unwrap().eof = true;
                }
                p if p > 20 && !st.frames(last).is_empty() && st.responses(last).is_empty() => {
                    st.send(last, &request(1, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        assert_eq!(st.frames(last)[0].0, FrameKind::Hello);
        assert_eq!(st.responses(last), [1]);
        for id in burst {
            assert!(st.conns[&id].reset, "{id} was gone and is reset");
        }
    }

    #[test]
    fn a_client_that_does_not_read_holds_only_itself() {
        let st = run(
            8,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.conns.get_mut(&0).unwrap().credit = 100;
                    for i in 0..50 {
                        st.send(0, &request(i, &Request::Reverse(vec![7; 10_000])));
                    }
                    st.connect(1);
                    st.send(1, &hello());
                    for i in 0..20 {
                        st.send(1, &request(100 + i, &Request::Info));
                    }
                }
                p if p > 1 && st.responses(1).len() == 20 => {
                    // The stuck client got little, and its requests stay
                    // unread in its inbox (flow control), not in memory.
                    assert!(st.conns[&0].inbox.len() > 30 * 10_000);
                    st.send(1, &request(1, &Request::PowerOff));
                }
                _ => {}
            }),
        );
        assert_eq!(st.responses(1).len(), 21);
    }

    /// Answers every request that asks for an answer stream with `len`
    /// bytes of zeros; the rest as [`TestService`] does.
    struct Streamer {
        service: TestService<fn() -> Info>,
        len: usize,
    }

    struct Zeros(usize);

    impl ResponseStream<TestVm> for Zeros {
        fn fill(&mut self, buf: &mut [u8]) -> usize {
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            n
        }
        fn finish(self: Box<Self>) -> (Response, Then) {
            (Response::Info(info()), Then::Continue)
        }
    }

    impl Handler<TestVm> for Streamer {
        fn handle(&mut self, request: Request) -> (Response, Then) {
            self.service.handle(request)
        }
        fn handle_streaming(&mut self, _: Request, _: &mut Ctx<'_>) -> Answer<TestVm> {
            Answer::Stream(Box::new(Zeros(self.len)))
        }
    }

    fn streaming_request(id: u32) -> Vec<u8> {
        let mut f = request(id, &Request::Info);
        let meta = svmc_comm::ext::RequestMeta {
            stream_answer: true,
            ..Default::default()
        };
        svmc_comm::ext::insert_request_meta(&mut f, 0, 0, &meta, u32::MAX).unwrap();
        f
    }

    /// R-STREAM-9 over an endpoint whose writes never wait (as Linux's,
    /// with a client that reads fast): a `REQUEST` sent while an answer
    /// stream goes on is seen within a few windows, not after the whole
    /// stream; and another connection is served meanwhile.
    #[test]
    fn an_answer_stream_to_a_fast_reader_still_reads_its_connection() {
        const LEN: usize = 32 << 20;
        let mut handler = Streamer {
            service: TestService::new(info as fn() -> Info),
            len: LEN,
        };
        let hello_ext = || {
            frame::encode(
                FrameKind::Hello,
                &Hello::new::<TestVm>(frame::DEFAULT_MAX_BODY)
                    .with_ext(svmc_comm::ext::Extensions::ALL),
                frame::HELLO_MAX_BODY,
            )
            .unwrap()
        };
        let st = run_with(
            8,
            u64::MAX,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello_ext());
                    st.send(0, &streaming_request(1));
                    st.connect(1);
                    st.send(1, &hello());
                }
                _ if st.conns[&0].out.len() > 100_000 && !st.conns[&0].eof => {
                    st.send(0, &request(2, &Request::Info));
                    st.conns.get_mut(&0).unwrap().eof = true;
                    st.send(1, &request(1, &Request::PowerOff));
                }
                _ => {}
            }),
            &mut handler,
        );
        let frames = st.frames(0);
        let chunks = frames
            .iter()
            .filter(|(k, _)| *k == FrameKind::Chunk)
            .count();
        let (kind, body) = frames.last().unwrap();
        assert_eq!(*kind, FrameKind::Error, "{chunks} chunks, then {kind:?}");
        let e = error(body);
        assert!(
            e.fatal && e.code == ProtocolErrorCode::UnexpectedFrame,
            "{e:?}"
        );
        assert!(
            chunks * svmc_comm::ext::CHUNK_MAX_DATA < LEN / 4,
            "{chunks} chunks of the stream went before the REQUEST was read"
        );
        assert_eq!(st.responses(1), [1], "the other connection was served");
        assert!(handler.service.power_off_requested());
    }
}
