//! The connection table on the host, over a fake device: the tests feed it
//! the events virtio-drivers' `VirtIOSocket::poll` would deliver (including
//! ones no well-behaved peer sends) and check the packets it answers with.

extern crate std;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use std::cell::{Cell, RefCell};
use std::format;
use std::vec;

use virtio_drivers::device::socket::{
    ConnectionInfo, DisconnectReason, SocketError, VsockEventType,
};

use super::poll::DUPLICATE_REQUEST_US;
use super::table::TABLE_CAPACITY;
use super::*;
use crate::credit::Credit;
use crate::endpoint::Endpoint;
use crate::{Connection, Error, Step};

/// Our CID and the service port the tests listen on.
const GUEST_CID: u64 = 3;
const PORT: u32 = 5000;

/// (host port, our port) and the peer's (`buf_alloc`, `fwd_cnt`).
type PeerCredit = Vec<((u32, u32), (u32, u32))>;

std::thread_local! {
    /// The table's clock, in microseconds (each test runs on its own thread).
    static NOW: Cell<u64> = const { Cell::new(0) };
    /// The peer's credit, which virtio-drivers keeps in private fields of
    /// `ConnectionInfo` (`update_for_event`): the fake's
    /// `Device::update_for_event` cannot set them and keeps it here, per
    /// (host port, our port): `buf_alloc`, `fwd_cnt`.
    static PEER_CREDIT: RefCell<PeerCredit> = const { RefCell::new(Vec::new()) };
}

fn clock() -> u64 {
    NOW.with(Cell::get)
}

fn advance(us: u64) {
    NOW.with(|c| c.set(c.get() + us));
}

/// A packet the table had the device send, named by the host port of its
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Request(u32),
    Response {
        port: u32,
        buf_alloc: u32,
    },
    Rw(u32, Vec<u8>),
    CreditRequest(u32),
    CreditUpdate {
        port: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    },
    Shutdown(u32),
    Rst(u32),
}

/// What the fake driver counts per connection: bytes sent, and whether it
/// has asked for credit (virtio-drivers asks once until an update comes).
#[derive(Default)]
struct Peer {
    tx_cnt: u32,
    credit_requested: bool,
}

/// A device that delivers queued events and records what is sent. Its
/// `send` checks the peer's credit the way virtio-drivers 0.13 does, with
/// the peer's `buf_alloc` and `fwd_cnt` from the last event the table
/// passed to `update_for_event`.
#[derive(Default)]
struct Fake {
    events: VecDeque<core::result::Result<(Event, Vec<u8>), virtio_drivers::Error>>,
    sent: Vec<Sent>,
    peers: Vec<((u32, u32), Peer)>,
    /// Every send fails with this error (a broken queue).
    fail: Option<virtio_drivers::Error>,
}

/// A private field of virtio-drivers' `ConnectionInfo`, from its `Debug`.
fn info_field(info: &ConnectionInfo, name: &str) -> u32 {
    let s = format!("{info:?}");
    let at = s.find(&format!(" {name}: ")).expect(name) + name.len() + 3;
    let end = s[at..].find([',', ' ']).unwrap() + at;
    s[at..end].parse().unwrap()
}

impl Fake {
    fn peer(&mut self, info: &ConnectionInfo) -> &mut Peer {
        let key = (info.dst.port, info.src_port);
        if let Some(i) = self.peers.iter().position(|(k, _)| *k == key) {
            return &mut self.peers[i].1;
        }
        self.peers.push((key, Peer::default()));
        &mut self.peers.last_mut().unwrap().1
    }

    fn check(&self) -> virtio_drivers::Result {
        match &self.fail {
            Some(e) => Err(*e),
            None => Ok(()),
        }
    }

    fn take(&mut self) -> Vec<Sent> {
        core::mem::take(&mut self.sent)
    }
}

fn peer_credit(info: &ConnectionInfo) -> (u32, u32) {
    let key = (info.dst.port, info.src_port);
    PEER_CREDIT.with(|p| {
        p.borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map_or((0, 0), |(_, c)| *c)
    })
}

