//! `comm` frames on a [`Connection`].

use alloc::vec::Vec;

use svmc_comm::frame::Header;

mod reader;
pub(crate) use reader::FrameReader;

use crate::{Connection, Error, Result, Step};

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
    let mut reader = FrameReader::new(max);
    loop {
        let n = match conn.recv(reader.want(body)) {
            Ok(0) => return Err(reader.closed()),
            Ok(n) => n,
            Err(Error::Timeout(step)) => return Err(reader.timed_out(step)),
            Err(e) => return Err(e),
        };
        if let Some(header) = reader.filled(n, body)? {
            return Ok(header);
        }
    }
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
