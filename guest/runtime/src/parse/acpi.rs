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

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory from `base`: a byte buffer.
    struct Mem {
        base: u64,
        bytes: Vec<u8>,
    }

    impl PhysMem for Mem {
        fn read(&self, paddr: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(paddr.checked_sub(self.base)?).ok()?;
            self.bytes.get(start..start.checked_add(len)?)
        }
    }

    const BASE: u64 = 0xE_0000;

    impl Mem {
        fn new() -> Self {
            Self {
                base: BASE,
                bytes: vec![0; 0x4000],
            }
        }

        fn put(&mut self, paddr: u64, bytes: &[u8]) {
            let at = (paddr - self.base) as usize;
            self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(checksum(bytes));
    }

    /// A table: header with `signature` and length, then `body`.
    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(signature);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 1;
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp_v2(xsdt: u64) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = 2;
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    /// A FADT body (the bytes after the header) of 276 - 36 bytes.
    fn fadt(hw_reduced: bool, pm1a: u32, pm_tmr: u32, sleep: u64, dsdt: u64) -> Vec<u8> {
        let mut f = vec![0u8; 276];
        f[64..68].copy_from_slice(&pm1a.to_le_bytes());
        f[76..80].copy_from_slice(&pm_tmr.to_le_bytes());
        let flags: u32 = if hw_reduced { HW_REDUCED_ACPI } else { 0 };
        f[112..116].copy_from_slice(&flags.to_le_bytes());
        f[140..148].copy_from_slice(&dsdt.to_le_bytes());
        if sleep != 0 {
            f[244] = GAS_SYSTEM_MEMORY;
            f[248..256].copy_from_slice(&sleep.to_le_bytes());
        }
        f[HEADER_LEN..].to_vec()
    }

    /// A `microvm`-like device: `_HID "LNRO0005"` and a `_CRS` with a
    /// `Memory32Fixed` of `base`, `len`, as QEMU's AML encodes them.
    fn virtio_device(base: u32, len: u32) -> Vec<u8> {
        let mut d = b"\x5b\x82\x10VR00\x08_HID".to_vec();
        d.extend_from_slice(VIRTIO_MMIO_HID);
        d.extend_from_slice(b"\x08_UID\x00\x08_CRS\x11\x0e\x0a\x0b");
        d.extend_from_slice(&MEMORY32_FIXED);
        d.push(1);
        d.extend_from_slice(&base.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(b"\x79\x00");
        d
    }

    fn xsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        table(b"XSDT", &body)
    }

    const RSDP: u64 = BASE;
    const XSDT: u64 = BASE + 0x100;
    const FADT: u64 = BASE + 0x400;
    const MCFG: u64 = BASE + 0x800;
    const DSDT: u64 = BASE + 0x1000;

    /// q35 as QEMU builds it: FADT with PM1a and PM timer, MCFG, a DSDT
    /// without virtio-mmio devices.
    fn q35() -> Mem {
        let mut m = Mem::new();
        m.put(RSDP, &rsdp_v2(XSDT));
        m.put(XSDT, &xsdt(&[FADT, MCFG]));
        m.put(FADT, &table(b"FACP", &fadt(false, 0x604, 0x608, 0, DSDT)));
        let mut mcfg = vec![0u8; 8];
        mcfg.extend_from_slice(&0xB000_0000u64.to_le_bytes());
        mcfg.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
        m.put(MCFG, &table(b"MCFG", &mcfg));
        m.put(DSDT, &table(b"DSDT", b"\x10\x05\\_SB_"));
        m
    }

    /// `microvm`: hardware-reduced, sleep control at the GED, virtio-mmio
    /// transports in the DSDT, no MCFG.
    fn microvm(devices: usize) -> Mem {
        let mut m = Mem::new();
        m.put(RSDP, &rsdp_v2(XSDT));
        m.put(XSDT, &xsdt(&[FADT]));
        m.put(FADT, &table(b"FACP", &fadt(true, 0, 0, 0xFEA0_0200, DSDT)));
        let aml: Vec<u8> = (0..devices)
            .flat_map(|n| virtio_device(0xFEB0_0000 + 0x200 * n as u32, 0x200))
            .collect();
        m.put(DSDT, &table(b"DSDT", &aml));
        m
    }

    #[test]
    fn reads_q35() {
        let a = read(&q35(), RSDP).expect("tables");
        assert!(!a.hw_reduced);
        assert_eq!((a.pm1a_cnt, a.pm_timer), (0x604, 0x608));
        assert_eq!(a.ecam, 0xB000_0000);
        assert_eq!(a.sleep_control, 0);
        assert_eq!(a.virtio_mmio, [None; MAX_VIRTIO_MMIO]);
    }

    #[test]
    fn reads_microvm() {
        let a = read(&microvm(2), RSDP).expect("tables");
        assert!(a.hw_reduced);
        assert_eq!(a.sleep_control, 0xFEA0_0200);
        assert_eq!((a.pm1a_cnt, a.pm_timer, a.ecam), (0, 0, 0));
        assert_eq!(a.virtio_mmio[0], Some((0xFEB0_0000, 0x200)));
        assert_eq!(a.virtio_mmio[1], Some((0xFEB0_0200, 0x200)));
        assert_eq!(a.virtio_mmio[2], None);
    }

    #[test]
    fn reads_a_version_1_rsdp_through_the_rsdt() {
        let mut m = q35();
        let rsdt: Vec<u8> = [FADT as u32, MCFG as u32]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        m.put(RSDP, &rsdp_v1((BASE + 0x200) as u32));
        m.put(BASE + 0x200, &table(b"RSDT", &rsdt));
        let a = read(&m, RSDP).expect("tables");
        assert_eq!((a.pm1a_cnt, a.ecam), (0x604, 0xB000_0000));
    }

    #[test]
    fn keeps_at_most_max_virtio_mmio_transports() {
        let a = read(&microvm(MAX_VIRTIO_MMIO + 3), RSDP).expect("tables");
        assert!(a.virtio_mmio.iter().all(Option::is_some));
        assert_eq!(a.virtio_mmio[MAX_VIRTIO_MMIO - 1].unwrap().0, 0xFEB0_0E00);
    }

    #[test]
    fn no_or_bad_rsdp_is_no_tables() {
        let m = q35();
        assert!(read(&m, 0).is_none());
        assert!(read(&m, RSDP + 1).is_none(), "no signature there");
        assert!(read(&m, u64::MAX - 3).is_none(), "address overflow");
        assert!(
            read(&m, BASE + m.bytes.len() as u64 - 10).is_none(),
            "truncated"
        );
        let mut bad = q35();
        bad.bytes[(RSDP - BASE) as usize + 9] ^= 1;
        assert!(read(&bad, RSDP).is_none(), "checksum");
    }

    #[test]
    fn a_table_with_a_bad_checksum_or_length_is_ignored() {
        // FADT checksum broken: no PM ports, the MCFG still counts.
        let mut m = q35();
        m.bytes[(FADT - BASE) as usize + 70] ^= 0x55;
        let a = read(&m, RSDP).expect("tables");
        assert_eq!((a.pm1a_cnt, a.pm_timer, a.ecam), (0, 0, 0xB000_0000));
        // Lengths below the header, past the memory, or over MAX_TABLE.
        for len in [0u32, 35, 0x10_0000 + 1, u32::MAX, 0x3000] {
            let mut m = q35();
            let at = (FADT - BASE) as usize;
            m.bytes[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
            let a = read(&m, RSDP).expect("tables");
            assert_eq!(a.pm1a_cnt, 0, "length {len}");
        }
        // An XSDT whose checksum is broken falls back to the (absent) RSDT.
        let mut m = q35();
        m.bytes[(XSDT - BASE) as usize + 40] ^= 1;
        assert!(read(&m, RSDP).is_none());
    }

    #[test]
    fn hostile_table_pointers_are_bounded() {
        // An XSDT listing itself, address 0, u64::MAX and 40 more entries:
        // at most MAX_TABLES are followed, nothing is followed twice.
        let mut entries = vec![XSDT, 0, u64::MAX, FADT];
        entries.extend(core::iter::repeat_n(XSDT, 40));
        let mut m = q35();
        let x = xsdt(&entries);
        assert!(x.len() < (FADT - XSDT) as usize);
        m.put(XSDT, &x);
        let a = read(&m, RSDP).expect("tables");
        assert_eq!(a.pm1a_cnt, 0x604);
        // A FADT whose DSDT pointers are hostile.
        for dsdt in [0, u64::MAX, FADT, RSDP] {
            let mut m = microvm(1);
            m.put(FADT, &table(b"FACP", &fadt(true, 0, 0, 0xFEA0_0200, dsdt)));
            let a = read(&m, RSDP).expect("tables");
            assert_eq!(a.virtio_mmio[0], None, "DSDT at {dsdt:#x}");
        }
        // Port numbers that do not fit an I/O port are not taken.
        let mut m = q35();
        m.put(
            FADT,
            &table(b"FACP", &fadt(false, 0x1_0000, u32::MAX, 0, DSDT)),
        );
        let a = read(&m, RSDP).expect("tables");
        assert_eq!((a.pm1a_cnt, a.pm_timer), (0, 0));
    }

    #[test]
    fn a_truncated_fadt_gives_what_it_holds() {
        // A FADT of ACPI 1.0 length (116 bytes): flags, PM ports, no
        // X_DSDT or sleep control register.
        let mut m = q35();
        let full = fadt(false, 0x604, 0x608, 0xFEA0_0200, DSDT);
        m.put(FADT, &table(b"FACP", &full[..116 - HEADER_LEN]));
        let a = read(&m, RSDP).expect("tables");
        assert_eq!((a.pm1a_cnt, a.pm_timer, a.sleep_control), (0x604, 0x608, 0));
    }

    #[test]
    fn hostile_aml_is_scanned_safely() {
        let cases: [&[u8]; 6] = [
            VIRTIO_MMIO_HID,                                  // _HID at the very end
            b"\x0dLNRO0005",                                  // _HID cut short
            &[VIRTIO_MMIO_HID, &MEMORY32_FIXED[..]].concat(), // descriptor cut short
            &[
                VIRTIO_MMIO_HID,
                &MEMORY32_FIXED,
                &[1, 0, 0, 0, 0, 0, 2, 0, 0],
            ]
            .concat(), // base 0
            &[
                VIRTIO_MMIO_HID,
                &MEMORY32_FIXED,
                &[1, 0, 0, 0xB0, 0xFE, 0, 0, 0, 0],
            ]
            .concat(), // length 0
            &[
                VIRTIO_MMIO_HID,
                &[0u8; CRS_WINDOW],
                &MEMORY32_FIXED,
                &[1, 0, 0, 0xB0, 0xFE, 0, 2, 0, 0],
            ]
            .concat(), // too far
        ];
        for aml in cases {
            assert_eq!(virtio_mmio(aml), [None; MAX_VIRTIO_MMIO], "{aml:x?}");
        }
        // Every prefix of a real DSDT body: no panic, only whole devices.
        let aml: Vec<u8> = (0..3)
            .flat_map(|n| virtio_device(0xFEB0_0000 + n * 0x200, 0x200))
            .collect();
        for end in 0..=aml.len() {
            let found = virtio_mmio(&aml[..end]);
            assert!(found.iter().flatten().all(|&(_, len)| len == 0x200));
        }
    }
}
