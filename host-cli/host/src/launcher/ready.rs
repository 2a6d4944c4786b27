//! Readiness: waiting for the daemon's socket and for the guest's boot
//! connection, and relaunching a VM whose boot got stuck.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vsock_transport::Timeouts;
use vsock_transport::hybrid::HybridStream;

use super::{Vm, VmConfig};
use crate::{Error, Result};

/// How often [`Vm::wait_for_guest`] checks that QEMU still runs.
pub(super) const ACCEPT_SLICE: Duration = Duration::from_millis(10);

impl Vm {
    pub(super) fn wait_for_daemon_socket(
        &mut self,
        socket: &Path,
        timeout: Duration,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.daemon_exited() {
                return Err(Error::DaemonFailed {
                    reason: format!("exited with {status} before creating its socket"),
                    log: self.daemon_log.clone(),
                });
            }
            if start.elapsed() > timeout {
                return Err(Error::DaemonFailed {
                    reason: format!("did not create {} within {timeout:?}", socket.display()),
                    log: self.daemon_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the guest's boot connection (its readiness signal) for at
    /// most `timeout`, watching QEMU: if QEMU exits first, the error says so
    /// and names the serial log.
    pub fn wait_for_guest(
        &mut self,
        timeout: Duration,
        timeouts: Timeouts,
    ) -> Result<HybridStream> {
        let start = Instant::now();
        loop {
            let listener = self.listener.as_ref().ok_or(Error::AlreadyAccepted)?;
            match listener.accept() {
                Ok(mut stream) => {
                    stream.set_timeouts(timeouts);
                    return Ok(stream);
                }
                Err(vsock_transport::Error::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.check_running()?;
            if start.elapsed() > timeout {
                return Err(Error::GuestTimeout {
                    what: "connect to the host".into(),
                    timeout,
                    serial_log: self.serial_log.clone(),
                });
            }
        }
    }
}

/// Most boot attempts [`launch_ready`] makes.
pub const BOOT_ATTEMPTS: u32 = 3;

/// Default time one boot attempt of the firmware may take before
/// [`launch_ready`] relaunches the VM (it answers within a fraction of a
/// second even under TCG).
pub const DEFAULT_BOOT_ATTEMPT: Duration = Duration::from_secs(3);

/// Boot attempt time of a Linux guest (it boots in about 1.5-3 s under TCG).
pub const LINUX_BOOT_ATTEMPT: Duration = Duration::from_secs(60);

/// Relaunches by [`launch_ready`] in this process so far.
static RELAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many times [`launch_ready`] has relaunched a VM in this process.
pub fn relaunches() -> u64 {
    RELAUNCHES.load(Ordering::Relaxed)
}

/// Launches a VM and waits for its boot connection, relaunching it when an
/// attempt takes longer than `config.boot_attempt` and `boot_timeout` leaves
/// room for another (at most [`BOOT_ATTEMPTS`]).
///
/// The relaunch is a last resort. vhost-device-vsock 0.3.0 can lose the
/// guest's first notification (it arrives before the daemon has enabled
/// the queue; about one boot in 30 to 60 here, under load), after which
/// virtio-drivers would wait for that TX buffer forever; the firmware now
/// notifies again until the device takes the buffer (`guest/runtime/src/kick.rs`),
/// so a relaunch means something else went wrong. Each one is logged (info
/// level) and counted ([`relaunches`]). A `boot_timeout` no longer than
/// `config.boot_attempt` means a single attempt.
pub fn launch_ready(
    config: &VmConfig,
    boot_timeout: Duration,
    timeouts: Timeouts,
) -> Result<(Vm, HybridStream)> {
    let attempt = config.boot_attempt;
    let deadline = Instant::now() + boot_timeout;
    let mut n = 1;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let this = left.min(attempt);
        let mut vm = Vm::launch(config)?;
        match vm.wait_for_guest(this, timeouts) {
            Ok(stream) => return Ok((vm, stream)),
            Err(Error::GuestTimeout { serial_log, .. })
                if n < BOOT_ATTEMPTS && left > this + Duration::from_millis(500) =>
            {
                // Info, not a warning: the relaunch is this function's job,
                // and host-cli's stderr stays one line on failure (`-v`
                // shows it).
                let total = RELAUNCHES.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    attempt = n,
                    relaunches = total,
                    serial_log = %serial_log.display(),
                    "the guest did not connect within {this:?}; relaunching it"
                );
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
