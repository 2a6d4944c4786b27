//! Byte streams between a host and a service VM, and the typed
//! request/response loop that runs over them on both sides.
//!
//! - [`Connection`]: the one trait the rest of the code uses: send bytes,
//!   receive bytes, shut down. Backends, chosen by cargo features:
//!   - `guest`: module `guest`, many non-blocking connections on
//!     virtio-drivers' `VirtIOSocket` over any virtio transport (`no_std`),
//!     with a blocking [`Connection`] adapter.
//!   - `host-vsock`: module `host_vsock`, AF_VSOCK through the `vsock` crate.
//!   - `linux-endpoint`: module `linux_endpoint`, a Linux service VM's
//!     non-blocking AF_VSOCK connections as an [`Endpoint`] for
//!     [`rpc::many::serve_many`], served in one loop as the guest's are.
//!     Turns on `host-vsock`.
//!   - `host-hybrid`: module `hybrid`, hybrid vsock over Unix sockets
//!     (Firecracker, Cloud Hypervisor, vhost-device-vsock).
//!   - `tokio`: module `async_host`, both host backends on tokio and an
//!     async client on which many tasks call at once over one connection
//!     (shared in an `Arc`, closed by any of them; it belongs to the
//!     runtime that ran its `hello`). Turns on `host-hybrid` and
//!     `host-vsock`.
//!
//!   Both host backends hand out the same connection type,
//!   `host_stream::HostStream`, which gives every frame one deadline.
//!   (Modules of backends that are not enabled are not compiled, so they
//!   are named here without links.)
//! - [`framed`]: reads and writes `comm` frames on a [`Connection`], with the
//!   receiver's size limit checked before anything is allocated.
//! - [`rpc`]: [`rpc::Client`] (hello, then requests tied to their answers
//!   by id, one at a time or pipelined; poisoned after a fatal error) and
//!   the server side written once: [`rpc::ServerConn`] (one connection's
//!   rules, sans-IO), [`rpc::serve`] (one blocking connection) and
//!   [`rpc::many::serve_many`] (many connections in one event loop, with a
//!   limit and the boot-connection lifecycle), generic over any
//!   [`svmc_comm::Protocol`]. No service's messages or handler live here:
//!   svmc's are the crate `svmc-proto` (its `server` feature holds the
//!   handler), and the examples in this crate's docs use them.
//!
//! # Features
//!
//! Additive: every combination builds, `--all-features` included. The
//! guest backend is `no_std` code that needs nothing `std` forbids, so a
//! workspace may hold a guest crate and a host crate and build both at
//! once (the guest one still links only on a bare-metal target).
//! [`Error`] is `#[non_exhaustive]`: a feature may add variants
//! (`Io` with `std`, `Virtio` with `guest`, `RuntimeGone` with `tokio`)
//! and never removes or changes one, so a `match` written for one feature
//! set compiles with any larger one.
//!
//! The wire protocol crate is re-exported as [`comm`] (published as
//! `svmc-comm`), so `vsock_transport::comm::Protocol` is the trait to
//! implement without a second dependency line; with `guest`,
//! virtio-drivers is re-exported as `virtio_drivers`, so the versions of
//! `Hal` and `Transport` always match.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use svmc_comm as comm;

// The README's examples compile as doctests (they use `hybrid` and
// `async_host`).
#[cfg(all(doctest, feature = "host-hybrid", feature = "tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[cfg(feature = "guest")]
pub use virtio_drivers;

pub mod endpoint;
mod error;
pub mod framed;
pub mod rpc;

#[cfg(feature = "tokio")]
pub mod async_host;
#[cfg(any(feature = "guest", test))]
mod credit;
#[cfg(feature = "guest")]
pub mod guest;
#[cfg(feature = "std")]
pub mod host_stream;
#[cfg(feature = "host-vsock")]
pub mod host_vsock;
#[cfg(feature = "host-hybrid")]
pub mod hybrid;
#[cfg(feature = "linux-endpoint")]
pub mod linux_endpoint;
#[cfg(feature = "test-utils")]
pub mod mock;
#[cfg(feature = "test-utils")]
pub mod spans;
#[cfg(feature = "std")]
pub mod timeouts;

pub use endpoint::{Endpoint, Recv};
pub use error::{Error, Result, Step};
#[cfg(feature = "std")]
pub use timeouts::Timeouts;

