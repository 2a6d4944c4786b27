//! `cargo xtask bench`: how fast the service VM is, each figure next to its
//! floor measured in the same run (ratios, not absolute times, are what
//! survive a noisy, shared machine).
//!
//! | figure          | ours                                   | floor                                                        |
//! |-----------------|----------------------------------------|--------------------------------------------------------------|
//! | boot to answer  | `host-cli reverse abc`, whole process  | daemon + QEMU (same machine, memory, device) running the tiny exit-at-first-instruction firmware, launch to exit |
//! | round trip      | 16-byte `Reverse`, one connection      | 16 bytes through the guest's raw store-and-forward reverse (`svmc.mode=raw-reverse`), and through its raw echo (`svmc.mode=echo`) |
//! | throughput      | 1 MiB / 8 MiB `Reverse`                | the same bytes through the raw reverse (one length-prefixed message, received whole, reversed in place, sent back), and through the raw echo stream, at most 128 KiB ahead of the echo |
//! | size, memory    | stripped image, smallest `-m` for an 8 MiB `Reverse`, guest heap peak | targets |
//! | 4 clients       | 4 connections at once, each 16-byte `Reverse`s: total rate, worst latency | the same from 1 client |
//! | pipelining      | 16-byte `Reverse`s with 8 in flight on one connection | 1 in flight (target ≥ 2x the rate) |
//!
//! Round trips and throughput run on a host-initiated connection to the
//! guest's service port (see [`service::launch_for_service_port`]).
//!
//! The targets are against the raw reverse: it is the floor a reverse can
//! reach. The streaming echo overlaps receiving and sending, which no
//! reverse can (its first byte out needs its last byte in); its ratios are
//! printed too, without a target.
//!
//! Every figure is the median of `--reps` runs, with min and max. Only
//! one VM runs at a time (the others are paused, `SIGSTOP`): an idle
//! guest polls its device and keeps a CPU busy under TCG.
//!
//! One module per measurement ([`boot`], [`service`], [`floors`] for the
//! raw reverse, [`echo`], [`async_client`], [`envelope`], [`memory`],
//! [`codec`]), the arithmetic in [`stats`], the table in [`report`], the
//! plots in [`plot`]; this one parses the flags and runs them in order.
//!
//! Besides the table on stdout, the run writes SVG plots to
//! `target/bench/` (where its logs go): `boot-<arch>.svg` (boot to answer
//! per machine, every sample, next to the floor's), `round-trip-<arch>.svg`
//! (the time of one round trip against the message size, with the raw
//! reverse and raw echo floors), and with `--boots N`, `boots-<arch>.svg`.

mod async_client;
mod boot;
mod codec;
mod echo;
mod envelope;
mod floors;
mod memory;
mod plot;
mod report;
mod service;
mod stats;

use std::time::Duration;

use svmc_host::{Arch, VmConfig};

use crate::image;
use crate::util::{self, Result, cargo};
use report::Report;

/// Default repetitions of every measurement.
const DEFAULT_REPS: usize = 9;
/// Requests per round-trip repetition.
const RT_REQUESTS: usize = 300;
/// Pairs of repetitions per `--reps` in the figures against the raw
/// reverse (each pair takes well under a second: more pairs, a steadier
/// median of their ratios).
const PAIRS_PER_REP: usize = 3;
/// Sizes of the throughput runs, and the reverses timed together as one
/// repetition (so that one repetition lasts long enough to be measured
/// well: tens of milliseconds, not a few).
const SIZES: [(usize, &str, usize); 2] = [(1 << 20, "1 MiB", 4), (8 << 20, "8 MiB", 1)];
/// Payload of the memory search and of the heap figure.
const MEM_PAYLOAD: usize = 8 << 20;
/// Generous bound on every step (TCG on a busy machine).
const STEP: Duration = Duration::from_secs(30);

/// The bytes every reverse sends: `n` of a fixed pattern.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect()
}

struct Opts {
    arch: Arch,
    reps: usize,
    codec: bool,
    /// Also the machines other than the default (`--no-microvm` turns it off).
    microvm: bool,
    mem: bool,
    /// `--boots N`: only the boot series (N boots per machine).
    boots: Option<usize>,
    /// `--boot-only`: only the boot-to-answer rows.
    boot_only: bool,
    /// `--envelope-only`: only the envelope rows.
    envelope_only: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let (archs, rest) = crate::archs(args, &[Arch::X86_64])?;
    let [arch] = archs[..] else {
        return Err("bench runs one architecture at a time".into());
    };
    let mut o = Opts {
        arch,
        reps: DEFAULT_REPS,
        codec: true,
        microvm: true,
        mem: true,
        boots: None,
        boot_only: false,
        envelope_only: false,
    };
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => {
                let v = it.next().ok_or("--reps needs a value")?;
                o.reps = v.parse().map_err(|_| format!("bad --reps {v:?}"))?;
                if o.reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
            }
            "--boots" => {
                let v = it.next().ok_or("--boots needs a value")?;
                let n = v.parse().map_err(|_| format!("bad --boots {v:?}"))?;
                if n == 0 {
                    return Err("--boots must be at least 1".into());
                }
                o.boots = Some(n);
            }
            "--boot-only" => o.boot_only = true,
            "--envelope-only" => o.envelope_only = true,
            "--no-codec" => o.codec = false,
            "--no-microvm" => o.microvm = false,
            "--no-mem" => o.mem = false,
            other => return Err(format!("bench: unexpected argument {other:?}")),
        }
    }
    Ok(o)
}

