//! `cargo xtask profile`: where the guest spends its time under TCG, by
//! sampling its program counter through QEMU's monitor while the host
//! repeats one kind of request.
//!
//! There is no QEMU plugin here, and host-side `perf` sees only QEMU's
//! translated code. So QEMU runs with `-d nochain` (translated blocks are
//! not chained, so the vCPU stores its PC at the end of every block; this
//! slows the guest down, about evenly) and a QMP monitor, and every
//! `--interval-ms` the sampler reads the PC (`info registers`, which under
//! TCG reads the CPU state without stopping it; QMP `stop` is no use: it
//! stops the vhost-user device too, and vhost-device-vsock 0.3.0 does not
//! take TX buffers after the `cont`). The samples are mapped to the
//! symbols of an unstripped build of the same image (`target/profile`,
//! with line tables: the same code, the release image is only stripped)
//! with `llvm-nm` (the function the code was compiled into: with LTO most
//! of the server is inlined into a few functions) and `llvm-symbolizer`
//! (the innermost inlined function and its source line). A sample is the
//! block the vCPU was in or had just left: blocks that run long (a `rep
//! movs` iteration is one block) count once per sample like any other.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use svmc_host::{Arch, Attach, Session, SessionConfig, Vm, VmConfig};
use vsock_transport::{Connection, Step, Timeouts};

use crate::qmp::{self, Qmp};
use crate::util::{self, Result, cargo};

const STEP: Duration = Duration::from_secs(30);

struct Opts {
    arch: Arch,
    /// `service` or `raw-reverse`.
    mode: String,
    size: usize,
    samples: usize,
    interval: Duration,
    top: usize,
}

impl From<&crate::flags::Profile> for Opts {
    fn from(f: &crate::flags::Profile) -> Self {
        Self {
            arch: f.arch.arch,
            mode: f.mode.clone(),
            size: f.size,
            samples: f.samples,
            interval: f.interval_ms,
            top: f.top,
        }
    }
}

/// `16`, `4K`/`4KiB`, `1M`/`1MiB`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim_end_matches("iB").trim_end_matches('B');
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

/// The guest image with symbols and line tables, in its own target
/// directory (so the release build's artifacts stay as they are); with
/// the `floors` feature for the raw reverse, which only that image has.
fn build_with_symbols(arch: Arch, floors: bool) -> Result<PathBuf> {
    let dir = crate::image::target_dir().join("profile");
    let mut cmd = cargo();
    cmd.args(["build", "-p", "guest", "--target", arch.target_triple()])
        .args(["--profile", crate::image::PROFILE, "--target-dir"])
        .arg(&dir)
        .env("CARGO_PROFILE_GUEST_STRIP", "false")
        .env("CARGO_PROFILE_GUEST_DEBUG", "line-tables-only");
    if floors {
        cmd.args(["--features", crate::ci::FLOORS_FEATURE]);
    }
    util::run(&mut cmd)?;
    Ok(dir
        .join(arch.target_triple())
        .join(crate::image::PROFILE)
        .join("guest"))
}

