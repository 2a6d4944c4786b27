//! Launching the service VM: the vsock device daemon and QEMU as child
//! processes in a private runtime directory, and tearing them down again.
//!
//! Order of events in [`Vm::launch`]:
//!
//! 1. A runtime directory with mode 0700 is created (unique per VM, so two
//!    launches never share a path): `$TMPDIR/svmc-<our pid>-<random>`.
//!    Directories left by processes that were killed with `SIGKILL` (and so
//!    could not clean up) are removed first
//!    ([`remove_stale_runtime_dirs`]).
//! 2. The host listener for the guest's boot connection (hybrid vsock,
//!    `<uds-path>_<host port>`) is bound before anything starts, so the guest
//!    can never connect too early.
//! 3. `vhost-device-vsock` starts; we wait for its `--socket` file to appear
//!    without connecting to it (QEMU is its one front end).
//! 4. QEMU starts with the guest image, its serial console going to a log
//!    file that outlives the VM and is named in every error.
//!
//! Children run in their own process group with `PR_SET_PDEATHSIG` set to
//! `SIGKILL`, forked by one long-lived launcher thread, so they outlive the
//! thread that launched the VM but never the process, even if it is killed
//! with `SIGKILL` (see [`process`] for how). [`Vm`]'s `Drop` kills and
//! reaps both and removes the runtime directory; [`install_signal_cleanup`]
//! does the same for every live VM on Ctrl-C or `SIGTERM`.
//!
//! A VM launched with [`VmConfig::detached`] is the exception: its children
//! start their own session without the parent-death signal, and
//! [`Vm::detach`] hands them over (pids, runtime directory) to a caller that
//! keeps them running after this process exits (`host-cli start`, with the
//! registry in [`crate::registry`]).
//!
//! The module is split by concern: [`process`] spawns the children and
//! cleans up after them (also on Ctrl-C), [`runtime`] owns the runtime and
//! log directories, [`args`] builds QEMU's command line from the machine
//! table ([`crate::machine`]), and [`ready`] waits for the daemon and the
//! guest.

pub mod args;
pub mod detach;
pub mod process;
pub mod ready;
pub mod runtime;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use svmc_comm::{HOST_PORT, SERVICE_PORT};
use vsock_transport::Timeouts;
use vsock_transport::hybrid::{HybridStream, Listener as HybridListener};

use crate::accel::{Accel, choose_accel};
use crate::image::{check_bzimage, check_image};
use crate::tools::Tools;
use crate::{Arch, Error, Result, machine};

pub use detach::Detached;
pub use process::{install_signal_cleanup, kill_all};
pub use ready::{
    BOOT_ATTEMPTS, DEFAULT_BOOT_ATTEMPT, LINUX_BOOT_ATTEMPT, launch_ready, relaunches,
};
pub use runtime::{default_log_dir, remove_stale_runtime_dirs};

/// The guest CID the device daemon gives the VM.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// Kernel command line of a Linux guest ([`VmConfig::linux`]): serial
/// console, quiet, no self-tests or checks that cost seconds under TCG,
/// one UART, and power off rather than reboot after a panic.
pub const LINUX_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "rdinit=/init",
    "cryptomgr.notests",
    "no_timer_check",
    "tsc=reliable",
    "8250.nr_uarts=1",
    "pci=noaer",
];

/// Everything needed to launch a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest architecture.
    pub arch: Arch,
    /// Guest firmware ELF, or a Linux bzImage if [`VmConfig::initrd`] is set.
    pub image: PathBuf,
    /// The initramfs of a Linux guest (`-initrd`); `None` for the firmware.
    pub initrd: Option<PathBuf>,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Accelerator.
    pub accel: Accel,
    /// QEMU machine type, a name from [`crate::machine::MACHINES`]; `None`
    /// for the default of the architecture (`microvm` for x86_64, `virt`
    /// for aarch64; [`VmConfig::linux`] sets `q35`).
    pub machine: Option<String>,
    /// Guest CID.
    pub cid: u32,
    /// Host port the guest connects to at boot.
    pub host_port: u32,
    /// Port the guest listens on.
    pub service_port: u32,
    /// Extra kernel command-line words for the guest (e.g. `svmc.log=debug`).
    pub cmdline: Vec<String>,
    /// Directory for the serial, QEMU and daemon logs; `None` for the
    /// default (`$XDG_STATE_HOME/svmc/logs` or `~/.local/state/svmc/logs`).
    pub log_dir: Option<PathBuf>,
    /// The programs to run; `None` to look them up ([`Tools::find`]).
    pub tools: Option<Tools>,
    /// How long the daemon may take to create its socket.
    pub daemon_timeout: Duration,
    /// TX buffer size of the device daemon (bytes it advertises as credit).
    pub daemon_tx_buffer: u32,
    /// Extra QEMU arguments, appended last.
    pub extra_qemu_args: Vec<String>,
    /// How much CPU time QEMU may use without progress (no serial output,
    /// no connection) before [`launch_ready`] takes the boot for stuck and
    /// relaunches the VM; wall time does not count (a busy host makes a
    /// boot slow, not stuck).
    pub boot_attempt: Duration,
    /// Start QEMU and the daemon detached: in their own session, without
    /// `PR_SET_PDEATHSIG`, so that [`Vm::detach`] can leave them running
    /// after this process exits. Until then `Vm` owns them as usual.
    pub detached: bool,
    /// Create the runtime directory at `<this>/run` (the directory must
    /// exist, owner-only) instead of `$TMPDIR/svmc-<pid>-<random>`; for a VM
    /// that outlives this process and so must not be swept as stale.
    pub runtime_parent: Option<PathBuf>,
}

