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
//! `SIGKILL`, so they never outlive the process that launched them, even if
//! it is killed with `SIGKILL`. [`Vm`]'s `Drop` kills and reaps both and
//! removes the runtime directory; [`install_signal_cleanup`] does the same
//! for every live VM on Ctrl-C or `SIGTERM`.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use comm::service::{HOST_PORT, SERVICE_PORT};
use vsock_transport::Timeouts;
use vsock_transport::hybrid::{HybridStream, Listener as HybridListener};

use crate::accel::{Accel, choose_accel};
use crate::image::{check_bzimage, check_image};
use crate::tools::Tools;
use crate::{Arch, Error, Result};

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

/// How often [`Vm::wait_for_guest`] checks that QEMU still runs.
const ACCEPT_SLICE: Duration = Duration::from_millis(10);

/// How many VM log files (serial, QEMU, daemon) to keep in the log directory.
const KEEP_LOG_FILES: usize = 96;

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
    /// QEMU machine type; `None` for the default of the architecture
    /// (`q35` for x86_64, `virt` for aarch64).
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
    /// How long one boot attempt may take before [`launch_ready`]
    /// relaunches the VM.
    pub boot_attempt: Duration,
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
        }
    }

    /// Defaults for a Linux guest: `kernel` (a bzImage) with `initrd`, the
    /// quick-boot command line [`LINUX_CMDLINE`] and at least 128 MiB of
    /// RAM (the kernel needs about 80).
    pub fn linux(arch: Arch, kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(arch, kernel);
        c.initrd = Some(initrd.into());
        c.cmdline = LINUX_CMDLINE.iter().map(|s| s.to_string()).collect();
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
    daemon: Option<Child>,
    qemu: Option<Child>,
    qemu_status: Option<ExitStatus>,
    accel: Accel,
    id: u64,
}

/// Live VMs, for [`install_signal_cleanup`]: (id, child pids, runtime dir).
static LIVE: Mutex<Vec<(u64, Vec<u32>, PathBuf)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn register(id: u64, pid: u32, dir: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = live.iter_mut().find(|e| e.0 == id) {
        entry.1.push(pid);
    } else {
        live.push((id, vec![pid], dir.to_path_buf()));
    }
}

fn register_dir(id: u64, dir: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !live.iter().any(|e| e.0 == id) {
        live.push((id, Vec::new(), dir.to_path_buf()));
    }
}

fn unregister(id: u64) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|e| e.0 != id);
}

/// Kills every live VM's processes and removes their runtime directories.
/// Safe to call from a signal-handling thread.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (_, pids, dir) in live.iter() {
        for &pid in pids {
            // SAFETY: kill(2) with a pid we spawned and SIGKILL has no memory
            // effects; at worst the pid is already gone (ESRCH).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = fs::remove_dir_all(dir);
    }
}

/// Installs a Ctrl-C / `SIGTERM` / `SIGHUP` handler that kills all live VMs,
/// removes their runtime directories and exits with status 130.
pub fn install_signal_cleanup() -> Result<()> {
    ctrlc::set_handler(|| {
        kill_all();
        eprintln!("host-cli: interrupted; VM stopped and cleaned up");
        std::process::exit(130);
    })
    .map_err(|e| Error::Io {
        context: "installing the Ctrl-C handler".into(),
        source: std::io::Error::other(e),
    })
}

/// The default log directory.
pub fn default_log_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("svmc").join("logs")
}

/// Start of a runtime directory's name: `svmc-<pid of its owner>-<random>`.
const RUNTIME_PREFIX: &str = "svmc-";

/// Removes the runtime directories in `tmp` (`svmc-<pid>-*`) that belong
/// to this user and whose owner process is gone: a process killed with
/// `SIGKILL` cannot remove its own (its children die with it, but the
/// directory with their sockets stays).
pub fn remove_stale_runtime_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUNTIME_PREFIX))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || pid == std::process::id() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::debug!(dir = %e.path().display(), pid, "removing a stale runtime directory");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn prune_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= KEEP_LOG_FILES {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - KEEP_LOG_FILES] {
        let _ = fs::remove_file(p);
    }
}