impl Device for Fake {
    type Event = Event;
    fn event(event: &Event) -> Event {
        event.clone()
    }
    fn update_for_event(info: &mut ConnectionInfo, event: &Event) {
        let key = (info.dst.port, info.src_port);
        let credit = (event.buf_alloc, event.fwd_cnt);
        PEER_CREDIT.with(|p| {
            let mut p = p.borrow_mut();
            match p.iter_mut().find(|(k, _)| *k == key) {
                Some((_, c)) => *c = credit,
                None => p.push((key, credit)),
            }
        });
    }
    fn guest_cid(&self) -> u64 {
        GUEST_CID
    }
    fn poll(
        &mut self,
        handler: impl FnOnce(Event, &[u8]) -> virtio_drivers::Result<Option<Event>>,
    ) -> virtio_drivers::Result<Option<Event>> {
        match self.events.pop_front() {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok((event, body))) => {
                if event.kind == VsockEventType::CreditUpdate {
                    let key = (event.source.port, event.destination.port);
                    if let Some((_, p)) = self.peers.iter_mut().find(|(k, _)| *k == key) {
                        p.credit_requested = false;
                    }
                }
                handler(event, &body)
            }
        }
    }
    fn connect(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        self.check()?;
        *self.peer(info) = Peer::default();
        self.sent.push(Sent::Request(info.dst.port));
        Ok(())
    }
    fn accept(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        self.check()?;
        *self.peer(info) = Peer::default();
        self.sent.push(Sent::Response {
            port: info.dst.port,
            buf_alloc: info.buf_alloc,
        });
        Ok(())
    }
    fn send(&mut self, buf: &[u8], info: &mut ConnectionInfo) -> virtio_drivers::Result {
        // The driver would send it, if its wrapping credit allowed.
        assert!(!buf.is_empty(), "the table offered an empty RW packet");
        self.check()?;
        let (peer_buf_alloc, peer_fwd_cnt) = peer_credit(info);
        let port = info.dst.port;
        let peer = self.peer(info);
        let free = peer_buf_alloc.wrapping_sub(peer.tx_cnt.wrapping_sub(peer_fwd_cnt));
        if (free as usize) < buf.len() {
            if !peer.credit_requested {
                peer.credit_requested = true;
                self.sent.push(Sent::CreditRequest(port));
            }
            return Err(SocketError::InsufficientBufferSpaceInPeer.into());
        }
        // What the driver's wrapping arithmetic lets through, the peer has
        // room for only if it is not more than its buffer.
        let in_flight = peer.tx_cnt.wrapping_sub(peer_fwd_cnt) as u64;
        assert!(
            in_flight + buf.len() as u64 <= peer_buf_alloc as u64,
            "sent {} bytes with {in_flight} in flight to a peer with a buffer of {peer_buf_alloc}",
            buf.len()
        );
        peer.tx_cnt = peer.tx_cnt.wrapping_add(buf.len() as u32);
        self.sent.push(Sent::Rw(port, buf.to_vec()));
        Ok(())
    }
    fn credit_update(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        self.check()?;
        self.sent.push(Sent::CreditUpdate {
            port: info.dst.port,
            buf_alloc: info.buf_alloc,
            fwd_cnt: info_field(info, "fwd_cnt"),
        });
        Ok(())
    }
    fn shutdown(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        self.check()?;
        self.sent.push(Sent::Shutdown(info.dst.port));
        Ok(())
    }
    fn force_close(&mut self, info: &ConnectionInfo) -> virtio_drivers::Result {
        self.check()?;
        self.sent.push(Sent::Rst(info.dst.port));
        Ok(())
    }
}

fn host(port: u32) -> VsockAddr {
    VsockAddr {
        cid: HOST_CID,
        port,
    }
}

/// An event from host port `port` to our [`PORT`], announcing `buf_alloc`
/// and `fwd_cnt`.
fn event(port: u32, kind: VsockEventType, buf_alloc: u32, fwd_cnt: u32) -> Event {
    Event {
        source: host(port),
        destination: VsockAddr {
            cid: GUEST_CID,
            port: PORT,
        },
        buf_alloc,
        fwd_cnt,
        kind,
    }
}

/// A table listening on [`PORT`] with the default buffer, on the test clock.
fn table() -> VsockTable<Fake> {
    let mut t = VsockTable::with_device(Fake::default(), CONNECTION_BUFFER_SIZE);
    t.set_clock(clock);
    t.listen(PORT);
    t
}

impl VsockTable<Fake> {
    fn feed(&mut self, e: Event, body: &[u8]) {
        self.driver.events.push_back(Ok((e, body.to_vec())));
    }

    /// Feeds an event and polls it.
    fn deliver(&mut self, e: Event, body: &[u8]) {
        self.feed(e, body);
        assert!(self.poll().unwrap(), "the event was not taken");
        assert!(self.driver.events.is_empty());
    }

    fn request(&mut self, port: u32, buf_alloc: u32) {
        self.deliver(
            event(port, VsockEventType::ConnectionRequest, buf_alloc, 0),
            &[],
        );
    }

    fn data(&mut self, port: u32, body: &[u8], buf_alloc: u32, fwd_cnt: u32) {
        let ty = VsockEventType::Received { length: body.len() };
        self.deliver(event(port, ty, buf_alloc, fwd_cnt), body);
    }

    fn control(&mut self, port: u32, ty: VsockEventType, buf_alloc: u32, fwd_cnt: u32) {
        self.deliver(event(port, ty, buf_alloc, fwd_cnt), &[]);
    }

