//! Choosing the accelerator: KVM where it really works, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: some hosts expose a paravirtual KVM
//! that cannot run ordinary guests (QEMU hangs or fails on MSR writes). So
//! [`Accel::Auto`] boots a tiny probe firmware under KVM once, with
//! a short timeout, and caches the verdict per QEMU binary, kernel and
//! machine. The probe runs QEMU with the same machine arguments as the
//! launcher ([`crate::machine`]), so a verdict holds for the VMs launched.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::Arch;
use crate::image::{probe_elf, tiny_exit_status};
use crate::machine::Machine;

/// How long the KVM probe may take before KVM is declared unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if it works here, else TCG (`$SVMC_ACCEL` overrides).
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg | Self::Auto => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator {other:?} (auto, kvm, tcg)")),
        }
    }
}

/// Resolves [`Accel::Auto`] for `machine` with the QEMU binary `qemu`.
pub fn choose_accel(requested: Accel, machine: &Machine, qemu: &Path) -> Accel {
    let arch = machine.arch;
    let requested = match (requested, std::env::var(crate::env::ACCEL).ok()) {
        (Accel::Auto, Some(env)) => env.parse().unwrap_or(Accel::Auto),
        (r, _) => r,
    };
    if requested != Accel::Auto {
        return requested;
    }
    if arch != Arch::host() {
        // KVM runs guests of the host's own architecture only.
        return Accel::Tcg;
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    // `v4`: verdicts of earlier probes (KVM merely works; machine
    // arguments of their own; no exits in the probe) are not reused.
    let key = format!(
        "v4 {} {} {}",
        machine.name,
        qemu.display(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let cache = cache_file();
    let cached = cache
        .as_ref()
        .and_then(|c| fs::read_to_string(c).ok())
        .unwrap_or_default();
    if let Some(v) = cached_verdict(&cached, &key) {
        return v;
    }
    let verdict = if probe_kvm(qemu, machine) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!(%verdict, "KVM probe");
    if let Some(c) = cache {
        if let Some(parent) = c.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let _ = fs::write(c, with_verdict(&cached, &key, verdict));
    }
    verdict
}

/// The verdict cached for `key` in the cache file's text (one
/// `<key>=<verdict>` line per machine, QEMU and kernel).
fn cached_verdict(cache: &str, key: &str) -> Option<Accel> {
    cache.lines().find_map(|l| {
        let (k, v) = l.rsplit_once('=')?;
        (k == key).then(|| if v == "kvm" { Accel::Kvm } else { Accel::Tcg })
    })
}

/// The cache file's text with `key`'s line set to `verdict`, the other
/// keys' lines kept (so that alternating machines does not probe again
/// each time).
fn with_verdict(cache: &str, key: &str, verdict: Accel) -> String {
    let mut out: String = cache
        .lines()
        .filter(|l| l.rsplit_once('=').is_some_and(|(k, _)| k != key))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{key}={verdict}\n"));
    out
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("svmc").join("kvm-probe"))
}

/// Boots the probe firmware ([`probe_elf`]: exits, then the tiny
/// firmware's exit) under KVM and under TCG; true if KVM runs it correctly
/// and is not much slower than TCG. Some hosts have a KVM that runs guests
/// but pays dearly for every exit (a paravirtual KVM here took 2.1 s to
/// boot the tiny image on q35, TCG 0.1 s, and the real guest answered 10x
/// slower under it; on `microvm` the tiny image alone booted as fast under
/// it, hence the exits in the probe).
fn probe_kvm(qemu: &Path, machine: &Machine) -> bool {
    let start = Instant::now();
    if !run_tiny(qemu, machine, Accel::Kvm) {
        return false;
    }
    let kvm = start.elapsed();
    let start = Instant::now();
    if !run_tiny(qemu, machine, Accel::Tcg) {
        return true;
    }
    let tcg = start.elapsed();
    tracing::info!(?kvm, ?tcg, "tiny image boot times");
    kvm <= tcg * 2 + Duration::from_millis(100)
}

/// QEMU's arguments for the probe: the machine table's, no console, the
/// tiny image.
fn probe_args(machine: &Machine, accel: Accel, image: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = machine
        .args(accel, None)
        .into_iter()
        .map(Into::into)
        .collect();
    a.extend(["-serial".into(), "none".into(), "-kernel".into()]);
    a.push(image.into());
    a
}

/// Boots the tiny firmware on `machine` with `accel`; true if QEMU exits
/// with its status within [`PROBE_TIMEOUT`].
fn run_tiny(qemu: &Path, machine: &Machine, accel: Accel) -> bool {
    let arch = machine.arch;
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let image = dir.path().join("tiny.elf");
    if fs::write(&image, probe_elf(arch)).is_err() {
        return false;
    }
    let child = Command::new(qemu)
        .args(probe_args(machine, accel, &image))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code() == Some(tiny_exit_status(arch)),
            Ok(None) if start.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MACHINES;

    #[test]
    fn the_probe_runs_the_machine_tables_arguments() {
        for m in MACHINES {
            for accel in [Accel::Kvm, Accel::Tcg] {
                let a = probe_args(m, accel, Path::new("/tiny.elf"));
                let base = m.args(accel, None);
                let head: Vec<String> = a[..base.len()]
                    .iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect();
                assert_eq!(head, base, "{m} {accel}");
                assert_eq!(a.last().map(|s| s.as_os_str()), Some("/tiny.elf".as_ref()));
            }
        }
        // Under KVM on aarch64 that is the host's CPU and GIC, as launched.
        let virt = crate::machine::default_for(Arch::Aarch64);
        let kvm = probe_args(virt, Accel::Kvm, Path::new("/t"));
        let s: Vec<&str> = kvm.iter().filter_map(|s| s.to_str()).collect();
        assert!(s.windows(2).any(|w| w == ["-cpu", "host"]), "{s:?}");
        assert!(s.contains(&"virt,gic-version=max"), "{s:?}");
    }

    #[test]
    fn probe_cache_keeps_one_verdict_per_key() {
        let c = with_verdict("", "v4 q35 qemu 6.1", Accel::Tcg);
        let c = with_verdict(&c, "v4 microvm qemu 6.1", Accel::Kvm);
        assert_eq!(cached_verdict(&c, "v4 q35 qemu 6.1"), Some(Accel::Tcg));
        assert_eq!(cached_verdict(&c, "v4 microvm qemu 6.1"), Some(Accel::Kvm));
        assert_eq!(cached_verdict(&c, "v4 virt qemu 6.1"), None);
        let c = with_verdict(&c, "v4 q35 qemu 6.1", Accel::Kvm);
        assert_eq!(cached_verdict(&c, "v4 q35 qemu 6.1"), Some(Accel::Kvm));
        assert_eq!(c.lines().count(), 2, "{c}");
        // An older file (one line, another key) is kept and not used.
        assert_eq!(cached_verdict("v2 qemu 6.1=kvm\n", "v4 q35 qemu 6.1"), None);
    }
}
