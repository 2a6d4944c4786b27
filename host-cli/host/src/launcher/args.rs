//! QEMU's command line for a VM: the machine table's arguments
//! ([`crate::machine`]) plus the serial console, the image, the guest's
//! command line and the vsock device.

use std::path::Path;

use super::VmConfig;
use crate::accel::Accel;
use crate::machine::{Machine, SharedMemory};

pub(super) fn qemu_args(
    config: &VmConfig,
    machine: &Machine,
    accel: Accel,
    vhost_socket: &Path,
    serial_log: &Path,
) -> Vec<String> {
    let mut a = machine.args(
        accel,
        Some(SharedMemory {
            mib: config.memory_mib,
        }),
    );
    let mut push = |s: &str| a.push(s.to_string());
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
    push(&format!(
        "socket,id=vsock0,path={}",
        escape_commas(&vhost_socket.display().to_string())
    ));
    push("-device");
    push(&format!("{},chardev=vsock0", machine.vsock_device));
    a.extend(config.extra_qemu_args.iter().cloned());
    a
}

/// `value` for a QEMU option string (`key=value,key=value`): QEMU reads
/// `,,` in a value as one comma, so a path with commas can neither break
/// the option nor add options of its own.
pub fn escape_commas(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, machine};

    fn args(arch: Arch, name: Option<&str>, accel: Accel) -> Vec<String> {
        let mut cfg = VmConfig::new(arch, Path::new("/img"));
        cfg.extra_qemu_args = vec!["-extra".into()];
        let m = machine::find(arch, name).unwrap();
        qemu_args(&cfg, m, accel, Path::new("/vhost"), Path::new("/serial"))
    }

    #[test]
    fn starts_with_the_machine_table_and_ends_with_extra_args() {
        for m in machine::MACHINES {
            for accel in [Accel::Tcg, Accel::Kvm] {
                let a = args(m.arch, Some(m.name), accel);
                let base = m.args(accel, Some(SharedMemory { mib: 128 }));
                assert_eq!(a[..base.len()], base[..], "{m}");
                assert_eq!(a.last().map(String::as_str), Some("-extra"));
                let s = a.join(" ");
                assert!(
                    s.contains(&format!("-device {},chardev=vsock0", m.vsock_device)),
                    "{s}"
                );
                assert!(s.contains("-chardev socket,id=vsock0,path=/vhost"), "{s}");
                assert!(s.contains("-serial file:/serial -kernel /img"), "{s}");
                assert!(s.contains("-append svmc.host_port="), "{s}");
            }
        }
    }

    #[test]
    fn commas_in_the_socket_path_are_escaped() {
        let cfg = VmConfig::new(Arch::X86_64, Path::new("/img"));
        let m = machine::find(Arch::X86_64, None).unwrap();
        let a = qemu_args(
            &cfg,
            m,
            Accel::Tcg,
            Path::new("/t,mp/x,id=evil/vhost.sock"),
            Path::new("/s"),
        );
        assert!(
            a.contains(&"socket,id=vsock0,path=/t,,mp/x,,id=evil/vhost.sock".to_string()),
            "{a:?}"
        );
    }
}