/// A connected, reliable, ordered byte stream to the peer.
///
/// Narrow on purpose: it is what [`framed`] and [`rpc`] need and nothing
/// more. Connection set-up (listen, accept, connect) is backend specific.
pub trait Connection {
    /// Sends all of `buf`, or fails.
    fn send(&mut self, buf: &[u8]) -> Result<()>;

    /// Sends all of `bufs`, one after the other, as one run of bytes on
    /// the stream, or fails. A frame's head and its payload go out this
    /// way without being copied into one buffer first
    /// ([`framed::send_frame_parts`]). The default sends them one by one
    /// with [`Connection::send`]; the host backends make one vectored
    /// write (`sendmsg`) of them.
    fn send_vectored(&mut self, bufs: &[&[u8]]) -> Result<()> {
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            self.send(buf)?;
        }
        Ok(())
    }

    /// Receives at least one and at most `buf.len()` bytes, blocking until
    /// some arrive. `Ok(0)` means the peer closed its side of the stream.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Tells the peer that nothing more will be sent, and closes the stream.
    fn shutdown(&mut self) -> Result<()>;

    /// Called by [`framed`] before it starts reading (`Step::Read`) or
    /// writing (`Step::Write`) a whole frame. A backend with timeouts starts
    /// one deadline for the whole frame here, so a peer that trickles one
    /// byte at a time cannot hold the reader forever. The default does
    /// nothing.
    fn begin(&mut self, step: Step) {
        let _ = step;
    }

    /// The deadline of reading one frame (`Timeouts::read`, with `std`) if the
    /// backend has one: the clients send it as a request's deadline by
    /// default (`svmc_comm::ext::RequestMeta::deadline_ms`). The default: none.
    fn read_timeout(&self) -> Option<core::time::Duration> {
        None
    }

    /// Receives what has arrived, without waiting: `Ok(Some(n))` for `n`
    /// bytes (`Some(0)`: the peer closed its side), `Ok(None)` when
    /// nothing is there now or the backend cannot tell without waiting
    /// (the default). A server reads a connection ahead this way while a
    /// request runs, to see a client's `CANCEL` (`rpc::Ctx::cancelled`).
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let _ = buf;
        Ok(None)
    }

    /// Sends what the peer takes now, without waiting: `Ok(Some(n))` for
    /// the first `n` bytes of `buf` (`Some(0)`: none now), `Ok(None)` when
    /// the backend cannot send without waiting (the default; the caller
    /// then uses [`Connection::send`]). A server sends this way so that a
    /// client that writes requests without reading its answers is still
    /// read (WIRE.md R-FLOW-1).
    fn try_send(&mut self, buf: &[u8]) -> Result<Option<usize>> {
        let _ = buf;
        Ok(None)
    }

    /// After [`Connection::try_send`] sent nothing: waits until the peer
    /// may take bytes again or, if `read`, may have sent some, within the
    /// deadline of the current step ([`Connection::begin`];
    /// [`Error::Timeout`] once it passes). It may return early. The
    /// default returns at once (a backend whose `try_send` never returns
    /// `Some(0)` is never asked to wait).
    fn wait(&mut self, read: bool) -> Result<()> {
        let _ = read;
        Ok(())
    }
}

/// `Connection` for a pointer to one: every method, the defaults too,
/// goes to the connection pointed at (so a backend's `try_recv` is not
/// replaced by the default behind a `&mut` or a `Box`).
macro_rules! forward_connection {
    ($($ty:ty),*) => {$(
        impl<C: Connection + ?Sized> Connection for $ty {
            fn send(&mut self, buf: &[u8]) -> Result<()> {
                (**self).send(buf)
            }
            fn send_vectored(&mut self, bufs: &[&[u8]]) -> Result<()> {
                (**self).send_vectored(bufs)
            }
            fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
                (**self).recv(buf)
            }
            fn shutdown(&mut self) -> Result<()> {
                (**self).shutdown()
            }
            fn begin(&mut self, step: Step) {
                (**self).begin(step)
            }
            fn read_timeout(&self) -> Option<core::time::Duration> {
                (**self).read_timeout()
            }
            fn try_recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
                (**self).try_recv(buf)
            }
            fn try_send(&mut self, buf: &[u8]) -> Result<Option<usize>> {
                (**self).try_send(buf)
            }
            fn wait(&mut self, read: bool) -> Result<()> {
                (**self).wait(read)
            }
        }
    )*};
}

forward_connection!(&mut C, alloc::boxed::Box<C>);
