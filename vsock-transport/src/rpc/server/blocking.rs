//! The blocking driver of [`ServerConn`]: one connection served over a
//! blocking [`Connection`]: a thread per connection (the in-process
//! conformance server, tests), or any server that does not need
//! [`serve_many`](crate::rpc::many::serve_many)'s event loop.

use super::{Budget, Ended, Handler, ReadAhead, ServeConfig, ServerConn};
use crate::{Connection, Error, Result, Step};
use svmc_comm::Protocol;

/// Serves one blocking connection: `HELLO`, then requests until `GOODBYE`,
/// a close, a fatal protocol error or [`Then::Stop`](super::Then::Stop). The connection is
/// shut down before returning, whatever happened. Each frame read has its
/// own deadline ([`Connection::begin`]); a client silent between frames
/// for the read timeout ends it with [`Ended::IdleTimeout`]. Example: the
/// [`rpc` module's](crate::rpc#example).
///
/// On a backend that can send without waiting ([`Connection::try_send`]:
/// the host backends' `HostStream`), a client that does not take its
/// answers is still read (WIRE.md R-FLOW-1): its answers queue within a
/// budget of its own (four times `max_body`, at least 32 MiB), requests
/// beyond it are refused as out of memory, and reading stops once the
/// refusals fill their room (R-FLOW-3). The client has the write timeout
/// to take the output queued when it first took nothing; then the
/// connection ends with [`Error::Timeout`]`(`[`Step::Write`]`)`. Other
/// backends send blocking, one write timeout per flush.
pub fn serve<P, C, H>(conn: &mut C, handler: &mut H, config: ServeConfig) -> Result<Ended>
where
    P: Protocol,
    C: Connection + ?Sized,
    H: Handler<P> + ?Sized,
{
    // A name no HELLO can carry fails here, before anything is sent.
    if let Err(e) = svmc_comm::handshake::check_name::<P>() {
        let _ = conn.shutdown();
        return Err(e.into());
    }
    let mut s = ServerConn::<P>::new(config, Budget::new(connection_budget(config.max_body)));
    let result = drive(conn, handler, &mut s);
    // Free the buffers before the shutdown handshake.
    drop(s);
    let _ = conn.shutdown();
    result
}

/// The [`Budget`] of one connection [`serve`]d: room for a request of
/// `max_body` bytes decoded beside its body, and as much again of answers
/// queued for a client that does not read them now (R-FLOW-2), at least
/// 32 MiB. Beyond it the connection stops reading (R-FLOW-3) until its
/// client reads, so a client that writes and never reads holds a bounded
/// amount of memory until its write deadline ends it.
fn connection_budget(max_body: u32) -> usize {
    (4 * max_body as usize).max(32 << 20)
}

fn drive<P, C, H>(conn: &mut C, handler: &mut H, s: &mut ServerConn<P>) -> Result<Ended>
where
    P: Protocol,
    C: Connection + ?Sized,
    H: Handler<P> + ?Sized,
{
    // While the client takes none of our output: the bytes still to go
    // under the write deadline ([`Step::Write`]) that its first refusal
    // started, as one blocking send of the output queued then would have.
    let mut owed: Option<usize> = None;
    loop {
        s.produce();
        let blocked = flush(conn, s, &mut owed);
        if let Some(end) = s.take_end() {
            return end;
        }
        // While a request runs, the connection is read ahead without
        // waiting (where the backend can), so that a `CANCEL` stops it.
        let mut read_ahead = |buf: &mut [u8]| match conn.try_recv(buf) {
            Ok(Some(0)) => ReadAhead::Eof,
            Ok(Some(n)) => ReadAhead::Data(n),
            Ok(None) => ReadAhead::Nothing,
            Err(e) => ReadAhead::Failed(e),
        };
        if s.process_with(handler, &mut read_ahead) {
            continue;
        }
        if blocked {
            // The client takes none of our answers now and may be writing
            // more requests (R-FLOW-1): wait until it sent some or takes
            // more (at once if either is so already; an error once the
            // write deadline passed, which a client that keeps writing
            // and never reads would otherwise never meet), then read what
            // came without waiting. The core answers what its budget
            // allows and stops reading beyond (R-FLOW-3).
            if let Err(e) = conn.wait(s.wants_input()) {
                s.transport_failed(e);
                continue;
            }
            if s.wants_input() {
                read_now(conn, s);
            }
            continue;
        }
        // An answer stream goes on before waiting for the client, reading
        // what came meanwhile without waiting (a CANCEL stops it).
        if s.produce() {
            if s.wants_input() {
                read_now(conn, s);
            }
            continue;
        }
        if s.wants_input() {
            if s.at_frame_start() {
                conn.begin(if s.hello_done() {
                    Step::Read
                } else {
                    Step::Hello
                });
            }
            match conn.recv(s.input_buf()) {
                Ok(0) => s.peer_closed(),
                Ok(n) => s.received(n),
                // No byte of a next frame within the read timeout, and
                // nothing left to answer or send: the client is idle.
                Err(Error::Timeout(Step::Read))
                    if s.hello_done() && s.at_frame_start() && s.output().is_empty() =>
                {
                    return Ok(Ended::IdleTimeout);
                }
                Err(e) => s.transport_failed(e),
            }
        }
    }
}

/// Sends what the client takes now; `true` if output is left that it does
/// not take (the backend's [`Connection::try_send`] sent nothing). A
/// backend that cannot send without waiting sends it all, blocking, each
/// frame within the write timeout. `owed`: see [`drive`].
fn flush<P, C>(conn: &mut C, s: &mut ServerConn<P>, owed: &mut Option<usize>) -> bool
where
    P: Protocol,
    C: Connection + ?Sized,
{
    while !s.output().is_empty() {
        let n = s.output().len();
        let sent = match conn.try_send(s.output()) {
            Ok(Some(0)) => {
                s.stalled();
                if owed.is_none() {
                    // The client has the write timeout to take what is
                    // queued now.
                    *owed = Some(n);
                    conn.begin(Step::Write);
                }
                return true;
            }
            Ok(Some(sent)) => Ok(sent),
            Ok(None) => {
                conn.begin(Step::Write);
                conn.send(s.output()).map(|()| n)
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(sent) => {
                s.sent(sent);
                if let Some(left) = *owed {
                    *owed = left.checked_sub(sent).filter(|&l| l > 0);
                    // Done with the write deadline: a frame read in part
                    // meanwhile goes on under a read deadline of its own.
                    if owed.is_none() && s.hello_done() && !s.at_frame_start() {
                        conn.begin(Step::Read);
                    }
                }
            }
            Err(e) => {
                // A fatal ERROR that cannot be delivered: report why we
                // closed, not the failed send.
                s.transport_failed(e);
                return false;
            }
        }
    }
    false
}

/// Reads what has arrived, without waiting; `true` if anything did (or
/// the connection ended).
fn read_now<P, C>(conn: &mut C, s: &mut ServerConn<P>) -> bool
where
    P: Protocol,
    C: Connection + ?Sized,
{
    match conn.try_recv(s.input_buf()) {
        Ok(Some(0)) => s.peer_closed(),
        Ok(Some(n)) => s.received(n),
        Ok(None) => return false,
        Err(e) => s.transport_failed(e),
    }
    true
}
