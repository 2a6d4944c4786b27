//! The transport's error type.

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;

/// A blocking step of a connection, named in [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connecting to the peer's socket.
    Connect,
    /// The hybrid vsock `CONNECT <port>` / `OK <port>` exchange
    /// (`Timeouts::hybrid_connect`, with `std`). Not to be confused
    /// with the protocol's `HELLO` exchange, [`Step::Hello`].
    HybridConnect,
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
            Self::HybridConnect => "hybrid vsock CONNECT/OK exchange",
            Self::Accept => "accept",
            Self::Hello => "protocol hello",
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// Everything that can go wrong on a connection.
///
/// [`Error::is_fatal`] says whether the connection can still be used.
/// `Display` never repeats the message of the error's
/// [`source`](core::error::Error::source): print the chain (e.g. anyhow's
/// `{:#}`) to see every cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame or message was invalid, or the peer's protocol or version
    /// differs (see [`svmc_comm::Error`]).
    #[error(transparent)]
    Protocol(#[from] svmc_comm::Error),
    /// The peer closed the connection between two frames.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer reset the connection.
    #[error("connection reset by the peer")]
    Reset,
    /// The server closed or reset the connection before its `HELLO`: it
    /// is at its connection limit and could not even refuse with `busy`
    /// (WIRE.md R-CONN-5: a burst of newcomers beyond what it can hold),
    /// or it does not serve this protocol there. [`Error::is_refused`]
    /// says both this and `busy`.
    #[error(
        "the server closed the connection before its HELLO (at its connection limit, or not serving here)"
    )]
    ClosedBeforeHello,
    /// Nobody listens on the port: the connection was refused.
    #[error("connection refused on port {port}")]
    Refused {
        /// The port that refused.
        port: u32,
    },
    /// A step did not finish within its configured timeout. For
    /// [`Step::Read`] nothing of the next frame had arrived, so the stream
    /// is still in step (not fatal).
    #[error("timed out during {0}")]
    Timeout(Step),
    /// A frame's deadline passed after `got` bytes of it had arrived: the
    /// rest may still come, so the stream is out of step (fatal).
    #[error("timed out during {step}, {got} bytes into a frame")]
    TimeoutInFrame {
        /// The step that timed out.
        step: Step,
        /// Bytes of the frame (header included) received before.
        got: usize,
    },
    /// An earlier fatal error ended this client's connection or left its
    /// stream out of step; it refuses every call without touching the
    /// stream. That first error, with its own causes (an OS error, say), is
    /// the [`source`](core::error::Error::source).
    #[error("connection unusable after an earlier error: reconnect")]
    Poisoned {
        /// The first fatal error, shared by every call it failed. Match
        /// it here (`&*source`); through `source()` it is an `Arc<Error>`,
        /// whose own `source()` goes on down the chain.
        #[source]
        source: Arc<Error>,
    },
    /// The API was used in a way that cannot work, e.g. a blocking call
    /// while pipelined requests are unanswered. Nothing was sent.
    #[error("{0}")]
    Usage(&'static str),
    /// The hybrid vsock `CONNECT <port>` line was answered with something
    /// other than `OK <port>` (the bytes received are in the message).
    #[error("hybrid vsock CONNECT failed: {0}")]
    HybridConnect(String),
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
    /// The async client's reader and writer tasks are gone because the
    /// tokio runtime that ran its `hello` was shut down (a client belongs
    /// to that runtime). The peer may be fine: connect again.
    #[cfg(feature = "tokio")]
    #[error(
        "the tokio runtime that ran this client's hello() was shut down, and the client's I/O tasks with it: connect again"
    )]
    RuntimeGone,
    /// An operating-system error.
    #[cfg(feature = "std")]
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error (from `source()`).
        #[source]
        source: std::io::Error,
    },
    /// The virtio device failed.
    #[cfg(feature = "guest")]
    #[error("virtio: {0}")]
    Virtio(virtio_drivers::Error),
}

