//! A runtime for bare-metal service VMs on virtio-vsock, in the manner of
//! AOSP's `vmbase`: boot per architecture (x86_64: PVH on QEMU `microvm`
//! and `q35`; aarch64: QEMU `virt`), heap, console, logger, device
//! discovery (ACPI or device tree), the lost-kick workaround, panic →
//! failure exit, power-off, and an entry point that hands the service's
//! `main` a ready vsock endpoint, its configuration and a clock. A service
//! writes its protocol (a `svmc_comm::Protocol`), a handler
//! (`vsock_transport::rpc::Handler`) and a few lines:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! svmc_runtime::main!(main);
//!
//! fn main(env: &mut svmc_runtime::Env) -> Result<(), svmc_runtime::Error> {
//!     svmc_runtime::serve::<KeyStore, _>(env, &mut Keys::default(), &Default::default())
//! }
//! ```
//!
//! `serve` sizes the heap budget from the RAM, the connection limit and
//! the protocol's [`Limits`]. The crate's build script passes its linker
//! script to the final link, so an image builds with
//! `cargo build --target x86_64-unknown-none` (or `aarch64-unknown-none`)
//! and the profile of the README. Start-up order and what `main` may rely
//! on: `entry`.
//!
//! On the host (`cargo test`) only the pure parts build: the parsers of
//! what the VMM passes ([`parse`]) and the heap budget ([`budget`]).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod budget;
pub mod parse;

pub use budget::{Limits, Plan};
pub use parse::cmdline;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
mod hal;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod kick;
#[cfg(target_os = "none")]
pub mod layout;
#[cfg(target_os = "none")]
mod logger;
#[cfg(target_os = "none")]
mod serve;
#[cfg(all(target_os = "none", feature = "test-hooks"))]
pub mod testing;

#[cfg(target_os = "none")]
pub use arch::{DiscoveryError, NAME as ARCH, exit_failure, now_us, power_off};
#[cfg(target_os = "none")]
pub use entry::{Env, Error, Vsock};
#[cfg(target_os = "none")]
pub use hal::IdentityHal;
#[cfg(target_os = "none")]
pub use serve::serve;

/// Prints the panic on the console and exits with a failure status.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut console = arch::console::panic_writer();
    let _ = writeln!(console, "[PANIC] {info}");
    arch::exit_failure()
}
