//! The test context of the connection table: a fake [`Device`] that
//! delivers queued events and records what the table has it send, with
//! the peer's credit checked the way virtio-drivers 0.13 checks it, a test
//! clock, and helpers that feed the table one event at a time. The tests
//! of the table (`tests/`) and of the stream adapter use it.

extern crate std;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use std::cell::{Cell, RefCell};
use std::format;

use virtio_drivers::device::socket::{
    ConnectionInfo, DisconnectReason, SocketError, VsockAddr, VsockEventType,
};

use super::{CONNECTION_BUFFER_SIZE, ConnId, Device, Event, HOST_CID, Recv, VsockTable};
use crate::credit::Credit;

/// Our CID and the service port the tests listen on.
pub(super) const GUEST_CID: u64 = 3;
pub(super) const PORT: u32 = 5000;

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

pub(super) fn clock() -> u64 {
    NOW.with(Cell::get)
}

pub(super) fn advance(us: u64) {
    NOW.with(|c| c.set(c.get() + us));
}

/// A packet the table had the device send, named by the host port of its
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
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
pub(super) struct Fake {
    pub(super) events: VecDeque<core::result::Result<(Event, Vec<u8>), virtio_drivers::Error>>,
    pub(super) sent: Vec<Sent>,
    peers: Vec<((u32, u32), Peer)>,
    /// Every send fails with this error (a broken queue).
    pub(super) fail: Option<virtio_drivers::Error>,
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

    pub(super) fn take(&mut self) -> Vec<Sent> {
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

pub(super) fn host(port: u32) -> VsockAddr {
    VsockAddr {
        cid: HOST_CID,
        port,
    }
}

/// An event from host port `port` to our [`PORT`], announcing `buf_alloc`
/// and `fwd_cnt`.
pub(super) fn event(port: u32, kind: VsockEventType, buf_alloc: u32, fwd_cnt: u32) -> Event {
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
pub(super) fn table() -> VsockTable<Fake> {
    let mut t = VsockTable::with_device(Fake::default(), CONNECTION_BUFFER_SIZE);
    t.set_clock(clock);
    t.listen(PORT);
    t
}

impl VsockTable<Fake> {
    pub(super) fn feed(&mut self, e: Event, body: &[u8]) {
        self.driver.events.push_back(Ok((e, body.to_vec())));
    }

    /// Feeds an event and polls it.
    pub(super) fn deliver(&mut self, e: Event, body: &[u8]) {
        self.feed(e, body);
        assert!(self.poll().unwrap(), "the event was not taken");
        assert!(self.driver.events.is_empty());
    }

    pub(super) fn request(&mut self, port: u32, buf_alloc: u32) {
        self.deliver(
            event(port, VsockEventType::ConnectionRequest, buf_alloc, 0),
            &[],
        );
    }

    pub(super) fn data(&mut self, port: u32, body: &[u8], buf_alloc: u32, fwd_cnt: u32) {
        let ty = VsockEventType::Received { length: body.len() };
        self.deliver(event(port, ty, buf_alloc, fwd_cnt), body);
    }

    pub(super) fn control(&mut self, port: u32, ty: VsockEventType, buf_alloc: u32, fwd_cnt: u32) {
        self.deliver(event(port, ty, buf_alloc, fwd_cnt), &[]);
    }

    /// A connection from host port `port`, accepted and handed out.
    pub(super) fn accepted(&mut self, port: u32, buf_alloc: u32) -> ConnId {
        self.request(port, buf_alloc);
        let id = self.accept().expect("accepted");
        self.driver.take();
        id
    }

    /// A connection from host port `port`, served (full buffer).
    pub(super) fn served(&mut self, port: u32, buf_alloc: u32) -> ConnId {
        let id = self.accepted(port, buf_alloc);
        self.serve(id);
        self.driver.take();
        id
    }

    pub(super) fn read_all(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        while let Recv::Data(n) = self.recv(id, &mut buf).unwrap() {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    pub(super) fn credit(&self, id: ConnId) -> Credit {
        let s = self.conns.iter().find(|s| s.id == id).unwrap();
        Credit { ..s.credit }
    }
}

pub(super) fn shutdown() -> VsockEventType {
    VsockEventType::Disconnected {
        reason: DisconnectReason::Shutdown,
    }
}

pub(super) fn rst() -> VsockEventType {
    VsockEventType::Disconnected {
        reason: DisconnectReason::Reset,
    }
}

/// The bytes of every `RW` packet sent to `port`, in order, and their sizes.
pub(super) fn rw(sent: &[Sent], port: u32) -> (Vec<u8>, Vec<usize>) {
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

pub(super) fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}
