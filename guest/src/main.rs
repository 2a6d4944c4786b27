//! The service VM firmware: boots bare metal, finds the virtio socket
//! device, and serves the `svmc` protocol ([`comm::service`]) over vsock
//! until asked to power off.
//!
//! # Start-up order
//!
//! 1. **Stack** (and page tables: long mode on x86_64, the MMU on with
//!    device memory as device memory on aarch64): the arch boot assembly,
//!    which then calls the arch `rust_start`. `.bss` is not zeroed
//!    by the guest: the VMM's ELF loader has zeroed it.
//! 2. **Boot information**: `rust_start` reads the command line and the
//!    memory map the VMM passed (PVH `hvm_start_info` on x86_64, the device
//!    tree on aarch64), without
//!    allocating, and calls [`start`].
//! 3. **Heap**: the RAM above the image ([`heap`]). From here `alloc` works.
//! 4. **Console**: the serial port ([`arch::console`]).
//! 5. **Logger**: `log` on the console, at the command line's level.
//! 6. **`main`**: device discovery and the service loop.
//!
//! `main` may rely on: a working heap and console, a logger, identity-mapped
//! memory covering RAM and the devices (physical == virtual), one CPU, no
//! interrupts. When `main` returns the VM powers off (exit status 0); a
//! fatal error is logged and the VM exits with a failure status; a panic
//! prints its message and exits with a failure status (3 on QEMU x86 with
//! `isa-debug-exit`, 1 on QEMU `virt` with `pvpanic-pci`).
//!
//! # Service loop
//!
//! Listen on the service port, connect to the host (CID 2) on the host
//! port (its readiness signal; if refused or unanswered within
//! `svmc.connect_timeout_ms`, go on with the listener), serve
//! that connection, then accept and serve host-initiated connections one
//! after another, for ever, until a `PowerOff` request.
#![no_std]
#![no_main]
#![allow(
    unreachable_pub,
    reason = "a binary crate: `pub` marks the interface between its modules"
)]

extern crate alloc;

mod arch;
mod cmdline;
mod echo;
mod hal;
mod heap;
#[cfg(feature = "hostile")]
mod hostile;
mod kick;
mod layout;
mod logger;
mod service;

use core::fmt::{self, Write};
use core::panic::PanicInfo;

use comm::frame::DEFAULT_MAX_BODY;
use comm::service::ServiceVm;
use log::{debug, error, info, warn};
use virtio_drivers::device::socket::VsockAddr;
use vsock_transport::Connection;
use vsock_transport::guest::{GuestVsock, HOST_CID, Limits};
use vsock_transport::rpc::{self, Ended, ServeConfig};

use crate::arch::BootInfo;
use crate::cmdline::Config;
use crate::hal::IdentityHal;
use crate::kick::{KickRetry, VsockTransport};
use crate::service::Service;

/// Our port for the boot-time connection to the host.
const CONNECT_LOCAL_PORT: u32 = 49152;

/// Heap bytes per byte of the largest request accepted. A `Reverse` of N
/// bytes holds two N-byte buffers at once at its peak (request frame and
/// decoded payload, then payload and response frame: `rpc::serve` sizes
/// the response once and frees the request first); the third N leaves room
/// for the device buffers and fragmentation.
const HEAP_PER_BODY_BYTE: usize = 3;

