//! `memcpy` for the aarch64 guest (`memcpy.s`).
//!
//! `aarch64-unknown-none` is built with `+strict-align` (code may run with
//! the MMU off, when every access must be aligned), and so is its
//! precompiled `compiler_builtins`: when source and destination differ in
//! alignment, its `memcpy` assembles every 8 bytes from eight single-byte
//! loads. That is the case for every vsock payload, which follows a 44-byte
//! header in the virtio buffers, so each byte the guest receives or sends
//! went through that path. Our `boot.s` turns the MMU on before any Rust
//! code runs, with RAM as Normal memory and alignment checks off, so
//! unaligned loads and stores are allowed and `memcpy.s` copies 16 bytes
//! per `ldp`/`stp` whatever the alignment. `compiler_builtins` defines its
//! `memcpy` as a weak symbol, so this one takes its place at link time.
//!
//! Nothing copies to or from device memory with `memcpy`: MMIO goes through
//! volatile accesses of the register's own size.

core::arch::global_asm!(include_str!("memcpy.s"));
