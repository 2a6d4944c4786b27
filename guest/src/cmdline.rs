//! The kernel command line: `key=value` words separated by spaces.
//!
//! | key               | value                                   | default                      |
//! |-------------------|-----------------------------------------|------------------------------|
//! | `svmc.log`        | `off`, `error`, `warn`, `info`, `debug`, `trace` (the default image has debug and trace compiled out: it logs at info and warns; `cargo xtask build-image --verbose` builds one with them) | `info` |
//! | `svmc.host_port`  | host vsock port to connect to at boot   | `comm::service::HOST_PORT`   |
//! | `svmc.port`       | vsock port the guest listens on         | `comm::service::SERVICE_PORT`|
//! | `svmc.connect_timeout_ms` | how long to wait for the host to answer the boot-time connection | 200 |
//! | `svmc.test_panic` | `1`: panic right after start-up (tests the panic path) | off           |
//! | `svmc.hostile`    | with the `hostile` feature only: how to misbehave (the `hostile` module) | off |
//! | `svmc.mode`       | `service` (the `svmc` protocol), or with the `floors` feature only (not in the default image) `echo` (raw byte echo) or `raw-reverse` (raw store-and-forward reverse), the benchmark floors | `service` |
//! | `svmc.max_conns`  | connections served at once, the boot connection included (at least 1) | 8 |
//! | `svmc.idle_timeout_ms` | how long a connection must have been silent to be closed for a new one when `max_conns` are served | 5000 |
//!
//! Anything else, and values that do not parse, are ignored and reported
//! as warnings once the logger is up. Parsing does not allocate: it runs
//! before the heap exists.

use comm::service::{HOST_PORT, SERVICE_PORT};
use log::LevelFilter;

/// Default of `svmc.max_conns`.
pub const DEFAULT_MAX_CONNS: usize = 8;

/// Default of `svmc.idle_timeout_ms`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5000;

/// How many ignored words are remembered for the warnings.
const MAX_IGNORED: usize = 8;

/// A decimal number that fits `T`: one `u64` parser for every key (each
/// `str::parse` type would be its own copy in the image).
fn number<T: TryFrom<u64>>(value: &str) -> Option<T> {
    #[inline(never)]
    fn parse(value: &str) -> Option<u64> {
        value.parse().ok()
    }
    parse(value)?.try_into().ok()
}

/// What the firmware does with each connection (`svmc.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
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

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most verbose log level printed.
    pub log_level: LevelFilter,
    /// Host port for the boot-time connection.
    pub host_port: u32,
    /// Port to listen on.
    pub service_port: u32,
    /// Bound on the boot-time connection's set-up, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Panic after start-up.
    pub test_panic: bool,
    /// What connections get.
    pub mode: Mode,
    /// Connections served at once.
    pub max_conns: usize,
    /// Silence after which a connection may be closed for a new one when
    /// the table is full, in milliseconds.
    pub idle_timeout_ms: u64,
    ignored: [Option<&'static str>; MAX_IGNORED],
    ignored_count: usize,
}

impl Config {
    /// Parses `cmdline`; never fails.
    pub fn parse(cmdline: &'static str) -> Self {
        let mut config = Self {
            log_level: LevelFilter::Info,
            host_port: HOST_PORT,
            service_port: SERVICE_PORT,
            connect_timeout_ms: 200,
            test_panic: false,
            mode: Mode::Service,
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            ignored: [None; MAX_IGNORED],
            ignored_count: 0,
        };
        for word in cmdline.split_ascii_whitespace() {
            if !config.apply(word) {
                if let Some(slot) = config.ignored.get_mut(config.ignored_count) {
                    *slot = Some(word);
                }
                config.ignored_count += 1;
            }
        }
        config
    }

    /// Applies one word; `false` if it is unknown or its value is invalid.
    fn apply(&mut self, word: &str) -> bool {
        let Some((key, value)) = word.split_once('=') else {
            return false;
        };
        match key {
            "svmc.log" => value.parse().map(|l| self.log_level = l).is_ok(),
            "svmc.host_port" => number(value).map(|p| self.host_port = p).is_some(),
            "svmc.port" => number(value).map(|p| self.service_port = p).is_some(),
            "svmc.connect_timeout_ms" => {
                number(value).map(|t| self.connect_timeout_ms = t).is_some()
            }
            "svmc.max_conns" => match number::<usize>(value) {
                Some(n) if n >= 1 => {
                    self.max_conns = n;
                    true
                }
                _ => false,
            },
            "svmc.idle_timeout_ms" => number(value).map(|t| self.idle_timeout_ms = t).is_some(),
            "svmc.test_panic" => number::<u8>(value)
                .map(|v| self.test_panic = v != 0)
                .is_some(),
            "svmc.mode" => match value {
                "service" => {
                    self.mode = Mode::Service;
                    true
                }
                #[cfg(feature = "floors")]
                "echo" => {
                    self.mode = Mode::Echo;
                    true
                }
                #[cfg(feature = "floors")]
                "raw-reverse" => {
                    self.mode = Mode::RawReverse;
                    true
                }
                _ => false,
            },
            #[cfg(feature = "hostile")]
            "svmc.hostile" => crate::hostile::set_mode(value),
            _ => false,
        }
    }

    /// The words that were ignored (the first few of them), and how many
    /// there were in all.
    pub fn ignored(&self) -> (impl Iterator<Item = &'static str> + '_, usize) {
        (self.ignored.iter().flatten().copied(), self.ignored_count)
    }
}
