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
//! `svmc.connect_timeout_ms`, go on with the listener), then serve that
//! connection and every host-initiated one at once, in one event loop
//! (`vsock_transport::rpc::many::serve_many`), until a `PowerOff`
//! request: up to `svmc.max_conns` connections (default 8, the boot
//! connection included), interleaved; a connection over the limit is held
//! for up to 500 ms while the served ones are probed for closes the device
//! has not reported yet (`many::HOLD_US`), and then gets a fatal `ERROR`
//! busy instead of our `HELLO` unless a slot freed or an idle connection
//! (silent for `svmc.idle_timeout_ms`, default 5 s, between frames) can be
//! closed for it. In the raw modes (`echo`, `raw-reverse`: the benchmark
//! floors, in the image built with the `floors` feature only) connections
//! are served one at a time.
//!
//! # Heap budget
//!
//! The heap (from the RAM the VM is given) holds the device's RX buffers,
//! then per served connection (`max_conns`) a receive ring and the
//! per-connection allowance of the server core (`rpc::CONNECTION_HEAP`),
//! per connection not served yet (the refusals, the connections held over
//! the limit and the backlog the vsock layer allows) a ring of the small
//! window it is accepted with (`guest::ACCEPT_WINDOW`) and a small frame,
//! and a margin for fragmentation; the rest is the [`Budget`] for large requests, each of
//! which holds `rpc::RESERVE_PER_BODY_BYTE` times its length (1: a
//! `Reverse` is answered in place, in its receive buffer, which the
//! connection keeps for the next request). The largest request accepted (our `HELLO`'s
//! `max_body`) is what the budget can hold once; a request that does not
//! fit the budget when it arrives is dropped and answered with
//! `out_of_memory`.
#![no_std]
#![no_main]
#![allow(
    unreachable_pub,
    reason = "a binary crate: `pub` marks the interface between its modules"
)]

extern crate alloc;

mod arch;
mod cmdline;
#[cfg(feature = "floors")]
mod echo;
mod hal;
mod heap;
#[cfg(feature = "hostile")]
mod hostile;
mod kick;
mod layout;
mod logger;
#[cfg(feature = "floors")]
mod raw_reverse;
mod service;

use core::fmt::{self, Write};
use core::panic::PanicInfo;

use comm::frame::DEFAULT_MAX_BODY;
use comm::service::ServiceVm;
use log::{debug, error, info, warn};
use virtio_drivers::device::socket::VsockAddr;
use vsock_transport::guest::{self, GuestVsock, HOST_CID, Limits};
use vsock_transport::rpc::many::{self, Event, ManyConfig};
use vsock_transport::rpc::service::Service;
use vsock_transport::rpc::{
    Budget, CONNECTION_HEAP, RESERVE_PER_BODY_BYTE, SMALL_BODY, ServeConfig,
};

use crate::arch::BootInfo;
use crate::cmdline::Config;
use crate::hal::IdentityHal;
use crate::kick::{KickRetry, VsockTransport};

/// Our port for the boot-time connection to the host.
const CONNECT_LOCAL_PORT: u32 = 49152;

/// Heap kept out of the budget for fragmentation and everything else the
/// firmware allocates: 1/32 of the heap plus 128 KiB. (Large bodies are
/// the connections' receive buffers, kept and reused, so the heap does not
/// fragment with the traffic.)
fn heap_margin(heap_size: usize) -> usize {
    heap_size / 32 + 128 * 1024
}

/// The budget for large requests and the largest request body accepted,
/// for a heap of `heap_size` bytes and `max_conns` connections.
fn heap_budget(heap_size: usize, max_conns: usize, buffer_size: u32) -> (usize, u32) {
    // Every connection in the table has a receive ring; the served ones
    // also the server core's allowance. Refusals, connections held over
    // the limit and the backlog are not served: their ring holds at most
    // the small window they were accepted with (`guest::ACCEPT_WINDOW`,
    // grown to `buffer_size` only when served), and they hold no more
    // than a small frame.
    let waiting = many::MAX_REFUSING + many::MAX_HELD + guest::DEFAULT_MAX_PENDING;
    let fixed = guest::RX_QUEUE_BYTES
        + max_conns * (buffer_size as usize + CONNECTION_HEAP)
        + waiting * (guest::ACCEPT_WINDOW as usize + 4096)
        + heap_margin(heap_size);
    let budget = heap_size.saturating_sub(fixed);
    let max_body = u32::try_from(budget / RESERVE_PER_BODY_BYTE)
        .unwrap_or(u32::MAX)
        .clamp(SMALL_BODY, DEFAULT_MAX_BODY);
    (budget, max_body)
}