impl VmConfig {
    /// Defaults for `arch` with `image`.
    pub fn new(arch: Arch, image: impl Into<PathBuf>) -> Self {
        Self {
            arch,
            image: image.into(),
            initrd: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            accel: Accel::Auto,
            machine: None,
            cid: DEFAULT_GUEST_CID,
            host_port: HOST_PORT,
            service_port: SERVICE_PORT,
            cmdline: Vec::new(),
            log_dir: None,
            tools: None,
            daemon_timeout: Duration::from_secs(10),
            daemon_tx_buffer: 256 * 1024,
            extra_qemu_args: Vec::new(),
            boot_attempt: DEFAULT_BOOT_ATTEMPT,
            detached: false,
            runtime_parent: None,
        }
    }

    /// Defaults for a Linux guest: `kernel` (a bzImage) with `initrd`, the
    /// quick-boot command line [`LINUX_CMDLINE`] and at least 128 MiB of
    /// RAM (the kernel needs about 80).
    pub fn linux(arch: Arch, kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(arch, kernel);
        c.initrd = Some(initrd.into());
        c.cmdline = LINUX_CMDLINE.iter().map(|s| s.to_string()).collect();
        // Its virtio and vsock drivers are the PCI ones (the kernel's
        // virtio_pci modules), so it runs on q35 whatever the default.
        c.machine = Some("q35".into());
        // A kernel takes seconds to boot under TCG, and its virtio driver is
        // not the one that loses its first packet: no early relaunch.
        c.boot_attempt = LINUX_BOOT_ATTEMPT;
        c
    }
}

