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
pub(super) struct Conn {
    /// Bytes the client has sent that the server has not read.
    pub(super) inbox: VecDeque<u8>,
    /// Bytes the server has sent.
    pub(super) out: Vec<u8>,
    /// The client closed its side.
    pub(super) eof: bool,
    /// How many more bytes the client takes now.
    pub(super) credit: usize,
    pub(super) closed: bool,
    pub(super) reset: bool,
    /// The client closed, and the endpoint reports it once probed.
    pub(super) silently_closed: bool,
    /// Probes received.
    pub(super) probes: u32,
    /// [`Endpoint::serve`] was called.
    pub(super) served: bool,
}

#[derive(Default)]
pub(super) struct St {
    pub(super) conns: BTreeMap<u32, Conn>,
    pub(super) pending: VecDeque<u32>,
    pub(super) pass: u64,
}

impl St {
    pub(super) fn connect(&mut self, id: u32) {
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

pub(super) struct Fake {
    st: Rc<RefCell<St>>,
    hook: Hook,
}

impl Fake {
    /// A fake without a script, for tests that drive a part of the loop
    /// directly: its state, shared, and its clock set by `St::pass`.
    pub(super) fn new() -> (Self, Rc<RefCell<St>>) {
        let st = Rc::new(RefCell::new(St::default()));
        let fake = Fake {
            st: st.clone(),
            hook: Box::new(|_| {}),
        };
        (fake, st)
    }
}

impl core::fmt::Display for Id {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Id(pub(super) u32);

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
