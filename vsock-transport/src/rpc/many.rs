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
//! - **Over the limit.** A new connection first tries to displace an idle
//!   one: a served connection with no frame in part or in whole, nothing
//!   left to send, and nothing received for [`ManyConfig::idle_timeout_us`]
//!   (the one silent for longest is closed). If there is none, the new
//!   connection gets a fatal `ERROR` busy (code 7) instead of the server's
//!   `HELLO` and is closed ([`ServerConn::busy`]). At most
//!   [`MAX_REFUSING`] such refusals are in progress at once; beyond that a
//!   connection is reset without a word.
//! - **Interleaving.** Each pass over the table sends what each
//!   connection's peer has credit for, reads what has arrived for each,
//!   and processes at most one complete request per connection; so a
//!   request on any connection waits at most for one request of each other
//!   connection, and a silent, slow or trickling client holds nobody up.
//! - **Heap.** The [`Budget`] is shared by all connections (see
//!   [`ServerConn`]).
//! - **Power-off.** When the handler stops ([`Then::Stop`]), its answer is
//!   sent, every connection is closed, and [`serve_many`] returns.
//!
//! [`Then::Stop`]: super::Then::Stop

use alloc::vec::Vec;

use comm::Protocol;

use super::{Budget, Ended, Handler, ServeConfig, ServerConn};
use crate::Result;

/// At most this many connections over the limit are being refused (sent
/// `ERROR` busy) at once; more are reset at once.
pub const MAX_REFUSING: usize = 2;

/// Device events taken per pass of the loop, at most.
const EVENTS_PER_PASS: usize = 32;

/// What [`Endpoint::recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were copied (at least one).
    Data(usize),
    /// Nothing buffered now; the stream is open.
    Empty,
    /// The peer closed its side and everything it sent has been read.
    Eof,
}

/// Non-blocking connections, as [`serve_many`] needs them: the guest's
/// vsock device (`guest::GuestVsock`) implements it.
pub trait Endpoint {
    /// Names a connection.
    type Id: Copy + Eq + core::fmt::Debug + core::fmt::Display;
    /// Processes at most one event of the device; `false` if there was none.
    fn poll(&mut self) -> Result<bool>;
    /// The next accepted connection, if one waits.
    fn accept(&mut self) -> Option<Self::Id>;
    /// Reads what `id` has buffered, without waiting.
    fn recv(&mut self, id: Self::Id, buf: &mut [u8]) -> Result<Recv>;
    /// Sends what the peer has room for now; returns how many bytes went.
    fn send_some(&mut self, id: Self::Id, buf: &[u8]) -> Result<usize>;
    /// Starts a graceful close (bounded: [`Endpoint::tick`] ends it).
    fn close(&mut self, id: Self::Id);
    /// Resets `id` at once.
    fn reset(&mut self, id: Self::Id);
    /// Whether `id` still holds resources (open or closing).
    fn exists(&self, id: Self::Id) -> bool;
    /// Ends closes whose peer does not answer.
    fn tick(&mut self);
    /// Microseconds on a monotonic clock.
    fn now_us(&self) -> u64;
    /// Called when a pass did nothing (e.g. a spin-loop hint).
    fn idle(&mut self) {}
}

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

/// What happened, for the caller's log.
#[derive(Debug)]
pub enum Event<'a, Id> {
    /// A connection is served.
    Accepted(Id),
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
    let max_conns = config.max_conns.max(1);
    let mut slots: Vec<Slot<P, E::Id>> = Vec::new();
    if let Some(id) = boot {
        report(Event::Accepted(id));
        slots.push(Slot {
            id,
            conn: ServerConn::new(config.serve, config.budget.clone()),
            served: true,
            last_rx: endpoint.now_us(),
        });
    }
    let mut stopped = false;
    while !stopped {
        let mut busy = false;
        for _ in 0..EVENTS_PER_PASS {
            if !endpoint.poll()? {
                break;
            }
            busy = true;
        }
        while let Some(id) = endpoint.accept() {
            busy = true;
            admit(endpoint, &mut slots, id, max_conns, config, &mut report);
        }
        let mut i = 0;
        while i < slots.len() {
            let slot = &mut slots[i];
            busy |= step(endpoint, slot, handler);
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
                    && now.wrapping_sub(s.last_rx) >= config.idle_timeout_us
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
                    });
                }
                return;
            }
        }
    }
    report(Event::Accepted(id));
    slots.push(Slot {
        id,
        conn: ServerConn::new(config.serve, config.budget.clone()),
        served: true,
        last_rx: now,
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
    while slot.conn.wants_input() {
        match endpoint.recv(slot.id, slot.conn.input_buf()) {
            Ok(Recv::Data(n)) => {
                slot.conn.received(n);
                slot.last_rx = endpoint.now_us();
                moved = true;
            }
            Ok(Recv::Empty) => break,
            Ok(Recv::Eof) => {
                slot.conn.peer_closed();
                moved = true;
                break;
            }
            Err(e) => {
                slot.conn.transport_failed(e);
                return true;
            }
        }
    }
    if slot.conn.process(handler) {
        moved = true;
        flush(endpoint, slot);
    }
    moved
}

fn flush<P: Protocol, E: Endpoint>(endpoint: &mut E, slot: &mut Slot<P, E::Id>) -> bool {
    let mut moved = false;
    while !slot.conn.output().is_empty() {
        match endpoint.send_some(slot.id, slot.conn.output()) {
            Ok(0) => break,
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
