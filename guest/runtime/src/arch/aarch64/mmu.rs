//! The identity map that `boot.s` turns on before any Rust code runs, and
//! the system-register values it writes.
//!
//! One level-1 table of 1 GiB blocks (4 KiB granule, 39-bit virtual
//! addresses, so the walk starts at level 1 and 512 entries cover 512 GiB),
//! written by `boot.s` into `.bss` before it turns the MMU on: a loop of
//! aligned 8-byte stores (with the MMU off every data access is Device
//! memory, where an unaligned access faults, so no Rust code runs there),
//! from the two descriptors and the RAM block range below. A table built at
//! compile time would be 4 KiB of the image file; the `aarch64-paging`
//! crate builds tables at run time from the heap, which does not exist yet
//! at that point.
//!
//! | entries   | physical range       | what is there on `virt`                                   | attributes     |
//! |-----------|----------------------|-----------------------------------------------------------|----------------|
//! | 0         | 0 .. 1 GiB           | flash, GIC, PL011, RTC, GPIO, virtio-mmio, PCIe MMIO and low ECAM | Device-nGnRE, never executable |
//! | 1 ..= 255 | 1 GiB .. 256 GiB     | RAM (from 0x4000_0000; the VM has as much as `-m` says)   | Normal write-back, inner shareable |
//! | 256 ..= 511 | 256 GiB .. 512 GiB | high GIC redistributors, high PCIe ECAM (0x40_1000_0000)  | Device-nGnRE, never executable |
//!
//! Entries beyond the RAM that `/memory` reports map nothing real; nothing
//! touches them (the heap is sized from `/memory`), and QEMU's TCG does not
//! speculate.
//!
//! `boot.s` writes the table with the caches off and the walk reads it
//! through them; QEMU has no cache model, so no maintenance is needed there.

/// `MAIR_EL1` attribute index of device memory.
const ATTR_DEVICE: u64 = 0;
/// `MAIR_EL1` attribute index of normal memory.
const ATTR_NORMAL: u64 = 1;

/// `MAIR_EL1`: Attr0 = 0x04 (Device-nGnRE), Attr1 = 0xff (Normal memory,
/// inner and outer write-back non-transient, read- and write-allocate).
pub const MAIR_EL1: u64 = (0x04 << (8 * ATTR_DEVICE)) | (0xff << (8 * ATTR_NORMAL));

/// `TCR_EL1.T0SZ` (bits 5:0): 64 - 25 = 39-bit virtual addresses.
const TCR_T0SZ: u64 = 25;
/// `TCR_EL1.IRGN0` (bits 9:8) = 0b01: table walks inner write-back RA/WA.
const TCR_IRGN0_WB: u64 = 0b01 << 8;
/// `TCR_EL1.ORGN0` (bits 11:10) = 0b01: table walks outer write-back RA/WA.
const TCR_ORGN0_WB: u64 = 0b01 << 10;
/// `TCR_EL1.SH0` (bits 13:12) = 0b11: table walks inner shareable.
const TCR_SH0_INNER: u64 = 0b11 << 12;
/// `TCR_EL1.TG0` (bits 15:14) = 0b00: 4 KiB granule for TTBR0.
const TCR_TG0_4K: u64 = 0b00 << 14;
/// `TCR_EL1.EPD1` (bit 23): no walks through TTBR1 (upper half unused).
const TCR_EPD1: u64 = 1 << 23;
/// `TCR_EL1.IPS` (bits 34:32) = 0b010: 40-bit intermediate physical
/// addresses (1 TiB; the high ECAM is at 257 GiB).
const TCR_IPS_40: u64 = 0b010 << 32;

/// `TCR_EL1` as `boot.s` writes it.
pub const TCR_EL1: u64 =
    TCR_T0SZ | TCR_IRGN0_WB | TCR_ORGN0_WB | TCR_SH0_INNER | TCR_TG0_4K | TCR_EPD1 | TCR_IPS_40;

/// `SCTLR_EL1` bits `boot.s` sets: M (0, MMU), C (2, data cache),
/// SA (3, SP alignment check), I (12, instruction cache).
pub const SCTLR_SET: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12);
/// `SCTLR_EL1` bits `boot.s` clears: A (1, alignment faults), WXN (19,
/// writable implies never-execute: the RAM block holds code and data).
pub const SCTLR_CLEAR: u64 = (1 << 1) | (1 << 19);

/// Block descriptor at level 1: bits 1:0 = 0b01.
const BLOCK: u64 = 0b01;
/// Access flag (bit 10): set, so the first access does not fault.
const AF: u64 = 1 << 10;
/// Shareability (bits 9:8) = 0b11: inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// Privileged execute-never (bit 53).
const PXN: u64 = 1 << 53;
/// Unprivileged execute-never (bit 54).
const UXN: u64 = 1 << 54;
/// AttrIndx (bits 4:2). AP (bits 7:6) = 0b00: read/write at EL1 only.
const fn attr_index(index: u64) -> u64 {
    index << 2
}

/// A device-memory block: Device-nGnRE, never executable (`boot.s` ORs
/// in the block's address).
pub const DEVICE_BLOCK: u64 = BLOCK | AF | attr_index(ATTR_DEVICE) | PXN | UXN;
/// A RAM block: Normal write-back, inner shareable, executable at EL1.
pub const NORMAL_BLOCK: u64 = BLOCK | AF | SH_INNER | attr_index(ATTR_NORMAL) | UXN;

/// Size of a level-1 block.
const GIB: u64 = 1 << 30;
/// First 1 GiB block of RAM (see the table in the module doc).
pub const RAM_FIRST_BLOCK: u64 = 1;
/// Last 1 GiB block of RAM.
pub const RAM_LAST_BLOCK: u64 = 255;

/// End of the identity map: 512 GiB (512 entries).
pub const IDENTITY_MAP_END: u64 = 512 * GIB;
