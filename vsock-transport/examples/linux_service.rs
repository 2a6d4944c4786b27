//! The svmc service in a Linux guest: the same protocol as the bare-metal
//! firmware, over the kernel's AF_VSOCK through this crate's `host-vsock`
//! backend, written the way another project would write a service on top
//! of `comm` and `vsock-transport`.
//!
//! ```text
//! cargo build --release --example linux_service -p vsock-transport \
//!     --features host-vsock --target x86_64-unknown-linux-gnu   # RUSTFLAGS=-C target-feature=+crt-static
//! ```
//!
//! At start it listens on the service port, then connects to the host (CID
//! 2, [`comm::service::HOST_PORT`]); that connection is the host's readiness
//! signal and is served first. Then it serves host-initiated connections on
//! [`comm::service::SERVICE_PORT`], one after another, until a `PowerOff`
//! request, which it answers before powering the VM off.
//!
//! As PID 1 (`/init` of an initramfs, which `cargo xtask` builds) it first
//! mounts `/proc`, `/sys` and `/dev`, and loads the kernel modules listed in
//! `/etc/svmc-modules` (paths, one a line, in load order) with
//! `finit_module(2)`. Settings come from the kernel command line
//! (`/proc/cmdline`):
//!
//! - `svmc.host_port=N`, `svmc.port=N`: the two ports (the host's launcher
//!   passes them);
//! - `svmc.mode=vsock-tests`: instead of serving, run the test program
//!   `/bin/vsock-tests` (the `host_vsock` tests of this crate, which need
//!   the `vsock_loopback` module), print its output and
//!   `svmc-vsock-tests: exit status N` on the console, and power off with
//!   that verdict.
//!
//! Power-off as PID 1: `reboot(RB_POWER_OFF)` (QEMU exits with status 0)
//! after success; after a failure, a write to QEMU's `isa-debug-exit` port
//! so that QEMU's exit status says so.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::time::Duration;

use comm::Protocol;
use comm::service::{
    GuestInfo, HOST_PORT, Request, Response, SERVICE_PORT, ServiceError, ServiceVm,
};
use vsock_transport::host_vsock::{self, CID_HOST, Listener, VsockHostStream};
use vsock_transport::rpc::{self, Ended, Handler, ServeConfig, Then};
use vsock_transport::{Error, Timeouts};

/// What [`comm::service::GuestInfo::firmware`] says.
const FIRMWARE: &str = "svmc-linux-service";

/// The test program of `svmc.mode=vsock-tests`.
const TESTS_PROGRAM: &str = "/bin/vsock-tests";

/// Modules to load as PID 1, one path a line.
const MODULES_LIST: &str = "/etc/svmc-modules";

/// How long closing the connection that carried the `PowerOff` answer may
/// wait for the peer to acknowledge it (`SO_LINGER`), so that the answer
/// is out of the VM before it powers off.
const LINGER: Duration = Duration::from_secs(2);

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("svmc-linux-service: {msg}");
}

macro_rules! log {
    ($($t:tt)*) => { log(format_args!($($t)*)) };
}

/// Settings from the kernel command line.
struct Config {
    host_port: u32,
    port: u32,
    vsock_tests: bool,
}

impl Config {
    fn parse(cmdline: &str) -> Self {
        let mut c = Self {
            host_port: HOST_PORT,
            port: SERVICE_PORT,
            vsock_tests: false,
        };
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some(("svmc.host_port", v)) => c.host_port = v.parse().unwrap_or(c.host_port),
                Some(("svmc.port", v)) => c.port = v.parse().unwrap_or(c.port),
                Some(("svmc.mode", v)) => c.vsock_tests = v == "vsock-tests",
                _ => {}
            }
        }
        c
    }
}

/// The service: reverse, info, power off.
struct Service {
    max_body: u32,
    power_off: bool,
}

impl Handler<ServiceVm> for Service {
    fn handle(&mut self, request: Request) -> (Response, Then) {
        match request {
            Request::Reverse(mut bytes) => {
                bytes.reverse();
                (Response::Reverse(bytes), Then::Continue)
            }
            Request::Info => (
                Response::Info(GuestInfo {
                    firmware: FIRMWARE.into(),
                    firmware_version: env!("CARGO_PKG_VERSION").into(),
                    protocol_version: ServiceVm::VERSION,
                    arch: std::env::consts::ARCH.into(),
                    max_body: self.max_body,
                    heap: None,
                }),
                Then::Continue,
            ),
            Request::PowerOff => {
                self.power_off = true;
                (Response::PowerOff, Then::Stop)
            }
            _ => (Response::Err(ServiceError::Unsupported), Then::Continue),
        }
    }
}

fn main() -> ExitCode {
    let pid1 = std::process::id() == 1;
    if pid1 && let Err(e) = early_init() {
        log!("start-up failed: {e}");
        fail_vm(1);
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = Config::parse(&cmdline);
    let ok = if config.vsock_tests {
        run_tests()
    } else {
        match serve(&config) {
            Ok(()) => true,
            Err(e) => {
                log!("fatal: {e}");
                false
            }
        }
    };
    if !pid1 {
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if ok { power_off() } else { fail_vm(2) }
}

/// PID 1's set-up: file systems, then modules.
fn early_init() -> io::Result<()> {
    for (fstype, dir) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = fs::create_dir(dir);
        mount(fstype, dir)?;
    }
    let list = match fs::read_to_string(MODULES_LIST) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io::Error::other(format!("reading {MODULES_LIST}: {e}"))),
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        load_module(path).map_err(|e| io::Error::other(format!("loading {path}: {e}")))?;
    }
    Ok(())
}

