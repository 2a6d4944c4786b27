//! Missing and failing tools: QEMU and the device daemon.

use super::*;

pub(super) fn qemu_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        let qemu = format!("/nonexistent/{}", svmc_host::tools::qemu_binary(f.ctx.arch));
        tools.qemu = qemu.clone().into();
        cfg.tools = Some(tools);
        let e = Vm::launch(&cfg).err().ok_or("launched without QEMU")?;
        ensure(matches!(e, Error::Spawn { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &[&qemu])?;
        // Through the CLI and `$SVMC_QEMU`.
        let out = f
            .host_cli()
            .env(svmc_host::env::QEMU, "/nonexistent/qemu")
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.code() == Some(1), || format!("{}", out.status))?;
        one_line_mentioning(
            &stderr_of(&out),
            &[
                &format!("{} not found", svmc_host::tools::qemu_binary(f.ctx.arch)),
                &format!("{}=/nonexistent/qemu", svmc_host::env::QEMU),
            ],
        )
    })
}

pub(super) fn daemon_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = "/nonexistent/vhost-device-vsock".into();
        cfg.tools = Some(tools);
        let e = Vm::launch(&cfg)
            .err()
            .ok_or("launched without the daemon")?;
        ensure(matches!(e, Error::Spawn { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["/nonexistent/vhost-device-vsock"])?;
        let out = f
            .host_cli()
            .env(svmc_host::env::DAEMON, "/nonexistent/daemon")
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.code() == Some(1), || format!("{}", out.status))?;
        one_line_mentioning(&stderr_of(&out), &["vhost-device-vsock not found"])
    })
}

pub(super) fn daemon_fails_to_start(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = "/bin/false".into();
        cfg.tools = Some(tools);
        let start = Instant::now();
        let e = Vm::launch(&cfg).err().ok_or("launched with /bin/false")?;
        let Error::DaemonFailed { log, .. } = &e else {
            return Err(format!("expected DaemonFailed, got {e:?}"));
        };
        ensure(start.elapsed() < Duration::from_secs(5), || {
            format!("took {:?}", start.elapsed())
        })?;
        ensure(log.exists(), || format!("{} missing", log.display()))?;
        one_line_mentioning(&e.to_string(), &["exited", &log.display().to_string()])
    })
}

pub(super) fn daemon_never_creates_socket(f: &Faults) -> R {
    f.checked(|| {
        // A "daemon" that runs but never creates its socket.
        let script = f.scratch.path().join("silent-daemon");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = script;
        cfg.tools = Some(tools);
        cfg.daemon_timeout = Duration::from_millis(500);
        let start = Instant::now();
        let e = Vm::launch(&cfg)
            .err()
            .ok_or("launched with a silent daemon")?;
        ensure(start.elapsed() < Duration::from_secs(3), || {
            format!("took {:?}", start.elapsed())
        })?;
        let Error::DaemonFailed { log, .. } = &e else {
            return Err(format!("expected DaemonFailed, got {e:?}"));
        };
        one_line_mentioning(
            &e.to_string(),
            &["did not create", &log.display().to_string()],
        )
    })
}

pub(super) fn qemu_fails_to_start(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.extra_qemu_args = vec!["-no-such-option".into()];
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let Error::QemuExited {
            serial_log,
            qemu_log,
            ..
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        ensure(start.elapsed() < Duration::from_secs(5), || {
            format!("took {:?}", start.elapsed())
        })?;
        let log = std::fs::read_to_string(qemu_log).unwrap_or_default();
        ensure(log.contains("no-such-option"), || {
            format!("QEMU log {}: {log:?}", qemu_log.display())
        })?;
        one_line_mentioning(
            &e.to_string(),
            &[
                "QEMU exited",
                &serial_log.display().to_string(),
                &qemu_log.display().to_string(),
            ],
        )
    })
}
