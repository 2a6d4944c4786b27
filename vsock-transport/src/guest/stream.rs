//! A blocking [`Connection`] over one connection of the table, for a
//! caller that serves one connection at a time (the echo mode and the
//! hostile test firmware; [`crate::rpc::serve`], [`crate::rpc::Client`]).

use super::conn::ConnId;
use super::device::Device;
use super::table::VsockTable;
use crate::endpoint::Recv;
use crate::{Connection, Error, Result};

impl<D: Device> VsockTable<D> {
    /// A blocking [`Connection`] over connection `id`, which is served
    /// from now on ([`GuestVsock::serve`](super::GuestVsock::serve)).
    pub fn stream(&mut self, id: ConnId) -> Stream<'_, D> {
        self.serve(id);
        Stream {
            vsock: self,
            id,
            shut: false,
        }
    }
}

/// One connection of a [`GuestVsock`](super::GuestVsock) as a blocking [`Connection`]: every
/// call polls the device (recording events for other connections) until it
/// can go on. While it is used, no other connection is served.
///
/// Dropping it without [`Connection::shutdown`] resets the connection.
pub struct Stream<'a, D: Device> {
    vsock: &'a mut VsockTable<D>,
    id: ConnId,
    shut: bool,
}

impl<D: Device> Stream<'_, D> {
    /// The connection's handle.
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl<D: Device> Connection for Stream<'_, D> {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        if self.shut {
            return Err(Error::ShutDown);
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let n = self.vsock.send_some(self.id, rest)?;
            rest = &rest[n..];
            if !rest.is_empty() {
                self.vsock.poll_or_spin()?;
                // Probes a peer that has gone quiet (PROBE_US).
                self.vsock.tick();
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.shut {
            return Err(Error::ShutDown);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.vsock.recv(self.id, buf)? {
                Recv::Data(n) => return Ok(n),
                Recv::Eof => return Ok(0),
                Recv::Empty => {
                    self.vsock.poll_or_spin()?;
                    self.vsock.tick();
                }
            }
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shut {
            return Ok(());
        }
        self.shut = true;
        let r = self.vsock.close(self.id);
        // Wait, bounded, for the peer's RST (events for other connections
        // are recorded meanwhile).
        while self.vsock.exists(self.id) {
            self.vsock.poll_or_spin()?;
            self.vsock.tick();
        }
        r
    }
}

impl<D: Device> Drop for Stream<'_, D> {
    fn drop(&mut self) {
        if !self.shut {
            self.shut = true;
            self.vsock.reset(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_drivers::device::socket::VsockEventType;

    use super::super::fake::*;
    use crate::Connection;

    #[test]
    fn a_stream_sends_and_reads_over_the_table() {
        let mut t = table();
        let id = t.accepted(1000, 65536);
        t.feed(
            event(1000, VsockEventType::Received { length: 4 }, 65536, 0),
            b"ping",
        );
        let mut s = t.stream(id);
        let mut buf = [0; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ping");
        s.send(b"pong").unwrap();
        drop(s);
        let sent = t.driver.take();
        assert_eq!(rw(&sent, 1000).0, b"pong");
        // Dropped without shutdown: reset.
        assert_eq!(sent.last(), Some(&Sent::Rst(1000)));
        assert!(!t.exists(id));
    }

    #[test]
    fn a_stream_shut_down_waits_for_the_peers_answer() {
        let mut t = table();
        let id = t.served(1000, 65536);
        // The peer's RST, which answers our SHUTDOWN.
        t.feed(event(1000, rst(), 65536, 0), &[]);
        let mut s = t.stream(id);
        s.shutdown().unwrap();
        assert!(matches!(s.send(b"late"), Err(crate::Error::ShutDown)));
        drop(s);
        // No RST of ours: the peer's ended it.
        assert_eq!(t.driver.take(), [Sent::Shutdown(1000)]);
        assert!(!t.exists(id));
    }
}
