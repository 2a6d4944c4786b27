//! The client side: `HELLO`, then one request at a time.

use alloc::vec::Vec;
use core::marker::PhantomData;

use comm::frame::{self, FrameKind};
use comm::{Protocol, RequestId, envelope};

use super::hello;
use crate::framed::{recv_frame, send_frame};
use crate::{Connection, Result};

/// Client side of a connection: one request at a time.
pub struct Client<C: Connection, P: Protocol> {
    conn: C,
    max_body: u32,
    peer_max_body: u32,
    buf: Vec<u8>,
    next_id: RequestId,
    _protocol: PhantomData<fn() -> P>,
}

impl<C: Connection, P: Protocol> Client<C, P> {
    /// Exchanges `HELLO` frames on a fresh connection. `max_body` bounds the
    /// responses we accept.
    pub fn handshake(mut conn: C, max_body: u32) -> Result<Self> {
        let mut buf = Vec::new();
        let peer_max_body = hello::<P, C>(&mut conn, max_body, &mut buf)?;
        Ok(Self {
            conn,
            max_body,
            peer_max_body,
            buf,
            next_id: RequestId(1),
            _protocol: PhantomData,
        })
    }

    /// The largest request body the server accepts (from its `HELLO`).
    pub fn peer_max_body(&self) -> u32 {
        self.peer_max_body
    }

    /// Sends one request and waits for its response.
    ///
    /// A request whose encoding exceeds the server's maximum fails with
    /// [`comm::Error::TooLarge`] before anything is sent, and the connection
    /// stays usable. A server's `ERROR` frame is [`comm::Error::Remote`].
    pub fn call(&mut self, request: &P::Request) -> Result<P::Response> {
        self.buf.clear();
        let id = self.next_id;
        envelope::encode_request_into(id, request, self.peer_max_body, &mut self.buf)?;
        self.next_id = id.next();
        send_frame(&mut self.conn, &self.buf)?;
        let header = recv_frame(&mut self.conn, self.max_body, &mut self.buf)?;
        frame::check_kind(header.kind, FrameKind::Response, &self.buf)?;
        let (got, response) = envelope::decode(&self.buf);
        if let Some(got) = got
            && got != id
        {
            return Err(comm::Error::UnexpectedId(got).into());
        }
        Ok(response?)
    }

    /// Sends `GOODBYE` and shuts the connection down.
    pub fn close(mut self) -> Result<()> {
        let r = send_frame(&mut self.conn, &frame::goodbye());
        let s = self.conn.shutdown();
        r.and(s)
    }

    /// The connection, e.g. to send raw bytes in tests.
    pub fn connection(&mut self) -> &mut C {
        &mut self.conn
    }

    /// Gives the connection back without a `GOODBYE`.
    pub fn into_inner(self) -> C {
        self.conn
    }
}