    /// A connection from host port `port`, accepted and handed out.
    fn accepted(&mut self, port: u32, buf_alloc: u32) -> ConnId {
        self.request(port, buf_alloc);
        let id = self.accept().expect("accepted");
        self.driver.take();
        id
    }

    /// A connection from host port `port`, served (full buffer).
    fn served(&mut self, port: u32, buf_alloc: u32) -> ConnId {
        let id = self.accepted(port, buf_alloc);
        self.serve(id);
        self.driver.take();
        id
    }

    fn read_all(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        while let Recv::Data(n) = self.recv(id, &mut buf).unwrap() {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn credit(&self, id: ConnId) -> Credit {
        let s = self.conns.iter().find(|s| s.id == id).unwrap();
        Credit { ..s.credit }
    }
}

fn shutdown() -> VsockEventType {
    VsockEventType::Disconnected {
        reason: DisconnectReason::Shutdown,
    }
}

fn rst() -> VsockEventType {
    VsockEventType::Disconnected {
        reason: DisconnectReason::Reset,
    }
}

#[test]
fn a_request_is_accepted_with_the_small_window_and_its_data_is_read() {
    let mut t = table();
    t.request(1000, 65536);
    assert_eq!(
        t.driver.take(),
        [Sent::Response {
            port: 1000,
            buf_alloc: ACCEPT_WINDOW
        }]
    );
    assert_eq!(t.backlog_len(), 1);
    let id = t.accept().unwrap();
    assert_eq!(t.accept(), None);
    assert_eq!(t.peer(id), Some(host(1000)));
    t.data(1000, b"hello", 65536, 0);
    t.data(1000, b" world", 65536, 0);
    assert_eq!(t.read_all(id), b"hello world");
    assert_eq!(t.recv(id, &mut [0; 8]).unwrap(), Recv::Empty);
    assert_eq!(t.unread(), 0);
}

#[test]
fn a_request_on_a_port_nobody_listens_on_is_reset() {
    let mut t = table();
    let mut e = event(1000, VsockEventType::ConnectionRequest, 4096, 0);
    e.destination.port = PORT + 1;
    t.deliver(e, &[]);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(t.is_empty());
    assert_eq!(t.accept(), None);
}

#[test]
fn packets_for_another_cid_or_an_unknown_connection_change_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    // Not for us: another CID, even with the right ports.
    let mut e = event(1000, VsockEventType::Received { length: 3 }, 65536, 0);
    e.destination.cid = GUEST_CID + 1;
    t.deliver(e, b"abc");
    // A connection request for another CID is not answered at all.
    let mut e = event(2000, VsockEventType::ConnectionRequest, 65536, 0);
    e.destination.cid = 0xFFFF_FFFF;
    t.deliver(e, &[]);
    // Data, a close and credit from a port we have no connection with.
    t.data(1001, b"xyz", 65536, 0);
    t.control(1001, rst(), 0, 0);
    t.control(1001, VsockEventType::CreditRequest, u32::MAX, u32::MAX);
    t.control(1001, VsockEventType::Connected, 0, 0);
    assert_eq!(t.driver.take(), []);
    assert_eq!(t.len(), 1);
    assert_eq!(t.recv(id, &mut [0; 8]).unwrap(), Recv::Empty);
}

#[test]
fn a_full_backlog_resets_further_requests() {
    let mut t = table();
    t.set_max_pending(2);
    for port in 1000..1003 {
        t.request(port, 4096);
    }
    let sent = t.driver.take();
    assert_eq!(sent.len(), 3);
    assert!(matches!(sent[0], Sent::Response { port: 1000, .. }));
    assert!(matches!(sent[1], Sent::Response { port: 1001, .. }));
    assert_eq!(sent[2], Sent::Rst(1002));
    assert_eq!((t.len(), t.backlog_len()), (2, 2));
    // Taking one from the backlog makes room for the next.
    let first = t.accept().unwrap();
    t.request(1003, 4096);
    assert!(matches!(
        t.driver.take()[..],
        [Sent::Response { port: 1003, .. }]
    ));
    assert_eq!(t.peer(first), Some(host(1000)));
}

#[test]
fn a_flood_of_requests_holds_no_more_than_the_backlog() {
    let mut t = table();
    for port in 0..10_000 {
        t.request(port, 4096);
    }
    assert_eq!(t.len(), DEFAULT_MAX_PENDING);
    let resets = t
        .driver
        .take()
        .iter()
        .filter(|s| matches!(s, Sent::Rst(_)))
        .count();
    assert_eq!(resets, 10_000 - DEFAULT_MAX_PENDING);
}

#[test]
fn the_table_grows_past_its_initial_capacity_and_keeps_connections_apart() {
    let mut t = table();
    let n = TABLE_CAPACITY as u32 + 8;
    let ids: Vec<ConnId> = (0..n).map(|i| t.served(1000 + i, 65536)).collect();
    assert_eq!(t.len(), n as usize);
    for (i, _) in ids.iter().enumerate().rev() {
        t.data(1000 + i as u32, format!("conn {i}").as_bytes(), 65536, 0);
    }
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(t.read_all(id), format!("conn {i}").as_bytes());
    }
    // Handles are never reused, even for the same peer and port.
    t.reset(ids[0]);
    advance(DUPLICATE_REQUEST_US);
    let again = t.served(1000, 65536);
    assert!(!ids.contains(&again));
    assert!(!t.exists(ids[0]));
}

