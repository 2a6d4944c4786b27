//! A conversation with a service VM: launch it (or attach to a running
//! one), check the protocol version, send requests, power it off.
//!
//! [`Session`] is generic over the protocol: `Session::<MyProtocol>::connect`
//! talks to any service VM (e.g. one built on `svmc-runtime`) with
//! [`Session::call`]. The default, `Session` alone, is svmc's own
//! protocol, with its conveniences ([`Session::reverse`],
//! [`Session::info`], [`Session::power_off`]).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use svmc::{GuestInfo, Request, Response, SERVICE_PORT, ServiceVm};
use svmc_comm::Protocol;
use svmc_comm::ext::{ConnStats, RequestMeta, ResponseMeta};
use svmc_comm::frame::DEFAULT_MAX_BODY;
use vsock_transport::rpc::Client;
use vsock_transport::{Connection, Timeouts};

use crate::launcher::{Vm, VmConfig};
use crate::{Error, Result};

/// Where the VM comes from.
#[derive(Debug, Clone)]
pub enum Attach {
    /// Launch a new VM and talk over its boot connection.
    Launch(Box<VmConfig>),
    /// Attach to a running VM through its hybrid vsock socket.
    Hybrid {
        /// The VM's hybrid vsock Unix socket (`uds_path`).
        uds_path: PathBuf,
        /// The guest's service port.
        port: u32,
    },
    /// Attach to a running VM through AF_VSOCK.
    Vsock {
        /// The guest's CID.
        cid: u32,
        /// The guest's service port.
        port: u32,
    },
}

/// How to open a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where the VM comes from.
    pub attach: Attach,
    /// Timeouts of each blocking step.
    pub timeouts: Timeouts,
    /// How long a launched guest may take to connect, in all.
    pub boot_timeout: Duration,
    /// Largest response body accepted.
    pub max_body: u32,
}

impl SessionConfig {
    /// Defaults for `attach`.
    pub fn new(attach: Attach) -> Self {
        Self {
            attach,
            timeouts: Timeouts::default(),
            boot_timeout: Duration::from_secs(30),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Attach through hybrid vsock to the default service port.
    pub fn hybrid(uds_path: impl Into<PathBuf>) -> Self {
        Self::new(Attach::Hybrid {
            uds_path: uds_path.into(),
            port: SERVICE_PORT,
        })
    }
}

/// The connection type sessions use, whichever the backend.
pub type BoxConnection = Box<dyn Connection + Send>;

/// An open, version-checked connection to a service VM speaking protocol
/// `P` (svmc's by default), and the VM itself if this session launched it.
pub struct Session<P: Protocol = ServiceVm> {
    // Field order matters: the client (and its socket) is dropped before the VM.
    client: Option<Client<BoxConnection, P>>,
    vm: Option<Vm>,
}

// A session (and its VM) may be opened on one thread and used or dropped
// on another (see `launcher::process` for why the VM survives that): keep
// both `Send`.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Session>();
    assert_send::<Vm>();
};

impl<P: Protocol> Session<P> {
    /// Launches or attaches, then exchanges `HELLO` frames for protocol
    /// `P`: `Session::<MyProtocol>::connect(&config)`. (svmc's own
    /// protocol: [`Session::open`].)
    pub fn connect(config: &SessionConfig) -> Result<Self> {
        match &config.attach {
            Attach::Launch(vm_config) => {
                let (vm, stream) =
                    crate::launcher::launch_ready(vm_config, config.boot_timeout, config.timeouts)?;
                let conn: BoxConnection = Box::new(stream);
                let client = Client::hello(conn, config.max_body).map_err(|e| Error::Guest {
                    source: e,
                    serial_log: vm.serial_log().to_path_buf(),
                })?;
                Ok(Self {
                    client: Some(client),
                    vm: Some(vm),
                })
            }
            Attach::Hybrid { uds_path, port } => {
                let stream = vsock_transport::hybrid::connect(uds_path, *port, &config.timeouts)?;
                Self::attached(Box::new(stream), config.max_body)
            }
            Attach::Vsock { cid, port } => {
                let stream = vsock_transport::host_vsock::connect(*cid, *port, &config.timeouts)?;
                Self::attached(Box::new(stream), config.max_body)
            }
        }
    }

    fn attached(conn: BoxConnection, max_body: u32) -> Result<Self> {
        Ok(Self {
            client: Some(Client::hello(conn, max_body)?),
            vm: None,
        })
    }

    fn wrap(&self, e: vsock_transport::Error) -> Error {
        match &self.vm {
            Some(vm) => Error::Guest {
                source: e,
                serial_log: vm.serial_log().to_path_buf(),
            },
            None => Error::Transport(e),
        }
    }

