//! The svmc service in a Linux guest: the same protocol as the bare-metal
//! firmware, over the kernel's AF_VSOCK through this crate's
//! `linux-endpoint` feature, written the way another project would write a
//! service on top of `comm` and `vsock-transport`.
//!
//! ```text
//! cargo build --release --example linux_service -p vsock-transport \
//!     --features linux-endpoint --target x86_64-unknown-linux-gnu   # RUSTFLAGS=-C target-feature=+crt-static
//! ```
//!
//! At start it listens on the service port, then connects to the host (CID
//! 2, [`svmc::HOST_PORT`]); that connection is the host's readiness
//! signal. It serves it and the host-initiated connections on
//! [`svmc::SERVICE_PORT`] at once, with the same handler
//! (`svmc::server::Service`, crate `svmc-proto`), server core and lifecycle
//! (`rpc::many::serve_many`) as the bare-metal firmware, over non-blocking
//! AF_VSOCK sockets and `poll(2)` (`vsock_transport::linux_endpoint`), until
//! a `PowerOff` request, which it answers before powering the VM off. What
//! is left here is what makes it this service VM: PID 1's start-up, the
//! settings, the heap budget and power-off.
//!
//! As PID 1 (`/init` of an initramfs, which `cargo xtask` builds) it first
//! mounts `/proc`, `/sys` and `/dev`, and loads the kernel modules listed in
//! `/etc/svmc-modules` (paths, one a line, in load order) with
//! `finit_module(2)`. Settings come from the kernel command line
//! (`/proc/cmdline`):
//!
//! - `svmc.host_port=N`, `svmc.port=N`: the two ports (the host's launcher
//!   passes them);
//! - `svmc.max_conns=N`, `svmc.idle_timeout_ms=N`: the connection limit and
//!   idle policy, as in the firmware (defaults 8 and 5000);
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
use std::process::{Command, ExitCode};
use std::time::Duration;

use svmc::server::Service;
use svmc::{GuestInfo, HOST_PORT, SERVICE_PORT, ServiceVm};
use svmc_comm::Protocol;
use vsock_transport::host_vsock::{self, CID_HOST};
use vsock_transport::linux_endpoint::LinuxEndpoint;
use vsock_transport::rpc::many::{self, Event, ManyConfig};
use vsock_transport::rpc::{Budget, CONNECTION_HEAP, SMALL_BODY, ServeConfig};
use vsock_transport::{Error, Timeouts};

/// What [`svmc::GuestInfo::firmware`] says.
const FIRMWARE: &str = "svmc-linux-service";

/// The test program of `svmc.mode=vsock-tests`.
const TESTS_PROGRAM: &str = "/bin/vsock-tests";

/// Modules to load as PID 1, one path a line.
const MODULES_LIST: &str = "/etc/svmc-modules";

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
    max_conns: usize,
    idle_timeout_ms: u64,
    vsock_tests: bool,
}

impl Config {
    fn parse(cmdline: &str) -> Self {
        let mut c = Self {
            host_port: HOST_PORT,
            port: SERVICE_PORT,
            max_conns: 8,
            idle_timeout_ms: 5000,
            vsock_tests: false,
        };
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some(("svmc.host_port", v)) => c.host_port = v.parse().unwrap_or(c.host_port),
                Some(("svmc.port", v)) => c.port = v.parse().unwrap_or(c.port),
                Some(("svmc.max_conns", v)) => {
                    c.max_conns = v.parse().ok().filter(|&n| n >= 1).unwrap_or(c.max_conns)
                }
                Some(("svmc.idle_timeout_ms", v)) => {
                    c.idle_timeout_ms = v.parse().unwrap_or(c.idle_timeout_ms)
                }
                Some(("svmc.mode", v)) => c.vsock_tests = v == "vsock-tests",
                _ => {}
            }
        }
        c
    }
}

/// What `Info` answers.
fn info(max_body: u32) -> GuestInfo {
    GuestInfo {
        firmware: FIRMWARE.into(),
        firmware_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: ServiceVm::VERSION,
        arch: std::env::consts::ARCH.into(),
        max_body,
        heap: None,
    }
}

fn main() -> ExitCode {
    // The endpoint's warnings (a refused peer, a failed probe) go to the
    // console through `tracing`.
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
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

/// Bytes large requests may take: half of what the kernel says is
/// available now (`MemAvailable`), less the served connections' own
/// allowance; 16 MiB if it cannot tell.
fn heap_budget() -> usize {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map(|kib| kib * 1024);
    match available {
        Some(bytes) => (bytes / 2).saturating_sub(8 * CONNECTION_HEAP),
        None => 16 << 20,
    }
}

/// Serves until a `PowerOff` request (`Ok`), or fails.
fn serve(config: &Config) -> vsock_transport::Result<()> {
    let budget = heap_budget();
    // Never more than the budget can hold (the firmware does the same).
    let max_body = u32::try_from(budget)
        .unwrap_or(u32::MAX)
        .clamp(SMALL_BODY, ServeConfig::default().max_body);
    log!(
        "{} KiB for large requests, max_body {max_body}",
        budget / 1024
    );
    // Listen first: a host may connect as soon as it sees us.
    let mut endpoint = LinuxEndpoint::bind(config.port)?;
    let timeouts = Timeouts::uniform(Duration::from_secs(30));
    let boot = match host_vsock::connect(CID_HOST, config.host_port, &timeouts) {
        Ok(conn) => {
            log!("connected to host port {}", config.host_port);
            Some(endpoint.add(conn.into_inner())?)
        }
        Err(e @ (Error::Refused { .. } | Error::Timeout(_))) => {
            log!(
                "host port {}: {e}; waiting for the host to connect",
                config.host_port
            );
            None
        }
        Err(e) => return Err(e),
    };
    log!(
        "listening on port {}, up to {} connections at once",
        config.port,
        config.max_conns
    );
    let many_config = ManyConfig {
        serve: ServeConfig {
            max_body,
            ..ServeConfig::default()
        },
        max_conns: config.max_conns,
        idle_timeout_us: config.idle_timeout_ms.saturating_mul(1000),
        // Not unlimited: the kernel does not report failure to an
        // allocation, it kills the process that touches too much, and this
        // one is PID 1 (7 clients sending 16 MiB each panicked the VM).
        budget: Budget::new(budget),
    };
    let mut service = Service::new(|| info(max_body));
    many::serve_many::<ServiceVm, _, _>(
        &mut endpoint,
        boot,
        &mut service,
        &many_config,
        |e| match e {
            Event::Busy(id) => log!("connection {id}: over the limit, refused as busy"),
            Event::Dropped(id) => log!("connection {id}: over the limit, reset"),
            Event::Evicted(id) => log!("connection {id}: idle, closed for a new one"),
            Event::Ended(id, Err(e)) => log!("connection {id} ended with an error: {e}"),
            _ => {}
        },
    )
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