/// Entry from the arch code (start-up steps 3 to 6).
pub fn start(boot: BootInfo) -> ! {
    let config = Config::parse(boot.cmdline);
    // SAFETY: `boot.heap` is RAM above the image and `boot.heap_low` RAM
    // below it that nothing else uses (arch boot code), and this is the
    // only call.
    let heap_size = unsafe { heap::init(boot.heap.clone(), boot.heap_low.clone()) };
    arch::console::init();
    logger::init(config.log_level);

    info!(
        "{} {} ({}), heap {} KiB at {:#x} (+{} KiB at {:#x}){}",
        service::FIRMWARE,
        env!("CARGO_PKG_VERSION"),
        arch::NAME,
        heap_size / 1024,
        boot.heap.start,
        boot.heap_low.len() / 1024,
        boot.heap_low.start,
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
        warn!("cmdline: ignoring '{word}' (unknown key or invalid value)");
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
    let (budget, max_body) = heap_budget(heap_size, config.max_conns, vsock.buffer_size());

    #[cfg(feature = "hostile")]
    // `lost-kick` misbehaves only in its transport (kick.rs) and then
    // serves like the real firmware, below.
    if let Some(mode) = hostile::mode().filter(|m| *m != hostile::Mode::LostKick) {
        let (what, e) = hostile::run(&mut vsock, config.host_port, mode, max_body);
        return Err(Fatal::Vsock(what, e));
    }
    let host = VsockAddr {
        cid: HOST_CID,
        port: config.host_port,
    };
    let boot = match vsock.connect(host, CONNECT_LOCAL_PORT) {
        Ok(id) => {
            info!("connected to host port {}", config.host_port);
            Some(id)
        }
        Err(e @ (vsock_transport::Error::Refused { .. } | vsock_transport::Error::Timeout(_))) => {
            info!(
                "host port {}: {e}; waiting for the host to connect",
                config.host_port
            );
            None
        }
        Err(e) => return Err(Fatal::Vsock("connecting to the host", e)),
    };
    info!("listening on port {}", config.service_port);
    #[cfg(feature = "floors")]
    if config.mode == cmdline::Mode::Echo {
        return echo::run(&mut vsock, boot)
            .map_err(|e| Fatal::Vsock("waiting for a connection", e));
    }
    #[cfg(feature = "floors")]
    if config.mode == cmdline::Mode::RawReverse {
        return raw_reverse::run(&mut vsock, boot, max_body)
            .map_err(|e| Fatal::Vsock("waiting for a connection", e));
    }
    info!(
        "serving up to {} connections at once; {} KiB for large requests, max_body {max_body}",
        config.max_conns,
        budget / 1024
    );
    let many_config = ManyConfig {
        serve: ServeConfig { max_body },
        max_conns: config.max_conns,
        idle_timeout_us: config.idle_timeout_ms.saturating_mul(1000),
        budget: Budget::new(budget),
    };
    let mut service = Service::new(|| service::info(max_body));
    many::serve_many::<ServiceVm, _, _>(&mut vsock, boot, &mut service, &many_config, log_event)
        .map_err(|e| Fatal::Vsock("serving", e))?;
    debug!("heap: {:?}", heap::stats());
    Ok(())
}

fn log_event(event: Event<'_, guest::ConnId>) {
    match event {
        Event::Accepted(id) => debug!("connection {id}: serving"),
        Event::Held(id) => debug!("connection {id}: table full, held while probing for closes"),
        Event::Busy(id) => warn!("connection {id}: over the limit, refused as busy"),
        Event::Dropped(id) => warn!("connection {id}: over the limit, reset"),
        Event::Evicted(id) => info!("connection {id}: idle, closed for a new one"),
        Event::Ended(id, Ok(ended)) => {
            debug!("connection {id} ended: {ended:?}; heap {:?}", heap::stats())
        }
        Event::Ended(id, Err(e)) => warn!("connection {id} ended with an error: {e}"),
        _ => {}
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut console = arch::console::panic_writer();
    let _ = writeln!(console, "[PANIC] {info}");
    arch::exit_failure()
}
