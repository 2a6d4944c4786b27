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
    let mut s = ServerConn::<P>::new(config, Budget::unlimited());
    let result = drive(conn, handler, &mut s);
    // Free the buffers before the shutdown handshake.
    drop(s);
    let _ = conn.shutdown();
    result
}

fn drive<P, C, H>(conn: &mut C, handler: &mut H, s: &mut ServerConn<P>) -> Result<Ended>
where
    P: Protocol,
    C: Connection + ?Sized,
    H: Handler<P> + ?Sized,
{
    // Since the client last took none of our bytes: its write deadline
    // ([`Step::Write`]) runs.
    let mut stuck = false;
    loop {
        s.produce();
        let blocked = flush(conn, s, &mut stuck);
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
            // more requests (R-FLOW-1): read them without waiting (the
            // core answers what its budget allows and stops reading
            // beyond), else wait for either side to move.
            if s.wants_input() && read_now(conn, s) {
                continue;
            }
            if let Err(e) = conn.wait(s.wants_input()) {
                s.transport_failed(e);
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
/// frame within the write timeout.
fn flush<P, C>(conn: &mut C, s: &mut ServerConn<P>, stuck: &mut bool) -> bool
where
    P: Protocol,
    C: Connection + ?Sized,
{
    while !s.output().is_empty() {
        let n = s.output().len();
        let sent = match conn.try_send(s.output()) {
            Ok(Some(0)) => {
                if !*stuck {
                    // The client has the write timeout to take a byte.
                    *stuck = true;
                    s.stalled();
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
                *stuck = false;
                s.sent(sent);
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
