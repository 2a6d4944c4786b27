//! Readiness: waiting for the daemon's socket and for the guest's boot
//! connection, and relaunching a VM whose boot got stuck.
//!
//! A slow boot is not a stuck one. On a busy host (other builds, other
//! VMs) QEMU gets a small share of a core and the same boot takes many
//! times longer in wall time, but not in CPU time. So a boot attempt is
//! judged by the guest's progress ([`Watch`]): it is stuck only once QEMU
//! has used [`VmConfig::boot_attempt`] of CPU time since the guest last
//! wrote to its serial console (or since launch) without connecting. Only
//! then is the VM relaunched; otherwise it is waited for until the boot
//! timeout. A guest that waits without using the CPU (halted) is never
//! proven stuck, and ends at the boot timeout.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vsock_transport::Timeouts;
use vsock_transport::hybrid::HybridStream;

use super::{Vm, VmConfig};
use crate::{Error, Result};

/// How often [`Vm::wait_for_guest`] checks that QEMU still runs.
pub(super) const ACCEPT_SLICE: Duration = Duration::from_millis(10);

/// How often a boot attempt's progress is looked at.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A boot attempt's progress: whether QEMU has used `budget` of CPU time
/// since the guest last showed progress (its serial log grew) or, if it
/// never did, since launch.
#[derive(Debug)]
pub struct Watch {
    budget: Duration,
    log_len: u64,
    cpu_mark: Duration,
}

impl Watch {
    /// A watch for a VM just launched.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            log_len: 0,
            cpu_mark: Duration::ZERO,
        }
    }

    /// Takes QEMU's CPU time so far and the serial log's length now;
    /// returns whether the boot is stuck.
    pub fn stuck(&mut self, cpu: Duration, log_len: u64) -> bool {
        if log_len > self.log_len {
            self.log_len = log_len;
            self.cpu_mark = cpu;
            return false;
        }
        cpu.saturating_sub(self.cpu_mark) >= self.budget
    }
}

