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

use comm::Protocol;

use super::{Budget, Ended, Handler, ServeConfig, ServerConn};
use crate::Result;

/// At most this many connections over the limit are being refused (sent
/// `ERROR` busy) at once; more are reset at once.
pub const MAX_REFUSING: usize = 2;

/// Requests of one connection processed in one pass, at most, while their
/// answers stay under [`SMALL_ANSWERS`] bytes.
const SMALL_BATCH: usize = 8;

/// See [`SMALL_BATCH`].
const SMALL_ANSWERS: usize = 16 * 1024;

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
    /// Received bytes not yet read, over all connections: the loop reads
    /// them before it takes more events once there are 64 KiB (a full
    /// packet). The default, 0, never stops a pass early.
    fn unread(&self) -> usize {
        0
    }
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
    // A name no HELLO can carry: refuse to serve at all, before any send.
    comm::handshake::check_name::<P>()?;
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
            // Accepted connections are admitted (or refused) at once, so
            // that a burst of them never piles up in the endpoint.
            while let Some(id) = endpoint.accept() {
                busy = true;
                admit(endpoint, &mut slots, id, max_conns, config, &mut report);
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
    let before = slot.last_rx;
    let open = read_some(endpoint, slot);
    moved |= !open || slot.last_rx != before;
    // One request per pass, or a few small ones: pipelined small requests
    // are answered together (one write), and another connection waits for
    // at most a few requests whose answers are that small.
    for _ in 0..SMALL_BATCH {
        if !slot.conn.process(handler) {
            break;
        }
        moved = true;
        if slot.conn.output_len() >= SMALL_ANSWERS || !read_some(endpoint, slot) {
            break;
        }
    }
    flush(endpoint, slot);
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

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::collections::{BTreeMap, VecDeque};
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;

    use comm::Hello;
    use comm::envelope::{self, RequestId};
    use comm::frame::{self, FrameKind, HEADER_LEN, Header, ProtocolError, ProtocolErrorCode};
    use comm::service::{GuestInfo, Request, Response, ServiceVm};

    use super::*;
    use crate::rpc::service::Service;

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
        fn now_us(&self) -> u64 {
            self.st.borrow().pass * 1000
        }
    }

    fn hello() -> Vec<u8> {
        frame::encode(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(frame::DEFAULT_MAX_BODY),
            frame::HELLO_MAX_BODY,
        )
        .unwrap()
    }

    fn request(id: u32, r: &Request) -> Vec<u8> {
        let mut f = Vec::new();
        envelope::encode_request_into(RequestId(id), r, u32::MAX, &mut f).unwrap();
        f
    }

    fn info() -> GuestInfo {
        GuestInfo {
            firmware: "t".into(),
            firmware_version: "0".into(),
            protocol_version: ServiceVm::VERSION,
            arch: "t".into(),
            max_body: 1 << 20,
            heap: None,
        }
    }

    /// Runs the server with the boot connection 0 (already in `St`) until
    /// the script powers it off; returns the final state.
    fn run(max_conns: usize, idle_timeout_us: u64, hook: Hook) -> St {
        let st = Rc::new(RefCell::new(St::default()));
        st.borrow_mut().connect(0);
        st.borrow_mut().pending.clear();
        let mut fake = Fake {
            st: st.clone(),
            hook,
        };
        let config = ManyConfig {
            serve: ServeConfig { max_body: 1 << 20 },
            max_conns,
            idle_timeout_us,
            budget: Budget::new(1 << 22),
        };
        let mut handler = Service::new(info as fn() -> GuestInfo);
        serve_many::<ServiceVm, _, _>(&mut fake, Some(Id(0)), &mut handler, &config, |_| {})
            .unwrap();
        assert!(handler.power_off_requested());
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

    #[test]
    fn over_the_limit_busy_then_reset_when_refusals_pile_up() {
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
                    // 2 is refused and reads its busy ERROR.
                    st.connect(2);
                }
                5 => {
                    // 3 and 4 read nothing: their refusals stay in
                    // progress; 5 is one too many and is reset.
                    for id in [3, 4, 5] {
                        st.connect(id);
                        st.conns.get_mut(&id).unwrap().credit = 0;
                    }
                }
                8 => {
                    st.conns.get_mut(&3).unwrap().credit = usize::MAX;
                    st.conns.get_mut(&4).unwrap().credit = usize::MAX;
                }
                12 => st.send(1, &request(1, &Request::PowerOff)),
                _ => {}
            }),
        );
        for id in [2, 3, 4] {
            let f = st.frames(id);
            assert_eq!(f.len(), 1, "connection {id}");
            let e = error(&f[0].1);
            assert_eq!((e.code, e.fatal), (ProtocolErrorCode::Busy, true));
            assert!(st.conns[&id].closed && !st.conns[&id].reset);
        }
        assert!(st.conns[&5].reset && st.conns[&5].out.is_empty());
        assert_eq!(st.responses(1), [1]);
    }

    #[test]
    fn an_idle_connection_gives_way_only_when_full_and_silent_long_enough() {
        let st = run(
            2,
            10_000,
            Box::new(move |st: &mut St| match st.pass {
                1 => {
                    st.send(0, &hello());
                    st.connect(1);
                    st.send(1, &hello());
                }
                // 5 ms later: nobody has been silent for 10 ms: busy.
                5 => st.connect(2),
                // Connection 1 speaks at pass 10; at pass 20 the boot
                // connection has been silent for 19 ms, 1 for 10 ms.
                10 => st.send(1, &request(1, &Request::Info)),
                20 => st.connect(3),
                25 => {
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
                25 => st.send(0, &request(1, &Request::PowerOff)[3..]),
                _ => {}
            }),
        );
        assert_eq!(error(&st.frames(1)[0].1).code, ProtocolErrorCode::Busy);
        assert!(!st.conns[&0].reset);
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
}
