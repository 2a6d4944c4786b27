//! Guest images: checking that a file is a bootable ELF for the right
//! architecture, and the tiny "exit at the first instruction" firmware used
//! to probe KVM and as the boot-time floor in benchmarks. Images that only
//! tests need (a guest that hangs) are built by the tests crate with
//! [`elf`].

use std::io::Read;
use std::path::Path;

use crate::{Arch, Error, Result};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// `e_machine` of x86-64 (System V ABI).
const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;

/// Checks that `path` is a 64-bit little-endian ELF for `arch`.
pub fn check_image(path: &Path, arch: Arch) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::Image {
        path: path.into(),
        reason: format!("cannot open: {e} (build it with `cargo xtask build-image --arch {arch}`)"),
    })?;
    let mut head = [0u8; 20];
    f.read_exact(&mut head).map_err(|_| Error::Image {
        path: path.into(),
        reason: "not an ELF file (shorter than an ELF header)".into(),
    })?;
    if head[..4] != ELF_MAGIC {
        return Err(Error::Image {
            path: path.into(),
            reason: "not an ELF file (bad magic)".into(),
        });
    }
    if head[4] != 2 || head[5] != 1 {
        return Err(Error::Image {
            path: path.into(),
            reason: "not a 64-bit little-endian ELF".into(),
        });
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let expected = match arch {
        Arch::X86_64 => EM_X86_64,
        Arch::Aarch64 => EM_AARCH64,
    };
    if machine != expected {
        return Err(Error::Image {
            path: path.into(),
            reason: format!("ELF machine {machine} is not {arch}"),
        });
    }
    Ok(())
}

/// Checks that `path` is a Linux x86 boot image (bzImage): the boot
/// sector signature 0xAA55 at 0x1FE and the setup header magic `HdrS` at
/// 0x202 (Linux `Documentation/arch/x86/boot.rst`).
pub fn check_bzimage(path: &Path, arch: Arch) -> Result<()> {
    let err = |reason: String| Error::Image {
        path: path.into(),
        reason,
    };
    if arch != Arch::X86_64 {
        return Err(err(format!(
            "Linux guests are supported on x86_64 only, not {arch}"
        )));
    }
    let mut f = std::fs::File::open(path).map_err(|e| {
        err(format!(
            "cannot open: {e} (build it with `cargo xtask build-image --guest linux`)"
        ))
    })?;
    let mut head = [0u8; 0x206];
    f.read_exact(&mut head)
        .map_err(|_| err("not a Linux bzImage (too short)".into()))?;
    if head[0x1fe..0x200] != [0x55, 0xaa] || &head[0x202..0x206] != b"HdrS" {
        return Err(err(
            "not a Linux bzImage (no boot sector or `HdrS` magic)".into()
        ));
    }
    Ok(())
}

/// The value the tiny x86_64 firmware writes to `isa-debug-exit`; QEMU then
/// exits with status `(v << 1) | 1`.
pub const TINY_EXIT_VALUE: u8 = 0x2a;

/// QEMU's exit status when the tiny firmware for `arch` ran: `isa-debug-exit`
/// on x86_64, PSCI `SYSTEM_OFF` (status 0) on aarch64.
pub fn tiny_exit_status(arch: Arch) -> i32 {
    match arch {
        Arch::X86_64 => ((TINY_EXIT_VALUE as i32) << 1) | 1,
        Arch::Aarch64 => 0,
    }
}

/// Load address of the tiny x86_64 image (PVH loads ELF segments at their
/// physical addresses).
const X86_64_BASE: u64 = 0x10_0000;

/// Load address of the tiny aarch64 image: 2 MiB into `virt`'s RAM, past
/// the device tree QEMU puts at its start (as the real guest's linker
/// script does).
const AARCH64_BASE: u64 = 0x4020_0000;

