//! Machine knowledge, written once: what QEMU needs per architecture,
//! machine type and accelerator ([`MACHINES`]).
//!
//! The launcher ([`crate::launcher`]), the KVM probe ([`crate::accel`]) and
//! the benchmarks' boot floor (which launches through the launcher) all
//! build their QEMU arguments from this table, so they cannot disagree on
//! `-cpu`, `gic-version` or the exit device.
//!
//! Adding a machine is one row in [`MACHINES`] (usually `..` the row it
//! differs from); the first row of an architecture is its default.

use std::fmt;

use crate::accel::Accel;
use crate::{Arch, Error, Result};

/// How the guest makes QEMU exit with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDevice {
    /// `isa-debug-exit` at I/O port 0xf4: a write of `v` makes QEMU exit
    /// with `(v << 1) | 1` (x86).
    IsaDebugExit,
    /// `pvpanic-pci` with `-action panic=exit-failure`: the guest's
    /// "panicked" write makes QEMU exit with status 1; a clean power-off
    /// (PSCI `SYSTEM_OFF`) exits with 0. (`virt` has no `isa-debug-exit`,
    /// and semihosting's exit would also open the host's files to the
    /// guest.)
    Pvpanic,
}

impl ExitDevice {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::IsaDebugExit => &["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
            Self::Pvpanic => &["-device", "pvpanic-pci", "-action", "panic=exit-failure"],
        }
    }
}

/// One machine type of one architecture, and what QEMU needs to run the
/// guest on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// The guest architecture.
    pub arch: Arch,
    /// QEMU's `-machine` type.
    pub name: &'static str,
    /// Extra `-machine` properties under KVM (leading comma). Under KVM,
    /// aarch64 `virt` must use an interrupt controller the host has
    /// (GICv3-only hosts cannot emulate the default GICv2); the guest polls
    /// and does not care which.
    pub kvm_props: &'static str,
    /// `-cpu` under TCG (`None`: QEMU's default for the machine).
    pub tcg_cpu: Option<&'static str>,
    /// `-cpu` under KVM (`None`: QEMU's default for the machine).
    pub kvm_cpu: Option<&'static str>,
    /// `-global` settings.
    pub globals: &'static [&'static str],
    /// The vhost-user vsock device QEMU attaches (PCI or virtio-mmio).
    pub vsock_device: &'static str,
    /// How the guest ends QEMU with a status.
    pub exit: ExitDevice,
}

/// x86_64 `q35`: PCI, the vsock device on PCI, `isa-debug-exit`.
const Q35: Machine = Machine {
    arch: Arch::X86_64,
    name: "q35",
    kvm_props: "",
    tcg_cpu: None,
    kvm_cpu: None,
    globals: &[],
    vsock_device: "vhost-user-vsock-pci",
    exit: ExitDevice::IsaDebugExit,
};

/// x86_64 `microvm`: no PCI, no firmware tables beyond ACPI (qboot, its
/// default BIOS, starts fastest), the vsock device on virtio-mmio (modern,
/// not legacy) at 0xFEB0_0000 + n x 0x200, which the guest finds in the
/// ACPI DSDT (QEMU adds no `virtio_mmio.device=` words to a PVH kernel's
/// command line); power-off through the ACPI GED, `isa-debug-exit` for
/// failure. It starts in about half the time of q35 and runs every suite,
/// so it is the x86_64 default; q35 stays in the test matrix (and the Linux
/// test VM, whose drivers are virtio-pci, runs on it).
const MICROVM: Machine = Machine {
    name: "microvm",
    globals: &["virtio-mmio.force-legacy=false"],
    vsock_device: "vhost-user-vsock-device",
    ..Q35
};

/// aarch64 `virt`: the vsock device on virtio-mmio (modern, not legacy),
/// pvpanic for the failure exit; Cortex-A57 under TCG, the host's CPU and
/// interrupt controller under KVM.
const VIRT: Machine = Machine {
    arch: Arch::Aarch64,
    name: "virt",
    kvm_props: ",gic-version=max",
    tcg_cpu: Some("cortex-a57"),
    kvm_cpu: Some("host"),
    globals: &["virtio-mmio.force-legacy=false"],
    vsock_device: "vhost-user-vsock-device",
    exit: ExitDevice::Pvpanic,
};

/// Every machine the launcher knows; the first of an architecture is its
/// default.
pub const MACHINES: &[Machine] = &[MICROVM, Q35, VIRT];

/// The default machine of `arch` (its first row in [`MACHINES`]).
pub fn default_for(arch: Arch) -> &'static Machine {
    MACHINES
        .iter()
        .find(|m| m.arch == arch)
        .expect("every architecture has a machine")
}

/// The machine `name` of `arch`, or its default for `None`.
pub fn find(arch: Arch, name: Option<&str>) -> Result<&'static Machine> {
    let Some(name) = name else {
        return Ok(default_for(arch));
    };
    MACHINES
        .iter()
        .find(|m| m.arch == arch && m.name == name)
        .ok_or_else(|| Error::UnknownMachine {
            arch,
            name: name.into(),
            known: names(arch).join(", "),
        })
}

/// The machine names of `arch`, default first.
pub fn names(arch: Arch) -> Vec<&'static str> {
    MACHINES
        .iter()
        .filter(|m| m.arch == arch)
        .map(|m| m.name)
        .collect()
}

/// Guest RAM shared with the device daemon (vhost-user needs the guest's
/// memory in a shared memfd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMemory {
    /// Size in MiB.
    pub mib: u32,
}

