//! Boot to answer: `host-cli reverse abc` as a whole process, next to its
//! floor (the daemon and QEMU running the tiny exit-at-first-instruction
//! firmware, launch to exit), on each machine of the architecture; and
//! `--boots N`, the distribution of many boots with what went wrong in
//! them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use svmc_host::image::{tiny_elf, tiny_exit_status};
use svmc_host::{Arch, Vm, VmConfig};

use super::STEP;
use super::stats::ms;
use crate::util::{self, Result};

/// What the launcher logs when it relaunches a guest that did not connect
/// (`svmc_host::launcher::launch_ready`, info level).
const RELAUNCH_LOG: &str = "relaunching it";

/// What the guest logs when the device took a TX buffer only after it
/// notified again (`guest/runtime/src/kick.rs`): a lost kick or a slow device.
const RENOTIFY_LOG: &str = "re-notified #";

/// The boot-to-answer figures of one machine.
pub enum BootRun {
    /// The guest does not boot on it (the first try failed).
    Unsupported { name: &'static str, why: String },
    /// `reps` boots of ours and of the floor, ms.
    Measured {
        name: &'static str,
        /// `host-cli reverse abc`, whole process.
        ours: Vec<f64>,
        /// Daemon start + QEMU until the tiny firmware's exit.
        floor: Vec<f64>,
        /// QEMU alone, within `floor`.
        qemu: Vec<f64>,
    },
}

/// What [`to_answer`] needs to boot the guest: `host-cli`, the image, the
/// VM configuration of the floor, and where logs and the tiny firmware go.
pub struct Boot<'a> {
    pub host_cli: &'a Path,
    pub arch: Arch,
    pub img: &'a Path,
    pub base: &'a VmConfig,
    pub work: &'a Path,
    pub log_dir: &'a Path,
}

/// Boot to answer on each of `machines` (`None`: the default), `reps`
/// times, ours and the floor in turn. A machine other than the default is
/// tried once first: the guest may not support it.
pub fn to_answer(b: &Boot, machines: &[Option<&str>], reps: usize) -> Result<Vec<BootRun>> {
    let mut runs = Vec::new();
    for machine in machines {
        let name = svmc_host::machine::find(b.arch, *machine)
            .map_err(|e| e.to_string())?
            .name;
        if machine.is_some() {
            // One try first: the guest may not support it.
            if let Err(e) = boot_cli(
                b.host_cli,
                b.arch,
                b.img,
                b.log_dir,
                *machine,
                Duration::from_secs(5),
                &[],
            ) {
                let why = e.lines().next().unwrap_or("").to_string();
                runs.push(BootRun::Unsupported { name, why });
                continue;
            }
        }
        let tiny = b.work.join(format!("tiny-{}.elf", b.arch));
        std::fs::write(&tiny, tiny_elf(b.arch))
            .map_err(|e| format!("writing {}: {e}", tiny.display()))?;
        let mut ours = Vec::new();
        let mut floor = Vec::new();
        let mut qemu = Vec::new();
        for _ in 0..reps {
            ours.push(ms(boot_cli(
                b.host_cli,
                b.arch,
                b.img,
                b.log_dir,
                *machine,
                STEP,
                &[],
            )?
            .0));
            let mut cfg = b.base.clone();
            cfg.image = tiny.clone();
            cfg.machine = machine.map(str::to_string);
            let (all, qemu_only) = boot_floor(&cfg)?;
            floor.push(ms(all));
            qemu.push(ms(qemu_only));
        }
        runs.push(BootRun::Measured {
            name,
            ours,
            floor,
            qemu,
        });
    }
    Ok(runs)
}