fn mount(fstype: &str, dir: &str) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    match mount(
        Some(fstype),
        dir,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()), // EBUSY: already mounted
        Err(e) => Err(io::Error::other(format!("mounting {fstype} on {dir}: {e}"))),
    }
}

/// `finit_module(2)`; a module that is already loaded is fine.
fn load_module(path: &str) -> io::Result<()> {
    use nix::kmod::{ModuleInitFlags, finit_module};
    let f = fs::File::open(path)?;
    match finit_module(&f, c"", ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Serves until a `PowerOff` request (`Ok`), or fails.
fn serve(config: &Config) -> vsock_transport::Result<()> {
    // Requests may take as long as the host likes between frames, and the
    // service waits for connections for ever; a stuck peer cannot hold a
    // write or the HELLO exchange for ever.
    let timeouts = Timeouts {
        accept: None,
        read: None,
        ..Timeouts::uniform(Duration::from_secs(30))
    };
    let mut service = Service {
        max_body: ServeConfig::default().max_body,
        power_off: false,
    };
    // Listen first: a host may connect as soon as it sees us.
    let listener = Listener::bind(config.port, Some(CID_HOST), timeouts)?;
    match host_vsock::connect(CID_HOST, config.host_port, &timeouts) {
        Ok(conn) => {
            log!("connected to host port {}", config.host_port);
            if serve_one(conn, &mut service) {
                return Ok(());
            }
        }
        Err(e @ (Error::Refused { .. } | Error::Timeout(_))) => log!(
            "host port {}: {e}; waiting for the host to connect",
            config.host_port
        ),
        Err(e) => return Err(e),
    }
    log!("listening on port {}", config.port);
    loop {
        match listener.accept() {
            Ok(conn) => {
                if serve_one(conn, &mut service) {
                    return Ok(());
                }
            }
            Err(e @ Error::UnexpectedPeer { .. }) => log!("refused a connection: {e}"),
            Err(e) => return Err(e),
        }
    }
}

/// Serves one connection; `true` if it ended with a `PowerOff` request.
fn serve_one(mut conn: VsockHostStream, service: &mut Service) -> bool {
    let config = ServeConfig {
        max_body: service.max_body,
    };
    match rpc::serve::<ServiceVm, _, _>(&mut conn, service, config) {
        Ok(Ended::Stopped) if service.power_off => {
            // Close with SO_LINGER: waits until the peer has seen the end
            // of the stream, i.e. the answer has left the VM.
            if let Err(e) = set_linger(&conn, LINGER) {
                log!("SO_LINGER: {e}");
            }
            drop(conn);
            return true;
        }
        Ok(_) => {}
        Err(e) => log!("connection ended with an error: {e}"),
    }
    false
}

fn set_linger(conn: &VsockHostStream, t: Duration) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: t.as_secs() as libc::c_int,
    };
    // SAFETY: a valid socket fd and a pointer to a `linger` that lives for
    // the call, with its exact size.
    let r = unsafe {
        libc::setsockopt(
            conn.get_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `svmc.mode=vsock-tests`: runs the test program with its output on the
/// console; `true` if it passed.
fn run_tests() -> bool {
    log!("running {TESTS_PROGRAM}");
    let status = Command::new(TESTS_PROGRAM)
        // One test at a time: the timing checks are tight for one
        // emulated CPU.
        .args(["--test-threads=1"])
        .env("RUST_BACKTRACE", "1")
        .status();
    match status {
        Ok(s) => {
            // The host looks for this line in the serial log.
            println!("svmc-vsock-tests: exit status {}", s.code().unwrap_or(-1));
            s.success()
        }
        Err(e) => {
            println!("svmc-vsock-tests: could not run {TESTS_PROGRAM}: {e}");
            false
        }
    }
}

/// Powers the VM off (PID 1 only): QEMU exits with status 0.
fn power_off() -> ! {
    use nix::sys::reboot::{RebootMode, reboot};
    nix::unistd::sync();
    // As PID 1 we may power off; nothing of ours needs to run afterwards.
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Not reached unless reboot(2) failed; PID 1 must not exit.
    fail_vm(3)
}

/// Ends the VM with a failure: a write of `code` to QEMU's `isa-debug-exit`
/// device (port 0xf4; QEMU exits with status `code * 2 + 1`), or, without
/// it, a kernel panic (PID 1 exits).
fn fail_vm(code: u8) -> ! {
    #[cfg(target_arch = "x86_64")]
    {
        // Not through nix: it has no ioperm(2) wrapper.
        // SAFETY: ioperm(2) only changes this process's I/O permission
        // bitmap.
        let allowed = unsafe { libc::ioperm(0xf4, 4, 1) } == 0;
        if allowed {
            // SAFETY: we may use I/O port 0xf4 now (ioperm above); writing
            // it touches no memory of ours and makes QEMU exit.
            unsafe { core::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") code) };
        }
    }
    let _ = code;
    std::process::exit(1)
}
