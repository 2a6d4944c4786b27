//! The svmc service VM firmware: the svmc service (crate `svmc-proto`:
//! messages [`svmc::ServiceVm`], handler [`svmc::server::Service`]) on the
//! bare-metal runtime `svmc_runtime`, which boots the VM, finds the virtio socket
//! device and hands [`main`] a ready vsock endpoint (start-up order and
//! guarantees: `svmc_runtime::entry`).
//!
//! # Service loop
//!
//! [`svmc_runtime::serve`]: connect to the host (CID 2) on the host port
//! (its readiness signal; if refused or unanswered within
//! `svmc.connect_timeout_ms`, go on with the listener), then serve that
//! connection and every host-initiated one at once, in one event loop,
//! until a `PowerOff` request: up to `svmc.max_conns` connections
//! (default 8, the boot connection included), interleaved; a connection
//! over the limit is held for up to 500 ms while the served ones are
//! probed for closes the device has not reported yet, and then gets a
//! fatal `ERROR` busy instead of our `HELLO` unless a slot freed or an
//! idle connection (silent for `svmc.idle_timeout_ms`, default 5 s,
//! between frames) can be closed for it.
//!
//! # Modes
//!
//! `svmc.mode=` (this firmware's own command-line word): `service` (the
//! default); with the `floors` feature, the benchmark floors `echo` and
//! `raw-reverse`, whose connections are served one at a time. With the
//! `hostile` feature, `svmc.hostile=<mode>` misbehaves on purpose
//! (`hostile`).
//!
//! # Heap budget
//!
//! Sized by the runtime ([`svmc_runtime::budget`]): every large `Reverse`
//! is answered in place, in its receive buffer, so a large request holds
//! once its length (`reserve_per_body_byte` 1), and the largest request
//! accepted is what the budget can hold once, at most the frame format's
//! 16 MiB.
#![no_std]
#![no_main]
#![allow(
    unreachable_pub,
    reason = "a binary crate: `pub` marks the interface between its modules"
)]

extern crate alloc;

#[cfg(feature = "floors")]
mod echo;
#[cfg(feature = "hostile")]
mod hostile;
#[cfg(feature = "floors")]
mod raw_reverse;
mod service;

use core::sync::atomic::{AtomicU8, Ordering};

use svmc::ServiceVm;
use svmc::server::Service;
use svmc_runtime::{Env, Error, Limits};
use vsock_transport::rpc::RESERVE_PER_BODY_BYTE;

svmc_runtime::main!(main, words = words);

/// What the firmware does with each connection (`svmc.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Serve the `svmc` protocol.
    Service,
    /// Echo raw bytes (`crate::echo`, `floors` feature).
    #[cfg(feature = "floors")]
    Echo,
    /// Reverse length-prefixed raw messages (`crate::raw_reverse`,
    /// `floors` feature).
    #[cfg(feature = "floors")]
    RawReverse,
}

/// `svmc.mode`, as `Mode as u8`; set while the command line is parsed.
static MODE: AtomicU8 = AtomicU8::new(Mode::Service as u8);

/// This firmware's command-line words: `svmc.mode` and, with the
/// `hostile` feature, `svmc.hostile`. Does not allocate.
fn words(key: &str, value: &str) -> bool {
    let mode = match (key, value) {
        ("svmc.mode", "service") => Mode::Service,
        #[cfg(feature = "floors")]
        ("svmc.mode", "echo") => Mode::Echo,
        #[cfg(feature = "floors")]
        ("svmc.mode", "raw-reverse") => Mode::RawReverse,
        #[cfg(feature = "hostile")]
        ("svmc.hostile", _) => return hostile::set_mode(value),
        _ => return false,
    };
    MODE.store(mode as u8, Ordering::Relaxed);
    true
}

/// The svmc protocol's side of the heap sizing: every large request is a
/// `Reverse`, answered in place.
const LIMITS: Limits = Limits {
    max_body: svmc_comm::frame::DEFAULT_MAX_BODY,
    reserve_per_body_byte: RESERVE_PER_BODY_BYTE,
};

fn main(env: &mut Env) -> Result<(), Error> {
    let max_body = env.plan(&LIMITS).max_body;
    #[cfg(feature = "hostile")]
    // `lost-kick` misbehaves only in its transport (the runtime's
    // `testing` hook) and then serves like the real firmware, below.
    if let Some(mode) = hostile::mode().filter(|m| *m != hostile::Mode::LostKick) {
        let (what, e) = hostile::run(&mut env.vsock, env.config.host_port, mode, max_body);
        return Err(Error::Vsock(what, e));
    }
    #[cfg(feature = "floors")]
    {
        let mode = MODE.load(Ordering::Relaxed);
        if mode == Mode::Echo as u8 {
            let boot = env.connect_host()?;
            return echo::run(&mut env.vsock, boot)
                .map_err(|e| Error::Vsock("waiting for a connection", e));
        }
        if mode == Mode::RawReverse as u8 {
            let boot = env.connect_host()?;
            return raw_reverse::run(&mut env.vsock, boot, max_body)
                .map_err(|e| Error::Vsock("waiting for a connection", e));
        }
    }
    let mut service = Service::new(|| service::info(max_body));
    svmc_runtime::serve::<ServiceVm, _>(env, &mut service, &LIMITS)
}
