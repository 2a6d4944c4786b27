//! The kernel command line: `key=value` words separated by spaces.
//!
//! The runtime's own keys:
//!
//! | key               | value                                   | default                      |
//! |-------------------|-----------------------------------------|------------------------------|
//! | `svmc.log`        | `off`, `error`, `warn`, `info`, `debug`, `trace` (an image built with `log`'s `release_max_level_info` has debug and trace compiled out: it logs at info and warns) | `info` |
//! | `svmc.host_port`  | host vsock port to connect to at boot   | [`DEFAULT_HOST_PORT`]        |
//! | `svmc.port`       | vsock port the guest listens on         | [`DEFAULT_SERVICE_PORT`]     |
//! | `svmc.connect_timeout_ms` | how long to wait for the host to answer the boot-time connection | 200 |
//! | `svmc.test_panic` | `1`: panic right after start-up (tests the panic path) | off           |
//! | `svmc.max_conns`  | connections served at once, the boot connection included (at least 1) | 8 |
//! | `svmc.idle_timeout_ms` | how long a connection must have been silent to be closed for a new one when `max_conns` are served | 5000 |
//!
//! A service adds its own keys with a [`Words`] function (the `words`
//! argument of `svmc_runtime::main!`), which sees every word the runtime
//! does not take. Anything else, and values that do not parse, are
//! ignored and reported as warnings once the logger is up. Parsing does
//! not allocate: it runs before the heap exists. The command line is
//! untrusted input like any other: no value can make parsing fail, panic
//! or overflow; the worst a word can do is be ignored.

use log::LevelFilter;

/// Default of `svmc.host_port`: the host's port for the boot connection.
pub const DEFAULT_HOST_PORT: u32 = 7000;

/// Default of `svmc.port`: the port the guest listens on.
pub const DEFAULT_SERVICE_PORT: u32 = 7001;

/// Default of `svmc.max_conns`.
pub const DEFAULT_MAX_CONNS: usize = 8;

/// Default of `svmc.idle_timeout_ms`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5000;

/// Default of `svmc.connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 200;

/// How many ignored words are remembered for the warnings.
pub const MAX_IGNORED: usize = 8;

/// A service's parser for its own words: called with the key and the value
/// of each `key=value` word the runtime does not know; returns whether it
/// took the word. It runs before the heap exists: it must not allocate.
pub type Words = fn(key: &str, value: &str) -> bool;

/// A [`Words`] that takes nothing.
pub fn no_words(_key: &str, _value: &str) -> bool {
    false
}

/// A decimal number that fits `T`: one `u64` parser for every key (each
/// `str::parse` type would be its own copy in the image).
pub fn number<T: TryFrom<u64>>(value: &str) -> Option<T> {
    #[inline(never)]
    fn parse(value: &str) -> Option<u64> {
        value.parse().ok()
    }
    parse(value)?.try_into().ok()
}

/// The runtime's settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The whole command line.
    pub cmdline: &'static str,
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
    /// Connections served at once.
    pub max_conns: usize,
    /// Silence after which a connection may be closed for a new one when
    /// the table is full, in milliseconds.
    pub idle_timeout_ms: u64,
    ignored: [Option<&'static str>; MAX_IGNORED],
    ignored_count: usize,
}

impl Config {
    /// Parses `cmdline`, handing the words the runtime does not know to
    /// `words`; never fails.
    pub fn parse(cmdline: &'static str, words: Words) -> Self {
        let mut config = Self {
            cmdline,
            log_level: LevelFilter::Info,
            host_port: DEFAULT_HOST_PORT,
            service_port: DEFAULT_SERVICE_PORT,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            test_panic: false,
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            ignored: [None; MAX_IGNORED],
            ignored_count: 0,
        };
        for word in cmdline.split_ascii_whitespace() {
            let taken = match word.split_once('=') {
                Some((key, value)) => config.apply(key, value) || words(key, value),
                None => false,
            };
            if !taken {
                if let Some(slot) = config.ignored.get_mut(config.ignored_count) {
                    *slot = Some(word);
                }
                config.ignored_count = config.ignored_count.saturating_add(1);
            }
        }
        config
    }

    /// Applies one of the runtime's words; `false` if the key is not one
    /// of them or its value is invalid.
    fn apply(&mut self, key: &str, value: &str) -> bool {
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
            _ => false,
        }
    }

    /// The words that were ignored (the first [`MAX_IGNORED`] of them),
    /// and how many there were in all.
    pub fn ignored(&self) -> (impl Iterator<Item = &'static str> + '_, usize) {
        (self.ignored.iter().flatten().copied(), self.ignored_count)
    }
}