    /// Sends one request and returns the guest's response, including the
    /// protocol's error answers (svmc's [`Response::Err`]) as a value.
    pub fn call(&mut self, request: &P::Request) -> Result<P::Response> {
        let client = self
            .client
            .as_mut()
            .ok_or(vsock_transport::Error::ShutDown)?;
        match client.call(request) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.wrap(e)),
        }
    }

    /// [`Session::call`] with the request's meta (a deadline, a trace
    /// context, asking for the guest's timings and the connection's
    /// statistics: `svmc_comm::ext`); returns the answer's meta with it, if the
    /// guest sent one.
    pub fn call_with(
        &mut self,
        request: &P::Request,
        meta: &RequestMeta,
    ) -> Result<(P::Response, Option<ResponseMeta>)> {
        let client = self
            .client
            .as_mut()
            .ok_or(vsock_transport::Error::ShutDown)?;
        match client.call_with(request, meta) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.wrap(e)),
        }
    }

    /// Sends `request` as a request stream with `data` (read to its end,
    /// in bounded memory) and returns the answer; `progress` gets the bytes
    /// sent so far. Needs a guest that takes request streams.
    pub fn call_stream(
        &mut self,
        request: &P::Request,
        data: &mut dyn std::io::Read,
        progress: impl FnMut(u64),
    ) -> Result<P::Response> {
        let client = self
            .client
            .as_mut()
            .ok_or(vsock_transport::Error::ShutDown)?;
        match client.call_stream(request, data, progress) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.wrap(e)),
        }
    }

    /// Sends `request` taking its answer as a stream: the answer's data is
    /// written to `out` as it comes (any length, in bounded memory), then
    /// the final answer is returned. Needs a guest that sends answer
    /// streams.
    pub fn call_stream_answer(
        &mut self,
        request: &P::Request,
        out: &mut dyn std::io::Write,
    ) -> Result<P::Response> {
        let client = self
            .client
            .as_mut()
            .ok_or(vsock_transport::Error::ShutDown)?;
        match client.call_stream_answer(request, out) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.wrap(e)),
        }
    }

    /// Ends the conversation without `GOODBYE` and, for a launched VM,
    /// waits up to `timeout` for QEMU to exit and returns its status: after
    /// a request that powers the VM off.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.client.take();
        match self.vm.as_mut() {
            Some(vm) => Ok(Some(vm.wait_exit(timeout)?)),
            None => Ok(None),
        }
    }

    /// Ends the conversation with `GOODBYE` (the VM, if launched, is killed
    /// when the session is dropped; use [`Session::power_off`] to stop it
    /// cleanly).
    pub fn close(mut self) -> Result<()> {
        if let Some(c) = self.client.take() {
            c.close()?;
        }
        Ok(())
    }

    /// The largest request body the guest accepts.
    pub fn peer_max_body(&self) -> u32 {
        self.client.as_ref().map_or(0, |c| c.peer_max_body())
    }

    /// The VM, if this session launched it.
    pub fn vm(&mut self) -> Option<&mut Vm> {
        self.vm.as_mut()
    }

    /// The protocol client, e.g. to send raw bytes in tests.
    pub fn client(&mut self) -> Option<&mut Client<BoxConnection, P>> {
        self.client.as_mut()
    }
}

impl Session<ServiceVm> {
    /// Launches or attaches, then exchanges `HELLO` frames: a session of
    /// svmc's protocol ([`Session::connect`] for any other).
    pub fn open(config: &SessionConfig) -> Result<Self> {
        Self::connect(config)
    }

    /// Reverses `data` in the guest.
    pub fn reverse(&mut self, data: Vec<u8>) -> Result<Vec<u8>> {
        match self.call(&Request::Reverse(data))? {
            Response::Reverse(r) => Ok(r),
            Response::Err(e) => Err(Error::Service(e)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// What the guest reports about itself.
    pub fn info(&mut self) -> Result<GuestInfo> {
        match self.call(&Request::Info)? {
            Response::Info(i) => Ok(i),
            Response::Err(e) => Err(Error::Service(e)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// The SHA-256 of `data` (read to its end), computed in the guest from a
    /// request stream: any length, in bounded memory on both sides;
    /// `progress` gets the bytes sent so far.
    pub fn sha256(
        &mut self,
        data: &mut dyn std::io::Read,
        progress: impl FnMut(u64),
    ) -> Result<[u8; 32]> {
        match self.call_stream(&Request::Sha256, data, progress)? {
            Response::Sha256(d) => d.try_into().map_err(|d: Vec<u8>| {
                Error::UnexpectedResponse(format!("a digest of {} bytes", d.len()))
            }),
            Response::Err(e) => Err(Error::Service(e)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// `len` bytes of the guest's `prng` sequence from `seed`
    /// (`svmc::prng_fill`), written to `out` as they come: an answer
    /// stream of any length, in bounded memory on both sides. Returns the
    /// bytes the guest says it sent.
    pub fn prng(&mut self, seed: u64, len: u64, out: &mut dyn std::io::Write) -> Result<u64> {
        match self.call_stream_answer(&Request::Prng { seed, len }, out)? {
            Response::Prng(n) => Ok(n),
            Response::Err(e) => Err(Error::Service(e)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// Keeps the guest's CPU busy for `ms` milliseconds (long work, for
    /// tests of deadlines and cancellation); returns the milliseconds it
    /// spun.
    pub fn spin(&mut self, ms: u32) -> Result<u32> {
        match self.call(&Request::Spin(ms))? {
            Response::Spin(n) => Ok(n),
            Response::Err(e) => Err(Error::Service(e)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// What the guest reports about itself, and what it counted on this
    /// session's connection (`None` from a guest without the `meta`
    /// extension).
    pub fn info_and_stats(&mut self) -> Result<(GuestInfo, Option<ConnStats>)> {
        let meta = RequestMeta {
            stats: true,
            ..RequestMeta::default()
        };
        match self.call_with(&Request::Info, &meta)? {
            (Response::Info(i), m) => Ok((i, m.and_then(|m| m.stats))),
            (Response::Err(e), _) => Err(Error::Service(e)),
            (other, _) => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// Asks the guest to power off. For a launched VM, waits up to `timeout`
    /// for QEMU to exit and returns its status.
    pub fn power_off(mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        match self.call(&Request::PowerOff)? {
            Response::PowerOff => {}
            Response::Err(e) => return Err(Error::Service(e)),
            other => return Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
        self.wait_exit(timeout)
    }
}
