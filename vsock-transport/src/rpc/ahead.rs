//! What a server learns while a request runs: the `CANCEL` frames and
//! requests its client sent meanwhile (`comm/WIRE.md` §10), read ahead of
//! the frame assembler into a small buffer, and the [`Ctx`] a handler
//! doing long work asks whether its request was cancelled.
//!
//! A [`super::ServerConn`] reads one frame at a time. While a handler
//! runs, its driver (e.g. `serve_many`) can still read the connection's
//! transport without waiting ([`ReadAhead`]); those bytes go here, up to
//! [`AHEAD_MAX`], and are scanned for whole frames: a `CANCEL` naming the
//! running request marks it cancelled, one naming a request further ahead
//! drops that request when its turn comes. Once the handler has returned,
//! the bytes are fed to the frame assembler before anything newer, so the
//! stream is read in order as if nothing had been read ahead. Their
//! arrival time is kept: a deadline counts from when the server first
//! read a request's bytes, not from when it got round to it.

use alloc::vec::Vec;

use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{CANCEL_MAX_BODY, Cancel};
use svmc_comm::frame::{self, FrameKind, HEADER_LEN};

use crate::Error;

/// Bytes a connection reads ahead while one of its requests runs: room
/// for a few hundred `CANCEL` frames or small requests. A `CANCEL` behind
/// more than this of other frames is seen when its turn comes (its request
/// is then answered already or not started: it still gets one answer).
pub const AHEAD_MAX: usize = 4096;

/// Requests (and cancellations of them) remembered from the bytes read
/// ahead.
const AHEAD_IDS: usize = 64;

/// What one non-waiting read of a connection's transport gave (the driver's
/// side of [`Ctx::cancelled`]).
#[derive(Debug)]
pub enum ReadAhead {
    /// This many bytes were read into the buffer given.
    Data(usize),
    /// Nothing is waiting now.
    Nothing,
    /// The client's stream ended.
    Eof,
    /// The transport failed.
    Failed(Error),
}

/// A driver's way to read the connection ahead without waiting: called
/// with the free part of the read-ahead buffer.
pub type Pump<'a> = &'a mut dyn FnMut(&mut [u8]) -> ReadAhead;

/// The read-ahead buffer of one connection and what was found in it.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    pub(crate) buf: Vec<u8>,
    /// Bytes of `buf` scanned as whole frames (a frame boundary).
    scanned: usize,
    /// When the oldest byte in `buf` was read.
    pub(crate) since: Option<u64>,
    /// Requests whose whole frame is in `buf`, not yet processed.
    requests: Vec<RequestId>,
    /// Those of `requests` a `CANCEL` in `buf` named.
    cancels: Vec<RequestId>,
    /// The request running now, and whether a `CANCEL` named it.
    pub(crate) current: Option<RequestId>,
    pub(crate) current_cancelled: bool,
    /// Whether `CANCEL` frames count (the extension is on).
    pub(crate) cancel_on: bool,
    pub(crate) eof: bool,
    pub(crate) failed: Option<Error>,
    /// The time of the last read, for [`Ctx`]'s pacing.
    last_pump: Option<u64>,
}

impl Ahead {
    /// Reads what is waiting (at most [`AHEAD_MAX`] bytes in all) and scans
    /// it.
    pub(crate) fn pump(&mut self, now: u64, read: Pump<'_>) {
        self.last_pump = Some(now);
        while !self.eof && self.failed.is_none() && self.buf.len() < AHEAD_MAX {
            let have = self.buf.len();
            self.buf.resize(AHEAD_MAX, 0);
            let r = read(&mut self.buf[have..]);
            let n = match r {
                ReadAhead::Data(n) => n.min(AHEAD_MAX - have),
                _ => 0,
            };
            self.buf.truncate(have + n);
            match r {
                ReadAhead::Data(0) | ReadAhead::Nothing => break,
                ReadAhead::Data(_) => {
                    if have == 0 {
                        self.since = Some(now);
                    }
                }
                ReadAhead::Eof => self.eof = true,
                ReadAhead::Failed(e) => self.failed = Some(e),
            }
        }
        self.scan();
    }

