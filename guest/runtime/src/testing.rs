//! Hooks for tests of the runtime's recovery paths (cargo feature
//! `test-hooks`): never in an image that serves anyone.

use core::sync::atomic::{AtomicBool, Ordering};

/// Set: the next TX notification is dropped.
static LOSE_KICK: AtomicBool = AtomicBool::new(false);

/// Makes the vsock transport drop its next TX notification, as
/// vhost-device-vsock 0.3.0 can (see [`crate::kick`]), to prove that the
/// runtime recovers. Call it before the device is set up: from the
/// service's command-line [`Words`](crate::cmdline::Words).
pub fn lose_first_tx_kick() {
    LOSE_KICK.store(true, Ordering::Relaxed);
}

/// Whether this TX notification must be dropped (once).
pub(crate) fn take_lost_kick() -> bool {
    LOSE_KICK.load(Ordering::Relaxed) && LOSE_KICK.swap(false, Ordering::Relaxed)
}