#[test]
fn a_repeated_request_is_ignored_and_a_late_one_replaces_the_connection() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"kept", 65536, 0);
    advance(DUPLICATE_REQUEST_US - 1);
    t.request(1000, 65536);
    assert_eq!(
        t.driver.take(),
        [],
        "a second RESPONSE for the same request"
    );
    assert_eq!(t.backlog_len(), 0);
    assert_eq!(t.read_all(id), b"kept");
    // Later: the host reused the port for a new connection.
    advance(1);
    t.request(1000, 65536);
    assert!(matches!(
        t.driver.take()[..],
        [Sent::Response { port: 1000, .. }]
    ));
    assert!(!t.exists(id));
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    let new = t.accept().unwrap();
    assert_ne!(new, id);
}

#[test]
fn a_peer_that_ignores_the_accept_window_is_reset() {
    let mut t = table();
    let id = t.accepted(1000, 65536);
    t.data(1000, &vec![1; ACCEPT_WINDOW as usize], 65536, 0);
    assert_eq!(t.driver.take(), []);
    // One byte beyond the window: the data is lost, so the connection goes.
    t.data(1000, &[2], 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
    assert_eq!(t.unread(), 0);
}

#[test]
fn serving_grows_the_window_once_and_tells_the_peer() {
    let mut t = table();
    let id = t.accepted(1000, 65536);
    t.serve(id);
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: 0
        }]
    );
    t.serve(id);
    assert_eq!(t.driver.take(), [], "the window grows only once");
    // The whole buffer fits, in packets of the largest size...
    for _ in 0..CONNECTION_BUFFER_SIZE as usize / RX_BUFFER_SIZE {
        t.data(1000, &vec![7; RX_BUFFER_SIZE], 65536, 0);
    }
    assert_eq!(t.unread(), CONNECTION_BUFFER_SIZE as usize);
    assert!(t.exists(id));
    // ... and the ring holds no more than the buffer.
    let ring = t.conns[0].rx.capacity();
    assert!(ring <= CONNECTION_BUFFER_SIZE as usize, "ring of {ring}");
    // One byte more is an overrun.
    t.data(1000, &[8], 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
}

#[test]
fn reading_a_quarter_of_the_buffer_sends_a_credit_update() {
    let mut t = table();
    let id = t.served(1000, 65536);
    let quarter = CONNECTION_BUFFER_SIZE as usize / 4;
    t.data(1000, &vec![1; RX_BUFFER_SIZE], 65536, 0);
    t.data(1000, &vec![2; RX_BUFFER_SIZE], 65536, 0);
    let mut buf = vec![0; 1000];
    let mut read = 0;
    while read + 1000 < quarter {
        assert_eq!(t.recv(id, &mut buf).unwrap(), Recv::Data(1000));
        read += 1000;
    }
    assert_eq!(t.driver.take(), [], "an update before a quarter was read");
    let rest = quarter - read;
    assert_eq!(t.recv(id, &mut buf[..rest]).unwrap(), Recv::Data(rest));
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: quarter as u32
        }]
    );
}

#[test]
fn a_credit_request_is_answered() {
    let mut t = table();
    let _id = t.served(1000, 65536);
    t.data(1000, b"abc", 65536, 0);
    t.control(1000, VsockEventType::CreditRequest, 65536, 0);
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: 0
        }]
    );
}

