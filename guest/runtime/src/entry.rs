//! Start-up, in a fixed order, up to the service's `main`.
//!
//! 1. **Stack** (and page tables: long mode on x86_64, the MMU on with
//!    device memory as device memory on aarch64): the arch boot assembly,
//!    which then calls the arch `rust_start`. `.bss` is not zeroed by the
//!    guest: the VMM's ELF loader has zeroed it.
//! 2. **Boot information**: `rust_start` reads the command line and the
//!    memory map the VMM passed (PVH `hvm_start_info` and the ACPI tables
//!    on x86_64, the device tree on aarch64), without allocating, and
//!    calls `start`.
//! 3. **Command line**: the runtime's words and the service's
//!    ([`Words`]), without allocating.
//! 4. **Heap**: the RAM above the image (and on aarch64 the RAM between
//!    the device tree and the image). From here `alloc` works.
//! 5. **Console**: the serial port.
//! 6. **Logger**: `log` on the console, at `svmc.log`'s level.
//! 7. **vsock**: the virtio socket device found (ACPI DSDT or PCI on
//!    x86_64, device tree on aarch64), set up behind the lost-kick
//!    workaround ([`crate::kick`]), with a clock and the command line's
//!    limits, listening on `svmc.port`.
//! 8. **`main`**: the service's, with an [`Env`].
//!
//! `main` may rely on: a working heap and console, a logger, the vsock
//! endpoint, identity-mapped memory covering RAM and the devices (physical
//! == virtual), one CPU, no interrupts. When `main` returns `Ok` the VM
//! powers off (exit status 0); an `Err` is logged and the VM exits with a
//! failure status; a panic prints its message and exits with a failure
//! status (3 on QEMU x86 with `isa-debug-exit`, 1 on QEMU `virt` with
//! `pvpanic-pci`).

use core::fmt;
use core::mem::ManuallyDrop;

use log::{debug, info, warn};
use vsock_transport::guest::{ConnId, GuestVsock, HOST_CID, Limits, VsockAddr};

use crate::arch::{self, BootInfo};
use crate::cmdline::{Config, Words};
use crate::hal::IdentityHal;
use crate::kick::{KickRetry, VsockTransport};
use crate::{heap, layout, logger};

/// The vsock endpoint a service gets: virtio-drivers' socket device on the
/// identity-mapping HAL, behind the lost-kick workaround.
pub type Vsock = GuestVsock<IdentityHal, VsockTransport>;

/// Our port for the boot-time connection to the host.
pub const CONNECT_LOCAL_PORT: u32 = 49152;

/// An error that ends the VM with a failure status.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No usable virtio socket device.
    Discovery(arch::DiscoveryError),
    /// The vsock device failed while the runtime or the service was doing
    /// what the string says.
    Vsock(&'static str, vsock_transport::Error),
    /// The service failed; the string says how.
    Service(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discovery(e) => write!(f, "finding the vsock device: {e}"),
            Self::Vsock(what, e) => write!(f, "{what}: {e}"),
            Self::Service(what) => f.write_str(what),
        }
    }
}

/// What the service's `main` gets: a ready vsock endpoint, the command
/// line and the heap's size. The clock is [`crate::now_us`].
pub struct Env {
    /// The virtio socket device: set up, with the clock and the command
    /// line's connect timeout, listening on `config.service_port`.
    pub vsock: Vsock,
    /// The command line as the runtime read it.
    pub config: Config,
    heap_size: usize,
}

impl Env {
    /// Bytes of heap in all (the heap holds the device's buffers too).
    pub fn heap_size(&self) -> usize {
        self.heap_size
    }

    /// Connects to the host (CID 2) on `svmc.host_port`: that connection
    /// is the host's readiness signal. `Ok(None)` if the host refused or
    /// did not answer within `svmc.connect_timeout_ms`: the service then
    /// goes on with the listener.
    #[inline(never)]
    pub fn connect_host(&mut self) -> Result<Option<ConnId>, Error> {
        let port = self.config.host_port;
        let host = VsockAddr {
            cid: HOST_CID,
            port,
        };
        let boot = match self.vsock.connect(host, CONNECT_LOCAL_PORT) {
            Ok(id) => {
                info!("connected to host port {port}");
                Some(id)
            }
            Err(
                e @ (vsock_transport::Error::Refused { .. } | vsock_transport::Error::Timeout(_)),
            ) => {
                info!("host port {port}: {e}; waiting for the host to connect");
                None
            }
            Err(e) => return Err(Error::Vsock("connecting to the host", e)),
        };
        info!("listening on port {}", self.config.service_port);
        Ok(boot)
    }
}