/// A running VM. Dropping it kills QEMU and the daemon, reaps them and
/// removes the runtime directory; the logs stay.
pub struct Vm {
    runtime: Option<tempfile::TempDir>,
    uds_path: PathBuf,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    daemon_log: PathBuf,
    listener: Option<HybridListener>,
    procs: Arc<process::Procs>,
    qemu_status: Option<ExitStatus>,
    accel: Accel,
    detached: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Vm {
    /// Launches the daemon and QEMU with `config`'s image and returns once
    /// QEMU runs. Wait for the guest with [`Vm::wait_for_guest`].
    pub fn launch(config: &VmConfig) -> Result<Self> {
        match &config.runtime_parent {
            Some(p) => runtime::check_runtime_parent(p, "XDG_RUNTIME_DIR (or TMPDIR without it)")?,
            None => runtime::check_runtime_parent(&std::env::temp_dir(), "TMPDIR")?,
        }
        match &config.initrd {
            None => check_image(&config.image, config.arch)?,
            Some(initrd) => {
                check_bzimage(&config.image, config.arch)?;
                if !initrd.is_file() {
                    return Err(Error::Image {
                        path: initrd.clone(),
                        reason: "initramfs not found (build it with \
                                 `cargo xtask build-image --guest linux`)"
                            .into(),
                    });
                }
            }
        }
        let tools = match &config.tools {
            Some(t) => t.clone(),
            None => Tools::find(config.arch)?,
        };
        let machine = machine::find(config.arch, config.machine.as_deref())?;
        let accel = choose_accel(config.accel, machine, &tools.qemu);

        let runtime = runtime::create_runtime_dir(config.runtime_parent.as_deref())?;
        let uds_path = runtime.path().join("vm.vsock");
        let vhost_socket = runtime.path().join("vhost.sock");
        let log_dir = config.log_dir.clone().unwrap_or_else(default_log_dir);
        runtime::prepare_log_dir(&log_dir)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let base = format!("vm-{stamp}-{}-{id}", std::process::id());
        let serial_log = log_dir.join(format!("{base}.serial.log"));
        let qemu_log = log_dir.join(format!("{base}.qemu.log"));
        let daemon_log = log_dir.join(format!("{base}.daemon.log"));

        let procs = process::Procs::register(runtime.path());
        let mut vm = Self {
            runtime: Some(runtime),
            uds_path,
            serial_log,
            qemu_log,
            daemon_log,
            listener: None,
            procs,
            qemu_status: None,
            accel,
            detached: config.detached,
        };

        // Accept in short slices so that QEMU can be watched while waiting.
        let slice = Timeouts {
            accept: Some(ready::ACCEPT_SLICE),
            ..Timeouts::default()
        };
        vm.listener = Some(HybridListener::bind(&vm.uds_path, config.host_port, slice)?);

        // The device daemon.
        let daemon_err = File::create(&vm.daemon_log)
            .map_err(|e| Error::io(format!("creating {}", vm.daemon_log.display()), e))?;
        let mut cmd = process::child_command(&tools.daemon, config.detached);
        cmd.arg("--vm")
            .arg(format!(
                "guest-cid={},socket={},uds-path={},tx-buffer-size={}",
                config.cid,
                vhost_socket.display(),
                vm.uds_path.display(),
                config.daemon_tx_buffer
            ))
            .stdout(Stdio::null())
            .stderr(daemon_err)
            .env("RUST_LOG", "warn");
        tracing::debug!(?cmd, "starting the device daemon");
        let daemon = process::spawn(cmd).map_err(|e| Error::Spawn {
            program: tools.daemon.clone(),
            source: e,
        })?;
        vm.procs.lock().daemon = Some(daemon);
        vm.wait_for_daemon_socket(&vhost_socket, config.daemon_timeout)?;

        // QEMU.
        let qemu_err = File::create(&vm.qemu_log)
            .map_err(|e| Error::io(format!("creating {}", vm.qemu_log.display()), e))?;
        let mut cmd = process::child_command(&tools.qemu, config.detached);
        cmd.args(args::qemu_args(
            config,
            machine,
            accel,
            &vhost_socket,
            &vm.serial_log,
        ))
        .stdout(Stdio::null())
        .stderr(qemu_err);
        tracing::debug!(?cmd, "starting QEMU");
        let qemu = process::spawn(cmd).map_err(|e| Error::Spawn {
            program: tools.qemu.clone(),
            source: e,
        })?;
        vm.procs.lock().qemu = Some(qemu);
        tracing::info!(accel = %accel, serial_log = %vm.serial_log.display(), "VM launched");
        Ok(vm)
    }

    /// Fails with [`Error::QemuExited`] if QEMU is no longer running.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            return Err(Error::QemuExited {
                status,
                serial_log: self.serial_log.clone(),
                qemu_log: self.qemu_log.clone(),
            });
        }
        if let Some(status) = self.daemon_exited() {
            return Err(Error::DaemonFailed {
                reason: format!("exited with {status} while the VM was running"),
                log: self.daemon_log.clone(),
            });
        }
        Ok(())
    }

    /// QEMU's exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.qemu_status {
            return Ok(Some(s));
        }
        let mut children = self.procs.lock();
        let Some(q) = children.qemu.as_mut() else {
            return Ok(None);
        };
        let s = q.try_wait().map_err(|e| Error::io("waiting for QEMU", e))?;
        drop(children);
        self.qemu_status = s;
        Ok(s)
    }

    /// The daemon's exit status if it has exited.
    fn daemon_exited(&self) -> Option<ExitStatus> {
        let mut children = self.procs.lock();
        children.daemon.as_mut()?.try_wait().ok().flatten()
    }

    /// Connects to a port the guest listens on (host-initiated).
    pub fn connect(&self, port: u32, timeouts: Timeouts) -> Result<HybridStream> {
        Ok(vsock_transport::hybrid::connect(
            &self.uds_path,
            port,
            &timeouts,
        )?)
    }

    /// Waits up to `timeout` for QEMU to exit (after a power-off request);
    /// kills it if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                self.kill();
                return Err(Error::GuestTimeout {
                    what: "power off".into(),
                    timeout,
                    serial_log: self.serial_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills QEMU and the daemon and reaps them.
    pub fn kill(&mut self) {
        if let Some(s) = self.procs.lock().kill() {
            self.qemu_status.get_or_insert(s);
        }
    }

    /// The hybrid vsock socket of this VM (for attaching other clients).
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The guest's serial console log (kept after the VM is gone).
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// QEMU's own stderr.
    pub fn qemu_log(&self) -> &Path {
        &self.qemu_log
    }

    /// The private runtime directory (sockets), removed on drop.
    pub fn runtime_dir(&self) -> &Path {
        self.runtime
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new(""))
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Process ids of QEMU and the daemon, until [`Vm::kill`]. (Once QEMU
    /// has been reaped its pid may belong to another process: for
    /// diagnostics only.)
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        let children = self.procs.lock();
        (
            children.qemu.as_ref().map(Child::id),
            children.daemon.as_ref().map(Child::id),
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.listener.take();
        self.kill();
        if let Some(d) = self.runtime.take() {
            let _ = d.close();
        }
    }
}
