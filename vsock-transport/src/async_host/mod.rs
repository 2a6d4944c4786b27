//! The async host API (feature `tokio`): connect and accept on hybrid vsock
//! ([`hybrid`], tokio's Unix sockets) and AF_VSOCK ([`vsock`], the
//! `tokio-vsock` crate), and an async [`Client`] on which many tasks make
//! calls at once over one connection.
//!
//! The wire is the same as the blocking [`crate::rpc`]'s (`comm/WIRE.md`
//! v2), so an async client talks to a blocking [`crate::rpc::serve`] (or the
//! guest firmware) and the other way round.
//!
//! # One client, many tasks
//!
//! One [`Client`] carries the calls of every task that holds it (in an
//! `Arc`): each call gets its own request id and its own answer, whatever
//! order the answers come in, and each may have its own timeout or be
//! cancelled (dropped) without disturbing the others. Any holder can end
//! the connection with [`Client::shutdown`].
//!
//! # `max_body` is a body size, not a payload size
//!
//! The `max_body` given to [`Client::hello`] bounds the `RESPONSE`
//! *bodies* the client accepts, and a body is the payload plus its CBOR
//! envelope: for svmc's `Reverse` of `n` bytes, up to `n +`
//! `svmc::REVERSE_OVERHEAD` (16, in the crate `svmc-proto`)
//! bytes (the `[id, message]` array and id, the map, the variant name, the
//! byte string's header). With `max_body = 1 << 20`, a 1 MiB `Reverse` is
//! answered `Response::Err(PayloadTooLarge { .. })` (the server keeps the
//! limit we announced); ask for `(1 << 20) + REVERSE_OVERHEAD`, or
//! [`DEFAULT_MAX_BODY`](crate::comm::frame::DEFAULT_MAX_BODY) (16 MiB + 64).
//!
//! # A busy server answers some calls with a refusal
//!
//! Under load a call can get `Ok(Response::Err(ServiceError::OutOfMemory
//! { .. }))` (for another protocol, its [`Protocol::out_of_memory`]
//! answer): the server had no room now for the request or its answer
//! (its memory is shared by every connection, and it holds the answers
//! this connection has not read yet; `comm/WIRE.md` R-FLOW-2). The
//! request was not carried out, the connection goes on, and the client
//! does not retry by itself: call again later. A small request can be
//! refused while a large one is served, when the large one arrived first.
//!
//! [`Protocol::out_of_memory`]: crate::comm::Protocol::out_of_memory
//!
//! # Tokio
//!
//! The feature `tokio` builds the async API on tokio's `net`, `io-util`,
//! `rt`, `sync` and `time`; a program needs a runtime of its own (e.g.
//! tokio with `rt-multi-thread` and `macros` for `#[tokio::main]`). Timeouts
//! use tokio's timer, whose resolution is 1 ms: a shorter one is 1 ms.
//!
//! # A client belongs to the runtime that ran its `hello`
//!
//! `hello` spawns the client's reader and writer tasks on the current tokio
//! runtime. Calls may come from any task or thread while that runtime
//! runs (a call's timeout uses the timer of the runtime it is made on);
//! once that runtime shuts down the tasks are gone, and every call fails
//! with [`Error::RuntimeGone`]. Make the client inside the runtime that
//! will outlive its use, not in a short-lived `block_on` of its own.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), vsock_transport::Error> {
//! use std::sync::Arc;
//!
//! use vsock_transport::async_host::Client;
//! use svmc::{REVERSE_OVERHEAD, Request, Response, ServiceError, ServiceVm};
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
//! // Answers up to a 1 MiB `Reverse`: the payload and its envelope.
//! let max_body = (1 << 20) + REVERSE_OVERHEAD;
//! let client = Client::<ServiceVm>::hello(stream, max_body, &Timeouts::default()).await?;
//! let client = Arc::new(client);
//!
//! // Eight spawned tasks share the connection: 64 B to 1 MiB each.
//! let tasks: Vec<_> = (0..8)
//!     .map(|i| {
//!         let client = Arc::clone(&client);
//!         tokio::spawn(async move {
//!             let payload: Vec<u8> = (0..1usize << (6 + 2 * i)).map(|b| b as u8).collect();
//!             match client.call(&Request::Reverse(payload.clone())).await? {
//!                 Response::Reverse(got) => assert!(got.iter().eq(payload.iter().rev())),
//!                 // A busy server's refusal (see above): not carried out.
//!                 Response::Err(ServiceError::OutOfMemory { .. }) => {}
//!                 other => panic!("{other:?}"),
//!             }
//!             Ok::<_, vsock_transport::Error>(())
//!         })
//!     })
//!     .collect();
//! for task in tasks {
//!     task.await.expect("the task ran")?;
//! }
//! // Any holder ends the connection: GOODBYE, and later calls fail.
//! client.shutdown().await?;
//! assert!(client.call(&Request::Info).await.is_err());
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
