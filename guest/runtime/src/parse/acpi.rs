//! What the firmware takes from the ACPI tables the VMM built: which
//! machine this is and where its devices are.
//!
//! | table | field (ACPI 6.4 section) | used for |
//! |---|---|---|
//! | FADT (`FACP`) | `Flags.HW_REDUCED_ACPI` (5.2.9, bit 20) | a hardware-reduced machine (QEMU `microvm`) has no PM1 block or PM timer |
//! | FADT | `PM1a_CNT_BLK` (offset 64) | power-off on a PC (q35: 0x604) |
//! | FADT | `PM_TMR_BLK` (offset 76) | the clock on a PC (q35: 0x608) |
//! | FADT | `SLEEP_CONTROL_REG` (offset 244, a GAS) | power-off on a hardware-reduced machine (`microvm`: the GED at 0xFEA0_0200) |
//! | MCFG | first allocation (PCI Firmware spec 3.0, 4.1.2) | PCIe ECAM (q35: 0xB000_0000) |
//! | DSDT | devices with `_HID "LNRO0005"` and a `Memory32Fixed` in `_CRS` | virtio-mmio transports (`microvm`: 0xFEB0_0000 + n × 0x200) |
//!
//! The virtio-mmio devices come from the DSDT rather than from probing
//! 0xFEB0_0000 for the virtio magic because the DSDT is what the VMM says
//! is there: QEMU's `microvm` describes each transport that has a device
//! plugged (`hw/i386/acpi-microvm.c`, the same `_HID` that Linux's
//! virtio_mmio driver and Cloud Hypervisor use), while on q35 that address
//! range belongs to the PCI hole where SeaBIOS places BARs (reading an
//! unknown device's registers can have side effects, e.g. a virtio-pci ISR
//! read clears it). The DSDT is AML; instead of an interpreter the
//! firmware scans its bytes for the `_HID` string and the resource
//! descriptor that follows it, which is how QEMU encodes them.
//!
//! Everything is read once at boot, before the heap exists: on q35
//! SeaBIOS puts the tables at the top of RAM, which the PVH memory map
//! does not reserve, so the heap may later overwrite them.
//!
//! The parser is pure: it reads physical memory through [`PhysMem`], which
//! the firmware implements over its identity map and the tests over a byte
//! buffer, so malformed and hostile tables are tested on the host. Every
//! address and length in the tables is untrusted: a table that does not
//! fit the memory, has the wrong signature, a length below its header or
//! over [`MAX_TABLE`], or a bad checksum is ignored.

/// Most virtio-mmio transports recorded from the DSDT.
pub const MAX_VIRTIO_MMIO: usize = 8;

/// `_HID` of a virtio-mmio transport, as an AML string (`StringPrefix`
/// 0x0D, the characters, NUL).
const VIRTIO_MMIO_HID: &[u8] = b"\x0dLNRO0005\0";

/// An AML `Memory32Fixed` descriptor: large item 0x86, length 9 (ACPI
/// 6.4, 6.4.3.4), then the read/write flag, base and length.
const MEMORY32_FIXED: [u8; 3] = [0x86, 0x09, 0x00];

/// How far after a virtio-mmio `_HID` its `Memory32Fixed` may start.
const CRS_WINDOW: usize = 96;

/// `FADT.Flags.HW_REDUCED_ACPI`.
const HW_REDUCED_ACPI: u32 = 1 << 20;

/// GAS address space: system memory.
const GAS_SYSTEM_MEMORY: u8 = 0;

/// Longest table read (QEMU's DSDTs are a few KiB).
pub const MAX_TABLE: usize = 1 << 20;

/// Most tables followed from the RSDT/XSDT.
const MAX_TABLES: usize = 32;

/// The facts the firmware uses, copied out of the tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Acpi {
    /// The FADT says the machine is hardware-reduced.
    pub hw_reduced: bool,
    /// PM1a control port (0 if none).
    pub pm1a_cnt: u16,
    /// PM timer port (0 if none).
    pub pm_timer: u16,
    /// Sleep control register in system memory (0 if none).
    pub sleep_control: u64,
    /// Base of the PCIe ECAM for bus 0 (0 if no MCFG).
    pub ecam: u64,
    /// virtio-mmio transports: (base, size).
    pub virtio_mmio: [Option<(u64, u64)>; MAX_VIRTIO_MMIO],
}

/// Read access to the physical memory that holds the tables.
pub trait PhysMem {
    /// The `len` bytes at physical address `paddr`, or `None` if they are
    /// not all readable memory (address 0 is never readable).
    fn read(&self, paddr: u64, len: usize) -> Option<&[u8]>;
}

/// Length of the header every table but the RSDP starts with (ACPI 6.4,
/// 5.2.6).
const HEADER_LEN: usize = 36;