impl Error {
    /// Whether the server refused the connection at its connection limit:
    /// a fatal `ERROR` `busy` (code 7) instead of its `HELLO`, or a close
    /// before its `HELLO` ([`Error::ClosedBeforeHello`]). Try again later.
    pub fn is_refused(&self) -> bool {
        match self {
            Self::ClosedBeforeHello => true,
            Self::Protocol(svmc_comm::Error::Remote(pe)) => {
                pe.code == svmc_comm::frame::ProtocolErrorCode::Busy
            }
            _ => false,
        }
    }

    /// Whether the connection cannot be used any more after this error
    /// (the client is poisoned by it).
    ///
    /// Not fatal: a request refused before it was sent, a read timeout
    /// before any byte of a frame, a peer's non-fatal `ERROR` and a bad
    /// message whose frame was intact ([`svmc_comm::Error::is_fatal`]), misuse
    /// ([`Error::Usage`]). Everything else is fatal: the stream ended or
    /// may be out of step, or there is no connection.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Protocol(e) => e.is_fatal(),
            Self::Timeout(step) => *step != Step::Read,
            Self::Usage(_) => false,
            _ => true,
        }
    }

    /// A copy of this error for a second owner (a poisoned client keeps its
    /// first fatal error and returns the original). An OS error keeps its
    /// code, or else its kind and message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Protocol(e) => Self::Protocol(e.clone()),
            Self::Closed => Self::Closed,
            Self::Reset => Self::Reset,
            Self::ClosedBeforeHello => Self::ClosedBeforeHello,
            Self::Refused { port } => Self::Refused { port: *port },
            Self::Timeout(step) => Self::Timeout(*step),
            Self::TimeoutInFrame { step, got } => Self::TimeoutInFrame {
                step: *step,
                got: *got,
            },
            Self::Poisoned { source } => Self::Poisoned {
                source: source.clone(),
            },
            Self::Usage(what) => Self::Usage(what),
            Self::HybridConnect(what) => Self::HybridConnect(what.clone()),
            Self::UnexpectedPeer { expected, got } => Self::UnexpectedPeer {
                expected: *expected,
                got: *got,
            },
            Self::ShutDown => Self::ShutDown,
            #[cfg(feature = "tokio")]
            Self::RuntimeGone => Self::RuntimeGone,
            #[cfg(feature = "std")]
            Self::Io { context, source } => Self::Io {
                context: context.clone(),
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            #[cfg(feature = "guest")]
            Self::Virtio(e) => Self::Virtio(*e),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_errors_are_fatal() {
        let usable = [
            Error::Timeout(Step::Read),
            Error::Usage("x"),
            Error::Protocol(svmc_comm::Error::Malformed("x".into())),
            Error::Protocol(svmc_comm::Error::TooLargeToSend { len: 2, max: 1 }),
        ];
        for e in usable {
            assert!(!e.is_fatal(), "{e}");
        }
        let fatal = [
            Error::Timeout(Step::Write),
            Error::Timeout(Step::Hello),
            Error::TimeoutInFrame {
                step: Step::Read,
                got: 1,
            },
            Error::Closed,
            Error::Reset,
            Error::ShutDown,
            Error::Poisoned {
                source: Arc::new(Error::Closed),
            },
            Error::Protocol(svmc_comm::Error::Truncated {
                expected: 9,
                got: 1,
            }),
        ];
        for e in fatal {
            assert!(e.is_fatal(), "{e}");
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn display_leaves_the_source_to_source() {
        use core::error::Error as _;
        let e = Error::io("reading the socket", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "reading the socket");
        assert_eq!(e.source().map(|s| s.to_string()), Some("boom".into()));
    }

    #[cfg(feature = "std")]
    #[test]
    fn a_duplicate_keeps_the_os_error() {
        use core::error::Error as _;
        let reset = std::io::Error::from_raw_os_error(libc::ECONNRESET);
        let e = Error::io("reading a frame", reset).duplicate();
        let os = e.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(os.unwrap().raw_os_error(), Some(libc::ECONNRESET));
        let e = Error::io("x", std::io::Error::other("boom")).duplicate();
        assert_eq!(e.source().unwrap().to_string(), "boom");
        let e = Error::Poisoned {
            source: Arc::new(e),
        };
        assert_eq!(e.source().unwrap().to_string(), "x");
        assert!(matches!(e.duplicate(), Error::Poisoned { source } if source.to_string() == "x"));
    }
}
