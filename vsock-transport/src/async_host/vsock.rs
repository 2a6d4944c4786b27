//! AF_VSOCK with the `tokio-vsock` crate: the async counterparts of
//! [`crate::host_vsock::connect`] and [`crate::host_vsock::Listener`].
//!
//! ```no_run
//! # async fn f() -> vsock_transport::Result<()> {
//! use vsock_transport::Timeouts;
//! use vsock_transport::async_host::{Client, vsock};
//! use vsock_transport::comm::frame::DEFAULT_MAX_BODY;
//! use svmc::ServiceVm;
//!
//! // The guest with CID 3, service port 7001.
//! let stream = vsock::connect(3, 7001, &Timeouts::default()).await?;
//! // Answers up to 16 MiB (`max_body` bounds the body: payload + envelope).
//! let client = Client::<ServiceVm>::hello(stream, DEFAULT_MAX_BODY, &Timeouts::default()).await?;
//! # let _ = client;
//! // Connections from CID 3 only, to host port 7000.
//! let listener = vsock::Listener::bind(vsock_transport::host_vsock::CID_ANY, 7000, Some(3), Timeouts::default())?;
//! let (from_guest, cid) = listener.accept().await?;
//! # let _ = (from_guest, cid);
//! # Ok(())
//! # }
//! ```

use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

use super::within;
use crate::host_vsock::{io_error, map_connect_error};
use crate::{Error, Result, Step, Timeouts};

/// Connects to `cid:port` within [`Timeouts::connect`]. Nobody listening is
/// [`Error::Refused`], as with [`crate::host_vsock::connect`].
pub async fn connect(cid: u32, port: u32, timeouts: &Timeouts) -> Result<VsockStream> {
    let what = || format!("connecting to vsock CID {cid} port {port}");
    within(timeouts.connect, Step::Connect, async {
        VsockStream::connect(VsockAddr::new(cid, port))
            .await
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ETIMEDOUT) => Error::Timeout(Step::Connect),
                _ => map_connect_error(what(), port, e),
            })
    })
    .await
}

/// Listens for AF_VSOCK connections on one port, accepting only peers
/// with the expected CID.
#[derive(Debug)]
pub struct Listener {
    listener: VsockListener,
    cid: u32,
    port: u32,
    expected_cid: Option<u32>,
    timeouts: Timeouts,
}

impl Listener {
    /// Listens on `cid:port` ([`crate::host_vsock::CID_ANY`] for any local
    /// CID, [`crate::host_vsock::PORT_ANY`] for a free port, see
    /// [`Listener::port`]); accepts only peers with CID `expected_cid`
    /// (`None`: any). Must be called within a tokio runtime.
    pub fn bind(
        cid: u32,
        port: u32,
        expected_cid: Option<u32>,
        timeouts: Timeouts,
    ) -> Result<Self> {
        let what = || format!("listening on vsock CID {cid} port {port}");
        let listener =
            VsockListener::bind(VsockAddr::new(cid, port)).map_err(|e| io_error(what(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| io_error(what(), e))?
            .port();
        Ok(Self {
            listener,
            cid,
            port,
            expected_cid,
            timeouts,
        })
    }

    /// The port listened on.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for a peer, at most [`Timeouts::accept`]; returns the stream
    /// and the peer's CID. A peer with another CID than expected is
    /// disconnected and reported as [`Error::UnexpectedPeer`]; the listener
    /// stays usable.
    pub async fn accept(&self) -> Result<(VsockStream, u32)> {
        within(self.timeouts.accept, Step::Accept, async {
            let (s, addr) = self.listener.accept().await.map_err(|e| {
                io_error(
                    format!("accepting on vsock CID {} port {}", self.cid, self.port),
                    e,
                )
            })?;
            if let Some(expected) = self.expected_cid
                && addr.cid() != expected
            {
                return Err(Error::UnexpectedPeer {
                    expected,
                    got: addr.cid(),
                });
            }
            Ok((s, addr.cid()))
        })
        .await
    }
}
