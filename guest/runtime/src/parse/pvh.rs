//! The PVH memory map (Xen public header
//! `xen/include/public/arch-x86/hvm/start_info.h`,
//! `struct hvm_memmap_table_entry`): which RAM the heap may take.
//!
//! The entries are untrusted: one whose end overflows, that is not RAM,
//! or that does not hold the image is not used, and the heap is clipped to
//! what the boot code maps.

use core::ops::Range;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const MEMMAP_TYPE_RAM: u32 = 1;

/// Most entries the boot code reads (QEMU passes a handful): the count
/// is the VMM's word, and the slice is made from it.
pub const MAX_ENTRIES: usize = 128;

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*`.
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(size_of::<MemmapEntry>() == 24);

/// The RAM above `image_end` in the RAM entry that holds it, clipped to
/// `limit` (the end of the identity map); `None` if there is none.
pub fn heap(map: &[MemmapEntry], image_end: usize, limit: u64) -> Option<Range<usize>> {
    let start = image_end as u64;
    let end = map.iter().find_map(|e| {
        let end = e.addr.checked_add(e.size)?;
        (e.kind == MEMMAP_TYPE_RAM && e.addr <= start && end > start).then_some(end.min(limit))
    })?;
    (end > start).then(|| image_end..usize::try_from(end).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_END: usize = 0x0014_0000;
    const LIMIT: u64 = 1 << 32;

    fn entry(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }

    /// QEMU's map for 128 MiB: low RAM, the BIOS hole, RAM from 1 MiB.
    fn qemu() -> [MemmapEntry; 3] {
        [
            entry(0, 0x9_fc00, MEMMAP_TYPE_RAM),
            entry(0xf_0000, 0x1_0000, 2),
            entry(0x10_0000, 0x07f0_0000, MEMMAP_TYPE_RAM),
        ]
    }

    #[test]
    fn takes_the_ram_above_the_image() {
        assert_eq!(
            heap(&qemu(), IMAGE_END, LIMIT),
            Some(IMAGE_END..0x0800_0000)
        );
    }

    #[test]
    fn clips_to_the_identity_map() {
        let map = [entry(0x10_0000, 8 << 30, MEMMAP_TYPE_RAM)];
        assert_eq!(heap(&map, IMAGE_END, LIMIT), Some(IMAGE_END..1 << 32));
        assert_eq!(
            heap(&map, IMAGE_END, IMAGE_END as u64),
            None,
            "nothing left"
        );
        assert_eq!(heap(&map, IMAGE_END, 0), None, "limit below the image");
    }

    #[test]
    fn hostile_entries_are_not_used() {
        let cases: [&[MemmapEntry]; 6] = [
            &[],
            &[entry(0x10_0000, u64::MAX, MEMMAP_TYPE_RAM)], // end overflows
            &[entry(0x10_0000, 0x0800_0000, 2)],            // not RAM
            &[entry(0x10_0000, 0x4_0000, MEMMAP_TYPE_RAM)], // ends at the image end
            &[entry(0x20_0000, 0x0800_0000, MEMMAP_TYPE_RAM)], // starts above it
            &[entry(u64::MAX, 1, MEMMAP_TYPE_RAM)],
        ];
        for map in cases {
            assert_eq!(heap(map, IMAGE_END, LIMIT), None, "{map:x?}");
        }
    }
}
