//! Results on standard output: every write says what failed (a closed pipe
//! as in `host-cli list | head -1`, a full disk) instead of panicking as
//! `println!` does or giving a bare OS error.

use std::io::Write;

use anyhow::{Context, Result};

/// Writes `text` to standard output and flushes it.
pub fn print(text: &str) -> Result<()> {
    write_bytes(text.as_bytes())
}

/// Writes `text` and a newline to standard output and flushes it.
pub fn println(text: impl std::fmt::Display) -> Result<()> {
    print(&format!("{text}\n"))
}

/// Writes `bytes` to standard output and flushes it.
pub fn write_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing standard output")
}