/// The code of the tiny firmware for `arch`.
fn tiny_code(arch: Arch) -> Vec<u8> {
    match arch {
        // 32-bit protected-mode code: mov al, 0x2a; out 0xf4, al; hlt; jmp $-3.
        Arch::X86_64 => vec![0xb0, TINY_EXIT_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd],
        // movz x0, #0x0008; movk x0, #0x8400, lsl #16 (PSCI SYSTEM_OFF,
        // 0x8400_0008); hvc #0; b . (should SYSTEM_OFF return).
        Arch::Aarch64 => a64(&[0xd280_0100, 0xf2b0_8000, 0xd400_0002, 0x1400_0000]),
    }
}

/// A firmware image of a few hundred bytes that makes QEMU exit at its
/// first instructions, with [`tiny_exit_status`]: QEMU's boot cost with
/// nothing of ours in it.
///
/// On x86_64 a PVH ELF (with the Xen PVH entry note) whose 32-bit entry
/// code writes [`TINY_EXIT_VALUE`] to I/O port 0xf4 (`isa-debug-exit`) and
/// halts; on aarch64 an ELF for `virt` whose entry calls PSCI `SYSTEM_OFF`
/// through `hvc`.
pub fn tiny_elf(arch: Arch) -> Vec<u8> {
    elf(arch, &tiny_code(arch))
}

/// Port reads the x86_64 [`probe_elf`] makes before it exits.
pub const PROBE_EXITS: u32 = 20_000;

/// The KVM probe's firmware: like [`tiny_elf`], but on x86_64 it first
/// reads I/O port 0x80 (the POST port; nothing of ours uses it)
/// [`PROBE_EXITS`] times. Under KVM every read is an exit to QEMU, so the
/// probe also measures what exits cost, which is what decides whether KVM
/// is worth it for the real guest (serial console, virtio notifications,
/// timer reads): the paravirtual KVM here boots `microvm`'s tiny image as
/// fast as TCG, but pays about 25 µs per exit, and the real guest answered
/// 4x slower under it than under TCG. TCG takes about 0.5 µs per read.
pub fn probe_elf(arch: Arch) -> Vec<u8> {
    match arch {
        Arch::X86_64 => {
            // mov ecx, PROBE_EXITS; 1: in al, 0x80; loop 1b; then the
            // tiny firmware's exit.
            let mut code = vec![0xb9];
            code.extend_from_slice(&PROBE_EXITS.to_le_bytes());
            code.extend_from_slice(&[0xe4, 0x80, 0xe2, 0xfc]);
            code.extend_from_slice(&tiny_code(arch));
            elf(arch, &code)
        }
        Arch::Aarch64 => tiny_elf(arch),
    }
}

/// aarch64 instructions as the little-endian bytes of the image.
pub fn a64(instructions: &[u32]) -> Vec<u8> {
    instructions.iter().flat_map(|i| i.to_le_bytes()).collect()
}

