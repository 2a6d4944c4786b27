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

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a flattened device tree (Devicetree Specification 0.4,
    /// chapter 5).
    #[derive(Default)]
    struct Fdt {
        structs: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Fdt {
        fn token(&mut self, t: u32) -> &mut Self {
            self.structs.extend_from_slice(&t.to_be_bytes());
            self
        }

        fn begin(&mut self, name: &str) -> &mut Self {
            self.token(FDT_BEGIN_NODE);
            self.structs.extend_from_slice(name.as_bytes());
            self.structs.push(0);
            self.align()
        }

        fn end(&mut self) -> &mut Self {
            self.token(FDT_END_NODE)
        }

        fn align(&mut self) -> &mut Self {
            while !self.structs.len().is_multiple_of(4) {
                self.structs.push(0);
            }
            self
        }

        fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            self.token(FDT_PROP);
            self.structs
                .extend_from_slice(&(value.len() as u32).to_be_bytes());
            self.structs.extend_from_slice(&off.to_be_bytes());
            self.structs.extend_from_slice(value);
            self.align()
        }

        fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
            let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
            self.prop(name, &v)
        }

        fn blob(&mut self) -> Vec<u8> {
            self.token(FDT_END);
            let header = 40u32;
            let structs = header;
            let strings = structs + self.structs.len() as u32;
            let total = strings + self.strings.len() as u32;
            let mut b = Vec::new();
            for v in [FDT_MAGIC, total, structs, strings, header, 17, 16, 0] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            b.extend_from_slice(&(self.strings.len() as u32).to_be_bytes());
            b.extend_from_slice(&(self.structs.len() as u32).to_be_bytes());
            b.extend_from_slice(&self.structs);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    const IMAGE: Range<usize> = 0x4020_0000..0x4030_0000;

    /// QEMU `virt`'s tree, reduced to what the parser reads and a few
    /// nodes it skips.
    fn virt() -> Vec<u8> {
        let mut f = Fdt::default();
        f.begin("")
            .cells("#address-cells", &[2])
            .cells("#size-cells", &[2])
            .prop("compatible", b"linux,dummy-virt\0");
        f.begin("psci")
            .prop("compatible", b"arm,psci-1.0\0arm,psci-0.2\0arm,psci\0")
            .prop("method", b"hvc\0")
            .end();
        f.begin("memory@40000000")
            .prop("device_type", b"memory\0")
            .cells("reg", &[0, 0x4000_0000, 0, 0x0800_0000])
            .end();
        f.begin("pl011@9000000")
            .prop("compatible", b"arm,pl011\0arm,primecell\0")
            .cells("reg", &[0, 0x0900_0000, 0, 0x1000])
            .end();
        for n in 0..3u32 {
            f.begin("virtio_mmio@a000000")
                .prop("compatible", b"virtio,mmio\0")
                .cells("reg", &[0, 0x0a00_0000 + n * 0x200, 0, 0x200])
                .end();
        }
        f.begin("pcie@10000000")
            .prop("compatible", b"pci-host-ecam-generic\0")
            .prop("device_type", b"pci\0")
            .cells("reg", &[0x40, 0x1000_0000, 0, 0x1000_0000])
            .cells(
                "ranges",
                &[
                    0x0100_0000,
                    0,
                    0,
                    0,
                    0x3eff_0000,
                    0,
                    0x1_0000, // I/O
                    0x0200_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x2eff_0000, // mem32
                    0x0300_0000,
                    0x80,
                    0,
                    0x80,
                    0,
                    0x80,
                    0, // mem64
                ],
            )
            .end();
        f.begin("chosen")
            .prop("bootargs", b"svmc.log=debug svmc.port=7001\0")
            .end();
        f.end();
        f.blob()
    }

    #[test]
    fn reads_qemu_virt() {
        let blob = virt();
        let p = platform(&blob, &IMAGE).expect("valid tree");
        assert_eq!(p.bootargs, "svmc.log=debug svmc.port=7001");
        assert_eq!(p.ram, Some(0x4000_0000..0x4800_0000));
        assert_eq!(p.blob_len, blob.len());
        assert_eq!(p.uart, 0x0900_0000);
        assert_eq!(p.psci, Some(Conduit::Hvc));
        assert_eq!(p.virtio_mmio[0], Some((0x0a00_0000, 0x200)));
        assert_eq!(p.virtio_mmio[2], Some((0x0a00_0400, 0x200)));
        assert_eq!(p.virtio_mmio[3], None);
        let pci = p.pci.expect("PCIe host");
        assert_eq!((pci.ecam, pci.ecam_size), (0x40_1000_0000, 0x1000_0000));
        assert_eq!(pci.mem32, Some((0x1000_0000, 0x1000_0000, 0x2eff_0000)));
    }

    #[test]
    fn a_blob_with_room_after_it_reads_the_same() {
        let mut room = virt();
        let len = room.len();
        room.extend_from_slice(&[0xff; 64]);
        assert_eq!(platform(&room, &IMAGE).unwrap().blob_len, len);
    }

    #[test]
    fn no_magic_or_no_room_is_refused() {
        assert_eq!(platform(&[], &IMAGE).unwrap_err(), DtError::BadMagic);
        assert_eq!(
            platform(&[0xd0, 0x0d], &IMAGE).unwrap_err(),
            DtError::BadMagic
        );
        let mut blob = virt();
        blob[0] ^= 1;
        assert_eq!(platform(&blob, &IMAGE).unwrap_err(), DtError::BadMagic);
        // The header's total size past the room (the image).
        let blob = virt();
        let cut = &blob[..blob.len() - 1];
        assert_eq!(
            platform(cut, &IMAGE).unwrap_err(),
            DtError::TooLarge(blob.len())
        );
        let mut huge = virt();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            platform(&huge, &IMAGE).unwrap_err(),
            DtError::TooLarge(u32::MAX as usize)
        );
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let blob = virt();
        for len in 0..blob.len() {
            // Cut, with the header still claiming the whole size...
            assert!(platform(&blob[..len], &IMAGE).is_err(), "cut at {len}");
            // ...and with the header saying the cut size.
            let mut cut = blob[..len].to_vec();
            if len >= 8 {
                cut[4..8].copy_from_slice(&(len as u32).to_be_bytes());
            }
            assert!(platform(&cut, &IMAGE).is_err(), "cut and patched at {len}");
        }
    }

    #[test]
    fn every_corrupted_byte_is_survived() {
        // Any one byte changed: an error or a platform, never a panic
        // (and the loop ends: the walk is bounded by the blob).
        let blob = virt();
        for at in 0..blob.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[at] ^= x;
                let _ = platform(&bad, &IMAGE);
            }
        }
    }

    #[test]
    fn hostile_structures_are_malformed() {
        // A property longer than the blob.
        let mut f = Fdt::default();
        f.begin("");
        f.token(FDT_PROP);
        f.structs.extend_from_slice(&u32::MAX.to_be_bytes());
        f.structs.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            platform(&f.end().blob(), &IMAGE).unwrap_err(),
            DtError::Malformed
        );
        // A property name offset past the strings block.
        let mut f = Fdt::default();
        f.begin("").prop("reg", &[0; 8]);
        f.structs[4 + 4 + 4..4 + 4 + 8].copy_from_slice(&0xffff_0000u32.to_be_bytes());
        assert_eq!(
            platform(&f.end().blob(), &IMAGE).unwrap_err(),
            DtError::Malformed
        );
        // Nesting deeper than MAX_DEPTH.
        let mut f = Fdt::default();
        for _ in 0..=MAX_DEPTH {
            f.begin("n");
        }
        for _ in 0..=MAX_DEPTH {
            f.end();
        }
        assert_eq!(platform(&f.blob(), &IMAGE).unwrap_err(), DtError::Malformed);
        // An END_NODE without a node, an unknown token, no END.
        let mut f = Fdt::default();
        f.end();
        assert_eq!(platform(&f.blob(), &IMAGE).unwrap_err(), DtError::Malformed);
        let mut f = Fdt::default();
        f.begin("").token(0x77).end();
        assert_eq!(platform(&f.blob(), &IMAGE).unwrap_err(), DtError::Malformed);
        // No END: the walk runs into the strings block and off the blob.
        let mut b = virt();
        let strings = be32(&b, 12).unwrap() as usize;
        assert_eq!(be32(&b, strings - 4), Some(FDT_END));
        b[strings - 4..strings].copy_from_slice(&FDT_NOP.to_be_bytes());
        assert!(platform(&b, &IMAGE).is_err());
        // A node name without its NUL.
        let mut f = Fdt::default();
        f.token(FDT_BEGIN_NODE);
        f.structs.extend_from_slice(b"abcd");
        let mut b = f.blob();
        let n = b.len();
        b[n - 4..].copy_from_slice(b"efgh");
        assert_eq!(platform(&b, &IMAGE).unwrap_err(), DtError::Malformed);
    }

    #[test]
    fn hostile_values_are_ignored() {
        let mut f = Fdt::default();
        f.begin("")
            .cells("#address-cells", &[u32::MAX])
            .cells("#size-cells", &[7]);
        f.begin("memory@0")
            .prop("device_type", b"memory\0")
            .cells("reg", &[0, 0x4000_0000, 0, 0x0800_0000])
            .end();
        f.begin("uart").prop("compatible", b"arm,pl011\0").end();
        f.begin("psci")
            .prop("compatible", b"arm,psci\0")
            .prop("method", b"svc\0")
            .end();
        f.begin("chosen").prop("bootargs", &[0xff, 0xfe, 0]).end();
        f.end();
        let blob = f.blob();
        let p = platform(&blob, &IMAGE).expect("well-formed");
        assert_eq!(p.ram, None, "cells over 2 are not read");
        assert_eq!(p.uart, DEFAULT_UART, "no reg");
        assert_eq!(p.psci, None, "unknown method");
        assert_eq!(p.bootargs, "", "not UTF-8");
    }

    #[test]
    fn ram_not_holding_the_image_is_not_the_heap() {
        for reg in [
            [0, 0x4000_0000, 0, 0x10_0000],          // ends below the image
            [0, 0x4030_0000, 0, 0x0800_0000],        // starts above it
            [0xffff_ffff, 0xffff_f000, 0, 0x10_000], // wraps around
        ] {
            let mut f = Fdt::default();
            f.begin("")
                .cells("#address-cells", &[2])
                .cells("#size-cells", &[2]);
            f.begin("memory")
                .prop("device_type", b"memory\0")
                .cells("reg", &reg)
                .end();
            f.end();
            assert_eq!(platform(&f.blob(), &IMAGE).unwrap().ram, None, "{reg:x?}");
        }
    }

    #[test]
    fn keeps_at_most_max_mmio_slots() {
        let mut f = Fdt::default();
        f.begin("")
            .cells("#address-cells", &[1])
            .cells("#size-cells", &[1]);
        for n in 0..MAX_MMIO as u32 + 5 {
            f.begin("virtio_mmio")
                .prop("compatible", b"virtio,mmio\0")
                .cells("reg", &[0x0a00_0000 + n * 0x200, 0x200])
                .end();
        }
        f.end();
        let blob = f.blob();
        let p = platform(&blob, &IMAGE).unwrap();
        assert!(p.virtio_mmio.iter().all(Option::is_some));
        assert_eq!(p.virtio_mmio[MAX_MMIO - 1], Some((0x0a00_3e00, 0x200)));
    }
}
