//! An svmc server in this process, behind a hybrid vsock socket, for the
//! suites that check a peer from raw bytes without a VM (the conformance
//! suite in plain `cargo test`).
//!
//! It plays the VM's vsock device the way vhost-device-vsock does for a
//! host-initiated connection: it listens on a Unix socket, reads
//! `CONNECT <port>\n`, answers `OK <port>\n` for [`SERVICE_PORT`] (and
//! hangs up for any other port, as the device does when nobody listens),
//! then serves the connection with the guest's own handler,
//! [`svmc::server::Service`], on `vsock_transport::rpc::serve`: one
//! blocking connection per thread, every extension on, no connection
//! limit. So it is the service and the rpc loop the firmware and the Linux
//! service share, not their event loops (`rpc::many`), their limits or
//! their device.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use svmc::server::Service;
use svmc::{GuestInfo, SERVICE_PORT, ServiceVm};
use svmc_comm::Protocol;
use svmc_comm::frame::DEFAULT_MAX_BODY;
use vsock_transport::Timeouts;
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::hybrid::{CONNECT, LINE_END, MAX_REPLY_LEN, OK};
use vsock_transport::rpc::{self, ServeConfig};

/// The name the in-process server gives in `GuestInfo::firmware`.
pub const FIRMWARE: &str = "svmc-inproc";

/// How long a served connection may stay silent between frames, and a
/// frame or the `CONNECT` line take, before the server gives up on it.
const IDLE: Duration = Duration::from_secs(60);

/// A running in-process server; stopped (and its socket removed) on drop.
/// Connections still open then end when their clients close them.
pub struct InProcess {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Binds a fresh socket in a temporary directory and starts accepting.
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("svmc-inproc-").tempdir()?;
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("inproc-accept".into())
                .spawn(move || accept_loop(&listener, &stop))?
        };
        Ok(Self {
            _dir: dir,
            uds,
            stop,
            accept: Some(accept),
        })
    }

    /// The hybrid vsock socket to `CONNECT` through.
    pub fn uds(&self) -> &Path {
        &self.uds
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.uds);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool) {
    for s in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(s) = s else { continue };
        let _ = thread::Builder::new()
            .name("inproc-conn".into())
            .spawn(move || device(s));
    }
}

/// The device's side of one connection: the `CONNECT` line, then the
/// service.
fn device(mut s: UnixStream) {
    if s.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    let Some(port) = read_connect(&mut s) else {
        return;
    };
    if port != SERVICE_PORT {
        return;
    }
    if s.write_all(format!("{OK}{port}\n").as_bytes()).is_err() {
        return;
    }
    let peer = Peer::Other(format!("in-process client of port {port}"));
    let mut conn = HostStream::new(s, peer, Timeouts::uniform(IDLE));
    let mut service = Service::new(info);
    let _ = rpc::serve::<ServiceVm, _, _>(&mut conn, &mut service, ServeConfig::default());
}

/// Reads `CONNECT <port>\n` a byte at a time (nothing after it may be
/// read here); `None` if the client hangs up or sends anything else.
fn read_connect(s: &mut UnixStream) -> Option<u32> {
    let mut line = Vec::new();
    let mut b = [0u8];
    while line.last() != Some(&LINE_END) {
        if line.len() > MAX_REPLY_LEN || s.read(&mut b).ok()? != 1 {
            return None;
        }
        line.push(b[0]);
    }
    let line = std::str::from_utf8(&line).ok()?;
    line.strip_prefix(CONNECT)?.trim_end().parse().ok()
}

fn info() -> GuestInfo {
    GuestInfo {
        firmware: FIRMWARE.into(),
        firmware_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: ServiceVm::VERSION,
        arch: std::env::consts::ARCH.into(),
        max_body: DEFAULT_MAX_BODY,
        heap: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use svmc::{Request, Response};
    use vsock_transport::rpc::Client;

    #[test]
    fn serves_the_service_port_and_hangs_up_on_others() {
        let server = InProcess::start().unwrap();
        let t = Timeouts::uniform(Duration::from_secs(5));
        let conn = vsock_transport::hybrid::connect(server.uds(), SERVICE_PORT, &t).unwrap();
        let mut c = Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY).unwrap();
        assert_eq!(
            c.call(&Request::Reverse(b"abc".to_vec())).unwrap(),
            Response::Reverse(b"cba".to_vec())
        );
        match c.call(&Request::Info).unwrap() {
            Response::Info(i) => assert_eq!(i.firmware, FIRMWARE),
            other => panic!("{other:?}"),
        }
        c.close().unwrap();
        assert!(vsock_transport::hybrid::connect(server.uds(), SERVICE_PORT + 1, &t).is_err());
    }
}
