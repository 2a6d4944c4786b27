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

/// Default of `svmc.host_port`: the host's port for the boot connection
/// (`svmc_comm::HOST_PORT`, the platform's default for every service).
pub const DEFAULT_HOST_PORT: u32 = svmc_comm::HOST_PORT;

/// Default of `svmc.port`: the port the guest listens on
/// (`svmc_comm::SERVICE_PORT`).
pub const DEFAULT_SERVICE_PORT: u32 = svmc_comm::SERVICE_PORT;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cmdline: &'static str) -> Config {
        Config::parse(cmdline, no_words)
    }

    fn ignored(c: &Config) -> (Vec<&'static str>, usize) {
        let (words, n) = c.ignored();
        (words.collect(), n)
    }

    #[test]
    fn defaults_without_words() {
        for cmdline in ["", "   ", "\t\n"] {
            let c = parse(cmdline);
            assert_eq!(c.log_level, LevelFilter::Info);
            assert_eq!(
                (c.host_port, c.service_port),
                (DEFAULT_HOST_PORT, DEFAULT_SERVICE_PORT)
            );
            assert_eq!(c.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
            assert_eq!(c.max_conns, DEFAULT_MAX_CONNS);
            assert_eq!(c.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS);
            assert!(!c.test_panic);
            assert_eq!(ignored(&c), (vec![], 0));
        }
    }

    #[test]
    fn reads_every_key() {
        let c = parse(
            "svmc.log=debug svmc.host_port=9000\tsvmc.port=9001\nsvmc.connect_timeout_ms=50 \
             svmc.max_conns=3 svmc.idle_timeout_ms=10 svmc.test_panic=1",
        );
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!((c.host_port, c.service_port), (9000, 9001));
        assert_eq!(
            (c.connect_timeout_ms, c.max_conns, c.idle_timeout_ms),
            (50, 3, 10)
        );
        assert!(c.test_panic);
        assert_eq!(ignored(&c).1, 0);
    }

    #[test]
    fn the_last_of_repeated_words_wins() {
        let c = parse("svmc.port=1 svmc.port=2 svmc.log=off svmc.log=TRACE");
        assert_eq!(c.service_port, 2);
        assert_eq!(c.log_level, LevelFilter::Trace);
    }

    #[test]
    fn hostile_values_are_ignored_and_keep_the_default() {
        let c = parse(
            "svmc.port=4294967296 svmc.host_port=-1 svmc.max_conns=0 svmc.log=loud \
             svmc.test_panic=256 svmc.idle_timeout_ms=18446744073709551616 \
             svmc.connect_timeout_ms= svmc.port=+1x svmc.max_conns=99999999999999999999999",
        );
        assert_eq!(
            (c.host_port, c.service_port),
            (DEFAULT_HOST_PORT, DEFAULT_SERVICE_PORT)
        );
        assert_eq!(c.max_conns, DEFAULT_MAX_CONNS);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert!(!c.test_panic);
        assert_eq!(c.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS);
        assert_eq!(c.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        let (words, n) = ignored(&c);
        assert_eq!(n, 9);
        assert_eq!(words.len(), MAX_IGNORED);
        assert_eq!(words[0], "svmc.port=4294967296");
    }

    #[test]
    fn words_without_a_value_or_key_are_ignored() {
        let c = parse("quiet = =x svmc.port svmc.port==7 x=y=z");
        assert_eq!(c.service_port, DEFAULT_SERVICE_PORT);
        assert_eq!(
            ignored(&c),
            (
                vec!["quiet", "=", "=x", "svmc.port", "svmc.port==7", "x=y=z"],
                6
            )
        );
    }

    #[test]
    fn many_ignored_words_are_counted_not_stored() {
        let line: &'static str = "x ".repeat(10_000).leak();
        let (words, n) = ignored(&parse(line));
        assert_eq!((words.len(), n), (MAX_IGNORED, 10_000));
    }

    #[test]
    fn a_service_takes_its_own_words() {
        fn words(key: &str, value: &str) -> bool {
            key == "kv.slots" && number::<u16>(value).is_some()
        }
        let c = Config::parse("kv.slots=8 kv.slots=70000 svmc.port=5 kv.other=1", words);
        assert_eq!(c.service_port, 5);
        assert_eq!(ignored(&c), (vec!["kv.slots=70000", "kv.other=1"], 2));
        // The runtime's keys are the runtime's: the service never sees them.
        fn greedy(key: &str, _: &str) -> bool {
            assert!(!key.starts_with("svmc.port"), "{key}");
            true
        }
        assert_eq!(Config::parse("svmc.port=5 a=b", greedy).service_port, 5);
    }

    #[test]
    fn number_fits_the_type() {
        assert_eq!(number::<u8>("255"), Some(255));
        assert_eq!(number::<u8>("256"), None);
        assert_eq!(number::<u32>("0x10"), None);
        assert_eq!(number::<u64>("18446744073709551615"), Some(u64::MAX));
        assert_eq!(number::<u64>(""), None);
        assert_eq!(number::<u64>(" 1"), None);
    }
}
