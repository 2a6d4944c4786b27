//! Timeouts for the blocking steps of host connections.

use std::time::{Duration, Instant};

use crate::{Error, Result, Step};

/// How long each blocking step of a host connection may take. `None` waits
/// forever (never the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a socket.
    pub connect: Option<Duration>,
    /// The hybrid `CONNECT`/`OK` exchange.
    pub hybrid_connect: Option<Duration>,
    /// Waiting for a peer to connect to a listener.
    pub accept: Option<Duration>,
    /// Waiting for the peer's `HELLO`.
    pub hello: Option<Duration>,
    /// Reading one whole frame (one deadline per frame, not per byte).
    pub read: Option<Duration>,
    /// Writing one whole frame.
    pub write: Option<Duration>,
}

impl Default for Timeouts {
    /// 5 s for connect, the hybrid CONNECT/OK exchange and HELLO, 30 s for accept, read and write.
    fn default() -> Self {
        Self {
            connect: Some(Duration::from_secs(5)),
            hybrid_connect: Some(Duration::from_secs(5)),
            accept: Some(Duration::from_secs(30)),
            hello: Some(Duration::from_secs(5)),
            read: Some(Duration::from_secs(30)),
            write: Some(Duration::from_secs(30)),
        }
    }
}

impl Timeouts {
    /// The same timeout for every step.
    pub fn uniform(t: Duration) -> Self {
        Self {
            connect: Some(t),
            hybrid_connect: Some(t),
            accept: Some(t),
            hello: Some(t),
            read: Some(t),
            write: Some(t),
        }
    }

    /// The timeout of `step`.
    pub fn get(&self, step: Step) -> Option<Duration> {
        match step {
            Step::Connect => self.connect,
            Step::HybridConnect => self.hybrid_connect,
            Step::Accept => self.accept,
            Step::Hello => self.hello,
            Step::Read => self.read,
            Step::Write => self.write,
        }
    }
}

/// A point in time by which a step must finish.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    step: Step,
    at: Option<Instant>,
}

impl Deadline {
    /// Starts the deadline of `step` now.
    pub fn start(timeouts: &Timeouts, step: Step) -> Self {
        Self {
            step,
            at: timeouts.get(step).map(|t| Instant::now() + t),
        }
    }

    /// The step this deadline times.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Time left, `Ok(None)` for no deadline, or [`Error::Timeout`] if it has
    /// passed. Never returns `Some(0)` (which sockets read as "no timeout").
    pub fn remaining(&self) -> Result<Option<Duration>> {
        match self.at {
            None => Ok(None),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(Error::Timeout(self.step))
                } else {
                    Ok(Some(left.max(Duration::from_micros(1))))
                }
            }
        }
    }
}
