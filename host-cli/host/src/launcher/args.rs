//! QEMU's command line for a VM.

use std::path::Path;

use super::VmConfig;
use crate::Arch;
use crate::accel::Accel;

pub(super) fn qemu_args(
    config: &VmConfig,
    accel: Accel,
    vhost_socket: &Path,
    serial_log: &Path,
) -> Vec<String> {
    let mem = format!("{}M", config.memory_mib);
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    let machine = config.machine.clone().unwrap_or_else(|| match config.arch {
        Arch::X86_64 => "q35".into(),
        Arch::Aarch64 => "virt".into(),
    });
    push("-machine");
    // Under KVM, `virt` must use an interrupt controller the host has
    // (GICv3-only hosts cannot emulate the default GICv2); the guest
    // polls and does not care which.
    let gic = if config.arch == Arch::Aarch64 && accel == Accel::Kvm && machine == "virt" {
        ",gic-version=max"
    } else {
        ""
    };
    push(&format!("{machine}{gic},memory-backend=mem"));
    push("-object");
    push(&format!("memory-backend-memfd,id=mem,size={mem},share=on"));
    push("-m");
    push(&mem);
    push("-accel");
    push(accel.qemu_name());
    if config.arch == Arch::Aarch64 {
        push("-cpu");
        push(if accel == Accel::Kvm {
            "host"
        } else {
            "cortex-a57"
        });
        push("-global");
        push("virtio-mmio.force-legacy=false");
        // The guest's failure exit: it writes "panicked" to pvpanic and
        // QEMU exits with status 1. (`virt` has no isa-debug-exit, and
        // semihosting's exit would also open the host's files to the
        // guest.)
        push("-device");
        push("pvpanic-pci");
        push("-action");
        push("panic=exit-failure");
    }
    for s in [
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ] {
        push(s);
    }
    push("-serial");
    push(&format!("file:{}", serial_log.display()));
    push("-kernel");
    push(&config.image.display().to_string());
    if let Some(initrd) = &config.initrd {
        push("-initrd");
        push(&initrd.display().to_string());
    }
    let mut cmdline = vec![
        format!("svmc.host_port={}", config.host_port),
        format!("svmc.port={}", config.service_port),
    ];
    cmdline.extend(config.cmdline.iter().cloned());
    push("-append");
    push(&cmdline.join(" "));
    push("-chardev");
    push(&format!("socket,id=vsock0,path={}", vhost_socket.display()));
    push("-device");
    match (config.arch, machine.as_str()) {
        (Arch::X86_64, "microvm") => push("vhost-user-vsock-device,chardev=vsock0"),
        (Arch::X86_64, _) => push("vhost-user-vsock-pci,chardev=vsock0"),
        (Arch::Aarch64, _) => push("vhost-user-vsock-device,chardev=vsock0"),
    }
    if config.arch == Arch::X86_64 {
        push("-device");
        push("isa-debug-exit,iobase=0xf4,iosize=0x04");
    }
    a.extend(config.extra_qemu_args.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(arch: Arch, accel: Accel) -> String {
        let cfg = VmConfig::new(arch, Path::new("/img"));
        qemu_args(&cfg, accel, Path::new("/vhost"), Path::new("/serial")).join(" ")
    }

    #[test]
    fn aarch64_machine_and_cpu_follow_the_accelerator() {
        let tcg = args(Arch::Aarch64, Accel::Tcg);
        assert!(tcg.contains("-machine virt,memory-backend=mem"), "{tcg}");
        assert!(tcg.contains("-cpu cortex-a57"), "{tcg}");
        assert!(tcg.contains("-device pvpanic-pci -action panic=exit-failure"));
        assert!(!tcg.contains("isa-debug-exit"), "{tcg}");
        let kvm = args(Arch::Aarch64, Accel::Kvm);
        assert!(
            kvm.contains("-machine virt,gic-version=max,memory-backend=mem"),
            "{kvm}"
        );
        assert!(kvm.contains("-cpu host"), "{kvm}");
    }

    #[test]
    fn x86_64_uses_q35_pci_and_isa_debug_exit() {
        let a = args(Arch::X86_64, Accel::Tcg);
        assert!(a.contains("-machine q35,memory-backend=mem"), "{a}");
        assert!(a.contains("vhost-user-vsock-pci,chardev=vsock0"), "{a}");
        assert!(a.contains("isa-debug-exit"), "{a}");
        assert!(!a.contains("-cpu"), "{a}");
    }
}
