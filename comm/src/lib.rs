//! The wire protocol between a host and a service VM.
//!
//! - [`frame`]: how messages are delimited on a byte stream (a 5-byte header
//!   with the kind and the body length, then one CBOR data item), with a hard
//!   maximum the receiver checks before it allocates.
//! - [`envelope`]: the `[id, message]` body of requests and responses, so
//!   every answer names the request it answers ([`RequestId`]).
//! - [`Hello`] and [`Protocol`]: the version check both sides make when a
//!   connection starts, generic over the message types.
//! - [`HOST_PORT`] and [`SERVICE_PORT`]: the vsock ports a service VM and
//!   its host use unless told otherwise.
//!
//! No service's messages live here: each service names its own
//! [`Protocol`] (svmc's is the crate `svmc-proto`).
//!
//! There is no I/O here: the byte streams are `vsock-transport`'s job. The
//! crate is `no_std` + `alloc`; the `std` feature adds `std::error::Error`
//! impls and never changes the wire. The wire format is specified in
//! `WIRE.md` (CDDL and annotated frames), which the tests check against the
//! encoder.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use svmc_comm::envelope::{self, RequestId};
//! use svmc_comm::frame::{DEFAULT_MAX_BODY, HEADER_LEN};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Request {
//!     #[serde(rename = "rev")]
//!     Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
//! }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Response {
//!     #[serde(rename = "rev")]
//!     Reverse(#[serde(with = "serde_bytes")] Vec<u8>),
//! }
//!
//! // Client: a REQUEST frame, body `[id, request]`.
//! let mut wire = Vec::new();
//! envelope::encode_request_into(RequestId(1), &Request::Reverse(b"abc".to_vec()), DEFAULT_MAX_BODY, &mut wire)?;
//! // Server: read the id and the request, answer with the same id.
//! let (id, req) = envelope::decode::<Request>(&wire[HEADER_LEN..]);
//! let Request::Reverse(mut bytes) = req?;
//! bytes.reverse();
//! let mut answer = Vec::new();
//! envelope::encode_response_into(id.unwrap(), &Response::Reverse(bytes), DEFAULT_MAX_BODY, &mut answer)?;
//! assert_eq!(
//!     envelope::decode::<Response>(&answer[HEADER_LEN..]),
//!     (Some(RequestId(1)), Ok(Response::Reverse(b"cba".to_vec())))
//! );
//! # Ok::<(), svmc_comm::Error>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

extern crate alloc;

// Layers, bottom up: `defs` (the shared types and limits) and `head` (CBOR
// heads), which import nothing of this crate, then `error`, `de`, `frame`, `envelope`, `ext`, `handshake`.
// A module imports only from the layers below it.
mod de;
mod defs;
pub mod envelope;
pub mod error;
pub mod ext;
pub mod frame;
pub mod handshake;
pub mod head;

pub use envelope::RequestId;
pub use error::{Error, Result};
pub use handshake::{Hello, Protocol};

/// vsock port on the host (CID 2) that a service VM connects to at boot:
/// that connection is the host's readiness signal (`WIRE.md` R-CONN-1).
/// The default of the runtime's `svmc.host_port` and of the host
/// library's launcher, for every service.
pub const HOST_PORT: u32 = 7000;

/// vsock port on which a service VM listens for host-initiated
/// connections (`WIRE.md` R-CONN-1): the default of the runtime's
/// `svmc.port` and of the host library's clients, for every service.
pub const SERVICE_PORT: u32 = 7001;