/// A minimal ELF executable for `arch` whose only segment holds the headers
/// and `code`, entered at the first byte of `code` (with a PVH entry note on
/// x86_64, loaded past the device tree on aarch64). [`tiny_elf`] is one;
/// the tests build others (a guest that hangs).
pub fn elf(arch: Arch, code: &[u8]) -> Vec<u8> {
    const EHSIZE: u64 = 64;
    const PHENTSIZE: u64 = 56;
    let (base, machine, pvh) = match arch {
        Arch::X86_64 => (X86_64_BASE, EM_X86_64, true),
        Arch::Aarch64 => (AARCH64_BASE, EM_AARCH64, false),
    };
    let phnum: u64 = if pvh { 2 } else { 1 };
    let off_note = EHSIZE + PHENTSIZE * phnum;
    // PVH note: namesz 4 ("Xen\0"), descsz 8, type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
    let note_len = if pvh { 12 + 4 + 8 } else { 0 };
    let off_code = off_note + note_len;
    let entry = base + off_code;
    let total = off_code + code.len() as u64;

    let mut v = Vec::with_capacity(total as usize);
    // ELF header: 64-bit, little-endian, version 1, System V.
    v.extend_from_slice(&ELF_MAGIC);
    v.extend_from_slice(&[2, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&machine.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    v.extend_from_slice(&entry.to_le_bytes());
    v.extend_from_slice(&EHSIZE.to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for h in [EHSIZE as u16, PHENTSIZE as u16, phnum as u16, 64, 0, 0] {
        v.extend_from_slice(&h.to_le_bytes());
    }
    // PT_LOAD, R+X, the whole file at `base`.
    push_phdr(&mut v, 1, 5, 0, base, total, 0x1000);
    if pvh {
        // PT_NOTE.
        push_phdr(&mut v, 4, 4, off_note, base + off_note, note_len, 4);
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&8u32.to_le_bytes());
        v.extend_from_slice(&18u32.to_le_bytes());
        v.extend_from_slice(b"Xen\0");
        v.extend_from_slice(&entry.to_le_bytes());
    }
    v.extend_from_slice(code);
    debug_assert_eq!(v.len() as u64, total);
    v
}

fn push_phdr(v: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, len: u64, align: u64) {
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    for x in [off, addr, addr, len, len, align] {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_probe_makes_exits_then_exits_like_the_tiny_image() {
        let (tiny, probe) = (tiny_elf(Arch::X86_64), probe_elf(Arch::X86_64));
        let code = &probe[probe.len() - tiny_code(Arch::X86_64).len() - 9..];
        assert_eq!(code[0], 0xb9, "mov ecx, imm32");
        assert_eq!(
            u32::from_le_bytes(code[1..5].try_into().unwrap()),
            PROBE_EXITS
        );
        assert_eq!(&code[5..9], &[0xe4, 0x80, 0xe2, 0xfc], "in al, 0x80; loop");
        assert!(probe.ends_with(&tiny_code(Arch::X86_64)));
        assert!(tiny.ends_with(&tiny_code(Arch::X86_64)));
        assert_eq!(probe_elf(Arch::Aarch64), tiny_elf(Arch::Aarch64));
    }

    #[test]
    fn tiny_images_are_valid_elfs_for_their_arch() {
        let dir = tempfile::tempdir().unwrap();
        for arch in Arch::ALL {
            for (name, image) in [
                ("tiny", tiny_elf(arch)),
                ("probe", probe_elf(arch)),
                ("nop", elf(arch, &[0; 8])),
            ] {
                let p = dir.path().join(format!("{name}-{arch}.elf"));
                std::fs::write(&p, &image).unwrap();
                check_image(&p, arch).unwrap();
                for other in Arch::ALL.into_iter().filter(|a| *a != arch) {
                    assert!(check_image(&p, other).is_err());
                }
                // Entry point = first byte of the code, inside the segment.
                let entry = u64::from_le_bytes(image[24..32].try_into().unwrap());
                let base = u64::from_le_bytes(image[64 + 16..64 + 24].try_into().unwrap());
                assert!(entry > base && entry < base + image.len() as u64);
                if arch == Arch::Aarch64 {
                    assert_eq!(entry % 4, 0, "aarch64 code must be 4-byte aligned");
                }
            }
        }
    }

    #[test]
    fn bzimage_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bzImage");
        let mut img = vec![0u8; 0x400];
        img[0x1fe] = 0x55;
        img[0x1ff] = 0xaa;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&p, &img).unwrap();
        check_bzimage(&p, Arch::X86_64).unwrap();
        assert!(check_bzimage(&p, Arch::Aarch64).is_err());
        let elf = dir.path().join("tiny.elf");
        std::fs::write(&elf, tiny_elf(Arch::X86_64)).unwrap();
        let e = check_bzimage(&elf, Arch::X86_64).unwrap_err().to_string();
        assert!(e.contains("not a Linux bzImage"), "{e}");
    }

    #[test]
    fn rejects_missing_and_non_elf() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = check_image(&missing, Arch::X86_64).unwrap_err().to_string();
        assert!(e.contains("cannot open"), "{e}");
        let text = dir.path().join("text");
        std::fs::write(&text, "hello, this is not an ELF file").unwrap();
        let e = check_image(&text, Arch::X86_64).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        let short = dir.path().join("short");
        std::fs::write(&short, b"\x7fEL").unwrap();
        let e = check_image(&short, Arch::X86_64).unwrap_err().to_string();
        assert!(e.contains("shorter"), "{e}");
    }
}