/// Makes a child die with us and keeps it out of our terminal's process
/// group (so Ctrl-C reaches only us, and we stop it in order).
fn child_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    let parent = std::process::id() as libc::pid_t;
    let in_child = move || {
        // SAFETY: async-signal-safe system calls on this process only, no
        // memory passed (here and in the blocks below).
        unsafe { libc::setpgid(0, 0) };
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect (we would have
        // been re-parented to init or a subreaper).
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            // SAFETY: as above.
            let me = unsafe { libc::getpid() };
            // SAFETY: as above.
            unsafe { libc::kill(me, libc::SIGKILL) };
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (setpgid, prctl, getppid, kill);
    // it does not allocate.
    unsafe { cmd.pre_exec(in_child) };
    cmd.stdin(Stdio::null());
    cmd
}

impl Vm {
    /// Launches the daemon and QEMU with `config`'s image and returns once
    /// QEMU runs. Wait for the guest with [`Vm::wait_for_guest`].
    pub fn launch(config: &VmConfig) -> Result<Self> {
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
        let accel = choose_accel(config.accel, config.arch, &tools.qemu);

        remove_stale_runtime_dirs(&std::env::temp_dir());
        let runtime = tempfile::Builder::new()
            .prefix(&format!("{RUNTIME_PREFIX}{}-", std::process::id()))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| Error::io("creating the VM runtime directory", e))?;
        let uds_path = runtime.path().join("vm.vsock");
        let vhost_socket = runtime.path().join("vhost.sock");

        let log_dir = config.log_dir.clone().unwrap_or_else(default_log_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&log_dir)
            .map_err(|e| Error::io(format!("creating log directory {}", log_dir.display()), e))?;
        prune_logs(&log_dir);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let base = format!("vm-{stamp}-{}-{id}", std::process::id());
        let serial_log = log_dir.join(format!("{base}.serial.log"));
        let qemu_log = log_dir.join(format!("{base}.qemu.log"));
        let daemon_log = log_dir.join(format!("{base}.daemon.log"));

        let mut vm = Self {
            runtime: Some(runtime),
            uds_path,
            serial_log,
            qemu_log,
            daemon_log,
            listener: None,
            daemon: None,
            qemu: None,
            qemu_status: None,
            accel,
            id,
        };
        let dir = vm.runtime_dir().to_path_buf();
        // Known to the signal handler before any child starts, so that a
        // Ctrl-C during the launch removes it too.
        register_dir(id, &dir);

        // Accept in short slices so that QEMU can be watched while waiting.
        let slice = Timeouts {
            accept: Some(ACCEPT_SLICE),
            ..Timeouts::default()
        };
        vm.listener = Some(HybridListener::bind(&vm.uds_path, config.host_port, slice)?);

        // The device daemon.
        let daemon_err = File::create(&vm.daemon_log)
            .map_err(|e| Error::io(format!("creating {}", vm.daemon_log.display()), e))?;
        let mut cmd = child_command(&tools.daemon);
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
        let daemon = cmd.spawn().map_err(|e| Error::Spawn {
            program: tools.daemon.clone(),
            source: e,
        })?;
        register(id, daemon.id(), &dir);
        vm.daemon = Some(daemon);
        vm.wait_for_daemon_socket(&vhost_socket, config.daemon_timeout)?;

        // QEMU.
        let qemu_err = File::create(&vm.qemu_log)
            .map_err(|e| Error::io(format!("creating {}", vm.qemu_log.display()), e))?;
        let mut cmd = child_command(&tools.qemu);
        cmd.args(qemu_args(config, accel, &vhost_socket, &vm.serial_log))
            .stdout(Stdio::null())
            .stderr(qemu_err);
        tracing::debug!(?cmd, "starting QEMU");
        let qemu = cmd.spawn().map_err(|e| Error::Spawn {
            program: tools.qemu.clone(),
            source: e,
        })?;
        register(id, qemu.id(), &dir);
        vm.qemu = Some(qemu);
        tracing::info!(accel = %accel, serial_log = %vm.serial_log.display(), "VM launched");
        Ok(vm)
    }

    fn wait_for_daemon_socket(&mut self, socket: &Path, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(d) = self.daemon.as_mut()
                && let Ok(Some(status)) = d.try_wait()
            {
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

    /// Fails with [`Error::QemuExited`] if QEMU is no longer running.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            return Err(Error::QemuExited {
                status,
                serial_log: self.serial_log.clone(),
                qemu_log: self.qemu_log.clone(),
            });
        }
        if let Some(d) = self.daemon.as_mut()
            && let Ok(Some(status)) = d.try_wait()
        {
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
        let Some(q) = self.qemu.as_mut() else {
            return Ok(None);
        };
        let s = q.try_wait().map_err(|e| Error::io("waiting for QEMU", e))?;
        self.qemu_status = s;
        Ok(s)
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
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            if let Ok(s) = q.wait() {
                self.qemu_status.get_or_insert(s);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
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

    /// Process ids of QEMU and the daemon, while they run.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.qemu.as_ref().map(Child::id),
            self.daemon.as_ref().map(Child::id),
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
        unregister(self.id);
    }
}