/// The bytes of every `RW` packet sent to `port`, in order, and their sizes.
fn rw(sent: &[Sent], port: u32) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut sizes = Vec::new();
    for s in sent {
        if let Sent::Rw(p, b) = s
            && *p == port
        {
            bytes.extend_from_slice(b);
            sizes.push(b.len());
        }
    }
    (bytes, sizes)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn sends_stop_at_the_peers_credit_and_go_on_after_its_update() {
    let mut t = table();
    let id = t.served(1000, 1000);
    let msg = pattern(2500);
    assert_eq!(t.send_some(id, &msg).unwrap(), 1000);
    // The rest did not fit: the driver asked for credit, once.
    assert_eq!(
        t.driver.take(),
        [
            Sent::Rw(1000, msg[..1000].to_vec()),
            Sent::CreditRequest(1000)
        ]
    );
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 0);
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 0);
    assert_eq!(t.driver.take(), []);
    // The peer read 600 bytes.
    t.control(1000, VsockEventType::CreditUpdate, 1000, 600);
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 600);
    t.control(1000, VsockEventType::CreditUpdate, 1000, 1600);
    assert_eq!(t.send_some(id, &msg[1600..]).unwrap(), 900);
    let (bytes, _) = rw(&t.driver.take(), 1000);
    assert_eq!(bytes, msg[1000..]);
    let c = t.credit(id);
    assert_eq!((c.tx_cnt, c.peer_fwd_cnt), (2500, 1600));
}

#[test]
fn a_huge_peer_buffer_still_gets_packets_of_at_most_max_packet() {
    let mut t = table();
    let id = t.served(1000, u32::MAX);
    let msg = pattern(3 * MAX_PACKET + 10);
    assert_eq!(t.send_some(id, &msg).unwrap(), msg.len());
    let (bytes, sizes) = rw(&t.driver.take(), 1000);
    assert_eq!(bytes, msg);
    assert_eq!(sizes, [MAX_PACKET, MAX_PACKET, MAX_PACKET, 10]);
}

#[test]
fn a_peer_with_no_buffer_gets_nothing() {
    let mut t = table();
    let id = t.served(1000, 0);
    assert_eq!(t.send_some(id, b"abc").unwrap(), 0);
    let sent = t.driver.take();
    assert_eq!(rw(&sent, 1000).0, b"");
    // The driver asked for credit; when it comes, the bytes go.
    assert!(sent.contains(&Sent::CreditRequest(1000)));
    t.control(1000, VsockEventType::CreditUpdate, 2, 0);
    assert_eq!(t.send_some(id, b"abc").unwrap(), 2);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"ab");
}

#[test]
fn a_credit_count_that_goes_back_or_ahead_is_a_stale_packet() {
    let mut t = table();
    let id = t.served(1000, 4096);
    assert_eq!(t.send_some(id, &[0; 3000]).unwrap(), 3000);
    t.control(1000, VsockEventType::CreditUpdate, 4096, 2000);
    t.driver.take();
    // Back from 2000 to 1000: an old header.
    t.control(1000, VsockEventType::CreditUpdate, 4096, 1000);
    // More forwarded than we ever sent.
    t.data(1000, b"forged", 4096, 3001);
    t.control(1000, rst(), 4096, u32::MAX);
    assert_eq!(t.stale_packets(), 3);
    let c = t.credit(id);
    assert_eq!(
        (c.peer_buf_alloc, c.peer_fwd_cnt, c.tx_cnt),
        (4096, 2000, 3000)
    );
    assert_eq!(t.unread(), 0, "a stale packet's data was kept");
    assert!(t.is_open(id), "a stale RST closed the connection");
    // The credit is still that of the last real packet: 3096 free.
    assert_eq!(t.send_some(id, &[0; 4000]).unwrap(), 3096);
    // A count equal to the last one, or between it and what we sent, is real.
    t.data(1000, b"ok", 4096, 2000);
    t.control(1000, VsockEventType::CreditUpdate, 4096, 6096);
    assert_eq!(t.stale_packets(), 3);
    assert_eq!(t.read_all(id), b"ok");
}

#[test]
fn after_the_peers_shutdown_data_is_read_to_the_end_and_answers_still_go() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"last request", 65536, 0);
    t.control(1000, shutdown(), 65536, 0);
    assert!(t.peer_closed(id));
    assert_eq!(t.read_all(id), b"last request");
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
    assert_eq!(t.send_some(id, b"answer").unwrap(), 6);
    // Our SHUTDOWN, then the peer's RST ends it without one from us.
    t.close(id).unwrap();
    let sent = t.driver.take();
    assert_eq!(sent.last(), Some(&Sent::Shutdown(1000)));
    assert!(t.exists(id) && !t.is_open(id));
    t.control(1000, rst(), 65536, 6);
    assert_eq!(t.driver.take(), []);
    assert!(!t.exists(id));
}

#[test]
fn after_the_peers_reset_sends_fail_and_close_sends_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"abc", 65536, 0);
    t.control(1000, rst(), 65536, 0);
    assert!(matches!(t.send_some(id, b"x"), Err(Error::Reset)));
    // What arrived before the reset is still read, then the end.
    assert_eq!(t.read_all(id), b"abc");
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
    // A second RST, out of order, changes nothing.
    t.control(1000, rst(), 65536, 0);
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), []);
    assert!(!t.exists(id));
}

