//! Raw echo mode (`svmc.mode=echo`): every connection, the boot-time one
//! and those on the service port, gets back exactly the bytes it sends,
//! with no framing and no handshake. It is the floor the protocol is
//! measured against (`cargo xtask bench`): the same device, driver and
//! [`Connection`] backend, without `comm`.
//!
//! Echo streams: each chunk is sent back as soon as it arrives, so a
//! message of any size needs only [`CHUNK`] bytes of heap.

use alloc::vec;

use log::{debug, warn};
use vsock_transport::guest::Hal;
use vsock_transport::guest::Transport;
use vsock_transport::guest::{ConnId, GuestVsock};
use vsock_transport::{Connection, Result};

/// Largest piece read and written back at once: one full vsock packet.
pub const CHUNK: usize = 64 * 1024;

/// Echoes `boot` (if any), then every accepted connection, one at a time,
/// for ever; returns only on a device error.
pub fn run<H: Hal, T: Transport>(vsock: &mut GuestVsock<H, T>, boot: Option<ConnId>) -> Result<()> {
    if let Some(id) = boot {
        serve(&mut vsock.stream(id));
    }
    loop {
        match vsock.accept() {
            Some(id) => serve(&mut vsock.stream(id)),
            None => vsock.poll_or_spin()?,
        }
    }
}

/// Echoes `conn` until the peer closes it, then shuts it down.
pub fn serve<C: Connection>(conn: &mut C) {
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    let result = loop {
        match conn.recv(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = conn.send(&buf[..n]) {
                    break Err(e);
                }
                total += n as u64;
            }
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(()) => debug!("echo: connection closed after {total} bytes"),
        Err(e) => warn!("echo: connection ended with an error after {total} bytes: {e}"),
    }
    let _ = conn.shutdown();
}