/// `cargo xtask profile` ([`crate::flags::Profile`]).
pub fn run(f: &crate::flags::Profile) -> Result<()> {
    let o = Opts::from(f);
    crate::setup::setup()?;
    let elf = build_with_symbols(o.arch, o.mode == "raw-reverse")?;
    let work = crate::image::target_dir().join("bench");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let sock = work.join("qmp-profile.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cfg = VmConfig {
        log_dir: Some(work.join("logs")),
        ..VmConfig::new(o.arch, &elf)
    };
    if o.mode == "raw-reverse" {
        cfg.cmdline.push("svmc.mode=raw-reverse".into());
    }
    cfg.extra_qemu_args.extend(qmp::args(&sock));
    cfg.extra_qemu_args
        .extend(["-d".to_string(), "nochain".to_string()]);
    let mut vm = Vm::launch(&cfg).map_err(|e| format!("launching: {e}"))?;
    drop(
        vm.wait_for_guest(STEP, Timeouts::uniform(STEP))
            .map_err(|e| format!("waiting for the guest: {e}"))?,
    );
    let mut qmp = Qmp::connect(&sock)?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = spawn_workload(&vm, &cfg, &o, stop.clone(), done.clone())?;
    // Let the workload start (connection, warm-up).
    while done.load(Ordering::Relaxed) == 0 && !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "profile: {} samples every {:?} ({} {} B)",
        o.samples, o.interval, o.mode, o.size
    );
    let start = Instant::now();
    let before = done.load(Ordering::Relaxed);
    let mut pcs = Vec::with_capacity(o.samples);
    while pcs.len() < o.samples && !worker.is_finished() {
        std::thread::sleep(o.interval);
        pcs.push(qmp.sample_pc(o.arch)?);
    }
    let ops = done.load(Ordering::Relaxed) - before;
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .map_err(|_| "the workload panicked".to_string())??;
    vm.kill();
    println!(
        "{} {} {} B: {} samples in {:.1} s, {ops} requests meanwhile",
        o.arch,
        o.mode,
        o.size,
        pcs.len(),
        wall.as_secs_f64()
    );
    report(&elf, &pcs, o.top)
}