#[test]
fn reads_and_writes_on_a_closed_or_unknown_connection_fail() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"unread", 65536, 0);
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), [Sent::Shutdown(1000)]);
    assert_eq!(t.unread(), 0, "closing keeps the unread bytes");
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    assert!(matches!(t.send_some(id, b"x"), Err(Error::ShutDown)));
    // Data after our SHUTDOWN is dropped: nobody reads it, and it would
    // hold heap and count as unread until the connection goes.
    t.data(1000, b"late", 65536, 0);
    t.data(1000, &vec![0; RX_BUFFER_SIZE], 65536, 0);
    assert_eq!(t.unread(), 0);
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), [], "a second SHUTDOWN");
    // The peer answers with its own SHUTDOWN instead of RST: we reset.
    t.control(1000, shutdown(), 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
    // A handle that names nothing.
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    assert!(matches!(t.send_some(id, b"x"), Err(Error::ShutDown)));
    t.close(id).unwrap();
    t.reset(id);
    t.serve(id);
    t.probe(id);
    assert_eq!(t.driver.take(), []);
}

#[test]
fn a_shutdown_without_answer_is_reset_after_the_limit() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.close(id).unwrap();
    t.driver.take();
    advance(Limits::default().shutdown_us - 1);
    t.tick();
    assert!(t.exists(id));
    assert_eq!(t.driver.take(), []);
    advance(1);
    t.tick();
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
}

#[test]
fn a_silent_peer_is_probed_once_per_period() {
    let mut t = table();
    let id = t.served(1000, 65536);
    advance(PROBE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), []);
    advance(1);
    t.tick();
    t.tick();
    let update = || Sent::CreditUpdate {
        port: 1000,
        buf_alloc: CONNECTION_BUFFER_SIZE,
        fwd_cnt: 0,
    };
    assert_eq!(t.driver.take(), [update()]);
    // Hearing from the peer restarts the period.
    advance(PROBE_US / 2);
    t.control(1000, VsockEventType::CreditUpdate, 65536, 0);
    advance(PROBE_US / 2);
    t.tick();
    assert_eq!(t.driver.take(), []);
    // So does a probe of that connection.
    t.probe(id);
    assert_eq!(t.driver.take(), [update()]);
    advance(PROBE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), []);
}

#[test]
fn a_starved_sender_nudges_the_peer_every_nudge_period() {
    let mut t = table();
    let id = t.served(1000, 100);
    assert_eq!(t.send_some(id, &[0; 100]).unwrap(), 100);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    t.driver.take();
    advance(NUDGE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), [], "nudged before NUDGE_US");
    advance(1);
    t.tick();
    let nudge = || Sent::CreditUpdate {
        port: 1000,
        buf_alloc: CONNECTION_BUFFER_SIZE,
        fwd_cnt: 0,
    };
    assert_eq!(t.driver.take(), [nudge()]);
    t.tick();
    assert_eq!(t.driver.take(), [], "nudged twice in one period");
    advance(NUDGE_US);
    t.tick();
    assert_eq!(t.driver.take(), [nudge()]);
    // Credit comes, the bytes go: no more nudges.
    t.control(1000, VsockEventType::CreditUpdate, 100, 100);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 10);
    t.driver.take();
    advance(NUDGE_US);
    t.tick();
    assert_eq!(t.driver.take(), []);
}

