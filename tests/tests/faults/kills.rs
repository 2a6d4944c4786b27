//! QEMU or the device daemon killed while a request is in flight.

use super::*;

/// Opens a session, then sends 8 MiB requests in a loop while another
/// thread kills the child chosen by `pick` (QEMU or the daemon) during the
/// second request. The request in flight must fail with a typed error
/// within a few seconds.
pub(super) fn killed_mid_request(f: &Faults, which: &str) -> R {
    f.checked(|| {
        let mut s = Session::open(&f.session_config(f.config(), Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let (qemu, daemon) = s.vm().ok_or("no vm")?.pids();
        let victim = match which {
            "qemu" => qemu,
            _ => daemon,
        }
        .ok_or("no pid")?;
        let payload = vec![0x5a; 8 << 20];
        s.reverse(payload.clone())
            .map_err(|e| format!("first request: {e}"))?;
        let (tx, rx) = mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = rx.recv();
            std::thread::sleep(Duration::from_millis(5));
            // A child we still own (not reaped, so the pid cannot have been
            // reused).
            let _ = kill(Pid::from_raw(victim as i32), Signal::SIGKILL);
            Instant::now()
        });
        let mut tx = Some(tx);
        let mut result = Ok(());
        for _ in 0..50 {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
            match s.reverse(payload.clone()) {
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let killed_at = killer.join().map_err(|_| "killer thread panicked")?;
        let e = match result {
            Ok(()) => return Err(format!("50 requests succeeded after killing {which}")),
            Err(e) => e,
        };
        let took = killed_at.elapsed();
        ensure(took < Duration::from_secs(3), || {
            format!("the error came {took:?} after the kill: {e}")
        })?;
        println!("  {which} killed: {e} (after {took:?})");
        ensure(
            matches!(
                e,
                Error::Guest { .. } | Error::QemuExited { .. } | Error::DaemonFailed { .. }
            ),
            || format!("{e:?}"),
        )?;
        one_line_mentioning(&e.to_string(), &["serial log"])?;
        // Further calls fail at once too.
        let start = Instant::now();
        ensure(s.reverse(b"x".to_vec()).is_err(), || {
            "a request succeeded after the kill".into()
        })?;
        ensure(start.elapsed() < Duration::from_secs(3), || {
            format!("second failure took {:?}", start.elapsed())
        })?;
        drop(s);
        Ok(())
    })
}

pub(super) fn qemu_killed_mid_request(f: &Faults) -> R {
    killed_mid_request(f, "qemu")
}

pub(super) fn daemon_killed_mid_request(f: &Faults) -> R {
    killed_mid_request(f, "daemon")
}
