//! Streams through the blocking [`Client`] (`WIRE.md` §10.4): a request's
//! data sent in `CHUNK`s, an answer's data taken as its `CHUNK`s come.
//! The frames are the core's to read
//! ([`Event::Chunk`](super::sans_io::Event::Chunk)); here they are written
//! and handed to the caller's reader and writer.

use svmc_comm::ext::{self, RequestMeta};
use svmc_comm::{Protocol, RequestId};

use super::Client;
use crate::framed::send_frame;
use crate::{Connection, Error, Result};

impl<C: Connection, P: Protocol> Client<C, P> {
    /// Sends a streamed request (`WIRE.md` §10.4): `request`, then all of
    /// `data` read to its end in `CHUNK`s of at most
    /// `svmc_comm::ext::CHUNK_MAX_DATA` bytes, then the end of the stream; and
    /// waits for the answer. Memory stays bounded however long `data`
    /// is; `progress` is called with the bytes sent so far after each
    /// chunk. Needs the `stream` extension on ([`Client::extensions`]):
    /// else [`Error::Usage`] before anything is sent.
    ///
    /// A read error of `data` cancels the request (a `CANCEL`; its answer
    /// is discarded when it comes) and is returned as [`Error::Io`]. The
    /// server may answer before the end of the data (a refusal): the rest
    /// is still sent, and dropped by the server.
    pub fn call_stream(
        &mut self,
        request: &P::Request,
        data: &mut dyn std::io::Read,
        mut progress: impl FnMut(u64),
    ) -> Result<P::Response> {
        self.core.check_usable()?;
        if !self.core.extensions().stream {
            return Err(Error::Usage(
                "call_stream(): the server does not take request streams (no `stream` extension)",
            ));
        }
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_stream() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let meta = RequestMeta {
            stream: true,
            ..self.default_meta()
        };
        let id = self.send_request_with(request, &meta)?;
        let mut piece = alloc::vec![0u8; ext::CHUNK_MAX_DATA];
        let mut sent = 0u64;
        loop {
            let n = match data.read(&mut piece) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.abandon(id);
                    let _ = self.cancel(id);
                    // The stream must end for the connection to stay in
                    // step; the answer (`cancelled`) is discarded.
                    let _ = self.send_chunk(id, None);
                    return Err(Error::io("reading the data to stream", e));
                }
            };
            if n == 0 {
                break;
            }
            self.send_chunk(id, Some(&piece[..n]))?;
            sent += n as u64;
            progress(sent);
        }
        self.send_chunk(id, None)?;
        self.wait_for(id)
    }

    /// Sends `request` taking its answer as a stream (`WIRE.md` §10.4):
    /// the answer's data, of any length, is written to `out` as its
    /// `CHUNK`s come (one at a time in memory), then the final answer is
    /// returned. Needs the `stream` extension on ([`Error::Usage`]
    /// otherwise); a request whose handler answers plainly just returns
    /// that answer, nothing written.
    ///
    /// A write error of `out` cancels the request; the rest of its data is
    /// read and dropped and the error returned as [`Error::Io`].
    pub fn call_stream_answer(
        &mut self,
        request: &P::Request,
        out: &mut dyn std::io::Write,
    ) -> Result<P::Response> {
        self.core.check_usable()?;
        if !self.core.extensions().stream {
            return Err(Error::Usage(
                "call_stream_answer(): the server sends no answer streams (no `stream` extension)",
            ));
        }
        if self.in_flight() > 0 {
            return Err(Error::Usage(
                "call_stream_answer() while pipelined requests are unanswered: recv_response() them first",
            ));
        }
        let meta = RequestMeta {
            stream_answer: true,
            ..self.default_meta()
        };
        let id = self.send_request_with(request, &meta)?;
        let mut failed: Option<std::io::Error> = None;
        let r = self.recv_response_with(&mut |got, data| {
            if got != id {
                return Err(svmc_comm::Error::UnexpectedId(got).into());
            }
            out.write_all(data).map_err(|e| {
                failed = Some(e);
                Error::Usage("the answer stream's writer failed")
            })
        });
        if let Some(e) = failed {
            // The server need not produce the rest: its data, and the
            // answer (`cancelled`), are discarded when they come.
            self.abandon(id);
            let _ = self.cancel(id);
            return Err(Error::io("writing an answer stream", e));
        }
        let (got, answer) = r?;
        debug_assert_eq!(got, id, "the only live request");
        answer
    }

    fn send_chunk(&mut self, id: RequestId, data: Option<&[u8]>) -> Result<()> {
        self.buf.clear();
        ext::encode_chunk_into(id, data, &mut self.buf)?;
        match send_frame(&mut self.conn, &self.buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.core.fail(e)),
        }
    }
}
