//! The PVH start-of-day structure (Xen public header
//! `xen/include/public/arch-x86/hvm/start_info.h`) and what we take from it:
//! the command line and the memory map.

use core::ffi::CStr;

use crate::arch::BootInfo;
use crate::layout;
use crate::parse::pvh::{self, MemmapEntry};

/// `XEN_HVM_START_MAGIC_VALUE`.
const START_MAGIC: u32 = 0x336e_c578;

/// Heap size used when the VMM gives no memory map (start_info version 0).
const FALLBACK_HEAP_SIZE: usize = 16 << 20;

/// Longest command line read.
const MAX_CMDLINE: usize = 4096;

/// `struct hvm_start_info` (version 1).
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    // Version 1 and later:
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// Reads the command line and picks the heap range; also returns the
/// RSDP's address (0 if the VMM gave none).
///
/// # Safety
///
/// `paddr` must be the address of a valid `hvm_start_info` (PVH entry EBX),
/// whose command line and memory map stay valid and unwritten for the rest
/// of the program, outside the heap.
pub unsafe fn boot_info(paddr: u64) -> (BootInfo, u64) {
    let image = layout::image_range();
    let fallback = BootInfo {
        cmdline: "",
        heap: image.end..image.end + FALLBACK_HEAP_SIZE,
        heap_from_memmap: false,
        heap_low: 0..0,
    };
    if paddr == 0 {
        return (fallback, 0);
    }
    // SAFETY: the caller promised a valid structure at `paddr`.
    let info = unsafe { &*(paddr as *const StartInfo) };
    if info.magic != START_MAGIC {
        return (fallback, 0);
    }
    // SAFETY: a non-zero `cmdline_paddr` points to a NUL-terminated string
    // (PVH ABI) that stays valid.
    let cmdline = unsafe { cmdline(info.cmdline_paddr) };
    let heap = if info.version >= 1 && info.memmap_paddr != 0 {
        // At most MAX_ENTRIES of them: the count is the VMM's word.
        let entries = info.memmap_entries.min(pvh::MAX_ENTRIES as u32) as usize;
        // SAFETY: version 1 has `memmap_entries` entries at `memmap_paddr`
        // (we read no more than that), which stay valid and unwritten.
        let map = unsafe {
            core::slice::from_raw_parts(info.memmap_paddr as *const MemmapEntry, entries)
        };
        pvh::heap(map, image.end, super::IDENTITY_MAP_END)
    } else {
        None
    };
    let boot = match heap {
        Some(heap) => BootInfo {
            cmdline,
            heap,
            heap_from_memmap: true,
            heap_low: 0..0,
        },
        None => BootInfo {
            cmdline,
            ..fallback
        },
    };
    (boot, info.rsdp_paddr)
}

/// The command line at `paddr`, or "" if absent or not UTF-8.
///
/// # Safety
///
/// `paddr` is 0 or the address of a NUL-terminated string that stays valid.
unsafe fn cmdline(paddr: u64) -> &'static str {
    if paddr == 0 {
        return "";
    }
    // Bound the scan in case the terminator is missing.
    // SAFETY: the caller promised a readable string; we read at most
    // MAX_CMDLINE bytes of it, all identity-mapped RAM below the image.
    let bytes = unsafe { core::slice::from_raw_parts(paddr as *const u8, MAX_CMDLINE) };
    let s = CStr::from_bytes_until_nul(bytes)
        .map(CStr::to_bytes)
        .unwrap_or_default();
    core::str::from_utf8(s).unwrap_or("")
}