/// Wall time of `host-cli [extra] reverse abc`, and its stderr.
fn boot_cli(
    host_cli: &Path,
    arch: Arch,
    img: &Path,
    log_dir: &Path,
    machine: Option<&str>,
    timeout: Duration,
    extra: &[&str],
) -> Result<(Duration, String)> {
    let mut cmd = Command::new(host_cli);
    cmd.args(extra)
        .args(["--arch", arch.name(), "--image"])
        .arg(img)
        .arg("--log-dir")
        .arg(log_dir)
        .arg("--timeout")
        .arg(timeout.as_secs_f64().to_string());
    if let Some(m) = machine {
        cmd.args(["--machine", m]);
    }
    cmd.args(["reverse", "abc"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("running {}: {e}", host_cli.display()))?;
    let t = start.elapsed();
    if !out.status.success() || out.stdout != b"cba\n" {
        return Err(format!(
            "`{}` failed ({}): {}",
            util::show(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((t, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// `--boots N`: `host-cli -v reverse abc` N times on `machine`; prints how
/// many boots were relaunched (host-cli's log), how many TX waits the guest
/// ended by notifying again (serial logs: lost kicks, or a device slower
/// than 5 ms), and the distribution of the boot-to-answer times. Returns
/// the machine's name and the times, ms.
pub fn series(
    host_cli: &Path,
    arch: Arch,
    img: &Path,
    work: &Path,
    machine: Option<&str>,
    n: usize,
) -> Result<(&'static str, Vec<f64>)> {
    let name = svmc_host::machine::find(arch, machine)
        .map_err(|e| e.to_string())?
        .name;
    let log_dir = work.join(format!("boots-{arch}-{name}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    eprintln!("bench: {n} boots on {arch} {name}");
    let mut times = Vec::with_capacity(n);
    let (mut relaunches, mut renotified) = (0usize, 0usize);
    for i in 0..n {
        let (t, stderr) = boot_cli(host_cli, arch, img, &log_dir, machine, STEP, &["-v"])?;
        times.push(ms(t));
        let relaunched = stderr.matches(RELAUNCH_LOG).count();
        relaunches += relaunched;
        // This boot's serial logs (the launcher keeps the last 96 files).
        let logs = newest_serial_logs(&log_dir, 1 + relaunched);
        renotified += logs
            .iter()
            .map(|(_, log)| log.matches(RENOTIFY_LOG).count())
            .sum::<usize>();
        if relaunched > 0 {
            // Keep them: the log directory is pruned.
            let keep = log_dir.join("relaunched");
            let _ = std::fs::create_dir_all(&keep);
            for (path, _) in &logs {
                if let Some(name) = path.file_name() {
                    let _ = std::fs::copy(path, keep.join(name));
                }
            }
            eprintln!(
                "bench:   boot {} relaunched; serial logs in {}",
                i + 1,
                keep.display()
            );
        }
        if (i + 1) % 100 == 0 {
            eprintln!("bench:   {} boots, {relaunches} relaunched", i + 1);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    println!(
        "boots on {arch} {name}: {n}, relaunched {relaunches}, TX waits the guest re-notified {renotified} (lost kicks or a slow device); \
         boot to answer ms: min {:.1}, median {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        sorted[0],
        pct(0.5),
        pct(0.9),
        pct(0.99),
        sorted[sorted.len() - 1]
    );
    Ok((name, times))
}

/// The `count` newest serial logs in `dir`, with their contents.
fn newest_serial_logs(dir: &Path, count: usize) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut logs: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".serial.log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    logs.sort();
    logs.iter()
        .rev()
        .take(count)
        .filter_map(|(_, p)| Some((p.clone(), std::fs::read_to_string(p).ok()?)))
        .collect()
}

/// The tiny firmware's run: (launch to exit, QEMU start to exit).
fn boot_floor(cfg: &VmConfig) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut vm = Vm::launch(cfg).map_err(|e| format!("launching the tiny firmware: {e}"))?;
    let qemu_start = Instant::now();
    let status = vm
        .wait_exit(STEP)
        .map_err(|e| format!("the tiny firmware: {e}"))?;
    let end = Instant::now();
    if status.code() != Some(tiny_exit_status(cfg.arch)) {
        return Err(format!("the tiny firmware ended with {status}"));
    }
    Ok((end - start, end - qemu_start))
}
