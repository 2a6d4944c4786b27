//! Test doubles: a connected pair of in-process connections over a Unix
//! socket pair, for unit tests of code that runs on a [`Connection`].

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::{Connection, Error, Result};

/// One end of [`pair`].
#[derive(Debug)]
pub struct MockConnection {
    stream: UnixStream,
}

/// Two connected ends.
pub fn pair() -> (MockConnection, MockConnection) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (MockConnection { stream: a }, MockConnection { stream: b })
}

impl MockConnection {
    /// The underlying socket, e.g. to write raw bytes.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

impl Connection for MockConnection {
    fn send(&mut self, buf: &[u8]) -> Result<()> {
        self.stream
            .write_all(buf)
            .map_err(|e| Error::io("mock send", e))
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.stream.read(buf).map_err(|e| Error::io("mock recv", e))
    }
    fn shutdown(&mut self) -> Result<()> {
        match self.stream.shutdown(Shutdown::Both) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(Error::io("mock shutdown", e)),
        }
    }
}