/// Entry from the arch code (start-up steps 3 to 6).
pub fn start(boot: BootInfo) -> ! {
    let config = Config::parse(boot.cmdline);
    // SAFETY: `boot.heap` is RAM above the image that nothing else uses
    // (arch boot code), and this is the only call.
    let heap_size = unsafe { heap::init(boot.heap.clone()) };
    arch::console::init();
    logger::init(config.log_level);

    info!(
        "{} {} ({}), heap {} KiB at {:#x}{}",
        service::FIRMWARE,
        env!("CARGO_PKG_VERSION"),
        arch::NAME,
        heap_size / 1024,
        boot.heap.start,
        if boot.heap_from_memmap {
            ""
        } else {
            " (fixed size: no memory map)"
        }
    );
    debug!("cmdline: {:?}", boot.cmdline);
    debug!(
        "image {:#x?}: text {:#x?} rodata {:#x?} data {:#x?} bss {:#x?} stack {:#x?}",
        layout::image_range(),
        layout::text_range(),
        layout::rodata_range(),
        layout::data_range(),
        layout::bss_range(),
        layout::stack_range()
    );
    let (ignored, count) = config.ignored();
    for word in ignored {
        warn!("cmdline: ignoring {word:?} (unknown key or invalid value)");
    }
    if count > 8 {
        warn!("cmdline: {} more words ignored", count - 8);
    }
    if config.test_panic {
        panic!("svmc.test_panic=1 on the command line");
    }

    match main(&config, heap_size) {
        Ok(()) => {
            info!("powering off");
            arch::power_off()
        }
        Err(e) => {
            error!("fatal: {e}");
            arch::exit_failure()
        }
    }
}

/// An error that ends the firmware.
enum Fatal {
    Discovery(arch::DiscoveryError),
    Vsock(&'static str, vsock_transport::Error),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discovery(e) => write!(f, "finding the vsock device: {e}"),
            Self::Vsock(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

fn main(config: &Config, heap_size: usize) -> Result<(), Fatal> {
    let transport = arch::find_vsock().map_err(Fatal::Discovery)?;
    // Notifies TX again if the device daemon lost the kick (kick.rs).
    let transport = KickRetry::new(transport, arch::now_us);
    let mut vsock = GuestVsock::<IdentityHal, VsockTransport>::new(transport)
        .map_err(|e| Fatal::Vsock("initialising the vsock device", e))?;
    info!("vsock: guest CID {}", vsock.guest_cid());
    vsock.set_clock(arch::now_us);
    vsock.set_limits(Limits {
        connect_us: config.connect_timeout_ms.saturating_mul(1000),
        ..Limits::default()
    });
    vsock.listen(config.service_port);

    let max_body = u32::try_from(heap_size / HEAP_PER_BODY_BYTE)
        .unwrap_or(u32::MAX)
        .min(DEFAULT_MAX_BODY);
    let serve_config = ServeConfig { max_body };
    let mut service = Service::new(max_body, config.mode);

    #[cfg(feature = "hostile")]
    if let Some(mode) = hostile::mode() {
        let (what, e) = hostile::run(&mut vsock, config.host_port, mode, max_body);
        return Err(Fatal::Vsock(what, e));
    }
    let host = VsockAddr {
        cid: HOST_CID,
        port: config.host_port,
    };
    match vsock.connect(host, CONNECT_LOCAL_PORT) {
        Ok(mut conn) => {
            info!("connected to host port {}", config.host_port);
            if serve(&mut conn, &mut service, serve_config) {
                return Ok(());
            }
        }
        Err(e @ (vsock_transport::Error::Refused { .. } | vsock_transport::Error::Timeout(_))) => {
            info!(
                "host port {}: {e}; waiting for the host to connect",
                config.host_port
            )
        }
        Err(e) => return Err(Fatal::Vsock("connecting to the host", e)),
    }
    info!("listening on port {}", config.service_port);
    loop {
        let mut conn = vsock
            .accept()
            .map_err(|e| Fatal::Vsock("waiting for a connection", e))?;
        if serve(&mut conn, &mut service, serve_config) {
            return Ok(());
        }
    }
}

/// Serves one connection; `true` if it ended with a `PowerOff` request.
fn serve<C: Connection>(conn: &mut C, service: &mut Service, config: ServeConfig) -> bool {
    if service.mode() == cmdline::Mode::Echo {
        echo::serve(conn);
        return false;
    }
    match rpc::serve::<ServiceVm, _, _>(conn, service, config) {
        Ok(Ended::Stopped) => return service.power_off_requested(),
        Ok(ended) => debug!("connection ended: {ended:?}"),
        Err(e) => warn!("connection ended with an error: {e}"),
    }
    debug!("heap: {:?}", heap::stats());
    false
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut console = arch::console::panic_writer();
    let _ = writeln!(console, "[PANIC] {info}");
    arch::exit_failure()
}