/// `cargo xtask bench [--arch A] [--reps N] [--no-codec] [--no-microvm] [--no-mem]`,
/// `--boot-only` for the boot-to-answer rows alone, or `cargo xtask bench
/// [--arch A] [--no-microvm] --boots N` for the boot series alone.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    crate::setup::setup()?;
    // The floors (`svmc.mode=raw-reverse`, `echo`) are a separate image
    // with the same device, driver, backend and profile (guest feature
    // `floors`); `build_variant` rebuilds the default image last.
    let floors = image::build_variant(o.arch, crate::ci::FLOORS_FEATURE)?;
    let img = image::build(o.arch, &[])?;
    util::run(cargo().args(["build", "--release", "-p", "host-cli"]))?;
    let host_cli = image::target_dir().join("release").join("host-cli");
    let work = image::target_dir().join("bench");
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let log_dir = work.join("logs");
    let base = VmConfig {
        log_dir: Some(log_dir.clone()),
        ..VmConfig::new(o.arch, &img)
    };

    let mut report = Report::default();

    if o.envelope_only {
        eprintln!("bench: the extensions' envelope ({} reps)", o.reps);
        let vm =
            service::launch_for_service_port(&base).map_err(|e| format!("protocol VM: {e}"))?;
        let accel = vm.accel();
        let envelope = envelope::cost(vm.uds_path(), base.service_port, o.reps);
        drop(vm);
        report.envelope(&envelope);
        report.print(o.arch, accel, None);
        return Ok(());
    }

    // Boot to answer.
    eprintln!("bench: boot to answer ({} reps)", o.reps);
    // The default machine, then every other row of the machine table for
    // this architecture (unless `--no-microvm`).
    let others = svmc_host::machine::names(o.arch).into_iter().skip(1);
    let machines: Vec<Option<&str>> = std::iter::once(None)
        .chain(others.filter(|_| o.microvm).map(Some))
        .collect();
    if let Some(n) = o.boots {
        let mut series = Vec::new();
        for machine in &machines {
            series.push(boot::series(&host_cli, o.arch, &img, &work, *machine, n)?);
        }
        let boots: Vec<plot::Boots> = series
            .iter()
            .map(|(machine, times)| plot::Boots {
                machine,
                ours: times,
                floor: &[],
            })
            .collect();
        let title = format!("{}: boot to answer, {n} boots per machine", o.arch);
        let path = work.join(format!("boots-{}.svg", o.arch));
        if let Err(e) = plot::boots_svg(&title, &boots).and_then(|svg| plot::write(&path, &svg)) {
            eprintln!("bench: no plot: {e}");
        }
        return Ok(());
    }
    let boot = boot::Boot {
        host_cli: &host_cli,
        arch: o.arch,
        img: &img,
        base: &base,
        work: &work,
        log_dir: &log_dir,
    };
    let boots = boot::to_answer(&boot, &machines, o.reps)?;
    report.boots(o.arch, &boots);
    let title = format!("{}: boot to answer, {} per machine", o.arch, o.reps);
    let svg = plot::boots_svg(&title, &plot::boot_runs(&boots));
    write_plot(&mut report, &work.join(format!("boot-{}.svg", o.arch)), svg);

    if o.boot_only {
        let tools = svmc_host::tools::Tools::find(o.arch).map_err(|e| e.to_string())?;
        let machine = svmc_host::machine::default_for(o.arch);
        let accel = svmc_host::accel::choose_accel(svmc_host::Accel::Auto, machine, &tools.qemu);
        report.print(o.arch, accel, None);
        return Ok(());
    }

    // Protocol: round trips, throughput, heap.
    eprintln!("bench: protocol VM");
    let svc = service::measure(&base, o.reps)?;
    // The floors run the `floors` image: same source, profile, device,
    // driver and backend as the default one.
    let floor_base = VmConfig {
        image: floors.clone(),
        ..base.clone()
    };
    eprintln!("bench: protocol and raw reverse VMs, alternately");
    let vs = floors::measure_against_raw(&base, &floor_base, o.reps)?;
    eprintln!("bench: echo VM");
    // No target depends on the echo: a failure is a note, not the end.
    let echo = echo::measure(&floor_base, o.reps)
        .inspect_err(|e| report.note(format!("raw echo not measured: {e}")))
        .ok();
    report.protocol(&svc, &vs, echo.as_ref());
    let title = format!(
        "{} {}: round trip against message size, {} pairs",
        o.arch,
        svmc_host::machine::default_for(o.arch).name,
        o.reps * PAIRS_PER_REP
    );
    let svg = plot::round_trips_svg(&title, &plot::round_trips(&vs, echo.as_ref()));
    write_plot(
        &mut report,
        &work.join(format!("round-trip-{}.svg", o.arch)),
        svg,
    );

    // Size and memory.
    let size = std::fs::metadata(&img)
        .map_err(|e| format!("{}: {e}", img.display()))?
        .len();
    report.image(o.arch, size);
    if o.mem {
        eprintln!("bench: smallest guest RAM for an 8 MiB reverse");
        report.memory(memory::min_memory(&base));
    }
    report.heap(&svc);

    let codec = if o.codec {
        eprintln!("bench: comm codec summary");
        Some(codec::summary()?)
    } else {
        None
    };

    report.print(o.arch, svc.accel, codec.as_deref());
    Ok(())
}

/// Writes a plot next to the bench's other output; a plot that could not
/// be drawn or written is a note, not the end of the run.
fn write_plot(report: &mut Report, path: &std::path::Path, svg: Result<String>) {
    if let Err(e) = svg.and_then(|svg| plot::write(path, &svg)) {
        report.note(format!("plot {} not written: {e}", path.display()));
    }
}
