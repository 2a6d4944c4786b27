//! The wire protocol between a host and a service VM.
//!
//! - [`frame`]: how messages are delimited on a byte stream (a 5-byte header
//!   with the kind and the body length, then one CBOR data item), with a hard
//!   maximum the receiver checks before it allocates.
//! - [`Hello`] and [`Protocol`]: the version check both sides make when a
//!   connection starts, generic over the message types.
//! - [`service`]: this project's messages ([`service::Request`],
//!   [`service::Response`]), one instance of [`Protocol`].
//!
//! There is no I/O here: the byte streams are `vsock-transport`'s job. The
//! crate is `no_std` + `alloc`; the `std` feature adds `std::error::Error`
//! impls and never changes the wire. The wire format is specified in
//! `WIRE.md` (CDDL and annotated frames), which the tests check against the
//! encoder.
//!
//! ```
//! use comm::frame::{self, FrameKind, DEFAULT_MAX_BODY};
//! use comm::service::{Request, Response};
//!
//! let wire = frame::encode(FrameKind::Request, &Request::Reverse(b"abc".to_vec()), DEFAULT_MAX_BODY)?;
//! let req: Request = frame::decode(&wire, FrameKind::Request, DEFAULT_MAX_BODY)?;
//! let Request::Reverse(mut bytes) = req else { unreachable!() };
//! bytes.reverse();
//! let answer = frame::encode(FrameKind::Response, &Response::Reverse(bytes), DEFAULT_MAX_BODY)?;
//! assert_eq!(
//!     frame::decode::<Response>(&answer, FrameKind::Response, DEFAULT_MAX_BODY)?,
//!     Response::Reverse(b"cba".to_vec())
//! );
//! # Ok::<(), comm::Error>(())
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

extern crate alloc;

mod de;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod service;

pub use error::{Error, Result};
pub use handshake::{Hello, Protocol};
