//! Hybrid vsock with tokio's Unix sockets: the same set-up as the blocking
//! [`crate::hybrid`] (its module docs describe the `CONNECT`/`OK` line and
//! the `<uds_path>_<port>` listener).
//!
//! ```no_run
//! # async fn f() -> vsock_transport::Result<()> {
//! use vsock_transport::Timeouts;
//! use vsock_transport::async_host::{Client, hybrid};
//! use vsock_transport::comm::frame::DEFAULT_MAX_BODY;
//! use svmc::ServiceVm;
//!
//! // Host to guest: CONNECT to guest port 7001 through the VM's socket.
//! let stream = hybrid::connect("/tmp/vm.vsock".as_ref(), 7001, &Timeouts::default()).await?;
//! // Answers up to 16 MiB (`max_body` bounds the body: payload + envelope).
//! let client = Client::<ServiceVm>::hello(stream, DEFAULT_MAX_BODY, &Timeouts::default()).await?;
//! # let _ = client;
//! // Guest to host: the guest connects to host port 7000.
//! let listener = hybrid::Listener::bind("/tmp/vm.vsock".as_ref(), 7000, Timeouts::default())?;
//! let from_guest = listener.accept().await?;
//! # let _ = from_guest;
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::within;
use crate::hybrid::{CONNECT, LINE_END, MAX_REPLY_LEN, parse_reply};
use crate::{Error, Result, Step, Timeouts};

/// Connects to guest port `port` through the device socket `uds_path`, as
/// [`crate::hybrid::connect`] does: bounded by [`Timeouts::connect`] and
/// [`Timeouts::hybrid_connect`], with the same errors
/// ([`Error::Refused`] when the device hangs up without a reply,
/// [`Error::HybridConnect`] for a wrong one). The reply is read one byte at
/// a time, so no byte of the peer's first frame is consumed.
pub async fn connect(uds_path: &Path, port: u32, timeouts: &Timeouts) -> Result<UnixStream> {
    let io_err = |e| {
        Error::io(
            format!(
                "connecting to the hybrid vsock socket {} (is the VM's vsock device running?)",
                uds_path.display()
            ),
            e,
        )
    };
    let mut s = within(timeouts.connect, Step::Connect, async {
        UnixStream::connect(uds_path).await.map_err(io_err)
    })
    .await?;
    within(timeouts.hybrid_connect, Step::HybridConnect, async {
        let refused = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                Error::Refused { port }
            }
            _ => io_err(e),
        };
        s.write_all(format!("{CONNECT}{port}\n").as_bytes())
            .await
            .map_err(refused)?;
        let mut line = Vec::with_capacity(MAX_REPLY_LEN);
        loop {
            if line.len() == MAX_REPLY_LEN {
                return Err(Error::HybridConnect(format!(
                    "no end of line within {MAX_REPLY_LEN} bytes of the reply to CONNECT {port}: \"{}\"",
                    line.escape_ascii()
                )));
            }
            let mut b = [0u8; 1];
            let n = match s.read(&mut b).await {
                Ok(n) => n,
                Err(e) if line.is_empty() => return Err(refused(e)),
                Err(e) => return Err(io_err(e)),
            };
            if n == 0 {
                if line.is_empty() {
                    return Err(Error::Refused { port });
                }
                return Err(Error::HybridConnect(format!(
                    "connection closed after \"{}\", before the end of the reply to CONNECT {port}",
                    line.escape_ascii()
                )));
            }
            line.push(b[0]);
            if b[0] == LINE_END {
                return parse_reply(&line).map(drop);
            }
        }
    })
    .await?;
    Ok(s)
}

/// Listens for guest-initiated connections to one host port on
/// `<uds_path>_<port>`. The socket file is created as the blocking
/// [`crate::hybrid::Listener`] creates it (owner-only before `listen(2)`, a
/// stale file replaced) and removed when this is dropped.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::UnixListener,
    timeouts: Timeouts,
    // Owns the socket file; dropped after `listener`.
    blocking: crate::hybrid::Listener,
}

impl Listener {
    /// Listens on `<uds_path>_<port>` ([`crate::hybrid::listener_path`]).
    /// Must be called within a tokio runtime.
    pub fn bind(uds_path: &Path, port: u32, timeouts: Timeouts) -> Result<Self> {
        let blocking = crate::hybrid::Listener::bind(uds_path, port, timeouts)?;
        let io_err = |e| Error::io(format!("listening on {}", blocking.path().display()), e);
        let std_listener = blocking.as_std().try_clone().map_err(io_err)?;
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io_err)?;
        Ok(Self {
            listener,
            timeouts,
            blocking,
        })
    }

    /// The socket file: `<uds_path>_<port>`.
    pub fn path(&self) -> &Path {
        self.blocking.path()
    }

    /// Waits for the guest to connect, at most [`Timeouts::accept`]
    /// ([`Error::Timeout`]`(`[`Step::Accept`]`)`).
    pub async fn accept(&self) -> Result<UnixStream> {
        within(self.timeouts.accept, Step::Accept, async {
            let (s, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| Error::io(format!("accepting on {}", self.path().display()), e))?;
            Ok(s)
        })
        .await
    }
}
