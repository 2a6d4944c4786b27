//! The async host API (feature `tokio`): connect and accept on hybrid vsock
//! ([`hybrid`], tokio's Unix sockets) and AF_VSOCK ([`vsock`], the
//! `tokio-vsock` crate), and an async [`Client`] on which many tasks make
//! calls at once over one connection.
//!
//! The wire is the same as the blocking [`crate::rpc`]'s (`comm/WIRE.md`
//! v2), so an async client talks to a blocking [`crate::rpc::serve`] (or the
//! guest firmware) and the other way round.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), vsock_transport::Error> {
//! use vsock_transport::async_host::Client;
//! use vsock_transport::comm::service::{Request, Response, ServiceVm};
//! use vsock_transport::rpc::{self, Handler, Then};
//! use vsock_transport::Timeouts;
//! use vsock_transport::host_stream::{HostStream, Peer};
//!
//! struct Reverse;
//! impl Handler<ServiceVm> for Reverse {
//!     fn handle(&mut self, request: Request) -> (Response, Then) {
//!         match request {
//!             Request::Reverse(mut b) => { b.reverse(); (Response::Reverse(b), Then::Continue) }
//!             _ => (Response::PowerOff, Then::Stop),
//!         }
//!     }
//! }
//! // A blocking server on one end of a socket pair, the async client on the other.
//! let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
//! let server = std::thread::spawn(move || {
//!     let mut conn = HostStream::new(theirs, Peer::Other("test".into()), Timeouts::default());
//!     rpc::serve::<ServiceVm, _, _>(&mut conn, &mut Reverse, Default::default())
//! });
//! ours.set_nonblocking(true).unwrap();
//! let stream = tokio::net::UnixStream::from_std(ours).unwrap();
//! let client = Client::<ServiceVm>::hello(stream, 1 << 20, &Timeouts::default()).await?;
//! // Calls from several tasks share the connection; each gets its own answer.
//! let (abc, xyz) = (Request::Reverse(b"abc".to_vec()), Request::Reverse(b"xyz".to_vec()));
//! let (a, b) = tokio::join!(client.call(&abc), client.call(&xyz));
//! assert_eq!(a?, Response::Reverse(b"cba".to_vec()));
//! assert_eq!(b?, Response::Reverse(b"zyx".to_vec()));
//! client.close().await?;
//! server.join().unwrap()?;
//! # Ok(())
//! # }
//! ```

mod client;
pub mod hybrid;
pub mod vsock;

use core::future::Future;
use std::time::Duration;

pub use client::Client;

use crate::{Error, Result, Step};

/// A byte stream the async [`Client`] can run on: tokio's `UnixStream`,
/// `tokio_vsock::VsockStream`, a `tokio::io::duplex` half...
pub trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static> AsyncStream for T {}

/// Runs `f` within `limit` (`None`: no limit); running out is
/// [`Error::Timeout`]`(step)`.
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    step: Step,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match limit {
        None => f.await,
        Some(d) => tokio::time::timeout(d, f)
            .await
            .map_err(|_| Error::Timeout(step))?,
    }
}