/// The service, as [`crate::main!`] declares it.
#[doc(hidden)]
pub struct Service {
    /// Its `main`.
    pub main: fn(&mut Env) -> Result<(), Error>,
    /// Its command-line words.
    pub words: Words,
    /// Its crate's name and version, for the first log line.
    pub name: &'static str,
    /// See `name`.
    pub version: &'static str,
}

// SAFETY: the symbol is defined by `main!` only, as a `static` of exactly
// this type; a second definition fails to link, and a missing one too.
unsafe extern "Rust" {
    #[link_name = "__svmc_runtime_service"]
    safe static SERVICE: Service;
}

/// Declares the service's `main` (and optionally its command-line words),
/// which the runtime calls once the VM is set up ([`crate::entry`]).
///
/// ```ignore
/// #![no_std]
/// #![no_main]
///
/// svmc_runtime::main!(main);
///
/// fn main(env: &mut svmc_runtime::Env) -> Result<(), svmc_runtime::Error> {
///     let mut handler = MyHandler;
///     svmc_runtime::serve::<MyProtocol, _>(env, &mut handler, &Default::default())
/// }
/// ```
///
/// With `words = path`, `path` is a
/// [`Words`](crate::cmdline::Words) function that takes the service's
/// own `key=value` words of the command line.
#[macro_export]
macro_rules! main {
    ($main:path) => {
        $crate::main!($main, words = $crate::cmdline::no_words);
    };
    ($main:path, words = $words:path) => {
        #[unsafe(export_name = "__svmc_runtime_service")]
        static __SVMC_RUNTIME_SERVICE: $crate::entry::Service = $crate::entry::Service {
            main: $main,
            words: $words,
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
        };
    };
}

/// Entry from the arch code (start-up steps 3 to 8).
pub(crate) fn start(boot: BootInfo) -> ! {
    let config = Config::parse(boot.cmdline, SERVICE.words);
    // SAFETY: `boot.heap` is RAM above the image and `boot.heap_low` RAM
    // below it that nothing else uses (arch boot code), and this is the
    // only call.
    let heap_size = unsafe { heap::init(boot.heap.clone(), boot.heap_low.clone()) };
    arch::console::init();
    logger::init(config.log_level);

    info!(
        "{} {} ({}), heap {} KiB at {:#x} (+{} KiB at {:#x}){}",
        SERVICE.name,
        SERVICE.version,
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
    if count > crate::cmdline::MAX_IGNORED {
        warn!(
            "cmdline: {} more words ignored",
            count - crate::cmdline::MAX_IGNORED
        );
    }
    if config.test_panic {
        panic!("svmc.test_panic=1 on the command line");
    }

    match run(config, heap_size) {
        Ok(()) => {
            info!("powering off");
            arch::power_off()
        }
        Err(e) => {
            log::error!("fatal: {e}");
            arch::exit_failure()
        }
    }
}

/// Start-up step 7, then the service's `main`.
#[inline(never)]
fn run(config: Config, heap_size: usize) -> Result<(), Error> {
    let transport = arch::find_vsock().map_err(Error::Discovery)?;
    // Notifies TX again if the device daemon lost the kick (kick.rs).
    let transport = KickRetry::new(transport, arch::now_us);
    let mut vsock =
        Vsock::new(transport).map_err(|e| Error::Vsock("initialising the vsock device", e))?;
    info!("vsock: guest CID {}", vsock.guest_cid());
    vsock.set_clock(arch::now_us);
    vsock.set_limits(Limits {
        connect_us: config.connect_timeout_ms.saturating_mul(1000),
        ..Limits::default()
    });
    vsock.listen(config.service_port);
    // Never dropped: the VM powers off or fails right after `main`, and
    // the device needs no tear-down for that.
    let mut env = ManuallyDrop::new(Env {
        vsock,
        config,
        heap_size,
    });
    (SERVICE.main)(&mut env)
}