    /// Finds the whole frames after `scanned`: requests and cancellations.
    fn scan(&mut self) {
        loop {
            let rest = &self.buf[self.scanned..];
            if rest.len() < HEADER_LEN {
                return;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
                return;
            };
            match FrameKind::from_u8(rest[0]) {
                Ok(FrameKind::Request) => {
                    if let Some(id) = envelope::decode::<serde::de::IgnoredAny>(body).0
                        && self.requests.len() < AHEAD_IDS
                    {
                        self.requests.push(id);
                    }
                }
                Ok(FrameKind::Cancel) if self.cancel_on && len as u32 <= CANCEL_MAX_BODY => {
                    if let Ok(Cancel { id }) = frame::decode_body::<Cancel>(body) {
                        self.cancel(id);
                    }
                }
                // Anything else waits for the frame assembler, which reports
                // what is wrong with it.
                Ok(_) => {}
                Err(_) => return,
            }
            self.scanned += HEADER_LEN + len;
        }
    }

    fn cancel(&mut self, id: RequestId) {
        if self.current == Some(id) {
            self.current_cancelled = true;
        } else if self.requests.contains(&id) && !self.cancels.contains(&id) {
            self.cancels.push(id);
        }
    }

    /// Request `id` is about to start: from now on a `CANCEL` read ahead
    /// that names it marks it cancelled.
    pub(crate) fn begin(&mut self, id: RequestId) {
        if self.current == Some(id) {
            return;
        }
        if let Some(i) = self.requests.iter().position(|r| *r == id) {
            self.requests.swap_remove(i);
        }
        self.current = Some(id);
        self.current_cancelled = false;
    }

    /// Request `id` starts: whether a `CANCEL` read ahead named it (it is
    /// then answered `cancelled` without running).
    pub(crate) fn starts(&mut self, id: RequestId) -> bool {
        self.begin(id);
        let queued = match self.cancels.iter().position(|r| *r == id) {
            Some(i) => {
                self.cancels.swap_remove(i);
                true
            }
            None => false,
        };
        queued || self.current_cancelled
    }

    /// The running request is answered.
    pub(crate) fn done(&mut self) -> bool {
        self.current = None;
        core::mem::take(&mut self.current_cancelled)
    }

    /// `n` bytes were taken from the front by the frame assembler.
    pub(crate) fn consumed(&mut self, n: usize) {
        self.buf.drain(..n);
        self.scanned = self.scanned.saturating_sub(n);
        if self.buf.is_empty() {
            self.since = None;
            self.scanned = 0;
        }
    }

    /// Whether [`Ahead::pump`] ran less than `gap_us` ago.
    pub(crate) fn pumped_within(&self, now: u64, gap_us: u64) -> bool {
        self.last_pump
            .is_some_and(|t| now != 0 && now.saturating_sub(t) < gap_us)
    }
}

/// Shortest time between two reads of the transport by [`Ctx::cancelled`]
/// (a handler may ask in a tight loop).
pub(crate) const PUMP_GAP_US: u64 = 1000;

/// What a handler knows about the request it is answering
/// ([`super::Handler::handle_ctx`]): its id, the client's trace context,
/// its deadline, and whether the client cancelled it.
pub struct Ctx<'a> {
    pub(crate) id: RequestId,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) deadline_us: Option<u64>,
    pub(crate) now_us: fn() -> u64,
    pub(crate) ahead: &'a mut Ahead,
    pub(crate) pump: Pump<'a>,
}

impl core::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .field("traceparent", &self.traceparent)
            .field("deadline_us", &self.deadline_us)
            .finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Microseconds on the server's clock (`ServeConfig::now_us`; always 0
    /// without one).
    pub fn now_us(&self) -> u64 {
        (self.now_us)()
    }

    /// The client's W3C `traceparent`, if it sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent
    }

    /// Microseconds left until the request's deadline (on the server's
    /// clock, `ServeConfig::now_us`); `None` without a deadline, 0 once it
    /// has passed. A handler may give up then: the client has too.
    pub fn remaining_us(&self) -> Option<u64> {
        let d = self.deadline_us?;
        Some(d.saturating_sub((self.now_us)()))
    }

    /// Whether the client cancelled this request. Reads the connection
    /// ahead (at most once a millisecond, without waiting) to find out: a
    /// handler doing long work calls it between pieces of about a
    /// millisecond and stops when it says `true`; the server then answers
    /// `cancelled` whatever the handler returns. Always `false` where the
    /// `cancel` extension is off or the driver cannot read ahead
    /// (`serve`).
    pub fn cancelled(&mut self) -> bool {
        if !self.ahead.current_cancelled && self.ahead.cancel_on {
            let now = (self.now_us)();
            if !self.ahead.pumped_within(now, PUMP_GAP_US) {
                self.ahead.pump(now, &mut *self.pump);
            }
        }
        self.ahead.current_cancelled
    }
}