/// Repeats the request until `stop`, counting them in `done`.
fn spawn_workload(
    vm: &Vm,
    cfg: &VmConfig,
    o: &Opts,
    stop: Arc<AtomicBool>,
    done: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let data: Vec<u8> = (0..o.size).map(|i| (i * 7) as u8).collect();
    let mut expect = data.clone();
    expect.reverse();
    if o.mode == "service" {
        let mut sc = SessionConfig::new(Attach::Hybrid {
            uds_path: vm.uds_path().to_path_buf(),
            port: cfg.service_port,
        });
        sc.timeouts = Timeouts::uniform(STEP);
        let mut s = Session::open(&sc).map_err(|e| e.to_string())?;
        Ok(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = s.reverse(data.clone()).map_err(|e| e.to_string())?;
                if r != expect {
                    return Err("wrong reverse".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }))
    } else {
        let mut conn = vm
            .connect(cfg.service_port, Timeouts::uniform(STEP))
            .map_err(|e| e.to_string())?;
        let len = u32::try_from(o.size).map_err(|_| "size over u32")?;
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(&data);
        let mut want = len.to_be_bytes().to_vec();
        want.extend_from_slice(&expect);
        Ok(std::thread::spawn(move || {
            let mut back = vec![0u8; msg.len()];
            while !stop.load(Ordering::Relaxed) {
                conn.begin(Step::Write);
                conn.send(&msg).map_err(|e| e.to_string())?;
                conn.begin(Step::Read);
                let mut got = 0;
                while got < back.len() {
                    match conn.recv(&mut back[got..]).map_err(|e| e.to_string())? {
                        0 => return Err("closed".into()),
                        n => got += n,
                    }
                }
                if back != want {
                    return Err("wrong reverse".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }))
    }
}

/// Prints the samples per function symbol and per innermost inlined
/// function with its line.
fn report(elf: &Path, pcs: &[u64], top: usize) -> Result<()> {
    let syms = symbols(elf)?;
    let mut by_sym: BTreeMap<&str, usize> = BTreeMap::new();
    for &pc in pcs {
        let i = syms.partition_point(|(a, _)| *a <= pc);
        let name = if i == 0 { "?" } else { syms[i - 1].1.as_str() };
        *by_sym.entry(name).or_default() += 1;
    }
    let total = pcs.len().max(1) as f64;
    println!("\nby function (as compiled: inlined code counts for its caller):");
    print_top(
        by_sym.into_iter().map(|(k, v)| (k.to_string(), v)),
        total,
        top,
    );

    let mut distinct: Vec<u64> = pcs.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let frames = symbolize(elf, &distinct)?;
    let mut by_inner: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_line: BTreeMap<String, usize> = BTreeMap::new();
    for &pc in pcs {
        if let Some(f) = frames.get(&pc) {
            *by_inner.entry(f.0.clone()).or_default() += 1;
            *by_line.entry(format!("{} {}", f.0, f.1)).or_default() += 1;
        }
    }
    println!("\nby innermost (inlined) function:");
    print_top(by_inner.into_iter(), total, top);
    println!("\nby source line:");
    print_top(by_line.into_iter(), total, top);
    Ok(())
}

/// A legacy-mangled Rust name that the tools left partly encoded
/// (`_$LT$a..B$u20$as$u20$C$GT$::f::h0123456789abcdef`), readable.
fn tidy(name: &str) -> String {
    let mut s = name
        .strip_prefix('_')
        .filter(|r| r.starts_with('$'))
        .unwrap_or(name)
        .to_string();
    for (from, to) in [
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$u20$", " "),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("$C$", ","),
        ("$LP$", "("),
        ("$RP$", ")"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("..", "::"),
    ] {
        s = s.replace(from, to);
    }
    // The hash suffix.
    if let Some((head, hash)) = s.rsplit_once("::h")
        && hash.len() == 16
        && hash.chars().all(|c| c.is_ascii_hexdigit())
    {
        s = head.to_string();
    }
    s
}

fn print_top(counts: impl Iterator<Item = (String, usize)>, total: f64, top: usize) {
    let mut merged: BTreeMap<String, usize> = BTreeMap::new();
    for (name, n) in counts {
        *merged.entry(tidy(&name)).or_default() += n;
    }
    let mut v: Vec<(String, usize)> = merged.into_iter().collect();
    v.sort_by_key(|e| core::cmp::Reverse(e.1));
    for (name, n) in v.into_iter().take(top) {
        let mut name = name;
        if name.chars().count() > 140 {
            name = name.chars().take(140).collect::<String>() + "…";
        }
        println!("{:6.1}% {:6}  {name}", n as f64 * 100.0 / total, n);
    }
}

/// Text symbols of `elf`, sorted by address.
fn symbols(elf: &Path) -> Result<Vec<(u64, String)>> {
    let out = util::output(
        Command::new("llvm-nm")
            .args(["-n", "-C", "--defined-only"])
            .arg(elf),
    )
    .ok_or("llvm-nm failed (install llvm)")?;
    let mut v: Vec<(u64, String)> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            let name = it.next()?;
            matches!(kind, "t" | "T" | "W" | "w").then(|| (addr, name.to_string()))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The innermost inlined function and its `file:line` of each address.
fn symbolize(elf: &Path, pcs: &[u64]) -> Result<BTreeMap<u64, (String, String)>> {
    let mut child = Command::new("llvm-symbolizer")
        .args(["--inlining", "--demangle", "--functions=linkage"])
        .arg(format!("--obj={}", elf.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("llvm-symbolizer: {e} (install llvm)"))?;
    let mut input = String::new();
    for pc in pcs {
        input.push_str(&format!("{pc:#x}\n"));
    }
    let mut stdin = child.stdin.take().ok_or("llvm-symbolizer: no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("llvm-symbolizer: {e}"))?;
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = BTreeMap::new();
    // One block per address, frames innermost first, blocks separated by
    // an empty line.
    for (pc, block) in pcs.iter().zip(text.split("\n\n")) {
        let mut lines = block.lines();
        let func = lines.next().unwrap_or("?").to_string();
        let loc = lines.next().unwrap_or("?");
        // Shorten the path to the crate-relative part.
        let loc = loc
            .rsplit_once("/src/")
            .map_or(loc.to_string(), |(_, r)| format!("src/{r}"));
        map.insert(*pc, (func, loc));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_are_readable() {
        assert_eq!(
            tidy(
                "_$LT$guest..kick..KickRetry$LT$T$GT$$u20$as$u20$virtio_drivers..transport..Transport$GT$::notify::hbd791e1bba3ea5ad"
            ),
            "<guest::kick::KickRetry<T> as virtio_drivers::transport::Transport>::notify"
        );
        assert_eq!(tidy("memcpy"), "memcpy");
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("16"), Some(16));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("x"), None);
    }
}
