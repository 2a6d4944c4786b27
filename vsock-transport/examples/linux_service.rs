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
//! 2, [`svmc::HOST_PORT`]); that connection is the host's readiness
//! signal. It serves it and the host-initiated connections on
//! [`svmc::SERVICE_PORT`] at once, with the same handler
//! (`svmc::server::Service`, crate `svmc-proto`), server core and lifecycle
//! (`rpc::many::serve_many`) as the bare-metal firmware, over non-blocking
//! AF_VSOCK sockets and `poll(2)` ([`LinuxEndpoint`]), until a `PowerOff`
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

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use svmc::server::Service;
use svmc::{GuestInfo, HOST_PORT, SERVICE_PORT, ServiceVm};
use svmc_comm::Protocol;
use vsock::{VsockListener, VsockStream};
use vsock_transport::host_vsock::{self, CID_ANY, CID_HOST};
use vsock_transport::rpc::many::{self, Event, ManyConfig};
use vsock_transport::rpc::{Budget, CONNECTION_HEAP, SMALL_BODY, ServeConfig};
use vsock_transport::{Endpoint, Recv};
use vsock_transport::{Error, Timeouts};

/// What [`svmc::GuestInfo::firmware`] says.
const FIRMWARE: &str = "svmc-linux-service";

/// The test program of `svmc.mode=vsock-tests`.
const TESTS_PROGRAM: &str = "/bin/vsock-tests";

/// Modules to load as PID 1, one path a line.
const MODULES_LIST: &str = "/etc/svmc-modules";

/// How long a closed connection waits for the peer to close its side too
/// (so that our last answer, e.g. to `PowerOff`, is out of the VM) before
/// it is reset.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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

/// A connection's handle in [`LinuxEndpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ConnId(u32);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

struct Conn {
    stream: VsockStream,
    /// The last read found nothing: wait for `POLLIN`. (A connection whose
    /// server takes no input now, e.g. while its answers wait, is not
    /// polled for input, so `poll(2)` does not wake for it in a loop.)
    want_read: bool,
    /// The last write was short: wait for `POLLOUT` too.
    want_write: bool,
    /// The receive buffer we last set (`SO_VM_SOCKETS_BUFFER_SIZE`); a
    /// probe grows it by one byte ([`LinuxEndpoint::probe`]).
    buffer: u64,
}

/// `setsockopt(2)` level and options of AF_VSOCK
/// (`include/uapi/linux/vm_sockets.h`).
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// The kernel's default receive buffer of a vsock connection (256 KiB) and
/// how far probes may grow it, one byte each.
const BUFFER: u64 = 256 * 1024;
const PROBE_BYTES: u64 = 64 * 1024;

fn set_vsock_u64(conn: &VsockStream, option: libc::c_int, value: u64) -> io::Result<()> {
    // SAFETY: a valid socket fd and a pointer to a u64 that lives for the
    // call, with its exact size (the type these options take).
    let r = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::AF_VSOCK,
            option,
            (&raw const value).cast(),
            size_of::<u64>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Non-blocking AF_VSOCK connections for [`many::serve_many`]: a
/// listener, the served connections, and the closed ones that wait
/// (bounded) for the peer's end of the stream; [`Endpoint::idle`] sleeps in
/// `poll(2)` until one of them is ready.
struct LinuxEndpoint {
    listener: VsockListener,
    conns: BTreeMap<ConnId, Conn>,
    closing: BTreeMap<ConnId, (VsockStream, Instant)>,
    next: u32,
    start: Instant,
}

/// How long [`Endpoint::idle`] sleeps at most.
const IDLE_POLL_MS: i32 = 100;

fn io_err(what: &str, e: io::Error) -> Error {
    Error::io(what.to_string(), e)
}

impl LinuxEndpoint {
    fn bind(port: u32) -> vsock_transport::Result<Self> {
        let what = format!("listening on vsock port {port}");
        let listener =
            VsockListener::bind_with_cid_port(CID_ANY, port).map_err(|e| io_err(&what, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err(&what, e))?;
        Ok(Self {
            listener,
            conns: BTreeMap::new(),
            closing: BTreeMap::new(),
            next: 0,
            start: Instant::now(),
        })
    }

    fn add(&mut self, stream: VsockStream) -> vsock_transport::Result<ConnId> {
        stream
            .set_nonblocking(true)
            .map_err(|e| io_err("making a connection non-blocking", e))?;
        // Room for the probes to grow the buffer (never to shrink it: the
        // kernel drops what a peer sent beyond the buffer it was told of).
        if let Err(e) = set_vsock_u64(&stream, SO_VM_SOCKETS_BUFFER_MAX_SIZE, BUFFER + PROBE_BYTES)
        {
            log!("vsock: raising the buffer limit: {e}");
        }
        let id = ConnId(self.next);
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                stream,
                want_read: true,
                want_write: false,
                buffer: BUFFER,
            },
        );
        Ok(id)
    }
}

