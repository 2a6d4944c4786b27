//! The command-line definition of `host-cli` ([`cli`]), a library so that
//! `cargo xtask dist-docs` can generate completions and a man page from it.
//! The tool itself is `src/main.rs`, over the host library (`svmc-host`).

pub mod cli;
