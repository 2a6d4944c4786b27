//! The request/response loop, written once for both sides and generic over
//! any [`Protocol`] (`comm/WIRE.md` v2).
//!
//! A connection runs like this (frames of `comm::frame`):
//!
//! 1. Both sides send `HELLO` at once, then read the peer's and check
//!    protocol name, then version, before anything else
//!    ([`comm::Hello::decode_checked`]). On a mismatch the server answers
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

mod client;
mod server;

pub use client::{Client, MAX_ABANDONED};
pub use server::{Ended, Handler, ServeConfig, Then, serve};

use alloc::vec::Vec;

use comm::frame::{self, FrameKind};
use comm::{Hello, Protocol};

use crate::framed::{recv_frame_as, send_frame};
use crate::{Connection, Result, Step};

/// Sends our `HELLO`, reads the peer's, checks it; returns the peer's
/// maximum body length. A [`Protocol::NAME`] no `HELLO` can carry fails
/// first, with [`comm::Error::InvalidName`], before anything is sent.
pub(crate) fn hello<P: Protocol, C: Connection + ?Sized>(
    conn: &mut C,
    max_body: u32,
    buf: &mut Vec<u8>,
) -> Result<u32> {
    comm::handshake::check_name::<P>()?;
    buf.clear();
    frame::encode_into(FrameKind::Hello, &Hello::new::<P>(max_body), max_body, buf)?;
    send_frame(conn, buf)?;
    let header = recv_frame_as(conn, max_body, buf, Step::Hello)?;
    frame::check_kind(header.kind, FrameKind::Hello, buf)?;
    // Name and version first, whatever the other fields hold.
    let peer = Hello::decode_checked::<P>(buf)?;
    Ok(peer.max_body)
}
