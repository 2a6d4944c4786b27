//! Memory layout of the guest image, from the linker script's symbols
//! (`arch/<arch>/linker.ld`), in the manner of AOSP vmbase's `layout.rs`.
//!
//! All addresses are physical and identity-mapped. The heap is not here: it
//! is the part of the RAM region holding the image above
//! [`image_range`]`.end`, found at boot (see `heap.rs`).

use core::ops::Range;

/// Size of the boot stack in `.bss`; passed to `boot.s` as a `const`.
pub const STACK_SIZE: usize = 128 * 1024;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __bss_start: u8;
    static __bss_end: u8;
    static __stack_start: u8;
    static __stack_end: u8;
}

/// The range between two linker symbols.
macro_rules! linker_range {
    ($start:ident, $end:ident) => {
        (&raw const $start as usize)..(&raw const $end as usize)
    };
}

/// The whole image as loaded: code, data and `.bss` (page-aligned end).
pub fn image_range() -> Range<usize> {
    linker_range!(__image_start, __image_end)
}

/// Executable code, the boot code first.
pub fn text_range() -> Range<usize> {
    linker_range!(__text_start, __text_end)
}

/// Read-only data (including the boot GDT).
pub fn rodata_range() -> Range<usize> {
    linker_range!(__rodata_start, __rodata_end)
}

/// Initialised writable data.
pub fn data_range() -> Range<usize> {
    linker_range!(__data_start, __data_end)
}

/// Zero-initialised data: the boot page tables, the stack and statics.
/// Zeroed by QEMU's ELF loader, never by the guest.
pub fn bss_range() -> Range<usize> {
    linker_range!(__bss_start, __bss_end)
}

/// The boot stack (inside `.bss`); it grows down from `end`.
pub fn stack_range() -> Range<usize> {
    linker_range!(__stack_start, __stack_end)
}