fn qemu_args(
    config: &VmConfig,
    accel: Accel,
    vhost_socket: &Path,
    serial_log: &Path,
) -> Vec<String> {
    let mem = format!("{}M", config.memory_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    let machine = config.machine.clone().unwrap_or_else(|| match config.arch {
        Arch::X86_64 => "q35".into(),
        Arch::Aarch64 => "virt".into(),
    });
    push("-machine");
    // Under KVM, `virt` must use an interrupt controller the host has
    // (GICv3-only hosts cannot emulate the default GICv2); the guest
    // polls and does not care which.
    let gic = if config.arch == Arch::Aarch64 && accel == Accel::Kvm && machine == "virt" {
        ",gic-version=max"
    } else {
        ""
    };
    push(&format!("{machine}{gic},memory-backend=mem"));
    push("-object");
    push(&format!("memory-backend-memfd,id=mem,size={mem},share=on"));
    push("-m");
    push(&mem);
    push("-accel");
    push(accel.qemu_name());
    if config.arch == Arch::Aarch64 {
        push("-cpu");
        push(if accel == Accel::Kvm {
            "host"
        } else {
            "cortex-a57"
        });
        push("-global");
        push("virtio-mmio.force-legacy=false");
        // The guest's failure exit: it writes "panicked" to pvpanic and
        // QEMU exits with status 1. (`virt` has no isa-debug-exit, and
        // semihosting's exit would also open the host's files to the
        // guest.)
        push("-device");
        push("pvpanic-pci");
        push("-action");
        push("panic=exit-failure");
    }
    for s in [
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ] {
        push(s);
    }
    push("-serial");
    push(&format!("file:{}", serial_log.display()));
    push("-kernel");
    push(&config.image.display().to_string());
    if let Some(initrd) = &config.initrd {
        push("-initrd");
        push(&initrd.display().to_string());
    }
    let mut cmdline = vec![
        format!("svmc.host_port={}", config.host_port),
        format!("svmc.port={}", config.service_port),
    ];
    cmdline.extend(config.cmdline.iter().cloned());
    push("-append");
    push(&cmdline.join(" "));
    push("-chardev");
    push(&format!("socket,id=vsock0,path={}", vhost_socket.display()));
    push("-device");
    match (config.arch, machine.as_str()) {
        (Arch::X86_64, "microvm") => push("vhost-user-vsock-device,chardev=vsock0"),
        (Arch::X86_64, _) => push("vhost-user-vsock-pci,chardev=vsock0"),
        (Arch::Aarch64, _) => push("vhost-user-vsock-device,chardev=vsock0"),
    }
    if config.arch == Arch::X86_64 {
        push("-device");
        push("isa-debug-exit,iobase=0xf4,iosize=0x04");
    }
    a.extend(config.extra_qemu_args.iter().cloned());
    a
}

/// Most boot attempts [`launch_ready`] makes.
pub const BOOT_ATTEMPTS: u32 = 3;

/// Default time one boot attempt of the firmware may take before
/// [`launch_ready`] relaunches the VM (it answers within a fraction of a
/// second even under TCG).
pub const DEFAULT_BOOT_ATTEMPT: Duration = Duration::from_secs(3);

/// Boot attempt time of a Linux guest (it boots in about 1.5-3 s under TCG).
pub const LINUX_BOOT_ATTEMPT: Duration = Duration::from_secs(60);

/// Launches a VM and waits for its boot connection, relaunching it when an
/// attempt takes longer than `config.boot_attempt` and `boot_timeout` leaves
/// room for another (at most [`BOOT_ATTEMPTS`]).
///
/// Rarely (about one boot in 30 to 60 here, under load) the guest's first
/// vsock packet is never taken by vhost-device-vsock 0.3.0: the guest's first
/// notification can reach the daemon before it has enabled the queue, and
/// virtio-drivers then waits for that TX buffer forever. A relaunch is the
/// cure until the race is fixed at its source. A `boot_timeout` no longer
/// than `config.boot_attempt` means a single attempt.
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
                tracing::info!(
                    attempt = n,
                    serial_log = %serial_log.display(),
                    "the guest did not connect within {this:?}; relaunching it"
                );
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(arch: Arch, accel: Accel) -> String {
        let cfg = VmConfig::new(arch, Path::new("/img"));
        qemu_args(&cfg, accel, Path::new("/vhost"), Path::new("/serial")).join(" ")
    }

    #[test]
    fn aarch64_machine_and_cpu_follow_the_accelerator() {
        let tcg = args(Arch::Aarch64, Accel::Tcg);
        assert!(tcg.contains("-machine virt,memory-backend=mem"), "{tcg}");
        assert!(tcg.contains("-cpu cortex-a57"), "{tcg}");
        assert!(tcg.contains("-device pvpanic-pci -action panic=exit-failure"));
        assert!(!tcg.contains("isa-debug-exit"), "{tcg}");
        let kvm = args(Arch::Aarch64, Accel::Kvm);
        assert!(
            kvm.contains("-machine virt,gic-version=max,memory-backend=mem"),
            "{kvm}"
        );
        assert!(kvm.contains("-cpu host"), "{kvm}");
    }

    #[test]
    fn x86_64_uses_q35_pci_and_isa_debug_exit() {
        let a = args(Arch::X86_64, Accel::Tcg);
        assert!(a.contains("-machine q35,memory-backend=mem"), "{a}");
        assert!(a.contains("vhost-user-vsock-pci,chardev=vsock0"), "{a}");
        assert!(a.contains("isa-debug-exit"), "{a}");
        assert!(!a.contains("-cpu"), "{a}");
    }
}
