//! What the firmware takes from the device tree QEMU passes: the command
//! line (`/chosen/bootargs`), RAM (`/memory`), the PL011 UART, the PSCI
//! conduit (`/psci` `method`), the virtio-mmio slots and the PCIe host
//! bridge (ECAM and its 32-bit memory window). Read once at boot, with the
//! MMU on and before the heap exists, so nothing here allocates.
//!
//! The parser is pure ([`platform`] takes the blob as a byte slice), so
//! truncated, malformed and hostile blobs are tested on the host. Every
//! offset, length and cell count in the blob is untrusted: anything out of
//! bounds makes the blob [`DtError::Malformed`], never a panic, and the
//! walk is one pass bounded by the blob's length and [`MAX_DEPTH`].

use core::ops::Range;

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
pub struct Platform<'a> {
    /// `/chosen/bootargs` ("" if none).
    pub bootargs: &'a str,
    /// The RAM region holding the image.
    pub ram: Option<Range<usize>>,
    /// Bytes of the blob (its header's `totalsize`).
    pub blob_len: usize,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtError {
    /// No device tree magic at the start of the blob.
    BadMagic,
    /// The header's `totalsize` is more than the room the blob has.
    TooLarge(usize),
    /// The structure block is malformed.
    Malformed,
}

impl core::fmt::Display for DtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic => write!(f, "no device tree (magic 0xd00dfeed)"),
            Self::TooLarge(n) => write!(f, "device tree of {n} bytes overlaps the image"),
            Self::Malformed => write!(f, "device tree: malformed structure block"),
        }
    }
}

/// Flattened device tree magic, big-endian at offset 0.
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Parses the device tree at the start of `room` (the memory from the
/// blob up to the image): its header, then the structure block. `image`
/// is where the image lies; the RAM region reported is the one holding it.
pub fn platform<'a>(room: &'a [u8], image: &Range<usize>) -> Result<Platform<'a>, DtError> {
    if be32(room, 0) != Some(FDT_MAGIC) {
        return Err(DtError::BadMagic);
    }
    let total = be32(room, 4).ok_or(DtError::BadMagic)? as usize;
    let blob = room.get(..total).ok_or(DtError::TooLarge(total))?;
    let mut p = walk(blob, image).ok_or(DtError::Malformed)?;
    p.blob_len = total;
    Ok(p)
}

/// Structure block tokens (Devicetree Specification 0.4, 5.4.1).
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// Deepest node nesting followed (`virt` nests 3 deep).
pub const MAX_DEPTH: usize = 16;

/// Largest `#address-cells` and `#size-cells` read (two cells make 64
/// bits; more would not fit an address).
const MAX_CELLS: u32 = 2;

/// The properties of one node that [`platform`] uses.
#[derive(Default, Clone, Copy)]
struct Node<'a> {
    name: &'a [u8],
    compatible: &'a [u8],
    reg: &'a [u8],
    ranges: &'a [u8],
    method: &'a [u8],
    bootargs: &'a [u8],
    device_type: &'a [u8],
}

impl Node<'_> {
    /// Whether `compatible` (a list of NUL-terminated strings) has `c`.
    fn is_compatible(&self, c: &str) -> bool {
        self.compatible
            .split(|&b| b == 0)
            .any(|s| s == c.as_bytes())
    }

    /// The node name without its unit address.
    fn base_name(&self) -> &[u8] {
        self.name.split(|&b| b == b'@').next().unwrap_or(self.name)
    }
}

/// A big-endian u32 at `off`.
fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// A property value as a string (up to its NUL).
fn as_str(v: &[u8]) -> Option<&str> {
    let v = v.split(|&b| b == 0).next()?;
    core::str::from_utf8(v).ok()
}

/// The first (address, size) of a `reg` with the parent's cell counts.
/// `None` if the cells are missing or more than [`MAX_CELLS`] each.
fn first_reg(reg: &[u8], (address_cells, size_cells): (u32, u32)) -> Option<(usize, usize)> {
    if address_cells > MAX_CELLS || size_cells > MAX_CELLS {
        return None;
    }
    let cells = |off: usize, n: u32| -> Option<u64> {
        (0..n as usize).try_fold(0u64, |v, i| {
            Some((v << 32) | u64::from(be32(reg, off + 4 * i)?))
        })
    };
    let address = cells(0, address_cells)?;
    let size = cells(4 * address_cells as usize, size_cells)?;
    Some((usize::try_from(address).ok()?, usize::try_from(size).ok()?))
}

