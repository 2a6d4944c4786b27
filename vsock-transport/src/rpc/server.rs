//! The server side: `HELLO`, then answer requests with a [`Handler`].

use alloc::vec::Vec;

use comm::Protocol;
use comm::frame::{self, FrameKind, ProtocolError};

use super::hello;
use crate::framed::{recv_frame, send_frame};
use crate::{Connection, Error, Result};

/// What the server does after sending a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Read the next request.
    Continue,
    /// Stop serving and return [`Ended::Stopped`] (e.g. to power off).
    Stop,
}

/// Processes requests on the server side.
pub trait Handler<P: Protocol> {
    /// Answers one request. Failures to process it are responses too.
    fn handle(&mut self, request: P::Request) -> (P::Response, Then);
}

/// How a served connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent `GOODBYE`.
    Goodbye,
    /// The client closed the stream between frames.
    Closed,
    /// The handler returned [`Then::Stop`].
    Stopped,
}

/// Server-side limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Largest request body accepted (advertised in our `HELLO`).
    pub max_body: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body: frame::DEFAULT_MAX_BODY,
        }
    }
}

/// Serves one connection: `HELLO`, then requests until `GOODBYE`, a close,
/// a fatal protocol error or [`Then::Stop`]. The connection is shut down
/// before returning, whatever happened.
pub fn serve<P, C, H>(conn: &mut C, handler: &mut H, config: ServeConfig) -> Result<Ended>
where
    P: Protocol,
    C: Connection + ?Sized,
    H: Handler<P> + ?Sized,
{
    let mut buf = Vec::new();
    let result = serve_inner::<P, C, H>(conn, handler, config, &mut buf);
    // Free the frame buffer before the shutdown handshake.
    drop(buf);
    let _ = conn.shutdown();
    result
}

/// Reports `e` to the peer in an `ERROR` frame (best effort). `fatal`
/// overrides the default of the error class: what decides is whether this
/// side closes the connection afterwards.
fn send_error<C: Connection + ?Sized>(conn: &mut C, e: &Error, fatal: Option<bool>) {
    if let Error::Protocol(pe) = e
        && let Some(mut report) = ProtocolError::from_error(pe)
    {
        if let Some(f) = fatal {
            report.fatal = f;
        }
        if let Ok(f) = frame::encode(FrameKind::Error, &report, frame::ERROR_MAX_BODY) {
            let _ = send_frame(conn, &f);
        }
    }
}

fn serve_inner<P, C, H>(
    conn: &mut C,
    handler: &mut H,
    config: ServeConfig,
    buf: &mut Vec<u8>,
) -> Result<Ended>
where
    P: Protocol,
    C: Connection + ?Sized,
    H: Handler<P> + ?Sized,
{
    let peer_max = match hello::<P, C>(conn, config.max_body, buf) {
        Ok(m) => m,
        Err(e) => {
            send_error(conn, &e, Some(true));
            return Err(e);
        }
    };
    loop {
        let header = match recv_frame(conn, config.max_body, buf) {
            Ok(h) => h,
            Err(Error::Closed) => return Ok(Ended::Closed),
            Err(e @ Error::Protocol(comm::Error::Empty { .. })) => {
                // A zero-length body: the header was all there was, so the
                // stream is still in step. Report it and go on.
                send_error(conn, &e, Some(false));
                continue;
            }
            Err(e) => {
                // Too large, unknown kind, a GOODBYE with a body, truncated:
                // the stream cannot be re-synchronised. Report it (best
                // effort) and close.
                send_error(conn, &e, Some(true));
                return Err(e);
            }
        };
        if header.kind == FrameKind::Goodbye {
            return Ok(Ended::Goodbye);
        }
        let request = frame::check_kind(header.kind, FrameKind::Request, buf)
            .and_then(|()| frame::decode_body::<P::Request>(buf));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                // Boundaries intact: report and read the next frame.
                send_error(conn, &Error::Protocol(e), Some(false));
                continue;
            }
        };
        // Free the request frame before the response exists, then size the
        // response frame like the request (exact for echo-like services), so
        // the peak is about twice the payload, not four times (no doubling
        // of a too-small buffer).
        let hint = buf.len() + frame::HEADER_LEN + 64;
        *buf = Vec::new();
        let (response, then) = handler.handle(request);
        buf.reserve_exact(hint);
        if let Err(e) = frame::encode_into(FrameKind::Response, &response, peer_max, buf) {
            // E.g. a response larger than the client accepts: tell it, and
            // keep serving.
            drop(response);
            if let Some(mut report) = ProtocolError::from_error(&e) {
                report.fatal = false;
                if let Ok(f) = frame::encode(FrameKind::Error, &report, frame::ERROR_MAX_BODY) {
                    send_frame(conn, &f)?;
                }
            }
            continue;
        }
        drop(response);
        send_frame(conn, buf)?;
        if then == Then::Stop {
            return Ok(Ended::Stopped);
        }
    }
}
