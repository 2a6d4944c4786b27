//! `comm` frames on a [`Connection`].

use alloc::vec::Vec;

use svmc_comm::frame::{HEADER_LEN, Header};

use crate::{Connection, Error, Result, Step};

/// Reads exactly `buf.len()` bytes. `already` is how many bytes of the current
/// frame came before `buf`, to report truncation precisely.
fn recv_exact<C: Connection + ?Sized>(
    conn: &mut C,
    buf: &mut [u8],
    already: usize,
    frame_len: usize,
) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = match conn.recv(&mut buf[filled..]) {
            Ok(n) => n,
            // Part of the frame is in: the rest may still come, so the
            // stream is out of step.
            Err(Error::Timeout(step)) if already + filled > 0 => {
                return Err(Error::TimeoutInFrame {
                    step,
                    got: already + filled,
                });
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            if already + filled == 0 {
                return Err(Error::Closed);
            }
            return Err(svmc_comm::Error::Truncated {
                expected: frame_len,
                got: already + filled,
            }
            .into());
        }
        filled += n;
    }
    Ok(())
}

/// Reads one frame into `body` (replacing its contents; after an error
/// they are unspecified) and returns its header. The header is checked against `max` before `body` grows, so at
/// most `max` bytes are ever allocated for a frame. A clean close before the
/// first header byte is [`Error::Closed`]; a close anywhere later is
/// [`svmc_comm::Error::Truncated`].
pub fn recv_frame<C: Connection + ?Sized>(
    conn: &mut C,
    max: u32,
    body: &mut Vec<u8>,
) -> Result<Header> {
    recv_frame_as(conn, max, body, Step::Read)
}

/// [`recv_frame`], timed as `step` (e.g. [`Step::Hello`]).
pub fn recv_frame_as<C: Connection + ?Sized>(
    conn: &mut C,
    max: u32,
    body: &mut Vec<u8>,
    step: Step,
) -> Result<Header> {
    conn.begin(step);
    let mut h = [0u8; HEADER_LEN];
    recv_exact(conn, &mut h, 0, HEADER_LEN)?;
    let header = Header::parse(h, max)?;
    // Every byte of `body` is overwritten below, so keep what it holds
    // (typically the previous frame) and zero-fill only the growth: no
    // needless pass over a large body (a memset of megabytes is
    // milliseconds under emulation).
    body.resize(header.len as usize, 0);
    recv_exact(conn, body, HEADER_LEN, header.frame_len())?;
    Ok(header)
}

/// Writes one already-encoded frame.
pub fn send_frame<C: Connection + ?Sized>(conn: &mut C, frame: &[u8]) -> Result<()> {
    conn.begin(Step::Write);
    conn.send(frame)
}

/// Writes one frame given as its head bytes and a tail sent from where it
/// lies (e.g. a payload returned by [`svmc_comm::Protocol::encode_request`]),
/// with one [`Connection::send_vectored`].
pub fn send_frame_parts<C: Connection + ?Sized>(
    conn: &mut C,
    head: &[u8],
    tail: &[u8],
) -> Result<()> {
    conn.begin(Step::Write);
    if tail.is_empty() {
        conn.send(head)
    } else {
        conn.send_vectored(&[head, tail])
    }
}