/// A table's bytes, after checking its signature, length and checksum.
fn table<'m>(mem: &'m impl PhysMem, paddr: u64, signature: &[u8; 4]) -> Option<&'m [u8]> {
    if paddr == 0 {
        return None;
    }
    let header = mem.read(paddr, HEADER_LEN)?;
    if &header[..4] != signature {
        return None;
    }
    let len = u32_at(header, 4)? as usize;
    if !(HEADER_LEN..=MAX_TABLE).contains(&len) {
        return None;
    }
    let bytes = mem.read(paddr, len)?;
    (checksum(bytes) == 0).then_some(bytes)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads the tables from the RSDP at `rsdp` (PVH's `rsdp_paddr`); `None`
/// if there is no valid RSDP there, or neither a valid XSDT nor RSDT.
pub fn read(mem: &impl PhysMem, rsdp: u64) -> Option<Acpi> {
    if rsdp == 0 {
        return None;
    }
    // 20 bytes in version 1, 36 from version 2 (ACPI 6.4, 5.2.5.3), the
    // revision says which; the first checksum covers the first 20.
    let head = mem.read(rsdp, 20)?;
    if &head[..8] != b"RSD PTR " || checksum(head) != 0 {
        return None;
    }
    let mut tables = [0u64; MAX_TABLES];
    let mut count = 0;
    let xsdt = if head[15] >= 2 {
        let full = mem.read(rsdp, 36)?;
        table(mem, u64_at(full, 24)?, b"XSDT")
    } else {
        None
    };
    if let Some(xsdt) = xsdt {
        for entry in xsdt[HEADER_LEN..].chunks_exact(8).take(MAX_TABLES) {
            tables[count] = u64_at(entry, 0)?;
            count += 1;
        }
    } else {
        let rsdt = table(mem, u64::from(u32_at(head, 16)?), b"RSDT")?;
        for entry in rsdt[HEADER_LEN..].chunks_exact(4).take(MAX_TABLES) {
            tables[count] = u64::from(u32_at(entry, 0)?);
            count += 1;
        }
    }
    let mut acpi = Acpi::default();
    for &paddr in &tables[..count] {
        let fadt = table(mem, paddr, b"FACP");
        let mcfg = table(mem, paddr, b"MCFG");
        if let Some(fadt) = fadt {
            read_fadt(mem, fadt, &mut acpi);
        }
        // One allocation of 16 bytes after the 44-byte header: base
        // address, segment group, start and end bus; the ECAM of bus 0.
        if let Some(mcfg) = mcfg
            && let (Some(base), Some(0)) = (u64_at(mcfg, 44), mcfg.get(54))
        {
            acpi.ecam = base;
        }
    }
    Some(acpi)
}

fn read_fadt(mem: &impl PhysMem, fadt: &[u8], acpi: &mut Acpi) {
    let flags = u32_at(fadt, 112).unwrap_or(0);
    acpi.hw_reduced = flags & HW_REDUCED_ACPI != 0;
    acpi.pm1a_cnt = u32_at(fadt, 64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    acpi.pm_timer = u32_at(fadt, 76)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    // SLEEP_CONTROL_REG: a 12-byte GAS (space, bit width, bit offset,
    // access size, 64-bit address).
    if fadt.get(244) == Some(&GAS_SYSTEM_MEMORY) {
        acpi.sleep_control = u64_at(fadt, 248).unwrap_or(0);
    }
    // X_DSDT (offset 140) wins over DSDT (offset 40) when set.
    let dsdt = u64_at(fadt, 140)
        .filter(|&a| a != 0)
        .or_else(|| u32_at(fadt, 40).map(u64::from))
        .unwrap_or(0);
    if let Some(dsdt) = table(mem, dsdt, b"DSDT") {
        acpi.virtio_mmio = virtio_mmio(&dsdt[HEADER_LEN..]);
    }
}

/// The virtio-mmio transports that an AML byte stream describes: each
/// `_HID "LNRO0005"` followed (within [`CRS_WINDOW`] bytes) by a
/// `Memory32Fixed` descriptor with a non-zero base and length.
fn virtio_mmio(aml: &[u8]) -> [Option<(u64, u64)>; MAX_VIRTIO_MMIO] {
    let mut found = [None; MAX_VIRTIO_MMIO];
    let mut n = 0;
    let mut i = 0;
    while n < MAX_VIRTIO_MMIO && i + VIRTIO_MMIO_HID.len() <= aml.len() {
        if &aml[i..i + VIRTIO_MMIO_HID.len()] != VIRTIO_MMIO_HID {
            i += 1;
            continue;
        }
        i += VIRTIO_MMIO_HID.len();
        let window = &aml[i..aml.len().min(i + CRS_WINDOW)];
        let descriptor = window
            .windows(MEMORY32_FIXED.len())
            .position(|w| w == MEMORY32_FIXED);
        if let Some(at) = descriptor {
            let d = &window[at..];
            // Flag byte at 3, base at 4, length at 8.
            if let (Some(base), Some(len)) = (u32_at(d, 4), u32_at(d, 8))
                && base != 0
                && len != 0
            {
                found[n] = Some((u64::from(base), u64::from(len)));
                n += 1;
            }
        }
    }
    found
}