#[test]
fn operation_0_probes_every_connected_connection() {
    let mut t = table();
    let a = t.served(1000, 65536);
    let b = t.served(1001, 65536);
    let c = t.served(1002, 65536);
    t.close(c).unwrap();
    t.driver.take();
    t.driver
        .events
        .push_back(Err(SocketError::InvalidOperation.into()));
    assert!(t.poll().unwrap());
    let ports: Vec<u32> = t
        .driver
        .take()
        .iter()
        .map(|s| match s {
            Sent::CreditUpdate { port, .. } => *port,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ports, [1000, 1001]);
    assert!(t.is_open(a) && t.is_open(b));
}

#[test]
fn malformed_packets_are_dropped_and_other_device_errors_returned() {
    let mut t = table();
    let id = t.served(1000, 65536);
    for e in [
        SocketError::BufferTooShort,
        SocketError::InvalidNumber,
        SocketError::UnknownOperation(42),
        SocketError::UnexpectedDataInPacket,
    ] {
        t.driver.events.push_back(Err(e.into()));
        assert!(t.poll().unwrap());
    }
    assert_eq!(t.malformed_packets, 4);
    t.driver
        .events
        .push_back(Err(virtio_drivers::Error::NotReady));
    assert!(matches!(
        t.poll(),
        Err(Error::Virtio(virtio_drivers::Error::NotReady))
    ));
    assert!(!t.poll().unwrap(), "an event out of nothing");
    assert!(t.is_open(id));
    assert_eq!(t.driver.take(), []);
}

#[test]
fn connect_waits_for_the_answer_and_is_bounded() {
    let mut t = table();
    // Accepted: the answer is waiting when connect polls.
    t.feed(event(9, VsockEventType::Connected, 65536, 0), &[]);
    let id = t.connect(host(9), PORT).unwrap();
    assert_eq!(t.driver.take(), [Sent::Request(9)]);
    assert!(t.is_open(id));
    // A second connection with the same addresses.
    assert!(t.connect(host(9), PORT).is_err());
    // Refused.
    t.feed(event(10, rst(), 0, 0), &[]);
    assert!(matches!(
        t.connect(host(10), PORT),
        Err(Error::Refused { port: 10 })
    ));
    assert_eq!(t.driver.take(), [Sent::Request(10)]);
    // No answer: polls count the time when the clock stands still.
    let mut t = VsockTable::with_device(Fake::default(), CONNECTION_BUFFER_SIZE);
    t.set_limits(Limits {
        connect_us: 50,
        shutdown_us: 50,
    });
    assert!(matches!(
        t.connect(host(11), PORT),
        Err(Error::Timeout(Step::Connect))
    ));
    assert_eq!(t.driver.take(), [Sent::Request(11), Sent::Rst(11)]);
    assert!(t.is_empty());
}

#[test]
fn a_connected_event_out_of_turn_changes_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.control(1000, shutdown(), 65536, 0);
    // RESPONSE to a connection we did not request: it stays half-closed.
    t.control(1000, VsockEventType::Connected, 65536, 0);
    assert!(t.peer_closed(id));
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
}

#[test]
fn a_device_error_on_shutdown_forgets_the_connection() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.driver.fail = Some(virtio_drivers::Error::QueueFull);
    assert!(t.close(id).is_err());
    assert!(!t.exists(id));
    // A send on a broken queue is an error, not a short write.
    let mut t = table();
    let id = t.served(1000, 65536);
    t.driver.fail = Some(virtio_drivers::Error::QueueFull);
    assert!(matches!(
        t.send_some(id, b"abc"),
        Err(Error::Virtio(virtio_drivers::Error::QueueFull))
    ));
}

#[test]
fn a_stream_sends_and_reads_over_the_table() {
    let mut t = table();
    let id = t.accepted(1000, 65536);
    t.feed(
        event(1000, VsockEventType::Received { length: 4 }, 65536, 0),
        b"ping",
    );
    let mut s = t.stream(id);
    let mut buf = [0; 16];
    assert_eq!(s.recv(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
    s.send(b"pong").unwrap();
    drop(s);
    let sent = t.driver.take();
    assert_eq!(rw(&sent, 1000).0, b"pong");
    // Dropped without shutdown: reset.
    assert_eq!(sent.last(), Some(&Sent::Rst(1000)));
    assert!(!t.exists(id));
}

#[test]
fn a_peer_that_shrinks_its_buffer_below_what_is_in_flight_gets_nothing() {
    // Nothing more goes, not even an empty packet (the driver's free space
    // wraps around), until the peer has read enough.
    let mut t = table();
    let id = t.served(1001, 4096);
    assert_eq!(t.send_some(id, &[0; 4096]).unwrap(), 4096);
    t.control(1001, VsockEventType::CreditUpdate, 100, 0);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    assert_eq!(rw(&t.driver.take(), 1001).1, [4096]);
    // Still 96 in flight: 4 free, too little for the 10 (see next_chunk).
    t.control(1001, VsockEventType::CreditUpdate, 100, 4000);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    // All read: the 10 go.
    t.control(1001, VsockEventType::CreditUpdate, 100, 4096);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 10);
    assert_eq!(rw(&t.driver.take(), 1001).1, [10]);
}

/// A small deterministic generator (xorshift64*), so that a failing run
/// can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A count as a hostile peer might announce it: small, at the edges,
    /// or anything.
    fn count(&mut self, around: u32) -> u32 {
        match self.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => around,
            3 => around.wrapping_add(self.below(3) as u32).wrapping_sub(1),
            4 => self.below(70_000) as u32,
            _ => self.next() as u32,
        }
    }
}

