//! Many connections served by one event loop, and the server's
//! lifecycle, written once: [`serve_many`] takes the boot connection (the
//! server's own connection to the host, if it made one) and every
//! connection an [`Endpoint`] accepts, drives a [`ServerConn`] for each,
//! and returns when the handler stops (power-off).
//!
//! # Policy
//!
//! The rules from "Limit" to "Closed with answers due" are the admission
//! policy, a type of its own (`Admission`, in `many/admission.rs`) that
//! the loop hands every accepted connection and asks once per pass; the
//! loop here is the scheduler ("Interleaving", "Power-off").
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

mod admission;
#[cfg(test)]
mod tests;

use admission::Admission;
pub use admission::{HOLD_US, MAX_HELD, MAX_REFUSING, STUCK_US};

/// A receive buffer kept after a large request (for the next one: no
/// allocation, no zero-fill) is given back with its share of the budget
/// once its connection has been silent for this many microseconds, so a
/// client that sent one large request and went quiet does not keep the
/// budget from the other connections for longer than that. (Long enough
/// that a client pausing between large requests, e.g. to prepare the
/// next one, does not pay the buffer's allocation and zero-fill again.)
pub const KEEP_BODY_US: u64 = 1_000_000;

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

/// Settings of [`serve_many`]. There is no default: the budget depends on
/// the VM's memory. The firmware serves 8 connections with a 5 s idle
/// timeout, and sizes its budget from the heap left once the connections'
/// own share is set aside (`svmc-runtime`'s `serve`); the Linux service
/// sizes it from `MemAvailable`. [`Budget::unlimited`] suits a host
/// process only, whose allocator reports failure.
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

impl<P: Protocol, Id> Slot<P, Id> {
    /// A connection served from `now` on.
    fn served(id: Id, config: &ManyConfig, now: u64) -> Self {
        Self {
            id,
            conn: ServerConn::new(config.serve, config.budget.clone()),
            served: true,
            last_rx: now,
            stuck: None,
        }
    }
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
    let mut admission = Admission::new(config.max_conns);
    // Sized once for the most there can be (served and being refused), so
    // that the table never reallocates while it serves: a burst of
    // refusals does not leave a larger table behind.
    let mut slots: Vec<Slot<P, E::Id>> = Vec::with_capacity(admission.max_conns() + MAX_REFUSING);
    if let Some(id) = boot {
        report(Event::Accepted(id));
        endpoint.serve(id);
        slots.push(Slot::served(id, config, endpoint.now_us()));
    }
    let mut stopped = false;
    while !stopped {
        let mut busy = false;
        for _ in 0..EVENTS_PER_PASS {
            // Accepted connections are taken at once, so that a burst of
            // them never piles up in the endpoint; they are admitted (or
            // held, or refused) after this pass has seen the closes.
            while let Some(id) = endpoint.accept() {
                busy = true;
                admission.arrive(endpoint, &mut slots, id, config, &mut report);
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
            admission.arrive(endpoint, &mut slots, id, config, &mut report);
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
        busy |= admission.decide(endpoint, &mut slots, config, &mut report);
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
    admission.reset_held(endpoint);
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
