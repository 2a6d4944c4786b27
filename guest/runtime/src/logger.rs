//! A `log` logger on the architecture's console: one line per record,
//! `[LEVEL] message`, written under the console lock so lines never mix.
//!
//! Levels above `log::STATIC_MAX_LEVEL` are compiled out (debug and trace
//! in an image built with `log`'s `release_max_level_info`, as the svmc
//! firmware's default image is); [`init`] caps the level there and says
//! so.

use log::{Level, LevelFilter, Log, Metadata, Record, STATIC_MAX_LEVEL};

use crate::arch::console;

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // The level's name padded to 5 by hand: `{:>5}` pulls in
            // `Formatter::pad`.
            let prefix = match record.level() {
                Level::Error => "[ERROR] ",
                Level::Warn => "[ WARN] ",
                Level::Info => "[ INFO] ",
                Level::Debug => "[DEBUG] ",
                Level::Trace => "[TRACE] ",
            };
            console::with(|w| {
                let _ = w.write_str(prefix);
                let _ = w.write_fmt(*record.args());
                let _ = w.write_str("\n");
            });
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the logger with `level`, or the most verbose level compiled
/// in if that is less (and then warns). Needs the console initialised.
pub(crate) fn init(level: LevelFilter) {
    // Fails only if a logger is already set: then that one stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level.min(STATIC_MAX_LEVEL));
    if level > STATIC_MAX_LEVEL {
        log::warn!(
            "svmc.log asks for {}: this image logs at most at {} (the more verbose levels are compiled out)",
            level.as_str(),
            STATIC_MAX_LEVEL.as_str()
        );
    }
}
