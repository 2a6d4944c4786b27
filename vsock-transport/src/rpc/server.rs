//! The server side: `HELLO`, then answer requests with a [`Handler`].

use alloc::vec::Vec;

use comm::frame::{self, FrameKind, ProtocolError, ProtocolErrorCode};
use comm::{Protocol, RequestId, envelope};

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
fn send_error<C: Connection + ?Sized>(
    conn: &mut C,
    e: &Error,
    fatal: Option<bool>,
    id: Option<RequestId>,
) {
    if let Error::Protocol(pe) = e
        && let Some(mut report) = ProtocolError::from_error(pe)
    {
        if let Some(f) = fatal {
            report.fatal = f;
        }
        report.id = id;
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
            send_error(conn, &e, Some(true), None);
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
                send_error(conn, &e, Some(false), None);
                continue;
            }
            Err(e) => {
                // Too large, unknown kind, a GOODBYE with a body, truncated:
                // the stream cannot be re-synchronised. Report it (best
                // effort) and close.
                send_error(conn, &e, Some(true), None);
                return Err(e);
            }
        };
        if header.kind == FrameKind::Goodbye {
            return Ok(Ended::Goodbye);
        }
        if header.kind == FrameKind::Error {
            // A client's ERROR: not fatal, ignored; fatal, the client
            // closes, so do we (WIRE.md R-ERR-5).
            match frame::decode_body::<ProtocolError>(buf) {
                Ok(pe) if !pe.fatal => continue,
                Ok(pe) => return Err(comm::Error::Remote(pe).into()),
                Err(e) => {
                    send_error(conn, &Error::Protocol(e), Some(false), None);
                    continue;
                }
            }
        }
        let (id, request) = match frame::check_kind(header.kind, FrameKind::Request, buf) {
            Ok(()) => envelope::decode::<P::Request>(buf),
            Err(e) => (None, Err(e)),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                // Boundaries intact: report (naming the request if its id
                // could be read) and read the next frame.
                send_error(conn, &Error::Protocol(e), Some(false), id);
                continue;
            }
        };
        // `Ok` from the envelope always comes with its id.
        let id = id.unwrap_or(RequestId(0));
        // Free the request frame before the response exists, then size the
        // response frame like the request (exact for echo-like services), so
        // the peak is about twice the payload, not four times (no doubling
        // of a too-small buffer).
        let hint = buf.len() + frame::HEADER_LEN + 64;
        *buf = Vec::new();
        let (response, then) = handler.handle(request);
        buf.reserve_exact(hint);
        if let Err(e) = envelope::encode_response_into(id, &response, peer_max, buf) {
            // A response larger than the client accepts: say so in a
            // RESPONSE if the protocol has a way (R-REQ-5), else in a
            // non-fatal ERROR about the request; keep serving.
            drop(response);
            let too_large = match e {
                comm::Error::TooLargeToSend { len, max } => P::response_too_large(len, max),
                _ => None,
            };
            if let Some(r) = too_large
                && envelope::encode_response_into(id, &r, peer_max, buf).is_ok()
            {
                send_frame(conn, buf)?;
                continue;
            }
            let report = match e {
                comm::Error::TooLargeToSend { len, max } => ProtocolError::new(
                    ProtocolErrorCode::TooLarge,
                    false,
                    alloc::format!("response body of {len} bytes, the client accepts {max}"),
                ),
                e => ProtocolError::new(ProtocolErrorCode::Other(0), false, alloc::format!("{e}")),
            }
            .with_id(Some(id));
            if let Ok(f) = frame::encode(FrameKind::Error, &report, frame::ERROR_MAX_BODY) {
                send_frame(conn, &f)?;
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
