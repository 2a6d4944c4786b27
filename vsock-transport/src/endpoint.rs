//! Many non-blocking connections behind one device or socket set: what
//! an event loop ([`serve_many`]) needs of a backend. It sits at the
//! transport level, below [`rpc`](crate::rpc): a backend implements it
//! without depending on the server.
//!
//! [`serve_many`]: crate::rpc::many::serve_many

use crate::Result;

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

/// Non-blocking connections, as [`serve_many`](crate::rpc::many::serve_many) needs them: the guest's
/// vsock device (`guest::GuestVsock`) implements it, and so can any
/// other backend (the Linux service VM's AF_VSOCK sockets, a test's
/// simulated device).
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
    /// Whether the peer of `id` has closed its side (it sends nothing
    /// more). The default, `false`, means "not known": such connections
    /// are never given up for a newcomer (see [`HOLD_US`](crate::rpc::many::HOLD_US)).
    fn peer_closed(&self, id: Self::Id) -> bool {
        let _ = id;
        false
    }
    /// Asks the device to find out at once whether the peer of `id` is
    /// still there, if it may not know (the guest: vhost-device-vsock can
    /// lose track of a host socket that closed; a credit update makes it
    /// look again). A close found is then reported as usual. The default
    /// does nothing: an endpoint whose kernel knows every close at once.
    fn probe(&mut self, id: Self::Id) {
        let _ = id;
    }
    /// Connection `id` is served from now on (the boot connection, or one
    /// admitted, at once or after a hold); until then it is waiting, held
    /// or being refused, and the endpoint may keep its receive buffer
    /// small (the guest advertises `guest::ACCEPT_WINDOW` bytes of credit
    /// and now grows it to the full buffer). The default does nothing.
    fn serve(&mut self, id: Self::Id) {
        let _ = id;
    }
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
