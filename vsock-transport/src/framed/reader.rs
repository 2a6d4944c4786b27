//! Assembling one received frame from the bytes as they come, without I/O:
//! what every reader of frames shares ([`recv_frame`](super::recv_frame)
//! on a [`Connection`](crate::Connection), the blocking client, the async
//! client on a tokio stream).
//!
//! A frame is a 5-byte header (kind, body length; `svmc_comm::frame`) and
//! its body. The reader asks for exactly the bytes of the current part
//! ([`FrameReader::want`]), so nothing past the frame is ever read off
//! the stream, and checks the header against the largest body accepted
//! before the body buffer grows. It also knows how much of the frame came,
//! which decides what a close or a timeout means:
//!
//! - before the first byte, a close is [`Error::Closed`] and a timeout
//!   [`Error::Timeout`] (nothing is out of step);
//! - after it, a close is [`svmc_comm::Error::Truncated`] and a timeout
//!   [`Error::TimeoutInFrame`] (fatal: the stream is inside a frame).

use alloc::vec::Vec;

use svmc_comm::frame::{HEADER_LEN, Header};

use crate::{Error, Result, Step};

/// One frame being read: its header bytes so far, then its body.
#[derive(Debug)]
pub(crate) struct FrameReader {
    max: u32,
    head: [u8; HEADER_LEN],
    /// Bytes of the frame received, header included.
    got: usize,
    /// The header once all of it came.
    header: Option<Header>,
}

impl FrameReader {
    /// Reads a frame whose body is at most `max` bytes.
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            head: [0; HEADER_LEN],
            got: 0,
            header: None,
        }
    }

    /// Where the next bytes go: the rest of the header, or of the body (in
    /// `body`, sized when the header came). Never empty before the frame
    /// is complete.
    pub(crate) fn want<'a>(&'a mut self, body: &'a mut [u8]) -> &'a mut [u8] {
        match self.header {
            None => &mut self.head[self.got..],
            Some(_) => &mut body[self.got - HEADER_LEN..],
        }
    }

    /// `n` bytes (at least one) were written at the start of
    /// [`FrameReader::want`]. Returns the header once the frame is
    /// complete, its body in `body`. Fails (fatal) when the header names
    /// an unknown kind or a body over the maximum.
    ///
    /// `body` keeps what it holds, typically the previous frame, and only
    /// its growth is zeroed: every byte is overwritten before the frame is
    /// complete (a memset of megabytes is milliseconds under emulation).
    pub(crate) fn filled(&mut self, n: usize, body: &mut Vec<u8>) -> Result<Option<Header>> {
        debug_assert!(n > 0, "a close is FrameReader::closed");
        self.got += n;
        if self.header.is_none() {
            if self.got < HEADER_LEN {
                return Ok(None);
            }
            let header = Header::parse(self.head, self.max)?;
            body.resize(header.len as usize, 0);
            self.header = Some(header);
        }
        match self.header {
            Some(h) if self.got == h.frame_len() => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    /// The stream ended here: [`Error::Closed`] between frames, else
    /// [`svmc_comm::Error::Truncated`].
    pub(crate) fn closed(&self) -> Error {
        if self.got == 0 {
            return Error::Closed;
        }
        svmc_comm::Error::Truncated {
            expected: self.header.map_or(HEADER_LEN, |h| h.frame_len()),
            got: self.got,
        }
        .into()
    }

    /// The deadline of `step` passed here: [`Error::Timeout`] between
    /// frames, else [`Error::TimeoutInFrame`].
    pub(crate) fn timed_out(&self, step: Step) -> Error {
        if self.got == 0 {
            Error::Timeout(step)
        } else {
            Error::TimeoutInFrame {
                step,
                got: self.got,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svmc_comm::frame::FrameKind;

    /// Feeds `bytes` `step` at a time; the header of the frame they end.
    fn feed(r: &mut FrameReader, bytes: &[u8], step: usize, body: &mut Vec<u8>) -> Result<Header> {
        let mut at = 0;
        loop {
            let want = r.want(body);
            let n = want.len().min(step).min(bytes.len() - at);
            assert!(n > 0, "more bytes wanted than given");
            want[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            if let Some(h) = r.filled(n, body)? {
                assert_eq!(at, bytes.len(), "nothing past the frame");
                return Ok(h);
            }
        }
    }

    #[test]
    fn a_frame_comes_whole_however_it_is_cut() {
        let mut f = Vec::new();
        frame::encode_into(FrameKind::Response, &"hello", 1024, &mut f).unwrap();
        for step in [1, 2, 5, 1000] {
            let mut r = FrameReader::new(1024);
            let mut body = vec![0xaa; 100];
            let h = feed(&mut r, &f, step, &mut body).unwrap();
            assert_eq!(h.kind, FrameKind::Response);
            assert_eq!(body, f[HEADER_LEN..]);
        }
        // An empty body: the header is the frame.
        let goodbye = frame::goodbye();
        let mut body = Vec::new();
        let h = feed(&mut FrameReader::new(8), &goodbye, 1, &mut body).unwrap();
        assert_eq!((h.kind, body.len()), (FrameKind::Goodbye, 0));
    }

    #[test]
    fn a_body_over_the_maximum_fails_before_it_is_read() {
        let mut f = Vec::new();
        frame::encode_into(FrameKind::Response, &[7u8; 100][..], 1024, &mut f).unwrap();
        let mut body = Vec::new();
        let e = feed(&mut FrameReader::new(50), &f, 1000, &mut body).unwrap_err();
        assert!(
            matches!(e, Error::Protocol(svmc_comm::Error::TooLarge { .. })),
            "{e:?}"
        );
        assert!(body.is_empty(), "never grown");
    }

    #[test]
    fn a_close_or_timeout_means_what_came_before_it() {
        let mut r = FrameReader::new(1024);
        let mut body = Vec::new();
        assert!(matches!(r.closed(), Error::Closed));
        assert!(matches!(
            r.timed_out(Step::Read),
            Error::Timeout(Step::Read)
        ));
        r.want(&mut body)[..3].copy_from_slice(&[3, 0, 0]);
        assert!(r.filled(3, &mut body).unwrap().is_none());
        assert!(matches!(
            r.timed_out(Step::Read),
            Error::TimeoutInFrame {
                step: Step::Read,
                got: 3
            }
        ));
        let e = r.closed();
        assert!(
            matches!(
                e,
                Error::Protocol(svmc_comm::Error::Truncated {
                    expected: HEADER_LEN,
                    got: 3
                })
            ),
            "{e:?}"
        );
        r.want(&mut body)[..2].copy_from_slice(&[0, 10]);
        assert!(r.filled(2, &mut body).unwrap().is_none());
        assert_eq!(body.len(), 10);
        let e = r.closed();
        assert!(
            matches!(
                e,
                Error::Protocol(svmc_comm::Error::Truncated {
                    expected: 15,
                    got: 5
                })
            ),
            "{e:?}"
        );
    }

    use svmc_comm::frame;
}