impl Machine {
    /// The QEMU arguments that depend on the machine and the accelerator:
    /// `-machine` (with `memory`'s backend if given), `-m`, `-accel`,
    /// `-cpu`, `-global`s, the exit device and the "no defaults, no
    /// display, no monitor, no reboot" set. The caller adds the serial
    /// console, the image and the devices ([`Machine::vsock_device`]).
    pub fn args(&self, accel: Accel, memory: Option<SharedMemory>) -> Vec<String> {
        let kvm = accel == Accel::Kvm;
        let mut a: Vec<String> = Vec::new();
        let props = if kvm { self.kvm_props } else { "" };
        let backend = if memory.is_some() {
            ",memory-backend=mem"
        } else {
            ""
        };
        a.push("-machine".into());
        a.push(format!("{}{props}{backend}", self.name));
        if let Some(m) = memory {
            a.push("-object".into());
            a.push(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                m.mib
            ));
            a.push("-m".into());
            a.push(format!("{}M", m.mib));
        }
        a.push("-accel".into());
        a.push(accel.qemu_name().into());
        if let Some(cpu) = if kvm { self.kvm_cpu } else { self.tcg_cpu } {
            a.push("-cpu".into());
            a.push(cpu.into());
        }
        for g in self.globals {
            a.push("-global".into());
            a.push((*g).into());
        }
        a.extend(self.exit.args().iter().map(|s| s.to_string()));
        for s in [
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ] {
            a.push(s.into());
        }
        a
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.arch, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(m: &Machine, accel: Accel) -> String {
        m.args(accel, Some(SharedMemory { mib: 64 })).join(" ")
    }

    #[test]
    fn every_architecture_has_a_default_and_names_are_unique() {
        assert_eq!(default_for(Arch::X86_64).name, "microvm");
        assert_eq!(default_for(Arch::Aarch64).name, "virt");
        for arch in Arch::ALL {
            let names = names(arch);
            assert!(!names.is_empty(), "{arch}");
            for (i, n) in names.iter().enumerate() {
                assert!(!names[i + 1..].contains(n), "{arch} {n} twice");
                assert_eq!(find(arch, Some(n)).unwrap().name, *n);
            }
        }
    }

    #[test]
    fn unknown_machine_names_the_known_ones() {
        let e = find(Arch::Aarch64, Some("q35")).unwrap_err().to_string();
        assert!(e.contains("q35") && e.contains("virt"), "{e}");
        assert!(find(Arch::X86_64, Some("virt")).is_err());
    }

    #[test]
    fn aarch64_cpu_and_gic_follow_the_accelerator() {
        let virt = find(Arch::Aarch64, None).unwrap();
        let tcg = joined(virt, Accel::Tcg);
        assert!(tcg.contains("-machine virt,memory-backend=mem "), "{tcg}");
        assert!(tcg.contains("-cpu cortex-a57"), "{tcg}");
        assert!(
            tcg.contains("-global virtio-mmio.force-legacy=false"),
            "{tcg}"
        );
        assert!(tcg.contains("-device pvpanic-pci -action panic=exit-failure"));
        assert!(!tcg.contains("isa-debug-exit"), "{tcg}");
        let kvm = joined(virt, Accel::Kvm);
        assert!(
            kvm.contains("-machine virt,gic-version=max,memory-backend=mem "),
            "{kvm}"
        );
        assert!(kvm.contains("-cpu host"), "{kvm}");
        assert!(kvm.contains("-accel kvm"), "{kvm}");
    }

    #[test]
    fn x86_64_machines_use_isa_debug_exit_and_no_cpu() {
        for name in names(Arch::X86_64) {
            let m = find(Arch::X86_64, Some(name)).unwrap();
            for accel in [Accel::Tcg, Accel::Kvm] {
                let a = joined(m, accel);
                assert!(a.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"), "{a}");
                assert!(!a.contains("-cpu"), "{a}");
                assert!(!a.contains("gic-version"), "{a}");
            }
        }
        assert_eq!(
            find(Arch::X86_64, Some("q35")).unwrap().vsock_device,
            "vhost-user-vsock-pci"
        );
        let microvm = find(Arch::X86_64, Some("microvm")).unwrap();
        assert_eq!(microvm.vsock_device, "vhost-user-vsock-device");
        let microvm = joined(microvm, Accel::Tcg);
        assert!(
            microvm.contains("-machine microvm,memory-backend=mem "),
            "{microvm}"
        );
        assert!(
            microvm.contains("-global virtio-mmio.force-legacy=false"),
            "{microvm}"
        );
    }

    #[test]
    fn memory_is_shared_only_when_asked() {
        let q35 = find(Arch::X86_64, Some("q35")).unwrap();
        let shared = joined(q35, Accel::Tcg);
        assert!(
            shared.contains("-machine q35,memory-backend=mem "),
            "{shared}"
        );
        assert!(
            shared.contains("-object memory-backend-memfd,id=mem,size=64M,share=on -m 64M"),
            "{shared}"
        );
        let plain = q35.args(Accel::Tcg, None).join(" ");
        assert!(plain.starts_with("-machine q35 -accel tcg "), "{plain}");
        assert!(
            !plain.contains("memfd") && !plain.contains("-m "),
            "{plain}"
        );
    }

    #[test]
    fn auto_is_never_passed_to_qemu() {
        let a = default_for(Arch::X86_64).args(Accel::Auto, None).join(" ");
        assert!(a.contains("-accel tcg"), "{a}");
    }
}
