//! What the firmware takes from the device tree QEMU passes: the command
//! line (`/chosen/bootargs`), RAM (`/memory`), the PL011 UART, the PSCI
//! conduit (`/psci` `method`), the virtio-mmio slots and the PCIe host
//! bridge (ECAM and its 32-bit memory window). Read once at boot, with the
//! MMU on and before the heap exists, so nothing here allocates.

use core::ops::Range;

use fdt::Fdt;

use crate::layout;

/// Where QEMU puts the device tree for an ELF image on `virt`: the base of
/// RAM (hw/arm/boot.c, when the image leaves room below it).
pub const DTB_ADDRESS: usize = 0x4000_0000;

/// The PL011 of QEMU `virt`, used if the device tree names none.
pub const DEFAULT_UART: usize = 0x0900_0000;

/// How many virtio-mmio slots are remembered (`virt` has 32).
const MAX_MMIO: usize = 32;

/// How PSCI calls reach the firmware (DT binding `arm,psci` `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc`: a hypervisor (QEMU's own PSCI under TCG at EL1).
    Hvc,
    /// `smc`: secure firmware at EL3.
    Smc,
}

/// A PCIe host bridge (`pci-host-ecam-generic`).
#[derive(Debug, Clone, Copy)]
pub struct PciHost {
    /// ECAM base (CPU physical address).
    pub ecam: usize,
    /// ECAM size in bytes.
    pub ecam_size: usize,
    /// The 32-bit, non-prefetchable memory window for BARs: PCI address,
    /// CPU address, size.
    pub mem32: Option<(u64, u64, u64)>,
}

/// The platform as the device tree describes it.
#[derive(Debug, Clone)]
pub struct Platform {
    /// `/chosen/bootargs` ("" if none).
    pub bootargs: &'static str,
    /// The RAM region holding the image.
    pub ram: Option<Range<usize>>,
    /// PL011 registers.
    pub uart: usize,
    /// PSCI conduit, if there is a `/psci` node.
    pub psci: Option<Conduit>,
    /// virtio-mmio register windows (base, size), in device-tree order.
    pub virtio_mmio: [Option<(usize, usize)>; MAX_MMIO],
    /// The PCIe host bridge, if any.
    pub pci: Option<PciHost>,
}

/// Why the device tree could not be used.
#[derive(Debug)]
pub enum DtError {
    /// No device tree magic at the address.
    BadMagic(usize),
    /// The blob is larger than the room below the image.
    TooLarge(usize),
    /// The `fdt` crate rejected it.
    Parse(fdt::FdtError),
}

impl core::fmt::Display for DtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(a) => write!(f, "no device tree (magic 0xd00dfeed) at {a:#x}"),
            Self::TooLarge(n) => write!(f, "device tree of {n} bytes overlaps the image"),
            Self::Parse(e) => write!(f, "device tree: {e}"),
        }
    }
}

/// Flattened device tree magic, big-endian at offset 0.
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Parses the device tree at `address`.
///
/// # Safety
///
/// `address` must be identity-mapped RAM below the image that nothing
/// writes for the rest of the program (QEMU's DTB at the base of RAM).
pub unsafe fn parse(address: usize) -> Result<Platform, DtError> {
    let room = layout::image_range().start.saturating_sub(address);
    // SAFETY: the caller promised readable RAM from `address` up to the image.
    let head = unsafe { core::slice::from_raw_parts(address as *const u8, 8.min(room)) };
    if head.len() < 8 || u32::from_be_bytes([head[0], head[1], head[2], head[3]]) != FDT_MAGIC {
        return Err(DtError::BadMagic(address));
    }
    let total = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if total > room {
        return Err(DtError::TooLarge(total));
    }
    // SAFETY: as above; `total` bytes lie below the image and are never
    // written, so a `'static` shared slice is sound.
    let blob: &'static [u8] = unsafe { core::slice::from_raw_parts(address as *const u8, total) };
    let fdt = Fdt::new(blob).map_err(DtError::Parse)?;
    Ok(platform(&fdt))
}

fn platform(fdt: &Fdt<'static>) -> Platform {
    let image = layout::image_range();
    let ram = fdt.memory().regions().find_map(|r| {
        let start = r.starting_address as usize;
        let end = start.checked_add(r.size?)?;
        (start <= image.start && end >= image.end).then_some(start..end)
    });
    let uart = fdt
        .find_compatible(&["arm,pl011"])
        .and_then(|n| n.reg()?.next())
        .map_or(DEFAULT_UART, |r| r.starting_address as usize);
    let psci = fdt
        .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
        .and_then(|n| n.property("method")?.as_str())
        .and_then(|m| match m {
            "hvc" => Some(Conduit::Hvc),
            "smc" => Some(Conduit::Smc),
            _ => None,
        });
    let mut virtio_mmio = [None; MAX_MMIO];
    let mmio_nodes = fdt.all_nodes().filter(|n| {
        n.compatible()
            .is_some_and(|c| c.all().any(|c| c == "virtio,mmio"))
    });
    for (slot, node) in virtio_mmio.iter_mut().zip(mmio_nodes) {
        *slot = node
            .reg()
            .and_then(|mut r| r.next())
            .and_then(|r| Some((r.starting_address as usize, r.size?)));
    }
    let pci = fdt
        .find_compatible(&["pci-host-ecam-generic"])
        .and_then(|n| {
            let reg = n.reg()?.next()?;
            Some(PciHost {
                ecam: reg.starting_address as usize,
                ecam_size: reg.size?,
                mem32: n.property("ranges").and_then(|p| mem32_window(p.value)),
            })
        });
    Platform {
        bootargs: fdt.chosen().bootargs().unwrap_or(""),
        ram,
        uart,
        psci,
        virtio_mmio,
        pci,
    }
}

/// The first 32-bit non-prefetchable memory range of a PCI host bridge's
/// `ranges` (IEEE 1275 PCI binding: 3 cells PCI address, whose first cell's
/// bits 25:24 are the space code, 0b10 = 32-bit memory; 2 cells CPU address
/// and 2 cells size for `virt`).
fn mem32_window(ranges: &[u8]) -> Option<(u64, u64, u64)> {
    const ENTRY: usize = 7 * 4;
    const SPACE_MEM32: u32 = 0b10;
    let cell = |e: &[u8], i: usize| {
        u32::from_be_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]])
    };
    let pair = |e: &[u8], i: usize| (u64::from(cell(e, i)) << 32) | u64::from(cell(e, i + 1));
    ranges.chunks_exact(ENTRY).find_map(|e| {
        let hi = cell(e, 0);
        let prefetchable = hi & (1 << 30) != 0;
        ((hi >> 24) & 0b11 == SPACE_MEM32 && !prefetchable)
            .then(|| (pair(e, 1), pair(e, 3), pair(e, 5)))
    })
}
