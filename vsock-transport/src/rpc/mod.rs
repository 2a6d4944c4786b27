//! The request/response loop, written once for both sides and generic over
//! any [`Protocol`] (`comm/WIRE.md` v2).
//!
//! A connection runs like this (frames of `svmc_comm::frame`):
//!
//! 1. Both sides send `HELLO` at once, then read the peer's and check
//!    protocol name, then version, before anything else
//!    ([`svmc_comm::Hello::decode_checked`]). On a mismatch the server answers
//!    with a fatal `ERROR` frame and both sides close. Until then every
//!    error is fatal.
//! 2. The client sends `REQUEST` frames `[id, request]`, several at once
//!    if it likes ([`Client::send_request`], [`Client::call_many`]); the
//!    server answers each with one `RESPONSE` `[id, response]`, in order.
//!    A request the server cannot decode (its frame boundaries intact) is
//!    answered with a non-fatal `ERROR` naming its id when it can be read,
//!    and the connection goes on; a frame the server cannot delimit (too
//!    large, unknown kind) gets a fatal `ERROR` frame and the server closes.
//! 3. The client ends with `GOODBYE` (or just closes).
//!
//! # Example
//!
//! A protocol of one's own, served with a [`Handler`] and called with a
//! [`Client`] (one call, pipelined calls, a batch), here over a Unix socket
//! pair with a [`Connection`] written for it; the guest backend,
//! `hybrid` and `host_vsock` connections are used the same way.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::os::unix::net::UnixStream;
//!
//! use serde::{Deserialize, Serialize};
//! use vsock_transport::comm::Protocol;
//! use vsock_transport::rpc::{self, Client, Ended, Handler, ServeConfig, Then};
//! use vsock_transport::{Connection, Error};
//!
//! /// Any reliable byte stream is a `Connection`.
//! struct Pipe(UnixStream);
//! impl Connection for Pipe {
//!     fn send(&mut self, buf: &[u8]) -> vsock_transport::Result<()> {
//!         self.0.write_all(buf).map_err(|_| Error::Reset)
//!     }
//!     fn recv(&mut self, buf: &mut [u8]) -> vsock_transport::Result<usize> {
//!         self.0.read(buf).map_err(|_| Error::Reset)
//!     }
//!     fn shutdown(&mut self) -> vsock_transport::Result<()> {
//!         let _ = self.0.shutdown(std::net::Shutdown::Both);
//!         Ok(())
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Calc { Add(u32, u32), Halt }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Answer { Sum(u64), Halting }
//!
//! struct Calculator;
//! impl Protocol for Calculator {
//!     const NAME: &'static str = "example.calc";
//!     const VERSION: u32 = 1;
//!     type Request = Calc;
//!     type Response = Answer;
//! }
//!
//! struct Adder;
//! impl Handler<Calculator> for Adder {
//!     fn handle(&mut self, request: Calc) -> (Answer, Then) {
//!         match request {
//!             Calc::Add(a, b) => (Answer::Sum(u64::from(a) + u64::from(b)), Then::Continue),
//!             Calc::Halt => (Answer::Halting, Then::Stop),
//!         }
//!     }
//! }
//!
//! let (a, b) = UnixStream::pair()?;
//! let server = std::thread::spawn(move || {
//!     rpc::serve::<Calculator, _, _>(&mut Pipe(b), &mut Adder, ServeConfig::default())
//! });
//! let mut client = Client::<_, Calculator>::hello(Pipe(a), 1 << 16)?;
//! assert_eq!(client.call(&Calc::Add(2, 3))?, Answer::Sum(5));
//!
//! // Pipelined: two requests in flight, answers matched by id.
//! let first = client.send_request(&Calc::Add(1, 1))?;
//! let second = client.send_request(&Calc::Add(2, 2))?;
//! let (id, answer) = client.recv_response()?;
//! assert_eq!((id, answer?), (first, Answer::Sum(2)));
//! assert_eq!(client.recv_response()?.0, second);
//!
//! // A batch with at most 2 in flight; answers in request order.
//! let answers = client.call_many(&[Calc::Add(1, 2), Calc::Add(3, 4), Calc::Add(5, 6)], 2)?;
//! let sums: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
//! assert_eq!(sums, [Answer::Sum(3), Answer::Sum(7), Answer::Sum(11)]);
//!
//! assert_eq!(client.call(&Calc::Halt)?, Answer::Halting);
//! assert_eq!(server.join().unwrap()?, Ended::Stopped);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ahead;
pub(crate) mod client;
pub(crate) mod flight;
pub mod many;
mod server;
#[cfg(test)]
mod test_protocol;
#[cfg(feature = "std")]
pub(crate) mod trace;

pub use ahead::{AHEAD_MAX, Ctx, Pump, ReadAhead};
pub use client::Client;
#[allow(deprecated)] // kept so that old code still builds
pub use client::MAX_ABANDONED;
pub use server::{
    Answer, Budget, CONNECTION_HEAP, Ended, Handler, InPlace, OUTPUT_HIGH_WATER, REFUSAL_ROOM,
    RESERVE_PER_BODY_BYTE, RequestStream, ResponseStream, SMALL_BODY, ServeConfig, ServerConn,
    Then, serve,
};

use alloc::vec::Vec;

use svmc_comm::{Hello, Protocol};

use crate::framed::{recv_frame_as, send_frame};
use crate::{Connection, Result, Step};

/// A close or reset before the server's `HELLO` is a refusal
/// ([`crate::Error::ClosedBeforeHello`]), not a broken connection.
pub(crate) fn closed_before_hello(e: crate::Error) -> crate::Error {
    match e {
        crate::Error::Closed | crate::Error::Reset => crate::Error::ClosedBeforeHello,
        #[cfg(feature = "std")]
        crate::Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            crate::Error::ClosedBeforeHello
        }
        e => e,
    }
}

/// Sends our `HELLO`, reads the peer's, checks it; returns the peer's
/// maximum body length. A [`Protocol::NAME`] no `HELLO` can carry fails
/// first, with [`svmc_comm::Error::InvalidName`], before anything is sent.
pub(crate) fn hello<P: Protocol, C: Connection + ?Sized>(
    conn: &mut C,
    max_body: u32,
    ext: svmc_comm::ext::Extensions,
    buf: &mut Vec<u8>,
) -> Result<Hello> {
    client::sans_io::hello_frame::<P>(max_body, ext, max_body, buf)?;
    send_frame(conn, buf).map_err(closed_before_hello)?;
    let header = recv_frame_as(conn, max_body, buf, Step::Hello).map_err(closed_before_hello)?;
    client::sans_io::peer_hello::<P>(header.kind, buf)
}
