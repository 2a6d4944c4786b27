//! Raw store-and-forward reverse (`svmc.mode=raw-reverse`): the floor that
//! the protocol's `Reverse` is measured against (`cargo xtask bench`).
//!
//! Each message is a big-endian `u32` length and that many bytes. The
//! firmware reads the message whole into one buffer, reverses it in place
//! and sends the length and the reversed bytes back (in one send); no framing beyond the
//! length, no handshake, no CBOR. It runs on the same device, driver and
//! [`Connection`] backend as the service, so what it costs is what any
//! reverse must pay: receive everything (a reverse cannot send its first
//! byte before the last one has arrived), one pass over the bytes, send
//! everything. Unlike the streaming echo ([`crate::echo`]), receive and
//! send do not overlap.
//!
//! The buffer is kept between messages and grows to the largest message
//! seen (only growth beyond the largest so far is zeroed), as the
//! service's receive buffer does;
//! a message larger than the heap can hold ends the connection.

use alloc::vec::Vec;

use log::{debug, warn};
use svmc::server::reverse;
use vsock_transport::guest::Hal;
use vsock_transport::guest::Transport;
use vsock_transport::guest::{ConnId, GuestVsock};
use vsock_transport::{Connection, Error, Result};

/// Serves `boot` (if any), then every accepted connection, one at a time,
/// for ever; returns only on a device error. Messages may be at most
/// `max_len` bytes.
pub fn run<H: Hal, T: Transport>(
    vsock: &mut GuestVsock<H, T>,
    boot: Option<ConnId>,
    max_len: u32,
) -> Result<()> {
    let mut buf = Vec::new();
    if let Some(id) = boot {
        serve(&mut vsock.stream(id), &mut buf, max_len);
    }
    loop {
        match vsock.accept() {
            Some(id) => serve(&mut vsock.stream(id), &mut buf, max_len),
            None => vsock.poll_or_spin()?,
        }
    }
}

/// Fills `buf` from `conn`; `Ok(false)` if the peer closed before the
/// first byte.
fn recv_exact<C: Connection>(conn: &mut C, buf: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match conn.recv(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(Error::Closed),
            n => got += n,
        }
    }
    Ok(true)
}

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// One message: `Ok(false)` at a clean end of the stream. `buf` holds the
/// prefix and the message, so the answer goes out in one send (one packet
/// for a small message), as a protocol frame does.
fn one<C: Connection>(conn: &mut C, buf: &mut Vec<u8>, max_len: u32) -> Result<bool> {
    let mut len = [0u8; PREFIX];
    if !recv_exact(conn, &mut len)? {
        return Ok(false);
    }
    let n = u32::from_be_bytes(len);
    if n > max_len {
        warn!("raw-reverse: a message of {n} bytes is over the limit of {max_len}");
        return Err(Error::ShutDown);
    }
    let end = PREFIX + n as usize;
    if buf.len() < end {
        buf.resize(end, 0);
    }
    let msg = &mut buf[..end];
    msg[..PREFIX].copy_from_slice(&len);
    if !recv_exact(conn, &mut msg[PREFIX..])? && n > 0 {
        return Err(Error::Closed);
    }
    reverse(&mut msg[PREFIX..]);
    conn.send(msg)?;
    Ok(true)
}

/// Answers `conn`'s messages until the peer closes it, then shuts it down.
fn serve<C: Connection>(conn: &mut C, buf: &mut Vec<u8>, max_len: u32) {
    let mut count: u64 = 0;
    let result = loop {
        match one(conn, buf, max_len) {
            Ok(true) => count += 1,
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(()) => debug!("raw-reverse: connection closed after {count} messages"),
        Err(e) => warn!("raw-reverse: connection ended after {count} messages: {e}"),
    }
    let _ = conn.shutdown();
}
