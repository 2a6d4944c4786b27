//! Images that are missing or not ELF, and guests that hang, crash or panic.

use super::*;

pub(super) fn image_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.scratch.path().join("no-such-image");
        let e = Vm::launch(&cfg).err().ok_or("launched without an image")?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["no-such-image", "cannot open"])
    })
}

pub(super) fn image_not_elf(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("not-elf", b"#!/bin/sh\necho this is not a guest\n")?;
        let e = Vm::launch(&cfg).err().ok_or("launched a shell script")?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["not-elf", "not an ELF"])?;
        // An ELF for another machine.
        let arch = f.ctx.arch;
        let other = Arch::ALL
            .into_iter()
            .find(|a| *a != arch)
            .ok_or("one arch")?;
        let name = format!("{other}.elf");
        cfg.image = f.write_image(&name, &svmc_host::image::tiny_elf(other))?;
        let e = Vm::launch(&cfg)
            .err()
            .ok_or_else(|| format!("launched an {other} ELF on {arch}"))?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &[&name, &format!("is not {arch}")])
    })
}

pub(super) fn guest_hangs_before_connecting(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("hang.elf", &tests::images::hanging_elf(f.ctx.arch))?;
        let boot = Duration::from_secs(2);
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, boot))?;
        let took = start.elapsed();
        let Error::GuestTimeout { serial_log, .. } = &e else {
            return Err(format!("expected GuestTimeout, got {e:?}"));
        };
        ensure(took >= boot && took < boot + Duration::from_secs(2), || {
            format!("took {took:?} for a {boot:?} boot timeout")
        })?;
        one_line_mentioning(
            &e.to_string(),
            &["connect to the host", &serial_log.display().to_string()],
        )
    })
}

pub(super) fn guest_crashes_before_connecting(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("exit.elf", &svmc_host::image::tiny_elf(f.ctx.arch))?;
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let took = start.elapsed();
        let Error::QemuExited {
            status,
            serial_log,
            qemu_log,
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        ensure(took < Duration::from_secs(5), || format!("took {took:?}"))?;
        ensure(
            status.code() == Some(svmc_host::image::tiny_exit_status(f.ctx.arch)),
            || format!("status {status}"),
        )?;
        one_line_mentioning(
            &e.to_string(),
            &[
                &serial_log.display().to_string(),
                &qemu_log.display().to_string(),
            ],
        )
    })
}

/// The firmware's panic handler ends the VM with a failure status: 3 on
/// x86_64 (`isa-debug-exit`, on q35 and microvm alike), 1 on aarch64
/// (pvpanic, which the firmware looks for only on this path), and the
/// panic message is in the serial log.
pub(super) fn firmware_panic_exits_with_failure_status(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.cmdline.push("svmc.test_panic=1".into());
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let Error::QemuExited {
            status, serial_log, ..
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        let expected = match f.ctx.arch {
            Arch::X86_64 => 3,
            Arch::Aarch64 => 1,
        };
        ensure(status.code() == Some(expected), || {
            format!("status {status}, expected {expected}")
        })?;
        let log = std::fs::read_to_string(serial_log).map_err(|e| e.to_string())?;
        ensure(
            log.contains("[PANIC]") && log.contains("svmc.test_panic=1"),
            || format!("no panic message in the serial log:\n{log}"),
        )
    })
}