/// Reads everything [`Platform`] holds in one pass over the structure
/// block. (The `fdt` crate walks the whole tree again for each lookup, and
/// took about 4.5 ms of the boot under TCG for the handful this needs; one
/// pass takes a fraction of that.)
fn walk<'a>(blob: &'a [u8], image: &Range<usize>) -> Option<Platform<'a>> {
    let structs = be32(blob, 8)? as usize;
    let strings = be32(blob, 12)? as usize;
    let strings = blob.get(strings..)?;
    let mut p = Platform {
        bootargs: "",
        ram: None,
        blob_len: 0,
        uart: DEFAULT_UART,
        psci: None,
        virtio_mmio: [None; MAX_MMIO],
        pci: None,
    };
    let mut mmio = 0;
    // #address-cells and #size-cells that each depth gives its children
    // (the defaults are 2 and 1), and the node being read at each depth.
    let mut cells = [(2u32, 1u32); MAX_DEPTH + 1];
    let mut nodes = [Node::default(); MAX_DEPTH + 1];
    let mut depth = 0usize;
    let mut at = structs;
    loop {
        let token = be32(blob, at)?;
        at += 4;
        match token {
            FDT_BEGIN_NODE => {
                let rest = blob.get(at..)?;
                let len = rest.iter().position(|&b| b == 0)?;
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                nodes[depth] = Node {
                    name: &rest[..len],
                    ..Node::default()
                };
                cells[depth] = (2, 1);
                at = (at + len + 1).next_multiple_of(4);
            }
            FDT_PROP => {
                let len = be32(blob, at)? as usize;
                let name_off = be32(blob, at + 4)? as usize;
                let end = (at + 8).checked_add(len)?;
                let value = blob.get(at + 8..end)?;
                at = end.next_multiple_of(4);
                let name = strings.get(name_off..)?;
                let name = &name[..name.iter().position(|&b| b == 0)?];
                let node = &mut nodes[depth];
                match name {
                    b"compatible" => node.compatible = value,
                    b"reg" => node.reg = value,
                    b"ranges" => node.ranges = value,
                    b"method" => node.method = value,
                    b"bootargs" => node.bootargs = value,
                    b"device_type" => node.device_type = value,
                    b"#address-cells" => cells[depth].0 = be32(value, 0)?.min(MAX_CELLS + 1),
                    b"#size-cells" => cells[depth].1 = be32(value, 0)?.min(MAX_CELLS + 1),
                    _ => {}
                }
            }
            FDT_END_NODE => {
                let node = nodes[depth];
                let parent_cells = cells[depth.checked_sub(1)?];
                finish_node(&node, depth, parent_cells, image, &mut p, &mut mmio);
                depth = depth.checked_sub(1)?;
            }
            FDT_NOP => {}
            FDT_END => return Some(p),
            _ => return None,
        }
    }
}

/// Takes what [`Platform`] needs from a node once all its properties are
/// known.
fn finish_node<'a>(
    node: &Node<'a>,
    depth: usize,
    parent_cells: (u32, u32),
    image: &Range<usize>,
    p: &mut Platform<'a>,
    mmio: &mut usize,
) {
    let reg = || first_reg(node.reg, parent_cells);
    if depth == 2 && node.base_name() == b"chosen" {
        p.bootargs = as_str(node.bootargs).unwrap_or("");
    }
    if depth == 2 && as_str(node.device_type) == Some("memory") && p.ram.is_none() {
        p.ram = reg()
            .and_then(|(start, size)| Some(start..start.checked_add(size)?))
            .filter(|r| r.start <= image.start && r.end >= image.end);
    }
    if node.is_compatible("arm,pl011")
        && let Some((base, _)) = reg()
    {
        p.uart = base;
    }
    if ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]
        .iter()
        .any(|c| node.is_compatible(c))
    {
        p.psci = match as_str(node.method) {
            Some("hvc") => Some(Conduit::Hvc),
            Some("smc") => Some(Conduit::Smc),
            _ => None,
        };
    }
    if node.is_compatible("virtio,mmio")
        && *mmio < MAX_MMIO
        && let Some(window) = reg()
    {
        p.virtio_mmio[*mmio] = Some(window);
        *mmio += 1;
    }
    if node.is_compatible("pci-host-ecam-generic")
        && p.pci.is_none()
        && let Some((ecam, ecam_size)) = reg()
    {
        p.pci = Some(PciHost {
            ecam,
            ecam_size,
            mem32: mem32_window(node.ranges),
        });
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