impl Endpoint for LinuxEndpoint {
    type Id = ConnId;

    fn poll(&mut self) -> vsock_transport::Result<bool> {
        // No device: readiness is waited for in `idle`.
        Ok(false)
    }

    fn accept(&mut self) -> Option<ConnId> {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) if addr.cid() == CID_HOST => match self.add(stream) {
                    Ok(id) => return Some(id),
                    Err(e) => log!("accepting: {e}"),
                },
                Ok((_, addr)) => log!("refused a connection from CID {}", addr.cid()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("accepting: {e}");
                    return None;
                }
            }
        }
    }

    fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> vsock_transport::Result<Recv> {
        let c = self.conns.get_mut(&id).ok_or(Error::ShutDown)?;
        match c.stream.read(buf) {
            Ok(0) => Ok(Recv::Eof),
            Ok(n) => Ok(Recv::Data(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                c.want_read = true;
                Ok(Recv::Empty)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(Error::Reset),
            Err(e) => Err(io_err("reading", e)),
        }
    }

    fn send_some(&mut self, id: ConnId, buf: &[u8]) -> vsock_transport::Result<usize> {
        let c = self.conns.get_mut(&id).ok_or(Error::ShutDown)?;
        match c.stream.write(buf) {
            Ok(n) => {
                c.want_write = n < buf.len();
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                c.want_write = true;
                Ok(0)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(Error::Reset)
            }
            Err(e) => Err(io_err("writing", e)),
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            // Our end of the stream; whatever was written still goes out.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            self.closing.insert(id, (c.stream, Instant::now()));
        }
    }

    fn reset(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            // SO_LINGER 0: the close resets the connection at once.
            if let Err(e) = set_linger(&c.stream, Duration::ZERO) {
                log!("SO_LINGER: {e}");
            }
        }
        self.closing.remove(&id);
    }

    fn exists(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id) || self.closing.contains_key(&id)
    }

    fn tick(&mut self) {
        let mut sink = [0u8; 4096];
        self.closing.retain(|_, (stream, since)| {
            if since.elapsed() >= CLOSE_WAIT {
                return false;
            }
            // Drop what the peer still sends; its end of the stream (or an
            // error) means it is done.
            loop {
                match stream.read(&mut sink) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
        });
    }

    /// A credit update on `id`'s connection: the kernel sends one when the
    /// receive buffer size changes (Linux 5.5, "vsock/virtio: send a
    /// credit update when buffer size is changed"), so the buffer grows by
    /// one byte, up to [`PROBE_BYTES`] probes per connection. It makes
    /// vhost-device-vsock 0.3.0 look at a host socket it lost track of,
    /// whose close the kernel then reports.
    fn probe(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.buffer < BUFFER + PROBE_BYTES
        {
            c.buffer += 1;
            if let Err(e) = set_vsock_u64(&c.stream, SO_VM_SOCKETS_BUFFER_SIZE, c.buffer) {
                log!("vsock {id}: probe: {e}");
            }
        }
    }

    /// The kernel knows at once when the host closed its side: poll(2)
    /// says `POLLRDHUP` (or `POLLHUP`) without waiting. Through libc, not
    /// nix: nix's `PollFd::revents` is `PollFlags::from_bits`, which is
    /// `None` whenever `POLLRDHUP` (a bit nix does not name) is set, so
    /// the close went unseen (hostile_host's burst_of_abrupt_closes failed).
    fn peer_closed(&self, id: ConnId) -> bool {
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let mut fd = libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one live pollfd that poll(2) only reads and writes, and
        // a timeout of 0 (no wait).
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn idle(&mut self) {
        let mut fds = vec![libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for c in self.conns.values_mut() {
            let mut events = 0;
            if std::mem::take(&mut c.want_read) {
                events |= libc::POLLIN;
            }
            if c.want_write {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        for (stream, _) in self.closing.values() {
            fds.push(libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs that
        // poll(2) only reads and writes within.
        let _ = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, IDLE_POLL_MS) };
    }
}

fn set_linger(conn: &VsockStream, t: Duration) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: t.as_secs() as libc::c_int,
    };
    // SAFETY: a valid socket fd and a pointer to a `linger` that lives for
    // the call, with its exact size.
    let r = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
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