/// Random events and calls, hostile values included: the table never
/// panics, never sends an empty packet or more than the peer's credit (the
/// fake checks both), never buffers more than it advertised, and keeps no
/// more waiting connections than its backlog allows.
#[test]
fn random_events_and_calls_keep_the_tables_invariants() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut t = table();
        let mut ids: Vec<ConnId> = Vec::new();
        for step in 0..2_000 {
            let port = 1000 + rng.below(6) as u32;
            // The peer's view of a connection: what we sent, for
            // plausible forward counts.
            let sent = t
                .conns
                .iter()
                .find(|c| c.info.dst.port == port)
                .map_or(0, |c| c.credit.tx_cnt);
            let buf_alloc = rng.count(65536);
            let fwd_cnt = rng.count(sent);
            match rng.below(16) {
                0 | 1 => t.request(port, buf_alloc),
                2..=4 => {
                    let n = match rng.below(4) {
                        0 => 0,
                        1 => RX_BUFFER_SIZE,
                        _ => rng.below(5000) as usize,
                    };
                    t.data(port, &vec![step as u8; n], buf_alloc, fwd_cnt);
                }
                5 => {
                    let kind = match rng.below(5) {
                        0 => VsockEventType::Connected,
                        1 => shutdown(),
                        2 => rst(),
                        3 => VsockEventType::CreditRequest,
                        _ => VsockEventType::ConnectionRequest,
                    };
                    t.control(port, kind, buf_alloc, fwd_cnt);
                }
                6 => t.control(port, VsockEventType::CreditUpdate, buf_alloc, fwd_cnt),
                7 => {
                    let e = match rng.below(3) {
                        0 => SocketError::InvalidOperation,
                        1 => SocketError::BufferTooShort,
                        _ => SocketError::UnknownOperation(rng.next() as u16),
                    };
                    t.driver.events.push_back(Err(e.into()));
                    assert!(t.poll().unwrap());
                }
                8 => {
                    if let Some(id) = t.accept() {
                        if rng.below(2) == 0 {
                            t.serve(id);
                        }
                        ids.push(id);
                    }
                }
                9 | 10 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        let mut buf = vec![0; rng.below(70_000) as usize];
                        let _ = t.recv(id, &mut buf);
                    }
                }
                11 | 12 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        let _ = t.send_some(id, &vec![1; rng.below(200_000) as usize]);
                    }
                }
                13 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        match rng.below(3) {
                            0 => drop(t.close(id)),
                            1 => t.reset(id),
                            _ => t.probe(id),
                        }
                    }
                }
                _ => {
                    advance(rng.below(2 * PROBE_US));
                    t.tick();
                }
            }
            t.driver.take();
            for c in &t.conns {
                assert!(
                    c.rx.len() <= c.credit.buffer_size as usize,
                    "seed {seed} step {step}: {} buffered of {}",
                    c.rx.len(),
                    c.credit.buffer_size
                );
                assert!(c.rx.capacity() <= (c.credit.buffer_size as usize).max(1) * 2);
            }
            assert!(
                t.backlog_len() <= DEFAULT_MAX_PENDING,
                "seed {seed} step {step}"
            );
            ids.retain(|&id| t.exists(id));
        }
    }
}

#[test]
fn a_connection_waiting_in_the_backlog_keeps_its_data_and_its_close() {
    let mut t = table();
    t.request(1000, 65536);
    t.request(1001, 65536);
    t.data(1000, b"early", 65536, 0);
    t.control(1001, rst(), 65536, 0);
    // Handed out in order, with what happened while they waited.
    let a = t.accept().unwrap();
    let b = t.accept().unwrap();
    assert_eq!(t.peer(a), Some(host(1000)));
    assert_eq!(t.read_all(a), b"early");
    assert!(t.peer_closed(b));
    assert_eq!(t.recv(b, &mut [0; 4]).unwrap(), Recv::Eof);
    assert!(matches!(t.send_some(b, b"x"), Err(Error::Reset)));
}

#[test]
fn a_shutdown_in_answer_to_our_request_is_a_refusal() {
    let mut t = table();
    t.feed(event(9, shutdown(), 0, 0), &[]);
    assert!(matches!(
        t.connect(host(9), PORT),
        Err(Error::Refused { port: 9 })
    ));
    // Events for other connections that come meanwhile are recorded.
    t.feed(event(1000, VsockEventType::ConnectionRequest, 4096, 0), &[]);
    t.feed(event(10, VsockEventType::Connected, 4096, 0), &[]);
    let id = t.connect(host(10), PORT).unwrap();
    assert!(t.is_open(id));
    assert_eq!(t.backlog_len(), 1);
}

#[test]
fn a_forged_forward_count_in_a_request_only_stalls_its_own_connection() {
    // A REQUEST says the peer has forwarded bytes we never sent: nothing
    // can be sent (no empty packets either) until a packet of the peer
    // brings a count that can be real.
    let mut t = table();
    t.deliver(
        event(1000, VsockEventType::ConnectionRequest, 65536, 12345),
        &[],
    );
    let id = t.accept().unwrap();
    t.serve(id);
    t.driver.take();
    assert_eq!(t.send_some(id, b"answer").unwrap(), 0);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"");
    t.control(1000, VsockEventType::CreditUpdate, 65536, 0);
    assert_eq!(t.stale_packets(), 0);
    assert_eq!(t.send_some(id, b"answer").unwrap(), 6);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"answer");
}