/// The CPU time (user + system, all threads) process `pid` has used, from
/// `/proc/<pid>/stat` fields 14 and 15.
fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; `rest`
    // starts at field 3.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

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
        match self.wait_connected(Instant::now() + timeout, timeout, None, timeouts)? {
            Some(stream) => Ok(stream),
            None => unreachable!("no watch, so never stuck"),
        }
    }

    /// Waits for the guest's boot connection until `deadline` (an error
    /// that names `timeout`), or until `watch` says that the boot is stuck
    /// (`None`).
    fn wait_connected(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        mut watch: Option<Watch>,
        timeouts: Timeouts,
    ) -> Result<Option<HybridStream>> {
        let qemu = self.pids().0;
        let mut looked = Instant::now();
        loop {
            let listener = self.listener.as_ref().ok_or(Error::AlreadyAccepted)?;
            match listener.accept() {
                Ok(mut stream) => {
                    stream.set_timeouts(timeouts);
                    return Ok(Some(stream));
                }
                Err(vsock_transport::Error::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.check_running()?;
            let now = Instant::now();
            if now > deadline {
                return Err(Error::GuestTimeout {
                    what: "connect to the host".into(),
                    timeout,
                    serial_log: self.serial_log.clone(),
                });
            }
            if let (Some(w), Some(pid)) = (watch.as_mut(), qemu)
                && now.duration_since(looked) >= PROGRESS_EVERY
            {
                looked = now;
                let log_len = std::fs::metadata(&self.serial_log).map_or(0, |m| m.len());
                if let Some(cpu) = cpu_time(pid)
                    && w.stuck(cpu, log_len)
                {
                    return Ok(None);
                }
            }
        }
    }
}

/// Most boot attempts [`launch_ready`] makes.
pub const BOOT_ATTEMPTS: u32 = 3;

/// Default CPU time (QEMU's, without progress on the serial console) after
/// which [`launch_ready`] takes a boot of the firmware for stuck and
/// relaunches it: the firmware connects after about 0.1-0.3 s of QEMU's
/// CPU time under TCG, so this is ten times that or more, and on a busy
/// host it is many times more in wall time.
pub const DEFAULT_BOOT_ATTEMPT: Duration = Duration::from_secs(3);

/// The same for a Linux guest (it boots in about 1.5-3 s under TCG).
pub const LINUX_BOOT_ATTEMPT: Duration = Duration::from_secs(60);

/// Relaunches by [`launch_ready`] in this process so far.
static RELAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many times [`launch_ready`] has relaunched a VM in this process.
pub fn relaunches() -> u64 {
    RELAUNCHES.load(Ordering::Relaxed)
}

/// Launches a VM and waits up to `boot_timeout` for its boot connection,
/// relaunching it (at most [`BOOT_ATTEMPTS`] launches) only when a boot is
/// stuck: QEMU used `config.boot_attempt` of CPU time without the guest
/// writing to its serial console or connecting (see the module docs); a
/// slow boot is waited for.
///
/// The relaunch is a last resort. vhost-device-vsock 0.3.0 can lose the
/// guest's first notification (it arrives before the daemon has enabled
/// the queue; about one boot in 30 to 60 here, under load), after which
/// virtio-drivers would wait for that TX buffer forever, spinning; the
/// firmware now notifies again until the device takes the buffer
/// (`guest/runtime/src/kick.rs`), so a relaunch means something else went wrong.
/// Each one is logged (info level) and counted ([`relaunches`]).
pub fn launch_ready(
    config: &VmConfig,
    boot_timeout: Duration,
    timeouts: Timeouts,
) -> Result<(Vm, HybridStream)> {
    let start = Instant::now();
    let deadline = start + boot_timeout;
    let budget = config.boot_attempt;
    let mut n = 1;
    loop {
        let mut vm = Vm::launch(config)?;
        let watch = Some(Watch::new(budget));
        if let Some(stream) = vm.wait_connected(deadline, boot_timeout, watch, timeouts)? {
            return Ok((vm, stream));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if n >= BOOT_ATTEMPTS || left < Duration::from_millis(500) {
            return Err(Error::GuestTimeout {
                what: format!(
                    "connect to the host (stuck: {n} boot attempts each used {budget:?} of CPU \
                     time without progress)"
                ),
                timeout: start.elapsed(),
                serial_log: vm.serial_log.clone(),
            });
        }
        // Info, not a warning: the relaunch is this function's job, and
        // host-cli's stderr stays one line on failure (`-v` shows it).
        let total = RELAUNCHES.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            attempt = n,
            relaunches = total,
            serial_log = %vm.serial_log.display(),
            "the guest used {budget:?} of CPU time without progress; relaunching it"
        );
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_slow_boot_is_not_stuck() {
        // Little CPU time, however long it takes in wall time (the watch
        // never sees wall time).
        let mut w = Watch::new(3 * S);
        for i in 0..1000u32 {
            assert!(!w.stuck(S * i / 1000 * 2, 0));
        }
    }

    #[test]
    fn a_boot_that_spins_without_progress_is_stuck() {
        let mut w = Watch::new(3 * S);
        assert!(!w.stuck(S, 0));
        assert!(!w.stuck(2 * S, 0));
        assert!(w.stuck(3 * S, 0));
    }

    #[test]
    fn serial_output_is_progress() {
        let mut w = Watch::new(3 * S);
        assert!(!w.stuck(2 * S, 10));
        assert!(!w.stuck(4 * S, 10));
        assert!(!w.stuck(4 * S, 20));
        assert!(!w.stuck(6 * S, 20));
        assert!(w.stuck(7 * S, 20));
    }

    #[test]
    fn cpu_time_of_a_busy_process_grows() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_time(me).unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
        assert!(cpu_time(u32::MAX).is_none());
    }
}
