//! The transport's error type.

use alloc::string::String;
use core::fmt;

/// A blocking step of a connection, named in [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connecting to the peer's socket.
    Connect,
    /// The hybrid vsock `CONNECT <port>` / `OK <port>` exchange.
    Handshake,
    /// Waiting for the peer to connect to us.
    Accept,
    /// Waiting for the peer's `HELLO` frame.
    Hello,
    /// Reading one frame.
    Read,
    /// Writing one frame.
    Write,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Handshake => "hybrid vsock handshake",
            Self::Accept => "accept",
            Self::Hello => "protocol hello",
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// Everything that can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame or message was invalid, or the peer's protocol or version
    /// differs (see [`comm::Error`]).
    #[error(transparent)]
    Protocol(#[from] comm::Error),
    /// The peer closed the connection between two frames.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer reset the connection.
    #[error("connection reset by the peer")]
    Reset,
    /// Nobody listens on the port: the connection was refused.
    #[error("connection refused on port {port}")]
    Refused {
        /// The port that refused.
        port: u32,
    },
    /// A step did not finish within its configured timeout.
    #[error("timed out during {0}")]
    Timeout(Step),
    /// The hybrid vsock handshake was answered wrongly.
    #[error("hybrid vsock handshake failed: {0}")]
    Handshake(String),
    /// An AF_VSOCK peer connected from an unexpected CID.
    #[error("connection from CID {got}, expected CID {expected}")]
    UnexpectedPeer {
        /// The CID we accept.
        expected: u32,
        /// The CID that connected.
        got: u32,
    },
    /// The connection was used after it was shut down.
    #[error("connection already shut down")]
    ShutDown,
    /// An operating-system error.
    #[cfg(feature = "std")]
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The virtio device failed.
    #[cfg(feature = "guest")]
    #[error("virtio: {0}")]
    Virtio(virtio_drivers::Error),
}

impl Error {
    /// An I/O error with what was being attempted.
    #[cfg(feature = "std")]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
