//! A `log` logger on the architecture's console: one line per record,
//! `[LEVEL] message`, written under the console lock so lines never mix.

use log::{LevelFilter, Log, Metadata, Record};

use crate::arch::console;

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            console::with(|w| {
                let _ = writeln!(w, "[{:>5}] {}", record.level(), record.args());
            });
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the logger with `level`. Needs the console initialised.
pub fn init(level: LevelFilter) {
    // Fails only if a logger is already set: then that one stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
